"""`imgclf serve` scaled out: the app factory and its environment settings, Prometheus /metrics in
one process and summed over two worker processes, and graceful shutdown on SIGTERM. The model is the
shipped cifar10.onnx (no TensorFlow in the servers)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from conftest import HANG
from deploy_helpers import ServerThread, free_port, png_bytes, random_image

ONNX = Path(__file__).resolve().parents[1] / "src" / "imgclf" / "runtime" / "pretrained" / "cifar10.onnx"
SERVE = [sys.executable, "-m", "imgclf.cli", "serve", str(ONNX), "--heatmap", "none"]


def samples(text: str) -> dict:
    """{(sample name, sorted label items): value} of a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def upload(name="a.png", blob=None):
    return [("files", (name, png_bytes(random_image(1)) if blob is None else blob, "image/png"))]


def wait_up(url: str, proc: subprocess.Popen) -> None:
    deadline = time.time() + HANG
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError("server did not start")


def test_metrics_count_requests_in_one_process():
    from imgclf.deploy.serve import create_app

    with ServerThread(create_app(ONNX, heatmap="none", max_files=4)) as server, \
            httpx.Client(base_url=server.url, timeout=HANG) as client:  # uvicorn in a thread, the batcher on
        assert client.post("/predict", files=upload() + upload("b.png")).status_code == 200
        assert client.post("/predict", files=upload()).status_code == 200
        assert client.post("/predict", files=upload("bad.png", b"not an image")).status_code == 400
        assert client.get("/health").status_code == 200
        r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    m = samples(r.text)
    assert m[("imgclf_http_requests_total", (("endpoint", "/predict"), ("status", "200")))] == 2
    assert m[("imgclf_http_requests_total", (("endpoint", "/predict"), ("status", "400")))] == 1
    assert m[("imgclf_http_errors_total", (("endpoint", "/predict"), ("status", "400")))] == 1
    assert m[("imgclf_http_requests_total", (("endpoint", "/health"), ("status", "200")))] == 1
    assert m[("imgclf_http_request_duration_seconds_count", (("endpoint", "/predict"),))] == 3
    assert m[("imgclf_batch_size_count", ())] == 2 and m[("imgclf_batch_size_sum", ())] == 3  # images
    assert m[("imgclf_model_errors_total", ())] == 0
    assert m[("imgclf_http_requests_in_progress", ())] == 1  # this /metrics request


def test_settings_from_the_environment():
    from imgclf.deploy.app import Settings, settings_from_env
    from imgclf.errors import ImgclfError

    s = Settings(Path("m.onnx"), max_files=3, batch_window_ms=7.5, threads=2, heatmap="none", graceful_timeout=4.5)
    assert settings_from_env(s.to_env()) == s
    assert settings_from_env({"IMGCLF_SERVE_MODEL": "m.onnx"}) == Settings(Path("m.onnx"))
    bad = {"IMGCLF_SERVE_MAX_BATCH": "0", "IMGCLF_SERVE_THREADS": "two", "IMGCLF_SERVE_BATCH_WINDOW_MS": "nan",
           "IMGCLF_SERVE_HEATMAP": "grad", "IMGCLF_SERVE_GRACEFUL_TIMEOUT": "inf"}
    for key, value in bad.items():
        with pytest.raises(ImgclfError, match=f"^{key}: expected .*got '{value}'"):
            settings_from_env({"IMGCLF_SERVE_MODEL": "m.onnx", key: value})
    with pytest.raises(ImgclfError, match="^IMGCLF_SERVE_MODEL: not set"):
        settings_from_env({})


def test_batcher_drains_for_the_time_it_was_given():
    """stop() waits for the queue for the batcher's own drain_s: with 0 a queued request is dropped,
    with a timeout it is answered before the model thread stops."""
    import asyncio

    import numpy as np

    from imgclf.deploy.batching import Batcher

    async def queued_then_stopped(drain_s: float) -> asyncio.Task:
        batcher = Batcher(lambda x: x * 2, window_ms=0, drain_s=drain_s)
        await batcher.start()
        request = asyncio.create_task(batcher.submit(np.ones((1, 2))))
        await asyncio.sleep(0)  # the request is in the queue, the batch loop has not taken it yet
        assert not batcher.queue.empty()
        await batcher.stop()
        return request

    assert Batcher(None, drain_s=4.5).drain_s == 4.5
    dropped = asyncio.run(queued_then_stopped(0.0))
    assert not dropped.done() or dropped.cancelled()
    answered = asyncio.run(queued_then_stopped(float(HANG)))
    assert answered.done() and answered.result().tolist() == [[2.0, 2.0]]


def test_graceful_timeout_reaches_the_batcher(monkeypatch):
    """--graceful-timeout travels to the batcher's drain: through the environment to the app factory
    (--workers N), and as an argument to serve() in one process."""
    from imgclf.deploy import app, serve
    from imgclf.deploy.app import Settings

    monkeypatch.setenv("IMGCLF_SERVE_MODEL", str(ONNX))
    monkeypatch.setenv("IMGCLF_SERVE_HEATMAP", "none")
    monkeypatch.setenv("IMGCLF_SERVE_MAX_BATCH", "1")
    monkeypatch.setenv("IMGCLF_SERVE_GRACEFUL_TIMEOUT", "7.5")
    assert app.create_app().state.batcher.drain_s == 7.5
    assert serve.create_app(ONNX, heatmap="none", warmup=False, graceful_timeout=2.5).state.batcher.drain_s == 2.5
    calls = []
    monkeypatch.setattr(serve, "serve", lambda model, **kw: calls.append(kw))
    app.run(Settings(ONNX), graceful_timeout=3.0)
    assert calls and calls[0]["graceful_timeout"] == 3.0


def test_factory_with_a_bad_setting_is_one_error_line():
    env = {**os.environ, "IMGCLF_SERVE_MODEL": str(ONNX), "IMGCLF_SERVE_MAX_FILES": "-1"}
    r = subprocess.run([sys.executable, "-m", "uvicorn", "imgclf.deploy.app:create_app", "--factory", "--port",
                        str(free_port())], capture_output=True, text=True, timeout=HANG, env=env)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == ["error: IMGCLF_SERVE_MAX_FILES: expected an integer >= 1, got '-1'"]


def test_a_worker_that_cannot_start_stops_the_supervisor(tmp_path, monkeypatch, capsys):
    """Under uvicorn's supervisor a worker exits with its start-up failure status (3: no restart
    loop) and leaves the line for `imgclf serve` to print once."""
    import multiprocessing

    from imgclf.deploy import app

    monkeypatch.setenv("IMGCLF_SERVE_MODEL", str(ONNX))
    monkeypatch.setenv("IMGCLF_SERVE_MAX_BATCH", "x")
    monkeypatch.setenv(app.STATUS_ENV, str(tmp_path))
    monkeypatch.setattr(multiprocessing, "parent_process", lambda: object())
    with pytest.raises(SystemExit) as exc:
        app.create_app()
    assert exc.value.code == 3 and capsys.readouterr().err == ""
    assert (tmp_path / app.FAILED).read_text() == "IMGCLF_SERVE_MAX_BATCH: expected an integer >= 1, got 'x'\n"


@pytest.mark.parametrize("argv,message", [(["--workers", "0"], "--workers: expected an integer >= 1"),
                                          (["--threads", "0"], "--threads: expected an integer >= 1")])
def test_cli_bad_workers_or_threads(argv, message):
    r = subprocess.run(SERVE + argv, capture_output=True, text=True, timeout=HANG)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [f"error: {message}"], r.stderr


def test_cli_bad_model_with_workers_is_one_error_line(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    r = subprocess.run([sys.executable, "-m", "imgclf.cli", "serve", str(bad), "--workers", "2"], capture_output=True,
                       text=True, timeout=HANG)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "not a valid ONNX model" in lines[0], r.stderr


def workers_of(pid: int) -> list[int]:
    """The uvicorn worker processes of server `pid` (not multiprocessing's resource tracker)."""
    kids = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return [k for k in kids if b"spawn_main" in Path(f"/proc/{k}/cmdline").read_bytes()]


def test_two_workers_share_metrics_and_stop_cleanly():
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(SERVE + ["--port", str(port), "--workers", "2", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_up(url, proc)
        deadline = time.time() + HANG
        while len(workers := workers_of(proc.pid)) < 2 and time.time() < deadline:
            time.sleep(0.2)
        env = dict(line.split("=", 1) for line in Path(f"/proc/{workers[0]}/environ").read_text().split("\0") if "=" in line)
        metrics_dir = Path(env["PROMETHEUS_MULTIPROC_DIR"])
        assert env["IMGCLF_SERVE_THREADS"] == "1" and metrics_dir.is_dir()

        def writers():  # the workers whose app is built: each one's metrics have a file there
            return {f.stem.rsplit("_", 1)[1] for f in metrics_dir.glob("counter_*.db")}

        while writers() != {str(w) for w in workers} and time.time() < deadline:
            time.sleep(0.2)
        assert writers() == {str(w) for w in workers}  # both workers write to the shared folder
        for _ in range(8):  # a new connection each: the kernel spreads them over the two workers
            assert httpx.post(url + "/predict", files=upload(), timeout=HANG).status_code == 200
        m = samples(httpx.get(url + "/metrics", timeout=HANG).text)
        assert m[("imgclf_http_requests_total", (("endpoint", "/predict"), ("status", "200")))] == 8
        assert m[("imgclf_batch_size_sum", ())] == 8
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=HANG)[0]
    assert proc.returncode == 0, out[-3000:]
    assert "with 2 worker processes" in out
    assert not metrics_dir.exists()  # the parent removed the metrics folder


def test_sigterm_lets_the_request_in_flight_finish():
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # a long batch window holds the request in the batcher while SIGTERM arrives
    proc = subprocess.Popen(SERVE + ["--port", str(port), "--batch-window-ms", "3000"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    result = {}
    try:
        wait_up(url, proc)

        def client():
            result["response"] = httpx.post(url + "/predict", files=upload(), timeout=HANG)

        thread = threading.Thread(target=client)
        thread.start()
        deadline = time.time() + HANG
        while time.time() < deadline:  # in flight: this /metrics request and the upload
            m = samples(httpx.get(url + "/metrics", timeout=HANG).text)
            if m[("imgclf_http_requests_in_progress", ())] >= 2:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        thread.join(HANG)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=HANG)[0]
    r = result["response"]
    assert r.status_code == 200 and len(r.json()["predictions"][0]["top"]) == 5, r.text
    assert proc.returncode == 0, out[-3000:]


def test_an_onnx_model_with_batches_of_one_warms_up_and_serves():
    """The warm-up once multiplied the batch size by max_batch: with --max-batch 1 it never ended."""
    from imgclf.deploy.serve import create_app

    onnx_model = Path(__file__).resolve().parents[1] / "src" / "imgclf" / "runtime" / "pretrained" / "cifar10.onnx"
    apps = []
    worker = threading.Thread(target=lambda: apps.append(create_app(onnx_model, max_batch=1)), daemon=True)
    worker.start()
    worker.join(HANG)
    assert apps, "create_app(max_batch=1) did not return"


@pytest.mark.parametrize("flag,value", [("--batch-window-ms", "inf"), ("--max-mb", "inf"),
                                        ("--graceful-timeout", "nan"), ("--batch-window-ms", "1e9")])
def test_serve_refuses_unbounded_timing_flags(flag, value, capsys):
    from imgclf.cli import main

    assert main(["serve", "--pretrained", "cifar10", flag, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and flag in err[0]

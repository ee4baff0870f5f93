"""The HTTP server (imgclf.deploy.serve) through a real HTTP client against a running uvicorn server on
loopback: the happy path on both runtimes, every bad input, batching, offline docs, the web page,
and the slim (no TensorFlow / no Keras) import path."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from deploy_helpers import CIFAR_JPEG, CLASSES, ServerThread, make_tiny_model, png_bytes, random_image
from conftest import HANG

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from imgclf.deploy.export import export

    d = tmp_path_factory.mktemp("models")
    keras_path = make_tiny_model(d / "tiny.keras")
    onnx_path = export(keras_path, "onnx").path
    return {"keras": keras_path, "onnx": onnx_path}


@pytest.fixture(scope="module")
def onnx_server(models):
    from imgclf.deploy.serve import create_app

    with ServerThread(create_app(models["onnx"], max_files=4, max_bytes=200_000, batch_window_ms=5)) as s:
        yield s


@pytest.fixture(scope="module")
def keras_server(models):
    from imgclf.deploy.serve import create_app

    with ServerThread(create_app(models["keras"], max_files=4, max_bytes=200_000)) as s:
        yield s


def files(*items):
    return [("files", item) for item in items]


def post(server, params=None, **kw):
    return httpx.post(f"{server.url}/predict", params=params, timeout=30, **kw)


def error_of(r, status):
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and "\n" not in body["error"]
    return body["error"]


# --- happy path ---------------------------------------------------------------------------

def test_health_and_model_card(onnx_server):
    assert httpx.get(f"{onnx_server.url}/health").json()["status"] == "ok"
    info = httpx.get(f"{onnx_server.url}/model").json()
    assert info["classes"] == CLASSES and info["input_size"] == 32 and info["name"] == "seed_cnn"
    assert info["runtime"] == "onnxruntime" and info["metrics"]["val"]["accuracy"] == pytest.approx(0.123)
    assert info["imgclf_version"] and info["keras_version"]
    assert "occlusion" in info["heatmap"]


@pytest.mark.parametrize("runtime", ["onnx", "keras"])
def test_predict_matches_the_classifier(runtime, models, onnx_server, keras_server):
    from imgclf.runtime import load_classifier, top_k

    server = onnx_server if runtime == "onnx" else keras_server
    imgs = [random_image(i, (32 + 8 * i, 40)) for i in range(3)]
    r = post(server, {"k": 3}, files=files(*[(f"im{i}.png", png_bytes(a), "image/png") for i, a in enumerate(imgs)]))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["k"] == 3 and [p["file"] for p in body["predictions"]] == ["im0.png", "im1.png", "im2.png"]
    clf = load_classifier(models[runtime])
    expected = top_k(clf.predict_proba(clf.load_images([png_bytes(a) for a in imgs])), clf.class_names, 3)
    for pred, exp in zip(body["predictions"], expected):
        assert [t["class"] for t in pred["top"]] == [c for c, _ in exp]
        assert [t["probability"] for t in pred["top"]] == pytest.approx([p for _, p in exp], abs=1e-5)
        assert "heatmap" not in pred


def test_jpeg_and_single_file_field(onnx_server):
    r = post(onnx_server, files=[("file", ("x.jpg", png_bytes(random_image(5), "JPEG"), "image/jpeg"))])
    assert r.status_code == 200
    top = r.json()["predictions"][0]["top"]
    assert len(top) == 5 and sum(t["probability"] for t in top) <= 1.0 + 1e-6
    assert all(a["probability"] >= b["probability"] for a, b in zip(top, top[1:]))


@pytest.mark.parametrize("runtime,method", [("keras", "grad-cam"), ("onnx", "occlusion")])
def test_heatmap(runtime, method, onnx_server, keras_server):
    server = onnx_server if runtime == "onnx" else keras_server
    r = post(server, {"heatmap": "true"}, files=files(("a.png", png_bytes(random_image(1)), "image/png")))
    assert r.status_code == 200, r.text
    heat = r.json()["predictions"][0]["heatmap"]
    assert heat["method"] == method
    if method == "grad-cam":
        assert heat["layer"] == "relu4"
    assert heat["png"].startswith("data:image/png;base64,")
    img = Image.open(io.BytesIO(base64.b64decode(heat["png"].split(",", 1)[1])))
    assert img.size == (128, 128) and img.mode == "RGB"


def test_gradcam_equals_gradient_tape(models):
    """The jvp-based Grad-CAM weights equal the reverse-mode gradients (TensorFlow's GradientTape)."""
    import tensorflow as tf

    from imgclf.deploy.gradcam import GradCam, normalise, upsample
    from imgclf.runtime.modelfile import load_model

    model, _ = load_model(models["keras"])
    cam = GradCam(model)
    x = random_image(3)
    heat, probs = cam(x)
    k = int(np.argmax(probs))
    a = tf.constant(cam.features(x[None].astype("float32")))
    with tf.GradientTape() as tape:
        tape.watch(a)
        score = cam.head(a)[0, k]
    grad = tape.gradient(score, a).numpy()[0]
    ref = normalise(upsample(normalise(np.maximum((a.numpy()[0] * grad.mean((0, 1))).sum(-1), 0)), (32, 32)))
    assert heat.shape == (32, 32) and heat.max() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(heat, ref, atol=1e-5)


JAX_CAM = """
import sys, numpy as np, keras
assert keras.backend.backend() == "jax"
from imgclf.deploy.gradcam import GradCam
from imgclf.runtime.modelfile import load_model
heat, probs = GradCam(load_model(sys.argv[1])[0])(np.load(sys.argv[2]))
np.save(sys.argv[3], heat)
"""


@pytest.mark.slow
def test_gradcam_is_backend_agnostic(models, tmp_path):
    """The same Grad-CAM code on the JAX backend (keras.ops.jvp there too) gives the same map."""
    from imgclf.deploy.gradcam import GradCam
    from imgclf.runtime.modelfile import load_model

    x = random_image(4)
    np.save(tmp_path / "x.npy", x)
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    r = subprocess.run([sys.executable, "-c", JAX_CAM, str(models["keras"]), str(tmp_path / "x.npy"),
                        str(tmp_path / "heat.npy")], capture_output=True, text=True, timeout=HANG, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    heat_tf, _ = GradCam(load_model(models["keras"])[0])(x)
    np.testing.assert_allclose(np.load(tmp_path / "heat.npy"), heat_tf, atol=1e-4)


def test_concurrent_requests_are_batched(onnx_server):
    before = httpx.get(f"{onnx_server.url}/health").json()
    n_threads, per_thread = 8, 5
    errors, barrier = [], threading.Barrier(n_threads)
    blob = png_bytes(random_image(7))

    def client():
        with httpx.Client(timeout=30) as c:
            barrier.wait()
            for _ in range(per_thread):
                r = c.post(f"{onnx_server.url}/predict", files=files(("a.png", blob, "image/png")))
                if r.status_code != 200:
                    errors.append(r.text)

    threads = [threading.Thread(target=client) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = httpx.get(f"{onnx_server.url}/health").json()
    assert not errors
    requests = after["requests"] - before["requests"]
    calls = after["model_calls"] - before["model_calls"]
    assert requests == n_threads * per_thread
    assert calls < requests  # several requests shared one model call


# --- bad input: every one a 4xx with a one-line JSON error, and the server stays up ------------

def test_not_an_image(onnx_server):
    msg = error_of(post(onnx_server, files=files(("notes.txt", b"hello world", "text/plain"))), 400)
    assert "notes.txt" in msg and "not an image" in msg


def test_truncated_image(onnx_server):
    blob = png_bytes(random_image(2, (64, 64)), "JPEG")
    msg = error_of(post(onnx_server, files=files(("cut.jpg", blob[: len(blob) // 2], "image/jpeg"))), 400)
    assert "cut.jpg" in msg and "truncated" in msg


def test_zero_byte_file(onnx_server):
    msg = error_of(post(onnx_server, files=files(("empty.png", b"", "image/png"))), 400)
    assert "empty.png" in msg and "0 bytes" in msg


def test_decompression_bomb(onnx_server):
    buf = io.BytesIO()
    Image.new("L", (5000, 4000)).save(buf, format="PNG")  # 20 MP of zeros: a few KB compressed
    assert len(buf.getvalue()) < 200_000
    msg = error_of(post(onnx_server, files=files(("bomb.png", buf.getvalue(), "image/png"))), 413)
    assert "bomb.png" in msg and "pixel limit" in msg


def test_too_many_files(onnx_server):
    blob = png_bytes(random_image(0))
    msg = error_of(post(onnx_server, files=files(*[("a.png", blob, "image/png")] * 5)), 413)
    assert "at most 4" in msg


def test_too_many_bytes(onnx_server):
    blob = os.urandom(300_000)
    msg = error_of(post(onnx_server, files=files(("big.png", blob, "image/png"))), 413)
    assert "200,000-byte limit" in msg


def test_too_many_bytes_chunked(onnx_server):
    """No Content-Length (chunked transfer): the limit is enforced while the body streams in."""
    boundary = "imgclfboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode()

    def body():
        yield head
        for _ in range(40):
            yield b"\0" * 10_000
        yield f"\r\n--{boundary}--\r\n".encode()

    r = httpx.post(f"{onnx_server.url}/predict", content=body(), timeout=30,
                   headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert "200,000-byte limit" in error_of(r, 413)


def test_wrong_field_name(onnx_server):
    msg = error_of(post(onnx_server, files=[("image", ("a.png", png_bytes(random_image(0)), "image/png"))]), 400)
    assert "'image'" in msg and "'files'" in msg


def test_no_file_and_not_multipart(onnx_server):
    msg = error_of(post(onnx_server, files=[("files", (None, b"not a file"))]), 400)  # a text field, no file
    assert "'files'" in msg
    msg = error_of(httpx.post(f"{onnx_server.url}/predict", json={"files": []}), 415)
    assert "multipart/form-data" in msg


@pytest.mark.parametrize("k", ["0", "abc", "-3"])
def test_bad_k(onnx_server, k):
    msg = error_of(post(onnx_server, {"k": k}, files=files(("a.png", png_bytes(random_image(0)), "image/png"))), 422)
    assert msg.startswith("k:")


def test_one_bad_file_among_good_ones_names_it(onnx_server):
    good = png_bytes(random_image(0))
    msg = error_of(post(onnx_server, files=files(("good.png", good, "image/png"), ("bad.png", b"GIF89a junk", "image/png"))), 400)
    assert msg.startswith("bad.png:")


def test_client_file_name_is_never_used_as_a_path(onnx_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blob = os.urandom(150_000)  # large enough to be spooled to a temporary file by the parser
    name = f"../{tmp_path.name}/evil.png"
    r = post(onnx_server, files=files((name, png_bytes(random_image(0)), "image/png"), (name, blob, "image/png")))
    assert r.status_code == 400
    assert not (tmp_path / "evil.png").exists() and not (tmp_path.parent / "evil.png").exists()


def test_server_survives_bad_input(onnx_server):
    assert httpx.get(f"{onnx_server.url}/health").json()["status"] == "ok"
    r = post(onnx_server, files=files(("a.png", png_bytes(random_image(0)), "image/png")))
    assert r.status_code == 200


# --- docs and the page ----------------------------------------------------------------------

def test_docs_are_served_locally(onnx_server):
    html = httpx.get(f"{onnx_server.url}/docs").text
    assert "/docs-assets/swagger-ui-bundle.js" in html and "cdn." not in html and "https://" not in html
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        r = httpx.get(f"{onnx_server.url}/docs-assets/{asset}")
        assert r.status_code == 200 and len(r.content) > 10_000
    spec = httpx.get(f"{onnx_server.url}/openapi.json").json()
    assert "/predict" in spec["paths"] and "multipart/form-data" in json.dumps(spec["paths"]["/predict"])


def test_web_page(onnx_server):
    html = httpx.get(f"{onnx_server.url}/").text
    assert 'id="file-input"' in html and "/static/app.js" in html
    js = httpx.get(f"{onnx_server.url}/static/app.js").text
    assert "/predict?k=5&heatmap=true" in js


# --- the slim install: .onnx serving and predict without TensorFlow or Keras -------------------

SLIM = """
import sys
for name in ("tensorflow", "keras", "sklearn", "matplotlib", "tf2onnx", "onnx"):
    sys.modules[name] = None  # any import of these now fails
import io, json
from fastapi.testclient import TestClient
from imgclf.deploy.serve import create_app
from imgclf.cli import main
app = create_app(sys.argv[1])
with TestClient(app) as c:
    r = c.post("/predict?k=2&heatmap=true", files=[("files", ("a.png", open(sys.argv[2], "rb").read(), "image/png"))])
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["heatmap"]["method"] == "occlusion"
assert main(["predict", sys.argv[1], sys.argv[2], "--json"]) == 0
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras") and sys.modules[m] is not None)
assert not loaded, loaded
print("SLIM-OK")
"""


def test_onnx_path_imports_no_tensorflow_or_keras(models, tmp_path):
    img = tmp_path / "a.png"
    img.write_bytes(png_bytes(random_image(0)))
    r = subprocess.run([sys.executable, "-c", SLIM, str(models["onnx"]), str(img)], capture_output=True,
                       text=True, timeout=HANG)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "SLIM-OK" in r.stdout
    out = json.loads(r.stdout.split("SLIM-OK")[0])
    assert out[0]["file"] == str(img) and len(out[0]["top"]) == 5


def test_cli_bad_model_is_one_error_line(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    r = subprocess.run([sys.executable, "-m", "imgclf.cli", "serve", str(bad)], capture_output=True, text=True,
                       timeout=HANG)
    assert r.returncode == 2 and r.stderr.strip().startswith("error: ") and "not a valid ONNX model" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# --- the pretrained model ---------------------------------------------------------------------

def test_pretrained_cifar10_predicts_real_images(tmp_path):
    from imgclf.runtime.zoo import available, pretrained_path

    assert "cifar10" in available()
    path = pretrained_path("cifar10")
    assert path.stat().st_size < 2_000_000
    imgs = sorted((CIFAR_JPEG / "cat").glob("*.jpg"))[:2]
    r = subprocess.run([sys.executable, "-m", "imgclf.cli", "predict", "--pretrained", "cifar10", *map(str, imgs),
                        "--json", "-k", "3"], capture_output=True, text=True, timeout=HANG)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert len(rows) == 2 and all(t["class"] in CLASSES for row in rows for t in row["top"])
    r = subprocess.run([sys.executable, "-m", "imgclf.cli", "predict", "--pretrained", "nope", str(imgs[0])],
                       capture_output=True, text=True, timeout=HANG)
    assert r.returncode == 2 and "unknown pretrained model 'nope'" in r.stderr


@pytest.mark.slow
def test_cli_serve_pretrained_binds_loopback(tmp_path):
    """`imgclf serve --pretrained cifar10`: a real server process, on 127.0.0.1 by default, whose
    model card gives the data it saw and its validation accuracy."""
    import time

    from deploy_helpers import free_port

    from imgclf.cli import build_parser

    assert build_parser().parse_args(["serve", "m.onnx"]).host == "127.0.0.1"
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "imgclf.cli", "serve", "--pretrained", "cifar10", "--port",
                             str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, info = time.time() + HANG, None
        while time.time() < deadline and proc.poll() is None and info is None:
            try:
                info = httpx.get(f"http://127.0.0.1:{port}/model", timeout=2).json()
            except httpx.HTTPError:
                time.sleep(0.3)
        assert info is not None, "server did not start"
        assert info["runtime"] == "keras" and len(info["classes"]) == 10  # .keras preferred: Grad-CAM heatmaps
        assert "CIFAR-10 training images" in info["card"]["data"] and 0.3 < info["card"]["val_accuracy"] <= 1
        assert info["card"]["val_accuracy"] == info["metrics"]["val"]["accuracy"]
    finally:
        proc.terminate()
        out = proc.communicate(timeout=HANG)[0]
    assert f"on http://127.0.0.1:{port}" in out

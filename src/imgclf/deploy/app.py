"""The app factory behind `imgclf serve --workers N`: settings travel through the environment.

    imgclf serve model.onnx --workers 2 --threads 1
    # the same without the CLI (any ASGI process manager works the same way):
    IMGCLF_SERVE_MODEL=model.onnx uvicorn imgclf.deploy.app:create_app --factory --workers 2

uvicorn starts each worker as a fresh process that imports this module and calls `create_app()`,
which reads the IMGCLF_SERVE_* variables below, checks them, loads the model and builds the app of
imgclf.deploy.serve. A bad value is one `error:` line and exit status 2 (a worker under uvicorn's
supervisor exits with uvicorn's start-up failure status instead, so that it is not restarted in a
loop, and `imgclf serve` reports the line once with exit status 2).

`imgclf serve` checks the settings and the model in the parent before any worker starts, gives the
workers a fresh PROMETHEUS_MULTIPROC_DIR for /metrics and removes it when they have stopped.
"""

from __future__ import annotations

import inspect
import multiprocessing
import os
import sys
import tempfile
from dataclasses import dataclass, fields, replace
from pathlib import Path

from ..errors import ImgclfError, quote, shorten
from .metrics import MULTIPROC_ENV

PREFIX = "IMGCLF_SERVE_"
STATUS_ENV = PREFIX + "STATUS_DIR"  # where a worker that cannot start leaves its error line
FAILED = "startup-error.txt"
STARTUP_FAILURE = 3  # uvicorn.config.STARTUP_FAILURE: the supervisor stops instead of restarting
HEATMAPS = ("auto", "grad-cam", "occlusion", "none")
HEALTHCHECK_S = 60


@dataclass(frozen=True)
class Settings:
    """What a serving worker needs; every field has an IMGCLF_SERVE_<FIELD> variable."""

    model: Path
    max_files: int = 16
    max_bytes: int = 20_000_000
    batch_window_ms: float = 2.0
    max_batch: int = 64
    heatmap: str = "auto"
    threads: int | None = None  # intra-op threads of ONNX Runtime / TensorFlow (None: the runtime's own)
    graceful_timeout: float = 30.0  # on shutdown: in-flight requests, then the batcher's queue (seconds)

    def options(self) -> dict:
        """Keyword arguments of serve.create_app."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model"}

    def to_env(self) -> dict[str, str]:
        return {env_name(f.name): str(getattr(self, f.name)) for f in fields(self)
                if getattr(self, f.name) is not None}


def env_name(field: str) -> str:
    return PREFIX + field.upper()


def _int(low: int):
    def parse(text: str) -> int:
        value = int(text.strip())
        if value < low:
            raise ValueError
        return value

    parse.expected = f"an integer >= {low}"
    return parse


def _window(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 60_000:  # NaN fails too
        raise ValueError
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 3600:  # NaN fails too
        raise ValueError
    return value


def _heatmap(text: str) -> str:
    if text not in HEATMAPS:
        raise ValueError
    return text


_window.expected = "a number of milliseconds from 0 to 60000"
_seconds.expected = "a number of seconds from 0 to 3600"
_heatmap.expected = "one of " + ", ".join(HEATMAPS)
PARSERS = {"max_files": _int(1), "max_bytes": _int(1), "batch_window_ms": _window, "max_batch": _int(1),
           "heatmap": _heatmap, "threads": _int(1), "graceful_timeout": _seconds}


def settings_from_env(environ=None) -> Settings:
    """The settings in `environ` (default os.environ), checked: ImgclfError names the variable."""
    environ = os.environ if environ is None else environ
    model = environ.get(env_name("model"), "").strip()
    if not model:
        raise ImgclfError(f"{env_name('model')}: not set (expected the path of the .onnx or .keras model to serve)")
    values = {}
    for name, parse in PARSERS.items():
        text = environ.get(env_name(name))
        if text is None or (name == "threads" and text.strip() in ("", "None")):
            continue
        try:
            values[name] = parse(text)
        except ValueError:
            raise ImgclfError(f"{env_name(name)}: expected {parse.expected}, got {quote(shorten(text, 80))}") from None
    return Settings(Path(model), **values)


def check_model(path: Path) -> None:
    """Fail early (in the parent, before any worker starts) on a model file a worker could not load.
    An .onnx file is opened by ONNX Runtime; a .keras file's metadata is read and checked (without
    importing Keras into the parent)."""
    path = Path(path)
    if path.suffix == ".onnx":
        from ..runtime.onnx_runtime import OnnxClassifier

        OnnxClassifier(path, threads=1)
    elif path.suffix == ".keras":
        from ..runtime.modelfile import read_meta

        if not path.is_file():
            raise ImgclfError(f"{path}: model file not found")
        read_meta(path)
    else:
        from ..runtime.load import load_classifier

        load_classifier(path)  # raises: not found, or not a model format


def create_app():
    """The app factory (uvicorn --factory): the serving app for the settings in the environment."""
    from .serve import create_app as build

    try:
        settings = settings_from_env()
        if str(settings.model).endswith(".keras"):
            from ..quiet import import_keras

            import_keras()  # each worker without TensorFlow's start-up lines
        return build(settings.model, **settings.options())
    except ImgclfError as e:
        line = shorten(" ".join(str(e).splitlines()), 2000)
        in_worker = multiprocessing.parent_process() is not None  # under uvicorn's supervisor
        status_dir = os.environ.get(STATUS_ENV)
        if in_worker and status_dir:  # `imgclf serve` prints it, once for all workers
            tmp = Path(status_dir) / f".{FAILED}.{os.getpid()}"
            tmp.write_text(line + "\n")
            os.replace(tmp, Path(status_dir) / FAILED)
        else:
            print(f"error: {line}", file=sys.stderr, flush=True)
        raise SystemExit(STARTUP_FAILURE if in_worker else 2) from None


def run(settings: Settings, workers: int = 1, host: str = "127.0.0.1", port: int = 8000,
        log_level: str = "info", graceful_timeout: float | None = None) -> None:
    """Serve with `workers` processes (blocking); one worker serves in this process, as before.
    `graceful_timeout`, if given, replaces settings.graceful_timeout (uvicorn's and the batcher's)."""
    from .serve import serve

    if workers < 1:
        raise ImgclfError(f"--workers: expected an integer >= 1, got {workers}")
    if graceful_timeout is not None:
        settings = replace(settings, graceful_timeout=graceful_timeout)
    if workers == 1:
        return serve(settings.model, host=host, port=port, log_level=log_level, **settings.options())
    import uvicorn

    settings = replace(settings, model=Path(settings.model).resolve())
    check_model(settings.model)
    settings_from_env(settings.to_env())  # the workers will read back exactly this
    with tempfile.TemporaryDirectory(prefix="imgclf-serve-") as tmp:
        metrics_dir = Path(tmp) / "metrics"
        metrics_dir.mkdir()
        env = {**settings.to_env(), MULTIPROC_ENV: str(metrics_dir), STATUS_ENV: tmp}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        print(f"serving {settings.model.name} with {workers} worker processes on http://{host}:{port}"
              f"  (docs: /docs, page: /, metrics: /metrics)", flush=True)
        # uvicorn's supervisor kills a worker that does not answer its health check in time; loading
        # TensorFlow holds the GIL for seconds on a busy machine, so it gets a minute, not 5 s
        extra = {"timeout_worker_healthcheck": HEALTHCHECK_S} \
            if "timeout_worker_healthcheck" in inspect.signature(uvicorn.run).parameters else {}
        try:
            uvicorn.run(f"{__name__}:create_app", factory=True, workers=workers, host=host, port=port,
                        log_level=log_level, timeout_graceful_shutdown=settings.graceful_timeout, **extra)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        failed = Path(tmp) / FAILED
        if failed.is_file():
            raise ImgclfError(failed.read_text().strip())

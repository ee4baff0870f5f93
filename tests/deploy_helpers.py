"""Helpers for the deployment tests (test_serve, test_export, test_browser): tiny models, a real
uvicorn server on loopback in a background thread, and image bytes."""

from __future__ import annotations

import io
import os
import socket
import threading
import time

from conftest import HANG
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SHARED = Path(os.environ.get("IMGCLF_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
CIFAR_JPEG = SHARED / "datasets" / "cifar10-jpeg" / "train"


def make_tiny_model(path: Path, model: str = "seed_cnn", classes=CLASSES, steps: int = 2, **options) -> Path:
    """A small model trained for a couple of steps on random data (so its outputs depend on the image)."""
    import keras

    from imgclf.models.registry import create_model
    from imgclf.runtime.modelfile import save_model

    keras.utils.set_random_seed(0)
    m = create_model(model, len(classes), (32, 32, 3), **options)
    m.compile(keras.optimizers.SGD(0.05), "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (32 * steps, 32, 32, 3)).astype("float32")
    m.fit(x, np.arange(len(x)) % len(classes), batch_size=32, epochs=1, verbose=0)
    meta = {"class_names": list(classes), "input_size": 32, "resize": "stretch", "model": model,
            "temperature": 1.0, "imgclf_version": "0.1.0", "keras_version": keras.__version__,
            "backend": keras.backend.backend(), "params": int(m.count_params()),
            "metrics": {"val": {"accuracy": 0.123, "loss": 2.3, "n": 10}}}
    return save_model(m, path, meta)


def png_bytes(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def random_image(seed: int = 0, size=(32, 32)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3)).astype(np.uint8)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """uvicorn serving `app` on 127.0.0.1:<free port> in a daemon thread (a real HTTP server)."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + HANG
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)

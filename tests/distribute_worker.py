"""Run by tests/test_distribute.py in a fresh process: `python distribute_worker.py BACKEND OUT_JSON`.

The device count must be fixed before the backend starts, hence a process of its own: JAX gets
two virtual CPU devices from XLA_FLAGS (set here, before jax loads), TensorFlow two logical CPU
devices. On tiny generated data it trains the same config on 1 and on 2 devices (the same
global batch) and a 2-device run interrupted after epoch 1 and resumed, and writes the largest
weight and loss differences as JSON.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

BACKEND, OUT = sys.argv[1], Path(sys.argv[2])
os.environ["KERAS_BACKEND"] = BACKEND
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if BACKEND == "tensorflow":
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import imgclf  # noqa: E402
from imgclf.errors import ImgclfError  # noqa: E402

ROOT = OUT.parent
# 2 classes x 36 images at 16 px: a stratified 10% validation split leaves 64 training images, so
# every batch of 8 (4 per device) is full, and the 8 validation images split evenly too
rng = np.random.default_rng(0)
for name, rgb in {"blue": (30, 60, 220), "red": (220, 40, 40)}.items():
    (ROOT / "data" / name).mkdir(parents=True, exist_ok=True)
    for i in range(36):
        img = np.clip(np.asarray(rgb)[None, None] + rng.integers(-90, 90, (16, 16, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(ROOT / "data" / name / f"{i:02d}.png")

# fast94's settings (fast80's with its own pieces: lookahead from 30% of training, BN shifts and
# biases at 64x the learning rate) on a tiny fastnet: 2 epochs of 8 steps, so the lookahead
# averages at steps 5, 10 and 15, and the interruption falls between two of them
CONFIG = dict(recipe="fast94", data=str(ROOT / "data"), input_size=16, epochs=2, batch_size=8, warmup_epochs=0.5,
              seed=3, verbose=0, report=False, precision="float32", tta=False,
              model_options={"widths": [8, 16, 16], "whiten_width": 8, "logit_scale": 1 / 9})


class Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise KeyboardInterrupt("simulated interruption after epoch 1")


def weights(result) -> list[np.ndarray]:
    model, _ = imgclf.load_model(result.model_path)  # the saved file: plain batch norm, one device
    return [np.asarray(w, np.float64) for w in model.get_weights()]


def history(result) -> list[dict]:
    with open(result.run_dir / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def largest(a, b) -> float:
    return float(max(np.abs(x - y).max() for x, y in zip(a, b)))


report = {"backend": keras.backend.backend(), "errors": []}
for bad in (dict(devices=3), dict(devices=2, batch_size=7)):  # refused before anything is written
    try:
        imgclf.train(run_dir=ROOT / "bad", **{**CONFIG, **bad})
    except ImgclfError as e:
        report["errors"].append([str(e), (ROOT / "bad").exists()])
one = imgclf.train(run_dir=ROOT / "one", devices=1, **CONFIG)
two = imgclf.train(run_dir=ROOT / "two", devices=2, **CONFIG)
w1, w2 = weights(one), weights(two)
report["match"] = {
    "weights": largest(w1, w2),
    "weight_scale": float(max(np.abs(w).max() for w in w1)),
    "loss": float(max(abs(float(a["loss"]) - float(b["loss"])) for a, b in zip(history(one), history(two)))),
    "val_accuracy": [one.metrics["val"]["accuracy"], two.metrics["val"]["accuracy"]],
    "synchronized": [layer.get_config()["synchronized"] for layer in imgclf.load_model(two.model_path)[0].layers
                     if isinstance(layer, keras.layers.BatchNormalization)],
    "seconds": [one.metrics["seconds"]["total"], two.metrics["seconds"]["total"]],
}
try:  # 2 devices, interrupted after epoch 1, then resumed
    imgclf.train(run_dir=ROOT / "cut", devices=2, callbacks=[Interrupt()], **CONFIG)
except KeyboardInterrupt:
    pass
resumed = imgclf.train(resume=ROOT / "cut", verbose=0)
report["resume"] = {"weights": largest(w2, weights(resumed)), "devices": resumed.config.devices,
                    "epochs": len(history(resumed))}
OUT.write_text(json.dumps(report, indent=1))

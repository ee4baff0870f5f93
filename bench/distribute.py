"""Benchmark for issue 16, part 1 (data-parallel training): one recipe trained on 1 device and on
N devices at the same global batch, per backend; how far apart the two runs end and what each took.

    python bench/distribute.py                          # fast80, 2 epochs, 100 CIFAR JPEGs per class, jax and tf
    python bench/distribute.py --devices 8 --backend jax --limit-per-class 0 --epochs 4   # a GPU machine
    python bench/distribute.py --tiny                   # generated 16 px images, a minute or two

Each backend runs in a child process of its own, since the device count is fixed before the
backend starts. Where the machine has fewer than N devices of its kind (a CPU), the child makes N
virtual CPU devices (JAX: XLA_FLAGS=--xla_force_host_platform_device_count=N; TensorFlow: N logical
CPU devices). Virtual devices share the same cores, so on a CPU they show correctness and the
launch, not a speed-up. On GPUs `imgclf train --devices N` uses the real ones.

Reported per backend (--out, default bench/results/distribute_cpu.json): for 1 and for N devices
the train() wall time, fit time, mean epoch time, training images per second and validation
accuracy; and the largest difference between the two runs' saved weights and epoch losses.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("IMGCLF_SHARED", REPO.parent / "shared"))


def tiny_folder(root: Path) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, rgb in {"blue": (30, 60, 220), "red": (220, 40, 40), "green": (40, 200, 60)}.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(48):
            img = np.clip(np.asarray(rgb)[None, None] + rng.integers(-90, 90, (16, 16, 3)), 0, 255)
            Image.fromarray(img.astype(np.uint8)).save(root / name / f"{i:02d}.png")
    return root


def child(args) -> None:
    """In a fresh process: the devices first, then the two runs."""
    if args.backend == "tensorflow":
        import tensorflow as tf

        if not tf.config.list_physical_devices("GPU"):
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * args.devices)
    import keras
    import numpy as np

    import imgclf
    from imgclf.training.distribute import visible_devices

    work = Path(args.work)
    cfg = dict(recipe=args.recipe, data=args.data, epochs=args.epochs, seed=0, verbose=0, report=False,
               limit_per_class=args.limit_per_class or None, precision="float32")
    if args.tiny:
        cfg.update(input_size=16, batch_size=16, tta=False,
                   model_options={"widths": [8, 16, 16], "whiten_width": 8, "logit_scale": 1 / 9})
    runs, saved = {}, {}
    for devices in (1, args.devices):
        t0 = time.perf_counter()
        result = imgclf.train(run_dir=work / f"devices{devices}", devices=devices, **cfg)
        wall = time.perf_counter() - t0
        with open(result.run_dir / "history.csv", newline="") as f:
            history = list(csv.DictReader(f))
        m = result.metrics
        runs[str(devices)] = {"train_seconds": wall, "fit_seconds": m["seconds"]["fit"],
                              "epoch_seconds": [float(r["epoch_seconds"]) for r in history],
                              "train_images_per_second": m["train_images_per_second"],
                              "val_accuracy": m["val"]["accuracy"], "loss": [float(r["loss"]) for r in history]}
        model, _ = imgclf.load_model(result.model_path)
        saved[devices] = [np.asarray(w, np.float64) for w in model.get_weights()]
    one, many = runs["1"], runs[str(args.devices)]
    report = {
        "backend": keras.backend.backend(), "devices": args.devices,
        "visible_devices": [str(d) for d in visible_devices(keras.backend.backend())],
        "config": cfg, "runs": runs,
        "max_weight_difference": float(max(np.abs(a - b).max() for a, b in zip(saved[1], saved[args.devices]))),
        "max_loss_difference": float(max(abs(a - b) for a, b in zip(one["loss"], many["loss"]))),
    }
    Path(args.child_out).write_text(json.dumps(report, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=["jax", "tensorflow", "both"], default="both")
    p.add_argument("--devices", type=int, default=2, help="N: the many-device run (default 2)")
    p.add_argument("--recipe", default="fast80")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--data", default=str(SHARED / "datasets" / "cifar10-jpeg" / "train"))
    p.add_argument("--limit-per-class", type=int, default=100, help="0: every image")
    p.add_argument("--tiny", action="store_true", help="generated 16 px images and a tiny fastnet")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "distribute_cpu.json")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    results = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "machine": platform.platform(),
               "cpus": os.cpu_count(), "command": " ".join(["python", "bench/distribute.py", *sys.argv[1:]])}
    with tempfile.TemporaryDirectory(prefix="imgclf-distribute-") as tmp:
        if args.tiny:
            args.data = str(tiny_folder(Path(tmp) / "data"))
        for backend in (["jax", "tensorflow"] if args.backend == "both" else [args.backend]):
            env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2",
                   "XLA_FLAGS": f"--xla_force_host_platform_device_count={args.devices}"}
            out = Path(tmp) / f"{backend}.json"
            command = [sys.executable, __file__, "--child", "--backend", backend, "--child-out", str(out),
                       "--work", str(Path(tmp) / backend), "--devices", str(args.devices), "--recipe", args.recipe,
                       "--epochs", str(args.epochs), "--data", args.data,
                       "--limit-per-class", str(args.limit_per_class)] + (["--tiny"] if args.tiny else [])
            subprocess.run(command, env=env, check=True)
            results[backend] = json.loads(out.read_text())
            r = results[backend]
            print(f"{backend}: 1 vs {args.devices} devices: weights differ by at most "
                  f"{r['max_weight_difference']:.2e}, epoch losses by {r['max_loss_difference']:.2e}; "
                  + ", ".join(f"{d} device(s) {run['train_seconds']:.0f} s, val {run['val_accuracy']:.4f}"
                              for d, run in r["runs"].items()), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()

"""The stages of bench/gpu.py's `run`, each run in a child process of its own (`gpu.py stage NAME`):
PyTorch (airbench) and JAX (imgclf) never share a process, and a stage past the budget is stopped.

Each takes (work folder, results folder, smoke) and returns a JSON-able dict. work/data.npz holds
the decoded images (x, y), the split (train, val: indices into x) and the class names; work/cifar/
the same images as CIFAR-10 python batches, which imgclf's loader reads. The clocks:
  airbench94  `seconds`: its own CUDA-event clock, training only (whitening init included, its
              per-epoch evaluation and data loading excluded), as airbench reports it
  fast94      `seconds`: the sum of history.csv's epoch_seconds (each epoch's validation pass
              included, data loading and the final evaluation excluded)
"""

from __future__ import annotations

import csv
import inspect
import math
import os
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

from gpu import GPU_OPTIONS, versions


def load_work(work: Path) -> dict:
    with np.load(work / "data.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def steady(images_per_epoch: int, epoch_seconds: list[float]):
    """Images per second over the epochs after the first (which compiles), by their median."""
    return images_per_epoch / statistics.median(epoch_seconds[1:]) if len(epoch_seconds) > 1 else None


def jax_device() -> dict:
    import jax

    d = jax.devices()[0]
    return {"platform": d.platform, "kind": d.device_kind, "count": jax.device_count()}


# ---------------------------------------------------------------------------------------------

def airbench94(work: Path, out: Path, smoke: bool) -> dict:
    try:
        import torch
    except ImportError as e:
        return {"skipped": f"PyTorch is not installed here ({e}); airbench's code needs it"}
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device: airbench's code runs on CUDA only (fp16 nets, CUDA events)"}
    import airbench
    import airbench.lib_airbench94 as lib
    import airbench.utils as utils

    d = load_work(work)
    folder = work / "airbench"
    (folder / "cifar10").mkdir(parents=True, exist_ok=True)
    names = [str(n) for n in d["class_names"]]
    for split, index in (("train", d["train"]), ("test", d["val"])):  # what CifarLoader reads, NHWC uint8
        torch.save({"images": torch.from_numpy(d["x"][index]), "labels": torch.from_numpy(d["y"][index]),
                    "classes": names}, folder / "cifar10" / f"{split}.pt")
    os.chdir(folder)  # train94 opens CifarLoader('cifar10', ...) relative to the working folder
    records, original = [], utils.print_training_details

    def record(variables, is_final_entry):  # airbench prints each epoch's numbers through this
        records.append({k: variables.get(k) for k in ("epoch", "val_acc", "tta_val_acc", "total_time_seconds")})
        original(variables, is_final_entry)

    utils.print_training_details = record
    torch.manual_seed(0)
    hyp = lib.hyp["opt"]
    epochs = 1 if smoke else hyp["train_epochs"]
    t = time.perf_counter()
    airbench.warmup94()
    warmup = time.perf_counter() - t
    records.clear()
    t = time.perf_counter()
    airbench.train94(epochs=epochs)
    wall = time.perf_counter() - t
    batch = hyp["batch_size"]
    steps = len(d["train"]) // batch  # drop_last
    curve = [{"epoch": r["epoch"] + 1, "val": float(r["val_acc"]), "seconds": float(r["total_time_seconds"])}
             for r in records if isinstance(r["epoch"], int)]
    final = next(r for r in records if r["epoch"] == "eval")
    total_steps = math.ceil(steps * epochs)
    train_seconds = curve[-1]["seconds"]
    epoch_seconds = list(np.diff([0.0] + [c["seconds"] for c in curve]))
    return {"code": f"airbench {versions('airbench')['airbench']}, lib_airbench94.train94 as published",
            "hyperparameters": {"epochs": epochs, "batch_size": batch, "steps": total_steps},
            "n_train": len(d["train"]), "n_val": len(d["val"]), "curve": curve,
            "final_val_tta": float(final["tta_val_acc"]), "last_epoch_val": curve[-1]["val"],
            "train_seconds": train_seconds, "warmup_seconds": warmup, "wall_seconds": wall,
            "images_per_second": total_steps * batch / train_seconds,
            "steady_images_per_second": steady(steps * batch, epoch_seconds),
            "device": torch.cuda.get_device_name(0), "versions": versions("torch", "torchvision", "airbench")}


# ---------------------------------------------------------------------------------------------

def fast94_run(work: Path, smoke: bool, options: dict) -> dict:
    from imgclf.config import FIELDS
    from imgclf.training.trainer import train

    overrides, skipped = {"epochs": 1} if smoke else {}, []
    for name, value in options.items():
        if name in FIELDS:
            overrides[name] = value
        else:
            skipped.append(name)
            print(f"fast94: skipped {name}={value}: imgclf.config does not know the field yet", flush=True)
    if options and not set(options) - set(skipped):
        return {"skipped": f"imgclf.config knows none of {sorted(options)} yet", "skipped_options": skipped}
    d = load_work(work)
    run_dir = work / ("run_" + "_".join(["fast94", *overrides]))
    t = time.perf_counter()
    result = train(recipe="fast94", data=str(work / "cifar"), run_dir=run_dir, verbose=2, evaluate_test=False,
                   **overrides)
    wall = time.perf_counter() - t
    with open(run_dir / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    epoch_seconds = [float(r["epoch_seconds"]) for r in rows]
    curve = [{"epoch": int(r["epoch"]), "val": float(r["val_accuracy"]), "seconds": float(s),
              "epoch_seconds": e} for r, s, e in zip(rows, np.cumsum(epoch_seconds), epoch_seconds)]
    m, n = result.metrics, len(result.data.train)
    val_ids = sorted(int(f.rsplit("/", 1)[1]) for f in result.data.val.files)  # "cifar10/train/00042"
    config = result.config.to_dict()
    return {"overrides": overrides, "skipped_options": skipped,
            "config": {k: config.get(k) for k in ("epochs", "batch_size", "precision", *GPU_OPTIONS)},
            "precision": m["precision"], "n_train": n, "n_val": len(result.data.val),
            "same_held_out_as_airbench94": val_ids == sorted(int(i) for i in d["val"]),
            "curve": curve, "final_val_tta": m["val"]["accuracy"], "tta": m["tta"],
            "last_epoch_val": curve[-1]["val"], "train_seconds": float(sum(epoch_seconds)), "wall_seconds": wall,
            "seconds": m["seconds"], "images_per_second": m["train_images_per_second"],
            "steady_images_per_second": steady(n, epoch_seconds), "flops": m["flops"],
            "device": jax_device(), "versions": versions("jax", "jaxlib", "keras", "numpy")}


def fast94(work: Path, out: Path, smoke: bool) -> dict:
    return fast94_run(work, smoke, {})


def fast94_gpu(work: Path, out: Path, smoke: bool) -> dict:
    return fast94_run(work, smoke, GPU_OPTIONS)


# ---------------------------------------------------------------------------------------------

def profile(work: Path, out: Path, smoke: bool) -> dict:
    import keras

    from imgclf.config import FIELDS, make_config
    from imgclf.data.dataset import ImageSet
    from imgclf.training.batches import Batches, one_hot_labels
    from imgclf.training.callbacks import Lookahead, Schedule
    from imgclf.training.optimizers import build_compiled_model

    d = load_work(work)
    tr = d["train"]
    images = ImageSet(d["y"][tr], [str(i) for i in tr], d["x"][tr])
    cfg = make_config(recipe="fast94", data=str(work / "cifar"))
    report = {"device": jax_device(), "n_train": len(tr), "batch_size": cfg.batch_size}

    def produce(batches) -> float:  # every batch of one training epoch (the second: shuffled, augmented)
        batches.set_epoch(1)
        t = time.perf_counter()
        for i in range(len(batches)):
            batches[i]
        return time.perf_counter() - t

    batches = Batches(images, cfg.batch_size, 10, train=True, seed=cfg.seed, cfg=cfg, one_hot=one_hot_labels(cfg))
    report["pipeline_epoch_seconds"] = produce(batches)
    report["batches_per_epoch"] = len(batches)
    if "augment_device" in FIELDS and "device" in inspect.signature(Batches).parameters:
        dev = make_config(recipe="fast94", data=str(work / "cifar"), augment_device=True)
        report["pipeline_epoch_seconds_augment_device"] = produce(Batches(
            images, dev.batch_size, 10, train=True, seed=dev.seed, cfg=dev, one_hot=one_hot_labels(dev), device=True))
    x, y = batches[0]

    class Same(keras.utils.PyDataset):  # one batch, again and again: no input pipeline
        def __init__(self, steps):
            super().__init__()
            self.steps = steps

        def __len__(self):
            return self.steps

        def __getitem__(self, i):
            return x, y

    class Clock(keras.callbacks.Callback):  # epoch hooks only: fit() stays asynchronous per batch
        def __init__(self):
            super().__init__()
            self.seconds, self.t = [], 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            {k: float(v) for k, v in (logs or {}).items()}  # waits for the device
            self.seconds.append(time.perf_counter() - self.t)

    steps = 2 if smoke else len(batches)  # an epoch's worth of steps (the smoke test: a few)

    def timed(model, extra=()) -> dict:
        clock = Clock()
        model.fit(Same(steps), epochs=2, verbose=0, shuffle=False, callbacks=[clock, *extra])
        s = clock.seconds[-1]
        return {"steps": steps, "first_epoch_seconds": clock.seconds[0], "epoch_seconds": s,
                "images_per_second": steps * len(x) / s}

    report["compute"] = {}
    model = build_compiled_model(cfg, 10)
    report["compute"]["fast94"] = timed(model)
    # the trainer's per-batch callbacks (learning rate each step, lookahead every 5): Keras then waits
    # for every step's results; a 2-epoch schedule puts the second, timed epoch past lookahead_start
    short = make_config(recipe="fast94", data=str(work / "cifar"), epochs=2)
    schedule = Schedule(short, steps)
    report["compute"]["fast94 + callbacks"] = timed(model, [schedule, Lookahead(schedule)])
    opts = {k: v for k, v in GPU_OPTIONS.items() if k != "augment_device" and k in FIELDS}
    if opts:  # augment_device changes the model's inputs: left to the fast94_gpu stage
        gpu_cfg = make_config(recipe="fast94", data=str(work / "cifar"), **opts)
        report["compute"]["fast94 " + " ".join(f"{k}={v}" for k, v in opts.items())] = timed(
            build_compiled_model(gpu_cfg, 10))
    report["trace"] = trace(model, Same, out, 3 if smoke else 10)
    report["versions"] = versions("jax", "jaxlib", "keras")
    return report


def trace(model, dataset, out: Path, steps: int) -> str:
    """A jax.profiler trace of `steps` steps of fit() on the constant batch, as OUT/jax_trace.tgz."""
    import jax

    with tempfile.TemporaryDirectory() as tmp:
        try:
            jax.profiler.start_trace(tmp)
            model.fit(dataset(steps), epochs=1, verbose=0, shuffle=False)
            jax.profiler.stop_trace()
        except Exception as e:  # the trace is optional: say why there is none
            return f"no trace: {type(e).__name__}: {e}"[:300]
        target = out / "jax_trace.tgz"
        partial = out / f".jax_trace.tgz.tmp{os.getpid()}"
        with tarfile.open(partial, "w:gz") as tar:
            tar.add(tmp, arcname="jax_trace")
        if partial.stat().st_size > 15 * 2**20:  # under the largest file the device tool returns
            partial.unlink()
            return "no trace: larger than the device tool returns"
        os.replace(partial, target)
        size = target.stat().st_size / 2**20
        return f"{target.name}: {size:.2f} MiB (open with TensorBoard's profile plugin or xprof)"


STAGE_FUNCTIONS = {"airbench94": airbench94, "fast94": fast94, "profile": profile, "fast94_gpu": fast94_gpu}

__all__ = ["STAGE_FUNCTIONS"]

"""Benchmark for issue 16, part 2: training from a folder that streams from disk against the same
folder held in memory. Not a test: run it by hand.

    python bench/stream.py                          # 200,000 generated 32-px JPEGs, one epoch each path
    python bench/stream.py --images 20000 --out bench/results/stream_cpu.json   # reduced size
    python bench/stream.py --packed                 # also the same images packed (imgclf pack), streamed

It writes a folder of 10 classes of generated 32-px JPEGs (quality 75, a class colour, a gradient
and noise) into a temporary folder (--work; removed at the end unless --keep), then trains the
fast80 network (recipe fast80: its net, batch size, optimizer and augmentation) for one epoch,
or --steps steps, in a fresh process per path:

  memory   the folder decoded into memory first (cache in the work folder), then training reads
           its uint8 array (the default for a set under IMGCLF_MAX_MEMORY_GB);
  stream   IMGCLF_MAX_MEMORY_GB set below the set's size: nothing is decoded before training; batches
           are decoded during it by data/stream.py (Grain threads, IMGCLF_STREAM_THREADS, default
           one per CPU) from the same index-keyed batch source;
  packed   (--packed) the same, from `imgclf pack`'s ArrayRecord shards.

Throughput is training images per second over the steps after the first --warmup (compilation
excluded), and the result's ratio stream / memory (target: at least 0.9). Resident memory (RSS)
is sampled every 0.2 s through the epoch; "max_deviation" compares every sample from 10% of the
steps to the end with the sample at 10% (target: within 10%), and "drift" the median over the last
tenth of the steps with the median over the tenth after 10% (TensorFlow's own working memory
swings within each step, in memory or streaming alike).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CLASSES = 10


def generate(root: Path, n: int, size: int = 32, seed: int = 0) -> float:
    """n JPEGs in root/c<k>/, round-robin over the classes; returns the seconds taken."""
    from PIL import Image

    t0 = time.perf_counter()
    colours = np.random.default_rng(seed).integers(30, 226, (CLASSES, 3))
    for c in range(CLASSES):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
    ramp = np.linspace(-40, 40, size)[None, :, None]

    def write(start: int) -> None:
        rng = np.random.default_rng([seed, start])
        for i in range(start, min(start + 1000, n)):
            c = i % CLASSES
            img = colours[c][None, None, :] + ramp * (1 if c % 2 else -1) + rng.normal(0, 25, (size, size, 3))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / f"c{c}" / f"{i:07d}.jpg", quality=75)

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(write, range(0, n, 1000)))
    return time.perf_counter() - t0


def child(args) -> dict:
    """One path, in this process: load, build fast80's net, fit for the steps, measure."""
    import keras
    import psutil

    from imgclf.config import make_config
    from imgclf.data import stream
    from imgclf.data.dataset import load_dataset
    from imgclf.models.registry import init_from_data
    from imgclf.training.batches import Batches, one_hot_labels
    from imgclf.training.optimizers import build_compiled_model

    proc = psutil.Process()
    t0 = time.perf_counter()
    data = load_dataset(args.data, input_size=32, val_fraction=0.01, progress=False)
    load_seconds = time.perf_counter() - t0
    cfg = make_config(recipe="fast80", seed=0)
    keras.utils.set_random_seed(0)
    model = build_compiled_model(cfg, CLASSES)
    init_from_data(model, data.train.images(np.arange(0, len(data.train), max(1, len(data.train) // 5000))))
    batches = Batches(data.train, cfg.batch_size, CLASSES, train=True, seed=0, cfg=cfg, one_hot=one_hot_labels(cfg))
    source = stream.wrap(batches, data.train)
    steps = min(args.steps or len(batches), len(batches))
    ends, samples, done = [], [], threading.Event()

    class Steps(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            ends.append(time.perf_counter())

    def sample():
        while not done.wait(0.2):
            samples.append((time.perf_counter(), len(ends), proc.memory_info().rss))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t_fit = time.perf_counter()
    model.fit(source, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False, callbacks=[Steps()])
    fit_seconds = time.perf_counter() - t_fit
    done.set()
    sampler.join()
    w = min(args.warmup, steps - 2)
    rate = (steps - 1 - w) * cfg.batch_size / (ends[-1] - ends[w])
    from_step = max(1, steps // 10)
    flat = [rss for _, k, rss in samples if from_step <= k < steps]
    base = flat[0] if flat else None
    # TensorFlow's working memory swings within each step; the trend is the median of the samples in
    # the first tenth after 10% of the steps against that of the last tenth
    head = [rss for _, k, rss in samples if from_step <= k < from_step + max(1, steps // 10)]
    tail = [rss for _, k, rss in samples if steps - max(1, steps // 10) <= k < steps]
    return {"path": args.path, "train_images": len(data.train), "streams": data.train.x is None,
            "stream_input": type(source).__name__, "steps": steps, "batch_size": cfg.batch_size,
            "warmup_steps": w, "images_per_second": rate, "fit_seconds": fit_seconds, "load_seconds": load_seconds,
            "threads": getattr(source, "threads", None),
            "rss_mb": {"at_10_percent": base / 2**20 if base else None,
                       "min_after": min(flat) / 2**20 if flat else None, "max_after": max(flat) / 2**20 if flat else None,
                       "end": flat[-1] / 2**20 if flat else None,
                       "max_deviation": max(abs(r - base) / base for r in flat) if flat else None,
                       "drift": float(np.median(tail) / np.median(head) - 1) if head and tail else None,
                       "samples": [[round(t - t_fit, 2), k, round(r / 2**20, 1)] for t, k, r in samples]}}


def run_child(path: str, data: Path, work: Path, args) -> dict:
    env = {**os.environ, "IMGCLF_CACHE": str(work / "cache"), "PYTHONPATH": str(REPO / "src")}
    env["IMGCLF_STREAM"] = "auto"
    if path == "memory":
        env["IMGCLF_MAX_MEMORY_GB"] = "64"
    else:
        env["IMGCLF_MAX_MEMORY_GB"] = "0.001"  # far below the set: it streams
    out = work / f"{path}.json"
    cmd = [sys.executable, __file__, "--child", path, "--data", str(data), "--result", str(out),
           "--steps", str(args.steps or 0), "--warmup", str(args.warmup)]
    subprocess.run(cmd, env=env, check=True)
    return json.loads(out.read_text())


def dump_results(results: dict) -> str:
    """The results as indented JSON, each path's RSS samples on one line (thousands of [t, step, MB]
    triples, which indent=1 would spread over three lines each)."""
    compact = {}
    for name, r in results.items():
        if isinstance(r, dict) and isinstance(r.get("rss_mb"), dict) and "samples" in r["rss_mb"]:
            compact[name] = json.dumps(r["rss_mb"]["samples"], separators=(",", ":"))
            results = {**results, name: {**r, "rss_mb": {**r["rss_mb"], "samples": f"@samples:{name}@"}}}
    text = json.dumps(results, indent=1)
    for name, samples in compact.items():
        text = text.replace(json.dumps(f"@samples:{name}@"), samples)
    return text + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200_000)
    ap.add_argument("--steps", type=int, default=0, help="training steps per path (default: one epoch)")
    ap.add_argument("--warmup", type=int, default=5, help="steps left out of the throughput (compilation)")
    ap.add_argument("--packed", action="store_true", help="also stream the folder packed by imgclf pack")
    ap.add_argument("--work", type=Path, help="work folder (default: a new temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the generated images")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "stream_cpu.json")
    ap.add_argument("--note", default="", help="what else ran on the machine, for the results file")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.path = args.child
        Path(args.result).write_text(json.dumps(child(args)))
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="imgclf-stream-"))
    data = work / "images"
    results = {"images": args.images, "machine": platform.platform(), "cpus": os.cpu_count(), "note": args.note,
               "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    try:
        if not data.is_dir():
            results["generate_seconds"] = generate(data, args.images)
        paths = {"memory": data, "stream": data}
        if args.packed:
            from imgclf.data.pack import pack

            t = time.perf_counter()
            pack(data, work / "packed", progress=False)
            results["pack_seconds"] = time.perf_counter() - t
            paths["packed"] = work / "packed"
        for name, where in paths.items():
            results[name] = run_child(name, where, work, args)
            r = results[name]
            print(f"{name}: {r['images_per_second']:.0f} images/s over {r['steps']} steps, RSS "
                  f"{r['rss_mb']['at_10_percent']:.0f} MB at 10% -> {r['rss_mb']['end']:.0f} MB at the end "
                  f"(max deviation {100 * r['rss_mb']['max_deviation']:.1f}%, median drift "
                  f"{100 * r['rss_mb']['drift']:+.1f}%), load {r['load_seconds']:.1f} s",
                  flush=True)
        for name in paths:
            if name != "memory":
                results[f"ratio_{name}"] = results[name]["images_per_second"] / results["memory"]["images_per_second"]
                print(f"throughput {name} / memory: {results[f'ratio_{name}']:.3f} (target >= 0.9)")
        results["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(dump_results(results))
        print(f"wrote {args.out}")
    finally:
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Benchmark for issue 4 (fast training), on the 45,000/5,000 train/validation split of
../shared/datasets/cifar10-jpeg. Not a test: run it by hand or in the background.

    python bench/fast.py                                  # everything (about 1.5 h on 2 cores)
    python bench/fast.py --parts matmul,backends,pipeline # the quick measurements only
    python bench/fast.py --parts fast80 --seeds 0,1,2
    python bench/fast.py --parts budget --budget 30m
    python bench/fast.py --parts fast80 --seeds 0,1 --set momentum=0.9 --set model_options.logit_scale=1  # a variant
    python bench/fast.py --parts seed --seed-from /path/to/a/finished/seed/run   # reuse a seed run

For every training run it prints: wall time to first reach 80.46% validation accuracy (the
seed README's test accuracy; at an epoch-end validation, or when the final model's validation
accuracy, with the recipe's test-time augmentation, is known; "never" if not reached), final
validation accuracy, total wall
time (data loading, training, final evaluation and saving), training images per second
(training steps only, validation excluded) and training FLOPs (imgclf.models.flops: a multiply-add is
2 FLOPs, a training step 3x the forward pass). It also prints this machine's float32 matmul
rate (numpy, 2048x2048), its bfloat16 rate (keras.ops) and training images/s of the fast80 net
on every installed backend.
Wall times count from the train() call, so data loading is included; run twice to compare a
cold decoded-image cache (~/.cache/imgclf) with a warm one. Results go to --out/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path(os.environ.get("IMGCLF_SHARED", Path(__file__).resolve().parents[1] / ".." / "shared")) \
    / "datasets" / "cifar10-jpeg"
TARGET = 0.8046  # the seed README's test accuracy
TARGET94 = 0.93  # issue 4's fast94 target (validation accuracy)


def matmul_rate(n: int = 2048, repeats: int = 10) -> float:
    """Best-of float32 matrix-multiply rate of numpy, in FLOP/s (2 n^3 FLOPs per product)."""
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def matmul_rate_bf16(n: int = 2048, repeats: int = 10) -> float:
    """The same product in bfloat16 through keras.ops (the default backend): the ceiling for
    --precision mixed_bfloat16 runs, whose training FLOP rate can exceed the float32 matmul rate."""
    import keras

    rng = np.random.default_rng(0)
    a, b = (keras.ops.convert_to_tensor(rng.random((n, n), dtype=np.float32), dtype="bfloat16") for _ in range(2))
    keras.ops.convert_to_numpy(keras.ops.matmul(a, b))
    t = time.perf_counter()
    for _ in range(repeats):
        c = keras.ops.matmul(a, b)
    keras.ops.convert_to_numpy(c)  # waits for the last product (backends may run asynchronously)
    return 2 * n ** 3 * repeats / (time.perf_counter() - t)


def load_avg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


# ---------------------------------------------------------------------------------------
# Backend throughput (a subprocess per backend: the backend is fixed at import time)
# ---------------------------------------------------------------------------------------

def backend_probe(steps: int, batch_size: int, recipe: str) -> dict:
    """Run inside a subprocess: training images/s of the recipe's model on constant data."""
    import keras

    from imgclf.config import make_config
    from imgclf.models.flops import count_flops
    from imgclf.training import build_compiled_model

    cfg = make_config(recipe=recipe, batch_size=batch_size)
    model = build_compiled_model(cfg, 10)
    x = np.random.default_rng(0).integers(0, 256, (batch_size * steps, 32, 32, 3)).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[np.random.default_rng(1).integers(0, 10, len(x))]
    model.fit(x[:batch_size * 2], y[:batch_size * 2], batch_size=batch_size, epochs=1, verbose=0)  # compile
    t = time.perf_counter()
    model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0)
    seconds = time.perf_counter() - t
    ips = len(x) / seconds
    return {"backend": keras.backend.backend(), "images_per_second": ips,
            "flop_rate": ips * count_flops(model)["train"]}


def backends_table(steps: int, batch_size: int, recipe: str) -> list[dict]:
    import importlib.util

    rows = []
    for backend, module in (("tensorflow", "tensorflow"), ("jax", "jax"), ("torch", "torch")):
        if importlib.util.find_spec(module) is None:
            rows.append({"backend": backend, "error": "not installed"})
            continue
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
        cmd = [sys.executable, __file__, "--probe", "--probe-steps", str(steps), "--probe-batch", str(batch_size),
               "--probe-recipe", recipe]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        try:
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        except (IndexError, json.JSONDecodeError):
            rows.append({"backend": backend, "error": (out.stderr.strip().splitlines() or ["failed"])[-1][:200]})
    return rows


# ---------------------------------------------------------------------------------------
# Input pipeline: real batches (shuffle + augmentation) against one constant batch
# ---------------------------------------------------------------------------------------

def pipeline_check(data: str, recipe: str, steps: int) -> dict:
    import keras

    from imgclf.config import make_config
    from imgclf.data.dataset import load_dataset
    from imgclf.training import Batches, build_compiled_model

    cfg = make_config(recipe=recipe)
    ds = load_dataset(data)
    one_hot = cfg.label_smoothing > 0
    real = Batches(ds.train, cfg.batch_size, 10, train=True, seed=0, cfg=cfg, one_hot=one_hot)

    class Steps(keras.utils.PyDataset):
        """n batches, batch i from get(i)."""

        def __init__(self, get, n):
            super().__init__()
            self.get, self.n = get, n

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            return self.get(i)

    model = build_compiled_model(cfg, 10)
    first = real[0]
    const = Steps(lambda i: first, steps)
    model.fit(Steps(real.__getitem__, 3), epochs=1, verbose=0)  # compile
    times = {"real": [], "constant": []}
    for _ in range(2):  # alternate, to share any drift in machine load
        for name, ds_ in (("real", Steps(real.__getitem__, steps)), ("constant", const)):
            t = time.perf_counter()
            model.fit(ds_, epochs=1, verbose=0)
            times[name].append((time.perf_counter() - t) / steps)
    t = time.perf_counter()
    for i in range(steps):
        real[i]
    produce = (time.perf_counter() - t) / steps
    step_real, step_const = min(times["real"]), min(times["constant"])
    return {"step_real_s": step_real, "step_constant_s": step_const,
            "slowdown": step_real / step_const - 1, "batch_production_s": produce, "batch_size": cfg.batch_size}


# ---------------------------------------------------------------------------------------
# Training runs
# ---------------------------------------------------------------------------------------

def timed_run(name: str, out: Path, **kw) -> dict:
    import keras

    import imgclf

    t0 = time.perf_counter()
    curve = []

    class Mark(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.train_seconds = 0.0
            self.t = 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_test_begin(self, logs=None):
            self.train_seconds += time.perf_counter() - self.t

        def on_epoch_end(self, epoch, logs=None):
            curve.append({"epoch": epoch + 1, "wall_s": time.perf_counter() - t0,
                          "train_s": self.train_seconds, "val_accuracy": float(logs.get("val_accuracy", 0))})
            print(f"  [{name}] epoch {epoch + 1}: {curve[-1]['wall_s']:.0f} s, val {100 * curve[-1]['val_accuracy']:.2f}%",
                  flush=True)

    mark = Mark()
    run = imgclf.train(run_dir=out / name, verbose=0, report=False, callbacks=[mark], **kw)
    total = time.perf_counter() - t0
    m = run.metrics
    per_image = m["flops"]["train_per_image"]
    n_train = m["train"]["n"]
    seen = 0
    for point in curve:  # cumulative training FLOPs at each epoch end
        seen = min(point["epoch"] * n_train, m["flops"]["train_images"])
        point["train_pflop"] = per_image * seen / 1e15
    def first_reach(target, key):
        hit = next((p[key] for p in curve if p["val_accuracy"] >= target), None)
        if hit is None and m["val"]["accuracy"] >= target:  # reached by the final model (with the recipe's TTA)
            hit = m["seconds"]["to_final_val"] if key == "wall_s" else m["flops"]["total_train"] / 1e15
        return hit

    reached = first_reach(TARGET, "wall_s")
    return {"name": name, "time_to_93_s": first_reach(TARGET94, "wall_s"), "pflop_to_93": first_reach(TARGET94, "train_pflop"), "config": {k: v for k, v in kw.items() if k != "data"}, "recipe": kw.get("recipe"),
            "time_to_target_s": reached, "final_val_accuracy": m["val"]["accuracy"],
            "final_train_accuracy": m["train"]["accuracy"], "total_s": total, "data_load_s": m["seconds"]["data_load"],
            "to_final_val_s": m["seconds"]["to_final_val"], "tta": m.get("tta", False),
            "epochs": m["epochs_run"], "train_images_per_second": m["flops"]["train_images"] / max(mark.train_seconds, 1e-9),
            "train_pflop": m["flops"]["total_train"] / 1e15, "forward_mflop": m["flops"]["forward_per_image"] / 1e6,
            "params": None, "curve": curve, "run_dir": str(run.run_dir), "backend": m["backend"],
            "precision": m["precision"]}


def seed_from_run(run_dir: Path) -> dict:
    """Numbers for the seed recipe from a finished run directory (history.csv + metrics.json)."""
    import csv

    metrics = json.loads((run_dir / "metrics.json").read_text())
    rows = list(csv.DictReader(open(run_dir / "history.csv", newline="")))
    t, curve = metrics["seconds"]["data_load"], []
    for r in rows:
        t += float(r["epoch_seconds"])
        curve.append({"epoch": int(r["epoch"]), "wall_s": t, "val_accuracy": float(r["val_accuracy"])})
    per_image = 3 * 49_037_312  # seed_cnn forward FLOPs (imgclf.models.flops), x3 for training
    n = metrics["train"]["n"]
    reached = next((p["wall_s"] for p in curve if p["val_accuracy"] >= TARGET), None)
    return {"name": f"seed (from {run_dir})", "recipe": "seed", "time_to_target_s": reached,
            "final_val_accuracy": metrics["val"]["accuracy"], "total_s": metrics["seconds"]["total"],
            "data_load_s": metrics["seconds"]["data_load"], "epochs": len(rows),
            "train_images_per_second": metrics["train_images_per_second"],
            "train_pflop": per_image * n * len(rows) / 1e15, "curve": curve, "run_dir": str(run_dir)}


def fmt_row(r: dict) -> str:
    reach = f"{r['time_to_target_s']:.0f} s" if r.get("time_to_target_s") is not None else "never"
    return (f"| {r['name']:<24} | {reach:>9} | {100 * r['final_val_accuracy']:6.2f}% | {r['total_s']:7.0f} s "
            f"| {r['train_images_per_second']:7.0f} | {r['train_pflop']:7.4f} |")


HEADER = ("| run                      | to 80.46% | val acc | total wall | img/s   | PFLOP   |\n"
          "|--------------------------|-----------|---------|------------|---------|---------|")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--parts", default="matmul,backends,pipeline,seed,fast80,budget",
                   help="comma list of matmul, backends, pipeline, seed, fast80, budget, fast94")
    p.add_argument("--seeds", default="0,1,2", help="fast80 seeds")
    p.add_argument("--seed-epochs", type=int, default=30, help="epochs of the seed recipe")
    p.add_argument("--seed-from", type=Path, help="take the seed recipe's numbers from this finished run")
    p.add_argument("--budget", default="30m", help="the time-budget run's wall-clock budget")
    p.add_argument("--budget-recipe", default="budget")
    p.add_argument("--fast94-epochs", type=float, default=None, help="cut fast94 short: train this many epochs")
    p.add_argument("--fast94-seeds", default="0", help="fast94 seeds")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for the fast80, budget and fast94 runs (a variant of the recipe; "
                        "model_options.KEY=VALUE for a model option), repeatable")
    p.add_argument("--out", type=Path, default=Path("runs/bench-fast"))
    p.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--probe-steps", type=int, default=12)
    p.add_argument("--probe-batch", type=int, default=512)
    p.add_argument("--probe-recipe", default="fast80")
    args = p.parse_args()

    if args.probe:
        print(json.dumps(backend_probe(args.probe_steps, args.probe_batch, args.probe_recipe)))
        return 0

    parts = set(args.parts.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}",
                     "load_avg_start": load_avg(), "runs": []}
    print(f"imgclf fast-training bench: {results['machine']}, load average {results['load_avg_start']}", flush=True)

    def save():
        tmp = args.out / "results.json.tmp"
        tmp.write_text(json.dumps(results, indent=1))
        os.replace(tmp, args.out / "results.json")

    if "matmul" in parts:
        rate = matmul_rate()
        results["matmul_gflops"] = rate / 1e9
        print(f"numpy float32 matmul (2048x2048): {rate / 1e9:.1f} GFLOP/s", flush=True)
        results["matmul_bf16_gflops"] = matmul_rate_bf16() / 1e9
        print(f"keras bfloat16 matmul (2048x2048): {results['matmul_bf16_gflops']:.1f} GFLOP/s", flush=True)
    if "backends" in parts:
        rows = backends_table(args.probe_steps, args.probe_batch, args.probe_recipe)
        results["backends"] = rows
        for r in rows:
            if "error" in r:
                print(f"backend {r['backend']}: {r['error']}")
            else:
                share = f", {100 * r['flop_rate'] / (results['matmul_gflops'] * 1e9):.0f}% of matmul" \
                    if "matmul_gflops" in results else ""
                print(f"backend {r['backend']}: {r['images_per_second']:.0f} training images/s "
                      f"({args.probe_recipe} net, batch {args.probe_batch}), {r['flop_rate'] / 1e9:.1f} GFLOP/s{share}",
                      flush=True)
        save()
    if "pipeline" in parts:
        r = pipeline_check(args.data, args.probe_recipe, 20)
        results["pipeline"] = r
        print(f"input pipeline: step {r['step_real_s'] * 1000:.0f} ms on real batches vs "
              f"{r['step_constant_s'] * 1000:.0f} ms on a constant batch ({100 * r['slowdown']:+.1f}%); "
              f"producing a batch takes {r['batch_production_s'] * 1000:.1f} ms", flush=True)
        save()

    def record(r):
        results["runs"].append(r)
        save()
        print(HEADER + "\n" + fmt_row(r), flush=True)

    if "seed" in parts:
        if args.seed_from:
            record(seed_from_run(args.seed_from))
        else:
            record(timed_run("seed", args.out, data=args.data, recipe="seed", epochs=args.seed_epochs))
    def overrides(recipe: str, kw: dict | None = None) -> tuple[dict, str]:
        """--set KEY=VALUE pairs (model_options.KEY for a model option) as train() keywords, and a label."""
        import yaml

        from imgclf.config import RECIPES

        kw = dict(kw or {})
        options = dict(RECIPES[recipe].get("model_options", {}))
        for item in args.set:
            key, _, value = item.partition("=")
            key, value = key.strip().replace("-", "_"), yaml.safe_load(value.strip())
            if key.startswith("model_options."):
                options[key.split(".", 1)[1]] = value
                kw["model_options"] = options
            else:
                kw[key] = value
        label = " ".join(f"{item}" for item in args.set)
        return kw, (f" {label}" if label else "")

    if "fast80" in parts:
        kw, label = overrides("fast80")
        for s in [int(v) for v in args.seeds.split(",")]:
            record(timed_run(f"fast80 seed {s}{label}", args.out, data=args.data, recipe="fast80", seed=s, **kw))
    if "budget" in parts:
        from imgclf.config import parse_duration

        budget = parse_duration(args.budget, "--budget")
        kw, label = overrides(args.budget_recipe)
        record(timed_run(f"{args.budget_recipe} {args.budget}{label}", args.out, data=args.data,
                         recipe=args.budget_recipe, **{"time_budget": budget, **kw}))
    if "fast94" in parts:
        squeeze = {}
        if args.fast94_epochs:  # the whole schedule squeezed into fewer epochs (warmup: the same share of it)
            from imgclf.config import RECIPES

            recipe = RECIPES["fast94"]
            squeeze["epochs"] = max(1, int(round(args.fast94_epochs)))
            squeeze["warmup_epochs"] = recipe["warmup_epochs"] / recipe["epochs"] * squeeze["epochs"]
        kw, label = overrides("fast94", squeeze)
        for s in [int(v) for v in args.fast94_seeds.split(",")]:
            squeezed = f" {squeeze['epochs']} epochs" if squeeze else ""
            r = timed_run(f"fast94 seed {s}{squeezed}{label}", args.out, data=args.data, recipe="fast94", seed=s, **kw)
            record(r)
            to93 = f"{r['time_to_93_s']:.0f} s, {r['pflop_to_93']:.3f} PFLOPs" if r["time_to_93_s"] else "never"
            print(f"  fast94 to 93%: {to93}; accuracy against training compute (without TTA):", flush=True)
            for point in r["curve"]:
                print(f"    epoch {point['epoch']:>2}: {point['train_pflop']:.3f} PFLOPs, "
                      f"val {100 * point['val_accuracy']:.2f}%, {point['wall_s']:.0f} s", flush=True)

    runs = results["runs"]
    if runs:
        print("\nsummary (" + results["machine"] + f", load average at end {load_avg()})")
        print(HEADER)
        for r in runs:
            print(fmt_row(r))
        f80 = [r for r in runs if r.get("recipe") == "fast80"]
        if len(f80) >= 2:
            acc = [100 * r["final_val_accuracy"] for r in f80]
            reach = [r["time_to_target_s"] for r in f80]
            wall = [r["total_s"] for r in f80]
            results["fast80_summary"] = {"val_mean": statistics.mean(acc), "val_sd": statistics.stdev(acc),
                                         "reached": sum(x is not None for x in reach), "n": len(f80),
                                         "total_mean": statistics.mean(wall), "total_sd": statistics.stdev(wall)}
            s = results["fast80_summary"]
            print(f"fast80 over {s['n']} seeds: val {s['val_mean']:.2f} +- {s['val_sd']:.2f}% (mean +- sd), "
                  f"reached 80.46% in {s['reached']}/{s['n']}, total wall {s['total_mean']:.0f} +- {s['total_sd']:.0f} s")
    results["load_avg_end"] = load_avg()
    save()
    print(f"results: {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: `imgclf tune` on an 8-point seed_cnn grid (learning rate x momentum x batch size),
with 1 and 2 local workers, pruning off and on (median pruner on per-epoch validation accuracy),
plus a leak check: peak memory after 1 and after 20 trials in one worker.

    python bench/tune_grid.py [--data DIR] [--epochs 3] [--limit-per-class N]
                              [--runs 1w,2w,1w-prune,2w-prune] [--memory-trials 20] [--out runs/bench-tune]

Each run is a fresh study (SQLite in its own folder). Prints, and writes to OUT/bench_tune.{json,md}:
wall time, best validation accuracy, trials pruned, time pruning saved (estimated from the epochs
pruned trials did not run), and peak memory per worker process. Not a test: run it by hand.
The default (full 45,000/5,000 split, 3 epochs per trial) takes hours on 2 cores;
`--limit-per-class 1000` (9,000/1,000) about half an hour for all four runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import yaml

from imgclf.tuning import markdown_table, tune

DEFAULT_DATA = (Path(os.environ.get("IMGCLF_SHARED", Path(__file__).resolve().parents[1] / ".." / "shared"))
                / "datasets" / "cifar10-jpeg")
GRID = {"learning_rate": [0.01, 0.05], "momentum": [0.0, 0.9], "batch_size": [64, 128]}

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--data", default=str(DEFAULT_DATA))
parser.add_argument("--epochs", type=int, default=3, help="epochs per trial")
parser.add_argument("--limit-per-class", type=int, default=None, help="default: all training images")
parser.add_argument("--runs", default="1w,2w,1w-prune,2w-prune")
parser.add_argument("--memory-trials", type=int, default=20, help="0 skips the leak check")
parser.add_argument("--memory-limit-per-class", type=int, default=50)
parser.add_argument("--memory-isolate", default="process", choices=("process", "none"),
                    help="trials in child processes (the default) or in the worker process itself")
parser.add_argument("--out", default="runs/bench-tune")
args = parser.parse_args()

out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
base = {"model": "seed_cnn", "seed": 0}
if args.limit_per_class:
    base["limit_per_class"] = args.limit_per_class


def space_file(name: str, params: dict, **extra) -> Path:
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"base": base, "params": params, **extra}, sort_keys=False))
    return path


def load_now() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


rows = []
for run in [r for r in args.runs.split(",") if r]:
    workers = int(run.split("w")[0])
    prune = run.endswith("-prune")
    study_dir = out / run
    shutil.rmtree(study_dir, ignore_errors=True)
    space = space_file(run, GRID, budget={"epochs": args.epochs}, pruner="median" if prune else "none")
    load_before = load_now()
    t0 = time.perf_counter()
    result = tune(space, data=args.data, study=run, out_dir=study_dir, workers=workers, progress=True,
                  plots=False, test=False)
    wall = time.perf_counter() - t0
    trials = [json.loads(json.dumps(r)) for r in
              __import__("csv").DictReader(open(study_dir / "trials.csv"))]
    peak = max(float(r["peak_rss_mb"]) for r in trials if r["peak_rss_mb"])
    p = result.summary["pruning"]
    rows.append({"run": run, "workers": workers, "pruning": "median" if prune else "off",
                 "trials": len(trials), "wall_s": round(wall, 1),
                 "best_val_accuracy": round(result.best["val_accuracy"], 4) if result.best else None,
                 "best_params": result.best["params"] if result.best else None,
                 "pruned": result.counts["pruned"], "epochs_not_run": p["epochs_saved"],
                 "pruning_saved_s_est": p["seconds_saved_estimate"],
                 "peak_rss_mb_per_worker": round(peak), "load_before": load_before, "load_after": load_now()})
    print(json.dumps(rows[-1]), flush=True)

memory = None
if args.memory_trials:
    study_dir = out / "memory"
    shutil.rmtree(study_dir, ignore_errors=True)
    space = space_file("memory", {"learning_rate": {"low": 0.001, "high": 0.1, "log": True}},
                       sampler="random", pruner="none", budget={"trials": args.memory_trials, "epochs": 1})
    tune(space, data=args.data, study="memory", out_dir=study_dir, workers=1, progress=False, plots=False,
         test=False, base={"limit_per_class": args.memory_limit_per_class}, isolate=args.memory_isolate)
    import optuna

    attrs = sorted(((t.number, t.user_attrs) for t in optuna.load_study(
        study_name="memory", storage=f"sqlite:///{(study_dir / 'study.db').resolve()}").trials), key=lambda x: x[0])
    trials = list(__import__("csv").DictReader(open(study_dir / "trials.csv")))
    trials.sort(key=lambda r: int(r["trial"]))
    memory = {"trials": len(trials), "limit_per_class": args.memory_limit_per_class, "isolate": args.memory_isolate,
              "peak_rss_mb_after_1": float(trials[0]["peak_rss_mb"]),
              "peak_rss_mb_after_last": float(trials[-1]["peak_rss_mb"]),
              "peak_rss_mb_by_trial": [float(r["peak_rss_mb"]) for r in trials],
              "worker_rss_mb_by_trial": [a.get("rss_mb") for _, a in attrs]}
    print(json.dumps(memory), flush=True)

info = {"data": args.data, "limit_per_class": args.limit_per_class, "epochs_per_trial": args.epochs,
        "grid": GRID, "cpus": os.cpu_count(), "machine": platform.machine(), "runs": rows, "memory": memory}
(out / "bench_tune.json").write_text(json.dumps(info, indent=2))
columns = ["run", "workers", "pruning", "trials", "wall_s", "best_val_accuracy", "pruned", "epochs_not_run",
           "pruning_saved_s_est", "peak_rss_mb_per_worker", "load_before", "load_after"]
text = markdown_table(rows, columns)
if memory:
    text += (f"\nmemory (1 worker, {memory['trials']} trials, limit_per_class={memory['limit_per_class']}, 1 epoch, "
             f"isolate={memory['isolate']}): peak RSS {memory['peak_rss_mb_after_1']:.0f} MiB after trial 1, "
             f"{memory['peak_rss_mb_after_last']:.0f} MiB after trial {memory['trials']}; worker RSS "
             f"{memory['worker_rss_mb_by_trial'][0]} -> {memory['worker_rss_mb_by_trial'][-1]} MiB\n")
(out / "bench_tune.md").write_text(text)
print(text)

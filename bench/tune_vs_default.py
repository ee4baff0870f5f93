"""The default (`imgclf train`, the auto plan) against a 60-minute tune, on a folder of photos.

1. `imgclf tune photos --data DATA --time 60m`: TPE with median pruning over the `photos` space
   (input size, width, learning rate, epochs, augmentation), judged on the folder's validation split.
2. Tune's best configuration retrained with seeds 0, 1, 2 at the default's budget
   (`imgclf train --config best_config.yaml --time-budget 10m`: its schedule spread over the 10
   minutes the default plans for, rather than its own epochs).
3. The default with the same seeds (`imgclf train -d DATA`), or its runs read from an earlier
   `bench/auto.py` results file (`--default-results`), for the seeds that file holds. The default's
   plan depends on the machine's speed (it times a few steps), so only reuse runs from the same
   machine and hour.

Every training run is a fresh process with a cold cache, timed from the command's start
(bench/auto.py's run_seed). Target (issue 15): the two means within 2 points on validation.

    python bench/tune_vs_default.py --data ../shared/datasets/clothing-small \
        --default-results DEFAULT_SEED0.json --out bench/results/tune_vs_default_clothing.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from auto import run_seed  # bench/auto.py: one cold-cache `imgclf train` run, timed
from fast import matmul_rate


def mean_std(values: list[float]) -> dict:
    a = np.asarray(values, float)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "n": len(a)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--space", default="photos")
    p.add_argument("--time", default="60m", help="the tune's wall-time budget")
    p.add_argument("--budget", default="10m", help="the default's budget, given to the tuned runs too")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--default-results", type=Path, help="a bench/auto.py results file: its seeds are not rerun")
    p.add_argument("--work", type=Path, default=Path("runs/bench-tune-vs-default"))
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    before = matmul_rate(repeats=5) / 1e9
    study = args.work / "study"
    tune_seconds = None
    if not (study / "best_config.yaml").is_file():  # a finished study is reused (the bench can be rerun)
        cmd = [sys.executable, "-m", "imgclf", "tune", args.space, "--data", args.data, "--time", args.time,
               "-o", str(study), "--no-test", "--no-report", "--no-plots"]
        t = time.perf_counter()
        subprocess.run(cmd, check=True)
        tune_seconds = round(time.perf_counter() - t, 1)
    summary = json.loads((study / "summary.json").read_text())
    print(f"tune: best trial {summary['best']['trial']}, val {summary['best']['val_accuracy']:.4f}, "
          f"{summary['best']['params']}", flush=True)

    tuned = []
    for seed in args.seeds:
        tuned.append(run_seed(args.data, seed, args.work / "tuned",
                              ["--config", str(study / "best_config.yaml"), "--time-budget", args.budget]))
        print(f"tuned seed {seed}: val {tuned[-1]['val_accuracy']:.4f} in {tuned[-1]['wall_seconds']:.0f} s", flush=True)
    earlier = json.loads(args.default_results.read_text())["runs"] if args.default_results else []
    default = []
    for seed in args.seeds:
        run = next((r for r in earlier if r["seed"] == seed), None)
        if run is None:
            run = run_seed(args.data, seed, args.work / "default", ["--time-budget", args.budget])
        else:
            run = {**run, "from": str(args.default_results)}
        default.append(run)
        print(f"default seed {seed}: val {run['val_accuracy']:.4f} in {run['wall_seconds']:.0f} s", flush=True)
    after = matmul_rate(repeats=5) / 1e9

    t_acc = [r["val_accuracy"] for r in tuned]
    d_acc = [r["val_accuracy"] for r in default]
    result = {
        "data": args.data, "space": args.space, "tune_time_budget": args.time, "tune_wall_seconds": tune_seconds,
        "budget": args.budget,
        "tune_counts": summary.get("counts"), "tune_best": summary["best"],
        "tuned": {"val_accuracy": mean_std(t_acc), "wall_seconds": mean_std([r["wall_seconds"] for r in tuned]),
                  "runs": tuned},
        "default": {"val_accuracy": mean_std(d_acc), "wall_seconds": mean_std([r["wall_seconds"] for r in default]),
                    "runs": default},
        "difference_points": round(100 * (float(np.mean(t_acc)) - float(np.mean(d_acc))), 2),
        "matmul_gflops_before_after": [round(before, 1), round(after, 1)],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"tuned {np.mean(t_acc):.4f} vs default {np.mean(d_acc):.4f}: {result['difference_points']:+.2f} points "
          f"(target: within 2) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

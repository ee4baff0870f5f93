"""The default (`imgclf train` with no recipe: the auto plan) on a dataset, over seeds, cold cache.

Each seed runs `imgclf train -d DATA --seed S -o OUT/seed-S --no-report` in a fresh process with an
empty decoded-image cache, timed from the command's start to its exit: planning, decoding,
training and the final evaluation all count. The validation accuracy is the one `train` reports
(with the test-time augmentation the plan records). A numpy matmul rate, measured before and
after, tells how busy the machine was.

    python bench/auto.py --data ../shared/datasets/cifar10-jpeg --seeds 0 1 2 --out bench/results/auto_cifar_cpu.json
    python bench/auto.py --data ../shared/datasets/clothing-small --seeds 0 1 2 --out bench/results/auto_clothing_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from fast import matmul_rate  # bench/fast.py: the matmul rate every bench result quotes


def run_seed(data: str, seed: int, work: Path, extra: list[str]) -> dict:
    out = work / f"seed-{seed}"
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "IMGCLF_CACHE": cache}
        cmd = [sys.executable, "-m", "imgclf", "train", "-d", data, "--seed", str(seed), "-o", str(out),
               "--no-report", *extra]
        t = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"error: seed {seed}: imgclf train exited {proc.returncode}: {proc.stderr[-2000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    config = (out / "config.yaml").read_text()
    plan_line = next((line for line in proc.stdout.splitlines() if line.startswith("plan: ")), None)
    return {"seed": seed, "wall_seconds": round(wall, 1), "val_accuracy": metrics["val"]["accuracy"],
            "val_balanced_accuracy": metrics["val"].get("balanced_accuracy"),
            "val_macro_f1": metrics["val"].get("macro_f1"), "epochs_run": metrics["epochs_run"],
            "weights": metrics["weights"], "seconds": metrics["seconds"], "plan": plan_line,
            "command": " ".join(cmd[2:]), "config_yaml": config}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--work", type=Path, default=Path("runs/bench-auto"))
    p.add_argument("--out", type=Path, required=True, help="results JSON file")
    p.add_argument("extra", nargs="*", help="more `imgclf train` flags (after --)")
    args = p.parse_args()
    import keras
    import tensorflow as tf

    before = matmul_rate(repeats=5) / 1e9
    runs = []
    for seed in args.seeds:
        runs.append(run_seed(args.data, seed, args.work, args.extra))
        print(f"seed {seed}: val {runs[-1]['val_accuracy']:.4f} in {runs[-1]['wall_seconds']:.0f} s "
              f"({runs[-1]['plan']})", flush=True)
    after = matmul_rate(repeats=5) / 1e9
    acc = np.array([r["val_accuracy"] for r in runs])
    wall = np.array([r["wall_seconds"] for r in runs])
    result = {
        "data": args.data, "runs": runs,
        "val_accuracy": {"mean": float(acc.mean()), "std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0},
        "wall_seconds": {"mean": float(wall.mean()), "max": float(wall.max())},
        "matmul_gflops_before_after": [round(before, 1), round(after, 1)],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "tensorflow": tf.__version__, "keras": keras.__version__},
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"mean val {acc.mean():.4f} over {len(acc)} seeds; wall mean {wall.mean():.0f} s, max {wall.max():.0f} s; "
          f"matmul {before:.0f} / {after:.0f} GFLOP/s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

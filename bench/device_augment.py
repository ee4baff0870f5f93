"""Device-side augmentation (`augment_device: true`) against the numpy path, on the CPU: the same
recipe and seeds, both ways, side by side in one process.

The two paths make the same random draws; only where the pixel work runs differs (keras.ops in the
compiled step, or numpy on the host), so the models should agree to float rounding. Reported per
seed: validation accuracy both ways, their difference, the largest weight difference between the
two saved models, and the fit time of each (the two share the machine with whatever else runs).

    python bench/device_augment.py --recipe fast80 --seeds 0 1 2 --limit-per-class 2000 \
        --out bench/results/device_augment_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from fast import DEFAULT_DATA, matmul_rate


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--recipe", default="fast80")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--limit-per-class", type=int, default=None)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    import keras

    import imgclf

    before = matmul_rate(repeats=5) / 1e9
    runs = []
    with tempfile.TemporaryDirectory() as work:
        for seed in args.seeds:
            row = {"seed": seed}
            models = {}
            for path in ("host", "device"):
                run = imgclf.train(data=args.data, recipe=args.recipe, seed=seed, limit_per_class=args.limit_per_class,
                                   augment_device=path == "device", run_dir=Path(work) / f"{path}-{seed}", verbose=0,
                                   report=False)
                row[path] = {"val_accuracy": run.metrics["val"]["accuracy"], "fit_seconds": run.metrics["seconds"]["fit"]}
                models[path] = imgclf.load_model(run.model_path)[0].get_weights()
            row["difference_points"] = 100 * (row["device"]["val_accuracy"] - row["host"]["val_accuracy"])
            row["max_weight_difference"] = float(max(np.abs(a - b).max() for a, b in zip(models["host"], models["device"])))
            runs.append(row)
            print(f"seed {seed}: host {row['host']['val_accuracy']:.4f} ({row['host']['fit_seconds']:.0f} s), "
                  f"device {row['device']['val_accuracy']:.4f} ({row['device']['fit_seconds']:.0f} s), "
                  f"max weight difference {row['max_weight_difference']:.2e}", flush=True)
    after = matmul_rate(repeats=5) / 1e9
    host = np.array([r["host"]["val_accuracy"] for r in runs])
    dev = np.array([r["device"]["val_accuracy"] for r in runs])
    diff = 100 * (dev - host)
    result = {
        "recipe": args.recipe, "data": args.data, "limit_per_class": args.limit_per_class, "runs": runs,
        "host_mean": float(host.mean()), "device_mean": float(dev.mean()),
        "difference_points": {"mean": float(diff.mean()), "std": float(diff.std(ddof=1)) if len(diff) > 1 else 0.0},
        "matmul_gflops_before_after": [round(before, 1), round(after, 1)],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "backend": keras.backend.backend(), "keras": keras.__version__},
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"host {host.mean():.4f}, device {dev.mean():.4f}: {diff.mean():+.2f} points over {len(runs)} seeds -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: the full seed recipe (seed_cnn, SGD 0.01/0.9, batch 64, 30 epochs) on the
45,000/5,000 train/validation split of ../shared/datasets/cifar10-jpeg.

    python bench/seed_recipe.py [--data DIR] [--epochs 30] [--out runs/bench-seed]

Prints the seed README's results table plus wall time per epoch and in total. Not a test:
run it by hand (about 35-60 minutes on a 2-core machine).
"""

import argparse
import os
import platform
import time
from pathlib import Path

import imgclf
from imgclf.evaluation.metrics import results_table

DEFAULT_DATA = Path(os.environ.get("IMGCLF_SHARED", Path(__file__).resolve().parents[1] / ".." / "shared")) / "datasets" / "cifar10-jpeg"

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--data", default=str(DEFAULT_DATA))
parser.add_argument("--epochs", type=int, default=30)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--out", default="runs/bench-seed")
args = parser.parse_args()

t0 = time.perf_counter()
run = imgclf.train(data=args.data, epochs=args.epochs, seed=args.seed, run_dir=args.out, verbose=2, report=False)
m = run.metrics
print(f"\nseed recipe on {args.data} ({os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
      f"backend {m['backend']})")
print(results_table(m))
print(f"epochs: {m['epochs_run']}, wall time per epoch: {m['seconds']['per_epoch_mean']:.1f} s, "
      f"data loading: {m['seconds']['data_load']:.1f} s, total: {time.perf_counter() - t0:.0f} s, "
      f"train images/s: {m['train_images_per_second']:.0f}")

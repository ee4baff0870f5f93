"""Decoding benchmark: photo-sized JPEGs to model-sized arrays through images.to_rgb, both decode rules.

    python bench/decode.py [--data DIR] [--size 64] [--resize stretch] [--workers 2] [--repeats 3]
                           [--out bench/results/decode.json]

Decodes every image of `DIR/train/` and `DIR/validation/` (default: the clothing-small photos in
$IMGCLF_SHARED/datasets) to SIZE x SIZE with the "full" and the "draft" rule, in the same run, on
the pool that training decodes with (dataset.decode_images, cache off, WORKERS forked processes),
and the draft rule also on WORKERS threads (IMGCLF_DECODE_PROCESSES=0) and on 1 worker, which gives
what one core does. The files are read once before timing, so every pass finds them in the OS page
cache; the four alternate, REPEATS passes each, and the median pass gives images/s; CPU time per
pass (this process's and its decoding processes') gives images per CPU-second, which other load on
the machine changes far less than the wall-clock rate.
Also reported: the mean and
largest absolute pixel difference (0..255) between the two rules' arrays, how many images draft
mode decoded reduced (and by which factor), and the load average before and after (the machine
may be shared). Results go to OUT as JSON and a summary on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
SHARED = Path(os.environ.get("IMGCLF_SHARED", REPO.parent / "shared"))
SPLITS = ("train", "validation")


def list_images(data: Path) -> list[str]:
    """Image files of the splits found under `data`, relative to it ("train/<class>/<file>")."""
    from imgclf.data.dataset import scan_folder

    files = []
    for split in SPLITS:
        if (data / split).is_dir():
            files += [f"{split}/{name}" for name in scan_folder(data / split)[0]]
    if not files:
        raise SystemExit(f"error: {data}: expected {' and/or '.join(s + '/' for s in SPLITS)} class folders")
    return files


def draft_factors(data: Path, files: list[str], side: int) -> Counter:
    """How many files draft mode would decode at 1/1, 1/2, 1/4, 1/8 of their size (headers only)."""
    from PIL import Image

    found = Counter()
    for name in files:
        with Image.open(data / name) as img:
            before = img.size
            if img.format in ("JPEG", "MPO"):
                img.draft(None, (side, side))
            found[f"1/{round(before[0] / img.size[0])}"] += 1
    return found


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the decoding processes)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=SHARED / "datasets" / "clothing-small")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--resize", default="stretch", choices=("stretch", "crop", "pad"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "decode.json")
    args = p.parse_args(argv)
    from imgclf.data.dataset import decode_images
    from imgclf.fileio import atomic_write

    files = list_images(args.data)
    n_bytes = sum(len((args.data / f).read_bytes()) for f in files)  # warms the OS page cache
    results = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "data": str(args.data),
               "n_images": len(files), "mean_file_kb": round(n_bytes / len(files) / 1024, 1), "size": args.size,
               "resize": args.resize, "workers": args.workers, "repeats": args.repeats,
               "machine": f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}",
               "load_avg_start": [round(x, 2) for x in os.getloadavg()],
               "draft_factors": dict(sorted(draft_factors(args.data, files, args.size).items())), "rules": {}}
    print(f"decode bench: {len(files)} images in {args.data}, to {args.size} px ({args.resize}), "
          f"{args.workers} workers; load average {results['load_avg_start']}", flush=True)
    runs = {"full": ("full", "processes"), "draft": ("draft", "processes"),
            "draft, threads": ("draft", "threads"), "draft, 1 worker": ("draft", "serial")}
    arrays, seconds, cpu = {}, {name: [] for name in runs}, {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, (rule, pool) in runs.items():
            os.environ["IMGCLF_DECODE_PROCESSES"] = "0" if pool == "threads" else "1"
            t0, c0 = time.perf_counter(), cpu_seconds()
            x, kept = decode_images(args.data, files, (args.size, args.size), args.resize, use_cache=False,
                                    decode=rule, workers=1 if pool == "serial" else args.workers, progress=False)
            seconds[name].append(time.perf_counter() - t0)
            cpu[name].append(cpu_seconds() - c0)
            assert len(kept) == len(files)
            assert rule not in arrays or np.array_equal(arrays[rule], x)  # every pool gives the same pixels
            arrays[rule] = x
    for name, times in seconds.items():
        rate = len(files) / statistics.median(times)
        per_cpu = len(files) / statistics.median(cpu[name])
        results["rules"][name] = {"decode": runs[name][0], "pool": runs[name][1], "images_per_s": round(rate, 1),
                                  "seconds": [round(t, 3) for t in times], "images_per_cpu_s": round(per_cpu, 1),
                                  "cpu_seconds": [round(t, 3) for t in cpu[name]]}
        print(f"{name:15s}: {rate:7.0f} images/s (median of {len(times)} passes: "
              f"{', '.join(f'{t:.2f}' for t in times)} s); {per_cpu:.0f} images per CPU-second", flush=True)
    diff = np.abs(arrays["draft"].astype(np.int16) - arrays["full"].astype(np.int16))
    results["pixel_diff"] = {"mean": round(float(diff.mean()), 3), "max": int(diff.max()),
                             "identical_images": int((diff.reshape(len(diff), -1).max(axis=1) == 0).sum())}
    results["speedup"] = round(results["rules"]["draft"]["images_per_s"] / results["rules"]["full"]["images_per_s"], 2)
    results["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"draft vs full: {results['speedup']}x; pixel difference mean {results['pixel_diff']['mean']}, "
          f"max {results['pixel_diff']['max']} (0..255); draft factors {results['draft_factors']}; "
          f"load average {results['load_avg_end']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, lambda f: f.write(json.dumps(results, indent=1).encode()))
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark for issue 15 (fine-tuning): does starting from a CIFAR-10-pretrained backbone beat
training from scratch on the clothing photos, at equal fine-tuning wall time?

    python bench/finetune.py                       # pretrain once, then seeds 0,1,2 x {finetune, scratch}
    python bench/finetune.py --source cifar10      # the shipped model (bench/pretrained.py's fast80 run)
    python bench/finetune.py --budget 5m --seeds 0,1,2,3,4 --backbone-lr-scale 0.3
    python bench/finetune.py --epochs 6            # equal epochs instead of equal time (a busy machine)
    python bench/finetune.py --tiny                # the whole pipeline on a few images, about a minute

1. Pretraining (once, not counted, as ImageNet weights are not): `--pretrain-recipe` (fast80: a
   narrow fastnet) on the CIFAR-10 JPEGs ($IMGCLF_SHARED/datasets/cifar10-jpeg/train, 10% held out),
   at 32 px. Reused from --work if it is there already; `--source FILE|cifar10` skips it.
2. A warm-up run (discarded) decodes and caches the clothing photos, so that no arm's budget pays
   for decoding, and warms TensorFlow up.
3. For each seed, two arms on $IMGCLF_SHARED/datasets/clothing-small (train/, validated on
   validation/), with the same recipe (`--recipe`, fast80), input size and --time-budget:
     finetune  --init-from the pretrained model: its backbone and weights, a new 10-class head,
               the backbone frozen for --freeze-epochs, then trained at --backbone-lr-scale
     scratch   the same architecture (the recipe's model) from a random start
   The order of the two arms alternates by seed (the first run of a pair pays no extra warm-up).
4. Reported: validation accuracy per seed and arm, the paired difference (finetune - scratch) per
   seed, its mean, standard deviation and the number of seeds where fine-tuning wins; written to
   --out (default bench/results/finetune.json; with --tiny, imgclf-finetune-tiny.json in the temp folder).

Validation only: the clothing test split is withheld. 341 validation photos give a standard
error of about 2 points per run, so read the paired differences, not one seed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
SHARED = Path(os.environ.get("IMGCLF_SHARED", REPO.parent / "shared"))


def parse_args(argv=None):
    from imgclf.config import parse_duration

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cifar", type=Path, default=SHARED / "datasets" / "cifar10-jpeg" / "train")
    ap.add_argument("--data", type=Path, default=SHARED / "datasets" / "clothing-small")
    ap.add_argument("--source", default=None,
                    help="a pretrained imgclf .keras file or a shipped name (skips pretraining)")
    ap.add_argument("--pretrain-recipe", default="fast80")
    ap.add_argument("--pretrain-seed", type=int, default=0)
    ap.add_argument("--recipe", default="fast80", help="the recipe of both arms")
    ap.add_argument("--input-size", type=int, default=64, help="of both arms (the pretraining runs at 32 px)")
    ap.add_argument("--budget", default="3m", help="training time of each arm (--time-budget)")
    ap.add_argument("--epochs", type=int, default=None,
                    help="instead of --budget, this many epochs for each arm: the accuracies do not depend "
                         "on what else runs on the machine; each arm's fit time is reported beside them")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--freeze-epochs", type=int, default=1)
    ap.add_argument("--backbone-lr-scale", type=float, default=0.1)
    ap.add_argument("--work", type=Path, default=None, help="run folders (default: a temporary folder)")
    ap.add_argument("--out", type=Path, default=None, help="results JSON (default: bench/results/finetune.json)")
    ap.add_argument("--tiny", action="store_true",
                    help="a quick end-to-end check: few images per class, 1 pretraining epoch, a seconds budget")
    args = ap.parse_args(argv)
    args.budget_seconds = parse_duration(args.budget, "--budget")
    args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.tiny:
        args.budget_seconds = min(args.budget_seconds, 8.0)
        args.seed_list = args.seed_list[:1]
    return args


def pretrain(args, work: Path) -> Path:
    """The pretrained model file: --source, else a pretraining run in work/pretrain (reused if done)."""
    import imgclf

    if args.source:
        return Path(args.source)
    run_dir = work / "pretrain"
    if (run_dir / "model.keras").is_file():
        print(f"pretraining: reusing {run_dir / 'model.keras'}", flush=True)
        return run_dir / "model.keras"
    extra = {"limit_per_class": 20, "epochs": 1} if args.tiny else {}
    t = time.perf_counter()
    run = imgclf.train(data=str(args.cifar), recipe=args.pretrain_recipe, seed=args.pretrain_seed, run_dir=run_dir,
                       verbose=0, report=False, evaluate_test=False, **extra)
    print(f"pretraining: {args.pretrain_recipe} on {args.cifar}, val accuracy {run.metrics['val']['accuracy']:.4f} "
          f"in {time.perf_counter() - t:.0f} s", flush=True)
    return run.model_path


def arm(args, work: Path, name: str, seed: int, source: Path | None) -> dict:
    import imgclf

    overrides = dict(data=str(args.data), recipe=args.recipe, input_size=args.input_size, seed=seed,
                     verbose=0, report=False, evaluate_test=False)
    if args.epochs:
        overrides["epochs"] = args.epochs
    else:
        overrides["time_budget"] = args.budget_seconds
    if args.tiny:
        overrides["limit_per_class"] = 10
    if source is not None:
        overrides.update(init_from=str(source), freeze_epochs=args.freeze_epochs,
                         backbone_lr_scale=args.backbone_lr_scale)
    t = time.perf_counter()
    run = imgclf.train(run_dir=work / f"{name}-seed{seed}", **overrides)
    row = {"arm": name, "seed": seed, "val_accuracy": run.metrics["val"]["accuracy"], "val_n": run.metrics["val"]["n"],
           "epochs_run": run.metrics["epochs_run"], "fit_seconds": round(run.metrics["seconds"]["fit"], 1),
           "wall_seconds": round(time.perf_counter() - t, 1), "run_dir": str(run.run_dir)}
    print(f"  seed {seed} {name:8s} val accuracy {row['val_accuracy']:.4f} ({row['epochs_run']} epochs, "
          f"fit {row['fit_seconds']} s)", flush=True)
    return row


def paired(rows: list[dict]) -> dict:
    by = {(r["arm"], r["seed"]): r["val_accuracy"] for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    diffs = [by[("finetune", s)] - by[("scratch", s)] for s in seeds]
    return {"seeds": seeds, "differences": diffs, "mean": statistics.fmean(diffs),
            "sd": statistics.stdev(diffs) if len(diffs) > 1 else None,
            "finetune_wins": sum(d > 0 for d in diffs),
            "finetune_mean": statistics.fmean(by[("finetune", s)] for s in seeds),
            "scratch_mean": statistics.fmean(by[("scratch", s)] for s in seeds),
            "fit_seconds_mean": {arm: statistics.fmean(r["fit_seconds"] for r in rows if r["arm"] == arm)
                                 for arm in ("finetune", "scratch")}}


def main(argv=None) -> int:
    args = parse_args(argv)
    import imgclf
    from imgclf.training.finetune import file_sha256, source_path

    with tempfile.TemporaryDirectory(prefix="imgclf-bench-finetune-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        source = source_path(str(pretrain(args, work)))
        print("warm-up run (discarded): decodes and caches the photos", flush=True)
        warm = {"limit_per_class": 10} if args.tiny else {}
        imgclf.train(data=str(args.data), recipe=args.recipe, input_size=args.input_size, time_budget=1.0,
                     run_dir=work / "warmup", verbose=0, report=False, evaluate_test=False, **warm)
        rows = []
        for i, seed in enumerate(args.seed_list):
            order = (("finetune", source), ("scratch", None))
            for name, src in (order if i % 2 == 0 else order[::-1]):
                rows.append(arm(args, work, name, seed, src))
        summary = paired(rows)
        command = "python bench/finetune.py " + " ".join(argv if argv is not None else sys.argv[1:])
        result = {"command": command.strip(), "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                  "source": {"path": str(source), "sha256": file_sha256(source),
                             "pretrain_recipe": None if args.source else args.pretrain_recipe},
                  "settings": {"recipe": args.recipe, "input_size": args.input_size,
                               "time_budget_s": None if args.epochs else args.budget_seconds,
                               "epochs": args.epochs, "freeze_epochs": args.freeze_epochs,
                               "backbone_lr_scale": args.backbone_lr_scale, "tiny": args.tiny,
                               "data": str(args.data)},
                  "runs": rows, "paired": summary}
        tiny_out = Path(tempfile.gettempdir()) / "imgclf-finetune-tiny.json"
        out = args.out or (tiny_out if args.tiny else REPO / "bench" / "results" / "finetune.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
    sd = f" ± {summary['sd']:.4f} (sd)" if summary["sd"] is not None else ""
    print(f"finetune - scratch, per seed: {', '.join(f'{d:+.4f}' for d in summary['differences'])}; "
          f"mean {summary['mean']:+.4f}{sd}; fine-tuning wins {summary['finetune_wins']}/{len(summary['seeds'])}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

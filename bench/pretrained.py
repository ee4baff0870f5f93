"""Train and write the pretrained CIFAR-10 model that ships with imgclf.

    python bench/pretrained.py --recipe seed --seed 0 [--limit-per-class N] [--epochs N]

Trains with imgclf's own pipeline (`imgclf.train`) on the JPEG copy of the CIFAR-10 training
images ($IMGCLF_SHARED/datasets/cifar10-jpeg/train; 10% held out for validation by split_seed 0),
which fits the temperature (on half of the validation split, as every train does),
then writes src/imgclf/runtime/pretrained/cifar10.keras (with a model card in its metadata) and its ONNX
export cifar10.onnx (parity-checked against real validation images), regenerates the model card
docs/pretrained-<name>.md from the model file's metadata, and prints the sizes, sha256 checksums
and validation accuracy for bench/README.md. Both files must stay under 2 MB.

The .keras file is not byte-for-byte reproducible (Keras stores the save date inside it); the
training run is (seeded, deterministic ops), so the weights and the validation accuracy are.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def slim_copy(src: Path, dst: Path, meta: dict) -> None:
    """Re-save without the optimizer state (half the file: SGD momentum is as large as the weights)."""
    from imgclf.runtime.modelfile import load_model, save_model

    model, _ = load_model(src)  # compile=False: no optimizer
    save_model(model, dst, meta)


def main(argv=None) -> int:
    shared = Path(os.environ.get("IMGCLF_SHARED", REPO.parent / "shared"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default="seed", help="imgclf recipe (the lead ships the best fast recipe)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=str(shared / "datasets" / "cifar10-jpeg" / "train"))
    ap.add_argument("--limit-per-class", type=int, default=None, help="train on a subset (default: all 5,000)")
    ap.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    ap.add_argument("--out-dir", type=Path, default=REPO / "src" / "imgclf" / "runtime" / "pretrained")
    ap.add_argument("--name", default="cifar10")
    ap.add_argument("--max-mb", type=float, default=2.0)
    args = ap.parse_args(argv)

    import imgclf
    from imgclf.deploy.export import export
    from imgclf.runtime.classifier import expand_paths
    from imgclf.runtime.modelfile import read_meta

    # train fits the temperature on half of the validation split and stores it in the model, so the
    # shipped model's probabilities are calibrated; report=True adds the HTML report beside it
    overrides = {"data": args.data, "recipe": args.recipe, "seed": args.seed, "report": True}
    if args.limit_per_class:
        overrides["limit_per_class"] = args.limit_per_class
    if args.epochs:
        overrides["epochs"] = args.epochs
    with tempfile.TemporaryDirectory(prefix="imgclf-pretrained-") as tmp:
        run = imgclf.train(run_dir=Path(tmp) / "run", verbose=2, **overrides)
        val = run.metrics["val"]
        limit = args.limit_per_class or "all"
        command = (f"python bench/pretrained.py --recipe {args.recipe} --seed {args.seed}"
                   + (f" --limit-per-class {args.limit_per_class}" if args.limit_per_class else "")
                   + (f" --epochs {args.epochs}" if args.epochs else ""))
        meta = read_meta(run.model_path)
        meta["card"] = {
            "name": f"imgclf pretrained {args.name}",
            "data": ("the JPEG copy of the CIFAR-10 training images (cifar10-jpeg/train, 50,000 images, "
                     f"{limit} per class used), 10% held out for validation (split_seed "
                     f"{run.config.split_seed}); no test images seen"),
            "recipe": args.recipe, "seed": args.seed, "epochs": run.metrics.get("epochs_run"),
            "model": run.config.model, "val_accuracy": val["accuracy"], "val_n": val["n"],
            "train_seconds": round(run.metrics["seconds"]["total"], 1), "temperature": meta.get("temperature", 1.0), "command": command,
        }
        meta["pretrained"] = args.name
        args.out_dir.mkdir(parents=True, exist_ok=True)
        staged = Path(tmp) / f"{args.name}.keras"
        slim_copy(run.model_path, staged, meta)
        check = expand_paths([args.data])[:: max(1, 50_000 // 256)][:256]  # real images for the parity check
        onnx_staged = export(staged, "onnx", Path(tmp) / f"{args.name}.onnx", check_data=check)
        print(onnx_staged.summary())
        out = {}
        for src in (staged, onnx_staged.path):
            size = src.stat().st_size
            if size > args.max_mb * 1e6:
                raise SystemExit(f"{src.name}: {size:,} bytes is over the {args.max_mb} MB limit")
            dst = args.out_dir / src.name
            shutil.copyfile(src, dst.with_suffix(dst.suffix + ".tmp"))
            os.replace(dst.with_suffix(dst.suffix + ".tmp"), dst)
            out[dst.name] = {"bytes": size, "sha256": sha256(dst)}
    from imgclf.runtime.card import model_card

    card = REPO / "docs" / f"pretrained-{args.name}.md"
    card.write_text(model_card(read_meta(args.out_dir / f"{args.name}.keras")))
    print(json.dumps({"card": meta["card"], "files": out, "card_file": str(card)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`imgclf` command line: a thin layer over the Python API.

Every TrainConfig field is a flag of `imgclf train` (`--learning-rate`, `--augment-flip`, ...),
generated from the dataclass so the two can never drift apart. Bad input ends with one
`error: ...` line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from . import __version__
from .config import RECIPES, TrainConfig
from .errors import ImgclfError

ALIASES = {"learning_rate": ["--lr"], "data": ["-d"], "epochs": ["-e"]}


def parse_duration(text: str) -> float:
    """'90', '90s', '30m', '1.5h' -> seconds."""
    text = str(text).strip().lower()
    scale = {"s": 1, "m": 60, "h": 3600}.get(text[-1:], None)
    try:
        return float(text[:-1]) * scale if scale else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a duration like 90s, 30m or 1.5h, got {text!r}") from None


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("training config (defaults: the seed recipe)")
    for f in fields(TrainConfig):
        if f.name in ("model_options", "recipe"):
            continue
        flags = ["--" + f.name.replace("_", "-")] + ALIASES.get(f.name, [])
        kind = str(f.type).split("|")[0].strip()
        if f.name == "time_budget":
            group.add_argument(*flags, dest=f.name, type=parse_duration, default=None, help="e.g. 30m")
        elif kind == "bool":
            group.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, default=None)
        else:
            typ = {"int": int, "float": float}.get(kind, str)
            group.add_argument(*flags, dest=f.name, type=typ, default=None, metavar=kind.upper())


def _model_options(pairs) -> dict:
    import yaml

    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ImgclfError(f"--model-option: expected KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key] = yaml.safe_load(value)
    return out


def cmd_train(args) -> int:
    from .training import train

    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    overrides.pop("model_options", None)
    if args.model_option:
        overrides["model_options"] = _model_options(args.model_option)
    train(args.config, run_dir=args.out, resume=args.resume,
          verbose=0 if args.quiet else 1, **overrides)
    return 0


def cmd_evaluate(args) -> int:
    from .evaluation import evaluate

    evaluate(args.model, args.data, args.test_data, args.out, tta=args.tta)
    return 0


def cmd_predict(args) -> int:
    from .prediction import predict, print_predictions

    rows = predict(args.model, args.paths, k=args.top_k, tta=args.tta)
    print_predictions(rows, as_json=args.json, csv_path=args.csv)
    return 0


def cmd_models(args) -> int:
    from .models import list_models

    print("\n".join(list_models()))
    print("recipes: " + ", ".join(RECIPES))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgclf", description="Train, tune, evaluate and deploy CNN image classifiers.")
    parser.add_argument("--version", action="version", version=f"imgclf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model and write a run directory")
    p.add_argument("--config", "-c", type=Path, help="YAML or TOML file of config fields")
    p.add_argument("--recipe", choices=sorted(RECIPES), help="named recipe (overrides defaults)")
    p.add_argument("--out", "-o", type=Path, help="run directory (default runs/<recipe>-<time>)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue an interrupted run")
    p.add_argument("--model-option", action="append", metavar="KEY=VALUE", help="option for the model factory")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    _add_config_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="the seed's results table, per-class metrics, confusion matrix")
    p.add_argument("model", type=Path)
    p.add_argument("--data", "-d", help="image folder or CIFAR-10 archive (default: the model's own data)")
    p.add_argument("--test-data", help="separate test image folder")
    p.add_argument("--out", "-o", type=Path, help="output folder (default: <model folder>/evaluation)")
    p.add_argument("--tta", action="store_true", help="test-time augmentation (mean with the mirror image)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="top-k classes for image files or folders")
    p.add_argument("model", type=Path)
    p.add_argument("paths", nargs="+", help="image files or folders")
    p.add_argument("--top-k", "-k", type=int, default=5)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--csv", type=Path, metavar="OUT", help="also write the predictions to a CSV file")
    p.add_argument("--tta", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("models", help="list registered models and recipes")
    p.set_defaults(func=cmd_models)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ImgclfError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (a training run continues with: imgclf train --resume RUN_DIR)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

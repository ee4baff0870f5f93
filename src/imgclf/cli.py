"""`imgclf` command line: a thin layer over the Python API.

Every TrainConfig field is a flag of `imgclf train` (`--learning-rate`, `--augment-flip`, ...),
generated from the dataclass so the two can never drift apart. Bad input ends with one
`error: ...` line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import __version__
from .config import FIELDS, RECIPES, load_yaml, parse_duration
from .errors import ConfigError, ImgclfError, quote, shorten

ALIASES = {"learning_rate": ["--lr"], "data": ["-d"], "epochs": ["-e"]}
NOT_FLAGS = ("model_options", "recipe", "plan")  # --model-option KEY=VALUE, --recipe NAME; plan: by training


def duration(text: str) -> float:
    """argparse type of --time-budget: config.parse_duration, its message without the flag's name."""
    try:
        return parse_duration(text, "--time-budget")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--time-budget: ")) from None


def device_count(text: str) -> int:
    """argparse type of --devices: all (0 in the config) or a whole number (the schema checks its bounds)."""
    if text.strip().lower() == "all":
        return 0
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected all or a whole number, got {quote(text)}") from None


TIME_BUDGET_HELP = ("wall time of training, e.g. 90s, 30m, 1.5h. Under the auto recipe (the default) the plan "
                    "fits a fixed number of epochs into it (default: 10 minutes); under any other recipe or a "
                    "--config file, training stops when it is spent and the learning-rate schedule is spread "
                    "over it instead of over --epochs (default: none, --epochs counts; the budget recipe "
                    "sets 30 minutes)")
TTA_HELP = ("test-time augmentation: the mean over each image and its mirror, and over shifted copies too "
            "if the model's recipe used them (its tta_translate)")


class Parser(argparse.ArgumentParser):
    """argparse with imgclf's error style: one short `error:` line (no usage block), exit status 2."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {shorten(message, 200)} (see {self.prog} --help)\n")


def default_text(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def field_help(name: str) -> str:
    """A config field's one-line help: its schema description and its default (argparse-escaped)."""
    spec = FIELDS[name]
    return f"{spec.description} (default: {default_text(spec.default)})".replace("%", "%%")


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("training config (the defaults shown are the seed recipe's)")
    for name, spec in FIELDS.items():
        if name in NOT_FLAGS:
            continue
        flags = ["--" + name.replace("_", "-")] + ALIASES.get(name, [])
        if name == "time_budget":
            group.add_argument(*flags, dest=name, type=duration, default=None, metavar="DURATION",
                               help=TIME_BUDGET_HELP)
        elif name == "devices":
            group.add_argument(*flags, dest=name, type=device_count, default=None, metavar="all|N",
                               help=field_help(name))
        elif spec.kind == "bool":
            group.add_argument(*flags, dest=name, action=argparse.BooleanOptionalAction, default=None,
                               help=field_help(name))
        else:  # the value is checked by the schema (make_config): bad input is one error line
            metavar = "|".join(spec.choices) if spec.choices else spec.kind.upper()
            typ = {"int": int, "float": float}.get(spec.kind, str)
            group.add_argument(*flags, dest=name, type=typ, default=None, metavar=metavar, help=field_help(name))


def _model_options(pairs) -> dict:
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ImgclfError(f"--model-option: expected KEY=VALUE, got {quote(pair)}")
        key, value = pair.split("=", 1)
        out[key] = load_yaml(value, f"--model-option {shorten(key)}")  # no aliases: no YAML bombs
    return out


def cmd_train(args) -> int:
    from .pipeline import train

    overrides = {name: getattr(args, name) for name in FIELDS if name != "model_options" and hasattr(args, name)}
    if args.model_option:
        overrides["model_options"] = _model_options(args.model_option)
    if overrides.get("recipe") is None and args.config is None and args.resume is None:
        overrides["recipe"] = "auto"  # a plan that fits the folder (imgclf.training.plan)
    if getattr(args, "repeats", 1) < 1:
        raise ImgclfError(f"--repeats: expected an integer >= 1, got {args.repeats}")
    if getattr(args, "repeats", 1) != 1:  # mean +- std over seeds (imgclf.repeats)
        from .repeats import train_repeats

        if args.resume:
            raise ImgclfError("--repeats: cannot be combined with --resume")
        train_repeats(args.config, args.repeats, run_dir=args.out, verbose=0 if args.quiet else 1, **overrides)
        return 0
    result = train(args.config, run_dir=args.out, resume=args.resume, verbose=0 if args.quiet else 1, **overrides)
    if args.quiet:  # no plan, progress or summary, but still the results and where they are
        from .evaluation.metrics import results_table

        print(results_table(result.metrics))
        print(f"run directory: {result.run_dir}")
    return 0


def cmd_evaluate(args) -> int:
    from .pipeline import evaluate

    evaluate(args.model, args.data, args.test_data, args.out, tta=args.tta, report=args.report)
    return 0


def cmd_tune(args) -> int:
    from .pipeline import tune
    from .tuning.cli import tune_arguments
    from .tuning.tuner import print_summary

    space, kwargs = tune_arguments(args)
    try:
        result = tune(space, report=not args.no_report, **kwargs)
    except KeyboardInterrupt:
        return 130
    print_summary(result)
    return 0


def cmd_report(args) -> int:
    from .report.build import make_report

    print(make_report(args.run_dir, args.out, robustness_n=args.robustness_n, verbose=True))
    return 0


def cmd_compare(args) -> int:
    from .report.build import compare

    print(compare(args.run_dirs, args.out))
    return 0


def _model_or_pretrained(args, prefer=("onnx", "keras")):
    """(model path, remaining positional paths) for commands that take MODEL or --pretrained NAME."""
    positional = ([str(args.model)] if args.model is not None else []) + list(getattr(args, "paths", []) or [])
    if getattr(args, "pretrained", None):
        from .runtime.zoo import pretrained_path

        return pretrained_path(args.pretrained, prefer), positional
    if not positional:
        raise ImgclfError("MODEL: give a model file (.keras or .onnx) or --pretrained NAME")
    return Path(positional[0]), positional[1:]


def cmd_predict(args) -> int:
    from .runtime.predict import predict, print_predictions

    model, paths = _model_or_pretrained(args)
    if not paths:
        raise ImgclfError("PATHS: give one or more image files or folders")
    if args.top_k < 1:
        raise ImgclfError(f"--top-k: expected an integer >= 1, got {args.top_k}")
    rows = predict(model, paths, k=args.top_k, tta=args.tta, progress=False if args.json else None)
    print_predictions(rows, as_json=args.json, csv_path=args.csv)
    return 0


def cmd_export(args) -> int:
    from .deploy.export import export

    result = export(args.model, args.format, args.out, check_data=args.check_data, name=args.name)
    print(result.summary())
    return 0


def cmd_serve(args) -> int:
    from .deploy.app import Settings, run

    model, extra = _model_or_pretrained(args, prefer=("keras", "onnx"))  # .keras gives Grad-CAM heatmaps
    if extra:
        raise ImgclfError(f"serve: unexpected argument {quote(extra[0])} (give one model file)")
    for name in ("max_files", "max_batch", "workers", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ImgclfError(f"--{name.replace('_', '-')}: expected an integer >= 1")
    if not (0 < args.max_mb <= 1e6 and 0 <= args.batch_window_ms <= 60_000
            and 0 <= args.graceful_timeout <= 3600):  # (NaN and inf fail too)
        raise ImgclfError("--max-mb must be in (0, 1e6], --batch-window-ms in [0, 60000] and "
                          "--graceful-timeout in [0, 3600]")
    settings = Settings(model, max_files=args.max_files, max_bytes=int(args.max_mb * 1e6), threads=args.threads,
                        batch_window_ms=args.batch_window_ms, max_batch=args.max_batch, heatmap=args.heatmap)
    run(settings, workers=args.workers, host=args.host, port=args.port, graceful_timeout=args.graceful_timeout)
    return 0


def cmd_models(args) -> int:
    from .models.registry import describe_models  # names and descriptions only: no Keras

    described = describe_models()
    width = max(map(len, described), default=0)
    print("\n".join(f"{name:<{width}}  {text}" for name, text in described.items()))
    print("recipes: " + ", ".join(RECIPES))
    return 0


def cmd_pack(args) -> int:
    from .data.pack import pack

    index = pack(args.dir, args.out, shards=args.shards)
    counts = ", ".join(f"{v['count']:,} {k}" for k, v in index["splits"].items())
    print(f"packed {counts} images of {len(index['class_names'])} classes into {args.out} "
          f"(train with --data {args.out})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="imgclf", description="Train, tune, evaluate and deploy CNN image classifiers.")
    parser.add_argument("--version", action="version", version=f"imgclf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model and write a run directory")
    p.add_argument("--config", "-c", type=Path, metavar="FILE",
                   help="YAML or TOML file of config fields, e.g. a copy of a recipe file (default: none)")
    p.add_argument("--recipe", choices=list(RECIPES), metavar="|".join(RECIPES),
                   help="a shipped recipe (imgclf/recipes/NAME.yaml) whose values override the defaults; "
                        "seed is the defaults themselves (default: auto, a plan that fits the data and "
                        "--time-budget, unless --config is given)")
    p.add_argument("--out", "-o", type=Path, metavar="RUN_DIR", help="run directory (default: runs/<recipe>-<time>)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue an interrupted run from its last completed epoch (default: none)")
    p.add_argument("--model-option", action="append", metavar="KEY=VALUE",
                   help="an option of the model's builder, its value in YAML; repeatable (default: none)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars (default: no)")
    p.add_argument("--repeats", type=int, default=1, metavar="N",
                   help="train N times (seeds seed..seed+N-1) and report mean ± std (default: 1)")
    _add_config_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="the seed's results table, per-class metrics, confusion matrix")
    p.add_argument("model", type=Path)
    p.add_argument("--data", "-d", help="image folder or CIFAR-10 archive (default: the model's own data)")
    p.add_argument("--test-data", help="separate test image folder")
    p.add_argument("--out", "-o", type=Path, help="output folder (default: <model folder>/evaluation)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help=TTA_HELP + " (default: as the model records, so the figures match train's; --no-tta: off)")
    p.add_argument("--report", action=argparse.BooleanOptionalAction, default=True,
                   help="write OUT/report.html (default: yes)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("report", help="write RUN_DIR/report.html: one self-contained page for a run, "
                                      "evaluation, study or repeats folder")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--out", "-o", type=Path, help="HTML file (default: RUN_DIR/report.html)")
    p.add_argument("--robustness-n", type=int, default=None, metavar="N",
                   help="validation images for the corruption test (default: up to 500, fewer if the report's "
                        "time budget needs it; 0: skip it)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("compare", help="one HTML page with several runs side by side")
    p.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", "-o", type=Path, default=Path("compare.html"), help="HTML file (default: compare.html)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("predict", help="top-k classes for image files or folders")
    p.add_argument("model", type=Path, nargs="?", help="model file (.keras or .onnx); omit with --pretrained")
    p.add_argument("paths", nargs="*", help="image files or folders")
    p.add_argument("--pretrained", metavar="NAME", help="use a model shipped with imgclf (cifar10)")
    p.add_argument("--top-k", "-k", type=int, default=5)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--csv", type=Path, metavar="OUT", help="also write the predictions to a CSV file")
    p.add_argument("--tta", action="store_true", help=TTA_HELP)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("models", help="list registered models and recipes")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("pack", help="write an image folder as ArrayRecord shards: a dataset for --data "
                       "that is read by index, for sets too large for one folder walk")
    p.add_argument("dir", metavar="DIR", help="image folder (class folders, or train/ with validation/ and test/)")
    p.add_argument("out", metavar="OUT", type=Path, help="new folder to write (index.json, shards, label files)")
    p.add_argument("--shards", type=int, metavar="N", help="shard files per split (default: one per 50,000 images)")
    p.set_defaults(func=cmd_pack)

    p = sub.add_parser("export", help="export a .keras model to onnx, savedmodel or tflite, or a Triton / "
                                      "TF Serving model folder (checks parity)")
    p.add_argument("model", type=Path, help="a .keras model file")
    p.add_argument("--format", "-f", choices=["onnx", "savedmodel", "tflite", "triton", "tfserving"], default="onnx",
                   help="triton: OUT/NAME/1/model.onnx + OUT/NAME/config.pbtxt; tfserving: OUT/NAME/1/ "
                        "(a SavedModel) (default: onnx)")
    p.add_argument("--out", "-o", type=Path, help="output path; for triton and tfserving the model repository "
                                                  "folder (default: beside the model)")
    p.add_argument("--name", help="triton / tfserving: the model's name in the repository (default: the file's stem)")
    p.add_argument("--check-data", metavar="PATH", help="images for the parity check (default: a synthetic batch)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", help="serve a model over HTTP (FastAPI): /predict, /model, /docs and a web page")
    p.add_argument("model", type=Path, nargs="?", help="model file (.keras or .onnx); omit with --pretrained")
    p.add_argument("--pretrained", metavar="NAME", help="serve a model shipped with imgclf (cifar10)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-files", type=int, default=16, help="images per request")
    p.add_argument("--max-mb", type=float, default=20.0, help="request body limit in MB")
    p.add_argument("--batch-window-ms", type=float, default=2.0, help="how long a request waits for others to batch with")
    p.add_argument("--max-batch", type=int, default=64, help="images per model call")
    p.add_argument("--heatmap", choices=["auto", "grad-cam", "occlusion", "none"], default="auto")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="server processes, each with its own copy of the model (default: 1, in this process)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="intra-op threads per worker for ONNX Runtime / TensorFlow (default: the runtime's own)")
    p.add_argument("--graceful-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="on SIGTERM, how long in-flight requests may take to finish (default: 30)")
    p.set_defaults(func=cmd_serve)

    from .tuning.cli import add_parser as add_tune_parser  # imgclf tune: hyperparameter search

    add_tune_parser(sub).set_defaults(func=cmd_tune)
    return parser


def uses_keras(args) -> bool:
    """Whether the command loads Keras in this process: every one that trains or reads a .keras model;
    not compare, models and pack, not predict of an .onnx file (--pretrained: the shipped one), not
    tune's coordinator (its trials run in processes of their own) and not serve's supervisor (under
    --workers each worker loads the model)."""
    func = args.func
    if func in (cmd_compare, cmd_models, cmd_pack):
        return False
    if func is cmd_tune:
        return getattr(args, "isolate", None) == "none"  # trials in this process
    if func is cmd_serve and (getattr(args, "workers", None) or 1) > 1:
        return False
    if func in (cmd_predict, cmd_serve):
        if getattr(args, "pretrained", None):
            return func is cmd_serve  # predict prefers the shipped .onnx, serve the .keras (Grad-CAM)
        return not str(getattr(args, "model", None) or "").endswith(".onnx")
    return True


def main(argv=None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter hides the output
    args = build_parser().parse_args(argv)
    try:
        if uses_keras(args):
            from .quiet import import_keras

            import_keras()  # TensorFlow's start-up lines dropped, other stderr kept
        return args.func(args)
    except ImgclfError as e:  # one line, bounded, whatever the message holds
        print(f"error: {shorten(' '.join(str(e).splitlines()), 2000)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (a training run continues with: imgclf train --resume RUN_DIR)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

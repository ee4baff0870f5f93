"""The `imgclf tune` subcommand's flags, and the tune() arguments they give (imgclf.cli runs it)."""

from __future__ import annotations

from pathlib import Path

from ..config import load_yaml
from ..errors import ConfigError, quote
from .space import PRUNERS, SAMPLERS, SPACES_DIR, example_space


def add_parser(sub):
    """Add `imgclf tune` to the CLI's subparsers; returns its parser."""
    p = sub.add_parser("tune", help="hyperparameter search (grid / random / TPE) over a space file",
                       description="Search a space file's parameters with Optuna. Example space: "
                                   f"{example_space()}")
    p.add_argument("space", nargs="?", type=Path, help="space file (YAML); 'seed_cnn' = the shipped example")
    p.add_argument("--data", "-d", help="image folder or CIFAR-10 archive (overrides base.data)")
    p.add_argument("--test-data", help="separate test image folder (evaluated once, for the best trial)")
    p.add_argument("--study", help="study name (default: the space's study: or the file name)")
    p.add_argument("--storage", help="database URL shared by all workers (default: sqlite file in the study dir)")
    p.add_argument("--workers", type=int, default=1, help="local worker processes (default 1)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="STUDY_DIR",
                   help="continue an existing study (from STUDY_DIR/tune.json when given)")
    p.add_argument("--out", "-o", type=Path, help="study directory (default studies/<study>)")
    p.add_argument("--sampler", choices=SAMPLERS, help="default: the space's sampler, else grid")
    p.add_argument("--pruner", choices=PRUNERS, help="default: none for grid, median otherwise")
    p.add_argument("--trials", type=int, help="trial budget (default: the whole grid, or 20)")
    p.add_argument("--epochs", type=int, help="epochs per trial")
    p.add_argument("--time", dest="time_budget", help="wall-time budget, e.g. 2h: no new trial starts after it")
    p.add_argument("--trial-time", help="per-trial time budget, e.g. 90s (train's --time-budget)")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", default=[],
                   help="override a base config field, e.g. --set limit_per_class=500")
    p.add_argument("--objective", help="MODULE:FUNCTION taking a TrialContext (default: train)")
    p.add_argument("--threads-per-worker", type=int, help="CPU threads per worker (default cores / workers)")
    p.add_argument("--no-test", action="store_true", help="do not evaluate the best model on the test set")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots (they take a few seconds)")
    p.add_argument("--no-report", action="store_true", help="skip the HTML report")
    p.add_argument("--isolate", choices=("process", "none"),
                   help="run each trial in a fresh process (default for training: memory stays flat)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    return p


def tune_arguments(args) -> tuple[Path | None, dict]:
    """(space file, tune() keyword arguments) from the parsed flags."""
    base = {}
    for pair in args.set:
        if "=" not in pair:
            raise ConfigError(f"--set: expected FIELD=VALUE, got {quote(pair)}")
        key, value = pair.split("=", 1)
        base[key.strip()] = load_yaml(value, f"--set {key.strip()}")
    space = args.space
    if space is not None and not space.exists() and (SPACES_DIR / f"{space}.yaml").is_file():
        space = example_space(str(space))  # `imgclf tune seed_cnn`: the shipped example
    return space, dict(data=args.data, test_data=args.test_data, study=args.study, storage=args.storage,
                       workers=args.workers, resume=args.resume, out_dir=args.out, sampler=args.sampler,
                       pruner=args.pruner, trials=args.trials, epochs=args.epochs, time_budget=args.time_budget,
                       trial_time=args.trial_time, base=base or None, objective=args.objective,
                       test=not args.no_test, progress=not args.quiet, threads_per_worker=args.threads_per_worker,
                       plots=not args.no_plots, isolate=args.isolate)

"""Repeated training runs: mean ± standard deviation over seeds.

`train_repeats(config, repeats=N)` (CLI: `imgclf train --repeats N`) trains the same config N
times with seeds seed, seed+1, ..., seed+N-1 into RUN_DIR/seed-<s>/. The validation split stays
fixed (it follows `split_seed`, not `seed`), so the spread measures training noise only:
weight initialisation, data order, augmentation and dropout. It writes

    RUN_DIR/repeats.json   the member runs and {metric: {mean, std, n, values}}
    RUN_DIR/repeats.md     the same as a Markdown table
    RUN_DIR/report.html    the runs side by side, with the mean ± std table

std is the sample standard deviation (ddof=1). An improvement smaller than about two standard
deviations of both configs is not one you can tell from noise with this many runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .config import TrainConfig, make_config
from .errors import ConfigError, ImgclfError
from .fileio import atomic_write, write_json


def _stats_markdown(stats: dict) -> str:
    from .report.formatting import format_value

    lines = ["| metric | mean ± std | runs |", "|---|---|---|"]
    for k, s in stats.items():
        lines.append(f"| {k} | {format_value(k, s['mean'])} ± {format_value(k, s['std'])} | {s['n']} |")
    return "\n".join(lines) + "\n"


def summarize(run_dir: str | Path, members: list[str]) -> dict:
    """(Re)compute repeats.json, repeats.md and report.html of RUN_DIR from its member runs."""
    from .report.build import compare
    from .report.sources import REPORT_NAME, run_summary, stats_over

    run_dir = Path(run_dir)
    values = [run_summary(run_dir / m)["values"] for m in members]
    stats = stats_over(values)
    info = {"runs": members, "stats": stats}
    write_json(run_dir / "repeats.json", info)
    text = _stats_markdown(stats)
    atomic_write(run_dir / "repeats.md", lambda f: f.write(text.encode()))
    compare([run_dir / m for m in members], run_dir / REPORT_NAME,
            title=f"imgclf repeats: {run_dir.resolve().name} ({len(members)} seeds)", stats=stats)
    return info


def train_repeats(config: TrainConfig | str | Path | None = None, repeats: int = 3, *,
                  run_dir: str | Path | None = None, verbose: int = 1, **overrides) -> dict:
    """Train `repeats` times with consecutive seeds; returns repeats.json's content."""
    from .pipeline import train
    from .training.trainer import default_run_dir

    if not isinstance(repeats, int) or repeats < 1:
        raise ConfigError(f"repeats: expected an integer >= 1, got {repeats!r}")
    if isinstance(config, TrainConfig):
        cfg = make_config(**{**config.to_dict(), **{k: v for k, v in overrides.items() if v is not None}})
    else:
        cfg = make_config(config, **overrides)
    if cfg.recipe == "auto" and not cfg.plan and cfg.data:  # plan once: every seed trains the same config
        from .training.plan import explicit_fields, plan_config, plan_input_size

        explicit = explicit_fields(config, overrides)
        facts, cfg = plan_input_size(cfg, explicit)
        cfg = plan_config(cfg, facts, explicit, verbose=bool(verbose))
    run_dir = Path(run_dir) if run_dir else default_run_dir(cfg)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ImgclfError(f"{run_dir}: run directory exists and is not empty")
    members = []
    for i in range(repeats):
        seed = cfg.seed + i
        name = f"seed-{seed}"
        if verbose:
            print(f"--- repeat {i + 1}/{repeats}: seed {seed} -> {run_dir / name}", file=sys.stderr)
        train(cfg, run_dir=run_dir / name, verbose=verbose, seed=seed)
        members.append(name)
    info = summarize(run_dir, members)
    if verbose:
        print(f"\nmean ± std over {repeats} seeds ({run_dir}/repeats.md):\n" + _stats_markdown(info["stats"]))
        print(f"report: {run_dir / 'report.html'}")
    return info

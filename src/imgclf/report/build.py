"""Reports you can see: one self-contained HTML file per run, evaluation, study or comparison.

`make_report(folder)` writes `folder/report.html`: every image is an embedded base64 PNG and
the styling is inline, so the file works offline and opens from disk in any browser.

A training run's report holds the seed's results table (train / validation / test loss and
accuracy), learning curves, the confusion matrix, per-class precision / recall / F1, the most
confidently wrong validation images, calibration (ECE and reliability diagrams before and
after temperature scaling at the model's stored temperature, which `train` fitted on one half
of the validation split and measured on the other), accuracy under common corruptions on a
validation subsample, the config and the timing. The numbers behind the report go to
`folder/report.json`. A report reads model files and never writes one.

`make_report` recognises what it is shown:
  run directory  config.yaml / model.keras (from `imgclf train`)
  evaluation     metrics.json naming a model (from `imgclf evaluate`): calibration shows the
                 model's stored temperature on the held-out data
  study          trials.csv / trials.md (from `imgclf tune`): the trials table and search plots
  repeats        repeats.json (from `imgclf train --repeats N`): mean +- std over seeds

`compare(run_dirs, out)` puts several runs side by side: metrics table, config differences
and overlaid learning curves.

Called from `train` and `evaluate`, the report reuses the model, images and predictions they
already hold, so it costs a few seconds (robustness predictions, plots), not a re-evaluation.

Pages are gathered as data (pages.py, sections.py) and laid out by the Jinja2 templates in
templates/, with autoescaping on: no HTML is written in Python.
"""

from __future__ import annotations

import base64
import sys
import time
from datetime import datetime
from functools import cache
from pathlib import Path

import jinja2

from .. import __version__
from ..errors import ImgclfError
from ..fileio import atomic_write, write_json
from .formatting import secs
from .pages import BUDGET_SECONDS, Page, compare_page, evaluation_page, run_page, study_page
from .sources import REPORT_NAME, EvalSet, Predict, folder_kind, read_json, run_summary


def data_url(png: bytes) -> str:
    """PNG bytes as a data: URL, so the page holds its images."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


@cache
def environment():
    """The Jinja2 environment over templates/ (autoescape on for every template)."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    env.filters["data_url"] = data_url
    return env


def render(page: Page, seconds: float | None = None, report_seconds: str = "") -> str:
    """The page as one HTML document; `report_seconds`: the timing table's 'this report' cell."""
    return environment().get_template("page.html.j2").render(
        page=page, version=__version__, made=datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
        took=f" in {seconds:.1f} s" if seconds is not None else "", report_seconds=report_seconds)


def write_html(path: Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
    return path


def make_report(run_dir: str | Path, out: str | Path | None = None, *, model=None, data=None, val_probs=None,
                eval_set: EvalSet | None = None, predict: Predict | None = None, temperature: float | None = None,
                robustness_n: int | None = None, seed: int | None = None, verbose: bool = False) -> Path:
    """Write `run_dir/report.html` (or `out`) and `run_dir/report.json`; returns the HTML path.

    From `train`: `model` (keras.Model), `data` (Dataset) and `val_probs` (single-pass, no TTA) save
    re-loading and re-predicting. From `evaluate`: `eval_set`, `predict` and the model's `temperature`.
    Calibration is shown at the model's stored temperature: a report fits nothing and writes no model.
    `robustness_n`: images for the corruption test; None = up to 500, fewer if the report would
    otherwise exceed its budget of max(30 s, 10% of the run's time); 0 = skip it.
    `seed`: the corruption subsample (default: the run's split_seed).
    """
    t0 = time.perf_counter()
    folder = Path(run_dir)
    if not folder.is_dir():
        raise ImgclfError(f"{folder}: folder not found (expected a run, evaluation, study or repeats folder)")
    if robustness_n is not None and robustness_n < 0:
        raise ImgclfError(f"robustness_n: expected an integer >= 0, got {robustness_n}")
    kind = folder_kind(folder)
    if kind == "repeats":
        info = read_json(folder / "repeats.json")
        members = [folder / r for r in info.get("runs", [])]
        return compare(members, out or folder / REPORT_NAME, title=f"imgclf repeats: {folder.resolve().name}",
                       stats=info.get("stats"))
    page = Page(title=f"imgclf report: {folder.resolve().name}", deadline=t0 + BUDGET_SECONDS)
    page.data["kind"] = kind
    if kind == "run":
        run_page(folder, page, model=model, data=data, val_probs=val_probs, robustness_n=robustness_n, seed=seed)
    elif kind == "evaluation":
        evaluation_page(folder, page, eval_set, predict, temperature, robustness_n, seed or 0)
    else:
        study_page(folder, page)
    seconds = time.perf_counter() - t0
    run_seconds = page.data.get("run_seconds")
    share = f" ({100 * seconds / run_seconds:.1f}% of the run's {secs(run_seconds)})" if run_seconds else ""
    path = write_html(Path(out) if out else folder / REPORT_NAME, render(page, seconds, f"{secs(seconds)}{share}"))
    page.data["seconds"] = seconds
    page.data["notes"] = page.notes
    write_json(folder / "report.json", page.data)
    if verbose:
        print(f"report: {path} ({seconds:.1f} s)", file=sys.stderr)
    return path


def compare(run_dirs, out: str | Path | None = None, title: str | None = None, stats: dict | None = None) -> Path:
    """One HTML page putting runs side by side: metrics, config differences, overlaid learning curves."""
    t0 = time.perf_counter()
    folders = [Path(d) for d in run_dirs]
    if not folders:
        raise ImgclfError("compare: no run folders given")
    runs = [run_summary(f) for f in folders]
    out = Path(out) if out else Path("compare.html")
    page = compare_page(runs, folders, out, title, stats)
    return write_html(out, render(page, time.perf_counter() - t0))

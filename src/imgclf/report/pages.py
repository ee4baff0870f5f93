"""A report page as data: which sections a run, evaluation, study or comparison gets, and what
goes in them. `build` renders a Page with the templates in templates/.

Time budget: a report may take max(30 s, 10% of the run it reports on); only the robustness
pass adapts to it (fewer images), keeping a few seconds for the figures drawn after it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import figures
from ..errors import ImgclfError
from ..evaluation.metrics import SET_NAMES, evaluate_arrays, unbalanced
from . import sections
from .formatting import format_value, num, pct
from .sources import (REPORT_NAME, EvalSet, Predict, classifier_predict, keras_predict, read_config,
                      read_history, read_json, read_table, run_names, run_val_set)

ROBUSTNESS_N = 500  # validation images for the corruption test (fewer if the time budget demands)
BUDGET_SECONDS = 30.0
BUDGET_FRACTION = 0.1
PLOT_RESERVE = 4.0  # seconds kept for the figures drawn after the robustness pass


@dataclass
class Section:
    id: str
    heading: str
    kind: str  # laid out by templates/section_<kind>.html.j2
    data: dict


@dataclass
class Page:
    title: str
    subtitle: str = ""
    cards: list[tuple[str, str, str]] = field(default_factory=list)  # (label, value, note)
    sections: list[Section] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)  # -> report.json
    deadline: float | None = None  # time.perf_counter() by which the report should be done

    def add(self, sid: str, heading: str, kind: str, **data) -> None:
        self.sections.append(Section(sid, heading, kind, data))


def balanced_note(metrics: dict, key: str) -> str:
    """", balanced accuracy X%" for a set with unbalanced classes (metrics.unbalanced), else ""."""
    m = metrics.get(key)
    return f", balanced accuracy {pct(m['balanced_accuracy'])}" if unbalanced({key: m}) else ""


def image_sections(page: Page, ev: EvalSet, predict: Predict | None, temperature: float, fit: dict | None,
                   robustness_n: int | None, seed: int) -> None:
    """Gallery, calibration (at the stored `temperature`; `fit`: its stored record) and robustness
    for one set of images + raw probabilities. Nothing is fitted and no model file is written."""
    from ..evaluation import calibration

    page.add("errors", "Most confidently wrong", "gallery", **sections.gallery(ev))
    try:
        cal = calibration.assess(ev.probs, ev.y, temperature)
        page.add("calibration", "Calibration", "table_figure", **sections.calibration(cal, fit, ev.name))
        page.data["calibration"] = calibration.summary(cal)
        if fit is not None:
            page.data["calibration_fit"] = fit
        card = fit if fit is not None and "ece_after" in fit else cal  # held-out numbers where there are some
        kept = "" if fit is None or "skipped" not in fit else " (none fitted: see Calibration)"
        page.cards.append(("ECE after temperature scaling", num(card["ece_after"], 3),
                           f"before {num(card['ece_before'], 3)}, T = {temperature:.2f}{kept}"))
    except ImgclfError as e:
        page.notes.append(f"calibration skipped: {e}")
    if predict is not None and robustness_n != 0:
        from ..evaluation.corruptions import robustness

        limit = None
        if robustness_n is None:  # automatic: up to ROBUSTNESS_N images, fewer if the time budget needs it
            limit = max(5.0, page.deadline - time.perf_counter() - PLOT_RESERVE) if page.deadline else None
        rob = robustness(predict, ev.x, ev.y, n=ROBUSTNESS_N if robustness_n is None else robustness_n, seed=seed,
                         time_limit=limit)
        if "reduced_from" in rob:
            page.notes.append(f"robustness: {rob['n']} of the {rob['reduced_from']} images asked for, to keep the "
                              f"report within its time budget (imgclf report --robustness-n N to choose)")
        page.add("robustness", "Robustness to common corruptions", "table_figure",
                 **sections.robustness(rob, ev.name))
        page.data["robustness"] = rob
        page.cards.append(("accuracy under corruptions", pct(rob["mean_corrupted"]),
                           f"{pct(rob['clean'])} clean, {rob['n']} images"))
    else:
        page.notes.append("robustness skipped: " + ("--robustness-n 0" if robustness_n == 0 else "no model to run"))


def run_page(folder: Path, page: Page, model=None, data=None, val_probs=None, robustness_n=None,
             seed: int | None = None) -> None:
    """A training run (config.yaml, metrics.json, history.csv, model.keras)."""
    from ..runtime.modelfile import read_meta

    cfg = read_config(folder / "config.yaml")
    if seed is None:  # the corruption subsample follows the split seed
        seed = int(cfg.get("split_seed") or 0)
    metrics = read_json(folder / "metrics.json") if (folder / "metrics.json").is_file() else {}
    history = read_history(folder / "history.csv")
    model_path = folder / "model.keras"
    meta = read_meta(model_path) if model_path.is_file() else None
    page.subtitle = " · ".join(x for x in (
        "training run", f"model {cfg.get('model') or (meta or {}).get('model', '?')}",
        f"recipe {cfg['recipe']}" if cfg.get("recipe") else "",
        f"{meta['params']:,} parameters" if meta and meta.get("params") else "", str(folder)) if x)
    page.data["metrics"] = {k: metrics.get(k) for k in ("train", "val", "test") if k in metrics}
    page.data["run_seconds"] = (metrics.get("seconds") or {}).get("total")
    if page.deadline is not None and page.data["run_seconds"]:
        page.deadline += max(0.0, BUDGET_FRACTION * page.data["run_seconds"] - BUDGET_SECONDS)
    for key, label in (("val", "validation accuracy"), ("test", "test accuracy")):
        if key in metrics:
            page.cards.append((label, pct(metrics[key]["accuracy"]), f"loss {num(metrics[key]['loss'])}"
                               + balanced_note(metrics, key)))
    page.add("results", "Results", "results", results=sections.results(metrics))
    if history:
        png = (folder / "learning_curves.png").read_bytes() if (folder / "learning_curves.png").is_file() \
            else figures.figure_png(figures.learning_curves_figure(history))
        page.add("learning-curves", "Learning curves", "figure", png=png, alt="learning curves")
    elif not metrics:
        page.notes.append("no history.csv or metrics.json: the run did not finish")

    predict = None
    if model is not None:
        predict = keras_predict(model)
    elif meta is not None:
        from ..runtime import load_classifier

        predict = classifier_predict(load_classifier(model_path))
    val, class_names = run_val_set(cfg, meta, page.notes, data) if (meta or data) else (None, None)
    if class_names is None and meta:
        class_names = meta["class_names"]
    ev = None
    if cfg.get("tta"):
        # the run's metrics average each image with its mirror; predict and serve do not by default,
        # so train fits the temperature on (and everything below uses) single-pass probabilities
        page.notes.append("the results table uses test-time augmentation (tta: mirror mean); the per-class table, "
                          "gallery, calibration and robustness use single-pass probabilities, as predict and serve "
                          "return by default")
    if val is not None and predict is not None and len(val):
        x = val.all_images()
        probs = np.asarray(val_probs, np.float64) if val_probs is not None else predict(x)
        ev = EvalSet("val", x, val.y, probs, list(val.files), class_names)

    result = evaluate_arrays(ev.probs, ev.y) if ev is not None else None
    cm_png = (folder / "confusion_matrix.png").read_bytes() if (folder / "confusion_matrix.png").is_file() else None
    if cm_png is None and result is not None:
        cm_png = figures.figure_png(figures.confusion_matrix_figure(result["confusion_matrix"], class_names,
                                                                    "confusion matrix (val)"))
    per_class = sections.per_class(result["per_class"], class_names, "val") if result is not None else None
    page.add("confusion-matrix", "Confusion matrix and per-class metrics", "confusion",
             **sections.confusion(cm_png, per_class, "not available (no validation predictions)"))
    if ev is not None:
        from ..evaluation.calibration import stored_calibration

        temperature, fit = stored_calibration(meta, str(model_path)) if meta is not None else (1.0, None)
        image_sections(page, ev, predict, temperature, fit, robustness_n, seed)
    if (folder / "tensorboard").is_dir():
        page.notes.append(f"TensorBoard event files: tensorboard --logdir {folder / 'tensorboard'}")
    page.add("run", "Config and timing", "run", config=sections.config_rows(cfg) if cfg else None,
             timing=sections.timing_rows(metrics))


def evaluation_page(folder: Path, page: Page, ev: EvalSet | None = None, predict: Predict | None = None,
                    temperature: float | None = None, robustness_n=None, seed: int = 0) -> None:
    """An evaluation folder (metrics.json naming a model, from `imgclf evaluate`)."""
    metrics = read_json(folder / "metrics.json")
    page.subtitle = " · ".join(("evaluation", f"model {metrics.get('model', '?')}", f"data {metrics.get('dataset', '?')}",
                                "TTA" if metrics.get("tta") else "", str(folder)))
    page.subtitle = page.subtitle.replace(" ·  · ", " · ")
    page.data["metrics"] = {k: metrics[k] for k in SET_NAMES if isinstance(metrics.get(k), dict)}
    held = ev.name if ev is not None else next((k for k in ("test", "val", "data") if k in page.data["metrics"]), None)
    for key in ("val", "test", "data"):
        if isinstance(metrics.get(key), dict):
            page.cards.append((f"{SET_NAMES[key].lower().replace(' set', '')} accuracy", pct(metrics[key]["accuracy"]),
                               f"loss {num(metrics[key]['loss'])}, {metrics[key].get('n', '?')} images"
                               + balanced_note(metrics, key)))
    page.add("results", "Results", "results", results=sections.results(metrics))
    if metrics.get("tta") and ev is not None:
        page.notes.append("the results table uses test-time augmentation, as the model records; the gallery, "
                          "calibration and robustness use single-pass probabilities, as predict and serve return "
                          "by default")
    if metrics.get("own_training_images") is False:
        page.notes.append("not the model's training images: all of them are reported as held-out data")
    elif ev is not None and ev.name == "val":
        page.notes.append("these are the model's own training images; the calibration section uses its validation "
                          "split, which fitted the stored temperature (all of it, or half in older models), so its "
                          "'after' numbers are in-sample (training's held-out numbers: metrics.json, calibration)")
    class_names = ev.class_names if ev is not None else None
    if class_names is None and metrics.get("model") and Path(metrics["model"]).is_file():
        from ..runtime.modelfile import read_meta

        try:
            class_names = read_meta(metrics["model"])["class_names"]
        except ImgclfError:
            class_names = None
    cm_png = (folder / "confusion_matrix.png").read_bytes() if (folder / "confusion_matrix.png").is_file() else None
    per = metrics.get(held, {}).get("per_class") if held else None
    per_class = sections.per_class(per, class_names, held) if per and class_names else None
    page.add("confusion-matrix", "Confusion matrix and per-class metrics", "confusion",
             **sections.confusion(cm_png, per_class))
    if ev is not None:
        image_sections(page, ev, predict, 1.0 if temperature is None else temperature, None, robustness_n, seed)
    else:
        page.notes.append("gallery, calibration and robustness come with `imgclf evaluate` (they need the images)")


def study_page(folder: Path, page: Page) -> None:
    """A tuning study (imgclf.tuning.tuner): trials table, search plots, best trial, test result."""
    summary = read_json(folder / "summary.json") if (folder / "summary.json").is_file() else {}
    page.subtitle = " · ".join(x for x in ("tuning study", f"study {summary['study']}" if summary.get("study") else "",
                                           f"sampler {summary['sampler']}" if summary.get("sampler") else "",
                                           str(folder)) if x)
    best = summary.get("best") or {}
    if best:
        page.cards.append(("best validation accuracy", pct(best.get("val_accuracy")),
                           f"trial {best.get('trial')}: " + ", ".join(f"{k}={v}" for k, v in (best.get("params") or {}).items())))
    counts = summary.get("counts") or {}
    if counts:
        page.cards.append(("trials", str(counts.get("done", counts.get("complete", "?"))),
                           ", ".join(f"{k} {v}" for k, v in counts.items() if k in ("complete", "pruned", "failed"))))
    test = summary.get("test") or {}
    if "accuracy" in test:
        page.cards.append(("test accuracy (best trial, touched once)", pct(test["accuracy"]), f"{test.get('n', '?')} images"))

    headers, rows = [], []
    if (folder / "trials.csv").is_file():
        headers, rows = read_table(folder / "trials.csv")
        page.data["trials"] = len(rows)
    text = (folder / "trials.md").read_text() if not headers and (folder / "trials.md").is_file() else None
    pruning = [[k.replace("_", " "), str(v)] for k, v in (summary.get("pruning") or {}).items()]
    best_config = str(folder / "best_config.yaml") if (folder / "best_config.yaml").is_file() else None
    page.add("trials", "Trials", "trials", headers=headers, rows=rows, text=text, pruning=pruning,
             best_config=best_config)

    plots = sorted(folder.glob("*.png")) + sorted((folder / "plots").glob("*.png"))
    if plots:
        page.add("search-plots", "Search plots", "plots",
                 plots=[{"title": p.stem.replace("_", " "), "alt": p.stem, "png": p.read_bytes()} for p in plots])
    run_dir = Path(best["run_dir"]) if best.get("run_dir") else None
    if run_dir is not None and not run_dir.is_absolute() and not run_dir.exists():
        run_dir = folder / run_dir
    if run_dir is not None and run_dir.is_dir():
        curves = run_dir / "learning_curves.png"
        page.add("best-trial", f"Best trial ({best.get('trial')})", "linked_results",
                 png=curves.read_bytes() if curves.is_file() else None, alt="best trial learning curves",
                 has_results=(run_dir / "metrics.json").is_file(),
                 results=sections.results(read_json(run_dir / "metrics.json"))
                 if (run_dir / "metrics.json").is_file() else None,
                 href=os.path.relpath(run_dir / REPORT_NAME, folder) if (run_dir / REPORT_NAME).is_file() else None,
                 link="full report of the best trial")
    if (folder / "test" / "metrics.json").is_file():
        page.add("test", "Test set (best trial only)", "linked_results", png=None, alt="", has_results=True,
                 results=sections.results(read_json(folder / "test" / "metrics.json")),
                 href=f"test/{REPORT_NAME}" if (folder / "test" / REPORT_NAME).is_file() else None,
                 link="evaluation report")


def compare_page(runs: list[dict], folders: list[Path], out: Path, title: str | None = None,
                 stats: dict | None = None) -> Page:
    """Runs side by side (sources.run_summary of each): metrics, mean ± std over seeds if `stats`
    is given, overlaid learning curves, config differences and links to each run's report."""
    names = run_names(folders)
    page = Page(title=title or f"imgclf comparison of {len(runs)} runs", subtitle=" · ".join(str(f) for f in folders))
    keys = list(dict.fromkeys(k for r in runs for k in r["values"]))
    rows = [[name] + [format_value(k, r["values"].get(k)) for k in keys] for name, r in zip(names, runs)]
    page.add("metrics", "Metrics", "table", headers=["run"] + keys, rows=rows)
    if stats:
        page.add("mean-std", "Mean ± standard deviation over seeds", "table",
                 headers=["metric", "mean ± std", "runs", "values"], rows=sections.stats_rows(stats))
        for key in ("val accuracy", "test accuracy"):
            if key in stats:
                page.cards.append((key, pct(stats[key]["mean"]),
                                   f"± {100 * stats[key]['std']:.2f} points, {stats[key]['n']} runs"))
    else:
        for name, r in zip(names, runs):
            if "val accuracy" in r["values"]:
                page.cards.append((name, pct(r["values"]["val accuracy"]), "validation accuracy"))
    curves = [(n, r["history"]) for n, r in zip(names, runs) if r["history"]]
    if curves:
        page.add("learning-curves", "Learning curves", "figure",
                 png=figures.figure_png(figures.overlaid_curves_figure(curves)), alt="overlaid learning curves")
    differ = sections.config_differences([r["config"] for r in runs])
    page.add("config", "Config differences", "table", headers=["field"] + names, rows=differ, css="kv",
             empty="the runs share one config")
    links = [{"href": Path(os.path.relpath(f / REPORT_NAME, out.resolve().parent)).as_posix(), "name": n}
             for n, f in zip(names, folders) if (f / REPORT_NAME).is_file()]
    if links:
        page.add("reports", "Run reports", "links", links=links)
    return page

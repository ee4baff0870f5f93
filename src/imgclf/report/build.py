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
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

import numpy as np

from .. import __version__
from ..errors import ImgclfError
from ..fileio import atomic_write, write_json

REPORT_NAME = "report.html"
GALLERY_SIZE = 24
ROBUSTNESS_N = 500  # validation images for the corruption test (fewer if the time budget demands)
BUDGET_SECONDS = 30.0  # a report may take max(30 s, 10% of the run it reports on)
BUDGET_FRACTION = 0.1
PLOT_RESERVE = 4.0  # seconds kept for the figures drawn after the robustness pass

Predict = Callable[[np.ndarray], np.ndarray]  # uint8 NHWC -> raw probabilities (no temperature)


@dataclass
class EvalSet:
    """Images, labels and raw predicted probabilities of the set a report looks at."""

    name: str  # "val", "test" or "data"
    x: np.ndarray
    y: np.ndarray
    probs: np.ndarray
    files: list[str]
    class_names: list[str]


@dataclass
class _Page:
    title: str
    subtitle: str = ""
    cards: list[tuple[str, str, str]] = field(default_factory=list)  # (label, value, note)
    sections: list[tuple[str, str, str]] = field(default_factory=list)  # (id, heading, html)
    notes: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)  # -> report.json
    deadline: float | None = None  # time.perf_counter() by which the report should be done

    def add(self, sid: str, heading: str, body: str) -> None:
        self.sections.append((sid, heading, body))


# ---------------------------------------------------------------------------------------
# Small HTML and image helpers
# ---------------------------------------------------------------------------------------

esc = html.escape


def _b64_png(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def img_tag(png: bytes, alt: str, css: str = "") -> str:
    cls = f' class="{css}"' if css else ""
    return f'<img{cls} alt="{esc(alt)}" src="{_b64_png(png)}">'


def fig_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def array_png(im: np.ndarray, side: int = 96) -> bytes:
    from PIL import Image

    pil = Image.fromarray(np.asarray(im, dtype=np.uint8))
    scale = side / max(pil.size)
    if scale != 1:
        method = Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.BILINEAR
        pil = pil.resize((max(1, round(pil.width * scale)), max(1, round(pil.height * scale))), method)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


def table(headers: list[str] | None, rows: list[list], css: str = "", raw: bool = False) -> str:
    """An HTML table (no header row if headers is None); cells are escaped unless raw=True."""
    cell = (lambda v: str(v)) if raw else (lambda v: esc(str(v)))
    head = "<thead><tr>" + "".join(f"<th>{esc(str(h))}</th>" for h in headers) + "</tr></thead>" if headers else ""
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    cls = f' class="{css}"' if css else ""
    return f"<table{cls}>{head}<tbody>{body}</tbody></table>"


def pct(v) -> str:
    return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{100 * float(v):.2f}%"


def num(v, digits: int = 4) -> str:
    return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{float(v):.{digits}f}"


def secs(v) -> str:
    if v is None:
        return "–"
    v = float(v)
    return f"{v:.1f} s" if v < 120 else (f"{v / 60:.1f} min" if v < 7200 else f"{v / 3600:.2f} h")


CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;background:#f5f6f8;color:#1d2330}
header{background:#1d2b4f;color:#fff;padding:18px 32px}
header h1{margin:0;font-size:22px} header p{margin:4px 0 0;opacity:.8;font-size:13px}
main{max-width:1180px;margin:0 auto;padding:18px 24px 40px}
section{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.08);padding:14px 20px;margin:16px 0}
h2{font-size:18px;margin:4px 0 10px;color:#1d2b4f} h3{font-size:15px;margin:12px 0 6px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin-top:14px}
.card{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.08);padding:10px 16px;min-width:140px}
.card .v{font-size:22px;font-weight:600;color:#1d2b4f} .card .l{font-size:12px;color:#667}
.card .n{font-size:11px;color:#889}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
table.kv td{text-align:left;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
th,td{border-bottom:1px solid #e3e6ec;padding:4px 10px;text-align:right}
th{background:#eef1f6;font-weight:600} td:first-child,th:first-child{text-align:left}
tr.changed td{font-weight:600;color:#0b5cad}
img{max-width:100%} .plot{display:block;margin:6px 0}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(460px,1fr));gap:12px}
.row{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start} .row>div{flex:1 1 420px}
.gallery{display:flex;flex-wrap:wrap;gap:10px}
.gallery figure{margin:0;width:112px;font-size:11px;text-align:center}
.gallery img{width:96px;height:96px;image-rendering:pixelated;border:2px solid #c62828;border-radius:4px}
.gallery .t{color:#2e7d32} .gallery .p{color:#c62828} .gallery .f{color:#889;word-break:break-all}
.note{color:#667;font-size:13px} .warn{color:#a35a00;font-size:13px}
code{background:#eef1f6;padding:1px 4px;border-radius:3px}
footer{color:#889;font-size:12px;text-align:center;margin:20px}
"""


def render(page: _Page, seconds: float | None = None) -> str:
    cards = "".join(f'<div class="card"><div class="l">{esc(l)}</div><div class="v">{esc(v)}</div>'
                    f'<div class="n">{esc(n)}</div></div>' for l, v, n in page.cards)
    sections = "".join(f'<section id="{esc(sid)}"><h2>{esc(h)}</h2>{body}</section>' for sid, h, body in page.sections)
    notes = ""
    if page.notes:
        notes = '<section id="notes"><h2>Notes</h2><ul>' + "".join(f"<li>{esc(n)}</li>" for n in page.notes) + \
            "</ul></section>"
    made = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    took = f" in {seconds:.1f} s" if seconds is not None else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(page.title)}</title><style>{CSS}</style></head><body>"
            f"<header><h1>{esc(page.title)}</h1><p>{esc(page.subtitle)}</p></header><main>"
            f'<div class="cards" id="summary">{cards}</div>{sections}{notes}</main>'
            f"<footer>made by imgclf {esc(__version__)} on {made}{took}</footer></body></html>\n")


def write_html(path: Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
    return path


# ---------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------

def _plt():
    from .. import figures  # noqa: F401  (selects the Agg backend)
    import matplotlib.pyplot as plt

    return plt


def MaxNLocator(**kw):  # noqa: N802
    from matplotlib.ticker import MaxNLocator as _M

    return _M(**kw)


def fig_learning_curves(history: list[dict]) -> bytes:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key in zip(axes, ("loss", "accuracy")):
        for prefix, label in (("", "train"), ("val_", "validation")):
            pts = [(int(r["epoch"]), float(r[prefix + key])) for r in history if r.get(prefix + key) not in (None, "")]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    return fig_png(fig)


def fig_confusion(cm: np.ndarray, class_names: list[str], title: str) -> bytes:
    plt = _plt()
    cm = np.asarray(cm)
    k = len(class_names)
    size = max(4.5, 0.5 * k + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    if k <= 30:
        hi = cm.max() if cm.size else 0
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if cm[i, j] > hi / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return fig_png(fig)


def fig_per_class(per_class: dict, class_names: list[str]) -> bytes:
    plt = _plt()
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * k + 2), 3.4))
    xs = np.arange(k)
    for i, (key, label) in enumerate((("precision", "precision"), ("recall", "recall"), ("f1-score", "F1"))):
        ax.bar(xs + (i - 1) * 0.27, [per_class[str(c)][key] for c in range(k)], 0.27, label=label)
    ax.set_xticks(xs, class_names, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(ncols=3, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    return fig_png(fig)


def fig_reliability(cal: dict) -> bytes:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4), sharey=True)
    panels = (("bins_before", f"before: T = 1, ECE {cal['ece_before']:.3f}"),
              ("bins_after", f"after: T = {cal['temperature']:.2f}, ECE {cal['ece_after']:.3f}"))
    for ax, (key, title) in zip(axes, panels):
        bins = cal[key]
        width = bins[0]["upper"] - bins[0]["lower"]
        full = [b for b in bins if b["count"]]
        x = np.array([b["lower"] for b in full])
        acc = np.array([b["accuracy"] for b in full])
        conf = np.array([b["confidence"] for b in full])
        ax.bar(x, acc, width, align="edge", color="#3b6fb6", edgecolor="#1d2b4f", label="accuracy")
        ax.bar(x, conf - acc, width, bottom=acc, align="edge", color="#e57373", alpha=0.5,
               edgecolor="#c62828", label="gap to confidence")
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top class)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(fontsize=8, loc="upper left")
    return fig_png(fig)


def fig_robustness(rob: dict) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    sev = [0] + rob["severities"]
    for name, row in rob["accuracy"].items():
        ax.plot(sev, [rob["clean"]] + [row[s] if s in row else row[str(s)] for s in rob["severities"]],
                marker="o", ms=4, label=name.replace("_", " "))
    ax.axhline(rob["clean"], color="k", lw=1, ls="--", label="clean")
    ax.set_xticks(sev, ["clean"] + [str(s) for s in rob["severities"]])
    ax.set_xlabel("severity")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return fig_png(fig)


def fig_overlaid_curves(runs: list[tuple[str, list[dict]]]) -> bytes:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, history) in enumerate(runs):
        c = colors[i % len(colors)]
        for ax, key in zip(axes, ("accuracy", "loss")):
            for prefix, style, label in (("val_", "-", name), ("", ":", None)):
                pts = [(int(r["epoch"]), float(r[prefix + key])) for r in history
                       if r.get(prefix + key) not in (None, "")]
                if pts:
                    ax.plot(*zip(*pts), style, color=c, marker="o" if prefix else None, ms=3, label=label)
    for ax, key in zip(axes, ("accuracy", "loss")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.set_title(f"{key}: validation (solid), train (dotted)", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return fig_png(fig)


# ---------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------

SET_NAMES = {"train": "Training Set", "val": "Validation Set", "data": "Data", "test": "Test Set"}


def results_section(metrics: dict) -> str:
    present = [k for k in SET_NAMES if isinstance(metrics.get(k), dict) and "accuracy" in metrics[k]]
    if not present:
        return '<p class="note">no results recorded</p>'
    rows = [["Loss"] + [num(metrics[k]["loss"]) for k in present],
            ["Accuracy"] + [pct(metrics[k]["accuracy"]) for k in present],
            ["Images"] + [str(metrics[k].get("n", "–")) for k in present]]
    return table(["Metric"] + [SET_NAMES[k] for k in present], rows)


def per_class_section(per_class: dict, class_names: list[str], set_name: str) -> str:
    rows = []
    for i, name in enumerate(class_names):
        r = per_class.get(str(i))
        if r:
            rows.append([name, num(r["precision"], 3), num(r["recall"], 3), num(r["f1-score"], 3), int(r["support"])])
    for key in ("macro avg", "weighted avg"):
        r = per_class.get(key)
        if r:
            rows.append([key, num(r["precision"], 3), num(r["recall"], 3), num(r["f1-score"], 3), int(r["support"])])
    out = f'<p class="note">on the {esc(SET_NAMES.get(set_name, set_name).lower())}</p>'
    out += table(["class", "precision", "recall", "F1", "support"], rows)
    if all(str(i) in per_class for i in range(len(class_names))):
        out += img_tag(fig_per_class(per_class, class_names), "per-class precision, recall and F1", "plot")
    return out


def gallery_section(ev: EvalSet, k: int = GALLERY_SIZE) -> str:
    pred = ev.probs.argmax(axis=1)
    conf = ev.probs.max(axis=1)
    wrong = np.flatnonzero(pred != ev.y)
    if len(wrong) == 0:
        return f'<p class="note">no misclassified images in the {esc(SET_NAMES.get(ev.name, ev.name).lower())}</p>'
    top = wrong[np.argsort(-conf[wrong], kind="stable")][:k]
    figs = []
    for i in top:
        name = ev.files[i] if i < len(ev.files) else ""
        figs.append(f"<figure>{img_tag(array_png(ev.x[i]), f'true {ev.class_names[ev.y[i]]}')}<figcaption>"
                    f'<div class="t">true: {esc(ev.class_names[int(ev.y[i])])}</div>'
                    f'<div class="p">predicted: {esc(ev.class_names[int(pred[i])])} {100 * conf[i]:.1f}%</div>'
                    f'<div class="f">{esc(str(name))}</div></figcaption></figure>')
    head = (f'<p class="note">the {len(top)} most confidently wrong of {len(wrong)} misclassified images '
            f'({len(ev.y)} in the {esc(SET_NAMES.get(ev.name, ev.name).lower())}); confidence before temperature scaling</p>')
    return head + '<div class="gallery">' + "".join(figs) + "</div>"


def calibration_section(cal: dict, fit: dict | None, set_name: str) -> str:
    """`cal`: calibration.assess() of the shown images at the stored temperature; `fit`: the
    record `train` stored with it (calibration.stored_calibration), None if the model has none."""
    t = cal["temperature"]
    where = f"the {cal['eval_n']} images of the {SET_NAMES.get(set_name, set_name).lower()}"
    rows = [["expected calibration error (ECE)", num(cal["ece_before"]), num(cal["ece_after"])],
            ["negative log likelihood", num(cal["nll_before"]), num(cal["nll_after"])],
            ["accuracy (unchanged by T)", pct(cal["accuracy"]), pct(cal["accuracy"])]]
    if fit is None:
        how = f"T = {t:.3f} is the model's stored temperature. Below: {where} at T = 1 and at T."
    elif "skipped" in fit:
        how = (f"No temperature was fitted when the model was trained ({fit['skipped']}), so T = {t:.3f}. "
               f"Below: {where}.")
    else:
        how = (f"T = {t:.3f} was fitted when the model was trained (minimum NLL on {fit['fit_n']} validation "
               f"images) and is stored in the model file: predict and serve apply it. Measured then on the other "
               f"{fit['eval_n']} (a seeded, class-stratified half): ECE {num(fit['ece_before'])} -> "
               f"{num(fit['ece_after'])}, NLL {num(fit['nll_before'])} -> {num(fit['nll_after'])}. "
               f"Below: {where} at T = 1 and at the stored T.")
        if set_name == "val":
            how += " Half of them fitted T, so their 'after' numbers are partly in-sample."
        rows += [[f"ECE, held-out half at training ({fit['eval_n']} images)", num(fit["ece_before"]),
                  num(fit["ece_after"])],
                 ["NLL, held-out half at training", num(fit["nll_before"]), num(fit["nll_after"])]]
    out = f'<p class="note">{esc(how)} ECE over {cal["n_bins"]} equal-width confidence bins.</p>'
    out += table(["", "before (T = 1)", f"after (T = {t:.2f})"], rows)
    return out + img_tag(fig_reliability(cal), "reliability diagrams before and after temperature scaling", "plot")


def robustness_section(rob: dict, set_name: str) -> str:
    sev = rob["severities"]
    rows = [["clean", *[pct(rob["clean"])] * len(sev)]]
    for name, row in rob["accuracy"].items():
        params = rob.get("params", {}).get(name, [])
        label = name.replace("_", " ") + (f" ({', '.join(str(p) for p in params)})" if params else "")
        rows.append([label, *[pct(row[s] if s in row else row[str(s)]) for s in sev]])
    rows.append(["mean over corruptions", *[pct(np.mean([row[s] if s in row else row[str(s)]
                                                         for row in rob["accuracy"].values()])) for s in sev]])
    out = (f'<p class="note">accuracy on a seeded subsample of {rob["n"]} images of the '
           f'{esc(SET_NAMES.get(set_name, set_name).lower())}, clean and under each corruption at severities '
           f'{", ".join(map(str, sev))} of 5 (parameters in brackets, CIFAR-10-C style; numpy and Pillow). '
           f'Mean corrupted accuracy {pct(rob["mean_corrupted"])} vs {pct(rob["clean"])} clean.</p>')
    out += table(["corruption"] + [f"severity {s}" for s in sev], rows)
    return out + img_tag(fig_robustness(rob), "accuracy under corruptions", "plot")


def config_section(cfg: dict) -> str:
    from ..config import TrainConfig

    defaults = TrainConfig().to_dict()
    rows = []
    for k, v in cfg.items():
        changed = k in defaults and defaults[k] != v
        rows.append(f'<tr{" class=changed" if changed else ""}><td>{esc(k)}</td><td>{esc(json.dumps(v))}</td>'
                    f'<td>{esc(json.dumps(defaults.get(k))) if changed else ""}</td></tr>')
    return ('<p class="note">highlighted: differs from the seed recipe\'s default</p>'
            '<table class="kv"><thead><tr><th>field</th><th>value</th><th>seed default</th></tr></thead><tbody>'
            + "".join(rows) + "</tbody></table>")


def timing_section(metrics: dict, report_seconds_placeholder: str) -> str:
    s = metrics.get("seconds", {})
    rows = [["data loading", secs(s.get("data_load"))], ["training (fit)", secs(s.get("fit"))],
            ["mean epoch", secs(s.get("per_epoch_mean"))], ["epochs run", metrics.get("epochs_run", "–")],
            ["training images / s", num(metrics.get("train_images_per_second"), 0)],
            ["whole run (load, fit, evaluation)", secs(s.get("total"))],
            ["weights kept", metrics.get("weights", "–")], ["backend", metrics.get("backend", "–")],
            ["this report", report_seconds_placeholder]]
    flops = metrics.get("flops") or {}
    if flops.get("forward_per_image"):
        rows.insert(6, ["forward pass / image", f"{float(flops['forward_per_image']) / 1e6:.1f} MFLOPs"])
    if flops.get("total_train"):
        rows.insert(7, ["training compute", f"{float(flops['total_train']) / 1e15:.4f} PFLOPs"])
    return table(None, rows)


# ---------------------------------------------------------------------------------------
# Gathering what a report needs
# ---------------------------------------------------------------------------------------

def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ImgclfError(f"{path}: cannot read JSON ({e})") from None


def _read_history(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _read_config(path: Path) -> dict:
    from ..config import read_yaml_file

    if not path.is_file():
        return {}
    cfg = read_yaml_file(path, "a run's config.yaml")
    return cfg if isinstance(cfg, dict) else {}


def keras_predict(model, batch_size: int = 500) -> Predict:
    def predict(x: np.ndarray) -> np.ndarray:
        out = [np.asarray(model.predict_on_batch(np.asarray(x[i:i + batch_size], np.float32)), np.float32)
               for i in range(0, len(x), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, model.output_shape[-1]), np.float32)

    return predict


def classifier_predict(clf) -> Predict:
    return lambda x: clf.predict_proba(x, calibrated=False)


def _all_images(s) -> np.ndarray:
    return s.x if s.x is not None else s.images(np.arange(len(s)))


def folder_kind(folder: Path) -> str:
    if (folder / "repeats.json").is_file():
        return "repeats"
    if (folder / "config.yaml").is_file() or (folder / "model.keras").is_file():
        return "run"
    if (folder / "trials.csv").is_file() or (folder / "trials.md").is_file():
        return "study"
    if (folder / "metrics.json").is_file():
        return "evaluation"
    raise ImgclfError(f"{folder}: not a run, evaluation, study or repeats folder "
                      f"(expected config.yaml, metrics.json, trials.csv or repeats.json inside)")


def _run_val_set(folder: Path, cfg: dict, meta: dict | None, page: _Page, data=None):
    """The run's validation ImageSet and class names: from `data` if given, else reloaded."""
    from ..data.dataset import files_hash, load_dataset

    if data is None:
        if not cfg.get("data"):
            page.notes.append("the run's config names no data: gallery, calibration and robustness are skipped")
            return None, None
        try:
            data = load_dataset(cfg["data"], cfg.get("test_data"), cfg.get("input_size", 32),
                                cfg.get("resize", "stretch"), cfg.get("val_fraction", 0.1), cfg.get("split_seed", 0),
                                cfg.get("limit_per_class"), bool(cfg.get("skip_bad_images", False)))
        except ImgclfError as e:
            page.notes.append(f"validation images not available ({e}): gallery, calibration and robustness are skipped")
            return None, None
        want = ((meta or {}).get("split") or {}).get("val_files_hash")
        if want and files_hash(data.val.files) != want:
            page.notes.append(f"{cfg['data']}: the validation files differ from the ones the model was trained with "
                              "(the data changed since): gallery, calibration and robustness use the current files")
    return data.val, data.class_names


# ---------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------

def _image_sections(page: _Page, ev: EvalSet, predict: Predict | None, temperature: float, fit: dict | None,
                    robustness_n: int | None, seed: int) -> None:
    """Gallery, calibration (at the stored `temperature`; `fit`: its stored record) and robustness
    for one set of images + raw probabilities. Nothing is fitted and no model file is written."""
    from ..evaluation import calibration

    page.add("errors", "Most confidently wrong", gallery_section(ev))
    try:
        cal = calibration.assess(ev.probs, ev.y, temperature)
        page.add("calibration", "Calibration", calibration_section(cal, fit, ev.name))
        page.data["calibration"] = calibration.summary(cal)
        if fit is not None:
            page.data["calibration_fit"] = fit
        card = fit if fit is not None and "ece_after" in fit else cal  # held-out numbers where there are some
        page.cards.append(("ECE after temperature scaling", num(card["ece_after"], 3),
                           f"before {num(card['ece_before'], 3)}, T = {temperature:.2f}"))
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
        page.add("robustness", "Robustness to common corruptions", robustness_section(rob, ev.name))
        page.data["robustness"] = rob
        page.cards.append(("accuracy under corruptions", pct(rob["mean_corrupted"]),
                           f"{pct(rob['clean'])} clean, {rob['n']} images"))
    else:
        page.notes.append("robustness skipped: " + ("--robustness-n 0" if robustness_n == 0 else "no model to run"))


def _run_report(folder: Path, page: _Page, model=None, data=None, val_probs=None, robustness_n=None,
                seed: int | None = None) -> None:
    from ..runtime.modelfile import read_meta

    cfg = _read_config(folder / "config.yaml")
    if seed is None:  # the corruption subsample follows the split seed
        seed = int(cfg.get("split_seed") or 0)
    metrics = _read_json(folder / "metrics.json") if (folder / "metrics.json").is_file() else {}
    history = _read_history(folder / "history.csv")
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
            page.cards.append((label, pct(metrics[key]["accuracy"]), f"loss {num(metrics[key]['loss'])}"))
    page.add("results", "Results", results_section(metrics))
    if history:
        png = (folder / "learning_curves.png").read_bytes() if (folder / "learning_curves.png").is_file() \
            else fig_learning_curves(history)
        page.add("learning-curves", "Learning curves", img_tag(png, "learning curves", "plot"))
    elif not metrics:
        page.notes.append("no history.csv or metrics.json: the run did not finish")

    predict = None
    if model is not None:
        predict = keras_predict(model)
    elif meta is not None:
        from ..runtime.classifier import load_classifier

        predict = classifier_predict(load_classifier(model_path))
    val, class_names = _run_val_set(folder, cfg, meta, page, data) if (meta or data) else (None, None)
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
        x = _all_images(val)
        probs = np.asarray(val_probs, np.float64) if val_probs is not None else predict(x)
        ev = EvalSet("val", x, val.y, probs, list(val.files), class_names)

    from ..evaluation.evaluator import evaluate_arrays

    result = evaluate_arrays(ev.probs, ev.y) if ev is not None else None
    cm_png = folder / "confusion_matrix.png"
    if cm_png.is_file():
        cm_html = img_tag(cm_png.read_bytes(), "confusion matrix", "plot")
    elif result is not None:
        cm_html = img_tag(fig_confusion(result["confusion_matrix"], class_names, "confusion matrix (val)"),
                          "confusion matrix", "plot")
    else:
        cm_html = '<p class="note">not available</p>'
    per_class = per_class_section(result["per_class"], class_names, "val") if result is not None else \
        '<p class="note">not available (no validation predictions)</p>'
    page.add("confusion-matrix", "Confusion matrix and per-class metrics",
             f'<div class="row"><div>{cm_html}</div><div id="per-class">{per_class}</div></div>')
    if ev is not None:
        from ..evaluation.calibration import stored_calibration

        temperature, fit = stored_calibration(meta, str(model_path)) if meta is not None else (1.0, None)
        _image_sections(page, ev, predict, temperature, fit, robustness_n, seed)
    if (folder / "tensorboard").is_dir():
        page.notes.append(f"TensorBoard event files: tensorboard --logdir {folder / 'tensorboard'}")
    page.add("run", "Config and timing",
             f'<div class="row"><div id="config"><h3>Config</h3>{config_section(cfg) if cfg else "–"}</div>'
             f'<div id="timing"><h3>Timing</h3>{timing_section(metrics, "@@REPORT_SECONDS@@")}</div></div>')


def _evaluation_report(folder: Path, page: _Page, ev: EvalSet | None = None, predict: Predict | None = None,
                       temperature: float | None = None, robustness_n=None, seed: int = 0) -> None:
    metrics = _read_json(folder / "metrics.json")
    page.subtitle = " · ".join(("evaluation", f"model {metrics.get('model', '?')}", f"data {metrics.get('dataset', '?')}",
                                "TTA" if metrics.get("tta") else "", str(folder)))
    page.subtitle = page.subtitle.replace(" ·  · ", " · ")
    page.data["metrics"] = {k: metrics[k] for k in SET_NAMES if isinstance(metrics.get(k), dict)}
    held = ev.name if ev is not None else next((k for k in ("test", "val", "data") if k in page.data["metrics"]), None)
    for key in ("val", "test", "data"):
        if isinstance(metrics.get(key), dict):
            page.cards.append((f"{SET_NAMES[key].lower().replace(' set', '')} accuracy", pct(metrics[key]["accuracy"]),
                               f"loss {num(metrics[key]['loss'])}, {metrics[key].get('n', '?')} images"))
    page.add("results", "Results", results_section(metrics))
    if metrics.get("own_training_images") is False:
        page.notes.append("not the model's training images: all of them are reported as held-out data")
    elif ev is not None and ev.name == "val":
        page.notes.append("these are the model's own training images; the calibration section uses its validation "
                          "split, half of which fitted the stored temperature, so its 'after' numbers are partly "
                          "in-sample (training measured them on the other half only: metrics.json, calibration)")
    class_names = ev.class_names if ev is not None else None
    if class_names is None and metrics.get("model") and Path(metrics["model"]).is_file():
        from ..runtime.modelfile import read_meta

        try:
            class_names = read_meta(metrics["model"])["class_names"]
        except ImgclfError:
            class_names = None
    cm_png = folder / "confusion_matrix.png"
    cm_html = img_tag(cm_png.read_bytes(), "confusion matrix", "plot") if cm_png.is_file() else \
        '<p class="note">not available</p>'
    per = metrics.get(held, {}).get("per_class") if held else None
    per_html = per_class_section(per, class_names, held) if per and class_names else \
        '<p class="note">not available</p>'
    page.add("confusion-matrix", "Confusion matrix and per-class metrics",
             f'<div class="row"><div>{cm_html}</div><div id="per-class">{per_html}</div></div>')
    if ev is not None:
        _image_sections(page, ev, predict, 1.0 if temperature is None else temperature, None, robustness_n, seed)
    else:
        page.notes.append("gallery, calibration and robustness come with `imgclf evaluate` (they need the images)")


def _study_report(folder: Path, page: _Page) -> None:
    """A tuning study (imgclf.tuning.tuner): trials table, search plots, best trial, test result."""
    summary = _read_json(folder / "summary.json") if (folder / "summary.json").is_file() else {}
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
        with open(folder / "trials.csv", newline="") as f:
            reader = csv.reader(f)
            headers = next(reader, [])
            rows = list(reader)
        page.data["trials"] = len(rows)
    if headers:
        body = table(headers, rows)
    elif (folder / "trials.md").is_file():
        body = f"<pre>{esc((folder / 'trials.md').read_text())}</pre>"
    else:
        body = '<p class="note">no trials table</p>'
    pruning = summary.get("pruning")
    if pruning:
        body += "<h3>Pruning</h3>" + table(None, [[k.replace("_", " "), v] for k, v in pruning.items()])
    if (folder / "best_config.yaml").is_file():
        body += (f'<p class="note">reproduce the best trial: <code>imgclf train --config '
                 f'{esc(str(folder / "best_config.yaml"))}</code></p>')
    page.add("trials", "Trials", body)

    plots = sorted(folder.glob("*.png")) + sorted((folder / "plots").glob("*.png"))
    if plots:
        page.add("search-plots", "Search plots", '<div class="grid">' +
                 "".join(f"<div><h3>{esc(p.stem.replace('_', ' '))}</h3>{img_tag(p.read_bytes(), p.stem, 'plot')}</div>"
                         for p in plots) + "</div>")
    run_dir = Path(best["run_dir"]) if best.get("run_dir") else None
    if run_dir is not None and not run_dir.is_absolute() and not run_dir.exists():
        run_dir = folder / run_dir
    if run_dir is not None and run_dir.is_dir():
        html_ = ""
        if (run_dir / "learning_curves.png").is_file():
            html_ += img_tag((run_dir / "learning_curves.png").read_bytes(), "best trial learning curves", "plot")
        if (run_dir / "metrics.json").is_file():
            html_ += results_section(_read_json(run_dir / "metrics.json"))
        if (run_dir / REPORT_NAME).is_file():
            html_ += f'<p><a href="{esc(os.path.relpath(run_dir / REPORT_NAME, folder))}">full report of the best trial</a></p>'
        page.add("best-trial", f"Best trial ({best.get('trial')})", html_ or '<p class="note">no files</p>')
    if (folder / "test" / "metrics.json").is_file():
        res = _read_json(folder / "test" / "metrics.json")
        link = (f'<p><a href="test/{REPORT_NAME}">evaluation report</a></p>'
                if (folder / "test" / REPORT_NAME).is_file() else "")
        page.add("test", "Test set (best trial only)", results_section(res) + link)


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
        info = _read_json(folder / "repeats.json")
        members = [folder / r for r in info.get("runs", [])]
        return compare(members, out or folder / REPORT_NAME, title=f"imgclf repeats: {folder.resolve().name}",
                       stats=info.get("stats"))
    page = _Page(title=f"imgclf report: {folder.resolve().name}", deadline=t0 + BUDGET_SECONDS)
    page.data["kind"] = kind
    if kind == "run":
        _run_report(folder, page, model=model, data=data, val_probs=val_probs, robustness_n=robustness_n, seed=seed)
    elif kind == "evaluation":
        _evaluation_report(folder, page, eval_set, predict, temperature, robustness_n, seed or 0)
    else:
        _study_report(folder, page)
    seconds = time.perf_counter() - t0
    run_seconds = page.data.get("run_seconds")
    share = f" ({100 * seconds / run_seconds:.1f}% of the run's {secs(run_seconds)})" if run_seconds else ""
    text = render(page, seconds).replace("@@REPORT_SECONDS@@", esc(f"{secs(seconds)}{share}"))
    path = write_html(Path(out) if out else folder / REPORT_NAME, text)
    page.data["seconds"] = seconds
    page.data["notes"] = page.notes
    write_json(folder / "report.json", page.data)
    if verbose:
        print(f"report: {path} ({seconds:.1f} s)", file=sys.stderr)
    return path


# ---------------------------------------------------------------------------------------
# Several runs side by side
# ---------------------------------------------------------------------------------------

COMPARE_METRICS = (("train", "accuracy"), ("val", "accuracy"), ("test", "accuracy"),
                   ("train", "loss"), ("val", "loss"), ("test", "loss"))


def _run_summary(folder: Path) -> dict:
    if not folder.is_dir():
        raise ImgclfError(f"{folder}: run folder not found")
    if not (folder / "metrics.json").is_file():
        raise ImgclfError(f"{folder}: not a finished run (expected metrics.json inside)")
    metrics = _read_json(folder / "metrics.json")
    rep = _read_json(folder / "report.json") if (folder / "report.json").is_file() else {}
    values = {f"{s} {m}": metrics[s][m] for s, m in COMPARE_METRICS if isinstance(metrics.get(s), dict)}
    cal = metrics.get("calibration") if "ece_after" in (metrics.get("calibration") or {}) else rep.get("calibration")
    if cal:  # train's numbers (measured on the held-out half of validation); older runs: the report's
        values["ECE before"] = cal.get("ece_before")
        values["ECE after"] = cal.get("ece_after")
        values["temperature"] = cal.get("temperature")
    if rep.get("robustness"):
        values["corrupted accuracy"] = rep["robustness"]["mean_corrupted"]
    s = metrics.get("seconds") or {}
    if s:
        values["fit seconds"] = s.get("fit")
        values["total seconds"] = s.get("total")
    if "epochs_run" in metrics:
        values["epochs"] = metrics["epochs_run"]
    return {"folder": folder, "config": _read_config(folder / "config.yaml"), "metrics": metrics, "values": values,
            "history": _read_history(folder / "history.csv")}


def _format_value(key: str, v) -> str:
    if v is None:
        return "–"
    if "accuracy" in key:
        return pct(v)
    if "seconds" in key:
        return secs(v)
    if key == "epochs":
        return str(int(v))
    return num(v, 3 if ("ECE" in key or key == "temperature") else 4)


def _names(folders: list[Path]) -> list[str]:
    names = [f.resolve().name for f in folders]
    if len(set(names)) < len(names):
        names = [f"{f.resolve().parent.name}/{f.resolve().name}" for f in folders]
    if len(set(names)) < len(names):
        names = [str(f) for f in folders]
    return names


def stats_over(values: list[dict]) -> dict:
    """{metric: {mean, std, n, values}} over the runs that have it (std: sample, ddof=1)."""
    keys = list(dict.fromkeys(k for v in values for k in v))
    out = {}
    for k in keys:
        xs = [float(v[k]) for v in values if v.get(k) is not None]
        if xs:
            out[k] = {"mean": float(np.mean(xs)), "std": float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0,
                      "n": len(xs), "values": xs}
    return out


def stats_table(stats: dict) -> str:
    rows = [[k, f"{_format_value(k, s['mean'])} ± {_format_value(k, s['std'])}", s["n"],
             ", ".join(_format_value(k, x) for x in s["values"])] for k, s in stats.items()]
    return table(["metric", "mean ± std", "runs", "values"], rows)


def compare(run_dirs, out: str | Path | None = None, title: str | None = None, stats: dict | None = None) -> Path:
    """One HTML page putting runs side by side: metrics, config differences, overlaid learning curves."""
    t0 = time.perf_counter()
    folders = [Path(d) for d in run_dirs]
    if not folders:
        raise ImgclfError("compare: no run folders given")
    runs = [_run_summary(f) for f in folders]
    names = _names(folders)
    page = _Page(title=title or f"imgclf comparison of {len(runs)} runs",
                 subtitle=" · ".join(str(f) for f in folders))
    keys = list(dict.fromkeys(k for r in runs for k in r["values"]))
    rows = [[name] + [_format_value(k, r["values"].get(k)) for k in keys] for name, r in zip(names, runs)]
    page.add("metrics", "Metrics", table(["run"] + keys, rows))
    if stats:
        page.add("mean-std", "Mean ± standard deviation over seeds", stats_table(stats))
        for key in ("val accuracy", "test accuracy"):
            if key in stats:
                page.cards.append((key, f"{pct(stats[key]['mean'])}", f"± {100 * stats[key]['std']:.2f} points, "
                                                                      f"{stats[key]['n']} runs"))
    else:
        for name, r in zip(names, runs):
            if "val accuracy" in r["values"]:
                page.cards.append((name, pct(r["values"]["val accuracy"]), "validation accuracy"))
    curves = [(n, r["history"]) for n, r in zip(names, runs) if r["history"]]
    if curves:
        page.add("learning-curves", "Learning curves", img_tag(fig_overlaid_curves(curves), "overlaid learning curves",
                                                               "plot"))
    fields = list(dict.fromkeys(k for r in runs for k in r["config"]))
    differ = [k for k in fields if len({json.dumps(r["config"].get(k), sort_keys=True) for r in runs}) > 1]
    if differ:
        rows = [[k] + [json.dumps(r["config"].get(k)) for r in runs] for k in differ]
        page.add("config", "Config differences", table(["field"] + names, rows, css="kv"))
    else:
        page.add("config", "Config differences", '<p class="note">the runs share one config</p>')
    out = Path(out) if out else Path("compare.html")
    links = "".join(f'<li><a href="{esc(Path(os.path.relpath(f / REPORT_NAME, out.resolve().parent)).as_posix())}">'
                    f'{esc(n)}</a></li>' for n, f in zip(names, folders) if (f / REPORT_NAME).is_file())
    if links:
        page.add("reports", "Run reports", f"<ul>{links}</ul>")
    return write_html(out, render(page, time.perf_counter() - t0))

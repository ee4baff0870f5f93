"""Every figure imgclf draws, with matplotlib's Agg backend (no display needed).

Each `*_figure` function returns a matplotlib Figure. Training, evaluation and tuning write it
as a PNG file with `save_figure`; the HTML report embeds the PNG bytes of `figure_png`.
`thumbnail_png` turns one image array into PNG bytes (the report's gallery).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

FILE_DPI = 110  # PNG files next to a run
PAGE_DPI = 100  # PNGs embedded in a report (keeps the page small)
MAX_ANNOTATED_CLASSES = 30  # a confusion matrix with more classes shows colours only


def save_figure(fig, path: Path, dpi: int = FILE_DPI) -> Path:
    """Write `fig` as a PNG file (atomically) and close it."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def figure_png(fig, dpi: int = PAGE_DPI) -> bytes:
    """`fig` as PNG bytes; closes it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def thumbnail_png(im: np.ndarray, side: int = 96) -> bytes:
    """One uint8 HxWxC image scaled so its longer side is `side` pixels, as PNG bytes
    (nearest neighbour when enlarging 2x or more, so small images stay crisp)."""
    from PIL import Image

    pil = Image.fromarray(np.asarray(im, dtype=np.uint8))
    scale = side / max(pil.size)
    if scale != 1:
        method = Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.BILINEAR
        pil = pil.resize((max(1, round(pil.width * scale)), max(1, round(pil.height * scale))), method)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


def _points(history: list[dict], column: str) -> list[tuple[int, float]]:
    return [(int(r["epoch"]), float(r[column])) for r in history if r.get(column) not in (None, "")]


def learning_curves_figure(history: list[dict], title: str = ""):
    """Loss and accuracy per epoch, train vs validation (rows of history.csv)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key in zip(axes, ("loss", "accuracy")):
        for prefix, label in (("", "train"), ("val_", "validation")):
            pts = _points(history, prefix + key)
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return fig


def confusion_matrix_figure(cm: np.ndarray, class_names: list[str], title: str = ""):
    """Rows: true class, columns: predicted class; counts written in the cells up to 30 classes."""
    from sklearn.metrics import ConfusionMatrixDisplay

    size = max(5.0, 0.55 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay(np.asarray(cm), display_labels=class_names).plot(
        ax=ax, cmap="Blues", colorbar=False, xticks_rotation=45, values_format="d",
        include_values=len(class_names) <= MAX_ANNOTATED_CLASSES)
    ax.set_title(title or "confusion matrix")
    return fig


def per_class_figure(per_class: dict, class_names: list[str]):
    """Precision, recall and F1 per class (scikit-learn's classification_report as a dict)."""
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * k + 2), 3.4))
    xs = np.arange(k)
    for i, (key, label) in enumerate((("precision", "precision"), ("recall", "recall"), ("f1-score", "F1"))):
        ax.bar(xs + (i - 1) * 0.27, [per_class[str(c)][key] for c in range(k)], 0.27, label=label)
    ax.set_xticks(xs, class_names, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(ncols=3, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    return fig


def reliability_figure(cal: dict):
    """Reliability diagrams before and after temperature scaling (calibration.assess's result)."""
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
    return fig


def robustness_figure(rob: dict):
    """Accuracy against corruption severity, one line per corruption (corruptions.robustness's result)."""
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
    return fig


def overlaid_curves_figure(runs: list[tuple[str, list[dict]]]):
    """Several runs' learning curves on one pair of axes: validation solid, train dotted."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, history) in enumerate(runs):
        c = colors[i % len(colors)]
        for ax, key in zip(axes, ("accuracy", "loss")):
            for prefix, style, label in (("val_", "-", name), ("", ":", None)):
                pts = _points(history, prefix + key)
                if pts:
                    ax.plot(*zip(*pts), style, color=c, marker="o" if prefix else None, ms=3, label=label)
    for ax, key in zip(axes, ("accuracy", "loss")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.set_title(f"{key}: validation (solid), train (dotted)", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return fig


def plot_learning_curves(history: list[dict], path: Path, title: str = "") -> Path:
    """learning_curves_figure written to `path`."""
    return save_figure(learning_curves_figure(history, title), path)


def plot_confusion_matrix(cm: np.ndarray, class_names: list[str], path: Path, title: str = "") -> Path:
    """confusion_matrix_figure written to `path`."""
    return save_figure(confusion_matrix_figure(cm, class_names, title), path)

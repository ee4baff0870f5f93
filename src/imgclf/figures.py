"""matplotlib figures, written as PNG (Agg backend: no display needed)."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def save_figure(fig, path: Path) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def plot_learning_curves(history: list[dict], path: Path, title: str = "") -> Path:
    """Loss and accuracy per epoch, train vs validation."""
    epochs = [int(r["epoch"]) for r in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key in zip(axes, ("loss", "accuracy")):
        for prefix, label in (("", "train"), ("val_", "validation")):
            values = [float(r[prefix + key]) for r in history if r.get(prefix + key) not in (None, "")]
            if values:
                ax.plot(epochs[:len(values)], values, marker="o", ms=3, label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_confusion_matrix(cm: np.ndarray, class_names: list[str], path: Path, title: str = "") -> Path:
    from sklearn.metrics import ConfusionMatrixDisplay

    size = max(5.0, 0.55 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay(cm, display_labels=class_names).plot(ax=ax, cmap="Blues", colorbar=False,
                                                               xticks_rotation=45, values_format="d")
    ax.set_title(title or "confusion matrix")
    return save_figure(fig, path)

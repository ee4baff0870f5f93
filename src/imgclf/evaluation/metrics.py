"""Metrics of predicted probabilities and the seed's text tables.

- `evaluate_arrays(probs, y)`: loss, accuracy, balanced accuracy (mean per-class recall), macro-F1,
  the class imbalance, per-class precision / recall / F1 and the confusion matrix (scikit-learn).
- `results_table(metrics)`: the seed README's Markdown results table; with unbalanced classes
  (`unbalanced`), balanced accuracy and macro-F1 rows under it.
- `per_class_table`, `confusion_text`: the plain-text tables `evaluate` prints.
- `write_evaluation(out_dir, ...)`: classification_report.txt and confusion_matrix.png.

No model, no dataset, no report: training, evaluation and the report all build on these.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..fileio import atomic_write

SET_NAMES = {"train": "Training Set", "val": "Validation Set", "data": "Data", "test": "Test Set"}
# Largest over smallest class count from which a set counts as unbalanced: there accuracy mostly
# measures the large classes, and the table adds balanced accuracy and macro-F1. Below it, the two
# stay within a few points of accuracy and the table stays the seed's.
UNBALANCED_RATIO = 1.5
SCORE_KEYS = ("balanced_accuracy", "macro_f1", "imbalance")  # what evaluate_arrays adds to loss/accuracy/n


def evaluate_arrays(probs: np.ndarray, y: np.ndarray) -> dict:
    """Loss, accuracy, balanced accuracy, macro-F1, imbalance, per-class report and confusion matrix
    for predicted probabilities. Balanced accuracy and macro-F1 average over the classes present in
    `y` (a class without images has no recall); `imbalance` is the largest over the smallest of
    their counts."""
    from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score, log_loss, \
        recall_score

    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y)
    labels = list(range(probs.shape[1]))
    pred = probs.argmax(axis=1)
    present = np.unique(y)
    counts = np.bincount(y, minlength=probs.shape[1])[present]
    clipped = np.clip(probs, 1e-7, 1.0)  # as Keras does; renormalised so sklearn sees probabilities
    return {
        "loss": float(log_loss(y, clipped / clipped.sum(axis=1, keepdims=True), labels=labels)),
        "accuracy": float(accuracy_score(y, pred)),
        "n": int(len(y)),
        "balanced_accuracy": float(recall_score(y, pred, labels=present, average="macro", zero_division=0)),
        "macro_f1": float(f1_score(y, pred, labels=present, average="macro", zero_division=0)),
        "imbalance": float(counts.max() / counts.min()),
        "confusion_matrix": confusion_matrix(y, pred, labels=labels).tolist(),
        "per_class": classification_report(y, pred, labels=labels, output_dict=True, zero_division=0),
        "pred": pred, "probs": probs, "y": np.asarray(y),
    }


def unbalanced(metrics: dict) -> bool:
    """Whether any set in `metrics` ({set: evaluate_arrays-like}) has unbalanced classes."""
    return any(isinstance(metrics.get(k), dict) and metrics[k].get("imbalance", 1.0) >= UNBALANCED_RATIO
               and "balanced_accuracy" in metrics[k] for k in SET_NAMES)


def results_table(metrics: dict) -> str:
    """The seed README's results table, for whichever sets are present; with unbalanced classes
    (`unbalanced`), rows for balanced accuracy (mean per-class recall) and macro-F1 under it."""
    present = [k for k in SET_NAMES if k in metrics]
    lines = ["| Metric   | " + " | ".join(SET_NAMES[k] for k in present) + " |",
             "|----------|" + "|".join("-" * (len(SET_NAMES[k]) + 2) for k in present) + "|",
             "| Loss     | " + " | ".join(f"{metrics[k]['loss']:.4f}".ljust(len(SET_NAMES[k])) for k in present) + " |",
             "| Accuracy | " + " | ".join(f"{100 * metrics[k]['accuracy']:.2f}%".ljust(len(SET_NAMES[k]))
                                          for k in present) + " |"]
    if unbalanced(metrics):
        for key, label in (("balanced_accuracy", "Balanced accuracy"), ("macro_f1", "Macro-F1")):
            lines.append(f"| {label} | " + " | ".join(
                (f"{100 * metrics[k][key]:.2f}%" if key in metrics[k] else "-").ljust(len(SET_NAMES[k]))
                for k in present) + " |")
    return "\n".join(lines)


def per_class_table(result: dict, class_names: list[str]) -> str:
    """Precision, recall, F1 and support per class, as fixed-width text."""
    rep = result["per_class"]
    lines = [f"{'class':<14} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}"]
    for i, name in enumerate(class_names):
        r = rep[str(i)]
        lines.append(f"{name:<14} {r['precision']:>9.3f} {r['recall']:>7.3f} {r['f1-score']:>7.3f} {int(r['support']):>8}")
    return "\n".join(lines)


def confusion_text(cm) -> str:
    """The confusion matrix as text under its heading (rows: true, columns: predicted)."""
    return "confusion matrix (rows: true, columns: predicted)\n" + \
        "\n".join(" ".join(f"{v:>5d}" for v in row) for row in np.asarray(cm))


def write_evaluation(out_dir: Path, result: dict, class_names: list[str], name: str) -> None:
    """classification_report.txt and confusion_matrix.png for one set."""
    from ..figures import plot_confusion_matrix

    cm = np.asarray(result["confusion_matrix"])
    text = per_class_table(result, class_names) + "\n\n" + confusion_text(cm) + "\n"
    atomic_write(Path(out_dir) / "classification_report.txt", lambda f: f.write(text.encode()))
    plot_confusion_matrix(cm, class_names, Path(out_dir) / "confusion_matrix.png", f"confusion matrix ({name})")

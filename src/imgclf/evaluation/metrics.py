"""Metrics of predicted probabilities and the seed's text tables.

- `evaluate_arrays(probs, y)`: loss, accuracy, per-class precision / recall / F1 and the
  confusion matrix (scikit-learn).
- `results_table(metrics)`: the seed README's Markdown results table.
- `per_class_table`, `confusion_text`: the plain-text tables `evaluate` prints.
- `write_evaluation(out_dir, ...)`: classification_report.txt and confusion_matrix.png.

No model, no dataset, no report: training, evaluation and the report all build on these.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..fileio import atomic_write

SET_NAMES = {"train": "Training Set", "val": "Validation Set", "data": "Data", "test": "Test Set"}


def evaluate_arrays(probs: np.ndarray, y: np.ndarray) -> dict:
    """Loss, accuracy, per-class report and confusion matrix for predicted probabilities."""
    from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, log_loss

    probs = np.asarray(probs, dtype=np.float64)
    labels = list(range(probs.shape[1]))
    pred = probs.argmax(axis=1)
    clipped = np.clip(probs, 1e-7, 1.0)  # as Keras does; renormalised so sklearn sees probabilities
    return {
        "loss": float(log_loss(y, clipped / clipped.sum(axis=1, keepdims=True), labels=labels)),
        "accuracy": float(accuracy_score(y, pred)),
        "n": int(len(y)),
        "confusion_matrix": confusion_matrix(y, pred, labels=labels).tolist(),
        "per_class": classification_report(y, pred, labels=labels, output_dict=True, zero_division=0),
        "pred": pred, "probs": probs, "y": np.asarray(y),
    }


def results_table(metrics: dict) -> str:
    """The seed README's results table, for whichever sets are present."""
    present = [k for k in SET_NAMES if k in metrics]
    lines = ["| Metric   | " + " | ".join(SET_NAMES[k] for k in present) + " |",
             "|----------|" + "|".join("-" * (len(SET_NAMES[k]) + 2) for k in present) + "|",
             "| Loss     | " + " | ".join(f"{metrics[k]['loss']:.4f}".ljust(len(SET_NAMES[k])) for k in present) + " |",
             "| Accuracy | " + " | ".join(f"{100 * metrics[k]['accuracy']:.2f}%".ljust(len(SET_NAMES[k]))
                                          for k in present) + " |"]
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

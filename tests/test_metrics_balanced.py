"""Balanced accuracy and macro-F1 beside accuracy: hand-computed values, and where they are shown
(the results table and the report's, only with unbalanced classes)."""

from __future__ import annotations

import numpy as np
import pytest

from imgclf.evaluation.metrics import UNBALANCED_RATIO, evaluate_arrays, results_table, unbalanced
from imgclf.report.sections import results as results_section

# 6 images of class 0, 2 of class 1, 2 of class 2 (imbalance 3)
Y = np.array([0, 0, 0, 0, 0, 0, 1, 1, 2, 2])
PRED = np.array([0, 0, 0, 0, 0, 1, 1, 0, 2, 1])


def probs_for(pred: np.ndarray, k: int = 3) -> np.ndarray:
    return np.eye(k)[pred] * 0.9 + 0.1 / k


def test_hand_computed_example():
    r = evaluate_arrays(probs_for(PRED), Y)
    assert r["accuracy"] == pytest.approx(7 / 10)
    # recall: class 0 5/6, class 1 1/2, class 2 1/2
    assert r["balanced_accuracy"] == pytest.approx((5 / 6 + 1 / 2 + 1 / 2) / 3)
    # precision / recall / F1: class 0 5/6, 5/6 -> 5/6; class 1 1/3, 1/2 -> 2/5; class 2 1, 1/2 -> 2/3
    assert r["macro_f1"] == pytest.approx((5 / 6 + 2 / 5 + 2 / 3) / 3)
    assert r["imbalance"] == 3.0
    assert r["macro_f1"] == pytest.approx(r["per_class"]["macro avg"]["f1-score"])  # the per-class table's


def test_a_class_without_images_is_left_out_of_the_averages():
    y = np.array([0, 0, 0, 1])  # class 2 has no images; one image of class 0 is predicted as class 2
    r = evaluate_arrays(probs_for(np.array([0, 0, 2, 1])), y)
    assert r["balanced_accuracy"] == pytest.approx((2 / 3 + 1) / 2)
    assert r["macro_f1"] == pytest.approx((0.8 + 1) / 2)  # class 0: precision 1, recall 2/3
    assert r["imbalance"] == 3.0


def test_table_rows_only_with_unbalanced_classes():
    uneven = evaluate_arrays(probs_for(PRED), Y)
    table = results_table({"train": uneven, "val": uneven}).splitlines()
    assert table[3] == "| Accuracy | 70.00%       | 70.00%         |"
    assert table[4] == "| Balanced accuracy | 61.11%       | 61.11%         |"
    assert table[5] == "| Macro-F1 | 63.33%       | 63.33%         |"
    assert len(table) == 6
    # balanced classes: exactly the seed's four lines, whatever the two scores are
    y = np.array([0, 0, 1, 1, 2, 2])
    even = evaluate_arrays(probs_for(np.array([0, 1, 1, 1, 2, 0])), y)
    assert even["imbalance"] == 1.0 and even["balanced_accuracy"] == pytest.approx(4 / 6)
    seed_table = results_table({"train": {"loss": even["loss"], "accuracy": even["accuracy"]},
                                "val": {"loss": even["loss"], "accuracy": even["accuracy"]}})
    assert results_table({"train": even, "val": even}) == seed_table and len(seed_table.splitlines()) == 4
    # one unbalanced set is enough; an old metrics.json without the scores shows "-"
    mixed = results_table({"train": {"loss": 1.0, "accuracy": 0.5}, "val": uneven})
    assert "| Balanced accuracy | -            | 61.11%         |" in mixed.splitlines()


def test_unbalanced_threshold():
    assert not unbalanced({"val": {"balanced_accuracy": 0.5, "imbalance": UNBALANCED_RATIO - 0.01}})
    assert unbalanced({"val": {"balanced_accuracy": 0.5, "imbalance": UNBALANCED_RATIO}})
    assert not unbalanced({"val": {"accuracy": 0.5}}) and not unbalanced({"seconds": {"total": 1}})


def test_report_results_section():
    uneven = evaluate_arrays(probs_for(PRED), Y)
    section = results_section({"val": uneven, "test": uneven})
    labels = [row[0] for row in section["rows"]]
    assert labels == ["Loss", "Accuracy", "Balanced accuracy (mean per-class recall)", "Macro-F1", "Images"]
    assert section["rows"][2][1:] == ["61.11%", "61.11%"] and section["rows"][3][1:] == ["63.33%", "63.33%"]
    even = evaluate_arrays(probs_for(np.array([0, 1, 1, 1, 2, 0])), np.array([0, 0, 1, 1, 2, 2]))
    assert [row[0] for row in results_section({"val": even})["rows"]] == ["Loss", "Accuracy", "Images"]

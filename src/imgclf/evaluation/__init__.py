"""Evaluation: metrics, calibration and robustness to corruptions."""

"""Calibration: does a predicted 90% mean right 9 times out of 10?

- `expected_calibration_error(probs, y)`: ECE over equal-width confidence bins (top label):
  sum over bins of (bin size / n) * |accuracy in bin - mean confidence in bin|.
- `reliability_bins(probs, y)`: the numbers behind a reliability diagram.
- `fit_temperature(probs, y)`: the single temperature T that minimises the negative log
  likelihood of softmax(log p / T) (Guo et al., 2017). T > 1 softens an over-confident model.
- `calibrate(probs, y)`: fits T on one half of the validation split and reports ECE and NLL
  before and after on the *other* half, so the improvement is not measured on the data it
  was fitted to.
- `fit_for_model(probs, y, seed)`: what `train` stores in the model's metadata (`temperature`,
  `calibration`): calibrate()'s T and numbers, or T = 1 and the reason when none can be fitted.
  `imgclf.inference.Classifier` applies the stored T in `predict` and `serve`; reports only read it.

numpy (and scipy's scalar minimiser) only: no Keras, no matplotlib.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ImgclfError
from ..runtime.classifier import apply_temperature

N_BINS = 15
T_BOUNDS = (0.05, 20.0)


def _check(probs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y).astype(np.int64)
    if probs.ndim != 2 or len(probs) != len(y):
        raise ImgclfError(f"calibration: expected probabilities of shape (n, classes) and n labels, "
                          f"got {probs.shape} and {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= probs.shape[1]):
        raise ImgclfError(f"calibration: labels must lie in 0..{probs.shape[1] - 1}")
    return probs, y


def reliability_bins(probs: np.ndarray, y: np.ndarray, n_bins: int = N_BINS) -> list[dict]:
    """Per equal-width confidence bin: bounds, count, mean confidence and accuracy (None if empty)."""
    probs, y = _check(probs, y)
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # bin i holds (edges[i], edges[i+1]]; a confidence of exactly 0 goes to the first bin
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    bins = []
    for i in range(n_bins):
        m = which == i
        n = int(m.sum())
        bins.append({"lower": float(edges[i]), "upper": float(edges[i + 1]), "count": n,
                     "confidence": float(conf[m].mean()) if n else None,
                     "accuracy": float(correct[m].mean()) if n else None})
    return bins


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, n_bins: int = N_BINS) -> float:
    probs, y = _check(probs, y)
    if len(y) == 0:
        return float("nan")
    total = 0.0
    for b in reliability_bins(probs, y, n_bins):
        if b["count"]:
            total += b["count"] * abs(b["accuracy"] - b["confidence"])
    return total / len(y)


def nll(probs: np.ndarray, y: np.ndarray) -> float:
    probs, y = _check(probs, y)
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0))))


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The temperature in T_BOUNDS minimising the NLL of softmax(log p / T) on (probs, y)."""
    from scipy.optimize import minimize_scalar

    probs, y = _check(probs, y)
    if len(y) == 0:
        raise ImgclfError("calibration: no images to fit a temperature on")
    logits = np.log(np.clip(probs, 1e-12, 1.0))
    rows = np.arange(len(y))

    def loss(log_t: float) -> float:
        z = logits / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[rows, y]))

    lo, hi = np.log(T_BOUNDS[0]), np.log(T_BOUNDS[1])
    res = minimize_scalar(loss, bounds=(lo, hi), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(res.x))


def split_halves(y: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(fit_index, eval_index): a seeded, class-stratified half/half split of 0..len(y)-1."""
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    fit, ev = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = len(idx) // 2
        if len(idx) % 2 and len(fit) <= len(ev):  # the odd one out goes to the smaller half
            k += 1
        fit.extend(idx[:k])
        ev.extend(idx[k:])
    return np.sort(np.asarray(fit, np.int64)), np.sort(np.asarray(ev, np.int64))


def calibrate(probs: np.ndarray, y: np.ndarray, seed: int = 0, n_bins: int = N_BINS) -> dict:
    """Fit T on one half of (probs, y), measure on the other half.

    Returns temperature, fit_n, eval_n, ece/nll/accuracy before and after (on the eval half),
    and the reliability bins before and after.
    """
    probs, y = _check(probs, y)
    if len(y) < 4:
        raise ImgclfError(f"calibration: need at least 4 validation images, got {len(y)}")
    fit_idx, eval_idx = split_halves(y, seed)
    t = fit_temperature(probs[fit_idx], y[fit_idx])
    return {**assess(probs[eval_idx], y[eval_idx], t, n_bins), "temperature": t,
            "fit_n": int(len(fit_idx)), "seed": seed}


def assess(probs: np.ndarray, y: np.ndarray, temperature: float, n_bins: int = N_BINS) -> dict:
    """ECE/NLL of raw probabilities and of the same ones at a given (already fitted) temperature.

    What every report shows: reports fit nothing, they read the model's stored temperature."""
    probs, y = _check(probs, y)
    after = apply_temperature(probs, temperature)
    return {
        "temperature": float(temperature), "fit_n": 0, "eval_n": int(len(y)), "n_bins": n_bins,
        "ece_before": expected_calibration_error(probs, y, n_bins),
        "ece_after": expected_calibration_error(after, y, n_bins),
        "nll_before": nll(probs, y), "nll_after": nll(after, y),
        "accuracy": float((probs.argmax(1) == y).mean()),
        "bins_before": reliability_bins(probs, y, n_bins),
        "bins_after": reliability_bins(after, y, n_bins),
    }


def summary(result: dict) -> dict:
    """The calibration numbers without the bins (what goes into the model's metadata)."""
    return {k: v for k, v in result.items() if not k.startswith("bins_")}


def fit_for_model(probs: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[float, dict]:
    """(temperature, record) for a model's metadata, from its validation probabilities: calibrate()'s
    T and numbers (without the bins), or T = 1 and {"skipped": reason} when T cannot be fitted."""
    try:
        result = calibrate(probs, y, seed)
    except ImgclfError as e:
        return 1.0, {"skipped": str(e)}
    return result["temperature"], summary(result)


STORED_NUMBERS = ("temperature", "fit_n", "eval_n", "n_bins", "ece_before", "ece_after", "nll_before", "nll_after",
                  "accuracy", "seed")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def stored_calibration(meta: dict, source: str = "model") -> tuple[float, dict | None]:
    """(temperature, record) from a model's metadata, checked: the record is fit_for_model()'s
    numbers, {"skipped": reason}, or None for a model saved without one."""
    t = meta.get("temperature", 1.0)
    if not _is_number(t) or t <= 0:
        raise ImgclfError(f"{source}: temperature: expected a positive number, got {repr(t)[:40]}")
    record = meta.get("calibration")
    if record is None:
        return float(t), None
    if not isinstance(record, dict):
        raise ImgclfError(f"{source}: calibration: expected an object, got {type(record).__name__}")
    if "skipped" in record:
        if not isinstance(record["skipped"], str):
            raise ImgclfError(f"{source}: calibration.skipped: expected a text, got {type(record['skipped']).__name__}")
        return float(t), {"skipped": record["skipped"][:300]}
    for key in STORED_NUMBERS:
        if not _is_number(record.get(key)):
            raise ImgclfError(f"{source}: calibration.{key}: expected a number, got {repr(record.get(key))[:40]}")
    if record["temperature"] != t:
        raise ImgclfError(f"{source}: calibration.temperature {record['temperature']:.6g} differs from "
                          f"temperature {t:.6g}")
    return float(t), {key: record[key] for key in STORED_NUMBERS}

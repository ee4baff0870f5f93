"""Calibration: does a predicted 90% mean right 9 times out of 10?

- `expected_calibration_error(probs, y)`: ECE over equal-width confidence bins (top label):
  sum over bins of (bin size / n) * |accuracy in bin - mean confidence in bin|.
- `reliability_bins(probs, y)`: the numbers behind a reliability diagram.
- `fit_temperature(probs, y)`: the single temperature T that minimises the negative log
  likelihood of softmax(log p / T) (Guo et al., 2017). T > 1 softens an over-confident model.
- `calibrate(probs, y)`: fits T on one half of the validation split and reports ECE and NLL
  before and after on the *other* half, so the improvement is not measured on the data it
  was fitted to.
- `cross_validate(probs, y, seed)`: K-fold cross-validation of the fit: each fold's T is fitted on
  the other folds and measured on the fold; the out-of-fold numbers pooled over all images.
- `fit_for_model(probs, y, seed)`: what `train` stores in the model's metadata (`temperature`,
  `calibration`). A temperature is kept only where it cannot hurt: the validation split holds at
  least MIN_IMAGES images and MIN_PER_CLASS of every class, and the cross-validated T lowers the
  held-out NLL, pooled and in at least FOLDS_NEEDED of the FOLDS folds. Then T is fitted on the
  whole split and stored with its out-of-fold numbers; otherwise T = 1 and the reason is stored.
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
# When a temperature is trusted (fit_for_model). One parameter fitted by NLL settles fast, but on a
# small split the held-out NLL it promises is noise of the same size as the gain (issue 15: T fitted
# on 83 images raised the held-out NLL). Below MIN_IMAGES nothing is fitted; every class needs
# MIN_PER_CLASS images so that each fold holds it; and the cross-validated T must lower the held-out
# NLL pooled and in FOLDS_NEEDED of FOLDS folds (a T that helps only on average is not kept).
MIN_IMAGES = 100
FOLDS = 5
MIN_PER_CLASS = FOLDS
FOLDS_NEEDED = 4


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


def stratified_folds(y: np.ndarray, k: int = FOLDS, seed: int = 0) -> np.ndarray:
    """Each image's fold 0..k-1: seeded, class-stratified, fold sizes within one of each other."""
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), np.int64)
    start = 0  # each class continues the round robin where the previous one stopped
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        fold[idx] = (start + np.arange(len(idx))) % k
        start = (start + len(idx)) % k
    return fold


def cross_validate(probs: np.ndarray, y: np.ndarray, seed: int = 0, k: int = FOLDS, n_bins: int = N_BINS) -> dict:
    """K-fold cross-validation of fitting T: per fold, T fitted on the other folds and the fold's NLL at
    T = 1 and at that T; pooled over all images (each held out once), ECE and NLL before and after."""
    probs, y = _check(probs, y)
    if len(y) < k:
        raise ImgclfError(f"calibration: need at least {k} validation images, got {len(y)}")
    fold = stratified_folds(y, k, seed)
    after = np.empty_like(probs)
    per_fold = []
    for f in range(k):
        out, fit = fold == f, fold != f
        t = fit_temperature(probs[fit], y[fit])
        after[out] = apply_temperature(probs[out], t)
        per_fold.append({"temperature": t, "n": int(out.sum()), "nll_before": nll(probs[out], y[out]),
                         "nll_after": nll(after[out], y[out])})
    return {"folds": k, "folds_improved": sum(f["nll_after"] < f["nll_before"] for f in per_fold),
            "per_fold": per_fold, "eval_n": int(len(y)), "n_bins": n_bins,
            "ece_before": expected_calibration_error(probs, y, n_bins),
            "ece_after": expected_calibration_error(after, y, n_bins),
            "nll_before": nll(probs, y), "nll_after": nll(after, y),
            "accuracy": float((probs.argmax(1) == y).mean()), "seed": seed}


def _too_few(y: np.ndarray, n_classes: int) -> str | None:
    """Why the split is too small to trust a temperature, or None."""
    if len(y) < MIN_IMAGES:
        return (f"calibration: {len(y)} validation images, fewer than the {MIN_IMAGES} a temperature needs "
                f"to be trusted: T = 1 kept")
    counts = np.bincount(y, minlength=n_classes)
    if counts.min() < MIN_PER_CLASS:
        c = int(counts.argmin())
        return (f"calibration: class {c} has {counts[c]} validation images, fewer than the {MIN_PER_CLASS} per "
                f"class a {FOLDS}-fold cross-validation needs: T = 1 kept")
    return None


def fit_for_model(probs: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[float, dict]:
    """(temperature, record) for a model's metadata, from its validation probabilities.

    T is fitted on the whole split and kept only if the split is large enough (MIN_IMAGES images,
    MIN_PER_CLASS per class) and its cross-validation lowers the held-out NLL pooled and in
    FOLDS_NEEDED of FOLDS folds; the record holds the out-of-fold numbers. Otherwise T = 1 and
    {"skipped": reason}. Deterministic in (probs, y, seed)."""
    probs, y = _check(probs, y)
    reason = _too_few(y, probs.shape[1])
    if reason:
        return 1.0, {"skipped": reason}
    cv = cross_validate(probs, y, seed)
    if cv["nll_after"] >= cv["nll_before"] or cv["folds_improved"] < FOLDS_NEEDED:
        return 1.0, {"skipped": f"calibration: a fitted temperature would not lower the held-out NLL reliably "
                                f"(cross-validated NLL {cv['nll_before']:.4f} -> {cv['nll_after']:.4f}, lower "
                                f"in {cv['folds_improved']} of {cv['folds']} folds, {FOLDS_NEEDED} needed): "
                                f"T = 1 kept"}
    t = fit_temperature(probs, y)
    return t, {**{k: v for k, v in cv.items() if k != "per_fold"}, "temperature": t, "fit_n": int(len(y))}


STORED_NUMBERS = ("temperature", "fit_n", "eval_n", "n_bins", "ece_before", "ece_after", "nll_before", "nll_after",
                  "accuracy", "seed")
CV_NUMBERS = ("folds", "folds_improved")  # in records of a cross-validated fit (older records halved the split)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def stored_calibration(meta: dict, source: str = "model") -> tuple[float, dict | None]:
    """(temperature, record) from a model's metadata, checked: the record is fit_for_model()'s
    numbers (with `folds`, or from a half/half fit in older models), {"skipped": reason}, or None
    for a model saved without one."""
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
    for key in CV_NUMBERS:
        if key in record and not _is_number(record[key]):
            raise ImgclfError(f"{source}: calibration.{key}: expected a number, got {repr(record[key])[:40]}")
    return float(t), {key: record[key] for key in STORED_NUMBERS + CV_NUMBERS if key in record}

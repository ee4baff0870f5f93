"""Common image corruptions, and accuracy under them (numpy and Pillow only).

Five corruptions with five severities each, with parameters after CIFAR-10-C (Hendrycks &
Dietterich, 2019), on uint8 NHWC batches:

    gaussian_noise  x + N(0, sigma),            sigma = .04 .06 .08 .09 .10  (of the 0..1 range)
    gaussian_blur   Pillow GaussianBlur,        radius = .4 .6 .7 .8 1.0 pixels per 32 pixels of side
    jpeg            Pillow JPEG re-encoding,    quality = 80 65 58 50 40
    brightness      x + c, clipped,             c = .05 .1 .15 .2 .3
    contrast        mean + (x - mean) * c,      c = .75 .5 .4 .3 .15  (mean per image)

Severity 0 is the identity. Every corruption is deterministic in (images, severity, seed).
`robustness(predict, x, y)` measures accuracy on a seeded subsample for each corruption and
severity.
"""

from __future__ import annotations

import io
import time
from typing import Callable

import numpy as np
from PIL import Image, ImageFilter

from ..errors import ImgclfError

PARAMS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
    "jpeg": (80, 65, 58, 50, 40),
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
}
CORRUPTIONS = tuple(PARAMS)
DEFAULT_SEVERITIES = (1, 3, 5)


def _check(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ImgclfError(f"corruptions: expected a uint8 batch of shape (n, h, w, 3), got {x.dtype} {x.shape}")
    return x


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def gaussian_noise(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return _to_uint8(x.astype(np.float32) + rng.normal(0.0, sigma * 255.0, x.shape).astype(np.float32))


def gaussian_blur(x: np.ndarray, radius: float) -> np.ndarray:
    r = radius * x.shape[1] / 32.0  # the CIFAR radii, scaled to the image size
    return np.stack([np.asarray(Image.fromarray(im).filter(ImageFilter.GaussianBlur(r))) for im in x])


def jpeg(x: np.ndarray, quality: int) -> np.ndarray:
    out = []
    for im in x:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="JPEG", quality=int(quality))
        buf.seek(0)
        out.append(np.asarray(Image.open(buf).convert("RGB")))
    return np.stack(out)


def brightness(x: np.ndarray, c: float) -> np.ndarray:
    return _to_uint8(x.astype(np.float32) + c * 255.0)


def contrast(x: np.ndarray, c: float) -> np.ndarray:
    xf = x.astype(np.float32)
    mean = xf.mean(axis=(1, 2, 3), keepdims=True)
    return _to_uint8(mean + (xf - mean) * c)


def corrupt(x: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """`x` (uint8 NHWC) under corruption `name` at `severity` 0..5 (0 = unchanged copy)."""
    x = _check(x)
    if name not in PARAMS:
        raise ImgclfError(f"corruption: unknown corruption {name!r} (expected one of {', '.join(CORRUPTIONS)})")
    if not 0 <= int(severity) <= len(PARAMS[name]):
        raise ImgclfError(f"corruption: severity must be 0..{len(PARAMS[name])}, got {severity!r}")
    if severity == 0 or len(x) == 0:
        return x.copy()
    p = PARAMS[name][int(severity) - 1]
    if name == "gaussian_noise":
        return gaussian_noise(x, p, np.random.default_rng([seed, int(severity)]))
    if name == "gaussian_blur":
        return gaussian_blur(x, p)
    if name == "jpeg":
        return jpeg(x, int(p))
    if name == "brightness":
        return brightness(x, p)
    return contrast(x, p)


def subsample(n_total: int, n: int, seed: int = 0) -> np.ndarray:
    """A seeded random subset of 0..n_total-1 of size min(n, n_total), sorted."""
    if n >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(seed).choice(n_total, size=n, replace=False))


def robustness(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, y: np.ndarray, n: int = 500,
               corruptions=CORRUPTIONS, severities=DEFAULT_SEVERITIES, seed: int = 0,
               time_limit: float | None = None, min_n: int = 100,
               clock: Callable[[], float] = time.perf_counter) -> dict:
    """Accuracy of `predict` (uint8 batch -> probabilities) on a subsample of (x, y), clean and corrupted.

    With `time_limit` (seconds), the clean pass is timed first and the subsample is cut (to no
    fewer than `min_n` images) so that the corrupted passes fit in the limit; "reduced_from"
    then records the size asked for. `clock` measures the time (tests pass a fake one).

    Returns {"n", "seed", "severities", "clean", "accuracy": {corruption: {severity: acc}},
    "mean_corrupted", "params", "seconds"}.
    """
    t0 = clock()
    y = np.asarray(y)
    index = subsample(len(y), n, seed)
    xs, ys = _check(x[index]), y[index]  # a streaming set decodes the subsample only
    if len(ys) == 0:
        raise ImgclfError("robustness: no images to corrupt")
    clean_pred = np.asarray(predict(xs)).argmax(axis=1)
    asked = len(ys)
    jobs = [(name, int(s)) for name in corruptions for s in severities]
    if time_limit is not None and len(ys) > min_n and jobs:
        per_image = (clock() - t0) / len(ys)
        affordable = int((time_limit - (clock() - t0)) / (1.25 * per_image * len(jobs)))
        if affordable < len(ys):
            k = max(min_n, affordable)
            xs, ys, clean_pred = xs[:k], ys[:k], clean_pred[:k]  # a prefix of a random subset is random
    if xs.nbytes * len(jobs) <= 2**28:
        # every corrupted copy in one array: one predict call, full batches, no re-tracing per set
        corrupted = np.concatenate([corrupt(xs, name, s, seed) for name, s in jobs]) if jobs else xs[:0]
        pred = np.asarray(predict(corrupted)).argmax(axis=1).reshape(len(jobs), len(ys)) if jobs else None
    else:  # large images: one corrupted copy at a time
        pred = np.stack([np.asarray(predict(corrupt(xs, name, s, seed))).argmax(axis=1) for name, s in jobs])
    table: dict[str, dict[int, float]] = {name: {} for name in corruptions}
    for j, (name, s) in enumerate(jobs):
        table[name][s] = float((pred[j] == ys).mean())
    values = [a for row in table.values() for a in row.values()]
    out = {"n": int(len(ys)), "seed": seed, "severities": [int(s) for s in severities],
           "clean": float((clean_pred == ys).mean()),
           "accuracy": table, "mean_corrupted": float(np.mean(values)) if values else float("nan"),
           "params": {name: [PARAMS[name][s - 1] for s in severities] for name in corruptions},
           "seconds": clock() - t0}
    if len(ys) < asked:
        out["reduced_from"] = int(asked)
    return out

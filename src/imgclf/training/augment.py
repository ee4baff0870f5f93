"""Training augmentation on whole batches, vectorised in numpy.

Every function takes its random draws from the `rng` it is given, and `Batches` builds that rng
from (seed, epoch, batch index): a batch is the same whether the run was resumed or not, and on
every Keras backend. (Keras' preprocessing layers draw from the backend's own random streams,
which differ between TensorFlow, JAX and PyTorch; that is why these are numpy.)

    augment_batch   flip, pad-and-crop translation and cutout (the fast recipes'), uint8 in and out:
                    augment_draws (the random draws) then apply_draws (the pixels)
    resized_crop    random resized crop: a box of `min_area`..100% of the image, aspect 3/4..4/3,
                    resized back to the image size (bilinear), uint8 in and out
    color_jitter    brightness, contrast and saturation, each scaled by a factor in [1-s, 1+s]
    mix_batch       MixUp or CutMix on float pixels and one-hot labels
"""

from __future__ import annotations

import numpy as np


def augment_draws(n: int, h: int, w: int, rng: np.random.Generator, flip: bool | np.ndarray = False,
                  translate: int = 0, cutout: int = 0) -> np.ndarray:
    """The random draws of `augment_batch` for a batch of n h x w images, as an (n, 5) int32 array of
    (mirror, dy, dx, cy, cx): mirror 0/1, the crop's offset into the padded image (translate when
    unshifted), the cutout's centre. `flip` may also be a boolean array: which images to mirror.
    Unused columns hold the identity (no mirror, no shift, a centre far outside the image)."""
    draws = identity_draws(n, h, w, translate, cutout).astype(np.int64)
    if flip is not False:
        draws[:, 0] = flip if isinstance(flip, np.ndarray) else rng.random(n) < 0.5
    if translate:
        draws[:, 1] = rng.integers(0, 2 * translate + 1, n)
        draws[:, 2] = rng.integers(0, 2 * translate + 1, n)
    if cutout:
        draws[:, 3] = rng.integers(0, h, n)
        draws[:, 4] = rng.integers(0, w, n)
    return draws.astype(np.int32)


def identity_draws(n: int, h: int, w: int, translate: int = 0, cutout: int = 0) -> np.ndarray:
    """Draws that leave every image as it is: no mirror, the unshifted crop, no cutout."""
    draws = np.zeros((n, 5), np.int32)
    draws[:, 1:3] = translate
    draws[:, 3:5] = -2 * (h + w + cutout)  # a cutout centred here covers nothing
    return draws


def apply_draws(x: np.ndarray, draws: np.ndarray, translate: int = 0, cutout: int = 0) -> np.ndarray:
    """Flip, pad-and-crop translation (reflect padding) and cutout of a uint8 batch by `augment_draws`'
    draws. training/device_augment.py does the same with keras.ops, pixel for pixel."""
    n, h, w, _ = x.shape
    mirror, dy, dx, cy, cx = (draws[:, k].astype(np.int64) for k in range(5))
    if mirror.any():
        x = np.where(mirror.astype(bool)[:, None, None, None], x[:, :, ::-1], x)
    if translate:
        t = translate
        padded = np.pad(x, ((0, 0), (t, t), (t, t), (0, 0)), mode="reflect")
        # every h x w window of each padded image, as a view (n, 2t+1, 2t+1, c, h, w): picking one
        # window per image copies whole rows, far cheaper than gathering pixel by pixel
        windows = np.lib.stride_tricks.sliding_window_view(padded, (h, w), axis=(1, 2))
        x = windows[np.arange(n), dy, dx].transpose(0, 2, 3, 1)
    if cutout:
        yy = np.arange(h)[None, :, None]
        xx = np.arange(w)[None, None, :]
        y0 = (cy - cutout // 2)[:, None, None]  # a cutout x cutout square centred at (cy, cx), clipped
        x0 = (cx - cutout // 2)[:, None, None]
        mask = (yy >= y0) & (yy < y0 + cutout) & (xx >= x0) & (xx < x0 + cutout)
        x = np.where(mask[..., None], np.uint8(0), x)
    return np.ascontiguousarray(x)


def augment_batch(x: np.ndarray, rng: np.random.Generator, flip: bool | np.ndarray = False, translate: int = 0,
                  cutout: int = 0) -> np.ndarray:
    """Random horizontal flip, pad-and-crop translation (reflect padding) and cutout, on a uint8 batch.
    `flip` may also be a boolean array: which images to mirror (Batches' alternating flip)."""
    n, h, w, _ = x.shape
    return apply_draws(x, augment_draws(n, h, w, rng, flip, translate, cutout), translate, cutout)


def crop_boxes(n: int, h: int, w: int, rng: np.random.Generator, min_area: float,
               ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
    """(n, 4) boxes (top, left, height, width) in pixels, floats: an area fraction uniform in
    [min_area, 1] and a log-uniform aspect ratio, clipped to the image, placed uniformly."""
    area = rng.uniform(min_area, 1.0, n) * h * w
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]), n))
    bh = np.minimum(np.sqrt(area / aspect), h)
    bw = np.minimum(np.sqrt(area * aspect), w)
    top = rng.uniform(0, 1, n) * (h - bh)
    left = rng.uniform(0, 1, n) * (w - bw)
    return np.stack([top, left, bh, bw], axis=1)


def _axis_weights(start: np.ndarray, length: np.ndarray, size: int, limit: int):
    """Bilinear sampling along one axis: for each image, `size` output pixels spread over
    [start, start + length) of an axis `limit` pixels long; lower indices, upper indices, weights."""
    pos = start[:, None] + (np.arange(size)[None, :] + 0.5) * (length[:, None] / size) - 0.5
    pos = np.clip(pos, 0, limit - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, limit - 1)
    return lo, hi, (pos - lo).astype(np.float32)


def resized_crop(x: np.ndarray, rng: np.random.Generator, min_area: float) -> np.ndarray:
    """Random resized crop of a uint8 batch, back to its own size (bilinear)."""
    n, h, w, _ = x.shape
    boxes = crop_boxes(n, h, w, rng, min_area)
    y0, y1, wy = _axis_weights(boxes[:, 0], boxes[:, 2], h, h)  # (n, h)
    x0, x1, wx = _axis_weights(boxes[:, 1], boxes[:, 3], w, w)  # (n, w)
    idx = np.arange(n)[:, None, None]
    f = x.astype(np.float32)

    def rows(r):  # (n, h, w, c): rows r of each image, all columns sampled bilinearly
        a = f[idx, r[:, :, None], x0[:, None, :]]
        b = f[idx, r[:, :, None], x1[:, None, :]]
        return a + (b - a) * wx[:, None, :, None]

    top, bottom = rows(y0), rows(y1)
    out = top + (bottom - top) * wy[:, :, None, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def color_jitter(x: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Brightness, contrast (about each image's mean grey) and saturation (about each pixel's
    grey), each scaled by a factor uniform in [1 - strength, 1 + strength], in that order."""
    n = len(x)
    lo, hi = 1.0 - strength, 1.0 + strength
    brightness, contrast, saturation = (rng.uniform(lo, hi, n).astype(np.float32)[:, None, None, None]
                                        for _ in range(3))
    f = x.astype(np.float32) * brightness
    grey = f @ np.array([0.299, 0.587, 0.114], np.float32)  # (n, h, w)
    mean = grey.mean(axis=(1, 2))[:, None, None, None]
    f = (f - mean) * contrast + mean
    grey = (f @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    f = (f - grey) * saturation + grey
    return np.clip(np.rint(f), 0, 255).astype(np.uint8)


def mix_batch(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, mixup: float = 0.0,
              cutmix: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """MixUp (alpha `mixup`) or CutMix (alpha `cutmix`) of a float batch with one-hot labels `y`,
    each image paired with another of the batch (a random permutation). With both alphas set,
    each batch takes one of the two with equal chance. The labels mix by the pixels' shares."""
    n, h, w, _ = x.shape
    use_cutmix = cutmix > 0 and (mixup <= 0 or rng.random() < 0.5)
    alpha = cutmix if use_cutmix else mixup
    lam = float(rng.beta(alpha, alpha))
    perm = rng.permutation(n)
    if use_cutmix:
        bh, bw = int(round(h * np.sqrt(1 - lam))), int(round(w * np.sqrt(1 - lam)))
        cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
        t, b = max(cy - bh // 2, 0), min(cy - bh // 2 + bh, h)
        l, r = max(cx - bw // 2, 0), min(cx - bw // 2 + bw, w)
        x = x.copy()
        x[:, t:b, l:r] = x[perm, t:b, l:r]
        lam = 1.0 - (b - t) * (r - l) / (h * w)  # the share of pixels each image kept
    else:
        x = lam * x + (1 - lam) * x[perm]
    return x.astype(np.float32), (lam * y + (1 - lam) * y[perm]).astype(np.float32)

"""Training batches: shuffle and vectorised augmentation on uint8 images, deterministic in
(seed, epoch, batch index), so a resumed run sees exactly the batches an uninterrupted one would."""

from __future__ import annotations

import math

import keras
import numpy as np

from ..config import TrainConfig
from ..data.dataset import ImageSet


def augment_batch(x: np.ndarray, rng: np.random.Generator, flip: bool | np.ndarray = False, translate: int = 0,
                  cutout: int = 0) -> np.ndarray:
    """Random horizontal flip, pad-and-crop translation (reflect padding) and cutout, on a uint8 batch.
    `flip` may also be a boolean array: which images to mirror (Batches' alternating flip)."""
    n, h, w, _ = x.shape
    if flip is not False:
        mirror = flip if isinstance(flip, np.ndarray) else rng.random(n) < 0.5
        x = np.where(mirror[:, None, None, None], x[:, :, ::-1], x)
    if translate:
        t = translate
        padded = np.pad(x, ((0, 0), (t, t), (t, t), (0, 0)), mode="reflect")
        dy = rng.integers(0, 2 * t + 1, n)
        dx = rng.integers(0, 2 * t + 1, n)
        rows = dy[:, None] + np.arange(h)[None, :]  # (n, h)
        cols = dx[:, None] + np.arange(w)[None, :]  # (n, w)
        x = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    if cutout:
        cy = rng.integers(0, h, n)
        cx = rng.integers(0, w, n)
        yy = np.arange(h)[None, :, None]
        xx = np.arange(w)[None, None, :]
        y0 = (cy - cutout // 2)[:, None, None]  # a cutout x cutout square centred at (cy, cx), clipped
        x0 = (cx - cutout // 2)[:, None, None]
        mask = (yy >= y0) & (yy < y0 + cutout) & (xx >= x0) & (xx < x0 + cutout)
        x = np.where(mask[..., None], np.uint8(0), x)
    return np.ascontiguousarray(x)


class Batches(keras.utils.PyDataset):
    """Batches of (float32 pixels 0..255, labels) from an ImageSet.

    For training, the order is a permutation drawn from (seed, epoch), and augmentation
    draws from (seed, epoch, batch index): nothing depends on what ran before, which is what
    makes `--resume` exact.
    """

    def __init__(self, images: ImageSet, batch_size: int, num_classes: int, train: bool = False,
                 seed: int = 0, cfg: TrainConfig | None = None, one_hot: bool = False,
                 sample_weights: dict[int, float] | None = None):
        super().__init__()
        self.images, self.batch_size, self.num_classes = images, batch_size, num_classes
        self.train, self.seed, self.cfg, self.one_hot = train, seed, cfg, one_hot
        self.sample_weights = sample_weights
        self.epoch = 0
        self.order = np.arange(len(images))
        # alternating flip (airbench): each image gets a random mirror state from the seed, then
        # flips every epoch, so every pair of epochs shows both orientations exactly once
        self.base_flip = np.random.default_rng([seed, 2]).random(len(images)) < 0.5
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.train:
            self.order = np.random.default_rng([self.seed, epoch]).permutation(len(self.images))

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def __getitem__(self, i):
        index = self.order[i * self.batch_size:(i + 1) * self.batch_size]
        x = self.images.images(index)
        if self.train and self.cfg is not None:
            rng = np.random.default_rng([self.seed, self.epoch, i, 1])
            flip = self.cfg.augment_flip
            if flip and self.cfg.augment_flip_alternate:
                flip = self.base_flip[index] ^ bool(self.epoch % 2)
            x = augment_batch(x, rng, flip, self.cfg.augment_translate, self.cfg.augment_cutout)
        y = self.images.y[index]
        if self.one_hot:
            y = np.eye(self.num_classes, dtype=np.float32)[y]
        x = x.astype(np.float32)
        if self.sample_weights is not None:
            w = np.asarray([self.sample_weights[int(c)] for c in self.images.y[index]], np.float32)
            return x, y, w
        return x, y

"""Training batches: shuffle and vectorised augmentation (augment.py) on uint8 images, deterministic
in (seed, epoch, batch index), so a resumed run sees exactly the batches an uninterrupted one would."""

from __future__ import annotations

import math

import keras
import numpy as np

from ..config import TrainConfig
from ..data.dataset import ImageSet
from .augment import apply_draws, augment_draws, color_jitter, identity_draws, mix_batch, resized_crop


def one_hot_labels(cfg: TrainConfig) -> bool:
    """Whether training takes one-hot targets (and a categorical loss): label smoothing and
    MixUp/CutMix need them, the sparse loss has neither."""
    return cfg.label_smoothing > 0 or cfg.mixup > 0 or cfg.cutmix > 0


class Batches(keras.utils.PyDataset):
    """Batches of (float32 pixels 0..255, labels) from an ImageSet.

    For training, the order is a permutation drawn from (seed, epoch), and augmentation
    draws from (seed, epoch, batch index): nothing depends on what ran before, which is what
    makes `--resume` exact.

    With `device=True` (augment_device) a batch is ((uint8 images, their (n, 5) flip/translate/cutout
    draws), labels): the same draws, applied on the accelerator by device_augment.DeviceAugment;
    validation batches (train=False, with the run's cfg) carry the draws that change nothing.
    """

    def __init__(self, images: ImageSet, batch_size: int, num_classes: int, train: bool = False,
                 seed: int = 0, cfg: TrainConfig | None = None, one_hot: bool = False,
                 sample_weights: dict[int, float] | None = None, device: bool = False):
        super().__init__()
        self.device = device
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
        cfg = self.cfg if self.train else None
        if cfg is not None:
            # photo augmentations draw from their own stream, so the older ones' draws are unchanged
            photo = np.random.default_rng([self.seed, self.epoch, i, 2])
            if cfg.augment_crop:
                x = resized_crop(x, photo, cfg.augment_crop)
            if cfg.augment_color:
                x = color_jitter(x, photo, cfg.augment_color)
            rng = np.random.default_rng([self.seed, self.epoch, i, 1])
            flip = cfg.augment_flip
            if flip and cfg.augment_flip_alternate:
                flip = self.base_flip[index] ^ bool(self.epoch % 2)
            n, h, w = x.shape[:3]
            draws = augment_draws(n, h, w, rng, flip, cfg.augment_translate, cfg.augment_cutout)
            if not self.device:
                x = apply_draws(x, draws, cfg.augment_translate, cfg.augment_cutout)
        elif self.device:  # validation under augment_device: the draws that change nothing
            draws = identity_draws(len(x), *x.shape[1:3], self.cfg.augment_translate, self.cfg.augment_cutout)
        y = self.images.y[index]
        if self.one_hot:
            y = np.eye(self.num_classes, dtype=np.float32)[y]
        if self.device:  # uint8 to the accelerator, augmented there (mixup/cutmix are refused with it)
            x = (np.ascontiguousarray(x), draws)
            return (x, y, self.weights(index)) if self.sample_weights is not None else (x, y)
        x = x.astype(np.float32)
        if cfg is not None and (cfg.mixup or cfg.cutmix):
            x, y = mix_batch(x, y, np.random.default_rng([self.seed, self.epoch, i, 3]), cfg.mixup, cfg.cutmix)
        if self.sample_weights is not None:
            return x, y, self.weights(index)
        return x, y

    def weights(self, index: np.ndarray) -> np.ndarray:
        return np.asarray([self.sample_weights[int(c)] for c in self.images.y[index]], np.float32)

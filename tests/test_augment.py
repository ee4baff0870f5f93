"""Issue 15 (photos): the photo augmentations (resized crop, colour jitter, MixUp/CutMix) and the
batch source that keys their draws by (seed, epoch, batch index)."""

from __future__ import annotations

import numpy as np
import pytest

from imgclf.config import make_config
from imgclf.data.dataset import ImageSet
from imgclf.errors import ConfigError
from imgclf.training import Batches
from imgclf.training.augment import color_jitter, crop_boxes, mix_batch, resized_crop


def gradient_batch(n=16, h=24, w=20):
    """Rows ramp in red, columns in green: where a pixel came from can be read off its value."""
    r = np.linspace(0, 230, h)[None, :, None].repeat(w, axis=2)
    g = np.linspace(0, 190, w)[None, None, :].repeat(h, axis=1)
    img = np.stack([r[0], g[0], np.full((h, w), 77.0)], axis=-1)
    return np.repeat(img[None], n, axis=0).round().astype(np.uint8)


def test_crop_boxes_lie_inside_the_image_with_the_areas_and_aspects_asked_for():
    boxes = crop_boxes(2000, 40, 30, np.random.default_rng(0), 0.3)
    top, left, bh, bw = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + bh <= 40 + 1e-9).all() and (left + bw <= 30 + 1e-9).all()
    area = bh * bw / (40 * 30)
    assert area.max() <= 1 + 1e-9 and area.min() >= 0.3 * 0.74  # clipping to the image only shrinks a box's side
    assert area.min() < 0.35 and np.median(area) > 0.5  # the whole range is drawn
    unclipped = (bh < 40) & (bw < 30)
    assert np.allclose((bw / bh)[unclipped].clip(3 / 4 - 1e-9, 4 / 3 + 1e-9), (bw / bh)[unclipped])


def test_resized_crop_zooms_in_keeps_order_and_is_seeded():
    x = gradient_batch()
    out = resized_crop(x, np.random.default_rng(1), 0.25)
    assert out.shape == x.shape and out.dtype == np.uint8
    assert (out[..., 2] == 77).all()  # a constant channel stays constant: bilinear weights sum to 1
    red, green = out[..., 0].astype(int), out[..., 1].astype(int)
    assert (np.diff(red, axis=1) >= 0).all() and (np.diff(green, axis=2) >= 0).all()  # no mirror, no shuffle
    # a crop shows a part of the image: its range of rows (and columns) is at most the whole one
    spans = red[:, -1, 0] - red[:, 0, 0]
    assert (spans <= 230).all() and (spans < 200).any()
    assert (resized_crop(x, np.random.default_rng(1), 0.25) == out).all()
    assert not (resized_crop(x, np.random.default_rng(2), 0.25) == out).all()


def test_color_jitter_is_identity_at_zero_and_keeps_grey_images_grey():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (8, 10, 10, 3)).astype(np.uint8)
    assert (color_jitter(x, np.random.default_rng(3), 0.0) == x).all()
    grey = np.repeat(rng.integers(0, 256, (8, 10, 10, 1)), 3, axis=-1).astype(np.uint8)
    out = color_jitter(grey, np.random.default_rng(3), 0.4)
    assert (np.abs(out.astype(int) - out[..., :1]) <= 1).all()  # saturation has nothing to change
    assert not (out == grey).all()  # brightness and contrast did change it
    jittered = color_jitter(x, np.random.default_rng(3), 0.4)
    assert jittered.dtype == np.uint8 and not (jittered == x).all()


@pytest.mark.parametrize("mixup,cutmix", [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mixed_labels_match_the_mixed_pixels(mixup, cutmix):
    """Each image is one flat value per class: after mixing, an image's mean value is exactly its
    label-weighted mean of the class values, for MixUp and for CutMix."""
    n = 10
    values = np.arange(n, dtype=np.float32) * 20 + 5
    x = np.repeat(values, 12 * 12 * 3).reshape(n, 12, 12, 3)
    y = np.eye(n, dtype=np.float32)
    seen = set()
    for seed in range(12):
        out, soft = mix_batch(x, y, np.random.default_rng(seed), mixup, cutmix)
        assert np.allclose(soft.sum(axis=1), 1) and (soft >= 0).all()
        assert np.allclose(out.mean(axis=(1, 2, 3)), soft @ values, atol=1e-3)
        flat = np.array([np.unique(o).size == 1 for o in out])  # MixUp keeps images flat, CutMix pastes a box
        seen.add("cutmix" if not flat.all() else "mixup")
    assert seen == ({"mixup"} if not cutmix else {"cutmix"} if not mixup else {"mixup", "cutmix"})


def images(n=96, size=16, classes=4):
    rng = np.random.default_rng(0)
    return ImageSet(rng.integers(0, classes, n), [f"{i}" for i in range(n)],
                    rng.integers(0, 256, (n, size, size, 3)).astype(np.uint8))


def test_photo_augmented_batches_are_keyed_by_seed_epoch_and_index():
    cfg = make_config(augment_flip=True, augment_crop=0.35, augment_color=0.3, mixup=0.2, cutmix=1.0)
    a = Batches(images(), 32, 4, train=True, seed=5, cfg=cfg, one_hot=True)
    b = Batches(images(), 32, 4, train=True, seed=5, cfg=cfg, one_hot=True)
    a.set_epoch(2)
    xa, ya = a[1]
    b.set_epoch(0)
    b[1]
    b.set_epoch(2)
    xb, yb = b[1]  # the same batch after visiting another epoch first: what --resume relies on
    assert (xa == xb).all() and (ya == yb).all() and xa.dtype == np.float32
    assert ya.shape == (32, 4) and np.allclose(ya.sum(axis=1), 1) and (ya.max(axis=1) < 1).any()
    a.set_epoch(3)
    assert not (a[1][0] == xb).all()
    assert not (Batches(images(), 32, 4, train=True, seed=6, cfg=cfg, one_hot=True)[1][0] == a[1][0]).all()
    # evaluation batches are never augmented
    plain = Batches(images(), 32, 4, cfg=cfg)
    assert (plain[0][0] == images().x[:32]).all()


def test_photo_augmentations_leave_the_older_draws_alone():
    """Turning a photo augmentation off gives back the batches of the recipes from before them."""
    old = make_config(augment_flip=True, augment_translate=2, augment_cutout=4)
    new = make_config(augment_flip=True, augment_translate=2, augment_cutout=4, augment_crop=0.0, mixup=0.0)
    a = Batches(images(), 32, 4, train=True, seed=1, cfg=old)[2][0]
    b = Batches(images(), 32, 4, train=True, seed=1, cfg=new)[2][0]
    assert (a == b).all()


@pytest.mark.parametrize("field,value", [("augment_crop", 1.5), ("augment_color", 1.0), ("mixup", -1)])
def test_out_of_range_photo_augmentation_is_refused(field, value):
    with pytest.raises(ConfigError, match=field):
        make_config(**{field: value})


def test_a_shift_as_long_as_the_image_is_refused_before_training():
    with pytest.raises(ConfigError, match="augment_translate.*input_size"):
        make_config(input_size=8, augment_translate=8)
    assert make_config(input_size=8, augment_translate=7).augment_translate == 7

"""Issue 4 (fast training): augmentation, schedules, FLOP counting, fastnet and its recipes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import HANG, make_folder
from imgclf.config import RECIPES, make_config
from imgclf.errors import ConfigError
from imgclf.models.flops import count_flops
from imgclf.models.registry import create_model, init_from_data, whitening_filters
from imgclf.training import Batches, augment_batch, lr_at, train
from imgclf.data.dataset import ImageSet
from imgclf.runtime.classifier import Classifier, tta_views

REPO = Path(__file__).resolve().parents[1]


def known_batch(n=8, h=6, w=5):
    """Every pixel distinct: value encodes (image, row, column, channel)."""
    i, r, c, ch = np.meshgrid(np.arange(n), np.arange(h), np.arange(w), np.arange(3), indexing="ij")
    return ((i * 31 + r * 7 + c * 3 + ch) % 251).astype(np.uint8)


# ---------------------------------------------------------------------------------------
# augmentation
# ---------------------------------------------------------------------------------------

def test_flip_mirrors_some_images_and_keeps_the_rest():
    x = known_batch(n=64)
    out = augment_batch(x, np.random.default_rng(0), flip=True)
    flipped = [bool((o == xi[:, ::-1]).all()) for o, xi in zip(out, x)]
    same = [bool((o == xi).all()) for o, xi in zip(out, x)]
    assert all(f != s for f, s in zip(flipped, same))  # each image exactly one of the two
    assert 10 < sum(flipped) < 54 and out.dtype == np.uint8 and out.shape == x.shape


def test_translate_is_a_crop_of_the_reflect_padded_image():
    x = known_batch(n=40)
    t = 2
    out = augment_batch(x, np.random.default_rng(1), translate=t)
    offsets = set()
    for o, xi in zip(out, x):
        padded = np.pad(xi, ((t, t), (t, t), (0, 0)), mode="reflect")
        hits = [(dy, dx) for dy in range(2 * t + 1) for dx in range(2 * t + 1)
                if (padded[dy:dy + x.shape[1], dx:dx + x.shape[2]] == o).all()]
        assert hits, "output is not a crop of the padded image"
        offsets.add(hits[0])
    assert len(offsets) > 5  # offsets vary across the batch
    assert (augment_batch(x, np.random.default_rng(1)) == x).all()  # no augmentation: identity


def test_cutout_zeroes_one_square_per_image():
    x = np.full((50, 16, 16, 3), 200, np.uint8)
    out = augment_batch(x, np.random.default_rng(2), cutout=4)
    for o in out:
        zero = (o == 0).all(axis=-1)
        assert 0 < zero.sum() <= 16 and ((o == 0) | (o == 200)).all()
        rows, cols = np.flatnonzero(zero.any(axis=1)), np.flatnonzero(zero.any(axis=0))
        # the zeroed pixels form one solid rectangle of side <= 4 (clipped at the border)
        assert zero.sum() == len(rows) * len(cols) and len(rows) <= 4 and len(cols) <= 4
        assert np.ptp(rows) + 1 == len(rows) and np.ptp(cols) + 1 == len(cols)
    interior = [int((o == 0).all(axis=-1).sum()) for o in out]
    assert 16 in interior  # a cutout away from the border is the full 4x4 square


def test_batches_are_deterministic_per_seed_and_epoch():
    rng = np.random.default_rng(0)
    images = ImageSet(rng.integers(0, 10, 100), [f"{i}" for i in range(100)],
                      rng.integers(0, 256, (100, 8, 8, 3)).astype(np.uint8))
    cfg = make_config(augment_flip=True, augment_translate=2, augment_cutout=3)
    a = Batches(images, 32, 10, train=True, seed=5, cfg=cfg)
    b = Batches(images, 32, 10, train=True, seed=5, cfg=cfg)
    xa, ya = a[1]
    xb, yb = b[1]
    assert (xa == xb).all() and (ya == yb).all() and xa.dtype == np.float32
    a.set_epoch(1)
    assert not (a[1][0] == xb).all()
    c = Batches(images, 32, 10, train=True, seed=6, cfg=cfg)
    assert not (c[1][0] == xb).all()
    b.set_epoch(1)
    assert (a[2][0] == b[2][0]).all()  # reproducible after moving between epochs (resume)


def test_alternating_flip_shows_each_image_both_ways_in_two_epochs():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 8, 8, 3)).astype(np.uint8)
    images = ImageSet(np.zeros(64, int), [f"{i}" for i in range(64)], x)
    batches = Batches(images, 64, 10, train=True, seed=3,
                      cfg=make_config(augment_flip=True, augment_flip_alternate=True))

    def mirrored(epoch):  # which images (by index) this epoch shows mirrored
        batches.set_epoch(epoch)
        out = batches[0][0].astype(np.uint8)
        by_index = np.empty_like(out)
        by_index[batches.order] = out
        assert all((o == a).all() or (o == a[:, ::-1]).all() for o, a in zip(by_index, x))
        return np.array([not (o == a).all() for o, a in zip(by_index, x)])

    e0, e1, e2 = mirrored(0), mirrored(1), mirrored(2)
    assert 10 < e0.sum() < 54  # a random half, give or take
    assert (e1 == ~e0).all() and (e2 == e0).all()


def _augment_per_image(x, rng, t=2, cutout=8):
    """The same augmentations as augment_batch, one image at a time: what vectorising avoids."""
    out = np.empty_like(x)
    n, h, w, _ = x.shape
    for i in range(n):
        im = x[i, :, ::-1] if rng.random() < 0.5 else x[i]
        im = np.pad(im, ((t, t), (t, t), (0, 0)), mode="reflect")
        dy, dx = rng.integers(0, 2 * t + 1, 2)
        im = im[dy:dy + h, dx:dx + w].copy()
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        im[max(0, cy - cutout // 2):cy - cutout // 2 + cutout, max(0, cx - cutout // 2):cx - cutout // 2 + cutout] = 0
        out[i] = im
    return out


def test_augmentation_is_vectorised():
    """augment_batch costs less CPU than the same work image by image, measured side by side
    (a ratio in one process, so neither a slow host nor other jobs change the verdict)."""
    x = np.random.default_rng(0).integers(0, 256, (512, 32, 32, 3)).astype(np.uint8)
    rng = np.random.default_rng(0)
    batch, single = [], []
    for _ in range(5):  # interleaved; CPU time, so other processes on the machine do not count
        t = time.process_time()
        augment_batch(x, rng, True, 2, 8)
        batch.append(time.process_time() - t)
        t = time.process_time()
        _augment_per_image(x, rng)
        single.append(time.process_time() - t)
    assert np.median(batch) < np.median(single), (batch, single)


# ---------------------------------------------------------------------------------------
# learning-rate schedules
# ---------------------------------------------------------------------------------------

def test_tta_views_weights_and_shifts():
    x = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3)).astype(np.uint8)
    plain = tta_views(x)
    assert [w for w, _ in plain] == [0.5, 0.5] and np.array_equal(plain[1][1], x[:, :, ::-1])
    views = tta_views(x, translate=1)
    assert len(views) == 6 and sum(w for w, _ in views) == pytest.approx(1.0)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    up_left, down_right = views[2][1], views[4][1]
    assert np.array_equal(up_left, padded[:, :8, :8]) and np.array_equal(down_right, padded[:, 2:, 2:])
    assert np.array_equal(up_left[:, 1:, 1:], x[:, :7, :7])  # content moves down-right by one pixel
    assert np.array_equal(views[3][1], up_left[:, :, ::-1])


def test_classifier_tta_uses_the_models_own_views():
    """predict_proba(tta=True) is the weighted mean over tta_views(meta tta_translate)."""

    class Probe(Classifier):
        def _raw_probs(self, x):  # a fake model: "probability" = mean pixel of the top-left corner
            v = x[:, 0, 0, 0].astype(np.float64)
            return np.stack([v, 255 - v], axis=1) / 255

    x = np.random.default_rng(1).integers(0, 256, (4, 8, 8, 3)).astype(np.uint8)
    meta = {"class_names": ["a", "b"], "input_size": 8, "resize": "stretch"}
    for translate in (0, 1, 2):
        clf = Probe("m.keras", {**meta, "tta_translate": translate})
        want = sum(w * clf._raw_probs(v) for w, v in tta_views(x, translate))
        assert np.allclose(clf.predict_proba(x, tta=True, calibrated=False), want)
    assert not np.allclose(Probe("m", meta).predict_proba(x, tta=True), Probe("m", {**meta, "tta_translate": 1})
                           .predict_proba(x, tta=True))


def test_lr_schedule_values():
    cfg = make_config(learning_rate=0.4, epochs=10, warmup_epochs=2, lr_schedule="onecycle")
    assert lr_at(cfg, 0.0) == 0.0
    assert lr_at(cfg, 0.1) == pytest.approx(0.2)  # halfway through warmup
    assert lr_at(cfg, 0.2) == pytest.approx(0.4)  # peak
    assert lr_at(cfg, 0.6) == pytest.approx(0.2)  # linear decay
    assert lr_at(cfg, 1.0) == pytest.approx(0.0, abs=1e-9)
    cos = make_config(learning_rate=1.0, epochs=10, lr_schedule="cosine")
    assert lr_at(cos, 0.5) == pytest.approx(0.5) and lr_at(cos, 0.0) == pytest.approx(1.0)
    const = make_config(learning_rate=0.3)
    assert lr_at(const, 0.7) == 0.3
    floor = make_config(learning_rate=1.0, epochs=10, lr_schedule="onecycle", warmup_epochs=0, final_lr_fraction=0.1)
    assert lr_at(floor, 1.0) == pytest.approx(0.1) and lr_at(floor, 0.5) == pytest.approx(0.55)
    tri = make_config(learning_rate=1.0, epochs=10, lr_schedule="onecycle", warmup_epochs=2, warmup_start_fraction=0.2)
    assert lr_at(tri, 0.0) == pytest.approx(0.2) and lr_at(tri, 0.1) == pytest.approx(0.6)  # airbench's triangle
    assert lr_at(tri, 0.2) == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="warmup_start_fraction"):
        make_config(warmup_start_fraction=1.5)


def test_lookahead_pulls_weights_toward_a_slow_average_every_5_steps():
    import keras
    from types import SimpleNamespace

    from imgclf.training import Lookahead

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, use_bias=False)])
    kernel = model.weights[0]
    schedule = SimpleNamespace(cfg=make_config(lookahead_start=0.2), steps_per_epoch=10, epoch=0,
                               progress=lambda batch: batch / 10)
    la = Lookahead(schedule)
    la.set_model(model)
    la.on_train_begin()
    kernel.assign(np.zeros((2, 1), np.float32))
    la.on_epoch_begin(0)
    assert la.average is None  # progress 0 < 0.2: not started
    kernel.assign(np.ones((2, 1), np.float32))
    la.on_train_batch_end(3)  # step 4: not a multiple of 5
    la.on_train_batch_end(4)  # step 5, progress 0.5: the average starts here, weights untouched
    assert np.allclose(la.average[0], 1.0) and np.allclose(keras.ops.convert_to_numpy(kernel), 1.0)
    kernel.assign(np.full((2, 1), 3.0, np.float32))
    la.on_train_batch_end(9)  # step 10, progress 1.0: rho = 0.95**5, then the weights = the average
    expected = 1.0 + (1 - 0.95 ** 5) * (3.0 - 1.0)
    assert np.allclose(keras.ops.convert_to_numpy(kernel), expected)
    with pytest.raises(ConfigError, match="lookahead_start"):
        make_config(lookahead_start=1.0)


# ---------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------

def test_count_flops_matches_a_hand_count_on_seed_cnn():
    m = create_model("seed_cnn", 10, (32, 32, 3))
    macs = (32 * 32 * 9 * 3 * 32  # conv1: 32x32 output, 3x3x3 kernel, 32 filters
            + 32 * 32 * 9 * 32 * 32  # conv2
            + 16 * 16 * 9 * 32 * 64  # conv3 (after 2x2 pooling)
            + 16 * 16 * 9 * 64 * 64  # conv4
            + 8 * 8 * 64 * 10)  # dense on the 4096 flattened features
    c = count_flops(m)
    assert c["forward"] == 2 * macs == 49_037_312
    assert c["train"] == 3 * c["forward"]
    assert set(c["layers"]) == {"conv1", "conv2", "conv3", "conv4", "probs"}


def test_count_flops_on_fastnet_is_airbench_sized():
    c = count_flops(create_model("fastnet", 10, (32, 32, 3)))
    # whiten 31x31x(2x2x3)x24, group convs at 31/15/7/3 pixels, linear 256 -> 10
    macs = (31 * 31 * 12 * 24 + 31 * 31 * 9 * 24 * 64 + 15 * 15 * 9 * 64 * 64 + 15 * 15 * 9 * 64 * 256
            + 7 * 7 * 9 * 256 * 256 + 7 * 7 * 9 * 256 * 256 + 3 * 3 * 9 * 256 * 256 + 256 * 10)
    assert c["forward"] == 2 * macs


# ---------------------------------------------------------------------------------------
# fastnet and the recipes
# ---------------------------------------------------------------------------------------

def test_whitening_filters_whiten_patches():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (200, 16, 16, 1))
    x = np.clip(np.concatenate([base, base * 0.5 + 60, 255 - base], axis=-1)
                + rng.normal(0, 20, (200, 16, 16, 3)), 0, 255).astype(np.uint8)  # correlated channels
    kernel, bias = whitening_filters(x, kernel=2, width=8)
    assert kernel.shape == (2, 2, 3, 8) and bias.shape == (8,)
    assert np.allclose(kernel[..., :4], -kernel[..., 4:])
    patches = np.stack([x[:, i:15 + i, j:15 + j] for i in range(2) for j in range(2)], axis=3)
    p = patches.reshape(-1, 12).astype(np.float64) / 255
    out = p @ kernel.reshape(12, 8)[:, :4] + bias[:4]
    assert np.allclose(out.mean(axis=0), 0, atol=1e-3)
    assert np.allclose(np.cov(out, rowvar=False), np.eye(4), atol=0.05)


def test_fastnet_builds_initialises_and_recipes_resolve():
    m = create_model("fastnet", 10, (32, 32, 3), widths=(8, 16, 16), whiten_width=6)
    x = np.random.default_rng(0).integers(0, 256, (20, 32, 32, 3)).astype(np.uint8)
    before = m.get_layer("whiten").get_weights()[0].copy()
    assert init_from_data(m, x) is True
    assert not np.allclose(before, m.get_layer("whiten").get_weights()[0])
    assert not m.get_layer("whiten").trainable
    p = np.asarray(m.predict(x.astype(np.float32), verbose=0))
    assert p.shape == (20, 10) and np.allclose(p.sum(axis=1), 1, atol=1e-5)
    assert init_from_data(create_model("seed_cnn"), x) is False
    for name in ("fast80", "fast94", "budget"):
        cfg = make_config(recipe=name)
        assert cfg.model == "fastnet" and cfg.recipe == name
    with pytest.raises(ConfigError, match="widths"):
        create_model("fastnet", widths=(8, 16))


def test_fastnet_identity_init_passes_inputs_through_and_l2_penalises_weights():
    m = create_model("fastnet", 10, (32, 32, 3), widths=(8, 16, 16), whiten_width=6, identity_init=True, l2=1e-3)
    conv = m.get_layer("g2_conv1")  # 8 -> 16 channels: filters 0..7 are the identity, 8..15 random
    k = np.asarray(conv.get_weights()[0])
    eye = np.zeros((3, 3, 8, 8), np.float32)
    eye[1, 1, np.arange(8), np.arange(8)] = 1
    assert np.array_equal(k[..., :8], eye)
    assert np.abs(k[..., 8:]).sum() > 0
    x = np.random.default_rng(0).normal(size=(2, 5, 5, 8)).astype(np.float32)
    y = np.asarray(conv(x))
    assert np.allclose(y[..., :8], x, atol=1e-5)  # a 'same' conv that passes its input through
    square = np.asarray(m.get_layer("g2_conv2").get_weights()[0])  # 16 -> 16: all identity
    assert np.array_equal(square[1, 1], np.eye(16)) and np.abs(square).sum() == 16
    # the L2 penalty: one loss per regularized layer (6 convs, 6 BN shifts, the head), l2 * sum(w^2)
    assert len(m.losses) == 13
    head = np.asarray(m.get_layer("logits").get_weights()[0])
    assert float(min(abs(float(v) - 1e-3 * float((head ** 2).sum())) for v in m.losses)) < 1e-6
    plain = create_model("fastnet", 10, (32, 32, 3), widths=(8, 16, 16), whiten_width=6)
    assert len(plain.losses) == 0


@pytest.mark.slow
def test_fast80_recipe_learns_real_images(cifar_jpeg, tmp_path):
    """fast80 squeezed to 6 epochs on 600 real CIFAR-10 images: far above chance (10%)."""
    run = train(recipe="fast80", data=str(cifar_jpeg), limit_per_class=60, val_fraction=0.2, epochs=6,
                batch_size=64, learning_rate=0.05, warmup_epochs=1, run_dir=tmp_path / "run", verbose=0, report=False)
    assert run.metrics["val"]["accuracy"] > 0.25, run.metrics["val"]
    assert run.metrics["flops"]["train_per_image"] == 3 * run.metrics["flops"]["forward_per_image"]
    assert run.metrics["flops"]["total_train"] > 0


class FakeTime:
    """Stands in for the `time` module inside imgclf.training.trainer and imgclf.training.callbacks (one
    clock for both): each reading advances 0.25 s, so a time budget runs out after a fixed number of
    steps, however loaded the machine is."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        self.now += 0.25
        return self.now


@pytest.mark.slow
def test_time_budget_spreads_the_schedule_over_wall_time(colour_folder, tmp_path, monkeypatch):
    import imgclf.training.callbacks
    import imgclf.training.trainer

    clock = FakeTime()
    monkeypatch.setattr(imgclf.training.trainer, "time", clock)
    monkeypatch.setattr(imgclf.training.callbacks, "time", clock)
    run = train(recipe="fast80", data=str(colour_folder), val_fraction=0.25, time_budget=25,
                batch_size=8, model_options={"widths": [8, 16, 16], "whiten_width": 6},
                run_dir=tmp_path / "run", verbose=0, report=False)
    # the budget clock starts with train() (data loading and model building count against it),
    # and training stops in the step where the budget runs out: a few readings past 25 s
    assert 25 <= run.metrics["seconds"]["fit"] + run.metrics["seconds"]["data_load"] < 25 + 3
    import csv

    rows = list(csv.DictReader(open(run.run_dir / "history.csv")))
    assert 2 <= len(rows) < 20
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[-1] < lrs[len(lrs) // 2]  # spread over the budget: still decaying in the second half
    assert float(rows[-1]["lr"]) < 0.2 * float(make_config(recipe="fast80").learning_rate)  # decayed


@pytest.mark.slow
def test_training_tta_metrics_match_the_saved_classifier(colour_folder, tmp_path):
    """The recipe's TTA (mirror + 1-pixel shifts) is saved with the model: evaluating the file with
    --tta gives the validation loss that training reported."""
    from imgclf.data.dataset import load_dataset
    from imgclf.evaluation.metrics import evaluate_arrays
    from imgclf.runtime import load_classifier

    run = train(recipe="fast80", data=str(colour_folder), val_fraction=0.25, epochs=1, batch_size=8, tta=True,
                tta_translate=1, learning_rate=0.01, model_options={"widths": [8, 16, 16], "whiten_width": 6},
                run_dir=tmp_path / "run", verbose=0, report=False)
    clf = load_classifier(run.model_path)
    assert clf.tta_translate == 1 and clf.meta["tta"] is True
    val = load_dataset(str(colour_folder), val_fraction=0.25).val
    x = val.images(np.arange(len(val)))
    with_tta = evaluate_arrays(clf.predict_proba(x, tta=True, calibrated=False), val.y)
    assert with_tta["loss"] == pytest.approx(run.metrics["val"]["loss"], abs=1e-5)
    assert 0.01 < with_tta["loss"] < 5  # not saturated: the views' predictions differ
    mirror_only = evaluate_arrays(0.5 * (clf.predict_proba(x, calibrated=False)
                                         + clf.predict_proba(x[:, :, ::-1], calibrated=False)), val.y)
    assert mirror_only["loss"] != pytest.approx(run.metrics["val"]["loss"], abs=1e-5)


@pytest.mark.slow
def test_seeded_fast_runs_are_deterministic(colour_folder, tmp_path):
    kw = dict(recipe="fast80", data=str(colour_folder), val_fraction=0.25, epochs=2, batch_size=8,
              lookahead_start=0.3, bias_lr_scale=64,  # the fast94 options are deterministic too
              model_options={"widths": [8, 16, 16], "whiten_width": 6}, verbose=0, report=False)
    a = train(run_dir=tmp_path / "a", **kw)
    b = train(run_dir=tmp_path / "b", **kw)
    ha = (a.run_dir / "history.csv").read_text().splitlines()
    hb = (b.run_dir / "history.csv").read_text().splitlines()
    strip = lambda rows: [r.rsplit(",", 1)[0] for r in rows]  # noqa: E731  (drop epoch_seconds)
    assert strip(ha) == strip(hb)


def test_mixed_precision_model_computes_in_bf16_but_outputs_float32():
    import keras

    before = keras.config.dtype_policy().name
    m = create_model("fastnet", 10, (32, 32, 3), precision="mixed_bfloat16", widths=(8, 16, 16), whiten_width=6)
    assert keras.config.dtype_policy().name == before  # the global policy is left as it was
    assert m.get_layer("g1_conv1").compute_dtype == "bfloat16"
    assert m.get_layer("g1_conv1").variable_dtype == "float32"  # weights stay float32
    assert m.get_layer("probs").compute_dtype == "float32"
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype(np.float32)
    p = np.asarray(m(x))
    assert p.dtype == np.float32 and np.allclose(p.sum(axis=1), 1, atol=1e-5)
    copy = create_model("fastnet", 10, (32, 32, 3), widths=(8, 16, 16), whiten_width=6)
    copy.set_weights(m.get_weights())  # the weights are float32 under the mixed policy too
    assert {layer.compute_dtype for layer in copy.layers if layer.weights} == {"float32"}
    assert all(np.array_equal(a, b) for a, b in zip(m.get_weights(), copy.get_weights()))
    q = np.asarray(copy(x))
    assert np.abs(p - q).max() < 0.05  # bf16 rounding only
    with pytest.raises(ConfigError, match="precision"):
        make_config(recipe="fast80", precision="fp8")


def test_auto_precision_is_bf16_only_on_a_bf16_cpu(monkeypatch):
    import keras
    from imgclf.models import registry as models

    assert models.resolve_precision("mixed_float16") == "mixed_float16"  # explicit: left alone
    monkeypatch.setattr(models, "cpu_has_bf16", lambda: False)
    assert models.resolve_precision("auto") == "float32"
    monkeypatch.setattr(models, "cpu_has_bf16", lambda: True)
    expected = "mixed_bfloat16" if keras.backend.backend() == "tensorflow" else "float32"
    assert models.resolve_precision("auto") == expected
    m = create_model("fastnet", 10, (32, 32, 3), precision="auto", widths=(8, 16, 16), whiten_width=6)
    assert m.dtype_policy.name == expected


@pytest.mark.slow
def test_mixed_precision_training_saves_a_float32_model_that_matches_its_metrics(colour_folder, tmp_path):
    from imgclf.data.dataset import load_dataset
    from imgclf.evaluation.metrics import evaluate_arrays
    from imgclf.runtime import load_classifier

    run = train(recipe="fast80", data=str(colour_folder), val_fraction=0.25, epochs=2, batch_size=8,
                precision="mixed_bfloat16", learning_rate=0.01,
                model_options={"widths": [8, 16, 16], "whiten_width": 6}, run_dir=tmp_path / "run", verbose=0,
                report=False)
    clf = load_classifier(run.model_path)
    assert {layer.compute_dtype for layer in clf.model.layers if layer.weights} == {"float32"}
    import keras

    reloaded = keras.saving.load_model(run.model_path)  # compiled, as a float32 run's file is
    assert reloaded.compiled and reloaded.dtype_policy.name == "float32"
    val = load_dataset(str(colour_folder), val_fraction=0.25).val
    x = val.images(np.arange(len(val)))
    got = evaluate_arrays(clf.predict_proba(x, tta=True, calibrated=False), val.y)
    assert got["loss"] == pytest.approx(run.metrics["val"]["loss"], abs=1e-5)
    assert run.config.precision == "mixed_bfloat16" and run.metrics["precision"] == "mixed_bfloat16"


def test_bias_lr_scale_multiplies_only_the_bias_steps_and_keeps_their_decay():
    import keras
    from imgclf.training import BiasScaledSGD

    def one_step(opt):
        beta = keras.Variable(np.full(3, 2.0, np.float32), name="beta")
        kernel = keras.Variable(np.full(3, 2.0, np.float32), name="kernel")
        opt.apply([keras.ops.ones(3), keras.ops.ones(3)], [beta, kernel])
        return [np.asarray(keras.ops.convert_to_numpy(v)) for v in (beta, kernel)]

    kw = dict(learning_rate=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
    beta, kernel = one_step(BiasScaledSGD(64.0, **kw))
    beta_ref, kernel_ref = one_step(keras.optimizers.SGD(**kw))
    decay = 2.0 * 0.01 * 0.1  # decoupled: lr * wd * w, the same for both groups
    step = 0.1 * (1 + 0.9)  # Nesterov's first step on a unit gradient: lr * (1 + momentum)
    assert np.allclose(kernel_ref, 2.0 - decay - step) and np.allclose(beta_ref, 2.0 - decay - step)
    assert np.allclose(kernel, kernel_ref)  # weights: Keras' SGD exactly
    assert np.allclose(beta, 2.0 - decay - 64 * step, atol=1e-5)  # biases: the gradient step x64, same decay
    with pytest.raises(ConfigError, match="bias_lr_scale"):
        make_config(recipe="fast80", optimizer="adamw", bias_lr_scale=64)
    with pytest.raises(ConfigError, match="bias_lr_scale"):
        make_config(recipe="fast80", bias_lr_scale=0)


@pytest.mark.slow
def test_bias_lr_scale_training_saves_a_model_compiled_with_keras_sgd(colour_folder, tmp_path):
    import zipfile

    import keras

    run = train(recipe="fast80", data=str(colour_folder), val_fraction=0.25, epochs=1, batch_size=8,
                bias_lr_scale=64, model_options={"widths": [8, 16, 16], "whiten_width": 6},
                run_dir=tmp_path / "run", verbose=0, report=False)
    with zipfile.ZipFile(run.model_path) as z:
        config = json.loads(z.read("config.json"))
    assert config["compile_config"]["optimizer"]["class_name"] == "SGD"
    assert "bias_lr_scale" not in json.dumps(config["compile_config"])
    reloaded = keras.saving.load_model(run.model_path)  # safe mode, no imgclf class needed
    assert type(reloaded.optimizer) is keras.optimizers.SGD
    assert run.config.bias_lr_scale == 64


@pytest.mark.slow
def test_fast_training_runs_on_the_jax_backend(tmp_path):
    data = make_folder(tmp_path / "colours", per_class=10)
    code = (
        "import json, keras, imgclf\n"
        f"run = imgclf.train(recipe='fast80', data={str(data)!r}, val_fraction=0.3, epochs=2, batch_size=10,"
        " lookahead_start=0.3, bias_lr_scale=64,"
        " model_options={'widths': [8, 16, 16], 'whiten_width': 6},"
        f" run_dir={str(tmp_path / 'run')!r}, verbose=0, report=False)\n"
        "from imgclf.runtime import load_classifier\n"
        "c = load_classifier(run.model_path)\n"
        "p = c.predict_proba(c.load_images([str(next((run.run_dir.parent / 'colours' / 'red').iterdir()))]), tta=True)\n"
        "print(json.dumps({'backend': keras.backend.backend(), 'sum': float(p.sum()),"
        " 'meta_backend': c.meta['backend']}))\n"
    )
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=HANG)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["backend"] == "jax" and result["meta_backend"] == "jax"
    assert result["sum"] == pytest.approx(1.0, abs=1e-4)

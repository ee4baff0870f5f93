"""Corruptions on constructed images with known answers, and accuracy under them."""

from __future__ import annotations

import numpy as np
import pytest

from imgclf.evaluation import corruptions as C
from imgclf.errors import ImgclfError


def grey(value: int, n: int = 4, size: int = 32) -> np.ndarray:
    return np.full((n, size, size, 3), value, np.uint8)


def noisy(n: int = 6, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(40, 216, (n, size, size, 3)).astype(np.uint8)


@pytest.mark.parametrize("name", C.CORRUPTIONS)
def test_shape_dtype_severity_zero_and_determinism(name):
    x = noisy()
    for s in (0, 1, 3, 5):
        out = C.corrupt(x, name, s, seed=0)
        assert out.dtype == np.uint8 and out.shape == x.shape
        assert np.array_equal(out, C.corrupt(x, name, s, seed=0))
    assert np.array_equal(C.corrupt(x, name, 0), x) and C.corrupt(x, name, 0) is not x
    assert not np.array_equal(C.corrupt(x, name, 5), x)


def test_brightness_adds_a_known_amount_and_clips():
    out = C.corrupt(grey(100), "brightness", 2)  # c = 0.1 -> +25.5
    assert np.all(out == 126)  # 125.5 rounds to even
    assert np.all(C.corrupt(grey(250), "brightness", 5) == 255)
    assert np.all(C.corrupt(grey(0), "brightness", 5) == 76)  # 0.3 * 255 = 76.5 -> 76


def test_contrast_scales_deviations_about_the_image_mean():
    x = np.zeros((1, 32, 32, 3), np.uint8)
    x[:, :, :16] = 60
    x[:, :, 16:] = 200  # mean 130, deviations +-70
    out = C.corrupt(x, "contrast", 2).astype(int)  # c = 0.5
    assert np.all(out[:, :, :16] == 95) and np.all(out[:, :, 16:] == 165)
    assert out.mean() == pytest.approx(130)
    assert np.all(C.corrupt(grey(77), "contrast", 5) == 77)  # a flat image has no contrast to lose


def test_gaussian_noise_has_the_stated_sigma():
    x = grey(128, n=8)
    for s, sigma in ((1, 0.04), (5, 0.10)):
        diff = C.corrupt(x, "gaussian_noise", s, seed=1).astype(float) - 128
        assert diff.std() == pytest.approx(sigma * 255, rel=0.05)
        assert abs(diff.mean()) < 0.5
    assert not np.array_equal(C.corrupt(x, "gaussian_noise", 3, seed=1), C.corrupt(x, "gaussian_noise", 3, seed=2))


def test_blur_keeps_flat_images_and_smooths_more_with_severity():
    assert np.array_equal(C.corrupt(grey(90), "gaussian_blur", 5), grey(90))
    board = ((np.indices((32, 32)).sum(0) % 2) * 255).astype(np.uint8)
    x = np.repeat(board[None, :, :, None], 3, axis=3)
    stds = [C.corrupt(x, "gaussian_blur", s).astype(float).std() for s in (0, 1, 3, 5)]
    assert stds[0] > stds[1] > stds[2] > stds[3]


def test_jpeg_error_grows_as_quality_drops():
    x = noisy(n=4)
    mse = [float(((C.corrupt(x, "jpeg", s).astype(float) - x) ** 2).mean()) for s in (1, 3, 5)]
    assert 0 < mse[0] < mse[1] < mse[2]


def test_bad_input_is_one_clear_error():
    with pytest.raises(ImgclfError, match="unknown corruption 'fog'"):
        C.corrupt(noisy(), "fog", 1)
    with pytest.raises(ImgclfError, match="severity must be 0..5"):
        C.corrupt(noisy(), "jpeg", 6)
    with pytest.raises(ImgclfError, match="uint8 batch"):
        C.corrupt(noisy().astype(np.float32), "jpeg", 1)


def test_robustness_with_a_predictor_of_known_behaviour():
    """Classes 'dark' and 'bright' told apart by mean brightness: brightening hurts, contrast does not."""
    rng = np.random.default_rng(0)
    dark = np.clip(60 + rng.integers(-10, 10, (30, 16, 16, 3)), 0, 255).astype(np.uint8)
    bright = np.clip(190 + rng.integers(-10, 10, (30, 16, 16, 3)), 0, 255).astype(np.uint8)
    x = np.concatenate([dark, bright])
    y = np.array([0] * 30 + [1] * 30)

    def predict(batch):
        m = batch.reshape(len(batch), -1).mean(axis=1)
        p1 = (m > 128).astype(float)
        return np.stack([1 - p1, p1], axis=1)

    rob = C.robustness(predict, x, y, n=40, seed=0)
    assert rob["n"] == 40 and rob["clean"] == 1.0 and rob["severities"] == [1, 3, 5]
    acc = rob["accuracy"]
    assert acc["contrast"] == {1: 1.0, 3: 1.0, 5: 1.0}
    assert acc["brightness"][1] == 1.0  # +13: dark stays dark
    darks = int((y[C.subsample(60, 40, 0)] == 0).sum())
    assert acc["brightness"][5] == pytest.approx(1 - darks / 40)  # +76.5 turns every dark image bright
    assert rob["mean_corrupted"] == pytest.approx(np.mean([v for r in acc.values() for v in r.values()]))
    assert C.robustness(predict, x, y, n=1000)["n"] == 60  # never more than there are


def test_robustness_cuts_the_subsample_to_fit_a_time_limit():
    x = noisy(n=400, size=8)
    y = np.zeros(400, np.int64)
    now = [0.0]  # a fake clock: predicting costs exactly 1 ms per image, whatever the machine's load

    def slow(batch):
        now[0] += 0.001 * len(batch)
        return np.tile([0.9, 0.1], (len(batch), 1))

    rob = C.robustness(slow, x, y, n=400, time_limit=2.4, min_n=50, severities=(1,), clock=lambda: now[0])
    # clean pass 0.4 s; 2 s left for len(CORRUPTIONS) corrupted passes at 1.25 x 1 ms per image each
    clean = 0.001 * 400
    expected = max(50, int((2.4 - clean) / (1.25 * (clean / 400) * len(C.CORRUPTIONS))))
    assert 50 < expected < 400
    assert rob["reduced_from"] == 400 and rob["n"] == expected and rob["clean"] == 1.0
    assert rob["seconds"] == pytest.approx(clean + 0.001 * expected * len(C.CORRUPTIONS))
    full = C.robustness(slow, x, y, n=400, severities=(1,))
    assert full["n"] == 400 and "reduced_from" not in full

"""Calibration on constructed data with known answers: ECE, temperature fitting, halves, storage."""

from __future__ import annotations

import numpy as np
import pytest

from imgclf import calibration as cal
from imgclf.errors import ImgclfError
from imgclf.inference import apply_temperature


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def calibrated_logits(n: int = 20000, k: int = 10, scale: float = 1.5, seed: int = 0):
    """Logits and labels drawn from softmax(logits): a perfectly calibrated predictor by construction."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, scale, (n, k))
    p = softmax(z)
    y = (rng.random((n, 1)) > np.cumsum(p, axis=1)).sum(axis=1)  # inverse-CDF sampling of y ~ p
    return z, np.minimum(y, k - 1)


def test_perfectly_calibrated_predictor_has_ece_near_zero():
    z, y = calibrated_logits()
    probs = softmax(z)
    ece = cal.expected_calibration_error(probs, y)
    assert ece < 0.015
    # and the temperature that fits it is 1
    assert cal.fit_temperature(probs, y) == pytest.approx(1.0, abs=0.06)


def test_calibrated_top_label_confidences_have_ece_near_zero():
    """Top-label construction: confidence c, right with probability c."""
    rng = np.random.default_rng(1)
    n, k = 30000, 10
    conf = rng.uniform(0.15, 1.0, n)
    top = rng.integers(0, k, n)
    probs = np.repeat(((1 - conf) / (k - 1))[:, None], k, axis=1)
    probs[np.arange(n), top] = conf
    right = rng.random(n) < conf
    other = (top + rng.integers(1, k, n)) % k
    y = np.where(right, top, other)
    assert cal.expected_calibration_error(probs, y) < 0.015


def test_ece_known_values():
    # one-hot predictions, half of them right: confidence 1, accuracy 0.5 -> ECE 0.5
    probs = np.eye(4)[[0, 1, 2, 3, 0, 1, 2, 3]]
    y = np.array([0, 1, 2, 3, 1, 2, 3, 0])
    assert cal.expected_calibration_error(probs, y) == pytest.approx(0.5)
    # confidence 0.8 everywhere and exactly 8 of 10 right -> ECE 0
    p = np.full((10, 2), 0.2)
    p[:, 0] = 0.8
    y = np.array([0] * 8 + [1] * 2)
    assert cal.expected_calibration_error(p, y) == pytest.approx(0.0, abs=1e-12)
    # two bins: conf 0.9 all right (gap .1) and conf 0.6 all wrong (gap .6), equal sizes -> 0.35
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    y = np.array([0, 0, 0, 0])
    assert cal.expected_calibration_error(p, y) == pytest.approx(0.35)


def test_reliability_bins_add_up():
    z, y = calibrated_logits(n=3000)
    probs = softmax(z)
    bins = cal.reliability_bins(probs, y, n_bins=10)
    assert len(bins) == 10 and sum(b["count"] for b in bins) == 3000
    for b in bins:
        if b["count"]:
            assert b["lower"] <= b["confidence"] <= b["upper"] + 1e-12
            assert 0.0 <= b["accuracy"] <= 1.0
        else:
            assert b["confidence"] is None and b["accuracy"] is None
    conf = probs.max(1)
    assert bins[9]["count"] == int((conf > 0.9).sum())


def test_temperature_scaling_fixes_an_over_confident_predictor():
    z, y = calibrated_logits()
    over = softmax(3.0 * z)  # same ranking, three times too sharp
    before = cal.expected_calibration_error(over, y)
    t = cal.fit_temperature(over, y)
    assert t == pytest.approx(3.0, rel=0.08)
    after = cal.expected_calibration_error(apply_temperature(over, t), y)
    assert before > 0.08 and after < 0.02 and after < before / 4
    # an under-confident one gets T < 1
    under = softmax(0.5 * z)
    assert cal.fit_temperature(under, y) == pytest.approx(0.5, rel=0.08)


def test_calibrate_fits_on_one_half_and_reports_on_the_other():
    z, y = calibrated_logits(n=4000)
    over = softmax(2.5 * z)
    res = cal.calibrate(over, y, seed=3)
    assert res["fit_n"] + res["eval_n"] == 4000 and abs(res["fit_n"] - res["eval_n"]) <= 1
    assert res["temperature"] == pytest.approx(2.5, rel=0.15)
    assert res["ece_after"] < res["ece_before"] and res["nll_after"] < res["nll_before"]
    fit, ev = cal.split_halves(y, seed=3)
    # the reported numbers are exactly those of the eval half
    assert res["ece_before"] == pytest.approx(cal.expected_calibration_error(over[ev], y[ev]))
    assert res["temperature"] == pytest.approx(cal.fit_temperature(over[fit], y[fit]))
    assert res["accuracy"] == pytest.approx((over[ev].argmax(1) == y[ev]).mean())
    assert sum(b["count"] for b in res["bins_after"]) == res["eval_n"]
    assert "bins_before" not in cal.summary(res)


def test_split_halves_is_disjoint_stratified_and_seeded():
    y = np.array([0] * 7 + [1] * 10 + [2] * 3)
    fit, ev = cal.split_halves(y, seed=0)
    assert len(np.intersect1d(fit, ev)) == 0 and sorted(np.concatenate([fit, ev]).tolist()) == list(range(20))
    assert abs(len(fit) - len(ev)) <= 1
    for c in range(3):
        assert abs((y[fit] == c).sum() - (y[ev] == c).sum()) <= 1
    again = cal.split_halves(y, seed=0)
    assert np.array_equal(fit, again[0]) and np.array_equal(ev, again[1])
    assert not np.array_equal(fit, cal.split_halves(y, seed=1)[0])


def test_assess_uses_the_given_temperature_without_fitting():
    z, y = calibrated_logits(n=2000)
    over = softmax(2.0 * z)
    res = cal.assess(over, y, 2.0)
    assert res["fit_n"] == 0 and res["eval_n"] == 2000 and res["temperature"] == 2.0
    assert res["ece_after"] < res["ece_before"]
    assert res["ece_after"] == pytest.approx(cal.expected_calibration_error(softmax(z), y), abs=1e-6)


def test_bad_input_is_one_clear_error():
    with pytest.raises(ImgclfError, match="shape"):
        cal.expected_calibration_error(np.ones((3, 2)) / 2, np.array([0, 1]))
    with pytest.raises(ImgclfError, match="labels must lie"):
        cal.calibrate(np.ones((6, 2)) / 2, np.array([0, 1, 2, 0, 1, 0]))
    with pytest.raises(ImgclfError, match="at least 4"):
        cal.calibrate(np.ones((3, 2)) / 2, np.array([0, 1, 0]))


def test_stored_temperature_is_applied_by_the_classifier(tmp_path):
    import keras

    from imgclf.inference import load_classifier
    from imgclf.modelfile import read_meta, save_model

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.Dense(3)(x) * 20.0)
    model = keras.Model(inputs, outputs)
    path = save_model(model, tmp_path / "m.keras", {"class_names": ["a", "b", "c"], "input_size": 8,
                                                       "resize": "stretch", "temperature": 1.0})
    imgs = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3)).astype(np.uint8)
    raw = load_classifier(path).predict_proba(imgs)
    meta = cal.store_temperature(path, {"temperature": 2.5, "ece_before": 0.2, "ece_after": 0.05,
                                        "bins_before": [], "bins_after": []})
    assert meta["temperature"] == 2.5 and read_meta(path)["calibration"]["ece_after"] == 0.05
    assert "bins_before" not in read_meta(path)["calibration"]
    clf = load_classifier(path)
    assert clf.temperature == 2.5
    assert np.allclose(clf.predict_proba(imgs, calibrated=False), raw, atol=1e-6)
    assert np.allclose(clf.predict_proba(imgs), apply_temperature(raw, 2.5), atol=1e-5)
    assert clf.predict_proba(imgs).max(1).mean() < raw.max(1).mean()  # softer
    assert np.array_equal(clf.predict_proba(imgs).argmax(1), raw.argmax(1))  # same decisions

"""Calibration on constructed data with known answers: ECE, temperature fitting, halves, folds, when a
temperature is kept, storage; and `train` storing the temperature in the model it writes, with or without a
report."""

from __future__ import annotations

import numpy as np
import pytest

from imgclf.evaluation import calibration as cal
from imgclf.errors import ImgclfError
from imgclf.runtime.classifier import apply_temperature


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

    from imgclf.runtime import load_classifier
    from imgclf.runtime.modelfile import read_meta, save_model

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.Dense(3)(x) * 20.0)
    model = keras.Model(inputs, outputs)
    meta = {"class_names": ["a", "b", "c"], "input_size": 8, "resize": "stretch"}
    raw_path = save_model(model, tmp_path / "raw.keras", {**meta, "temperature": 1.0})
    imgs = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3)).astype(np.uint8)
    raw = load_classifier(raw_path).predict_proba(imgs)
    # what train stores: fit_for_model's temperature and record, written once with the model
    z, y = calibrated_logits(n=400, k=3)
    t, record = cal.fit_for_model(softmax(2.5 * z), y, seed=0)
    path = save_model(model, tmp_path / "m.keras", {**meta, "temperature": t, "calibration": record})
    assert read_meta(path)["temperature"] == t and read_meta(path)["calibration"]["ece_after"] == record["ece_after"]
    assert "bins_before" not in read_meta(path)["calibration"]
    clf = load_classifier(path)
    assert clf.temperature == pytest.approx(t) and t > 1.5
    assert np.allclose(clf.predict_proba(imgs, calibrated=False), raw, atol=1e-6)
    assert np.allclose(clf.predict_proba(imgs), apply_temperature(raw, t), atol=1e-5)
    assert clf.predict_proba(imgs).max(1).mean() < raw.max(1).mean()  # softer
    assert np.array_equal(clf.predict_proba(imgs).argmax(1), raw.argmax(1))  # same decisions


def test_fit_for_model_fits_on_the_whole_split_and_cross_validates():
    """A large, over-confident validation split: T > 1 fitted on all of it, out-of-fold numbers stored."""
    z, y = calibrated_logits(n=1000)
    over = softmax(2.0 * z)
    t, record = cal.fit_for_model(over, y, seed=4)
    assert t == cal.fit_temperature(over, y) and t == pytest.approx(2.0, rel=0.15)
    assert set(record) == set(cal.STORED_NUMBERS + cal.CV_NUMBERS)
    cv = cal.cross_validate(over, y, seed=4)
    assert record == {**{k: v for k, v in cv.items() if k != "per_fold"}, "temperature": t, "fit_n": 1000}
    assert record["folds"] == cal.FOLDS and record["folds_improved"] == cal.FOLDS and record["seed"] == 4
    assert record["eval_n"] == 1000 and record["nll_after"] < record["nll_before"]
    assert record["ece_after"] < record["ece_before"] / 2
    # the pooled out-of-fold NLL is each fold's NLL at its own T, weighted by fold size
    folds = cv["per_fold"]
    assert sum(f["n"] for f in folds) == 1000 and all(f["temperature"] > 1.5 for f in folds)
    assert cv["nll_after"] == pytest.approx(sum(f["n"] * f["nll_after"] for f in folds) / 1000)


def test_a_tiny_validation_split_keeps_t_1_and_says_why():
    z, y = calibrated_logits(n=cal.MIN_IMAGES - 1)
    t, record = cal.fit_for_model(softmax(3.0 * z), y)  # over-confident, but too few images to trust a fit
    assert t == 1.0 and record == {"skipped": f"calibration: {cal.MIN_IMAGES - 1} validation images, fewer than "
                                              f"the {cal.MIN_IMAGES} a temperature needs to be trusted: T = 1 kept"}
    assert cal.stored_calibration({"temperature": t, "calibration": record}) == (1.0, record)
    # enough images, but a class with fewer than one per fold
    z, y = calibrated_logits(n=400, k=3)
    y = np.where(y == 2, 0, y)
    y[:cal.MIN_PER_CLASS - 1] = 2
    t, record = cal.fit_for_model(softmax(3.0 * z), y)
    assert t == 1.0 and record["skipped"].startswith(f"calibration: class 2 has {cal.MIN_PER_CLASS - 1} validation "
                                                     f"images, fewer than the {cal.MIN_PER_CLASS} per class")
    t, record = cal.fit_for_model(np.full((3, 2), 0.5), np.array([0, 1, 0]))
    assert t == 1.0 and "3 validation images" in record["skipped"]


def test_a_temperature_that_would_not_help_is_not_kept():
    """A calibrated predictor (true T = 1): a fitted T only fits noise. The cross-validation sees that
    (lower held-out NLL in too few folds) for most seeds, and says so with its numbers."""
    reasons = []
    for seed in range(10):
        z, y = calibrated_logits(n=150, k=4, seed=seed)
        t, record = cal.fit_for_model(softmax(z), y, seed=seed)
        if "skipped" in record:
            assert t == 1.0
            reasons.append(record["skipped"])
        else:  # a kept T is one that lowered the held-out NLL in most folds, and it is close to 1
            assert record["folds_improved"] >= cal.FOLDS_NEEDED and abs(np.log(t)) < 0.3
    assert len(reasons) >= 7
    assert all(r.startswith("calibration: a fitted temperature would not lower the held-out NLL reliably "
                            "(cross-validated NLL ") and r.endswith("needed): T = 1 kept") for r in reasons)
    # against one fold holding what the others contradict: over-confident everywhere but one fold
    z, y = calibrated_logits(n=500, seed=3)
    fold = cal.stratified_folds(y, seed=0)
    probs = np.where((fold == 0)[:, None], softmax(0.3 * z), softmax(1.3 * z))
    t_all = cal.fit_temperature(probs, y)
    cv = cal.cross_validate(probs, y, seed=0)
    assert cv["folds_improved"] == cal.FOLDS - 1  # fold 0 gets worse with the others' T
    assert cal.fit_for_model(probs, y, seed=0)[0] == (t_all if cv["nll_after"] < cv["nll_before"] else 1.0)


def test_fit_for_model_is_deterministic_by_seed():
    z, y = calibrated_logits(n=600, seed=2)
    over = softmax(1.7 * z)
    a, b = cal.fit_for_model(over, y, seed=7), cal.fit_for_model(over, y, seed=7)
    assert a == b
    other = cal.fit_for_model(over, y, seed=8)
    assert other[0] == a[0]  # T is fitted on the whole split; the seed only deals the folds
    assert other[1]["nll_after"] != a[1]["nll_after"] and other[1]["seed"] == 8
    assert np.array_equal(cal.stratified_folds(y, seed=7), cal.stratified_folds(y, seed=7))
    assert not np.array_equal(cal.stratified_folds(y, seed=7), cal.stratified_folds(y, seed=8))


def test_stratified_folds_hold_every_class_evenly():
    y = np.array([0] * 23 + [1] * 7 + [2] * 5 + [3] * 12)
    fold = cal.stratified_folds(y, k=5, seed=1)
    sizes = np.bincount(fold, minlength=5)
    assert sizes.sum() == len(y) and sizes.max() - sizes.min() <= 1
    for c in range(4):
        per = np.bincount(fold[y == c], minlength=5)
        assert per.max() - per.min() <= 1 and (c == 3 or per.min() >= 1)


def test_model_card_and_report_describe_a_cross_validated_fit():
    from imgclf.report.sections import calibration as calibration_section
    from imgclf.report.sources import EvalSet  # noqa: F401  (the section's module loads with it)
    from imgclf.runtime.card import calibration_rows

    z, y = calibrated_logits(n=300, k=3)
    probs = softmax(2.0 * z)
    t, record = cal.fit_for_model(probs, y, seed=2)
    rows = dict(calibration_rows({"temperature": t, "calibration": record}))
    assert rows["fitted on"] == (f"all 300 validation images; measured by {cal.FOLDS}-fold cross-validation "
                                 f"(seed 2), held-out NLL lower in {record['folds_improved']} of {cal.FOLDS} folds")
    assert "accuracy on the validation split (single pass)" in rows
    section = calibration_section(cal.assess(probs, y, t), record, "test")
    assert f"lowered the held-out NLL in {record['folds_improved']} of {cal.FOLDS} folds" in section["note"]
    assert section["rows"][3][0] == "ECE, cross-validated at training (300 images)"
    skipped = calibration_section(cal.assess(probs[:50], y[:50], 1.0), cal.fit_for_model(probs[:50], y[:50])[1],
                                  "test")
    assert ("No temperature was fitted when the model was trained, so T = 1.000. Why: 50 validation images, fewer "
            f"than the {cal.MIN_IMAGES} a temperature needs to be trusted: T = 1 kept.") in skipped["note"]
    # an older model's half/half record still reads, and is still described as such
    old = {"temperature": 1.5, "calibration": {"temperature": 1.5, "fit_n": 50, "eval_n": 51, "n_bins": 15,
                                               "ece_before": 0.1, "ece_after": 0.05, "nll_before": 0.9,
                                               "nll_after": 0.8, "accuracy": 0.7, "seed": 0}}
    assert cal.stored_calibration(old) == (1.5, old["calibration"])
    assert dict(calibration_rows(old))["fitted on"] == "50 validation images (seed 0); measured on the other 51"


def test_stored_calibration_checks_what_it_reads():
    z, y = calibrated_logits(n=200)
    t, record = cal.fit_for_model(softmax(2.0 * z), y)
    assert cal.stored_calibration({"temperature": t, "calibration": record}) == (t, record)
    assert cal.stored_calibration({}) == (1.0, None)  # a model saved without one
    assert cal.stored_calibration({"temperature": 1.0, "calibration": {"skipped": "x" * 5000}}) == \
        (1.0, {"skipped": "x" * 300})  # bounded echo
    for bad, field in [({"temperature": "2"}, "temperature"), ({"temperature": float("nan")}, "temperature"),
                       ({"temperature": -1.0}, "temperature"), ({"temperature": True}, "temperature"),
                       ({"temperature": t, "calibration": [1]}, "calibration"),
                       ({"temperature": t, "calibration": {"skipped": 3}}, "calibration.skipped"),
                       ({"temperature": t, "calibration": {**record, "ece_after": None}}, "calibration.ece_after"),
                       ({"temperature": t, "calibration": {**record, "fit_n": "9" * 100}}, "calibration.fit_n"),
                       ({"temperature": t, "calibration": {**record, "folds": "5"}}, "calibration.folds"),
                       ({"temperature": t + 1, "calibration": record}, "calibration.temperature")]:
        with pytest.raises(ImgclfError) as e:
            cal.stored_calibration(bad, "m.keras")
        assert str(e.value).startswith(f"m.keras: {field}") and len(str(e.value)) < 200


def _val_set(run_dir):
    """The run's validation ImageSet (rebuilt from its config), the model's metadata and the config."""
    import yaml

    from imgclf.data.dataset import load_dataset
    from imgclf.runtime.modelfile import read_meta

    c = yaml.safe_load((run_dir / "config.yaml").read_text())
    data = load_dataset(c["data"], None, c["input_size"], c["resize"], c["val_fraction"], c["split_seed"],
                        c["limit_per_class"])
    return data.val, read_meta(run_dir / "model.keras"), c


def test_train_without_report_stores_the_temperature_fitted_on_single_pass_probs(tmp_path):
    """`imgclf train --no-report --tta`: T is in model.keras, fitted exactly as fit_for_model() does on
    the single-pass (not TTA) validation probabilities, folds seeded by the split seed."""
    import json

    from conftest import make_folder
    from imgclf.cli import main
    from imgclf.runtime import load_classifier

    # three close greys: after one epoch the model is over-confident and T is fitted inside its bounds
    data = make_folder(tmp_path / "data", per_class=70, size=16,
                       classes={"a": (98, 98, 98), "b": (128, 128, 128), "c": (158, 158, 158)})
    run = tmp_path / "run"
    assert main(["train", "-d", str(data), "--recipe", "seed", "-e", "1", "--input-size", "16", "--batch-size", "32",
                 "--val-fraction", "0.5", "--split-seed", "5", "--tta", "--no-report", "-q", "-o", str(run)]) == 0
    assert not (run / "report.html").exists()
    val, meta, c = _val_set(run)
    assert c["tta"] is True and len(val) == 105 >= cal.MIN_IMAGES
    clf = load_classifier(run / "model.keras")
    single = clf.predict_proba(val.images(np.arange(len(val))), calibrated=False)
    want_t, want = cal.fit_for_model(single, val.y, seed=5)
    got = meta["calibration"]
    assert got["seed"] == 5 and got["fit_n"] == got["eval_n"] == 105 and got["folds"] == cal.FOLDS
    assert meta["temperature"] == got["temperature"] == pytest.approx(want_t, rel=1e-5)
    for key in ("ece_before", "ece_after", "nll_before", "nll_after", "accuracy", "folds_improved"):
        assert got[key] == pytest.approx(want[key], rel=1e-3, abs=1e-4), key
    assert cal.T_BOUNDS[0] * 1.1 < meta["temperature"] < cal.T_BOUNDS[1] / 1.1 and meta["temperature"] != 1.0
    assert clf.temperature == meta["temperature"]
    # not the TTA probabilities (which the run's metrics use)
    tta = clf.predict_proba(val.images(np.arange(len(val))), tta=True, calibrated=False)
    assert cal.fit_temperature(tta, val.y) != pytest.approx(want_t, rel=1e-4)  # (noise images: a small change)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["calibration"] == got


def test_train_records_why_no_temperature_was_fitted(tmp_path):
    import json

    import imgclf
    from conftest import make_folder

    data = make_folder(tmp_path / "data", per_class=4, size=16)
    run = imgclf.train(data=str(data), epochs=1, input_size=16, batch_size=8, val_fraction=0.25, report=False,
                       run_dir=tmp_path / "run", verbose=0)
    _, meta, _ = _val_set(run.run_dir)
    reason = f"calibration: 3 validation images, fewer than the {cal.MIN_IMAGES} a temperature needs to be trusted: " \
             "T = 1 kept"
    assert meta["temperature"] == 1.0 and meta["calibration"] == {"skipped": reason}
    assert json.loads((run.run_dir / "metrics.json").read_text())["calibration"] == {"skipped": reason}
    assert run.metrics["calibration"] == {"skipped": reason}

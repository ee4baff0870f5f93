"""Training end to end: run directory, the .keras contract, exact resume, configs, real images."""

import csv
import json

import keras
import numpy as np
import pytest

import imgclf
from imgclf.config import make_config
from imgclf.errors import ConfigError, ImgclfError
from imgclf.runtime.modelfile import read_meta


def test_run_directory_contents(trained_colour_model):
    run, _ = trained_colour_model
    names = {p.name for p in run.run_dir.iterdir()}
    assert {"config.yaml", "history.csv", "metrics.json", "model.keras", "learning_curves.png",
            "confusion_matrix.png", "classification_report.txt"} <= names
    assert "backup" not in names  # removed once training completed
    rows = list(csv.DictReader(open(run.run_dir / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds", "lr"} <= set(rows[0])
    metrics = json.loads((run.run_dir / "metrics.json").read_text())
    assert metrics["epochs_run"] == 4 and metrics["weights"] == "final"
    assert 0 <= metrics["val"]["accuracy"] <= 1 and metrics["train"]["n"] == 72
    assert metrics["val"]["accuracy"] > 0.6  # colours are easy: well above the 1/3 of chance


def test_keras_file_loads_everywhere_with_the_same_predictions(trained_colour_model):
    import tensorflow as tf

    run, _ = trained_colour_model
    x = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3)).astype(np.uint8)
    via_tf = tf.keras.models.load_model(run.model_path)
    via_keras = keras.saving.load_model(run.model_path, safe_mode=True)
    model, meta = imgclf.load_model(run.model_path)
    p_tf = via_tf.predict(x, verbose=0)
    assert np.allclose(p_tf, via_keras.predict(x.astype("float32"), verbose=0), atol=1e-6)
    assert np.allclose(p_tf, model.predict(x, verbose=0), atol=1e-6)
    assert model.layers[1].name == "scale_0_1"  # the seed's [0, 1] scaling lives in the model
    assert meta["class_names"] == ["blue", "green", "red"] and meta["input_size"] == 32
    assert meta["resize"] == "stretch" and meta["split"]["seed"] == 0 and len(meta["split"]["train_files_hash"]) == 16


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt("simulated interruption after epoch 2")


@pytest.mark.slow
def test_resume_matches_an_uninterrupted_run(colour_folder, tmp_path):
    cfg = dict(data=str(colour_folder), epochs=4, batch_size=8, augment_flip=True, augment_translate=2,
               seed=7, verbose=0, report=False,
               lookahead_start=0.3, bias_lr_scale=4,  # their state must survive the interruption too
               augment_crop=0.5, augment_color=0.3, mixup=0.2, cutmix=1.0)  # and the photos' draws
    full = imgclf.train(run_dir=tmp_path / "full", **cfg)
    with pytest.raises(KeyboardInterrupt):
        imgclf.train(run_dir=tmp_path / "cut", callbacks=[_Interrupt()], **cfg)
    assert not (tmp_path / "cut" / "model.keras").exists()
    assert (tmp_path / "cut" / "backup").is_dir()
    resumed = imgclf.train(resume=tmp_path / "cut", verbose=0)
    a, _ = imgclf.load_model(full.model_path)
    b, _ = imgclf.load_model(resumed.model_path)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        assert np.abs(wa - wb).max() < 1e-5
    rows = list(csv.DictReader(open(tmp_path / "cut" / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    # and the interruption mattered: a model trained 2 epochs only is different
    short = imgclf.train(run_dir=tmp_path / "short", **{**cfg, "epochs": 2})
    c, _ = imgclf.load_model(short.model_path)
    assert max(np.abs(x - y).max() for x, y in zip(a.get_weights(), c.get_weights())) > 1e-3


@pytest.mark.slow
def test_resume_with_ema_matches_an_uninterrupted_run(colour_folder, tmp_path):
    # SwapEMA swaps the averages in for validation; were they still in the model when the next epoch
    # began, Lookahead's average would start from them in an uninterrupted run but from the trained
    # weights (the backup) in a resumed one
    cfg = dict(data=str(colour_folder), epochs=4, batch_size=8, seed=7, verbose=0, report=False,
               ema=True, ema_momentum=0.9, lookahead_start=0.3)
    full = imgclf.train(run_dir=tmp_path / "full", **cfg)
    with pytest.raises(KeyboardInterrupt):
        imgclf.train(run_dir=tmp_path / "cut", callbacks=[_Interrupt()], **cfg)
    resumed = imgclf.train(resume=tmp_path / "cut", verbose=0)
    a, _ = imgclf.load_model(full.model_path)
    b, _ = imgclf.load_model(resumed.model_path)
    assert max(np.abs(wa - wb).max() for wa, wb in zip(a.get_weights(), b.get_weights())) < 1e-5
    full_rows = list(csv.DictReader(open(tmp_path / "full" / "history.csv")))
    cut_rows = list(csv.DictReader(open(tmp_path / "cut" / "history.csv")))
    assert [int(r["epoch"]) for r in cut_rows] == [1, 2, 3, 4]
    for r, s in zip(full_rows, cut_rows):  # validation (on the averages) the same each epoch
        assert abs(float(r["val_loss"]) - float(s["val_loss"])) < 1e-5


class _StopAfterTwo(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            self.model.stop_training = True  # as a time budget or early stopping ends a run


@pytest.mark.slow
def test_ema_run_stopped_early_keeps_the_averages(colour_folder, tmp_path):
    run = imgclf.train(data=str(colour_folder), epochs=4, batch_size=8, seed=7, verbose=0, report=False,
                       ema=True, ema_momentum=0.9, run_dir=tmp_path / "r", callbacks=[_StopAfterTwo()])
    rows = list(csv.DictReader(open(tmp_path / "r" / "history.csv")))
    assert len(rows) == 2  # the saved model is the one the last validation measured: the averages
    assert abs(run.metrics["val"]["loss"] - float(rows[-1]["val_loss"])) < 1e-5


def test_keep_best_with_ema_keeps_the_averages_that_validation_measured(colour_folder, tmp_path):
    run = imgclf.train(data=str(colour_folder), epochs=3, batch_size=8, seed=5, verbose=0, report=False,
                       ema=True, ema_momentum=0.9, keep_best=True, run_dir=tmp_path / "r")
    rows = list(csv.DictReader(open(tmp_path / "r" / "history.csv")))
    best = max(rows, key=lambda r: float(r["val_accuracy"]))  # the first best, as RunState keeps it
    assert run.metrics["weights"] == f"best (epoch {best['epoch']})"
    assert abs(run.metrics["val"]["loss"] - float(best["val_loss"])) < 1e-5


@pytest.mark.slow
def test_seeded_runs_are_deterministic(colour_folder, tmp_path):
    cfg = dict(data=str(colour_folder), epochs=1, batch_size=8, seed=3, verbose=0, report=False)
    r1 = imgclf.train(run_dir=tmp_path / "a", **cfg)
    r2 = imgclf.train(run_dir=tmp_path / "b", **cfg)
    w1, w2 = imgclf.load_model(r1.model_path)[0].get_weights(), imgclf.load_model(r2.model_path)[0].get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(w1, w2))


def test_bad_input_leaves_no_run_directory(tmp_path):
    with pytest.raises(ImgclfError, match="folder not found"):
        imgclf.train(data=str(tmp_path / "missing"), run_dir=tmp_path / "run", verbose=0)
    assert not (tmp_path / "run").exists()


def test_keep_best_and_class_weights(colour_folder, tmp_path):
    run = imgclf.train(data=str(colour_folder), epochs=3, batch_size=8, keep_best=True, class_weight="balanced",
                       run_dir=tmp_path / "r", verbose=0, report=False)
    assert run.metrics["weights"].startswith("best (epoch ")


def test_config_precedence_and_errors(tmp_path):
    (tmp_path / "c.yaml").write_text("epochs: 3\nlearning_rate: 0.05\nrecipe: seed\n")
    cfg = make_config(tmp_path / "c.yaml", epochs=5)
    assert (cfg.epochs, cfg.learning_rate, cfg.batch_size) == (5, 0.05, 64)
    (tmp_path / "c.toml").write_text("batch_size = 32\n")
    assert make_config(tmp_path / "c.toml").batch_size == 32
    (tmp_path / "bad.yaml").write_text("epochz: 3\n")
    with pytest.raises(ConfigError, match="bad.yaml: unknown config field 'epochz'"):
        make_config(tmp_path / "bad.yaml")
    (tmp_path / "bad2.yaml").write_text("epochs: lots\n")
    with pytest.raises(ConfigError, match="field 'epochs' expects int"):
        make_config(tmp_path / "bad2.yaml")
    with pytest.raises(ConfigError, match="resize"):
        make_config(resize="zoom")


def test_defaults_are_the_seed_recipe():
    cfg = make_config()
    assert (cfg.model, cfg.optimizer, cfg.learning_rate, cfg.momentum, cfg.batch_size, cfg.epochs) == \
        ("seed_cnn", "sgd", 0.01, 0.9, 64, 30)
    model = imgclf.create_model("seed_cnn", 10, (32, 32, 3))
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [32, 32, 64, 64]
    assert sum(isinstance(l, keras.layers.BatchNormalization) for l in model.layers) == 4
    assert sum(isinstance(l, keras.layers.MaxPooling2D) for l in model.layers) == 2
    assert model.layers[-1].activation.__name__ == "softmax"


@pytest.mark.slow
def test_seed_recipe_learns_real_cifar_images(cifar_jpeg, tmp_path):
    """A few thousand real images, a few epochs: clearly better than chance (10%)."""
    run = imgclf.train(data=str(cifar_jpeg), limit_per_class=300, epochs=8, batch_size=32,
                       run_dir=tmp_path / "real", verbose=0, report=False)
    assert len(run.config.data) and run.metrics["train"]["n"] == 2700
    assert run.metrics["val"]["accuracy"] >= 0.35, run.metrics["val"]

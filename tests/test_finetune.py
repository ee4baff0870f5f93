"""Fine-tuning: --init-from reuses a model's backbone with a new head, freeze_epochs freezes it
(batch norm included) and unfreezes it, backbone_lr_scale slows it, resume across the unfreezing
is exact, and keras.applications backbones keep the model contract (0..255 input, safe-mode load,
ONNX parity, predict, serve, Grad-CAM). No test downloads anything: the weights files are made here."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import imgclf
from conftest import make_folder
from deploy_helpers import ServerThread, make_tiny_model, png_bytes, random_image
from imgclf.cli import main
from imgclf.config import make_config
from imgclf.errors import ConfigError
from imgclf.models.registry import create_model
from imgclf.runtime.modelfile import load_model, read_meta, save_model
from imgclf.training import finetune

FAST = dict(model="fastnet", widths=(16, 32, 32))  # a small fastnet: whitening (frozen), BN shifts, GELU


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A small fastnet trained for two steps on generated images (10 classes), saved by imgclf."""
    model = FAST["model"]
    return make_tiny_model(tmp_path_factory.mktemp("source") / "source.keras", model=model, widths=FAST["widths"])


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("colours") / "data", per_class=12)


def weights_of(layers) -> list[np.ndarray]:
    return [np.array(w) for layer in layers for w in layer.get_weights()]


def same(a, b) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b))


def save_imgclf(model, path, classes, size=32):
    meta = {"class_names": list(classes), "input_size": size, "resize": "stretch", "model": model.name,
            "temperature": 1.0}
    return save_model(model, path, meta)


# --- init_from: the backbone reused, a new head --------------------------------------------

def test_init_from_reuses_the_backbone_with_a_new_head(source):
    src, _ = load_model(source)
    cfg = finetune.resolve(make_config(init_from=str(source)))
    assert cfg.init_from_sha256 == finetune.file_sha256(source)
    model = finetune.build_model(cfg, 3)
    assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 3)
    backbone, src_backbone = finetune.backbone_layers(model), finetune.backbone_layers(src)
    assert [lyr.name for lyr in backbone] == [lyr.name for lyr in src_backbone] and len(backbone) == 13
    assert same(weights_of(backbone), weights_of(src_backbone))
    assert not model.get_layer("whiten").trainable  # the file's frozen whitening stays frozen
    head = finetune.split_head(model)[1]
    assert [lyr.name for lyr in head] == ["logits", "probs"] and head[0].kernel.shape == (32, 3)
    # the same features as the file's model, on the same input
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype("float32")
    feats = keras.Model(model.inputs[0], finetune.split_head(model)[0])
    src_feats = keras.Model(src.inputs[0], finetune.split_head(src)[0])
    np.testing.assert_array_equal(np.asarray(feats(x)), np.asarray(src_feats(x)))
    # a convolutional backbone also runs at another input size (and precision), with the same weights
    wide = finetune.build_model(make_config(init_from=str(source), input_size=48, precision="mixed_bfloat16"), 5)
    assert wide.input_shape == (None, 48, 48, 3) and wide.output_shape == (None, 5)
    assert wide.get_layer("g1_conv1").dtype_policy.name == "mixed_bfloat16"
    assert same(weights_of(finetune.backbone_layers(wide)), weights_of(src_backbone))


def test_the_shipped_cifar10_model_is_a_source():
    cfg = finetune.resolve(make_config(init_from="cifar10"))
    path = finetune.source_path("cifar10")
    assert path.name == "cifar10.keras" and cfg.init_from_sha256 == finetune.file_sha256(path)
    model = finetune.build_model(cfg, 4)
    assert model.output_shape == (None, 4) and model.name == "fastnet"
    assert finetune.meta_fields(cfg)["init_from"]["source"] == "cifar10"


def test_a_backbone_bound_to_its_input_size_is_refused(tmp_path):
    inputs = keras.Input((32, 32, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, name="conv")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(8, name="hidden")(x)  # its weights depend on the image size
    out = keras.layers.Dense(2, activation="softmax", name="probs")(x)
    path = save_imgclf(keras.Model(inputs, out, name="bound"), tmp_path / "bound.keras", ["a", "b"])
    assert finetune.build_model(make_config(init_from=str(path)), 3).output_shape == (None, 3)
    with pytest.raises(ConfigError, match=r"init_from: bound.keras: its backbone cannot run at input_size 40 .*"
                                          r"trained at 32 px \(--input-size 32\)"):
        finetune.build_model(make_config(init_from=str(path), input_size=40), 3)


def _not_imgclf(tmp_path):
    path = tmp_path / "plain.keras"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save(path)  # a Keras file without imgclf.json
    return path


@pytest.mark.parametrize("make,message", [
    (lambda d: d / "missing.keras", "missing.keras: not found (expected an imgclf .keras model file"),
    (lambda d: (d / "notes.keras").write_text("not a zip") and d / "notes.keras", "not a valid .keras model file"),
    (_not_imgclf, "no imgclf.json inside"),
    (lambda d: (d / "m.onnx").write_bytes(b"x") and d / "m.onnx", "an ONNX export cannot be trained"),
    (lambda d: d, "not a file"),
])
def test_a_bad_init_from_is_one_error_line(make, message, colours, tmp_path, capsys):
    bad = make(tmp_path)
    rc = main(["train", "--data", str(colours), "--init-from", str(bad), "--out", str(tmp_path / "run"), "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: init_from: ") and message in err and "\n" not in err, err
    assert not (tmp_path / "run").exists()


def test_a_changed_init_from_file_and_other_misuse_are_refused(source, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="the file has changed"):
        finetune.resolve(make_config(init_from=str(source), init_from_sha256="0" * 64))
    with pytest.raises(ConfigError, match="'init_from_sha256' needs init_from"):
        finetune.resolve(make_config(init_from_sha256="0" * 64))
    with pytest.raises(ConfigError, match="expects a sha256"):
        make_config(init_from=str(source), init_from_sha256="abc")
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(ConfigError, match="'freeze_epochs' needs the tensorflow backend"):
        finetune.resolve(make_config(freeze_epochs=1))


# --- training: freeze, unfreeze, a slower backbone ----------------------------------------

class Recorder(keras.callbacks.Callback):
    """The backbone's weights at the start and after each epoch, and its trainable flags per epoch."""

    def __init__(self):
        super().__init__()
        self.flags, self.weights, self.head = [], [], []

    def _backbone(self):
        return [lyr for lyr in finetune.backbone_layers(self.model) if lyr.name != "whiten"]

    def on_train_begin(self, logs=None):
        self.start = weights_of(finetune.backbone_layers(self.model))
        self.head.append(weights_of(finetune.split_head(self.model)[1]))

    def on_epoch_begin(self, epoch, logs=None):
        self.flags.append({lyr.trainable for lyr in self._backbone()})

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(weights_of(finetune.backbone_layers(self.model)))
        self.head.append(weights_of(finetune.split_head(self.model)[1]))


def test_freeze_then_unfreeze(source, colours, tmp_path):
    rec = Recorder()
    run = imgclf.train(data=str(colours), init_from=str(source), freeze_epochs=1, epochs=2, batch_size=8,
                       learning_rate=0.05, run_dir=tmp_path / "run", verbose=0, report=False, callbacks=[rec])
    src_backbone = weights_of(finetune.backbone_layers(load_model(source)[0]))
    assert same(rec.start, src_backbone)  # the backbone starts as the file's
    assert rec.flags == [{False}, {True}]  # frozen in epoch 1, trained in epoch 2
    assert same(rec.weights[0], src_backbone)  # a frozen epoch changes nothing, BN statistics included
    assert not same(rec.weights[1], src_backbone)
    assert not same(rec.head[0], rec.head[1])  # while the head learns
    model, meta = load_model(run.model_path)
    assert model.output_shape == (None, 3) and model.get_layer("g1_conv1").trainable
    assert meta["init_from"]["sha256"] == finetune.file_sha256(source) == run.config.init_from_sha256
    assert meta["init_from"]["source"] == str(source) and meta["model"] == "fastnet"
    assert f"init_from_sha256: {run.config.init_from_sha256}" in (tmp_path / "run" / "config.yaml").read_text()


def test_backbone_lr_scale_scales_the_backbone_steps_only(source):
    from imgclf.training import build_compiled_model

    x = np.random.default_rng(1).integers(0, 256, (8, 32, 32, 3)).astype("float32")
    y = np.arange(8) % 3
    deltas = {}
    for scale in (1.0, 0.25):
        keras.utils.set_random_seed(0)
        cfg = finetune.resolve(make_config(init_from=str(source), momentum=0.0, learning_rate=0.1,
                                           backbone_lr_scale=scale))
        model = build_compiled_model(cfg, 3)
        before = weights_of(model.layers)
        model.train_on_batch(x, y)
        deltas[scale] = {v.path: np.asarray(v) - b for v, b in zip(model.weights, before)}
        backbone = {v.path for lyr in finetune.backbone_layers(model) for v in lyr.trainable_weights}
    conv = "g2_conv1/kernel"
    assert conv in backbone and np.abs(deltas[1.0][conv]).max() > 0
    for key, factor in ((conv, 0.25), ("logits/kernel", 1.0)):  # float32 differences: to 1e-3 of the step
        full = deltas[1.0][key]
        np.testing.assert_allclose(deltas[0.25][key], factor * full, rtol=0, atol=1e-3 * np.abs(full).max())


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise KeyboardInterrupt("simulated interruption after epoch 1")


@pytest.mark.slow
def test_resume_across_the_unfreezing_is_exact(source, colours, tmp_path):
    """Interrupted in the frozen phase, resumed: the rest of the frozen phase and the unfrozen
    epoch are those of an uninterrupted run, digit for digit."""
    cfg = dict(data=str(colours), init_from=str(source), freeze_epochs=2, epochs=3, batch_size=8,
               backbone_lr_scale=0.5, augment_flip=True, seed=5, verbose=0, report=False)
    full = imgclf.train(run_dir=tmp_path / "full", **cfg)
    with pytest.raises(KeyboardInterrupt):
        imgclf.train(run_dir=tmp_path / "cut", callbacks=[_Interrupt()], **cfg)
    resumed = imgclf.train(resume=tmp_path / "cut", verbose=0)
    a, b = load_model(full.model_path)[0].get_weights(), load_model(resumed.model_path)[0].get_weights()
    assert same(a, b)
    assert read_meta(resumed.model_path)["init_from"] == read_meta(full.model_path)["init_from"]
    # and the unfrozen epoch mattered: frozen for all three epochs, the backbone would be the file's
    src = weights_of(finetune.backbone_layers(load_model(source)[0]))
    assert not same(weights_of(finetune.backbone_layers(load_model(full.model_path)[0])), src)


# --- keras.applications backbones -----------------------------------------------------------

def test_mobilenet_loads_a_local_weights_file(tmp_path):
    """The weights option: a .weights.h5 file made here (no download) loads into the backbone."""
    made = keras.applications.MobileNetV3Small(input_shape=(32, 32, 3), include_top=False, pooling="avg",
                                               weights=None, include_preprocessing=True)
    rng = np.random.default_rng(0)
    made.set_weights([w + rng.normal(0, 0.01, w.shape).astype(w.dtype) for w in made.get_weights()])
    made.save_weights(tmp_path / "backbone.weights.h5")
    model = create_model("mobilenetv3small", 3, (48, 48, 3), weights=str(tmp_path / "backbone.weights.h5"))
    assert same(weights_of(finetune.backbone_layers(model)), [np.array(w) for w in made.get_weights()])
    assert model.output_shape == (None, 3)
    assert [lyr.name for lyr in finetune.split_head(model)[1]] == ["logits", "probs"]
    # 0..255 pixels in: the first layer is MobileNetV3's own Rescaling to [-1, 1]; no Lambda anywhere
    first = model.layers[1]
    assert isinstance(first, keras.layers.Rescaling) and first.scale == pytest.approx(1 / 127.5) and first.offset == -1
    assert not [lyr for lyr in model.layers if isinstance(lyr, keras.layers.Lambda)]
    path = save_imgclf(model, tmp_path / "m.keras", ["a", "b", "c"], size=48)
    x = rng.integers(0, 256, (2, 48, 48, 3)).astype("float32")
    np.testing.assert_allclose(load_model(path)[0].predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    with pytest.raises(ConfigError, match="weights: .*missing.h5: file not found"):
        create_model("mobilenetv3small", 3, (32, 32, 3), weights=str(tmp_path / "missing.h5"))
    (tmp_path / "junk.weights.h5").write_bytes(b"junk")
    with pytest.raises(ConfigError, match="cannot load it into mobilenetv3small"):
        create_model("mobilenetv3small", 3, (32, 32, 3), weights=str(tmp_path / "junk.weights.h5"))
    with pytest.raises(ConfigError, match="at least 32x32"):
        create_model("mobilenetv3small", 3, (16, 16, 3), weights=None)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenetv3small", "mobilenetv3large"])
def test_application_backbone_keeps_the_model_contract(name, tmp_path):
    """Export to ONNX with parity, predict and serve from the ONNX file, Grad-CAM on the .keras."""
    import httpx

    from imgclf.deploy.export import export
    from imgclf.deploy.gradcam import GradCam
    from imgclf.deploy.serve import create_app
    from imgclf.runtime.predict import predict

    keras.utils.set_random_seed(0)
    model = create_model(name, 3, (32, 32, 3), weights=None)
    # BN statistics away from (0, 1), so that the probabilities depend on the image
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            mean, var = layer.moving_mean, layer.moving_variance
            mean.assign(np.random.default_rng(1).normal(0, 0.2, mean.shape))
            var.assign(np.random.default_rng(2).uniform(0.5, 2.0, var.shape))
    path = save_imgclf(model, tmp_path / f"{name}.keras", ["a", "b", "c"])
    result = export(path, "onnx")
    assert result.ok and result.max_abs_diff <= 1e-4 and result.top1_agree == result.n_images
    images = []
    for i in range(3):
        images.append(tmp_path / f"im{i}.png")
        images[-1].write_bytes(png_bytes(random_image(i, (40, 36))))
    via_onnx, via_keras = predict(result.path, images, k=3), predict(path, images, k=3)
    for a, b in zip(via_onnx, via_keras):
        assert [c for c, _ in a["top"]] == [c for c, _ in b["top"]]
        assert [p for _, p in a["top"]] == pytest.approx([p for _, p in b["top"]], abs=1e-4)
    with ServerThread(create_app(result.path, warmup=False)) as server:
        r = httpx.post(f"{server.url}/predict", files=[("files", ("a.png", png_bytes(random_image(7)), "image/png"))],
                       timeout=60)
    assert r.status_code == 200 and len(r.json()["predictions"][0]["top"]) == 3, r.text
    cam = GradCam(load_model(path)[0])
    heats = [cam(random_image(3), k) for k in range(3)]
    assert all(h.shape == (32, 32) and 0 <= h.min() <= h.max() <= 1 and p.shape == (3,) for h, p in heats)
    # the class gradients of a softmax sum to zero, so some class has a positive map
    assert max(h.max() for h, _ in heats) == pytest.approx(1.0)
    assert cam.layer.output.shape[1] >= 2 and not isinstance(cam.layer, keras.layers.ZeroPadding2D)


def test_the_registry_offers_the_backbones_without_keras():
    import subprocess
    import sys

    from conftest import HANG

    code = ("import sys; from imgclf.models.registry import describe_models; d = describe_models(); "
            "assert 'mobilenetv3small' in d and 'keras' not in sys.modules, d; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG)
    assert out.stdout.strip() == "ok", out.stderr[-500:]


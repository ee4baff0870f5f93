"""`imgclf export`: every format the installed packages support gives the same top-1 and
probabilities within 1e-4 of the .keras model; metadata travels with the export; a failed parity
check writes nothing; bad input is one error line."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from deploy_helpers import CIFAR_JPEG, CLASSES, make_tiny_model

from imgclf.errors import ImgclfError
from conftest import HANG


def have(*modules):
    return all(importlib.util.find_spec(m) is not None for m in modules)


@pytest.fixture(scope="module")
def keras_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("export") / "tiny.keras")


@pytest.fixture(scope="module")
def real_images():
    files = sorted(p for c in ("cat", "ship", "frog") for p in sorted((CIFAR_JPEG / c).glob("*.jpg"))[:8])
    assert len(files) == 24, f"expected CIFAR-10 JPEGs under {CIFAR_JPEG}"
    return files


def keras_probs(path, x):
    from imgclf.runtime.modelfile import load_model

    model, _ = load_model(path)
    return np.asarray(model.predict_on_batch(x.astype("float32")))


FORMATS = [f for f, mods in (("onnx", ("onnx", "tf2onnx", "onnxruntime")), ("savedmodel", ("tensorflow",)),
                             ("tflite", ("tensorflow",))) if have(*mods)]


def test_all_three_formats_are_supported_here():
    assert FORMATS == ["onnx", "savedmodel", "tflite"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_parity_on_real_images(fmt, keras_model, real_images, tmp_path):
    from imgclf.deploy.export import EXPORTERS, check_batch, export

    out = tmp_path / {"onnx": "m.onnx", "savedmodel": "m_savedmodel", "tflite": "m.tflite"}[fmt]
    result = export(keras_model, fmt, out, check_data=real_images)
    assert result.ok and result.path == out and out.exists() and result.n_images == 24
    assert result.top1_agree == 24 and result.max_abs_diff <= 1e-4
    # independently of export()'s own check: run the written file on another batch
    x = check_batch(32, 48, seed=123)
    expected = keras_probs(keras_model, x)
    got = EXPORTERS[fmt][1](out, x)
    np.testing.assert_array_equal(got.argmax(1), expected.argmax(1))
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".imgclf-export-")]  # no temp left behind


def test_onnx_metadata_and_classifier(keras_model, tmp_path):
    from imgclf.deploy.export import export
    from imgclf.runtime import load_classifier
    from imgclf.runtime.modelfile import read_meta

    out = export(keras_model, "onnx", tmp_path / "m.onnx").path
    clf = load_classifier(out)
    assert clf.runtime == "onnxruntime" and clf.class_names == CLASSES and clf.input_size == 32
    meta = read_meta(keras_model)
    assert {k: clf.meta[k] for k in meta} == meta and clf.meta["export_format"] == "onnx"
    kclf = load_classifier(keras_model)
    x = np.random.default_rng(1).integers(0, 256, (5, 32, 32, 3)).astype(np.uint8)
    np.testing.assert_allclose(clf.predict_proba(x, tta=True), kclf.predict_proba(x, tta=True), atol=1e-5)


def test_savedmodel_and_tflite_carry_metadata(keras_model, tmp_path):
    from imgclf.deploy.export import export

    sm = export(keras_model, "savedmodel", tmp_path / "m_savedmodel").path
    assert json.loads((sm / "assets" / "imgclf.json").read_text())["class_names"] == CLASSES
    tfl = export(keras_model, "tflite", tmp_path / "m.tflite").path
    assert json.loads((tmp_path / "m.tflite.json").read_text())["class_names"] == CLASSES
    # exporting again over an existing SavedModel folder replaces it
    assert export(keras_model, "savedmodel", sm).ok and (sm / "saved_model.pb").exists()
    assert tfl.stat().st_size > 1000


def test_failed_parity_writes_nothing(keras_model, tmp_path, monkeypatch):
    import imgclf.deploy.export as ex

    make, run = ex.EXPORTERS["onnx"]
    monkeypatch.setitem(ex.EXPORTERS, "onnx", (make, lambda p, x: run(p, x) + 2e-4))
    with pytest.raises(ImgclfError, match="disagrees with the .keras model"):
        ex.export(keras_model, "onnx", tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_export_cli(keras_model, tmp_path):
    target = tmp_path / "cli.onnx"
    r = subprocess.run([sys.executable, "-m", "imgclf.cli", "export", str(keras_model), "--format", "onnx",
                        "-o", str(target)], capture_output=True, text=True, timeout=HANG)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "top-1 agrees on 64/64" in r.stdout and target.exists()
    folder = tmp_path / "imgs"
    folder.mkdir()
    for f in sorted((CIFAR_JPEG / "cat").glob("*.jpg"))[:3]:
        (folder / f.name).write_bytes(f.read_bytes())
    r = subprocess.run([sys.executable, "-m", "imgclf.cli", "predict", str(target), str(folder),
                        "--json", "-k", "1"], capture_output=True, text=True, timeout=HANG)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(r.stdout)
    assert len(rows) == 3 and all(row["top"][0]["class"] in CLASSES for row in rows)


@pytest.mark.parametrize("argv,message", [
    (["export", "{missing}", "--format", "onnx"], "model file not found"),
    (["export", "{onnx}", "--format", "onnx"], "export needs a .keras model"),
    (["export", "{keras}", "--format", "tflite", "-o", "{tmp}/x.bin"], "must end in .tflite"),
])
def test_export_bad_input(argv, message, keras_model, tmp_path):
    from imgclf.cli import main

    (tmp_path / "m.onnx").write_bytes(b"x")
    argv = [a.format(missing=tmp_path / "nope.keras", onnx=tmp_path / "m.onnx", keras=keras_model, tmp=tmp_path)
            for a in argv]
    with pytest.raises(ImgclfError, match=message):
        from imgclf.deploy.export import export

        export(argv[1], argv[3], argv[5] if len(argv) > 5 else None)
    assert main(argv) == 2


def test_unknown_format_is_refused(keras_model, capsys):
    from imgclf.cli import main

    with pytest.raises(SystemExit) as e:
        main(["export", str(keras_model), "--format", "coreml"])
    assert e.value.code == 2 and "invalid choice: 'coreml'" in capsys.readouterr().err


def test_onnx_without_metadata_or_garbage(keras_model, tmp_path):
    import onnx

    from imgclf.deploy.export import export
    from imgclf.runtime.onnx_runtime import OnnxClassifier

    path = export(keras_model, "onnx", tmp_path / "m.onnx").path
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "plain.onnx"))
    with pytest.raises(ImgclfError, match="no 'imgclf' metadata"):
        OnnxClassifier(tmp_path / "plain.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00junk")
    with pytest.raises(ImgclfError, match="not a valid ONNX model"):
        OnnxClassifier(tmp_path / "junk.onnx")


def test_fastnet_exports_and_explains(tmp_path, real_images):
    """The fast model: exact GELU (erfc, which tf2onnx leaves unconverted) is rewritten in the
    textbook erf form that ONNX Runtime fuses; Grad-CAM finds its last spatial layer."""
    import collections

    import onnx

    from imgclf.deploy.export import export
    from imgclf.deploy.gradcam import GradCam
    from imgclf.runtime.modelfile import load_model

    path = make_tiny_model(tmp_path / "fast.keras", model="fastnet", widths=(16, 32, 32))
    result = export(path, "onnx", check_data=real_images)
    assert result.ok and result.top1_agree == 24
    ops = collections.Counter(n.op_type for n in onnx.load(str(result.path)).graph.node)
    gelus = 7  # the whitening layer and two per group
    assert ops["Erfc"] == 0 and ops["Erf"] == gelus and ops["Div"] == gelus and ops["Neg"] == 0, ops
    cam = GradCam(load_model(path)[0])
    heat, probs = cam(np.zeros((32, 32, 3), np.uint8) + 100)
    assert cam.layer_name == "g3_act2" and heat.shape == (32, 32) and probs.shape == (10,)


def test_a_lone_erfc_becomes_one_minus_erf():
    """An Erfc that is not part of a GELU still gets rewritten, exactly (ONNX has no Erfc)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper
    from scipy.special import erfc

    from imgclf.deploy.export import _rewrite_erfc

    graph = helper.make_graph([helper.make_node("Erfc", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5])])
    proto = _rewrite_erfc(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)]))
    assert [n.op_type for n in proto.graph.node] == ["Erf", "Sub"]
    onnx.checker.check_model(proto)
    x = np.linspace(-2, 2, 5, dtype=np.float32)
    y = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.allclose(y, erfc(x), atol=1e-6)

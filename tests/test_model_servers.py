"""`imgclf export -f triton|tfserving`: the folders model servers load as they are. ONNX Runtime
loads the Triton repository's model, TensorFlow the TF Serving version folder, and both match the
Keras model; config.pbtxt parses into Triton's own ModelConfig message (tritonclient)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from conftest import HANG
from deploy_helpers import CLASSES, make_tiny_model


@pytest.fixture(scope="module")
def keras_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("model-servers") / "tiny.keras")


@pytest.fixture(scope="module")
def batch_and_expected(keras_model):
    from imgclf.deploy.export import check_batch
    from imgclf.runtime.modelfile import load_model

    x = check_batch(32, 24, seed=3).astype(np.float32)
    return x, np.asarray(load_model(keras_model)[0].predict_on_batch(x))


def test_triton_repository_loads_in_onnxruntime(keras_model, batch_and_expected, tmp_path):
    import onnxruntime as ort
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from imgclf.deploy.export import export

    repo = tmp_path / "repo"
    result = export(keras_model, "triton", repo, name="cifar")
    assert result.ok and result.path == repo / "cifar"
    assert sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*")) == [
        "cifar", "cifar/1", "cifar/1/model.onnx", "cifar/config.pbtxt", "cifar/labels.txt"]
    config = text_format.Parse((repo / "cifar" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    session = ort.InferenceSession(str(repo / "cifar" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert config.name == "cifar" and config.platform == "onnxruntime_onnx" and config.max_batch_size == 64
    assert config.HasField("dynamic_batching")
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [
        (inp.name, model_config_pb2.TYPE_FP32, [32, 32, 3])]
    assert [(t.name, t.data_type, list(t.dims), t.label_filename) for t in config.output] == [
        (out.name, model_config_pb2.TYPE_FP32, [10], "labels.txt")]
    assert not isinstance(inp.shape[0], int)  # the batch dimension Triton batches along is dynamic
    assert (repo / "cifar" / "labels.txt").read_text().splitlines() == CLASSES
    x, expected = batch_and_expected
    got = session.run(None, {inp.name: x})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_tfserving_version_folder_loads_in_tensorflow(keras_model, batch_and_expected, tmp_path):
    import tensorflow as tf

    from imgclf.deploy.export import export

    models = tmp_path / "models"
    result = export(keras_model, "tfserving", models)  # NAME defaults to the file's stem
    assert result.ok and result.path == models / "tiny"
    assert sorted(p.name for p in models.iterdir()) == ["tiny"]
    assert [p.name for p in (models / "tiny").iterdir()] == ["1"]
    assert (models / "tiny" / "1" / "saved_model.pb").is_file()
    loaded = tf.saved_model.load(str(models / "tiny" / "1"))
    serving = loaded.signatures["serving_default"]  # what TF Serving calls by default
    x, expected = batch_and_expected
    (got,) = serving(tf.constant(x)).values()
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-4)


def test_reexport_replaces_only_its_own_model(keras_model, tmp_path, monkeypatch):
    """A repository holds many models: an export replaces its own folder and leaves the others; an
    export whose parity check fails writes nothing at all."""
    from imgclf.deploy import export as export_module
    from imgclf.errors import ImgclfError

    repo = tmp_path / "repo"
    (repo / "other" / "1").mkdir(parents=True)
    (repo / "other" / "config.pbtxt").write_text('name: "other"\n')
    (repo / "tiny" / "7").mkdir(parents=True)  # an older export of the same name
    export_module.export(keras_model, "triton", repo)
    assert sorted(p.name for p in repo.iterdir()) == ["other", "tiny"]
    assert sorted(p.name for p in (repo / "tiny").iterdir()) == ["1", "config.pbtxt", "labels.txt"]
    assert (repo / "other" / "config.pbtxt").read_text() == 'name: "other"\n'

    make, run = export_module.EXPORTERS["triton"]
    monkeypatch.setitem(export_module.EXPORTERS, "triton", (make, lambda path, x: run(path, x)[:, ::-1]))
    fresh = tmp_path / "fresh"
    with pytest.raises(ImgclfError, match="disagrees"):
        export_module.export(keras_model, "triton", fresh)
    assert not fresh.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


def test_config_that_breaks_the_schema_is_refused():
    from imgclf.deploy.model_servers import check_triton_config
    from imgclf.errors import ImgclfError

    assert check_triton_config('name: "m"\nplatform: "onnxruntime_onnx"\n').name == "m"
    with pytest.raises(ImgclfError, match="ModelConfig schema"):
        check_triton_config('name: "m"\nmax_batch: 4\n')


@pytest.mark.parametrize("argv,message", [
    (["-f", "triton", "--name", "../x"], "--name: '../x' is not a model name"),
    (["-f", "onnx", "--name", "x"], "--name: only for --format triton or tfserving"),
    (["-f", "tfserving", "-o", "FILE"], "not a folder"),
])
def test_bad_layout_arguments_are_one_error_line(argv, message, keras_model, tmp_path):
    (tmp_path / "FILE").write_text("x")
    argv = [str(tmp_path / a) if a == "FILE" else a for a in argv]
    r = subprocess.run([sys.executable, "-m", "imgclf.cli", "export", str(keras_model), *argv], capture_output=True,
                       text=True, timeout=HANG, cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE"]

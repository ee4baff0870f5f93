"""Correct runs print no noise: no TensorFlow start-up or absl lines, no `E0000 ...
use_unbounded_threadpool` (tf.data's rewrite under op determinism), no tf2onnx Erfc errors during a
successful export; imgclf's own lines (and its errors) still print."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from collections import Counter

import pytest

from conftest import HANG, make_folder

NOISE = [r"^[IWEF]\d{4} ", r"absl::InitializeLog", r"oneDNN", r"cpu_feature_guard", r"use_unbounded_threadpool",
         r"Erfc", r"np\.object", r"FutureWarning", r"^WARNING:tensorflow", r"rebuild TensorFlow"]


@pytest.mark.slow
def test_a_fastnet_run_and_its_export_print_no_noise(tmp_path):
    """`imgclf train` (fastnet with TTA, deterministic), `export` and `evaluate`, each as the console
    script runs it (its own interpreter, TF_CPP_MIN_LOG_LEVEL unset), stdout and stderr kept apart."""
    data = make_folder(tmp_path / "data", per_class=12, size=16)
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}

    def imgclf(*argv):
        proc = subprocess.run([sys.executable, "-m", "imgclf", *argv], capture_output=True, text=True,
                              timeout=HANG, env=env)
        for pattern in NOISE:
            assert not re.search(pattern, proc.stderr, re.M), (argv[0], pattern, proc.stderr[-3000:])
        return proc

    train = imgclf("train", "-d", str(data), "--recipe", "fast80", "--epochs", "1", "--input-size", "16",
                   "--no-report", "-o", str(run))
    assert train.returncode == 0, train.stderr[-3000:]
    export = imgclf("export", str(run / "model.keras"), "--format", "onnx")
    assert export.returncode == 0, export.stderr[-3000:]
    evaluate = imgclf("evaluate", str(run / "model.keras"), "--no-report", "-o", str(run / "ev"))
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    failed = imgclf("export", str(run / "absent.keras"))
    # imgclf's own lines still print: the results table, the export's parity line, evaluate's files,
    # and the one-line error of the failed export
    assert "| Accuracy |" in train.stdout and "run directory:" in train.stdout
    assert re.search(r"^wrote .*model\.onnx \(onnx\); parity on 64 images", export.stdout, re.M)
    assert "written: " in evaluate.stderr and "TTA: mirrors and shifts" in evaluate.stdout
    assert failed.returncode == 2 and re.fullmatch(r"error: .*absent\.keras.*\n", failed.stderr)


def test_main_keeps_tensorflow_errors_and_onednn():
    """cli.main hides TensorFlow's C++ info and warning lines only (level 2): errors still print, and
    oneDNN is left as it is."""
    code = ("import os; from imgclf.cli import main; main(['models']); "
            "print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'), os.environ.get('TF_ENABLE_ONEDNN_OPTS'))")
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "2 None"


def test_only_tf2onnx_errors_about_erfc_are_dropped():
    from imgclf.deploy.export import quiet_known_tf2onnx_messages

    logger = logging.getLogger("tf2onnx.tfonnx")
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handler = Keep()
    logger.addHandler(handler)
    try:
        with quiet_known_tf2onnx_messages():
            logger.error("Tensorflow op [%s: %s] is not supported", "net/act/Gelu/Erfc", "Erfc")
            logger.error("Unsupported ops: %s", Counter({"Erfc": 7}))
            logger.error("Tensorflow op [%s: %s] is not supported", "net/odd", "RaggedTensorToTensor")
            logger.error("Unsupported ops: %s", Counter({"Erfc": 7, "RaggedTensorToTensor": 1}))
            logger.error("Failed to convert node %s", "net/x")
        logger.error("Tensorflow op [%s: %s] is not supported", "after/Erfc", "Erfc")  # the filter is gone
    finally:
        logger.removeHandler(handler)
    assert seen == ["Tensorflow op [net/odd: RaggedTensorToTensor] is not supported",
                    "Unsupported ops: Counter({'Erfc': 7, 'RaggedTensorToTensor': 1})",
                    "Failed to convert node net/x", "Tensorflow op [after/Erfc: Erfc] is not supported"]

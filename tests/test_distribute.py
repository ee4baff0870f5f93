"""Data-parallel training (imgclf.training.distribute) on this CPU, with two virtual devices.

Each backend runs tests/distribute_worker.py in a process of its own (the device count is fixed
before the backend starts): fast94's recipe on a tiny fastnet, trained on 1 and on 2 devices at
the same global batch, and on 2 devices interrupted after epoch 1 and resumed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import HANG

WORKER = Path(__file__).with_name("distribute_worker.py")

# How far the 2-device run may end from the 1-device one: the largest difference of any saved
# weight (batch norm statistics included) after 16 steps, and of any epoch's training loss. The two
# runs differ only in the order of float sums (a batch's gradient and batch-norm moments summed
# per device, then across devices); 16 steps at fast94's high learning rate (64x for the BN shifts)
# and lookahead let those roundings grow; a real fault (batch norm per replica, a loss or update
# counted per device) moves the weights by whole units.
# The differences measured, and those of unsynchronised batch norm: bench/README.md ("Data-parallel
# training on virtual devices").
TOLERANCE = {"jax": {"weights": 0.2, "loss": 1e-3}, "tensorflow": {"weights": 3e-2, "loss": 2e-5}}


@pytest.mark.slow  # 4 training runs each (compiling 1- and 2-device steps)
@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
def test_two_devices_match_one_and_resume_exactly(backend, tmp_path):
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax-cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}  # the resumed runs reuse the compiled steps
    out = tmp_path / "report.json"
    r = subprocess.run([sys.executable, str(WORKER), backend, str(out)], capture_output=True, text=True,
                       timeout=HANG, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["backend"] == backend
    match = report["match"]
    print(backend, json.dumps(match))  # the measured differences (pytest -s shows them)
    assert match["weights"] < TOLERANCE[backend]["weights"], match
    assert match["loss"] < TOLERANCE[backend]["loss"], match
    assert match["weight_scale"] > 1.0  # the weights compared are not all tiny
    assert match["synchronized"] and not any(match["synchronized"])  # the saved model has plain batch norm
    assert report["resume"] == {"weights": 0.0, "devices": 2, "epochs": 2}  # exact: every weight equal
    (devices, devices_written), (batch, batch_written) = report["errors"]
    assert devices.startswith("devices: 3 asked, this machine has 2 (cpu)") and not devices_written
    assert batch.startswith("batch_size: expected a multiple of the 2 devices") and not batch_written


def test_even_shares_cut_each_batch_to_the_devices():
    from imgclf.training.distribute import EvenShares

    class Fake:  # a Batches of 21 images in batches of 8: 8, 8, 5
        images, batch_size = range(21), 8

        def __len__(self):
            return 3

        def __getitem__(self, i):
            x = np.arange(21)[i * 8:(i + 1) * 8]
            return x, x * 10

    one_host = EvenShares(Fake(), devices=2)
    assert len(one_host) == 3
    assert [len(one_host[i][0]) for i in range(3)] == [8, 8, 4]  # the last batch cut to a multiple of 2
    assert list(one_host[2][1]) == [160, 170, 180, 190]
    second_host = EvenShares(Fake(), devices=4, index=1, processes=2)  # 2 hosts of 2 devices
    assert list(second_host[0][0]) == [4, 5, 6, 7] and list(second_host[2][0]) == [18, 19]
    assert len(EvenShares(Fake(), devices=8)) == 2  # a last batch smaller than the device count is skipped


def test_devices_flag_and_field():
    from imgclf.cli import build_parser
    from imgclf.config import make_config

    parser = build_parser()
    assert parser.parse_args(["train", "--devices", "all"]).devices == 0
    assert parser.parse_args(["train", "--devices", "2"]).devices == 2
    assert make_config().devices == 1  # the default: one device, no distribution
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--devices", "many"])


@pytest.mark.parametrize("tf_config,expected", [
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}', (2, 1)),
    ("", (1, 0)),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "chief"}}', (2, 0)),
])
def test_tf_config_gives_the_workers_and_this_ones_index(tf_config, expected, monkeypatch):
    from imgclf.training.distribute import process_count

    monkeypatch.setenv("TF_CONFIG", tf_config)
    assert process_count() == expected


@pytest.mark.parametrize("tf_config", ["{not json", "[1, 2]", '{"cluster": {"worker": "a:1"}}',
                                       '{"cluster": {"worker": ["a:1"]}, "task": {"index": 3}}',
                                       '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"index": "1"}}'])
def test_a_malformed_tf_config_is_one_error_line(tf_config, monkeypatch):
    from imgclf.errors import ConfigError
    from imgclf.training.distribute import process_count

    monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ConfigError, match="^TF_CONFIG") as e:
        process_count()
    assert "\n" not in str(e.value)


def test_tf_workers_need_a_batch_that_splits_over_every_workers_devices(monkeypatch):
    """With several TensorFlow workers the global batch is shared by all their devices, not only
    this host's: a batch this host's devices split but the cluster's do not is refused."""
    import keras
    import tensorflow as tf

    from imgclf.config import make_config
    from imgclf.errors import ConfigError
    from imgclf.training import distribute

    if keras.backend.backend() != "tensorflow":
        pytest.fail("this test runs on the default backend, TensorFlow")

    class ThreeWorkers:  # the strategy of 3 workers with one device each (no cluster is started)
        num_replicas_in_sync = 3

    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1", "b:2", "c:3"]}, "task": {"type": "worker", '
                                    '"index": 0}}')
    monkeypatch.setattr(tf.distribute, "MultiWorkerMirroredStrategy", ThreeWorkers)
    monkeypatch.setattr(distribute, "_ENGINES", {})  # the stand-in strategy is not cached past this test
    local = len(distribute.visible_devices("tensorflow"))
    with pytest.raises(ConfigError, match="^batch_size: expected a multiple of the 3 devices of all 3 workers"):
        distribute.setup(make_config(devices=0, batch_size=4 * local, recipe="fast80"))
    assert distribute.setup(make_config(devices=0, batch_size=6 * local, recipe="fast80")).replicas == 3

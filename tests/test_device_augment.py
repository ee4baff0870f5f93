"""augment_device: flip, translate and cutout as keras.ops in the training step give the numpy
path's batches pixel for pixel, and training on them gives the numpy path's model; and
steps_per_execution > 1 keeps the schedule's image count and lookahead's rhythm."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import imgclf
from imgclf.config import make_config
from imgclf.data.dataset import ImageSet
from imgclf.errors import ConfigError
from imgclf.training.augment import apply_draws, augment_draws, identity_draws
from imgclf.training.batches import Batches
from imgclf.training.callbacks import Lookahead
from imgclf.training.device_augment import DeviceAugment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def on_device(x, draws, translate, cutout):
    return np.asarray(DeviceAugment(translate, cutout)([x, draws]))


def test_device_augment_matches_numpy_pixel_for_pixel():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (24, 12, 10, 3)).astype(np.uint8)  # not square: rows and columns kept apart
    for translate, cutout in ((3, 5), (0, 4), (2, 0), (0, 0)):
        draws = augment_draws(24, 12, 10, np.random.default_rng(1), True, translate, cutout)
        want = apply_draws(x, draws, translate, cutout).astype(np.float32)
        got = on_device(x, draws, translate, cutout)
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
        if translate or cutout:
            assert not np.array_equal(got, x.astype(np.float32))  # the draws did change the batch
    # the identity draws change nothing, with the layer's shift and cutout set
    np.testing.assert_array_equal(on_device(x, identity_draws(24, 12, 10, 3, 5), 3, 5), x.astype(np.float32))


def test_jax_backend_gives_the_same_pixels(tmp_path):
    script = textwrap.dedent("""
        import numpy as np
        from imgclf.training.augment import apply_draws, augment_draws
        from imgclf.training.device_augment import DeviceAugment
        x = np.random.default_rng(0).integers(0, 256, (16, 9, 11, 3)).astype(np.uint8)
        d = augment_draws(16, 9, 11, np.random.default_rng(2), True, 2, 3)
        got = np.asarray(DeviceAugment(2, 3)([x, d]))
        assert np.array_equal(got, apply_draws(x, d, 2, 3).astype(np.float32)), "jax differs"
        print("same")
    """)
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("same"), proc.stderr[-2000:]


def photo_set(n=40, size=16, classes=4):
    rng = np.random.default_rng(3)
    return ImageSet(rng.integers(0, classes, n), [str(i) for i in range(n)],
                    rng.integers(0, 256, (n, size, size, 3)).astype(np.uint8))


def test_device_batches_are_the_host_batches():
    fields = dict(input_size=16, augment_flip=True, augment_flip_alternate=True, augment_translate=2,
                  augment_cutout=4, augment_crop=0.5, augment_color=0.2, label_smoothing=0.1)
    host_cfg, dev_cfg = make_config(**fields), make_config(**fields, augment_device=True)
    weights = {0: 1.0, 1: 2.0, 2: 0.5, 3: 1.5}
    host = Batches(photo_set(), 16, 4, train=True, seed=4, cfg=host_cfg, one_hot=True, sample_weights=weights)
    dev = Batches(photo_set(), 16, 4, train=True, seed=4, cfg=dev_cfg, one_hot=True, sample_weights=weights,
                  device=True)
    for epoch in (0, 1, 3):
        host.set_epoch(epoch)
        dev.set_epoch(epoch)
        for i in range(len(host)):
            (hx, hy, hw), ((dx, draws), dy, dw) = host[i], dev[i]
            assert dx.dtype == np.uint8 and draws.shape == (len(dx), 5)
            np.testing.assert_array_equal(on_device(dx, draws, 2, 4), hx)
            np.testing.assert_array_equal(hy, dy)
            np.testing.assert_array_equal(hw, dw)
    # validation batches under augment_device: the plain images, with draws that change nothing
    val = Batches(photo_set(), 16, 4, cfg=dev_cfg, device=True)
    (vx, vd), _ = val[1]
    np.testing.assert_array_equal(on_device(vx, vd, 2, 4), Batches(photo_set(), 16, 4)[1][0])


def test_mixing_on_the_host_is_refused_with_device_augmentation():
    with pytest.raises(ConfigError, match="augment_device"):
        make_config(augment_device=True, mixup=0.2)


def test_training_on_device_augmented_batches_gives_the_host_model(colour_folder, tmp_path):
    cfg = dict(data=str(colour_folder), epochs=3, batch_size=8, augment_flip=True, augment_translate=2,
               augment_cutout=6, seed=2, verbose=0, report=False, keep_best=True, lookahead_start=0.3,
               class_weight="balanced")
    host = imgclf.train(run_dir=tmp_path / "host", **cfg)
    dev = imgclf.train(run_dir=tmp_path / "device", augment_device=True, **cfg)
    a, _ = imgclf.load_model(host.model_path)
    b, meta = imgclf.load_model(dev.model_path)
    assert [layer.name for layer in a.layers] == [layer.name for layer in b.layers]  # no augmentation saved
    assert max(np.abs(x - y).max() for x, y in zip(a.get_weights(), b.get_weights())) < 1e-4
    assert abs(host.metrics["val"]["loss"] - dev.metrics["val"]["loss"]) < 1e-4
    # and the augmentation was on: without it the model differs
    plain = imgclf.train(run_dir=tmp_path / "plain", **{**cfg, "augment_translate": 0, "augment_cutout": 0})
    c, _ = imgclf.load_model(plain.model_path)
    assert max(np.abs(x - y).max() for x, y in zip(a.get_weights(), c.get_weights())) > 1e-3


def test_steps_per_execution_counts_every_image(colour_folder, tmp_path):
    import keras

    class Calls(keras.callbacks.Callback):
        ends: list = []

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(batch)

    calls = Calls()
    run = imgclf.train(data=str(colour_folder), epochs=2, batch_size=8, steps_per_execution=3, lr_schedule="onecycle",
                       warmup_epochs=0.5, lookahead_start=0.3, augment_device=True, augment_flip=True,
                       run_dir=tmp_path / "r", verbose=0, report=False, callbacks=[calls])
    n = run.metrics["train"]["n"]
    steps = -(-n // 8)
    assert len(calls.ends) == 2 * -(-steps // 3)  # one call per 3 steps
    assert run.metrics["flops"]["train_images"] == 2 * n  # yet every image counted
    assert run.metrics["epochs_run"] == 2 and np.isfinite(run.metrics["val"]["loss"])


class _Schedule:  # what Lookahead reads of the Schedule callback
    def __init__(self, steps_per_epoch):
        self.steps_per_epoch, self.epoch = steps_per_epoch, 0
        self.cfg = make_config(lookahead_start=0.0, epochs=2)

    def progress(self, batch):
        return 0.5


@pytest.mark.parametrize("per_call", [1, 3, 5])
def test_lookahead_moves_once_per_call_that_passes_a_multiple_of_five_steps(per_call):
    la = Lookahead(_Schedule(steps_per_epoch=13))
    moves = []
    la._snapshot = lambda: [np.zeros(1)]
    la._assign = lambda: moves.append(la.done)
    for epoch in range(2):
        la.schedule.epoch = epoch
        la.on_epoch_begin(epoch)
        for begin in range(0, 13, per_call):
            la.on_train_batch_end(begin + per_call - 1)  # as fit() says it: past the epoch's end in a short call
    ends = [e * 13 + min(b + per_call, 13) for e in range(2) for b in range(0, 13, per_call)]
    crossing = [end for start, end in zip([0, *ends], ends) if end // 5 > start // 5]
    # every call that passed a multiple of 5 moves the average; an epoch's last call always ends on it
    expected = sorted(set(crossing) | {13, 26})
    assert moves == expected, (moves, expected)
    if per_call == 1:
        assert [m for m in moves if m not in (13, 26)] == [s for s in range(1, 27) if s % 5 == 0]


def test_even_shares_cut_device_batches_whole():
    from imgclf.training.distribute import EvenShares

    cfg = make_config(input_size=16, augment_flip=True, augment_translate=2, augment_device=True)
    batches = Batches(photo_set(n=38), 16, 4, train=True, seed=1, cfg=cfg, device=True)
    shares = EvenShares(batches, devices=4, index=1, processes=2)  # this host's half of a multiple of 4
    (x, draws), y = shares[2]  # the last batch: 6 images -> 4 kept -> this host's 2
    (bx, bdraws), by = batches[2]
    assert len(bx) == 6 and len(x) == len(draws) == len(y) == 2
    np.testing.assert_array_equal(x, bx[2:4])
    np.testing.assert_array_equal(draws, bdraws[2:4])
    np.testing.assert_array_equal(y, by[2:4])

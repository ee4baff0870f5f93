"""Streaming (issue 16, part 2): Grain's read-ahead over the index-keyed batch source gives the
in-memory batches exactly; a packed folder (imgclf pack) gives its image folder's; training,
resume, evaluate and predict are the same streamed or not; bad packs are refused."""

from __future__ import annotations

import json
import os
import shutil

import keras
import numpy as np
import pytest
from conftest import make_folder

import imgclf
from imgclf.cli import main
from imgclf.config import make_config
from imgclf.data.dataset import decode_images, load_dataset
from imgclf.data.pack import pack
from imgclf.data.prefetch import ImageView, image_chunks, ordered_map, process_map
from imgclf.data.stream import StreamBatches, wrap
from imgclf.errors import ConfigError, DataError
from imgclf.training.batches import Batches
from imgclf.training.distribute import EvenShares

TINY = "0.000000001"  # IMGCLF_MAX_MEMORY_GB under which every set streams from disk


@pytest.fixture
def streaming(monkeypatch):
    monkeypatch.setenv("IMGCLF_MAX_MEMORY_GB", TINY)


@pytest.fixture
def split_folder(tmp_path):
    """train/ + validation/ + test/, PNGs and JPEGs (two shards' worth of names)."""
    root = tmp_path / "photos"
    make_folder(root / "train", per_class=14)
    make_folder(root / "validation", per_class=4, seed=1)
    make_folder(root / "test", per_class=3, seed=2)
    from PIL import Image

    for i, p in enumerate(sorted((root / "train" / "red").glob("*.png"))[:5]):  # a few JPEGs too
        Image.open(p).convert("RGB").save(p.with_suffix(".jpg"), quality=80)
        p.unlink()
    return root


def same_batch(a, b) -> bool:
    return len(a) == len(b) and all(np.array_equal(u, v) for u, v in zip(a, b))


@pytest.mark.parametrize("grain", [True, False])  # False: a platform without Grain's wheel, a thread pool
def test_ordered_map_keeps_order_and_raises_in_turn(grain, monkeypatch):
    from imgclf.data import prefetch

    monkeypatch.setattr(prefetch, "grain_available", lambda: grain)
    assert list(ordered_map(lambda i: i * i, 50, threads=3, start=5)) == [i * i for i in range(5, 50)]

    def bad(i):
        if i == 7:
            raise DataError("bad image 7")
        return i

    seen = []
    with pytest.raises(DataError, match="bad image 7"):
        for v in ordered_map(bad, 20, threads=2):
            seen.append(v)
    assert seen == list(range(7))
    if not grain:  # the pool runs at most `buffer` ahead of the consumer
        started = []
        for v in ordered_map(lambda i: started.append(i) or i, 40, threads=2, buffer=4):
            assert max(started) <= v + 4


def square_in_order(job):
    """A process_map job: its square, and which process computed it."""
    return job * job, os.getpid()


def die_in_a_child(job):
    """A process_map job that kills a forked worker at job 5 (and is harmless in the parent)."""
    if job == 5 and os.getpid() != PARENT:
        os._exit(3)
    return job * job


PARENT = os.getpid()


def test_process_map_forks_keeps_order_and_falls_back_to_threads(monkeypatch, capfd):
    from imgclf.data import prefetch

    monkeypatch.setenv("IMGCLF_DECODE_PROCESSES", "1")
    forks = keras.backend.backend() != "jax"  # under Keras' JAX backend it keeps to threads
    assert prefetch.forking_decodes() == forks
    results = list(process_map(square_in_order, list(range(30)), workers=2))
    assert [r for r, _ in results] == [i * i for i in range(30)]
    assert bool({pid for _, pid in results} - {os.getpid()}) == forks  # computed in other processes
    monkeypatch.setenv("IMGCLF_DECODE_PROCESSES", "0")
    assert {pid for _, pid in process_map(square_in_order, list(range(6)), workers=2)} == {os.getpid()}
    monkeypatch.setenv("IMGCLF_DECODE_PROCESSES", "1")
    assert list(process_map(die_in_a_child, list(range(12)), workers=2)) == [i * i for i in range(12)]
    assert ("warning: a decoding process died" in capfd.readouterr().err) == forks
    monkeypatch.setenv("IMGCLF_DECODE_PROCESSES", "yes")
    with pytest.raises(ConfigError, match="IMGCLF_DECODE_PROCESSES: expected 0 or 1"):
        prefetch.forking_decodes()


def test_process_map_falls_back_to_threads_when_a_fork_is_refused(monkeypatch, capfd):
    import multiprocessing

    from imgclf.data import prefetch

    monkeypatch.setattr(prefetch, "forking_decodes", lambda: True)  # whichever backend the suite runs on
    forks, real_fork = [], os.fork

    def fork_once():  # the first worker starts, the second is refused
        if forks:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        forks.append(1)
        return real_fork()

    monkeypatch.setattr(os, "fork", fork_once)
    assert list(process_map(die_in_a_child, list(range(9)), workers=2)) == [i * i for i in range(9)]
    assert "warning: cannot start decoding processes (Resource temporarily unavailable)" in capfd.readouterr().err
    assert forks and not multiprocessing.active_children()  # the worker that started is gone


def test_decoding_processes_die_with_their_parent(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "parent.py"
    script.write_text(
        "import os, sys, time\n"
        "from imgclf.data.prefetch import process_map\n"
        "def job(i):\n"
        "    os.write(1, f'{os.getpid()}\\n'.encode())  # one write: the two workers' lines cannot mix\n"
        "    time.sleep(600)\n"
        "list(process_map(job, [0, 1], workers=2))\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "IMGCLF_DECODE_PROCESSES": "1"})
    try:
        children = [int(parent.stdout.readline()) for _ in range(2)]
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    for _ in range(200):  # the kernel kills them when the parent dies: wait up to 20 s for it
        alive = [pid for pid in children if os.path.exists(f"/proc/{pid}") and
                 open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] != "Z"]
        if not alive:
            break
        time.sleep(0.1)
    assert not alive, f"decoding processes {alive} outlived their parent"


def test_decoding_on_processes_threads_or_one_worker_gives_the_same_images(split_folder, monkeypatch):
    from imgclf.data import dataset

    monkeypatch.setattr(dataset, "CHUNK", 8)  # several jobs, so 2 workers both get some
    files = sorted(str(p.relative_to(split_folder / "train")) for p in (split_folder / "train").rglob("*.*"))
    got = []
    for forks, workers in (("1", 2), ("0", 2), ("1", 1)):
        monkeypatch.setenv("IMGCLF_DECODE_PROCESSES", forks)
        got.append(decode_images(split_folder / "train", files, (16, 16), use_cache=False, decode="draft",
                                 workers=workers))
    for x, kept in got[1:]:
        assert np.array_equal(x, got[0][0]) and np.array_equal(kept, got[0][1])
    assert len(got[0][1]) == len(files) and got[0][0].std() > 0


def test_streaming_batches_equal_in_memory_batches(split_folder, monkeypatch):
    cfg = make_config(augment_flip=True, augment_translate=2, augment_cutout=4, augment_crop=0.5,
                      augment_color=0.3, mixup=0.2, cutmix=1.0, seed=5)
    memory = load_dataset(str(split_folder), input_size=16)
    monkeypatch.setenv("IMGCLF_MAX_MEMORY_GB", TINY)
    disk = load_dataset(str(split_folder), input_size=16)
    assert memory.train.x is not None and disk.train.x is None
    for seed in (0, 5):
        ref = Batches(memory.train, 8, 3, train=True, seed=seed, cfg=cfg, one_hot=True)
        streamed = wrap(Batches(disk.train, 8, 3, train=True, seed=seed, cfg=cfg, one_hot=True), disk.train)
        assert isinstance(streamed, StreamBatches) and len(streamed) == len(ref) == 6
        for epoch in (0, 1, 4):
            ref.set_epoch(epoch)
            streamed.set_epoch(epoch)
            for i in [*range(len(ref)), 3, 0, 5, 2]:  # in order, then out of order (the read-ahead restarts)
                assert same_batch(ref[i], streamed[i]), (seed, epoch, i)
    # and through the several-devices wrapper, as the trainer nests them
    ref, streamed = (EvenShares(Batches(s, 8, 3, train=True, seed=1, cfg=cfg), 2) for s in (memory.train, disk.train))
    streamed = StreamBatches(streamed, threads=2)
    streamed.set_epoch(3)
    ref.set_epoch(3)
    assert all(same_batch(ref[i], streamed[i]) for i in range(len(ref)))
    # a different epoch is a different order: the comparison can fail
    ref.set_epoch(4)
    assert not same_batch(ref[0], streamed[0])


def test_stream_mode_env(colour_folder, monkeypatch):
    data = load_dataset(str(colour_folder))
    batches = Batches(data.train, 8, 3)
    assert wrap(batches, data.train) is batches  # in memory: untouched by default
    monkeypatch.setenv("IMGCLF_STREAM", "on")
    assert isinstance(wrap(batches, data.train), StreamBatches)
    monkeypatch.setenv("IMGCLF_STREAM", "sometimes")
    with pytest.raises(ConfigError, match="IMGCLF_STREAM"):
        wrap(batches, data.train)


def test_packed_folder_gives_the_folders_images_and_batches(split_folder, tmp_path, monkeypatch):
    index = pack(split_folder, tmp_path / "packed", shards=3)
    assert sorted(index["splits"]) == ["test", "train", "val"] and len(index["splits"]["train"]["shards"]) == 3
    folder, packed = (load_dataset(str(p), input_size=16) for p in (split_folder, tmp_path / "packed"))
    assert packed.class_names == folder.class_names
    for a, b in ((folder.train, packed.train), (folder.val, packed.val), (folder.test, packed.test)):
        assert a.files == b.files and np.array_equal(a.y, b.y) and np.array_equal(a.x, b.x)
    assert {k: v for k, v in packed.split.items() if k != "source"} == \
        {k: v for k, v in folder.split.items() if k != "source"}
    # streaming from the records: the same batches as the folder's in memory
    carved = load_dataset(str(split_folder), input_size=16, val_split="carved", split_seed=2)
    monkeypatch.setenv("IMGCLF_MAX_MEMORY_GB", TINY)
    streamed = load_dataset(str(tmp_path / "packed"), input_size=16, val_split="carved", split_seed=2)
    assert streamed.train.x is None and carved.train.x is not None and streamed.train.files == carved.train.files
    cfg = make_config(augment_flip=True, augment_translate=2, seed=3)
    ref = Batches(carved.train, 8, 3, train=True, seed=3, cfg=cfg)
    got = StreamBatches(Batches(streamed.train, 8, 3, train=True, seed=3, cfg=cfg), threads=2)
    for epoch in (0, 2):
        ref.set_epoch(epoch)
        got.set_epoch(epoch)
        assert all(same_batch(ref[i], got[i]) for i in range(len(ref)))
    # a view of a streaming set decodes what is indexed, and all of it as an array
    view = streamed.val.all_images()
    assert isinstance(view, ImageView) and np.array_equal(np.asarray(view), carved.val.x)
    assert np.array_equal(view[[2, 0]], carved.val.x[[2, 0]]) and np.array_equal(view[1], carved.val.x[1])
    assert np.array_equal(np.concatenate(list(image_chunks(streamed.train, 7, threads=2))), carved.train.x)


def test_training_streams_and_resumes_exactly(tmp_path, monkeypatch):
    data = make_folder(tmp_path / "data", per_class=8, size=16)
    cfg = dict(data=str(data), input_size=16, epochs=2, batch_size=8, augment_flip=True, augment_translate=2,
               seed=7, verbose=0, report=False, lookahead_start=0.3)
    memory = imgclf.train(run_dir=tmp_path / "memory", **cfg)
    monkeypatch.setenv("IMGCLF_MAX_MEMORY_GB", TINY)

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt("after the first epoch")

    with pytest.raises(KeyboardInterrupt):
        imgclf.train(run_dir=tmp_path / "cut", callbacks=[Interrupt()], **cfg)
    resumed = imgclf.train(resume=tmp_path / "cut", verbose=0)
    a, b = (imgclf.load_model(r.model_path)[0].get_weights() for r in (memory, resumed))
    assert max(np.abs(x - y).max() for x, y in zip(a, b)) < 1e-5
    assert resumed.metrics["val"]["accuracy"] == pytest.approx(memory.metrics["val"]["accuracy"])


def test_evaluate_and_predict_stream_with_the_same_results(trained_colour_model, tmp_path, monkeypatch):
    run, data = trained_colour_model
    memory = imgclf.evaluate(run.model_path, str(data), out_dir=tmp_path / "m", verbose=False, report=False)
    rows = imgclf.predict(run.model_path, [data], progress=False, batch_size=16)  # several batches
    monkeypatch.setenv("IMGCLF_MAX_MEMORY_GB", TINY)
    monkeypatch.setattr("imgclf.runtime.predict.PARALLEL_MIN", 1)  # decode ahead on threads
    monkeypatch.setenv("IMGCLF_STREAM_THREADS", "2")
    streamed = imgclf.evaluate(run.model_path, str(data), out_dir=tmp_path / "s", verbose=False, report=False)
    for name in memory:
        assert np.array_equal(memory[name]["probs"], streamed[name]["probs"]), name
        assert memory[name]["accuracy"] == streamed[name]["accuracy"]
    assert imgclf.predict(run.model_path, [data], progress=False, batch_size=16) == rows


def test_pack_refuses_bad_input_and_writes_nothing(colour_folder, tmp_path, capsys):
    assert main(["pack", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    assert "error:" in capsys.readouterr().err and not (tmp_path / "out").exists()
    (colour_folder / "red" / "note.png").write_text("not an image")
    assert main(["pack", str(colour_folder), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "note.png" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["colours"]  # no OUT, no temp folder left
    (colour_folder / "red" / "note.png").unlink()
    assert main(["pack", str(colour_folder), str(tmp_path / "out"), "--shards", "0"]) == 2
    assert not (tmp_path / "out").exists()


BAD_FIELDS = [
    ("version", lambda ix: ix.update(version=2), "version"),
    ("class_names", lambda ix: ix.update(class_names="red"), "class_names"),
    ("class order", lambda ix: ix.update(class_names=ix["class_names"][::-1]), "class_names"),
    ("count", lambda ix: ix["splits"]["train"].update(count=10**12), "splits.train.count"),
    ("counts", lambda ix: ix["splits"]["train"]["class_counts"].append(1), "splits.train.class_counts"),
    ("shard path", lambda ix: ix["splits"]["train"]["shards"].__setitem__(0, "../x.array_record"),
     r"splits.train.shards\[0\]"),
    ("labels name", lambda ix: ix["splits"]["train"].update(labels=["train.npz"]), "splits.train.labels"),
    ("split", lambda ix: ix["splits"].update(extra={}), "splits"),
    ("hash", lambda ix: ix.update(hash=None), "hash"),
]


@pytest.mark.parametrize("what,change,field", BAD_FIELDS, ids=[b[0] for b in BAD_FIELDS])
def test_a_packed_index_with_a_bad_field_is_refused(colour_folder, tmp_path, what, change, field):
    pack(colour_folder, tmp_path / "packed")
    index = json.loads((tmp_path / "packed" / "index.json").read_text())
    change(index)
    (tmp_path / "packed" / "index.json").write_text(json.dumps(index))
    with pytest.raises(DataError, match=field):
        load_dataset(str(tmp_path / "packed"))


def test_a_packed_set_with_bad_labels_or_records_is_refused(colour_folder, tmp_path, capsys):
    packed = tmp_path / "packed"
    pack(colour_folder, packed)
    good = packed / "train.npz"
    keep = tmp_path / "train.npz"
    shutil.copy(good, keep)
    with np.load(keep) as z:
        labels, files = z["labels"], z["files"]
    np.savez(good, labels=np.where(labels == 2, 7, labels), files=files)
    with pytest.raises(DataError, match="labels: expected class numbers"):
        load_dataset(str(packed))
    np.savez(good, labels=labels, files=np.asarray([[1]] * len(files)))
    with pytest.raises(DataError, match="files: expected"):
        load_dataset(str(packed))
    for name in ("../../etc/passwd", "red/a\nb.png", "x" * 2000):  # outside the folder, a control character, too long
        np.savez(good, labels=labels, files=np.asarray([name] + [str(f) for f in files[1:]]))
        with pytest.raises(DataError, match="files: expected|not a label file"):
            load_dataset(str(packed))
    np.savez(good, labels=labels, files=files, extra=np.zeros(10))  # a member the format does not have
    with pytest.raises(DataError, match="not a label file"):
        load_dataset(str(packed))
    shutil.copy(keep, good)
    index = json.loads((packed / "index.json").read_text())
    shard = packed / index["splits"]["train"]["shards"][0]
    shard.write_bytes(shard.read_bytes()[:100])  # a truncated shard
    assert main(["train", "--data", str(packed), "--recipe", "seed", "--epochs", "1",
                 "--out", str(tmp_path / "run")]) == 2
    assert "error:" in capsys.readouterr().err and not (tmp_path / "run").exists()


def open_shards(folder) -> set:
    """The shard files of `folder` this process holds open."""
    import os

    fds = os.listdir("/proc/self/fd")
    targets = set()
    for fd in fds:
        try:
            targets.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # closed since the listing
            pass
    return {t for t in targets if t.startswith(str(folder)) and t.endswith(".array_record")}


def test_records_close_their_readers(colour_folder, tmp_path, monkeypatch):
    from imgclf.data.records import open_split, read_index

    packed = (tmp_path / "packed").resolve()
    pack(colour_folder, packed, shards=2)
    records = open_split(packed, read_index(packed), "train").records
    view = records.take([len(records) - 1, 0])  # a record from each shard
    first = view[1]
    assert view[0] and len(open_shards(packed)) == 2  # reading opened both shards
    with records as same:
        assert same is records
    assert open_shards(packed) == set()  # closing the set closed its views' readers too
    assert view[1] == first and len(open_shards(packed)) == 1  # a later read opens its shard again
    view.close()
    assert open_shards(packed) == set()
    # loading a packed folder that fits in memory leaves no shard open; a streaming one still reads
    data = load_dataset(str(packed), input_size=16)
    assert data.train.x is not None and open_shards(packed) == set()
    monkeypatch.setenv("IMGCLF_MAX_MEMORY_GB", TINY)
    streamed = load_dataset(str(packed), input_size=16)
    assert streamed.train.x is None and np.array_equal(streamed.train.images([0, 1]), data.train.x[:2])


@pytest.mark.parametrize("value", ["8G", "nan", "-1", "0", "inf"])
def test_a_bad_memory_limit_is_one_error_line(value, monkeypatch):
    from imgclf.data.dataset import streams
    from imgclf.errors import ConfigError

    monkeypatch.setenv("IMGCLF_MAX_MEMORY_GB", value)
    with pytest.raises(ConfigError, match="IMGCLF_MAX_MEMORY_GB"):
        streams(10, (32, 32))
    monkeypatch.setenv("IMGCLF_MAX_MEMORY_GB", "0.5")  # 2**29 bytes: 2**29 / 3072 images of 32x32 fit
    assert not streams(2**29 // 3072, (32, 32)) and streams(2**29 // 3072 + 1, (32, 32))

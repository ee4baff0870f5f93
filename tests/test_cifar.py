"""Tests for imgclf.data.cifar, using tiny archives built in the official CIFAR-10 format.

The batches are written the way the real files are: protocol-2 pickles of dicts
with bytes keys holding numpy arrays (so the pickles really reference numpy's
``_reconstruct``).  Nothing here touches the network.
"""

from __future__ import annotations

import builtins
import codecs
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import types
from pathlib import Path

import numpy as np
import pytest

from imgclf.data.cifar import (
    CIFAR10_CLASSES,
    CIFAR10_MD5,
    CIFAR10_URL,
    CifarArrays,
    batch_to_nhwc,
    load_cifar10,
)
from imgclf.errors import DataError
from conftest import HANG

FOLDER = "cifar-10-batches-py"
TRAIN_PER_BATCH = 4
TEST_N = 3


# --------------------------------------------------------------------------
# Building fake datasets
# --------------------------------------------------------------------------


def known_image_row() -> np.ndarray:
    """One CIFAR row with distinct, predictable R, G and B planes."""
    i = np.arange(1024)
    red = i % 256
    green = (3 * i + 1) % 256
    blue = (i // 4) % 256
    return np.concatenate([red, green, blue]).astype(np.uint8)


def expected_pixel(r: int, c: int) -> tuple:
    i = r * 32 + c
    return (i % 256, (3 * i + 1) % 256, (i // 4) % 256)


def make_batch(index: int, n: int, *, str_keys: bool = False) -> dict:
    rng = np.random.default_rng(index)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    if index == 1:
        data[0] = known_image_row()
    labels = [int((index * 7 + j) % 10) for j in range(n)]
    batch = {
        b"batch_label": f"batch {index}".encode(),
        b"labels": labels,
        b"data": data,
        b"filenames": [f"img_{index}_{j}.png".encode() for j in range(n)],
    }
    if str_keys:
        batch = {k.decode(): v for k, v in batch.items()}
    return batch


def make_meta(*, str_keys: bool = False) -> dict:
    meta = {
        b"num_cases_per_batch": TRAIN_PER_BATCH,
        b"label_names": [name.encode() for name in CIFAR10_CLASSES],
        b"num_vis": 3072,
    }
    if str_keys:
        meta = {k.decode(): v for k, v in meta.items()}
    return meta


def make_objects(*, str_keys: bool = False) -> dict:
    """Member name -> unpickled object of a tiny, valid dataset."""
    objs = {f"data_batch_{i}": make_batch(i, TRAIN_PER_BATCH, str_keys=str_keys) for i in range(1, 6)}
    objs["test_batch"] = make_batch(6, TEST_N, str_keys=str_keys)
    objs["batches.meta"] = make_meta(str_keys=str_keys)
    return objs


def dump(obj) -> bytes:
    return pickle.dumps(obj, protocol=2)


def make_members(**overrides) -> dict:
    """Member name -> pickle bytes; overrides replace (bytes or objects) or drop (None) members."""
    members = {name: dump(obj) for name, obj in make_objects().items()}
    for name, value in overrides.items():
        name = name.replace("__", ".")
        if value is None:
            members.pop(name, None)
        else:
            members[name] = value if isinstance(value, bytes) else dump(value)
    return members


def write_archive(path: Path, members: dict, *, extra: dict | None = None) -> Path:
    """Write a .tar.gz with members under cifar-10-batches-py/ plus raw extra names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        folder = tarfile.TarInfo(FOLDER)
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        entries = [(f"{FOLDER}/{name}", raw) for name, raw in members.items()]
        entries += list((extra or {}).items())
        for name, raw in entries:
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


def write_folder(parent: Path, members: dict) -> Path:
    folder = parent / FOLDER
    folder.mkdir(parents=True)
    for name, raw in members.items():
        (folder / name).write_bytes(raw)
    return folder


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def archive(tmp_path) -> Path:
    return write_archive(tmp_path / "cifar-10-python.tar.gz", make_members())


def check_dataset(ds: CifarArrays) -> None:
    objs = make_objects()
    assert isinstance(ds, CifarArrays)
    assert ds.x_train.shape == (5 * TRAIN_PER_BATCH, 32, 32, 3)
    assert ds.x_train.dtype == np.uint8
    assert ds.y_train.shape == (5 * TRAIN_PER_BATCH,)
    assert ds.y_train.dtype == np.int64
    assert ds.x_test.shape == (TEST_N, 32, 32, 3)
    assert ds.x_test.dtype == np.uint8
    assert ds.y_test.shape == (TEST_N,)
    assert ds.y_test.dtype == np.int64
    assert ds.class_names == list(CIFAR10_CLASSES)
    assert all(isinstance(n, str) for n in ds.class_names)

    # Labels: batches concatenated in order 1..5.
    want_train = sum((objs[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    assert ds.y_train.tolist() == want_train
    assert ds.y_test.tolist() == objs["test_batch"][b"labels"]

    # Pixels: the known image, pixel for pixel.
    img = ds.x_train[0]
    for r in range(32):
        for c in range(32):
            assert tuple(int(v) for v in img[r, c]) == expected_pixel(r, c), (r, c)
    assert tuple(img[0, 1]) == (1, 4, 0)
    assert tuple(img[1, 0]) == (32, 97, 8)

    # Every image matches its source row (independent per-pixel formula).
    for i in range(1, 6):
        data = objs[f"data_batch_{i}"][b"data"]
        for j in range(TRAIN_PER_BATCH):
            got = ds.x_train[(i - 1) * TRAIN_PER_BATCH + j]
            r, c = (j * 5) % 32, (j * 11) % 32
            k = r * 32 + c
            assert tuple(got[r, c]) == (data[j, k], data[j, 1024 + k], data[j, 2048 + k])
            assert np.array_equal(got[..., 2], data[j, 2048:].reshape(32, 32))
    test_data = objs["test_batch"][b"data"]
    assert np.array_equal(ds.x_test[2, :, :, 1], test_data[2, 1024:2048].reshape(32, 32))


# --------------------------------------------------------------------------
# Happy paths
# --------------------------------------------------------------------------


def test_constants():
    assert CIFAR10_URL == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert CIFAR10_MD5 == "c58f30108f718f92721af3b95e74349a"
    assert CIFAR10_CLASSES == (
        "airplane", "automobile", "bird", "cat", "deer",
        "dog", "frog", "horse", "ship", "truck",
    )


def test_fixture_pickles_reference_numpy_reconstruct():
    raw = make_members()["data_batch_1"]
    assert b"_reconstruct" in raw and b"numpy" in raw


def test_load_from_archive(archive):
    check_dataset(load_cifar10(archive, md5=None))


def test_load_from_archive_with_matching_md5(archive):
    check_dataset(load_cifar10(str(archive), md5=md5_of(archive)))


def test_load_from_extracted_folder(tmp_path):
    folder = write_folder(tmp_path, make_members())
    check_dataset(load_cifar10(folder))


def test_load_from_folder_containing_extracted_folder(tmp_path):
    write_folder(tmp_path, make_members())
    # The default md5 does not apply to folders.
    check_dataset(load_cifar10(str(tmp_path)))


def test_str_keys_accepted(tmp_path):
    members = {name: dump(obj) for name, obj in make_objects(str_keys=True).items()}
    ds = load_cifar10(write_archive(tmp_path / "a.tar.gz", members), md5=None)
    check_dataset(ds)


def test_legacy_numpy_core_module_path_accepted(tmp_path):
    # The real files (numpy 1.x era) refer to numpy.core.multiarray._reconstruct.
    members = make_members()
    for name, raw in list(members.items()):
        members[name] = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray\n_reconstruct" in members["data_batch_1"]
    check_dataset(load_cifar10(write_archive(tmp_path / "a.tar.gz", members), md5=None))


def test_archive_with_dot_slash_member_names(tmp_path):
    path = tmp_path / "a.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, raw in make_members().items():
            info = tarfile.TarInfo(f"./{FOLDER}/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    check_dataset(load_cifar10(path, md5=None))


def test_batch_to_nhwc():
    rows = np.stack([known_image_row(), known_image_row()[::-1]])
    out = batch_to_nhwc(rows)
    assert out.shape == (2, 32, 32, 3)
    assert out.dtype == np.uint8
    assert out.flags["C_CONTIGUOUS"]
    assert tuple(out[0, 31, 31]) == expected_pixel(31, 31)
    assert np.array_equal(out[0, :, :, 0], rows[0, :1024].reshape(32, 32))
    assert np.array_equal(out[1, :, :, 2], rows[1, 2048:].reshape(32, 32))
    assert batch_to_nhwc(np.zeros((0, 3072), np.uint8)).shape == (0, 32, 32, 3)
    with pytest.raises(ValueError):
        batch_to_nhwc(np.zeros((2, 100), np.uint8))


def test_source_none_downloads_with_keras_get_file(tmp_path, monkeypatch, archive):
    calls = []

    def fake_get_file(**kwargs):
        calls.append(kwargs)
        return str(archive)

    fake_keras = types.ModuleType("keras")
    fake_keras.utils = types.SimpleNamespace(get_file=fake_get_file)
    monkeypatch.setitem(sys.modules, "keras", fake_keras)

    ds = load_cifar10(md5=md5_of(archive), cache_dir=str(tmp_path / "cache"))
    check_dataset(ds)
    assert calls == [
        {
            "fname": "cifar-10-python.tar.gz",
            "origin": CIFAR10_URL,
            "file_hash": CIFAR10_MD5,
            "cache_dir": str(tmp_path / "cache"),
        }
    ]


def test_source_none_download_failure_is_data_error(monkeypatch):
    def failing_get_file(**kwargs):
        raise Exception("URL fetch failure on https://example: None -- no network")

    fake_keras = types.ModuleType("keras")
    fake_keras.utils = types.SimpleNamespace(get_file=failing_get_file)
    monkeypatch.setitem(sys.modules, "keras", fake_keras)
    with pytest.raises(DataError, match="could not download"):
        load_cifar10()


def test_module_imports_without_keras_or_tensorflow():
    code = (
        "import sys\n"
        "sys.modules['keras'] = None\n"
        "sys.modules['tensorflow'] = None\n"
        "import imgclf.data.cifar\n"
        "assert 'keras' in sys.modules and sys.modules['keras'] is None\n"
        "print('ok')\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=HANG)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# --------------------------------------------------------------------------
# Bad inputs: every one is a single-line DataError naming the file
# --------------------------------------------------------------------------


def raises_data_error(*args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_cifar10(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_md5_mismatch(archive):
    msg = raises_data_error(archive, md5="0" * 32)
    assert "cifar-10-python.tar.gz" in msg
    assert "md5" in msg and "0" * 32 in msg and md5_of(archive) in msg


def test_default_md5_applies_to_archives(archive):
    msg = raises_data_error(archive)
    assert "cifar-10-python.tar.gz" in msg and CIFAR10_MD5 in msg


def test_missing_source(tmp_path):
    msg = raises_data_error(tmp_path / "nope.tar.gz")
    assert "nope.tar.gz" in msg and "no such file" in msg


def test_folder_without_batches(tmp_path):
    (tmp_path / "empty").mkdir()
    msg = raises_data_error(tmp_path / "empty")
    assert "empty" in msg and FOLDER in msg


def test_folder_missing_one_file(tmp_path):
    folder = write_folder(tmp_path, make_members(test_batch=None))
    msg = raises_data_error(folder)
    assert "test_batch" in msg and "missing" in msg


@pytest.mark.parametrize("missing", ["data_batch_3", "test_batch", "batches.meta"])
def test_archive_missing_member(tmp_path, missing):
    members = make_members()
    del members[missing]
    path = write_archive(tmp_path / "a.tar.gz", members)
    msg = raises_data_error(path, md5=None)
    assert "a.tar.gz" in msg and missing in msg and "missing" in msg


def test_truncated_archive(tmp_path, archive):
    raw = archive.read_bytes()
    bad = tmp_path / "truncated.tar.gz"
    bad.write_bytes(raw[: len(raw) // 2])
    msg = raises_data_error(bad, md5=None)
    assert "truncated.tar.gz" in msg


@pytest.mark.parametrize(
    "content",
    [b"this is not a gzip file at all", b"\x1f\x8b\x08\x00garbage-after-gzip-magic", b""],
    ids=["text", "bad-gzip", "empty"],
)
def test_corrupt_archive(tmp_path, content):
    bad = tmp_path / "corrupt.tar.gz"
    bad.write_bytes(content)
    msg = raises_data_error(bad, md5=None)
    assert "corrupt.tar.gz" in msg


def test_corrupt_gzip_body(tmp_path, archive):
    raw = bytearray(archive.read_bytes())
    for k in range(len(raw) // 3, len(raw) // 3 + 64):
        raw[k] ^= 0xFF
    bad = tmp_path / "flipped.tar.gz"
    bad.write_bytes(bytes(raw))
    msg = raises_data_error(bad, md5=None)
    assert "flipped.tar.gz" in msg


def with_batch3(**changes) -> dict:
    batch = make_batch(3, TRAIN_PER_BATCH)
    batch.update({k.encode(): v for k, v in changes.items()})
    return batch


@pytest.mark.parametrize(
    "batch, expected",
    [
        (with_batch3(data=np.zeros((10, 5), np.int64)),
         "expected uint8 array of shape (N, 3072), got int64 (10, 5)"),
        (with_batch3(data=np.zeros((4, 3072), np.int64)), "got int64 (4, 3072)"),
        (with_batch3(data=np.zeros((4, 3000), np.uint8)), "got uint8 (4, 3000)"),
        (with_batch3(data=np.zeros((4, 32, 32, 3), np.uint8)), "got uint8 (4, 32, 32, 3)"),
        (with_batch3(data=[[0] * 3072] * 4), "got list"),
        (with_batch3(labels=[0, 1, 2, 10]), "expected labels in 0..9, got 10 at index 3"),
        (with_batch3(labels=[0, -1, 2, 3]), "expected labels in 0..9, got -1 at index 1"),
        (with_batch3(labels=[0, 1, 2]), "expected 4 labels"),
        (with_batch3(labels=["a", "b", "c", "d"]), "integers"),
        (with_batch3(labels=[0.5, 1.0, 2.0, 3.0]), "integers"),
        ({b"labels": [0, 1, 2, 3]}, "'data'"),
        ({b"data": np.zeros((4, 3072), np.uint8)}, "'labels'"),
        ([1, 2, 3], "expected a dict"),
    ],
    ids=[
        "int64-10x5", "int64", "short-rows", "already-nhwc", "list-data", "label-10",
        "label-neg", "label-count", "label-str", "label-float", "no-data", "no-labels", "not-dict",
    ],
)
def test_invalid_batch(tmp_path, batch, expected):
    path = write_archive(tmp_path / "cifar-10-python.tar.gz", make_members(data_batch_3=batch))
    msg = raises_data_error(path, md5=None)
    assert msg.startswith(f"{path}: data_batch_3: "), msg
    assert expected in msg


def test_invalid_batch_in_folder_names_file(tmp_path):
    folder = write_folder(tmp_path, make_members(test_batch=with_batch3(labels=[1, 2, 3, 99])))
    msg = raises_data_error(folder)
    assert str(folder / "test_batch") in msg and "99" in msg


@pytest.mark.parametrize(
    "meta",
    [{b"label_names": [b"a", b"b"]}, {b"other": 1}, "not a dict"],
    ids=["too-few", "no-key", "not-dict"],
)
def test_invalid_meta(tmp_path, meta):
    path = write_archive(tmp_path / "a.tar.gz", make_members(batches__meta=meta))
    msg = raises_data_error(path, md5=None)
    assert "batches.meta" in msg


def test_garbage_pickle(tmp_path):
    path = write_archive(tmp_path / "a.tar.gz", make_members(data_batch_2=b"\x80\x02garbage"))
    msg = raises_data_error(path, md5=None)
    assert "data_batch_2" in msg


# --------------------------------------------------------------------------
# Malicious inputs
# --------------------------------------------------------------------------


class SystemCall:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class EvalCall:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (builtins.eval, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


class OpenCall:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


class NumpySave:
    """Uses a numpy function that is not on the allow-list."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (np.save, (str(self.marker), np.zeros(1)))


@pytest.mark.parametrize("payload", [SystemCall, EvalCall, OpenCall, NumpySave])
@pytest.mark.parametrize("nested", [False, True], ids=["top", "nested"])
def test_malicious_pickle_is_refused_without_running(tmp_path, payload, nested):
    marker = tmp_path / "pwned.npy"
    evil = payload(marker)
    if nested:
        # Hidden inside an otherwise valid batch, after the numpy data.
        obj = make_batch(1, TRAIN_PER_BATCH)
        obj[b"filenames"] = evil
    else:
        obj = evil
    raw = dump(obj)
    path = write_archive(tmp_path / "cifar-10-python.tar.gz", make_members(data_batch_1=raw))

    msg = raises_data_error(path, md5=None)
    assert "data_batch_1" in msg and "disallowed" in msg
    assert not marker.exists()
    assert not list(tmp_path.glob("pwned*"))


def test_malicious_pickle_in_folder_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    folder = write_folder(tmp_path, make_members(data_batch_1=dump(SystemCall(marker))))
    msg = raises_data_error(folder)
    assert "data_batch_1" in msg and "disallowed" in msg
    assert not marker.exists()


def test_codecs_encode_only_allows_latin1(tmp_path):
    # _codecs.encode('x', 'rot13') built by hand: PROTO 2, GLOBAL, 2 x BINUNICODE, TUPLE2, REDUCE, STOP
    def binunicode(s: str) -> bytes:
        b = s.encode()
        return b"X" + len(b).to_bytes(4, "little") + b

    raw = b"\x80\x02c_codecs\nencode\n" + binunicode("x") + binunicode("rot13") + b"\x86R."
    assert pickle.loads(raw) == codecs.encode("x", "rot13")  # what the real function would do
    path = write_archive(tmp_path / "a.tar.gz", make_members(data_batch_4=raw))
    msg = raises_data_error(path, md5=None)
    assert "data_batch_4" in msg and "rot13" in msg


def test_path_traversal_members_are_ignored(tmp_path, monkeypatch):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    marker = dump(SystemCall(tmp_path / "pwned"))
    path = write_archive(
        work / "cifar-10-python.tar.gz",
        make_members(),
        extra={
            "../evil": marker,
            "../../evil2": b"evil",
            f"{FOLDER}/../evil3": b"evil",
            f"{FOLDER}/../../data_batch_1": marker,
            str(tmp_path / "evil_abs"): b"evil",
            f"{FOLDER}/sub/data_batch_1": marker,
        },
    )
    before = sorted(p.name for p in tmp_path.rglob("*"))

    check_dataset(load_cifar10(path, md5=None))

    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert not any("evil" in p.name or "pwned" in p.name for p in tmp_path.rglob("*"))
    assert not (tmp_path / "a" / "evil").exists()


def test_symlink_member_with_expected_name_is_refused(tmp_path):
    members = make_members()
    del members["data_batch_1"]
    path = tmp_path / "a.tar.gz"
    # A symlink stands in for data_batch_1.
    with tarfile.open(path, "w:gz") as tar:
        for name, raw in members.items():
            info = tarfile.TarInfo(f"{FOLDER}/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
        link = tarfile.TarInfo(f"{FOLDER}/data_batch_1")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)
    msg = raises_data_error(path, md5=None)
    assert "data_batch_1" in msg and "regular file" in msg


def test_duplicate_member_is_refused(tmp_path):
    members = make_members()
    path = write_archive(
        tmp_path / "a.tar.gz", members, extra={f"{FOLDER}/test_batch": members["test_batch"]}
    )
    msg = raises_data_error(path, md5=None)
    assert "test_batch" in msg and "more than once" in msg

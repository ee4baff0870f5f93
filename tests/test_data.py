"""Image folders and CIFAR archives as datasets: split, cache, streaming and every bad input."""

import os
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from conftest import make_folder
from imgclf.data import dataset as data_mod
from imgclf.data.dataset import class_weights, load_dataset, load_folder, scan_folder, stratified_split
from imgclf.errors import DataError


def test_scan_sorts_classes_and_labels(colour_folder):
    files, labels, names = scan_folder(colour_folder)
    assert names == ["blue", "green", "red"]
    assert len(files) == 36 and np.bincount(labels).tolist() == [12, 12, 12]
    assert files[0].startswith("blue/") and labels[0] == 0


def test_split_is_seeded_stratified_and_disjoint():
    labels = np.repeat(np.arange(4), 50)
    tr, va = stratified_split(labels, 0.1, seed=3)
    tr2, va2 = stratified_split(labels, 0.1, seed=3)
    assert (va == va2).all() and (tr == tr2).all()
    assert not set(tr) & set(va) and len(tr) + len(va) == 200
    assert np.bincount(labels[va]).tolist() == [5, 5, 5, 5]
    assert not (stratified_split(labels, 0.1, seed=4)[1] == va).all()


def test_load_dataset_records_the_split(colour_folder):
    ds = load_dataset(str(colour_folder), val_fraction=0.25, split_seed=1)
    assert ds.train.x.shape == (27, 32, 32, 3) and ds.val.x.dtype == np.uint8
    assert ds.split["seed"] == 1 and ds.split["n_val"] == 9
    assert ds.split["train_files_hash"] == data_mod.files_hash(ds.train.files)
    assert ds.test is None and ds.class_names == ["blue", "green", "red"]


def test_train_and_test_subfolders(tmp_path):
    make_folder(tmp_path / "ds" / "train", per_class=10)
    make_folder(tmp_path / "ds" / "test", per_class=4, seed=1)
    ds = load_dataset(str(tmp_path / "ds"))
    assert len(ds.train) + len(ds.val) == 30 and len(ds.test) == 12


def test_test_folder_with_other_classes_is_refused(tmp_path):
    make_folder(tmp_path / "train", per_class=6)
    make_folder(tmp_path / "test", per_class=2, classes={"blue": (0, 0, 255), "cyan": (0, 255, 255)})
    with pytest.raises(DataError, match=r"test: classes \['blue', 'cyan'\] differ"):
        load_dataset(str(tmp_path / "train"), str(tmp_path / "test"))


def test_missing_and_empty_folders(tmp_path, colour_folder):
    with pytest.raises(DataError, match="nowhere: folder not found"):
        load_dataset(str(tmp_path / "nowhere"))
    (colour_folder / "yellow").mkdir()
    with pytest.raises(DataError, match="yellow: class folder is empty"):
        scan_folder(colour_folder)
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        scan_folder(tmp_path / "flat")


def test_non_image_and_corrupt_files(colour_folder):
    (colour_folder / "red" / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"notes\.txt: not an image file"):
        scan_folder(colour_folder)
    files, _, _ = scan_folder(colour_folder, skip_bad=True)
    assert not any(f.endswith(".txt") for f in files)
    (colour_folder / "red" / "notes.txt").unlink()
    (colour_folder / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(DataError, match=r"broken\.png"):
        load_folder(colour_folder)


def test_skip_bad_images_counts_and_skips(colour_folder, capsys):
    (colour_folder / "red" / "broken.png").write_bytes(b"garbage")
    ims, names = load_folder(colour_folder, skip_bad=True)
    assert len(ims) == 36 and "broken.png" not in " ".join(ims.files)
    assert "skipped 1 bad image(s) of 37" in capsys.readouterr().err


def test_bad_image_leaves_no_cache_file(colour_folder):
    (colour_folder / "red" / "broken.png").write_bytes(b"garbage")
    before = set(data_mod.cache_dir().glob("*")) if data_mod.cache_dir().exists() else set()
    with pytest.raises(DataError):
        load_folder(colour_folder)
    after = set(data_mod.cache_dir().glob("*")) if data_mod.cache_dir().exists() else set()
    assert after == before


def test_second_load_uses_the_cache(colour_folder, monkeypatch):
    first, _ = load_folder(colour_folder)
    with monkeypatch.context() as m:
        m.setattr(data_mod, "_decode_chunk", lambda *a: pytest.fail("decoded again despite the cache"))
        second, _ = load_folder(colour_folder)
    assert (first.x == second.x).all()
    assert not list(data_mod.cache_dir().glob("*.tmp*"))
    # a changed file (size/mtime) changes the key: the cache is not trusted blindly
    path = colour_folder / "red" / "000.png"
    Image.new("RGB", (32, 32), (0, 0, 0)).save(path)
    os.utime(path, ns=(1, 1))
    third, _ = load_folder(colour_folder)
    assert third.x[24].max() == 0  # red/000.png is the 25th file (blue, green, then red)


def test_streaming_when_over_the_memory_limit(colour_folder, monkeypatch):
    monkeypatch.setenv("IMGCLF_MAX_MEMORY_GB", "0.00001")
    ims, _ = load_folder(colour_folder)
    assert ims.x is None
    batch = ims.images(np.array([0, 35]))
    assert batch.shape == (2, 32, 32, 3) and batch[1, :, :, 0].mean() > 150  # red


def test_limit_per_class(colour_folder):
    ims, _ = load_folder(colour_folder, limit_per_class=5)
    assert np.bincount(ims.y).tolist() == [5, 5, 5]


def test_balanced_class_weights():
    w = class_weights(np.array([0] * 30 + [1] * 10), 2)
    assert w[1] / w[0] == pytest.approx(3.0)


def _tiny_cifar(path, n=6):
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        def add(name, obj):
            raw = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            import io
            tar.addfile(info, io.BytesIO(raw))
        for b in range(1, 6):
            add(f"data_batch_{b}", {b"data": rng.integers(0, 256, (n * 2, 3072), dtype=np.uint8),
                                    b"labels": [i % 10 for i in range(n * 2)], b"batch_label": b"x", b"filenames": []})
        add("test_batch", {b"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8), b"labels": list(range(10)),
                           b"batch_label": b"t", b"filenames": []})
        add("batches.meta", {b"label_names": [c.encode() for c in
                             "airplane automobile bird cat deer dog frog horse ship truck".split()]})
    return path


def test_cifar_archive_as_a_dataset(tmp_path, monkeypatch):
    archive = _tiny_cifar(tmp_path / "cifar-10-python.tar.gz")
    from imgclf.data import cifar

    monkeypatch.setattr(cifar, "CIFAR10_MD5", None)
    monkeypatch.setattr(cifar.load_cifar10, "__defaults__", (None, None, None))
    ds = load_dataset(str(archive), val_fraction=0.2)
    assert len(ds.train) + len(ds.val) == 60 and len(ds.test) == 10
    assert ds.class_names[0] == "airplane" and ds.class_names[-1] == "truck"
    assert ds.train.x.shape[1:] == (32, 32, 3)


def test_cifar_archive_with_a_wrong_checksum(tmp_path):
    archive = _tiny_cifar(tmp_path / "cifar-10-python.tar.gz")
    with pytest.raises(DataError, match="cifar-10-python.tar.gz"):
        load_dataset(str(archive))

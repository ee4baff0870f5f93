"""The data summary printed before training: split sizes, class balance, image sizes, skipped files."""

import numpy as np
from PIL import Image

from imgclf.data.dataset import Dataset, ImageSet, load_dataset
from imgclf.data.summary import format_sizes, header_size, summarize

# (class, images in train/, their sizes as width x height, cycled)
TRAIN = {"ant": (8, [(40, 30), (40, 30), (60, 20)]), "bee": (2, [(10, 50)]), "cat": (4, [(40, 30), (90, 90)])}


def _image(path, size, seed):
    w, h = size
    rgb = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)


def _folder(root, counts, seed=0):
    for name, (n, sizes) in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _image(root / name / f"{i}.png", sizes[i % len(sizes)], seed + i)
    return root


def _unbalanced(tmp_path):
    root = tmp_path / "ds"
    _folder(root / "train", TRAIN)
    _folder(root / "validation", {name: (1, [(40, 30)]) for name in TRAIN}, seed=50)
    return root


def test_counts_balance_and_sizes_of_an_unbalanced_folder(tmp_path):
    ds = load_dataset(str(_unbalanced(tmp_path)))
    s = summarize(ds)
    assert s.splits == {"train": 14, "val": 3, "test": 0}
    assert s.class_counts == [8, 2, 4] and s.imbalance == 4.0 and s.skipped == 0
    # the 17 images: ant's 8, bee's 2, cat's 4 (sizes cycled as in TRAIN), then validation's 3
    sizes = [(40, 30)] * 6 + [(60, 20)] * 2 + [(10, 50)] * 2 + [(40, 30), (90, 90)] * 2 + [(40, 30)] * 3
    wh = np.asarray(sizes)
    assert s.sizes["median"] == [int(np.median(wh[:, 0])), int(np.median(wh[:, 1]))] == [40, 30]
    assert s.sizes["smallest"] == [10, 50] and s.sizes["largest"] == [90, 90]
    assert (s.sizes["read"], s.sizes["of"]) == (17, 17)
    lines = s.lines()
    assert lines[0] == "images: 14 train, 3 validation (the validation/ folder), no test set"
    assert lines[1] == ("classes: 3, training images per class: min 2 (bee), median 4, max 8 (ant); "
                        "imbalance 4.0:1")
    assert lines[2] == "image sizes: median 40x30, smallest 10x50, largest 90x90 (all 17 read)"
    d = s.to_dict()
    assert d["imbalance"] == 4.0 and d["class_names"] == ["ant", "bee", "cat"]


def test_a_bounded_seeded_sample_of_headers(tmp_path):
    ds = load_dataset(str(_unbalanced(tmp_path)), input_size=16)
    a, b = summarize(ds, sample=5, seed=1), summarize(ds, sample=5, seed=1)
    assert (a.sizes["read"], a.sizes["of"]) == (5, 17) and a.sizes == b.sizes
    assert "(5 of 17 read)" in str(a)
    assert summarize(ds, sample=0).sizes["read"] == 0
    assert format_sizes(summarize(ds, sample=0).sizes) == "unknown (no image header could be read)"


def test_carved_split_skipped_files_and_a_test_set(tmp_path):
    root = tmp_path / "ds"
    _folder(root / "train", {"ant": (6, [(32, 32)]), "bee": (6, [(32, 32)])})
    _folder(root / "test", {"ant": (2, [(32, 32)]), "bee": (2, [(32, 32)])}, seed=9)
    (root / "train" / "bee" / "junk.png").write_bytes(b"not a png")  # decoded: fails, skipped
    (root / "train" / "ant" / "notes.txt").write_text("not an image")  # listed: skipped
    ds = load_dataset(str(root), val_fraction=0.25, split_seed=2, skip_bad_images=True)
    s = summarize(ds)
    assert s.skipped == 2 and s.splits == {"train": 9, "val": 3, "test": 4}
    assert str(s).splitlines()[0] == ("images: 9 train, 3 validation (25% carved out of the training images, "
                                      "split seed 2), 4 test; 2 bad file(s) skipped")
    assert s.lines()[2] == "image sizes: 32x32 (all)"


def test_in_memory_arrays_have_one_known_size():
    y = np.arange(20) % 2
    arrays = ImageSet(y, [f"cifar10/train/{i:05d}" for i in range(20)], np.zeros((20, 32, 32, 3), np.uint8))
    ds = Dataset(arrays.subset(np.arange(16)), arrays.subset(np.arange(16, 20)), None, ["a", "b"],
                 {"val_source": "carved", "seed": 0, "val_fraction": 0.2})
    s = summarize(ds, sample=3)
    assert (s.sizes["read"], s.sizes["of"]) == (20, 20) and s.lines()[2] == "image sizes: 32x32 (all)"


def test_header_size_follows_exif_orientation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when shown, as images.to_rgb does
    Image.new("RGB", (40, 20)).save(tmp_path / "turned.jpg", exif=exif)
    Image.new("RGB", (40, 20)).save(tmp_path / "plain.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    assert header_size(tmp_path / "turned.jpg") == (20, 40)
    assert header_size(tmp_path / "plain.jpg") == (40, 20)
    assert header_size(tmp_path / "bad.jpg") is None

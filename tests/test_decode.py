"""The decode rule of images.to_rgb: "draft" (Pillow's JPEG draft mode) against "full".

Where draft mode changes nothing (CIFAR-10's 32 px JPEGs at 32 px), how little it changes a
photo, that it never decodes smaller than the resize rule needs (EXIF rotation included), and
that the rule travels with the model (metadata, every runtime path) and with the cache key.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclf.cli import main
from imgclf.data import dataset, images
from imgclf.data.dataset import decode_images, load_dataset
from imgclf.data.images import DECODE_RULES, RESIZE_RULES, to_rgb
from imgclf.errors import DataError, ImgclfError
from imgclf.runtime.classifier import Classifier
from imgclf.runtime.modelmeta import validate_meta

CLASSES = ["a", "b", "c"]


def photo(path: Path, width: int = 400, height: int = 533, orientation: int | None = None, seed: int = 0) -> Path:
    """A photo-like JPEG: smooth shading, a few hard-edged discs and mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    arr = np.stack([120 + 100 * np.sin(3 * xx + c) * np.cos(2 * yy - c) for c in range(3)], -1)
    for _ in range(6):
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(20, 80)
        arr[(np.mgrid[0:height, 0:width][0] - cy) ** 2 + (np.mgrid[0:height, 0:width][1] - cx) ** 2 < r * r] = \
            rng.uniform(0, 255, 3)
    arr = np.clip(arr + rng.normal(0, 6, arr.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    exif = img.getexif()
    if orientation:
        exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, quality=90, exif=exif)
    return path


@pytest.fixture
def decoded_sizes(monkeypatch) -> list:
    """The (width, height) of every image to_rgb hands to its resize step, upright."""
    seen, real = [], images._resize

    def spy(img, height, width, rule):
        seen.append(img.size)
        return real(img, height, width, rule)

    monkeypatch.setattr(images, "_resize", spy)
    return seen


# --- where draft mode changes nothing -------------------------------------------------------------

def test_draft_leaves_cifar_jpegs_at_32_px_unchanged(cifar_jpeg):
    """Draft mode reduces only when the target is at most half the image: CIFAR-10 JPEGs at 32 px
    decode to the same arrays, one by one and through the parallel path training uses, so seeded
    runs on them stay identical."""
    root = cifar_jpeg / "train"
    files = [f"{c.name}/{p.name}" for c in sorted(root.iterdir()) for p in sorted(c.glob("*.jpg"))[:20]]
    assert len(files) == 200
    for rule in RESIZE_RULES:
        full = np.stack([to_rgb(root / f, 32, rule, "full") for f in files[:40]])
        assert np.array_equal(full, np.stack([to_rgb(root / f, 32, rule, "draft") for f in files[:40]])), rule
    x_full, kept_full = decode_images(root, files, (32, 32), use_cache=False, decode="full")
    x_draft, kept_draft = decode_images(root, files, (32, 32), use_cache=False, decode="draft")
    assert np.array_equal(kept_full, kept_draft) and np.array_equal(x_full, x_draft)
    # the same files at 16 px are decoded at half size, so the comparison above is not vacuous
    assert not np.array_equal(np.stack([to_rgb(root / f, 16, decode="full") for f in files[:40]]),
                              np.stack([to_rgb(root / f, 16, decode="draft") for f in files[:40]]))


def test_draft_leaves_other_formats_and_small_jpegs_alone(tmp_path, decoded_sizes):
    big_png = tmp_path / "p.png"
    Image.open(photo(tmp_path / "p.jpg")).save(big_png)
    assert np.array_equal(to_rgb(big_png, 64, decode="full"), to_rgb(big_png, 64, decode="draft"))
    small = photo(tmp_path / "s.jpg", 120, 127)  # less than twice 64 on one side: no reduction
    assert np.array_equal(to_rgb(small, 64, decode="full"), to_rgb(small, 64, decode="draft"))
    assert decoded_sizes == [(400, 533)] * 2 + [(120, 127)] * 2


# --- what draft mode changes ----------------------------------------------------------------------

@pytest.mark.parametrize("rule", RESIZE_RULES)
def test_draft_is_close_to_full_on_a_photo(tmp_path, rule, decoded_sizes):
    path = photo(tmp_path / "p.jpg")  # 400 wide x 533 tall
    full, draft = to_rgb(path, 64, rule, "full"), to_rgb(path, 64, rule, "draft")
    assert full.shape == draft.shape == (64, 64, 3) and draft.dtype == np.uint8
    diff = np.abs(full.astype(int) - draft.astype(int))
    assert 0 < diff.mean() < 3, diff.mean()
    assert decoded_sizes == [(400, 533), (100, 134)]  # draft: a quarter of each side, both still >= 64


@pytest.mark.parametrize("size", [(64, 64), (40, 100), (100, 40), (24, 150)])
@pytest.mark.parametrize("rule", RESIZE_RULES)
def test_draft_never_decodes_smaller_than_the_target(tmp_path, rule, size, decoded_sizes):
    """(height, width) targets, square and not: each side of the decoded image is at least the target's."""
    path = photo(tmp_path / "p.jpg", 533, 400)
    out = to_rgb(path, size, rule, "draft")
    assert out.shape == (*size, 3)
    (w, h), = decoded_sizes
    assert w >= size[1] and h >= size[0], (w, h, size)
    assert (w, h) != (533, 400) or max(size) * 2 > 400  # and it did reduce where it could
    full = to_rgb(path, size, rule, "full")
    assert np.abs(full.astype(int) - out.astype(int)).mean() < 3


def test_draft_with_exif_rotation_keeps_enough_pixels(tmp_path, decoded_sizes):
    """EXIF 6 turns a stored 1000x200 image into an upright 200x1000 one. Asking the decoder for the
    target in upright terms (190 wide, 20 tall) would allow 1/4 of the stored size (250x50, upright
    50 wide: too narrow); draft mode asks for the longer side on both sides and stays at full size."""
    path = photo(tmp_path / "tall.jpg", 1000, 200, orientation=6)
    out = to_rgb(path, (20, 190), "stretch", "draft")
    assert out.shape == (20, 190, 3)
    assert decoded_sizes == [(200, 1000)]
    assert np.array_equal(out, to_rgb(path, (20, 190), "stretch", "full"))


@pytest.mark.parametrize("rule", RESIZE_RULES)
def test_draft_with_exif_rotation_is_upright_and_close(tmp_path, rule, decoded_sizes):
    path = photo(tmp_path / "rot.jpg", 533, 400, orientation=6)  # stored wide, upright tall
    full, draft = to_rgb(path, 64, rule, "full"), to_rgb(path, 64, rule, "draft")
    assert decoded_sizes == [(400, 533), (100, 134)]  # both upright, draft at a quarter
    assert np.abs(full.astype(int) - draft.astype(int)).mean() < 3  # a wrong turn would differ widely


def test_unknown_decode_rule_is_refused(tmp_path):
    with pytest.raises(DataError, match="decode: unknown rule 'fast'"):
        to_rgb(photo(tmp_path / "p.jpg"), 64, decode="fast")


def test_a_bytes_upload_decodes_like_its_file(tmp_path):
    path = photo(tmp_path / "p.jpg")
    for rule in DECODE_RULES:
        assert np.array_equal(to_rgb(path.read_bytes(), 64, decode=rule), to_rgb(path, 64, decode=rule))


# --- the rule in the model's metadata ---------------------------------------------------------------

META = {"class_names": CLASSES, "input_size": 64, "resize": "stretch"}


def test_a_model_without_a_decode_field_keeps_full(tmp_path):
    path = photo(tmp_path / "p.jpg")
    old = Classifier(tmp_path / "old.keras", validate_meta(dict(META), "old.keras: imgclf.json"))
    new = Classifier(tmp_path / "new.keras", validate_meta({**META, "decode": "draft"}, "new.keras: imgclf.json"))
    assert (old.decode, new.decode) == ("full", "draft")
    assert np.array_equal(old.load_images([path])[0], to_rgb(path, 64, decode="full"))
    assert np.array_equal(new.load_images([path])[0], to_rgb(path, 64, decode="draft"))
    assert not np.array_equal(old.load_images([path]), new.load_images([path]))


@pytest.mark.parametrize("value", ["fast", "FULL", 3, None, ["draft"]])
def test_a_bad_decode_value_is_one_error_naming_the_field(value):
    with pytest.raises(ImgclfError) as e:
        validate_meta({**META, "decode": value}, "m.keras: imgclf.json")
    assert str(e.value).startswith("m.keras: imgclf.json: decode: expected one of full, draft, got ")
    assert "\n" not in str(e.value)


def onnx_model(path: Path, meta: dict) -> Path:
    """A tiny .onnx classifier (softmax of the mean colour) carrying imgclf metadata `meta`."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["m"], axes=[1, 2], keepdims=0),
         helper.make_node("Div", ["m", "k"], ["s"]), helper.make_node("Softmax", ["s"], ["p"], axis=1)],
        "mean_colour", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64, 64, 3])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor("k", TensorProto.FLOAT, [], [8.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    entry = model.metadata_props.add()
    entry.key, entry.value = "imgclf", json.dumps(meta)
    onnx.save(model, str(path))
    return path


def test_onnx_runtime_predict_and_serve_use_the_models_rule(tmp_path, capsys):
    from imgclf.deploy import serve
    from imgclf.runtime.onnx_runtime import OnnxClassifier

    path = photo(tmp_path / "p.jpg")
    for rule in (None, "full", "draft"):
        meta = dict(META) if rule is None else {**META, "decode": rule}
        model = onnx_model(tmp_path / f"{rule}.onnx", meta)
        clf = OnnxClassifier(model)
        want = to_rgb(path, 64, decode=rule or "full")
        assert clf.decode == (rule or "full")
        assert np.array_equal(clf.load_images([path])[0], want)
        assert np.array_equal(serve._decode_all([path.read_bytes()], ["p.jpg"], clf)[0], want)
        assert main(["predict", str(model), str(path), "--json"]) == 0
        top = json.loads(capsys.readouterr().out)[0]["top"]
        expected = clf.predict_proba(want[None])[0]
        assert {t["class"]: round(t["probability"], 5) for t in top} == \
            {c: round(float(p), 5) for c, p in zip(CLASSES, expected)}


def test_predict_refuses_a_bad_decode_value_with_one_error_line(tmp_path, capsys):
    model = onnx_model(tmp_path / "m.onnx", {**META, "decode": "quick"})
    assert main(["predict", str(model), str(photo(tmp_path / "p.jpg"))]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1 and lines[0].startswith("error: ") and "m.onnx" in lines[0], err
    assert "decode: expected one of full, draft, got 'quick'" in lines[0]


def test_evaluate_decodes_the_data_with_the_models_rule(tmp_path):
    from imgclf.evaluation.evaluator import run_evaluation

    data = tmp_path / "data"
    for i, name in enumerate(CLASSES):
        for j in range(4):
            photo(data / name / f"{j}.jpg", seed=10 * i + j)
    for rule in ("full", "draft"):
        model = onnx_model(tmp_path / f"{rule}.onnx", {**META, "decode": rule, "split": {"val_fraction": 0.5}})
        ev = run_evaluation(model, str(data), out_dir=tmp_path / f"ev-{rule}", verbose=False)
        held = ev.images
        assert held.decode == rule and len(held) > 0
        want = np.stack([to_rgb(held.root / f, 64, decode=rule) for f in held.files])
        assert np.array_equal(held.all_images(), want)


# --- the rule in training data and the cache --------------------------------------------------------

def test_training_data_decodes_with_draft_and_the_model_records_it(tmp_path):
    from imgclf.config.resolve import make_config
    from imgclf.training.trainer import model_meta

    data = tmp_path / "data"
    for i, name in enumerate(CLASSES):
        for j in range(4):
            photo(data / name / f"{j}.jpg", seed=10 * i + j)
    ds = load_dataset(str(data), input_size=64, val_fraction=0.25)
    assert ds.train.decode == ds.val.decode == "draft"
    first = ds.train.root / ds.train.files[0]
    assert np.array_equal(ds.train.x[0], to_rgb(first, 64, decode="draft"))
    assert load_dataset(str(data), input_size=64, val_fraction=0.25, decode="full").train.decode == "full"

    class Model:
        def count_params(self):
            return 1

    meta = model_meta(make_config(data=str(data), input_size=64), ds, Model())
    assert meta["decode"] == "draft"
    assert validate_meta(json.loads(json.dumps(meta)), "m")["decode"] == "draft"


def test_the_decode_rule_is_part_of_the_cache_key(tmp_path, monkeypatch):
    root = tmp_path / "data"
    files = [f"a/{i}.jpg" for i in range(3)]
    for i, name in enumerate(files):
        photo(root / name, seed=i)
    assert dataset._cache_key(root, files, (64, 64), "stretch", "full") != \
        dataset._cache_key(root, files, (64, 64), "stretch", "draft")
    monkeypatch.setenv("IMGCLF_CACHE", str(tmp_path / "cache"))
    x_full, _ = decode_images(root, files, (64, 64), decode="full")
    x_draft, _ = decode_images(root, files, (64, 64), decode="draft")
    assert len(list((tmp_path / "cache").glob("images-*.npz"))) == 2
    assert not np.array_equal(x_full, x_draft)
    assert np.array_equal(decode_images(root, files, (64, 64), decode="draft")[0], x_draft)  # from the cache
    assert np.array_equal(decode_images(root, files, (64, 64), decode="full")[0], x_full)


def test_progress_is_shown_for_large_sets_only_when_asked(tmp_path, capsys):
    root = tmp_path / "many"
    (root / "a").mkdir(parents=True)
    blob = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(blob, "PNG")
    files = [f"a/{i}.png" for i in range(dataset.PROGRESS_MIN + 1)]
    for name in files:
        (root / name).write_bytes(blob.getvalue())
    for progress, n, shown in ((True, len(files), True), (False, len(files), False),
                               (None, len(files), False), (True, 10, False)):  # None: stderr is no terminal here
        x, _ = decode_images(root, files[:n], (8, 8), use_cache=False, progress=progress)
        assert len(x) == n
        err = capsys.readouterr().err
        assert ("decoding many" in err) == shown, (progress, n, err[-300:])

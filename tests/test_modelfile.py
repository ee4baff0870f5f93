"""Model files are input too: malformed metadata, metadata that does not fit the model, and zip
bombs in a .keras or .onnx file end in one `error:` line naming the file and the field (exit 2),
never a traceback or a wrong answer."""

from __future__ import annotations

import json
import math
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from imgclf.cli import main
from imgclf.errors import ImgclfError
from imgclf.data.images import RESIZE_RULES
from imgclf.runtime.modelmeta import MAX_INPUT_SIZE, MAX_META_BYTES, validate_meta
from conftest import HANG

CLASSES = ["red", "green", "blue"]
GOOD = {"class_names": CLASSES, "input_size": 8, "resize": "stretch", "temperature": 1.0, "tta_translate": 0}
MISSING = object()
LONG = "x" * 5000

# (field named in the error, value written into the metadata). Values that type-check but do not
# fit the 8x8x3 -> 3-class model are caught against the model's shapes when it is loaded.
BAD = [
    ("class_names", 3), ("class_names", "red green blue"), ("class_names", ["red", 2, "blue"]),
    ("class_names", []), ("class_names", ["red", "red", "blue"]), ("class_names", [LONG, "green", "blue"]),
    ("class_names", ["red", "gr\x1b[31meen", "blue"]), ("class_names", ["red", "green"]),
    ("class_names", ["red", "green", "blue", "black"]), ("class_names", MISSING),
    ("input_size", "abc"), ("input_size", -8), ("input_size", 0), ("input_size", 10**12), ("input_size", 8.0),
    ("input_size", True), ("input_size", 16),
    ("resize", "squash"), ("resize", 3), ("resize", LONG),
    ("temperature", 0), ("temperature", -1.0), ("temperature", float("nan")), ("temperature", float("inf")),
    ("temperature", "hot"), ("temperature", None), ("temperature", 1e-300),
    ("tta_translate", -1), ("tta_translate", "2"), ("tta_translate", 1.5), ("tta_translate", 8),
    ("tta", "yes"), ("split", "train"), ("split", {"val_fraction": 2}), ("split", {"seed": "x"}),
    ("params", "many"), ("model", ["a"]), ("metrics", [1]),
]
IDS = [f"{field}={str(value)[:20]}" for field, value in BAD]


def bad_meta(field, value) -> dict:
    meta = dict(GOOD)
    if value is MISSING:
        del meta[field]
    else:
        meta[field] = value
    return meta


def replace_member(src: Path, dst: Path, name: str, data: bytes) -> Path:
    """A copy of zip `src` with member `name` replaced by (or added as) `data`."""
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as out:
        for item in z.infolist():
            if item.filename != name:
                out.writestr(item, z.read(item.filename))
        if data is not None:
            out.writestr(name, data)
    return dst


def set_declared_size(path: Path, member: str, size: int) -> None:
    """Make the zip's central directory claim that `member` inflates to `size` bytes (a lie)."""
    data = bytearray(path.read_bytes())
    end = data.rfind(b"PK\x05\x06")
    count, _, start = struct.unpack_from("<HII", data, end + 10)
    at = start
    for _ in range(count):
        assert data[at:at + 4] == b"PK\x01\x02"
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", data, at + 28)
        if data[at + 46:at + 46 + name_len] == member.encode():
            struct.pack_into("<I", data, at + 24, size)
            path.write_bytes(bytes(data))
            return
        at += 46 + name_len + extra_len + comment_len
    raise AssertionError(f"{member} not in {path}")


def one_error_line(capsys, path: Path, *words) -> str:
    """Stderr is exactly one `error:` line naming the file and each of `words` (outside the path,
    which contains the test's name), stdout is empty, and no traceback."""
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
    assert "Traceback" not in err and out == "", (out[-500:], err[-500:])
    line = lines[0]
    assert path.name in line and len(line) < 400, line
    rest = line.replace(str(path), "")
    for word in words:
        assert word in rest, line
    return line


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A real 8x8x3 -> 3-class .keras model with valid metadata."""
    import keras

    from imgclf.runtime.modelfile import save_model

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
                              keras.layers.Dense(3, activation="softmax")])
    return save_model(model, tmp_path_factory.mktemp("modelfile") / "tiny.keras", GOOD)


@pytest.fixture(scope="module")
def base_onnx(base) -> Path:
    from imgclf.deploy.export import export

    return export(base, "onnx", base.with_name("tiny.onnx")).path


@pytest.fixture(scope="module")
def data(base) -> Path:
    """A tiny image folder (for evaluate and predict) with the model's classes."""
    root = base.parent / "data"
    rng = np.random.default_rng(0)
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def keras_with_meta(base: Path, tmp_path: Path, meta, name="bad.keras") -> Path:
    return replace_member(base, tmp_path / name, "imgclf.json", json.dumps(meta).encode())


def onnx_with_meta(base_onnx: Path, tmp_path: Path, text: str, name="bad.onnx") -> Path:
    import onnx

    proto = onnx.load(str(base_onnx))
    entry = next(p for p in proto.metadata_props if p.key == "imgclf")
    entry.value = text
    onnx.save(proto, str(tmp_path / name))
    return tmp_path / name


def test_valid_model_predicts(base, base_onnx, data, capsys):
    """The baseline the bad cases are made from works on both runtimes."""
    image = data / "red" / "0.png"
    for path in (base, base_onnx):
        assert main(["predict", str(path), str(image), "--json"]) == 0
        rows = json.loads(capsys.readouterr().out)
        assert len(rows) == 1 and {t["class"] for t in rows[0]["top"]} == set(CLASSES)


@pytest.mark.parametrize("field, value", BAD, ids=IDS)
def test_bad_keras_metadata(field, value, base, data, tmp_path, capsys):
    from imgclf.deploy.serve import create_app

    path = keras_with_meta(base, tmp_path, bad_meta(field, value))
    image = data / "red" / "0.png"
    assert main(["predict", str(path), str(image)]) == 2
    line = one_error_line(capsys, path, field)
    assert LONG not in line and "xxxxxxxxxx" * 7 not in line  # the echoed value is bounded
    assert main(["evaluate", str(path), "--data", str(data), "--out", str(tmp_path / "ev")]) == 2
    one_error_line(capsys, path, field)
    assert not (tmp_path / "ev").exists()
    assert main(["export", str(path), "--format", "onnx"]) == 2
    one_error_line(capsys, path, field)
    assert not path.with_suffix(".onnx").exists()
    with pytest.raises(ImgclfError, match=field):
        create_app(path, warmup=False)


@pytest.mark.parametrize("field, value", BAD, ids=IDS)
def test_bad_onnx_metadata(field, value, base_onnx, data, tmp_path, capsys):
    from imgclf.deploy.serve import create_app

    path = onnx_with_meta(base_onnx, tmp_path, json.dumps(bad_meta(field, value)))
    assert main(["predict", str(path), str(data / "red" / "0.png")]) == 2
    one_error_line(capsys, path, field, "'imgclf' metadata")
    with pytest.raises(ImgclfError, match=field):
        create_app(path, warmup=False)


def test_bad_metadata_in_a_fresh_process(base, data, tmp_path):
    """The installed command: exit 2, one line, no traceback, no TensorFlow start-up noise."""
    path = keras_with_meta(base, tmp_path, bad_meta("temperature", 0))
    r = subprocess.run([sys.executable, "-m", "imgclf.cli", "predict", str(path), str(data / "red" / "0.png")],
                       capture_output=True, text=True, timeout=HANG)
    assert r.returncode == 2 and r.stdout == "", (r.stdout, r.stderr[-2000:])
    assert r.stderr.strip().splitlines() == [f"error: {path}: imgclf.json: temperature: expected a number "
                                             "from 0.001 to 1000, got 0"]


NOT_AN_OBJECT = [("a string", b'"class_names"'), ("a list", b'["red", "green", "blue"]'), ("a number", b"3"),
                 ("null", b"null")]
BAD_JSON = [(b'{"class_names": [', "not valid JSON", "line 1 col 18"), (b"\xff\xfe{}", "not valid UTF-8", "byte 0"),
            (b"[" * 100_000, "not valid JSON", ""), (b'{"input_size": 1' + b"0" * 5000 + b"}", "not valid JSON", ""),
            (b"\xef\xbb\xbf{}", "not valid JSON", "BOM")]


@pytest.mark.parametrize("what, raw", NOT_AN_OBJECT, ids=[w for w, _ in NOT_AN_OBJECT])
def test_metadata_that_is_not_an_object(what, raw, base, base_onnx, data, tmp_path, capsys):
    image = str(data / "red" / "0.png")
    path = replace_member(base, tmp_path / "bad.keras", "imgclf.json", raw)
    assert main(["predict", str(path), image]) == 2
    assert "expected a JSON object" in one_error_line(capsys, path, "imgclf.json")
    path = onnx_with_meta(base_onnx, tmp_path, raw.decode())
    assert main(["predict", str(path), image]) == 2
    assert "expected a JSON object" in one_error_line(capsys, path, "'imgclf' metadata")


@pytest.mark.parametrize("raw, problem, detail", BAD_JSON, ids=["truncated", "utf16", "deep", "bigint", "bom"])
def test_bad_json_says_what_is_wrong(raw, problem, detail, base, data, tmp_path, capsys):
    """A valid zip with bad JSON inside is not reported as 'expected a zip archive'."""
    path = replace_member(base, tmp_path / "bad.keras", "imgclf.json", raw)
    assert main(["predict", str(path), str(data / "red" / "0.png")]) == 2
    line = one_error_line(capsys, path, "imgclf.json", problem, detail)
    assert "zip archive" not in line


def test_bad_json_in_onnx(base_onnx, data, tmp_path, capsys):
    path = onnx_with_meta(base_onnx, tmp_path, '{"class_names": ["a",')
    assert main(["predict", str(path), str(data / "red" / "0.png")]) == 2
    one_error_line(capsys, path, "'imgclf' metadata", "not valid JSON")


def test_not_a_zip_and_no_metadata(base, data, tmp_path, capsys):
    image = str(data / "red" / "0.png")
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"not a zip at all")
    assert main(["predict", str(junk), image]) == 2
    one_error_line(capsys, junk, "expected a zip archive")
    plain = replace_member(base, tmp_path / "plain.keras", "imgclf.json", None)
    assert main(["predict", str(plain), image]) == 2
    one_error_line(capsys, plain, "no imgclf.json inside")


def test_metadata_bomb_is_refused_unread(base, data, tmp_path, capsys, monkeypatch):
    """imgclf.json declaring more than MAX_META_BYTES (2 MB of spaces, a few KB on disk) is
    refused from its declared size: the member is never opened, so never inflated."""
    blob = b" " * (2 * MAX_META_BYTES) + json.dumps(GOOD).encode()
    path = replace_member(base, tmp_path / "bomb.keras", "imgclf.json", blob)
    assert path.stat().st_size < base.stat().st_size + 20_000  # it is a compression bomb
    opened = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, name, *a, **k: opened.append(
        getattr(name, "filename", name)) or real_open(self, name, *a, **k))
    assert main(["predict", str(path), str(data / "red" / "0.png")]) == 2
    one_error_line(capsys, path, "imgclf.json", f"{len(blob):,} bytes")
    assert "imgclf.json" not in opened


def test_lying_metadata_header_reads_no_more_than_declared(base, data, tmp_path, capsys):
    """A header that understates imgclf.json's size (500 bytes for 2 MB) is caught, not trusted."""
    blob = b" " * (2 * MAX_META_BYTES) + json.dumps(GOOD).encode()
    path = replace_member(base, tmp_path / "liar.keras", "imgclf.json", blob)
    set_declared_size(path, "imgclf.json", 500)
    assert main(["predict", str(path), str(data / "red" / "0.png")]) == 2
    one_error_line(capsys, path, "imgclf.json", "corrupt")


def test_weights_bomb_is_refused_before_keras_opens_it(base, data, tmp_path, capsys, monkeypatch):
    """model.weights.h5 declaring ~3.75 GB (over a 2 GiB cap) is refused from the header alone:
    the real member is a few KB, so inflating it would fail differently."""
    path = shutil.copy(base, tmp_path / "weights.keras")
    set_declared_size(Path(path), "model.weights.h5", 0xF000_0000)
    monkeypatch.setenv("IMGCLF_MAX_MODEL_BYTES", str(2**31))
    image = str(data / "red" / "0.png")
    for argv in (["predict", path, image], ["export", path, "--format", "onnx"]):
        assert main([str(a) for a in argv]) == 2
        one_error_line(capsys, Path(path), "model.weights.h5", "4,026,531,840", "IMGCLF_MAX_MODEL_BYTES")


def test_model_size_cap_and_its_override(base, base_onnx, data, tmp_path, capsys, monkeypatch):
    image = str(data / "red" / "0.png")
    monkeypatch.setenv("IMGCLF_MAX_MODEL_BYTES", "1000")  # smaller than the tiny model
    for path in (base, base_onnx):
        assert main(["predict", str(path), image]) == 2
        one_error_line(capsys, path, "IMGCLF_MAX_MODEL_BYTES")
    monkeypatch.setenv("IMGCLF_MAX_MODEL_BYTES", "lots")
    assert main(["predict", str(base), image]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("error: IMGCLF_MAX_MODEL_BYTES: expected a positive number") and "\n" not in line
    monkeypatch.setenv("IMGCLF_MAX_MODEL_BYTES", str(10**9))
    assert main(["predict", str(base), image]) == 0


def test_onnx_metadata_string_is_bounded(base_onnx, data, tmp_path, capsys):
    path = onnx_with_meta(base_onnx, tmp_path, " " * MAX_META_BYTES + json.dumps(GOOD))
    assert main(["predict", str(path), str(data / "red" / "0.png")]) == 2
    one_error_line(capsys, path, "'imgclf' metadata", "characters")


# --- validate_meta on any JSON value: a valid dict, or ImgclfError (never another exception) ----

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
meta_like = st.fixed_dictionaries(
    {"class_names": st.lists(st.text(max_size=6), min_size=1, max_size=4) | json_values,
     "input_size": st.integers(-3, MAX_INPUT_SIZE + 3) | json_values,
     "resize": st.sampled_from(RESIZE_RULES) | json_values},
    optional={"temperature": st.floats() | st.integers(-3, 2000) | json_values,
              "tta_translate": st.integers(-2, 40) | json_values,
              "tta": st.booleans() | json_values,
              "split": st.dictionaries(st.sampled_from(["seed", "val_fraction", "source", "limit_per_class"]),
                                       st.integers(-2, 2**33) | st.floats(-1, 2) | json_values) | json_values,
              "params": st.integers(-5, 10**6) | json_values,
              "metrics": st.dictionaries(st.text(max_size=4), json_values) | json_values})


@settings(max_examples=400, deadline=None)
@given(st.one_of(json_values, meta_like))
def test_validate_meta_fuzz(meta):
    from imgclf.runtime.classifier import Classifier, apply_temperature

    try:
        out = validate_meta(meta, "m.keras: imgclf.json")
    except ImgclfError as e:
        text = str(e)
        assert text.startswith("m.keras: imgclf.json: ") and "\n" not in text and len(text) < 300, text
        return
    names = out["class_names"]
    assert isinstance(names, list) and names and all(isinstance(n, str) and n.strip() for n in names)
    assert len(set(names)) == len(names)
    assert type(out["input_size"]) is int and 1 <= out["input_size"] <= MAX_INPUT_SIZE
    assert out["resize"] in RESIZE_RULES
    clf = Classifier(Path("m.keras"), out)  # what the runtimes build from it
    assert 0 <= clf.tta_translate < clf.input_size and math.isfinite(clf.temperature) and clf.temperature > 0
    probs = apply_temperature(np.array([[0.7, 0.2, 0.1], [1.0, 0.0, 0.0]]), clf.temperature)
    assert np.isfinite(probs).all() and (probs.argmax(1) == 0).all()

"""Checks on imgclf's model metadata: the one place that decides what a model file may say.

Every model imgclf runs carries the same JSON object: the `imgclf.json` member of a `.keras` zip,
or the `imgclf` key of an `.onnx` file's metadata_props. A model file is input like any other, so
`parse_meta_json` reads the JSON, `validate_meta(meta, where)` checks every field imgclf reads from
it (type, range, length) and `check_shapes(...)` checks it against the model itself once the model
is loaded. All raise ImgclfError with one line naming the file and the field; bad values are
echoed at most SHOW characters long.

This module imports neither TensorFlow nor Keras (the slim ONNX-only install uses it).
"""

from __future__ import annotations

import json
import math
import os

from ..errors import ImgclfError
from ..data.images import DECODE_RULES, MAX_PIXELS, RESIZE_RULES
from ..data.names import class_name_problem

MAX_META_BYTES = 1_000_000  # imgclf.json / the ONNX 'imgclf' string
MAX_MODEL_BYTES = 4 << 30  # a whole model file, uncompressed (IMGCLF_MAX_MODEL_BYTES overrides)
MAX_CLASSES = 100_000
MAX_INPUT_SIZE = math.isqrt(MAX_PIXELS)  # a larger square input could not come from an allowed image
TEMPERATURE_RANGE = (1e-3, 1e3)  # calibration fits within (0.05, 20); beyond this softmax(log p / T) degenerates
SHOW = 60  # characters of a bad value quoted in a message
OLD_DECODE = "full"  # the decode rule of a model whose metadata names none (made before there was a choice)


def max_model_bytes() -> int:
    """The cap on a model file's uncompressed size: MAX_MODEL_BYTES, or IMGCLF_MAX_MODEL_BYTES if set."""
    text = os.environ.get("IMGCLF_MAX_MODEL_BYTES", "").strip()
    if not text:
        return MAX_MODEL_BYTES
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ImgclfError(f"IMGCLF_MAX_MODEL_BYTES: expected a positive number of bytes, got {show(text)}")
    return value


def show(value) -> str:
    """A short description of `value` for an error message (never more than about SHOW chars)."""
    if isinstance(value, (dict, list)):
        kind, unit = ("an object", "key") if isinstance(value, dict) else ("a list", "item")
        return f"{kind} of {len(value)} {unit}{'' if len(value) == 1 else 's'}"
    if isinstance(value, str):  # repr escapes control characters
        text = repr(value[:SHOW])
        return text + "..." if len(value) > SHOW else text
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return "a very large integer"
    try:
        return json.dumps(value)[:SHOW]  # as the file spells it: null, true, NaN, Infinity
    except (TypeError, ValueError):
        return type(value).__name__


def _bad(where: str, field: str, expected: str, value) -> ImgclfError:
    return ImgclfError(f"{where}: {field}: expected {expected}, got {show(value)}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int_in(meta: dict, where: str, field: str, lo: int, hi: int | None = None) -> None:
    value = meta[field]
    if not _is_int(value) or value < lo or (hi is not None and value > hi):
        raise _bad(where, field, f"an integer >= {lo}" if hi is None else f"an integer from {lo} to {hi}", value)


def _class_names(value, where: str) -> None:
    field = "class_names"
    if not isinstance(value, list) or not value:
        raise _bad(where, field, "a non-empty list of class names", value)
    if len(value) > MAX_CLASSES:
        raise _bad(where, field, f"at most {MAX_CLASSES:,} class names", value)
    seen = set()
    for i, name in enumerate(value):
        problem = class_name_problem(name)
        if problem:
            raise _bad(where, f"{field}[{i}]", problem, name)
        if name in seen:
            raise _bad(where, f"{field}[{i}]", "distinct class names (it appears twice)", name)
        seen.add(name)


def _split(value, where: str) -> None:
    """The validation split record that `evaluate` reads (all of it optional): carved out of the
    training images (seed, val_fraction) or a folder beside train/ (val_folder)."""
    if not isinstance(value, dict):
        raise _bad(where, "split", "an object", value)
    checks = {
        "source": (lambda v: isinstance(v, str) and 0 < len(v) <= 4096, "a dataset path or name"),
        "seed": (lambda v: _is_int(v) and 0 <= v < 2**32, "an integer from 0 to 2**32-1"),
        "val_fraction": (lambda v: _is_number(v) and 0 < v < 1, "a number between 0 and 1"),
        "val_source": (lambda v: v in ("carved", "folder"), "'carved' or 'folder'"),
        "val_folder": (lambda v: isinstance(v, str) and 0 < len(v) <= 255 and "/" not in v and v not in (".", ".."),
                       "a folder name"),
        "limit_per_class": (lambda v: v is None or (_is_int(v) and v >= 1), "an integer >= 1 or null"),
        "train_files_hash": (lambda v: isinstance(v, str) and len(v) <= 256, "a hash string"),
        "val_files_hash": (lambda v: isinstance(v, str) and len(v) <= 256, "a hash string"),
    }
    for key, (ok, expected) in checks.items():
        if key in value and not ok(value[key]):
            raise _bad(where, f"split.{key}", expected, value[key])


def parse_meta_json(raw: bytes | str, where: str):
    """The JSON value in `raw` (UTF-8), or ImgclfError saying what is wrong with it."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as e:
        raise ImgclfError(f"{where}: not valid UTF-8 text (byte {e.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ImgclfError(f"{where}: not valid JSON ({e.msg} at line {e.lineno} col {e.colno})") from None
    except (ValueError, RecursionError) as e:  # an integer of thousands of digits; nesting too deep
        raise ImgclfError(f"{where}: not valid JSON ({type(e).__name__}: {str(e)[:80]})") from None


def validate_meta(meta, where: str) -> dict:
    """Check every field imgclf reads from a model's metadata; return a copy of it.

    `where` names the source in messages, e.g. "runs/x/model.keras: imgclf.json". Raises
    ImgclfError for anything else; never another exception, whatever JSON value `meta` is.
    """
    if not isinstance(meta, dict):
        raise ImgclfError(f"{where}: expected a JSON object, got {show(meta)}")
    missing = [k for k in ("class_names", "input_size", "resize") if k not in meta]
    if missing:
        raise ImgclfError(f"{where}: lacks {', '.join(missing)}")
    _class_names(meta["class_names"], where)
    _int_in(meta, where, "input_size", 1, MAX_INPUT_SIZE)
    if not isinstance(meta["resize"], str) or meta["resize"] not in RESIZE_RULES:
        raise _bad(where, "resize", f"one of {', '.join(RESIZE_RULES)}", meta["resize"])
    if "decode" in meta and (not isinstance(meta["decode"], str) or meta["decode"] not in DECODE_RULES):
        raise _bad(where, "decode", f"one of {', '.join(DECODE_RULES)}", meta["decode"])
    t = meta.get("temperature", 1.0)
    lo, hi = TEMPERATURE_RANGE
    if not _is_number(t) or not math.isfinite(t) or not lo <= t <= hi:
        raise _bad(where, "temperature", f"a number from {lo:g} to {hi:g}", t)
    if "tta_translate" in meta:
        _int_in(meta, where, "tta_translate", 0, meta["input_size"] - 1)
    if "tta" in meta and not isinstance(meta["tta"], bool):
        raise _bad(where, "tta", "true or false", meta["tta"])
    if meta.get("split") is not None:
        _split(meta["split"], where)
    if meta.get("params") is not None:
        _int_in(meta, where, "params", 0)
    for key in ("model", "recipe", "imgclf_version", "keras_version", "backend", "exported_from", "export_format",
                "pretrained"):
        value = meta.get(key)
        if value is not None and (not isinstance(value, str) or len(value) > 256):
            raise _bad(where, key, "a string of at most 256 characters", value)
    for key in ("metrics", "card", "calibration"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise _bad(where, key, "an object", meta[key])
    return dict(meta)


def _dims(shape) -> list | None:
    """A shape as a list of ints and None (unknown), or None if it is not one shape."""
    if not isinstance(shape, (list, tuple)):
        return None
    if any(isinstance(d, (list, tuple)) for d in shape):  # several inputs or outputs
        return None
    return [d if _is_int(d) else None for d in shape]


def check_shapes(meta: dict, where: str, input_shape, output_shape) -> None:
    """Check validated `meta` against the loaded model: one NHWC RGB input of input_size x
    input_size (where the model fixes it), one output with one probability per class name."""
    inp = _dims(input_shape)
    if inp is None or len(inp) != 4 or inp[-1] not in (3, None):
        raise ImgclfError(f"{where}: expected a model with one NHWC RGB image input, the model takes "
                          f"{show(str(input_shape))}")
    size = meta["input_size"]
    if any(d is not None and d != size for d in inp[1:3]):
        raise ImgclfError(f"{where}: input_size: {size} does not match the model's input "
                          f"({inp[1] or '?'}x{inp[2] or '?'})")
    out = _dims(output_shape)
    if out is None or len(out) != 2:
        raise ImgclfError(f"{where}: expected a model with one output of class probabilities, the model gives "
                          f"{show(str(output_shape))}")
    n = len(meta["class_names"])
    if out[1] is not None and out[1] != n:
        raise ImgclfError(f"{where}: class_names: {n} names for the model's {out[1]} outputs")

"""The model artifact: a standard `.keras` file plus imgclf's metadata inside the same zip.

`model.keras` is a zip archive (config.json, metadata.json, model.weights.h5). imgclf adds one
member, `imgclf.json`, which Keras ignores, so `tf.keras.models.load_model(path)` and
`keras.saving.load_model(path)` load the file as usual, while `predict` and `evaluate` find
everything they need in the file alone: class names, input size, resize rule, the validation
split (seed, fraction and hashes of its file lists), the fitted temperature and the metrics.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

from .errors import ImgclfError

META_MEMBER = "imgclf.json"
REQUIRED_META = ("class_names", "input_size", "resize")


def read_meta(path: str | Path) -> dict:
    """Read imgclf's metadata from a .keras file without importing Keras."""
    path = Path(path)
    if not path.is_file():
        raise ImgclfError(f"{path}: model file not found")
    try:
        with zipfile.ZipFile(path) as z:
            if META_MEMBER not in z.namelist():
                raise ImgclfError(f"{path}: no {META_MEMBER} inside (expected a model saved by imgclf)")
            meta = json.loads(z.read(META_MEMBER))
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError):
        raise ImgclfError(f"{path}: not a valid .keras model file (expected a zip archive)") from None
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ImgclfError(f"{path}: {META_MEMBER} lacks {', '.join(missing)}")
    return meta


def write_meta(path: str | Path, meta: dict) -> None:
    """Replace the metadata of an existing .keras file, atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.keras")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            if item.filename != META_MEMBER:
                dst.writestr(item, src.read(item.filename))
        dst.writestr(META_MEMBER, json.dumps(meta, indent=1, sort_keys=True))
    os.replace(tmp, path)


def save_model(model, path: str | Path, meta: dict) -> Path:
    """Save `model` with `meta` to `path` (.keras), atomically: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.keras")  # Keras insists on the suffix
    model.save(tmp)
    with zipfile.ZipFile(tmp, "a", zipfile.ZIP_DEFLATED) as z:
        z.writestr(META_MEMBER, json.dumps(meta, indent=1, sort_keys=True))
    os.replace(tmp, path)
    return path


def load_model(path: str | Path, compile: bool = False):
    """(keras model, meta), loaded in safe mode (no arbitrary code from the file)."""
    import keras

    meta = read_meta(path)
    try:
        model = keras.saving.load_model(path, compile=compile, safe_mode=True)
    except Exception as e:  # keras raises many types; the user needs one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ImgclfError(f"{path}: cannot load the model ({first})") from None
    return model, meta

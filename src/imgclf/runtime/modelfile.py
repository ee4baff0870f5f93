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
import zlib
from pathlib import Path

from ..errors import ImgclfError
from .modelmeta import MAX_META_BYTES, check_shapes, max_model_bytes, parse_meta_json, validate_meta

META_MEMBER = "imgclf.json"
MAX_MEMBERS = 10_000  # a Keras archive has a handful


def _check_sizes(path: Path, z: zipfile.ZipFile) -> None:
    """Refuse a zip bomb before anything inflates it: each member's declared (uncompressed) size
    is checked against its cap. zipfile never inflates a member past its declared size."""
    members = z.infolist()
    if len(members) > MAX_MEMBERS:
        raise ImgclfError(f"{path}: {len(members):,} members inside (at most {MAX_MEMBERS:,} expected in a model file)")
    cap = max_model_bytes()
    total = 0
    for item in members:
        if item.filename == META_MEMBER and item.file_size > MAX_META_BYTES:
            raise ImgclfError(f"{path}: {META_MEMBER} is {item.file_size:,} bytes uncompressed "
                              f"(at most {MAX_META_BYTES:,} expected)")
        total += item.file_size
        if total > cap:
            raise ImgclfError(f"{path}: the model is over {cap:,} bytes uncompressed ({item.filename[:60]!r} "
                              f"alone is {item.file_size:,}); set IMGCLF_MAX_MODEL_BYTES to allow more")


def read_meta(path: str | Path) -> dict:
    """Read and validate imgclf's metadata from a .keras file without importing Keras."""
    path = Path(path)
    if not path.is_file():
        raise ImgclfError(f"{path}: model file not found")
    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError):
        raise ImgclfError(f"{path}: not a valid .keras model file (expected a zip archive)") from None
    with z:
        _check_sizes(path, z)
        if META_MEMBER not in z.namelist():
            raise ImgclfError(f"{path}: no {META_MEMBER} inside (expected a model saved by imgclf)")
        try:
            with z.open(META_MEMBER) as f:
                raw = f.read(MAX_META_BYTES + 1)  # bounded, whatever the header says
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as e:
            raise ImgclfError(f"{path}: {META_MEMBER} inside is unreadable or corrupt ({str(e)[:100]})") from None
    if len(raw) > MAX_META_BYTES:
        raise ImgclfError(f"{path}: {META_MEMBER} is over {MAX_META_BYTES:,} bytes")
    return validate_meta(parse_meta_json(raw, f"{path}: {META_MEMBER}"), f"{path}: {META_MEMBER}")


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
    meta = read_meta(path)  # also refuses oversized members before Keras opens the zip
    import keras

    try:
        model = keras.saving.load_model(path, compile=compile, safe_mode=True)
    except Exception as e:  # keras raises many types; the user needs one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ImgclfError(f"{path}: cannot load the model ({first[:200]})") from None
    check_shapes(meta, f"{path}: {META_MEMBER}", model.input_shape, model.output_shape)
    return model, meta

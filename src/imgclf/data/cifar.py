"""Load the official CIFAR-10 python archive (``cifar-10-python.tar.gz``).

The archive holds a folder ``cifar-10-batches-py/`` with ``data_batch_1`` ..
``data_batch_5``, ``test_batch`` and ``batches.meta``.  Each batch is a
Python-2 pickle of a dict with ``data`` (uint8, shape (N, 3072): 1024 red, then
1024 green, then 1024 blue values, each plane a row-major 32x32 image) and
``labels`` (N ints in 0..9).  ``batches.meta`` holds ``label_names``.

Safety:

* Archive members are read straight from the tar file into memory; nothing is
  extracted to disk, and only the expected member names under
  ``cifar-10-batches-py/`` are read (everything else, e.g. ``../evil``, is
  ignored).
* Pickles are loaded with a restricted unpickler that can only build numpy
  arrays and dtypes.  A pickle that refers to any other global (``os.system``,
  ``builtins.eval``, ...) is refused before anything is called.

Every problem with the input is reported as one :class:`imgclf.errors.DataError`
line naming the file (and archive member) and saying what was expected.

Only numpy is imported at module import time; keras is imported lazily, and
only when ``load_cifar10`` has to download the archive.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np

from imgclf.errors import DataError

__all__ = [
    "CIFAR10_URL",
    "CIFAR10_MD5",
    "CIFAR10_CLASSES",
    "CifarArrays",
    "load_cifar10",
    "batch_to_nhwc",
]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

ARCHIVE_NAME = "cifar-10-python.tar.gz"
FOLDER_NAME = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META_FILE = "batches.meta"
MEMBER_NAMES = TRAIN_BATCHES + (TEST_BATCH, META_FILE)

IMAGE_SIZE = 32
CHANNELS = 3
ROW_LENGTH = IMAGE_SIZE * IMAGE_SIZE * CHANNELS  # 3072
NUM_CLASSES = len(CIFAR10_CLASSES)

# A real batch pickle is about 31 MB; refuse anything far larger instead of
# reading it into memory (protects against decompression bombs).
_MAX_MEMBER_BYTES = 256 * 1024 * 1024
_HASH_CHUNK = 1024 * 1024

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class CifarArrays:
    """CIFAR-10 as numpy arrays: images NHWC uint8, labels int64."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: List[str]


# --------------------------------------------------------------------------
# Restricted unpickling
# --------------------------------------------------------------------------


def _numpy_multiarray():
    """numpy's multiarray module (``numpy._core`` on numpy 2, ``numpy.core`` on 1.x)."""
    try:
        from numpy._core import multiarray  # numpy >= 2 (and 1.26 has it too)
    except ImportError:  # pragma: no cover - old numpy
        from numpy.core import multiarray
    return multiarray


def _latin1_encode(text, encoding="latin1"):
    """Safe stand-in for ``_codecs.encode`` as used by Python 3 protocol-2 pickles.

    Python 3 pickles ``bytes`` at protocol 2 as ``_codecs.encode(str, 'latin1')``.
    Only that exact use is allowed; other codecs are refused.
    """
    if not isinstance(text, str) or not isinstance(encoding, str):
        raise pickle.UnpicklingError("_codecs.encode called with non-str arguments")
    if encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"_codecs.encode with codec {encoding!r} is not allowed")
    return text.encode("latin-1")


def _allowed_global(module: str, name: str) -> Optional[Callable]:
    if module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        if name in ("_reconstruct", "scalar"):
            return getattr(_numpy_multiarray(), name)
        return None
    if module == "numpy":
        if name == "ndarray":
            return np.ndarray
        if name == "dtype":
            return np.dtype
        return None
    if module == "_codecs" and name == "encode":
        return _latin1_encode
    return None


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that can only build numpy arrays, dtypes and plain containers."""

    def find_class(self, module, name):
        found = _allowed_global(str(module), str(name))
        if found is None:
            raise pickle.UnpicklingError(
                f"refers to disallowed global {module}.{name}; only numpy arrays are allowed"
            )
        return found


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _unpickle(raw: bytes, where: str):
    try:
        return _RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        raise DataError(f"{where}: refused to unpickle: {_one_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - any failure inside a foreign pickle
        raise DataError(
            f"{where}: expected a CIFAR-10 python pickle, "
            f"could not read it ({type(exc).__name__}: {_one_line(exc)})"
        ) from None


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} {tuple(value.shape)}"
    return type(value).__name__


def _get(mapping: dict, key: str, where: str):
    for candidate in (key.encode("ascii"), key):
        if candidate in mapping:
            return mapping[candidate]
    raise DataError(f"{where}: expected a dict with key '{key}', it is missing")


def _parse_batch(obj, where: str) -> Tuple[np.ndarray, np.ndarray]:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a dict with keys 'data' and 'labels', got {_describe(obj)}")
    data = _get(obj, "data", where)
    labels = _get(obj, "labels", where)

    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != ROW_LENGTH
    ):
        raise DataError(
            f"{where}: expected uint8 array of shape (N, {ROW_LENGTH}), got {_describe(data)}"
        )
    n = data.shape[0]

    if not isinstance(labels, (list, tuple, np.ndarray)):
        raise DataError(f"{where}: expected labels as a list of {n} integers, got {_describe(labels)}")
    try:
        label_arr = np.asarray(labels)
    except (ValueError, TypeError):
        label_arr = None
    if label_arr is None or label_arr.ndim != 1 or (label_arr.size and label_arr.dtype.kind not in "iu"):
        raise DataError(f"{where}: expected labels as a list of {n} integers")
    if label_arr.shape[0] != n:
        raise DataError(f"{where}: expected {n} labels (one per image), got {label_arr.shape[0]}")
    label_arr = label_arr.astype(np.int64, copy=False)
    bad = np.flatnonzero((label_arr < 0) | (label_arr >= NUM_CLASSES))
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"{where}: expected labels in 0..{NUM_CLASSES - 1}, got {int(label_arr[i])} at index {i}"
        )
    return np.ascontiguousarray(data), np.array(label_arr, dtype=np.int64)


def _parse_meta(obj, where: str) -> List[str]:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a dict with key 'label_names', got {_describe(obj)}")
    names = _get(obj, "label_names", where)
    if not isinstance(names, (list, tuple)) or len(names) != NUM_CLASSES:
        got = len(names) if isinstance(names, (list, tuple)) else _describe(names)
        raise DataError(f"{where}: expected label_names to be a list of {NUM_CLASSES} names, got {got}")
    out = []
    for name in names:
        if isinstance(name, bytes):
            try:
                name = name.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{where}: expected UTF-8 class names in label_names") from None
        if not isinstance(name, str) or not name:
            raise DataError(f"{where}: expected label_names to hold {NUM_CLASSES} non-empty strings")
        out.append(name)
    return out


def batch_to_nhwc(data) -> np.ndarray:
    """Turn CIFAR rows (N, 3072) = R plane, G plane, B plane into images (N, 32, 32, 3)."""
    arr = np.asarray(data)
    if arr.ndim != 2 or arr.shape[1] != ROW_LENGTH:
        raise ValueError(f"expected an array of shape (N, {ROW_LENGTH}), got {tuple(arr.shape)}")
    nchw = arr.reshape(arr.shape[0], CHANNELS, IMAGE_SIZE, IMAGE_SIZE)
    return np.ascontiguousarray(nchw.transpose(0, 2, 3, 1))


# --------------------------------------------------------------------------
# Reading members from an archive or folder
# --------------------------------------------------------------------------


def _file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _member_key(name: str) -> Optional[str]:
    """The expected file name a tar member stands for, or None to ignore it."""
    while name.startswith("./"):
        name = name[2:]
    prefix = FOLDER_NAME + "/"
    if not name.startswith(prefix):
        return None
    rest = name[len(prefix):]
    return rest if rest in MEMBER_NAMES else None


def _parse_member(key: str, raw: bytes, where: str):
    obj = _unpickle(raw, where)
    if key == META_FILE:
        return _parse_meta(obj, where)
    return _parse_batch(obj, where)


def _read_archive(path: Path, md5: Optional[str]) -> Dict[str, object]:
    label = str(path)
    if md5 is not None:
        try:
            actual = _file_md5(path)
        except OSError as exc:
            raise DataError(f"{label}: cannot read archive ({_one_line(exc)})") from None
        if actual.lower() != str(md5).lower():
            raise DataError(
                f"{label}: md5 checksum mismatch, expected {md5}, got {actual} "
                f"(corrupt or incomplete download?)"
            )

    parsed: Dict[str, object] = {}
    try:
        with tarfile.open(path, mode="r:*") as tar:
            for member in tar:
                key = _member_key(member.name)
                if key is None:
                    continue  # not one of ours (incl. '../evil', absolute paths): never read
                where = f"{label}: {key}"
                if not member.isfile():
                    raise DataError(f"{where}: expected a regular file in the archive, got a link or folder")
                if key in parsed:
                    raise DataError(f"{where}: archive member appears more than once")
                if member.size > _MAX_MEMBER_BYTES:
                    raise DataError(
                        f"{where}: expected at most {_MAX_MEMBER_BYTES} bytes, member has {member.size}"
                    )
                fh = tar.extractfile(member)
                if fh is None:  # pragma: no cover - isfile() guarantees a file object
                    raise DataError(f"{where}: cannot read archive member")
                raw = fh.read()
                if len(raw) != member.size:
                    raise DataError(f"{where}: archive member is truncated")
                parsed[key] = _parse_member(key, raw, where)
    except DataError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError, ValueError) as exc:
        raise DataError(
            f"{label}: expected a readable {ARCHIVE_NAME} (gzip-compressed tar), "
            f"could not read it ({type(exc).__name__}: {_one_line(exc)})"
        ) from None

    for key in MEMBER_NAMES:
        if key not in parsed:
            raise DataError(f"{label}: missing archive member {FOLDER_NAME}/{key}")
    return parsed


def _find_batches_folder(path: Path) -> Path:
    if any((path / key).exists() for key in MEMBER_NAMES):
        return path
    if (path / FOLDER_NAME).is_dir():
        return path / FOLDER_NAME
    raise DataError(
        f"{path}: expected the extracted {FOLDER_NAME} folder or a folder containing it, "
        f"found neither {FOLDER_NAME}/ nor {TRAIN_BATCHES[0]}"
    )


def _read_folder(path: Path) -> Dict[str, object]:
    folder = _find_batches_folder(path)
    parsed: Dict[str, object] = {}
    for key in MEMBER_NAMES:
        file = folder / key
        where = str(file)
        if not file.is_file():
            raise DataError(f"{where}: missing, expected the CIFAR-10 file {key} in {folder}")
        try:
            size = file.stat().st_size
            if size > _MAX_MEMBER_BYTES:
                raise DataError(f"{where}: expected at most {_MAX_MEMBER_BYTES} bytes, file has {size}")
            raw = file.read_bytes()
        except OSError as exc:
            raise DataError(f"{where}: cannot read file ({_one_line(exc)})") from None
        parsed[key] = _parse_member(key, raw, where)
    return parsed


def _download(cache_dir) -> Path:
    try:
        import keras  # lazy: only needed to download
    except ImportError as exc:
        raise DataError(
            f"{ARCHIVE_NAME}: downloading needs keras ({_one_line(exc)}); "
            f"install it or pass source= a local copy of {ARCHIVE_NAME}"
        ) from None
    try:
        downloaded = keras.utils.get_file(
            fname=ARCHIVE_NAME,
            origin=CIFAR10_URL,
            file_hash=CIFAR10_MD5,
            cache_dir=cache_dir,
        )
    except Exception as exc:  # noqa: BLE001 - network/IO failures of any kind
        raise DataError(
            f"{ARCHIVE_NAME}: could not download from {CIFAR10_URL} "
            f"({type(exc).__name__}: {_one_line(exc)})"
        ) from None
    return Path(downloaded)


def load_cifar10(
    source: Optional[PathLike] = None,
    md5: Optional[str] = CIFAR10_MD5,
    cache_dir: Optional[PathLike] = None,
) -> CifarArrays:
    """Load CIFAR-10 as NHWC uint8 images and int64 labels.

    ``source`` is the ``cifar-10-python.tar.gz`` archive, the extracted
    ``cifar-10-batches-py`` folder, or a folder containing it.  ``None``
    downloads the archive with ``keras.utils.get_file`` (into ``cache_dir``).
    ``md5`` is checked against archive files (``None`` skips the check);
    folders are not checksummed.  Raises :class:`DataError` on any bad input.
    """
    path = _download(cache_dir) if source is None else Path(source)

    if path.is_dir():
        parsed = _read_folder(path)
    elif path.is_file():
        parsed = _read_archive(path, md5)
    else:
        raise DataError(
            f"{path}: no such file or folder, expected {ARCHIVE_NAME} "
            f"or the extracted {FOLDER_NAME} folder"
        )

    train = [parsed[key] for key in TRAIN_BATCHES]
    x_train = batch_to_nhwc(np.concatenate([data for data, _ in train], axis=0))
    y_train = np.concatenate([labels for _, labels in train]).astype(np.int64, copy=False)
    test_data, test_labels = parsed[TEST_BATCH]
    return CifarArrays(
        x_train=x_train,
        y_train=y_train,
        x_test=batch_to_nhwc(test_data),
        y_test=test_labels.astype(np.int64, copy=False),
        class_names=list(parsed[META_FILE]),
    )

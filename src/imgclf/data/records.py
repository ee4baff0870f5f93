"""Packed datasets: an image folder as ArrayRecord shards, read by index (`imgclf pack`, data/pack.py).

    OUT/
      index.json                          format, version, class names, the splits, a content hash
      train-00000-of-00004.array_record   the files' encoded bytes (JPEG, PNG, ...), as on disk, one
      ...                                 record per image, in the folder's listing order
      train.npz                           labels (int64) and file names (relative to the split's folder)
      val-..., val.npz, test-..., test.npz   the validation folder and test/, if the folder has them

The records hold encoded images, not pixels: they decode through images.to_rgb like files do, so a
packed set gives its folder's images, labels, names and so its batches. ArrayRecord is a
random-access format (each shard written with group_size:1), so batches stay keyed by index.

index.json, from the writer or not, is read as untrusted input: every field is checked (types,
sizes, names, bounded lengths) and so are the label files, before any record is read. The hash
identifies the content (names, labels and bytes of every image, in order); it is not re-read.
"""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from .images import check_regular_file, to_rgb
from .names import class_name_problem

FORMAT, VERSION = "imgclf-records", 1
INDEX = "index.json"
SPLITS = ("train", "val", "test")
MAX_INDEX_BYTES = 4 * 2**20
MAX_CLASSES = 100_000
MAX_NAME = 1024  # characters of a file name in a label file
MAX_SHARDS = 65_536
MAX_IMAGES = 2**31 - 1
FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")  # a plain name inside the folder, no path


def is_packed(data) -> bool:
    """Whether `data` names a packed dataset folder (one with index.json)."""
    try:
        return (Path(data) / INDEX).is_file()
    except (TypeError, OSError):
        return False


class Records:
    """Encoded images by index over one or more splits' ArrayRecord sources: records[i] are the
    bytes of image i. take() and concat() give views with the same sources (nothing is read).

    The sources open a shard's reader when a record of it is first read; close() (or leaving a
    `with records:` block) closes the readers open so far, those of every view sharing the
    sources. A later read opens its shard again, so closing never breaks a view still in use; it
    must not run while another thread reads."""

    def __init__(self, sources: tuple, which: np.ndarray, index: np.ndarray, names: list[str]):
        self.sources, self.which, self.index, self.names = sources, which, index, names  # names: for messages

    def close(self) -> None:
        for source in self.sources:
            if hasattr(source, "close"):
                source.close()
            elif hasattr(source, "__exit__"):  # ArrayRecordDataSource closes its readers on exit
                source.__exit__(None, None, None)

    def __enter__(self) -> "Records":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i) -> bytes:
        return self.sources[self.which[i]][int(self.index[i])]

    def take(self, index) -> "Records":
        index = np.asarray(index, dtype=np.int64)
        return Records(self.sources, self.which[index], self.index[index], self.names)

    def concat(self, other: "Records") -> "Records":
        offset = len(self.sources)
        return Records(self.sources + other.sources, np.concatenate([self.which, other.which + offset]),
                       np.concatenate([self.index, other.index]), self.names + other.names)

    def read(self, index) -> list[bytes]:
        """The bytes of the records at `index`, in that order, one call per source: ArrayRecord reads a
        list of records (__getitems__) several times faster than the same records one by one."""
        index = np.asarray(index, dtype=np.int64)
        which, out = self.which[index], [b""] * len(index)
        for s in np.unique(which):
            at = np.flatnonzero(which == s)
            got = self.sources[s].__getitems__([int(k) for k in self.index[index[at]]])
            for i, data in zip(at, got):
                out[i] = data
        return out

    def images(self, index, size, resize: str, decode: str) -> np.ndarray:
        """The images at `index` through to_rgb, stacked; a bad one is a DataError naming its split
        and record."""
        index = np.asarray(index, dtype=np.int64)
        return np.stack([self._decode(i, data, size, resize, decode) for i, data in zip(index, self.read(index))])

    def _decode(self, i, data: bytes, size, resize: str, decode: str) -> np.ndarray:
        try:
            return to_rgb(data, size, resize, decode)
        except DataError as e:
            raise DataError(f"{self.names[self.which[i]]} record {int(self.index[i])}: "
                            f"{str(e).removeprefix('<bytes>: ')}") from None


@dataclass
class PackedSplit:
    records: Records
    labels: np.ndarray
    files: list[str]  # relative to the split's folder, as list_folder gives them
    folder: str  # the split's folder name in the packed folder ("train", "validation", "test", "")


def _fail(folder: Path, field: str, expected: str, got=None) -> DataError:
    shown = "" if got is None else f", got {json.dumps(got)[:80] if not isinstance(got, str) else repr(got[:80])}"
    return DataError(f"{folder / INDEX}: {field}: expected {expected}{shown}")


def _int(folder, field, value, lo, hi) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _fail(folder, field, f"a whole number from {lo:,} to {hi:,}", value)
    return value


def _name(folder, field, value, suffix) -> str:
    if not isinstance(value, str) or not FILE_NAME.match(value) or not value.endswith(suffix):
        raise _fail(folder, field, f"a file name in the folder ending in {suffix} (letters, digits, _ . -)", value)
    check_regular_file(folder / value, f"a file of the packed dataset (named by {INDEX})")
    return value


def read_index(folder: str | Path) -> dict:
    """index.json of a packed folder, every field checked; DataError naming the field otherwise."""
    folder = Path(folder)
    st = check_regular_file(folder / INDEX, "a packed dataset's index")
    if st.st_size > MAX_INDEX_BYTES:
        raise DataError(f"{folder / INDEX}: {st.st_size:,} bytes; expected at most {MAX_INDEX_BYTES:,}")
    try:
        index = json.loads((folder / INDEX).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{folder / INDEX}: not readable JSON ({e})") from None
    if not isinstance(index, dict):
        raise _fail(folder, "index", "a JSON object", type(index).__name__)
    if index.get("format") != FORMAT:
        raise _fail(folder, "format", repr(FORMAT), index.get("format"))
    if index.get("version") != VERSION:
        raise _fail(folder, "version", str(VERSION), index.get("version"))
    names = index.get("class_names")
    if not isinstance(names, list) or not 2 <= len(names) <= MAX_CLASSES:
        raise _fail(folder, "class_names", f"a list of 2 to {MAX_CLASSES:,} names", names)
    for i, name in enumerate(names):
        problem = class_name_problem(name) if isinstance(name, str) else "a string"
        if problem:
            raise _fail(folder, f"class_names[{i}]", problem, name)
    if len(set(names)) != len(names) or names != sorted(names):
        raise _fail(folder, "class_names", "distinct names in sorted order")
    h = index.get("hash")
    if not isinstance(h, str) or not re.fullmatch(r"[0-9a-f]{64}", h):
        raise _fail(folder, "hash", "64 hexadecimal digits (sha256)", h)
    splits = index.get("splits")
    if not isinstance(splits, dict) or "train" not in splits or not set(splits) <= set(SPLITS):
        raise _fail(folder, "splits", f"an object with train (and optionally val, test) of {', '.join(SPLITS)}",
                    sorted(splits) if isinstance(splits, dict) else splits)
    for split, info in splits.items():
        _check_split(folder, f"splits.{split}", info, len(names))
    return index


def _check_split(folder: Path, field: str, info, num_classes: int) -> None:
    if not isinstance(info, dict):
        raise _fail(folder, field, "an object", type(info).__name__)
    count = _int(folder, f"{field}.count", info.get("count"), 1, MAX_IMAGES)
    counts = info.get("class_counts")
    if not isinstance(counts, list) or len(counts) != num_classes:
        raise _fail(folder, f"{field}.class_counts", f"a list of {num_classes} counts (one per class)", counts)
    for i, c in enumerate(counts):
        _int(folder, f"{field}.class_counts[{i}]", c, 0, count)
    if sum(counts) != count:
        raise _fail(folder, f"{field}.class_counts", f"counts adding up to count ({count:,})", sum(counts))
    sub = info.get("folder")
    if not isinstance(sub, str) or (sub and not FILE_NAME.match(sub)):
        raise _fail(folder, f"{field}.folder", "the split's folder name (or \"\")", sub)
    shards = info.get("shards")
    if not isinstance(shards, list) or not 1 <= len(shards) <= min(MAX_SHARDS, count):
        raise _fail(folder, f"{field}.shards", f"a list of 1 to {min(MAX_SHARDS, count):,} shard file names", shards)
    for i, s in enumerate(shards):
        _name(folder, f"{field}.shards[{i}]", s, ".array_record")
    if len(set(shards)) != len(shards):
        raise _fail(folder, f"{field}.shards", "distinct file names")
    _name(folder, f"{field}.labels", info.get("labels"), ".npz")


def _relative_name(name: str) -> bool:
    """A file name as list_folder gives them: relative, '/'-separated, no '..', no control characters."""
    return (0 < len(name) <= MAX_NAME and not name.startswith("/") and "\\" not in name
            and ".." not in name.split("/") and not any(ord(c) < 32 or ord(c) == 127 for c in name))


def open_split(folder: str | Path, index: dict, split: str) -> PackedSplit:
    """One split of a packed folder whose index passed read_index: its label file and shards
    checked against the index (labels, names, record counts), nothing decoded."""
    from array_record.python.array_record_data_source import ArrayRecordDataSource

    folder = Path(folder)
    info, num_classes = index["splits"][split], len(index["class_names"])
    where = folder / info["labels"]
    n = info["count"]
    try:  # bounded before anything is inflated: int64 labels and names of at most MAX_NAME characters
        with zipfile.ZipFile(where) as zf:
            sizes = {m.filename: m.file_size for m in zf.infolist()}
        if set(sizes) != {"labels.npy", "files.npy"} or sum(sizes.values()) > 4096 + n * (8 + 4 * MAX_NAME):
            raise ValueError(f"members {sorted(sizes)[:4]} of {sum(sizes.values()):,} bytes for {n:,} images")
        with np.load(where, allow_pickle=False) as z:
            labels, files = z["labels"], z["files"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{where}: not a label file (expected labels and files arrays; {e})") from None
    if labels.dtype.kind not in "iu" or labels.shape != (n,):
        raise DataError(f"{where}: labels: expected {n:,} whole numbers, got {labels.dtype} {labels.shape}")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{where}: labels: expected class numbers from 0 to {num_classes - 1}")
    if np.bincount(labels, minlength=num_classes).tolist() != info["class_counts"]:
        raise DataError(f"{where}: labels: the images per class differ from {INDEX}'s splits.{split}.class_counts")
    if files.dtype.kind != "U" or files.shape != (n,) or not all(_relative_name(str(f)) for f in files):
        raise DataError(f"{where}: files: expected {n:,} relative file names, got {files.dtype} {files.shape}")
    try:
        source = ArrayRecordDataSource([str(folder / s) for s in info["shards"]])
        stored = len(source)
    except Exception as e:  # the reader's own errors (a corrupt shard) come in several types
        raise DataError(f"{folder}: splits.{split}.shards: not readable ArrayRecord files ({e})") from None
    if stored != n:
        raise DataError(f"{folder}: splits.{split}.shards: {stored:,} records, expected count = {n:,}")
    records = Records((source,), np.zeros(n, np.int64), np.arange(n, dtype=np.int64), [f"{folder}/{split}"])
    return PackedSplit(records, labels.astype(np.int64), [str(f) for f in files], info["folder"])


__all__ = ["is_packed", "read_index", "open_split", "Records", "PackedSplit", "INDEX", "FORMAT", "VERSION", "SPLITS"]

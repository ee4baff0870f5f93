"""`imgclf pack DIR OUT`: an image folder written as a packed dataset (records.py describes it).

DIR is laid out as training reads it: class folders, or train/ (with a validation folder and
test/ beside it, if any). Every file is listed and checked as training lists it (regular image
files, class folders the same in every split) and its header identified by Pillow before anything
is written; the shards are written into a temporary folder beside OUT, renamed to OUT only once
complete, so a failed or interrupted pack leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..fileio import write_json
from ..progress import progress_bar
from .dataset import find_val_folder, list_folder
from .images import read_regular_file
from .records import FORMAT, INDEX, MAX_SHARDS, VERSION

DEFAULT_SHARD_IMAGES = 50_000  # images per shard when --shards is not given


def split_folders(src: Path) -> dict[str, Path]:
    """{split: folder} of DIR as load_dataset reads it."""
    if not (src / "train").is_dir():
        return {"train": src}
    found = {"train": src / "train"}
    val = find_val_folder(src)
    if val is not None:
        found["val"] = val
    if (src / "test").is_dir():
        found["test"] = src / "test"
    return found


def _identify(path: Path, data: bytes) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)):
            pass
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: not a readable image ({e}); remove it and pack again") from None


def pack(src: str | Path, out: str | Path, shards: int | None = None, progress: bool | None = None) -> dict:
    """Write DIR `src` as a packed dataset `out` (which must not exist); returns its index.
    `shards`: shard files per split (default: one per DEFAULT_SHARD_IMAGES images)."""
    src, out = Path(src), Path(out)
    if shards is not None and not 1 <= shards <= MAX_SHARDS:
        raise DataError(f"--shards: expected a whole number from 1 to {MAX_SHARDS:,}, got {shards}")
    if out.exists() or out.is_symlink():
        raise DataError(f"{out}: already exists (expected a new folder to write the packed dataset in)")
    if not out.parent.is_dir():
        raise DataError(f"{out.parent}: folder not found (expected the folder to create {out.name} in)")
    if not src.is_dir():
        raise DataError(f"{src}: {'folder not found' if not src.exists() else 'not a folder'} "
                        "(expected an image folder to pack)")
    folders = split_folders(src)
    files, labels, names = list_folder(folders["train"])  # every check before anything is written
    lists = {"train": (files, labels)}
    for split in ("val", "test"):
        if split in folders:
            f, y, _ = list_folder(folders[split], class_names=names)
            lists[split] = (f, y)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        index = _write(src, folders, lists, names, tmp, shards, progress)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return index


def _write(src, folders, lists, names, tmp: Path, shards, progress) -> dict:
    from array_record.python.array_record_module import ArrayRecordWriter

    h = hashlib.sha256(json.dumps([FORMAT, VERSION, names]).encode())
    splits = {}
    total = sum(len(f) for f, _ in lists.values())
    with progress_bar(total, "packing", progress) as bar:
        for split, (files, labels) in lists.items():
            n = len(files)
            k = min(n, shards or max(1, -(-n // DEFAULT_SHARD_IMAGES)))
            bounds = np.linspace(0, n, k + 1).astype(int)
            shard_names = [f"{split}-{s:05d}-of-{k:05d}.array_record" for s in range(k)]
            for s, name in enumerate(shard_names):
                writer = ArrayRecordWriter(str(tmp / name), "group_size:1")  # random access: a record per chunk
                try:
                    for i in range(bounds[s], bounds[s + 1]):
                        path = folders[split] / files[i]
                        data = read_regular_file(path)
                        _identify(path, data)
                        writer.write(data)
                        h.update(f"{split}\0{files[i]}\0{int(labels[i])}\0{len(data)}\0".encode())
                        h.update(data)
                        bar.update(1)
                finally:
                    writer.close()
            label_file = f"{split}.npz"
            with open(tmp / label_file, "wb") as f:
                np.savez(f, labels=np.asarray(labels, np.int64), files=np.asarray(files, dtype=str))
            splits[split] = {"count": n, "class_counts": np.bincount(labels, minlength=len(names)).tolist(),
                             "folder": "" if folders[split] == src else folders[split].name,
                             "shards": shard_names, "labels": label_file}
    index = {"format": FORMAT, "version": VERSION, "class_names": names, "splits": splits, "hash": h.hexdigest(),
             "source": str(src)}
    write_json(tmp / INDEX, index)
    return index


__all__ = ["pack", "split_folders", "DEFAULT_SHARD_IMAGES"]

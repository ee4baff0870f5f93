"""Data for bench/gpu.py: the CIFAR-10 training JPEGs packed into one .npz that travels to a GPU
machine, decoded there with imgclf's own decoder, split as imgclf splits them, and written in the
format imgclf reads without decoding (CIFAR-10's python batches).

The pack (PACK_NAME) holds, loaded with allow_pickle=False:
    jpeg         uint8 (total bytes,)   every file's bytes, concatenated in imgclf's listing order
    offsets      int64 (n + 1,)         image i is jpeg[offsets[i]:offsets[i + 1]]
    labels       int64 (n,)             class index of each image
    class_names  str (classes,)         sorted class folder names
    files        str (n,)               "<class>/<file>" names, as imgclf lists them
Stored compressed: every JPEG starts with the same header (the same encoder settings), which deflate
removes, so the file is far smaller than the JPEG bytes (bench/README.md has the sizes).
"""

from __future__ import annotations

import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from imgclf.fileio import atomic_write

PACK_NAME = "cifar10_train_jpeg.npz"
PACK_KEYS = ("jpeg", "offsets", "labels", "class_names", "files")


class PackError(ValueError):
    """A pack file that is not what PACK_NAME describes."""


def pack(folder: Path, out: Path) -> dict:
    """Pack `folder/<class>/*.jpg` (listed by imgclf, so in its order) into `out`."""
    from imgclf.data.dataset import list_folder

    files, labels, names = list_folder(folder)
    blobs = [(folder / f).read_bytes() for f in files]
    offsets = np.zeros(len(blobs) + 1, np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    arrays = {"jpeg": np.frombuffer(b"".join(blobs), np.uint8), "offsets": offsets,
              "labels": np.asarray(labels, np.int64), "class_names": np.asarray(names, dtype=str),
              "files": np.asarray(files, dtype=str)}
    atomic_write(out, lambda f: np.savez_compressed(f, **arrays))
    return {"images": len(files), "classes": len(names), "jpeg_bytes": int(offsets[-1]),
            "file_bytes": out.stat().st_size}


def load_pack(path: Path, limit: int | None = None) -> dict:
    """The pack as arrays (PACK_KEYS), checked. `limit` keeps about that many images: the first of each
    class, evenly (data["index"] says which)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in PACK_KEYS if k not in z.files]
            if missing:
                raise PackError(f"{path}: missing arrays {missing} (expected {', '.join(PACK_KEYS)})")
            data = {k: z[k] for k in PACK_KEYS}
    except (OSError, ValueError) as e:
        if isinstance(e, PackError):
            raise
        raise PackError(f"{path}: not a readable .npz pack (expected the file `bench/gpu.py prepare` "
                        f"writes; {type(e).__name__})") from None
    n, offsets, labels = len(data["labels"]), data["offsets"], data["labels"]
    if (data["jpeg"].dtype != np.uint8 or offsets.shape != (n + 1,) or len(data["files"]) != n
            or offsets[0] != 0 or offsets[-1] != len(data["jpeg"]) or np.any(np.diff(offsets) <= 0)
            or labels.min() < 0 or labels.max() >= len(data["class_names"])):
        raise PackError(f"{path}: inconsistent arrays (expected uint8 bytes, n + 1 increasing offsets ending "
                        f"at the byte count, n labels in 0..classes - 1 and n file names)")
    data["class_names"] = [str(c) for c in data["class_names"]]
    data["index"] = np.arange(n)
    if limit:
        per_class = max(1, limit // len(data["class_names"]))
        data["index"] = np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class]
                                                for c in range(len(data["class_names"]))]))
    return data


def decode(data: dict, size: int = 32, workers: int | None = None) -> np.ndarray:
    """uint8 (n, size, size, 3) images of the pack's kept images, decoded as imgclf's training loader
    decodes files (images.to_rgb with its default decode rule), on a thread pool."""
    from imgclf.data.images import DEFAULT_DECODE, to_rgb

    jpeg, offsets = data["jpeg"], data["offsets"]

    def one(i):
        return to_rgb(jpeg[offsets[i]:offsets[i + 1]].tobytes(), size, "stretch", DEFAULT_DECODE)

    with ThreadPoolExecutor(workers or min(16, os.cpu_count() or 1)) as pool:
        return np.stack(list(pool.map(one, data["index"], chunksize=256)))


def split(labels: np.ndarray, val_fraction: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """imgclf's carved validation split (stratified, seeded): the one every bench result uses."""
    from imgclf.data.dataset import stratified_split

    return stratified_split(labels, val_fraction, seed)


def write_cifar_batches(folder: Path, x: np.ndarray, y: np.ndarray, names: list[str],
                        test_x: np.ndarray, test_y: np.ndarray) -> Path:
    """CIFAR-10's python layout (data_batch_1..5, test_batch, batches.meta) of `x`: imgclf loads it
    as arrays (no decoding, no cache) and carves its validation split from the five batches.
    Protocol 4 pickles of plain arrays, which imgclf's restricted unpickler reads."""
    folder.mkdir(parents=True, exist_ok=True)

    def rows(images):
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))

    def dump(name, obj):
        atomic_write(folder / name, lambda f: pickle.dump(obj, f, protocol=4))

    for i, part in enumerate(np.array_split(np.arange(len(x)), 5), start=1):
        dump(f"data_batch_{i}", {"data": rows(x[part]), "labels": [int(v) for v in y[part]]})
    dump("test_batch", {"data": rows(test_x), "labels": [int(v) for v in test_y]})
    dump("batches.meta", {"label_names": list(names)})
    return folder


__all__ = ["PACK_NAME", "PackError", "pack", "load_pack", "decode", "split", "write_cifar_batches"]

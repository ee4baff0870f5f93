"""Datasets: image folders and the official CIFAR-10 archive, split, cached and batched.

An image folder is `root/<class>/*.{png,jpg,jpeg,bmp,webp}`. If `root` has a `train/` folder
(like ../shared/datasets/cifar10-jpeg) that is the training set, `root/test/`, if present, the
test set, and `root/validation/` (or `val/`, `valid/`), if present, the validation split, with the
same class folders as `train/`. Without one, a seeded, stratified validation split is carved out
of the training images. How the split was made and a hash of its file lists travel with the model.
A folder written by `imgclf pack` (records.py) loads as its image folder would, from its records.

Decoded images are cached as uint8 arrays keyed by (file list, sizes, mtimes, input size, resize rule,
decode rule): a second run does not decode again. Decoding runs on a thread pool, with a progress bar
on stderr for large sets. Sets over IMGCLF_MAX_MEMORY_GB (default 8) stream: decoded batch by batch.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError, quote
from ..fileio import atomic_write
from ..progress import progress_bar
from .images import DEFAULT_DECODE, IMAGE_EXTENSIONS, check_regular_file, to_rgb
from .names import class_name_problem
from .prefetch import process_map
from .records import is_packed, open_split, read_index

CACHE_FORMAT = 1
PROGRESS_MIN = 500  # fewer images decode in about a second: no progress bar
CHUNK = 64  # images per decoding task: small enough to balance the threads and move the progress bar


def cache_dir() -> Path:
    return Path(os.environ.get("IMGCLF_CACHE", Path.home() / ".cache" / "imgclf"))


def files_hash(files) -> str:
    """Stable hash of a list of relative file names (order-independent)."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\n")
    return h.hexdigest()[:16]


@dataclass
class ImageSet:
    """Images and integer labels. `x` is None when the set streams from disk."""

    y: np.ndarray
    files: list[str]  # relative names ("cat/0001.jpg") or ids ("cifar10/train/00042")
    x: np.ndarray | None = None
    root: Path | None = None
    size: tuple[int, int] = (32, 32)
    resize: str = "stretch"
    decode: str = "full"  # images.to_rgb's decode rule, for streaming sets and the model's metadata
    source: object = None  # a packed set's records.Records (encoded images by index); None: files under root

    def __len__(self) -> int:
        return len(self.y)

    def images(self, index) -> np.ndarray:
        """uint8 images for an index array, from memory or decoded from disk."""
        if self.x is not None:
            return self.x[index]
        if self.source is not None:
            return self.source.images(index, self.size, self.resize, self.decode)
        return np.stack([to_rgb(self.root / self.files[i], self.size, self.resize, self.decode)
                         for i in np.asarray(index)])

    def all_images(self):
        """Every image of the set: the array in memory, or for a streaming set a read-only view that
        decodes only the images indexed (prefetch.ImageView; np.asarray decodes them all)."""
        from .prefetch import ImageView

        return self.x if self.x is not None else ImageView(self)

    def subset(self, index) -> "ImageSet":
        index = np.asarray(index)
        return ImageSet(self.y[index], [self.files[i] for i in index], None if self.x is None else self.x[index],
                        self.root, self.size, self.resize, self.decode,
                        None if self.source is None else self.source.take(index))


@dataclass
class Dataset:
    train: ImageSet
    val: ImageSet
    test: ImageSet | None
    class_names: list[str]
    split: dict = field(default_factory=dict)  # source, val_source (+ seed, val_fraction or val_folder), hashes
    skipped: int = 0  # files left out by --skip-bad-images (of the sets held in memory)


# ---------------------------------------------------------------------------------------
# Image folders
# ---------------------------------------------------------------------------------------

def scan_folder(root: str | Path, skip_bad: bool = False,
                skipped: list | None = None) -> tuple[list[str], np.ndarray, list[str]]:
    """List `root/<class>/<image>` files: (relative names, labels, sorted class names).

    Nothing is opened here: each entry is only stat-ed, and anything but a regular image file
    (or a symlink to one) is refused, or skipped with a warning when `skip_bad` (and appended to
    `skipped`, if given). A FIFO, socket, device or broken link would otherwise hang or fail the
    decoding later."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: folder not found")
    if not root.is_dir():
        raise DataError(f"{root}: expected a folder of class sub-folders, got a file")
    class_names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_names:
        raise DataError(f"{root}: no class sub-folders found (expected {root}/<class>/<image files>)")
    if len(class_names) == 1:
        raise DataError(f"{root}: found 1 class folder ({class_names[0]}); expected at least 2")
    for name in class_names:
        problem = class_name_problem(name)
        if problem:
            raise DataError(f"{root}: class folder {quote(name)}: a class name must be {problem}")
    files, labels = [], []
    for label, name in enumerate(class_names):
        found = 0
        for path in sorted((root / name).iterdir()):
            if path.name.startswith(".") or path.is_dir():
                continue
            try:
                check_regular_file(path)
                if path.suffix.lower() not in IMAGE_EXTENSIONS:
                    raise DataError(f"{path}: not an image file (expected {', '.join(IMAGE_EXTENSIONS)})")
            except DataError as e:
                if skip_bad:
                    print(f"warning: skipped {e}", file=sys.stderr)
                    if skipped is not None:
                        skipped.append(str(path))
                    continue
                raise DataError(f"{e}; --skip-bad-images skips it") from None
            files.append(f"{name}/{path.name}")
            labels.append(label)
            found += 1
        if found == 0:
            raise DataError(f"{root / name}: class folder is empty (expected at least one image)")
    return files, np.asarray(labels, dtype=np.int64), class_names


def _decode_chunk(args):
    root, names, size, resize, decode = args
    out, errors = [], []
    for name in names:
        try:
            out.append(to_rgb(Path(root) / name, size, resize, decode))
        except DataError as e:
            out.append(None)
            errors.append(str(e))
    return out, errors


def _cache_key(root: Path, files: list[str], size, resize, decode="full") -> str:
    h = hashlib.sha256(json.dumps([CACHE_FORMAT, str(root.resolve()), list(size), resize, decode]).encode())
    for name in files:
        st = (root / name).stat()
        h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def decode_images(root: Path, files: list[str], size=(32, 32), resize="stretch",
                  skip_bad: bool = False, use_cache: bool = True, check=None, decode: str = "full",
                  workers: int | None = None, progress: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode files into a uint8 array; returns (images, indices of the files kept).

    `decode` is to_rgb's decode rule; `workers` processes decode (prefetch.process_map; default: one
    per CPU); `progress` shows a bar for more than PROGRESS_MIN images (None: when stderr is a
    terminal). `check(kept)`,
    if given, may raise on the files kept (when `skip_bad` dropped some); it runs before the cache
    file is written, so a rejected set leaves no cache behind."""
    with progress_bar(len(files), f"decoding {root.name}", progress, minimum=PROGRESS_MIN) as bar:
        return _decode_images(root, files, tuple(size), resize, decode, skip_bad, use_cache, check, workers, bar)


def _decode_images(root: Path, files, size, resize, decode, skip_bad, use_cache, check, workers, bar):
    key = _cache_key(root, files, size, resize, decode) if use_cache else None
    cached = cache_dir() / f"images-{key}.npz" if key else None
    if cached is not None and cached.exists():
        try:
            with np.load(cached, allow_pickle=False) as z:
                return z["x"], z["kept"]
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache: decode again and overwrite it
    jobs = [(str(root), files[i:i + CHUNK], size, resize, decode) for i in range(0, len(files), CHUNK)]
    results = []
    for job, result in zip(jobs, process_map(_decode_chunk, jobs, workers or os.cpu_count() or 1)):
        results.append(result)
        bar.update(len(job[1]))
    images, errors = [], []
    for out, errs in results:
        images.extend(out)
        errors.extend(errs)
    if errors and not skip_bad:
        raise DataError(errors[0] + (f" (and {len(errors) - 1} more bad images)" if len(errors) > 1 else "")
                        + "; --skip-bad-images skips them")
    if errors:
        for e in errors[:5]:
            print(f"warning: skipped {e}", file=sys.stderr)
        print(f"warning: skipped {len(errors)} bad image(s) of {len(files)}", file=sys.stderr)
    kept = np.asarray([i for i, im in enumerate(images) if im is not None], dtype=np.int64)
    if check is not None:
        check(kept)
    h, w = size
    x = np.stack([images[i] for i in kept]) if len(kept) else np.zeros((0, h, w, 3), np.uint8)
    if cached is not None:
        if hasattr(bar, "set_postfix_str"):  # a tqdm bar, not progress.NoBar
            bar.set_postfix_str("writing the cache")
        try:  # temp file + rename: readers never see a half-written cache file
            cached.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(cached, lambda f: np.savez(f, x=x, kept=kept))
        except OSError as e:  # a cache that cannot be written only costs the next run time
            print(f"warning: {cached}: cache not written ({e.strerror or type(e).__name__})", file=sys.stderr)
    return x, kept


def _max_memory_bytes() -> float:
    text = os.environ.get("IMGCLF_MAX_MEMORY_GB", "8")
    gb = float(text) if text.strip().replace(".", "", 1).isdigit() else 0.0  # a plain decimal number
    if not gb > 0:
        raise ConfigError(f"IMGCLF_MAX_MEMORY_GB: expected a number of gigabytes > 0, got {text[:40]!r}")
    return gb * 2**30


def streams(n: int, size) -> bool:
    """Whether `n` images of `size` exceed IMGCLF_MAX_MEMORY_GB and so stream from disk."""
    return n * size[0] * size[1] * 3 > _max_memory_bytes()


def _some(names: list[str], n: int = 8) -> str:
    """A class-name list for a message: at most `n` names, so a line stays short."""
    names = list(names)
    return str(names) if len(names) <= n else f"{str(names[:n])[:-1]}, ... ({len(names)} in all)]"


def list_folder(root: str | Path, skip_bad=False, limit_per_class: int | None = None,
                class_names: list[str] | None = None,
                skipped: list | None = None) -> tuple[list[str], np.ndarray, list[str]]:
    """scan_folder, checked against expected `class_names` and cut to `limit_per_class`; nothing decoded."""
    root = Path(root)
    files, labels, names = scan_folder(root, skip_bad, skipped)
    if class_names is not None and names != list(class_names):
        raise DataError(f"{root}: classes {_some(names)} differ from the training classes {_some(class_names)}")
    if limit_per_class:
        keep = np.concatenate([np.flatnonzero(labels == c)[:limit_per_class] for c in range(len(names))])
        files, labels = [files[i] for i in keep], labels[keep]
    return files, labels, names


def decode_folder(root: str | Path, files: list[str], labels: np.ndarray, size=(32, 32), resize="stretch",
                  skip_bad=False, check=None, decode: str = "full", progress: bool | None = None) -> ImageSet:
    """An ImageSet of listed files: decoded into memory (and cached), or streaming if too large.

    `check(labels_kept)` runs on the labels of the images kept, before anything is cached;
    `decode` and `progress` are decode_images'."""
    root = Path(root)
    if streams(len(files), size):
        print(f"note: {root}: {len(files)} images exceed the in-memory limit; streaming from disk", file=sys.stderr)
        return ImageSet(labels, files, None, root, tuple(size), resize, decode)
    x, kept = decode_images(root, files, size, resize, skip_bad, decode=decode, progress=progress,
                            check=None if check is None else (lambda kept: check(labels[kept])))
    return ImageSet(labels[kept], [files[i] for i in kept], x, root, tuple(size), resize, decode)


def load_folder(root: str | Path, size=(32, 32), resize="stretch", skip_bad=False,
                limit_per_class: int | None = None, class_names: list[str] | None = None,
                decode: str = "full") -> tuple[ImageSet, list[str]]:
    """Load an image folder as an ImageSet (in memory, or streaming if it is too large)."""
    files, labels, names = list_folder(root, skip_bad, limit_per_class, class_names)
    return decode_folder(root, files, labels, size, resize, skip_bad, decode=decode), names


def packed_set(part, root: Path, size, resize, decode, progress, prefix: str = "") -> ImageSet:
    """An ImageSet of a packed split (records.PackedSplit), decoded into memory in parallel, or
    streaming from its records if too large; file names as the folder's (`prefix`: "train/")."""
    files = [prefix + f for f in part.files]
    s = ImageSet(part.labels, files, None, root, tuple(size), resize, decode, part.records)
    if streams(len(files), size):
        print(f"note: {root}: {len(files)} images exceed the in-memory limit; streaming from its records",
              file=sys.stderr)
        return s
    from .prefetch import decode_all

    with progress_bar(len(files), f"decoding {root.name}", progress, minimum=PROGRESS_MIN) as bar, part.records:
        s.x = decode_all(s, bar=bar)
    return s


def load_packed(root: Path, size, resize, decode, progress, limit_per_class, expected, val_split, carve, test_data):
    """(full training set, validation set or None, its folder, test set or None, class names) of a
    packed folder (records.py); `carve`: (val_fraction, split_seed). Checked as folders are."""
    index = read_index(root)
    names = list(index["class_names"])
    if expected is not None and names != list(expected):
        raise DataError(f"{root}: classes {_some(names)} differ from the model's {_some(expected)}")
    parts = {s: open_split(root, index, s) for s in index["splits"] if s != "val" or val_split == "auto"}
    if limit_per_class:
        for p in parts.values():
            keep = np.sort(np.concatenate([np.flatnonzero(p.labels == c)[:limit_per_class]
                                           for c in range(len(names))]))
            p.records, p.labels, p.files = p.records.take(keep), p.labels[keep], [p.files[i] for i in keep]
    if test_data:
        parts.pop("test", None)
    if "val" in parts:
        check_every_class(root, parts["train"].labels, names)
    else:
        check_splittable(root, parts["train"].labels, names, *carve)
    val = parts.get("val")
    sets = [packed_set(p, root, size, resize, decode, progress, f"{p.folder}/" if val and s != "test" else "")
            if p else None for s, p in (("train", parts["train"]), ("val", val), ("test", parts.get("test")))]
    return sets[0], sets[1], Path(val.folder) if val else None, sets[2], names


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, stratified (train_index, val_index); both sorted."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    try:
        tr, va = train_test_split(index, test_size=val_fraction, stratify=labels, random_state=seed)
    except ValueError as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"val_fraction: cannot split {len(labels)} images stratified by class into a validation "
                        f"split of {val_fraction:g} ({reason})") from None
    return np.sort(tr), np.sort(va)


def check_splittable(root: Path, labels: np.ndarray, class_names: list[str], val_fraction: float,
                     split_seed: int) -> None:
    """Refuse, before anything is decoded or cached, a set the validation split cannot be carved from:
    every class needs at least 2 images (one to train on, one to validate with)."""
    counts = np.bincount(labels, minlength=len(class_names))
    for name, n in zip(class_names, counts):
        if n < 2:
            raise DataError(f"{Path(root) / name}: {n} usable image(s); expected at least 2 per class "
                            f"(one for training, one for the validation split)")
    stratified_split(labels, val_fraction, split_seed)


VAL_FOLDERS = ("validation", "val", "valid")  # a validation split beside train/, as users name it


def find_val_folder(root: Path) -> Path | None:
    """`root`'s validation folder beside `root/train/` (one of VAL_FOLDERS), or None."""
    found = [root / name for name in VAL_FOLDERS if (root / name).is_dir()]
    if len(found) > 1:
        raise DataError(f"{root}: found {' and '.join(p.name + '/' for p in found)} beside train/; "
                        "expected at most one validation folder")
    return found[0] if found else None


def list_split_folders(root: Path, val_root: Path, skip_bad=False, limit_per_class: int | None = None,
                       class_names: list[str] | None = None, skipped: list | None = None):
    """List `root/train/` and its validation folder, names relative to `root` ("train/cat/1.jpg"):
    ((train files, labels), (validation files, labels), class names). Both need the same classes."""
    files, labels, names = list_folder(root / "train", skip_bad, limit_per_class, class_names, skipped)
    val_files, val_labels, val_names = list_folder(val_root, skip_bad, limit_per_class, skipped=skipped)
    if val_names != names:
        missing, extra = [n for n in names if n not in val_names], [n for n in val_names if n not in names]
        what = "; ".join(f"{label} {_some(found)}" for label, found in (("missing", missing), ("extra", extra))
                         if found)
        raise DataError(f"{val_root}: class folders differ from {root / 'train'}: {what} "
                        "(expected the same class folders in both)")
    return (([f"train/{f}" for f in files], labels), ([f"{val_root.name}/{f}" for f in val_files], val_labels),
            names)


def check_every_class(root: Path, labels: np.ndarray, class_names: list[str]) -> None:
    """Refuse a training set left without any image of a class (all of them skipped as bad)."""
    counts = np.bincount(labels, minlength=len(class_names))
    for name, n in zip(class_names, counts):
        if n == 0:
            raise DataError(f"{Path(root) / name}: no usable image (expected at least one per class)")


# ---------------------------------------------------------------------------------------
# Dataset assembly
# ---------------------------------------------------------------------------------------

def is_cifar_source(data: str) -> bool:
    p = Path(data)
    return (data == "cifar10" or p.name.endswith(".tar.gz") or (p / "cifar-10-batches-py").is_dir()
            or (p / "data_batch_1").is_file())


def _load_cifar(data: str, limit_per_class, decode: str):
    from .cifar import load_cifar10

    arrays = load_cifar10(None if data == "cifar10" else data)
    sets = []
    for split, x, y in (("train", arrays.x_train, arrays.y_train), ("test", arrays.x_test, arrays.y_test)):
        y = np.asarray(y, dtype=np.int64)
        index = np.arange(len(y))
        if limit_per_class:
            index = np.concatenate([np.flatnonzero(y == c)[:limit_per_class] for c in range(10)])
            index.sort()
        sets.append(ImageSet(y[index], [f"cifar10/{split}/{i:05d}" for i in index], x[index], decode=decode))
    return sets[0], sets[1], list(arrays.class_names)


def load_dataset(data: str, test_data: str | None = None, input_size: int = 32, resize: str = "stretch",
                 val_fraction: float = 0.1, split_seed: int = 0, limit_per_class: int | None = None,
                 skip_bad_images: bool = False, class_names: list[str] | None = None,
                 val_split: str = "auto", decode: str = DEFAULT_DECODE, progress: bool | None = None) -> Dataset:
    """Load training images (and a test set, if any) and the validation split.

    The validation split is the folder beside `train/` (VAL_FOLDERS) if there is one and
    `val_split` is "auto", else carved from the training images (`val_fraction`, `split_seed`);
    "carved" always carves. Every check that needs no pixels (folders, class names, file types,
    split sizes) runs on the file lists of all sets before any image is decoded or cached.
    `class_names`, if given (a model's), must be the dataset's classes. `decode` is the decode rule
    (images.to_rgb; a model's own for evaluation); `progress` shows decoding progress (decode_images)."""
    expected = class_names
    if not data:
        raise DataError("data: no dataset given (expected an image folder, a CIFAR-10 archive or 'cifar10')")
    if val_split not in ("auto", "carved"):
        raise DataError(f"val_split: expected 'auto' or 'carved', got {quote(val_split)}")
    size = (input_size, input_size)
    test, val, val_root, skipped, dropped = None, None, None, [], 0  # skipped when listed, dropped when decoded
    if is_cifar_source(data):
        if input_size != 32:
            raise DataError(f"{data}: CIFAR-10 images are 32x32; input_size must be 32, got {input_size}")
        full, test, class_names = _load_cifar(data, limit_per_class, decode)  # arrays: nothing is cached
        if expected is not None and class_names != list(expected):
            raise DataError(f"{data}: classes {_some(class_names)} differ from the model's {_some(expected)}")
        test_list = list_folder(test_data, skip_bad_images, class_names=class_names,
                                skipped=skipped) if test_data else None
    elif is_packed(data):  # imgclf pack's folder (records.py); a --test-data folder replaces its test split
        full, val, val_root, test, class_names = load_packed(Path(data), size, resize, decode, progress,
                                                             limit_per_class, expected, val_split,
                                                             (val_fraction, split_seed), test_data)
        test_list = list_folder(test_data, skip_bad_images, class_names=class_names,
                                skipped=skipped) if test_data else None
    else:
        root = Path(data)
        if (root / "train").is_dir():
            if test_data is None and (root / "test").is_dir():
                test_data = str(root / "test")
            val_root = find_val_folder(root) if val_split == "auto" else None
            if val_root is None:
                root = root / "train"
        if val_root is None:
            files, labels, class_names = list_folder(root, skip_bad_images, limit_per_class, expected, skipped)
        else:
            (files, labels), val_list, class_names = list_split_folders(root, val_root, skip_bad_images,
                                                                         limit_per_class, expected, skipped)
        test_list = list_folder(test_data, skip_bad_images, class_names=class_names,
                                skipped=skipped) if test_data else None

        def check(y):
            if val_root is None:
                check_splittable(root, y, class_names, val_fraction, split_seed)
            else:
                check_every_class(root / "train", y, class_names)

        check(labels)
        full = decode_folder(root, files, labels, size, resize, skip_bad_images, check, decode, progress)
        dropped += len(files) - len(full)
        if val_root is not None:
            val = decode_folder(root, val_list[0], val_list[1], size, resize, skip_bad_images, None, decode, progress)
            dropped += len(val_list[0]) - len(val)
    if test_list is not None:
        test = decode_folder(test_data, test_list[0], test_list[1], size, resize, skip_bad_images, None, decode,
                             progress)
        dropped += len(test_list[0]) - len(test)
    if val is None:
        tr, va = stratified_split(full.y, val_fraction, split_seed)
        train, val = full.subset(tr), full.subset(va)
        how = {"val_source": "carved", "seed": split_seed, "val_fraction": val_fraction}
    else:
        train, how = full, {"val_source": "folder", "val_folder": val_root.name}
    split = {"source": str(data), **how,
             "train_files_hash": files_hash(train.files), "val_files_hash": files_hash(val.files),
             "n_train": len(train), "n_val": len(val), "n_test": 0 if test is None else len(test)}
    return Dataset(train, val, test, class_names, split, skipped=len(skipped) + dropped)


def class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """'balanced' weights: n_samples / (n_classes * count(class))."""
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(labels)
    w = compute_class_weight("balanced", classes=present, y=labels)
    weights = {int(c): 1.0 for c in range(num_classes)}
    weights.update({int(c): float(v) for c, v in zip(present, w)})
    return weights


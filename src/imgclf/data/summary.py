"""What training found in the data, in a few lines: split sizes and where the validation split
came from, images per class and the imbalance, the image-size distribution and files skipped.

Nothing is decoded: file lists and labels are counted, and image sizes come from the headers of
a bounded, seeded sample of files (Pillow reads a header without the pixels). In-memory arrays
(CIFAR-10) have one size, known from the array.
"""

from __future__ import annotations

import io

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .dataset import Dataset, ImageSet

SAMPLE = 500  # image headers read at most


@dataclass
class DataSummary:
    splits: dict  # {"train": n, "val": n, "test": n}
    val_source: str  # where the validation split came from, in words
    class_names: list
    class_counts: list  # training images per class
    sizes: dict  # width x height: median, smallest and largest (by pixels); read, of, unreadable
    skipped: int  # files left out by --skip-bad-images

    @property
    def imbalance(self) -> float | None:
        """Training images of the largest class over those of the smallest (None if one has none)."""
        lo, hi = min(self.class_counts), max(self.class_counts)
        return float(hi / lo) if lo else None

    def to_dict(self) -> dict:
        return {**asdict(self), "imbalance": self.imbalance}

    def lines(self) -> list[str]:
        s = self.splits
        test = f"{s['test']:,} test" if s.get("test") else "no test set"
        skipped = f"; {self.skipped:,} bad file(s) skipped" if self.skipped else ""
        counts = np.asarray(self.class_counts)
        lo, hi = int(counts.argmin()), int(counts.argmax())
        imbalance = f"; imbalance {self.imbalance:.1f}:1" if self.imbalance is not None else ""
        if counts[lo] == counts[hi]:
            classes = f"classes: {len(counts)}, {counts[lo]:,} training images each"
        else:
            classes = (f"classes: {len(counts)}, training images per class: min {counts[lo]:,} "
                       f"({self.class_names[lo]}), median {np.median(counts):,.0f}, max {counts[hi]:,} "
                       f"({self.class_names[hi]}){imbalance}")
        return [
            f"images: {s['train']:,} train, {s['val']:,} validation ({self.val_source}), {test}{skipped}",
            classes,
            f"image sizes: {format_sizes(self.sizes)}",
        ]

    def __str__(self) -> str:
        return "\n".join(self.lines())


def _wxh(size) -> str:
    return f"{size[0]}x{size[1]}"


def format_sizes(sizes: dict) -> str:
    """'32x32 (all)', or 'median 400x533, smallest 266x400, largest 533x400 (500 of 3,409 read)'."""
    if not sizes.get("read"):
        return "unknown (no image header could be read)"
    if sizes["read"] == sizes["of"]:
        where = "all" if sizes["smallest"] == sizes["largest"] else f"all {sizes['of']:,} read"
    else:
        where = f"{sizes['read']:,} of {sizes['of']:,} read"
    if sizes.get("unreadable"):
        where += f", {sizes['unreadable']:,} unreadable"
    if sizes["smallest"] == sizes["largest"]:
        return f"{_wxh(sizes['median'])} ({where})"
    return (f"median {_wxh(sizes['median'])}, smallest {_wxh(sizes['smallest'])}, "
            f"largest {_wxh(sizes['largest'])} ({where})")


def header_size(path: Path | io.BytesIO) -> tuple[int, int] | None:
    """(width, height) from an image file's header, as shown (EXIF orientation applied, as
    images.to_rgb does), or None if Pillow cannot read it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
            turned = im.getexif().get(0x0112) in (5, 6, 7, 8)  # EXIF Orientation: a quarter turn
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    return (h, w) if turned else (w, h)


def image_sizes(sets: list[ImageSet], sample: int = SAMPLE, seed: int = 0) -> dict:
    """The size distribution over all images of `sets`: in-memory arrays with no files behind them
    (CIFAR-10) by their shape, files by the headers of at most `sample` of them (seeded)."""
    in_memory = [s.root is None and s.x is not None for s in sets]
    items = [(s, j) for s, known in zip(sets, in_memory) if not known for j in range(len(s))]
    found = [(s.x.shape[2], s.x.shape[1]) for s, known in zip(sets, in_memory) if known for _ in range(len(s))]
    pick = np.random.default_rng(seed).choice(len(items), size=min(sample, len(items)), replace=False)
    unreadable = 0
    for i in np.sort(pick):
        s, j = items[i]  # a file under the set's root, or a packed set's encoded bytes
        size = header_size(Path(s.root) / s.files[j] if s.source is None else io.BytesIO(s.source[j]))
        if size is None:
            unreadable += 1
        else:
            found.append(size)
    out = {"read": len(found), "of": sum(len(s) for s in sets), "unreadable": unreadable}
    if found:
        wh = np.asarray(found)
        area = wh[:, 0] * wh[:, 1]
        out.update(median=[int(np.median(wh[:, 0])), int(np.median(wh[:, 1]))],
                   smallest=[int(v) for v in wh[area.argmin()]], largest=[int(v) for v in wh[area.argmax()]])
    return out


def val_source_text(split: dict) -> str:
    """Where the validation split came from, in words."""
    if split.get("val_source") == "folder":
        return f"the {split.get('val_folder', 'validation')}/ folder"
    fraction, seed = split.get("val_fraction"), split.get("seed")
    share = f"{100 * fraction:g}% " if fraction is not None else ""
    return f"{share}carved out of the training images" + (f", split seed {seed}" if seed is not None else "")


def summarize(data: Dataset, sample: int = SAMPLE, seed: int = 0) -> DataSummary:
    """A DataSummary of a loaded Dataset (nothing decoded; at most `sample` headers read)."""
    sets = [s for s in (data.train, data.val, data.test) if s is not None]
    counts = np.bincount(data.train.y, minlength=len(data.class_names))
    return DataSummary(
        splits={"train": len(data.train), "val": len(data.val), "test": 0 if data.test is None else len(data.test)},
        val_source=val_source_text(data.split), class_names=list(data.class_names),
        class_counts=[int(c) for c in counts], sizes=image_sizes(sets, sample, seed),
        skipped=int(getattr(data, "skipped", 0)))


__all__ = ["DataSummary", "summarize", "image_sizes", "format_sizes", "header_size", "SAMPLE"]

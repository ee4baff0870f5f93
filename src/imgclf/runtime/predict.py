"""Prediction on image files and folders: top-k classes with probabilities."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

from ..errors import DataError
from ..progress import progress_bar
from ..data.images import IMAGE_EXTENSIONS, check_regular_file, is_image_file
from ..data.prefetch import ordered_map
from .classifier import expand_paths, top_k
from .load import load_classifier

PARALLEL_MIN = 2048  # images from which predict decodes ahead on several threads


def check_inputs(paths) -> None:
    """Refuse, before any image is opened, what predict cannot read: a missing path, a folder
    without image files, or an image that is not a regular file (a FIFO, socket or device would
    hang or never end; a broken symlink cannot be read). Nothing is opened here."""
    for p in map(Path, paths):
        if p.is_dir():
            images = [q for q in sorted(p.rglob("*")) if is_image_file(q) and not q.is_dir()]
            if not images:
                raise DataError(f"{p}: no image files in this folder or its sub-folders "
                                f"(expected {', '.join(IMAGE_EXTENSIONS)})")
            for q in images:
                check_regular_file(q)
        elif p.exists() or p.is_symlink():
            check_regular_file(p)
        else:
            raise DataError(f"{p}: no such file or folder")


def predict(model: str | Path, paths, k: int = 5, batch_size: int = 256, tta: bool = False,
            progress: bool | None = None) -> list[dict]:
    """[{"file": ..., "top": [(class, probability), ...]}] for every image in `paths`.

    `progress`: a bar on stderr for many images (imgclf.progress); None: if stderr is a terminal."""
    clf = load_classifier(model)
    check_inputs(paths)  # before expand_paths, which would skip or open odd entries
    files = expand_paths(paths)
    out = []
    chunks = [files[i:i + batch_size] for i in range(0, len(files), batch_size)]
    # many images: the next batches are decoded on other threads while the model runs (Grain, if
    # installed; prefetch.py), a few batches in memory at a time. Few: no thread start-up cost.
    threads = None if len(files) >= PARALLEL_MIN else 1
    with progress_bar(len(files), "predict", progress) as bar:
        for chunk, x in zip(chunks, ordered_map(lambda c: clf.load_images(chunks[c]), len(chunks), threads)):
            probs = clf.predict_proba(x, tta=tta)
            out.extend({"file": str(f), "top": t} for f, t in zip(chunk, top_k(probs, clf.class_names, k)))
            bar.update(len(chunk))
    return out


def format_table(rows: list[dict]) -> str:
    if not rows:
        return "(no images)"
    width = max(len(r["file"]) for r in rows)
    lines = []
    for r in rows:
        guesses = "  ".join(f"{name} {100 * p:5.1f}%" for name, p in r["top"])
        lines.append(f"{r['file']:<{width}}  {guesses}")
    return "\n".join(lines)


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    k = max((len(r["top"]) for r in rows), default=0)
    w = csv.writer(buf)
    w.writerow(["file"] + [c for i in range(1, k + 1) for c in (f"class_{i}", f"prob_{i}")])
    for r in rows:
        w.writerow([r["file"]] + [v for name, p in r["top"] for v in (name, f"{p:.6f}")])
    return buf.getvalue()


def to_json(rows: list[dict]) -> str:
    return json.dumps([{"file": r["file"], "top": [{"class": n, "probability": p} for n, p in r["top"]]}
                       for r in rows], indent=1)


def print_predictions(rows, as_json=False, csv_path=None) -> None:
    if csv_path:
        from ..fileio import atomic_write

        atomic_write(Path(csv_path), lambda f: f.write(to_csv(rows).encode()))
        print(f"wrote {len(rows)} predictions to {csv_path}", file=sys.stderr)
    print(to_json(rows) if as_json else format_table(rows))

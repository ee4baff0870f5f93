"""Evaluation of a model file: the seed's results table, per-class precision/recall/F1 and a
confusion matrix. (The evaluation's HTML report is drawn on top of it: imgclf.pipeline.)

`evaluate(model, data)` needs only the model file: its metadata gives the class names, input
size, resize rule and validation split. Shown the model's own training folder (recognised by
the hash of its training file list), it rebuilds the same split and reports train and
validation rows, as the seed did; any other folder is reported as held-out data.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.dataset import Dataset, ImageSet, files_hash, load_dataset
from ..data.prefetch import image_chunks
from ..errors import ImgclfError
from ..fileio import write_json
from ..progress import progress_bar
from ..runtime import load_classifier
from .metrics import SCORE_KEYS, confusion_text, evaluate_arrays, per_class_table, results_table, write_evaluation


def _same_split(meta: dict, data: Dataset) -> bool:
    split = meta.get("split") or {}
    return bool(split) and split.get("train_files_hash") == files_hash(data.train.files)


def _predict(clf, images: ImageSet, tta: bool, bar, chunk: int = 2048) -> np.ndarray:
    """clf.predict_proba(images, tta, calibrated=False) in chunks (multiples of its batch size, so the
    same batches), advancing the progress bar. A set that streams from disk is decoded chunk by chunk,
    ahead of the model, on several threads (prefetch.image_chunks): a few chunks in memory at a time."""
    out = []
    for x in image_chunks(images, chunk):
        out.append(clf.predict_proba(x, tta=tta, calibrated=False))
        bar.update(len(out[-1]))
    empty = np.zeros((0, *images.size, 3), np.uint8)
    return np.concatenate(out) if out else clf.predict_proba(empty, tta=tta, calibrated=False)


def _joined(a: ImageSet, b: ImageSet) -> ImageSet:
    """`a` followed by `b` (the training folder's two splits, as one held-out set)."""
    both = a.x is not None and b.x is not None
    return ImageSet(np.concatenate([a.y, b.y]), a.files + b.files, np.concatenate([a.x, b.x]) if both else None,
                    a.root, a.size, a.resize, a.decode, None if a.source is None else a.source.concat(b.source))


@dataclass
class Evaluation:
    """What `run_evaluation` found: the results per set, and the held-out set they were drawn from."""

    results: dict  # {set name: evaluate_arrays(...)}
    held_out: str  # "test", "val" or "data"
    images: ImageSet  # the held-out set
    classifier: object  # the loaded runtime Classifier
    tta: bool
    out_dir: Path


def evaluate(model: str | Path, data: str | None = None, test_data: str | None = None,
             out_dir: str | Path | None = None, tta: bool | None = None, verbose: bool = True) -> dict:
    """Evaluate a model file on a dataset; returns {set: {loss, accuracy, ...}} and writes out_dir.

    `tta`: None (default) uses the test-time augmentation the model records (metadata `tta`; a model
    without it: none), so the figures match those `train` reported; True or False forces it.
    The model file is only read: out_dir (replaced as a whole) may not be or hold it."""
    return run_evaluation(model, data, test_data, out_dir, tta=tta, verbose=verbose).results


def run_evaluation(model: str | Path, data: str | None = None, test_data: str | None = None,
                   out_dir: str | Path | None = None, tta: bool | None = None, verbose: bool = True) -> Evaluation:
    """`evaluate`, returning an Evaluation (the loaded classifier and held-out images included)."""
    clf = load_classifier(model)
    if tta is None:  # as the model records: its validation and test figures were measured so
        tta = bool(clf.meta.get("tta", False))
    out_dir = Path(out_dir) if out_dir else Path(model).parent / "evaluation"
    if out_dir.exists() and not out_dir.is_dir():
        raise ImgclfError(f"{out_dir}: output folder is a file (expected a folder to write the evaluation in)")
    if Path(model).resolve().is_relative_to(out_dir.resolve()):
        raise ImgclfError(f"{out_dir}: output folder holds the model {model} (it is replaced as a whole: "
                          "choose another folder)")
    split = clf.meta.get("split") or {}
    data = data or split.get("source")
    if not data:
        raise ImgclfError("data: no dataset given and the model records none (pass --data)")
    # rebuild the split as the model made it: carved (models from before validation folders carved
    # theirs), or the validation folder beside train/
    carved = bool(split) and split.get("val_source", "carved") == "carved"
    ds = load_dataset(data, test_data, clf.input_size, clf.resize, split.get("val_fraction", 0.1),
                      split.get("seed", 0), split.get("limit_per_class"), class_names=clf.class_names,
                      val_split="carved" if carved else "auto", decode=clf.decode,
                      progress=None if verbose else False)
    if ds.class_names != clf.class_names:  # load_dataset checks this before decoding; kept as a guard
        raise ImgclfError(f"{data}: classes {ds.class_names} differ from the model's {clf.class_names}")
    own = _same_split(meta=clf.meta, data=ds)
    if own:
        sets = {"train": ds.train, "val": ds.val}
        note = "these are the model's own training images: train = its training split, val = its held-out split"
    else:
        sets = {"data": _joined(ds.train, ds.val)}
        note = "not the model's training images: all of them are reported as held-out data"
    if ds.test is not None:
        sets["test"] = ds.test
    results = {}
    with progress_bar(sum(len(s) for s in sets.values()), "evaluate", None if verbose else False) as bar:
        for name, s in sets.items():
            # as train does: the training-set row is a single pass, the held-out rows use the TTA
            results[name] = evaluate_arrays(_predict(clf, s, tta and name != "train", bar), s.y)

    tmp = out_dir.with_name(f".{out_dir.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    held_out = "test" if "test" in results else ("val" if "val" in results else "data")
    write_evaluation(tmp, results[held_out], clf.class_names, held_out)
    summary = {name: {k: r[k] for k in ("loss", "accuracy", "n", *SCORE_KEYS, "confusion_matrix", "per_class")}
               for name, r in results.items()}
    # "data" is also the name of the held-out set's row when these are not the model's own images
    summary["model"], summary["dataset"], summary["own_training_images"], summary["tta"] = str(model), str(data), own, tta
    write_json(tmp / "metrics.json", summary)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    if verbose:
        views = ("TTA: " + ("mirrors and shifts" if clf.tta_translate else "mirrors") +
                 (" (held-out rows; the training-set row is a single pass)" if own else "")) if tta else "TTA: off"
        print(f"model: {model} ({clf.runtime})\ndata: {data}\n{views}\nnote: {note}\n")
        print(results_table(summary))
        print(f"\nper-class metrics ({held_out}):\n" + per_class_table(results[held_out], clf.class_names))
        print("\n" + confusion_text(results[held_out]["confusion_matrix"]))
        print(f"\nwritten: {out_dir}/metrics.json, confusion_matrix.png, classification_report.txt", file=sys.stderr)
    return Evaluation(results, held_out, sets[held_out], clf, tta, out_dir)

"""What a report reads: run, evaluation, study and repeats folders, and the images it looks at.

A report reads files and model files; it never writes a model.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ImgclfError

REPORT_NAME = "report.html"
COMPARE_METRICS = (("train", "accuracy"), ("val", "accuracy"), ("test", "accuracy"),
                   ("train", "loss"), ("val", "loss"), ("test", "loss"))

Predict = Callable[[np.ndarray], np.ndarray]  # uint8 NHWC -> raw probabilities (no temperature)


@dataclass
class EvalSet:
    """Images, labels and raw predicted probabilities of the set a report looks at."""

    name: str  # "val", "test" or "data"
    x: np.ndarray
    y: np.ndarray
    probs: np.ndarray
    files: list[str]
    class_names: list[str]


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ImgclfError(f"{path}: cannot read JSON ({e})") from None


def read_history(path: Path) -> list[dict]:
    """history.csv's rows ([] if there is none)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_config(path: Path) -> dict:
    """A run's config.yaml ({} if there is none)."""
    from ..config import read_yaml_file

    if not path.is_file():
        return {}
    cfg = read_yaml_file(path, "a run's config.yaml")
    return cfg if isinstance(cfg, dict) else {}


def read_table(path: Path) -> tuple[list[str], list[list[str]]]:
    """A CSV file's header and rows."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        return next(reader, []), list(reader)


def folder_kind(folder: Path) -> str:
    """'repeats', 'run', 'study' or 'evaluation', from the files the folder holds."""
    if (folder / "repeats.json").is_file():
        return "repeats"
    if (folder / "config.yaml").is_file() or (folder / "model.keras").is_file():
        return "run"
    if (folder / "trials.csv").is_file() or (folder / "trials.md").is_file():
        return "study"
    if (folder / "metrics.json").is_file():
        return "evaluation"
    raise ImgclfError(f"{folder}: not a run, evaluation, study or repeats folder "
                      f"(expected config.yaml, metrics.json, trials.csv or repeats.json inside)")


def _pieces(x, n: int):
    """`x` n images at a time: slices of an array, or for a streaming set's view (ImageSet.all_images)
    its images decoded ahead on several threads (prefetch.image_chunks)."""
    from ..data.prefetch import ImageView, image_chunks

    if isinstance(x, ImageView):
        yield from image_chunks(x.images, n)
    else:
        for i in range(0, len(x), n):
            yield x[i:i + n]


def keras_predict(model, batch_size: int = 500) -> Predict:
    def predict(x: np.ndarray) -> np.ndarray:
        out = [np.asarray(model.predict_on_batch(np.asarray(b, np.float32)), np.float32)
               for b in _pieces(x, batch_size)]
        return np.concatenate(out) if out else np.zeros((0, model.output_shape[-1]), np.float32)

    return predict


def classifier_predict(clf, chunk: int = 2048) -> Predict:
    """clf.predict_proba, chunk by chunk (a multiple of its batch size: the same batches)."""
    def predict(x: np.ndarray) -> np.ndarray:
        out = [clf.predict_proba(b, calibrated=False) for b in _pieces(x, chunk)]
        return np.concatenate(out) if out else clf.predict_proba(x[:0], calibrated=False)

    return predict


def run_val_set(cfg: dict, meta: dict | None, notes: list[str], data=None):
    """The run's validation ImageSet and class names: from `data` if given, else reloaded as the
    run's config says; (None, None) with a line in `notes` when that fails."""
    from ..data.dataset import files_hash, load_dataset
    from ..runtime.modelmeta import OLD_DECODE

    if data is None:
        if not cfg.get("data"):
            notes.append("the run's config names no data: gallery, calibration and robustness are skipped")
            return None, None
        try:
            data = load_dataset(cfg["data"], cfg.get("test_data"), cfg.get("input_size", 32),
                                cfg.get("resize", "stretch"), cfg.get("val_fraction", 0.1), cfg.get("split_seed", 0),
                                cfg.get("limit_per_class"), bool(cfg.get("skip_bad_images", False)),
                                decode=(meta or {}).get("decode", OLD_DECODE))
        except ImgclfError as e:
            notes.append(f"validation images not available ({e}): gallery, calibration and robustness are skipped")
            return None, None
        want = ((meta or {}).get("split") or {}).get("val_files_hash")
        if want and files_hash(data.val.files) != want:
            notes.append(f"{cfg['data']}: the validation files differ from the ones the model was trained with "
                         "(the data changed since): gallery, calibration and robustness use the current files")
    return data.val, data.class_names


def run_summary(folder: Path) -> dict:
    """A finished run's folder, config, metrics, history and the values `compare` puts side by side."""
    if not folder.is_dir():
        raise ImgclfError(f"{folder}: run folder not found")
    if not (folder / "metrics.json").is_file():
        raise ImgclfError(f"{folder}: not a finished run (expected metrics.json inside)")
    metrics = read_json(folder / "metrics.json")
    rep = read_json(folder / "report.json") if (folder / "report.json").is_file() else {}
    values = {f"{s} {m}": metrics[s][m] for s, m in COMPARE_METRICS if isinstance(metrics.get(s), dict)}
    cal = metrics.get("calibration") if "ece_after" in (metrics.get("calibration") or {}) else rep.get("calibration")
    if cal:  # train's numbers (measured on the held-out half of validation); older runs: the report's
        values["ECE before"] = cal.get("ece_before")
        values["ECE after"] = cal.get("ece_after")
        values["temperature"] = cal.get("temperature")
    if rep.get("robustness"):
        values["corrupted accuracy"] = rep["robustness"]["mean_corrupted"]
    s = metrics.get("seconds") or {}
    if s:
        values["fit seconds"] = s.get("fit")
        values["total seconds"] = s.get("total")
    if "epochs_run" in metrics:
        values["epochs"] = metrics["epochs_run"]
    return {"folder": folder, "config": read_config(folder / "config.yaml"), "metrics": metrics, "values": values,
            "history": read_history(folder / "history.csv")}


def run_names(folders: list[Path]) -> list[str]:
    """Short unique names: the folder's name, else parent/name, else the path as given."""
    names = [f.resolve().name for f in folders]
    if len(set(names)) < len(names):
        names = [f"{f.resolve().parent.name}/{f.resolve().name}" for f in folders]
    if len(set(names)) < len(names):
        names = [str(f) for f in folders]
    return names


def stats_over(values: list[dict]) -> dict:
    """{metric: {mean, std, n, values}} over the runs that have it (std: sample, ddof=1)."""
    keys = list(dict.fromkeys(k for v in values for k in v))
    out = {}
    for k in keys:
        xs = [float(v[k]) for v in values if v.get(k) is not None]
        if xs:
            out[k] = {"mean": float(np.mean(xs)), "std": float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0,
                      "n": len(xs), "values": xs}
    return out

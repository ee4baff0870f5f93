"""The model card: a Markdown page written from a model file's own metadata and nothing else.

Every imgclf model carries its metadata (`imgclf.json` inside a `.keras` file, the `imgclf` key of
an `.onnx` file's metadata_props): classes, input size, resize rule, the validation split, the
metrics, the fitted temperature, the versions, and for a shipped model a `card` object with the
command that made it. `model_card(meta)` turns that into Markdown, so a card cannot disagree with
its model: retrain the model and the card must be written again.

    python -m imgclf.runtime.card MODEL.keras|MODEL.onnx [-o FILE]

Nothing here imports TensorFlow or Keras (an `.onnx` file is read with ONNX Runtime).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import ImgclfError

# top-level metadata keys the card shows in its own sections; any other key goes under "Other metadata"
SHOWN = ("card", "model", "recipe", "params", "pretrained", "class_names", "input_size", "resize", "split",
         "metrics", "tta", "tta_translate", "temperature", "calibration", "imgclf_version", "keras_version",
         "backend", "exported_from", "export_format")
# keys of the `card` object shown in their own rows; any other one goes under "Other metadata" too
CARD_SHOWN = ("name", "command", "model", "recipe", "seed", "epochs", "train_seconds", "data", "val_accuracy",
              "val_n", "temperature")
SET_NAMES = {"train": "training", "val": "validation", "test": "test"}


def cell(value) -> str:
    """`value` as the text of one Markdown table cell: one line, pipes escaped."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return " ".join(text.split()).replace("|", "\\|")


def code(value) -> str:
    """`value` as inline code in a table cell (backticks inside become quotes)."""
    return f"`{cell(value).replace('`', chr(39))}`"


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def count(value) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else cell(value)


def percent(value) -> str:
    return f"{100 * value:.2f}%" if is_number(value) else cell(value)


def decimal(value, places: int) -> str:
    return f"{value:.{places}f}" if is_number(value) else cell(value)


def table(rows: list[tuple[str, str]]) -> list[str]:
    """A two-column Markdown table (label, value) of the rows whose value is not empty."""
    rows = [(label, value) for label, value in rows if value]
    if not rows:
        return []
    return ["| | |", "|---|---|", *(f"| {label} | {value} |" for label, value in rows), ""]


def section(title: str, lines: list[str]) -> list[str]:
    return [f"## {title}", "", *lines] if lines else []


def model_rows(meta: dict, card: dict) -> list[tuple[str, str]]:
    model = meta.get("model", card.get("model"))
    params = meta.get("params")
    model_text = code(model) if model is not None else ""
    if params is not None:
        model_text += f" ({count(params)} parameters)" if model_text else f"{count(params)} parameters"
    recipe = meta.get("recipe", card.get("recipe"))
    how = [f"seed {cell(card['seed'])}"] if "seed" in card else []
    if "epochs" in card:
        how.append(f"{cell(card['epochs'])} epochs")
    recipe_text = code(recipe) if recipe is not None else ""
    if how:
        recipe_text = f"{recipe_text}, {', '.join(how)}" if recipe_text else ", ".join(how)
    seconds = card.get("train_seconds")
    return [
        ("model", model_text),
        ("recipe", recipe_text),
        ("command", code(card["command"]) if "command" in card else ""),
        ("wall time of the training run", f"{decimal(seconds, 1)} s" if is_number(seconds) else
         (cell(seconds) if seconds is not None else "")),
        ("pretrained name", code(meta["pretrained"]) if "pretrained" in meta else ""),
    ]


def io_rows(meta: dict) -> list[tuple[str, str]]:
    size, names = meta.get("input_size"), meta.get("class_names") or []
    size_text = f"{cell(size)}x{cell(size)} " if size is not None else ""
    return [
        ("input", f"{size_text}RGB images, pixel values 0-255 (uint8 or float32, NHWC)"),
        ("resize rule", code(meta["resize"]) if "resize" in meta else ""),
        ("output", f"softmax probabilities over {len(names)} classes, in the order below" if names else ""),
        ("classes", ", ".join(cell(n) for n in names)),
    ]


def data_rows(meta: dict, card: dict) -> list[tuple[str, str]]:
    split = meta.get("split") if isinstance(meta.get("split"), dict) else {}
    sizes = [f"{count(split[k])} {label}" for k, label in (("n_train", "training"), ("n_val", "validation"),
                                                           ("n_test", "test")) if k in split]
    rule = []
    if "val_fraction" in split:
        rule.append(f"validation fraction {cell(split['val_fraction'])}")
    if "seed" in split:
        rule.append(f"split seed {cell(split['seed'])}")
    if "limit_per_class" in split:
        limit = split["limit_per_class"]
        rule.append("all images of each class" if limit is None else f"at most {count(limit)} images per class")
    hashes = [f"{label} {code(split[k])}" for k, label in (("train_files_hash", "training"),
                                                          ("val_files_hash", "validation")) if k in split]
    return [
        ("data", cell(card["data"]) if "data" in card else ""),
        ("source (as given at training time)", code(split["source"]) if "source" in split else ""),
        ("images", " / ".join(sizes)),
        ("split", ", ".join(rule)),
        ("file-list hashes", ", ".join(hashes)),
    ]


def metrics_lines(meta: dict) -> list[str]:
    metrics = meta.get("metrics") if isinstance(meta.get("metrics"), dict) else {}
    rows = []
    for name, m in metrics.items():
        if isinstance(m, dict):
            rows.append(f"| {SET_NAMES.get(name, cell(name))} | {count(m.get('n', ''))} | "
                        f"{decimal(m.get('loss', ''), 4)} | {percent(m.get('accuracy', ''))} |")
    if not rows:
        return []
    lines = ["| set | images | loss | accuracy |", "|---|---|---|---|", *rows, ""]
    if meta.get("tta"):
        views = "each image and its mirror"
        shift = meta.get("tta_translate")
        if shift:
            unit = "pixel" if shift == 1 else "pixels"
            views += f", plus both views shifted {cell(shift)} {unit} up-left and down-right"
        lines += [f"The validation and test figures use test-time augmentation (the mean over {views}); "
                  "the training figures are a single pass.", ""]
    return lines


def calibration_rows(meta: dict) -> list[tuple[str, str]]:
    cal = meta.get("calibration") if isinstance(meta.get("calibration"), dict) else {}
    t = meta.get("temperature")
    rows = [("temperature T", f"{decimal(t, 3)} (`predict` and `serve` apply it)" if t is not None else "")]
    if "skipped" in cal:
        return rows + [("fit", f"skipped: {cell(cal['skipped'])}")]
    seed = f" (seed {cell(cal['seed'])})" if "seed" in cal else ""
    if "folds" in cal:  # fitted on the whole split, measured out of fold
        rows.append(("fitted on", f"all {count(cal.get('fit_n', ''))} validation images; measured by "
                                  f"{cell(cal['folds'])}-fold cross-validation{seed}, held-out NLL lower in "
                                  f"{cell(cal.get('folds_improved', ''))} of {cell(cal['folds'])} folds"))
    elif "fit_n" in cal or "eval_n" in cal:
        rows.append(("fitted on", f"{count(cal.get('fit_n', ''))} validation images{seed}; measured on the other "
                                  f"{count(cal.get('eval_n', ''))}"))
    bins = f" ({cell(cal['n_bins'])} bins)" if "n_bins" in cal else ""
    if "ece_before" in cal or "ece_after" in cal:
        rows.append((f"expected calibration error{bins}, before -> after T",
                     f"{decimal(cal.get('ece_before', ''), 3)} -> {decimal(cal.get('ece_after', ''), 3)}"))
    if "nll_before" in cal or "nll_after" in cal:
        rows.append(("negative log-likelihood, before -> after T",
                     f"{decimal(cal.get('nll_before', ''), 3)} -> {decimal(cal.get('nll_after', ''), 3)}"))
    if "accuracy" in cal:
        measured = "the validation split" if "folds" in cal else "the measured half"
        rows.append((f"accuracy on {measured} (single pass)", percent(cal["accuracy"])))
    return rows


def version_rows(meta: dict) -> list[tuple[str, str]]:
    return [
        ("imgclf", code(meta["imgclf_version"]) if "imgclf_version" in meta else ""),
        ("Keras", code(meta["keras_version"]) if "keras_version" in meta else ""),
        ("backend", code(meta["backend"]) if "backend" in meta else ""),
        ("exported from", code(meta["exported_from"]) if "exported_from" in meta else ""),
        ("export format", code(meta["export_format"]) if "export_format" in meta else ""),
    ]


def other_rows(meta: dict, card: dict) -> list[tuple[str, str]]:
    rows = [(code(key), code(meta[key])) for key in sorted(meta) if key not in SHOWN]
    return rows + [(code(f"card.{key}"), code(card[key])) for key in sorted(card) if key not in CARD_SHOWN]


def model_card(meta: dict) -> str:
    """A Markdown model card from a model's metadata (as modelfile.read_meta returns it).

    It shows whatever the metadata holds: model and recipe, the command that made it, input and
    output, classes, training data and split, metrics, calibration and versions; unknown keys are
    listed at the end. The same metadata always gives the same text."""
    card = meta.get("card") if isinstance(meta.get("card"), dict) else {}
    title = card.get("name") or (f"imgclf {meta['model']} model" if meta.get("model") else "imgclf model")
    lines = [f"# Model card: {cell(title)}", "",
             "Generated from the model file's own metadata by `imgclf.runtime.card.model_card`; "
             "do not edit by hand. Regenerate with `python -m imgclf.runtime.card MODEL -o FILE`.", ""]
    lines += section("Model", table(model_rows(meta, card)))
    lines += section("Input and output", table(io_rows(meta)))
    lines += section("Training data", table(data_rows(meta, card)))
    lines += section("Metrics", metrics_lines(meta))
    lines += section("Calibration", table(calibration_rows(meta)))
    lines += section("Versions", table(version_rows(meta)))
    lines += section("Other metadata", table(other_rows(meta, card)))
    return "\n".join(lines).rstrip("\n") + "\n"


def read_any_meta(path: Path) -> dict:
    """The validated metadata of a `.keras` (read as a zip) or `.onnx` file (ONNX Runtime)."""
    if path.suffix == ".onnx":
        from .onnx_runtime import OnnxClassifier

        return OnnxClassifier(path).meta
    from .modelfile import read_meta

    return read_meta(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m imgclf.runtime.card",
                                 description="Write a model's card (Markdown) from its own metadata.")
    ap.add_argument("model", type=Path, help="a .keras or .onnx model file written by imgclf")
    ap.add_argument("--out", "-o", type=Path, help="Markdown file to write (default: standard output)")
    args = ap.parse_args(argv)
    try:
        text = model_card(read_any_meta(args.model))
    except ImgclfError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The model card is written from the model file's own metadata (imgclf.runtime.card).

The committed card of the shipped CIFAR-10 model must be exactly what its metadata gives, so a
retrained model whose card was not regenerated fails here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from imgclf.runtime.card import main, model_card, read_any_meta
from imgclf.runtime.modelfile import read_meta
from conftest import HANG

REPO = Path(__file__).resolve().parents[1]
PRETRAINED = REPO / "src" / "imgclf" / "runtime" / "pretrained"
COMMITTED_CARD = REPO / "docs" / "pretrained-cifar10.md"
REGENERATE = f"python -m imgclf.runtime.card {PRETRAINED.relative_to(REPO)}/cifar10.keras -o docs/pretrained-cifar10.md"

SMALL = {
    "class_names": ["cat", "dog|wolf"],
    "input_size": 64,
    "resize": "crop",
    "model": "seed_cnn",
    "params": 1234567,
    "recipe": "seed",
    "temperature": 1.25,
    "calibration": {"temperature": 1.25, "fit_n": 50, "eval_n": 51, "n_bins": 15, "seed": 3,
                    "ece_before": 0.1234, "ece_after": 0.0456, "nll_before": 0.9, "nll_after": 0.8,
                    "accuracy": 0.75},
    "metrics": {"train": {"loss": 0.51234, "accuracy": 0.9, "n": 900},
                "val": {"loss": 0.7, "accuracy": 0.8125, "n": 101}},
    "split": {"source": "/data/pets", "seed": 3, "val_fraction": 0.1, "limit_per_class": 500,
              "n_train": 900, "n_val": 101, "n_test": 0, "train_files_hash": "aa11", "val_files_hash": "bb22"},
    "tta": True,
    "tta_translate": 2,
    "imgclf_version": "9.9.9",
    "keras_version": "3.0.0",
    "backend": "jax",
    "card": {"name": "pets demo", "command": "imgclf train -d /data/pets", "seed": 3, "epochs": 7,
             "train_seconds": 12.345, "licence": "CC0"},
    "notes": "made for a test",
}


def test_committed_card_matches_the_shipped_model():
    meta = read_meta(PRETRAINED / "cifar10.keras")
    assert COMMITTED_CARD.is_file(), f"{COMMITTED_CARD} is missing; write it with: {REGENERATE}"
    assert COMMITTED_CARD.read_text(encoding="utf-8") == model_card(meta), \
        f"{COMMITTED_CARD.relative_to(REPO)} is stale for the shipped model; regenerate it with: {REGENERATE}"


def test_shipped_onnx_and_keras_files_carry_the_same_metadata():
    keras_meta = read_meta(PRETRAINED / "cifar10.keras")
    onnx_meta = read_any_meta(PRETRAINED / "cifar10.onnx")
    assert onnx_meta.pop("exported_from") == "cifar10.keras"
    assert onnx_meta.pop("export_format") == "onnx"
    assert onnx_meta == keras_meta


def test_model_card_of_a_small_dict():
    text = model_card(SMALL)
    lines = text.splitlines()
    assert lines[0] == "# Model card: pets demo"
    expected = [
        "| model | `seed_cnn` (1,234,567 parameters) |",
        "| recipe | `seed`, seed 3, 7 epochs |",
        "| command | `imgclf train -d /data/pets` |",
        "| wall time of the training run | 12.3 s |",
        "| input | 64x64 RGB images, pixel values 0-255 (uint8 or float32, NHWC) |",
        "| resize rule | `crop` |",
        "| output | softmax probabilities over 2 classes, in the order below |",
        "| classes | cat, dog\\|wolf |",  # a pipe in a class name cannot break the table
        "| images | 900 training / 101 validation / 0 test |",
        "| split | validation fraction 0.1, split seed 3, at most 500 images per class |",
        "| training | 900 | 0.5123 | 90.00% |",
        "| validation | 101 | 0.7000 | 81.25% |",
        "| temperature T | 1.250 (`predict` and `serve` apply it) |",
        "| fitted on | 50 validation images (seed 3); measured on the other 51 |",
        "| expected calibration error (15 bins), before -> after T | 0.123 -> 0.046 |",
        "| backend | `jax` |",
    ]
    missing = [row for row in expected if row not in lines]
    assert not missing, missing
    assert any("shifted 2 pixels" in line for line in lines)
    # keys the card has no section for are still shown
    assert "| `card.licence` | `CC0` |" in lines
    assert "| `notes` | `made for a test` |" in lines
    assert text.endswith("|\n") and model_card(dict(SMALL)) == text  # one text per metadata


def test_model_card_of_the_least_metadata():
    text = model_card({"class_names": ["a", "b", "c"], "input_size": 8, "resize": "stretch"})
    assert text.startswith("# Model card: imgclf model\n")
    assert "| classes | a, b, c |" in text.splitlines()
    for absent in ("## Metrics", "## Calibration", "## Versions", "## Other metadata", "## Training data"):
        assert absent not in text


def test_model_card_of_a_skipped_calibration():
    text = model_card({**SMALL, "temperature": 1.0, "calibration": {"skipped": "calibration: need at least 4"}})
    assert "| fit | skipped: calibration: need at least 4 |" in text.splitlines()


def test_card_command_writes_the_file_and_refuses_a_bad_one(tmp_path, capsys):
    out = tmp_path / "card.md"
    assert main([str(PRETRAINED / "cifar10.keras"), "-o", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == COMMITTED_CARD.read_text(encoding="utf-8")
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip")
    assert main([str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "bad.keras" in err[0]


def test_card_module_imports_no_keras():
    code = ("import sys, imgclf.runtime.card as c; c.model_card(c.read_any_meta(__import__('pathlib').Path(sys.argv[1])));"
            " bad = [m for m in ('keras', 'tensorflow') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code, str(PRETRAINED / "cifar10.onnx")], check=True, timeout=HANG)


@pytest.mark.parametrize("value", [None, [], {"a": 1}, "x" * 3])
def test_odd_values_do_not_break_the_card(value):
    meta = {**SMALL, "params": value, "metrics": {"val": {"loss": value, "accuracy": value, "n": value}},
            "card": {"train_seconds": value, "seed": value}}
    assert model_card(meta).startswith("# Model card: ")

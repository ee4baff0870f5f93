"""Folders as users lay them out: a validation/ (val/, valid/) folder beside train/ is the
validation split; the split's kind is recorded in the model and `evaluate` rebuilds it."""

import json
import shutil

import numpy as np
import pytest

import imgclf
from conftest import SHARED, make_folder
from imgclf.cli import main
from imgclf.data.dataset import files_hash, find_val_folder, list_split_folders, load_dataset
from imgclf.errors import DataError, ImgclfError
from imgclf.evaluation.evaluator import evaluate
from imgclf.runtime.modelfile import read_meta
from imgclf.runtime.modelmeta import validate_meta


def _layout(root, val_name="validation", test=False):
    make_folder(root / "train", per_class=6)
    if val_name:
        make_folder(root / val_name, per_class=3, seed=1)
    if test:
        make_folder(root / "test", per_class=2, seed=2)
    return root


@pytest.mark.parametrize("name", ["validation", "val", "valid"])
def test_a_validation_folder_beside_train_is_the_validation_split(tmp_path, name):
    ds = load_dataset(str(_layout(tmp_path / "ds", name, test=True)))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (18, 9, 6)
    assert ds.split["val_source"] == "folder" and ds.split["val_folder"] == name
    assert "seed" not in ds.split and "val_fraction" not in ds.split
    assert all(f.startswith("train/") for f in ds.train.files) and all(f.startswith(f"{name}/") for f in ds.val.files)
    assert ds.split["val_files_hash"] == files_hash(ds.val.files) and ds.split["n_val"] == 9
    assert np.bincount(ds.val.y).tolist() == [3, 3, 3]


def test_without_a_validation_folder_the_split_is_carved(tmp_path):
    ds = load_dataset(str(_layout(tmp_path / "ds", None)), val_fraction=0.5, split_seed=3)
    assert (len(ds.train), len(ds.val)) == (9, 9)
    assert ds.split["val_source"] == "carved" and ds.split["seed"] == 3 and ds.split["val_fraction"] == 0.5
    # asked to carve, it carves even beside a validation folder
    make_folder(tmp_path / "ds" / "val", per_class=3, seed=1)
    carved = load_dataset(str(tmp_path / "ds"), val_fraction=0.5, split_seed=3, val_split="carved")
    assert carved.split["train_files_hash"] == ds.split["train_files_hash"]
    assert load_dataset(str(tmp_path / "ds")).split["val_source"] == "folder"


def test_two_validation_folders_are_refused(tmp_path):
    root = _layout(tmp_path / "ds")
    make_folder(root / "val", per_class=3, seed=1)
    with pytest.raises(DataError, match=r"ds: found validation/ and val/ beside train/; expected at most one"):
        load_dataset(str(root))


def test_validation_classes_must_be_the_training_classes(tmp_path, capsys):
    root = _layout(tmp_path / "ds", None)
    make_folder(root / "valid", per_class=2, classes={"blue": (0, 0, 255), "cyan": (0, 255, 255), "green": (0, 255, 0)})
    with pytest.raises(DataError, match=r"valid: class folders differ from .*train: missing \['red'\]; "
                                        r"extra \['cyan'\] \(expected the same class folders in both\)"):
        load_dataset(str(root))
    assert main(["train", "--data", str(root), "--out", str(tmp_path / "run"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "missing ['red']" in err
    assert not (tmp_path / "run").exists()


def test_folder_split_in_metadata_and_evaluate_recognises_it(tmp_path):
    root = _layout(tmp_path / "ds", "val")
    run = imgclf.train(data=str(root), epochs=1, batch_size=8, run_dir=tmp_path / "run", verbose=0, report=False)
    split = read_meta(run.model_path)["split"]
    assert split["val_source"] == "folder" and split["val_folder"] == "val"
    assert (split["n_train"], split["n_val"]) == (18, 9)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["data_summary"]["val_source"] == "the val/ folder"
    out = evaluate(run.model_path, out_dir=tmp_path / "ev", verbose=False)  # the data named by the model
    assert set(out) == {"train", "val"} and out["train"]["n"] == 18 and out["val"]["n"] == 9
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["own_training_images"] is True
    # another folder: train/ and val/ together are held-out data
    other = _layout(tmp_path / "other", "val")
    (other / "train" / "red" / "000.png").unlink()
    out = evaluate(run.model_path, data=str(other), out_dir=tmp_path / "ev2", verbose=False)
    assert set(out) == {"data"} and out["data"]["n"] == 17 + 9


def test_a_carved_model_is_still_recognised_beside_a_new_validation_folder(trained_colour_model, tmp_path):
    run, data = trained_colour_model
    assert read_meta(run.model_path)["split"]["val_source"] == "carved"
    shutil.copytree(data, tmp_path / "ds" / "train")
    make_folder(tmp_path / "ds" / "validation", per_class=3, seed=1)
    out = evaluate(run.model_path, data=str(tmp_path / "ds"), out_dir=tmp_path / "ev", verbose=False)
    assert set(out) == {"train", "val"}
    assert out["val"]["accuracy"] == pytest.approx(run.metrics["val"]["accuracy"], abs=1e-6)


def test_the_split_record_is_checked():
    meta = {"class_names": ["a", "b"], "input_size": 32, "resize": "stretch"}
    good = {"val_source": "folder", "val_folder": "validation", "train_files_hash": "ab"}
    assert validate_meta({**meta, "split": good}, "m")["split"] == good
    for key, bad, expected in [("val_source", "both", "'carved' or 'folder'"), ("val_folder", "../x", "a folder name"),
                               ("val_folder", 7, "a folder name"), ("val_source", ["carved"], "'carved' or 'folder'")]:
        with pytest.raises(ImgclfError, match=rf"m: split\.{key}: expected {expected}"):
            validate_meta({**meta, "split": {**good, key: bad}}, "m")


def test_clothing_photos_train_and_validation_folders_are_found():
    root = SHARED / "datasets" / "clothing-small"
    if not (root / "train").is_dir():
        pytest.fail(f"real images not found at {root} (set IMGCLF_SHARED to the shared folder)")
    val_root = find_val_folder(root)
    assert val_root == root / "validation"
    (files, labels), (val_files, val_labels), names = list_split_folders(root, val_root)  # listed, not decoded
    assert (len(files), len(val_files)) == (3068, 341)  # the counts in its README
    assert names[0] == "dress" and names[-1] == "t-shirt" and len(names) == 10
    assert np.bincount(labels).tolist() == [241, 123, 455, 184, 468, 290, 198, 202, 112, 795]
    assert np.bincount(val_labels).tolist() == [32, 14, 49, 24, 49, 29, 26, 25, 12, 81]

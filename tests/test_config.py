"""The config schema (issue 14): recipes as data, one declared schema, one duration parser.

The recipe dicts below are copied from src/imgclf/config.py as it was before the recipes became
YAML files (commit 2911e47): each shipped file must hold exactly these values, floats included.
"""

from __future__ import annotations

import shutil

import pytest

from imgclf.config import (FIELD_TYPES, FIELDS, RECIPES, TrainConfig, check_value, make_config, parse_duration,
                           read_config_file, recipe_names, recipe_path, save_config)
from imgclf.errors import ConfigError

_FAST = dict(model="fastnet", optimizer="sgd", momentum=0.85, nesterov=True, learning_rate=0.375,
             weight_decay=8.9e-3, lr_schedule="onecycle", label_smoothing=0.2, augment_flip=True,
             augment_translate=2, tta=True, tta_translate=1)
_LOGITS = {"logit_scale": 1 / 9}
OLD_RECIPES = {
    "seed": {},
    "fast80": {**_FAST, "model_options": {"widths": [32, 64, 128], **_LOGITS}, "epochs": 4, "batch_size": 256,
               "warmup_epochs": 0.8},
    "fast94": {**_FAST, "model_options": {"widths": [64, 256, 256], **_LOGITS}, "epochs": 10, "batch_size": 256,
               "warmup_epochs": 2.3, "warmup_start_fraction": 0.2, "final_lr_fraction": 0.07,
               "bias_lr_scale": 64.0, "lookahead_start": 0.3, "precision": "auto"},
    "budget": {**_FAST, "model_options": {"widths": [64, 128, 256], **_LOGITS}, "epochs": 10, "batch_size": 256,
               "warmup_epochs": 2, "final_lr_fraction": 0.02, "time_budget": 1800.0, "precision": "auto"},
}


def exactly(a, b) -> bool:
    """Equal, floats bit for bit (so 1/9 written with one digit fewer would fail)."""
    if isinstance(a, float) or isinstance(b, float):
        return float(a).hex() == float(b).hex()
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(exactly(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(exactly, a, b))
    return type(a) is type(b) and a == b


# ---------------------------------------------------------------------------------------
# Recipes are YAML files in the --config schema
# ---------------------------------------------------------------------------------------

def test_the_shipped_recipes_are_the_four_files_and_auto():
    assert set(recipe_names()) == set(OLD_RECIPES) | {"auto"} and recipe_names()[0] == "seed"
    assert list(RECIPES) == recipe_names() and "fast80" in RECIPES and "nope" not in RECIPES
    for name in OLD_RECIPES:
        assert recipe_path(name).is_file() and recipe_path(name).suffix == ".yaml"


@pytest.mark.parametrize("name", sorted(OLD_RECIPES))
def test_each_recipe_file_equals_the_old_dict_exactly(name):
    assert exactly(RECIPES[name], OLD_RECIPES[name]), RECIPES[name]
    assert exactly(read_config_file(recipe_path(name)), OLD_RECIPES[name])
    assert RECIPES["fast80"]["model_options"]["logit_scale"] == 1 / 9


@pytest.mark.parametrize("name", sorted(OLD_RECIPES))
def test_make_config_of_a_recipe_is_the_config_it_was(name):
    before = TrainConfig(**OLD_RECIPES[name], recipe=name)  # what make_config(recipe=name) gave
    assert make_config(recipe=name) == before
    assert make_config(recipe=name).to_dict() == before.to_dict()
    assert make_config(recipe=name, epochs=1).epochs == 1  # flags still win


def test_a_copied_recipe_is_a_config_file(tmp_path):
    copy = tmp_path / "mine.yaml"
    shutil.copy(recipe_path("fast94"), copy)
    mine = make_config(copy)
    assert mine == TrainConfig(**OLD_RECIPES["fast94"])  # the same, but for the recipe's name
    copy.write_text(copy.read_text().replace("epochs: 10", "epochs: 3"))
    assert make_config(copy).epochs == 3
    save_config(mine, tmp_path / "resolved.yaml")  # a run's config.yaml is a --config file too
    assert make_config(tmp_path / "resolved.yaml") == mine


def test_unknown_recipe_is_one_line():
    with pytest.raises(ConfigError, match=r"recipe: unknown recipe 'fast100' \(expected one of seed, "):
        make_config(recipe="fast100")


# ---------------------------------------------------------------------------------------
# One declared schema
# ---------------------------------------------------------------------------------------

def test_every_field_is_declared_with_a_kind_and_a_one_line_description():
    assert list(FIELDS) == list(TrainConfig().to_dict())
    for name, spec in FIELDS.items():
        assert FIELD_TYPES[name] == spec.kind in ("int", "float", "bool", "str", "dict"), name
        assert spec.description and "\n" not in spec.description and len(spec.description) < 240, name
    assert TrainConfig().to_dict() == {name: spec.default for name, spec in FIELDS.items()}
    assert FIELDS["limit_per_class"].optional and not FIELDS["epochs"].optional
    assert FIELDS["resize"].choices == ("stretch", "crop", "pad")


@pytest.mark.parametrize("name,value,coerced", [
    ("epochs", "12", 12), ("epochs", 2.0, 2), ("learning_rate", "1e-3", 0.001), ("learning_rate", 1, 1.0),
    ("augment_flip", "yes", True), ("augment_flip", "Off", False), ("tta", True, True),
    ("data", "some/folder", "some/folder"), ("limit_per_class", None, None),
    ("model_options", {"widths": [8, 8, 8]}, {"widths": [8, 8, 8]}),
])
def test_values_are_coerced_to_their_kind(name, value, coerced):
    assert exactly(check_value(name, value, "src"), coerced)


@pytest.mark.parametrize("name,value,said", [
    ("epochs", 2.5, "expects int (a whole number of at most 64 bits), got 2.5"),
    ("epochs", True, "expects int"), ("epochs", "9" * 31, "expects int"), ("epochs", 2**64, "expects int"),
    ("learning_rate", float("inf"), "expects float (a finite number)"), ("learning_rate", float("nan"), "expects float"),
    ("learning_rate", False, "expects float"),
    ("augment_flip", 1, "expects bool (true or false), got 1"), ("augment_flip", "maybe", "expects bool"),
    ("resize", b"crop", "expects str"), ("data", "x" * 5000, "expects str or nothing (at most 4096 characters)"),
    ("model_options", {1: 2}, "expects dict (a mapping with string keys)"), ("model_options", [1], "expects dict"),
    ("epochs", None, "field 'epochs' must not be empty"), ("epochz", 3, "unknown config field 'epochz'"),
])
def test_values_of_the_wrong_kind_are_one_line(name, value, said):
    with pytest.raises(ConfigError) as e:
        check_value(name, value, "src.yaml")
    message = str(e.value)
    assert message.startswith("src.yaml: ") and said in message and "\n" not in message, message
    assert len(message) < 400 or name == "epochz"


@pytest.mark.parametrize("fields,said", [
    ({"epochs": 0}, "field 'epochs' expects an integer >= 1, got 0"),
    ({"val_fraction": 1}, "field 'val_fraction' expects a number between 0 and 1, got 1.0"),
    ({"input_size": 4}, "field 'input_size' expects an integer from 8 to 4096, got 4"),
    ({"seed": -1}, "field 'seed' expects an integer from 0 to 4294967295"),
    ({"limit_per_class": 0}, "field 'limit_per_class' expects an integer >= 1 or nothing, got 0"),
    ({"momentum": 1.5}, "field 'momentum' expects a number in [0, 1], got 1.5"),
    ({"lookahead_start": 1}, "field 'lookahead_start' expects a number in [0, 1)"),
    ({"learning_rate": 0}, "field 'learning_rate' expects a positive number, got 0.0"),
    ({"time_budget": -5}, "field 'time_budget' expects a positive number or nothing"),
    ({"weight_decay": -1}, "field 'weight_decay' expects a number >= 0"),
    ({"resize": "zoom"}, "field 'resize' expects one of stretch, crop, pad, got 'zoom'"),
    ({"precision": "fp8"}, "field 'precision' expects one of float32, mixed_bfloat16, mixed_float16, auto"),
    ({"class_weight": "even"}, "field 'class_weight' expects balanced or nothing, got 'even'"),
    ({"model": "resnet"}, "field 'model' expects one of fastnet, mobilenetv3large, mobilenetv3small, seed_cnn, got 'resnet'"),
    ({"recipe": "seed", "optimizer": "adamw", "bias_lr_scale": 4}, "field 'bias_lr_scale' expects 1 unless"),
    ({"model_options": {"depth": 3}}, "field 'model_options': "),
])
def test_out_of_bounds_values_name_the_field_and_what_it_expects(fields, said):
    with pytest.raises(ConfigError) as e:
        make_config(**fields)
    assert str(e.value).startswith("config: ") and said in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_constructing_a_config_validates_it():
    assert TrainConfig(epochs="3").epochs == 3
    with pytest.raises(ConfigError, match="'epochs' expects an integer >= 1"):
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError, match="unknown config field 'epochz'"):
        TrainConfig(epochz=3)


# ---------------------------------------------------------------------------------------
# One duration parser
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("value,seconds", [(90, 90.0), (90.5, 90.5), ("90", 90.0), ("90s", 90.0), ("30m", 1800.0),
                                           ("1.5h", 5400.0), (" 2M ", 120.0), (None, None)])
def test_durations(value, seconds):
    assert parse_duration(value, "budget.time") == seconds


@pytest.mark.parametrize("value", ["soon", "30x", "", "m", True, [30], "inf", float("nan"), "9" * 100])
def test_bad_durations_are_one_line(value):
    with pytest.raises(ConfigError, match=r"^budget\.time: expected a duration like 90, 90s, 30m or 1\.5h, got "):
        parse_duration(value, "budget.time")


@pytest.mark.parametrize("value", [0, "-5m", -1.0])
def test_durations_are_positive(value):
    with pytest.raises(ConfigError, match=r"^--time-budget: expected a positive duration, got "):
        parse_duration(value, "--time-budget")

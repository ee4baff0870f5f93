"""Resolving a config: defaults < recipe < config file (YAML or TOML) < command-line flags.

Every layer goes through the same schema (imgclf.config.schema); the resolved config is written
to every run directory as config.yaml, itself a valid `--config` file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, quote, shorten
from .files import read_mapping_file
from .recipes import RECIPES, recipe_path
from .schema import FIELDS, TrainConfig, check_value


def read_config_file(path: str | Path) -> dict:
    """A YAML or TOML config file as a plain dict of known field names (values not yet coerced).

    Bounded: a regular file of at most MAX_CONFIG_BYTES, YAML without aliases (imgclf.config.files)."""
    data = read_mapping_file(path)
    for name in data:
        if not isinstance(name, str) or name not in FIELDS:
            check_value(name, None, str(path))  # raises: unknown config field
    return data


def check_model_options(cfg: TrainConfig) -> None:
    """The names of the model's options, checked before any data is loaded (or cached)."""
    from ..models.registry import check_options  # imports the model's family: Keras

    try:
        check_options(cfg.model, (cfg.input_size, cfg.input_size, 3), cfg.model_options)
    except TypeError as e:
        raise ConfigError(f"config: field 'model_options': {shorten(e, 120)} (model {cfg.model})") from None


def make_config(config_file: str | Path | None = None, recipe: str | None = None, **overrides) -> TrainConfig:
    """Resolve defaults < recipe < config file < overrides into a checked TrainConfig."""
    file_values = read_config_file(config_file) if config_file else {}
    recipe = overrides.get("recipe") or file_values.get("recipe") or recipe
    values: dict[str, Any] = {}
    if recipe is not None:
        if not isinstance(recipe, str) or recipe not in RECIPES:
            raise ConfigError(f"recipe: unknown recipe {quote(recipe)} (expected one of {', '.join(RECIPES)})")
        path = recipe_path(recipe)  # a config file like any other
        values.update({name: check_value(name, value, str(path)) for name, value in read_config_file(path).items()})
        values["recipe"] = recipe
    for source, layer in ((str(config_file), file_values), ("argument", overrides)):
        for name, value in layer.items():
            if layer is overrides and value is None:
                continue  # an unset command-line flag does not override anything
            values[name] = check_value(name, value, source)
    cfg = TrainConfig(**values)
    check_model_options(cfg)
    return cfg


def save_config(cfg: TrainConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

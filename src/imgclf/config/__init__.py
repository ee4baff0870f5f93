"""Every training hyperparameter in one place: the declared schema, recipes and config files.

    schema.py   TrainConfig: each field's kind, default, bounds and description (pydantic)
    kinds.py    the value kinds (int, float, bool, str, mapping) and durations ("30m")
    files.py    bounded YAML/TOML reading (no aliases, size and nesting limits)
    recipes.py  the shipped recipes, imgclf/recipes/<name>.yaml
    resolve.py  make_config: defaults < recipe < config file < command-line flags

Precedence: defaults < recipe < config file (YAML or TOML) < command-line flags.
The resolved config is written to every run directory as config.yaml.
"""

from .files import (MAX_CONFIG_BYTES, MAX_NESTING, SafeNoAliasLoader, load_yaml, read_mapping_file,
                    read_text_file, read_yaml_file)
from .kinds import MAX_INT, MAX_STR, parse_duration
from .recipes import RECIPES, recipe_names, recipe_path
from .resolve import check_model_options, make_config, read_config_file, save_config
from .schema import FIELD_TYPES, FIELDS, MAX_INPUT_SIZE, PRECISIONS, FieldSpec, TrainConfig, check_value, expected

__all__ = ["MAX_CONFIG_BYTES", "MAX_NESTING", "SafeNoAliasLoader", "load_yaml", "read_mapping_file",
           "read_text_file", "read_yaml_file", "MAX_INT", "MAX_STR", "parse_duration", "RECIPES", "recipe_names",
           "recipe_path", "check_model_options", "make_config", "read_config_file", "save_config", "FIELD_TYPES",
           "FIELDS", "MAX_INPUT_SIZE", "PRECISIONS", "FieldSpec", "TrainConfig", "check_value", "expected"]

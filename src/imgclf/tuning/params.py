"""One searched parameter of a space file: its name and its values, checked against the config."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass

from ..config import FIELD_TYPES, check_value
from ..errors import ConfigError, quote

# Fields that would change the validation split (or are not hyperparameters): never searched.
NOT_SEARCHABLE = {
    "data": "is the dataset, not a hyperparameter (use --data)",
    "test_data": "is the dataset, not a hyperparameter",
    "val_fraction": "changes the validation split: every trial must be judged on the same images",
    "split_seed": "changes the validation split: every trial must be judged on the same images",
    "limit_per_class": "changes the validation split: every trial must be judged on the same images",
    "report": "is not a hyperparameter", "tensorboard": "is not a hyperparameter",
    "recipe": "is not a hyperparameter (put it in base:)",
    "model_options": "is a mapping: search its keys as model_options.KEY",
}


@dataclass
class Param:
    name: str
    kind: str  # choice | float | int
    choices: list | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    def to_dict(self) -> dict:
        if self.kind == "choice":
            return {"choices": list(self.choices)}
        d = {"type": self.kind, "low": self.low, "high": self.high, "log": self.log}
        if self.step is not None:
            d["step"] = self.step
        return d

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.name} in {self.choices}"
        return f"{self.name} in [{self.low}, {self.high}]" + (" (log)" if self.log else "")


def as_number(value):
    """YAML 1.1 reads `1e-3` as a string; accept it as the number it means."""
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            try:
                return float(value)
            except ValueError:
                return value
    return value


def _field_kind(name: str) -> str | None:
    """'int', 'float', 'bool', 'str' for TrainConfig fields; None for model options (free)."""
    if name.startswith("model_options."):
        return None
    return FIELD_TYPES[name]


def _check_name(name: str, where: str) -> None:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: parameter names must be strings, got {quote(name)}")
    if name.startswith("model_options."):
        if not name.split(".", 1)[1]:
            raise ConfigError(f"{where}.{name}: expected model_options.KEY")
        return
    if name in NOT_SEARCHABLE:
        raise ConfigError(f"{where}.{name}: cannot be searched: it {NOT_SEARCHABLE[name]}")
    if name not in FIELD_TYPES:
        close = difflib.get_close_matches(name, list(FIELD_TYPES), n=1)
        hint = f" (did you mean {close[0]}?)" if close else " (expected a config field or model_options.KEY)"
        raise ConfigError(f"{where}.{name}: unknown parameter{hint}")


def _check_choice(name: str, value, where: str):
    kind = _field_kind(name)
    value = as_number(value) if kind in (None, "int", "float") else value
    if kind is None:
        if value is not None and not isinstance(value, (bool, int, float, str)):
            raise ConfigError(f"{where}.{name}: values must be numbers, strings or booleans, got {quote(value)}")
        return value
    try:
        return check_value(name, value, where)
    except ConfigError:
        raise ConfigError(f"{where}.{name}: value {quote(value)} is not a valid {FIELD_TYPES[name]}") from None


def parse_param(name: str, spec, where: str) -> Param:
    _check_name(name, where)
    if isinstance(spec, dict) and ("values" in spec or "choices" in spec):
        unknown = set(spec) - {"values", "choices"}
        if unknown:
            raise ConfigError(f"{where}.{name}: unknown key(s) {sorted(unknown)} (expected choices)")
        spec = spec.get("choices", spec.get("values"))
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"{where}.{name}: empty list of values (the grid would be empty)")
        choices = [_check_choice(name, v, where) for v in spec]
        if len({json.dumps(c) for c in choices}) != len(choices):
            raise ConfigError(f"{where}.{name}: repeated values in {quote(spec)}")
        return Param(name, "choice", choices=choices)
    if isinstance(spec, dict):
        unknown = set(spec) - {"low", "high", "log", "step", "type"}
        if unknown or "low" not in spec or "high" not in spec:
            raise ConfigError(f"{where}.{name}: expected a list of values, {{choices: [...]}} or "
                              f"{{low: X, high: Y, log: true|false, step: S}}, got {quote(spec)}")
        kind = _field_kind(name)
        if kind in ("bool", "str", "dict"):
            raise ConfigError(f"{where}.{name}: a {kind} field cannot be a range; give a list of values")
        low, high, step = as_number(spec["low"]), as_number(spec["high"]), as_number(spec.get("step"))
        for key, v in (("low", low), ("high", high), ("step", step)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise ConfigError(f"{where}.{name}.{key}: expected a number, got {quote(v)}")
        declared = spec.get("type")
        if declared not in (None, "int", "float"):
            raise ConfigError(f"{where}.{name}.type: expected int or float, got {quote(declared)}")
        kind = kind or declared or ("int" if isinstance(low, int) and isinstance(high, int) else "float")
        if kind == "int" and not all(float(v).is_integer() for v in (low, high) + ((step,) if step else ())):
            raise ConfigError(f"{where}.{name}: {name} is an int field; low/high/step must be integers")
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise ConfigError(f"{where}.{name}.log: expected true or false, got {quote(log)}")
        if not low < high:
            raise ConfigError(f"{where}.{name}: expected low < high, got low={low}, high={high}")
        if log and low <= 0:
            raise ConfigError(f"{where}.{name}: a log range needs low > 0, got {low}")
        if log and step is not None:
            raise ConfigError(f"{where}.{name}: a log range cannot have a step")
        if step is not None and step <= 0:
            raise ConfigError(f"{where}.{name}.step: expected a positive number, got {step}")
        cast = int if kind == "int" else float
        for v in (low, high):
            _check_choice(name, cast(v), where)
        return Param(name, kind, low=cast(low), high=cast(high), log=log,
                     step=None if step is None else cast(step))
    raise ConfigError(f"{where}.{name}: expected a list of values (grid) or a range {{low, high, log}}, "
                      f"got {quote(spec)}")


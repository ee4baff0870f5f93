"""The kinds of value a config field can hold, as pydantic types, and the duration parser.

Each kind coerces what a YAML/TOML file or a command line gives (a string "12", a float 2.0)
into one Python type, and refuses anything else with a ValueError that pydantic reports:
  int    a whole number of at most 64 bits (2.0 yes, 2.5 / True / 31-digit strings no)
  float  a finite number (True and 61-character strings no)
  bool   true/false, or the strings 1/0, yes/no, on/off (any case); not the numbers 1/0
  str    a string or path of at most MAX_STR characters
  dict   a mapping with string keys
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, Strict, TypeAdapter, ValidationError

from ..errors import ConfigError, quote

MAX_STR = 4096  # longest string field (a path) accepted
MAX_INT = 2**63 - 1  # integers must fit 64 bits (NumPy, TensorFlow)
TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")


KIND_TEXT = {"int": "a whole number of at most 64 bits", "float": "a finite number", "bool": "true or false",
             "str": f"at most {MAX_STR} characters", "dict": "a mapping with string keys"}


def _refusing_others(kind: str):
    """A coercion to `kind` whose every failure is one ValueError saying what `kind` is (pydantic reports it)."""
    def wrap(convert):
        def checked(value):
            try:
                return convert(value)
            except (TypeError, ValueError, OverflowError):
                raise ValueError(f"{kind} ({KIND_TEXT[kind]})") from None
        return checked
    return wrap


@_refusing_others("int")
def to_int(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError
    if isinstance(value, str) and len(value) > 30:
        raise ValueError
    number = int(value)
    if abs(number) > MAX_INT:
        raise ValueError
    return number


@_refusing_others("float")
def to_float(value: Any) -> float:
    if isinstance(value, bool) or (isinstance(value, str) and len(value) > 60):
        raise ValueError
    number = float(value)
    if not math.isfinite(number):
        raise ValueError
    return number


@_refusing_others("bool")
def to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in TRUE_WORDS + FALSE_WORDS:
        return value.lower() in TRUE_WORDS
    raise ValueError


@_refusing_others("str")
def to_str(value: Any) -> str:
    if not isinstance(value, (str, Path)) or len(str(value)) > MAX_STR:
        raise ValueError
    return str(value)


@_refusing_others("dict")
def to_dict(value: Any) -> dict:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValueError
    return dict(value)


# The kinds as pydantic types: the coercion above, then a strict check of the result.
Int = Annotated[int, BeforeValidator(to_int), Strict()]
Float = Annotated[float, BeforeValidator(to_float), Strict()]
Flag = Annotated[bool, BeforeValidator(to_bool), Strict()]
Text = Annotated[str, BeforeValidator(to_str), Strict()]
Options = Annotated[dict[str, Any], BeforeValidator(to_dict), Strict()]

KINDS = {"int": Int, "float": Float, "bool": Flag, "str": Text, "dict": Options}


@functools.cache
def _adapter(kind: str) -> TypeAdapter:
    return TypeAdapter(KINDS[kind])  # built on first use: `imgclf --help` needs none


def coerce(kind: str, value: Any) -> Any:
    """`value` as kind `kind` (a key of KINDS); ValueError if it is not one."""
    try:
        return _adapter(kind).validate_python(value)
    except ValidationError:
        raise ValueError(f"not {kind}") from None


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(value: Any, where: str) -> float | None:
    """Seconds from 90, 90.5, '90', '90s', '30m' or '1.5h' (None stays None); a positive finite
    number, else ConfigError naming `where`."""
    if value is None:
        return None
    expected = f"{where}: expected a duration like 90, 90s, 30m or 1.5h, got {quote(value)}"
    if isinstance(value, bool):
        raise ConfigError(expected)
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and len(value) <= 60:
        text = value.strip().lower()
        scale = DURATION_UNITS.get(text[-1:])
        try:
            seconds = float(text[:-1]) * scale if scale else float(text)
        except ValueError:
            raise ConfigError(expected) from None
    else:
        raise ConfigError(expected)
    if not math.isfinite(seconds):
        raise ConfigError(expected)
    if seconds <= 0:
        raise ConfigError(f"{where}: expected a positive duration, got {quote(value)}")
    return seconds

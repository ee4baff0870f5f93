"""Reading YAML and TOML files (configs, recipes, search spaces) with every bound imgclf needs.

A regular file of at most MAX_CONFIG_BYTES (a FIFO or device is refused unopened), UTF-8 text,
YAML without aliases and nested at most MAX_NESTING deep. No code is ever executed.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, shorten

MAX_CONFIG_BYTES = 1_000_000  # a config or search-space file larger than this is refused unread
MAX_NESTING = 50  # deepest nesting of lists/mappings accepted in a YAML file


def first_line(e: Exception, limit: int = 120) -> str:
    """The first line of an exception's message (or its type), cut to `limit` characters."""
    return shorten(str(e).splitlines()[0] if str(e) else type(e).__name__, limit)


class SafeNoAliasLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader (plain data, no code) that also refuses aliases and deep nesting.

    An alias (`*name`) repeats an anchored node (`&name`); aliases of aliases make a few hundred
    bytes stand for gigabytes ("billion laughs"), which any later repr, copy or dump expands.
    imgclf's config and search-space files never need them, so every alias is refused: simpler
    and stricter than counting expansions, and the file size alone then bounds the document."""

    depth = 0  # nesting level of the node being composed

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in imgclf files",
                                              self.peek_event().start_mark)
        self.depth += 1
        try:
            if self.depth > MAX_NESTING:
                raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_NESTING} levels deep",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _yaml_problem(e: yaml.YAMLError) -> str:
    problem = getattr(e, "problem", None) or getattr(e, "context", None)
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    if problem is None:
        problem = str(e).splitlines()[0] if str(e) else type(e).__name__
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return shorten(problem, 120) + where


def load_yaml(text: str, source: str) -> Any:
    """Parse YAML text with SafeNoAliasLoader; ConfigError naming `source` on anything invalid."""
    try:
        return yaml.load(text, Loader=SafeNoAliasLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML ({_yaml_problem(e)})") from None
    except (ValueError, RecursionError) as e:  # e.g. an integer of more than 4300 digits
        raise ConfigError(f"{source}: not valid YAML ({first_line(e)})") from None


def read_text_file(path: str | Path, what: str = "a YAML or TOML config file",
                   max_bytes: int = MAX_CONFIG_BYTES) -> str:
    """The UTF-8 text of a regular file of at most `max_bytes` (a FIFO or device is refused unopened)."""
    from ..data.images import read_regular_file  # here, not at load: it brings NumPy and Pillow

    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise ConfigError(f"{path}: file not found (expected {what})")
    raw = read_regular_file(path, max_bytes, what)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text at byte {e.start} (expected {what})") from None


def read_yaml_file(path: str | Path, what: str = "a YAML file") -> Any:
    """A YAML file read with every bound above: size, regular file, no aliases, nesting depth."""
    return load_yaml(read_text_file(path, what), str(path))


def read_mapping_file(path: str | Path, what: str = "a YAML or TOML config file") -> dict:
    """A YAML or TOML file (by its suffix) that holds one mapping, as a dict ({} for an empty file)."""
    path = Path(path)
    text = read_text_file(path, what)
    if path.suffix.lower() == ".toml":
        try:
            data = tomllib.loads(text)
        except (tomllib.TOMLDecodeError, ValueError, RecursionError) as e:
            raise ConfigError(f"{path}: not valid TOML ({first_line(e)})") from None
    else:
        data = load_yaml(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config fields, got {type(data).__name__}")
    return data

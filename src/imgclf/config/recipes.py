"""The shipped recipes: imgclf/recipes/<name>.yaml, config files like any other.

Each file holds config fields in the `--config` schema (imgclf.config.schema); a recipe's values
override the defaults (the seed recipe: its file is empty). Copy one, edit it, pass it with
`--config`; `--recipe NAME` reads the shipped one. Measured results: bench/README.md.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

from .files import read_mapping_file

RECIPE_DIR = Path(__file__).resolve().parents[1] / "recipes"
DEFAULT_RECIPE = "seed"  # the defaults themselves


def recipe_names() -> list[str]:
    """The shipped recipes: the seed recipe (the defaults) first, then by name."""
    names = sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))
    return sorted(names, key=lambda name: name != DEFAULT_RECIPE)


def recipe_path(name: str) -> Path:
    return RECIPE_DIR / f"{name}.yaml"


class Recipes(Mapping):
    """{name: the recipe file's fields as written}; each lookup reads the file (a fresh dict)."""

    def __getitem__(self, name: str) -> dict:
        if name not in self:
            raise KeyError(name)
        return read_mapping_file(recipe_path(name), "a recipe file")

    def __contains__(self, name) -> bool:
        return isinstance(name, str) and name in recipe_names()

    def __iter__(self) -> Iterator[str]:
        return iter(recipe_names())

    def __len__(self) -> int:
        return len(recipe_names())


RECIPES = Recipes()

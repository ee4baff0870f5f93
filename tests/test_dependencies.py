"""Every third-party module that the package imports is declared in pyproject.toml.

Imports inside `try: ... except ImportError:` are optional (the code has a fallback) and may stay
undeclared. The module -> distribution map comes from the installed packages' own metadata.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "imgclf"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        reqs.extend(extra)
    return {_norm(re.match(r"[A-Za-z0-9_.\-]+", r).group(0)) for r in reqs}


def _optional(node: ast.Try) -> bool:
    def names(t):
        if t is None:
            return []
        return [e.id for e in (t.elts if isinstance(t, ast.Tuple) else [t]) if isinstance(e, ast.Name)]

    return any({"ImportError", "ModuleNotFoundError"} & set(names(h.type)) for h in node.handlers)


def required_imports(source: str) -> set[str]:
    """Top-level module names imported outside optional (try/except ImportError) blocks."""
    found: set[str] = set()

    def visit(node, optional: bool):
        if isinstance(node, ast.Import) and not optional:
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not optional and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        if isinstance(node, ast.Try) and _optional(node):
            for child in node.body:
                visit(child, True)
            for child in node.handlers + node.orelse + node.finalbody:
                visit(child, optional)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, optional)

    visit(ast.parse(source), False)
    return {m for m in found if m not in sys.stdlib_module_names and m != "imgclf" and m != "__future__"}


def undeclared(modules: set[str], dists: set[str]) -> dict[str, list[str]]:
    owners = md.packages_distributions()
    return {m: owners.get(m, [m]) for m in sorted(modules) if not {_norm(d) for d in owners.get(m, [m])} & dists}


def test_every_imported_module_is_declared():
    modules = set()
    for path in SRC.rglob("*.py"):
        modules |= required_imports(path.read_text())
    assert {"numpy", "keras", "optuna", "scipy", "sqlalchemy", "starlette"} <= modules  # the scan sees them
    missing = undeclared(modules, declared())
    assert not missing, f"imported under src/ but not declared in pyproject.toml: {missing}"


def test_checker_reports_an_undeclared_import_and_skips_optional_ones():
    source = ("import numpy\nimport scipy.optimize\nfrom sqlalchemy import exc\n"
              "try:\n    import ai_edge_litert\nexcept ImportError:\n    pass\n"
              "def f():\n    import json, yaml\n")
    mods = required_imports(source)
    assert mods == {"numpy", "scipy", "sqlalchemy", "yaml"}
    missing = undeclared(mods, {"numpy", "pyyaml"})
    assert set(missing) == {"scipy", "sqlalchemy"}


def test_keras_floor_is_the_version_with_the_apis_we_use():
    """keras.ops.jvp (Grad-CAM) and the litert export format first ship in Keras 3.13; the shipped
    pretrained model is read by the Keras it was saved with or newer (CI runs the Keras tests at
    the floor, so a floor below the shipped file's version fails there)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    keras_req = next(r for r in project["optional-dependencies"]["train"] if _norm(r).startswith("keras"))
    floor = tuple(int(x) for x in re.search(r">=\s*([0-9.]+)", keras_req).group(1).split(".")[:2])
    assert floor >= (3, 13), keras_req
    import json
    import zipfile

    with zipfile.ZipFile(SRC / "runtime" / "pretrained" / "cifar10.keras") as z:
        saved = json.loads(z.read("metadata.json"))["keras_version"]
    assert floor >= tuple(int(x) for x in saved.split(".")[:2]), (keras_req, saved)
    import keras

    assert hasattr(keras.ops, "jvp")

"""The package's layout rules (issue 14), checked on the source of every module under src/imgclf:

  - runtime/ imports no TensorFlow or Keras at module load, and the .onnx predict path none at all
    (the one check here that runs code, in a fresh interpreter);
  - no import cycles between imgclf modules, counting imports inside functions too, and none
    between the pipeline's stages either (data/, models/, training/, ..., each top-level module
    its own node): the report, for one, is drawn on top of training, evaluation and tuning;
  - no module imports another module's private (_underscore) name;
  - no file over MAX_LINES lines, unless LONG_FILES names it with a reason.

The import graph is read from the syntax tree: an edge for every `import imgclf.x`,
`from imgclf.x import y` and `from .x import y`, at module level or inside a function. `from p import
m`, where m is a submodule of p, is an edge to p.m. Importing p.m runs p/__init__.py too; that
implicit edge is not counted, so a package __init__ may re-export its submodules' names. Imports
under `if TYPE_CHECKING:` never run and are not counted.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HANG

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "imgclf"
MAX_LINES = 500
# file (relative to src/imgclf) -> why it may be longer than MAX_LINES
LONG_FILES: dict[str, str] = {}
HEAVY = ("tensorflow", "keras")


def module_name(path: Path) -> str:
    parts = ("imgclf",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class Imports(ast.NodeVisitor):
    """The imgclf modules one file imports (with line numbers), and its private-name uses."""

    def __init__(self, name: str):
        self.name = name
        self.package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
        self.edges: list[tuple[str, int]] = []  # (imported module, line)
        self.private: list[str] = []  # "line N: what"
        self.bound: dict[str, str] = {}  # local name -> the imgclf module it is bound to

    def visit_If(self, node: ast.If) -> None:
        if is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.split(".")[0] == "imgclf":
                self.edges.append((alias.name, node.lineno))
                if alias.asname:
                    self.bound[alias.asname] = alias.name
                else:
                    self.bound["imgclf"] = "imgclf"

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            base = base[:len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        for alias in node.names:
            if is_private(alias.name):
                self.private.append(f"line {node.lineno}: from {source} import {alias.name}")
        if source.split(".")[0] != "imgclf":
            return
        for alias in node.names:
            sub = f"{source}.{alias.name}"
            target = sub if sub in MODULES else source
            self.edges.append((target, node.lineno))
            if target == sub:
                self.bound[alias.asname or alias.name] = sub

    def visit_Attribute(self, node: ast.Attribute) -> None:
        # module._name, where module is an imgclf module this file imported (imgclf.a.b._c included)
        chain, value = [node.attr], node.value
        while isinstance(value, ast.Attribute):
            chain.append(value.attr)
            value = value.value
        if isinstance(value, ast.Name) and value.id in self.bound and is_private(node.attr):
            owner = ".".join([self.bound[value.id], *reversed(chain[1:])])
            if owner in MODULES and owner != self.name:
                self.private.append(f"line {node.lineno}: {owner}.{node.attr}")
        self.generic_visit(node)


def scan(name: str) -> Imports:
    visitor = Imports(name)
    path = MODULES[name]
    visitor.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return visitor


SCANS = {name: scan(name) for name in MODULES}


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported imgclf module: first line that imports it}."""
    graph: dict[str, dict[str, int]] = {}
    for name, s in SCANS.items():
        out = graph.setdefault(name, {})
        for target, line in s.edges:
            if target in MODULES and target != name:
                out.setdefault(target, line)
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle from every strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph) + 100))
    try:
        for v in sorted(graph):
            if v not in index:
                connect(v)
    finally:
        sys.setrecursionlimit(limit)

    cycles = []
    for component in components:
        members, start = set(component), component[0]
        # breadth-first from start, inside the component, back to start: a shortest cycle through it
        parent: dict[str, str] = {}
        frontier, end = [start], None
        while frontier and end is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v]):
                    if w == start:
                        end = v
                        break
                    if w in members and w not in parent:
                        parent[w] = v
                        nxt.append(w)
                if end is not None:
                    break
            frontier = nxt
        path = [end]
        while path[-1] != start:
            path.append(parent[path[-1]])
        cycles.append(list(reversed(path)) + [start])
    return cycles


def describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    steps = [cycle[0]]
    for a, b in zip(cycle, cycle[1:]):
        steps.append(f"-> {b} ({MODULES[a].relative_to(PACKAGE)}:{graph[a][b]})")
    return " ".join(steps)


# --- the checks ------------------------------------------------------------------------------

def test_the_checks_see_the_package():
    assert "imgclf.runtime.modelmeta" in MODULES and "imgclf.training.trainer" in MODULES
    graph = import_graph()
    assert "imgclf.runtime.classifier" in graph["imgclf.runtime.load"]
    assert "imgclf.runtime.onnx_runtime" in graph["imgclf.runtime.load"]  # an import inside a function
    assert len(MODULES) > 30 and sum(map(len, graph.values())) > 50


def test_the_cycle_finder_reports_a_cycle():
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3, "d": 4}, "d": {}, "e": {"e": 5}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b": 1}, "b": {}}) == []


def test_the_private_name_check_sees_imports_and_attributes(tmp_path):
    code = ("from imgclf.runtime.modelmeta import _bad, validate_meta\n"
            "from imgclf.runtime import modelmeta\n"
            "import imgclf.runtime.modelfile as mf\n"
            "import imgclf.runtime.zoo\n"
            "from optuna import _private\n"
            "modelmeta._is_int(1); mf._check_sizes; imgclf.runtime.zoo._x; mf.read_meta; modelmeta.__name__\n"
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n"
            "    import imgclf.tuning\n")
    s = Imports("imgclf.cli")
    s.visit(ast.parse(code))
    assert [p.split(": ", 1)[1] for p in s.private] == [
        "from imgclf.runtime.modelmeta import _bad", "from optuna import _private", "imgclf.runtime.modelmeta._is_int",
        "imgclf.runtime.modelfile._check_sizes", "imgclf.runtime.zoo._x"]
    assert "imgclf.tuning" not in {t for t, _ in s.edges}


def test_no_import_cycles():
    graph = import_graph()
    cycles = find_cycles(graph)
    assert not cycles, "import cycles between imgclf modules:\n" + "\n".join(describe(c, graph) for c in cycles)


def stage(module: str) -> str:
    """The stage a module belongs to: imgclf.training.trainer -> imgclf.training (a top-level module is its own)."""
    return ".".join(module.split(".")[:2])


def stage_graph(graph: dict[str, dict[str, int]]) -> tuple[dict[str, dict[str, int]], dict[tuple[str, str], str]]:
    """The import graph between stages, and for each edge the first module-level import behind it."""
    out: dict[str, dict[str, int]] = {}
    where: dict[tuple[str, str], str] = {}
    for a, targets in sorted(graph.items()):
        for b, line in targets.items():
            sa, sb = stage(a), stage(b)
            if sa != sb and sb != "imgclf":  # imgclf/__init__.py: __version__ and the lazy API
                out.setdefault(sa, {}).setdefault(sb, line)
                where.setdefault((sa, sb), f"{MODULES[a].relative_to(PACKAGE)}:{line}")
    return out, where


def test_the_stage_graph_sees_an_edge_between_stages():
    graph = {"imgclf.data.dataset": {"imgclf.runtime.modelmeta": 3}, "imgclf.runtime.modelmeta": {"imgclf.data.images": 9},
             "imgclf.data.images": {}}
    stages, where = stage_graph(graph)
    assert stages == {"imgclf.data": {"imgclf.runtime": 3}, "imgclf.runtime": {"imgclf.data": 9}}
    assert find_cycles(stages) == [["imgclf.data", "imgclf.runtime", "imgclf.data"]]


def test_no_import_cycles_between_stages():
    stages, where = stage_graph(import_graph())
    assert {"imgclf.pipeline", "imgclf.report", "imgclf.training"} <= set(stages)
    cycles = find_cycles(stages)
    assert not cycles, "import cycles between stages:\n" + "\n".join(
        " -> ".join(c) + "  (" + ", ".join(where[a, b] for a, b in zip(c, c[1:])) + ")" for c in cycles)


def test_no_module_imports_another_modules_private_names():
    found = [f"{MODULES[name].relative_to(PACKAGE)} {p}" for name, s in SCANS.items() for p in s.private]
    assert not found, "private names used outside their module:\n" + "\n".join(found)


def text_files():
    for path in sorted(PACKAGE.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            try:
                yield path, path.read_text(encoding="utf-8")
            except UnicodeDecodeError:  # a model file or an image
                continue


def test_no_file_over_the_line_limit_without_a_reason():
    long = {str(p.relative_to(PACKAGE)): text.count("\n") for p, text in text_files()}
    over = {p: n for p, n in long.items() if n > MAX_LINES and p not in LONG_FILES}
    assert not over, f"files over {MAX_LINES} lines (split them, or name them in LONG_FILES with a reason): {over}"
    stale = [p for p in LONG_FILES if long.get(p, 0) <= MAX_LINES]
    assert not stale, f"LONG_FILES names files that are gone or no longer long: {stale}"


SLIM = """
import importlib, json, pkgutil, sys

def heavy():
    return sorted(m for m in sys.modules if m.split(".")[0] in %r and sys.modules[m] is not None)

import imgclf.runtime
names = sorted(m.name for m in pkgutil.walk_packages(imgclf.runtime.__path__, "imgclf.runtime."))
for name in names:
    importlib.import_module(name)
after_import = heavy()
from imgclf.runtime.predict import predict
rows = predict(sys.argv[1], [sys.argv[2]], k=3)
from imgclf.cli import main
code = main(["predict", sys.argv[1], sys.argv[2], "--json"])
json.dump({"modules": names, "after_import": after_import, "after_predict": heavy(), "rows": rows, "cli": code},
          open(sys.argv[3], "w"))
""" % (HEAVY,)


def test_runtime_and_the_onnx_path_load_no_tensorflow_or_keras(tmp_path):
    pytest.importorskip("onnxruntime")
    from PIL import Image

    from imgclf.runtime.zoo import PRETRAINED_DIR

    model = PRETRAINED_DIR / "cifar10.onnx"
    assert model.is_file(), model
    img = tmp_path / "a.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(img)
    out = tmp_path / "out.json"
    r = subprocess.run([sys.executable, "-c", SLIM, str(model), str(img), str(out)], capture_output=True, text=True,
                       timeout=HANG)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(out.read_text())
    assert {"imgclf.runtime.load", "imgclf.runtime.onnx_runtime", "imgclf.runtime.keras_classifier",
            "imgclf.runtime.predict"} <= set(result["modules"])
    assert result["after_import"] == [], f"importing imgclf.runtime loads {result['after_import'][:5]}"
    assert result["after_predict"] == [], f"predicting with an .onnx model loads {result['after_predict'][:5]}"
    assert result["cli"] == 0 and len(result["rows"][0]["top"]) == 3
    assert json.loads(r.stdout)[0]["file"] == str(img)

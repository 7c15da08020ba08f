"""The package keeps the shape docs/architecture.md draws: layers that import only downwards, no import cycle, no
import hidden in a function except to keep torch or Lightning out of a fast command, and a short top level."""

from __future__ import annotations

import ast
import collections
from pathlib import Path

from tests.conftest import ROOT

NFL = ROOT / "nfl"

# docs/architecture.md's table, bottom first: a module may import its own layer's packages and any layer below.
LAYERS = [
    {"nfl", "nfl.errors"},
    {"nfl.tasks"},
    {"nfl.models"},
    {"nfl.engine"},
    {"nfl.objectives"},
    {"nfl.run"},
    {"nfl.data"},
    {"nfl.system", "nfl.callbacks"},
    {"nfl.cli"},
    {"nfl.lab"},
    {"nfl.sweep", "nfl.report", "nfl.bench", "nfl.__main__"},
]

# Imports inside functions, each kept so that a command starts without importing torch or Lightning.
DEFERRED = {
    ("nfl.data", "nfl.data.datamodule"),  # python -m nfl.data generate is numpy only
    ("nfl.tasks.path_star", "nfl.tasks.path_star_metrics"),  # the diagnostics are torchmetrics
    ("nfl.tasks.tree_star", "nfl.tasks.tree_star_metrics"),
    ("nfl.lab.sweep.runner", "nfl.run.checkpoints"),  # python -m nfl.sweep reads checkpoints only to resume
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in NFL.rglob("*.py")}


def owner(name: str) -> str:
    """The module a dotted import name lands in (``nfl.tasks.base.GraphTask`` -> ``nfl.tasks.base``)."""
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported nfl module, inside a function) for every runtime import; ``if TYPE_CHECKING:`` blocks excluded."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom) and child.module and child.module.split(".")[0] == "nfl":
                found.extend((owner(f"{child.module}.{alias.name}"), inner) for alias in child.names)
            elif isinstance(child, ast.Import):
                found.extend((owner(alias.name), inner) for alias in child.names if alias.name.split(".")[0] == "nfl")
            visit(child, inner)

    visit(ast.parse(path.read_text()), False)
    return found


GRAPH = {name: imports(path) for name, path in MODULES.items()}


def layer_of(module: str) -> int:
    top = ".".join(module.split(".")[:2])
    return next(i for i, layer in enumerate(LAYERS) if top in layer)


def test_every_module_belongs_to_a_layer():
    assert {module: layer_of(module) for module in MODULES}  # raises StopIteration for a module outside the table


def test_imports_point_down_the_layers():
    upward = [(a, b) for a, edges in GRAPH.items() for b, _ in edges if layer_of(b) > layer_of(a)]
    assert not upward, f"imports that point up the layers of docs/architecture.md: {upward}"


def test_no_import_cycle():
    edges = collections.defaultdict(set)
    for a, found in GRAPH.items():
        edges[a] |= {b for b, _ in found if b != a and not a.startswith(b + ".") and b != "nfl"}
    state: dict[str, int] = {}

    def cycle_from(node: str, path: list[str]):
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
            if nxt not in state and (found := cycle_from(nxt, path + [nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(MODULES):
        if start not in state:
            assert (found := cycle_from(start, [start])) is None, f"import cycle: {' -> '.join(found)}"


def test_imports_inside_functions_only_keep_torch_out_of_fast_commands():
    deferred = {(a, b) for a, found in GRAPH.items() for b, inner in found if inner}
    assert deferred == DEFERRED, "an import inside a function is only for keeping torch out of a fast command"


def test_the_top_level_is_short_and_documented():
    entries = sorted(p.name for p in NFL.iterdir() if p.name not in ("__init__.py", "__main__.py", "__pycache__"))
    assert len(entries) <= 14, entries
    doc = (ROOT / "docs" / "architecture.md").read_text()
    named = set(entries) | {
        f"{folder.name}/{p.name}" for folder in NFL.iterdir()
        if folder.is_dir() and folder.name not in ("objectives", "__pycache__")
        for p in folder.iterdir() if p.name not in ("__init__.py", "__pycache__")
    }  # objectives/ holds one file per objective, named in the README's table
    missing = sorted(n for n in named if n.rsplit("/", 1)[-1].removesuffix(".py") not in doc)
    assert not missing, f"docs/architecture.md does not place: {missing}"


def test_the_task_contract_has_no_postponed_annotations():
    """jsonargparse reads what a task inherits from GraphTask in the task's own module: a string annotation
    there (``Optional[str]``) would need names that module may not import, and the options go unvalidated."""
    from nfl.tasks.base import GraphTask

    assert all(not isinstance(a, str) for a in GraphTask.__annotations__.values())

"""The package's shape: its layers import only downward, and no module imports another in a cycle (lazy imports
inside functions included)."""
from __future__ import annotations

import ast
from pathlib import Path

from helpers import REPO

PACKAGE = REPO / "mtn_sails"
# From the top down: a module may import its own layer's modules and those of any layer below its own.
# training and runtime share a rank and never import each other.
LAYERS = {"faces": 4, "training": 3, "runtime": 3, "model_dir": 2, "data": 1, "base": 0}
FACES = {"cli", "api", "recipes", "__init__"}
MAX_MODULE_LINES = 400


def module_name(path: Path) -> str:
    """mtn_sails/training/trainer.py -> 'training.trainer'; mtn_sails/cli.py -> 'cli'."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def layer_of(module: str) -> str:
    """The layer a module belongs to: its subpackage, a face, or the base (config, errors, console)."""
    top = module.split(".")[0]
    if top in LAYERS:
        return top
    return "faces" if top in FACES else "base"


def resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """The package modules an `from ... import ...` statement in `importer` names."""
    if node.level:
        base = importer.split(".") if is_package else importer.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
    elif (node.module or "").startswith("mtn_sails"):
        base, node = [], ast.ImportFrom(module=node.module.removeprefix("mtn_sails").lstrip("."), names=node.names)
    else:
        return []
    prefix = base + (node.module.split(".") if node.module else [])
    return [".".join(prefix)] + [".".join(prefix + [alias.name]) for alias in node.names]


def import_graph() -> dict[str, set[str]]:
    """Each module of the package and the package modules it imports, anywhere in it."""
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                targets.update(t for t in resolve(name, path.name == "__init__.py", node) if t in paths)
        graph[name] = targets - {name, ""}
    return graph


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """'importer -> imported' for every import against the direction of the layers."""
    wrong = []
    for importer, targets in graph.items():
        for target in targets:
            own, other = layer_of(importer), layer_of(target)
            if own != other and LAYERS[other] >= LAYERS[own]:
                wrong.append(f"{importer} -> {target}")
    return sorted(wrong)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None."""
    visiting: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> list[str] | None:
        if name in visiting:
            return visiting[visiting.index(name):] + [name]
        if name in done:
            return None
        visiting.append(name)
        for target in sorted(graph.get(name, ())):
            cycle = visit(target)
            if cycle:
                return cycle
        visiting.pop()
        done.add(name)
        return None

    return next((cycle for cycle in map(visit, sorted(graph)) if cycle), None)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_direction_check_catches_an_upward_and_a_sideways_import():
    graph = {"data.records": {"model_dir.store"}, "training.trainer": {"runtime.export"},
             "runtime.export": {"model_dir.store", "config"}, "cli": {"training.session"}}
    assert upward_imports(graph) == ["data.records -> model_dir.store", "training.trainer -> runtime.export"]


def test_the_graph_sees_every_module_and_its_relative_imports():
    graph = import_graph()
    assert {"cli", "config", "data.records", "model_dir.store", "training.session", "runtime.export"} <= graph.keys()
    assert "model_dir.store" in graph["training.session"] and "config" in graph["training.session"]
    assert "training.session" in graph["recipes"] and "runtime.export" in graph["recipes"]


def test_no_import_cycles_in_the_package():
    assert find_cycle(import_graph()) is None


def test_every_import_runs_down_the_layers():
    assert upward_imports(import_graph()) == []


def test_plots_import_the_history_never_the_reverse():
    graph = import_graph()
    assert "model_dir.history_file" in graph["model_dir.plots"] and "model_dir.plots" not in graph["model_dir.history_file"]


def test_no_module_is_over_400_lines():
    long = {module_name(p): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}

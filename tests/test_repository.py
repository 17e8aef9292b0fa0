"""The repository stands alone: no test or benchmark reads a file outside it (a user's clone has nothing beside it)."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted({*REPO.glob("tests/**/*.py"), *REPO.glob("benchmarks/*.py")} - {Path(__file__).resolve()})


def _reaches_outside(node: ast.AST) -> bool:
    """An expression that climbs above the repository: `X.parent` of the repository root, `parents[k]`
    past it, or a '..' path segment."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value.startswith("../") or "/../" in node.value or node.value == ".."
    if isinstance(node, ast.Attribute) and node.attr == "parent" and isinstance(node.value, ast.Name):
        return node.value.id == "REPO"
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and node.value.attr == "parents":
        index = node.slice
        return isinstance(index, ast.Constant) and isinstance(index.value, int) and index.value >= 2
    return False


def test_no_test_or_benchmark_reads_outside_the_repository():
    offenders = [f"{path.relative_to(REPO)}:{node.lineno}"
                 for path in SOURCES for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                 if _reaches_outside(node)]
    assert offenders == []


def test_the_real_data_files_are_carried_with_their_sources():
    readme = (REPO / "tests" / "fixtures" / "README.md").read_text(encoding="utf-8")
    for data_file in (REPO / "tests" / "fixtures").iterdir():
        if data_file.name != "README.md":
            assert f"`{data_file.name}{'/' * data_file.is_dir()}`" in readme, data_file.name

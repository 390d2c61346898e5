"""The layout rules of src/ (docs/architecture.md): small classes and functions, no private
names imported across modules, no references to files outside the repository."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
MAX_CLASS_LINES = 400
MAX_FUNCTION_LINES = 60


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _length(node: ast.AST) -> int:
    return node.end_lineno - node.lineno + 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_classes_and_functions_stay_small(path: Path) -> None:
    tree = ast.parse(path.read_text())
    too_long = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and _length(node) > MAX_CLASS_LINES:
            too_long.append(f"class {node.name}: {_length(node)} lines")
        if (isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                and _length(node) > MAX_FUNCTION_LINES):
            too_long.append(f"def {node.name}: {_length(node)} lines")
    assert not too_long, too_long


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_no_private_name_is_imported_from_another_module(path: Path) -> None:
    tree = ast.parse(path.read_text())
    private = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module_parts = (node.module or "").split(".")
            # A package's own private modules (push_worker._config) are its business; names
            # starting with "_" taken from any other module are not.
            private += [f"{node.module}.{alias.name}" for alias in node.names
                        if alias.name.startswith("_") and alias.name != "__future__"]
            if node.level == 0 and any(p.startswith("_") and p != "__future__"
                                       for p in module_parts[1:]):
                top = module_parts[0]
                here = path.relative_to(SRC).parts[0]
                if top != here:
                    private.append(node.module or "")
    assert not private, private


def test_code_does_not_point_outside_the_repository() -> None:
    offenders = [str(p.relative_to(SRC)) for p in _modules() if "shared/notes" in p.read_text()]
    assert not offenders, offenders

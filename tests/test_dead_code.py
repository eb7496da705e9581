"""Promise: the training and data modules hold no dead code: every function and method they define
is called (or named) somewhere in charrnn/ or scripts/, not only in the tests or nowhere."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECKED = ["charrnn/model.py", "charrnn/training.py", "charrnn/files.py", "charrnn/distributed.py", "charrnn/data"]
CALLED_BY_TORCH = {"forward"}  # nn.Module.__call__ runs it


def _sources() -> list[Path]:
    return [*(ROOT / "charrnn").rglob("*.py"), *(ROOT / "scripts").glob("*.py")]


def _checked() -> list[Path]:
    found: list[Path] = []
    for name in CHECKED:
        path = ROOT / name
        found.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    return found


def _names_used(path: Path) -> set[str]:
    """Every identifier a file reads: names, attributes, imported names, and strings that could be names."""
    used: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Name):
            used.add(node.id)
        elif isinstance(node, ast.Attribute):
            used.add(node.attr)
        elif isinstance(node, ast.alias):
            used.add(node.name.rsplit(".", 1)[-1])
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.isidentifier():
            used.add(node.value)
    return used


def test_every_function_of_the_training_and_data_modules_is_used() -> None:
    used = set().union(*(_names_used(path) for path in _sources()))
    unused = []
    for path in _checked():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if node.name.startswith("__") or node.name in CALLED_BY_TORCH or node.name in used:
                continue
            unused.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not unused, "defined but never used in charrnn/ or scripts/: " + ", ".join(unused)

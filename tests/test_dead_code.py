"""Promise: the package holds no dead code: every function and method it defines is called (or
named) somewhere in charrnn/ or scripts/, not only in the tests or nowhere. A function a decorator
registers (a Typer command) is used by that registration."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECKED = ["charrnn"]
# Library functions whose callers are users, not the package: name -> why it stays.
LIBRARY = {"score_lines": "the line records of a str, for scripts (docs/scoring.md)"}
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


def _registers(decorator: ast.expr) -> bool:
    """`@app.command(...)` or `@app.callback()`: Typer calls the function."""
    func = decorator.func if isinstance(decorator, ast.Call) else decorator
    return isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "app"


def test_every_function_of_the_package_is_used() -> None:
    used = set().union(*(_names_used(path) for path in _sources()))
    unused = []
    for path in _checked():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if node.name.startswith("__") or node.name in CALLED_BY_TORCH or node.name in used:
                continue
            if node.name in LIBRARY or any(_registers(d) for d in node.decorator_list):
                continue
            unused.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not unused, "defined but never used in charrnn/ or scripts/: " + ", ".join(unused)

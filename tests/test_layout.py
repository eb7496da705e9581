"""The package's shape: no import cycles between its modules, no function too long to read at once,
no module hidden by a public name, and no torch under what only renders."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import charrnn

PACKAGE = Path(__file__).resolve().parent.parent / "charrnn"
# The limits issue 20 set: a function reads in one screen, a class holds one job.
MAX_FUNCTION_LINES = 60
MAX_CLASS_LINES = 200
# What shows a run without training or running a model: none of these may bring torch in.
RENDERING = ["cli", "display", "runs_table", "termplot", "plot", "viz.term"]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The charrnn modules a file imports anywhere in it (at the top or inside a function)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("charrnn"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("charrnn"))
    return found & modules


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    # The root package is the public facade: it re-exports lazily and every module may read
    # its __version__, so it is left out of the graph.
    return {name: _imports(path, modules) - {"charrnn", name} for name, path in files.items() if name != "charrnn"}


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = _graph()
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt) :] + [node, nxt]) if nxt in path else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert not cycles, "import cycles: " + "; ".join(cycles)


def test_no_function_is_longer_than_a_screenful() -> None:
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: " + ", ".join(long)


def test_no_class_is_longer_than_its_one_job_needs() -> None:
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES:
                long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}")
    assert not long, f"classes over {MAX_CLASS_LINES} lines: " + ", ".join(long)


def _fresh(code: str) -> subprocess.CompletedProcess[str]:
    """`code` run by a new interpreter, so that nothing this test process imported counts."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_no_public_name_shadows_a_module() -> None:
    modules = {p.stem for p in PACKAGE.glob("*.py")} | {p.name for p in PACKAGE.iterdir() if p.is_dir()}
    assert not modules & set(charrnn.__all__), "charrnn.<name> is both a public name and a module"
    done = _fresh(
        "import types, charrnn, charrnn.training as t, charrnn.runs\n"
        "assert isinstance(t, types.ModuleType) and isinstance(t.Trainer, type), t\n"
        "assert charrnn.training is t and charrnn.train is charrnn.runs.train, charrnn.train\n"
    )
    assert done.returncode == 0, done.stderr


def test_rendering_imports_no_torch() -> None:
    """The command line, the progress display and the run tables start fast: torch is imported only
    by the command that trains or runs a model (charrnn/results.py holds the types they show)."""
    imports = ", ".join(f"charrnn.{name}" for name in RENDERING)
    done = _fresh(f"import sys, {imports}\nassert 'torch' not in sys.modules, sorted(sys.modules)\nprint('ok')")
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]

"""Promise: scripts/bench_cpu.py, which makes every CPU figure of the README and
docs/performance.md, runs. Each of its rows, at the toy size of `--tiny` (a 1 x 32 LSTM, 200 KB
of the bundled corpus, one repetition, a 1 s quality budget), prints the report's header and
well-formed tables of numbers, and `--out` writes the same report. No figure is judged: the script
measures performance, these tests only check that it can."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "bench_cpu.py"

# A figure: a number with an optional unit and remark ("41,111 chars/s", "5.98%", "0 MB/s (whole
# first run up to step 1)"), or an empty or "-" cell where a column does not apply.
FIGURE = re.compile(r"(-?\d[\d,]*(\.\d+)?( ?(chars/s|MB/s|MB|ms|s|%))?( \(.+\))?|-|)")


def _rows() -> tuple[str, ...]:
    """The script's ROWS, read from its source: a row added there is run here too."""
    for node in ast.parse(SCRIPT.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "ROWS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("scripts/bench_cpu.py defines no ROWS")


def _tables(report: str) -> list[list[list[str]]]:
    """The markdown tables of a report, each a list of rows of stripped cells."""
    tables: list[list[list[str]]] = []
    table: list[list[str]] = []
    for line in [*report.splitlines(), ""]:
        if line.startswith("|"):
            assert line.endswith("|"), f"unterminated table row: {line!r}"
            table.append([cell.strip() for cell in line[1:-1].split("|")])
        elif table:
            tables.append(table)
            table = []
    return tables


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """Every row at the tiny size, in one run of the script (one interpreter start, not seven):
    its standard output and the report `--out` wrote."""
    tmp = tmp_path_factory.mktemp("bench_cpu")
    out = tmp / "report.md"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BENCH_TMP": str(tmp)}
    cmd = [sys.executable, str(SCRIPT), "--tiny", "--only", ",".join(_rows()), "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, out.read_text()


def test_the_report_names_the_machine_and_its_load(report: tuple[str, str]) -> None:
    stdout, written = report
    assert "skipped" not in stdout, stdout  # --tiny brings its own text
    lines = stdout.splitlines()
    for key in ("machine", "software", "commit", "command", "load average at start"):
        assert any(line.startswith(f"- {key}: ") for line in lines), stdout
    assert len(_tables(stdout)) == len(_rows()), stdout  # one section per row
    assert _tables(written) == _tables(stdout)


@pytest.mark.parametrize("row", _rows())
def test_each_row_runs_at_the_tiny_size(row: str, report: tuple[str, str]) -> None:
    stdout, _ = report
    tables = _tables(stdout)
    assert len(tables) == len(_rows()), stdout
    head, rule, *body = tables[_rows().index(row)]  # the sections come in the order of ROWS
    assert body, stdout
    assert rule == ["---"] * len(head), rule
    for cells in body:
        assert len(cells) == len(head), cells
        assert cells[0], cells  # what the row measures
        for cell in cells[1:]:
            assert FIGURE.fullmatch(cell), f"not a figure: {cell!r} in {cells}"

"""The documentation keeps its promises: every Python example runs, every link leads somewhere.

Every ```python block of README.md and docs/*.md runs as a script of its own, in a fresh
temporary directory, with this interpreter. What a block may count on finding there, as a
reader who has run `make demo` from the repository root would:

- `corpora/`: the repository's bundled corpora (`corpora/kjv.txt`);
- `runs/demo/`: a small run trained by `charrnn train` (char tokenizer, a 1 x 32 LSTM), made
  once per test session, as `make demo` makes a bigger one;
- `runs/old/`: a run written by charrnn 0.1 (format-1 `best.pt` and `last.pt`, from
  tests/fixtures/format1).

Blocks share one token cache (`CHARRNN_CACHE_DIR`), so those that train on corpora/kjv.txt do
not encode it again. A block must be cheap (tiny models, a few seconds). Shell commands and
output go in ```console or ```text blocks, which are not run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import TINY

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FORMAT1 = ROOT / "tests" / "fixtures" / "format1"
README_LIMIT = 12_000  # characters: issue 11 asks for a README a newcomer reads in minutes
BLOCK_TIMEOUT = 60  # seconds


@dataclass(frozen=True)
class Block:
    """One fenced ```python block: its source and where it starts (the line after the fence)."""

    file: Path
    line: int
    code: str

    @property
    def where(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}"


def python_blocks(path: Path) -> list[Block]:
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    start: int | None = None
    fence = ""
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if start is None and stripped.startswith("```"):
            fence, info = "```", stripped[3:].strip()
            start = number + 1 if info.split()[:1] == ["python"] else -1
        elif start is not None and stripped == fence:
            if start > 0:
                blocks.append(Block(path, start, "\n".join(lines[start - 1 : number - 1]) + "\n"))
            start = None
    return blocks


BLOCKS = [block for path in DOCS for block in python_blocks(path)]


@pytest.fixture(scope="session")
def token_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One token cache for the session: blocks that train on corpora/kjv.txt reuse its encoding."""
    return tmp_path_factory.mktemp("docs-cache")


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory, token_cache: Path) -> Path:
    """A small run trained by the CLI once per session: what `runs/demo/` holds for the blocks."""
    run = tmp_path_factory.mktemp("docs") / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "charrnn", "train", str(ROOT / "corpora" / "kjv.txt"), "--run", str(run)]
        + TINY
        + ["--max-steps", "20"],
        env={**os.environ, "OMP_NUM_THREADS": "1", "CHARRNN_CACHE_DIR": str(token_cache)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return run


@pytest.fixture
def workspace(tmp_path: Path, demo_run: Path) -> Path:
    """The directory a block runs in, laid out as the module docstring says."""
    (tmp_path / "corpora").symlink_to(ROOT / "corpora", target_is_directory=True)
    shutil.copytree(demo_run, tmp_path / "runs" / "demo", ignore=shutil.ignore_patterns(".lock"))
    shutil.copytree(FORMAT1, tmp_path / "runs" / "old")
    return tmp_path


@pytest.mark.parametrize("block", BLOCKS, ids=[block.where for block in BLOCKS])
def test_python_block_runs(block: Block, workspace: Path, token_cache: Path) -> None:
    script = workspace / "block.py"
    script.write_text(block.code, encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "CHARRNN_CACHE_DIR": str(token_cache)}
    try:
        done = subprocess.run(
            [sys.executable, str(script)],
            cwd=workspace,
            env=env,
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{block.where}: the block ran for more than {BLOCK_TIMEOUT} s")
    if done.returncode != 0:
        pytest.fail(f"{block.where}: the block failed (exit {done.returncode}):\n{done.stderr[-3000:]}", pytrace=False)


def test_the_readme_shows_python() -> None:
    assert any(block.file.name == "README.md" for block in BLOCKS)


def test_the_readme_is_short() -> None:
    assert len((ROOT / "README.md").read_text(encoding="utf-8")) <= README_LIMIT


LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("path", DOCS, ids=[str(path.relative_to(ROOT)) for path in DOCS])
def test_relative_links_lead_to_files(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    targets = [t.split("#")[0] for t in LINK.findall(text) if not re.match(r"[a-z]+:", t) and not t.startswith("#")]
    missing = [t for t in targets if t and not (path.parent / t).exists()]
    assert missing == [], f"{path.relative_to(ROOT)} links to files that do not exist: {missing}"

"""The documentation keeps its promises: every Python example runs, every link leads somewhere.

Every ```python block of README.md and docs/*.md runs as a script of its own, with this
interpreter, in order (README.md, then docs/ by name) and all in one directory, as a reader who
runs the pages top to bottom in the directory `make demo` left would. That directory starts
with only what `make demo` leaves there:

- `corpora/`: the repository's bundled corpora (`corpora/kjv.txt`);
- `runs/demo/`: a small run trained by `charrnn train` (char tokenizer, a 1 x 32 LSTM), made
  once per test session, as `make demo` makes a bigger one.

Anything else a block needs, it (or an earlier block) makes. A block writes only under names it
creates: it may not change or remove a file that was there before it ran, and no name it
creates (a file, a directory, a run in runs/) is one that a shell example of the pages creates
(`--run NAME`, `--output NAME`, `> NAME`, ...), so a reader who runs those too loses nothing.

Blocks share one token cache (`CHARRNN_CACHE_DIR`), so those that train on corpora/kjv.txt do
not encode it again. A block must be cheap (tiny models, a few seconds). Shell commands and
output go in ```console or ```text blocks, which are not run (tests/test_readme_examples.py runs
the README's `--lines` example and checks what it prints).
"""

from __future__ import annotations

import hashlib
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


def console_blocks(path: Path) -> list[str]:
    """The text of every ```console block of a page."""
    return re.findall(r"^```console\n(.*?)^```", path.read_text(encoding="utf-8"), re.S | re.M)


WRITES = re.compile(r"(?:--run|--resume|--output|-o|--html|--onnx)[ =]([\w./-]+)|(?<![<>\w])> ?([\w./-]+)")


def shell_names() -> set[str]:
    """What the pages' shell examples create: the first part of each path they write (a run in
    runs/ by its own name, runs/NAME)."""
    return {_name(Path(a or b)) for path in DOCS for text in console_blocks(path) for a, b in WRITES.findall(text)}


def _name(relative: Path) -> str:
    parts = relative.parts
    return "/".join(parts[:2]) if parts[0] == "runs" and len(parts) > 1 else parts[0]


def snapshot(root: Path) -> dict[str, str]:
    """Every file under root (links not followed: corpora/ is the repository's), by its digest."""
    files = {}
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not (Path(folder) / d).is_symlink()]
        for name in names:
            path = Path(folder) / name
            if not path.is_symlink():
                files[str(path.relative_to(root))] = hashlib.blake2b(path.read_bytes()).hexdigest()
    return files


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


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory, demo_run: Path) -> Path:
    """The one directory every block runs in, in order, laid out as the module docstring says."""
    root = tmp_path_factory.mktemp("reader")
    (root / "corpora").symlink_to(ROOT / "corpora", target_is_directory=True)
    shutil.copytree(demo_run, root / "runs" / "demo", ignore=shutil.ignore_patterns(".lock"))
    return root


@pytest.mark.parametrize("block", BLOCKS, ids=[block.where for block in BLOCKS])
def test_python_block_runs(block: Block, workspace: Path, token_cache: Path) -> None:
    script = workspace.parent / f"{workspace.name}-block.py"  # beside the directory: not a file of it
    script.write_text(block.code, encoding="utf-8")
    before = snapshot(workspace)
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
    after = snapshot(workspace)
    touched = sorted(name for name, digest in before.items() if after.get(name) != digest)
    assert touched == [], f"{block.where} changed or removed files it did not create: {touched}"
    taken = sorted({_name(Path(name)) for name in after.keys() - before.keys()} & shell_names())
    assert taken == [], f"{block.where} creates what a shell example of the pages creates too: {taken}"


def test_the_shell_examples_names_are_found() -> None:
    assert {"runs/kjv", "runs/names", "sampled.txt"} <= shell_names()


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


# Issue 18, item 14: the old checkpoint format is "format 1", not a release's name ("charrnn 0.1",
# "a 0.1 run"); release numbers are for releases.
OLD_FORMAT_BY_RELEASE = re.compile(r"charrnn 0\.1\b|\b0\.1(?:'s)? (?:run|`?\.pt|pickle|checkpoint|file)")


@pytest.mark.parametrize("path", DOCS, ids=[str(path.relative_to(ROOT)) for path in DOCS])
def test_the_old_checkpoint_format_is_named_by_its_number(path: Path) -> None:
    text = " ".join(path.read_text(encoding="utf-8").split())  # a phrase may span a line break
    found = [text[max(0, m.start() - 40) : m.end() + 20] for m in OLD_FORMAT_BY_RELEASE.finditer(text)]
    assert found == [], f"{path.relative_to(ROOT)} names checkpoint format 1 by a release: {found}"


def test_the_fine_tune_is_described_as_it_is() -> None:
    """Issue 18, item 13: a fine-tune's new characters take probability mass from the old ones,
    which keep only their odds against each other (what tests/test_finetune.py measures), not
    their predictions."""
    for path in (ROOT / "README.md", ROOT / "docs" / "finetuning.md"):
        text = " ".join(path.read_text(encoding="utf-8").split())
        assert "without changing its predictions" not in text, path.name
        assert "keep their odds against each other" in text, path.name
        assert "new ones take" in text or "new characters take" in text, path.name

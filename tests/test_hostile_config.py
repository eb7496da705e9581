"""Promise: what a user configures a run with cannot break it or anything of theirs.

- A fresh `train` writes only into a new or empty directory: one holding a checkpoint of any name
  or format, config.json, metrics.jsonl or any file of the user's is refused, byte for byte unchanged.

Every case runs `charrnn` through `charrnn.cli.main` in this process, and checks one
`charrnn: error:` line, no "internal error", a non-zero exit and the directory unchanged.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import TINY, in_process

from charrnn.config import TrainConfig
from charrnn.data.corpus import find_corpus
from charrnn.training import train

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = {"num_layers": 1, "hidden_size": 32, "embed_size": 16}
SMALL = TrainConfig(batch_size=4, seq_len=16, eval_interval=5, log_interval=5, max_steps=5, device="cpu")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, real_text: str) -> Path:
    base = tmp_path_factory.mktemp("config")
    (base / "corpus.txt").write_text(real_text[:20_000], encoding="utf-8")
    train(find_corpus([str(base / "corpus.txt")]), MODEL, SMALL, base / "run", cache_dir=tmp_path_factory.mktemp("c"))
    return base


@pytest.fixture
def work(tmp_path: Path, trained: Path) -> Path:
    root = tmp_path / "w"
    shutil.copytree(trained, root)
    return root


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under root: its kind, and for a file its size, mtime and digest."""
    seen: dict[str, tuple] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        if path.is_symlink() or not path.is_file():
            seen[str(path)] = ("other", info.st_mode, info.st_mtime_ns)
        else:
            seen[str(path)] = ("file", info.st_size, info.st_mtime_ns, hashlib.sha1(path.read_bytes()).hexdigest())
    return seen


def refused(code: int, err: str, *phrases: str) -> None:
    assert code == 1, err
    assert err.count("\n") == 1 and err.startswith("charrnn: error: "), err
    assert "internal error" not in err and "Traceback" not in err, err
    for phrase in phrases:
        assert phrase in err, err


# ----- a fresh train and the directory it is given -----------------------------------------------------


def _only(*names: str) -> Callable[[Path, Path], None]:
    """A run directory holding only these files of the trained run."""

    def make(run: Path, target: Path) -> None:
        target.mkdir()
        for name in names:
            shutil.copy2(run / name, target / name)

    return make


def _files(**contents: bytes) -> Callable[[Path, Path], None]:
    def make(run: Path, target: Path) -> None:
        target.mkdir()
        for name, data in contents.items():
            (target / name.replace("__", ".")).write_bytes(data)

    return make


def _with_subdirectory(run: Path, target: Path) -> None:
    (target / "notes").mkdir(parents=True)


def _with_symlink(run: Path, target: Path) -> None:
    target.mkdir()
    (target / "link").symlink_to(run / "best.safetensors")


USED_DIRECTORIES: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "best.safetensors alone": (_only("best.safetensors"), "already exists (it holds best.safetensors)"),
    "last.safetensors alone": (_only("last.safetensors"), "already exists: pass --resume"),
    "best and config": (_only("best.safetensors", "config.json"), "already exists"),
    "config.json alone": (_only("config.json"), "already exists (it holds config.json)"),
    "metrics.jsonl alone": (_only("metrics.jsonl"), "already exists (it holds metrics.jsonl)"),
    "a format-1 best.pt": (_files(best__pt=b"PK\x03\x04 not really"), "already exists (it holds best.pt)"),
    "a format-1 last.pt": (_files(last__pt=b"PK\x03\x04 not really"), "already exists: pass --resume"),
    "another checkpoint name": (_files(model__safetensors=b"{}"), "already exists (it holds model.safetensors)"),
    "a user's file": (_files(notes__txt=b"my notes\n"), "is not empty (it holds notes.txt)"),
    "a user's hidden file": (_files(__notes=b"my notes\n"), "is not empty (it holds .notes)"),
    "a user's .tmp file": (_files(__backup__tmp=b"mine\n"), "is not empty (it holds .backup.tmp)"),
    "a subdirectory": (_with_subdirectory, "is not empty (it holds notes)"),
    "a symlink": (_with_symlink, "is not empty (it holds link)"),
    "many files": (_files(a=b"1", b=b"2", c=b"3", d=b"4", e=b"5"), "(it holds a, b, c and 2 more)"),
}


@pytest.mark.parametrize("kind", list(USED_DIRECTORIES))
@pytest.mark.parametrize("how", ["train", "--init-from"])
def test_a_fresh_train_never_writes_into_a_used_directory(
    how: str, kind: str, work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make, phrase = USED_DIRECTORIES[kind]
    target = work / "target"
    make(work / "run", target)
    before = snapshot(work)
    extra = ["--init-from", str(work / "run")] if how == "--init-from" else []
    args = ["train", str(work / "corpus.txt"), "--run", str(target), *TINY, "--max-steps", "1", *extra]
    code, _, err = in_process(capsys, *args)
    refused(code, err, phrase)
    assert snapshot(work) == before


def test_a_fresh_train_takes_an_empty_directory_and_its_own_leftovers(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty directory, or one holding only what an earlier train left of its own (its lock, a
    temporary file of a killed save), is a new run's."""
    target = work / "target"
    target.mkdir()
    (target / ".lock").write_text("12345")
    (target / ".config.json.12345.tmp").write_bytes(b"half a config")
    code, _, err = in_process(
        capsys, "train", str(work / "corpus.txt"), "--run", str(target), *TINY, "--max-steps", "1"
    )
    assert code == 0, err
    assert (target / "best.safetensors").is_file() and not (target / ".config.json.12345.tmp").exists()

"""Promise: when the disk fills up, a failed save leaves the previous checkpoints intact and
loadable, and training stops with one clear line ("could not save ...: the disk is full") and
exit status 1, with no temporary file left behind.

Two ways to fill the disk: a real, tiny tmpfs (needs root and a sandbox that allows mounting;
otherwise that test is skipped with the reason), and, everywhere, file writes made to fail with
ENOSPC in this process.
"""

from __future__ import annotations

import builtins
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import charrnn

from charrnn import checkpoint as checkpoint_module
from charrnn import files as files_module
from charrnn import rundir as rundir_module
from charrnn.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from charrnn.config import TrainConfig
from charrnn.data.corpus import find_corpus
from charrnn.errors import CharrnnError
from charrnn.train import resume, train

MODEL = {"num_layers": 1, "hidden_size": 32, "embed_size": 16}
CONFIG = TrainConfig(batch_size=4, seq_len=16, eval_interval=10, log_interval=5, max_steps=10, device="cpu")
CHECKPOINTS = ("last.safetensors", "best.safetensors")


pytestmark = pytest.mark.usefixtures("one_thread")


def _contents(run: Path) -> dict[str, bytes]:
    return {name: (run / name).read_bytes() for name in CHECKPOINTS}


def _assert_intact(run: Path, before: dict[str, bytes]) -> None:
    assert _contents(run) == before
    for name in CHECKPOINTS:
        model_from_checkpoint(load_checkpoint(run / name))
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")], "a temporary file was left behind"


class _FullDisk:
    """A file opened for writing that takes `room` bytes and then fails as a full disk does."""

    def __init__(self, handle: Any, room: int) -> None:
        self._handle, self._room = handle, room

    def write(self, data: bytes | str) -> int:
        if len(data) > self._room:
            self._handle.write(data[: self._room])  # what fitted is written, as a real write does
            self._room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return self._handle.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)

    def __enter__(self) -> _FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()


def _fill_the_disk(monkeypatch: pytest.MonkeyPatch, room: int = 1000) -> None:
    """From now on every file charrnn writes (checkpoints, config, metrics) fails after `room` bytes."""

    def full_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = builtins.open(file, mode, *args, **kwargs)
        return _FullDisk(handle, room) if any(m in mode for m in "wax") else handle

    for module in (files_module, checkpoint_module, rundir_module):
        monkeypatch.setattr(module, "open", full_open, raising=False)


@pytest.fixture
def trained_run(tmp_path: Path, corpus_file: Path) -> Path:
    run = tmp_path / "run"
    train(find_corpus([str(corpus_file)]), MODEL, CONFIG, run)
    return run


def test_a_failed_checkpoint_save_keeps_the_old_file(trained_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = _contents(trained_run)
    payload = load_checkpoint(trained_run / "last.safetensors")
    _fill_the_disk(monkeypatch)
    with pytest.raises(
        CharrnnError, match=r"could not save .*last\.safetensors: the disk is full; the previous file is intact"
    ):
        save_checkpoint(trained_run / "last.safetensors", payload)
    _assert_intact(trained_run, before)


@pytest.mark.parametrize("room", [0, 1000, 20_000], ids=["nothing-fits", "1kB-fits", "20kB-fits"])
def test_training_stops_cleanly_when_the_disk_fills(
    trained_run: Path, monkeypatch: pytest.MonkeyPatch, room: int
) -> None:
    before = _contents(trained_run)
    _fill_the_disk(monkeypatch, room)
    with pytest.raises(CharrnnError, match=r"the disk is full") as failed:
        resume(trained_run, budget={"max_steps": 20})
    assert "\n" not in str(failed.value)
    monkeypatch.undo()
    _assert_intact(trained_run, before)
    # With room again, the run goes on from its last good checkpoint.
    assert resume(trained_run, budget={"max_steps": 20}).steps == 20


def test_a_full_disk_while_logging_metrics_is_reported_too(trained_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The metrics log is appended to, not replaced: a failed append must still be one clear error."""
    before = _contents(trained_run)
    real_open = builtins.open

    def appends_fail(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real_open(file, mode, *args, **kwargs)
        return _FullDisk(handle, 10) if "a" in mode else handle

    monkeypatch.setattr(rundir_module, "open", appends_fail, raising=False)
    with pytest.raises(CharrnnError, match=r"metrics\.jsonl: the disk is full"):
        resume(trained_run, budget={"max_steps": 20})
    monkeypatch.undo()
    _assert_intact(trained_run, before)
    assert resume(trained_run, budget={"max_steps": 20}).steps == 20


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted for this test."""
    mount = tmp_path / "fs"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tiny filesystem needs root")
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if made.returncode != 0:
        pytest.skip(f"this sandbox does not allow mounting a tmpfs: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(mount: Path, leave: int) -> Path:
    """Fill the filesystem, then free `leave` bytes again."""
    filler = mount / "filler"
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - leave))
    return filler


def test_a_real_full_filesystem(tiny_fs: Path, corpus_file: Path) -> None:
    run = tiny_fs / "run"
    train(find_corpus([str(corpus_file)]), MODEL, CONFIG, run)
    before = _contents(run)
    filler = _fill(tiny_fs, leave=16 * 1024)  # room for the metrics, not for a checkpoint

    full = charrnn("train", "--resume", str(run), "--max-steps", "20", "--quiet")

    assert full.returncode == 1
    assert full.stderr.count("\n") == 1, full.stderr
    assert full.stderr.startswith(f"charrnn: error: could not save {run}/"), full.stderr
    assert full.stderr.endswith(": the disk is full; the previous file is intact\n"), full.stderr
    _assert_intact(run, before)
    filler.unlink()
    assert resume(run, budget={"max_steps": 20}).steps == 20

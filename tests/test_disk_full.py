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
from charrnn.training import resume, train

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


# ----- the token cache (issue 19, item 11): a full disk is one line, and no partial entry -----

NAMES = "Anna Bruno Clara Dmitri Elena Felix Greta Hugo Ines Jonas Karla Lukas Mara Nils Olga Pavel".split()


def _cache_files(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.rglob("*") if p.is_file())


@pytest.mark.parametrize(
    ("failing", "lines"),
    [(".bin.", False), (".tok.pt.", False), (".json.", False), (".bin.", True), (".lines.npz.", True)],
    ids=["tokens", "tokenizer", "metadata", "lines-tokens", "lines-hashes"],
)
def test_a_full_disk_while_the_token_cache_is_written_is_one_line_and_leaves_no_partial_entry(
    tmp_path: Path, corpus_file: Path, monkeypatch: pytest.MonkeyPatch, failing: str, lines: bool
) -> None:
    """Old code: internal error (OSError, or torch.save's RuntimeError), and the tokenizer's or the
    metadata's temporary file left in the cache."""
    from charrnn.data import dataset as dataset_module

    cache = tmp_path / "cache"
    monkeypatch.setenv("CHARRNN_CACHE_DIR", str(cache))
    corpus = corpus_file
    if lines:
        corpus = tmp_path / "names.txt"
        corpus.write_text("".join(f"{name}\n" for name in NAMES * 4))
    real_open = builtins.open

    def full_for_one(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real_open(file, mode, *args, **kwargs)
        return _FullDisk(handle, 10) if "w" in mode and failing in Path(file).name else handle

    for module in (files_module, dataset_module):
        monkeypatch.setattr(module, "open", full_for_one, raising=False)
    config = CONFIG if not lines else TrainConfig(**{**CONFIG.__dict__, "lines": True, "val_frac": 0.2})
    with pytest.raises(CharrnnError) as failed:
        train(find_corpus([str(corpus)]), MODEL, config, tmp_path / "run")
    message = str(failed.value)
    assert message.startswith(f"could not write the token cache in {cache}: the disk is full; nothing of it was kept")
    assert "\n" not in message and "CHARRNN_CACHE_DIR" in message
    assert not [name for name in _cache_files(cache) if name.endswith(".tmp")], _cache_files(cache)
    assert not [name for name in _cache_files(cache) if name.endswith(".json")]  # no entry that looks valid
    assert not (tmp_path / "run").exists()
    monkeypatch.undo()
    monkeypatch.setenv("CHARRNN_CACHE_DIR", str(cache))
    assert train(find_corpus([str(corpus)]), MODEL, config, tmp_path / "run").steps == 10  # room again: it goes on


def test_a_read_only_cache_is_one_line_too(tmp_path: Path, corpus_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from charrnn.data import dataset as dataset_module

    monkeypatch.setenv("CHARRNN_CACHE_DIR", str(tmp_path / "cache"))

    def read_only(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if "w" in mode and str(file).startswith(str(tmp_path / "cache")):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return builtins.open(file, mode, *args, **kwargs)

    for module in (files_module, dataset_module):
        monkeypatch.setattr(module, "open", read_only, raising=False)
    real_unlink = os.unlink

    def unlink(path: Any, *args: Any, **kwargs: Any) -> None:  # its clean-up fails as well
        if str(path).startswith(str(tmp_path / "cache")):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)
    with pytest.raises(CharrnnError, match="could not write the token cache in .*: the file system is read-only"):
        train(find_corpus([str(corpus_file)]), MODEL, CONFIG, tmp_path / "run")


def test_temporary_cache_files_of_a_killed_process_go_at_the_next_build(
    tmp_path: Path, corpus_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("CHARRNN_CACHE_DIR", str(cache))
    train(find_corpus([str(corpus_file)]), MODEL, CONFIG, tmp_path / "first")
    key = next(cache.glob("*.bin")).name.split(".")[0]
    for path in list(cache.iterdir()):
        path.unlink()
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout)
    stale = [
        f"{key}.bin.{dead}.tmp",
        f"{key}.bin.{dead}.lines.tmp",
        f".{key}.tok.pt.{dead}.tmp",
        f".{key}.json.{dead}.tmp",
    ]
    kept = [f"{key}.bin.{os.getppid()}.tmp", f"other.bin.{dead}.tmp"]  # a live writer's, another entry's
    for name in stale + kept:
        (cache / name).write_bytes(b"half")
    train(find_corpus([str(corpus_file)]), MODEL, CONFIG, tmp_path / "second")
    assert sorted(name for name in _cache_files(cache) if name.endswith(".tmp")) == sorted(kept)


# ----- standard output that cannot be written (issue 19, item 11): `charrnn sample > /dev/full` -----


class _FullStdout:
    """Standard output on a full disk: every write fails as /dev/full's does."""

    encoding = "utf-8"

    def write(self, text: str) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        raise OSError(errno.EBADF, "no file descriptor")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import KJV

    base = tmp_path_factory.mktemp("stdout")
    corpus = base / "corpus.txt"
    corpus.write_text(KJV.read_text(encoding="utf-8")[:30_000], encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CHARRNN_CACHE_DIR", str(base / "cache"))
        train(find_corpus([str(corpus)]), MODEL, CONFIG, base / "run")
    return base / "run"


@pytest.mark.parametrize(
    "args",
    [
        ["sample", "RUN", "--length", "20"],
        ["sample", "RUN", "--length", "20", "--num-samples", "2", "--json"],
        ["eval", "RUN", "--no-baselines", "--device", "cpu"],
        ["eval", "RUN", "--json", "--no-baselines", "--device", "cpu"],
        ["score", "RUN", "TEXT", "--device", "cpu"],
        ["score", "RUN", "TEXT", "--json", "--device", "cpu"],
        ["runs", "RUNS"],
        ["runs", "RUNS", "--json"],
        ["viz", "RUN", "TEXT", "--term", "--device", "cpu"],
        ["viz", "RUN", "TEXT", "--json", "--device", "cpu"],
        ["plot", "RUN", "--term"],
        ["--version"],
        ["sample", "--help"],
    ],
    ids=lambda args: " ".join(a for a in args if a.isalpha() or a.startswith("--"))[:40],
)
def test_a_command_whose_standard_output_is_full_says_so_in_one_line(
    small_run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
) -> None:
    """Old code: "internal error: OSError: [Errno 28] No space left on device"."""
    from charrnn.cli import main

    text = tmp_path / "text.txt"
    text.write_text("In the beginning God created the heaven and the earth.\n" * 3)
    where = {"RUN": str(small_run), "RUNS": str(small_run.parent), "TEXT": str(text)}
    monkeypatch.setattr("sys.stdout", _FullStdout())
    with pytest.raises(SystemExit) as exited:
        main([where.get(a, a) for a in args])
    err = capsys.readouterr().err
    assert exited.value.code == 1, err
    assert err == "charrnn: error: could not write to standard output: the disk is full\n"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full here")
def test_sample_into_dev_full_is_one_line_and_exit_1(small_run: Path) -> None:
    """A real /dev/full: the output is block-buffered, so the failure comes at a flush, or at exit."""
    from conftest import CLI

    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [*CLI, "sample", str(small_run), "--length", "30"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    assert done.returncode == 1
    assert done.stderr == "charrnn: error: could not write to standard output: the disk is full\n"

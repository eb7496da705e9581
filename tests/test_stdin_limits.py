"""Promise: standard input (`-`) is bounded. `eval`, `score`, `viz` (and `sample --prime-file -`) read
it into memory, at most 64 MiB, and write nothing to disk; `train` copies it to the temporary
directory, at most 2 GiB (`--stdin-limit` raises that), checking the limit as it copies. Past the
limit, on binary input (at the first block), on undecodable, empty, closed or terminal input, each
command refuses in one line that never names the copy. The copy, `charrnn-stdin-PID.txt`, is
removed however the process ends (exit, error, SIGINT, SIGTERM); one that a SIGKILL left is removed
by the next process that reads standard input; a full disk while copying is one line and leaves no
partial file.

The limits are made small through CHARRNN_STDIN_LIMIT or --stdin-limit, so that no test feeds
more than a few megabytes: an endless input is a stream object that counts what was read from it.
"""

from __future__ import annotations

import builtins
import errno
import fcntl
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CLI, TINY, in_process

from charrnn.config import TrainConfig
from charrnn.data import corpus as corpus_module
from charrnn.data.corpus import (
    STDIN_MEMORY_LIMIT,
    STDIN_SPOOL_LIMIT,
    find_corpus,
    remove_spool,
    remove_stale_spools,
)
from charrnn.errors import CharrnnError
from charrnn.training import train

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = {"num_layers": 1, "hidden_size": 32, "embed_size": 16}
SMALL = TrainConfig(batch_size=4, seq_len=16, eval_interval=5, log_interval=5, max_steps=5, device="cpu")
LINE = b"and the lord said\n"


class Writes:
    """A file opened for writing that counts what is written and, past `room` bytes, fails as a
    full disk does (what fitted is written, as a real write does)."""

    def __init__(self, handle: Any, room: int | None = None) -> None:
        self.handle, self.room, self.written = handle, room, 0

    def write(self, data: bytes) -> int:
        if self.room is not None and self.written + len(data) > self.room:
            self.handle.write(data[: self.room - self.written])
            self.written = self.room
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written += len(data)
        return self.handle.write(data)

    def __enter__(self) -> Writes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()


def _watch_writes(monkeypatch: pytest.MonkeyPatch, room: int | None = None) -> list[Writes]:
    """Every file charrnn.data.corpus opens for writing from now on, wrapped in Writes."""
    opened: list[Writes] = []
    real_open = builtins.open

    def watched_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real_open(file, mode, *args, **kwargs)
        if "w" not in mode:
            return handle
        opened.append(Writes(handle, room))
        return opened[-1]

    monkeypatch.setattr(corpus_module, "open", watched_open, raising=False)
    return opened


class Stdin:
    """A stand-in for sys.stdin: `data` once, or repeated without end; counts the bytes read."""

    def __init__(self, data: bytes = b"", *, endless: bool = False, tty: bool = False, error: OSError | None = None):
        self.data, self.endless, self.tty, self.error = data, endless, tty, error
        self.position = 0
        self.read_bytes = 0

    def read(self, size: int = -1) -> bytes:
        if self.error is not None:
            raise self.error
        if self.endless:
            block = (self.data * (size // len(self.data) + 1))[:size]
        else:
            end = len(self.data) if size < 0 else self.position + size
            block, self.position = self.data[self.position : end], min(end, len(self.data))
        self.read_bytes += len(block)
        return block

    def isatty(self) -> bool:
        return self.tty


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, real_text: str) -> Path:
    base = tmp_path_factory.mktemp("stdin")
    (base / "corpus.txt").write_text(real_text[:20_000], encoding="utf-8")
    train(find_corpus([str(base / "corpus.txt")]), MODEL, SMALL, base / "run", cache_dir=tmp_path_factory.mktemp("c"))
    return base / "run"


@pytest.fixture
def spool_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The temporary directory charrnn copies standard input to, for this test alone."""
    directory = tmp_path / "tmp"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    monkeypatch.delenv("CHARRNN_STDIN_LIMIT", raising=False)
    yield directory
    remove_spool()
    monkeypatch.setattr(corpus_module, "_memory", None)


def _with_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, stdin: Any, *args: str
) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", stdin)
    return in_process(capsys, *args)


def _one_error_line(code: int, err: str, phrase: str) -> None:
    assert code == 1, err
    assert err.count("\n") == 1 and err.startswith("charrnn: error: "), err
    assert phrase in err, err
    assert "internal error" not in err and "Traceback" not in err, err
    assert "charrnn-stdin-" not in err, "the error names the temporary copy"


def _commands(run: Path, work: Path) -> dict[str, list[str]]:
    """Every command that reads standard input, reading it."""
    return {
        "eval": ["eval", str(run), "-", "--no-baselines"],
        "score": ["score", str(run), "-", "--device", "cpu"],
        "viz": ["viz", str(run), "-", "--json", "--device", "cpu"],
        "sample --prime-file": ["sample", str(run), "--prime-file", "-", "--length", "5"],
        "train": ["train", "-", "--run", str(work / "new"), *TINY, "--max-steps", "2"],
    }


COMMANDS = ["eval", "score", "viz", "sample --prime-file", "train"]


# ----- the limits -----------------------------------------------------------------------------


def test_the_documented_defaults() -> None:
    assert STDIN_MEMORY_LIMIT == 64 << 20 and STDIN_SPOOL_LIMIT == 2 << 30
    docs = (Path(__file__).resolve().parent.parent / "docs" / "training.md").read_text()
    assert "64 MiB" in docs and "2 GiB" in docs and "--stdin-limit" in docs and "CHARRNN_STDIN_LIMIT" in docs


@pytest.mark.parametrize("command", COMMANDS)
def test_an_endless_stdin_is_refused_at_the_limit(
    command: str,
    trained: Path,
    spool_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`yes 'and the lord said' | charrnn eval RUN -` filled a disk: now it reads the limit and stops."""
    monkeypatch.setenv("CHARRNN_STDIN_LIMIT", "64K")
    stdin = Stdin(LINE, endless=True)
    code, _, err = _with_stdin(capsys, monkeypatch, stdin, *_commands(trained, tmp_path)[command])
    _one_error_line(code, err, "standard input holds more than 64 KiB")
    assert stdin.read_bytes <= (64 << 10) + 1
    assert list(spool_dir.iterdir()) == [], "a copy of standard input was left"
    assert not (tmp_path / "new").exists()


def test_train_stdin_limit_flag_and_the_spool_cap(
    spool_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--stdin-limit sets train's cap (over CHARRNN_STDIN_LIMIT); the copy never outgrows it."""
    monkeypatch.setenv("CHARRNN_STDIN_LIMIT", "1G")
    opened = _watch_writes(monkeypatch)
    stdin = Stdin(LINE, endless=True)
    args = ["train", "-", "--run", str(tmp_path / "new"), *TINY, "--stdin-limit", "100K"]
    code, _, err = _with_stdin(capsys, monkeypatch, stdin, *args)
    _one_error_line(code, err, "standard input holds more than 100 KiB, the most train copies to")
    assert "--stdin-limit" in err
    assert len(opened) == 1 and opened[0].written <= 100 << 10 and stdin.read_bytes <= (100 << 10) + 1
    assert list(spool_dir.iterdir()) == [] and not (tmp_path / "new").exists()


@pytest.mark.parametrize("value", ["lots", "0", "-1M", "1e9"])
def test_a_bad_limit_is_one_line(
    value: str, trained: Path, spool_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHARRNN_STDIN_LIMIT", value)
    code, _, err = _with_stdin(capsys, monkeypatch, Stdin(LINE), "eval", str(trained), "-")
    _one_error_line(code, err, "CHARRNN_STDIN_LIMIT")
    code, _, err = _with_stdin(capsys, monkeypatch, Stdin(LINE), "train", "-", "--stdin-limit", value, *TINY)
    _one_error_line(code, err, "size")


def test_yes_piped_into_eval_stops_at_the_limit(trained: Path, tmp_path: Path) -> None:
    """The reported command itself, end to end: `yes ... | charrnn eval RUN -`, with a 1 MiB limit."""
    env = {**os.environ, "CHARRNN_STDIN_LIMIT": "1M", "TMPDIR": str(tmp_path)}
    yes = subprocess.Popen(["yes", "and the lord said"], stdout=subprocess.PIPE)
    try:
        done = subprocess.run(
            [*CLI, "eval", str(trained), "-"], stdin=yes.stdout, env=env, capture_output=True, text=True, timeout=120
        )
    finally:
        yes.kill()
        yes.wait()
    _one_error_line(done.returncode, done.stderr, "standard input holds more than 1 MiB")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("charrnn-stdin-")]


# ----- bad standard input, for every command that reads it ------------------------------------

BAD_STDIN: dict[str, tuple[Any, str]] = {
    "binary, endless": (lambda: Stdin(bytes(range(256)), endless=True), "standard input looks like a binary file"),
    "NUL bytes": (lambda: Stdin(b"text\x00more text\n" * 50), "standard input looks like a binary file"),
    "invalid UTF-8": (lambda: Stdin("héllo\n".encode() * 100 + b"\xff tail"), "standard input is not valid utf-8"),
    "empty": (lambda: Stdin(b""), "standard input is empty"),
    "a terminal": (lambda: Stdin(LINE, tty=True), "standard input is a terminal"),
    "closed": (lambda: None, "standard input is closed"),
    "a directory": (
        lambda: Stdin(error=IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))),
        "cannot read standard input: Is a directory",
    ),
}


@pytest.mark.parametrize("kind", list(BAD_STDIN))
@pytest.mark.parametrize("command", COMMANDS)
def test_bad_stdin_is_one_line_and_leaves_nothing(
    command: str,
    kind: str,
    trained: Path,
    spool_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make, phrase = BAD_STDIN[kind]
    stdin = make()
    code, _, err = _with_stdin(capsys, monkeypatch, stdin, *_commands(trained, tmp_path)[command])
    _one_error_line(code, err, phrase)
    assert str(spool_dir) not in err
    assert list(spool_dir.iterdir()) == []
    assert not (tmp_path / "new").exists()
    if kind == "binary, endless":
        assert stdin.read_bytes <= 1 << 20, "binary input was read past its first block"


def test_the_bad_byte_offset_counts_across_blocks(spool_dir: Path) -> None:
    """The offset of a bad byte is the stream's, not the block's (the copy reads 1 MiB at a time)."""
    data = b"a" * ((1 << 20) + 5) + b"\xff"
    sys_stdin = sys.stdin
    sys.stdin = Stdin(data)  # type: ignore[assignment]
    try:
        with pytest.raises(
            CharrnnError, match=rf"standard input is not valid utf-8: bad byte at offset {len(data) - 1}"
        ):
            find_corpus(["-"], spool_stdin=True)
    finally:
        sys.stdin = sys_stdin
    assert list(spool_dir.iterdir()) == []


def test_stdin_twice_is_refused(
    trained: Path, spool_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Standard input read as the corpus and as --val-file would have validated on training text."""
    args = ["train", "-", "--val-file", "-", "--run", str(tmp_path / "new"), *TINY]
    code, _, err = _with_stdin(capsys, monkeypatch, Stdin(LINE * 100), *args)
    _one_error_line(code, err, "standard input can be read only once")
    code, _, err = _with_stdin(capsys, monkeypatch, Stdin(LINE * 100), "train", "-", "-", *TINY)
    _one_error_line(code, err, "standard input can be read only once")
    assert list(spool_dir.iterdir()) == [] and not (tmp_path / "new").exists()


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero"])
@pytest.mark.parametrize("command", ["eval", "score", "viz", "train"])
def test_a_device_or_fifo_as_the_text_is_refused_without_reading_it(
    command: str, kind: str, trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A FIFO nobody writes to would block, /dev/zero never ends: neither is opened."""
    path = Path("/dev/zero")
    if kind == "fifo":
        path = tmp_path / "pipe"
        os.mkfifo(path)
    args = {
        "eval": ["eval", str(trained), str(path)],
        "score": ["score", str(trained), str(path)],
        "viz": ["viz", str(trained), str(path), "--json"],
        "train": ["train", str(path), "--run", str(tmp_path / "new"), *TINY],
    }[command]
    code, _, err = in_process(capsys, *args)
    _one_error_line(code, err, "is not a regular file")


# ----- what works -----------------------------------------------------------------------------


def test_eval_score_viz_read_stdin_in_memory_and_write_nothing(
    trained: Path, spool_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    text = b"And the LORD spake unto Moses, saying,\n" * 20
    for args in (["eval", str(trained), "-", "--json"], ["score", str(trained), "-", "--json", "--device", "cpu"]):
        code, out, err = _with_stdin(capsys, monkeypatch, Stdin(text), *args)
        assert code == 0, err
        assert out
        assert list(spool_dir.iterdir()) == [], "standard input was written to disk"
    code, out, err = _with_stdin(capsys, monkeypatch, Stdin("ünïcödé\n".encode("utf-16")), "eval", str(trained), "-",
                                 "--encoding", "utf-16", "--json")  # fmt: skip
    assert code == 0, err


def test_a_stdin_run_says_it_cannot_be_resumed_and_removes_its_copy(
    spool_dir: Path,
    tmp_path: Path,
    real_text: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = tmp_path / "r"
    args = ["train", "-", "--run", str(run), *[a for a in TINY if a != "--quiet"], "--max-steps", "2"]
    seen: list[list[str]] = []
    real_check = corpus_module._check_stdin

    def watched(*a: Any, **k: Any) -> None:
        seen.append([p.name for p in spool_dir.iterdir()])  # the copy exists, empty, before a byte is read
        real_check(*a, **k)

    monkeypatch.setattr(corpus_module, "_check_stdin", watched)
    code, out, err = _with_stdin(capsys, monkeypatch, Stdin(real_text[:20_000].encode()), *args)
    assert code == 0, err
    assert seen == [[f"charrnn-stdin-{os.getpid()}.txt"]]
    assert "standard input is not kept after training: this run cannot be resumed" in out
    assert list(spool_dir.iterdir()) == [], "the copy of standard input outlived the training"
    code, _, err = in_process(capsys, "eval", str(run))
    _one_error_line(code, err, "it was standard input, which is not kept after the command that read it")


def test_an_error_after_the_copy_removes_it(
    spool_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = _with_stdin(
        capsys, monkeypatch, Stdin(b"a" * 5000), "train", "-", "--run", str(tmp_path / "n"), *TINY
    )
    _one_error_line(code, err, "one symbol ('a') repeated")
    assert "the training text of standard input" in err
    assert list(spool_dir.iterdir()) == [] and not (tmp_path / "n").exists()


# ----- the copy: disk full, signals, kills ------------------------------------------------------


def test_a_full_disk_while_copying_is_one_line_and_leaves_no_file(
    spool_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _watch_writes(monkeypatch, room=50_000)
    stdin = Stdin(LINE * 20_000)
    code, _, err = _with_stdin(capsys, monkeypatch, stdin, "train", "-", "--run", str(tmp_path / "n"), *TINY)
    _one_error_line(code, err, f"cannot copy standard input to the temporary directory {spool_dir}: the disk is full")
    assert "nothing was kept" in err
    assert list(spool_dir.iterdir()) == [] and not (tmp_path / "n").exists()


def test_a_real_full_temporary_directory(tiny_fs: Path, tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tiny_fs)}
    done = subprocess.run(
        [*CLI, "train", "-", "--run", str(tmp_path / "n"), *TINY, "--stdin-limit", "10M"],
        input=LINE * 150_000,  # 2.7 MB into 1 MiB
        env=env,
        capture_output=True,
        timeout=120,
    )
    err = done.stderr.decode()
    _one_error_line(done.returncode, err, "the disk is full; nothing was kept")
    assert list(tiny_fs.iterdir()) == [] and not (tmp_path / "n").exists()


def _start_train_on_a_silent_pipe(tmp_path: Path, spool_dir: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """`train -` reading a pipe that stays open and empty: it waits in its copy of standard input."""
    process = subprocess.Popen(
        [*CLI, "train", "-", "--run", str(tmp_path / "n"), *TINY],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "TMPDIR": str(spool_dir)},
    )
    assert process.stdin is not None
    process.stdin.write(LINE * 10)
    process.stdin.flush()
    spool = spool_dir / f"charrnn-stdin-{process.pid}.txt"
    for _ in range(1200):  # up to two minutes for torch to import on a busy machine
        if spool.exists() or process.poll() is not None:
            break
        time.sleep(0.1)
    assert spool.exists(), process.stderr.read().decode() if process.poll() is not None else "no copy appeared"
    return process, spool


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["INT", "TERM", "HUP"])
def test_a_signal_while_copying_removes_the_copy(signum: int, tmp_path: Path, spool_dir: Path) -> None:
    process, spool = _start_train_on_a_silent_pipe(tmp_path, spool_dir)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode in (-signum, 128 + signum), err
    assert not spool.exists()
    assert not (tmp_path / "n").exists()


def test_a_copy_left_by_sigkill_is_removed_by_the_next_run(
    trained: Path, tmp_path: Path, spool_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    process, spool = _start_train_on_a_silent_pipe(tmp_path, spool_dir)
    process.kill()
    process.communicate(timeout=60)
    assert spool.exists()  # what a SIGKILL leaves
    code, _, err = _with_stdin(capsys, monkeypatch, Stdin(LINE * 20), "eval", str(trained), "-")
    assert code == 0, err
    assert not spool.exists()


def test_the_sweep_removes_only_stale_copies(spool_dir: Path) -> None:
    """A copy is stale when no process holds its lock: a live one (held here) and files that are
    not copies stay."""
    stale = spool_dir / "charrnn-stdin-4000000.txt"
    live = spool_dir / "charrnn-stdin-4000001.txt"
    others = [spool_dir / "charrnn-stdin-notapid.txt", spool_dir / "notes.txt", spool_dir / "charrnn-stdin-5.txt.bak"]
    for path in (stale, live, *others):
        path.write_bytes(b"x")
    holder = os.open(live, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        assert remove_stale_spools(spool_dir) == [stale]
    finally:
        os.close(holder)
    assert sorted(spool_dir.iterdir()) == sorted([live, *others])
    assert remove_stale_spools(spool_dir) == [live]  # its holder is gone now


def test_a_stale_copy_with_this_process_s_pid_is_replaced(spool_dir: Path) -> None:
    """In a container a pid comes back: a copy a killed process of the same pid left is stale."""
    left = spool_dir / f"charrnn-stdin-{os.getpid()}.txt"
    left.write_bytes(b"old text from a killed process\n" * 100)
    sys_stdin = sys.stdin
    sys.stdin = Stdin(b"new text\n" * 10)  # type: ignore[assignment]
    try:
        corpus = find_corpus(["-"], spool_stdin=True)
    finally:
        sys.stdin = sys_stdin
    assert corpus.files == (left,)
    assert corpus.read_text() == "new text\n" * 10
    assert corpus.describe() == "standard input"
    remove_spool()
    assert list(spool_dir.iterdir()) == []

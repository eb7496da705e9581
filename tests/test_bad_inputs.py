"""Promise: a bad input to `train`, `eval` or `sample` gives exit status 1 (or 2 for a malformed
command line), exactly one line on stderr that starts "charrnn: error:" and names the problem, no
traceback, and no change on disk: a failing command creates nothing (not even a half-made run
directory) and alters nothing that was there.

The commands run in this process through `charrnn.cli.main` (the same code the `charrnn` script
runs), which keeps a sweep of many cases fast; a few run as real subprocesses at the end.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import TINY, TINY_MODEL, charrnn, copied, in_process

from charrnn.config import TrainConfig
from charrnn.data.corpus import find_corpus
from charrnn.training import train

MODEL = TINY_MODEL
SMALL = TrainConfig(batch_size=4, seq_len=16, eval_interval=5, log_interval=5, max_steps=5, device="cpu")


def _bytes(path: Path, data: bytes) -> None:
    path.write_bytes(data)


GOOD_PREFIX = "héllo wörld\n".encode() * 100  # 1400 bytes of valid UTF-8 before the bad one


def _invalid_utf8(w: Path) -> None:
    _bytes(w / "bad.txt", GOOD_PREFIX + b"\xff\xfe tail")


def _binaries(w: Path) -> None:
    (w / "bins").mkdir()
    _bytes(w / "bins" / "a.bin", bytes(range(256)) * 8)
    _bytes(w / "bins" / "b.so", b"\x7fELF\x00\x00\x00" * 100)


def _fifo(w: Path) -> None:
    os.mkfifo(w / "pipe")


def _run_on_own_corpus(w: Path) -> None:
    """A run trained on its own copy of the corpus, for the cases that change or delete that copy."""
    shutil.copy(w / "corpus.txt", w / "own.txt")
    train(find_corpus([str(w / "own.txt")]), MODEL, SMALL, w / "own-run")


def _changed_corpus(w: Path) -> None:
    _run_on_own_corpus(w)
    with open(w / "own.txt", "a") as handle:
        handle.write("one more line\n")


def _deleted_corpus(w: Path) -> None:
    _run_on_own_corpus(w)
    (w / "own.txt").unlink()


def _unreadable(w: Path) -> None:
    (w / "locked.txt").write_text("some text that nobody may read\n" * 50)
    (w / "locked.txt").chmod(0)
    if os.access(w / "locked.txt", os.R_OK):
        pytest.skip(
            "as root chmod 000 does not stop reads here: see test_an_unreadable_corpus_is_refused_even_when_tests_run_as_root"
        )


@dataclass(frozen=True)
class Case:
    args: Callable[[Path], list[str]]  # the command line, given the test's directory
    phrase: str  # what the one error line must say
    setup: Callable[[Path], None] | None = None
    code: int = 1


def _train(*args: str) -> Callable[[Path], list[str]]:
    """`train CORPUS --run W/new-run ARGS` (ARGS may use {w} for the test directory)."""
    return lambda w: ["train", f"{w}/corpus.txt", "--run", f"{w}/new-run", *TINY, *(a.format(w=w) for a in args)]


def _cmd(*args: str) -> Callable[[Path], list[str]]:
    return lambda w: [a.format(w=w) for a in args]


CASES: dict[str, Case] = {
    # --- train: the corpus ---
    "corpus missing": Case(_cmd("train", "{w}/nope.txt", "--run", "{w}/new-run"), "no such file or directory"),
    "corpus unreadable": Case(_cmd("train", "{w}/locked.txt", "--run", "{w}/new-run"), "cannot read", _unreadable),
    "corpus is a fifo": Case(_cmd("train", "{w}/pipe", "--run", "{w}/new-run"), "not a regular file", _fifo),
    "corpus is a directory of binaries": Case(
        _cmd("train", "{w}/bins", "--run", "{w}/new-run"), "looks like a binary file", _binaries
    ),
    "corpus directory is empty": Case(
        _cmd("train", "{w}/nothing", "--run", "{w}/new-run"), "no files matching", lambda w: (w / "nothing").mkdir()
    ),
    "corpus is invalid UTF-8": Case(
        _cmd("train", "{w}/bad.txt", "--run", "{w}/new-run"),
        "bad.txt is not valid utf-8: bad byte at offset 1400",
        _invalid_utf8,
    ),
    "corpus has NUL bytes": Case(
        _cmd("train", "{w}/nul.txt", "--run", "{w}/new-run"),
        "looks like a binary file",
        lambda w: _bytes(w / "nul.txt", b"text\x00more text\n" * 20),
    ),
    "corpus is empty": Case(
        _cmd("train", "{w}/empty.txt", "--run", "{w}/new-run", "--quiet"),
        "is empty",
        lambda w: _bytes(w / "empty.txt", b""),
    ),
    "corpus is one character": Case(
        _cmd("train", "{w}/one.txt", "--run", "{w}/new-run", "--quiet"),
        "too small",
        lambda w: _bytes(w / "one.txt", b"x"),
    ),
    "corpus shorter than one sequence": Case(
        _cmd("train", "{w}/short.txt", "--run", "{w}/new-run", "--seq-len", "64", "--quiet"),
        "fewer than one sequence",
        lambda w: _bytes(w / "short.txt", b"just a few words of text, nothing more\n"),
    ),
    "corpus is one symbol repeated": Case(
        _cmd("train", "{w}/aaa.txt", "--run", "{w}/new-run", "--quiet"),
        "one symbol ('a') repeated",
        lambda w: _bytes(w / "aaa.txt", b"a" * 5000),
    ),
    "corpus encoding unknown": Case(_train("--encoding", "klingon"), "unknown encoding"),
    "validation file missing": Case(_train("--val-file", "{w}/nope.txt"), "no such file or directory"),
    # --- train: sizes and settings ---
    "hidden 0": Case(_train("--hidden", "0"), "--hidden must be in 1.."),
    "hidden huge": Case(_train("--hidden", "10000000"), "--hidden must be in 1.."),
    "layers 0": Case(_train("--layers", "0"), "--layers must be in 1.."),
    "embed -5": Case(_train("--embed", "-5"), "--embed must be in 1.."),
    "batch size -1": Case(_train("--batch-size", "-1"), "--batch-size must be in 1.."),
    "seq len 0": Case(_train("--seq-len", "0"), "--seq-len must be in 1.."),
    "hidden not a number": Case(_train("--hidden", "lots"), "Invalid value for '--hidden'", code=2),
    "lr not a number": Case(_train("--lr", "fast"), "Invalid value for '--lr'", code=2),
    "lr zero": Case(_train("--lr", "0"), "--lr must be in (0, 10]"),
    "lr nan": Case(_train("--lr", "nan"), "--lr must be in (0, 10]"),
    "dropout 1": Case(_train("--dropout", "1"), "--dropout-hidden must be in [0, 1)"),
    "weight drop 1": Case(_train("--weight-drop", "1"), "--weight-drop must be in [0, 1)"),
    "val frac 1.5": Case(_train("--val-frac", "1.5"), "--val-frac must be in [0, 1)"),
    "val and test leave nothing": Case(_train("--val-frac", "0.6", "--test-frac", "0.5"), "leave some text"),
    "max time abc": Case(_train("--max-time", "abc"), "cannot read duration 'abc'"),
    "max time zero": Case(_train("--max-time", "0s"), "duration must be positive"),
    "max steps 0": Case(_train("--max-steps", "0"), "--max-steps must be at least 1"),
    "unknown cell": Case(_train("--cell", "transformer"), "unknown cell 'transformer'"),
    "unknown tokenizer": Case(_train("--tokenizer", "words"), "unknown tokenizer 'words'"),
    "bpe without vocab size": Case(_train("--tokenizer", "bpe"), "--tokenizer bpe needs --vocab-size"),
    "unknown schedule": Case(_train("--schedule", "zigzag"), "unknown schedule"),
    "unknown device": Case(_train("--device", "tpu", "--quiet"), "device 'tpu'"),
    "unknown precision": Case(_train("--precision", "fp8"), "unknown precision"),
    "unknown option": Case(_train("--colour", "blue"), "No such option: --colour", code=2),
    # --- train: the run directory ---
    "run dir under a regular file": Case(
        _cmd("train", "{w}/corpus.txt", "--run", "{w}/corpus.txt/run"), "cannot create run directory"
    ),
    "train into an existing run": Case(
        _cmd("train", "{w}/corpus.txt", "--run", "{w}/run"), "already exists: pass --resume"
    ),
    "resume a missing run": Case(_cmd("train", "--resume", "{w}/no-run"), "no run directory"),
    "resume a directory without checkpoint": Case(
        _cmd("train", "--resume", "{w}/nothing"), "has no last.safetensors", lambda w: (w / "nothing").mkdir()
    ),
    "resume with a corpus": Case(_cmd("train", "{w}/corpus.txt", "--resume", "{w}/run"), "give no CORPUS"),
    "resume after the corpus changed": Case(
        _cmd("train", "--resume", "{w}/own-run"), "the corpus changed", _changed_corpus
    ),
    "resume after the corpus was deleted": Case(
        _cmd("train", "--resume", "{w}/own-run"), "the run's corpus is gone", _deleted_corpus
    ),
    "resume with a bad budget": Case(_cmd("train", "--resume", "{w}/run", "--max-steps", "-3"), "--max-steps"),
    # --- eval ---
    "eval a missing path": Case(_cmd("eval", "{w}/no-run"), "no such run or checkpoint"),
    "eval a text file": Case(_cmd("eval", "{w}/corpus.txt"), "not a readable charrnn checkpoint"),
    "eval a directory without checkpoint": Case(_cmd("eval", "{w}"), "holds no checkpoint"),
    "eval invalid UTF-8 text": Case(
        _cmd("eval", "{w}/run", "{w}/bad.txt"), "bad.txt is not valid utf-8: bad byte at offset 1400", _invalid_utf8
    ),
    "eval an empty text": Case(
        _cmd("eval", "{w}/run", "{w}/empty.txt"), "is empty", lambda w: _bytes(w / "empty.txt", b"")
    ),
    "eval a missing text": Case(_cmd("eval", "{w}/run", "{w}/nope.txt"), "no such file or directory"),
    "eval streams 0": Case(_cmd("eval", "{w}/run", "--streams", "0"), "--streams must be at least 1"),
    "eval after the corpus was deleted": Case(_cmd("eval", "{w}/own-run"), "pass TEXT", _deleted_corpus),
    "eval unknown device": Case(_cmd("eval", "{w}/run", "--device", "tpu"), "device 'tpu'"),
    # --- sample ---
    "sample a missing run": Case(_cmd("sample", "{w}/no-run"), "no such run or checkpoint"),
    "sample a text file": Case(_cmd("sample", "{w}/corpus.txt"), "not a readable charrnn checkpoint"),
    "length 10^12": Case(_cmd("sample", "{w}/run", "--length", "1000000000000"), "--length must be in 0.."),
    "length -1": Case(_cmd("sample", "{w}/run", "--length", "-1"), "--length must be in 0.."),
    "length not a number": Case(_cmd("sample", "{w}/run", "--length", "long"), "Invalid value for '--length'", code=2),
    "negative temperature": Case(_cmd("sample", "{w}/run", "--temperature", "-0.5"), "--temperature must be >= 0"),
    "temperature nan": Case(_cmd("sample", "{w}/run", "--temperature", "nan"), "--temperature must be >= 0"),
    "top-p 0": Case(_cmd("sample", "{w}/run", "--top-p", "0"), "--top-p must be in (0, 1]"),
    "top-p 1.5": Case(_cmd("sample", "{w}/run", "--top-p", "1.5"), "--top-p must be in (0, 1]"),
    "top-k -1": Case(_cmd("sample", "{w}/run", "--top-k", "-1"), "--top-k must be >= 0"),
    "num samples 0": Case(_cmd("sample", "{w}/run", "--num-samples", "0"), "--num-samples must be in 1.."),
    "seed -1": Case(_cmd("sample", "{w}/run", "--seed", "-1"), "--seed must be in 0.."),
    "prime of unknown characters only": Case(
        _cmd("sample", "{w}/run", "--prime", "日本語の文章"), "only characters the model never saw"
    ),
    "empty stop string": Case(_cmd("sample", "{w}/run", "--stop", ""), "--stop strings must not be empty"),
    "output in a missing directory": Case(
        _cmd("sample", "{w}/run", "--output", "{w}/no/such/dir/out.txt"), "does not exist"
    ),
    "output is a directory": Case(_cmd("sample", "{w}/run", "--output", "{w}/run"), "it is a directory"),
    "prime and prime file both": Case(
        _cmd("sample", "{w}/run", "--prime", "a", "--prime-file", "{w}/corpus.txt"), "not both"
    ),
    "prime file missing": Case(_cmd("sample", "{w}/run", "--prime-file", "{w}/nope.txt"), "no such file or directory"),
    "prime file invalid UTF-8": Case(
        _cmd("sample", "{w}/run", "--prime-file", "{w}/bad.txt"), "bad byte at offset 1400", _invalid_utf8
    ),
    "sample unknown device": Case(_cmd("sample", "{w}/run", "--device", "tpu"), "device 'tpu'"),
    "unknown command": Case(_cmd("generate", "{w}/run"), "No such command", code=2),
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def work(tmp_path: Path, tiny_trained: Path) -> Path:
    """A corpus and a small trained run (the session's `tiny_trained`), copied into the test's directory."""
    return copied(tiny_trained, tmp_path)


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and directory under root: kind, size, modification time and a digest of the bytes.

    A run's .lock file is only checked to exist: every process that takes the lock (a refused
    resume among them) writes its pid there, which is how a second writer learns whom it waits for.
    """
    seen: dict[str, tuple] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        if path.name == ".lock":
            seen[str(path)] = ("lock",)
        elif path.is_dir():
            seen[str(path)] = ("dir", info.st_mtime_ns)
        elif path.is_file() and os.access(path, os.R_OK) and info.st_mode & 0o444:
            seen[str(path)] = ("file", info.st_size, info.st_mtime_ns, hashlib.sha1(path.read_bytes()).hexdigest())
        else:
            seen[str(path)] = ("other", info.st_mode, info.st_mtime_ns)
    return seen


def test_the_sweep_is_wide() -> None:
    assert len(CASES) >= 30
    commands = {case.args(Path("/w"))[0] for case in CASES.values()}
    assert {"train", "eval", "sample"} <= commands


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gives_one_line_and_changes_nothing(
    name: str, work: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    case = CASES[name]
    monkeypatch.chdir(work)  # a default run directory (runs/...) would land here
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    if case.setup:
        case.setup(work)
    capsys.readouterr()
    before = snapshot(work)

    code, out, err = in_process(capsys, *case.args(work))

    assert code == case.code, err
    assert err.count("\n") == 1 and err.startswith("charrnn: error: "), err
    assert case.phrase in err, err
    assert "Traceback" not in err and "internal error" not in err, err
    if case.args(work)[0] != "train":  # train may have reported progress (reading the corpus) on stdout
        assert out == "", "a failing command printed output"
    assert snapshot(work) == before


def test_a_failed_train_leaves_no_run_directory(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Even when it fails late (after reading the corpus), nested directories included."""
    _bytes(work / "aaa.txt", b"a" * 5000)
    code, _, err = in_process(capsys, "train", str(work / "aaa.txt"), "--run", str(work / "a" / "b" / "run"), *TINY)
    assert code == 1, err
    assert not (work / "a").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["train", "{w}/bad.txt", "--run", "{w}/new-run"],
        ["train", "{w}/corpus.txt", "--run", "{w}/new-run", "--hidden", "abc"],
        ["sample", "{w}/run", "--top-p", "1.5"],
        ["eval", "{w}/corpus.txt"],
    ],
    ids=["invalid-utf8", "non-numeric", "top-p", "not-a-checkpoint"],
)
def test_the_real_command_line_gives_one_line(work: Path, args: list[str]) -> None:
    """A few of the cases through the installed entry point, in a separate process."""
    _invalid_utf8(work)
    before = snapshot(work)
    done = charrnn(*[a.format(w=work) for a in args])
    assert done.returncode in (1, 2)
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("charrnn: error: "), done.stderr
    assert snapshot(work) == before


def _without_root_file_access() -> None:
    """In the child before exec: drop the capabilities that let root read any file (prctl
    PR_CAPBSET_DROP of CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH), so chmod 000 binds it too."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def test_an_unreadable_corpus_is_refused_even_when_tests_run_as_root(tmp_path: Path) -> None:
    (tmp_path / "locked.txt").write_text("some text that nobody may read\n" * 50)
    (tmp_path / "locked.txt").chmod(0)
    before = snapshot(tmp_path)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "charrnn", "train", str(tmp_path / "locked.txt"), "--run", str(tmp_path / "run")],
            capture_output=True,
            text=True,
            timeout=120,
            preexec_fn=_without_root_file_access if os.geteuid() == 0 else None,
        )
    except subprocess.SubprocessError as exc:
        pytest.skip(f"cannot run a root process without its file-access capabilities here: {exc}")
    assert done.returncode == 1, done.stderr
    assert done.stderr == f"charrnn: error: cannot read {tmp_path / 'locked.txt'}: permission denied\n"
    assert snapshot(tmp_path) == before

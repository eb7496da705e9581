"""Shared fixtures: small real text, an isolated token cache, and a way to run the CLI."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

# Under pytest-xdist (`make test` runs two workers on two cores) each worker, and every process a
# test starts, computes with one thread: two workers that each spin a pool of threads for tiny
# models would only wait on each other. Set before torch is imported, so its pool starts at one.
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
import typer.main  # noqa: E402

if "PYTEST_XDIST_WORKER" in os.environ:
    torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent
SHAKESPEARE = ROOT.parent / "shared" / "corpora" / "tinyshakespeare.txt"
KJV = ROOT / "corpora" / "kjv.txt"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own token cache, so no test sees another's files."""
    monkeypatch.setenv("CHARRNN_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def one_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """One torch thread here and in subprocesses: on a small shared machine, spinning threads
    slow tiny models down by ten times or more. Files opt in with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_thread_per_module() -> Iterator[None]:
    """One torch thread for a whole module, its module-scoped fixtures (the runs it trains) too.
    Files opt in with `pytestmark = pytest.mark.usefixtures("one_thread_per_module")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted for one test, for real full disks (root, and a sandbox that allows it)."""
    mount = tmp_path / "fs"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
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


@pytest.fixture(scope="session")
def real_text() -> str:
    """About 60 KB of real English (the bundled corpus is always there)."""
    return KJV.read_text(encoding="utf-8")[:60_000]


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory: pytest.TempPathFactory, real_text: str) -> Path:
    """A directory holding corpus.txt (20,000 characters of real_text) and run/, a 5-step char run
    of a 1x32 LSTM trained on it: trained once per session (per xdist worker) for the tests that
    only need some real run. Never write into it: copy it (see `copied`)."""
    from charrnn.config import TrainConfig
    from charrnn.data.corpus import find_corpus
    from charrnn.training import train

    base = tmp_path_factory.mktemp("tiny-trained")
    (base / "corpus.txt").write_text(real_text[:20_000], encoding="utf-8")
    small = TrainConfig(batch_size=4, seq_len=16, eval_interval=5, log_interval=5, max_steps=5, device="cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(find_corpus([str(base / "corpus.txt")]), TINY_MODEL, small, base / "run",
              cache_dir=tmp_path_factory.mktemp("c"))  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    return base


def copied(source: Path, tmp_path: Path) -> Path:
    """A copy of the directory `source` in tmp_path (w/), for a test that may change it."""
    shutil.copytree(source, tmp_path / "w")
    return tmp_path / "w"


@pytest.fixture
def corpus_file(tmp_path: Path, real_text: str) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(real_text, encoding="utf-8")
    return path


@pytest.fixture
def shakespeare() -> Path:
    if not SHAKESPEARE.is_file():
        pytest.skip(f"benchmark text not present at {SHAKESPEARE}")
    return SHAKESPEARE


# The model of `tiny_trained`, as the library's train takes it.
TINY_MODEL = {"num_layers": 1, "hidden_size": 32, "embed_size": 16}

# Small, fast settings for CLI training runs in tests.
TINY = [
    "--hidden",
    "32",
    "--embed",
    "16",
    "--layers",
    "1",
    "--batch-size",
    "4",
    "--seq-len",
    "16",
    "--eval-interval",
    "10",
    "--log-interval",
    "5",
    "--quiet",
]


# The command line of `charrnn` as the subprocess tests run it: charrnn.cli.main, with the test
# hooks that the CHARRNN_TEST_* variables of its environment ask for (see tests/hooks.py).
HOOKS = Path(__file__).resolve().parent / "hooks.py"
CLI = [sys.executable, str(HOOKS)]


def charrnn(
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run `charrnn ARGS` in a subprocess (see `CLI`) and capture its output."""
    return subprocess.run(
        [*CLI, *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# typer's app turned into a click command, built once: building it reads every option's type hints
# and costs more than most refused commands take to run. Each call gets the command with the
# callbacks it was built with, since cli.main wraps them again on every call.
_BUILT: dict[int, tuple[Any, Any, dict[str, Any]]] = {}
_GET_COMMAND = typer.main.get_command


def _command_built_once(app: Any) -> Any:
    if id(app) not in _BUILT:
        command = _GET_COMMAND(app)
        subcommands = getattr(command, "commands", {})
        _BUILT[id(app)] = (app, command, {name: sub.callback for name, sub in subcommands.items()})
    _, command, callbacks = _BUILT[id(app)]
    for name, callback in callbacks.items():
        command.commands[name].callback = callback
    return command


def _exit_status_of_main(args: tuple[str, ...], stdin: str | None, env: dict[str, str] | None) -> int:
    """Run charrnn.cli.main(ARGS), standard input reading `stdin` where given; its exit status."""
    from charrnn.cli import main

    with contextlib.ExitStack() as context:
        context.enter_context(mock.patch.object(typer.main, "get_command", _command_built_once))
        context.enter_context(mock.patch.dict(os.environ, env or {}))
        if stdin is not None:
            context.enter_context(mock.patch.object(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode()))))
        exited = context.enter_context(pytest.raises(SystemExit))
        main(list(args))
    return exited.value.code or 0


def in_process(capsys: pytest.CaptureFixture[str], *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    """Run `charrnn ARGS` through charrnn.cli.main in this process (no second torch import, no
    test hooks): its exit status, standard output and standard error."""
    capsys.readouterr()
    code = _exit_status_of_main(args, stdin, None)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_in_process(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`charrnn ARGS` as `charrnn` (the subprocess) gives it, run as `in_process` runs it: for the
    tests whose process is not what they test, and fixtures wider than a test (no capsys). The
    output is caught here; `env` is added to the environment while the command runs."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = _exit_status_of_main(args, None, env)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


# --- checkpoints built by hand, for the tests of reading them ---

CHECKPOINT_TEXT = "It was the best of times, it was the worst of times.\n" * 4


class RunsACommand:
    """Unpickling this runs `touch MARKER`: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def checkpoint_payload(num_layers: int = 1, version: int | None = None) -> dict[str, Any]:
    """The contents of a small, valid checkpoint (char model, untrained weights), of format
    `version` (default: the current one; 1 for what charrnn 0.1 wrote with torch.save)."""
    from charrnn.checkpoint import FORMAT, FORMAT_VERSION
    from charrnn.config import ModelConfig, TrainConfig, asdict
    from charrnn.data.tokenizers import CharVocabCounter
    from charrnn.model import RNNLanguageModel

    counter = CharVocabCounter()
    counter.update(CHECKPOINT_TEXT)
    tokenizer = counter.build()
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, num_layers=num_layers, hidden_size=32, embed_size=16)
    torch.manual_seed(0)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION if version is None else version,
        "model_config": asdict(cfg),
        "train_config": asdict(TrainConfig()),
        "tokenizer": tokenizer.to_state(),
        "model": RNNLanguageModel(cfg).state_dict(),
        "corpus": {},
        "metrics": {"step": 1, "val_loss": None, "best_val_loss": None},
    }


def safetensors_parts(raw: bytes) -> tuple[dict[str, Any], bytes]:
    """A safetensors file's JSON header (with `__metadata__`) and its data section."""
    length = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


def safetensors_file(header: dict[str, Any], data: bytes, length: int | None = None) -> bytes:
    """A safetensors file laid out by hand: the header's length (or a `length` that lies), header, data."""
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + data

"""Shared fixtures: small real text, an isolated token cache, and a way to run the CLI."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import typer.main

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
    import shutil

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


def in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run `charrnn ARGS` through charrnn.cli.main in this process (no second torch import, no
    test hooks): its exit status, standard output and standard error."""
    from unittest import mock

    from charrnn.cli import main

    capsys.readouterr()
    with mock.patch.object(typer.main, "get_command", _command_built_once), pytest.raises(SystemExit) as exited:
        main(list(args))
    captured = capsys.readouterr()
    return exited.value.code or 0, captured.out, captured.err


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

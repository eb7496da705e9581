"""Promise: Ctrl-C (SIGINT) or SIGTERM stops training gracefully, and a second Ctrl-C stops it at once.

The first signal lets the current step finish, saves last.safetensors, prints where it saved and how to
resume, and exits 130 (SIGINT) or 143 (SIGTERM) within seconds. A second signal while that save
is under way exits immediately, and still leaves every file whole: saves are atomic renames.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import CLI, TINY

from charrnn.checkpoint import load_checkpoint, model_from_checkpoint
from charrnn.config import TrainConfig
from charrnn.data.corpus import find_corpus
from charrnn.training import resume, train

BIG = "1000000"  # a budget no test reaches: every run here ends by a signal


pytestmark = pytest.mark.usefixtures("one_thread")


def _start(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(condition: Callable[[], bool], proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"exited early ({proc.returncode}): {proc.stderr.read() if proc.stderr else ''}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def _training(run: Path) -> bool:
    """At least one metrics record: the loop is running."""
    metrics = run / "metrics.jsonl"
    return metrics.exists() and metrics.stat().st_size > 0


@pytest.mark.parametrize(("name", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_first_signal_saves_explains_and_exits(tmp_path: Path, corpus_file: Path, name: str, code: int) -> None:
    run = tmp_path / "run"
    proc = _start(["train", str(corpus_file), "--run", str(run), *TINY, "--max-steps", BIG, "--log-interval", "1"])
    _wait_for(lambda: _training(run), proc)
    sent = time.monotonic()
    proc.send_signal(getattr(signal, name))
    _, err = proc.communicate(timeout=30)
    took = time.monotonic() - sent

    assert proc.returncode == code, err
    assert took < 5, f"took {took:.1f}s to stop"
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert f"continue with: charrnn train --resume {run}" in lines[0]
    saved = re.search(r"saved step (\d+) to (\S+);", lines[0])
    assert saved and saved.group(2) == str(run / "last.safetensors"), lines[0]
    payload = load_checkpoint(run / "last.safetensors")
    assert payload["metrics"]["step"] == int(saved.group(1)) > 0
    model_from_checkpoint(payload)
    # ... and the run goes on from there.
    step = int(saved.group(1))
    assert resume(run, budget={"max_steps": step + 2}).steps == step + 2


def test_second_ctrl_c_exits_at_once_without_damage(tmp_path: Path, corpus_file: Path) -> None:
    run = tmp_path / "run"
    # A finished run whose only saves are at its end (step 10).
    quiet_saves = TrainConfig(
        batch_size=4, seq_len=16, eval_interval=int(BIG), save_interval=int(BIG), log_interval=1, max_steps=10
    )
    train(find_corpus([str(corpus_file)]), {"num_layers": 1, "hidden_size": 32, "embed_size": 16}, quiet_saves, run)
    before = {name: (run / name).read_bytes() for name in ("last.safetensors", "best.safetensors")}

    # Continue it with every checkpoint save held for 20 s between writing and renaming.
    proc = _start(["train", "--resume", str(run), "--max-steps", BIG], env={"CHARRNN_TEST_SLOW_SAVE": "20"})
    lines = (run / "metrics.jsonl").read_text().count("\n")
    _wait_for(lambda: (run / "metrics.jsonl").read_text().count("\n") > lines, proc)
    proc.send_signal(signal.SIGINT)  # first: finish the step, then save (which now hangs)
    _wait_for(lambda: (run / f".last.safetensors.{proc.pid}.tmp").exists(), proc)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)  # second: out now
    proc.communicate(timeout=30)
    took = time.monotonic() - sent

    assert proc.returncode == 130
    assert took < 5, f"took {took:.1f}s to exit on the second Ctrl-C"
    # The save in flight never replaced anything: both checkpoints are the ones from before.
    assert {name: (run / name).read_bytes() for name in before} == before
    assert load_checkpoint(run / "last.safetensors")["metrics"]["step"] == 10
    # The next writer clears the abandoned temporary file and carries on.
    assert resume(run, budget={"max_steps": 12}).steps == 12
    assert not list(run.glob(".*.tmp"))

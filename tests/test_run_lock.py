"""Promise: one writer per run. While `charrnn train` writes a run, a second `train` into it (or a
`--resume` of it) is refused with a message naming the writer's pid; readers (`sample`, `eval`) are
not blocked. The lock is an flock the kernel drops when its holder dies, so after a SIGKILL the
next `train --resume` takes the run at once, with no stale lock to clear by hand.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY, charrnn

from charrnn.checkpoint import load_checkpoint, model_from_checkpoint
from charrnn.config import TrainConfig
from charrnn.data.corpus import find_corpus
from charrnn.errors import CharrnnError
from charrnn.sample.settings import SampleSettings
from charrnn.sample.torch_sampler import sample
from charrnn.training import resume, train

BIG = "1000000"
MODEL = {"num_layers": 1, "hidden_size": 32, "embed_size": 16}
CONFIG = TrainConfig(batch_size=4, seq_len=16, eval_interval=5, log_interval=1, max_steps=10, device="cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


def _start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "charrnn", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def _wait_until_training(proc: subprocess.Popen[str], run: Path) -> None:
    """The writer holds the lock (its pid is in .lock) and has logged a step since."""
    metrics = run / "metrics.jsonl"
    lines = metrics.read_text().count("\n") if metrics.exists() else 0
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "the writer never started training"
        locked = (run / ".lock").exists() and (run / ".lock").read_text() == str(proc.pid)
        if locked and metrics.exists() and metrics.read_text().count("\n") > lines:
            return
        time.sleep(0.01)


def _refusal(run: Path, pid: int) -> str:
    return f"charrnn: error: run {run} is in use by another charrnn train (pid {pid})\n"


def test_a_second_writer_is_refused_until_the_first_dies(tmp_path: Path, corpus_file: Path) -> None:
    run = tmp_path / "run"
    train(find_corpus([str(corpus_file)]), MODEL, CONFIG, run)
    first = _start("train", "--resume", str(run), "--max-steps", BIG, "--quiet")
    try:
        _wait_until_training(first, run)

        with pytest.raises(CharrnnError, match=rf"in use by another charrnn train \(pid {first.pid}\)"):
            resume(run)

        # Readers are not writers: the checkpoints being replaced under them still load and sample.
        model, tokenizer = model_from_checkpoint(load_checkpoint(run))
        assert sample(model, tokenizer, "The ", SampleSettings(length=20, seed=1)).texts[0]
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=30)

    # The kernel dropped the dead writer's lock: the run can be taken straight away.
    step = load_checkpoint(run / "last.safetensors")["metrics"]["step"]
    assert resume(run, budget={"max_steps": step + 1}).steps == step + 1


def test_two_fresh_trainings_into_one_run_directory(tmp_path: Path, corpus_file: Path) -> None:
    """Before its first checkpoint a new run is guarded by the lock too."""
    run = tmp_path / "run"
    first = _start("train", str(corpus_file), "--run", str(run), *TINY, "--max-steps", BIG, "--eval-interval", BIG)
    try:
        _wait_until_training(first, run)
        assert not (run / "last.safetensors").exists()

        second = charrnn("train", str(corpus_file), "--run", str(run), *TINY)
        assert second.returncode == 1
        assert second.stderr == _refusal(run, first.pid)
        assert first.poll() is None, "the refused second writer disturbed the first"
        assert os.listdir(run)  # and did not tidy away the first writer's run
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=30)

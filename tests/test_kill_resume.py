"""Promise: `charrnn train` can be killed at any moment (SIGKILL, power cut) without losing the run.

A harness trains with a save after every step and kills the process again and again: at random
moments from its start (while it imports, reads the corpus, trains or saves) and at random short
delays after a checkpoint write has begun. CHARRNN_TEST_SLOW_SAVE (tests/hooks.py) holds each
save between writing its temporary file and renaming it, so many kills land mid-save. After each
kill every file of the run must be whole: best.safetensors and last.safetensors load and hold a usable model,
config.json parses, metrics.jsonl is valid JSON up to its last complete line, and the run resumes
to completion (one more step here, in this process); then the next kill round resumes it again.
Two runs are killed side by side, since starting a process is most of the cost.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import CLI, TINY, charrnn

from charrnn.checkpoint import load_checkpoint, model_from_checkpoint
from charrnn.training import resume

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

KILLS = 12
BIG = "1000000"  # a budget no process here reaches: every one ends by a kill


def _saving(run: Path, pid: int) -> bool:
    """Process `pid` is writing a file of the run: its temporary file exists."""
    try:
        return any(name.endswith(f".{pid}.tmp") for name in os.listdir(run))
    except FileNotFoundError:
        return False


def _check_whole(run: Path) -> int | None:
    """Assert that every file the run holds is whole; return the step last.safetensors holds (None: no last.safetensors)."""
    step = None
    for name in ("best.safetensors", "last.safetensors"):
        path = run / name
        if path.exists():
            payload = load_checkpoint(path)  # raises on a truncated or corrupt file
            model_from_checkpoint(payload)  # shapes match, weights finite
            if name == "last.safetensors":
                assert isinstance(payload.get("train_state"), dict), "last.safetensors lacks its training state"
                step = payload["metrics"]["step"]
    if (run / "config.json").exists():
        json.loads((run / "config.json").read_text())
    if (run / "metrics.jsonl").exists():
        text = (run / "metrics.jsonl").read_text()
        complete = text[: text.rfind("\n") + 1]
        for line in complete.splitlines():
            json.loads(line)
    return step


def _wait_for_a_save(run: Path, proc: subprocess.Popen[bytes], *, also_first_checkpoint: bool) -> None:
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if (run / f".last.safetensors.{proc.pid}.tmp").exists() and (
            not also_first_checkpoint or (run / "last.safetensors").exists()
        ):
            return
        time.sleep(0.001)


@dataclass
class Tally:
    kills: int = 0
    mid_save: int = 0  # kills that found a save under way
    resumed: int = 0  # kills after which the run resumed and finished in this process


def _kill_repeatedly(run: Path, corpus: Path, kills: int, seed: int, resume_lock: threading.Lock) -> Tally:
    rng = random.Random(seed)
    tally = Tally()
    env = {**os.environ, "CHARRNN_TEST_SLOW_SAVE": "0.02"}
    fresh = [*CLI, "train", str(corpus), "--run", str(run), *TINY, "--cell", "gru"]
    fresh += ["--save-interval", "1", "--max-steps", BIG, "--device", "cpu"]
    again = [*CLI, "train", "--resume", str(run), "--max-steps", BIG, "--quiet"]
    for kill in range(kills):
        command = again if (run / "last.safetensors").exists() else fresh
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kill % 4 == 0:
            time.sleep(rng.uniform(0.0, 2.5))  # anywhere: imports, reading the corpus, training, saving
        else:
            # Wait for this process's first checkpoint write (and, mostly, for a fresh run's first
            # last.safetensors to land), then kill at once or a little later.
            _wait_for_a_save(run, proc, also_first_checkpoint=kill % 8 != 1)
            time.sleep(rng.choice([0.0, 0.005, rng.uniform(0.0, 0.2)]))
        tally.mid_save += _saving(run, proc.pid)
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL, f"{run}: kill {kill} ended on its own ({proc.returncode}): {err!r}"
        tally.kills += 1

        step = _check_whole(run)
        if step is not None:
            # The run resumes and finishes (the budget is one more step); the next round resumes it again.
            with resume_lock:
                assert resume(run, budget={"max_steps": step + 1}).steps == step + 1
            tally.resumed += 1
            _check_whole(run)
    return tally


def test_training_survives_being_killed_at_any_moment(tmp_path: Path, corpus_file: Path) -> None:
    runs = [tmp_path / "run-a", tmp_path / "run-b"]
    resume_lock = threading.Lock()
    with ThreadPoolExecutor(len(runs)) as pool:
        jobs = [
            pool.submit(_kill_repeatedly, run, corpus_file, KILLS // len(runs), seed, resume_lock)
            for seed, run in enumerate(runs)
        ]
        tallies = [job.result() for job in jobs]
    total = Tally(*(sum(getattr(t, f) for t in tallies) for f in ("kills", "mid_save", "resumed")))
    assert total.kills >= KILLS
    assert total.mid_save >= KILLS // 4, f"only {total.mid_save} of {total.kills} kills landed during a save"
    assert total.resumed >= KILLS // 2

    for run in runs:
        final_step = _check_whole(run)
        assert final_step is not None
        done = charrnn("train", "--resume", str(run), "--max-steps", str(final_step + 3), "--quiet")
        assert done.returncode == 0, done.stderr
        assert _check_whole(run) == final_step + 3
        steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert steps == sorted(set(steps)), "metrics replayed after a resume were not trimmed"
        assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")], "temporary files left behind"

"""Promise: a non-finite loss never reaches the weights. An update whose loss or gradient is NaN
or infinite is skipped with a warning and training goes on; NONFINITE_LIMIT such updates in a row
stop training with a clear error, and the checkpoints saved before stay intact and finite.

The test hook poison_updates (tests/hooks.py, what CHARRNN_TEST_NAN_STEPS asks for in a
subprocess) poisons the loss of chosen updates, counting every update tried, skipped ones
included; the `charrnn` commands run through charrnn.cli.main in this process.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import TINY, run_in_process
from hooks import poison_updates

from charrnn.checkpoint import load_checkpoint, model_from_checkpoint
from charrnn.config import TrainConfig, asdict
from charrnn.data.corpus import find_corpus
from charrnn.training import NONFINITE_LIMIT, Report, resume, train

MODEL = {"num_layers": 1, "hidden_size": 32, "embed_size": 16}
CONFIG = TrainConfig(batch_size=4, seq_len=16, eval_interval=10, log_interval=5, max_steps=20, device="cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


def _all_finite(value: Any) -> bool:
    """Every floating-point tensor anywhere in a nested checkpoint structure is finite."""
    if isinstance(value, torch.Tensor):
        return not value.is_floating_point() or bool(torch.isfinite(value).all())
    if isinstance(value, dict):
        return all(_all_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_all_finite(v) for v in value)
    if isinstance(value, float):
        return math.isfinite(value)
    return True


def _assert_sound(path: Path) -> dict[str, Any]:
    payload = load_checkpoint(path)
    model_from_checkpoint(payload)  # refuses non-finite weights
    assert _all_finite(payload["model"])
    assert _all_finite(payload.get("train_state", {}).get("optimizer", {})), f"{path}: optimizer moments poisoned"
    return payload


def test_a_few_nonfinite_updates_are_skipped_with_a_warning(
    tmp_path: Path, corpus_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    poison_updates({5, 6, 13}, monkeypatch.setattr)
    messages: list[str] = []
    result = train(
        find_corpus([str(corpus_file)]), MODEL, CONFIG, tmp_path / "run", report=Report(on_message=messages.append)
    )

    assert result.steps == CONFIG.max_steps  # three updates skipped, twenty made
    warnings = [m for m in messages if "non-finite loss or gradient, update skipped" in m]
    assert len(warnings) == 3, messages
    assert all(math.isfinite(r["train_loss"]) for r in result.history)
    for name in ("last.safetensors", "best.safetensors"):
        _assert_sound(tmp_path / "run" / name)


def test_the_warning_reaches_the_user(tmp_path: Path, corpus_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    args = [a for a in TINY if a != "--quiet"]
    poison_updates({3}, monkeypatch.setattr)
    done = run_in_process("train", str(corpus_file), "--run", str(run), *args, "--max-steps", "8")
    assert done.returncode == 0, done.stderr
    assert "step 3: non-finite loss or gradient, update skipped" in done.stdout
    assert done.stderr == ""
    _assert_sound(run / "last.safetensors")


def test_nonfinite_from_some_point_on_stops_training_and_keeps_the_checkpoints(
    tmp_path: Path, corpus_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    train(find_corpus([str(corpus_file)]), MODEL, TrainConfig(**{**asdict(CONFIG), "max_steps": 10}), run)
    before = {name: (run / name).read_bytes() for name in ("last.safetensors", "best.safetensors")}

    # Continue it: updates 11 and 12 go through, then every one from the 13th is poisoned.
    with monkeypatch.context() as poisoning:
        poison_updates(set(range(13, 100)), poisoning.setattr)
        poisoned = run_in_process("train", "--resume", str(run), "--max-steps", "60", "--quiet")

    assert poisoned.returncode == 1
    assert poisoned.stderr == (
        f"charrnn: error: training diverged: {NONFINITE_LIMIT} steps in a row had a non-finite loss; "
        f"try a lower --lr; the last good checkpoint is {run / 'last.safetensors'}\n"
    )
    assert {name: (run / name).read_bytes() for name in before} == before
    for name in before:
        assert _assert_sound(run / name)["metrics"]["step"] == 10
    # Without the poison the run goes on from there.
    assert resume(run, budget={"max_steps": 12}).steps == 12


def test_nonfinite_from_the_start_fails_and_leaves_no_run(
    tmp_path: Path, corpus_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    poison_updates(set(range(1, 20)), monkeypatch.setattr)
    done = run_in_process("train", str(corpus_file), "--run", str(run), *TINY, "--max-steps", "10")
    assert done.returncode == 1
    assert done.stderr.startswith("charrnn: error: training diverged") and done.stderr.endswith("nothing saved\n")
    assert not run.exists()

"""Promise: a run interrupted by SIGINT, SIGTERM or SIGKILL and resumed ends exactly where an
uninterrupted run with the same seed ends: the same weights, bit for bit, and the same metrics.

The interruption lands at a known step through the test hook CHARRNN_TEST_SIGNAL_AT_STEP /
CHARRNN_TEST_SIGNAL in tests/hooks.py. Step 23 is off the log, eval and save schedules and at an
epoch boundary (23 steps per epoch here), so SIGKILL makes the resume replay steps 21-23 from the
step-20 checkpoint and then cross into the second epoch.

SIGINT and SIGTERM runs go through the library in this process (the real signal handler catches
a real signal); SIGKILL needs a process to kill, so that run is the CLI in a subprocess, and its
resume here shows that a run continues exactly across processes too.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from conftest import TINY, charrnn
from hooks import signal_after_step

from charrnn.checkpoint import load_checkpoint
from charrnn.config import TrainConfig
from charrnn.data.corpus import find_corpus
from charrnn.errors import Interrupted
from charrnn.training import resume, train

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

STOP_AT = 23
MAX_STEPS = 30
CELLS = ("lstm", "gru")
MODEL = {"num_layers": 2, "hidden_size": 32, "embed_size": 16, "dropout_hidden": 0.2, "dropout_output": 0.2}
CONFIG = TrainConfig(
    batch_size=4, seq_len=16, eval_interval=10, log_interval=5, max_steps=MAX_STEPS, warmup_steps=5, device="cpu"
)
# The same run as CONFIG and MODEL, spelled as command-line options.
CLI_SETTINGS = [*TINY, "--layers", "2", "--dropout", "0.2", "--max-steps", str(MAX_STEPS), "--warmup", "5"]
CLI_SETTINGS += ["--device", "cpu", "--lr", str(CONFIG.lr)]  # presets must not differ from CONFIG


def _trajectory(run: Path) -> list[tuple]:
    """What must match between runs: every metrics record but its timings."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["train_loss"], r.get("val_loss")) for r in map(json.loads, lines)]


def _assert_same_weights(a: Path, b: Path) -> None:
    left, right = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    assert left.keys() == right.keys()
    for name in left:
        assert torch.equal(left[name], right[name]), f"{name} differs between {a} and {b}"


@pytest.fixture(scope="module")
def text_file(tmp_path_factory: pytest.TempPathFactory, real_text: str) -> Path:
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text(real_text[:1600], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, text_file: Path) -> dict[str, Path]:
    """One straight run per cell, shared by the interrupted runs it is compared with."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as every run compared with these
    runs = {}
    for cell in CELLS:
        run = tmp_path_factory.mktemp("straight") / cell
        cache = tmp_path_factory.mktemp("cache")
        train(find_corpus([str(text_file)]), {**MODEL, "cell": cell}, CONFIG, run, cache_dir=cache)
        runs[cell] = run
    torch.set_num_threads(threads)
    return runs


def test_the_interruption_point_is_off_every_schedule(tmp_path: Path, text_file: Path) -> None:
    assert STOP_AT % CONFIG.log_interval and STOP_AT % CONFIG.eval_interval
    from charrnn.data.batcher import StreamBatcher
    from charrnn.data.dataset import prepare_dataset

    dataset = prepare_dataset(find_corpus([str(text_file)]), CONFIG)
    batcher = StreamBatcher(dataset.train.tokens, CONFIG.batch_size, CONFIG.seq_len)
    assert batcher.steps_per_epoch == STOP_AT < MAX_STEPS


@pytest.mark.parametrize("signal_name", ["INT", "TERM", "KILL"])
@pytest.mark.parametrize("cell", CELLS)
def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    text_file: Path,
    uninterrupted: dict[str, Path],
    cell: str,
    signal_name: str,
) -> None:
    run = tmp_path / "run"
    hook = {"CHARRNN_TEST_SIGNAL_AT_STEP": str(STOP_AT), "CHARRNN_TEST_SIGNAL": signal_name}
    if signal_name == "KILL":
        killed = charrnn("train", str(text_file), "--run", str(run), "--cell", cell, *CLI_SETTINGS, env=hook)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        expected_step = 20  # the last save before the kill
    else:
        signum = getattr(signal, f"SIG{signal_name}")
        with monkeypatch.context() as patch, pytest.raises(Interrupted) as stopped:
            signal_after_step(STOP_AT, signum, patch.setattr)
            train(find_corpus([str(text_file)]), {**MODEL, "cell": cell}, CONFIG, run, handle_signals=True)
        assert stopped.value.exit_code == 128 + signum
        expected_step = STOP_AT
    assert load_checkpoint(run / "last.safetensors")["metrics"]["step"] == expected_step

    result = resume(run)
    assert result.steps == MAX_STEPS

    straight = uninterrupted[cell]
    _assert_same_weights(run / "last.safetensors", straight / "last.safetensors")
    _assert_same_weights(run / "best.safetensors", straight / "best.safetensors")
    assert _trajectory(run) == _trajectory(straight)

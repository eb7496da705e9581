"""Promise: a budget means what it says, and the final validation figure is the one `charrnn eval` gives.

- `--max-time` is the wall clock of the whole run: loading, training, every evaluation, the final
  exact one and the last checkpoint; training stops early enough for the end of the run to fit.
- On resume, a budget given replaces the saved one as a whole and is the run's total; one that is
  spent already is refused in one line, and the run directory is left byte for byte as it was.
- The final evaluation is uncapped and exact whatever stopped the run (patience too), for every
  tokenizer; metrics.jsonl labels each record's evaluation "interval" or "final".
- `charrnn eval` evaluates in the precision the run trained in, and says which.

Runs are tiny (a 32-unit LSTM, a few dozen steps); the clock is checked only as a property of the
code (what a run's records say of its own time, against a slowness the test itself makes), never as
a benchmark.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import in_process

import charrnn.devices
from charrnn.checkpoint import load_checkpoint
from charrnn.errors import CharrnnError
from charrnn.evaluate import evaluate_run
from charrnn.runs import train
from charrnn.training import Report
from charrnn.training_evaluation import Evaluator
from charrnn.training_evaluation import evaluate as real_evaluate

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL: dict[str, Any] = dict(
    hidden=32, embed=16, layers=1, batch_size=4, seq_len=16, eval_interval=10, log_interval=5, device="cpu"
)
TRAIN = sys.modules["charrnn.training"]
EVALUATION = sys.modules["charrnn.training_evaluation"]  # where the trainer runs its passes


def _records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _files(run: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(run.iterdir()) if path.is_file()}


def _exact(checkpoint: Path) -> float:
    [(_, row)] = evaluate_run(checkpoint, [], baselines=False, device="cpu")
    return row["nats_per_char"]


# --- 1. the time budget holds the end of the run ------------------------------------------------


def _slow_exact_passes(monkeypatch: pytest.MonkeyPatch, seconds_per_token: float) -> None:
    """Make every one-stream pass of the trainer take `seconds_per_token` a token more: a machine
    on which the final exact evaluation is slow."""

    def slow(model: Any, split: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("streams", 1) == 1:
            time.sleep(seconds_per_token * (split.num_tokens - 1))
        return real_evaluate(model, split, *args, **kwargs)

    monkeypatch.setattr(EVALUATION, "evaluate", slow)


@pytest.fixture
def warm_imports() -> None:
    """What a first run in a process imports (torch's compiler, by the optimizer; matplotlib),
    imported already: seconds on a busy machine that a short budget would spend on set-up."""
    import matplotlib.figure  # noqa: F401
    import torch._dynamo  # noqa: F401


@pytest.mark.usefixtures("warm_imports")
def test_the_time_budget_leaves_room_for_the_final_exact_evaluation(
    tmp_path: Path, corpus_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # About 3,000 validation tokens at 0.5 ms each: a final evaluation of some 1.5 s in a 5 s budget.
    _slow_exact_passes(monkeypatch, 5e-4)
    started = time.monotonic()
    options = {**SMALL, "eval_interval": 10**6, "log_interval": 1}
    messages: list[str] = []
    run = train(corpus_file, run=tmp_path / "run", **options, max_time=5, progress=Report(on_message=messages.append))
    took = time.monotonic() - started
    if len(run.history) == 1:
        pytest.skip("the machine is too busy: setting up spent the budget before a second step")
    final = run.history[-1]
    assert final["stop"] == "time budget reached"
    # The run's clock, which the final record and the last checkpoint end on, stays in the budget;
    # the old code trained the whole 5 s and then evaluated for 1.5 more.
    assert final["time"] <= 5.0
    assert run.summary is not None and run.summary.elapsed <= 5.0
    assert took < 5.0 + 2.0  # what is left after the clock: the final drawing, returning
    assert final["eval"] == "final"
    assert final["val_loss"] == pytest.approx(_exact(run.path / "last.safetensors"), abs=1e-6)
    [said] = [m for m in messages if "final exact evaluation" in m]
    assert said.startswith("stopping at ") and "of --max-time 5.0s" in said


@pytest.mark.usefixtures("warm_imports")
def test_the_clock_of_charrnn_train_starts_before_the_text_is_read(
    tmp_path: Path, corpus_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`charrnn.train` (and the command) count loading against --max-time, as the benchmarks do."""
    real_prepare = TRAIN.prepare_dataset

    def slow_prepare(*args: Any, **kwargs: Any) -> Any:
        time.sleep(1.5)
        return real_prepare(*args, **kwargs)

    monkeypatch.setattr(TRAIN, "prepare_dataset", slow_prepare)
    run = train(corpus_file, run=tmp_path / "run", **{**SMALL, "log_interval": 1}, max_time=4)
    assert run.history[0]["time"] >= 1.5  # the first step's clock holds the loading
    assert run.history[-1]["time"] <= 4.0


# --- 2. a resumed budget replaces the saved one and is the run's total ---------------------------


@pytest.fixture
def finished(tmp_path: Path, corpus_file: Path) -> Path:
    """A run that trained its whole budget of 20 steps."""
    return train(corpus_file, run=tmp_path / "run", **SMALL, max_steps=20).path


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--max-steps", "20", "all of --max-steps 20: give a larger --max-steps"),
        ("--max-steps", "15", "all of --max-steps 15: give a larger --max-steps"),
        ("--max-time", "0.01", "no time to train: give a larger --max-time"),
        (None, None, "all of --max-steps 20: give a larger --max-steps"),  # the saved budget, spent
    ],
)
def test_a_resume_whose_budget_is_spent_is_refused_and_touches_nothing(
    finished: Path, capsys: pytest.CaptureFixture[str], option: str | None, value: str | None, message: str
) -> None:
    before = _files(finished)
    given = [option, value] if option and value else []
    code, out, err = in_process(capsys, "train", "--resume", str(finished), *given, "--quiet")
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith(
        "charrnn: error: cannot resume: the run has already trained 20 steps"
    )
    assert message in err
    assert _files(finished) == before  # every file, the lock's included, byte for byte


def test_a_step_budget_given_on_resume_is_the_runs_total(finished: Path) -> None:
    resumed = train(run=finished, resume=True, max_steps=40)
    assert resumed.summary is not None and resumed.summary.steps == 40
    assert [r["step"] for r in _records(finished) if r.get("eval") == "final"] == [20, 40]


def test_a_time_budget_given_on_resume_clears_the_saved_step_budget(tmp_path: Path, corpus_file: Path) -> None:
    """The README's `--resume runs/kjv --max-time 10m`: the saved --max-steps no longer stops it."""
    run = train(corpus_file, run=tmp_path / "run", **SMALL, max_steps=5).path
    resumed = train(run=run, resume=True, max_time=3)
    assert resumed.summary is not None
    assert resumed.summary.steps > 5 and resumed.summary.stop_reason == "time budget reached"
    saved = load_checkpoint(run / "last.safetensors")["train_config"]
    assert {key: saved[key] for key in ("max_steps", "max_epochs", "max_time")} == {
        "max_steps": None,
        "max_epochs": None,
        "max_time": 3.0,
    }
    assert resumed.history[-1]["time"] <= 3.0  # the run's total, its first 5 steps included


def test_a_resume_of_a_run_in_use_is_refused_as_such(finished: Path) -> None:
    import fcntl
    import os

    fd = os.open(finished / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(CharrnnError, match="is in use by another charrnn train"):
            train(run=finished, resume=True, max_steps=40)
    finally:
        os.close(fd)


# --- 3. the final evaluation is exact, and is what `charrnn eval` gives --------------------------


def _lines_corpus(path: Path) -> Path:
    firsts, lasts = ("Ann", "Bo", "Cy", "Di", "Ed", "Flo", "Gus", "Hal"), ("Ray", "Lee", "Orr", "Poe", "Tam", "Vos")
    # 3,072 distinct lines: a validation split of about 2,700 tokens, well over --eval-tokens 500.
    path.write_text("".join(f"{a} {b} {c} {d}\n" for a in firsts for b in firsts for c in firsts for d in lasts))
    return path


@pytest.mark.parametrize("kind", ["char", "bpe", "lines"])
def test_the_final_validation_is_the_figure_charrnn_eval_gives(
    tmp_path: Path, corpus_file: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    options: dict[str, Any] = {"char": {}, "bpe": {"tokenizer": "bpe", "vocab_size": 300}, "lines": {"lines": True}}[
        kind
    ]
    corpus = _lines_corpus(tmp_path / "names.txt") if kind == "lines" else corpus_file
    # --eval-tokens 500 caps the interval estimates well below the validation split.
    run = train(corpus, run=tmp_path / "run", **SMALL, max_steps=30, eval_tokens=500, **options)
    records = _records(run.path)
    final = records[-1]
    code, out, err = in_process(capsys, "eval", str(run.path / "last.safetensors"), "--json", "--no-baselines")
    assert code == 0, err
    assert final["val_loss"] == pytest.approx(json.loads(out)["val"]["nats_per_char"], abs=1e-6)
    assert [r.get("eval") for r in records if "val_loss" in r] == ["interval", "interval", "final"]
    assert final["val_estimate"] != final["val_loss"]  # the capped estimate is another figure
    # The final weights were the best: `charrnn eval RUN` (its best checkpoint) gives it too.
    assert final["val_loss"] == pytest.approx(_exact(run.path), abs=1e-6)
    # And the compressors drawn beside the curves (config.json) are eval's, on the whole split.
    code, out, err = in_process(capsys, "eval", str(run.path), "--json")
    assert code == 0, err
    drawn = json.loads((run.path / "config.json").read_text())["baselines"]
    assert drawn == pytest.approx(json.loads(out)["val"]["baselines_bits_per_char"], abs=1e-9)


def test_a_stop_by_patience_ends_with_the_exact_evaluation(
    tmp_path: Path, corpus_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_validate = Evaluator.validate

    def worsening(self: Any, *, exact: bool = False) -> float | None:
        """Interval estimates that only get worse, so that patience stops the run at step 20."""
        return real_validate(self, exact=True) if exact else 10.0 + self.progress.step

    monkeypatch.setattr(Evaluator, "validate", worsening)
    run = train(corpus_file, run=tmp_path / "run", **SMALL, max_steps=100, patience=1, eval_tokens=500)
    final = run.history[-1]
    assert final["step"] == 20 and final["stop"] == "no improvement in 1 evaluations"
    assert final["val_loss"] == pytest.approx(_exact(run.path / "last.safetensors"), abs=1e-6)
    assert final.get("eval") == "final" and final["val_estimate"] == 30.0


# --- 4. the evaluation precision ----------------------------------------------------------------


def test_eval_runs_in_the_precision_the_run_trained_in(
    tmp_path: Path, corpus_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = train(corpus_file, run=tmp_path / "run", **SMALL, max_steps=10, precision="fp32").path
    asked: list[str] = []
    real = charrnn.devices.use_bf16

    def on_a_cuda_machine(precision: str, device: Any) -> bool:
        """What a machine with CUDA answers: 'auto' is bf16 there."""
        asked.append(precision)
        return precision in ("auto", "bf16") or real(precision, device)

    monkeypatch.setattr(charrnn.devices, "use_bf16", on_a_cuda_machine)
    [(_, row)] = evaluate_run(run, [], baselines=False, device="cpu")
    assert asked == ["fp32"]  # the old code asked for "auto", and ran the LSTM in bf16 where that is bf16
    assert row["nats_per_char"] == pytest.approx(_records(run)[-1]["val_loss"], abs=1e-6)


def test_a_bf16_run_is_evaluated_in_fp32_where_bf16_cannot_run_and_says_so() -> None:
    import torch

    from charrnn.config import ModelConfig
    from charrnn.data.dataset import Split
    from charrnn.data.tokenizers import CharTokenizer
    from charrnn.evaluate import eval_precision, evaluate
    from charrnn.model import RNNLanguageModel

    assert eval_precision("bf16", torch.device("cpu")) == "fp32"
    assert eval_precision("bf16", torch.device("cuda")) == "bf16"
    assert eval_precision("auto", torch.device("cpu")) == "auto"
    assert eval_precision("fp32", torch.device("cuda")) == "fp32"
    model = RNNLanguageModel(ModelConfig(vocab_size=4, hidden_size=8, embed_size=4, num_layers=1))
    split = Split(torch.tensor([0, 1, 2, 1], dtype=torch.uint8), 4)
    assert evaluate(model, split, CharTokenizer("abc")).precision == "fp32"  # what a result says it ran in

"""Training end to end, checkpoints, and exact resume (in process; the CLI and signals are tested elsewhere)."""

from __future__ import annotations

import ast
import math
import os
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

from charrnn import files
from charrnn.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from charrnn.config import TrainConfig
from charrnn.data.corpus import find_corpus
from charrnn.errors import CharrnnError, Interrupted
from charrnn.evaluate import evaluate_run
from charrnn.results import Listener
from charrnn.training import Report, resume, train
from charrnn.training_budget import lr_factor
from charrnn.training_state import Progress

SMALL_MODEL = dict(num_layers=1, hidden_size=64, embed_size=32, dropout_hidden=0.0, dropout_output=0.0)


def _cfg(**kw) -> TrainConfig:
    base = dict(batch_size=8, seq_len=32, eval_interval=20, log_interval=10, warmup_steps=5, lr=3e-3, val_frac=0.1)
    return TrainConfig(**{**base, **kw})


def test_tiny_model_learns_below_unigram_entropy(tmp_path: Path, corpus_file: Path, real_text: str) -> None:
    counts = Counter(real_text)
    total = sum(counts.values())
    unigram = -sum(c / total * math.log(c / total) for c in counts.values())  # nats per char
    result = train(find_corpus([str(corpus_file)]), SMALL_MODEL, _cfg(max_steps=150, lr=1e-2), tmp_path / "run")
    assert result.best_val is not None
    assert result.best_val < unigram - 0.5, (result.best_val, unigram)
    assert (tmp_path / "run" / "best.safetensors").is_file() and (tmp_path / "run" / "last.safetensors").is_file()
    records = [r for r in result.history if "val_loss" in r]
    assert records and all({"step", "time", "train_loss", "lr", "chars_per_sec"} <= r.keys() for r in records)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path: Path, corpus_file: Path, cell: str) -> None:
    settings = {**SMALL_MODEL, "cell": cell, "num_layers": 2, "dropout_hidden": 0.2, "dropout_output": 0.2}
    corpus = find_corpus([str(corpus_file)])
    straight = train(corpus, settings, _cfg(max_steps=60), tmp_path / "straight")

    def interrupt_at_20(record: dict) -> None:
        if record["step"] == 20:
            os.kill(os.getpid(), signal.SIGINT)  # caught: the run saves after its current step and stops

    with pytest.raises(Interrupted) as stopped:
        train(
            corpus,
            settings,
            _cfg(max_steps=60),
            tmp_path / "split",
            report=Report(on_log=interrupt_at_20),
            handle_signals=True,
        )
    assert stopped.value.exit_code == 130
    assert load_checkpoint(tmp_path / "split" / "last.safetensors")["train_state"]["progress"]["step"] == 21
    resumed = resume(tmp_path / "split")
    a = load_checkpoint(tmp_path / "straight" / "last.safetensors")["model"]
    b = load_checkpoint(tmp_path / "split" / "last.safetensors")["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.steps == straight.steps == 60
    key = lambda rs: [(r["step"], r["train_loss"], r.get("val_loss")) for r in rs if r["step"] > 21]  # noqa: E731
    assert key(resumed.history) == key(straight.history)


def test_resume_refuses_a_changed_corpus(tmp_path: Path, corpus_file: Path) -> None:
    train(find_corpus([str(corpus_file)]), SMALL_MODEL, _cfg(max_steps=5), tmp_path / "run")
    corpus_file.write_text(corpus_file.read_text() + "more text")
    with pytest.raises(CharrnnError, match="corpus changed"):
        resume(tmp_path / "run", budget={"max_steps": 10})


def test_resume_and_eval_read_the_validation_file_in_the_encoding_training_used(tmp_path: Path, real_text: str) -> None:
    corpus, held = tmp_path / "corpus.txt", tmp_path / "held.txt"
    corpus.write_text(real_text + "caf\u00e9\n", encoding="latin-1")
    held.write_text(real_text[:4000] + "caf\u00e9\n", encoding="latin-1")  # a lone 0xE9 byte is not UTF-8
    read = lambda path: find_corpus([str(path)], encoding="latin-1")  # noqa: E731
    train(read(corpus), SMALL_MODEL, _cfg(max_steps=5, val_frac=0.0), tmp_path / "run", val_corpus=read(held))

    messages: list[str] = []
    assert resume(tmp_path / "run", budget={"max_steps": 8}, report=Report(on_message=messages.append)).steps == 8
    assert any("token cache hit" in m for m in messages), messages  # the same text and encoding: the same cache
    own = dict(evaluate_run(tmp_path / "run", [], baselines=False, device="cpu"))["val"]
    given = dict(evaluate_run(tmp_path / "run", [str(held)], encoding="latin-1", baselines=False, device="cpu"))
    assert own == given[str(held)]


def test_existing_run_is_not_overwritten(tmp_path: Path, corpus_file: Path) -> None:
    train(find_corpus([str(corpus_file)]), SMALL_MODEL, _cfg(max_steps=5), tmp_path / "run")
    before = (tmp_path / "run" / "last.safetensors").read_bytes()
    with pytest.raises(CharrnnError, match="already exists"):
        train(find_corpus([str(corpus_file)]), SMALL_MODEL, _cfg(max_steps=5), tmp_path / "run")
    assert (tmp_path / "run" / "last.safetensors").read_bytes() == before


def test_checkpoint_round_trip_and_cpu_loading(tmp_path: Path, corpus_file: Path) -> None:
    train(find_corpus([str(corpus_file)]), SMALL_MODEL, _cfg(max_steps=5), tmp_path / "run")
    payload = load_checkpoint(tmp_path / "run")  # a run directory means its best checkpoint
    model, tokenizer = model_from_checkpoint(payload)
    assert next(model.parameters()).device.type == "cpu"
    assert tokenizer.decode(tokenizer.encode("In the beginning")) == "In the beginning"
    last = load_checkpoint(tmp_path / "run" / "last.safetensors")
    assert {"optimizer", "progress", "hidden", "rng_cpu"} <= last["train_state"].keys()
    assert last["train_state"]["progress"]["step"] == 5
    # The tokens trained on (Progress.tokens_seen) keep their saved name, chars_seen, for every format-2 reader.
    saved = last["train_state"]
    assert saved["progress"]["chars_seen"] == 5 * saved["batch_size"] * 32 and "tokens_seen" not in saved["progress"]


def test_the_tokens_trained_on_are_read_under_either_name() -> None:
    for name in ("chars_seen", "tokens_seen"):
        progress = Progress()
        progress.restore({"step": 3, name: 96})
        assert (progress.step, progress.tokens_seen) == (3, 96)
    assert Progress(tokens_seen=96).saved()["chars_seen"] == 96


def test_failed_save_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.safetensors"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}})
    before = path.read_bytes()
    real_open = open

    class FullDisk:
        """A file opened for writing that takes 7 bytes and then fails as a full disk does."""

        def __init__(self, *args: Any) -> None:
            self.handle = real_open(*args)

        def write(self, data: bytes) -> int:
            self.handle.write(data[:7])
            raise OSError(28, "No space left on device")

        def __getattr__(self, name: str) -> Any:
            return getattr(self.handle, name)

        def __enter__(self) -> FullDisk:
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()

    monkeypatch.setattr(files, "open", FullDisk, raising=False)
    with pytest.raises(CharrnnError, match="disk is full"):
        save_checkpoint(path, {"model": {"w": torch.zeros(3)}})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]  # no temporary file left behind


def test_learning_rate_schedule() -> None:
    cfg = TrainConfig(warmup_steps=10, min_lr_frac=0.1)
    assert lr_factor(cfg, 0, 0.0) == pytest.approx(0.1)
    assert lr_factor(cfg, 9, 0.0) == pytest.approx(1.0)
    assert lr_factor(cfg, 50, 0.5) == pytest.approx(0.55)
    assert lr_factor(cfg, 99, 1.0) == pytest.approx(0.1)
    assert lr_factor(TrainConfig(schedule="constant", warmup_steps=0), 500, 0.9) == 1.0


def test_a_time_budget_can_count_from_before_setup(tmp_path: Path, corpus_file: Path) -> None:
    # What the benchmarks do: the budget counts from their own start, data loading included.
    import time

    corpus = find_corpus([str(corpus_file)])
    spent = train(corpus, SMALL_MODEL, _cfg(max_time=5.0), tmp_path / "spent", budget_from=time.monotonic() - 60)
    assert spent.steps == 1 and spent.last_val is not None  # one step and the final evaluation, however late
    assert spent.history[-1]["time"] >= 60
    started = time.monotonic()
    setup_done: list[float] = []
    report = Report(on_start=lambda info: setup_done.append(time.monotonic()))
    cfg = _cfg(max_time=3.0, eval_interval=10**6, log_interval=1)
    timed = train(corpus, SMALL_MODEL, cfg, tmp_path / "timed", report=report, budget_from=started)
    assert timed.history[0]["time"] >= setup_done[0] - started  # the first step's clock includes the setup
    # The budget ends the run, its final evaluation inside it (tests/test_budgets.py times that part).
    assert timed.stop_reason == "time budget reached" and timed.last_val is not None


def test_subscribers_hear_the_start_every_record_each_evaluation_and_the_end(
    tmp_path: Path, corpus_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    heard: list[tuple[str, Any]] = []

    class Ear(Listener):
        def on_start(self, info: dict[str, Any]) -> None:
            heard.append(("start", info["start_step"]))

        def on_record(self, record: dict[str, Any]) -> None:
            heard.append(("record", record["step"]))

        def on_evaluated(self, record: dict[str, Any]) -> None:
            heard.append(("evaluated", record["step"]))

        def on_end(self, stop_reason: str) -> None:
            heard.append(("end", stop_reason))

    training = sys.modules["charrnn.training"]
    wire = training._subscribe
    monkeypatch.setattr(training, "_subscribe", lambda trainer: (wire(trainer), trainer.listeners.append(Ear()))[0])
    train(find_corpus([str(corpus_file)]), SMALL_MODEL, _cfg(max_steps=25), tmp_path / "run")
    assert heard == [
        ("start", 0),
        ("record", 10),
        ("record", 20),
        ("evaluated", 20),
        ("record", 25),
        ("evaluated", 25),
        ("end", "step budget reached"),
    ]


def test_the_loop_imports_none_of_its_subscribers() -> None:
    """curves.png, the samples and the display subscribe to the Trainer's events: it knows none of them."""
    source = (Path(__file__).resolve().parent.parent / "charrnn" / "training_loop.py").read_text()
    imported = {node.module for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom)}
    assert not imported & {"charrnn.plot", "charrnn.train_samples", "charrnn.display"}

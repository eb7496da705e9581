"""`charrnn runs`: one row per run, from its config.json and metrics.jsonl and the state of its lock."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import in_process

from charrnn.config import ModelConfig, TrainConfig
from charrnn.data.corpus import find_corpus
from charrnn.errors import CharrnnError
from charrnn.model import RNNLanguageModel
from charrnn.rundir import RunDir
from charrnn.runs_table import list_runs, run_row
from charrnn.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = {"vocab_size": 65, "cell": "gru", "num_layers": 2, "hidden_size": 48, "embed_size": 16}


def write_run(
    path: Path, val: list[float | None], *, stop: str | None = None, created: str = "2025-03-01T10:00:00+00:00"
) -> Path:
    """A run as training leaves it: one record per 10 steps with these validation losses (nats/char)."""
    path.mkdir(parents=True)
    config = {
        "model": MODEL,
        "train": {"tokenizer": "char", "batch_size": 4, "seq_len": 16},
        "corpus": {"files": ["/texts/kjv.txt", "/texts/more.txt"]},
        "created": created,
    }
    (path / "config.json").write_text(json.dumps(config))
    records: list[dict[str, Any]] = []
    for i, loss in enumerate(val, 1):
        records.append({"step": 10 * i, "time": 30.0 * i, "train_loss": 2.0, "lr": 1e-3, "chars_per_sec": 1e4})
        if loss is not None:
            records[-1]["val_loss"] = loss
    if stop:
        records[-1]["stop"] = stop
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    write_run(tmp_path / "slow", [2.0, 1.5], stop="step budget reached", created="2025-03-01T10:00:00+00:00")
    write_run(
        tmp_path / "good", [1.8, 1.1, 1.2], stop="no improvement in 1 evaluations", created="2025-03-02T10:00:00+00:00"
    )
    write_run(tmp_path / "killed", [1.9, 1.3, None, None], created="2025-03-03T10:00:00+00:00")
    write_run(tmp_path / "unscored", [None], stop="time budget reached", created="2025-03-04T10:00:00+00:00")
    (tmp_path / "not-a-run").mkdir()  # no config.json: not listed
    return tmp_path


def test_runs_are_sorted_best_validation_first_and_unscored_last(runs: Path) -> None:
    assert [row.name for row in list_runs(runs)] == ["good", "killed", "slow", "unscored"]


@pytest.mark.parametrize(
    ("sort", "order"),
    [
        ("created", ["unscored", "killed", "good", "slow"]),  # newest first
        ("name", ["good", "killed", "slow", "unscored"]),
        ("steps", ["killed", "good", "slow", "unscored"]),  # most first
    ],
)
def test_other_orders_on_request(runs: Path, sort: str, order: list[str]) -> None:
    assert [row.name for row in list_runs(runs, sort=sort)] == order


def test_a_row_says_what_the_run_is_and_how_it_ended(runs: Path) -> None:
    good = run_row(runs / "good")
    assert good.best_val_bits_per_char == pytest.approx(1.1 / math.log(2))
    assert (good.steps, good.time_s) == (30, 90.0)
    assert (good.status, good.reason) == ("stopped", "no improvement in 1 evaluations")
    assert (good.tokenizer, good.vocab_size, good.corpus) == ("char", 65, ["/texts/kjv.txt", "/texts/more.txt"])
    expected = sum(p.numel() for p in RNNLanguageModel(ModelConfig(**MODEL)).parameters())
    assert good.parameters == expected
    assert (run_row(runs / "slow").status, run_row(runs / "slow").reason) == ("finished", "step budget reached")
    assert (run_row(runs / "killed").status, run_row(runs / "killed").reason) == ("stopped", None)


def test_a_run_whose_lock_is_held_is_running(runs: Path) -> None:
    held = RunDir(runs / "killed")
    held.lock()  # as `charrnn train` holds it for the whole run
    try:
        row = run_row(runs / "killed")
        assert (row.status, row.reason) == ("running", f"pid {os.getpid()}")
    finally:
        held.unlock()
    assert run_row(runs / "killed").status == "stopped"
    again = RunDir(runs / "killed")
    again.lock()  # looking did not leave the lock taken
    again.unlock()


def test_the_table_on_the_command_line(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = in_process(capsys, "runs", str(runs))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert "4 runs in" in lines[0]
    body = [line for line in lines if line.startswith("│")]
    assert [line.split("│")[1].strip() for line in body] == ["good", "killed", "slow", "unscored"]
    good = body[0]
    assert "2025-03-02 10:00" in good and "kjv.txt +1" in good and "char (65)" in good and "1m30s" in good
    assert f"{1.1 / math.log(2):.4f}" in good and "stopped: no improvement in 1 evaluations" in good
    assert "finished" in body[2] and "step budget reached" not in body[2]


def test_json_for_scripts(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = in_process(capsys, "runs", str(runs), "--json", "--sort", "name")
    rows = json.loads(out)
    assert code == 0 and [row["name"] for row in rows] == ["good", "killed", "slow", "unscored"]
    assert rows[0]["best_val_bits_per_char"] == pytest.approx(1.1 / math.log(2))
    assert rows[3]["best_val_bits_per_char"] is None and rows[3]["status"] == "finished"
    assert set(rows[0]) >= {"created", "corpus", "tokenizer", "parameters", "steps", "time_s", "status", "reason"}


def test_a_torn_metrics_line_does_not_hide_the_run(runs: Path) -> None:
    with open(runs / "good" / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 40, "val_lo')
    assert run_row(runs / "good").steps == 30


def test_an_unreadable_config_is_a_row_saying_so(runs: Path) -> None:
    (runs / "slow" / "config.json").write_text("{not json")
    row = run_row(runs / "slow")
    assert row.status == "unreadable" and "cannot read" in (row.reason or "")


def test_an_empty_directory_says_there_are_no_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = in_process(capsys, "runs", str(tmp_path))
    assert code == 0 and out.strip() == f"no runs in {tmp_path}"


@pytest.mark.parametrize(
    ("args", "message"), [(["missing"], "no directory missing"), ([".", "--sort", "size"], "--sort must be one of")]
)
def test_bad_arguments_are_one_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = in_process(capsys, "runs", *args)
    assert code == 1 and out == "" and err.startswith("charrnn: error: ") and message in err


def test_the_default_directory_is_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    write_run(tmp_path / "runs" / "only", [1.5], stop="step budget reached")
    code, out, _ = in_process(capsys, "runs", "--json")
    assert code == 0 and [row["name"] for row in json.loads(out)] == ["only"]


def test_a_real_run_is_listed_as_training_reported_it(tmp_path: Path, corpus_file: Path) -> None:
    config = TrainConfig(batch_size=4, seq_len=16, eval_interval=10, log_interval=5, max_steps=20, device="cpu")
    result = train(
        find_corpus([str(corpus_file)]),
        {"num_layers": 1, "hidden_size": 32, "embed_size": 16},
        config,
        tmp_path / "run",
    )
    (row,) = list_runs(tmp_path)
    assert (row.name, row.steps, row.parameters, row.status) == ("run", 20, result.parameters, "finished")
    assert row.reason == result.stop_reason
    assert row.best_val_bits_per_char == pytest.approx(result.best_val / math.log(2))
    assert row.created is not None and row.corpus == [str(corpus_file.resolve())]


def test_sort_keys_are_checked_by_the_library(tmp_path: Path) -> None:
    with pytest.raises(CharrnnError, match="--sort must be one of val, created, name, steps"):
        list_runs(tmp_path, sort="size")


def test_a_run_of_charrnn_0_1_at_its_step_budget_is_finished() -> None:
    """0.1 recorded no stop reason: a run whose last record is at its --max-steps did finish."""
    row = run_row(Path(__file__).parent / "fixtures" / "format1")
    assert (row.status, row.reason, row.steps) == ("finished", "step budget reached", 40)
    assert row.parameters is not None and row.best_val_bits_per_char is not None

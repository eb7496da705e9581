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
from charrnn.training import train

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


def test_a_bad_metrics_line_before_the_last_is_a_row_saying_so(runs: Path) -> None:
    metrics = runs / "good" / "metrics.jsonl"
    lines = metrics.read_text().splitlines(keepends=True)
    metrics.write_text(lines[0] + '{"step": 20, "val_lo\n' + "".join(lines[1:]))
    row = run_row(runs / "good")
    assert row.status == "unreadable" and row.reason == "line 2 of metrics.jsonl is not a metrics record"


def test_the_lock_is_asked_one_way_by_everyone(runs: Path) -> None:
    """RunDir.holder is what `charrnn runs`, a fresh `train` and a `--resume` ask of a lock."""
    held = RunDir(runs / "killed")
    assert held.holder() is None
    held.lock()
    try:
        assert RunDir(runs / "killed").holder() == str(os.getpid())
        with pytest.raises(CharrnnError, match=rf"in use by another charrnn train \(pid {os.getpid()}\)"):
            RunDir(runs / "killed").refuse_if_locked()
    finally:
        held.unlock()
    assert RunDir(runs / "killed").holder() is None
    RunDir(runs / "killed").refuse_if_locked()


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


# ----- hostile run directories (issue 19, item 12): each a row saying so, the others listed -----

DEEP = "[" * 100_000 + "]" * 100_000


def _config(run: Path, **changes: Any) -> None:
    config = json.loads((run / "config.json").read_text())
    for dotted, value in changes.items():
        section, _, key = dotted.partition("__")
        if key:
            config[section][key] = value
        else:
            config[section] = value
    (run / "config.json").write_text(json.dumps(config))


def _replace(run: Path, name: str, make: Any) -> None:
    (run / name).unlink()
    make(run / name)


HOSTILE_CONFIGS: dict[str, tuple[Any, str]] = {
    "nested 100,000 deep": (lambda r: (r / "config.json").write_text(DEEP), "nested too deeply"),
    "a value nested 100,000 deep": (
        lambda r: (r / "config.json").write_text('{"model": ' + DEEP + "}"),
        "nested too deeply",
    ),
    "train is a string": (lambda r: _config(r, train="x"), '"train" is not an object'),
    "train is null": (lambda r: _config(r, train=None), '"train" is not an object'),
    "model is a list": (lambda r: _config(r, model=[1, 2]), '"model" is not an object'),
    "corpus.files is 5": (lambda r: _config(r, corpus__files=5), '"corpus.files" is not a list'),
    "corpus.files holds a number": (lambda r: _config(r, corpus__files=["a", 5]), '"corpus.files" is not a list'),
    "the tokenizer is a list": (lambda r: _config(r, train__tokenizer=["char"]), '"train.tokenizer" is not'),
    "vocab_size is a string": (lambda r: _config(r, model__vocab_size="65"), '"model.vocab_size" is not a whole'),
    "vocab_size is a float": (lambda r: _config(r, model__vocab_size=65.0), '"model.vocab_size" is not a whole'),
    "baselines is a string": (lambda r: _config(r, baselines="x"), '"baselines" is not an object'),
    "created is a number": (lambda r: _config(r, created=5), '"created" is not a date'),
    "config is a list": (lambda r: (r / "config.json").write_text("[1, 2]"), "not a JSON object"),
    "config is null": (lambda r: (r / "config.json").write_text("null"), "not a JSON object"),
    "config is binary": (lambda r: (r / "config.json").write_bytes(bytes(range(256)) * 4), "cannot read"),
    "config is a directory": (lambda r: _replace(r, "config.json", Path.mkdir), "is not a regular file"),
    "config links to /dev/zero": (
        lambda r: _replace(r, "config.json", lambda p: p.symlink_to("/dev/zero")),
        "is not a regular file",
    ),
    "config is a named pipe": (lambda r: _replace(r, "config.json", os.mkfifo), "is not a regular file"),
    "config is 65 MiB": (lambda r: os.truncate(r / "config.json", 65 << 20), "larger than 64 MiB"),
    "metrics is a directory": (lambda r: _replace(r, "metrics.jsonl", Path.mkdir), "is not a regular file"),
    "metrics links to /dev/zero": (
        lambda r: _replace(r, "metrics.jsonl", lambda p: p.symlink_to("/dev/zero")),
        "is not a regular file",
    ),
    "metrics is a named pipe": (lambda r: _replace(r, "metrics.jsonl", os.mkfifo), "is not a regular file"),
}


@pytest.mark.parametrize("case", HOSTILE_CONFIGS, ids=list(HOSTILE_CONFIGS))
def test_a_bad_run_is_a_row_marked_unreadable_with_the_reason_and_the_others_are_listed(
    runs: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    """Old code: `charrnn runs` failed as a whole (RecursionError, AttributeError, TypeError), or hung."""
    spoil, reason = HOSTILE_CONFIGS[case]
    spoil(runs / "slow")
    code, out, err = in_process(capsys, "runs", str(runs), "--json", "--sort", "name")
    assert (code, err) == (0, "")
    rows = {row["name"]: row for row in json.loads(out)}
    assert list(rows) == ["good", "killed", "slow", "unscored"]
    assert rows["slow"]["status"] == "unreadable" and reason in rows["slow"]["reason"], rows["slow"]
    assert rows["good"]["status"] == "stopped" and rows["good"]["best_val_bits_per_char"] is not None
    code, out, err = in_process(capsys, "runs", str(runs))
    assert (code, err) == (0, "") and "unreadable" in out and "good" in out


HOSTILE_METRICS: dict[str, str] = {
    "a line nested 100,000 deep": DEEP + "\n",
    "binary garbage": "\udcff".join(["\x00\x01", "\x7f"]) + "\n",
    "a step beyond 2^63": '{"step": ' + "9" * 400 + "}\n",
    "a step that is true": '{"step": true}\n',
    "a val_loss beyond a float": '{"step": 50, "val_loss": ' + "9" * 400 + ', "time": ' + "9" * 400 + "}\n",
    "an infinite time": '{"step": 50, "time": Infinity, "val_loss": NaN}\n',
    "a time that is a string": '{"step": 50, "time": "x"}\n',
}


@pytest.mark.parametrize("case", HOSTILE_METRICS, ids=list(HOSTILE_METRICS))
def test_a_bad_metrics_line_ends_what_the_row_reads_and_lists_the_rest(
    runs: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    with open(runs / "good" / "metrics.jsonl", "ab") as handle:
        handle.write(HOSTILE_METRICS[case].encode("utf-8", "surrogateescape"))
    code, out, err = in_process(capsys, "runs", str(runs), "--json")
    assert (code, err) == (0, "")
    rows = {row["name"]: row for row in json.loads(out)}
    assert len(rows) == 4 and rows["good"]["steps"] in (30, 50)
    assert rows["good"]["best_val_bits_per_char"] == pytest.approx(1.1 / math.log(2))
    assert rows["good"]["time_s"] is None or math.isfinite(rows["good"]["time_s"])


def test_a_lock_that_is_a_named_pipe_does_not_hang_the_listing(runs: Path) -> None:
    os.mkfifo(runs / "good" / ".lock")
    assert run_row(runs / "good").status == "stopped"


def test_a_run_directory_that_is_a_file(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (runs / "a-file").write_text("not a run")
    assert [row.name for row in list_runs(runs)] == ["good", "killed", "slow", "unscored"]
    code, _, err = in_process(capsys, "runs", str(runs / "a-file"))
    assert code == 1 and err == f"charrnn: error: no directory {runs / 'a-file'}\n"


# ----- plot reads what it can, names what it cannot -----


def test_plot_leaves_out_a_run_it_cannot_read_and_names_it(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _config(runs / "slow", train="x")
    (runs / "killed" / "metrics.jsonl").write_text(DEEP + "\n")
    out_png = runs / "curves.png"
    code, out, err = in_process(
        capsys, "plot", str(runs / "good"), str(runs / "slow"), str(runs / "killed"), "-o", str(out_png)
    )
    assert code == 0 and out == f"wrote {out_png}\n" and out_png.read_bytes().startswith(b"\x89PNG")
    notes = err.splitlines()
    assert len(notes) == 2 and all(line.startswith("charrnn: note: left out ") for line in notes)
    assert '"train" is not an object' in notes[0] and "line 1 of" in notes[1] and "internal error" not in err


def test_plot_term_and_a_figure_name_a_bad_run_once(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _config(runs / "slow", corpus__files=5)
    code, _, err = in_process(
        capsys, "plot", str(runs / "good"), str(runs / "slow"), "--term", "-o", str(runs / "c.png")
    )
    assert code == 0 and err.count("left out") == 1 and (runs / "c.png").is_file()


@pytest.mark.parametrize("term", [False, True], ids=["figure", "term"])
def test_plot_fails_in_one_line_only_when_no_run_can_be_read(
    runs: Path, capsys: pytest.CaptureFixture[str], term: bool
) -> None:
    _config(runs / "slow", train="x")
    (runs / "good" / "config.json").write_text(DEEP)
    (runs / "a-file").write_text("not a run")
    args = ["plot", str(runs / "slow"), str(runs / "good"), str(runs / "a-file"), *(["--term"] if term else [])]
    code, out, err = in_process(capsys, *args, "-o", str(runs / "c.png"))
    assert code == 1 and out == "" and err.count("\n") == 1 and err.startswith("charrnn: error: ")
    assert '"train" is not an object' in err and "nested too deeply" in err and "a-file is not a run directory" in err
    assert not list(runs.glob("*.png"))


def test_plot_term_with_an_output_in_a_missing_directory_is_refused_before_drawing(
    runs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = in_process(capsys, "plot", str(runs / "good"), "--term", "-o", str(runs / "missing" / "c.png"))
    assert code == 1 and out == "" and "directory" in err and "does not exist" in err and err.count("\n") == 1

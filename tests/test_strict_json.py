"""Every output meant for machines is strict JSON: no NaN or Infinity, an undefined figure is null.

`eval`, `sample`, `score`, `viz` and `runs` with --json, and the run's metrics.jsonl and
samples.jsonl, each parsed by a parser that refuses what `JSON.parse` and `jq` refuse. One tiny
run, trained once for the module.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from conftest import in_process

import charrnn
from charrnn import jsonout
from charrnn.rundir import RunDir

pytestmark = pytest.mark.usefixtures("one_thread_per_module")

SMALL = dict(hidden=16, embed=8, layers=1, batch_size=4, seq_len=16, eval_interval=4, max_steps=8, sample_length=20)


def strict(text: str) -> Any:
    """`text` parsed as strict JSON: NaN, Infinity and -Infinity are errors."""

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def strict_lines(text: str) -> list[Any]:
    return [strict(line) for line in text.splitlines()]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, real_text: str) -> Path:
    base = tmp_path_factory.mktemp("strict")
    corpus = base / "corpus.txt"
    corpus.write_text(real_text[:20_000], encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CHARRNN_CACHE_DIR", str(base / "cache"))
        return charrnn.train(corpus, run=base / "run", **SMALL).path


@pytest.fixture
def one_char(tmp_path: Path) -> Path:
    path = tmp_path / "one_char.txt"
    path.write_text("a", encoding="utf-8")
    return path


def test_finite_turns_every_non_finite_float_into_none() -> None:
    value = {"a": math.nan, "b": [1.5, math.inf, {"c": -math.inf}], "d": (2, "x"), "e": None, "f": True}
    assert jsonout.finite(value) == {"a": None, "b": [1.5, None, {"c": None}], "d": [2, "x"], "e": None, "f": True}
    assert strict(jsonout.dumps(value)) == jsonout.finite(value)


def test_a_nan_in_a_metrics_record_is_written_as_null(tmp_path: Path) -> None:
    rundir = RunDir(tmp_path)
    rundir.append_metrics({"step": 10, "train_loss": math.nan, "val_loss": math.inf})
    rundir.append_sample({"step": 10, "val_loss": math.nan, "text": "x"})
    assert strict_lines(rundir.metrics.read_text()) == [{"step": 10, "train_loss": None, "val_loss": None}]
    assert strict_lines(rundir.samples.read_text())[0]["val_loss"] is None


def test_a_nan_in_config_json_is_written_as_null(tmp_path: Path) -> None:
    rundir = RunDir(tmp_path)
    rundir.write_config({"baselines": {"gzip": math.nan}, "steps": 3})
    assert strict(rundir.config.read_text()) == {"baselines": {"gzip": None}, "steps": 3}


def test_the_runs_files_are_strict_json(run: Path) -> None:
    assert strict_lines((run / "metrics.jsonl").read_text())
    assert strict_lines((run / "samples.jsonl").read_text())
    assert strict((run / "config.json").read_text())


def test_eval_json_is_strict(capsys: pytest.CaptureFixture[str], run: Path) -> None:
    code, out, _ = in_process(capsys, "eval", str(run), "--json", "--device", "cpu")
    assert code == 0
    assert set(strict(out)) == {"val", "test"} or set(strict(out)) == {"val"}


def test_eval_and_score_both_refuse_a_text_with_nothing_to_predict(
    capsys: pytest.CaptureFixture[str], run: Path, one_char: Path
) -> None:
    """One character is one token, which nothing predicts: eval used to print a bare NaN and exit 0."""
    for command in (["eval", str(run), str(one_char), "--json"], ["score", str(run), str(one_char), "--json"]):
        code, out, err = in_process(capsys, *command, "--device", "cpu")
        assert (code, out) == (1, "")
        assert err.count("\n") == 1 and "the first token is predicted by nothing" in err


def test_score_json_is_strict(capsys: pytest.CaptureFixture[str], run: Path, tmp_path: Path) -> None:
    text = tmp_path / "text.txt"
    text.write_text("\nAnd God said\n\nLet there be light\n", encoding="utf-8")
    code, out, _ = in_process(capsys, "score", str(run), str(text), "--json", "--device", "cpu")
    assert code == 0
    records = strict_lines(out)
    assert records[0]["bits_per_char"] is None  # the first line's only character is predicted by nothing
    code, out, _ = in_process(capsys, "score", str(run), str(text), "--json", "--whole", "--device", "cpu")
    assert code == 0 and strict_lines(out)[0]["lines"] == 4


def test_sample_json_is_strict(capsys: pytest.CaptureFixture[str], run: Path) -> None:
    code, out, _ = in_process(
        capsys, "sample", str(run), "--json", "--length", "20", "--num-samples", "2", "--seed", "1"
    )
    assert code == 0 and len(strict(out)["samples"]) == 2


def test_viz_json_is_strict(capsys: pytest.CaptureFixture[str], run: Path, tmp_path: Path) -> None:
    text = tmp_path / "text.txt"
    text.write_text("And God said, Let there be light.\n", encoding="utf-8")
    code, out, _ = in_process(capsys, "viz", str(run), str(text), "--json", "--device", "cpu")
    assert code == 0
    assert strict(out)


def test_runs_json_is_strict_when_a_record_holds_nan(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A metrics.jsonl written before this fix may hold NaN; `runs --json` shows it as null."""
    run = tmp_path / "runs" / "old"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": {}, "train": {"tokenizer": "char"}, "corpus": {}}))
    (run / "metrics.jsonl").write_text('{"step": 10, "time": NaN, "train_loss": NaN, "val_loss": NaN}\n')
    code, out, _ = in_process(capsys, "runs", str(tmp_path / "runs"), "--json")
    assert code == 0
    (row,) = strict(out)
    assert (row["time_s"], row["best_val_bits_per_char"]) == (None, None)

"""The three commands end to end, as a user runs them."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import CLI, ROOT, TINY, charrnn

FORMAT1 = ROOT / "tests" / "fixtures" / "format1"  # a run written by charrnn 0.1


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory, real_text: str) -> Path:
    root = tmp_path_factory.mktemp("cli")
    (root / "corpus.txt").write_text(real_text)
    result = charrnn(
        "train", str(root / "corpus.txt"), "--run", str(root / "run"), "--max-steps", "30", "--test-frac", "0.05", *TINY
    )
    assert result.returncode == 0, result.stderr
    return root / "run"


def test_train_writes_a_complete_run(trained_run: Path) -> None:
    names = {p.name for p in trained_run.iterdir()}
    assert {"best.safetensors", "last.safetensors", "config.json", "metrics.jsonl"} <= names
    config = json.loads((trained_run / "config.json").read_text())
    assert config["model"]["hidden_size"] == 32 and config["train"]["max_steps"] == 30
    records = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 30
    assert {"step", "time", "train_loss", "lr", "chars_per_sec"} <= records[-1].keys()


def test_plain_progress_lines_when_not_a_terminal(tmp_path: Path, corpus_file: Path) -> None:
    args = [a for a in TINY if a != "--quiet"]
    result = charrnn("train", str(corpus_file), "--run", str(tmp_path / "r"), "--max-steps", "20", *args)
    assert result.returncode == 0, result.stderr
    assert "step 10/20" in result.stdout and "chars/s" in result.stdout
    assert "training summary" in result.stdout
    assert "\x1b[" not in result.stdout  # no terminal control codes in logs


def test_eval_reports_splits_and_baselines(trained_run: Path) -> None:
    result = charrnn("eval", str(trained_run), "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert set(rows) == {"val", "test"}
    for row in rows.values():
        assert row["bits_per_char"] == pytest.approx(row["nats_per_char"] / 0.6931471805599453)
        assert set(row["baselines_bits_per_char"]) == {"gzip", "bzip2", "xz"}
    table = charrnn("eval", str(trained_run))
    assert "bits/char" in table.stdout and "val" in table.stdout


def test_eval_on_given_text_counts_unknown_characters(trained_run: Path, tmp_path: Path) -> None:
    text = tmp_path / "held.txt"
    text.write_text("And God said ☃☃ unto them\n")
    result = charrnn("eval", str(trained_run / "best.safetensors"), str(text), "--json", "--no-baselines")
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)[str(text)]
    assert row["unknown"] == 2 and row["chars"] == len(text.read_text()) - 1


def test_eval_reads_stdin(trained_run: Path) -> None:
    result = charrnn("eval", str(trained_run), "-", "--json", stdin="And the LORD spake unto Moses\n")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["-"]["chars"] == 29


def test_sample_streams_prime_and_continuation(trained_run: Path) -> None:
    result = charrnn("sample", str(trained_run), "--prime", "And God", "--length", "40", "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("And God")
    assert len(result.stdout) == len("And God") + 40 + 1  # trailing newline
    again = charrnn("sample", str(trained_run), "--prime", "And God", "--length", "40", "--seed", "3")
    assert again.stdout == result.stdout


def test_sample_many_to_a_file(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "samples.txt"
    result = charrnn(
        "sample", str(trained_run), "--num-samples", "3", "--length", "20", "--seed", "1", "--output", str(out)
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert out.read_text().count("----- sample") == 3


@pytest.mark.parametrize("extra", [[], ["--num-samples", "2"]], ids=["streamed", "all-at-once"])
def test_sample_into_a_reader_that_leaves_early_is_no_error(trained_run: Path, extra: list[str]) -> None:
    # `charrnn sample RUN | head -c 10`: the reader closes the pipe after a few bytes.
    proc = subprocess.Popen(
        [*CLI, "sample", str(trained_run), "--length", "200000", "--seed", "1", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert len(proc.stdout.read(10)) == 10
    proc.stdout.close()
    assert proc.wait(timeout=120) == 0
    assert proc.stderr.read() == b""


def test_sample_prime_file(trained_run: Path, tmp_path: Path) -> None:
    prime = tmp_path / "prime.txt"
    prime.write_text("In the")
    result = charrnn("sample", str(trained_run), "--prime-file", str(prime), "--length", "5", "--seed", "1")
    assert result.returncode == 0 and result.stdout.startswith("In the")


def test_paths_that_look_like_markup_are_shown_as_written(tmp_path: Path, corpus_file: Path) -> None:
    # Progress messages name the run; rich must not read "[/x]" in it as a closing style tag.
    run = tmp_path / "r[/x][bold]"
    assert charrnn("train", str(corpus_file), "--run", str(run), "--max-steps", "5", *TINY).returncode == 0
    resumed = charrnn("train", "--resume", str(run), "--max-steps", "10")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {run} at step 5" in resumed.stdout
    assert str(run) in resumed.stdout.split("training summary")[1]
    listed = charrnn("runs", str(run.parent))
    assert listed.returncode == 0, listed.stderr
    assert run.name in listed.stdout


def test_train_from_stdin_and_resume(tmp_path: Path, real_text: str) -> None:
    run = tmp_path / "r"
    first = charrnn("train", "-", "--run", str(run), "--max-steps", "10", *TINY, stdin=real_text)
    assert first.returncode == 0, first.stderr
    # stdin is gone after the first run: resume needs the corpus file it recorded, which was temporary.
    again = charrnn("train", "--resume", str(run), "--max-steps", "20", "--quiet")
    assert again.returncode == 1 and again.stderr.startswith("charrnn: error:")


def test_resume_extends_the_budget(tmp_path: Path, corpus_file: Path) -> None:
    run = tmp_path / "r"
    assert charrnn("train", str(corpus_file), "--run", str(run), "--max-steps", "10", *TINY).returncode == 0
    result = charrnn("train", "--resume", str(run), "--max-steps", "20", "--quiet")
    assert result.returncode == 0, result.stderr
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 20


def test_separate_validation_file_and_gru_with_weight_drop(tmp_path: Path, corpus_file: Path, real_text: str) -> None:
    val = tmp_path / "val.txt"
    val.write_text(real_text[:3000])
    result = charrnn(
        "train",
        str(corpus_file),
        "--run",
        str(tmp_path / "r"),
        "--val-file",
        str(val),
        "--cell",
        "gru",
        "--weight-drop",
        "0.25",
        "--max-steps",
        "10",
        *TINY,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "r" / "config.json").read_text())["model"]["weight_drop"] == 0.25
    rows = json.loads(charrnn("eval", str(tmp_path / "r"), "--json", "--no-baselines").stdout)
    assert rows["val"]["chars"] == 2999


def test_help_and_version() -> None:
    assert "train" in charrnn("--help").stdout
    assert charrnn("--version").stdout.startswith("charrnn ")
    assert "--max-time" in charrnn("train", "--help").stdout


def test_errors_are_one_line(tmp_path: Path) -> None:
    result = charrnn("train", str(tmp_path / "missing.txt"))
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "no such file" in result.stderr
    result = charrnn("sample", str(tmp_path), "--top-p", "2")
    assert result.returncode == 1 and "Traceback" not in result.stderr


def test_convert_rewrites_a_format_1_run_one_line_per_file(tmp_path: Path) -> None:
    run = tmp_path / "old"
    shutil.copytree(FORMAT1, run)
    result = charrnn("convert", str(run))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{run / 'best.pt'} -> {run / 'best.safetensors'}",
        f"{run / 'last.pt'} -> {run / 'last.safetensors'}",
    ]
    again = charrnn("eval", str(run / "best.safetensors"), str(run / "held.txt"), "--json", "--no-baselines")
    assert again.returncode == 0, again.stderr


def test_convert_one_file_to_a_named_target(tmp_path: Path) -> None:
    result = charrnn("convert", str(FORMAT1 / "best.pt"), str(tmp_path / "model.safetensors"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{FORMAT1 / 'best.pt'} -> {tmp_path / 'model.safetensors'}\n"
    assert (tmp_path / "model.safetensors").is_file()

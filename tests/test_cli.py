"""The commands end to end, as a user runs them: through charrnn.cli.main in this process (the code
the `charrnn` script runs), and through the real entry point in a subprocess where the process
itself is what is tested (a reader that closes the pipe, --help and --version, errors)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import CLI, ROOT, TINY, charrnn, in_process, run_in_process

FORMAT1 = ROOT / "tests" / "fixtures" / "format1"  # a run written by charrnn 0.1

pytestmark = pytest.mark.usefixtures("one_thread")
Capture = pytest.CaptureFixture[str]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory, real_text: str) -> Path:
    root = tmp_path_factory.mktemp("cli")
    (root / "corpus.txt").write_text(real_text)
    args = ["train", str(root / "corpus.txt"), "--run", str(root / "run"), "--max-steps", "30", "--test-frac", "0.05"]
    done = run_in_process(*args, *TINY, env={"CHARRNN_CACHE_DIR": str(root / "cache")})
    assert done.returncode == 0, done.stderr
    return root / "run"


def test_train_writes_a_complete_run(trained_run: Path) -> None:
    names = {p.name for p in trained_run.iterdir()}
    assert {"best.safetensors", "last.safetensors", "config.json", "metrics.jsonl"} <= names
    config = json.loads((trained_run / "config.json").read_text())
    assert config["model"]["hidden_size"] == 32 and config["train"]["max_steps"] == 30
    records = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 30
    assert {"step", "time", "train_loss", "lr", "chars_per_sec"} <= records[-1].keys()


def test_plain_progress_lines_when_not_a_terminal(tmp_path: Path, corpus_file: Path, capsys: Capture) -> None:
    args = [a for a in TINY if a != "--quiet"]
    code, out, err = in_process(
        capsys, "train", str(corpus_file), "--run", str(tmp_path / "r"), "--max-steps", "20", *args
    )
    assert code == 0, err
    assert "step 10/20" in out and "chars/s" in out
    assert "training summary" in out
    assert "\x1b[" not in out  # no terminal control codes in logs


def test_eval_reports_splits_and_baselines(trained_run: Path, capsys: Capture) -> None:
    code, out, err = in_process(capsys, "eval", str(trained_run), "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert set(rows) == {"val", "test"}
    for row in rows.values():
        assert row["bits_per_char"] == pytest.approx(row["nats_per_char"] / 0.6931471805599453)
        assert set(row["baselines_bits_per_char"]) == {"gzip", "bzip2", "xz"}
    _, table, _ = in_process(capsys, "eval", str(trained_run))
    assert "bits/char" in table and "val" in table


def test_eval_on_given_text_counts_unknown_characters(trained_run: Path, tmp_path: Path, capsys: Capture) -> None:
    text = tmp_path / "held.txt"
    text.write_text("And God said ☃☃ unto them\n")
    code, out, err = in_process(
        capsys, "eval", str(trained_run / "best.safetensors"), str(text), "--json", "--no-baselines"
    )
    assert code == 0, err
    row = json.loads(out)[str(text)]
    assert row["unknown"] == 2 and row["chars"] == len(text.read_text()) - 1


def test_eval_reads_stdin(trained_run: Path, capsys: Capture) -> None:
    code, out, err = in_process(
        capsys, "eval", str(trained_run), "-", "--json", stdin="And the LORD spake unto Moses\n"
    )
    assert code == 0, err
    assert json.loads(out)["-"]["chars"] == 29


def test_sample_streams_prime_and_continuation(trained_run: Path, capsys: Capture) -> None:
    code, out, err = in_process(
        capsys, "sample", str(trained_run), "--prime", "And God", "--length", "40", "--seed", "3"
    )
    assert code == 0, err
    assert out.startswith("And God")
    assert len(out) == len("And God") + 40 + 1  # trailing newline
    _, again, _ = in_process(capsys, "sample", str(trained_run), "--prime", "And God", "--length", "40", "--seed", "3")
    assert again == out


def test_sample_many_to_a_file(trained_run: Path, tmp_path: Path, capsys: Capture) -> None:
    out = tmp_path / "samples.txt"
    code, printed, err = in_process(
        capsys, "sample", str(trained_run), "--num-samples", "3", "--length", "20", "--seed", "1", "--output", str(out)
    )
    assert code == 0, err
    assert printed == ""
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


def test_sample_prime_file(trained_run: Path, tmp_path: Path, capsys: Capture) -> None:
    prime = tmp_path / "prime.txt"
    prime.write_text("In the")
    code, out, _ = in_process(
        capsys, "sample", str(trained_run), "--prime-file", str(prime), "--length", "5", "--seed", "1"
    )
    assert code == 0 and out.startswith("In the")


def test_paths_that_look_like_markup_are_shown_as_written(tmp_path: Path, corpus_file: Path, capsys: Capture) -> None:
    # Progress messages name the run; rich must not read "[/x]" in it as a closing style tag.
    run = tmp_path / "r[/x][bold]"
    assert in_process(capsys, "train", str(corpus_file), "--run", str(run), "--max-steps", "5", *TINY)[0] == 0
    code, resumed, err = in_process(capsys, "train", "--resume", str(run), "--max-steps", "10")
    assert code == 0, err
    assert f"resuming {run} at step 5" in resumed
    assert str(run) in resumed.split("training summary")[1]
    code, listed, err = in_process(capsys, "runs", str(run.parent))
    assert code == 0, err
    assert run.name in listed


def test_train_from_stdin_and_resume(tmp_path: Path, real_text: str, capsys: Capture) -> None:
    run = tmp_path / "r"
    code, _, err = in_process(capsys, "train", "-", "--run", str(run), "--max-steps", "10", *TINY, stdin=real_text)
    assert code == 0, err
    # stdin is gone after the first run: resume needs the corpus file it recorded, which was temporary.
    code, _, err = in_process(capsys, "train", "--resume", str(run), "--max-steps", "20", "--quiet")
    assert code == 1 and err.startswith("charrnn: error:")


def test_resume_extends_the_budget(tmp_path: Path, corpus_file: Path, capsys: Capture) -> None:
    run = tmp_path / "r"
    assert in_process(capsys, "train", str(corpus_file), "--run", str(run), "--max-steps", "10", *TINY)[0] == 0
    code, _, err = in_process(capsys, "train", "--resume", str(run), "--max-steps", "20", "--quiet")
    assert code == 0, err
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 20


def test_separate_validation_file_and_gru_with_weight_drop(
    tmp_path: Path, corpus_file: Path, real_text: str, capsys: Capture
) -> None:
    val = tmp_path / "val.txt"
    val.write_text(real_text[:3000])
    code, _, err = in_process(
        capsys,
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
    assert code == 0, err
    assert json.loads((tmp_path / "r" / "config.json").read_text())["model"]["weight_drop"] == 0.25
    rows = json.loads(in_process(capsys, "eval", str(tmp_path / "r"), "--json", "--no-baselines")[1])
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


def test_convert_rewrites_a_format_1_run_one_line_per_file(tmp_path: Path, capsys: Capture) -> None:
    run = tmp_path / "old"
    shutil.copytree(FORMAT1, run)
    code, out, err = in_process(capsys, "convert", str(run))
    assert code == 0, err
    assert out.splitlines() == [
        f"{run / 'best.pt'} -> {run / 'best.safetensors'}",
        f"{run / 'last.pt'} -> {run / 'last.safetensors'}",
    ]
    code, _, err = in_process(
        capsys, "eval", str(run / "best.safetensors"), str(run / "held.txt"), "--json", "--no-baselines"
    )
    assert code == 0, err


def test_convert_one_file_to_a_named_target(tmp_path: Path, capsys: Capture) -> None:
    code, out, err = in_process(capsys, "convert", str(FORMAT1 / "best.pt"), str(tmp_path / "model.safetensors"))
    assert code == 0, err
    assert out == f"{FORMAT1 / 'best.pt'} -> {tmp_path / 'model.safetensors'}\n"
    assert (tmp_path / "model.safetensors").is_file()

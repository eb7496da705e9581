"""Promise: `charrnn.train(...)` from Python takes the options of `charrnn train`, trains silently,
and returns a `Run` that knows its checkpoints, recorded config and metrics history; `resume=True`
continues it. The bundled default corpus is installed with the package (issue 15.4)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TINY

import charrnn
from charrnn import runs
from charrnn.errors import CharrnnError
from charrnn.runs import Run

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_OPTIONS = dict(hidden=32, embed=16, layers=1, batch_size=4, seq_len=16, eval_interval=10, log_interval=5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, real_text: str) -> Run:
    root = tmp_path_factory.mktemp("api")
    (root / "corpus.txt").write_text(real_text[:30_000], encoding="utf-8")
    return charrnn.train(str(root / "corpus.txt"), run=root / "run", max_steps=20, max_time="2m", **TINY_OPTIONS)


def test_train_returns_a_run_with_checkpoints_config_and_history(trained: Run) -> None:
    assert trained.best is not None and trained.best.is_file() and trained.best.parent == trained.path
    assert trained.last is not None and trained.last.is_file() and trained.last != trained.best
    assert trained.config["model"]["hidden_size"] == 32
    assert trained.config["train"]["max_time"] == 120.0  # "2m"
    assert [record["step"] for record in trained.history] == [5, 10, 15, 20]
    assert trained.summary is not None and trained.summary.steps == 20
    assert trained.summary.stop_reason == "step budget reached"


def test_train_is_silent_unless_asked(tmp_path: Path, corpus_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    charrnn.train(corpus_file, run=tmp_path / "quiet", max_steps=5, **TINY_OPTIONS)
    assert capsys.readouterr() == ("", "")
    charrnn.train(corpus_file, run=tmp_path / "shown", max_steps=5, progress=True, **TINY_OPTIONS)
    assert "training" in capsys.readouterr().out


def test_a_run_directory_opens_as_a_run(trained: Run, tmp_path: Path) -> None:
    again = Run(str(trained.path))
    assert (again.best, again.last, again.history) == (trained.best, trained.last, trained.history)
    assert again.summary is None  # this process did not train it
    empty = Run(tmp_path)
    assert (empty.best, empty.last, empty.history) == (None, None, [])


def test_the_run_directory_rebuilds_its_validation_text(trained: Run) -> None:
    from charrnn.rundir import RunDir

    text = "".join(RunDir(trained.path).validation_text())
    assert text and text == "".join(charrnn.load(trained.path).validation("score")[0])


def test_history_leaves_out_a_torn_last_line_and_refuses_a_bad_one_before_it(tmp_path: Path) -> None:
    """One reader of metrics.jsonl: a line cut short at the end is what a killed (or running) run
    leaves; a line that is no record before the last is damage, said so."""
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 5}\n{"step": 10}\n{"step": 15, "tra')
    assert [record["step"] for record in Run(tmp_path).history] == [5, 10]
    metrics.write_text('{"step": 5}\nnot json\n{"step": 15}\n')
    with pytest.raises(CharrnnError, match="line 2 of .*metrics.jsonl is not a metrics record"):
        _ = Run(tmp_path).history


def test_a_format_1_run_is_a_run() -> None:
    old = Run(ROOT / "tests" / "fixtures" / "format1")
    assert old.best is not None and old.best.name == "best.pt"
    assert old.last is not None and old.last.name == "last.pt"


def test_the_run_loads_as_a_model(trained: Run) -> None:
    text = trained.load(device="cpu").generate("And", length=10, seed=1)
    assert isinstance(text, str) and len(text) == 10  # the continuation of the prime


def test_resume_true_continues_the_run(trained: Run, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(trained.path, copy)
    resumed = charrnn.train(run=copy, resume=True, max_steps=30)
    assert resumed.path == copy and resumed.summary is not None and resumed.summary.steps == 30
    assert [record["step"] for record in resumed.history][-3:] == [20, 25, 30]


def test_several_corpus_files_in_a_list(tmp_path: Path, real_text: str) -> None:
    parts = [tmp_path / "a.txt", tmp_path / "b.txt"]
    parts[0].write_text(real_text[:10_000])
    parts[1].write_text(real_text[10_000:20_000])
    run = charrnn.train(parts, run=tmp_path / "r", max_steps=2, **TINY_OPTIONS)
    assert run.config["corpus"]["files"] == [str(p.resolve()) for p in parts]


def test_an_unknown_option_is_refused_by_name_before_anything_is_made(tmp_path: Path, corpus_file: Path) -> None:
    with pytest.raises(CharrnnError, match="unknown option 'hiden'"):
        charrnn.train(corpus_file, run=tmp_path / "r", hiden=32)
    with pytest.raises(CharrnnError, match="max_steps must be an integer"):
        charrnn.train(corpus_file, run=tmp_path / "r", max_steps="many")
    assert not (tmp_path / "r").exists()


def test_resume_needs_the_run_and_no_corpus(trained: Run, corpus_file: Path) -> None:
    with pytest.raises(CharrnnError, match="name its directory"):
        charrnn.train(resume=True, max_steps=30)
    with pytest.raises(CharrnnError, match="give no CORPUS"):
        charrnn.train(corpus_file, run=trained.path, resume=True)


# ----- the bundled corpus in a non-editable install (issue 15.4) -----


def _package_files(root: Path) -> set[str]:
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith(".pyc")
    }


@pytest.mark.slow
def test_a_plain_install_holds_every_module_and_the_default_corpus(tmp_path: Path) -> None:
    """`pip install .` (not editable) into a target directory, then a bare `charrnn train` run
    from elsewhere, with only that directory on the path: it finds the bundled corpus."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("charrnn", "corpora"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "target"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index"]
    done = subprocess.run([*pip, "--target", str(target), str(source)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    installed = target / "charrnn"
    assert _package_files(ROOT / "charrnn") <= _package_files(installed)
    assert (installed / "corpora" / "kjv.txt").read_bytes() == (ROOT / "corpora" / "kjv.txt").read_bytes()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}
    code = "import charrnn.runs as r, sys; print(r.bundled_corpus()); sys.argv[1:] = sys.argv[2:]; " + (
        "from charrnn.cli import main; main()"
    )
    args = ["train", "--run", "r", "--max-steps", "1", "--eval-tokens", "2000", *TINY]
    ran = subprocess.run(
        [sys.executable, "-c", code, "-", *args], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert ran.stdout.splitlines()[0] == str(installed / "corpora" / "kjv.txt")
    assert (elsewhere / "r" / "config.json").is_file()


def test_nproc_from_python_runs_the_same_options_under_torchrun(
    tmp_path: Path, corpus_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command it hands torchrun, without starting one (tests/test_distributed.py runs real jobs)."""
    started = []
    monkeypatch.setattr(
        runs.subprocess,
        "run",
        lambda command, check: started.append(command) or subprocess.CompletedProcess(command, 0),
    )
    run = charrnn.train(corpus_file, run=tmp_path / "r", nproc=2, hidden=32, tie=True, max_time="2m")
    assert run.path == tmp_path / "r"
    [command] = started
    assert command[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    assert command[6:] == ["-m", "charrnn", "--", "train", "--hidden", "32", "--tie", "--max-time", "120.0"] + [
        "--quiet", "--run", str(tmp_path / "r"), "--", str(corpus_file.resolve())
    ]  # fmt: skip

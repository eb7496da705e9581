"""Promise: the files users already have keep working. A run written by charrnn 0.1 (format-1
`best.pt` and `last.pt`, committed under tests/fixtures/format1/ with the figures the old code gave,
expected.json) evaluates to the same bits per character, samples the same text for the same seed on
the same sampler, converts to format 2 with the same numbers, and resumes training; a fresh run
writes only `.safetensors` checkpoints. The commands run through charrnn.cli.main in this process.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, run_in_process

from charrnn.checkpoint import convert, load_checkpoint
from charrnn.errors import CharrnnError

FIXTURE = ROOT / "tests" / "fixtures" / "format1"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())

pytestmark = pytest.mark.usefixtures("one_thread")


def _bits_per_char(checkpoint: Path) -> float:
    done = run_in_process(
        "eval", str(checkpoint), str(FIXTURE / "held.txt"), "--json", "--no-baselines", "--device", "cpu"
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)[str(FIXTURE / "held.txt")]["bits_per_char"]


def _sample(checkpoint: Path, sampler: str) -> str:
    done = run_in_process("sample", str(checkpoint), *EXPECTED["sample_args"], env={"CHARRNN_SAMPLER": sampler})
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def converted(tmp_path: Path) -> Path:
    """A copy of the 0.1 run with its files converted beside the old ones."""
    run = tmp_path / "old"
    shutil.copytree(FIXTURE, run)
    assert convert(run) == [(run / "best.pt", run / "best.safetensors"), (run / "last.pt", run / "last.safetensors")]
    return run


def test_a_format1_checkpoint_evaluates_to_the_same_bits_per_char() -> None:
    """The run directory (holding only .pt files) means its best.pt, as it did."""
    assert _bits_per_char(FIXTURE) == pytest.approx(EXPECTED["eval_held"]["bits_per_char"], abs=1e-6)


@pytest.mark.parametrize("sampler", ["numpy", "torch"])
def test_a_format1_checkpoint_samples_the_same_text(sampler: str) -> None:
    assert _sample(FIXTURE, sampler) == EXPECTED[f"sample_{sampler}"]


def test_convert_keeps_the_numbers_and_the_old_files(converted: Path) -> None:
    """The converted checkpoints hold the same payload, tensor for tensor, and give the same figures."""
    for name in ("best", "last"):
        old, new = load_checkpoint(converted / f"{name}.pt"), load_checkpoint(converted / f"{name}.safetensors")
        assert (old.pop("format_version"), new.pop("format_version")) == (1, 2)
        assert old.keys() == new.keys() and old["model_config"] == new["model_config"]
        assert all(torch.equal(old["model"][k], new["model"][k]) for k in old["model"])
    state_old, state_new = load_checkpoint(converted / "last.pt"), load_checkpoint(converted / "last.safetensors")
    assert (
        state_old["train_state"]["optimizer"]["param_groups"] == state_new["train_state"]["optimizer"]["param_groups"]
    )
    assert torch.equal(state_old["train_state"]["rng_cpu"], state_new["train_state"]["rng_cpu"])
    for name in ("best.pt", "last.pt"):
        assert (converted / name).read_bytes() == (FIXTURE / name).read_bytes()  # nothing on disk lost
    assert _bits_per_char(converted / "best.safetensors") == pytest.approx(
        EXPECTED["eval_held"]["bits_per_char"], abs=1e-6
    )
    assert _sample(converted, "numpy") == EXPECTED["sample_numpy"]  # the directory now means best.safetensors
    assert _sample(converted / "best.safetensors", "torch") == EXPECTED["sample_torch"]


def test_convert_never_overwrites(converted: Path) -> None:
    """Converting again writes nothing: targets that already hold the conversion are left as they
    are (issue 19, item 14: a rerun finishes a conversion cut short), any other is refused, named."""
    before = (converted / "best.safetensors").read_bytes()
    assert convert(converted) == []
    with pytest.raises(CharrnnError, match="already exists"):
        convert(converted / "last.pt", converted / "best.safetensors")
    assert (converted / "best.safetensors").read_bytes() == before
    done = run_in_process("convert", str(converted / "last.pt"), str(converted / "best.safetensors"))
    assert done.returncode == 1 and done.stderr.startswith("charrnn: error: ") and done.stderr.count("\n") == 1


def test_convert_refuses_what_is_not_format1(converted: Path, tmp_path: Path) -> None:
    with pytest.raises(CharrnnError, match="is already format 2"):
        convert(converted / "best.safetensors", tmp_path / "again.safetensors")
    (tmp_path / "text.pt").write_text("not a checkpoint at all")
    with pytest.raises(CharrnnError, match="not a format-1"):
        convert(tmp_path / "text.pt")
    empty = tmp_path / "empty-run"
    empty.mkdir()
    with pytest.raises(CharrnnError, match="no format-1"):
        convert(empty)
    (tmp_path / "bad.pt").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CharrnnError, match="not a readable charrnn checkpoint"):
        convert(tmp_path / "bad.pt")
    assert not (tmp_path / "bad.safetensors").exists() and not (tmp_path / "again.safetensors").exists()


def test_a_format1_run_resumes_and_then_writes_format2(tmp_path: Path) -> None:
    """`train --resume` of a 0.1 run reads its last.pt and from then on writes .safetensors files."""
    run = tmp_path / "old"
    shutil.copytree(FIXTURE, run)
    # The fixture records the corpus where it was made (/tmp/f1/corpus.txt). Point the copy's
    # last.pt at the copied corpus.txt, rewriting it as charrnn 0.1 would have written it:
    # one torch.save of the same payload with only the corpus path changed.
    payload = torch.load(run / "last.pt", weights_only=True)
    assert payload["corpus"]["files"] == ["/tmp/f1/corpus.txt"]
    payload["corpus"]["files"] = [str(run / "corpus.txt")]
    torch.save(payload, run / "last.pt")
    old_best = (run / "best.pt").read_bytes()

    done = run_in_process("train", "--resume", str(run), "--max-steps", "60", "--quiet")
    assert done.returncode == 0, done.stderr
    resumed = load_checkpoint(run / "last.safetensors")
    assert resumed["format_version"] == 2 and resumed["train_state"]["progress"]["step"] == 60
    assert resumed["train_config"]["seed"] == payload["train_config"]["seed"]
    assert (run / "best.pt").read_bytes() == old_best  # the old files stay as they were
    again = run_in_process("train", "--resume", str(run), "--max-steps", "70", "--quiet")  # now from last.safetensors
    assert again.returncode == 0, again.stderr
    assert load_checkpoint(run / "last.safetensors")["metrics"]["step"] == 70


def test_a_format1_run_is_not_trained_over(tmp_path: Path) -> None:
    """A new `train` into a 0.1 run directory refuses, as it does for a run of this version."""
    run = tmp_path / "old"
    shutil.copytree(FIXTURE, run)
    done = run_in_process("train", str(run / "corpus.txt"), "--run", str(run), *TINY)
    assert done.returncode == 1 and "already exists: pass --resume" in done.stderr
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in FIXTURE.iterdir())


def test_a_fresh_run_holds_only_safetensors_checkpoints(tmp_path: Path, corpus_file: Path) -> None:
    done = run_in_process("train", str(corpus_file), "--run", str(tmp_path / "run"), "--max-steps", "10", *TINY)
    assert done.returncode == 0, done.stderr
    checkpoints = sorted(p.name for p in (tmp_path / "run").iterdir() if p.suffix in (".pt", ".safetensors"))
    assert checkpoints == ["best.safetensors", "last.safetensors"]
    for name in checkpoints:
        assert (tmp_path / "run" / name).read_bytes()[:4] != b"PK\x03\x04"
        assert load_checkpoint(tmp_path / "run" / name)["format_version"] == 2

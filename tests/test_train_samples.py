"""Promise: a run shows and keeps a short sample at its evaluations, without changing what it learns;
validation while training is quick (many streams), the final evaluation exact (one).

Every sample is a record of runs/NAME/samples.jsonl (step, time, val loss, temperature, prime,
text), trimmed on resume like metrics.jsonl; the same seed ends with the same weights, bit for bit,
with samples on or off; logs get each sample as an indented block.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import TINY, charrnn
from safetensors.torch import load_file

import charrnn as charrnn_api
from charrnn.evaluate import evaluate_run
from charrnn.runs import train
from charrnn.train_samples import LINES_EXAMPLES
from charrnn.training_evaluation import evaluate as real_evaluate

pytestmark = pytest.mark.usefixtures("one_thread")

# The TINY settings of conftest as keyword options, with dropout and DropConnect on, so that the
# training draws random numbers that a sampler touching torch's generators would shift.
SMALL: dict[str, Any] = dict(
    hidden=32, embed=16, layers=1, batch_size=4, seq_len=16, eval_interval=10, log_interval=5, device="cpu"
)
SMALL |= dict(dropout=0.2, dropout_embed=0.1, weight_drop=0.1, max_steps=30)


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_evaluation_appends_one_sample(tmp_path: Path, corpus_file: Path) -> None:
    run = train(corpus_file, run=tmp_path / "run", **SMALL)
    samples = _records(run.path / "samples.jsonl")
    evaluated = {r["step"]: r for r in run.history if "val_loss" in r}
    assert [s["step"] for s in samples] == [10, 20, 30]
    for sample in samples:
        assert sample["val_loss"] == evaluated[sample["step"]]["val_loss"]
        assert sample["time"] == evaluated[sample["step"]]["time"]
        assert sample["temperature"] == 0.8
        assert sample["prime"] == ""
        assert len(sample["text"]) == 200


def test_sample_every_n_evaluations_and_always_the_last(tmp_path: Path, corpus_file: Path) -> None:
    run = train(corpus_file, run=tmp_path / "run", **{**SMALL, "max_steps": 35}, sample_every=2, sample_length=30)
    samples = _records(run.path / "samples.jsonl")
    assert [s["step"] for s in samples] == [20, 35]
    assert all(len(s["text"]) == 30 for s in samples)


def test_sample_every_zero_writes_no_samples(tmp_path: Path, corpus_file: Path) -> None:
    run = train(corpus_file, run=tmp_path / "run", **SMALL, sample_every=0)
    assert run.best is not None
    assert not (run.path / "samples.jsonl").exists()


def test_a_sample_starts_with_its_prime(tmp_path: Path, corpus_file: Path) -> None:
    run = train(corpus_file, run=tmp_path / "run", **SMALL, sample_prime="And God said", sample_length=40)
    for sample in _records(run.path / "samples.jsonl"):
        assert sample["prime"] == "And God said"
        assert sample["text"].startswith("And God said") and len(sample["text"]) == len("And God said") + 40


def test_a_sample_is_what_charrnn_sample_draws_from_those_weights_with_the_run_seed(
    tmp_path: Path, corpus_file: Path
) -> None:
    run = train(corpus_file, run=tmp_path / "run", **SMALL, seed=5)
    samples = _records(run.path / "samples.jsonl")
    model = charrnn_api.load(run.path / "last.safetensors", device="cpu")  # the weights of step 30
    assert samples[-1]["text"] == model.generate("", length=200, temperature=0.8, seed=5)
    assert len({s["text"] for s in samples}) == len(samples)  # the model changed in between, so did its sample


def test_sampling_leaves_the_weights_bit_identical(tmp_path: Path, corpus_file: Path) -> None:
    on = train(corpus_file, run=tmp_path / "on", **SMALL, sample_every=1)
    off = train(corpus_file, run=tmp_path / "off", **SMALL, sample_every=0)
    for name in ("last.safetensors", "best.safetensors"):
        with_samples, without = load_file(on.path / name), load_file(off.path / name)
        assert with_samples.keys() == without.keys()
        for key, tensor in with_samples.items():
            assert tensor.equal(without[key]), f"{name}: {key} differs"
    assert [r["train_loss"] for r in on.history] == [r["train_loss"] for r in off.history]


def test_resume_trims_samples_like_metrics(tmp_path: Path, corpus_file: Path) -> None:
    run = train(corpus_file, run=tmp_path / "run", **{**SMALL, "max_steps": 20})
    samples = run.path / "samples.jsonl"
    stale = {"step": 30, "time": 1.0, "val_loss": 9.9, "temperature": 0.8, "prime": "", "text": "stale"}
    with open(samples, "a") as handle:  # as if a sample was written after the last save, then a kill
        handle.write(json.dumps(stale) + '\n{"step": 4')
    train(run=run.path, resume=True, max_steps=40)
    records = _records(samples)
    assert [s["step"] for s in records] == [10, 20, 30, 40]
    assert "stale" not in [s["text"] for s in records]


def test_validation_uses_the_batch_while_training_and_one_stream_at_the_end(
    tmp_path: Path, corpus_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    streams: list[int] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        streams.append(kwargs["streams"])
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(sys.modules["charrnn.training_evaluation"], "evaluate", spy)
    run = train(corpus_file, run=tmp_path / "run", **{**SMALL, "max_steps": 25})
    # Steps 10 and 20 in the batch's 4 streams; at step 25 the estimate that judges the best weights
    # by the same measure, then the final evaluation, exact.
    assert streams == [4, 4, 4, 1]
    streams.clear()
    train(corpus_file, run=tmp_path / "given", **{**SMALL, "max_steps": 25}, eval_streams=3)
    assert streams == [3, 3, 3, 1]
    # The final number is the one `charrnn eval` gives for the same weights.
    [(_, exact)] = evaluate_run(run.path / "last.safetensors", [], baselines=False, device="cpu")
    assert run.history[-1]["val_loss"] == pytest.approx(exact["nats_per_char"], rel=1e-9)


def test_a_lines_run_samples_whole_examples_one_a_line(tmp_path: Path) -> None:
    names = tmp_path / "names.txt"
    firsts, lasts = ("Ann", "Bo", "Cy", "Di", "Ed", "Flo", "Gus", "Hal"), ("Ray", "Lee", "Orr", "Poe", "Tam", "Vos")
    names.write_text("".join(f"{first} {middle} {last}\n" for first in firsts for middle in firsts for last in lasts))
    run = train(names, run=tmp_path / "run", **SMALL, lines=True, sample_length=30, sample_prime="B")
    for sample in _records(run.path / "samples.jsonl"):
        examples = sample["text"].split("\n")
        assert len(examples) == LINES_EXAMPLES
        assert all(example.startswith("B") and len(example) <= 31 for example in examples)


def test_the_sample_is_a_plain_block_in_logs(tmp_path: Path, corpus_file: Path) -> None:
    flags = [flag for flag in TINY if flag != "--quiet"]
    done = charrnn("train", str(corpus_file), "--run", str(tmp_path / "run"), *flags, "--max-steps", "10")
    assert done.returncode == 0, done.stderr
    [sample] = _records(tmp_path / "run" / "samples.jsonl")
    assert f"sample at step 10, val {sample['val_loss']:.4f}, temperature 0.8:" in done.stdout
    block = "\n".join(f"  | {line}" if line else "  |" for line in sample["text"].split("\n"))
    assert block in done.stdout


def test_a_prime_of_unknown_characters_is_refused_before_training(tmp_path: Path, corpus_file: Path) -> None:
    done = charrnn("train", str(corpus_file), "--run", str(tmp_path / "run"), *TINY, "--sample-prime", "\u4e2d\u6587")
    assert done.returncode == 1
    assert done.stderr.strip() == "charrnn: error: --sample-prime holds only characters the corpus does not have"
    assert not (tmp_path / "run").exists()

"""The numpy sampler: the same model as torch, the same draws, and no torch import for `charrnn sample` on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, charrnn

from charrnn.config import ModelConfig
from charrnn.data.tokenizers import ByteTokenizer, train_tokenizer
from charrnn.model import RNNLanguageModel, SingleStep
from charrnn.sample.numpy_sampler import Chooser, NumpyModel, sample_numpy
from charrnn.sample.settings import SampleSettings
from charrnn.sample.torch_sampler import filter_logits, sample

TEXT = "the quick brown fox jumps over the lazy dog. " * 20


def _model(cell: str = "lstm", tie: bool = False, layers: int = 2, vocab: int = 20) -> RNNLanguageModel:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=vocab, cell=cell, num_layers=layers, hidden_size=24, embed_size=16, tie_weights=tie)
    return RNNLanguageModel(cfg).eval()


def _arrays(model: RNNLanguageModel) -> dict[str, np.ndarray]:
    return {key: value.detach().numpy() for key, value in model.state_dict().items()}


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied-with-projection"])
def test_priming_and_stepping_match_the_torch_model(cell: str, tie: bool) -> None:
    """The prime's last logits match the fused torch model, and every later step matches `SingleStep`,
    temperature included, for every cell, with and without weight tying."""
    model = _model(cell, tie, layers=3)
    numpy_model = NumpyModel(model.cfg, _arrays(model), banned=[0])
    ids = torch.randint(1, 20, (30,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, _, state = model(ids[:, None])
    primed, numpy_state = numpy_model.prime(ids.tolist(), batch=2)
    assert primed[:, 0].tolist() == [-np.inf, -np.inf]  # a banned id never wins
    np.testing.assert_allclose(primed[:, 1:], logits[-1, :, 1:].expand(2, -1).numpy(), atol=1e-5)

    step = SingleStep(model, banned=[0])
    two = tuple(s.repeat(1, 2, 1) for s in state) if isinstance(state, tuple) else state.repeat(1, 2, 1)
    layers = step.begin(two)
    tokens = torch.tensor([3, 5])
    for _ in range(6):
        expected, layers = step.advance(tokens, layers, scale=1.25)
        got, numpy_state = numpy_model.step(tokens.numpy(), numpy_state, scale=1.25)
        np.testing.assert_allclose(got[:, 1:], expected[:, 1:].numpy(), atol=1e-5)
        tokens = expected.argmax(dim=1)


def test_a_prime_longer_than_a_chunk_primes_as_one_piece(monkeypatch: pytest.MonkeyPatch) -> None:
    """A long prime runs in chunks (bounded memory); the state carries across them exactly."""
    import charrnn.sample.numpy_sampler as generate_numpy

    model = _model("lstm", layers=2)
    numpy_model = NumpyModel(model.cfg, _arrays(model))
    ids = torch.randint(1, 20, (50,), generator=torch.Generator().manual_seed(2)).tolist()
    whole, whole_state = numpy_model.prime(ids, batch=1)
    monkeypatch.setattr(generate_numpy, "PRIME_CHUNK", 7)
    chunked, chunked_state = numpy_model.prime(ids, batch=1)
    np.testing.assert_allclose(chunked, whole, atol=1e-6)
    for (h, c), (h2, c2) in zip(chunked_state, whole_state):
        np.testing.assert_allclose(h, h2, atol=1e-6)
        np.testing.assert_allclose(c, c2, atol=1e-6)


def test_greedy_text_is_the_torch_samplers_text() -> None:
    """Temperature 0 leaves nothing to chance: both samplers write the same characters."""
    tokenizer = train_tokenizer("char", TEXT)
    model = _model(vocab=tokenizer.vocab_size)
    settings = SampleSettings(length=200, temperature=0)
    numpy_text = sample_numpy(model.cfg, _arrays(model), tokenizer, "the ", settings).texts
    assert numpy_text == sample(model, tokenizer, "the ", settings).texts
    assert len(numpy_text[0]) == 200


@pytest.mark.parametrize("top_k, top_p", [(3, 1.0), (0, 0.7), (4, 0.6), (0, 1e-9)])
def test_draws_stay_inside_the_filtered_set(top_k: int, top_p: float) -> None:
    """top-k and top-p keep exactly the tokens `filter_logits` keeps, and every one of them gets drawn."""
    logits = (torch.randn(64, 20, generator=torch.Generator().manual_seed(0)) * 2).numpy()
    allowed = torch.isfinite(filter_logits(torch.from_numpy(logits), top_k, top_p)).numpy()
    chooser = Chooser(SampleSettings(temperature=1.0, top_k=top_k, top_p=top_p), 20, 64, np.random.default_rng(0))
    seen = np.zeros_like(allowed)
    for _ in range(1000):
        tokens = chooser(logits.copy())
        assert allowed[np.arange(64), tokens].all()
        seen[np.arange(64), tokens] = True
    assert (seen == allowed).all()
    # One stream at a time takes another path for top-p (see Chooser): the same set.
    for row in range(0, 64, 8):
        single = Chooser(SampleSettings(temperature=1.0, top_k=top_k, top_p=top_p), 20, 1, np.random.default_rng(row))
        drawn = {int(single(logits[row : row + 1].copy())[0]) for _ in range(400)}
        assert drawn == set(np.flatnonzero(allowed[row]).tolist())


@pytest.mark.parametrize("top_k", [0, 3])
def test_draws_follow_the_softmax(top_k: int) -> None:
    """Gumbel-max over the kept logits is an exact sample of their softmax."""
    logits = np.tile(np.array([2.0, 1.0, 0.0, -1.0], np.float32), (20_000, 1))
    chooser = Chooser(SampleSettings(temperature=1.0, top_k=top_k), 4, 20_000, np.random.default_rng(1))
    frequencies = np.bincount(chooser(logits), minlength=4) / 20_000
    kept = logits[0] if not top_k else np.where(np.arange(4) < top_k, logits[0], -np.inf)
    expected = np.exp(kept - kept.max()) / np.exp(kept - kept.max()).sum()
    np.testing.assert_allclose(frequencies, expected, atol=0.015)


@pytest.mark.parametrize(
    "logits, top_p, expected",
    [
        ([2.0, 1.0, 0.0, -1.0], 0.8, [0.731, 0.269, 0.0, 0.0]),  # the nucleus: the two most likely
        ([2.0, 1.0, 0.0, -1.0], 0.95, [0.667, 0.245, 0.090, 0.0]),
        ([200.0, 0.0, -5.0, 1.0], 0.9, [1.0, 0.0, 0.0, 0.0]),  # a gap that would overflow exp
    ],
)
def test_one_stream_top_p_draws_follow_the_nucleus(logits: list[float], top_p: float, expected: list[float]) -> None:
    """One stream draws from the whole softmax first and keeps the draw when it lies in the nucleus,
    falling back to the sorted nucleus otherwise: together, exactly the nucleus's softmax."""
    chooser = Chooser(SampleSettings(temperature=1.0, top_p=top_p), 4, 1, np.random.default_rng(2))
    row = np.array([logits], np.float32)
    draws = np.array([chooser(row)[0] for _ in range(20_000)])
    np.testing.assert_allclose(np.bincount(draws, minlength=4) / 20_000, expected, atol=0.015)


def test_same_seed_same_text_and_the_settings_hold() -> None:
    tokenizer = train_tokenizer("char", TEXT)
    model = _model(vocab=tokenizer.vocab_size)
    arrays = _arrays(model)
    settings = SampleSettings(length=80, seed=7, temperature=1.0, top_k=10, top_p=0.9, num_samples=3)
    a = sample_numpy(model.cfg, arrays, tokenizer, "the ", settings)
    b = sample_numpy(model.cfg, arrays, tokenizer, "the ", settings)
    c = sample_numpy(model.cfg, arrays, tokenizer, "the ", SampleSettings(length=80, seed=8, num_samples=3))
    assert a.texts == b.texts and a.texts != c.texts
    assert [len(t) for t in a.texts] == [80, 80, 80] and len(set(a.texts)) == 3  # streams are independent
    assert all("\ufffd" not in t for t in a.texts)  # <unk> is never drawn


def test_stop_strings_and_unknown_prime_characters() -> None:
    tokenizer = train_tokenizer("char", TEXT)
    model = _model(vocab=tokenizer.vocab_size)
    result = sample_numpy(
        model.cfg, _arrays(model), tokenizer, "the ZZ", SampleSettings(length=500, seed=1, stop=("o",))
    )
    assert result.prime_unknown == 2
    assert "o" not in result.texts[0] and len(result.texts[0]) < 500


def test_a_byte_model_streams_whole_characters() -> None:
    """A byte model may draw half a UTF-8 character; what reaches the caller is always whole text."""
    model = _model(vocab=256)
    pieces: list[str] = []
    result = sample_numpy(
        model.cfg,
        _arrays(model),
        ByteTokenizer(),
        "é",
        SampleSettings(length=300, seed=3, temperature=1.5),
        on_text=lambda i, t: pieces.append(t),
    )
    assert "".join(pieces) == result.texts[0] and len(result.texts[0]) == 300


@pytest.fixture(scope="module")
def char_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("numpy-run")
    (work / "corpus.txt").write_text(TEXT * 3)
    done = charrnn("train", str(work / "corpus.txt"), "--run", str(work / "run"), "--max-steps", "20", *TINY)
    assert done.returncode == 0, done.stderr
    return work / "run"


def _sample_in_fresh_python(run: Path, *args: str, env: dict[str, str] | None = None) -> dict:
    """Run `charrnn sample` in a new interpreter; report its output and whether torch got imported."""
    code = (
        "import json, sys\n"
        "from charrnn import cli\n"
        "try:\n"
        f"    cli.main({['sample', str(run), *args]!r})\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "sys.stdout.flush()\n"
        "print(json.dumps({'code': code, 'torch': 'torch' in sys.modules}), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120
    )
    report = json.loads(done.stderr.strip().splitlines()[-1])
    return {**report, "out": done.stdout}


def test_sampling_a_char_model_on_the_cpu_never_imports_torch(char_run: Path) -> None:
    """What makes the first character appear in a fraction of a second: torch is not loaded at all."""
    report = _sample_in_fresh_python(char_run, "--prime", "the ", "--length", "50", "--seed", "2")
    assert report["code"] == 0 and report["torch"] is False
    assert report["out"].startswith("the ") and len(report["out"]) == len("the ") + 50 + 1
    forced = _sample_in_fresh_python(char_run, "--length", "5", env={"CHARRNN_SAMPLER": "torch"})
    assert forced["code"] == 0 and forced["torch"] is True
    # Any number of samples: the text of sample i must not depend on how many are drawn with it.
    many = _sample_in_fresh_python(char_run, "--length", "5", "--num-samples", "65")
    assert many["code"] == 0 and many["torch"] is False and many["out"].count("----- sample") == 65


def test_the_cli_sample_is_the_library_sample(char_run: Path) -> None:
    """`charrnn sample` on the CPU and `sample_numpy` on the checkpoint's weights write the same text."""
    from charrnn.checkpoint import arrays_from_checkpoint, load_checkpoint

    cfg, tokenizer, weights = arrays_from_checkpoint(load_checkpoint(char_run, arrays=True))
    settings = SampleSettings(length=60, seed=11, temperature=0.9)
    expected = sample_numpy(cfg, weights, tokenizer, "the ", settings).texts[0]
    done = charrnn("sample", str(char_run), "--prime", "the ", "--length", "60", "--seed", "11", "--temperature", "0.9")
    assert done.returncode == 0 and done.stdout == "the " + expected + "\n"

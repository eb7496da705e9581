"""Sampling: masks, determinism, batches of streams, stop strings, length."""

from __future__ import annotations

import pytest
import torch

from charrnn.config import ModelConfig
from charrnn.data.tokenizers import train_tokenizer
from charrnn.errors import CharrnnError
from charrnn.model import RNNLanguageModel
from charrnn.sample.settings import SampleSettings
from charrnn.sample.torch_sampler import filter_logits, sample

TEXT = "the quick brown fox jumps over the lazy dog. " * 20


@pytest.fixture(scope="module")
def model_and_tokenizer():
    tokenizer = train_tokenizer("char", TEXT)
    torch.manual_seed(0)
    model = RNNLanguageModel(ModelConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, embed_size=16))
    return model.eval(), tokenizer


def test_top_k_keeps_exactly_k() -> None:
    logits = torch.tensor([[1.0, 5.0, 3.0, 2.0, 4.0]])
    kept = torch.isfinite(filter_logits(logits, top_k=2))
    assert kept.tolist() == [[False, True, False, False, True]]


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    assert torch.isfinite(filter_logits(logits, top_p=0.5)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.8)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.81)).tolist() == [[True, True, True, False]]
    assert torch.isfinite(filter_logits(logits, top_p=1.0)).all()
    # The most likely token always survives, whatever p.
    assert torch.isfinite(filter_logits(logits, top_p=1e-9)).tolist() == [[True, False, False, False]]


@pytest.mark.parametrize("top_k, top_p", [(3, 1.0), (0, 0.7), (4, 0.6), (0, 1.0)])
def test_draws_stay_inside_the_filtered_set(top_k: int, top_p: float) -> None:
    from charrnn.sample.torch_sampler import Chooser

    torch.manual_seed(0)
    logits = torch.randn(64, 20) * 2
    allowed = torch.isfinite(filter_logits(logits, top_k, top_p))
    generator = torch.Generator().manual_seed(0)
    chooser = Chooser(SampleSettings(temperature=1.0, top_k=top_k, top_p=top_p), 20, 64, generator)
    seen = torch.zeros_like(allowed)
    for gumbel in chooser.noise(1000):
        token = chooser(logits, gumbel)
        assert allowed[torch.arange(64), token].all()
        seen[torch.arange(64), token] = True
    if top_k or top_p < 1.0:
        assert torch.equal(seen, allowed)  # and every allowed token does get drawn


def test_gumbel_draws_follow_the_softmax() -> None:
    from charrnn.sample.torch_sampler import Chooser

    logits = torch.tensor([2.0, 1.0, 0.0, -1.0]).repeat(20_000, 1)
    chooser = Chooser(SampleSettings(temperature=1.0), 4, 20_000, torch.Generator().manual_seed(1))
    tokens = chooser(logits, chooser.noise(1)[0])
    freq = torch.bincount(tokens, minlength=4).double() / tokens.numel()
    torch.testing.assert_close(freq, logits[0].double().softmax(-1), atol=0.015, rtol=0)


def test_same_seed_same_text(model_and_tokenizer) -> None:
    model, tok = model_and_tokenizer
    settings = SampleSettings(length=80, seed=7, temperature=1.0, top_k=10, top_p=0.9)
    a = sample(model, tok, "the ", settings).texts
    b = sample(model, tok, "the ", settings).texts
    c = sample(model, tok, "the ", SampleSettings(length=80, seed=8, temperature=1.0)).texts
    assert a == b and a != c
    assert len(a[0]) == 80


def test_streams_in_a_batch_are_independent_and_full_length(model_and_tokenizer) -> None:
    model, tok = model_and_tokenizer
    result = sample(model, tok, "fox", SampleSettings(length=50, seed=1, num_samples=5, temperature=1.0))
    assert len(result.texts) == 5 and all(len(t) == 50 for t in result.texts)
    assert len(set(result.texts)) > 1


def test_greedy_is_deterministic_without_seed(model_and_tokenizer) -> None:
    model, tok = model_and_tokenizer
    a = sample(model, tok, "dog", SampleSettings(length=30, temperature=0)).texts
    b = sample(model, tok, "dog", SampleSettings(length=30, temperature=0)).texts
    assert a == b


def test_stop_string_ends_the_sample_before_it(model_and_tokenizer) -> None:
    model, tok = model_and_tokenizer
    pieces: list[str] = []
    settings = SampleSettings(length=400, seed=3, temperature=1.5, stop=("o",))
    result = sample(model, tok, "", settings, on_text=lambda i, t: pieces.append(t))
    assert "o" not in result.texts[0]
    assert "".join(pieces) == result.texts[0]  # what was streamed is exactly the result


def test_the_token_count_is_the_tokens_the_texts_used(model_and_tokenizer) -> None:
    # A char model writes one character a token. A stop string ends a stream inside a block of 32
    # steps: the count stops at the token that ended it, not at the end of the block.
    model, tok = model_and_tokenizer
    watch = lambda i, t: None  # noqa: E731 (text is handed out as it is made, block by block)
    stopped = sample(model, tok, "", SampleSettings(length=400, seed=3, num_samples=3, stop=("o",)), watch)
    assert all(len(text) < 400 for text in stopped.texts)
    assert stopped.tokens == sum(len(text) + 1 for text in stopped.texts)  # each text, then its "o"
    assert sample(model, tok, "", SampleSettings(length=45, seed=4, num_samples=2), watch).tokens == 2 * 45
    assert sample(model, tok, "", SampleSettings(length=45, seed=4, num_samples=2)).tokens == 2 * 45  # bulk


def test_streamed_pieces_equal_the_result(model_and_tokenizer) -> None:
    model, tok = model_and_tokenizer
    streamed: dict[int, str] = {0: "", 1: ""}

    def collect(i: int, text: str) -> None:
        streamed[i] += text

    result = sample(
        model, tok, "over", SampleSettings(length=60, seed=5, num_samples=2, stop=("the",)), on_text=collect
    )
    assert [streamed[0], streamed[1]] == result.texts


def test_unknown_prime_characters_are_counted_not_fatal(model_and_tokenizer) -> None:
    model, tok = model_and_tokenizer
    result = sample(model, tok, "the ☃ fox", SampleSettings(length=10, seed=0))
    assert result.prime_unknown == 1 and len(result.texts[0]) == 10
    with pytest.raises(CharrnnError, match="only characters the model never saw"):
        sample(model, tok, "☃☃", SampleSettings(length=10))


def test_never_samples_unknown(model_and_tokenizer) -> None:
    model, tok = model_and_tokenizer
    with torch.no_grad():
        model.head.bias[tok.unk_id] = 100.0  # make <unk> overwhelmingly likely
    try:
        text = sample(model, tok, "the", SampleSettings(length=40, seed=0, temperature=1.0)).texts[0]
    finally:
        with torch.no_grad():
            model.head.bias[tok.unk_id] = 0.0
    assert "\ufffd" not in text


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top-p"),
        ({"top_p": 1.5}, "top-p"),
        ({"top_k": -2}, "top-k"),
        ({"length": 10**12}, "length"),
        ({"num_samples": 0}, "num-samples"),
        ({"stop": ("",)}, "stop"),
    ],
)
def test_bad_settings_are_refused(kwargs, message) -> None:
    with pytest.raises(CharrnnError, match=message):
        SampleSettings(**kwargs)

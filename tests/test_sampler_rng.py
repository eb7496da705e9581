"""Sampling has random state of its own: it never moves the caller's generators (torch, numpy,
`random`), and a seed gives the same text from the command and the API, however many samples
are drawn together, on one device.

The model is the bundled charrnn 0.1 checkpoint (tests/fixtures/format1): nothing is trained here.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import in_process

import charrnn
from charrnn.config import ModelConfig
from charrnn.data.tokenizers import Tokenizer, train_tokenizer
from charrnn.model import RNNLanguageModel
from charrnn.sample.driver import drive
from charrnn.sample.numpy_sampler import Chooser, sample_numpy, stream_generators
from charrnn.sample.settings import SampleSettings
from charrnn.sample.torch_sampler import TorchBackend, sample

FORMAT1 = Path(__file__).parent / "fixtures" / "format1"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model() -> charrnn.Model:
    return charrnn.load(FORMAT1, device="cpu")


@pytest.fixture(params=["numpy", "torch"])
def sampler(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test with the numpy sampler (the CPU's) and with the torch one (CHARRNN_SAMPLER=torch)."""
    monkeypatch.setenv("CHARRNN_SAMPLER", request.param)
    return request.param


def _after(draw: Callable[[], object], action: Callable[[], object]) -> object:
    """What `draw` gives right after the global generators are seeded and `action` runs."""
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    action()
    return draw()


@pytest.mark.parametrize("seed", [None, 5])
@pytest.mark.parametrize("num_samples", [1, 65])
def test_sampling_leaves_the_global_random_state_alone(
    model: charrnn.Model, sampler: str, seed: int | None, num_samples: int
) -> None:
    """After torch.manual_seed(0), torch.rand(1) gives 0.4963 whether or not a sample was drawn
    (it gave 0.3370 after generate(num_samples=65): the torch sampler called torch.seed())."""
    for draw in (lambda: torch.rand(1).item(), lambda: np.random.rand(), lambda: random.random()):
        untouched = _after(draw, lambda: None)
        assert _after(draw, lambda: model.generate("the", length=10, seed=seed, num_samples=num_samples)) == untouched
        assert _after(draw, lambda: list(model.stream("the", length=10, seed=seed, num_samples=num_samples))) == (
            untouched
        )


def test_without_a_seed_every_call_draws_afresh(model: charrnn.Model, sampler: str) -> None:
    texts = {model.generate("the", length=40, temperature=1.0) for _ in range(4)}
    assert len(texts) > 1


@pytest.mark.parametrize(
    "settings",
    [dict(), dict(temperature=1.0, top_k=5), dict(temperature=1.0, top_p=0.6), dict(top_k=10, top_p=0.9)],
)
def test_a_sample_is_the_same_text_however_many_are_drawn_with_it(model: charrnn.Model, settings: dict) -> None:
    """Seed 1 gave ' upaman...' at 64 samples and ' bnarnd...' at 65: the CPU switched from numpy
    to torch at 65, and numpy's noise for one stream depended on the count."""
    many = model.generate("the", length=60, seed=1, num_samples=65, **settings)
    assert model.generate("the", length=60, seed=1, num_samples=64, **settings) == many[:64]
    assert model.generate("the", length=60, seed=1, num_samples=3, **settings) == many[:3]
    assert model.generate("the", length=60, seed=1, **settings) == many[0]
    assert len(set(many)) > 32  # and the samples differ from each other


def test_the_command_and_the_api_write_the_same_text(
    model: charrnn.Model, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`charrnn sample` (the CPU by default) and `charrnn.load(...).generate` on the CPU."""
    code, out, _ = in_process(capsys, "sample", str(FORMAT1), "--prime", "the", "--length", "50", "--seed", "1")
    assert code == 0 and out == "the" + model.generate("the", length=50, seed=1) + "\n"
    for count in ("2", "65"):
        code, out, _ = in_process(
            capsys, "sample", str(FORMAT1), "--length", "30", "--seed", "1", "--num-samples", count, "--json"
        )
        texts = [record["text"] for record in json.loads(out)["samples"]]
        assert code == 0 and texts == model.generate(length=30, seed=1, num_samples=int(count))
    if not (torch.cuda.is_available() or torch.backends.mps.is_available()):  # "auto" is the CPU here
        assert charrnn.load(FORMAT1).generate(length=30, seed=1, num_samples=65) == texts


def test_stream_zero_draws_from_the_seed_itself() -> None:
    """So the text of one stream is what it was before streams had generators of their own."""
    first, second = stream_generators(7, 2)
    assert first.random(5).tolist() == np.random.default_rng(7).random(5).tolist()
    assert second.random(5).tolist() != np.random.default_rng(7).random(5).tolist()
    assert [g.random() for g in stream_generators(7, 3)][:2] == [g.random() for g in stream_generators(7, 2)]


@pytest.mark.parametrize("top_p, expected", [(0.8, [0.731, 0.269, 0.0, 0.0]), (0.95, [0.667, 0.245, 0.090, 0.0])])
def test_many_streams_top_p_draws_follow_the_nucleus(top_p: float, expected: list[float]) -> None:
    """Streams that draw outside their nucleus draw again over it with the same noise: together,
    exactly the nucleus's softmax, for many streams as for one."""
    logits = np.tile(np.array([2.0, 1.0, 0.0, -1.0], np.float32), (8_000, 1))
    chooser = Chooser(SampleSettings(temperature=1.0, top_p=top_p), 4, 8_000, stream_generators(3, 8_000))
    np.testing.assert_allclose(np.bincount(chooser(logits), minlength=4) / 8_000, expected, atol=0.02)


# --- the two backends of the one sampling loop -----------------------------------------------

TEXT = "the quick brown fox jumps over the lazy dog. " * 20


def _tiny(cell: str, vocab: int) -> tuple[RNNLanguageModel, dict[str, np.ndarray]]:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=vocab, cell=cell, num_layers=2, hidden_size=24, embed_size=16)
    model = RNNLanguageModel(cfg).eval()
    return model, {key: value.detach().numpy() for key, value in model.state_dict().items()}


@pytest.fixture(scope="module", params=["char", "bpe"])
def tokenizer(request: pytest.FixtureRequest) -> Tokenizer:
    return train_tokenizer(request.param, TEXT, None if request.param == "char" else 290)


class _NumpyDraws(TorchBackend):
    """The torch backend with the numpy backend's draws: its logits, numpy's `Chooser` and generators."""

    def prime(self, ids: list[int]) -> None:
        super().prime(ids)
        batch = self.settings.num_samples
        self.draw = Chooser(self.settings, self.logits.shape[1], batch, stream_generators(self.settings.seed, batch))

    def choose(self, allowed: bytes | None) -> torch.Tensor:
        logits = self.logits.numpy()
        if allowed is not None:
            logits = np.where(np.frombuffer(allowed, dtype=np.bool_).reshape(logits.shape), logits, -np.inf)
        return torch.from_numpy(self.draw(logits.astype(np.float32)))


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize(
    "settings",
    [
        dict(temperature=0.0, num_samples=3),
        dict(temperature=0.0, stop=("o",)),
        dict(temperature=1.0, seed=4, num_samples=3),
        dict(temperature=1.0, top_k=5, seed=5, stop=("he",)),
        dict(temperature=1.0, top_p=0.8, seed=6, num_samples=2),
    ],
)
def test_the_two_backends_write_the_same_text(tokenizer: Tokenizer, cell: str, settings: dict) -> None:
    """Greedy, the numpy and the torch backend write the same text: the same loop (healing, stop
    strings, delivery) over the same arithmetic. Sampled, they differ only by their generators
    (each backend's seeded texts are pinned since charrnn 0.1, tests/fixtures/format1): given the
    numpy backend's draws, the torch backend writes the numpy text, top-k and top-p included."""
    model, arrays = _tiny(cell, tokenizer.vocab_size)
    prime = "the la"  # a bpe prime that healing shortens: "a" is the start of "az"
    chosen = SampleSettings(length=60, **settings)
    pieces: list[tuple[int, str]] = []
    expected = sample_numpy(model.cfg, arrays, tokenizer, prime, chosen, lambda i, t: pieces.append((i, t)))
    if chosen.temperature == 0:
        got = sample(model, tokenizer, prime, chosen)  # the torch backend's bulk path, for a char model
    else:
        got = drive(_NumpyDraws(model, tokenizer, chosen), tokenizer, prime, chosen)
    assert got.texts == expected.texts and got.tokens == expected.tokens
    assert ["".join(t for i, t in pieces if i == s) for s in range(chosen.num_samples)] == expected.texts

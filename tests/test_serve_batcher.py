"""The serving engine without HTTP: a stream alone writes what the numpy sampler writes, for every
cell and for a subword tokenizer whose prime token healing shortens; streams that join and leave
a running batch each end at their own length, stop string or cancellation."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import torch

from charrnn.config import ModelConfig
from charrnn.data.tokenizers import Tokenizer, train_tokenizer
from charrnn.model import RNNLanguageModel
from charrnn.sample.numpy_sampler import sample_numpy
from charrnn.sample.settings import SampleSettings
from charrnn.serve.batcher import Engine, Job
from charrnn.serve.limits import Limits

TEXT = "the quick brown fox jumps over the lazy dog. " * 20
PRIME = "the la"  # a bpe prime that healing shortens: "a" is the start of "az"


@pytest.fixture(scope="module", params=["char", "bpe"])
def tokenizer(request: pytest.FixtureRequest) -> Tokenizer:
    return train_tokenizer(request.param, TEXT, None if request.param == "char" else 290)


def _weights(cell: str, vocab: int) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=vocab, cell=cell, num_layers=2, hidden_size=24, embed_size=16)
    model = RNNLanguageModel(cfg).eval()
    return cfg, {key: value.detach().numpy() for key, value in model.state_dict().items()}


def _serve(engine: Engine, asks: list[tuple[str, SampleSettings, float]], cancel: int | None = None) -> list[list]:
    """Each (prompt, settings, delay in seconds) submitted after its delay, on one running engine;
    each job's events. Job `cancel` is cancelled after its first text."""

    async def main() -> list[list]:
        stepping = asyncio.create_task(engine.run())
        logs: list[list] = [[] for _ in asks]
        ended = [asyncio.Event() for _ in asks]

        async def one(i: int, prompt: str, settings: SampleSettings, delay: float) -> None:
            await asyncio.sleep(delay)

            def post(event: tuple) -> None:
                logs[i].append(event)
                if event[0] in ("done", "error") or (i == cancel and event[0] == "text"):
                    ended[i].set()

            job = Job(settings, -1, time.monotonic() + 30, post)
            engine.prime(job, [engine.prompt_ids(prompt, True)])
            engine.submit(job)
            await asyncio.wait_for(ended[i].wait(), 30)
            if i == cancel:
                job.cancel()

        await asyncio.gather(*(one(i, *ask) for i, ask in enumerate(asks)))
        engine.stop(0)
        await asyncio.wait_for(stepping, 5)
        return logs

    return asyncio.run(main())


def _texts(log: list, n: int) -> list[str]:
    return ["".join(e[2] for e in log if e[0] == "text" and e[1] == i) for i in range(n)]


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize(
    "settings",
    [
        dict(temperature=0.0, num_samples=2),
        dict(temperature=1.0, seed=4, num_samples=3),
        dict(temperature=1.0, top_k=5, seed=5, stop=("he",)),
        dict(temperature=1.0, top_p=0.8, seed=6),
    ],
)
def test_a_stream_alone_writes_the_numpy_samplers_text(tokenizer: Tokenizer, cell: str, settings: dict) -> None:
    cfg, arrays = _weights(cell, tokenizer.vocab_size)
    chosen = SampleSettings(length=60, **settings)
    expected = sample_numpy(cfg, arrays, tokenizer, PRIME, chosen)
    (log,) = _serve(Engine(cfg, arrays, tokenizer, Limits()), [(PRIME, chosen, 0.0)])
    assert _texts(log, chosen.num_samples) == expected.texts
    assert sum(e[3] for e in log if e[0] == "end") == expected.tokens  # tokens that made the texts
    assert log[-1] == ("done",)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_streams_join_and_leave_a_running_batch(tokenizer: Tokenizer, cell: str) -> None:
    cfg, arrays = _weights(cell, tokenizer.vocab_size)
    engine = Engine(cfg, arrays, tokenizer, Limits())
    asks = [
        (PRIME, SampleSettings(length=3000, temperature=1.0, seed=1), 0.0),
        ("the", SampleSettings(length=40, temperature=1.0, seed=2, num_samples=2), 0.01),
        ("a", SampleSettings(length=2000, temperature=0.5, seed=3, stop=("dog",)), 0.02),
        ("", SampleSettings(length=0), 0.03),
        ("fox", SampleSettings(length=10_000_000, temperature=1.0, seed=4), 0.0),  # cancelled
    ]
    logs = _serve(engine, asks, cancel=4)
    assert [len(t) for t in _texts(logs[0], 1)] == [3000]
    assert [len(t) for t in _texts(logs[1], 2)] == [40, 40]
    (stopped,) = _texts(logs[2], 1)
    assert "dog" not in stopped and [e[2] for e in logs[2] if e[0] == "end"] == [
        "stop" if len(stopped) < 2000 else "length"
    ]
    assert logs[3] == [("end", 0, "length", 0), ("done",)]
    assert not any(e[0] == "end" for e in logs[4])  # a cancelled stream is not told its end
    assert engine.widest >= 3 and not engine.active

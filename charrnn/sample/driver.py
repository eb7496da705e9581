"""The one sampling loop, for every backend: prime, token healing, blocks of steps, stop strings,
delivery of the text as it is made, and the result.

A backend computes (numpy in `numpy_sampler.py`, torch in `torch_sampler.py`); this module decides
what is computed and what becomes of it. Nothing here imports torch.

Greedy, both backends write the same text. Sampled, each draws from its own generators (numpy's,
one per stream; torch's, one per call), whose seeded texts are pinned since charrnn 0.1, so a seed
gives each backend its own text; given the same draws they agree but where float32 sums in another
order move a near tie (tests/test_sampler_rng.py, docs/sampling.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from charrnn.data.tokenizers import Tokenizer
from charrnn.sample.settings import SampleResult, SampleSettings
from charrnn.sample.text import Healing, TextStream, deliver, refuse_unk, start_ids

OnText = Callable[[int, str], None]
Tokens = Any  # one step's token of every stream, (B,), or a block of steps, (steps, B): an array or a tensor


class Backend(Protocol):
    """What the loop asks of a way to compute. The backend holds the model's state and the logits
    of the next step; `prime` makes the first ones, `step` each later one."""

    block: int  # steps whose tokens reach Python together
    keeps_tokens: bool  # whether tokens may stay where they are made, to be decoded once at the end

    def prime(self, ids: Sequence[int]) -> None:
        """Run every stream through the prime ids from the zero state."""

    def choose(self, allowed: bytes | None) -> Tokens:
        """Every stream's next token, drawn from the current logits; `allowed`: B rows of one
        byte per id (token healing), 1 where the id may be drawn."""

    def step(self, tokens: Tokens) -> None:
        """Feed the tokens just chosen: the logits of the step after them."""

    def stack(self, steps: list[Tokens]) -> Tokens:
        """Some steps' tokens as one (steps, B) block."""

    def whole_block(self) -> Tokens | None:
        """`block` steps run at once, their tokens (block, B); None where steps run one at a time."""

    def on_host(self, blocks: list[Tokens], length: int) -> np.ndarray:
        """The first `length` steps of the kept blocks, as a (B, length) array (where `keeps_tokens`)."""


class _Streams:
    """Each stream's text (stop strings, length), handed out as it is made."""

    def __init__(self, tokenizer: Tokenizer, settings: SampleSettings, healed: str, emit: OnText) -> None:
        self.emit, self.length = emit, settings.length
        self.streams = [
            TextStream(tokenizer, settings.length, settings.stop, healed) for _ in range(settings.num_samples)
        ]
        self.unfinished = sum(not s.done for s in self.streams)

    def due(self, pending: int) -> bool:
        return pending >= self.length

    def take(self, block: Tokens) -> None:
        self.unfinished -= deliver(block.T.tolist(), self.streams, self.emit)

    def result(self) -> tuple[list[str], int]:
        for i, stream in enumerate(self.streams):
            rest = stream.finish()
            if rest:
                self.emit(i, rest)
        # Only the tokens that made the texts, not the whole last block where a stream ended inside it.
        return [s.text for s in self.streams], sum(s.used for s in self.streams)


class _Bulk:
    """A char model with nothing to watch (no callback, no stop strings) needs exactly `length`
    tokens per stream: they stay where the backend made them and are decoded once at the end."""

    def __init__(self, backend: Backend, tokenizer: Tokenizer, settings: SampleSettings) -> None:
        self.backend, self.tokenizer = backend, tokenizer
        self.length, self.batch = settings.length, settings.num_samples
        self.blocks: list[Tokens] = []
        self.steps = 0
        self.unfinished = self.batch if self.length else 0

    def due(self, pending: int) -> bool:
        return self.steps + pending >= self.length

    def take(self, block: Tokens) -> None:
        self.blocks.append(block)
        self.steps += len(block)
        if self.steps >= self.length:
            self.unfinished = 0

    def result(self) -> tuple[list[str], int]:
        if not self.blocks:
            return [""] * self.batch, 0
        rows = self.backend.on_host(self.blocks, self.length)  # one copy to the host, then numpy decodes each row
        refuse_unk(rows, self.tokenizer.unk_id)
        # Exactly `length` tokens of each stream are text, however many the last block computed.
        return [self.tokenizer.decode(ids) for ids in rows], self.batch * self.length


def drive(
    backend: Backend, tokenizer: Tokenizer, prime: str, settings: SampleSettings, on_text: OnText | None = None
) -> SampleResult:
    """Generate `settings.num_samples` continuations of `prime` on `backend`; `on_text(stream,
    text)` gets the text as it is made (whole characters, after the stop strings' check)."""
    started = time.perf_counter()
    ids, unknown, healed = start_ids(tokenizer, prime)
    backend.prime(ids)
    healing = Healing(tokenizer, healed, settings.num_samples)
    bulk = backend.keeps_tokens and on_text is None and not settings.stop and tokenizer.kind == "char"
    if bulk and not healing.active:
        out: _Streams | _Bulk = _Bulk(backend, tokenizer, settings)
    else:
        out = _Streams(tokenizer, settings, healed, on_text or (lambda i, t: None))
    pending: list[Tokens] = []
    while out.unfinished:
        if not healing.active and not pending and (block := backend.whole_block()) is not None:
            out.take(block)
            continue
        token = backend.choose(healing.allowed() if healing.active else None)
        if healing.active:
            healing.advance(token.tolist())
        pending.append(token)
        if len(pending) == backend.block or healing.active or out.due(len(pending)):
            out.take(backend.stack(pending))
            pending.clear()
        if out.unfinished:
            backend.step(token)
    texts, used = out.result()
    return SampleResult(texts, unknown, used, time.perf_counter() - started)

"""Sampling text from a trained model: temperature, top-k, top-p, stop strings, many streams at once.

The prime runs through the fused RNN in one call; after that each new token is
one `SingleStep`. All streams of a batch advance together; a stream that meets
a stop string or its length is finished, and sampling ends when all are.
Output is decoded incrementally, so what is handed to `on_text` is always
valid text, even for a byte-level model in the middle of a multi-byte character.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from charrnn.errors import CharrnnError
from charrnn.model import RNNLanguageModel, SingleStep
from charrnn.tokenizers import Tokenizer

MAX_LENGTH = 100_000_000
MAX_SAMPLES = 65_536


@dataclass(frozen=True)
class SampleSettings:
    length: int = 500  # new characters per sample
    temperature: float = 0.8  # 0 means greedy (always the most likely token)
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    seed: int | None = None
    num_samples: int = 1
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.length <= MAX_LENGTH:
            raise CharrnnError(f"--length must be in 0..{MAX_LENGTH:,}, got {self.length:,}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise CharrnnError(f"--temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise CharrnnError(f"--top-k must be >= 0 (0 turns it off), got {self.top_k}")
        if not (math.isfinite(self.top_p) and 0 < self.top_p <= 1):
            raise CharrnnError(f"--top-p must be in (0, 1], got {self.top_p}")
        if not 1 <= self.num_samples <= MAX_SAMPLES:
            raise CharrnnError(f"--num-samples must be in 1..{MAX_SAMPLES}, got {self.num_samples}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise CharrnnError(f"--seed must be in 0..2^63-1, got {self.seed}")
        if any(s == "" for s in self.stop):
            raise CharrnnError("--stop strings must not be empty")


@dataclass
class SampleResult:
    texts: list[str]
    prime_unknown: int
    tokens: int  # tokens generated over all streams
    seconds: float

    @property
    def chars_per_sec(self) -> float:
        return sum(len(t) for t in self.texts) / max(self.seconds, 1e-9)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set to -inf every logit outside the top k, and outside the smallest set whose probability
    reaches top_p (the most likely token always stays). logits: (B, V)."""
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # probability mass ranked above each token
        drop_sorted = before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def _pick(logits: torch.Tensor, settings: SampleSettings, generator: torch.Generator) -> torch.Tensor:
    if settings.temperature == 0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits / settings.temperature, settings.top_k, settings.top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


class _Stream:
    """One sample's text, what of it has been handed out, and whether it is finished."""

    def __init__(self, tokenizer: Tokenizer, length: int, stops: Sequence[str]) -> None:
        self.decoder = tokenizer.stream_decoder()
        self.text = ""
        self.emitted = 0
        self.length = length
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.done = length == 0

    def add(self, piece: str) -> str:
        """Append decoded text; return what may be printed now (held back: a possible stop-string start)."""
        if self.done:
            return ""
        self.text += piece
        if len(self.text) >= self.length:
            self.text = self.text[: self.length]
            self.done = True
        for stop in self.stops:
            at = self.text.find(stop, max(0, self.emitted - len(stop) + 1))
            if at >= 0:
                self.text = self.text[:at]
                self.done = True
        end = len(self.text) if self.done else max(self.emitted, len(self.text) - self.hold)
        out = self.text[self.emitted : end]
        self.emitted = end
        return out

    def finish(self) -> str:
        out = self.add(self.decoder.flush()) if not self.done else ""
        self.done = True
        rest = self.text[self.emitted :]
        self.emitted = len(self.text)
        return out + rest


def _start_tokens(tokenizer: Tokenizer, prime: str) -> tuple[torch.Tensor, int]:
    """Prime ids and how many were unknown; an empty prime starts from a newline."""
    ids = tokenizer.encode(prime) if prime else torch.empty(0, dtype=torch.long)
    unknown = int((ids == tokenizer.unk_id).sum()) if tokenizer.unk_id is not None and ids.numel() else 0
    if prime and unknown == ids.numel():
        raise CharrnnError("the prime holds only characters the model never saw in training")
    if ids.numel() == 0:
        ids = tokenizer.encode("\n")
        if ids.numel() == 0 or (tokenizer.unk_id is not None and bool((ids == tokenizer.unk_id).any())):
            ids = torch.tensor([0 if tokenizer.unk_id != 0 else 1])
    return ids.long(), unknown


@torch.no_grad()
def sample(
    model: RNNLanguageModel,
    tokenizer: Tokenizer,
    prime: str = "",
    settings: SampleSettings | None = None,
    on_text: Callable[[int, str], None] | None = None,
) -> SampleResult:
    """Generate `settings.num_samples` continuations of `prime`; `on_text(stream, text)` gets text as it is made."""
    settings = settings or SampleSettings()
    started = time.perf_counter()
    device = model.embed.weight.device
    model.eval()
    ids, unknown = _start_tokens(tokenizer, prime)
    batch = settings.num_samples
    generator = torch.Generator(device=device)
    generator.manual_seed(settings.seed if settings.seed is not None else int(torch.seed() % 2**63))
    logits, _, state = model(ids.to(device)[:, None].expand(-1, batch))
    logits = logits[-1].float()
    if tokenizer.unk_id is not None:
        logits[:, tokenizer.unk_id] = float("-inf")  # never generate <unk>
    step = SingleStep(model)
    streams = [_Stream(tokenizer, settings.length, settings.stop) for _ in range(batch)]
    emit = on_text or (lambda i, t: None)
    generated = 0
    while not all(s.done for s in streams):
        token = _pick(logits, settings, generator)
        generated += batch
        for i, (stream, t) in enumerate(zip(streams, token.tolist())):
            if not stream.done:
                out = stream.add(stream.decoder.push([t]))
                if out:
                    emit(i, out)
        if all(s.done for s in streams):
            break
        logits, state = step(token, state)
        if tokenizer.unk_id is not None:
            logits[:, tokenizer.unk_id] = float("-inf")
    for i, stream in enumerate(streams):
        rest = stream.finish()
        if rest:
            emit(i, rest)
    return SampleResult([s.text for s in streams], unknown, generated, time.perf_counter() - started)


def _read_prime(prime: str, prime_file: Path | None) -> str:
    if prime_file is None:
        return prime
    if prime:
        raise CharrnnError("give --prime or --prime-file, not both")
    from charrnn.corpus import find_corpus

    return find_corpus([str(prime_file)]).read_text()


def _check_output(output: Path) -> None:
    """Refuse an unusable --output before spending time on generation."""
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise CharrnnError(f"cannot write {output}: directory {parent} does not exist")
    if output.is_dir():
        raise CharrnnError(f"cannot write {output}: it is a directory")
    if not os.access(parent, os.W_OK) or (output.exists() and not os.access(output, os.W_OK)):
        raise CharrnnError(f"cannot write {output}: permission denied")


def sample_run(
    run: Path,
    *,
    prime: str = "",
    prime_file: Path | None = None,
    output: Path | None = None,
    device: str = "cpu",
    **settings: Any,
) -> SampleResult:
    """The `sample` command: load a checkpoint, generate, stream to stdout or write `output`."""
    from charrnn.checkpoint import atomic_write, load_checkpoint, model_from_checkpoint
    from charrnn.devices import resolve_device

    sample_settings = SampleSettings(**settings)
    if output is not None:
        _check_output(output)
    prime_text = _read_prime(prime, prime_file)
    model, tokenizer = model_from_checkpoint(load_checkpoint(run), resolve_device(device))
    live = output is None and sample_settings.num_samples == 1
    if live:
        sys.stdout.write(prime_text)
        sys.stdout.flush()
    last_flush = [time.perf_counter()]

    def show(stream: int, text: str) -> None:
        sys.stdout.write(text)
        if time.perf_counter() - last_flush[0] > 0.05:
            sys.stdout.flush()
            last_flush[0] = time.perf_counter()

    result = sample(model, tokenizer, prime_text, sample_settings, on_text=show if live else None)
    if result.prime_unknown:
        print(
            f"charrnn: note: {result.prime_unknown} prime character(s) are not in the model's vocabulary "
            "and were read as <unk>",
            file=sys.stderr,
        )
    texts = [prime_text + t for t in result.texts]
    if live:
        sys.stdout.write("\n")
        sys.stdout.flush()
    elif output is None:
        for i, text in enumerate(texts):
            sys.stdout.write(("" if i == 0 else "\n") + f"----- sample {i + 1} -----\n{text}\n")
        sys.stdout.flush()
    else:
        joined = "".join(("" if i == 0 else "\n") + f"----- sample {i + 1} -----\n{t}\n" for i, t in enumerate(texts))
        body = texts[0] if len(texts) == 1 else joined
        atomic_write(output, lambda handle: handle.write(body.encode("utf-8")))
    return result

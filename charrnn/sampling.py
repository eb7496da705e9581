"""The `sample` command, whatever does the arithmetic: settings, the text of each stream, output.

Two samplers share this module. `generate_numpy.py` runs up to 64 streams on the
CPU with numpy and never imports torch, so the first character appears in a
fraction of a second; `generate.py` runs everything else (larger batches, GPUs,
the Python API on a loaded `RNNLanguageModel`) with torch. Both hand token ids to
`TextStream`s in blocks, heal subword primes with `Healing`, and report a
`SampleResult`. Nothing here imports torch.

Token healing: a subword prime may end inside what would have been one longer
piece ("The wo" encodes as "The", " wo", where " world" is a piece). Conditioning
on " wo" would steer the model off the segmentations it saw in training, so the
trailing tokens that a longer piece could cover are taken off the prime, and the
first tokens generated are constrained to write that text again (a piece that
starts with it, or a shorter piece it starts with). The text handed out is only
what comes after the prime, so prime + output reads exactly as before. Char and
byte tokenizers have one segmentation of any text, so nothing changes for them.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charrnn.errors import CharrnnError
from charrnn.tokenizers import Tokenizer

MAX_LENGTH = 100_000_000
MAX_SAMPLES = 65_536
BLOCK_CPU = 32  # steps whose tokens reach Python together on the CPU (256 on a GPU)
# Up to this many streams the numpy sampler is the faster one on the CPU; torch's threaded kernels
# catch up near 128 and win at 256 (`python scripts/bench_cpu.py --only sample` times both at 1, 16,
# 64, 128 and 256 streams; the crossover moves with the machine's load).
NUMPY_MAX_STREAMS = 64


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


class TextStream:
    """One sample's text, what of it has been handed out, and whether it is finished."""

    def __init__(self, tokenizer: Tokenizer, length: int, stops: Sequence[str], healed: str = "") -> None:
        self.decoder = tokenizer.stream_decoder()
        self.healed = healed  # the prime's own text that generation writes again first; not output
        self.text = ""
        self.emitted = 0
        self.length = length
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.done = length == 0

    def add(self, piece: str) -> str:
        """Append decoded text; return what may be printed now (held back: a possible stop-string start)."""
        if self.healed:
            n = min(len(self.healed), len(piece))  # the constraint makes the decoded text start with it
            self.healed, piece = self.healed[n:], piece[n:]
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


def deliver(rows: list[list[int]], streams: list[TextStream], emit: Callable[[int, str], None]) -> int:
    """Hand each stream its new ids (rows: B lists); returns how many streams finished."""
    finished = 0
    for i, (stream, ids) in enumerate(zip(streams, rows)):
        if not stream.done:
            out = stream.add(stream.decoder.push(ids))
            if out:
                emit(i, out)
            finished += stream.done
    return finished


def heal_prime(tokenizer: Tokenizer, ids: Any) -> tuple[Any, str]:
    """Token healing: the prime's ids (a list or a 1-D tensor) without its longest run of trailing
    tokens whose text is a proper prefix of some piece, and that text (empty when nothing is taken off)."""
    texts = tokenizer.token_texts()
    if all(text is None or len(text) <= 1 for text in texts):
        return ids, ""  # one piece per character (or byte): a single segmentation, nothing to heal
    values = ids.tolist() if hasattr(ids, "tolist") else list(ids)
    healed = ""
    cut = len(values)
    for i in reversed(values):
        text = texts[i] if 0 <= i < len(texts) else None
        if not text:  # <unk> or a partial UTF-8 byte: stop at a whole-text boundary
            break
        candidate = text + healed
        if not any(p is not None and len(p) > len(candidate) and p.startswith(candidate) for p in texts):
            break
        healed, cut = candidate, cut - 1
    return ids[:cut], healed


def start_ids(tokenizer: Tokenizer, prime: str) -> tuple[list[int], int, str]:
    """Prime ids to condition on, how many were unknown, and the text healing took off the end.
    A prime that is empty (or healed away entirely) starts from a newline (or, in a vocabulary
    without one, from the first character)."""
    ids = tokenizer.encode_list(prime) if prime else []
    unknown = ids.count(tokenizer.unk_id) if tokenizer.unk_id is not None else 0
    if prime and unknown == len(ids):
        raise CharrnnError("the prime holds only characters the model never saw in training")
    ids, healed = heal_prime(tokenizer, ids)
    if not ids:
        ids = tokenizer.encode_list("\n")
        if not ids or (tokenizer.unk_id is not None and tokenizer.unk_id in ids):
            ids = [0 if tokenizer.unk_id != 0 else 1]
    return ids, unknown, healed


class Healing:
    """Constrains each stream's first tokens to write the healed text again (see `heal_prime`).

    Per stream: `rest`, the healed text not yet written, allows every piece that starts with it
    or that it starts with; `forced`, the ids left to feed when no piece fits (possible only for
    text that needs byte pieces), allows exactly the next of them.
    """

    def __init__(self, tokenizer: Tokenizer, healed: str, batch: int) -> None:
        self.tokenizer = tokenizer
        self.texts = tokenizer.token_texts()
        self.rest = [healed] * batch
        self.forced: list[list[int]] = [[] for _ in range(batch)]
        self._masks: dict[str, bytes | None] = {}

    @property
    def active(self) -> bool:
        return any(self.rest) or any(self.forced)

    def _mask_for(self, rest: str) -> bytes | None:
        if rest not in self._masks:
            allowed = bytes(bool(t) and (t.startswith(rest) or rest.startswith(t)) for t in self.texts)
            self._masks[rest] = allowed if any(allowed) else None
        return self._masks[rest]

    def allowed(self) -> bytes:
        """B rows of one byte per id, 1 where the stream may generate that id next: as bytes, each
        sampler views them as a (B, V) bool array without a per-element conversion."""
        vocab = len(self.texts)
        rows = []
        for i, rest in enumerate(self.rest):
            mask = self._mask_for(rest) if rest else None
            if rest and mask is None:
                self.forced[i] = self.tokenizer.encode_list(rest)
                self.rest[i] = ""
            if self.forced[i]:
                only = bytearray(vocab)
                only[self.forced[i][0]] = 1
                mask = bytes(only)
            rows.append(mask if mask is not None else b"\x01" * vocab)
        return b"".join(rows)

    def advance(self, tokens: Sequence[int]) -> None:
        for i, token in enumerate(tokens):
            if self.forced[i]:
                self.forced[i].pop(0)
            elif self.rest[i]:
                text = self.texts[token] or ""
                self.rest[i] = self.rest[i][len(text) :] if self.rest[i].startswith(text) else ""


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
    """The `sample` command: load a checkpoint, generate, stream to stdout or write `output`.

    On the CPU, up to `NUMPY_MAX_STREAMS` streams sample with numpy, from the checkpoint read
    without importing torch; more streams and other devices load it into torch.
    `CHARRNN_SAMPLER=torch` forces torch."""
    from charrnn.checkpoint import atomic_write, load_checkpoint

    sample_settings = SampleSettings(**settings)
    if output is not None:
        _check_output(output)
    prime_text = _read_prime(prime, prime_file)
    generate: Callable[[str, SampleSettings, Callable[[int, str], None] | None], SampleResult]
    use_numpy = (
        device == "cpu"
        and sample_settings.num_samples <= NUMPY_MAX_STREAMS
        and os.environ.get("CHARRNN_SAMPLER", "numpy") != "torch"
        and importlib.util.find_spec("numpy") is not None  # a dependency, but torch alone also works
    )
    if use_numpy:
        from charrnn.checkpoint import arrays_from_checkpoint
        from charrnn.generate_numpy import sample_numpy

        # Read, checked and refused, if need be, without importing torch.
        cfg, tokenizer, weights = arrays_from_checkpoint(load_checkpoint(run, arrays=True))

        def generate(text: str, chosen: SampleSettings, on_text: Callable[[int, str], None] | None) -> SampleResult:
            return sample_numpy(cfg, weights, tokenizer, text, chosen, on_text)
    else:
        from charrnn.checkpoint import model_from_checkpoint
        from charrnn.devices import resolve_device
        from charrnn.generate import sample

        model, tokenizer = model_from_checkpoint(load_checkpoint(run), resolve_device(device))

        def generate(text: str, chosen: SampleSettings, on_text: Callable[[int, str], None] | None) -> SampleResult:
            return sample(model, tokenizer, text, chosen, on_text)

    start_ids(tokenizer, prime_text)  # refuse an unusable prime before printing it
    live = output is None and sample_settings.num_samples == 1
    if live:
        sys.stdout.write(prime_text)
        sys.stdout.flush()
    last_flush = [0.0]  # the first text is flushed at once

    def show(stream: int, text: str) -> None:
        sys.stdout.write(text)
        if time.perf_counter() - last_flush[0] > 0.05:
            sys.stdout.flush()
            last_flush[0] = time.perf_counter()

    result = generate(prime_text, sample_settings, show if live else None)
    if result.prime_unknown:
        print(
            f"charrnn: note: {result.prime_unknown} prime character(s) are not in the model's vocabulary "
            "and were read as <unk>",
            file=sys.stderr,
        )
    texts = [prime_text + t for t in result.texts]
    joined = "".join(("" if i == 0 else "\n") + f"----- sample {i + 1} -----\n{t}\n" for i, t in enumerate(texts))
    if live:
        sys.stdout.write("\n")
    elif output is None:
        sys.stdout.write(joined)
    else:
        body = texts[0] if len(texts) == 1 else joined
        atomic_write(output, lambda handle: handle.write(body.encode("utf-8")))
    sys.stdout.flush()
    return result

"""The text side of sampling, shared by both samplers: each stream's text, stop strings, token healing.

The samplers hand token ids to `TextStream`s in blocks. `Healing` takes the trailing tokens of a
subword prime that a longer piece could cover off the prime, and constrains the first generated
tokens to write that text again (docs/tokenizers.md). Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from charrnn.data.tokenizers import Tokenizer
from charrnn.errors import CharrnnError

# Both samplers ban <unk> by a score of -inf, so it is drawn only when the scores are NaN: the
# model's arithmetic overflowed float32. What it would write is then noise, so sampling stops.
NOT_FINITE = (
    "the model's scores became NaN while sampling (its weights are too large to compute with in float32): "
    "nothing can be drawn from them"
)


def refuse_unk(ids: Sequence[int] | Any, unk_id: int | None) -> None:
    """Stop with NOT_FINITE when the ids just drawn (a list, or an array of any shape) hold <unk>,
    which a sampler never draws from finite scores."""
    if unk_id is not None and unk_id in ids:
        raise CharrnnError(NOT_FINITE)


class TextStream:
    """One sample's text, what of it has been handed out, and whether it is finished."""

    def __init__(self, tokenizer: Tokenizer, length: int, stops: Sequence[str], healed: str = "") -> None:
        self.decoder = tokenizer.stream_decoder()
        self.unk_id = tokenizer.unk_id
        self.healed = healed  # the prime's own text that generation writes again first; not output
        self.text = ""
        self.emitted = 0
        self.length = length
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.done = length == 0
        self.used = 0  # ids that made the text, up to the one that finished it

    def push(self, ids: Sequence[int]) -> str:
        """Decode `ids` and `add` their text, counting in `used` the ids up to the one that finished it
        (a stop string or the length can end the text inside a block of ids)."""
        if self.done:
            return ""
        refuse_unk(ids, self.unk_id)
        before = (self.decoder.getstate(), self.text, self.emitted, self.healed)
        out = self.add(self.decoder.push(ids))
        if not self.done:
            self.used += len(ids)
            return out
        # Finished inside this block: step back and replay it one id at a time, to count the ids used.
        state, self.text, self.emitted, self.healed = before
        self.decoder.setstate(state)
        self.done, out = False, ""
        for count, token in enumerate(ids, 1):
            out += self.add(self.decoder.push([token]))
            if self.done:
                self.used += count
                break
        return out

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
            out = stream.push(ids)
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

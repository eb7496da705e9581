"""Per-character scores of a text: what the model paid for each character, what it expected there.

One stateful pass over the text (`charrnn.text_pass`, the pass `evaluate` makes) gives the
log-probability of every token. Tokens and characters do not line up for every tokenizer, so each token's bits
are shared out among the characters it touches:

- a token of several characters (a bpe or unigram piece) splits its bits evenly among them;
- a character of several tokens (the UTF-8 bytes of a byte model, or byte-fallback pieces)
  adds up the bits of its tokens;
- the first token is predicted by nothing: the characters it completes by itself get NaN
  (a character it only begins, such as the first byte of "é", gets the bits of the rest).

So the bits of all characters add up to the text's total, and their mean over the characters
that have a number is `evaluate`'s bits per character. Top predictions at a character are
the distribution the model drew its first predicted token from; activations at a character
are the state after the model has read the whole character (the state that predicts the
next one). Nothing here imports torch until `score_text` runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from charrnn.errors import CharrnnError

if TYPE_CHECKING:
    from charrnn.data.tokenizers import Tokenizer
    from charrnn.dynamic import Adapter
    from charrnn.model import RNNLanguageModel

Predictions = list[tuple[str, float]]


@dataclass(frozen=True, eq=False)
class Score:
    """A text scored character by character (see the module docstring for how tokens are shared out).

    bits: (chars,) float64, -log2 p of each character; NaN where nothing predicts it.
    top: per character, the model's k most likely tokens there as (text, probability), most
        likely first; empty where `bits` is NaN. Characters of one token share one list.
    unknown: (chars,) bool, True where the character is not in the model's vocabulary (<unk>).
    hidden, cell: with activations=True, (chars, layers, hidden) float32 arrays of every layer's
        hidden state (and an LSTM's cell state) after the character; otherwise None.
    first_token: (chars,) int64, the id of the first token each character touches: the one its
        `top` predictions are about (its rank among them is what the explain page shows).
    """

    text: str
    bits: np.ndarray
    top: list[Predictions]
    unknown: np.ndarray
    hidden: np.ndarray | None = None
    cell: np.ndarray | None = None
    first_token: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.text)

    @property
    def predicted(self) -> int:
        """Characters with a number (all but those the first token completes)."""
        return int(np.count_nonzero(~np.isnan(self.bits)))

    @property
    def bits_per_char(self) -> float:
        """Mean bits over the predicted characters: `Model.evaluate(text).bits_per_char`."""
        count = self.predicted
        return float(np.nansum(self.bits)) / count if count else math.nan


def token_labels(tokenizer: Tokenizer) -> list[str]:
    """A printable text for every id: its own text, "<unk>", or "<0xAB>" for a byte of a longer character."""
    labels = []
    for piece, text in zip(tokenizer.token_bytes(), tokenizer.token_texts()):
        if text is not None:
            labels.append(text)
        elif piece is None:
            labels.append("<unk>")
        else:
            labels.append("".join(f"<0x{b:02X}>" for b in piece))
    return labels


def _char_lengths(text: str, units: str) -> np.ndarray:
    """Units per character, (chars,): 1 for "chars", else UTF-8 bytes (a lone surrogate, which the
    tokenizers read as U+FFFD, counts U+FFFD's 3)."""
    if units == "chars":
        return np.ones(len(text), dtype=np.int64)
    code_points = np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype="<u4")
    lengths = np.ones(len(code_points), dtype=np.int64)
    for first_of_longer in (0x80, 0x800, 0x10000):  # where UTF-8 needs 2, 3 and 4 bytes
        lengths += code_points >= first_of_longer
    return lengths


def char_alignment(tokenizer: Tokenizer, ids: Sequence[int] | np.ndarray, text: str) -> tuple[np.ndarray, ...]:
    """Which characters each token touches and which tokens each character touches.

    Char tokens are one character each; every other kind is aligned by UTF-8 bytes.
    Returns (token_first, token_count, char_first, char_last): per token, its first character
    and how many it touches; per character, its first and last token."""
    units = "chars" if tokenizer.kind == "char" else "bytes"
    if units == "chars":
        token_lengths = np.ones(len(ids), dtype=np.int64)
    else:
        sizes = np.array([len(piece) if piece else 0 for piece in tokenizer.token_bytes()], dtype=np.int64)
        token_lengths = sizes[np.asarray(ids, dtype=np.int64)]
    char_lengths = _char_lengths(text, units)
    if token_lengths.sum() != char_lengths.sum() or (len(ids) and token_lengths.min() < 1):
        raise RuntimeError(f"the {tokenizer.kind} tokens of the text do not spell it out: cannot align them")
    token_of_unit = np.repeat(np.arange(len(ids)), token_lengths)
    char_of_unit = np.repeat(np.arange(len(text)), char_lengths)
    token_end, char_end = np.cumsum(token_lengths), np.cumsum(char_lengths)
    token_first, token_last = char_of_unit[token_end - token_lengths], char_of_unit[token_end - 1]
    char_first, char_last = token_of_unit[char_end - char_lengths], token_of_unit[char_end - 1]
    return token_first, token_last - token_first + 1, char_first, char_last


def spread_bits(token_bits: np.ndarray, token_first: np.ndarray, token_count: np.ndarray, chars: int) -> np.ndarray:
    """Each token's bits split evenly over the characters it touches, summed per character, (chars,).
    NaN tokens (the first) add nothing."""
    known = ~np.isnan(token_bits)
    counts = token_count[known]
    owner = np.repeat(np.flatnonzero(known), counts)  # one entry per (token, character) pair
    offset = np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)
    shares = (token_bits / token_count)[owner]
    summed = np.bincount(token_first[owner] + offset, weights=shares, minlength=chars)
    return summed.astype(np.float64)  # (bincount of nothing is an int array)


@dataclass(frozen=True)
class CharBits:
    """A text's token bits shared out among its characters: bits (chars,) float64 (NaN where
    nothing predicts the character), unknown (chars,) bool, and per character its first and last token."""

    bits: np.ndarray
    unknown: np.ndarray
    char_first: np.ndarray
    char_last: np.ndarray


def char_bits(tokenizer: Tokenizer, ids: np.ndarray, text: str, token_bits: np.ndarray, *, opening: bool) -> CharBits:
    """The one step from token bits to character bits (`Model.score`, `charrnn score`, viz). At the
    opening of a text (`opening`), the characters the first token completes by itself get NaN."""
    token_first, token_count, char_first, char_last = char_alignment(tokenizer, ids, text)
    bits = spread_bits(token_bits, token_first, token_count, len(text))
    if opening:
        bits[char_last == 0] = math.nan
    if tokenizer.unk_id is None:
        unknown = np.zeros(len(text), dtype=bool)
    else:
        unknown = ids[char_first] == tokenizer.unk_id
    return CharBits(bits, unknown, char_first, char_last)


def score_text(
    model: RNNLanguageModel,
    tokenizer: Tokenizer,
    text: str,
    *,
    top_k: int = 5,
    activations: bool = False,
    autocast: bool = False,
    adapter: Adapter | None = None,
) -> Score:
    """Score every character of `text` (non-empty) in one stateful pass; see the module docstring.
    With an `adapter` (`charrnn.dynamic`), by dynamic evaluation: the adapter's weights, learning
    from each segment after scoring it (no activations then)."""
    from charrnn.text_pass import refuse_non_finite

    ids = tokenizer.encode(text).numpy()
    token_bits, top_ids, top_probs, states = _token_scores(model, ids, top_k, activations, autocast, adapter)
    refuse_non_finite(token_bits[1:])
    chars = char_bits(tokenizer, ids, text, token_bits, opening=True)
    labels = token_labels(tokenizer)
    per_token: list[Predictions] = [[]]  # token 0: predicted by nothing
    per_token += [[(labels[i], p) for i, p in zip(row, probs)] for row, probs in zip(top_ids, top_probs)]
    scored = ~np.isnan(chars.bits)
    from_token = np.where(scored, np.maximum(chars.char_first, 1), 0)  # each character's first predicted token
    top = [per_token[j] for j in from_token.tolist()]
    hidden = cell = None
    if states is not None:
        hidden = states[0][chars.char_last]
        cell = states[1][chars.char_last] if states[1] is not None else None
    return Score(text, chars.bits, top, chars.unknown, hidden, cell, ids[chars.char_first])


def _token_scores(
    model: RNNLanguageModel, ids: np.ndarray, top_k: int, activations: bool, autocast: bool, adapter: Adapter | None
) -> tuple[np.ndarray, list[list[int]], list[list[float]], tuple[np.ndarray, np.ndarray | None] | None]:
    """Per token: its bits (NaN for the first) and the top-k ids and probabilities of the
    distribution that predicted it (from token 1 on); with `activations`, every layer's state
    after each token, (tokens, layers, hidden) for h and for an LSTM's c."""
    import torch

    from charrnn.text_pass import windows

    tokens = torch.from_numpy(ids.astype(np.int64))
    targets_wanted = len(ids) - 1
    if activations:
        # One more input step (with a stand-in target) gives the state after the last token too.
        tokens, targets_wanted = torch.cat([tokens, tokens[:1]]), len(ids)
    k = min(top_k, model.cfg.vocab_size)
    bits, top_ids, top_probs, hidden, cell = [np.array([math.nan])], [], [], [], []
    was_training = model.training
    model.eval()
    if adapter is None:
        parts = windows(model, tokens, torch.tensor([0]), targets_wanted, autocast=autocast, activations=activations)
    elif activations:
        raise CharrnnError("dynamic evaluation gives each character's bits, not the states: not with activations")
    else:
        parts = adapter.windows(tokens, targets_wanted, autocast=autocast)
    try:
        for part in parts:
            bits.append(part.bits()[:, 0])
            probs, chosen = torch.softmax(part.logits[:, 0], dim=-1).topk(k, dim=-1)  # (width, k)
            top_ids += chosen.tolist()
            top_probs += probs.tolist()
            if part.hidden is not None:
                hidden.append(part.hidden[:, 0].cpu().numpy())
            if part.cell is not None:
                cell.append(part.cell[:, 0].cpu().numpy())
    finally:
        model.train(was_training)
    states = None
    if activations:
        states = np.concatenate(hidden), np.concatenate(cell) if cell else None
    every = np.concatenate(bits)[: len(ids)]
    return every, top_ids[: len(ids) - 1], top_probs[: len(ids) - 1], states

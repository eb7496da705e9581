"""Per-character scores of a text: what the model paid for each character, what it expected there.

One stateful pass over the text, in the windows `evaluate` uses, gives the log-probability of
every token. Tokens and characters do not line up for every tokenizer, so each token's bits
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from charrnn.data.tokenizers import Tokenizer
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
    """

    text: str
    bits: np.ndarray
    top: list[Predictions]
    unknown: np.ndarray
    hidden: np.ndarray | None = None
    cell: np.ndarray | None = None

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


def score_text(
    model: RNNLanguageModel,
    tokenizer: Tokenizer,
    text: str,
    *,
    top_k: int = 5,
    activations: bool = False,
    window: int = 1024,
    autocast: bool = False,
) -> Score:
    """Score every character of `text` (non-empty) in one stateful pass; see the module docstring."""
    ids = tokenizer.encode(text).numpy()
    token_bits, top_ids, top_probs, states = _token_scores(model, ids, top_k, activations, window, autocast)
    from charrnn.evaluate import refuse_non_finite

    refuse_non_finite(token_bits[1:])
    token_first, token_count, char_first, char_last = char_alignment(tokenizer, ids, text)
    bits = spread_bits(token_bits, token_first, token_count, len(text))
    scored = char_last > 0  # the characters the first token completes by itself have no number
    bits[~scored] = math.nan
    labels = token_labels(tokenizer)
    per_token: list[Predictions] = [[]]  # token 0: predicted by nothing
    per_token += [[(labels[i], p) for i, p in zip(row, probs)] for row, probs in zip(top_ids, top_probs)]
    from_token = np.where(scored, np.maximum(char_first, 1), 0)  # each character's first predicted token
    top = [per_token[j] for j in from_token.tolist()]
    if tokenizer.unk_id is not None:
        unknown = ids[char_first] == tokenizer.unk_id
    else:
        unknown = np.zeros(len(text), dtype=bool)
    hidden = cell = None
    if states is not None:
        hidden = states[0][char_last]
        cell = states[1][char_last] if states[1] is not None else None
    return Score(text, bits, top, unknown, hidden, cell)


def _token_scores(
    model: RNNLanguageModel, ids: np.ndarray, top_k: int, activations: bool, window: int, autocast: bool
) -> tuple[np.ndarray, list[list[int]], list[list[float]], tuple[np.ndarray, np.ndarray | None] | None]:
    """Per token: its bits (NaN for the first) and the top-k ids and probabilities of the
    distribution that predicted it (from token 1 on); with `activations`, every layer's state
    after each token, (tokens, layers, hidden) for h and for an LSTM's c."""
    import torch

    from charrnn.evaluate import token_nll, windows

    tokens = torch.from_numpy(ids.astype(np.int64))
    targets_wanted = len(ids) - 1
    if activations:
        # One more input step (with a stand-in target) gives the state after the last token too.
        tokens, targets_wanted = torch.cat([tokens, tokens[:1]]), len(ids)
    k = min(top_k, model.cfg.vocab_size)
    bits, top_ids, top_probs = [np.array([math.nan])], [], []
    was_training = model.training
    model.eval()
    recorder = _StateRecorder(model) if activations else None
    try:
        for logits, targets in windows(model, tokens, torch.tensor([0]), targets_wanted, window, autocast):
            bits.append(token_nll(logits, targets).double().cpu().numpy() / math.log(2))
            probs, chosen = torch.softmax(logits[:, 0], dim=-1).topk(k, dim=-1)  # (width, k)
            top_ids += chosen.tolist()
            top_probs += probs.tolist()
    finally:
        model.train(was_training)
        if recorder is not None:
            recorder.remove()
    every = np.concatenate(bits)[: len(ids)]
    states = recorder.states() if recorder is not None else None
    return every, top_ids[: len(ids) - 1], top_probs[: len(ids) - 1], states


class _StateRecorder:
    """Every layer's state after every input token, collected by forward hooks on the model's
    recurrent layers while it scores. An LSTM layer hands out its hidden state at every step but
    its cell state only after the last, so the cell states are recomputed from its gates."""

    def __init__(self, model: RNNLanguageModel) -> None:
        self.lstm = model.cfg.cell == "lstm"
        self.hidden: list[list[np.ndarray]] = [[] for _ in model.rnns]  # per layer, per window: (T, H)
        self.cell: list[list[np.ndarray]] = [[] for _ in model.rnns]
        self.handles = [rnn.register_forward_hook(self._hook(i)) for i, rnn in enumerate(model.rnns)]

    def _hook(self, layer: int) -> Callable[[torch.nn.Module, tuple, tuple], None]:
        def record(module: torch.nn.Module, inputs: tuple, output: tuple) -> None:
            out = output[0][:, 0].float()  # (T, H): the one stream's hidden state after each step
            self.hidden[layer].append(out.cpu().numpy())
            if self.lstm:
                self.cell[layer].append(_lstm_cells(module, inputs[0][:, 0].float(), inputs[1], out))

        return record

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def states(self) -> tuple[np.ndarray, np.ndarray | None]:
        hidden = np.stack([np.concatenate(parts) for parts in self.hidden], axis=1)
        cell = np.stack([np.concatenate(parts) for parts in self.cell], axis=1) if self.lstm else None
        return hidden, cell


def _lstm_cells(module: torch.nn.Module, x: torch.Tensor, state: tuple | None, out: torch.Tensor) -> np.ndarray:
    """An nn.LSTM layer's cell state after every step, (T, H), from its inputs x (T, in), its
    starting (h, c) (None: zeros) and its hidden outputs (T, H): c_t = f_t * c_(t-1) + i_t * g_t."""
    import torch

    H = out.shape[1]
    h0 = state[0][0, 0].float() if state is not None else out.new_zeros(H)
    c = state[1][0, 0].float().cpu().numpy() if state is not None else np.zeros(H, np.float32)
    h_before = torch.cat([h0[None], out[:-1]])  # (T, H): the hidden state each step starts from
    gates = torch.addmm(module.bias_ih_l0.float(), x, module.weight_ih_l0.float().t())
    gates += torch.addmm(module.bias_hh_l0.float(), h_before, module.weight_hh_l0.float().t())
    i, f, g, _ = gates.chunk(4, dim=1)  # nn.LSTM's gate order: input, forget, cell, output
    forget = f.sigmoid().cpu().numpy()
    write = (i.sigmoid() * g.tanh()).cpu().numpy()
    cells = np.empty_like(write)
    for t in range(len(write)):
        c = forget[t] * c + write[t]
        cells[t] = c
    return cells

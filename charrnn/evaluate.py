"""Held-out loss by a full, stateful pass, and what general-purpose compressors achieve.

Every token after the first is predicted from everything before it: the text
runs through the model in windows, carrying the hidden state from window to
window. The score is the total negative log-likelihood (nats) over the number
of characters predicted, so it compares across tokenizers: a subword model
spends its loss on fewer, longer tokens, and the sum still counts characters.

    nats/char = total NLL / characters,   bits/char = nats/char / ln 2,
    perplexity (per character) = exp(nats/char)
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from charrnn.errors import CharrnnError
from charrnn.text_pass import WINDOW, refuse_non_finite

if TYPE_CHECKING:  # torch is imported by the functions that compute: EvalResult alone needs none of it
    import torch

    from charrnn.data.dataset import Split
    from charrnn.data.tokenizers import Tokenizer
    from charrnn.distributed import Ranks
    from charrnn.dynamic import Adapter, DynamicSettings
    from charrnn.model import RNNLanguageModel


@dataclass(frozen=True)
class EvalResult:
    nll: float  # total nats over the scored tokens
    tokens: int  # tokens scored
    chars: int  # characters those tokens encode
    unknown: int  # tokens that were <unk> (characters outside the vocabulary)
    precision: str = "fp32"  # what the model ran in: "fp32", or "bf16" (autocast)

    @property
    def loss_per_token(self) -> float:
        return self.nll / self.tokens if self.tokens else math.nan

    @property
    def nats_per_char(self) -> float:
        return self.nll / self.chars if self.chars else math.nan

    @property
    def bits_per_char(self) -> float:
        return self.nats_per_char / math.log(2)

    @property
    def perplexity(self) -> float:
        return math.exp(self.nats_per_char) if self.chars else math.nan

    def as_dict(self) -> dict[str, float | int]:
        return {
            "loss_per_token": self.loss_per_token,
            "nats_per_char": self.nats_per_char,
            "bits_per_char": self.bits_per_char,
            "perplexity": self.perplexity,
            "tokens": self.tokens,
            "chars": self.chars,
            "unknown": self.unknown,
        }


def evaluate(
    model: RNNLanguageModel,
    split: Split,
    tokenizer: Tokenizer,
    *,
    streams: int = 1,
    window: int = WINDOW,
    autocast: bool = False,
    ranks: Ranks | None = None,
    adapter: Adapter | None = None,
) -> EvalResult:
    """Score `split`. `streams=1` is the exact protocol (one state carried from the first token);
    more streams cut the text into that many contiguous pieces scored side by side, each starting
    from a zero state: faster, and a slight overestimate of the loss.

    With `ranks` (under torchrun; every rank calls this) rank r scores pieces r, r+N, r+2N, ...
    and the summed losses are added up across ranks: every rank gets the number one process gets
    with the same `streams`, up to float rounding. With streams=1 rank 0 does all the work.

    With an `adapter` (`charrnn.dynamic`) the text is scored by dynamic evaluation: one stream,
    one process, the adapter's weights learning from each segment after scoring it.
    """
    import torch

    device = model.embed.weight.device
    tokens = split.tokens
    n = tokens.numel()
    if n < 2:
        return EvalResult(0.0, 0, 0, 0, "bf16" if autocast else "fp32")
    was_training = model.training
    model.eval()
    streams = max(1, min(streams, (n - 1) // 2))
    piece = (n - 1) // streams  # targets per stream; the remainder goes through a second, single-stream pass
    total = torch.zeros((), dtype=torch.float64, device=device)
    rank, world = (ranks.rank, ranks.world) if ranks is not None else (0, 1)
    mine = (torch.arange(streams) * piece)[rank::world]
    if adapter is not None:
        if streams > 1 or world > 1:
            raise CharrnnError("dynamic evaluation reads the text as one stream, in one process: not with --streams")
        for part in adapter.windows(tokens, n - 1, autocast=autocast):
            total += part.nll().double().sum()
        mine = mine[:0]
    if mine.numel():
        total += _summed_nll(model, tokens, mine, piece, window, autocast)
    rest_start = streams * piece
    if rest_start < n - 1 and rank == streams % world:
        # The remainder after the last stream (with one stream there is none), on a rank with fewest pieces.
        total += _summed_nll(model, tokens, torch.tensor([rest_start]), n - 1 - rest_start, window, autocast)
    if ranks is not None:
        ranks.sum(total)
    model.train(was_training)
    unknown = int((tokens == tokenizer.unk_id).sum()) if tokenizer.unk_id is not None else 0
    chars = predicted_chars(split, tokenizer)
    return EvalResult(float(total), n - 1, chars, unknown, "bf16" if autocast else "fp32")


def predicted_chars(split: Split, tokenizer: Tokenizer) -> int:
    """Characters predicted: all but those the first token, which nothing predicts, completes by
    itself. A stream decoder yields only complete characters: a lone lead byte of a multi-byte
    character completes none (the tokens after it predict the rest of it), <unk> stands for one."""
    first = len(tokenizer.stream_decoder().push([int(split.tokens[0])]))
    return split.num_chars - min(first, split.num_chars)


def _summed_nll(
    model: RNNLanguageModel, tokens: torch.Tensor, starts: torch.Tensor, length: int, window: int, autocast: bool
) -> torch.Tensor:
    """Total NLL (float64) of `length` targets after each start, in one pass (`charrnn.text_pass`)."""
    import torch

    from charrnn.text_pass import windows

    total = torch.zeros((), dtype=torch.float64, device=model.embed.weight.device)
    for part in windows(model, tokens, starts, length, autocast=autocast, window=window):
        total += part.nll().double().sum()
    return total


def compression_baselines(text: str) -> dict[str, float]:
    """Bits per character that gzip, bzip2 and xz (at their strongest settings) reach on `text`."""
    if not text:
        return {}
    raw = text.encode("utf-8", errors="surrogatepass")
    sizes = {
        "gzip": len(gzip.compress(raw, compresslevel=9)),
        "bzip2": len(bz2.compress(raw, compresslevel=9)),
        "xz": len(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME)),
    }
    return {name: 8 * size / len(text) for name, size in sizes.items()}


def eval_precision(precision: str, device: torch.device) -> str:
    """The precision to evaluate a run in: the one it trained in (its --precision, 'auto' going by
    the device as in training), but fp32 for a bf16 run on a device that has no bf16 RNN kernels
    (anything but CUDA: oneDNN's LSTM refuses bf16), so that it can be evaluated anywhere."""
    return "fp32" if precision == "bf16" and device.type != "cuda" else precision


def evaluate_run(
    run: Path,
    texts: Sequence[str],
    *,
    encoding: str = "utf-8",
    streams: int = 1,
    baselines: bool = True,
    device: str = "auto",
    dynamic: DynamicSettings | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """Score a run's best checkpoint on `texts` (files or '-'), or on its own validation and test splits,
    in the precision the run trained in (`eval_precision`). With `dynamic`, each row also holds
    the figures of dynamic evaluation (`dynamic`) and the fraction of bits it saves (`dynamic_gain`).

    Under torchrun every rank reads the checkpoint and the text and scores its share of the
    `streams` pieces; all ranks return the same numbers, only rank 0 the compressor baselines.
    """
    from charrnn import distributed

    with distributed.session() as ranks:
        if dynamic is not None and (streams > 1 or ranks.world > 1):
            raise CharrnnError(
                "--dynamic reads each text as one stream, in one process: not with --streams or torchrun"
            )
        return _evaluate_run(run, texts, encoding, streams, baselines, device, ranks, dynamic)


def _evaluate_run(
    run: Path,
    texts: Sequence[str],
    encoding: str,
    streams: int,
    baselines: bool,
    device: str,
    ranks: Ranks,
    dynamic: DynamicSettings | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    from charrnn.checkpoint import load_checkpoint, model_from_checkpoint, train_config_of
    from charrnn.data.corpus import find_corpus
    from charrnn.data.dataset import dataset_of_run, encode_text, validation_text
    from charrnn.devices import use_bf16

    payload = load_checkpoint(run)
    target = ranks.device_for(device)
    model, tokenizer = model_from_checkpoint(payload, target)
    autocast = use_bf16(eval_precision(train_config_of(payload).precision, target), target)
    pieces: list[tuple[str, Split, str | None]] = []
    if texts:
        for source in texts:
            text = find_corpus([source], encoding=encoding).read_text()
            if not text:
                raise CharrnnError(f"{source} is empty")
            pieces.append((source, encode_text(tokenizer, text), text))
    else:
        try:
            dataset = dataset_of_run(payload, train_config_of(payload))
        except CharrnnError as exc:
            raise CharrnnError(f"{exc}: pass TEXT to evaluate on") from None
        for name, split in (("val", dataset.val), ("test", dataset.test)):
            if split is not None:  # the text itself (for the compressors): the one viz and score read
                held_out = "".join(validation_text(payload, dataset, split=name)) if baselines else None
                pieces.append((name, split, held_out))
        if not pieces:
            raise CharrnnError("the run has no validation or test split: pass TEXT to evaluate on")
    rows = []
    stats: dict[tuple[int, int], Any] = {}  # dynamic evaluation's gradient statistics, once for all texts
    for name, split, text in pieces:
        if split.tokens.numel() < 2:  # no character to predict: refused, as `charrnn score` refuses it
            raise CharrnnError(f"{name} is one token long, and the first token is predicted by nothing")
        result = evaluate(model, split, tokenizer, streams=streams, autocast=autocast, ranks=ranks)
        refuse_non_finite(result.nll)
        row: dict[str, Any] = result.as_dict()
        if baselines and ranks.is_main:
            row["baselines_bits_per_char"] = compression_baselines(text or "")
        if dynamic is not None:
            row.update(_dynamic_row(model, payload, split, tokenizer, dynamic, autocast, result, stats))
        rows.append((name, row))
    return rows


def _dynamic_row(
    model: RNNLanguageModel,
    payload: dict[str, Any],
    split: Split,
    tokenizer: Tokenizer,
    settings: DynamicSettings,
    autocast: bool,
    static: EvalResult,
    stats: dict[tuple[int, int], Any],
) -> dict[str, Any]:
    """The dynamic figures of one text, from a fresh adapter (the gradient statistics computed
    once per call, kept in `stats`), and the fraction of the static bits they save."""
    from charrnn.dynamic import adapter_of_run

    adapter = adapter_of_run(model, payload, settings, stats)
    result = evaluate(model, split, tokenizer, autocast=autocast, adapter=adapter)
    refuse_non_finite(result.nll)
    gain = 1 - result.bits_per_char / static.bits_per_char if static.bits_per_char > 0 else math.nan
    return {"dynamic": {**result.as_dict(), "settings": settings.as_dict()}, "dynamic_gain": gain}

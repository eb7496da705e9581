"""Training batches: contiguous streams of the training ids, served as truncated-BPTT windows."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from charrnn.errors import CharrnnError

Progress = Callable[[str], None]


class StreamBatcher:
    """Truncated-BPTT batches from contiguous streams of one token sequence.

    The sequence is cut into `total_streams` equal contiguous streams; this
    batcher serves streams `first_stream .. first_stream + num_streams - 1`
    (all of them by default; a distributed rank takes its own share). Batch k
    of an epoch holds tokens `k*T .. k*T+T` of every served stream as inputs
    and the next token of each as targets, both shaped (T, B).
    """

    def __init__(
        self,
        tokens: torch.Tensor,
        total_streams: int,
        seq_len: int,
        *,
        first_stream: int = 0,
        num_streams: int | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        num_streams = total_streams - first_stream if num_streams is None else num_streams
        if not 0 <= first_stream < first_stream + num_streams <= total_streams:
            raise ValueError("streams out of range")
        self.stream_len = (tokens.numel() - 1) // total_streams
        self.seq_len = seq_len
        self.steps_per_epoch = self.stream_len // seq_len
        if self.steps_per_epoch < 1:
            raise CharrnnError(
                f"{tokens.numel()} training tokens are too few for {total_streams} streams of {seq_len} tokens"
            )
        self.device = torch.device(device)
        # Small corpora move to the device once; big ones stay memory-mapped and only batches move.
        on_device = tokens.numel() * tokens.element_size() <= (512 << 20) or self.device.type == "cpu"
        self.tokens = tokens.to(self.device) if on_device else tokens
        index_device = self.device if on_device else torch.device("cpu")
        starts = torch.arange(first_stream, first_stream + num_streams, device=index_device) * self.stream_len
        self._window = starts[:, None] + torch.arange(seq_len + 1, device=index_device)  # (B, T+1)

    @property
    def batch_size(self) -> int:
        return self._window.shape[0]

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets for step `step` (0-based, within an epoch), each (T, B) int64."""
        if not 0 <= step < self.steps_per_epoch:
            raise IndexError(step)
        chunk = self.tokens[self._window + step * self.seq_len]  # (B, T+1)
        chunk = chunk.to(self.device, non_blocking=True).long().t()
        return chunk[:-1], chunk[1:]


def token_counts(tokens: torch.Tensor, vocab_size: int, chunk: int = 1 << 24) -> torch.Tensor:
    """How often each id occurs, counted a chunk at a time (a memory-mapped split is never copied whole)."""
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for start in range(0, tokens.numel(), chunk):
        counts += torch.bincount(tokens[start : start + chunk].long(), minlength=vocab_size)[:vocab_size]
    return counts


def fit_batch_size(num_tokens: int, batch_size: int, seq_len: int, warn: Progress | None = None) -> int:
    """Shrink the batch when the training text is too short for batch × sequence (with a warning)."""
    fits = (num_tokens - 1) // seq_len
    if fits < 1:
        raise CharrnnError(
            f"the training split has {num_tokens} tokens, fewer than one sequence of {seq_len}: "
            "use a smaller --seq-len or more text"
        )
    if fits < batch_size:
        message = f"training text too short for {batch_size} streams of {seq_len} tokens: using {fits} streams"
        (warn or (lambda m: warnings.warn(m, stacklevel=2)))(message)
        return fits
    return batch_size

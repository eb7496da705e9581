"""One GPU kernel that chooses the next token of every stream, for any top-k and top-p (Triton).

A sampling step on a GPU is bound by its kernel count, and torch calls take two kernels at a plain
temperature and about eight with top-p. This kernel ranks tokens without sorting, by a (V, V)
comparison per stream (hence `MAX_VOCAB`), with the semantics of `torch_sampler.Chooser`: top-k
keeps the k most likely tokens, top-p each token whose more likely kept tokens hold less than p of
the kept probability, and the draw is the argmax of the kept logits plus Gumbel noise. Triton is
imported only when a CUDA sampler asks for the kernel; see docs/sampling.md.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

MAX_VOCAB = 256


@functools.cache
def _kernel() -> Any:
    """The compiled-on-first-use Triton kernel, or None where Triton is missing."""
    try:
        import triton
        import triton.language as tl
    except Exception:  # noqa: BLE001 (missing, or a broken install: the torch chooser serves instead)
        return None

    @triton.jit
    def choose(
        logits_ptr,
        noise_ptr,
        out_ptr,
        vocab,
        logits_stride,
        noise_stride,
        top_k,
        top_p,
        USE_TOP_K: tl.constexpr,
        USE_TOP_P: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0)
        ids = tl.arange(0, BLOCK)
        valid = ids < vocab
        logits = tl.load(logits_ptr + row * logits_stride + ids, mask=valid, other=-float("inf"))
        noise = tl.load(noise_ptr + row * noise_stride + ids, mask=valid, other=0.0)
        keep = logits > -float("inf")  # banned ids, masked ids and the padding never win
        if USE_TOP_K or USE_TOP_P:
            # before[i, j]: token i comes before token j (more likely, or as likely with a smaller id)
            li, lj = logits[:, None], logits[None, :]
            before = ((li > lj) | ((li == lj) & (ids[:, None] < ids[None, :]))) & valid[:, None]
            if USE_TOP_K:
                keep = keep & (tl.sum(before.to(tl.int32), axis=0) < top_k)
            if USE_TOP_P:
                top = tl.max(tl.where(keep, logits, -float("inf")), axis=0)
                weights = tl.where(keep, tl.exp(logits - top), 0.0)  # unnormalized, the largest 1
                ahead = tl.sum(tl.where(before, weights[:, None], 0.0), axis=0)
                keep = keep & (ahead < top_p * tl.sum(weights, axis=0))
        score = tl.where(keep, logits + noise, -float("inf"))
        tl.store(out_ptr + row, tl.argmax(score, axis=0).to(tl.int64))

    return choose


def available(vocab: int) -> bool:
    return vocab <= MAX_VOCAB and _kernel() is not None


def choose(logits: torch.Tensor, noise: torch.Tensor, top_k: int, top_p: float, out: torch.Tensor) -> torch.Tensor:
    """Write into `out` (B,) the token drawn for each row of `logits` (B, V, temperature applied)
    with Gumbel `noise` (B, V); top_k 0 or >= V means no top-k, top_p 1.0 no top-p."""
    batch, vocab = logits.shape
    block = max(16, 1 << (vocab - 1).bit_length())
    use_top_k = 0 < top_k < vocab
    _kernel()[(batch,)](
        logits,
        noise,
        out,
        vocab,
        logits.stride(0),
        noise.stride(0),
        top_k if use_top_k else vocab,
        float(top_p),
        USE_TOP_K=use_top_k,
        USE_TOP_P=top_p < 1.0,
        BLOCK=block,
        num_warps=max(4, block // 16),  # the (V, V) comparison: at most 128 of its values per thread
    )
    return out

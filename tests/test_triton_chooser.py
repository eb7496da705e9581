"""Specification of charrnn.sample.triton_chooser, the one-kernel token chooser of the CUDA sampler.

The kernel runs here in Triton's CPU interpreter (TRITON_INTERPRET=1, which must be set before
Triton is imported, hence a fresh Python per test); on a GPU, `Chooser.for_device` checks it
against the torch chooser again before using it. Skipped where Triton is not installed.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")

PRELUDE = """
import torch
from charrnn.sample import triton_chooser as generate_triton
from charrnn.sample.torch_sampler import Chooser, filter_logits
from charrnn.sample.settings import SampleSettings

def gumbel(rows, vocab, seed):
    u = torch.rand(rows, vocab, generator=torch.Generator().manual_seed(seed)).clamp_(1e-10, 1 - 1e-7)
    return u.log_().neg_().log_().neg_()
"""


def _interpreted(body: str) -> None:
    """Run PRELUDE + body in a fresh Python with Triton's interpreter; fail with its output."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    code = PRELUDE + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


def test_the_kernel_picks_what_the_torch_chooser_picks() -> None:
    # The same noise over the whole vocabulary, so both must land on the same token.
    _interpreted(
        """
        for vocab in (5, 66, 256):
            for top_k, top_p in [(0, 1.0), (10, 1.0), (0, 0.9), (10, 0.5), (0, 0.3), (3, 0.95), (vocab, 1e-9)]:
                logits = torch.randn(40, vocab, generator=torch.Generator().manual_seed(vocab)) * 2
                logits[:, 1] = float("-inf")  # a banned id
                noise = gumbel(40, vocab, top_k)
                out = torch.empty(40, dtype=torch.long)
                got = generate_triton.choose(logits, noise, top_k, top_p, out)
                assert got is out
                expected = (filter_logits(logits, top_k, top_p) + noise).argmax(dim=-1)
                agree = (got == expected).float().mean().item()
                assert agree == 1.0, (vocab, top_k, top_p, agree)
        """
    )


def test_the_chooser_runs_the_kernel_over_noise_for_the_whole_vocabulary() -> None:
    # Same noise, same token as the torch chooser (above), so the kernel's draws follow the same
    # distribution as the torch chooser's, which tests/test_torch_sampler.py checks against the softmax.
    _interpreted(
        """
        chooser = Chooser(SampleSettings(temperature=1.0, top_k=5, top_p=0.8), 66, 8, torch.Generator().manual_seed(3),
                          kernel=True)
        assert chooser.width == 66  # noise over the whole vocabulary, not just the top k
        logits = torch.randn(8, 66)
        noise = chooser.noise(2)
        out = torch.empty(8, dtype=torch.long)
        assert chooser(logits, noise[0], out=out) is out
        kept = torch.isfinite(filter_logits(logits, 5, 0.8))
        assert kept[torch.arange(8), out].all()
        assert torch.equal(chooser(logits, None), logits.argmax(dim=-1))  # greedy needs no kernel
        assert chooser.agrees_with_torch(rows=64)
        """
    )


def test_the_torch_chooser_is_kept_off_cuda_and_for_big_vocabularies() -> None:
    _interpreted(
        """
        settings = SampleSettings(temperature=1.0, top_p=0.9)
        assert not Chooser.for_device(settings, 66, 4, torch.Generator()).kernel  # the CPU: torch
        assert not generate_triton.available(generate_triton.MAX_VOCAB + 1)
        assert generate_triton.available(generate_triton.MAX_VOCAB)
        """
    )


def test_the_kernel_compiles_for_an_h100() -> None:
    # Ahead of time, without a GPU: Triton's own compiler and ptxas, for compute capability 9.0.
    code = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from charrnn.sample import triton_chooser as generate_triton
kernel = generate_triton._kernel()
pointers = {"logits_ptr": "*fp32", "noise_ptr": "*fp32", "out_ptr": "*i64"}
numbers = {"vocab": "i32", "logits_stride": "i32", "noise_stride": "i32", "top_k": "i32", "top_p": "fp32"}
flags = {"USE_TOP_K": "constexpr", "USE_TOP_P": "constexpr", "BLOCK": "constexpr"}
for top_k, top_p, block in [(False, False, 128), (True, True, 128), (True, True, 256)]:
    constants = {"USE_TOP_K": top_k, "USE_TOP_P": top_p, "BLOCK": block}
    source = ASTSource(fn=kernel, signature={**pointers, **numbers, **flags}, constexprs=constants)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": max(4, block // 16)})
    assert compiled.asm["cubin"] and ".local" not in compiled.asm["ptx"]  # no spills to local memory
"""
    env = {**os.environ, "TRITON_DEFAULT_FP_FUSION": "1"}
    env.pop("TRITON_INTERPRET", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    if done.returncode and ("ImportError" in done.stderr or "TypeError" in done.stderr):
        pytest.skip(f"this Triton's ahead-of-time API differs: {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_a_gpu_the_sampler_chooses_with_the_kernel() -> None:
    from charrnn.sample.settings import SampleSettings
    from charrnn.sample.torch_sampler import Chooser

    generator = torch.Generator(device="cuda").manual_seed(0)
    for settings in (SampleSettings(temperature=0.8), SampleSettings(top_k=10, top_p=0.9)):
        chooser = Chooser.for_device(settings, 66, 4, generator)
        assert chooser.kernel and chooser.agrees_with_torch()

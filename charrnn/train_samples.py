"""Samples while training: at an evaluation, a short text from the weights as they are then.

The weights are copied off the model into numpy arrays and the numpy sampler draws from the copy
on the CPU, with a numpy Generator of its own seeded by the run's seed at every evaluation. Nothing
the training reads is touched: not the weights, not torch's random generators (so not the dropout
masks), not the model's train/eval mode. A run therefore ends with the same weights whether it
samples or not, and two successive samples differ only by what the model learnt in between.

The numpy sampler is the fastest one for a single short stream on the CPU (no torch call per
token; docs/performance.md). On a GPU the copy is a few megabytes and the host draws the sample,
leaving the device's memory, streams and generators to training alone.

A `--lines` run shows whole examples instead, one a line: LINES_EXAMPLES streams side by side,
each primed with a line break (and --sample-prime) and stopped at its own line break.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from charrnn.checkpoint import weight_shapes
from charrnn.config import ModelConfig, TrainConfig
from charrnn.data.tokenizers import Tokenizer
from charrnn.errors import CharrnnError
from charrnn.results import TrainSample
from charrnn.sample.numpy_sampler import sample_numpy
from charrnn.sample.settings import SampleSettings
from charrnn.sample.text import start_ids

TEMPERATURE = 0.8
LINES_EXAMPLES = 8  # examples a --lines run shows per sample


class TrainSampler:
    """Draws the run's samples on schedule: after every `cfg.sample_every`-th evaluation (0: never),
    and after the run's last one."""

    def __init__(
        self, cfg: TrainConfig, model_cfg: ModelConfig, tokenizer: Tokenizer, on_message: Callable[[str], None]
    ) -> None:
        self.cfg, self.model_cfg, self.tokenizer = cfg, model_cfg, tokenizer
        self.prime = ("\n" if cfg.lines else "") + cfg.sample_prime
        if cfg.sample_every and cfg.sample_prime:
            # Checked before the first step, so a bad prime never costs a run its first evaluation.
            try:
                _, unknown, _ = start_ids(tokenizer, self.prime)
            except CharrnnError:
                raise CharrnnError("--sample-prime holds only characters the corpus does not have") from None
            if unknown:
                on_message(f"--sample-prime: {unknown} character(s) not in the vocabulary are read as <unk>")

    def due(self, step: int, *, final: bool) -> bool:
        """Whether the evaluation at `step` (the last of the run when `final`) is followed by a sample."""
        if not self.cfg.sample_every:
            return False
        return final or (step // self.cfg.eval_interval) % self.cfg.sample_every == 0

    def draw(self, model: torch.nn.Module, step: int, elapsed: float, val_loss: float | None) -> TrainSample:
        started = time.perf_counter()
        lines = self.cfg.lines
        settings = SampleSettings(
            length=self.cfg.sample_length,
            temperature=TEMPERATURE,
            seed=self.cfg.seed,
            num_samples=LINES_EXAMPLES if lines else 1,
            stop=("\n",) if lines else (),
        )
        result = sample_numpy(self.model_cfg, weights_of(model, self.model_cfg), self.tokenizer, self.prime, settings)
        prime = self.cfg.sample_prime
        text = "\n".join(prime + t for t in result.texts) if lines else prime + result.texts[0]
        seconds = time.perf_counter() - started
        return TrainSample(step, round(elapsed, 3), val_loss, TEMPERATURE, prime, text, round(seconds, 4))


def weights_of(model: torch.nn.Module, cfg: ModelConfig) -> dict[str, Any]:
    """A float32 numpy copy of the model's weights, on the host, in the layout the numpy sampler
    reads (`checkpoint.weight_shapes`); the model itself is only read."""
    wanted = weight_shapes(cfg)
    with torch.no_grad():
        return {
            name: tensor.detach().to("cpu", torch.float32, copy=True).numpy()
            for name, tensor in model.state_dict().items()
            if name in wanted
        }

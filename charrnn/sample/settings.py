"""What a sampling call is asked for (`SampleSettings`) and what it gives back (`SampleResult`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from charrnn.arguments import integer, number, strings
from charrnn.errors import CharrnnError

MAX_LENGTH = 100_000_000
MAX_SAMPLES = 65_536
BLOCK_CPU = 32  # steps whose tokens reach Python together on the CPU (256 on a GPU)


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
        # Types first, with the flags' names (a Python caller may pass anything); then the ranges.
        typed = {
            "length": integer("--length", self.length),
            "temperature": number("--temperature", self.temperature),
            "top_k": integer("--top-k", self.top_k),
            "top_p": number("--top-p", self.top_p),
            "seed": None if self.seed is None else integer("--seed", self.seed),
            "num_samples": integer("--num-samples", self.num_samples),
            "stop": strings("--stop", self.stop),
        }
        for name, value in typed.items():
            object.__setattr__(self, name, value)
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
    tokens: int  # tokens that made the texts, over all streams (not those computed past a stream's end)
    seconds: float

    @property
    def chars_per_sec(self) -> float:
        return sum(len(t) for t in self.texts) / max(self.seconds, 1e-9)

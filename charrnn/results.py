"""What training hands back and tells as it goes: plain data, no torch.

The trainer (`training.py`) fills these in; the displays (`display.py`, the CLI) and callers of
`charrnn.train` read them. They live apart from the trainer so that a module that only renders a
run never imports torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TrainSample:
    """One sample, as samples.jsonl records it: `text` is what is shown, the prime followed by what
    the model wrote (a --lines run: whole examples, one a line, each starting with the prime)."""

    step: int
    time: float  # training seconds when it was drawn, as in metrics.jsonl
    val_loss: float | None  # the evaluation it follows (nats per character)
    temperature: float
    prime: str
    text: str
    seconds: float  # how long drawing it took

    def record(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Report:
    """What a progress display is told; the CLI renders it, the library stays silent."""

    on_start: Callable[[dict[str, Any]], None] = lambda info: None
    on_log: Callable[[dict[str, Any]], None] = lambda record: None
    on_message: Callable[[str], None] = lambda text: None
    on_end: Callable[[], None] = lambda: None
    on_sample: Callable[[TrainSample], None] = lambda sample: None  # after an evaluation (train_samples.py)


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    epochs: float
    elapsed: float
    best_val: float | None
    last_val: float | None
    train_loss: float | None
    chars_per_sec: float
    parameters: int
    stop_reason: str
    history: list[dict[str, Any]] = field(default_factory=list)

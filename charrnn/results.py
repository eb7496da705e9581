"""What training hands back and tells as it goes: plain data, no torch.

The trainer (`training_loop.py`) fills these in and tells its `Listener`s; the displays
(`display.py`, the CLI) and callers of `charrnn.train` read them. They live apart from the trainer
so that a module that only renders a run never imports torch.
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


class Listener:
    """A subscriber to a training run's events, told in the order the trainer holds them (on rank
    0): curves.png, the samples, the progress display. Each method does nothing unless overridden."""

    def on_start(self, info: dict[str, Any]) -> None:
        """Before the first step: total_steps, max_time, start_step, params, device, steps_per_epoch."""

    def before_timed_run(self) -> None:
        """Under a time budget, before the first step: pay now a one-time cost that the end of the
        run would otherwise pay unforeseen."""

    def on_record(self, record: dict[str, Any]) -> None:
        """Each metrics record, once metrics.jsonl has it."""

    def on_evaluated(self, record: dict[str, Any]) -> None:
        """A record that holds an evaluation (`eval` in it), after `on_record`; `stop` in it when
        it is the run's last."""

    def on_end(self, stop_reason: str) -> None:
        """The run has stopped, its last checkpoint saved."""


class Reported(Listener):
    """A `Report` (what a display is told) as a subscriber to the run's events."""

    def __init__(self, report: Report) -> None:
        self.report = report

    def on_start(self, info: dict[str, Any]) -> None:
        self.report.on_start(info)

    def on_record(self, record: dict[str, Any]) -> None:
        self.report.on_log(record)

    def on_end(self, stop_reason: str) -> None:
        self.report.on_end()


@dataclass
class TrainResult:
    """What a finished (or interrupted) training session hands back; `history` holds its metrics records."""

    run_dir: Path
    steps: int
    epochs: float
    elapsed: float  # the run's training seconds, over all its sessions
    best_val: float | None  # nats per character (the exact figure when the final weights are the best)
    last_val: float | None  # nats per character
    train_loss: float | None  # nats per token, the last record's
    chars_per_sec: float
    parameters: int
    stop_reason: str
    history: list[dict[str, Any]] = field(default_factory=list)

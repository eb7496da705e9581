"""The training budget and the schedule that follows it: when training stops, and why.

A run trains for a number of steps, of epochs or of seconds (the first spent ends it). A time
budget covers the end of the run too: `Budget.reserve` keeps back what the final exact evaluation,
the last saves, the final sample and drawing are expected to cost, measured as the run goes
(`Costs`), so that training stops early enough for them to fit. The learning rate follows the
budget's progress (`lr_factor`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from charrnn.config import TrainConfig
from charrnn.errors import CharrnnError
from charrnn.training_state import Progress

DEFAULT_EPOCHS = 20  # the budget when none of --max-steps/--max-epochs/--max-time is given
TIME_SPENT = "time budget reached"
MARGIN = 1.25  # on every estimate of what is to come: a busy machine slows down while it runs


def lr_factor(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warmup over `warmup_steps`, then cosine from 1 to `min_lr_frac` as progress goes 0 -> 1."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    progress = min(max(progress, 0.0), 1.0)
    return cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress))


def duration(seconds: float) -> str:
    """90.4 -> '1m30s', 3.2 -> '3.2s', 7300 -> '2h01m40s': what a message says of a time."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


@dataclass
class Costs:
    """What the rest of a run costs, in seconds, measured as it goes, so that a time budget stops
    training early enough for the end of the run (the final exact evaluation, the last save, the
    final sample and drawing) to fit in it. Until measured, each is a guess."""

    step: float | None = None  # a loop turn without an evaluation (moving average)
    interval: float | None = None  # the last turn with an interval evaluation: pass, sample, drawing, save
    exact_per_token: float | None = None  # a one-stream pass, per token (timed on a probe, then the real one)
    interval_per_token: float | None = None  # an interval pass, per validation token it scores
    save: float | None = None  # the longest save of a checkpoint
    sample: float = 0.1  # the last sample drawn
    drawing: float = 0.75  # the last drawing of curves.png (the first one imports matplotlib)

    def turned(self, seconds: float, *, evaluated: bool) -> None:
        if evaluated:
            self.interval = seconds
        else:
            self.step = seconds if self.step is None else 0.9 * self.step + 0.1 * seconds

    def saved(self, seconds: float) -> None:
        self.save = max(seconds, self.save or 0.0)


class Passes(Protocol):
    """What the validation passes to come cost (the trainer's `Evaluator`)."""

    def exact_pass_cost(self) -> float: ...
    def interval_pass_cost(self) -> float: ...
    def final_passes_cost(self) -> float: ...


class Budget:
    """The run's budget, read against its counters (`progress`): what is spent, what to keep back
    for the end of the run, the learning rate now, and the messages that say why training stops."""

    def __init__(
        self,
        cfg: TrainConfig,
        progress: Progress,
        steps_per_epoch: int,
        costs: Costs,
        passes: Passes,
        num_parameters: int,
    ) -> None:
        self.cfg, self.progress, self.steps_per_epoch = cfg, progress, steps_per_epoch
        self.costs, self.passes, self.num_parameters = costs, passes, num_parameters

    def total_steps(self) -> int | None:
        cfg = self.cfg
        limits = []
        if cfg.max_steps is not None:
            limits.append(cfg.max_steps)
        epochs = cfg.max_epochs
        if epochs is None and cfg.max_steps is None and cfg.max_time is None:
            epochs = DEFAULT_EPOCHS
        if epochs is not None:
            limits.append(max(1, math.ceil(epochs * self.steps_per_epoch)))
        return min(limits) if limits else None

    def lr(self) -> float:
        """The learning rate of the next step: the schedule at the budget's progress."""
        total, p = self.total_steps(), self.progress
        parts = [p.step / total] if total else []
        if self.cfg.max_time:
            parts.append(p.elapsed / self.cfg.max_time)
        return self.cfg.lr * lr_factor(self.cfg, p.step, max(parts) if parts else 0.0)

    def spent(self, reserve: float = 0.0) -> str | None:
        """Why training stops now, if it does: the time budget counts `reserve` seconds as spent."""
        total = self.total_steps()
        if total is not None and self.progress.step >= total:
            return "step budget reached" if self.cfg.max_steps == total else "epoch budget reached"
        if self.cfg.max_time is not None and self.progress.elapsed + reserve >= self.cfg.max_time:
            return TIME_SPENT
        return None

    def reserve(self) -> float:
        """The time to keep back after this step, under a time budget: what going on costs at the
        least (this step's interval evaluation if one is due, one more step) and the end of the run
        after it. Training stops when the budget cannot hold that, so that the end fits in it."""
        if self.cfg.max_time is None:
            return 0.0
        costs = self.costs
        going_on = MARGIN * (costs.step or 0.0)
        if self.progress.step % self.cfg.eval_interval == 0:
            going_on += costs.interval if costs.interval is not None else MARGIN * self._interval_guess()
        return going_on + self.end_cost()

    def _save_cost(self) -> float:
        """A save: the longest measured, or a guess from the size of the weights and moments."""
        if self.costs.save is not None:
            return self.costs.save
        return 0.05 + 3 * 4 * self.num_parameters / 100e6  # weights and two moments at 100 MB/s

    def _interval_guess(self) -> float:
        """An interval evaluation before one has been timed: its pass, a sample, a drawing, a save."""
        return self.passes.interval_pass_cost() + self.costs.sample + self.costs.drawing + self._save_cost()

    def end_cost(self) -> float:
        """The end of the run: the final evaluation, the best and last saves, the final sample and drawing."""
        passes, costs = self.passes.final_passes_cost(), self.costs
        rest = 2 * self._save_cost() + costs.drawing + (costs.sample if self.cfg.sample_every else 0.0)
        return MARGIN * (passes + rest) + 0.25

    def refuse_spent(self) -> None:
        """A resume must train: refused, in one line saying what the run has used, when its budget
        is spent already, or when its time budget leaves no time beyond the final evaluation."""
        p, cfg = self.progress, self.cfg
        epochs = p.epochs(self.steps_per_epoch)
        used = f"the run has already trained {p.step:,} steps ({epochs:.2f} epochs) / {duration(p.elapsed)}"
        total = self.total_steps()
        if total is not None and p.step >= total:
            if cfg.max_steps == total:
                option, budget = "--max-steps", f"--max-steps {cfg.max_steps}"
            else:
                option, budget = "--max-epochs", f"--max-epochs {cfg.max_epochs or DEFAULT_EPOCHS:g}"
            raise CharrnnError(f"cannot resume: {used}, all of {budget}: give a larger {option}")
        if cfg.max_time is not None:
            final = self.passes.exact_pass_cost()
            if p.elapsed + final >= cfg.max_time:
                needs = f" and its final evaluation takes about {duration(final)} here" if final >= 0.5 else ""
                raise CharrnnError(
                    f"cannot resume: {used}{needs}, which leaves --max-time {duration(cfg.max_time)} "
                    "no time to train: give a larger --max-time"
                )

    def say_why_time_stops(self, say: Callable[[str], None]) -> None:
        """The time budget ends training: say how long the end of the run is expected to take."""
        if self.cfg.max_time is None:
            return
        budget, end, p = duration(self.cfg.max_time), duration(self.end_cost()), self.progress
        if p.elapsed < self.cfg.max_time:
            say(
                f"stopping at {duration(p.elapsed)} of --max-time {budget}: "
                f"the final exact evaluation and the last save take about {end}"
            )
        else:  # set-up and the one step a run takes at least spent it, or a step took far longer than the last
            say(
                f"--max-time {budget} is spent ({duration(p.elapsed)} at step {p.step:,}): "
                f"the final exact evaluation and the last save take about {end} more"
            )

"""The training loop: truncated BPTT over contiguous streams, with exact resume.

One step takes the next window of every stream (`StreamBatcher`), runs it from the hidden state
the previous window left, back-propagates through that window only, clips the global gradient
norm and lets AdamW update. The loss reaches the host only at logging intervals; the one read in
every step is whether the gradient norm is finite, so that a NaN step is skipped, not applied.

Everything that decides what happens next (weights, optimizer moments, step, position in the
epoch, carried hidden state, RNG states, best validation loss, patience) is saved in
`last.safetensors`, so `--resume` continues bit for bit where the run stopped, whatever stopped it.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from charrnn import __version__, distributed
from charrnn.checkpoint import load_checkpoint, save_checkpoint, train_config_of
from charrnn.checkpoint_checks import check_optimizer_state, check_train_state
from charrnn.config import ModelConfig, TrainConfig, asdict, from_dict
from charrnn.data.batcher import StreamBatcher, fit_batch_size, token_counts
from charrnn.data.corpus import Corpus
from charrnn.data.dataset import Dataset, Split, dataset_of_run, prepare_dataset
from charrnn.devices import use_bf16
from charrnn.distributed import Ranks
from charrnn.errors import CharrnnError, Interrupted
from charrnn.evaluate import evaluate
from charrnn.model import RNNLanguageModel, State, detach_state
from charrnn.plot import CurvesWriter
from charrnn.results import Report, TrainResult
from charrnn.rundir import RunDir, corpus_record
from charrnn.train_samples import TrainSampler

if TYPE_CHECKING:
    from charrnn.finetune import Source, Start

DEFAULT_EPOCHS = 20  # the budget when none of --max-steps/--max-epochs/--max-time is given
NONFINITE_LIMIT = 5  # consecutive skipped steps before giving up
BUDGET = ("max_steps", "max_epochs", "max_time")  # given on resume, they replace the saved budget as a whole
TIME_SPENT = "time budget reached"
PROBE_TOKENS = 1024  # one evaluation window: what the speed of a one-stream pass is timed on


class _StopFlag:
    """First SIGINT/SIGTERM asks the loop to save and stop; a second one exits at once.

    Exiting at once is safe because every file is replaced atomically.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._first_at = 0.0
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            # Ctrl-C reaches torchrun's workers twice: from the terminal and forwarded by torchrun.
            if signum == self.signum and distributed.launched() and time.monotonic() - self._first_at < 2.0:
                return
            os._exit(128 + signum)
        self.signum = signum
        self._first_at = time.monotonic()


def lr_factor(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warmup over `warmup_steps`, then cosine from 1 to `min_lr_frac` as progress goes 0 -> 1."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    progress = min(max(progress, 0.0), 1.0)
    return cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress))


def _optimizer(model: RNNLanguageModel, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    # Weight decay on matrices only; biases and the embedding table are left alone.
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (decay if param.dim() >= 2 and not name.startswith("embed") else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = device.type == "cuda"
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.99), fused=fused)


def _state_to_list(state: State) -> list[torch.Tensor]:
    return list(state) if isinstance(state, tuple) else [state]


def _state_from_list(tensors: list[torch.Tensor], cell: str, device: torch.device) -> State:
    tensors = [t.to(device) for t in tensors]
    return (tensors[0], tensors[1]) if cell == "lstm" else tensors[0]


@dataclass
class _Progress:
    """The loop's counters; saved and restored as a unit."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    elapsed: float = 0.0
    best_val: float | None = None
    last_val: float | None = None
    bad_evals: int = 0
    chars_seen: int = 0
    window_loss: float = 0.0  # summed train loss since the last metrics record
    window_steps: int = 0


@dataclass
class _Window:
    """What the next metrics record averages: the train loss summed on the device (read back only
    when a record is written), the updates and tokens since the last record, and when it began."""

    loss_sum: torch.Tensor
    steps: int
    tokens: int = 0
    start: float = field(default_factory=time.monotonic)

    def add(self, loss: torch.Tensor, tokens: int) -> None:
        self.loss_sum += loss
        self.steps += 1
        self.tokens += tokens

    def restart(self, now: float) -> None:
        self.loss_sum.zero_()
        self.steps, self.tokens, self.start = 0, 0, now


def _fastest_of_two(work: Callable[[], object]) -> float:
    """The faster of two timings of `work`: the first pays one-time costs (kernel selection, memory
    first touched) and, on a busy machine, a bad moment; a probe timed once overestimated the final
    evaluation by 10 to 50 times under load and left a short budget one step."""
    timings = []
    for _ in range(2):
        started = time.monotonic()
        work()
        timings.append(time.monotonic() - started)
    return min(timings)


@dataclass
class _Costs:
    """What the rest of a run costs, in seconds, measured as it goes, so that a time budget stops
    training early enough for the end of the run (the final exact evaluation, the last save, the
    final sample and drawing) to fit in it. Until measured, each is a guess."""

    step: float | None = None  # a loop turn without an evaluation (moving average)
    interval: float | None = None  # the last turn with an interval evaluation: pass, sample, drawing, save
    exact_per_token: float | None = None  # a one-stream pass, per token (timed on PROBE_TOKENS, then the real one)
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


MARGIN = 1.25  # on every estimate of what is to come: a busy machine slows down while it runs


class Trainer:
    def __init__(
        self,
        run: RunDir,
        dataset: Dataset,
        model_cfg: ModelConfig,
        cfg: TrainConfig,
        corpus_info: dict[str, Any],
        report: Report,
        *,
        ranks: Ranks | None = None,
        budget_from: float | None = None,
        start: Start | None = None,
    ) -> None:
        self.run, self.data, self.model_cfg, self.cfg = run, dataset, model_cfg, cfg
        self.corpus_info = corpus_info
        self.origin = start.origin if start else None  # where a fine-tune started, kept in its checkpoints
        # Under torchrun: cfg.batch_size streams per rank, rank r serving streams r*B .. r*B+B-1 of N*B.
        self.ranks = ranks or Ranks()
        self.report = report if self.ranks.is_main else Report()
        self.curves = CurvesWriter(run.path, self.report.on_message)
        self.device = self.ranks.device_for(cfg.device)
        self.bf16 = use_bf16(cfg.precision, self.device)
        torch.manual_seed(cfg.seed)
        self.model = RNNLanguageModel(model_cfg)
        if start is None:
            self.model.init_output_bias(token_counts(dataset.train.tokens, model_cfg.vocab_size))
        else:
            self.model.load_state_dict(start.weights)  # --init-from: another model's (charrnn.finetune)
        self.model.to(self.device)
        self.net = self.ranks.wrap(self.model, self.device)  # forward/backward only; DDP averages gradients
        self.ranks.seed_dropout(cfg.seed)
        self.optimizer = _optimizer(self.model, cfg, self.device)
        self.batcher = StreamBatcher(
            dataset.train.tokens,
            cfg.batch_size * self.ranks.world,
            cfg.seq_len,
            first_stream=cfg.batch_size * self.ranks.rank,
            num_streams=cfg.batch_size,
            device=self.device,
        )
        self.p = _Progress()
        self.state: State = self.model.init_state(self.batcher.batch_size, self.device)
        self.history: list[dict[str, Any]] = []
        self.budget_from = budget_from  # see `train`
        self.params = list(self.model.parameters())
        self.tokens_per_step = self.batcher.batch_size * self.batcher.seq_len * self.ranks.world
        self.bad_in_a_row = 0  # updates skipped in a row (see `_skip_update`)
        self.chars_per_token = dataset.train.num_chars / max(1, dataset.train.num_tokens)
        self.sampler = TrainSampler(cfg, model_cfg, dataset.tokenizer, self.report.on_message)
        self.costs = _Costs()
        self.best_exact: float | None = None  # the final exact figure, when the final weights are the best

    # ----- budget -----
    def total_steps(self) -> int | None:
        cfg = self.cfg
        limits = []
        if cfg.max_steps is not None:
            limits.append(cfg.max_steps)
        epochs = cfg.max_epochs
        if epochs is None and cfg.max_steps is None and cfg.max_time is None:
            epochs = DEFAULT_EPOCHS
        if epochs is not None:
            limits.append(max(1, math.ceil(epochs * self.batcher.steps_per_epoch)))
        return min(limits) if limits else None

    def _budget_progress(self) -> float:
        total = self.total_steps()
        parts = [self.p.step / total] if total else []
        if self.cfg.max_time:
            parts.append(self.p.elapsed / self.cfg.max_time)
        return max(parts) if parts else 0.0

    def _budget_spent(self, reserve: float = 0.0) -> str | None:
        """Why training stops now, if it does: the time budget counts `reserve` seconds as spent."""
        total = self.total_steps()
        if total is not None and self.p.step >= total:
            return "step budget reached" if self.cfg.max_steps == total else "epoch budget reached"
        if self.cfg.max_time is not None and self.p.elapsed + reserve >= self.cfg.max_time:
            return TIME_SPENT
        return None

    def _reserve(self) -> float:
        """The time to keep back after this step, under a time budget: what going on costs at the
        least (this step's interval evaluation if one is due, one more step) and the end of the run
        after it. Training stops when the budget cannot hold that, so that the end fits in it."""
        if self.cfg.max_time is None:
            return 0.0
        costs = self.costs
        going_on = MARGIN * (costs.step or 0.0)
        if self.p.step % self.cfg.eval_interval == 0:
            going_on += costs.interval if costs.interval is not None else MARGIN * self._interval_guess()
        return going_on + self._end_cost()

    def _save_cost(self) -> float:
        """A save: the longest measured, or a guess from the size of the weights and moments."""
        if self.costs.save is not None:
            return self.costs.save
        return 0.05 + 3 * 4 * self.model.num_parameters() / 100e6  # weights and two moments at 100 MB/s

    def _interval_pass_cost(self) -> float:
        val = self.data.val
        if val is None:
            return 0.0
        per_token = self.costs.interval_per_token or self.costs.exact_per_token or 0.0
        return per_token * min(val.num_tokens, self.cfg.eval_tokens or val.num_tokens)

    def _interval_guess(self) -> float:
        """An interval evaluation before one has been timed: its pass, a sample, a drawing, a save."""
        return self._interval_pass_cost() + self.costs.sample + self.costs.drawing + self._save_cost()

    def exact_pass_cost(self) -> float:
        """The final exact pass over the whole validation split, at the measured one-stream speed."""
        val = self.data.val
        if val is None:
            return 0.0
        if self.costs.exact_per_token is None:
            self._time_exact_pass()
        return (self.costs.exact_per_token or 0.0) * (val.num_tokens - 1)

    def _end_cost(self) -> float:
        """The end of the run: the final evaluation (the interval estimate that judges the best
        weights, and the exact pass), the best and last saves, the final sample and drawing."""
        judged = self._interval_is_exact() or self._first_judged()  # no interval estimate at the end
        passes = self.exact_pass_cost() + (0.0 if judged else self._interval_pass_cost())
        rest = 2 * self._save_cost() + self.costs.drawing + (self.costs.sample if self.cfg.sample_every else 0.0)
        return MARGIN * (passes + rest) + 0.25

    def _time_exact_pass(self) -> None:
        """Time a one-stream pass over the first window of the validation split: the speed of the
        final evaluation on this machine today (set-up included, so a slight overestimate)."""
        val = self.data.val
        if val is None or val.num_tokens < 2:
            return
        n = min(val.num_tokens, PROBE_TOKENS + 1)
        probe = Split(val.tokens[:n], n)
        self.costs.exact_per_token = _fastest_of_two(
            lambda: evaluate(self.model, probe, self.data.tokenizer, autocast=self.bf16)
        ) / (n - 1)

    def _time_the_end(self) -> None:
        """Under a time budget, before the first step: time the final evaluation's speed, and pay
        the import that the final drawing of curves.png needs (matplotlib, seconds on a busy
        machine), which the end of the run would otherwise pay unforeseen."""
        self._time_exact_pass()
        val, streams = self.data.val, self.eval_streams()
        if val is not None and self.costs.interval_per_token is None and streams > 1:
            # And an interval pass's, on a few tokens per stream, until one is timed (on this rank
            # alone: under torchrun an overestimate, the pieces being shared among the ranks).
            n = min(val.num_tokens, streams * PROBE_TOKENS // 8 + 1)
            probe = Split(val.tokens[:n], n)
            seconds = _fastest_of_two(
                lambda: evaluate(self.model, probe, self.data.tokenizer, streams=streams, autocast=self.bf16)
            )
            self.costs.interval_per_token = seconds / (n - 1)
        if not self.ranks.is_main:
            return  # only rank 0 draws
        started = time.monotonic()
        try:
            import matplotlib.backends.backend_agg  # noqa: F401
            import matplotlib.figure  # noqa: F401
        except ImportError:
            return  # no drawing then (CurvesWriter says so, once)
        self.costs.drawing = time.monotonic() - started + 0.2  # and the drawing itself, until timed

    def refuse_spent_budget(self) -> None:
        """A resume must train: refused, in one line saying what the run has used, when its budget
        is spent already, or when its time budget leaves no time beyond the final evaluation."""
        epochs = self.p.epoch + self.p.step_in_epoch / self.batcher.steps_per_epoch
        used = f"the run has already trained {self.p.step:,} steps ({epochs:.2f} epochs) / {_duration(self.p.elapsed)}"
        total = self.total_steps()
        if total is not None and self.p.step >= total:
            if self.cfg.max_steps == total:
                option, budget = "--max-steps", f"--max-steps {self.cfg.max_steps}"
            else:
                option, budget = "--max-epochs", f"--max-epochs {self.cfg.max_epochs or DEFAULT_EPOCHS:g}"
            raise CharrnnError(f"cannot resume: {used}, all of {budget}: give a larger {option}")
        if self.cfg.max_time is not None:
            final = self.exact_pass_cost()
            if self.p.elapsed + final >= self.cfg.max_time:
                needs = f" and its final evaluation takes about {_duration(final)} here" if final >= 0.5 else ""
                raise CharrnnError(
                    f"cannot resume: {used}{needs}, which leaves --max-time {_duration(self.cfg.max_time)} "
                    "no time to train: give a larger --max-time"
                )

    # ----- checkpoints -----
    def _payload(self, *, with_train_state: bool) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "charrnn_version": __version__,
            "model_config": asdict(self.model_cfg),
            "train_config": asdict(self.cfg),
            "tokenizer": self.data.tokenizer.to_state(),
            "model": self.model.state_dict(),
            "corpus": self.corpus_info,
            "metrics": {"step": self.p.step, "val_loss": self.p.last_val, "best_val_loss": self.p.best_val},
        }
        if self.origin is not None:
            payload["init_from"] = self.origin
        if with_train_state:
            # Under torchrun every rank must call this (it gathers): the hidden state of all N*B
            # streams in global order and every rank's generators, so a resume can re-shard them.
            payload["train_state"] = {
                "optimizer": self.optimizer.state_dict(),
                "progress": dict(vars(self.p)),
                "hidden": self.ranks.gather_streams(_state_to_list(self.state)),
                "batch_size": self.batcher.batch_size * self.ranks.world,  # streams in all ranks together
                "world_size": self.ranks.world,
                "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            }
            if self.ranks.distributed:
                payload["train_state"]["rng_ranks"] = self.ranks.rng_states(self.device)
        return payload

    def save_last(self) -> None:
        started = time.monotonic()
        payload = self._payload(with_train_state=True)  # every rank: it gathers
        if self.ranks.is_main:
            save_checkpoint(self.run.last, payload)
        self.costs.saved(time.monotonic() - started)

    def save_best(self) -> None:
        started = time.monotonic()
        if self.ranks.is_main:
            save_checkpoint(self.run.best, self._payload(with_train_state=False))
        self.costs.saved(time.monotonic() - started)

    def restore(self, payload: dict[str, Any]) -> None:
        state = payload.get("train_state")
        if not isinstance(state, dict):
            raise CharrnnError(f"{self.run.last} has no training state to resume from")
        check_optimizer_state(
            self.run.resume_from() or self.run.last, state.get("optimizer"), self.optimizer, self.model
        )
        try:
            self.model.load_state_dict(payload["model"])
            self.origin = payload.get("init_from")  # a fine-tune's record of its source
            self.optimizer.load_state_dict(state["optimizer"])
            self.p = _Progress(**state["progress"])
            hidden = self.ranks.shard_streams(state["hidden"])  # this rank's streams of all N*B
            self.state = _state_from_list(hidden, self.model_cfg.cell, self.device)
            torch.set_rng_state(state["rng_cpu"])
            if torch.cuda.is_available() and len(state["rng_cuda"]) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(state["rng_cuda"])
            saved_world = state.get("world_size", 1)
            self.ranks.restore_rng(state.get("rng_ranks"), saved_world, self.cfg.seed, self.device)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CharrnnError(f"cannot resume from {self.run.last}: {str(exc).splitlines()[0][:200]}") from None
        if self.state_batch() != self.batcher.batch_size:
            raise CharrnnError("cannot resume: the saved hidden state has a different number of streams")

    def state_batch(self) -> int:
        first = self.state[0] if isinstance(self.state, tuple) else self.state
        return int(first.shape[1])

    # ----- the loop -----
    def validate(self, *, exact: bool = False) -> float | None:
        """The validation loss (nats per character). `exact` (the final evaluation): the whole split
        in one stream, the figure `charrnn eval` gives. Else an estimate: the first cfg.eval_tokens
        tokens (their characters counted by proportion), in cfg.eval_streams pieces side by side, by
        default as many as the batch has streams."""
        if self.data.val is None:
            return None
        val = self.data.val
        if not exact and self.cfg.eval_tokens is not None and val.num_tokens > self.cfg.eval_tokens:
            # A huge validation split is sampled by its first eval_tokens tokens during training.
            share = self.cfg.eval_tokens / val.num_tokens
            val = Split(val.tokens[: self.cfg.eval_tokens], max(2, round(val.num_chars * share)))
        # Under torchrun the pieces are shared among the ranks and their sums added up: the number
        # is the one a single process gets with the same eval_streams, and every rank has it.
        streams = 1 if exact else self.eval_streams()
        started = time.monotonic()
        result = evaluate(self.model, val, self.data.tokenizer, streams=streams, autocast=self.bf16, ranks=self.ranks)
        per_token = (time.monotonic() - started) / max(1, val.num_tokens - 1)
        if exact or streams == 1:
            self.costs.exact_per_token = per_token
        else:
            self.costs.interval_per_token = per_token
        return result.nats_per_char

    def _first_judged(self) -> bool:
        """No evaluation has judged weights yet: the next one's are the best, whatever they score."""
        return self.data.val is not None and self.p.best_val is None and self.p.bad_evals == 0

    def _interval_is_exact(self) -> bool:
        """Whether an interval evaluation is the exact one already: one stream over the whole split."""
        val = self.data.val
        capped = val is not None and self.cfg.eval_tokens is not None and val.num_tokens > self.cfg.eval_tokens
        return self.eval_streams() == 1 and not capped

    def eval_streams(self) -> int:
        """Validation pieces during training: cfg.eval_streams, or the streams of all ranks' batches."""
        return self.cfg.eval_streams or self.batcher.batch_size * self.ranks.world

    def close(self) -> None:
        """Let go of DDP's wrapper, which holds the process group, so the group can be destroyed
        while the interpreter is whole (distributed.session); `model` stays usable."""
        self.net = self.model

    def fit(self, stop: _StopFlag | None = None) -> TrainResult:
        """Update until the budget is spent, patience runs out or a signal asks to stop, writing a
        metrics record, evaluating and saving on their schedules, and saving at the end."""
        self._announce()
        window = _Window(torch.tensor(self.p.window_loss, device=self.device), self.p.window_steps)
        # The run's clock: the time of its earlier sessions, then this one's from `budget_from` (its
        # set-up included) or from now.
        clock = (self.budget_from if self.budget_from is not None else time.monotonic()) - self.p.elapsed
        if self.cfg.max_time is not None:
            self._time_the_end()
        stop_reason = self._budget_spent() if self.p.step else None  # a new run takes at least one step
        self.net.train()
        while stop_reason is None:
            began = time.monotonic()
            update = self.step()
            if update is None:
                continue  # skipped: no step was taken
            loss, lr = update
            window.add(loss, self.tokens_per_step)
            # Every rank must read the same clock (time budget, LR schedule) and stop at the same step.
            signalled = stop is not None and stop.signum is not None
            self.p.elapsed, signalled, reserve = self._agree(time.monotonic() - clock, signalled, self._reserve())
            stop_reason = "interrupted" if signalled else self._budget_spent(reserve)
            if stop_reason == TIME_SPENT:
                self._say_why_time_stops()
            interval = stop_reason is None and self.p.step % self.cfg.eval_interval == 0
            stop_reason = self._log(window, lr, stop_reason, clock)
            if stop_reason is not None or self.p.step % (self.cfg.save_interval or self.cfg.eval_interval) == 0:
                self.p.window_loss, self.p.window_steps = float(self.ranks.mean(window.loss_sum)), window.steps
                if stop_reason is not None:  # the last checkpoint records the run's whole time
                    self.p.elapsed = self._agree(time.monotonic() - clock, False)[0]
                self.save_last()
            if stop_reason is None:
                self.costs.turned(time.monotonic() - began, evaluated=interval)
        return self._finish(stop_reason)

    def _say_why_time_stops(self) -> None:
        """The time budget ends training: say how long the end of the run is expected to take."""
        if self.cfg.max_time is None:
            return
        budget, end = _duration(self.cfg.max_time), _duration(self._end_cost())
        if self.p.elapsed < self.cfg.max_time:
            self.report.on_message(
                f"stopping at {_duration(self.p.elapsed)} of --max-time {budget}: "
                f"the final exact evaluation and the last save take about {end}"
            )
        else:  # set-up and the one step a run takes at least spent it, or a step took far longer than the last
            self.report.on_message(
                f"--max-time {budget} is spent ({_duration(self.p.elapsed)} at step {self.p.step:,}): "
                f"the final exact evaluation and the last save take about {end} more"
            )

    def _announce(self) -> None:
        self.report.on_start(
            {
                "total_steps": self.total_steps(),
                "max_time": self.cfg.max_time,
                "start_step": self.p.step,
                "params": self.model.num_parameters(),
                "device": self.ranks.describe(self.device),
                "steps_per_epoch": self.batcher.steps_per_epoch,
            }
        )

    def step(self) -> tuple[torch.Tensor, float] | None:
        """One update from the next window of every stream: its loss (on the device) and learning
        rate, or None when a non-finite loss or gradient made it skip the update."""
        if self.p.step_in_epoch >= self.batcher.steps_per_epoch:
            # End of the text: every stream starts over, so the carried state starts over too.
            self.p.epoch += 1
            self.p.step_in_epoch = 0
            self.state = self.model.init_state(self.batcher.batch_size, self.device)
        x, y = self.batcher.batch(self.p.step_in_epoch)
        lr = self.cfg.lr * lr_factor(self.cfg, self.p.step, self._budget_progress())
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss, new_state = self.loss(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        # Under torchrun the gradients are already averaged, so the norm, the clipping and the
        # decision to skip are the same on every rank (a NaN on one rank reaches them all).
        # Reading the norm's finiteness is the one wait on the device in every step.
        norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        if not bool(torch.isfinite(norm)):
            self._skip_update()
            return None
        self.bad_in_a_row = 0
        self.optimizer.step()
        self.state = detach_state(new_state)
        self.p.step += 1
        self.p.step_in_epoch += 1
        self.p.chars_seen += self.tokens_per_step
        return loss.detach().float(), lr

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, State]:
        """The mean loss of inputs x against targets y, both (T, B), run from the carried state, and
        the state after them."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            _, loss, new_state = self.net(x, self.state, y)
        return loss, new_state

    def _skip_update(self) -> None:
        """A non-finite loss or gradient: the weights stay as they were and the poisoned state is
        dropped; NONFINITE_LIMIT skips in a row end training."""
        self.bad_in_a_row += 1
        self.report.on_message(f"step {self.p.step + 1}: non-finite loss or gradient, update skipped")
        if self.bad_in_a_row >= NONFINITE_LIMIT:
            good = self.run.resume_from()
            kept = f"the last good checkpoint is {good}" if good else "nothing saved"
            raise CharrnnError(
                f"training diverged: {self.bad_in_a_row} steps in a row had a non-finite loss; try a lower --lr; {kept}"
            )
        self.state = self.model.init_state(self.batcher.batch_size, self.device)
        self.p.step_in_epoch += 1

    def _log(self, window: _Window, lr: float, stop_reason: str | None, clock: float) -> str | None:
        """At a logging or evaluation step (every evaluation interval, and at the end unless
        interrupted), write the metrics record; returns the stop reason, which patience may set."""
        final = stop_reason not in (None, "interrupted")  # the budget is spent: the final evaluation
        evaluate_now = self.p.step % self.cfg.eval_interval == 0 or final
        if not (self.p.step % self.cfg.log_interval == 0 or evaluate_now):
            return stop_reason
        record = self._train_record(window, lr)
        if evaluate_now:
            stop_reason = self._evaluate(record, stop_reason, clock)
        if stop_reason is not None:
            record["stop"] = stop_reason  # why the run ended, for `charrnn runs`
        self.history.append(record)
        if self.ranks.is_main:
            self.run.append_metrics(record)
            if evaluate_now:
                started = time.monotonic()
                self.curves.refresh()  # runs/NAME/curves.png; a failure is one message, never fatal
                if time.monotonic() - started > 0.01:  # it drew (it skips a drawing that comes too soon)
                    self.costs.drawing = time.monotonic() - started
        self.report.on_log(record)
        if evaluate_now and self.ranks.is_main and self.sampler.due(self.p.step, final=stop_reason is not None):
            sample = self.sampler.draw(self.model, self.p.step, record["time"], record["val_loss"])
            self.costs.sample = sample.seconds
            self.run.append_sample(sample.record())
            self.report.on_sample(sample)
        return stop_reason

    def _train_record(self, window: _Window, lr: float) -> dict[str, Any]:
        """The record of the training since the last one; the window starts over."""
        now = time.monotonic()
        record = {
            "step": self.p.step,
            "epoch": round(self.p.epoch + self.p.step_in_epoch / self.batcher.steps_per_epoch, 4),
            "time": round(self.p.elapsed, 3),
            "train_loss": float(self.ranks.mean(window.loss_sum)) / max(1, window.steps),
            "lr": lr,
            "chars_per_sec": window.tokens * self.chars_per_token / max(now - window.start, 1e-9),
        }
        window.restart(now)
        return record

    def _evaluate(self, record: dict[str, Any], stop_reason: str | None, clock: float) -> str | None:
        """Score the validation split into `record`, keep the best weights, and count patience.

        The best weights and patience go by the interval estimate (capped, in pieces), so that
        every evaluation is judged by the same measure. The final evaluation, when the run stops
        here (its budget is spent, or patience runs out now), is also exact: the whole split in one
        stream, the figure `charrnn eval` gives; that is its `val_loss`, and the estimate beside it
        is `val_estimate`. `eval` says which kind a record holds ("interval" or "final")."""
        # At the end, before any evaluation, the weights are the best whatever they score: no estimate.
        ending = stop_reason not in (None, "interrupted")
        estimate = None if ending and self._first_judged() else self.validate()
        improved = self._judge(estimate)
        if self.cfg.max_time is not None and stop_reason is None and not self._interval_is_exact():
            self._time_exact_pass()  # the final evaluation's speed, as busy as the machine is now
        patience = self.cfg.patience
        if self.p.bad_evals and patience and self.p.bad_evals >= patience and stop_reason is None:
            stop_reason = f"no improvement in {patience} evaluations"
        final = stop_reason not in (None, "interrupted")
        exact = estimate
        if final and (estimate is None or not self._interval_is_exact()):
            exact = self.validate(exact=True)
        self.p.last_val = exact if final else estimate
        record["val_loss"] = self.p.last_val
        record["eval"] = "final" if final else "interval"
        if final and estimate is not None:
            record["val_estimate"] = estimate
        if improved:
            self.save_best()  # once last_val is the figure the record gives: best's metrics say the same
            self.best_exact = exact if final else None
        self.p.elapsed = self._agree(time.monotonic() - clock, False)[0]  # the evaluation's time counts
        record["time"] = round(self.p.elapsed, 3)
        return stop_reason

    def _finish(self, stop_reason: str | None) -> TrainResult:
        if self.ranks.is_main:  # interrupted: only when cheap, a Ctrl-C must not wait for matplotlib
            self.curves.refresh(final=stop_reason != "interrupted")
        self.report.on_end()
        last_train = next((r["train_loss"] for r in reversed(self.history)), None)
        return TrainResult(
            run_dir=self.run.path,
            steps=self.p.step,
            epochs=self.p.epoch + self.p.step_in_epoch / self.batcher.steps_per_epoch,
            elapsed=self.p.elapsed,
            best_val=self.best_exact if self.best_exact is not None else self.p.best_val,
            last_val=self.p.last_val,
            train_loss=last_train,
            chars_per_sec=self.p.chars_seen * self.chars_per_token / max(self.p.elapsed, 1e-9),
            parameters=self.model.num_parameters(),
            stop_reason=stop_reason or "finished",
            history=self.history,
        )

    def _agree(self, elapsed: float, signalled: bool, reserve: float = 0.0) -> tuple[float, bool, float]:
        """The elapsed time, stop request and time reserve every rank acts on: the latest clock,
        any signal, the largest reserve."""
        elapsed, flag, reserve = self.ranks.agree_max([elapsed, float(signalled), reserve], self.device)
        return elapsed, flag > 0, reserve

    def _judge(self, val: float | None) -> bool:
        """Count patience by the validation loss `val`; whether these weights are the best so far."""
        if val is None:
            return True  # no validation split: the latest weights are the best we know
        if not math.isfinite(val):
            self.p.bad_evals += 1
            return False
        if self.p.best_val is None or val < self.p.best_val:
            self.p.best_val = val
            self.p.bad_evals = 0
            return True
        self.p.bad_evals += 1
        return False


def _duration(seconds: float) -> str:
    """90.4 -> '1m30s', 3.2 -> '3.2s', 7300 -> '2h01m40s': what a message says of a time."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def train(
    corpus: Corpus,
    model_settings: dict[str, Any],
    cfg: TrainConfig,
    run_path: Path,
    *,
    val_corpus: Corpus | None = None,
    report: Report | None = None,
    handle_signals: bool = False,
    cache_dir: Path | None = None,
    budget_from: float | None = None,
    init_from: Source | None = None,
) -> TrainResult:
    """Train a new model on `corpus` into the run directory `run_path`; with `init_from`, start
    from that model's weights and tokenizer (`model_settings` then hold its architecture).

    Under torchrun every rank calls this with the same arguments; cfg.batch_size is per rank.
    Only rank 0 touches the run directory. A worker that torchrun restarts (--max-restarts)
    continues this job's run from its last checkpoint instead of starting over.

    The time budget (cfg.max_time, and the schedule that follows it) counts from the first
    training step, or from `budget_from`, an earlier `time.monotonic()` reading: `charrnn.train`
    (and so `charrnn train`) passes the moment it was called, the benchmarks their own start, so
    that data loading and model construction count against the budget. It covers the end of the
    run too: training stops early enough for the final exact evaluation and the last save to fit
    (`Trainer._reserve`). At least one step runs however much of it setting up took.
    """
    report = report or Report()
    with distributed.session() as ranks:
        run = RunDir(run_path)
        if distributed.restart_count() > 0 and ranks.broadcast(_started_by_this_job(run) if ranks.is_main else None):
            return resume(run_path, report=report, handle_signals=handle_signals, cache_dir=cache_dir)
        if not ranks.is_main:
            report = Report()
        ranks.together(lambda: _claim(run, fresh=True) if ranks.is_main else None)
        try:
            base = init_from.tokenizer if init_from else None  # a fine-tune's vocabulary grows from its source's
            dataset = _prepare_in_turn(
                ranks,
                lambda: prepare_dataset(
                    corpus, cfg, val_corpus=val_corpus, cache_dir=cache_dir, progress=report.on_message, base=base
                ),
            )
            batch = _fit_per_rank(dataset, cfg, ranks, report)
            if batch != cfg.batch_size:
                cfg = from_dict(TrainConfig, {**asdict(cfg), "batch_size": batch})
            model_cfg = ModelConfig(vocab_size=dataset.tokenizer.vocab_size, **model_settings)
            info = corpus_record(corpus, val_corpus, dataset)
            start = init_from.begin(dataset, report.on_message) if init_from else None
            trainer = Trainer(
                run, dataset, model_cfg, cfg, info, report, ranks=ranks, budget_from=budget_from, start=start
            )
            if ranks.is_main:
                launch = {"world_size": ranks.world, "job_id": distributed.job_id()} if distributed.launched() else None
                origin = start.origin if start is not None else None  # the source's path, content hash and step
                run.begin(
                    model_cfg,
                    cfg,
                    info,
                    dataset,
                    chars_per_token=trainer.chars_per_token,
                    init_from=origin,
                    torchrun=launch,
                )
            return _fit(trainer, handle_signals)
        finally:
            run.unlock()


def _claim(run: RunDir, *, fresh: bool) -> None:
    run.create(fresh=fresh)
    run.lock()


def _started_by_this_job(run: RunDir) -> bool:
    """The run holds a checkpoint that an earlier attempt of this torchrun job wrote."""
    if run.resume_from() is None:
        return False
    try:
        launch = run.read_config().get("torchrun") or {}
    except CharrnnError:
        return False
    return launch.get("job_id") == distributed.job_id()


def _prepare_in_turn(ranks: Ranks, prepare: Callable[[], Dataset]) -> Dataset:
    """Local rank 0 of each machine fills the token cache; the other ranks there then read it."""
    first = ranks.together(lambda: prepare() if ranks.local_rank == 0 else None)
    return ranks.together(lambda: first if first is not None else prepare())


def _fit_per_rank(dataset: Dataset, cfg: TrainConfig, ranks: Ranks, report: Report) -> int:
    """Streams per rank: cfg.batch_size, fewer when the text is too short for N × that many."""
    total = fit_batch_size(dataset.train.num_tokens, cfg.batch_size * ranks.world, cfg.seq_len, report.on_message)
    if total < ranks.world:
        raise CharrnnError(f"the training text is too short for {ranks.world} ranks of {cfg.seq_len}-token streams")
    return total // ranks.world


def resume(
    run_path: Path,
    *,
    budget: dict[str, Any] | None = None,
    report: Report | None = None,
    handle_signals: bool = False,
    cache_dir: Path | None = None,
    budget_from: float | None = None,
) -> TrainResult:
    """Continue the run in `run_path` from its `last` checkpoint; `budget` holds the options a
    resume may change. A budget in it (max_steps, max_epochs, max_time: any of them) replaces the
    saved one as a whole, and is the run's total: max_steps=40 trains to step 40, max_time=60 to
    one minute of the run's time in all. `budget_from` is when this session's clock started, as
    in `train`. A budget that is spent already (or a time budget that leaves nothing beyond the
    final evaluation) is refused with a CharrnnError, and the run directory is left as it was.

    Under torchrun, rank 0 reads the checkpoint and hands it to the others. The same number of
    ranks continues exactly; another number re-shards the run's streams if it divides their
    count (2 ranks × 8 streams resume as 1 × 16 or 4 × 4), and is refused otherwise.
    """
    report = report or Report()
    with distributed.session() as ranks:
        if not ranks.is_main:
            report = Report()
        run = RunDir(run_path)
        # Read without the lock, which writes to the run, and take it only once the resume is known
        # to train: a refused resume leaves every file as it was.
        payload, stamp = ranks.broadcast(ranks.together(lambda: _read_last(run) if ranks.is_main else None))
        try:
            check_train_state(run.resume_from() or run.last, payload)  # before anything is built or written
            cfg = resumed_config(train_config_of(payload), budget)
            model_cfg = from_dict(ModelConfig, payload["model_config"])
            info = payload.get("corpus") or {}
            saved = payload.get("train_state") or {}
            batch = distributed.streams_per_rank(
                saved.get("batch_size", cfg.batch_size), saved.get("world_size", 1), ranks.world
            )
            if batch != cfg.batch_size:
                cfg = from_dict(TrainConfig, {**asdict(cfg), "batch_size": batch})
            dataset = _prepare_in_turn(ranks, lambda: _dataset_to_resume(payload, cfg, cache_dir, report))
            trainer = Trainer(run, dataset, model_cfg, cfg, info, report, ranks=ranks, budget_from=budget_from)
            trainer.restore(payload)
            ranks.together(trainer.refuse_spent_budget)
            ranks.together(lambda: _lock_unchanged(run, stamp) if ranks.is_main else None)
            if ranks.is_main:
                run.trim_metrics(trainer.p.step)
            report.on_message(f"resuming {run_path} at step {trainer.p.step}")
            return _fit(trainer, handle_signals)
        finally:
            run.unlock()


def resumed_config(cfg: TrainConfig, changes: dict[str, Any] | None) -> TrainConfig:
    """The saved config with a resume's changes (None: not given). A budget given replaces the
    saved budget as a whole: --max-time alone on resume clears a saved --max-steps."""
    given = {name: value for name, value in (changes or {}).items() if value is not None}
    if not given:
        return cfg
    if any(name in given for name in BUDGET):
        given = {**dict.fromkeys(BUDGET), **given}
    return from_dict(TrainConfig, {**asdict(cfg), **given})


def _stamp(path: Path) -> tuple[int, int, int]:
    info = path.stat()
    return info.st_ino, info.st_size, info.st_mtime_ns


def _read_last(run: RunDir) -> tuple[dict[str, Any], tuple[int, int, int]]:
    """The run's last checkpoint, read without taking the lock (files are replaced whole, so the
    read is of one file or the other), and a stamp of that file to check it by once locked."""
    if not run.path.is_dir():
        raise CharrnnError(f"cannot resume: no run directory {run.path}")
    last = run.resume_from()  # last.safetensors, or a 0.1 run's last.pt
    if last is None:
        raise CharrnnError(f"cannot resume: {run.path} has no {run.last.name} checkpoint")
    run.refuse_if_locked()  # a run being trained is refused as such, before anything else is said of it
    stamp = _stamp(last)
    return load_checkpoint(last), stamp


def _lock_unchanged(run: RunDir, stamp: tuple[int, int, int]) -> None:
    """Take the run's lock; refuse if its last checkpoint was replaced since it was read."""
    run.lock()
    last = run.resume_from()
    if last is None or _stamp(last) != stamp:
        run.unlock()
        raise CharrnnError(f"cannot resume: {run.path} was written to while this resume read it; try again")


def _dataset_to_resume(payload: dict[str, Any], cfg: TrainConfig, cache_dir: Path | None, report: Report) -> Dataset:
    """The run's own corpus, checked to be the text and tokenizer it was trained on."""
    try:
        return dataset_of_run(payload, cfg, cache_dir=cache_dir, progress=report.on_message)
    except CharrnnError as exc:
        raise CharrnnError(f"cannot resume: {exc}") from None


def _fit(trainer: Trainer, handle_signals: bool) -> TrainResult:
    stop = _StopFlag()
    if handle_signals:
        stop.install()
    try:
        result = trainer.fit(stop)
    finally:
        stop.restore()
        trainer.close()
    if stop.signum is not None:
        name = signal.Signals(stop.signum).name
        raise Interrupted(
            128 + stop.signum,
            f"{name}: saved step {trainer.p.step} to {trainer.run.last}; "
            f"continue with: charrnn train --resume {trainer.run.path}",
        )
    return result

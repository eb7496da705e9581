"""The training loop: truncated BPTT over contiguous streams, composed of parts with one job each.

One step takes the next window of every stream (`StreamBatcher`), runs it from the hidden state
the previous window left, back-propagates through that window only, clips the global gradient
norm and lets AdamW update. The loss reaches the host only at logging intervals; the one read in
every step is whether the gradient norm is finite, so that a NaN step is skipped, not applied.

The parts: what is saved and restored (`training_state.TrainState`), the budget and the schedule
(`training_budget.Budget`), validation, patience and the best (`training_evaluation.Evaluator`).
What follows the run (curves.png, the samples, a progress display) subscribes to its events as
`results.Listener`s; `training.train` and `training.resume` wire them up.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from charrnn.config import ModelConfig, TrainConfig
from charrnn.data.batcher import StreamBatcher, token_counts
from charrnn.data.dataset import Dataset
from charrnn.devices import use_bf16
from charrnn.distributed import Ranks
from charrnn.errors import CharrnnError
from charrnn.model import RNNLanguageModel, State, detach_state
from charrnn.results import Listener, Report, TrainResult
from charrnn.rundir import RunDir
from charrnn.training_budget import TIME_SPENT, Budget, Costs
from charrnn.training_evaluation import Evaluator
from charrnn.training_state import Progress, TrainState

if TYPE_CHECKING:
    from charrnn.finetune import Start

NONFINITE_LIMIT = 5  # consecutive skipped steps before giving up


@dataclass
class _Window:
    """What the next metrics record averages: the train loss (nats per token) summed on the device,
    read back only when a record is written, the updates and tokens since the last record, and
    when it began."""

    loss_sum: torch.Tensor
    steps: int
    tokens: int = 0
    start: float = field(default_factory=time.monotonic)

    def add(self, loss: torch.Tensor, tokens: int) -> None:
        self.loss_sum += loss
        self.steps += 1
        self.tokens += tokens

    def record(
        self,
        p: Progress,
        lr: float,
        epochs: float,
        chars_per_token: float,
        mean: Callable[[torch.Tensor], torch.Tensor],
    ) -> dict[str, Any]:
        """The metrics record of the training since the last one, its loss averaged over the ranks
        by `mean`; the window starts over. Its train_loss is in nats per token (the val_loss an
        evaluation adds is in nats per character)."""
        now = time.monotonic()
        train_nats_per_token = float(mean(self.loss_sum)) / max(1, self.steps)
        record = {
            "step": p.step,
            "epoch": round(epochs, 4),
            "time": round(p.elapsed, 3),
            "train_loss": train_nats_per_token,
            "lr": lr,
            "chars_per_sec": self.tokens * chars_per_token / max(now - self.start, 1e-9),
        }
        self.loss_sum.zero_()
        self.steps, self.tokens, self.start = 0, 0, now
        return record


class Trainer:
    """One run's training: the model and its state, the budget, the evaluator, and the loop over them."""

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
        self.run, self.data, self.cfg, self.budget_from = run, dataset, cfg, budget_from  # see `training.train`
        self.ranks = ranks = ranks or Ranks()
        self.report = report if ranks.is_main else Report()  # its messages; the rest reach `listeners`
        self.listeners: list[Listener] = []  # rank 0's subscribers, wired by whoever builds the trainer
        self.device = ranks.device_for(cfg.device)
        self.bf16 = use_bf16(cfg.precision, self.device)
        self.model = _new_model(model_cfg, cfg.seed, dataset, start, self.device)
        self.net = ranks.wrap(self.model, self.device)  # forward/backward only; DDP averages gradients
        ranks.seed_dropout(cfg.seed)
        self.batcher = _batcher(dataset, cfg, ranks, self.device)
        self.costs = Costs()
        origin = start.origin if start else None  # where a fine-tune started, kept in its checkpoints
        here = self.batcher.batch_size  # this rank's streams
        self.train_state = TrainState(
            run, self.model, cfg, dataset.tokenizer, corpus_info, ranks, self.device, here, self.costs.saved, origin
        )
        self.p = self.train_state.progress  # one object, restored in place
        streams = here * ranks.world
        self.evaluator = Evaluator(
            self.model, dataset, cfg, ranks, self.p, self.costs, batch_streams=streams, bf16=self.bf16
        )
        steps_per_epoch, parameters = self.batcher.steps_per_epoch, self.model.num_parameters()
        self.budget = Budget(cfg, self.p, steps_per_epoch, self.costs, self.evaluator, parameters)
        self.history: list[dict[str, Any]] = []
        self.params = list(self.model.parameters())
        self.tokens_per_step = streams * self.batcher.seq_len
        self.bad_in_a_row = 0  # updates skipped in a row (see `_skip_update`)
        self.chars_per_token = dataset.train.num_chars / max(1, dataset.train.num_tokens)

    def close(self) -> None:
        """Let go of DDP's wrapper, which holds the process group, so the group can be destroyed
        while the interpreter is whole (distributed.session); `model` stays usable."""
        self.net = self.model

    def fit(self, stop_requested: Callable[[], bool] = lambda: False) -> TrainResult:
        """Update until the budget is spent, patience runs out or a signal asks to stop, writing a
        metrics record, evaluating and saving on their schedules, and saving at the end."""
        self._announce()
        window = _Window(torch.tensor(self.p.window_loss, device=self.device), self.p.window_steps)
        # The run's clock: the time of its earlier sessions, then this one's from `budget_from` (its
        # set-up included) or from now.
        clock = (self.budget_from if self.budget_from is not None else time.monotonic()) - self.p.elapsed
        if self.cfg.max_time is not None:  # time the end's passes; subscribers pay what the end would, unforeseen
            self.evaluator.time_passes()
            for listener in self.listeners:
                listener.before_timed_run()
        stop_reason = self.budget.spent() if self.p.step else None  # a new run takes at least one step
        self.net.train()
        while stop_reason is None:
            began = time.monotonic()
            update = self.step()
            if update is None:
                continue  # skipped: no step was taken
            loss, lr = update
            window.add(loss, self.tokens_per_step)
            # Every rank must read the same clock (time budget, LR schedule) and stop at the same step.
            signalled = stop_requested()
            self.p.elapsed, signalled, reserve = self._agree(time.monotonic() - clock, signalled, self.budget.reserve())
            stop_reason = "interrupted" if signalled else self.budget.spent(reserve)
            if stop_reason == TIME_SPENT:
                self.budget.say_why_time_stops(self.report.on_message)
            interval = stop_reason is None and self.p.step % self.cfg.eval_interval == 0
            stop_reason = self._log(window, lr, stop_reason, clock)
            if stop_reason is not None or self.p.step % (self.cfg.save_interval or self.cfg.eval_interval) == 0:
                self._save_last(window, clock, ending=stop_reason is not None)
            if stop_reason is None:
                self.costs.turned(time.monotonic() - began, evaluated=interval)
        for listener in self.listeners:
            listener.on_end(stop_reason or "finished")
        return _result(self, stop_reason or "finished")

    def _announce(self) -> None:
        info = {
            "total_steps": self.budget.total_steps(),
            "max_time": self.cfg.max_time,
            "start_step": self.p.step,
            "params": self.model.num_parameters(),
            "device": self.ranks.describe(self.device),
            "steps_per_epoch": self.batcher.steps_per_epoch,
        }
        for listener in self.listeners:
            listener.on_start(info)

    def step(self) -> tuple[torch.Tensor, float] | None:
        """One update from the next window of every stream: its loss (nats per token, on the device)
        and learning rate, or None when a non-finite loss or gradient made it skip the update."""
        state, p = self.train_state, self.p
        if p.step_in_epoch >= self.batcher.steps_per_epoch:
            # End of the text: every stream starts over, so the carried state starts over too.
            p.epoch += 1
            p.step_in_epoch = 0
            state.hidden = state.fresh_hidden()
        x, y = self.batcher.batch(p.step_in_epoch)
        lr = self.budget.lr()
        for group in state.optimizer.param_groups:
            group["lr"] = lr
        loss, new_hidden = self.loss(x, y)
        state.optimizer.zero_grad(set_to_none=True)
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
        state.optimizer.step()
        state.hidden = detach_state(new_hidden)
        p.step += 1
        p.step_in_epoch += 1
        p.tokens_seen += self.tokens_per_step
        return loss.detach().float(), lr

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, State]:
        """The mean loss (nats per token) of inputs x against targets y, both (T, B), run from the
        carried state, and the state after them."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            _, loss, new_hidden = self.net(x, self.train_state.hidden, y)
        return loss, new_hidden

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
        self.train_state.hidden = self.train_state.fresh_hidden()
        self.p.step_in_epoch += 1

    def _log(self, window: _Window, lr: float, stop_reason: str | None, clock: float) -> str | None:
        """At a logging or evaluation step (every evaluation interval, and at the end unless
        interrupted), write the metrics record and tell the subscribers; returns the stop reason,
        which patience may set."""
        final = stop_reason not in (None, "interrupted")  # the budget is spent: the final evaluation
        evaluated = self.p.step % self.cfg.eval_interval == 0 or final
        if not (self.p.step % self.cfg.log_interval == 0 or evaluated):
            return stop_reason
        epochs = self.p.epochs(self.batcher.steps_per_epoch)
        record = window.record(self.p, lr, epochs, self.chars_per_token, self.ranks.mean)
        if evaluated:
            stop_reason, improved = self.evaluator.evaluate(record, stop_reason)
            if improved:
                self.train_state.save_best()  # once last_val is the figure the record gives: best's metrics say the same
            self.p.elapsed = self._agree(time.monotonic() - clock, False)[0]  # the evaluation's time counts
            record["time"] = round(self.p.elapsed, 3)
        if stop_reason is not None:
            record["stop"] = stop_reason  # why the run ended, for `charrnn runs`
        self.history.append(record)
        if self.ranks.is_main:
            self.run.append_metrics(record)
        for listener in self.listeners:
            listener.on_record(record)
            if evaluated:
                listener.on_evaluated(record)
        return stop_reason

    def _save_last(self, window: _Window, clock: float, *, ending: bool) -> None:
        """Save `last`, with the window's unrecorded loss; at the end, with the run's whole time."""
        self.p.window_loss, self.p.window_steps = float(self.ranks.mean(window.loss_sum)), window.steps
        if ending:
            self.p.elapsed = self._agree(time.monotonic() - clock, False)[0]
        self.train_state.save_last()

    def _agree(self, elapsed: float, signalled: bool, reserve: float = 0.0) -> tuple[float, bool, float]:
        """The elapsed time, stop request and time reserve every rank acts on: the latest clock,
        any signal, the largest reserve."""
        elapsed, flag, reserve = self.ranks.agree_max([elapsed, float(signalled), reserve], self.device)
        return elapsed, flag > 0, reserve


def _new_model(
    model_cfg: ModelConfig, seed: int, dataset: Dataset, start: Start | None, device: torch.device
) -> RNNLanguageModel:
    """The model a run starts from, on `device`: drawn from `seed` with its output bias set to the
    tokens' frequencies, or --init-from's weights (charrnn.finetune)."""
    torch.manual_seed(seed)
    model = RNNLanguageModel(model_cfg)
    if start is None:
        model.init_output_bias(token_counts(dataset.train.tokens, model_cfg.vocab_size))
    else:
        model.load_state_dict(start.weights)
    return model.to(device)


def _result(trainer: Trainer, stop_reason: str) -> TrainResult:
    """What the session hands back: the run's counters, its figures and this session's records."""
    p, best_exact = trainer.p, trainer.evaluator.best_exact
    return TrainResult(
        run_dir=trainer.run.path,
        steps=p.step,
        epochs=p.epochs(trainer.batcher.steps_per_epoch),
        elapsed=p.elapsed,
        best_val=best_exact if best_exact is not None else p.best_val,
        last_val=p.last_val,
        train_loss=next((r["train_loss"] for r in reversed(trainer.history)), None),
        chars_per_sec=p.tokens_seen * trainer.chars_per_token / max(p.elapsed, 1e-9),
        parameters=trainer.model.num_parameters(),
        stop_reason=stop_reason,
        history=trainer.history,
    )


def _batcher(dataset: Dataset, cfg: TrainConfig, ranks: Ranks, device: torch.device) -> StreamBatcher:
    """This rank's cfg.batch_size streams of the N*B: rank r serves streams r*B .. r*B+B-1."""
    return StreamBatcher(
        dataset.train.tokens,
        cfg.batch_size * ranks.world,
        cfg.seq_len,
        first_stream=cfg.batch_size * ranks.rank,
        num_streams=cfg.batch_size,
        device=device,
    )

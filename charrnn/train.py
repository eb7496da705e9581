"""The training loop: truncated BPTT over contiguous streams, with exact resume.

One step takes the next window of every stream (see `StreamBatcher`), runs it
from the hidden state the previous window left, back-propagates through that
window only, clips the global gradient norm, and lets AdamW update. The loss is
read back to the host only at logging intervals, so the device never waits on
Python between steps.

Everything that decides what happens next (weights, optimizer moments, step,
position in the epoch, carried hidden state, RNG states, best validation loss,
patience) is saved in `last.pt`, so `--resume` continues bit for bit where the
run stopped, whatever stopped it.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from charrnn import __version__
from charrnn.checkpoint import load_checkpoint, save_checkpoint, train_config_of
from charrnn.config import ModelConfig, TrainConfig, asdict, from_dict
from charrnn.corpus import Corpus, find_corpus
from charrnn.data import Dataset, Split, StreamBatcher, fit_batch_size, prepare_dataset
from charrnn.devices import resolve_device, use_bf16
from charrnn.errors import CharrnnError, Interrupted
from charrnn.evaluate import evaluate
from charrnn.model import RNNLanguageModel, State, detach_state
from charrnn.rundir import RunDir

DEFAULT_EPOCHS = 20  # the budget when none of --max-steps/--max-epochs/--max-time is given
NONFINITE_LIMIT = 5  # consecutive skipped steps before giving up


@dataclass
class Report:
    """What a progress display is told; the CLI renders it, the library stays silent."""

    on_start: Callable[[dict[str, Any]], None] = lambda info: None
    on_log: Callable[[dict[str, Any]], None] = lambda record: None
    on_message: Callable[[str], None] = lambda text: None
    on_end: Callable[[], None] = lambda: None


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


class _StopFlag:
    """First SIGINT/SIGTERM asks the loop to save and stop; a second one exits at once.

    Exiting at once is safe because every file is replaced atomically.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
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
            os._exit(128 + signum)
        self.signum = signum


def _nan_test_steps() -> set[int]:
    """Test hook: CHARRNN_TEST_NAN_STEPS="5,6" poisons the loss at those steps."""
    raw = os.environ.get("CHARRNN_TEST_NAN_STEPS", "")
    return {int(s) for s in raw.split(",") if s.strip().isdigit()}


def _test_signal() -> tuple[int, int] | None:
    """Test hook: CHARRNN_TEST_SIGNAL_AT_STEP=N and CHARRNN_TEST_SIGNAL=INT|TERM|KILL make the
    process send itself that signal right after step N, an interruption at a known point."""
    at, name = os.environ.get("CHARRNN_TEST_SIGNAL_AT_STEP", ""), os.environ.get("CHARRNN_TEST_SIGNAL", "INT")
    return (int(at), getattr(signal, f"SIG{name}")) if at.isdigit() else None


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
        first_stream: int = 0,
        num_streams: int | None = None,
    ) -> None:
        self.run, self.data, self.model_cfg, self.cfg = run, dataset, model_cfg, cfg
        self.corpus_info = corpus_info
        self.report = report
        self.device = resolve_device(cfg.device)
        self.bf16 = use_bf16(cfg.precision, self.device)
        torch.manual_seed(cfg.seed)
        self.model = RNNLanguageModel(model_cfg).to(self.device)
        self.optimizer = _optimizer(self.model, cfg, self.device)
        self.batcher = StreamBatcher(
            dataset.train.tokens,
            cfg.batch_size,
            cfg.seq_len,
            first_stream=first_stream,
            num_streams=num_streams,
            device=self.device,
        )
        self.p = _Progress()
        self.state: State = self.model.init_state(self.batcher.batch_size, self.device)
        self.history: list[dict[str, Any]] = []
        self.nan_steps = _nan_test_steps()
        self.test_signal = _test_signal()
        self.chars_per_token = dataset.train.num_chars / max(1, dataset.train.num_tokens)

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

    def _budget_spent(self) -> str | None:
        total = self.total_steps()
        if total is not None and self.p.step >= total:
            return "step budget reached" if self.cfg.max_steps == total else "epoch budget reached"
        if self.cfg.max_time is not None and self.p.elapsed >= self.cfg.max_time:
            return "time budget reached"
        return None

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
        if with_train_state:
            payload["train_state"] = {
                "optimizer": self.optimizer.state_dict(),
                "progress": dict(vars(self.p)),
                "hidden": _state_to_list(self.state),
                "batch_size": self.batcher.batch_size,
                "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            }
        return payload

    def save_last(self) -> None:
        save_checkpoint(self.run.last, self._payload(with_train_state=True))

    def save_best(self) -> None:
        save_checkpoint(self.run.best, self._payload(with_train_state=False))

    def restore(self, payload: dict[str, Any]) -> None:
        state = payload.get("train_state")
        if not isinstance(state, dict):
            raise CharrnnError(f"{self.run.last} has no training state to resume from")
        try:
            self.model.load_state_dict(payload["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.p = _Progress(**state["progress"])
            self.state = _state_from_list(state["hidden"], self.model_cfg.cell, self.device)
            torch.set_rng_state(state["rng_cpu"])
            if torch.cuda.is_available() and len(state["rng_cuda"]) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(state["rng_cuda"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CharrnnError(f"cannot resume from {self.run.last}: {str(exc).splitlines()[0][:200]}") from None
        if self.state_batch() != self.batcher.batch_size:
            raise CharrnnError("cannot resume: the saved hidden state has a different number of streams")

    def state_batch(self) -> int:
        first = self.state[0] if isinstance(self.state, tuple) else self.state
        return int(first.shape[1])

    # ----- the loop -----
    def validate(self) -> float | None:
        if self.data.val is None:
            return None
        val = self.data.val
        if self.cfg.eval_tokens is not None and val.num_tokens > self.cfg.eval_tokens:
            # A huge validation split is sampled by its first eval_tokens tokens during training.
            share = self.cfg.eval_tokens / val.num_tokens
            val = Split(val.tokens[: self.cfg.eval_tokens], max(2, round(val.num_chars * share)))
        result = evaluate(self.model, val, self.data.tokenizer, autocast=self.bf16)
        return result.nats_per_char

    def fit(self, stop: _StopFlag | None = None) -> TrainResult:
        cfg, model, optimizer = self.cfg, self.model, self.optimizer
        params = [p for p in model.parameters()]
        total = self.total_steps()
        save_every = cfg.save_interval or cfg.eval_interval
        self.report.on_start(
            {
                "total_steps": total,
                "max_time": cfg.max_time,
                "start_step": self.p.step,
                "params": sum(p.numel() for p in params),
                "device": str(self.device),
                "steps_per_epoch": self.batcher.steps_per_epoch,
            }
        )
        tokens_per_step = self.batcher.batch_size * self.batcher.seq_len
        # The running train loss stays on the device; it is read back only when a record is written.
        loss_sum = torch.tensor(self.p.window_loss, device=self.device)
        loss_count = self.p.window_steps
        bad_in_a_row = 0
        window_start, window_chars = time.monotonic(), 0
        clock = time.monotonic() - self.p.elapsed
        stop_reason = self._budget_spent()
        model.train()
        while stop_reason is None:
            if self.p.step_in_epoch >= self.batcher.steps_per_epoch:
                # End of the text: every stream starts over, so the carried state starts over too.
                self.p.epoch += 1
                self.p.step_in_epoch = 0
                self.state = model.init_state(self.batcher.batch_size, self.device)
            x, y = self.batcher.batch(self.p.step_in_epoch)
            lr = cfg.lr * lr_factor(cfg, self.p.step, self._budget_progress())
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                _, loss, new_state = model(x, self.state, y)
            if self.p.step + 1 in self.nan_steps:
                loss = loss * float("nan")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            if not bool(torch.isfinite(norm)):
                # Skip the update: the weights stay as they were, the poisoned state is dropped.
                bad_in_a_row += 1
                self.report.on_message(f"step {self.p.step + 1}: non-finite loss or gradient, update skipped")
                if bad_in_a_row >= NONFINITE_LIMIT:
                    raise CharrnnError(
                        f"training diverged: {bad_in_a_row} steps in a row had a non-finite loss; "
                        f"try a lower --lr; the last good checkpoint is {self.run.last}"
                    )
                self.state = model.init_state(self.batcher.batch_size, self.device)
                self.p.step_in_epoch += 1
                continue
            bad_in_a_row = 0
            optimizer.step()
            self.state = detach_state(new_state)
            loss_sum += loss.detach().float()
            loss_count += 1
            self.p.step += 1
            self.p.step_in_epoch += 1
            self.p.chars_seen += tokens_per_step
            window_chars += tokens_per_step
            self.p.elapsed = time.monotonic() - clock
            stop_reason = self._budget_spent()
            if self.test_signal and self.p.step == self.test_signal[0]:
                os.kill(os.getpid(), self.test_signal[1])
            if stop is not None and stop.signum is not None:
                stop_reason = "interrupted"
            finishing = stop_reason is not None
            evaluate_now = self.p.step % cfg.eval_interval == 0 or (finishing and stop_reason != "interrupted")
            if self.p.step % cfg.log_interval == 0 or evaluate_now:
                now = time.monotonic()
                record = {
                    "step": self.p.step,
                    "epoch": round(self.p.epoch + self.p.step_in_epoch / self.batcher.steps_per_epoch, 4),
                    "time": round(self.p.elapsed, 3),
                    "train_loss": float(loss_sum) / max(1, loss_count),
                    "lr": lr,
                    "chars_per_sec": window_chars * self.chars_per_token / max(now - window_start, 1e-9),
                }
                loss_sum.zero_()
                loss_count = 0
                window_start, window_chars = now, 0
                if evaluate_now:
                    self.p.last_val = self.validate()
                    record["val_loss"] = self.p.last_val
                    self._early_stopping_and_best()
                    if self.p.bad_evals and cfg.patience and self.p.bad_evals >= cfg.patience and not finishing:
                        stop_reason = f"no improvement in {cfg.patience} evaluations"
                        finishing = True
                    self.p.elapsed = time.monotonic() - clock
                    record["time"] = round(self.p.elapsed, 3)
                self.history.append(record)
                self.run.append_metrics(record)
                self.report.on_log(record)
            if finishing or self.p.step % save_every == 0:
                self.p.window_loss, self.p.window_steps = float(loss_sum), loss_count
                self.save_last()
        self.report.on_end()
        last_train = next((r["train_loss"] for r in reversed(self.history)), None)
        return TrainResult(
            run_dir=self.run.path,
            steps=self.p.step,
            epochs=self.p.epoch + self.p.step_in_epoch / self.batcher.steps_per_epoch,
            elapsed=self.p.elapsed,
            best_val=self.p.best_val,
            last_val=self.p.last_val,
            train_loss=last_train,
            chars_per_sec=self.p.chars_seen * self.chars_per_token / max(self.p.elapsed, 1e-9),
            parameters=sum(p.numel() for p in params),
            stop_reason=stop_reason or "finished",
            history=self.history,
        )

    def _early_stopping_and_best(self) -> None:
        val = self.p.last_val
        if val is None:
            self.save_best()  # no validation split: the latest weights are the best we know
            return
        if not math.isfinite(val):
            self.p.bad_evals += 1
            return
        if self.p.best_val is None or val < self.p.best_val:
            self.p.best_val = val
            self.p.bad_evals = 0
            self.save_best()
        else:
            self.p.bad_evals += 1


def _corpus_info(corpus: Corpus, val_corpus: Corpus | None, dataset: Dataset) -> dict[str, Any]:
    return {
        "files": [str(p.resolve()) for p in corpus.files],
        "val_files": [str(p.resolve()) for p in val_corpus.files] if val_corpus else [],
        "encoding": corpus.encoding,
        "hash": dataset.corpus_hash,
        "chars": {
            "train": dataset.train.num_chars,
            "val": dataset.val.num_chars if dataset.val else 0,
            "test": dataset.test.num_chars if dataset.test else 0,
        },
    }


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
) -> TrainResult:
    """Train a new model on `corpus` into the run directory `run_path`."""
    report = report or Report()
    run = RunDir(run_path)
    run.create(fresh=True)
    run.lock()
    try:
        dataset = prepare_dataset(corpus, cfg, val_corpus=val_corpus, cache_dir=cache_dir, progress=report.on_message)
        batch = fit_batch_size(dataset.train.num_tokens, cfg.batch_size, cfg.seq_len, report.on_message)
        if batch != cfg.batch_size:
            cfg = from_dict(TrainConfig, {**asdict(cfg), "batch_size": batch})
        model_cfg = ModelConfig(vocab_size=dataset.tokenizer.vocab_size, **model_settings)
        info = _corpus_info(corpus, val_corpus, dataset)
        trainer = Trainer(run, dataset, model_cfg, cfg, info, report)
        run.write_config(
            {"model": asdict(model_cfg), "train": asdict(cfg), "corpus": info, "charrnn_version": __version__}
        )
        run.metrics.unlink(missing_ok=True)
        return _fit(trainer, handle_signals)
    finally:
        run.unlock()


def resume(
    run_path: Path,
    *,
    budget: dict[str, Any] | None = None,
    report: Report | None = None,
    handle_signals: bool = False,
    cache_dir: Path | None = None,
) -> TrainResult:
    """Continue the run in `run_path` from its `last` checkpoint; `budget` may extend
    max_steps / max_epochs / max_time."""
    report = report or Report()
    run = RunDir(run_path)
    if not run.path.is_dir():
        raise CharrnnError(f"cannot resume: no run directory {run_path}")
    if not run.last.is_file():
        raise CharrnnError(f"cannot resume: {run_path} has no {run.last.name} checkpoint")
    run.lock()
    try:
        payload = load_checkpoint(run.last)
        cfg = train_config_of(payload)
        if budget:
            cfg = from_dict(TrainConfig, {**asdict(cfg), **{k: v for k, v in budget.items() if v is not None}})
        model_cfg = from_dict(ModelConfig, payload["model_config"])
        info = payload.get("corpus") or {}
        try:
            corpus = find_corpus(info["files"], encoding=info.get("encoding", "utf-8"))
            val_corpus = find_corpus(info["val_files"]) if info.get("val_files") else None
        except (KeyError, TypeError):
            raise CharrnnError(f"{run.last} does not record its corpus") from None
        except CharrnnError as exc:
            raise CharrnnError(f"cannot resume: the run's corpus is gone ({exc})") from None
        dataset = prepare_dataset(corpus, cfg, val_corpus=val_corpus, cache_dir=cache_dir, progress=report.on_message)
        if dataset.corpus_hash != info.get("hash"):
            raise CharrnnError("cannot resume: the corpus changed since the run started (its content hash differs)")
        if dataset.tokenizer.to_state().get("kind") != payload["tokenizer"].get("kind") or (
            dataset.tokenizer.vocab_size != model_cfg.vocab_size
        ):
            raise CharrnnError("cannot resume: the tokenizer differs from the one the run was trained with")
        saved_batch = payload.get("train_state", {}).get("batch_size", cfg.batch_size)
        if saved_batch != cfg.batch_size:
            cfg = from_dict(TrainConfig, {**asdict(cfg), "batch_size": saved_batch})
        trainer = Trainer(run, dataset, model_cfg, cfg, info, report)
        trainer.restore(payload)
        run.trim_metrics(trainer.p.step)
        report.on_message(f"resuming {run_path} at step {trainer.p.step}")
        return _fit(trainer, handle_signals)
    finally:
        run.unlock()


def _fit(trainer: Trainer, handle_signals: bool) -> TrainResult:
    stop = _StopFlag()
    if handle_signals:
        stop.install()
    try:
        result = trainer.fit(stop)
    finally:
        stop.restore()
    if stop.signum is not None:
        name = signal.Signals(stop.signum).name
        raise Interrupted(
            128 + stop.signum,
            f"{name}: saved step {trainer.p.step} to {trainer.run.last}; "
            f"continue with: charrnn train --resume {trainer.run.path}",
        )
    return result

"""What a training run saves and restores: weights, optimizer, counters, hidden state, generators.

Everything that decides what happens next is in `last.safetensors`'s `train_state`, so that
`--resume` continues bit for bit where the run stopped; `best.safetensors` holds the weights alone.
Under torchrun the hidden state of every rank's streams and every rank's generators are gathered
into rank 0's checkpoint, so that a resume can share them out again (`Ranks.shard_streams`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from charrnn import __version__
from charrnn.checkpoint import save_checkpoint
from charrnn.checkpoint_checks import check_optimizer_state
from charrnn.config import TrainConfig, asdict
from charrnn.data.tokenizers import Tokenizer
from charrnn.distributed import Ranks
from charrnn.errors import CharrnnError
from charrnn.model import RNNLanguageModel, State
from charrnn.rundir import RunDir

# A counter's name in a checkpoint, where it differs: the tokens trained on were saved as
# chars_seen, and still are, so that every charrnn that reads format 2 reads what this one writes.
SAVED_AS = {"tokens_seen": "chars_seen"}
READ_AS = {saved: name for name, saved in SAVED_AS.items()}


@dataclass
class Progress:
    """The loop's counters; saved and restored as a unit (`train_state.progress`)."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    elapsed: float = 0.0  # the run's seconds, over all its sessions
    best_val: float | None = None  # nats per character, by the interval estimate that judges the best
    last_val: float | None = None  # nats per character, of the latest evaluation
    bad_evals: int = 0  # evaluations since the best (patience)
    tokens_seen: int = 0  # tokens trained on, over every rank
    window_loss: float = 0.0  # summed train loss (nats per token) since the last metrics record
    window_steps: int = 0

    def epochs(self, steps_per_epoch: int) -> float:
        """The epochs trained, the current one in part."""
        return self.epoch + self.step_in_epoch / steps_per_epoch

    def saved(self) -> dict[str, Any]:
        return {SAVED_AS.get(name, name): value for name, value in vars(self).items()}

    def restore(self, saved: dict[str, Any]) -> None:
        """Take the counters of a checkpoint (either name of a renamed one), in place: the budget
        and the evaluator read this same object."""
        vars(self).update(vars(Progress(**{READ_AS.get(name, name): value for name, value in saved.items()})))


def _optimizer(model: RNNLanguageModel, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    # Weight decay on matrices only; biases and the embedding table are left alone.
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (decay if param.dim() >= 2 and not name.startswith("embed") else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = device.type == "cuda"
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.99), fused=fused)


class TrainState:
    """The model, its optimizer, the counters and the hidden state this rank's `streams` carry,
    with what a checkpoint records beside them (configs, tokenizer, corpus, a fine-tune's origin)."""

    def __init__(
        self,
        run: RunDir,
        model: RNNLanguageModel,
        cfg: TrainConfig,
        tokenizer: Tokenizer,
        corpus_info: dict[str, Any],
        ranks: Ranks,
        device: torch.device,
        streams: int,
        on_saved: Callable[[float], None],
        origin: dict[str, Any] | None = None,
    ) -> None:
        self.run, self.model, self.cfg, self.tokenizer, self.corpus_info = run, model, cfg, tokenizer, corpus_info
        self.ranks, self.streams, self.on_saved, self.origin = ranks, streams, on_saved, origin
        self.device = device
        self.optimizer = _optimizer(model, cfg, self.device)
        self.progress = Progress()
        self.hidden: State = self.fresh_hidden()

    def fresh_hidden(self) -> State:
        """The hidden state every stream starts from (its text's start, or after a skipped update)."""
        return self.model.init_state(self.streams, self.device)

    def payload(self, *, with_train_state: bool) -> dict[str, Any]:
        p = self.progress
        payload: dict[str, Any] = {
            "charrnn_version": __version__,
            "model_config": asdict(self.model.cfg),
            "train_config": asdict(self.cfg),
            "tokenizer": self.tokenizer.to_state(),
            "model": self.model.state_dict(),
            "corpus": self.corpus_info,
            "metrics": {"step": p.step, "val_loss": p.last_val, "best_val_loss": p.best_val},
        }
        if self.origin is not None:
            payload["init_from"] = self.origin
        if with_train_state:
            # Under torchrun every rank must call this (it gathers): the hidden state of all N*B
            # streams in global order and every rank's generators, so a resume can re-shard them.
            payload["train_state"] = {
                "optimizer": self.optimizer.state_dict(),
                "progress": p.saved(),
                "hidden": self.ranks.gather_streams(
                    list(self.hidden) if isinstance(self.hidden, tuple) else [self.hidden]
                ),
                "batch_size": self.streams * self.ranks.world,  # streams in all ranks together
                "world_size": self.ranks.world,
                "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            }
            if self.ranks.distributed:
                payload["train_state"]["rng_ranks"] = self.ranks.rng_states(self.device)
        return payload

    def save_last(self) -> None:
        started = time.monotonic()
        payload = self.payload(with_train_state=True)  # every rank: it gathers
        if self.ranks.is_main:
            save_checkpoint(self.run.last, payload)
        self.on_saved(time.monotonic() - started)

    def save_best(self) -> None:
        started = time.monotonic()
        if self.ranks.is_main:
            save_checkpoint(self.run.best, self.payload(with_train_state=False))
        self.on_saved(time.monotonic() - started)

    def restore(self, payload: dict[str, Any]) -> None:
        """Continue from a `last` checkpoint's payload (checked by `check_train_state`)."""
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
            self.progress.restore(state["progress"])
            hidden = [t.to(self.device) for t in self.ranks.shard_streams(state["hidden"])]  # this rank's of N*B
            self.hidden = (hidden[0], hidden[1]) if self.model.cfg.cell == "lstm" else hidden[0]
            torch.set_rng_state(state["rng_cpu"])
            if torch.cuda.is_available() and len(state["rng_cuda"]) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(state["rng_cuda"])
            saved_world = state.get("world_size", 1)
            self.ranks.restore_rng(state.get("rng_ranks"), saved_world, self.cfg.seed, self.device)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CharrnnError(f"cannot resume from {self.run.last}: {str(exc).splitlines()[0][:200]}") from None
        first = self.hidden[0] if isinstance(self.hidden, tuple) else self.hidden
        if int(first.shape[1]) != self.streams:
            raise CharrnnError("cannot resume: the saved hidden state has a different number of streams")

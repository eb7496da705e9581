"""Validation while training: the interval estimates, the final exact figure, patience and the best.

An interval evaluation scores an estimate: the first cfg.eval_tokens tokens of the validation split,
in pieces side by side. The best weights and patience go by it, so that every evaluation is judged
by the same measure. The final evaluation is also exact: the whole split in one stream, the figure
`charrnn eval` gives. Every figure is in nats per character.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from charrnn.config import TrainConfig
from charrnn.data.dataset import Dataset, Split
from charrnn.distributed import Ranks
from charrnn.evaluate import evaluate
from charrnn.model import RNNLanguageModel
from charrnn.training_budget import Costs
from charrnn.training_state import Progress

PROBE_TOKENS = 1024  # one evaluation window: what the speed of a one-stream pass is timed on


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


class Evaluator:
    """Scores the validation split into the metrics records, counts patience, knows the best, and
    what a pass costs (its speed measured into `costs`)."""

    def __init__(
        self,
        model: RNNLanguageModel,
        data: Dataset,
        cfg: TrainConfig,
        ranks: Ranks,
        progress: Progress,
        costs: Costs,
        *,
        batch_streams: int,
        bf16: bool,
    ) -> None:
        self.model, self.data, self.cfg, self.ranks = model, data, cfg, ranks
        self.progress, self.costs, self.bf16 = progress, costs, bf16
        # Validation pieces during training: cfg.eval_streams, or the streams of all ranks' batches.
        self.streams = cfg.eval_streams or batch_streams
        self.best_exact: float | None = None  # the final exact figure, when the final weights are the best

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
        streams = 1 if exact else self.streams
        started = time.monotonic()
        result = evaluate(self.model, val, self.data.tokenizer, streams=streams, autocast=self.bf16, ranks=self.ranks)
        per_token = (time.monotonic() - started) / max(1, val.num_tokens - 1)
        if exact or streams == 1:
            self.costs.exact_per_token = per_token
        else:
            self.costs.interval_per_token = per_token
        return result.nats_per_char

    def evaluate(self, record: dict[str, Any], stop_reason: str | None) -> tuple[str | None, bool]:
        """Score the validation split into `record` and count patience; the stop reason (patience
        may end the run now) and whether these weights are the best so far.

        The final evaluation, when the run stops here (its budget is spent, or patience runs out
        now), is also exact: that is its `val_loss`, and the estimate beside it is `val_estimate`.
        `eval` says which kind a record holds ("interval" or "final")."""
        # At the end, before any evaluation, the weights are the best whatever they score: no estimate.
        ending = stop_reason not in (None, "interrupted")
        estimate = None if ending and self._first_judged() else self.validate()
        improved = self._judge(estimate)
        if self.cfg.max_time is not None and stop_reason is None and not self._interval_is_exact():
            self.time_exact_pass()  # the final evaluation's speed, as busy as the machine is now
        p, patience = self.progress, self.cfg.patience
        if p.bad_evals and patience and p.bad_evals >= patience and stop_reason is None:
            stop_reason = f"no improvement in {patience} evaluations"
        final = stop_reason not in (None, "interrupted")
        exact = estimate
        if final and (estimate is None or not self._interval_is_exact()):
            exact = self.validate(exact=True)
        p.last_val = exact if final else estimate
        record["val_loss"] = p.last_val
        record["eval"] = "final" if final else "interval"
        if final and estimate is not None:
            record["val_estimate"] = estimate
        if improved:
            self.best_exact = exact if final else None
        return stop_reason, improved

    def _judge(self, val: float | None) -> bool:
        """Count patience by the validation loss `val`; whether these weights are the best so far."""
        p = self.progress
        if val is None:
            return True  # no validation split: the latest weights are the best we know
        if not math.isfinite(val):
            p.bad_evals += 1
            return False
        if p.best_val is None or val < p.best_val:
            p.best_val = val
            p.bad_evals = 0
            return True
        p.bad_evals += 1
        return False

    def _first_judged(self) -> bool:
        """No evaluation has judged weights yet: the next one's are the best, whatever they score."""
        return self.data.val is not None and self.progress.best_val is None and self.progress.bad_evals == 0

    def _interval_is_exact(self) -> bool:
        """Whether an interval evaluation is the exact one already: one stream over the whole split."""
        val = self.data.val
        capped = val is not None and self.cfg.eval_tokens is not None and val.num_tokens > self.cfg.eval_tokens
        return self.streams == 1 and not capped

    # ----- what the passes cost (for the time budget) -----
    def interval_pass_cost(self) -> float:
        val = self.data.val
        if val is None:
            return 0.0
        per_token = self.costs.interval_per_token or self.costs.exact_per_token or 0.0
        return per_token * min(val.num_tokens, self.cfg.eval_tokens or val.num_tokens)

    def exact_pass_cost(self) -> float:
        """The final exact pass over the whole validation split, at the measured one-stream speed."""
        val = self.data.val
        if val is None:
            return 0.0
        if self.costs.exact_per_token is None:
            self.time_exact_pass()
        return (self.costs.exact_per_token or 0.0) * (val.num_tokens - 1)

    def final_passes_cost(self) -> float:
        """The final evaluation: the interval estimate that judges the best weights, and the exact pass."""
        judged = self._interval_is_exact() or self._first_judged()  # no interval estimate at the end
        return self.exact_pass_cost() + (0.0 if judged else self.interval_pass_cost())

    def time_exact_pass(self) -> None:
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

    def time_passes(self) -> None:
        """Under a time budget, before the first step: time the final evaluation's speed and, until
        one is timed, an interval pass's, on a few tokens per stream (on this rank alone: under
        torchrun an overestimate, the pieces being shared among the ranks)."""
        self.time_exact_pass()
        val, streams = self.data.val, self.streams
        if val is not None and self.costs.interval_per_token is None and streams > 1:
            n = min(val.num_tokens, streams * PROBE_TOKENS // 8 + 1)
            probe = Split(val.tokens[:n], n)
            seconds = _fastest_of_two(
                lambda: evaluate(self.model, probe, self.data.tokenizer, streams=streams, autocast=self.bf16)
            )
            self.costs.interval_per_token = seconds / (n - 1)

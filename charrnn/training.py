"""Training a run: `train` starts one, `resume` continues one, and both wire up what follows it.

Each builds a `Trainer` (charrnn/training_loop.py) and subscribes curves.png, the samples drawn
while training and the caller's progress display to its events (`_subscribe`), so that the loop
knows nothing of pictures or terminals. Everything that decides what happens next is saved in
`last.safetensors`, so `resume` continues bit for bit where the run stopped, whatever stopped it:
the first SIGINT/SIGTERM saves and stops, a second one exits at once.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from charrnn import distributed
from charrnn.checkpoint import load_checkpoint, train_config_of
from charrnn.checkpoint_checks import check_train_state
from charrnn.config import ModelConfig, TrainConfig, asdict, from_dict
from charrnn.data.batcher import fit_batch_size
from charrnn.data.corpus import Corpus
from charrnn.data.dataset import Dataset, dataset_of_run, prepare_dataset
from charrnn.distributed import Ranks
from charrnn.errors import CharrnnError, Interrupted
from charrnn.plot import CurvesWriter
from charrnn.results import Listener, Report, Reported, TrainResult
from charrnn.rundir import RunDir, corpus_record
from charrnn.train_samples import TrainSampler
from charrnn.training_budget import Costs
from charrnn.training_loop import NONFINITE_LIMIT, Trainer

if TYPE_CHECKING:
    from charrnn.finetune import Source

__all__ = ["NONFINITE_LIMIT", "Report", "Trainer", "TrainResult", "resume", "resumed_config", "train"]

BUDGET = ("max_steps", "max_epochs", "max_time")  # given on resume, they replace the saved budget as a whole


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


class _Curves(Listener):
    """curves.png, redrawn after an evaluation (when it is due) and at the end; a failure is one
    message, never fatal. What a drawing takes is kept for the time budget."""

    def __init__(self, run: RunDir, costs: Costs, on_message: Callable[[str], None]) -> None:
        self.writer, self.costs = CurvesWriter(run.path, on_message), costs

    def before_timed_run(self) -> None:
        started = time.monotonic()
        try:
            import matplotlib.backends.backend_agg  # noqa: F401
            import matplotlib.figure  # noqa: F401
        except ImportError:
            return  # no drawing then (CurvesWriter says so, once)
        self.costs.drawing = time.monotonic() - started + 0.2  # and the drawing itself, until timed

    def on_evaluated(self, record: dict[str, Any]) -> None:
        started = time.monotonic()
        self.writer.refresh()
        if time.monotonic() - started > 0.01:  # it drew (it skips a drawing that comes too soon)
            self.costs.drawing = time.monotonic() - started

    def on_end(self, stop_reason: str) -> None:
        self.writer.refresh(final=stop_reason != "interrupted")  # interrupted: a Ctrl-C must not wait for matplotlib


class _Samples(Listener):
    """The sample drawn after an evaluation when one is due, into samples.jsonl and the display."""

    def __init__(self, sampler: TrainSampler, trainer: Trainer, report: Report) -> None:
        self.sampler, self.trainer, self.report = sampler, trainer, report

    def on_evaluated(self, record: dict[str, Any]) -> None:
        if not self.sampler.due(record["step"], final="stop" in record):
            return
        sample = self.sampler.draw(self.trainer.model, record["step"], record["time"], record["val_loss"])
        self.trainer.costs.sample = sample.seconds
        self.trainer.run.append_sample(sample.record())
        self.report.on_sample(sample)


def _subscribe(trainer: Trainer) -> Trainer:
    """Wire curves.png, the progress display and the samples to the trainer's events, on rank 0.
    Every rank checks the sample prime, before the first step, so a bad one fails them all."""
    report = trainer.report
    sampler = TrainSampler(trainer.cfg, trainer.model.cfg, trainer.data.tokenizer, report.on_message)
    if trainer.ranks.is_main:
        trainer.listeners += [_Curves(trainer.run, trainer.costs, report.on_message), Reported(report)]
        trainer.listeners.append(_Samples(sampler, trainer, report))
    return trainer


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
    auto_size: dict[str, dict[str, Any]] | None = None,
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
    (`Budget.reserve`). At least one step runs however much of it setting up took.

    `auto_size` (`--preset auto` on a CPU: the preset options the user gave, by section) chooses
    the model's size once the text is read (charrnn/sizing.py), in place of `model_settings`' own;
    the choice is printed in one line and kept in config.json.
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
            dataset, cfg = _new_dataset(corpus, val_corpus, cfg, ranks, report, cache_dir, init_from)
            sizing = None
            if auto_size is not None:
                model_settings, cfg, sizing = _sized(dataset, cfg, auto_size, ranks, budget_from, report)
            model_cfg = ModelConfig(vocab_size=dataset.tokenizer.vocab_size, **model_settings)
            info = corpus_record(corpus, val_corpus, dataset)
            start = init_from.begin(dataset, report.on_message) if init_from else None
            trainer = _subscribe(
                Trainer(run, dataset, model_cfg, cfg, info, report, ranks=ranks, budget_from=budget_from, start=start)
            )
            if ranks.is_main:
                _begin(trainer, info, origin=start.origin if start is not None else None, sizing=sizing)
            return _fit(trainer, handle_signals)
        finally:
            run.unlock()


def _new_dataset(
    corpus: Corpus,
    val_corpus: Corpus | None,
    cfg: TrainConfig,
    ranks: Ranks,
    report: Report,
    cache_dir: Path | None,
    init_from: Source | None,
) -> tuple[Dataset, TrainConfig]:
    """A new run's dataset, and `cfg` with the streams per rank that its training text holds."""
    base = init_from.tokenizer if init_from else None  # a fine-tune's vocabulary grows from its source's
    dataset = _prepare_in_turn(
        ranks,
        lambda: prepare_dataset(
            corpus, cfg, val_corpus=val_corpus, cache_dir=cache_dir, progress=report.on_message, base=base
        ),
    )
    return dataset, _with_streams(cfg, _fit_per_rank(dataset, cfg, ranks, report))


def _begin(
    trainer: Trainer, info: dict[str, Any], *, origin: dict[str, Any] | None, sizing: dict[str, Any] | None
) -> None:
    """Write a new run's config.json: `info` is the corpus record, `origin` a fine-tune's source (its
    path, content hash and step), `sizing` how `--preset auto` chose the size."""
    launch = {"world_size": trainer.ranks.world, "job_id": distributed.job_id()} if distributed.launched() else None
    trainer.run.begin(
        trainer.model.cfg,
        trainer.cfg,
        info,
        trainer.data,
        chars_per_token=trainer.chars_per_token,
        init_from=origin,
        torchrun=launch,
        sizing=sizing,
    )


def _sized(
    dataset: Dataset,
    cfg: TrainConfig,
    given: dict[str, dict[str, Any]],
    ranks: Ranks,
    budget_from: float | None,
    report: Report,
) -> tuple[dict[str, Any], TrainConfig, dict[str, Any]]:
    """`--preset auto`'s model settings, `cfg` with the size's learning rate, and the record of the
    choice for config.json. Rank 0 measures and chooses; every rank trains what it chose."""
    from charrnn import sizing
    from charrnn.config import PRESETS

    left = None
    if cfg.max_time is not None:
        left = cfg.max_time - (time.monotonic() - budget_from if budget_from is not None else 0.0)
    budget = sizing.Budget(
        vocab_size=dataset.tokenizer.vocab_size,
        train_tokens=dataset.train.num_tokens,
        val_tokens=dataset.val.num_tokens if dataset.val is not None else 0,
        chars_per_token=dataset.train.num_chars / max(1, dataset.train.num_tokens),
        cfg=cfg,
        seconds_left=left,
        world=ranks.world,
    )
    device = ranks.device_for(cfg.device)
    choice = ranks.broadcast(
        ranks.together(lambda: sizing.choose(budget, PRESETS["cpu"], given, device) if ranks.is_main else None)
    )
    report.on_message(choice.line())
    return choice.model, from_dict(TrainConfig, {**asdict(cfg), **choice.train}), choice.record()


def _with_streams(cfg: TrainConfig, batch_size: int) -> TrainConfig:
    """`cfg` with `batch_size` streams per rank (fewer than asked when the text is short, or
    another share of a resumed run's streams)."""
    return cfg if batch_size == cfg.batch_size else from_dict(TrainConfig, {**asdict(cfg), "batch_size": batch_size})


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
            saved_streams, saved_world = saved.get("batch_size", cfg.batch_size), saved.get("world_size", 1)
            cfg = _with_streams(cfg, distributed.streams_per_rank(saved_streams, saved_world, ranks.world))
            dataset = _prepare_in_turn(ranks, lambda: _dataset_to_resume(payload, cfg, cache_dir, report))
            trainer = _subscribe(
                Trainer(run, dataset, model_cfg, cfg, info, report, ranks=ranks, budget_from=budget_from)
            )
            trainer.train_state.restore(payload)
            ranks.together(trainer.budget.refuse_spent)
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
        result = trainer.fit(lambda: stop.signum is not None)
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

"""Which run was that: one row per run directory, for `charrnn runs`.

A row is read through `charrnn.rundir` from the run's config.json and metrics.jsonl, never from
its checkpoints, so listing a hundred runs takes no torch and no time. A run is *running* while
its lock is held (`RunDir.holder`: taken for the whole of `charrnn train`); otherwise it
*finished* if its last record says a budget was reached, or *stopped* with the recorded reason
(patience ran out, interrupted), or with none where the process died without a word.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from charrnn.errors import CharrnnError
from charrnn.rundir import CONFIG_FILE, RunDir, RunLog, finite

SORTS = ("val", "created", "name", "steps")
LN2 = math.log(2)


@dataclass(frozen=True)
class RunRow:
    name: str
    path: str
    created: str | None  # ISO 8601, local time with its offset
    corpus: list[str]
    tokenizer: str | None
    vocab_size: int | None
    parameters: int | None
    steps: int
    time_s: float | None  # seconds of training, as the last record counts them
    best_val_bits_per_char: float | None
    status: str  # running, finished, stopped, unreadable
    reason: str | None  # why it stopped (or what is wrong with it), or the pid of a running one

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _status(log: RunLog) -> tuple[str, str | None]:
    holder = RunDir(log.path).holder()
    if holder is not None:
        return "running", f"pid {holder}" if holder.isdigit() else None
    stop = log.records[-1].get("stop") if log.records else None
    if stop is None and log.records and not any("stop" in r for r in log.records):
        # A run from before the reason was recorded: one at its step budget did finish.
        if log.records[-1]["step"] == (log.config.get("train") or {}).get("max_steps"):
            stop = "step budget reached"
    if isinstance(stop, str) and stop.endswith("budget reached"):
        return "finished", stop
    return "stopped", stop if isinstance(stop, str) else None


def _parameters(config: dict[str, Any]) -> int | None:
    from charrnn.checkpoint import weight_shapes
    from charrnn.config import ModelConfig, from_dict

    try:
        shapes = weight_shapes(from_dict(ModelConfig, config.get("model")))
    except (CharrnnError, KeyError, TypeError, ValueError, AttributeError, OverflowError, RecursionError):
        return None  # a model config that does not check out has no parameter count
    return sum(math.prod(shape) for shape in shapes.values())


def _created(log: RunLog) -> str | None:
    created = log.config.get("created")
    if isinstance(created, str):
        return created
    try:  # runs from before `created` was recorded: config.json is written once, at the start
        stamp = RunDir(log.path).config.stat().st_mtime
    except OSError:
        return None
    return datetime.fromtimestamp(stamp).astimezone().isoformat(timespec="seconds")


def run_row(path: Path) -> RunRow:
    """The row of one run directory; a run whose config or metrics cannot be read is a row saying so."""
    try:
        log = RunDir(path).read_log(strict=False)
    except CharrnnError as exc:
        reason = str(exc).replace(f"{path}{os.sep}", "")  # the row names the run: its files need no path
        return RunRow(path.name, str(path), None, [], None, None, None, 0, None, None, "unreadable", reason)
    last = log.records[-1] if log.records else {}
    time_s = last.get("time")
    best = log.best_val()
    train, model, corpus = log.config.get("train", {}), log.config.get("model", {}), log.config.get("corpus", {})
    status, reason = _status(log)
    return RunRow(
        name=log.name,
        path=str(path),
        created=_created(log),
        corpus=list(corpus.get("files", [])),  # read_log checked each section's type
        tokenizer=train.get("tokenizer"),
        vocab_size=model.get("vocab_size"),
        parameters=_parameters(log.config),
        steps=int(last.get("step", 0)),
        time_s=float(time_s) if finite(time_s) else None,
        best_val_bits_per_char=best["val_loss"] / LN2 if best else None,
        status=status,
        reason=reason,
    )


def list_runs(directory: Path, *, sort: str = "val") -> list[RunRow]:
    """Every run in `directory` (its subdirectories with a config.json, or `directory` itself if it
    is a run), best validation first by default; runs without a validation score come last."""
    if sort not in SORTS:
        raise CharrnnError(f"--sort must be one of {', '.join(SORTS)}, got {sort!r}")
    if not directory.is_dir():
        raise CharrnnError(f"no directory {directory}")
    if (directory / CONFIG_FILE).is_file():
        paths = [directory]
    else:
        # A config.json that is no regular file is listed, as unreadable: it is a run, damaged.
        paths = [p for p in sorted(directory.iterdir()) if p.is_dir() and os.path.lexists(p / CONFIG_FILE)]
    rows = [run_row(p) for p in paths]
    keys = {
        "val": lambda r: (r.best_val_bits_per_char is None, r.best_val_bits_per_char or 0.0, r.name),
        "created": lambda r: (r.created is None, _negated_time(r.created), r.name),
        "name": lambda r: r.name,
        "steps": lambda r: (-r.steps, r.name),
    }
    return sorted(rows, key=keys[sort])


def _negated_time(created: str | None) -> float:
    """Newest first: minus the timestamp."""
    try:
        return -datetime.fromisoformat(created).timestamp() if created else 0.0
    except (ValueError, OverflowError, OSError):
        return 0.0


def _count(n: int | None) -> str:
    if n is None:
        return "?"
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def _duration(seconds: float | None) -> str:
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _when(created: str | None) -> str:
    try:
        return datetime.fromisoformat(created).strftime("%Y-%m-%d %H:%M") if created else "-"
    except ValueError:
        return created or "-"


COLUMNS = ("run", "created", "corpus", "tokenizer", "params", "steps", "time", "best val bpc", "status")
STYLES = {"running": "bold green", "finished": None, "stopped": "yellow", "unreadable": "red"}


def _cells(row: RunRow) -> list[str]:
    corpus = Path(row.corpus[0]).name if row.corpus else "-"
    if len(row.corpus) > 1:
        corpus += f" +{len(row.corpus) - 1}"
    tokenizer = f"{row.tokenizer} ({row.vocab_size})" if row.tokenizer and row.vocab_size else row.tokenizer or "-"
    best = f"{row.best_val_bits_per_char:.4f}" if row.best_val_bits_per_char is not None else "-"
    status = f"{row.status}: {row.reason}" if row.reason and row.status != "finished" else row.status
    steps, time = f"{row.steps:,}", _duration(row.time_s)
    return [row.name, _when(row.created), corpus, tokenizer, _count(row.parameters), steps, time, best, status]


def runs_table(rows: list[RunRow], title: str) -> Table:
    """The rows as a rich table, one colour per status."""
    table = Table(title=Text(title), title_justify="left")
    for column in COLUMNS:
        numeric = column in ("params", "steps", "time", "best val bpc")
        wraps = column in ("corpus", "status")  # a long reason wraps rather than squeeze the numbers
        table.add_column(column, justify="right" if numeric else "left", no_wrap=not wraps)
    for row in rows:
        table.add_row(*map(Text, _cells(row)), style=STYLES.get(row.status))  # names are never markup
    return table

"""What the commands show a person: a live progress bar on a terminal, plain lines in logs, tables.

Rich draws everything (one progress library for every command); when standard
output is not a terminal (CI logs, pipes) progress degrades to one plain line
per update, at most one every few seconds plus every evaluation. A sample drawn while training
shows under the progress bar (replaced by the next), or as an indented block in logs.
"""

from __future__ import annotations

import sys
import time
import unicodedata
from collections.abc import Iterable
from typing import Any

from rich.console import Console, RenderableType
from rich.panel import Panel
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from charrnn.results import Report, TrainResult, TrainSample

# Logs and pipes get a wide fixed width, so tables are not cut to 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _fraction(info: dict[str, Any], record: dict[str, Any]) -> float | None:
    parts = []
    if info.get("total_steps"):
        parts.append(record["step"] / info["total_steps"])
    if info.get("max_time"):
        parts.append(record["time"] / info["max_time"])
    return min(1.0, max(parts)) if parts else None


def _status(record: dict[str, Any], last_val: float | None) -> str:
    val = f"{last_val:.4f}" if last_val is not None else "-"
    return f"loss {record['train_loss']:.4f} | val {val} | {record['chars_per_sec']:,.0f} chars/s"


def printable(text: str) -> str:
    """`text` with its control characters other than line breaks and tabs shown as U+FFFD, so that
    a model's output cannot move a terminal's cursor or change its colours."""
    return "".join(c if c in "\n\t" or unicodedata.category(c) != "Cc" else "\ufffd" for c in text)


def _sample_title(sample: TrainSample) -> str:
    val = f", val {sample.val_loss:.4f}" if sample.val_loss is not None else ""
    return f"sample at step {sample.step:,}{val}, temperature {sample.temperature:g}"


class _TrainProgress(Progress):
    """The progress bar with the latest sample under it."""

    sample: RenderableType | None = None

    def get_renderables(self) -> Iterable[RenderableType]:
        yield from super().get_renderables()
        if self.sample is not None:
            yield self.sample


class _TrainDisplay:
    """What a training run shows: a progress bar with the latest sample under it on a terminal,
    plain lines (at most one every few seconds, and every evaluation) anywhere else."""

    def __init__(self) -> None:
        self.info: dict[str, Any] = {}
        self.last_val: float | None = None  # nats per character, the latest evaluation's
        self.printed = 0.0
        self.live = sys.stdout.isatty()
        self.progress = _TrainProgress(
            TextColumn("[bold]train"),
            BarColumn(),
            TextColumn("step {task.fields[step]}"),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TextColumn("left {task.fields[left]}"),
            console=console,
            transient=False,
        )
        self.task: Any = None

    def on_start(self, info: dict[str, Any]) -> None:
        self.info = info
        console.print(
            f"training {info['params']:,} parameters on {info['device']}, "
            f"{info['steps_per_epoch']:,} steps per epoch"
            + (f", from step {info['start_step']:,}" if info["start_step"] else "")
        )
        if self.live:
            self.progress.start()
            self.task = self.progress.add_task("train", total=1.0, step=info["start_step"], status="", left="?")

    def on_log(self, record: dict[str, Any]) -> None:
        if record.get("val_loss") is not None:
            self.last_val = record["val_loss"]
        fraction = _fraction(self.info, record)
        left = record["time"] * (1 - fraction) / fraction if fraction else None
        status = _status(record, self.last_val)
        if self.live:
            self.progress.update(
                self.task, completed=fraction or 0.0, step=f"{record['step']:,}", status=status, left=fmt_duration(left)
            )
        elif "val_loss" in record or time.monotonic() - self.printed > 5:
            self.printed = time.monotonic()
            total = self.info.get("total_steps")
            steps = f"{record['step']:,}" + (f"/{total:,}" if total else "")
            print(
                f"step {steps} | {status} | {fmt_duration(record['time'])} elapsed, {fmt_duration(left)} left",
                flush=True,
            )

    def on_message(self, text: str) -> None:
        # Text, not markup: a message names paths and corpora, and "runs/[/x]" is no style tag.
        live = self.live and self.progress.live.is_started
        (self.progress.console if live else console).print(Text(text, style="dim"))

    def on_sample(self, sample: TrainSample) -> None:
        text = printable(sample.text)
        if self.live:
            panel = Panel(Text(text), title=_sample_title(sample), title_align="left", border_style="dim")
            self.progress.sample = panel
            self.progress.refresh()
        else:
            block = "\n".join(f"  | {line}" if line else "  |" for line in text.split("\n"))
            print(f"{_sample_title(sample)}:\n{block}", flush=True)

    def on_end(self) -> None:
        if self.live:
            self.progress.stop()


def train_report(*, quiet: bool = False) -> Report:
    """A Report that draws a progress bar (terminal) or prints plain lines (anything else)."""
    if quiet:
        return Report()
    shown = _TrainDisplay()
    return Report(shown.on_start, shown.on_log, shown.on_message, shown.on_end, on_sample=shown.on_sample)


def train_summary(result: TrainResult) -> Table:
    table = Table(title="training summary", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("run", str(result.run_dir)),
        ("stopped", result.stop_reason),
        ("steps", f"{result.steps:,} ({result.epochs:.2f} epochs)"),
        ("time", fmt_duration(result.elapsed)),
        ("parameters", f"{result.parameters:,}"),
        ("throughput", f"{result.chars_per_sec:,.0f} chars/s"),
        ("last train loss", f"{result.train_loss:.4f}" if result.train_loss is not None else "-"),
        (
            "best val loss",
            f"{result.best_val:.4f} nats/char ({result.best_val / 0.6931471805599453:.4f} bits/char)"
            if result.best_val is not None
            else "no validation split",
        ),
    ]
    for key, value in rows:
        table.add_row(key, Text(value))  # Text: a "[" in a run's path is not rich markup
    return table


def eval_table(rows: list[tuple[str, dict[str, Any]]]) -> Table:
    """`charrnn eval`'s table; with --dynamic, the dynamic bits per character and the gain beside the static."""
    dynamic = any("dynamic" in r for _, r in rows)
    table = Table(title="evaluation (full stateful pass)" + (": static and dynamic" if dynamic else ""))
    names = ["text", "chars", "unknown", "loss/token", "nats/char", "bits/char", "perplexity"]
    names += ["dynamic bits/char", "gain"] if dynamic else []
    for name in (*names, "gzip", "bzip2", "xz"):
        table.add_column(name, justify="left" if name == "text" else "right")
    for name, r in rows:
        base = r.get("baselines_bits_per_char", {})
        cells = [
            Text(name),  # a file name, never markup
            f"{r['chars']:,}",
            f"{r['unknown']:,}",
            f"{r['loss_per_token']:.4f}",
            f"{r['nats_per_char']:.4f}",
            f"{r['bits_per_char']:.4f}",
            f"{r['perplexity']:.3f}",
        ]
        if dynamic:
            cells += [f"{r['dynamic']['bits_per_char']:.4f}", f"{r['dynamic_gain']:+.2%}"]
        table.add_row(*cells, *(f"{base[k]:.3f}" if k in base else "-" for k in ("gzip", "bzip2", "xz")))
    return table

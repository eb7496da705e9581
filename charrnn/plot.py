"""Loss curves: the train and validation loss of one or several runs, on one figure.

The y axis is bits per character for both curves, so runs with different tokenizers compare:
the train loss is logged per token and divided by the run's characters per token; the
validation loss is already per character. The legend gives its figures in the axis's unit, bits
per character, and nothing else (one unit throughout: figure, terminal, docs). The best
validation point of each run is starred, and where a run recorded them, what gzip and xz reach
on its validation text are dashed lines: a model above them has learnt less than a compressor.

matplotlib is imported only when a figure is drawn (the object API with the Agg canvas, never
pyplot's global state), so training imports this module for free.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from charrnn.errors import CharrnnError
from charrnn.rundir import CURVES_FILE, RunDir, RunLog, finite

if TYPE_CHECKING:
    from matplotlib.axes import Axes

X_AXES = ("step", "time", "chars")
FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
SIZE_INCHES, DPI = (9.6, 6.0), 100  # a 960 x 600 PNG
REFERENCES = ("gzip", "xz")  # the compressors drawn as reference lines
LN2 = math.log(2)
UNIT = "bits/char"  # of the axis and of every figure in the legend


@dataclass(frozen=True)
class Curves:
    """One run's curves against the chosen x axis, y in bits per character."""

    name: str
    train_x: list[float]
    train_bits: list[float]
    val_x: list[float]
    val_bits: list[float]
    baselines: dict[str, float]  # compressor -> bits per character on the validation text

    @property
    def best(self) -> tuple[float, float] | None:
        """(x, bits) of the lowest validation loss."""
        if not self.val_bits:
            return None
        i = min(range(len(self.val_bits)), key=self.val_bits.__getitem__)
        return self.val_x[i], self.val_bits[i]


def curves_of(log: RunLog, x: str = "step") -> Curves:
    """The run's records as curves; train loss is left out where the characters per token are unknown
    (a subword run from before they were recorded)."""
    if x not in X_AXES:
        raise CharrnnError(f"--x must be one of {', '.join(X_AXES)}, got {x!r}")
    per_token = log.chars_per_token()
    x_of = _x_reader(log, x, per_token)
    train_x, train_bits, val_x, val_bits = [], [], [], []
    for record in log.records:
        position = x_of(record)
        loss = record.get("train_loss")
        if per_token and finite(loss) and position is not None:
            train_x.append(position)
            train_bits.append(loss / per_token / LN2)
        val = record.get("val_loss")
        if finite(val) and position is not None:
            val_x.append(position)
            val_bits.append(val / LN2)
    return Curves(log.name, train_x, train_bits, val_x, val_bits, log.baselines())


def _x_reader(log: RunLog, x: str, per_token: float | None) -> Callable[[dict[str, Any]], float | None]:
    if x == "step":
        return lambda record: float(record["step"])
    if x == "time":
        return lambda record: float(record["time"]) if finite(record.get("time")) else None
    tokens = log.tokens_per_step()
    if tokens is None or per_token is None:
        raise CharrnnError(f"run {log.path} does not record the characters it trained on: use --x step or --x time")
    return lambda record: record["step"] * tokens * per_token


def output_format(output: Path) -> str:
    """The figure format a file name asks for; refuses an unknown suffix or a missing directory."""
    fmt = FORMATS.get(output.suffix.lower())
    if fmt is None:
        raise CharrnnError(f"cannot write {output}: the file name must end in .png, .svg or .pdf")
    if not output.parent.is_dir():
        raise CharrnnError(f"cannot write {output}: directory {output.parent} does not exist")
    return fmt


def load_curves(
    runs: Sequence[Path], x: str = "step", *, on_skip: Callable[[Path, str], None] | None = None
) -> list[Curves]:
    """Every run's curves; refuses runs with nothing to draw. A run that cannot be read is refused
    too, or, given `on_skip`, left out and passed to it with the reason (unless no run can be read:
    then that is one error, with every reason)."""
    if not runs:
        raise CharrnnError("no run to plot")
    if x not in X_AXES:
        raise CharrnnError(f"--x must be one of {', '.join(X_AXES)}, got {x!r}")
    curves, skipped = [], []
    for run in runs:
        try:
            curves.append(curves_of(RunDir(run).read_log(), x))
        except CharrnnError as exc:
            if on_skip is None:
                raise
            skipped.append((run, str(exc)))
    if not curves:
        raise CharrnnError("; ".join(reason for _, reason in skipped))
    for run, reason in skipped:
        on_skip(run, reason)  # type: ignore[misc]
    if not any(c.train_bits or c.val_bits for c in curves):
        raise CharrnnError("no losses to draw: the runs' records hold no finite train or validation loss")
    return curves


def plot_runs(
    runs: Sequence[Path], output: Path, *, x: str = "step", on_skip: Callable[[Path, str], None] | None = None
) -> Path:
    """Draw the curves of `runs` into `output` (.png, .svg or .pdf); every run is read and
    checked before anything is written (`on_skip`: as in `load_curves`)."""
    fmt = output_format(output)
    figure = draw_figure(load_curves(runs, x, on_skip=on_skip), x)
    _replace(output, lambda handle: figure.savefig(handle, format=fmt, dpi=DPI))
    return output


def _replace(path: Path, write: Callable[[Any], None]) -> None:
    """Write a temporary file beside `path` and rename it over `path`: a reader (an image viewer
    refreshing curves.png) sees the old figure or the new one, never half of one. Not fsynced, as
    checkpoints are (`files.atomic_write`): a figure lost to a power cut is drawn again, and an
    fsync at every evaluation would cost more than drawing."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except OSError as exc:
        from charrnn.files import discard, os_error_reason

        discard(tmp)  # a clean-up that fails (read-only file system) must not hide why
        raise CharrnnError(f"could not write {path}: {os_error_reason(exc, path)}") from None
    except BaseException:
        from charrnn.files import discard

        discard(tmp)
        raise


def write_curves(run_dir: Path) -> Path:
    """Write (or refresh) runs/NAME/curves.png from the run's records so far."""
    return plot_runs([run_dir], RunDir(run_dir).curves)


class CurvesWriter:
    """What training calls at each evaluation and at the end: refreshes curves.png, never fails.

    A drawing takes a tenth of a second or so (importing matplotlib, the first time, half a
    second), time taken from training: an evaluation redraws only once the training since the
    last drawing is at least `1 / MAX_SHARE` times what that drawing took, so the pictures cost
    at most MAX_SHARE of the run; `refresh(final=True)`, at the end of a run, always draws. The
    first failure to draw is reported once through `on_message`, later ones stay quiet. Nothing
    here touches the model or a random generator.
    """

    MAX_SHARE = 0.02
    FIRST_GUESS_S = 0.2  # what the first drawing is assumed to cost, before one has been timed

    def __init__(self, run_dir: Path, on_message: Callable[[str], None]) -> None:
        self.run_dir, self.on_message, self.failed = run_dir, on_message, False
        self.drawn_at, self.cost = time.monotonic(), self.FIRST_GUESS_S

    def refresh(self, *, final: bool = False) -> None:
        start = time.monotonic()
        if not final and start - self.drawn_at < self.cost / self.MAX_SHARE:
            return
        try:
            write_curves(self.run_dir)
        except Exception as exc:  # a picture must never stop a training run
            if not self.failed:
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                if not isinstance(exc, CharrnnError):
                    reason = f"could not draw {self.run_dir / CURVES_FILE}: {type(exc).__name__}: {reason}"
                self.on_message(reason)
            self.failed = True
        self.drawn_at = time.monotonic()
        self.cost = self.drawn_at - start


def x_label(x: str, scale: float = 1.0) -> str:
    if x == "step":
        return "step"
    if x == "chars":
        return "characters trained on"
    return {1.0: "training time (s)", 60.0: "training time (min)", 3600.0: "training time (h)"}[scale]


def time_scale(curves: Sequence[Curves]) -> float:
    """Seconds per unit of a time axis: seconds, minutes past 3 minutes, hours past 3 hours."""
    longest = max((max(c.train_x + c.val_x, default=0.0) for c in curves), default=0.0)
    return 3600.0 if longest > 3 * 3600 else 60.0 if longest > 180 else 1.0


def draw_figure(curves: Sequence[Curves], x: str) -> Any:
    """A matplotlib Figure (not shown, not registered with pyplot) of every run's curves."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter

    scale = time_scale(curves) if x == "time" else 1.0
    figure = Figure(figsize=SIZE_INCHES, dpi=DPI)
    figure.subplots_adjust(
        left=0.07, right=0.98, bottom=0.09, top=0.94
    )  # fixed margins: a layout engine doubles the cost
    axes = figure.add_subplot()
    for i, run in enumerate(curves):
        _draw_run(axes, run, f"C{i % 10}", scale, named=len(curves) > 1)
    _draw_baselines(axes, curves)
    title = f"loss curves: {curves[0].name}" if len(curves) == 1 else f"loss curves: {len(curves)} runs"
    axes.set_title(title)
    axes.set_xlabel(x_label(x, scale))
    axes.set_ylabel("bits per character")
    if x == "chars":
        axes.xaxis.set_major_formatter(EngFormatter(sep=""))
    axes.grid(True, alpha=0.3)
    axes.legend(loc="upper right", fontsize="small")
    return figure


def _draw_run(axes: Axes, run: Curves, color: str, scale: float, *, named: bool) -> None:
    """Train thin and pale, validation bold with a dot per evaluation, a star at the best one."""
    prefix = f"{run.name}: " if named else ""
    if run.train_bits:
        label = f"{prefix}train (last {run.train_bits[-1]:.3f} {UNIT})"
        axes.plot([v / scale for v in run.train_x], run.train_bits, color=color, alpha=0.45, linewidth=1, label=label)
    if run.best is None:
        return
    best_x, best_bits = run.best[0] / scale, run.best[1]
    label = f"{prefix}validation (best {best_bits:.3f} {UNIT})"
    axes.plot(
        [v / scale for v in run.val_x], run.val_bits, color=color, linewidth=2, marker="o", markersize=3, label=label
    )
    axes.plot([best_x], [best_bits], marker="*", markersize=15, color=color, markeredgecolor="black", zorder=5)
    if not named:  # one run: its best figure beside the star (several would overlap)
        axes.annotate(f"{best_bits:.3f}", (best_x, best_bits), textcoords="offset points", xytext=(0, -18), ha="center")


def _draw_baselines(axes: Axes, curves: Sequence[Curves]) -> None:
    """gzip and xz as dashed lines: once when every run was scored on the same text, else per run."""
    shared = all(c.baselines == curves[0].baselines for c in curves)
    for i, run in enumerate(curves[:1] if shared else curves):
        for name, dashes in zip(REFERENCES, ((8, 3), (3, 2))):
            if name not in run.baselines:
                continue
            owner = "" if shared else f"{run.name}: "
            bits = run.baselines[name]
            color = "0.35" if shared else f"C{i % 10}"
            label = f"{owner}{name} on the validation text ({bits:.3f} {UNIT})"
            axes.axhline(bits, color=color, linestyle=(0, dashes), linewidth=1.2, label=label)

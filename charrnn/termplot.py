"""Loss curves drawn in the terminal: braille dots (2 x 4 per character cell) styled with rich.

The same curves as the figure (`charrnn.plot`), in the same unit (bits per character): validation
solid, train dotted, gzip and xz each dashed in its own way and named at the line's left end, the
best validation point a star (with several runs, a mark of each run's own). The patterns and marks
tell the curves apart where there is no colour (a pipe, a log, NO_COLOR); rich drops the colour in
those cases by itself.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Group
from rich.text import Text

from charrnn.plot import REFERENCES, UNIT, Curves, time_scale, x_label

BRAILLE_BASE = 0x2800
# The bit of each dot in a braille cell, indexed [row][column] within the 4 x 2 cell.
DOT_BITS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))
COLOURS = ("cyan", "magenta", "green", "yellow", "blue", "red")
SOLID, DOTTED = (True,), (True, False)
# Along a level line each braille cell holds two dots: gzip in long dashes, xz in short ones.
REFERENCE_PATTERNS = {"gzip": (True,) * 4 + (False,) * 2, "xz": (True, True, False, False)}
RUN_MARKS = ("*", "+", "x", "o", "#", "@")  # each run's best point, when several runs share the plot
GUTTER = 8  # characters of y labels left of the plot


class Canvas:
    """A grid of `cols` x `rows` cells, drawn on in data coordinates over the given ranges."""

    def __init__(self, cols: int, rows: int, x_range: tuple[float, float], y_range: tuple[float, float]) -> None:
        self.cols, self.rows = cols, rows
        self.x_range, self.y_range = x_range, y_range
        self.bits = [[0] * cols for _ in range(rows)]
        self.styles: list[list[str]] = [[""] * cols for _ in range(rows)]
        self.marks: dict[tuple[int, int], tuple[str, str]] = {}  # (row, col) -> (character, style)

    def _dot(self, x: float, y: float) -> tuple[int, int]:
        (x0, x1), (y0, y1) = self.x_range, self.y_range
        dx = round((x - x0) / (x1 - x0) * (2 * self.cols - 1))
        dy = round((y1 - y) / (y1 - y0) * (4 * self.rows - 1))
        return dx, dy

    def _set(self, dx: int, dy: int, style: str) -> None:
        if 0 <= dx < 2 * self.cols and 0 <= dy < 4 * self.rows:
            row, col = dy // 4, dx // 2
            self.bits[row][col] |= DOT_BITS[dy % 4][dx % 2]
            self.styles[row][col] = style

    def line(self, xs: Sequence[float], ys: Sequence[float], style: str, pattern: Sequence[bool] = SOLID) -> None:
        """A polyline through the points, its dots on and off by `pattern` along the way."""
        dots = [self._dot(x, y) for x, y in zip(xs, ys)]
        walked = 0
        for (ax, ay), (bx, by) in zip(dots, dots[1:] or dots):
            steps = max(abs(bx - ax), abs(by - ay), 1)
            for k in range(steps + 1):
                if pattern[walked % len(pattern)]:
                    self._set(round(ax + (bx - ax) * k / steps), round(ay + (by - ay) * k / steps), style)
                walked += 1

    def row_of(self, y: float) -> int | None:
        """The row of cells that `y` falls in, None off the canvas."""
        dy = self._dot(self.x_range[0], y)[1]
        return dy // 4 if 0 <= dy < 4 * self.rows else None

    def mark(self, x: float, y: float, character: str, style: str) -> None:
        dx, dy = self._dot(x, y)
        if 0 <= dx < 2 * self.cols and 0 <= dy < 4 * self.rows:
            self.marks[(dy // 4, dx // 2)] = (character, style)

    def lines(self) -> list[Text]:
        out = []
        for row in range(self.rows):
            text = Text()
            for col in range(self.cols):
                if (row, col) in self.marks:
                    text.append(*self.marks[(row, col)])
                else:
                    text.append(chr(BRAILLE_BASE + self.bits[row][col]), self.styles[row][col] or None)
            out.append(text)
        return out


def _ranges(curves: Sequence[Curves], scale: float) -> tuple[tuple[float, float], tuple[float, float]]:
    xs = [v / scale for c in curves for v in c.train_x + c.val_x]
    ys = [
        v for c in curves for v in c.train_bits + c.val_bits + [c.baselines[n] for n in REFERENCES if n in c.baselines]
    ]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    pad = (y1 - y0) * 0.05 or 0.5
    return (x0, x1 if x1 > x0 else x0 + 1), (y0 - pad, y1 + pad)


def _number(value: float) -> str:
    if abs(value) >= 1e6:
        return f"{value / 1e6:.3g}M"
    if abs(value) >= 1e4:
        return f"{value / 1e3:.3g}k"
    return f"{value:.4g}"


def sample(pattern: Sequence[bool], cells: int = 6) -> str:
    """How `pattern` looks along a level line, `cells` characters of it: the legend's key, drawn
    by the canvas itself so that it is the glyph the plot shows."""
    canvas = Canvas(cells, 1, (0.0, 1.0), (0.0, 1.0))
    canvas.line([0.0, 1.0], [1.0, 1.0], "", pattern)
    return canvas.lines()[0].plain


def terminal_figure(curves: Sequence[Curves], x: str, *, width: int = 100, height: int = 20) -> Group:
    """The curves as rich text: a plot `width` characters wide (labels included) and `height` rows.

    Every series looks different without colour too: validation solid, train dotted, gzip and xz
    each dashed in its own way and named on the plot; with several runs, each run's best point
    (and the end of its train curve) carries the run's own mark."""
    scale = time_scale(curves) if x == "time" else 1.0
    x_range, y_range = _ranges(curves, scale)
    canvas = Canvas(max(10, width - GUTTER - 1), max(4, height), x_range, y_range)
    legend: list[Text] = []
    several = len(curves) > 1
    for i, run in enumerate(curves):
        colour, prefix = COLOURS[i % len(COLOURS)], f"{run.name}: " if several else ""
        best_mark = RUN_MARKS[i % len(RUN_MARKS)] if several else "*"
        _plot_run(canvas, run, colour, scale, best_mark, several)
        if run.train_bits:
            end = f", ends at {best_mark}" if several else ""
            last = f"{prefix}train (last {run.train_bits[-1]:.3f} {UNIT}{end})"
            legend.append(Text.assemble((sample(DOTTED, 3) + " ", colour), last))
        if run.best is not None:
            best = f"{prefix}validation (best {run.best[1]:.3f} {UNIT}, "
            legend.append(Text.assemble(("━━━ ", f"bold {colour}"), best, (best_mark, f"bold {colour}"), ")"))
    shared = all(c.baselines == curves[0].baselines for c in curves)
    labelled: dict[int, int] = {}  # canvas row -> the column where the next name on it may go
    for run in curves[:1] if shared else curves:
        for name in REFERENCES:
            if name in run.baselines:
                bits, pattern = run.baselines[name], REFERENCE_PATTERNS[name]
                canvas.line(list(x_range), [bits, bits], "dim", pattern)
                owner = "" if shared else f"{run.name}: "
                _label(canvas, labelled, bits, f"{owner}{name}")
                text = f"{owner}{name} on the validation text ({bits:.3f} {UNIT})"
                legend.append(Text.assemble((sample(pattern) + " ", "dim"), text))
    return Group(*_framed(canvas, x_range, y_range), Text(" " * GUTTER + x_label(x, scale)), *legend)


def _label(canvas: Canvas, labelled: dict[int, int], y: float, name: str) -> None:
    """Write `name` on the canvas at the left end of the level line at `y`, after any name
    already written on that row."""
    row = canvas.row_of(y)
    if row is None:
        return
    column = labelled.get(row, 1)
    for k, character in enumerate(name):
        if column + k < canvas.cols:
            canvas.marks[(row, column + k)] = (character, "dim")
    labelled[row] = column + len(name) + 1


def _plot_run(canvas: Canvas, run: Curves, colour: str, scale: float, best_mark: str, several: bool) -> None:
    if run.train_bits:
        canvas.line([v / scale for v in run.train_x], run.train_bits, colour, DOTTED)
    if run.val_bits:
        canvas.line([v / scale for v in run.val_x], run.val_bits, f"bold {colour}")
    if several and run.train_bits:
        canvas.mark(run.train_x[-1] / scale, run.train_bits[-1], best_mark, colour)
    if run.best is not None:
        canvas.mark(run.best[0] / scale, run.best[1], best_mark, f"bold {colour}")


def _framed(canvas: Canvas, x_range: tuple[float, float], y_range: tuple[float, float]) -> list[Text]:
    """The canvas with y labels (bits per character) on the left and x labels underneath."""
    rows = canvas.lines()
    (y0, y1), last = y_range, len(rows) - 1
    labelled = {0: y1, last // 2: (y0 + y1) / 2, last: y0}
    framed = [Text("bits/char".rjust(GUTTER))]
    for i, row in enumerate(rows):
        label = f"{labelled[i]:.2f}" if i in labelled else ""
        framed.append(Text.assemble(label.rjust(GUTTER - 1) + " ", "┤" if i in labelled else "│", row))
    framed.append(Text(" " * GUTTER + "└" + "─" * canvas.cols))
    left, middle, right = (_number(v) for v in (x_range[0], sum(x_range) / 2, x_range[1]))
    ticks = [" "] * (canvas.cols + 1)
    for at, label in ((0, left), ((canvas.cols - len(middle)) // 2, middle), (canvas.cols + 1 - len(right), right)):
        ticks[at : at + len(label)] = label
    framed.append(Text(" " * GUTTER + "".join(ticks)[: canvas.cols + 1]))
    return framed

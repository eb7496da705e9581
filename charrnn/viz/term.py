"""The explain view in a terminal: the text with each character's background coloured by its surprisal,
or, without colour, the text with a line of marks under each of its lines that shows what each
character cost.

`--color auto` (the default) colours on a terminal, unless NO_COLOR is set (FORCE_COLOR forces
colour, as rich reads them); `always` colours whatever standard output is (for `less -R`);
`never` prints the marks instead. The marks read in any pager or file: under each character,
one of MARKS by its bits ('?' under a character the model does not know).
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Iterator

from rich.console import Console
from rich.text import Text

from charrnn.errors import CharrnnError
from charrnn.viz.explain import NOT_PREDICTED, SURPRISAL_SCALE, Explanation, surprisal_colour

COLOR_CHOICES = ("auto", "always", "never")
# Marks of the plain view: (upper bound in bits, mark); None: no upper bound.
MARKS: list[tuple[float | None, str]] = [(2.0, " "), (4.0, "."), (6.0, "-"), (8.0, "+"), (None, "#")]
UNKNOWN_MARK = "?"
TAB = 8  # columns between tab stops in the plain view


def _style(background: str, ink: str) -> str:
    return f"{ink} on {background}"


def _figures(bits_per_char: float, baselines: dict[str, float]) -> str:
    model = "-" if math.isnan(bits_per_char) else f"{bits_per_char:.4f}"
    return ", ".join([f"model {model}", *(f"{name} {bits:.3f}" for name, bits in baselines.items())])


def summary_line(expl: Explanation) -> str:
    """The figures, each group naming the text it was measured on: the characters shown, and where
    they are an excerpt, the whole text (as `charrnn eval` reports it)."""
    unknown = expl.num_unknown
    if expl.predicted:
        shown = "the characters shown" if expl.whole is not None else "this text"
        line = (
            f"{expl.title}: bits per character on {shown} ({len(expl.chars):,}, {expl.predicted:,} predicted): "
            + _figures(expl.bits_per_char, expl.baselines)
        )
    else:
        line = f"{expl.title}: no character predicted (nothing comes before the first)"
    if expl.whole is not None:
        whole = expl.whole
        line += f"; on the whole text ({whole.chars:,} characters): {_figures(whole.bits_per_char, whole.baselines)}"
    return line + (f"; {unknown:,} unknown" if unknown else "; no unknown characters")


def legend() -> Text:
    text = Text("bits: ")
    low = 0.0
    for upper, background, ink in SURPRISAL_SCALE:
        label = f" >={low:g} " if upper is None else f" {low:g}-{upper:g} "
        text.append(label, style=_style(background, ink))
        low = upper if upper is not None else low
    text.append(" not predicted ", style=_style(*NOT_PREDICTED))
    text.append("; unknown characters underlined")
    return text


def coloured_text(expl: Explanation) -> Text:
    """The text, each character on its surprisal's colour; a newline shows as a coloured mark before the break."""
    text = Text()
    for ch, bits, unknown in zip(expl.chars, expl.bits.tolist(), expl.unknown.tolist()):
        style = _style(*surprisal_colour(math.nan if bits != bits else bits))
        if unknown:
            style += " underline"
        if ch == "\n":
            text.append("\u21b5", style=style)
            text.append("\n")
        else:
            text.append(ch if ch.isprintable() or ch == "\t" else "\ufffd", style=style)
    return text


def mark(bits: float, unknown: bool) -> str:
    """The plain view's mark for a character that cost `bits` (NaN: not predicted, no mark)."""
    if unknown:
        return UNKNOWN_MARK
    if math.isnan(bits):
        return " "
    for upper, symbol in MARKS:
        if upper is None or bits < upper:
            return symbol
    return MARKS[-1][1]


def marks_legend() -> str:
    parts = []
    low = MARKS[0][0] or 0.0
    for upper, symbol in MARKS[1:]:
        parts.append(f"'{symbol}' {low:g}-{upper:g}" if upper is not None else f"'{symbol}' >={low:g}")
        low = upper if upper is not None else low
    return (
        f"marks under each line, by bits: none below {MARKS[0][0]:g}, "
        + ", ".join(parts)
        + f", '{UNKNOWN_MARK}' unknown; \u21b5 ends a line"
    )


def _width(ch: str) -> int:
    """Columns a character takes in a terminal: 2 for wide East Asian ones, 0 for combining marks."""
    if unicodedata.combining(ch):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def marked_lines(expl: Explanation, width: int = 80) -> Iterator[str]:
    """The text as plain lines of at most `width` columns, each followed by its line of marks, a
    character's mark under its first column; a combining character's cost joins the mark before."""
    width = max(width, TAB)
    text: list[str] = []
    marks: list[str] = []  # one per character that takes columns, padded to its width
    column = 0
    for ch, bits, unknown in zip(expl.chars, expl.bits.tolist(), expl.unknown.tolist()):
        symbol = mark(bits, unknown)
        if ch == "\n":
            text.append("\u21b5")
            marks.append(symbol)
            yield from _pair(text, marks)
            text, marks, column = [], [], 0
            continue
        glyph = ch if ch.isprintable() or ch == "\t" else "\ufffd"
        cells = TAB - column % TAB if ch == "\t" else _width(glyph)
        if cells == 0 and marks:
            text.append(glyph)
            marks[-1] = max(marks[-1][0], symbol, key=_severity) + marks[-1][1:]
            continue
        if column + cells > width:
            yield from _pair(text, marks)
            text, marks, column = [], [], 0
            cells = TAB if ch == "\t" else cells
        text.append(" " * cells if ch == "\t" else glyph)
        marks.append(symbol + " " * (cells - 1))
        column += cells
    if text:
        yield from _pair(text, marks)


def _pair(text: list[str], marks: list[str]) -> Iterator[str]:
    yield "".join(text).rstrip()
    yield "".join(marks).rstrip()


def _severity(symbol: str) -> int:
    """How costly a mark says a character was: the order of MARKS, an unknown character last."""
    order = [m for _, m in MARKS] + [UNKNOWN_MARK]
    return order.index(symbol)


def use_colour(console: Console, color: str) -> bool:
    if color not in COLOR_CHOICES:
        raise CharrnnError(f"--color must be one of {', '.join(COLOR_CHOICES)}, got {color!r}")
    if color != "auto":
        return color == "always"
    return console.is_terminal and not console.no_color and console.color_system is not None


def print_term(expl: Explanation, console: Console | None = None, *, color: str = "auto") -> None:
    """The summary, then the text coloured by surprisal (`color`: auto, always or never) or with its marks."""
    if console is None:
        always = color == "always"
        console = Console(
            highlight=False, soft_wrap=True, force_terminal=True if always else None, no_color=False if always else None
        )
    coloured = use_colour(console, color)
    if coloured and console.color_system is None:  # --color always on a console that found no colours
        console = Console(highlight=False, soft_wrap=True, force_terminal=True, color_system="standard")
    console.print(summary_line(expl), markup=False, highlight=False)
    if coloured:
        console.print(legend())
        console.print(coloured_text(expl))
    else:
        console.print(marks_legend(), markup=False, highlight=False)
        for line in marked_lines(expl, console.width):
            console.print(line, markup=False, highlight=False)

"""The explain view in a terminal: the text with each character's background coloured by its surprisal.

Rich decides whether to colour: not when standard output is not a terminal, nor when NO_COLOR
is set (FORCE_COLOR forces colour). Without colour the text prints as it is, with the summary.
"""

from __future__ import annotations

import math

from rich.console import Console
from rich.text import Text

from charrnn.viz.explain import NOT_PREDICTED, SURPRISAL_SCALE, Explanation, surprisal_colour


def _style(background: str, ink: str) -> str:
    return f"{ink} on {background}"


def summary_line(expl: Explanation) -> str:
    baselines = ", ".join(f"{name} {bits:.3f}" for name, bits in expl.baselines.items())
    unknown = expl.num_unknown
    if expl.predicted:
        line = f"{expl.title}: {expl.bits_per_char:.4f} bits per character over {expl.predicted:,} predicted characters"
    else:
        line = f"{expl.title}: no character predicted (nothing comes before the first)"
    if baselines:
        line += f" ({baselines})"
    return line + (f"; {unknown:,} unknown (underlined)" if unknown else "; no unknown characters")


def legend() -> Text:
    text = Text("bits: ")
    low = 0.0
    for upper, background, ink in SURPRISAL_SCALE:
        label = f" >={low:g} " if upper is None else f" {low:g}-{upper:g} "
        text.append(label, style=_style(background, ink))
        low = upper if upper is not None else low
    text.append(" not predicted ", style=_style(*NOT_PREDICTED))
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


def print_term(expl: Explanation, console: Console | None = None) -> None:
    console = console or Console(highlight=False, soft_wrap=True)
    coloured = console.is_terminal and not console.no_color and console.color_system is not None
    console.print(summary_line(expl), markup=False, highlight=False)
    if coloured:
        console.print(legend())
        console.print(coloured_text(expl))
    else:
        console.print("".join(expl.chars), markup=False, highlight=False)

"""Type checks for what a caller passes the Python API, with the messages the command gives.

The command line hands the library values of the right type (Typer parses them); a Python caller
may pass anything, and a `length=2.5` or a `seed="7"` should be a CharrnnError naming the option,
not a TypeError from deep inside numpy. A bool is not an integer here, nor a float one; a number
(where a float is meant) may be an int or a float. numpy's integers and floats are accepted.
"""

from __future__ import annotations

import numbers
from typing import Any

from charrnn.errors import CharrnnError


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "…"


def integer(where: str, value: Any) -> int:
    """`value` as an int, or a CharrnnError: `where` must be an integer."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    raise CharrnnError(f"{where} must be an integer, got {_shown(value)}")


def number(where: str, value: Any) -> float:
    """`value` (an int or a float) as a float, or a CharrnnError: `where` must be a number."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    raise CharrnnError(f"{where} must be a number, got {_shown(value)}")


def flag(where: str, value: Any) -> bool:
    """`value` if it is True or False, else a CharrnnError."""
    if isinstance(value, bool):
        return value
    raise CharrnnError(f"{where} must be true or false, got {_shown(value)}")


def strings(where: str, value: Any) -> tuple[str, ...]:
    """A str, or a list or tuple of them, as a tuple (None: none), or a CharrnnError."""
    if value is None:
        return ()
    items = (value,) if isinstance(value, str) else value
    if isinstance(items, list | tuple) and all(isinstance(item, str) for item in items):
        return tuple(items)
    raise CharrnnError(f"{where} must be a str or a list of str, got {_shown(value)}")

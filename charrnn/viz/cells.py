"""What the units of a recurrent model track: simple properties of the text, and the units whose
activations follow them most closely.

Activations are per character: the state *after* the model has read that character (the state
that predicts the next one), as (chars, layers, hidden) arrays for h and, for an LSTM, c. Each
property below is a number per character, computed from the text up to and including it, so a
unit and a property are compared position by position with Pearson's r. A unit that counts the
characters of the line so far, or that is on inside quotes, stands out with |r| near 1; this is
how Karpathy, Johnson and Fei-Fei found their line-length and quote cells.

Activations travel to the page as int8 (one offset and scale per unit, over the unit's own range),
and only as many units as fit the page's size budget: every unit of a small model, and for a big
one the units that follow some property most closely.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np

# Property name -> what it measures, shown on the page beside each ranked unit.
PROPERTIES = {
    "in quotes": "inside a pair of quotation marks",
    "in brackets": "inside (), [] or {}",
    "position in line": "characters read since the last newline",
    "start of a word": "the character is a word's first letter",
    "after a newline": "the character just read is a newline",
    "position in word": "letters read since the word began",
    "digit": "the character is a digit",
}

_QUOTES = {'"': 0, "\u201c": 1, "\u201d": -1}  # toggling, opening, closing
_OPEN, _CLOSE = "([{", ")]}"


def text_properties(chars: list[str]) -> dict[str, np.ndarray]:
    """Every property of PROPERTIES as a float array over the characters (len(chars),)."""
    n = len(chars)
    values = {name: np.zeros(n) for name in PROPERTIES}
    quoted = False
    depth = column = word = 0
    previous_letter = False
    for i, ch in enumerate(chars):
        mark = _QUOTES.get(ch)
        if mark is not None:
            quoted = (not quoted) if mark == 0 else mark > 0  # an opening mark is inside, a closing one outside
        if ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth = max(0, depth - 1)
        column = 0 if ch == "\n" else column + 1
        letter = ch.isalpha()
        word = word + 1 if letter else 0
        values["in quotes"][i] = quoted
        values["in brackets"][i] = depth > 0
        values["position in line"][i] = column
        values["start of a word"][i] = letter and not previous_letter
        values["after a newline"][i] = ch == "\n"
        values["position in word"][i] = word
        values["digit"][i] = ch.isdigit()
        previous_letter = letter
    return values


def correlations(series: np.ndarray, properties: dict[str, np.ndarray]) -> tuple[np.ndarray, list[str]]:
    """Pearson's r of every unit with every property: series (chars, units) -> (units, properties).

    A property or unit that is constant over the text has no correlation: its r is 0.
    """
    names = [name for name, v in properties.items() if np.ptp(v) > 0] if len(series) else []
    if not names:
        return np.zeros((series.shape[1], 0)), []
    props = np.stack([properties[name] for name in names], axis=1)  # (chars, P)

    def standardized(x: np.ndarray) -> np.ndarray:
        x = x - x.mean(axis=0)
        norm = np.sqrt((x * x).sum(axis=0))
        return x / np.where(norm > 1e-12, norm, np.inf)

    return np.clip(standardized(series.astype(np.float64)).T @ standardized(props), -1.0, 1.0), names


@dataclass(frozen=True)
class Unit:
    """One unit of the model: which state (h or c), which layer, which index in the layer."""

    state: str
    layer: int
    index: int


@dataclass(frozen=True)
class RankedUnit:
    unit: Unit
    prop: str
    r: float


def unit_table(activations: dict[str, np.ndarray]) -> tuple[list[Unit], np.ndarray]:
    """Every unit and its activation series, side by side: (chars, units) float32."""
    units: list[Unit] = []
    columns = []
    for state, values in activations.items():  # (chars, layers, hidden)
        _, layers, hidden = values.shape
        for layer in range(layers):
            units.extend(Unit(state, layer, i) for i in range(hidden))
            columns.append(values[:, layer, :])
    series = np.concatenate(columns, axis=1) if columns else np.zeros((0, 0), np.float32)
    return units, series.astype(np.float32, copy=False)


def rank_units(r: np.ndarray, names: list[str], units: list[Unit], *, per_property: int = 3) -> list[RankedUnit]:
    """The `per_property` units of each property with the largest |r|, strongest first overall."""
    ranked = []
    for p, name in enumerate(names):
        strength = np.abs(r[:, p])
        for k in np.argsort(-strength, kind="stable")[:per_property]:
            if strength[k] > 0:
                ranked.append(RankedUnit(units[k], name, float(r[k, p])))
    return sorted(ranked, key=lambda item: -abs(item.r))


def units_to_keep(r: np.ndarray, ranked: list[RankedUnit], units: list[Unit], budget: int) -> list[int]:
    """Indices of the units the page stores, at most `budget`: the ranked units, then the rest by
    their strongest |r| with any property, in the model's own order."""
    if budget >= len(units):
        return list(range(len(units)))
    position = {unit: k for k, unit in enumerate(units)}
    keep = list(dict.fromkeys(position[item.unit] for item in ranked))[:budget]
    strongest = np.abs(r).max(axis=1) if r.size else np.zeros(len(units))
    chosen = set(keep)
    for k in np.argsort(-strongest, kind="stable"):
        if len(keep) >= budget:
            break
        if int(k) not in chosen:
            keep.append(int(k))
    return sorted(keep)


def quantize(series: np.ndarray) -> tuple[str, list[float], list[float]]:
    """Each column of `series` (chars, units) as int8 over its own range, unit after unit, base64;
    with each unit's offset and step: value = offset + step * (q + 128)."""
    lo = series.min(axis=0) if len(series) else np.zeros(series.shape[1])
    hi = series.max(axis=0) if len(series) else np.zeros(series.shape[1])
    step = (hi - lo) / 255.0
    safe = np.where(step > 0, step, 1.0)
    q = np.rint((series - lo) / safe) - 128
    q = np.clip(q, -128, 127).astype(np.int8).T  # (units, chars): one unit's series is contiguous
    encoded = base64.b64encode(np.ascontiguousarray(q).tobytes()).decode("ascii")
    return encoded, [float(x) for x in lo], [float(x) for x in step]

"""The explain page: what every character of a text cost the model, and what its units track.

One stateful pass of the model over the text (`Model.score(..., activations=True)`) gives, per
character, its surprisal in bits, the model's top predictions and the hidden (and, for an LSTM,
cell) state after reading it. `explain_run` turns that into an `Explanation`; `page_html` fills the
template `page.html` (shipped beside this module) with it as one self-contained file: the data as
JSON, plain JavaScript and inline SVG, nothing fetched.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from charrnn.errors import CharrnnError
from charrnn.viz.cells import (
    PROPERTIES,
    RankedUnit,
    Unit,
    correlations,
    quantize,
    rank_units,
    text_properties,
    unit_table,
    units_to_keep,
)

TOP_K = 5  # predictions the page shows per character
# Predictions asked of the model per character: enough to give most characters an exact rank.
RANK_DEPTH = 50
DEFAULT_MAX_CHARS = 5000
# The page stays under 5 MB: what the characters' records leave of this goes to activations.
PAGE_BUDGET = 4_600_000

# Surprisal bins (upper bound in bits, background, ink), shared by the page and the terminal:
# pale for what the model expected, dark for what surprised it. None: no upper bound.
SURPRISAL_SCALE: list[tuple[float | None, str, str]] = [
    (0.25, "#fff8dc", "#111111"),
    (0.5, "#ffeda0", "#111111"),
    (1.0, "#fed976", "#111111"),
    (2.0, "#feb24c", "#111111"),
    (3.0, "#fd8d3c", "#111111"),
    (4.0, "#f03b20", "#ffffff"),
    (6.0, "#bd0026", "#ffffff"),
    (8.0, "#800026", "#ffffff"),
    (None, "#4a0e4e", "#ffffff"),
]
NOT_PREDICTED = ("#dcdcdc", "#555555")  # the first character: nothing comes before it


def surprisal_colour(bits: float) -> tuple[str, str]:
    """(background, ink) of a character that cost `bits` (NaN: not predicted)."""
    if math.isnan(bits):
        return NOT_PREDICTED
    for upper, background, ink in SURPRISAL_SCALE:
        if upper is None or bits < upper:
            return background, ink
    return SURPRISAL_SCALE[-1][1:]


@dataclass(frozen=True)
class WholeText:
    """The figures of the whole text where an explanation shows an excerpt of it (--max-chars):
    what `charrnn eval` reports on that text. Compressors do poorly on short texts, so the
    excerpt's figures alone would flatter the model against them."""

    chars: int
    bits_per_char: float  # the model's
    baselines: dict[str, float]  # gzip/bzip2/xz bits per character

    def as_dict(self) -> dict[str, Any]:
        bpc = self.bits_per_char
        return {
            "chars": self.chars,
            "bits_per_char": None if math.isnan(bpc) else bpc,
            "baselines": self.baselines,
        }


@dataclass(frozen=True)
class Explanation:
    """One text as the model saw it, character by character."""

    title: str  # the run
    source: str  # where the text came from
    chars: list[str]  # the text, one code point each
    bits: np.ndarray  # (N,) float64 surprisal; NaN where nothing predicts the character
    top: list[list[tuple[str, float]]]  # the model's top predictions before each character
    rank: np.ndarray  # (N,) int: 1 = the model's first choice; 0 = below the top RANK_DEPTH, or not predicted
    unknown: np.ndarray  # (N,) bool: not in the model's vocabulary
    activations: dict[str, np.ndarray]  # "h" (and "c" for an LSTM): (N, layers, hidden) float32
    model: dict[str, Any]  # cell, layers, hidden, tokenizer, description
    total_chars: int  # characters of the source before --max-chars cut it
    baselines: dict[str, float] = field(default_factory=dict)  # gzip/bzip2/xz bits per character on `chars`
    whole: WholeText | None = None  # the whole text's figures, where `chars` is an excerpt of it
    ranked: list[RankedUnit] = field(default_factory=list)
    strength: np.ndarray | None = None  # (units,) each unit's strongest |r| with any property
    dynamic_bits: np.ndarray | None = None  # (N,) with --dynamic: the bits by dynamic evaluation

    @property
    def predicted(self) -> int:
        return int(np.count_nonzero(~np.isnan(self.bits)))

    @property
    def bits_per_char(self) -> float:
        """Mean surprisal over the predicted characters: what `charrnn eval` reports on the same text."""
        return float(np.nansum(self.bits) / self.predicted) if self.predicted else math.nan

    @property
    def num_unknown(self) -> int:
        return int(self.unknown.sum())


def with_units(expl: Explanation) -> Explanation:
    """The explanation with its ranked units: those that follow a text property most closely."""
    units, series = unit_table(expl.activations)
    r, names = correlations(series, text_properties(expl.chars))
    ranked = rank_units(r, names, units)
    strength = np.abs(r).max(axis=1) if r.size else np.zeros(len(units))
    return Explanation(**{**expl.__dict__, "ranked": ranked, "strength": strength})


def records(expl: Explanation) -> list[dict[str, Any]]:
    """One plain record per character, for `--json` and other tools."""
    out = []
    for i, ch in enumerate(expl.chars):
        bits = float(expl.bits[i])
        dynamic = {} if expl.dynamic_bits is None else {"dynamic_bits": _number(float(expl.dynamic_bits[i]))}
        out.append(
            {
                "char": ch,
                "bits": None if math.isnan(bits) else bits,
                **dynamic,
                "probability": None if math.isnan(bits) else 2.0**-bits,
                "rank": int(expl.rank[i]) or None,
                "unknown": bool(expl.unknown[i]),
                "top": [[text, p] for text, p in expl.top[i]],
            }
        )
    return out


def _number(value: float) -> float | None:
    return None if math.isnan(value) else value


def summary(expl: Explanation) -> dict[str, Any]:
    """The figures: `bits_per_char` and `baselines` on the characters shown (`chars` of them), and
    `whole` (the same on all `total_chars`; null when all are shown); with --dynamic,
    `dynamic_bits_per_char` on the characters shown."""
    bpc = expl.bits_per_char
    dynamic = {}
    if expl.dynamic_bits is not None:
        known = ~np.isnan(expl.dynamic_bits)
        dynamic["dynamic_bits_per_char"] = float(expl.dynamic_bits[known].mean()) if known.any() else None
    return {
        "bits_per_char": None if math.isnan(bpc) else bpc,
        **dynamic,
        "chars": len(expl.chars),
        "predicted": expl.predicted,
        "unknown": expl.num_unknown,
        "total_chars": expl.total_chars,
        "baselines": expl.baselines,
        "whole": None if expl.whole is None else expl.whole.as_dict(),
    }


def _records_data(expl: Explanation) -> dict[str, Any]:
    """The per-character part of the page's data, compactly: predictions as ids into one vocabulary."""
    vocab: dict[str, int] = {}
    top_ids, top_p = [], []
    for predictions in expl.top:
        top_ids.append([vocab.setdefault(text, len(vocab)) for text, _ in predictions])
        top_p.append([round(float(p), 4) for _, p in predictions])
    return {
        "chars": expl.chars,
        "bits": [None if math.isnan(b) else round(float(b), 7) for b in expl.bits],
        "dynamic_bits": None
        if expl.dynamic_bits is None
        else [None if math.isnan(b) else round(float(b), 7) for b in expl.dynamic_bits],
        "rank": [int(r) for r in expl.rank],
        "unknown": [int(i) for i in np.flatnonzero(expl.unknown)],
        "vocab": list(vocab),
        "top_ids": top_ids,
        "top_p": top_p,
        "rank_depth": RANK_DEPTH,
    }


def _units_data(expl: Explanation, budget_bytes: int) -> dict[str, Any]:
    """The activations of as many units as `budget_bytes` of base64 holds, int8 each."""
    units, series = unit_table(expl.activations)
    n = max(1, len(expl.chars))
    fits = max(0, budget_bytes * 3 // 4 // n)
    strength = expl.strength if expl.strength is not None else np.zeros(len(units))
    keep = units_to_keep(strength[:, None], expl.ranked, units, fits)
    encoded, lo, step = quantize(series[:, keep])
    kept: list[Unit] = [units[k] for k in keep]
    return {
        "state": [u.state for u in kept],
        "layer": [u.layer for u in kept],
        "index": [u.index for u in kept],
        "lo": lo,
        "step": step,
        "data": encoded,
        "total": len(units),
    }


def page_data(expl: Explanation, budget: int = PAGE_BUDGET) -> dict[str, Any]:
    """Everything the page shows, as plain JSON values."""
    data: dict[str, Any] = {
        "title": expl.title,
        "source": expl.source,
        "model": expl.model,
        "summary": summary(expl),
        "scale": [list(bin_) for bin_ in SURPRISAL_SCALE],
        "scale_missing": list(NOT_PREDICTED),
        "properties": PROPERTIES,
        "ranked": [
            {
                "state": item.unit.state,
                "layer": item.unit.layer,
                "index": item.unit.index,
                "prop": item.prop,
                "r": item.r,
            }
            for item in expl.ranked
        ],
        **_records_data(expl),
    }
    template = _template()
    used = len(template) + len(_json(data))
    data["units"] = _units_data(expl, budget - used - 2_000)
    return data


def _template() -> str:
    return resources.files("charrnn.viz").joinpath("page.html").read_text(encoding="utf-8")


def _json(data: dict[str, Any]) -> str:
    """JSON that is safe inside a <script> element: no '<' can close it or open a comment."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")


def page_html(expl: Explanation, budget: int = PAGE_BUDGET) -> str:
    """The whole self-contained page."""
    page = _template().replace("__TITLE__", html.escape(expl.title))
    return page.replace("__DATA__", _json(page_data(expl, budget)))


def check_output(path: Path) -> None:
    """Refuse an output path that cannot be written, before any work is done."""
    if path.is_dir():
        raise CharrnnError(f"{path} is a directory: give a file name for the page")
    if not path.parent.is_dir():
        raise CharrnnError(f"cannot write {path}: the directory {path.parent} does not exist")


def write_page(expl: Explanation, path: Path) -> None:
    """Write the page atomically (no half-written file is ever left at `path`)."""
    from charrnn.files import atomic_write

    check_output(path)
    content = page_html(expl).encode("utf-8")
    atomic_write(path, lambda handle: handle.write(content))


def default_page(run: Path) -> Path:
    """Where the page goes without --html: beside the run's checkpoints."""
    run = Path(run)
    return (run if run.is_dir() else run.parent) / "explain.html"


def json_document(expl: Explanation) -> dict[str, Any]:
    """What `charrnn viz --json` prints: the summary, the ranked units and one record per character."""
    return {
        "title": expl.title,
        "source": expl.source,
        "model": expl.model,
        "summary": summary(expl),
        "units": [
            {
                "state": item.unit.state,
                "layer": item.unit.layer,
                "unit": item.unit.index,
                "property": item.prop,
                "r": item.r,
            }
            for item in expl.ranked
        ],
        "chars": records(expl),
    }

"""The page's weights in float32, float16 or int8, and what each costs in bits per character.

A matrix (the embedding, each layer's input and hidden weights, the head) is stored in the
precision asked for; biases always in float32 (they are small). int8 keeps one float32 scale per
row: row * 127 / max|row|, rounded. `decoded` gives back the float32 arrays the page computes
with, so that the cost is measured in Python on exactly the page's weights.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

import numpy as np

from charrnn.errors import CharrnnError

if TYPE_CHECKING:
    from charrnn.export.source import Source

PRECISIONS = ("float32", "float16", "int8")
COST_CHARS = 20_000  # characters of the validation text the cost is measured on


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise CharrnnError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def encode(array: np.ndarray, precision: str) -> tuple[dict[str, Any], np.ndarray]:
    """One array as the page stores it (little-endian base64 with its dtype and shape), and the
    float32 array the page decodes it to."""
    array = np.asarray(array, dtype=np.float32)
    entry: dict[str, Any] = {"shape": list(array.shape)}
    if array.ndim < 2 or precision == "float32":
        entry |= {"dtype": "float32", "data": _b64(array.astype("<f4"))}
        return entry, array
    if precision == "float16":
        half = array.astype("<f2")
        entry |= {"dtype": "float16", "data": _b64(half)}
        return entry, half.astype(np.float32)
    peak = np.abs(array).max(axis=1)
    scale = np.where(peak > 0, peak / np.float32(127), np.float32(1)).astype(np.float32)
    q = np.clip(np.rint(array / scale[:, None]), -127, 127).astype(np.int8)
    entry |= {"dtype": "int8", "data": _b64(q), "scale": _b64(scale.astype("<f4"))}
    return entry, (q.astype(np.float32) * scale[:, None]).astype(np.float32)


def encode_all(weights: dict[str, np.ndarray], precision: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Every array encoded (`encode`), and the decoded weights by name."""
    stored, decoded = {}, {}
    for name, array in weights.items():
        stored[name], decoded[name] = encode(array, precision)
    return stored, decoded


def held_out_text(source: Source) -> str | None:
    """The first COST_CHARS characters of the run's validation text, or None when it cannot be rebuilt."""
    try:
        pieces, _ = source.model().validation("measure the precision's cost")
    except CharrnnError:
        return None
    text = ""
    for piece in pieces:
        text += piece
        if len(text) >= COST_CHARS:
            break
    return text[:COST_CHARS] or None


def costs(source: Source) -> dict[str, Any]:
    """`Model.evaluate`'s bits per character of the held-out text with each precision's weights
    (none when the run's validation text cannot be rebuilt)."""
    text = held_out_text(source)
    if text is None:
        return {"chars": 0, "bits_per_char": {}}
    figures = {p: source.model(encode_all(source.weights, p)[1]).evaluate(text).bits_per_char for p in PRECISIONS}
    return {"chars": len(text), "bits_per_char": figures}

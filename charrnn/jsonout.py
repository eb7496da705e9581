"""Strict JSON for every output meant for machines: `--json`, metrics.jsonl, samples.jsonl.

Python's `json` writes NaN and Infinity by default, which JSON has not: `JSON.parse` and `jq`
reject them. Here an undefined figure (the bits per character of a text with nothing predicted,
a loss that overflowed) becomes `null`, and anything else non-finite that slips past is an error
(`allow_nan=False`) rather than a file other tools cannot read.
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite(value: Any) -> Any:
    """`value` with every NaN or infinite float in it, at any depth of dicts, lists and tuples, as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def dumps(value: Any, **options: Any) -> str:
    """`json.dumps(value, **options)` with non-finite floats written as null: strict JSON."""
    return json.dumps(finite(value), allow_nan=False, **options)

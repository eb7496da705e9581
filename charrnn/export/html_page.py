"""One self-contained HTML page that runs the model in plain JavaScript (page.html holds the script).

The page embeds one JSON document: the description (`description.describe`), the weights in the
precision asked for (`precision.encode_all`) and each precision's measured bits per character.
Its Content-Security-Policy forbids every request, as the explain page's does.
"""

from __future__ import annotations

import html
import json
from importlib import resources
from typing import TYPE_CHECKING, Any

from charrnn.errors import CharrnnError
from charrnn.export.description import describe
from charrnn.export.precision import costs, encode_all

if TYPE_CHECKING:
    from charrnn.export.source import Source


def check_page_model(source: Source) -> None:
    """Refuse what the page cannot run: a subword model (its encoder is SentencePiece)."""
    kind = source.tokenizer.kind
    if kind not in ("char", "byte"):
        raise CharrnnError(
            f"the page runs char and byte models only; {source.path} has a {kind} tokenizer: export it --onnx instead"
        )


def page_data(source: Source, precision: str) -> dict[str, Any]:
    """What the page embeds, each precision's cost measured (three passes over the held-out text)."""
    # Tied weights: the head is the embedding, stored once.
    kept = {k: v for k, v in source.weights.items() if not (source.config.tie_weights and k == "head.weight")}
    stored, _ = encode_all(kept, precision)
    return {
        "model": describe(source.config, source.tokenizer, lines=source.lines),
        "title": source.path.parent.name or str(source.path),
        "precision": precision,
        "weights": stored,
        "costs": costs(source),
    }


def cost_note(data: dict[str, Any]) -> str:
    """One line on what the page's precision costs, as the page says it."""
    precision, measured = data["precision"], data["costs"]["bits_per_char"]
    if not measured:
        return f"{precision} weights, their cost not measured: the run's validation text could not be rebuilt"
    note = f"{precision} weights: {measured[precision]:.4f} bits per character on {data['costs']['chars']:,} held-out characters"
    if precision != "float32":
        note += f", {measured[precision] - measured['float32']:+.5f} against float32"
    return note


def _json(data: dict[str, Any]) -> str:
    """JSON safe inside a <script> element: no '<' can close it."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")


def page_html(source: Source, precision: str) -> tuple[str, str]:
    """The whole page, and its `cost_note`."""
    check_page_model(source)
    data = page_data(source, precision)
    template = resources.files("charrnn.export").joinpath("page.html").read_text(encoding="utf-8")
    page = template.replace("__TITLE__", html.escape(data["title"]))
    return page.replace("__DATA__", _json(data)), cost_note(data)

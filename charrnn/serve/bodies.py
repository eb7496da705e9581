"""What a client sends, checked field by field: a completion request, a text to score, in OpenAI's
names and shapes (docs/serving.md). A field of the wrong type or out of range is an `ApiError`
naming it (400), never an exception from deeper down. Nothing here imports the web stack.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass
from typing import Any

from charrnn.errors import CharrnnError
from charrnn.sample.settings import SampleSettings
from charrnn.serve.limits import Limits

MAX_LOGPROBS = 20  # most top log-probabilities per token (OpenAI's legacy completions allow 5)
MAX_STOPS = 4  # stop strings per request, as OpenAI allows
# OpenAI's fields that change nothing here when left at these values; any other value is refused.
INERT = {"echo": (False,), "best_of": (None, 1), "suffix": (None, ""), "user": None, "stream_options": None}
INERT_ZERO = ("frequency_penalty", "presence_penalty")
KNOWN = {"model", "prompt", "max_tokens", "temperature", "top_p", "n", "stop", "seed", "stream", "logprobs"}
EXTRA = {"top_k", "heal"}  # charrnn's own


class ApiError(Exception):
    """A request refused: its HTTP status and OpenAI's error fields."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param

    def body(self) -> dict[str, Any]:
        code = {401: "invalid_api_key", 404: "not_found", 413: "request_too_large", 429: "rate_limit_exceeded"}
        return {
            "error": {"message": self.message, "type": self.kind, "param": self.param, "code": code.get(self.status)}
        }


@dataclass(frozen=True)
class Completion:
    """A checked completion request: one group of `settings.num_samples` choices per prompt."""

    prompts: list[str]
    settings: SampleSettings
    stream: bool
    logprobs: int  # top log-probabilities per token; 0 with "logprobs": 0, -1 when not asked for
    heal: bool
    usage_in_stream: bool


def parse_json(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object (NaN and Infinity, which JSON has not, refused)."""

    def refuse(name: str) -> None:
        raise ApiError(400, f"the body is not valid JSON: {name} is not a JSON value")

    try:
        value = json.loads(raw, parse_constant=refuse)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"the body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(value, dict):
        raise ApiError(400, "the body must be a JSON object")
    return value


def _int(body: dict[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    value = body.get(name, default)
    if value is None:
        value = default
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise ApiError(400, f"{name} must be an integer, got {_shown(value)}", param=name)
    if not lo <= value <= hi:
        raise ApiError(400, f"{name} must be in {lo}..{hi:,}, got {value:,}", param=name)
    return int(value)


def _float(body: dict[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    value = body.get(name, default)
    if value is None:
        value = default
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise ApiError(400, f"{name} must be a number, got {_shown(value)}", param=name)
    if not (math.isfinite(value) and lo <= value <= hi):
        raise ApiError(400, f"{name} must be in [{lo}, {hi}], got {value}", param=name)
    return float(value)


def _shown(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, str | int | float | bool | type(None)) else type(value).__name__
    return text if len(text) <= 60 else text[:60] + "…"


def _strings(body: dict[str, Any], name: str, most: int, limit: int, empty_ok: bool) -> list[str]:
    value = body.get(name)
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise ApiError(400, f"{name} must be a string or a list of strings", param=name)
    if not 0 < len(items) <= most:
        raise ApiError(400, f"{name} must hold 1 to {most} strings, got {len(items)}", param=name)
    for item in items:
        if len(item) > limit:
            raise ApiError(413, f"{name} has {len(item):,} characters, more than the {limit:,} allowed", param=name)
        if not item and not empty_ok:
            raise ApiError(400, f"{name} must not hold an empty string", param=name)
    return items


def _check_fields(body: dict[str, Any]) -> None:
    for name, value in body.items():
        if name in KNOWN or name in EXTRA:
            continue
        if name in INERT_ZERO and value in (None, 0):
            continue
        if name in INERT and (INERT[name] is None or value in INERT[name]):
            continue
        if name in INERT or name in INERT_ZERO:
            raise ApiError(400, f"{name}={_shown(value)} is not supported by charrnn serve", param=name)
        raise ApiError(400, f"unknown field {name!r}", param=name)


def parse_completion(body: dict[str, Any], limits: Limits) -> Completion:
    """A /v1/completions body, checked against OpenAI's types and the server's limits."""
    _check_fields(body)
    prompts = _strings(body, "prompt", limits.max_streams, limits.max_prompt, empty_ok=True) or [""]
    n = _int(body, "n", 1, 1, limits.max_streams)
    if n * len(prompts) > limits.max_streams:
        raise ApiError(
            400,
            f"n times the prompts is {n * len(prompts)} streams, more than --max-streams {limits.max_streams}",
            param="n",
        )
    seed = body.get("seed")
    if seed is not None:
        seed = _int(body, "seed", 0, 0, 2**63 - 1)
    logprobs = -1 if body.get("logprobs") is None else _int(body, "logprobs", 0, 0, MAX_LOGPROBS)
    for name in ("stream", "heal"):
        if name in body and not isinstance(body[name], bool):
            raise ApiError(400, f"{name} must be true or false", param=name)
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "stream_options must be an object", param="stream_options")
    try:
        settings = SampleSettings(
            length=_int(body, "max_tokens", 16, 0, limits.max_tokens),
            temperature=_float(body, "temperature", 1.0, 0.0, 100.0),
            top_k=_int(body, "top_k", 0, 0, 2**31 - 1),
            top_p=_float(body, "top_p", 1.0, 0.0, 1.0),
            seed=seed,
            num_samples=n,
            stop=tuple(_strings(body, "stop", MAX_STOPS, 256, empty_ok=False)),
        )
    except CharrnnError as exc:  # top_p 0, the one range SampleSettings checks beyond the above
        raise ApiError(400, str(exc).replace("--", "").replace("-", "_")) from None
    stream = body.get("stream", False)
    return Completion(prompts, settings, stream, logprobs, body.get("heal", True), options.get("include_usage") is True)


def parse_score(body: dict[str, Any], limits: Limits) -> str:
    """The text of a /v1/score body."""
    for name in body:
        if name not in ("text", "model"):
            raise ApiError(400, f"unknown field {name!r}", param=name)
    text = body.get("text")
    if not isinstance(text, str) or not text:
        raise ApiError(400, "text must be a non-empty string", param="text")
    if len(text) > limits.max_prompt:
        raise ApiError(
            413, f"text has {len(text):,} characters, more than the {limits.max_prompt:,} allowed", param="text"
        )
    return text

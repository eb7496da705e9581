"""The HTTP side of `charrnn serve`: a Starlette app with OpenAI's completions API, /v1/score and
the page at /, in front of one `Engine` (batcher.py). docs/serving.md describes every endpoint.

Each request is read (bounded in size and time), checked (bodies.py), primed on a worker thread
and handed to the engine; its text comes back through an `Inbox`, as one JSON answer or as
server-sent events in OpenAI's chunk format. Every refusal is OpenAI's error JSON.
"""

from __future__ import annotations

import asyncio
import hmac
import html
import json
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from charrnn import jsonout
from charrnn.errors import CharrnnError
from charrnn.inference import Model
from charrnn.serve.batcher import Engine, Full, Job
from charrnn.serve.bodies import ApiError, Completion, parse_completion, parse_json, parse_score
from charrnn.serve.limits import Limits

# Prompts of at most this many tokens are primed on the loop (a few steps); longer ones on a worker thread.
INLINE_PRIME = 64
# After a stream's first text, its events go out at most this often (seconds): many steps' text
# in one event, so that the cost of an event (JSON, a send, the client's parse) is not paid per character.
FLUSH = 0.02
CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; connect-src 'self'"


class Inbox:
    """A job's events, posted by the engine's task and taken by the request's: the request's task
    runs once per step at most, however many events the step made."""

    def __init__(self) -> None:
        self.items: deque[tuple] = deque()
        self.ready = asyncio.Event()

    def post(self, item: tuple) -> None:
        self.items.append(item)
        self.ready.set()

    async def take(self, timeout: float) -> list[tuple]:
        """The events so far (waiting up to `timeout` seconds for one; [] if none came)."""
        try:
            await asyncio.wait_for(self.ready.wait(), timeout)
        except TimeoutError:
            return []
        self.ready.clear()
        taken = []
        while self.items:
            taken.append(self.items.popleft())
        return taken


class Choices:
    """What a job's choices have written so far, and OpenAI's JSON for it."""

    def __init__(self, count: int, logprobs: bool) -> None:
        self.texts = [""] * count
        self.reasons: list[str | None] = [None] * count
        self.used = [0] * count
        self.logprobs = [_empty_logprobs() for _ in range(count)] if logprobs else None

    def take(self, items: list[tuple]) -> tuple[dict[int, tuple[str, list]], list[int]]:
        """Record the events; per choice, the new text and logprob entries, and the choices that ended."""
        new: dict[int, tuple[str, list]] = {}
        ended = []
        for item in items:
            if item[0] == "error":
                raise ApiError(item[1], item[2], "server_error" if item[1] >= 500 else "invalid_request_error")
            if item[0] == "text":
                _, index, piece, entry = item
                text, entries = new.get(index, ("", []))
                new[index] = (text + piece, entries + ([entry] if entry else []))
                self.texts[index] += piece
                if entry and self.logprobs is not None:
                    _add_logprob(self.logprobs[index], entry)
            elif item[0] == "end":
                self.reasons[item[1]], self.used[item[1]] = item[2], item[3]
                ended.append(item[1])
        return new, ended

    @property
    def done(self) -> bool:
        return all(reason is not None for reason in self.reasons)

    def final(self) -> list[dict[str, Any]]:
        out = []
        for i, (text, reason) in enumerate(zip(self.texts, self.reasons)):
            logprobs = None if self.logprobs is None else _trimmed(self.logprobs[i], self.used[i])
            out.append({"text": text, "index": i, "logprobs": logprobs, "finish_reason": reason})
        return out


def _empty_logprobs() -> dict[str, list]:
    return {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}


def _add_logprob(into: dict[str, list], entry: tuple[str, float, dict[str, float]], offset: int | None = None) -> None:
    token, logprob, top = entry
    if offset is None:
        offset = (into["text_offset"][-1] + len(into["tokens"][-1])) if into["tokens"] else 0
    into["tokens"].append(token)
    into["token_logprobs"].append(logprob)
    into["top_logprobs"].append(top)
    into["text_offset"].append(offset)


def _trimmed(logprobs: dict[str, list], used: int) -> dict[str, list]:
    """Only the tokens that made the text (a stop string drops those after it)."""
    return {key: values[:used] for key, values in logprobs.items()}


class Service:
    """The endpoints, over one model, its engine and the server's limits."""

    def __init__(self, model: Model, engine: Engine, limits: Limits, name: str) -> None:
        self.model, self.engine, self.limits, self.name = model, engine, limits, name
        self.created = int(time.time())
        self.score_lock = threading.Lock()  # one torch pass at a time

    async def body(self, request: Request) -> dict[str, Any]:
        """The request's JSON object, refused past --max-body bytes (413) or --body-timeout seconds (408)."""
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limits.max_body):
            raise ApiError(413, f"the body must be at most {self.limits.max_body:,} bytes")
        chunks: list[bytes] = []

        async def pull() -> None:
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > self.limits.max_body:
                    raise ApiError(413, f"the body must be at most {self.limits.max_body:,} bytes")
                chunks.append(chunk)

        try:
            await asyncio.wait_for(pull(), self.limits.body_timeout)
        except TimeoutError:
            raise ApiError(408, f"the body did not arrive within {self.limits.body_timeout:g} s") from None
        body = parse_json(b"".join(chunks))
        model = body.get("model")
        if model is not None and model != self.name:
            raise ApiError(
                404, f"the model {str(model)[:80]!r} is not served here; this server has {self.name!r}", param="model"
            )
        return body

    async def models(self, request: Request) -> Response:
        entry = {"id": self.name, "object": "model", "created": self.created, "owned_by": "charrnn"}
        return JSONResponse({"object": "list", "data": [entry]})

    async def page(self, request: Request) -> Response:
        from charrnn.viz.explain import NOT_PREDICTED, SURPRISAL_SCALE

        template = resources.files("charrnn.serve").joinpath("page.html").read_text(encoding="utf-8")
        scale = json.dumps({"scale": SURPRISAL_SCALE, "missing": NOT_PREDICTED}).replace("<", "\\u003c")
        text = template.replace("__MODEL__", html.escape(self.name)).replace("__SCALE__", scale)
        return HTMLResponse(text, headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store"})

    async def score(self, request: Request) -> Response:
        text = parse_score(await self.body(request), self.limits)

        def run() -> Any:
            with self.score_lock:
                return self.model.score(text, top_k=0)

        try:
            scored = await run_in_threadpool(run)
        except CharrnnError as exc:
            raise ApiError(400, str(exc)) from None
        bits = [float(b) for b in scored.bits]
        document = {
            "object": "score",
            "model": self.name,
            "characters": len(text),
            "predicted": scored.predicted,
            "bits_per_char": scored.bits_per_char,
            "total_bits": float(sum(b for b in bits if b == b)),
            "bits": bits,
            "unknown": int(scored.unknown.sum()),
        }
        return Response(jsonout.dumps(document), media_type="application/json")

    async def completions(self, request: Request) -> Response:
        asked = parse_completion(await self.body(request), self.limits)
        streams = asked.settings.num_samples * len(asked.prompts)
        try:
            self.engine.reserve(streams)
            prompts = [self.engine.prompt_ids(p, asked.heal) for p in asked.prompts]
        except Full as exc:
            raise ApiError(exc.status, str(exc), "server_error" if exc.status == 503 else "rate_limit_error") from None
        except CharrnnError as exc:
            raise ApiError(400, str(exc), param="prompt") from None
        inbox = Inbox()
        job = Job(asked.settings, asked.logprobs, time.monotonic() + self.limits.time_limit, inbox.post)
        if sum(len(ids) for ids, _ in prompts) <= INLINE_PRIME:
            self.engine.prime(job, prompts)
        else:
            await run_in_threadpool(self.engine.prime, job, prompts)
        try:
            self.engine.submit(job)
        except Full as exc:
            raise ApiError(exc.status, str(exc), "rate_limit_error") from None
        head = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.name,
        }
        usage = {"prompt_tokens": sum(len(ids) for ids, _ in prompts)}
        if asked.stream:
            events = _events(job, inbox, asked, head, usage)
            return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-store"})
        return await _answer(request, job, inbox, head, usage, streams, asked.logprobs >= 0)


def _usage(usage: dict[str, int], choices: Choices) -> dict[str, int]:
    completion = sum(choices.used)
    return {**usage, "completion_tokens": completion, "total_tokens": usage["prompt_tokens"] + completion}


async def _answer(
    request: Request, job: Job, inbox: Inbox, head: dict, usage: dict, streams: int, logprobs: bool
) -> Response:
    """The whole completion as one JSON answer; a client that leaves first frees its streams."""
    choices = Choices(streams, logprobs)
    checked = time.monotonic()
    try:
        while not choices.done:
            choices.take(await inbox.take(0.25))
            await asyncio.sleep(FLUSH)
            if time.monotonic() - checked > 0.25:  # a client that has gone is heard of here
                if await request.is_disconnected():
                    return Response(status_code=499)
                checked = time.monotonic()
    finally:
        job.cancel()  # a no-op once every choice has ended
    return JSONResponse({**head, "choices": choices.final(), "usage": _usage(usage, choices)})


def _sse(document: dict[str, Any]) -> str:
    return f"data: {jsonout.dumps(document, ensure_ascii=False)}\n\n"


def _chunks(head: dict, choices: Choices, new: dict[int, tuple[str, list]], ended: list[int]) -> Iterator[str]:
    """The events for what one take brought: each choice's new text, then a chunk per choice that ended."""
    for index, (text, entries) in new.items():
        logprobs = None
        if choices.logprobs is not None:
            logprobs = _empty_logprobs()
            start = len(choices.texts[index]) - len(text)
            for entry in entries:
                _add_logprob(logprobs, entry, None if logprobs["tokens"] else start)
        choice = {"text": text, "index": index, "logprobs": logprobs, "finish_reason": None}
        yield _sse({**head, "choices": [choice]})
    for index in ended:
        choice = {"text": "", "index": index, "logprobs": None, "finish_reason": choices.reasons[index]}
        yield _sse({**head, "choices": [choice]})


async def _events(job: Job, inbox: Inbox, asked: Completion, head: dict, usage: dict) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format: each choice's new text as it is made (the first
    at once, later ones gathered over FLUSH seconds), a chunk with its finish_reason when it ends,
    the usage if asked for, then [DONE]."""
    choices = Choices(asked.settings.num_samples * len(asked.prompts), asked.logprobs >= 0)
    try:
        while not choices.done:
            try:
                new, ended = choices.take(await inbox.take(1.0))
            except ApiError as exc:
                yield _sse(exc.body())
                break
            for event in _chunks(head, choices, new, ended):
                yield event
            if new and not choices.done:
                await asyncio.sleep(FLUSH)  # let the next steps' text gather
        if asked.usage_in_stream:
            yield _sse({**head, "choices": [], "usage": _usage(usage, choices)})
        yield "data: [DONE]\n\n"
    finally:
        job.cancel()  # the client went away (or every choice ended: then nothing changes)


class _Auth:
    """ASGI middleware: every /v1 request needs `Authorization: Bearer KEY` (compared in constant time)."""

    def __init__(self, app: Any, key: str | None) -> None:
        self.app, self.expected = app, None if key is None else b"Bearer " + key.encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if self.expected is not None and scope["type"] == "http" and scope["path"].startswith("/v1"):
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                error = ApiError(401, "a valid API key is needed: send the header 'Authorization: Bearer KEY'")
                await JSONResponse(error.body(), 401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse(exc.body(), exc.status)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {404: f"no such endpoint: {request.url.path[:100]}", 405: f"{request.method} is not allowed here"}
    error = ApiError(exc.status_code, message.get(exc.status_code, str(exc.detail)))
    return JSONResponse(error.body(), exc.status_code)


async def _server_error(request: Request, exc: Exception) -> Response:
    return JSONResponse(ApiError(500, "internal server error", "server_error").body(), 500)


def create_app(model: Model, engine: Engine, limits: Limits, name: str, api_key: str | None) -> Any:
    """The ASGI app: the endpoints of `Service`, OpenAI's error JSON, and the API key's check."""
    service = Service(model, engine, limits, name)
    routes = [
        Route("/", service.page, methods=["GET"]),
        Route("/v1/models", service.models, methods=["GET"]),
        Route("/v1/completions", service.completions, methods=["POST"]),
        Route("/v1/score", service.score, methods=["POST"]),
    ]
    handlers = {ApiError: _api_error, HTTPException: _http_error, Exception: _server_error}

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        stepping = asyncio.create_task(engine.run(), name="charrnn-serve-engine")
        try:
            yield
        finally:
            engine.stop(0)
            await asyncio.wait_for(stepping, 5)

    return _Auth(Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan), api_key)

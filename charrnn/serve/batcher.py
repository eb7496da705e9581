"""Continuous batching: one task steps every stream of every request in one batched model step.

A recurrent stream's whole state is a row of each layer's (B, H) arrays, so a stream joins the
batch by appending its rows and leaves by dropping them, between any two steps. Each step: every
stream draws its token from its row of the logits (with its own temperature, top-k, top-p and
generator), its text takes the token (stop strings, token healing: `sample/text.py`), the finished
and abandoned streams leave, and `NumpyModel.step` runs once for all that remain.

A stream draws exactly as `charrnn sample` on the CPU draws: its generator is `stream_generators`'
for its seed and index, its `Chooser` is the numpy sampler's, and its prime runs through
`NumpyModel.prime`. Alone in the batch it computes what `charrnn sample` computes, so a seed gives
the same text; beside other streams the matrix products run over more rows, which can round a
last bit differently and so, rarely, flip a near tie (docs/serving.md).

The engine is a task on the server's event loop, not a thread: between two steps the loop
serves every connection, and it never waits for the GIL behind a stepping thread, which held up
each of its many short turns (on two cores, 32 clients: 9,379 chars/s with a stepping thread,
15,757 on the loop; docs/performance.md). Nothing here imports torch or
the web stack: requests come in as `Job`s, text goes out through their `post` callback.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from charrnn.data.tokenizers import Tokenizer
from charrnn.errors import CharrnnError
from charrnn.sample.numpy_sampler import F32, Chooser, NumpyModel, stream_generators
from charrnn.sample.settings import SampleSettings
from charrnn.sample.text import Healing, TextStream, start_ids
from charrnn.serve.limits import Limits

LN2 = math.log(2)
# What a job hears: ("text", choice, text, logprob entries), ("end", choice, finish_reason, tokens
# used), then ("done",) once every choice has ended; or ("error", status, message), its last.
Post = Callable[[tuple], None]


class Full(Exception):
    """No room for a request: the batch and the queue are full (429), or the server is stopping (503)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Choice:
    """One stream: its text, its draws, its healing, and which choice of which job it is."""

    def __init__(self, job: Job, index: int, tokenizer: Tokenizer, vocab: int, healed: str, rng: np.random.Generator):
        settings = job.settings
        self.job, self.index = job, index
        self.text = TextStream(tokenizer, settings.length, settings.stop, healed)
        self.chooser = Chooser(settings, vocab, 1, [rng])
        self.healing = Healing(tokenizer, healed, 1) if healed else None
        self.scale = F32(1.0 / settings.temperature if settings.temperature > 0 else 1.0)

    def choose(self, row: np.ndarray) -> int:
        """The next token from this stream's (1, V) row of scaled logits, as the numpy backend draws it."""
        if self.healing is not None and self.healing.active:
            allowed = np.frombuffer(self.healing.allowed(), dtype=np.bool_).reshape(1, -1)
            token = self.chooser(np.where(allowed, row, F32(-np.inf)))
            self.healing.advance(token.tolist())
        else:
            token = self.chooser(row)
        return int(token[0])

    def finish_reason(self) -> str:
        return "length" if len(self.text.text) >= self.text.length else "stop"


class Job:
    """One request: its settings, its choices' primes, its deadline, and where its events go."""

    def __init__(self, settings: SampleSettings, logprobs: int, deadline: float, post: Post) -> None:
        self.settings, self.logprobs, self.deadline, self.post = settings, logprobs, deadline, post
        self.primed: list[tuple[np.ndarray, list]] = []  # per prompt: raw logits (n, V) and state
        self.choices: list[Choice] = []
        self.open = 0  # choices still generating
        self.cancelled = False  # the client went away: its streams leave at the next step

    def cancel(self) -> None:
        self.cancelled = True

    @property
    def streams(self) -> int:
        return len(self.choices)


class Engine:
    """The batch and its one stepping task (see the module docstring)."""

    def __init__(self, config: Any, weights: dict[str, np.ndarray], tokenizer: Tokenizer, limits: Limits) -> None:
        unk = tokenizer.unk_id
        self.model = NumpyModel(config, weights, banned=[] if unk is None else [unk])
        self.tokenizer, self.limits = tokenizer, limits
        self.texts = [t if t is not None else f"<{i}>" for i, t in enumerate(tokenizer.token_texts())]
        self.wake = asyncio.Event()  # a job came, or stopping began
        self.loop: asyncio.AbstractEventLoop | None = None
        self.waiting: deque[Job] = deque()
        self.queued = 0  # streams of the waiting jobs
        self.active: list[Choice] = []
        self.state: list = self.model.zero_state(0)
        self.logits = np.zeros((0, self.model.vocab), F32)  # raw, before each stream's temperature
        self.scales = np.zeros((0, 1), F32)
        self.widest = 0  # the most streams one step has run, for tests and the benchmark
        self.stopping = False
        self.hard_stop = math.inf  # after it, every stream still running is ended

    # --- requests in: on the event loop (`prime` on any thread) ---

    def prompt_ids(self, prompt: str, heal: bool) -> tuple[list[int], str]:
        """A prompt's ids to prime with and the text healing took off its end (a CharrnnError
        for a prompt of characters the model never saw)."""
        ids, _, healed = start_ids(self.tokenizer, prompt)
        if not heal and healed:
            ids, healed = self.tokenizer.encode_list(prompt), ""
        return ids, healed

    def reserve(self, streams: int) -> None:
        """Refuse now (Full) a request that could not even wait for room."""
        if self.stopping:
            raise Full(503, "the server is shutting down")
        if len(self.active) + self.queued + streams > self.limits.max_streams + self.limits.max_queue:
            raise Full(429, "the server is full: every stream and every place in the queue is taken; retry later")

    def prime(self, job: Job, prompts: list[tuple[list[int], str]]) -> None:
        """Run each prompt through the model (on the caller's thread) and make its choices:
        prompt p's choice j is choice p * n + j, drawing from `stream_generators(seed, n)[j]`."""
        n = job.settings.num_samples
        for ids, healed in prompts:
            logits, state = self.model.prime(ids, n)
            job.primed.append((logits, state))
            for rng in stream_generators(job.settings.seed, n):
                job.choices.append(Choice(job, len(job.choices), self.tokenizer, self.model.vocab, healed, rng))

    def submit(self, job: Job) -> None:
        """Queue a primed job: it joins the batch at the next step there is room for it."""
        self.reserve(job.streams)
        self.waiting.append(job)
        self.queued += job.streams
        self.wake.set()

    def stop(self, grace: float) -> None:
        """Take no more requests; end the streams still running after `grace` seconds."""
        self.stopping = True
        self.hard_stop = min(self.hard_stop, time.monotonic() + grace)
        self.wake.set()

    def stop_soon(self, grace: float) -> None:
        """`stop`, from any thread (a signal's, a test's)."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.stop, grace)

    # --- the stepping task ---

    async def run(self) -> None:
        """Step until stopped and empty; the loop serves the connections between steps."""
        self.loop = asyncio.get_running_loop()
        with np.errstate(over="ignore", invalid="ignore"):  # NaN scores end their job (text.NOT_FINITE)
            while True:
                self._admit()
                if not self.active:
                    if self.stopping and not self.waiting:
                        return
                    self.wake.clear()
                    try:
                        await asyncio.wait_for(self.wake.wait(), 0.25)
                    except TimeoutError:
                        pass
                    continue
                self._drop(self._overdue())
                if self.active:
                    self._step()
                await asyncio.sleep(0)

    def _admit(self) -> None:
        """Move waiting jobs into the batch, first come first served, while there is room."""
        now = time.monotonic()
        while self.waiting:
            job = self.waiting[0]
            if self.stopping or job.cancelled or now > job.deadline:
                self.waiting.popleft()
                self.queued -= job.streams
                if self.stopping:
                    job.post(("error", 503, "the server is shutting down"))
                elif not job.cancelled:
                    job.post(("error", 429, "the request's time limit ran out while it waited for room in the batch"))
                continue
            if len(self.active) + job.streams > self.limits.max_streams:
                return
            self.waiting.popleft()
            self.queued -= job.streams
            self._join(job)

    def _join(self, job: Job) -> None:
        job.open = job.streams
        for logits, state in job.primed:
            self.state = _concat(self.state, state)
            self.logits = np.concatenate([self.logits, logits])
        job.primed = []
        self.scales = np.concatenate([self.scales, np.array([[c.scale] for c in job.choices], F32)])
        self.active.extend(job.choices)
        for choice in job.choices:  # a length of 0 (or a stop string at the start) ends at once
            if choice.text.done:
                self._finish(choice)

    def _overdue(self) -> list[bool]:
        now = time.monotonic()
        past_grace = now > self.hard_stop
        return [c.job.cancelled or c.text.done or past_grace or now > c.job.deadline for c in self.active]

    def _drop(self, leaving: list[bool]) -> None:
        """Take the streams marked out of the batch (each told its end, unless its client left)."""
        if not any(leaving):
            return
        keep = []
        for i, (choice, gone) in enumerate(zip(self.active, leaving)):
            if not gone:
                keep.append(i)
            elif not choice.text.done and not choice.job.cancelled:
                choice.text.done = True  # out of time: what it wrote is its text
                self._end(choice, "length")
        rows = np.array(keep, dtype=np.int64)
        self.active = [self.active[i] for i in keep]
        self.state = _rows(self.state, rows)
        self.logits, self.scales = self.logits[rows], self.scales[rows]

    def _step(self) -> None:
        self.widest = max(self.widest, len(self.active))
        scaled = self.logits * self.scales
        tokens = np.empty(len(self.active), dtype=np.int64)
        for i, choice in enumerate(self.active):
            tokens[i] = token = choice.choose(scaled[i : i + 1])
            entries = self._logprobs(choice, i, token) if choice.job.logprobs >= 0 else None
            try:
                piece = choice.text.push([token])
            except CharrnnError as exc:  # the scores became NaN
                choice.job.cancel()
                choice.job.post(("error", 500, str(exc)))
                continue
            if piece or entries:
                choice.job.post(("text", choice.index, piece, entries))
            if choice.text.done:
                self._finish(choice)
        leaving = [c.text.done or c.job.cancelled for c in self.active]
        if any(leaving):
            keep = np.flatnonzero(~np.array(leaving))
            tokens = tokens[keep]
            self._drop(leaving)
        if self.active:
            self.logits, self.state = self.model.step(tokens, self.state)

    def _logprobs(self, choice: Choice, row: int, token: int) -> tuple[str, float, dict[str, float]]:
        """The drawn token's text, its log-probability under the model (temperature 1) and the
        job's top ones there."""
        raw = self.logits[row].astype(np.float64)
        top = raw.max()
        logp = raw - (top + np.log(np.exp(raw - top).sum()))
        k = choice.job.logprobs
        best = np.argsort(-logp, kind="stable")[:k] if k else []
        return self.texts[token], float(logp[token]), {self.texts[t]: float(logp[t]) for t in best}

    def _finish(self, choice: Choice) -> None:
        rest = choice.text.finish()
        if rest:
            choice.job.post(("text", choice.index, rest, None))
        self._end(choice, choice.finish_reason())

    def _end(self, choice: Choice, reason: str) -> None:
        job = choice.job
        job.post(("end", choice.index, reason, choice.text.used))
        job.open -= 1
        if job.open == 0:
            job.post(("done",))


def _concat(a: list, b: list) -> list:
    """Two batches' states as one: each layer's rows of `a`, then those of `b`."""
    return [
        tuple(np.concatenate([x, y]) for x, y in zip(la, lb)) if isinstance(la, tuple) else np.concatenate([la, lb])
        for la, lb in zip(a, b)
    ]


def _rows(state: list, rows: np.ndarray) -> list:
    return [tuple(x[rows] for x in layer) if isinstance(layer, tuple) else layer[rows] for layer in state]

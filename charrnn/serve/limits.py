"""What one server lets its clients ask for: every limit, its flag and its default (docs/serving.md).

A request beyond a limit is refused with a 4xx before any work is done for it, so that one client
cannot take the server from the others. Nothing here imports the web stack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from charrnn.arguments import integer, number
from charrnn.errors import CharrnnError


@dataclass(frozen=True)
class Limits:
    max_tokens: int = 4096  # characters one choice may ask for (max_tokens)
    max_prompt: int = 8192  # characters of a prompt, and of a text to /v1/score
    max_body: int = 1_048_576  # bytes of a request body (413 beyond)
    max_streams: int = 256  # streams stepped together; a request's n counts n
    max_queue: int = 1024  # streams waiting for room in the batch (429 beyond)
    time_limit: float = 120.0  # seconds a request may take, waiting included (then it ends, finish_reason "length")
    body_timeout: float = (
        10.0  # seconds a client may take to send a request's head (then it is cut off), and its body (408)
    )
    grace: float = 3.0  # seconds in-flight streams run on after SIGINT/SIGTERM before they are ended

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            flag = "--" + spec.name.replace("_", "-")
            checked = integer(flag, value) if spec.type == "int" else number(flag, value)
            if not (math.isfinite(checked) and checked > 0):
                raise CharrnnError(f"{flag} must be a positive number, got {value}")
            object.__setattr__(self, spec.name, checked)

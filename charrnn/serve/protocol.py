"""uvicorn's HTTP/1.1 protocol (h11) with a deadline for each request's head.

uvicorn bounds the wait between requests on a kept-alive connection, but not the wait for a
request's head: a client that sends its header lines a byte at a time (slowloris) would hold
its connection for as long as it likes, and enough of them would take every connection the
server allows. Here a connection whose request head has not arrived within `head_timeout`
seconds (of its opening, or of the previous response's end) is closed. The body has its own
deadline (`Service.body`, 408).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol


class HeadDeadline(H11Protocol):
    head_timeout = 10.0  # seconds; `with_head_timeout` makes a subclass with another

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_late)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _waiting_for_head(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def handle_events(self) -> None:
        super().handle_events()
        if not self._waiting_for_head():  # a request's head has come: its body has its own deadline
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request's head, too, must come in time

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _head_late(self) -> None:
        self._head_timer = None
        if self._waiting_for_head() and not self.transport.is_closing():
            self.transport.close()


def with_head_timeout(seconds: float) -> type[HeadDeadline]:
    return type("HeadDeadlineProtocol", (HeadDeadline,), {"head_timeout": seconds})

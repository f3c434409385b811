"""Web: the HTTP/1.1 connection uvicorn runs for the app: h11, with header and body deadlines.

uvicorn times out only idle keep-alive connections. A client that sends its request
slowly (slowloris: a byte a second), or connects and sends nothing, would hold a
connection, and its memory, for as long as it likes. Here a request's headers must be
complete `header_timeout` seconds after the connection opened (or, on a kept-alive
connection, after the request's first byte), and its body `body_timeout` seconds after
its headers; otherwise the connection is closed, with one log line.
"""

from __future__ import annotations

import asyncio
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

HEADER_TIMEOUT = 10.0
BODY_TIMEOUT = 20.0


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing connections whose request arrives too slowly."""

    header_timeout: float = HEADER_TIMEOUT
    body_timeout: float = BODY_TIMEOUT

    _deadline: asyncio.TimerHandle | None = None
    _waiting_for: str = ""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm("headers", self.header_timeout)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _follow(self) -> None:
        """Arm the deadline that fits what the client is sending now."""
        state = self.conn.their_state
        if state is h11.IDLE:
            # Between requests uvicorn's keep-alive timer runs until a byte arrives.
            if self._waiting_for != "headers" and self._partial_request():
                self._arm("headers", self.header_timeout)
        elif state is h11.SEND_BODY:
            if self._waiting_for != "body":
                self._arm("body", self.body_timeout)
        else:
            self._disarm()

    def _partial_request(self) -> bool:
        return bool(self.conn.trailing_data[0])

    def _arm(self, part: str, seconds: float) -> None:
        self._disarm()
        self._waiting_for = part
        self._deadline = self.loop.call_later(seconds, self._expire, part, seconds)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = None
        self._waiting_for = ""

    def _expire(self, part: str, seconds: float) -> None:
        self._deadline = None
        self._waiting_for = ""
        if self.transport.is_closing():
            return
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        log.warning(
            "serve: %s did not send its request %s within %g s; connection closed",
            client,
            part,
            seconds,
        )
        self.transport.close()


def make_http_protocol(
    *, header_timeout: float = HEADER_TIMEOUT, body_timeout: float = BODY_TIMEOUT
) -> type[DeadlineH11Protocol]:
    """The protocol class to give uvicorn (`Config(http=...)`), with these deadlines."""

    class Protocol(DeadlineH11Protocol):
        pass

    Protocol.header_timeout = header_timeout
    Protocol.body_timeout = body_timeout
    return Protocol

"""Web: the HTTP/1.1 connection uvicorn runs for the app: h11, with deadlines and a cap.

uvicorn times out only idle keep-alive connections. A client that sends its request
slowly (slowloris: a byte a second), or connects and sends nothing, would hold a
connection, and its memory, for as long as it likes. Here a request's headers must be
complete `header_timeout` seconds after the connection opened (or, on a kept-alive
connection, after the request's first byte), and its body `body_timeout` seconds after
its headers; otherwise the connection is closed, with one log line.

A client that stops reading the answer would hold its connection as long: once the
answer waiting for it fills the transport's buffer (uvicorn then stops writing), or
stays unsent when the answer is complete, the client has `write_timeout` seconds to take
it; otherwise the connection is dropped, with one log line. And at most
`max_connections` are open at once: a connection beyond them is answered 503 with
Connection: close (uvicorn's own answer), after at most `refused_timeout` seconds of
waiting for its request.
"""

from __future__ import annotations

import asyncio
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

HEADER_TIMEOUT = 10.0
BODY_TIMEOUT = 20.0
WRITE_TIMEOUT = 30.0
# Open connections at once; uvicorn's process keeps one file descriptor per connection,
# and the usual limit is 1,024 descriptors per process.
MAX_CONNECTIONS = 800
# How long a connection beyond MAX_CONNECTIONS may take to send the request its 503 answers.
REFUSED_TIMEOUT = 2.0
# A refused connection is logged at most this often (seconds), with the count since.
_REFUSED_LOG_EVERY = 60.0


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing connections whose request arrives too slowly."""

    header_timeout: float = HEADER_TIMEOUT
    body_timeout: float = BODY_TIMEOUT
    write_timeout: float = WRITE_TIMEOUT
    max_connections: int = MAX_CONNECTIONS
    refused_timeout: float = REFUSED_TIMEOUT

    _deadline: asyncio.TimerHandle | None = None
    _waiting_for: str = ""
    _write_deadline: asyncio.TimerHandle | None = None
    # Shared by the connections of one protocol class (one server): the refusals' log.
    _refused_since_log: int = 0
    _refused_logged_at: float | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            # uvicorn answers 503 and closes when the connections reach its limit: zero
            # for this one only. It gets a short deadline for the request it answers.
            self.limit_concurrency = 0
            self._arm("headers", min(self.header_timeout, self.refused_timeout))
            self._log_refusal()
            return
        self._arm("headers", self.header_timeout)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow()
        # An answer the client has not taken yet (its socket buffer full): closing waits
        # for it to be sent, and so does the next request; it gets the write deadline.
        if self.transport.get_write_buffer_size() > 0 and self._write_deadline is None:
            self._arm_write()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_deadline is None:
            self._arm_write()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None
        super().connection_lost(exc)

    def _arm_write(self) -> None:
        self._write_deadline = self.loop.call_later(self.write_timeout, self._expire_write)

    def _expire_write(self) -> None:
        self._write_deadline = None
        if self.transport.get_write_buffer_size() == 0:
            return  # taken meanwhile, without uvicorn ever pausing
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        log.warning(
            "serve: %s did not read its response within %g s; connection dropped",
            client,
            self.write_timeout,
        )
        # Not close(): that would wait, for ever, to send what the client does not read.
        self.transport.abort()

    def _log_refusal(self) -> None:
        cls = type(self)
        cls._refused_since_log += 1
        now = self.loop.time()
        if cls._refused_logged_at is not None and now - cls._refused_logged_at < _REFUSED_LOG_EVERY:
            return
        log.warning(
            "serve: %d connections open, the most serve takes; %d new one(s) answered 503",
            self.max_connections,
            cls._refused_since_log,
        )
        cls._refused_since_log = 0
        cls._refused_logged_at = now

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
        if self.limit_concurrency == 0:  # refused: counted in the refusals' log already
            self.transport.close()
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
    *,
    header_timeout: float = HEADER_TIMEOUT,
    body_timeout: float = BODY_TIMEOUT,
    write_timeout: float = WRITE_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
) -> type[DeadlineH11Protocol]:
    """The protocol class to give uvicorn (`Config(http=...)`), with these deadlines and cap.

    Each call makes a class of its own: one per server, as the refusals' log is per class.
    """

    class Protocol(DeadlineH11Protocol):
        pass

    Protocol.header_timeout = header_timeout
    Protocol.body_timeout = body_timeout
    Protocol.write_timeout = write_timeout
    Protocol.max_connections = max_connections
    return Protocol

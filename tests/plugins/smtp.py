"""A real SMTP server for tests: aiosmtpd on 127.0.0.1 at a free port, recording every message.

It offers PIPELINING (`pipelining = False`: it does not). The handler can be told per test
to misbehave: refuse chosen recipients with any
reply (550 5.1.1, 452 4.2.2, 550 5.7.1 ...), answer the first N DATA commands with a
reply (421, 451 ...), drop the connection, or answer slowly after the message body
(`delay`: the message is recorded only once the reply is due, as a slow real server would),
or answer none until told (`hold_after`, `holding`: a test keeps a run mid-send, and with
`let_through_once_all_send` first has each of several senders get a message through).
Every RCPT is logged in order (`rcpt_log`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP


@dataclass
class Received:
    """One accepted message: envelope, bytes, and the message parsed with
    email.policy.default.

    The message is parsed when a test first asks for it, on the test's thread, not by the
    server: parsing thousands of digests on the server's thread held the GIL the sending
    client (same process) waits for after every socket call, and made a big send crawl.
    `headers` reads only the header block, with the cheap compat32 parser.
    """

    sender: str
    recipients: list[str]
    raw: bytes

    @functools.cached_property
    def message(self) -> EmailMessage:
        parsed = message_from_bytes(self.raw, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed

    @functools.cached_property
    def headers(self) -> Message:
        head = self.raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
        return BytesHeaderParser(policy=policy.compat32).parsebytes(head)


@dataclass
class SmtpRecorder:
    """The handler: records accepted messages; its fields say how to misbehave."""

    messages: list[Received] = field(default_factory=list)
    # recipient (lower case) -> [reply, times left or None for always]
    refusals: dict[str, list[Any]] = field(default_factory=dict)
    data_replies: list[str] = field(default_factory=list)  # replies for the next DATA commands
    drop_next: int = 0  # drop the connection on this many next DATA commands
    delay: float = 0.0  # seconds to wait before answering DATA
    data_attempts: int = 0
    connections: int = 0
    rcpt_log: list[tuple[str, str]] = field(default_factory=list)  # (address, reply) in order
    lock: threading.Condition = field(default_factory=threading.Condition)
    # Once this many messages are accepted, answer no DATA until `release` is set (a test
    # holds a run mid-send for as long as it needs, whatever the machine's speed).
    hold_after: int | None = None
    release: threading.Event = field(default_factory=threading.Event)
    # While `holding`, answer no DATA until `release` is set, but for the first `let_through`
    # bodies held; `held_bodies` lists each body held as it came: its client's port and its
    # recipients (`let_through_once_all_send` finds out whose each is).
    holding: bool = False
    let_through: int = 0
    held_bodies: list[tuple[int, list[str]]] = field(default_factory=list)
    # Offer PIPELINING (RFC 2920) as Postfix, Exim and the big mailbox providers do; aiosmtpd
    # reads pipelined commands in order but does not say so itself. False: one by one.
    pipelining: bool = True

    def refuse(self, address: str, reply: str, *, times: int | None = None) -> None:
        """Answer RCPT TO:<address> with `reply` (always, or `times` times)."""
        self.refusals[address.lower()] = [reply, times]

    def fail_next(self, reply: str, count: int = 1) -> None:
        """Answer the next `count` DATA commands with `reply` (a 421 also closes)."""
        self.data_replies.extend([reply] * count)

    def recipients(self) -> list[str]:
        with self.lock:
            return [r for m in self.messages for r in m.recipients]

    def let_through_once_all_send(self, pids: Sequence[int], timeout: float = 60.0) -> bool:
        """While `holding`: block until a body of each of the processes `pids` is held, then
        let through every body held so far (the later ones stay held until `release`).

        However late one of them started, they are all mid-send at once: waiting for each
        one's first message with the messages flowing, one that started late under load
        found nothing left to send."""
        assert self.holding, "hold the messages first (`holding`)"
        deadline = time.monotonic() + timeout
        senders: set[int | None] = set()
        seen = 0
        while not set(pids) <= senders:
            with self.lock:
                if not self.lock.wait_for(
                    lambda seen=seen: len(self.held_bodies) > seen, deadline - time.monotonic()
                ):
                    return False
                held = self.held_bodies[seen:]
            seen += len(held)
            senders |= {client_pid(port, pids) for port, _to in held}
        with self.lock:
            self.let_through = seen
        return True

    def wait_for_data(self, count: int, timeout: float = 30.0) -> bool:
        """Block until at least `count` DATA commands have come (accepted or not)."""
        with self.lock:
            return self.lock.wait_for(lambda: self.data_attempts >= count, timeout)

    def wait_for(self, count: int, timeout: float = 30.0) -> bool:
        """Block until at least `count` messages were accepted."""
        with self.lock:
            return self.lock.wait_for(lambda: len(self.messages) >= count, timeout)

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        with self.lock:
            self.connections += 1
        session.host_name = hostname
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        with self.lock:
            rule = self.refusals.get(address.lower())
            if rule is not None:
                reply, times = rule
                if times is None or times > 0:
                    if times is not None:
                        rule[1] = times - 1
                    self.rcpt_log.append((address, str(reply)))
                    return str(reply)
            self.rcpt_log.append((address, "250 OK"))
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.data_attempts += 1
            self.lock.notify_all()
            drop = self.drop_next > 0
            if drop:
                self.drop_next -= 1
            reply = self.data_replies.pop(0) if self.data_replies and not drop else None
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.holding and not self.release.is_set():
            with self.lock:
                index = len(self.held_bodies)
                self.held_bodies.append((int(session.peer[1]), list(envelope.rcpt_tos)))
                self.lock.notify_all()
            while index >= self.let_through and not self.release.is_set():
                await asyncio.sleep(0.01)
        elif self.hold_after is not None and len(self.messages) >= self.hold_after:
            while not self.release.is_set():
                await asyncio.sleep(0.01)
        if drop:
            server.transport.close()
            return "451 4.3.0 connection dropped"
        if reply is not None:
            if reply.startswith("421"):
                server.transport.close()
            return reply
        raw = bytes(envelope.original_content or envelope.content)
        with self.lock:
            self.messages.append(Received(str(envelope.mail_from), list(envelope.rcpt_tos), raw))
            self.lock.notify_all()
        return "250 2.0.0 OK queued"


class TimedRecorder(SmtpRecorder):
    """Also records when each accepted message began (its MAIL FROM), by recipient
    (the send-worker tests: which copy of a message began before a stall)."""

    def __init__(self) -> None:
        super().__init__()
        self.started: list[tuple[float, str]] = []

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, mail_options: list[str]
    ) -> str:
        session.mail_at = time.monotonic()
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        if reply.startswith("250"):
            with self.lock:
                self.started.extend((session.mail_at, r) for r in envelope.rcpt_tos)
        return reply


@dataclass
class SmtpServer:
    host: str
    port: int
    handler: SmtpRecorder
    controller: Controller | None = None

    @property
    def refused(self) -> int:
        """Sessions refused for `run_smtp_server(sessions=N)`'s limit."""
        return self.controller.refused if isinstance(self.controller, _GatedController) else 0


def client_pid(port: int, pids: Sequence[int]) -> int | None:
    """Which of `pids` has the TCP socket 127.0.0.1:`port` open (a client's end: which
    process a connection to the server is from)."""
    local = f"0100007F:{port:04X}"
    rows = (line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:])
    sockets = {f"socket:[{row[9]}]" for row in rows if row[1] == local}
    for pid in pids:
        with contextlib.suppress(FileNotFoundError):  # it has ended
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(FileNotFoundError):  # closed meanwhile
                    if os.readlink(fd) in sockets:
                        return pid
    return None


_BIND_ATTEMPTS = 5


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _GatedController(Controller):
    """aiosmtpd taking at most `most` sessions at once, as a server with a per-host connection
    limit: each one over it is greeted with 421 and hung up on (`refused` counts them)."""

    def __init__(self, handler: SmtpRecorder, most: int, **options: Any) -> None:
        super().__init__(handler, **options)
        self.most, self.active, self.refused = most, 0, 0

    def factory(self) -> SMTP:
        gate = self

        class Gated(SMTP):
            counted = False

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                if gate.active >= gate.most:
                    gate.refused += 1
                    assert isinstance(transport, asyncio.WriteTransport)
                    transport.write(b"421 4.7.0 too many connections from your host\r\n")
                    transport.close()
                    return
                gate.active += 1
                self.counted = True
                super().connection_made(transport)

            def connection_lost(self, error: Exception | None) -> None:
                if self.counted:
                    self.counted = False
                    gate.active -= 1
                    super().connection_lost(error)

        return Gated(self.handler, **self.SMTP_kwargs)


@contextlib.contextmanager
def run_smtp_server(
    handler: SmtpRecorder | None = None, *, sessions: int | None = None, **options: Any
) -> Iterator[SmtpServer]:
    """Run an aiosmtpd server in its thread for the block (`sessions`: the most it takes at
    once, refusing the others with 421; `options`: more Controller arguments, such as a TLS
    context)."""
    handler = handler or SmtpRecorder()
    ready_timeout = options.pop("ready_timeout", 10)  # also how long a port taken costs
    for attempt in range(_BIND_ATTEMPTS):
        # free_port's port is free only a moment ago: another test process may take it first.
        where: dict[str, Any] = {
            "hostname": "127.0.0.1",
            "port": free_port(),
            "ready_timeout": ready_timeout,
        }
        controller = (
            Controller(handler, **where, **options)
            if sessions is None
            else _GatedController(handler, sessions, **where, **options)
        )
        try:
            controller.start()
            break
        except OSError as exc:
            # aiosmtpd leaves the loop of a server that could not bind open (a later test's
            # garbage collection then warns of it and its sockets): close it.
            if controller._thread is not None:
                controller._thread.join()
            controller.loop.close()
            if exc.errno != errno.EADDRINUSE or attempt == _BIND_ATTEMPTS - 1:
                raise
    try:
        yield SmtpServer("127.0.0.1", controller.port, handler, controller)
    finally:
        controller.stop()


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def scripted(script: Script, *, pipelining: bool = True) -> AsyncIterator[int]:
    """A server on 127.0.0.1 that greets, answers EHLO offering PIPELINING (or not), then
    runs `script` on the connection; yields its port."""
    offer = b"250-PIPELINING\r\n" if pipelining else b""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 scripted ESMTP\r\n")
        await reader.readuntil(b"\r\n")  # EHLO
        writer.write(b"250-scripted\r\n" + offer + b"250-8BITMIME\r\n250 SIZE 1000000\r\n")
        try:
            await script(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


class Conversation:
    """A scripted server's whole session (pass it to `scripted`): answers MAIL, RCPT, DATA
    (then reads the body), RSET and QUIT one command at a time, which also serves a
    pipelining client (its replies go in order). Records the recipients whose message it
    accepted. A test overrides `rcpt`, `data` or `body` to misbehave: return the reply
    line(s), or None to answer nothing (the server goes silent until the client hangs up).
    """

    def __init__(self) -> None:
        self.accepted: list[str] = []
        self.connections = 0

    async def rcpt(self, recipient: str) -> bytes | None:
        return b"250 2.1.5 ok\r\n"

    async def data(self, recipient: str) -> bytes | None:
        return b"354 go on\r\n"

    async def body(self, recipient: str) -> bytes | None:
        self.accepted.append(recipient)
        return b"250 2.0.0 queued\r\n"

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        recipient = ""
        while True:
            line = await reader.readuntil(b"\r\n")
            verb = line[:4].upper()
            reply: bytes | None
            if verb == b"MAIL" or verb == b"RSET":
                reply = b"250 2.1.0 ok\r\n"
            elif verb == b"RCPT":
                recipient = line.split(b"<", 1)[1].split(b">", 1)[0].decode()
                reply = await self.rcpt(recipient)
            elif verb == b"DATA":
                reply = await self.data(recipient)
                if reply is not None and reply.startswith(b"354"):
                    writer.write(reply)
                    await reader.readuntil(b"\r\n.\r\n")
                    reply = await self.body(recipient)
            elif verb == b"QUIT":
                writer.write(b"221 2.0.0 bye\r\n")
                await writer.drain()
                return
            else:
                reply = b"500 5.5.1 unknown command\r\n"
            if reply is None:
                await reader.read()  # silent until the client hangs up
                return
            writer.write(reply)
            await writer.drain()


@pytest.fixture
def smtpd() -> Iterator[SmtpServer]:
    """A recording aiosmtpd server on 127.0.0.1; misbehaves as its handler is told."""
    with run_smtp_server() as server:
        yield server

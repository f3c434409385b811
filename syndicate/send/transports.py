"""Send: the transports, `Mailer`s that take one message's bytes or raise. The only SMTP code.

`OutboxMailer` writes .eml files, `SmtpMailer` keeps a pool of persistent
aiosmtplib connections; `SmtpServer` (the smtp.* keys, read in this one place),
`open_mailer` and `read_dkim_key` turn the settings into what a run sends with.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.policy
import errno
import logging
import os
import re
import shlex
import socket
import ssl
import stat
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.utils import getaddresses
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiosmtplib
from aiosmtplib.email import quote_address
from aiosmtplib.protocol import MAX_LINE_LENGTH, normalize_message_line_endings
from aiosmtplib.response import SMTPResponse

from syndicate import interrupts
from syndicate.config import Settings
from syndicate.errors import (
    ConfigError,
    DeliveryError,
    OutboxUnreadableError,
    RecipientRefusedError,
    SendError,
    TransientSendError,
)
from syndicate.mail import Canonical, DkimKey, MailInfo, check_addresses
from syndicate.output import check_writable_folder, write_atomic
from syndicate.send.policy import Action, Outcome, SendPolicy, Stage, to_action

# The stage's logger: records keep the name they had before send became a package.
log = logging.getLogger("syndicate.send")


@dataclass(frozen=True, slots=True)
class SmtpServer:
    """The SMTP server a run connects to, and how: the smtp.* keys, read once (`from_settings`).

    `send` opens its pool with it and `preflight` probes the same server with it.
    """

    host: str
    port: int
    tls: str  # "starttls", "tls" (implicit, RFC 8314) or "none"
    username: str = ""
    password: str = field(default="", repr=False)
    timeout: float = 30.0
    messages_per_connection: int = 100

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def from_settings(cls, settings: Settings) -> SmtpServer:
        """Take the server's address, TLS mode, login and command timeout from `settings`."""
        smtp = settings.smtp
        return cls(
            host=smtp.host,
            port=smtp.port,
            tls=smtp.tls,
            username=smtp.username,
            password=smtp.password,
            timeout=smtp.timeout,
            messages_per_connection=smtp.messages_per_connection,
        )


def check_mail_settings(settings: Settings, *, folder: str = "") -> None:
    """Raise ConfigError when the mail settings cannot work (before any lock or store).

    The mail.* address keys, the operator's email templates (digest.templates_dir) and
    the DKIM key on every transport (the outbox writes the same messages), then the SMTP
    login; on the outbox transport, that the folder the caller writes in can be written
    (OutputError): `folder` inside paths.outbox (`serve`'s confirmations/), else the outbox
    itself (`send` makes a folder in it for each digest).
    """
    check_addresses(info=MailInfo.from_settings(settings))
    if settings.digest.templates_dir:  # the operator's own; the shipped ones are whole
        # Here, not at the top: a send worker loads this module and renders no template
        # (Jinja2 and Babel are 50 modules, 40-60 ms of its start).
        from syndicate.digest import check_email_templates

        check_email_templates(settings.digest.templates_dir)
    read_dkim_key(settings)
    if settings.mail.transport != "smtp":
        check_writable_folder(settings.paths.outbox / folder, name="config key paths.outbox")
        return
    server = SmtpServer.from_settings(settings)
    if server.username and not server.password:
        raise ConfigError(
            "config key smtp.username is set, but SYNDICATE_SMTP_PASSWORD is empty.",
            key="smtp.username",
            hint="Export the password in SYNDICATE_SMTP_PASSWORD, or leave smtp.username empty.",
        )


class Mailer(Protocol):
    """A transport: takes one message's bytes for its recipients, or raises."""

    # Messages whose DATA has started and whose reply has not come yet.
    in_flight: int

    async def send(
        self,
        sender: str,
        recipients: Sequence[str],
        message: bytes,
        *,
        still_ours: Callable[[], bool] | None = None,
        before_data: Callable[[], Awaitable[None]] | None = None,
    ) -> None: ...

    async def aclose(self) -> None: ...


class FencedOff(Exception):
    """`still_ours` said no once the transport was ready to send: nothing was sent.

    The send queue's fencing asks at the last moment before the envelope goes, after any
    wait for a connection, so a worker stalled in that wait does not send a recipient
    another worker has taken over meanwhile.
    """


_MESSAGE_ID = re.compile(rb"(?im)^Message-ID:\s*<([^>\r\n]+)>")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class OutboxMailer:
    """Writes each message as an .eml file in one folder (atomically), named by its Message-ID.

    Re-sending a message replaces its file, so the folder holds one file per
    recipient however often a run is repeated.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.in_flight = 0

    async def send(
        self,
        sender: str,
        recipients: Sequence[str],
        message: bytes,
        *,
        still_ours: Callable[[], bool] | None = None,
        before_data: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        if still_ours is not None and not still_ours():
            raise FencedOff
        await _saved_and_still_ours(before_data, still_ours)
        found = _MESSAGE_ID.search(message[:4096])
        if found:
            stem = _UNSAFE_NAME.sub("_", found.group(1).decode("ascii", "replace"))
        else:
            stem = _UNSAFE_NAME.sub("_", ",".join(recipients))
        # The Return-Path an MTA's final delivery would add: the envelope sender (VERP or not).
        stamped = f"Return-Path: <{sender}>\r\n".encode("ascii") + message
        # Private: each message holds an address and its personal unsubscribe link.
        write_atomic(self.folder / f"{stem[:150]}.eml", stamped, skip_unchanged=False, private=True)

    async def aclose(self) -> None:
        return None


# The header block of an .eml file is read up to this many bytes when looking for recipients.
_HEADER_LIMIT = 65_536


def forget_recipient(outbox: Path, address: str) -> int:
    """Delete every message under the outbox folder addressed (To or Cc) to `address`.

    For `subscribers erase`: the outbox must not keep an erased address. Reads only each
    file's header block, one file at a time. Returns the number of files deleted. A folder
    or file it cannot read raises OutboxUnreadableError once the rest is done (os.walk
    alone skips a folder it cannot list, silently: the address's mails in it stayed);
    running out of open files raises at once.
    """
    wanted = address.strip().lower()
    removed = 0
    unread: list[tuple[str, OSError]] = []

    def not_listed(exc: OSError) -> None:
        if isinstance(exc, FileNotFoundError):
            return  # no outbox (nothing was ever written), or a folder gone meanwhile
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            raise exc
        unread.append((exc.filename or str(outbox), exc))

    for folder, _dirs, names in os.walk(outbox, onerror=not_listed):
        for name in names:
            if not name.endswith(".eml"):
                continue
            path = os.path.join(folder, name)
            try:
                with open(path, "rb") as handle:
                    head = handle.read(_HEADER_LIMIT).split(b"\r\n\r\n", 1)[0]
                headers = BytesHeaderParser(policy=email.policy.compat32).parsebytes(head)
                fields = [str(v) for key in ("To", "Cc") for v in headers.get_all(key, [])]
                if any(found.lower() == wanted for _n, found in getaddresses(fields)):
                    os.unlink(path)
                    removed += 1
            except FileNotFoundError:
                continue  # gone meanwhile
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    raise
                unread.append((path, exc))
    if unread:
        (path, first), more = unread[0], len(unread) - 1
        what = "outbox folder" if os.path.isdir(path) else "outbox file"
        others = f" (and {more} more)" if more else ""
        raise OutboxUnreadableError(
            f"{path}: cannot read this {what}{others} ({first.strerror or first}), so mails to "
            f"{address} in it may remain;",
            hint=f"give this user access to it and run "
            f"`syndicate subscribers erase {address}` again.",
        )
    return removed


_E = TypeVar("_E", bound=BaseException)


def _behind(exc: BaseException, kind: type[_E], test: Callable[[_E], bool]) -> _E | None:
    """The first exception of `kind` passing `test` in `exc`'s chain (aiosmtplib wraps the
    socket's and the TLS layer's errors in its own), if any."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, kind) and test(seen):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def certificate_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind `exc` (aiosmtplib may wrap it), if any."""
    return _behind(exc, ssl.SSLCertVerificationError, lambda _: True)


# TLS failures that say nothing about the server's setup: the connection dropped.
_TLS_DROPPED = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)


def _handshake_error(exc: BaseException) -> ssl.SSLError | None:
    """The failed TLS handshake behind `exc`, unless the connection merely dropped."""
    return _behind(exc, ssl.SSLError, lambda e: not isinstance(e, _TLS_DROPPED))


# The resolver's definite answers that a name has no address: it does not exist (NXDOMAIN)
# or has no A/AAAA record. Not EAI_AGAIN (no answer: a DNS server down), which may pass.
_NO_SUCH_HOST = frozenset(
    code for code in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None)) if code is not None
)


def _unknown_host(exc: BaseException) -> socket.gaierror | None:
    """The look-up behind `exc` that found smtp.host to have no address, if any."""
    return _behind(exc, socket.gaierror, lambda e: e.errno in _NO_SUCH_HOST)


@dataclass
class _Connection:
    client: aiosmtplib.SMTP  # greeted, secured and logged in; its transport now feeds `session`
    session: _Session
    options: list[bytes]  # MAIL FROM parameters: BODY=8BITMIME where offered
    sized: bool = False  # the server takes SIZE= (RFC 1870): it can refuse a big one at once
    pipelining: bool = False  # the server offers PIPELINING (RFC 2920)
    used: int = 0


class SmtpMailer:
    """A pool of persistent aiosmtplib connections shared by concurrent `send` calls.

    At most `connections` are open at once; each carries up to
    `messages_per_connection` messages, then is closed with QUIT. A connection
    that failed is dropped, so a retry goes out on a fresh one.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        tls: str = "starttls",
        username: str = "",
        password: str = "",
        timeout: float = 30.0,
        data_timeout: float = 600.0,
        connections: int = 8,
        messages_per_connection: int = 100,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host, self.port, self.tls = host, port, tls
        self.username, self.password = username, password
        self.timeout = timeout
        self.data_timeout = data_timeout
        self.connections = connections
        self.messages_per_connection = messages_per_connection
        self.tls_context = tls_context
        self.in_flight = 0
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(connections)
        self.where = f"smtp {host}:{port}"

    async def _open(self) -> _Connection:
        client = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            timeout=self.timeout,
            use_tls=self.tls == "tls",
            start_tls=True if self.tls == "starttls" else False,
            username=self.username or None,
            password=self.password if self.username else None,
            tls_context=self.tls_context,
        )
        try:
            await client.connect()
            if client.is_ehlo_or_helo_needed:  # neither STARTTLS nor a login greeted yet
                try:
                    await client.ehlo()
                except aiosmtplib.SMTPHeloError:
                    await client.helo()
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(
                f"{self.where}: the server refused the login of {self.username!r}: "
                f"{exc.code} {exc.message}.",
                hint="Check smtp.username and SYNDICATE_SMTP_PASSWORD.",
            ) from exc
        except aiosmtplib.SMTPResponseException as exc:
            _close_quietly(client)
            if exc.code < 0:  # not SMTP: as a dropped connection, tried again, then exit 75
                raise _not_smtp(self.where, Stage.SESSION, exc, in_flight=False) from exc
            if 400 <= exc.code < 500:
                raise TransientSendError(
                    f"{self.where}: the server is busy: {exc.code} {exc.message}",
                    stage=Stage.SESSION,
                    code=exc.code,
                    reply=f"{exc.code} {exc.message}",
                ) from exc
            raise DeliveryError(
                f"{self.where}: the server refused the session: {exc.code} {exc.message}.",
                hint="Check smtp.host, smtp.port, smtp.tls and the credentials.",
            ) from exc
        except (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPTimeoutError, OSError) as exc:
            _close_quietly(client)
            untrusted = certificate_error(exc)
            if untrusted is not None:  # a setup problem: waiting will not fix it
                raise DeliveryError(
                    f"{self.where}: the server's TLS certificate is not trusted: "
                    f"{untrusted.verify_message or untrusted.reason}.",
                    hint="Check smtp.host (the certificate must name it) and the CA "
                    "certificates this machine trusts (SSL_CERT_FILE).",
                ) from exc
            unknown = _unknown_host(exc)
            if unknown is not None:  # a typo, or a record gone: waiting will not fix it
                raise DeliveryError(
                    f"{self.where}: the host name has no address: {unknown.strerror}.",
                    hint="Check smtp.host, or the DNS records of that name.",
                ) from exc
            handshake = _handshake_error(exc) if self.tls == "tls" else None
            if handshake is not None:  # a plain SMTP port answers TLS with a plain greeting
                raise DeliveryError(
                    f"{self.where}: implicit TLS (smtp.tls = 'tls') failed: "
                    f"{handshake.reason or handshake}; the server does not speak TLS on "
                    "this port.",
                    hint="Use smtp.tls = 'starttls' for a port like 587 or 25, or the "
                    "server's implicit TLS port (usually 465).",
                ) from exc
            raise TransientSendError(
                f"{self.where}: cannot connect: {exc}",
                stage=Stage.SESSION,
                code=0,
                reply=str(exc) or type(exc).__name__,
            ) from exc
        except aiosmtplib.SMTPException as exc:
            _close_quietly(client)
            raise DeliveryError(
                f"{self.where}: cannot start the session: {exc}.",
                hint="Check smtp.tls (starttls, tls or none) against what the server offers.",
            ) from exc
        except BaseException:
            # Cancelled while EHLO waits (a caller's timeout, a stop): aiosmtplib closes a
            # connect it cancels, not a session it had greeted. Left open, the socket was
            # closed by the garbage collector later, with a ResourceWarning.
            _close_quietly(client)
            raise
        transport = client.transport
        if transport is None:  # the server hung up right after the greeting
            _close_quietly(client)
            raise TransientSendError(
                f"{self.where}: the server closed the connection after greeting",
                stage=Stage.SESSION,
                code=0,
                reply="connection closed",
            )
        session = _Session(transport)
        transport.set_protocol(session)  # from here on the send loop reads the replies
        return _Connection(
            client,
            session,
            [b"BODY=8BITMIME"] if client.supports_extension("8bitmime") else [],
            sized=client.supports_extension("size"),
            pipelining=client.supports_extension("pipelining"),
        )

    async def send(
        self,
        sender: str,
        recipients: Sequence[str],
        message: bytes,
        *,
        still_ours: Callable[[], bool] | None = None,
        before_data: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Send one message; raise RecipientRefusedError, TransientSendError or DeliveryError.

        `still_ours` is asked once a connection is ready, just before MAIL FROM; when it
        says no, the connection goes back unused and FencedOff is raised. It is asked again
        after `before_data` (a wait that may outlast the lease); a no there closes the
        connection before the body and raises FencedOff. `before_data` is
        awaited after the recipients are accepted, before DATA: the send queue waits there
        for its previous message's commit (what it raises ends the session and goes up).

        MAIL, RCPT and DATA wait `timeout` for their replies (DATA's 354 too: RFC 5321
        4.5.3.2.2); the reply after the message body waits `data_timeout` (4.5.3.2.6),
        since giving up earlier makes a copy the server may already have accepted.
        """
        async with self._slots:
            conn = self._take_idle() or await self._open()
            if still_ours is not None and not still_ours():
                self._idle.append(conn)  # unused: still good for the next message
                raise FencedOff
            session = conn.session
            keep = body_sent = False
            stage = Stage.SENDER
            try:
                options = conn.options
                if conn.sized:
                    options = [*options, b"SIZE=%d" % len(message)]
                mail = _line(b"MAIL FROM:", sender, options)
                rcpts = [_line(b"RCPT TO:", recipient) for recipient in recipients]
                if conn.pipelining:  # RFC 2920: the envelope and DATA in one write
                    session.write(mail + b"".join(rcpts) + b"DATA\r\n")
                    replies: list[SMTPResponse] = []
                    lost: BaseException | None = None
                    try:
                        # MAIL's, each RCPT's and DATA's: the 354 is a command's reply
                        # (RFC 5321 4.5.3.2); data_timeout is for the one after the body.
                        for _ in range(len(rcpts) + 2):
                            replies.append(await session.reply(self.timeout))
                    except (
                        aiosmtplib.SMTPServerDisconnected,
                        aiosmtplib.SMTPTimeoutError,
                        aiosmtplib.SMTPResponseException,  # not SMTP: see _not_smtp below
                    ) as exc:
                        lost = exc  # a refusal read before it (a 421, then the hang-up) counts
                    if isinstance(lost, aiosmtplib.SMTPResponseException):
                        session.close()  # out of step with the server: no RSET, no reuse
                    data = replies[-1] if len(replies) == len(rcpts) + 2 else _NO_REPLY
                    try:
                        if replies:
                            _check_sender(sender, replies[0])
                        stage = Stage.RECIPIENT
                        for recipient, answer in zip(recipients, replies[1:], strict=False):
                            _check_recipient(recipient, answer)
                    except aiosmtplib.SMTPResponseException:
                        if data.code == 354:  # DATA taken all the same: only closing ends it
                            session.close()
                        raise
                    if lost is not None:  # the stage of the reply that never came
                        if not replies:
                            stage = Stage.SENDER
                        elif len(replies) > len(rcpts):
                            stage = Stage.DATA
                        raise lost
                    stage = Stage.DATA
                    _check_data(data, 354)
                    # The commit of this sender's previous message ran meanwhile.
                    await _saved_and_still_ours(before_data, still_ours)
                else:
                    session.write(mail)
                    _check_sender(sender, await session.reply(self.timeout))
                    stage = Stage.RECIPIENT
                    for recipient, rcpt in zip(recipients, rcpts, strict=True):
                        session.write(rcpt)
                        _check_recipient(recipient, await session.reply(self.timeout))
                    await _saved_and_still_ours(before_data, still_ours)
                    stage = Stage.DATA
                    session.write(b"DATA\r\n")
                    _check_data(await session.reply(self.timeout), 354)
                self.in_flight += 1
                body_sent = True
                try:
                    session.write(wire_data(message))
                    _check_data(await session.reply(self.data_timeout), 250)
                finally:
                    self.in_flight -= 1
                keep = True
            except aiosmtplib.SMTPResponseException as exc:
                if exc.code < 0:
                    session.close()
                    raise _not_smtp(self.where, stage, exc, in_flight=body_sent) from exc
                outcome = Outcome(stage, exc.code, f"{exc.code} {exc.message}")
                # After a 5xx the session is still good: reset the envelope and reuse it.
                keep = exc.code >= 500 and await session.reset(self.timeout)
                failed = ",".join(recipients) if stage is not Stage.SENDER else sender
                raise _failure(self.where, failed, outcome) from exc
            except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
                # Once the body went, silence may hide an accepted message: the caller must not
                # resend it. Before that (up to DATA's 354) the server cannot have taken it.
                reason = str(exc) or type(exc).__name__
                raise TransientSendError(
                    f"{self.where}: the connection failed: {reason}",
                    stage=stage,
                    code=0,
                    reply=reason,
                    in_flight=body_sent,
                ) from exc
            finally:
                conn.used += 1
                if keep and conn.used < self.messages_per_connection:
                    self._idle.append(conn)
                elif keep:
                    await session.quit(self.timeout)
                else:
                    _close_quietly(conn.client)

    def _take_idle(self) -> _Connection | None:
        """An idle connection still open; servers close idle ones (RFC 5321: after minutes)."""
        while self._idle:
            conn = self._idle.pop()
            if conn.session.open:
                return conn
            _close_quietly(conn.client)
        return None

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        await asyncio.gather(*(conn.session.quit(self.timeout) for conn in idle))


# Addresses the send loop puts in MAIL FROM and RCPT TO as they are: a checked bare address
# (about 20 us of aiosmtplib's address parsing spared per command); anything else goes through
# aiosmtplib's `quote_address`, as its own `mail` and `rcpt` would send it.
_BARE_ADDRESS = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
)
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")


def _line(verb: bytes, address: str, options: Sequence[bytes] = ()) -> bytes:
    """One MAIL FROM or RCPT TO command line."""
    if _BARE_ADDRESS.fullmatch(address):
        quoted = b"<" + address.encode("ascii") + b">"
    else:
        quoted = quote_address(address).encode("ascii")
        if _CONTROL.search(quoted):
            raise ValueError(f"address {address!r} holds a control character")
    return b" ".join([verb + quoted, *options]) + b"\r\n"


async def _saved_and_still_ours(
    before_data: Callable[[], Awaitable[None]] | None, still_ours: Callable[[], bool] | None
) -> None:
    """Wait for the previous message's commit, then ask the fencing again: a wait that
    outlasted the lease raises FencedOff (the caller closes the session, no body sent)."""
    if before_data is not None:
        await before_data()
        if still_ours is not None and not still_ours():
            raise FencedOff


def _check_sender(sender: str, reply: SMTPResponse) -> None:
    if reply.code != 250:
        raise aiosmtplib.SMTPSenderRefused(reply.code, reply.message, sender)


def _check_recipient(recipient: str, reply: SMTPResponse) -> None:
    if reply.code not in (250, 251):
        raise aiosmtplib.SMTPRecipientRefused(reply.code, reply.message, recipient)


def _check_data(reply: SMTPResponse, expected: int) -> None:
    if reply.code != expected:
        raise aiosmtplib.SMTPDataError(reply.code, reply.message)


class _Session(asyncio.Protocol):
    """One pooled connection's SMTP session, once aiosmtplib has greeted, secured and logged in.

    The pool takes the connection over (`transport.set_protocol`) to write the envelope and
    DATA in one go where the server offers PIPELINING (RFC 2920), and to read the replies in
    order: aiosmtplib's protocol expects one reply per command it wrote and drops what comes
    before it asks. A reply here waits in the buffer until asked for. Each wait is timed by
    `asyncio.timeout` (aiosmtplib's `wait_for` costs a future and a turn of the loop a reply
    on Python 3.11). A lost connection fails the waiting reply and every later one.
    """

    def __init__(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = bytearray()
        self.waiter: asyncio.Future[SMTPResponse] | None = None
        self.lost: aiosmtplib.SMTPServerDisconnected | None = None

    @property
    def open(self) -> bool:
        return self.lost is None and not self.transport.is_closing()

    def write(self, data: bytes) -> None:
        if not self.open:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        self.transport.write(data)  # type: ignore[attr-defined]

    async def reply(self, timeout: float) -> SMTPResponse:
        """The next reply; SMTPServerDisconnected, SMTPReadTimeoutError or, for a reply that
        is not SMTP, SMTPResponseException."""
        found = self._take()
        if found is not None:
            return found
        if self.lost is not None:
            raise self.lost
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                return await self.waiter
        except TimeoutError as exc:
            raise aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response") from exc
        finally:
            self.waiter = None

    async def reset(self, timeout: float) -> bool:
        """RSET after a refusal; False when the session is no longer usable."""
        try:
            self.write(b"RSET\r\n")
            return (await self.reply(timeout)).code == 250
        except (aiosmtplib.SMTPException, OSError):
            return False

    async def quit(self, timeout: float) -> None:
        """QUIT, then release the socket at once (see `_abort`). Never raises."""
        try:
            self.write(b"QUIT\r\n")
            await self.reply(timeout)
        except (aiosmtplib.SMTPException, OSError):
            pass
        finally:
            _abort(self.transport)

    def close(self) -> None:
        _abort(self.transport)

    def _take(self) -> SMTPResponse | None:
        """The first whole reply in the buffer, taken out of it; None while it is partial."""
        lines: list[bytes] = []
        start = 0
        while True:
            end = self.buffer.find(b"\n", start)
            if end < 0:
                if len(self.buffer) - start > MAX_LINE_LENGTH:
                    raise aiosmtplib.SMTPResponseException(-1, "Response too long")
                return None
            line = bytes(self.buffer[start : end + 1])
            start = end + 1
            if len(line) > MAX_LINE_LENGTH or len(lines) > _MAX_REPLY_LINES:
                raise aiosmtplib.SMTPResponseException(-1, "Response too long")
            if not line[:3].isdigit() or line[3:4] not in (b" ", b"-", b"\r", b"\n"):
                text = line.decode("utf-8", "replace").strip()
                raise aiosmtplib.SMTPResponseException(-1, f"Malformed SMTP response line: {text}")
            lines.append(line[4:].strip(b" \t\r\n"))
            if line[3:4] != b"-":
                del self.buffer[:start]
                message = b"\n".join(lines).decode("utf-8", "surrogateescape")
                return SMTPResponse(int(line[:3]), message)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > _MAX_UNREAD:  # no pipelined group's replies come to this much
            self._lose(aiosmtplib.SMTPServerDisconnected("the server sent too much unasked"))
            _abort(self.transport)
            return
        waiter = self.waiter
        if waiter is None or waiter.done():
            return  # kept for the next `reply`
        try:
            found = self._take()
        except aiosmtplib.SMTPResponseException as exc:
            waiter.set_exception(exc)
            return
        if found is not None:
            waiter.set_result(found)

    def eof_received(self) -> bool:
        self._lose(aiosmtplib.SMTPServerDisconnected("Unexpected EOF received"))
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        lost = aiosmtplib.SMTPServerDisconnected("Connection lost")
        lost.__cause__ = exc
        self._lose(lost)

    def _lose(self, error: aiosmtplib.SMTPServerDisconnected) -> None:
        if self.lost is None:
            self.lost = error
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(self.lost)
            waiter.exception()  # seen: its reader may be gone already


# Stands for DATA's reply in a pipelined group whose connection failed before it came.
_NO_REPLY = SMTPResponse(0, "")
# A reply longer than this many lines is not a reply (aiosmtplib allows 4 lines' worth).
_MAX_REPLY_LINES = 100
# Bytes a session keeps unread before it gives up on the server (memory stays bounded).
_MAX_UNREAD = 128 * 1024


def wire_data(message: bytes) -> bytes:
    """`message` as DATA sends it: CRLF line ends, a final CRLF, leading dots doubled, and the
    closing `.` line; byte for byte what aiosmtplib's DATA sends for the same message."""
    if isinstance(message, Canonical):  # already so: spare the passes over 10 KB
        return message + b".\r\n"
    crlf = message.count(b"\r\n")
    if message.count(b"\n") != crlf or message.count(b"\r") != crlf:
        message = normalize_message_line_endings(message)  # a bare CR or LF somewhere
    elif not message.endswith(b"\r\n"):
        message += b"\r\n"
    message = message.replace(b"\n.", b"\n..")
    if message.startswith(b"."):
        message = b"." + message
    return message + b".\r\n"


def _not_smtp(
    where: str, stage: Stage, exc: aiosmtplib.SMTPResponseException, *, in_flight: bool
) -> TransientSendError:
    """A reply that is not SMTP (a malformed or overlong line, code -1): a fault of the
    session, not a word about the recipient. The stream is out of step and the session is
    closed; the outcome is as if no reply had come (deferred, or in doubt once the body
    went: the server may have taken the message)."""
    return TransientSendError(
        f"{where}: the server's reply was not SMTP: {exc.message}",
        stage=stage,
        code=exc.code,
        reply=exc.message,
        in_flight=in_flight,
    )


def _failure(where: str, recipient: str, outcome: Outcome) -> SendError:
    """The error for a refused message: what `to_action` makes of the reply picks the class."""
    action = to_action(outcome)
    if action is Action.SETUP_STOP and outcome.code in (530, 535, 538):
        return DeliveryError(
            f"{where}: the server asks for authentication: {outcome.reply}.",
            hint="Set smtp.username and SYNDICATE_SMTP_PASSWORD.",
        )
    if action is Action.SETUP_STOP:
        return DeliveryError(
            f"{where}: the server refused the sender {recipient!r}: {outcome.reply}.",
            hint="Check mail.from: the server must accept it as a sender.",
        )
    if action in (Action.DEFER, Action.RECONNECT, Action.IN_DOUBT):
        return TransientSendError(
            f"{where}: {recipient}: temporary failure: {outcome.reply}",
            stage=outcome.stage,
            code=outcome.code,
            reply=outcome.reply,
            in_flight=outcome.in_flight,
        )
    return RecipientRefusedError(
        recipient, stage=outcome.stage, code=outcome.code, reply=outcome.reply
    )


async def end_session(client: aiosmtplib.SMTP) -> None:
    """End `client`'s session: QUIT when it is still connected, and release its socket at once
    in any case (also after a TLS handshake that failed half way). Never raises."""
    if client.is_connected:
        await _quit(client)
    else:
        _close_quietly(client)


async def _quit(client: aiosmtplib.SMTP) -> None:
    transport = client.transport
    try:
        await client.quit()
    except (aiosmtplib.SMTPException, OSError):
        _close_quietly(client)
    finally:
        _abort(transport)


def _close_quietly(client: aiosmtplib.SMTP) -> None:
    transport = client.transport
    try:
        client.close()
    except (aiosmtplib.SMTPException, OSError):  # pragma: no cover - close does not raise
        log.debug("closing an SMTP connection failed", exc_info=True)
    finally:
        _abort(transport)


def _abort(transport: asyncio.BaseTransport | None) -> None:
    """Release the socket now, whatever the TLS layer is still waiting for.

    Closing a TLS connection waits for the server's close_notify (asyncio allows 30 s);
    a run whose event loop ends first never closes the socket (ResourceWarning:
    unclosed transport). The session is over when we close (QUIT answered, or failed),
    so nothing is lost by not waiting.
    """
    if isinstance(transport, asyncio.Transport):
        transport.abort()


# Files an asyncio event loop opens as it is made: its epoll and its self-pipe's two ends.
_LOOP_FILES = 3
_T = TypeVar("_T")


def run_event_loop(make: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """`asyncio.run(make())`, with the loop made before the coroutine.

    Out of open files (EMFILE) as the loop was made, Python 3.11 left a half-made loop that
    printed a traceback as it was collected ("no attribute '_ssock'"), and the coroutine
    made for it a "never awaited" warning, after the CLI's one line for EMFILE. The loop's
    files are opened (and closed) here first: no file left raises its OSError before
    either exists. Nothing else opens files in between (one thread).
    """
    held: list[int] = []
    try:
        for _ in range(_LOOP_FILES):
            held.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
    except OSError as exc:  # the loop's files, not /dev/null, are what is missing
        raise OSError(exc.errno, exc.strerror) from None
    finally:
        for fd in held:
            os.close(fd)
    # Ctrl-C cancels the task, as under asyncio.run, rather than cutting in anywhere.
    with interrupts.python_sigint(), asyncio.Runner() as runner:
        return runner.run(make())


# Open files a send process needs besides its SMTP connections: stdio, the store's files or
# connections, the lock, the event loop's, a template or key read, a worker's pipes.
OTHER_OPEN_FILES = 32


def open_files_limit(need: int) -> int:
    """This process's open-files limit (`ulimit -n`), first raised toward the hard limit
    when it is below `need` (as far as the hard limit lets it). A number past any need
    when there is no limit, or no telling (not a POSIX system)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return 2**31
    if soft == resource.RLIM_INFINITY:
        return 2**31
    if need > soft and (hard == resource.RLIM_INFINITY or hard > soft):
        raised = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (OSError, ValueError):
            pass
    return soft


def fit_open_files(
    settings: Settings, policy: SendPolicy, *, warn: bool = True, workers: int = 0
) -> SendPolicy:
    """`policy` with no more SMTP connections than a sending process may keep open.

    Raises the soft open-files limit (`ulimit -n`) toward the hard one when
    `smtp.connections` needs more; when even the hard one is too low, sends on fewer
    connections, saying so once (`warn`), rather than have each one over the limit fail
    with EMFILE and wait out its retries (and the store or a template find no file
    left to open). The limit is per process: with `workers` (`send --workers`: worker
    processes that inherit this one's limit) it is each worker's, and the warning says so.
    """
    if settings.mail.transport != "smtp":
        return policy
    need = policy.connections + OTHER_OPEN_FILES
    limit = open_files_limit(need)
    if need <= limit:
        return policy
    fit = max(1, limit - OTHER_OPEN_FILES)
    if warn:
        who = {0: "this process", 1: "the worker process"}.get(
            workers, f"each of the {workers} worker processes"
        )
        log.warning(
            "smtp.connections = %d needs about %d open files, and %s may open %d "
            "(ulimit -n): sending on %d %s%s. Raise the limit (ulimit -n, or LimitNOFILE= in "
            "a systemd unit) or lower smtp.connections.",
            policy.connections,
            need,
            who,
            limit,
            fit,
            "connection" if fit == 1 else "connections",
            " each" if workers > 1 else "",
        )
    return dataclasses.replace(policy, connections=fit)


def open_mailer(settings: Settings, *, folder: str, policy: SendPolicy | None = None) -> Mailer:
    """Return the configured transport: the outbox folder `outbox/<folder>/`, or SMTP.

    The SMTP pool's size and DATA timeout come from `policy` (default: the settings').
    """
    if settings.mail.transport == "smtp":
        policy = policy or SendPolicy.from_settings(settings)
        server = SmtpServer.from_settings(settings)
        return SmtpMailer(
            host=server.host,
            port=server.port,
            tls=server.tls,
            username=server.username,
            password=server.password,
            timeout=server.timeout,
            data_timeout=policy.data_timeout,
            connections=policy.connections,
            messages_per_connection=server.messages_per_connection,
        )
    return OutboxMailer(settings.paths.outbox / folder)


def _exposure(mode: int) -> str:
    if mode & 0o004:
        return "readable by others"
    if mode & 0o040:
        return "readable by its group"
    return "writable by group or others"


def read_dkim_key(settings: Settings) -> DkimKey | None:
    """Read the DKIM private key named in config; None while dkim.domain is empty.

    Raises ConfigError when the file cannot be read, is open to its group or to
    others (any read or write bit: mode 0600 or 0400 is required), or holds no PEM
    private key.
    """
    dkim = settings.dkim
    if not dkim.domain or dkim.key_file is None:
        return None
    try:
        with dkim.key_file.open("rb") as handle:
            # The mode of the file read, not of whatever the path names a moment later.
            mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
            key = handle.read()
    except OSError as exc:
        raise ConfigError(
            f"config key dkim.key_file: {str(dkim.key_file)!r} cannot be read: "
            f"{exc.strerror or exc}.",
            key="dkim.key_file",
            hint="Point it at the PEM private key of the selector.",
        ) from exc
    if mode & 0o066:
        # Whoever can read the key can sign as the domain; OpenDKIM refuses such keys too.
        raise ConfigError(
            f"dkim.key_file {dkim.key_file}: {_exposure(mode)} (mode {mode:04o}); "
            f"run chmod 600 {shlex.quote(str(dkim.key_file))}.",
            key="dkim.key_file",
        )
    if b"PRIVATE KEY" not in key:
        raise ConfigError(
            f"config key dkim.key_file: {str(dkim.key_file)!r} is not a PEM private key.",
            key="dkim.key_file",
        )
    return DkimKey(domain=dkim.domain, selector=dkim.selector, private_key=key)

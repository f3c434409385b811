"""Send stage: deliver one digest to every confirmed subscriber owed it. The only SMTP code.

`send_digest` streams recipients from the ledger in pages, claims each page as
`sending` (committed) before its messages go, and records `sent` right after
the server accepts each one, so a crash can leave only messages in flight in
doubt: delivery is at-least-once. `read_earlier_digests` finds the digests of
earlier days (within CATCH_UP_DAYS) still owed to someone, so a day whose run
failed or was cut short is finished by the next day's run. Transports are
`Mailer`s: `OutboxMailer` writes .eml files, `SmtpMailer` keeps a pool of
persistent aiosmtplib connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import random
import re
import ssl
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Protocol

import aiosmtplib

from syndicate.config import Settings
from syndicate.errors import ConfigError, DeliveryError, LockedError, OutputError, TempFailError
from syndicate.mail import (
    DkimKey,
    MessageTemplate,
    envelope_sender,
    fill_message,
    unsubscribe_url,
)
from syndicate.output import write_atomic
from syndicate.store import Database, digests, ledger
from syndicate.store.subscribers import record_bounce
from syndicate.tokens import make_token

log = logging.getLogger(__name__)

PAGE_SIZE = 500  # recipients claimed per ledger transaction
MAX_ATTEMPTS = 5  # runs that may try one recipient before it is skipped as failed
# A digest still owed to someone is caught up by the runs of this many following days;
# after that it is given up (with a warning), so old news does not go out a month late.
CATCH_UP_DAYS = 7
# A run whose first this-many recipients are all refused stops: the server refuses everything.
REFUSE_ALL_AFTER = 10
# This many recipients in a row failing temporarily (after retries) means the server is down.
TEMPFAIL_STREAK = 10
_BACKOFF_CAP = 60.0
_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})")


class Mailer(Protocol):
    """A transport: takes one message's bytes for its recipients, or raises."""

    async def send(self, sender: str, recipients: Sequence[str], message: bytes) -> None: ...

    async def aclose(self) -> None: ...


class RecipientRefusedError(DeliveryError):
    """The server refused a recipient for good (5xx): recorded, counted as a bounce."""

    def __init__(self, recipient: str, code: int, reply: str) -> None:
        super().__init__(f"{recipient}: the server refused the message: {code} {reply}")
        self.code = code
        self.reply = f"{code} {reply}"


class TransientSendError(TempFailError):
    """A temporary failure (4xx, dropped connection, timeout): worth retrying."""

    def __init__(self, message: str, *, reply: str, connection: bool) -> None:
        super().__init__(message)
        self.reply = reply
        self.connection = connection  # the connection itself failed, not one recipient


@dataclass(frozen=True, slots=True)
class SendSummary:
    """What one run did; `rate` is messages accepted per second."""

    digest: str
    sent: int
    failed: int
    skipped: int
    seconds: float
    bounced: int = 0

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "digest": self.digest,
            "sent": self.sent,
            "failed": self.failed,
            "skipped": self.skipped,
            "bounced": self.bounced,
            "seconds": round(self.seconds, 3),
            "rate": round(self.rate, 1),
        }


@contextlib.contextmanager
def open_send_lock(database: Path) -> Iterator[Path]:
    """Hold the send lock, `<database>.lock`, for the block; never wait for it.

    Raises LockedError (exit 75) at once when another process holds it. The
    kernel drops the lock when the holder dies, even by SIGKILL.
    """
    path = database.with_name(database.name + ".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise OutputError(
            f"{path}: cannot open the send lock: {exc.strerror or exc}.",
            hint="Check that the database folder is writable (paths.database).",
        ) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(
                f"{path}: another `syndicate send` is running (it holds this lock).",
                hint="Let it finish; run again later.",
            ) from None
        yield path
    finally:
        os.close(fd)


# --- transports -----------------------------------------------------------------------------

_MESSAGE_ID = re.compile(rb"(?im)^Message-ID:\s*<([^>\r\n]+)>")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class OutboxMailer:
    """Writes each message as an .eml file in one folder (atomically), named by its Message-ID.

    Re-sending a message replaces its file, so the folder holds one file per
    recipient however often a run is repeated.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    async def send(self, sender: str, recipients: Sequence[str], message: bytes) -> None:
        found = _MESSAGE_ID.search(message[:4096])
        if found:
            stem = _UNSAFE_NAME.sub("_", found.group(1).decode("ascii", "replace"))
        else:
            stem = _UNSAFE_NAME.sub("_", ",".join(recipients))
        write_atomic(self.folder / f"{stem[:150]}.eml", message, skip_unchanged=False)

    async def aclose(self) -> None:
        return None


@dataclass
class _Connection:
    client: aiosmtplib.SMTP
    options: list[str]
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
        connections: int = 8,
        messages_per_connection: int = 100,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host, self.port, self.tls = host, port, tls
        self.username, self.password = username, password
        self.timeout = timeout
        self.connections = connections
        self.messages_per_connection = messages_per_connection
        self.tls_context = tls_context
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
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(
                f"{self.where}: the server refused the login of {self.username!r}: "
                f"{exc.code} {exc.message}.",
                hint="Check smtp.username and SYNDICATE_SMTP_PASSWORD.",
            ) from exc
        except aiosmtplib.SMTPResponseException as exc:
            _close_quietly(client)
            if 400 <= exc.code < 500:
                raise TransientSendError(
                    f"{self.where}: the server is busy: {exc.code} {exc.message}",
                    reply=f"{exc.code} {exc.message}",
                    connection=True,
                ) from exc
            raise DeliveryError(
                f"{self.where}: the server refused the session: {exc.code} {exc.message}.",
                hint="Check smtp.host, smtp.port, smtp.tls and the credentials.",
            ) from exc
        except (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPTimeoutError, OSError) as exc:
            _close_quietly(client)
            raise TransientSendError(
                f"{self.where}: cannot connect: {exc}",
                reply=str(exc),
                connection=True,
            ) from exc
        except aiosmtplib.SMTPException as exc:
            _close_quietly(client)
            raise DeliveryError(
                f"{self.where}: cannot start the session: {exc}.",
                hint="Check smtp.tls (starttls, tls or none) against what the server offers.",
            ) from exc
        options = ["BODY=8BITMIME"] if client.supports_extension("8bitmime") else []
        return _Connection(client, options)

    async def send(self, sender: str, recipients: Sequence[str], message: bytes) -> None:
        """Send one message; raise RecipientRefusedError, TransientSendError or DeliveryError."""
        async with self._slots:
            conn = self._take_idle() or await self._open()
            keep = False
            try:
                await conn.client.sendmail(sender, recipients, message, mail_options=conn.options)
                keep = True
            except aiosmtplib.SMTPRecipientsRefused as exc:
                refusal = exc.recipients[0]
                keep = refusal.code >= 500
                raise _classify(
                    self.where, refusal.recipient, refusal.code, refusal.message
                ) from exc
            except aiosmtplib.SMTPSenderRefused as exc:
                if 400 <= exc.code < 500:
                    raise _classify(self.where, sender, exc.code, exc.message) from exc
                raise DeliveryError(
                    f"{self.where}: the server refused the sender {sender!r}: "
                    f"{exc.code} {exc.message}.",
                    hint="Check mail.from: the server must accept it as a sender.",
                ) from exc
            except aiosmtplib.SMTPResponseException as exc:
                keep = exc.code >= 500 and exc.code != 554
                raise _classify(self.where, ",".join(recipients), exc.code, exc.message) from exc
            except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
                raise TransientSendError(
                    f"{self.where}: the connection failed: {exc}",
                    reply=str(exc) or type(exc).__name__,
                    connection=True,
                ) from exc
            except aiosmtplib.SMTPException as exc:
                raise DeliveryError(f"{self.where}: sending failed: {exc}.") from exc
            finally:
                conn.used += 1
                if keep and conn.used < self.messages_per_connection:
                    self._idle.append(conn)
                elif keep:
                    await _quit(conn.client)
                else:
                    _close_quietly(conn.client)

    def _take_idle(self) -> _Connection | None:
        """An idle connection still open; servers close idle ones (RFC 5321: after minutes)."""
        while self._idle:
            conn = self._idle.pop()
            if conn.client.is_connected:
                return conn
            _close_quietly(conn.client)
        return None

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        await asyncio.gather(*(_quit(conn.client) for conn in idle))


def _classify(where: str, recipient: str, code: int, message: str) -> DeliveryError | TempFailError:
    enhanced = _ENHANCED.match(message)
    if enhanced and enhanced.group(1) == "5" and enhanced.group(2) == "7":
        return DeliveryError(
            f"{where}: the server refused {recipient!r} on security or policy grounds: "
            f"{code} {message}. This is a setup problem (relay permission, authentication, "
            "sender reputation), not a bad address; the run stopped.",
            hint="Check smtp.username, SYNDICATE_SMTP_PASSWORD and mail.from.",
        )
    if code in (530, 535, 538):
        return DeliveryError(
            f"{where}: the server asks for authentication: {code} {message}.",
            hint="Set smtp.username and SYNDICATE_SMTP_PASSWORD.",
        )
    if code == 421:
        return TransientSendError(
            f"{where}: the server is closing the connection: {code} {message}",
            reply=f"{code} {message}",
            connection=True,
        )
    if 400 <= code < 500:
        return TransientSendError(
            f"{where}: {recipient}: temporary failure: {code} {message}",
            reply=f"{code} {message}",
            connection=False,
        )
    return RecipientRefusedError(recipient, code, message)


async def _quit(client: aiosmtplib.SMTP) -> None:
    try:
        await client.quit()
    except (aiosmtplib.SMTPException, OSError):
        _close_quietly(client)


def _close_quietly(client: aiosmtplib.SMTP) -> None:
    try:
        client.close()
    except (aiosmtplib.SMTPException, OSError):  # pragma: no cover - close does not raise
        log.debug("closing an SMTP connection failed", exc_info=True)


def open_mailer(settings: Settings, *, folder: str) -> Mailer:
    """Return the configured transport: the outbox folder `outbox/<folder>/`, or SMTP."""
    if settings.mail.transport == "smtp":
        smtp = settings.smtp
        return SmtpMailer(
            host=smtp.host,
            port=smtp.port,
            tls=smtp.tls,
            username=smtp.username,
            password=smtp.password,
            timeout=smtp.timeout,
            connections=smtp.connections,
            messages_per_connection=smtp.messages_per_connection,
        )
    return OutboxMailer(settings.paths.outbox / folder)


def mailer_concurrency(settings: Settings) -> int:
    """How many messages the configured transport sends at once."""
    return settings.smtp.connections if settings.mail.transport == "smtp" else 1


def read_dkim_key(settings: Settings) -> DkimKey | None:
    """Read the DKIM private key named in config; None while dkim.domain is empty."""
    dkim = settings.dkim
    if not dkim.domain or dkim.key_file is None:
        return None
    try:
        key = dkim.key_file.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"config key dkim.key_file: {str(dkim.key_file)!r} cannot be read: "
            f"{exc.strerror or exc}.",
            key="dkim.key_file",
            hint="Point it at the PEM private key of the selector.",
        ) from exc
    if b"PRIVATE KEY" not in key:
        raise ConfigError(
            f"config key dkim.key_file: {str(dkim.key_file)!r} is not a PEM private key.",
            key="dkim.key_file",
        )
    return DkimKey(domain=dkim.domain, selector=dkim.selector, private_key=key)


# --- the send loop --------------------------------------------------------------------------


class _Pacer:
    """Spaces message starts to at most `rate` per second (0 = no limit)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.next = 0.0

    async def wait(self) -> None:
        if not self.interval:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        slot = max(self.next, now)
        self.next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


@dataclass
class _Run:
    sent: int = 0
    failed: int = 0
    bounced: int = 0
    refused_before_first_sent: int = 0
    transient_streak: int = 0
    deferred_bounces: list[int] = field(default_factory=list)


async def send_digest(
    *,
    db: Database,
    mailer: Mailer,
    templates: Mapping[str, MessageTemplate],
    settings: Settings,
    secret: bytes,
    day: date,
    now: datetime,
    confirmed_by: datetime | None = None,
    connections: int = 1,
    limit: int | None = None,
    retries: int = 3,
    retry_delay: float = 1.0,
    rate: float = 0.0,
    progress: Callable[[int, int], None] | None = None,
    clock: Callable[[], datetime] | None = None,
) -> SendSummary:
    """Deliver the digest of `day` to every confirmed subscriber the ledger says is owed it.

    `templates` maps language to the built message (the site language's is the
    fallback). Each page of recipients is committed as `sending` before any of
    its messages goes; each accepted message is committed as `sent` at once;
    a permanent refusal is committed as `failed` with the reply and counted
    toward mail.bounce_limit. Transient failures are retried `retries` times
    with exponential backoff and jitter, each on a fresh connection.

    `confirmed_by` (an earlier day's digest: its creation time) leaves out
    subscribers confirmed after it; None (today's digest) owes it to every
    confirmed subscriber. `limit` caps the recipients claimed by this call.

    Raises DeliveryError when the server refuses on policy or authentication
    grounds, or refuses the first REFUSE_ALL_AFTER recipients (a setup
    problem), and TempFailError when it stays unavailable. Rows not yet sent
    stay `sending`/`failed` for the next run.
    """
    tick = clock or (lambda: datetime.now(UTC))
    started = time.monotonic()
    skipped = ledger.count_skipped(
        db, day=day, max_attempts=MAX_ATTEMPTS, confirmed_by=confirmed_by
    )
    total = ledger.count_owed(db, day=day, max_attempts=MAX_ATTEMPTS, confirmed_by=confirmed_by)
    if limit is not None:
        total = min(total, limit)
    fallback = templates.get(settings.site.language) or next(iter(templates.values()))
    sender_address = envelope_sender(settings)
    run = _Run()
    pacer = _Pacer(rate)
    queue: asyncio.Queue[ledger.Recipient | None] = asyncio.Queue(maxsize=PAGE_SIZE)
    workers = max(1, connections)
    issued = now

    async def produce() -> None:
        after, remaining = 0, total if limit is not None else None
        while remaining is None or remaining > 0:
            size = PAGE_SIZE if remaining is None else min(PAGE_SIZE, remaining)
            page = ledger.owed_page(
                db,
                day=day,
                after=after,
                limit=size,
                max_attempts=MAX_ATTEMPTS,
                confirmed_by=confirmed_by,
            )
            if not page:
                break
            ledger.mark_sending(
                db, day=day, subscriber_ids=[r.subscriber_id for r in page], now=tick()
            )
            for recipient in page:
                await queue.put(recipient)
            after = page[-1].subscriber_id
            if remaining is not None:
                remaining -= len(page)
        for _ in range(workers):
            await queue.put(None)

    accepted: list[int] = []

    async def record_sent(subscriber_id: int) -> None:
        # Group commit: yield once so that every message accepted in this turn of the event
        # loop is committed in one transaction. No connection starts its next message before
        # the commit, so a crash still leaves at most one message per connection in doubt.
        accepted.append(subscriber_id)
        await asyncio.sleep(0)
        if accepted:
            batch = accepted[:]
            accepted.clear()
            ledger.mark_sent_many(db, day=day, subscriber_ids=batch, now=tick())

    def report() -> None:
        if progress is not None:
            progress(run.sent + run.failed, total)

    def bounce(subscriber_id: int) -> None:
        if record_bounce(db, subscriber_id, limit=settings.mail.bounce_limit, now=tick()):
            run.bounced += 1

    async def deliver(recipient: ledger.Recipient) -> None:
        template = templates.get(recipient.language, fallback)
        token = make_token(
            secret, purpose="unsubscribe", subscriber_id=recipient.subscriber_id, issued_at=issued
        )
        message = fill_message(
            template,
            to=recipient.email,
            subscriber_id=recipient.subscriber_id,
            unsubscribe_url=unsubscribe_url(settings, token),
        )
        last: TransientSendError | None = None
        for attempt in range(retries + 1):
            if attempt:
                delay = min(_BACKOFF_CAP, retry_delay * 2 ** (attempt - 1))
                await asyncio.sleep(delay + random.uniform(0, delay))  # noqa: S311 - jitter
            await pacer.wait()
            try:
                await mailer.send(sender_address, [recipient.email], message)
            except TransientSendError as exc:
                log.info("%s (attempt %d of %d)", exc, attempt + 1, retries + 1)
                last = exc
                continue
            except RecipientRefusedError as exc:
                log.warning("%s", exc)
                ledger.mark_failed(
                    db, day=day, subscriber_id=recipient.subscriber_id, reply=exc.reply, now=tick()
                )
                run.failed += 1
                run.transient_streak = 0
                if run.sent:
                    bounce(recipient.subscriber_id)
                else:
                    run.deferred_bounces.append(recipient.subscriber_id)
                    run.refused_before_first_sent += 1
                    if run.refused_before_first_sent >= REFUSE_ALL_AFTER:
                        raise DeliveryError(
                            f"mail server refused the first {run.refused_before_first_sent} "
                            f"recipients (last reply: {exc.reply}). This is a setup problem "
                            "(sender, relay permission, authentication), not bad addresses; "
                            "the run stopped.",
                            hint="Check smtp.* and mail.from, then run `syndicate send` again.",
                        ) from exc
                report()
                return
            await record_sent(recipient.subscriber_id)
            run.sent += 1
            run.transient_streak = 0
            if run.deferred_bounces:
                deferred, run.deferred_bounces = run.deferred_bounces, []
                for subscriber_id in deferred:
                    bounce(subscriber_id)
            report()
            return
        assert last is not None  # noqa: S101 - the loop ran at least once
        if last.connection:
            raise TempFailError(
                f"{last} (after {retries + 1} tries). The server stayed unavailable.",
                hint="Try again later; the next run sends to everyone not yet sent.",
            ) from last
        ledger.mark_failed(
            db, day=day, subscriber_id=recipient.subscriber_id, reply=last.reply, now=tick()
        )
        run.failed += 1
        run.transient_streak += 1
        report()
        if run.transient_streak >= TEMPFAIL_STREAK:
            raise TempFailError(
                f"mail server deferred {run.transient_streak} recipients in a row "
                f"(last reply: {last.reply}).",
                hint="Try again later; the next run retries them.",
            ) from last

    async def work() -> None:
        while True:
            recipient = await queue.get()
            if recipient is None:
                return
            await deliver(recipient)

    report()
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(produce())
            for _ in range(workers):
                group.create_task(work())
    except BaseExceptionGroup as group_error:
        raise _first_error(group_error) from None
    finally:
        if accepted:  # accepted messages of workers cancelled before their commit
            ledger.mark_sent_many(db, day=day, subscriber_ids=accepted, now=tick())
        await mailer.aclose()
    # A run that ended normally had no whole-server refusal: the refusals were real bounces.
    for subscriber_id in run.deferred_bounces:
        bounce(subscriber_id)
    return SendSummary(
        digest=day.isoformat(),
        sent=run.sent,
        failed=run.failed,
        skipped=skipped,
        seconds=time.monotonic() - started,
        bounced=run.bounced,
    )


@dataclass(frozen=True, slots=True)
class OwedDigest:
    """An earlier day's digest that some subscribers are still owed."""

    day: date
    created_at: datetime  # subscribers confirmed later are not owed it
    owed: int


def read_earlier_digests(
    db: Database, *, today: date, now: datetime, window_days: int = CATCH_UP_DAYS
) -> list[OwedDigest]:
    """Return the digests of days before `today` still owed to someone, oldest first.

    Owed means: a subscriber confirmed when the digest was created, confirmed
    still, whose ledger row is missing, left `sending`, or `failed` with
    attempts to spare. Digests owed to nobody are closed, and so are those
    older than `window_days` (given up, with a warning naming how many never
    got it), so each digest is looked at by a few runs only.
    """
    first = today - timedelta(days=window_days)
    found: list[OwedDigest] = []
    for stored in digests.open_digests(db, before=today):
        owed = ledger.count_owed(
            db, day=stored.day, max_attempts=MAX_ATTEMPTS, confirmed_by=stored.created_at
        )
        if owed and stored.day >= first:
            found.append(OwedDigest(stored.day, stored.created_at, owed))
            continue
        if owed:
            log.warning(
                "digest %s: given up with %d %s never sent it: it is older than the "
                "%d-day catch-up window.",
                stored.day.isoformat(),
                owed,
                "subscriber" if owed == 1 else "subscribers",
                window_days,
            )
        digests.close_digest(db, stored.day, now=now)
    return found


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to report from a failed TaskGroup: ours first, then anything else."""
    flat: list[BaseException] = []

    def walk(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                walk(inner)
        else:
            flat.append(error)

    walk(group)
    for error in flat:
        if isinstance(error, DeliveryError | TempFailError):
            return error
    return flat[0]

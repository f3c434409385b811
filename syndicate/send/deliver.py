"""Send: deliver one digest to every confirmed subscriber the ledger says is owed it.

`send_digest` streams recipients from the ledger in pages, claims each page as
`sending` (committed) before its messages go, and records `sent` right after
the server accepts each one, so a crash can leave only messages in flight in
doubt: delivery is at-least-once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from syndicate.config import Settings
from syndicate.errors import DeliveryError, TempFailError
from syndicate.mail import (
    MessageTemplate,
    envelope_sender,
    fill_message,
    return_path,
    unsubscribe_url,
)
from syndicate.send.transports import Mailer, RecipientRefusedError, TransientSendError
from syndicate.store import Database, ledger
from syndicate.store.subscribers import record_bounce
from syndicate.tokens import make_token

# The stage's logger: records keep the name they had before send became a package.
log = logging.getLogger("syndicate.send")

PAGE_SIZE = 500  # recipients claimed per ledger transaction
MAX_ATTEMPTS = 5  # runs that may try one recipient before it is skipped as failed
# A run whose first this-many recipients are all refused stops: the server refuses everything.
REFUSE_ALL_AFTER = 10
# This many recipients in a row failing temporarily (after retries) means the server is down.
TEMPFAIL_STREAK = 10
_BACKOFF_CAP = 60.0


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
    envelope_sender(settings)  # checks mail.from before the first message
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
            secret,
            purpose="unsubscribe",
            subscriber_id=recipient.subscriber_id,
            nonce=recipient.token_nonce,
            issued_at=issued,
        )
        message = fill_message(
            template,
            to=recipient.email,
            subscriber_id=recipient.subscriber_id,
            unsubscribe_url=unsubscribe_url(settings, token),
        )
        # MAIL FROM per recipient: a VERP address when mail.bounce_address is set.
        sender = return_path(
            settings,
            secret=secret,
            subscriber_id=recipient.subscriber_id,
            nonce=recipient.token_nonce,
            day=day,
        )
        last: TransientSendError | None = None
        for attempt in range(retries + 1):
            if attempt:
                delay = min(_BACKOFF_CAP, retry_delay * 2 ** (attempt - 1))
                await asyncio.sleep(delay + random.uniform(0, delay))  # noqa: S311 - jitter
            await pacer.wait()
            try:
                await mailer.send(sender, [recipient.email], message)
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

"""Send: deliver one digest to every confirmed subscriber the ledger says is owed it.

`DigestSender` is one worker of the ledger's work queue: it enqueues what is
owed, claims batches of recipients under a lease (committed as `sending` before
their messages go), and records `sent` right after the server accepts each
one, so a crash can leave only messages in flight in doubt: delivery is
at-least-once. It keeps its lease renewed and, before each message, checks
that it still holds that recipient (fencing), so a worker stalled past its
lease never sends what another worker took over. What each reply means is
`policy.to_action`'s decision; this module carries it out.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
import logging
import os
import random
import secrets
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from syndicate.config import Settings
from syndicate.errors import (
    DeliveryError,
    RecipientRefusedError,
    SyndicateError,
    TempFailError,
    TransientSendError,
)
from syndicate.mail import (
    MailInfo,
    MessageTemplate,
    envelope_sender,
    fill_message,
    return_path,
    unsubscribe_url,
)
from syndicate.send.policy import (
    MAX_ATTEMPTS,
    REFUSE_ALL_AFTER,
    Action,
    SendPolicy,
    outcome_of,
    to_action,
)
from syndicate.send.transports import FencedOff, Mailer
from syndicate.store import Database, PgDatabase, ledger
from syndicate.store.subscribers import record_bounce
from syndicate.tokens import make_token

# The stage's logger: records keep the name they had before send became a package.
log = logging.getLogger("syndicate.send")

PAGE_SIZE = 500  # the most recipients claimed per ledger transaction
# Recipients claimed per ledger transaction and connection: batches stay small enough that
# several workers share a short list, and large enough that claims cost little.
CLAIM_PER_CONNECTION = 16
_LOOK_AGAIN = 0.2  # seconds: how often a worker with nothing to claim looks at the others' leases
_PASSED_BY_FIRST = 0.01  # seconds: the first look again at rows a claim passed by, locked
# A machine's clock this far off the database server's is worth a warning (it is corrected).
_SKEW_WARNING = timedelta(seconds=2)
# The wall clock and the lease clock disagreeing by this much (seconds) on the time passed
# since the last look is a jump (a suspend the lease clock did not count, a clock set):
# the lease time is taken again and the lease renewed before the next message.
_JUMP = 1.0
_LEASE_CLOCK = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


class _NotSent(FencedOff):
    """Before DATA: a row taken over from a gone worker is not to be sent (`_charge`)."""


def lease_clock() -> float:
    """Seconds on the clock that measures leases: CLOCK_BOOTTIME where there is one (Linux),
    which counts the time the machine spent suspended. CLOCK_MONOTONIC stands still then:
    a laptop that slept past its lease woke believing it still held rows another worker had
    taken over, and sent them."""
    return time.clock_gettime(_LEASE_CLOCK)


__all__ = [
    "MAX_ATTEMPTS",
    "PAGE_SIZE",
    "REFUSE_ALL_AFTER",
    "DigestSender",
    "MarkCommitter",
    "SendSummary",
    "Stop",
]


@dataclass(frozen=True, slots=True)
class SendSummary:
    """What one run did; `rate` is messages accepted per second.

    `in_flight`: messages whose DATA had started and whose reply never came
    (left `sending`: a later run sends them again).
    """

    digest: str
    sent: int
    failed: int
    skipped: int
    seconds: float
    bounced: int = 0
    in_flight: int = 0

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


class Stop:
    """Why the runs of one process stop starting messages: a signal or an error.

    Shared by today's digest and the catch-up, so a stop ends the whole job.
    Messages already started are never cancelled; they finish and are recorded.
    """

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.signal: int | None = None
        self.error: BaseException | None = None

    @property
    def stopping(self) -> bool:
        return self.event.is_set()

    def by_signal(self, signum: int) -> None:
        if self.signal is None:
            self.signal = signum
        self.event.set()

    def by_error(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        self.event.set()

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds`, or less if the run is told to stop meanwhile."""
        if seconds <= 0 or self.stopping:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.event.wait(), seconds)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signal).name if self.signal is not None else ""


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
class _Deferred:
    recipient: ledger.Recipient
    tries: int
    reply: str


@dataclass
class _Run:
    day: date
    confirmed_by: datetime | None
    remaining: int | None  # recipients this run may still claim (None: no cap)
    total: int
    queue: ledger.SendQueue  # claims and sent marks, from the loop
    committer: MarkCommitter  # commits the `sent` marks beside the sending
    exhausted: bool = False  # a claim made with the list empty found nothing
    looked_at: datetime | None = None  # when that claim was made
    # Looks in a row that found only rows the claim had passed by, locked (`_wait_for_others`).
    passed_by: int = 0
    dry: bool = False  # the last claim found nothing: claim no more ahead for now
    buffer: list[ledger.Recipient] = field(default_factory=list)
    deferred: list[tuple[float, int, _Deferred]] = field(default_factory=list)  # a heap
    deadline: float | None = None  # set when the first pass is done
    sent: int = 0
    failed: int = 0
    bounced: int = 0
    in_doubt: int = 0
    refused_unaccepted: int = 0  # permanent refusals (not address statuses) before any accept
    # Recipient id -> how many messages the run had accepted when it was first deferred
    # (4xx) in this run: one deferred since the run's last accept may be the server's doing.
    first_deferred: dict[int, int] = field(default_factory=dict)
    server_deferred: set[int] = field(default_factory=set)  # given back: no attempt used
    pending: list[tuple[int, Action, str]] = field(default_factory=list)  # refusals to confirm
    held: set[int] = field(default_factory=set)  # ids this worker held at the last claim/renew
    taken: set[int] = field(default_factory=set)  # ids listed in `buffer`, sent or committed
    started: set[int] = field(default_factory=set)  # ids whose body may go, not yet back
    # Ids taken over from a gone worker whose attempt is counted at this one's DATA
    # (`DigestSender._charge`), not yet counted.
    uncharged: set[int] = field(default_factory=set)
    charged: set[int] = field(default_factory=set)  # ids counted so: see `_give_up_deferred`
    waiting: set[int] = field(default_factory=set)  # ids listed in `deferred` (also taken)
    parked: set[int] = field(default_factory=set)  # deferred past the retry window, parked
    held_until: datetime | None = None  # when that lease runs out (the earliest, after claims)
    # The lease clock's reading (`lease_clock`) at which the fence renews first: a quarter
    # of the lease before held_until. Floats, so the check before each message reads two
    # clocks and makes no datetime (three such checks a message).
    renew_at: float | None = None
    dropped: int = 0  # claimed, then taken over by another worker or left (never sent by this)
    order: itertools.count[int] = field(default_factory=itertools.count)
    claiming: asyncio.Task[tuple[list[ledger.Recipient], datetime]] | None = None  # the next batch


class MarkCommitter:
    """Commits `sent` marks without stopping the event loop.

    On PostgreSQL a commit is a round trip to the server; made on the loop through the
    sync connection, it held every SMTP connection up for its length (one worker sent
    half as fast as on SQLite). There the statement goes out on a connection of its own
    the moment a message is accepted, and its reply is read by the loop as it comes
    (`ledger.PgQueue.start_mark`); on SQLite a write lock held by another process is
    waited for with asyncio sleeps, not SQLite's own (`ledger.SqliteQueue`). Either way
    the loop goes on sending meanwhile, and every message accepted while a commit runs
    goes into the next one (group commit; one runs at a time). A sender does not wait for
    its message's commit before it starts the next message, only before that message's
    DATA (see `DigestSender._work`): a crash still leaves at most one accepted message per
    connection uncommitted.
    """

    def __init__(
        self,
        marks: ledger.SendQueue,
        day: date,
        tick: Callable[[], datetime],
    ) -> None:
        self.marks, self.day, self.tick = marks, day, tick
        self.ids: list[int] = []
        self.waiting: list[asyncio.Future[None]] = []
        self.running: asyncio.Future[None] | None = None

    def commit(self, subscriber_id: int) -> asyncio.Future[None]:
        """A future done once `subscriber_id` is committed as sent (or failed to be)."""
        done = asyncio.get_running_loop().create_future()
        self.ids.append(subscriber_id)
        self.waiting.append(done)
        if self.running is None:
            self._start()
        return done

    async def drain(self) -> None:
        """Wait for the commits under way (their errors went to their senders)."""
        while self.running is not None:
            running = self.running
            if running.done():
                # Its `_finished` is due in this turn of the loop: awaiting a done future
                # does not yield, and this loop would spin without ever letting it run.
                await asyncio.sleep(0)
                continue
            with contextlib.suppress(Exception):
                await running

    def _start(self) -> None:
        ids, waiting = self.ids, self.waiting
        self.ids, self.waiting = [], []
        try:
            running = self.marks.start_mark(day=self.day, subscriber_ids=ids, now=self.tick())
        except Exception as exc:  # the clock or the queue failed before the statement went
            _settle(waiting, exc)
            return
        self.running = running
        running.add_done_callback(functools.partial(self._finished, waiting))

    def _finished(self, waiting: list[asyncio.Future[None]], running: asyncio.Future[None]) -> None:
        self.running = None
        if running.cancelled():  # the loop is shutting down: so are the senders
            for done in waiting:
                done.cancel()
        else:  # every message in it waits on it: each sees how it ended
            _settle(waiting, running.exception())
        if self.ids:
            self._start()


def _settle(waiting: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for done in waiting:
        if done.done():
            continue
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)
            # Marked seen: a sender awaits its future unless it is already stopping on an
            # error of its own (a claim on the broken store, say), and then this one would
            # be logged as never retrieved.
            done.exception()


class DigestSender:
    """Sends stored digests over one mailer under one `SendPolicy`; reused for each day.

    Each page of recipients is committed as `sending` before any of its
    messages goes; each accepted message is committed as `sent` at once; each
    reply is turned into a ledger action by `to_action`. Deferred recipients
    wait in a list retried after everyone else, within `policy.retry_window`,
    and never hold a worker meanwhile. On a stop no new message starts and no
    started one is cancelled.
    """

    def __init__(
        self,
        *,
        db: Database,
        mailer: Mailer,
        settings: Settings,
        secret: bytes,
        policy: SendPolicy,
        stop: Stop | None = None,
        clock: Callable[[], datetime] | None = None,
        monotonic: Callable[[], float] = lease_clock,
        worker: str | None = None,
    ) -> None:
        self.db, self.mailer, self.settings, self.secret = db, mailer, settings, secret
        self.policy = policy
        # The lease owner: '<run>/<n>'. Rows this run gave up on are claimed by no worker of it.
        self.worker = worker or make_worker_id(make_run_id(), 1)
        self.claim_size = min(PAGE_SIZE, CLAIM_PER_CONNECTION * max(1, policy.connections))
        self.stop = stop or Stop()
        self.clock = clock or (lambda: datetime.now(UTC))
        # The wall clock in seconds: the injected clock's when there is one.
        self.wall: Callable[[], float] = (
            time.time if clock is None else (lambda: self.clock().timestamp())
        )
        self.tick = self.clock  # on PostgreSQL, set to follow the server's clock (send)
        self.monotonic = monotonic  # on PostgreSQL, the time passed since the server's
        self.looked = self._clocks()  # the wall clock against the lease clock, last looked at
        self.mail_info = MailInfo.from_settings(settings)  # once per run, not per message
        envelope_sender(info=self.mail_info)  # checks mail.from before the first message
        self.pacer = _Pacer(policy.rate)

    async def send(
        self,
        *,
        templates: Mapping[str, MessageTemplate],
        day: date,
        now: datetime,
        confirmed_by: datetime | None = None,
        limit: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> SendSummary:
        """Deliver the digest of `day` to every confirmed subscriber owed it.

        `templates` maps language to the built message (the site language's is
        the fallback). `confirmed_by` (an earlier day's digest: its creation
        time) leaves out subscribers confirmed after it. `limit` caps the
        recipients claimed. Raises DeliveryError (a setup problem) or
        TempFailError (the server stayed unavailable) after every started
        message has finished and been recorded; a stop by signal returns the
        summary so far (the caller sees `stop.signal`).
        """
        started = time.monotonic()
        if isinstance(self.db, PgDatabase):
            self._follow_server_clock()
        max_attempts = self.policy.max_attempts
        skipped = ledger.count_skipped(
            self.db, day=day, max_attempts=max_attempts, confirmed_by=confirmed_by
        )
        ledger.enqueue_owed(self.db, day=day, now=self.tick(), confirmed_by=confirmed_by)
        total = ledger.count_owed(
            self.db, day=day, max_attempts=max_attempts, confirmed_by=confirmed_by
        )
        if limit is not None:
            total = min(total, limit)
        marks: ledger.SendQueue = (
            await ledger.PgQueue.open(self.db)
            if isinstance(self.db, PgDatabase)
            else ledger.SqliteQueue(self.db)
        )
        run = _Run(
            day=day,
            confirmed_by=confirmed_by,
            remaining=limit,
            total=total,
            queue=marks,
            committer=MarkCommitter(marks, day, lambda: self.tick()),
        )
        fallback = templates.get(self.settings.site.language) or next(iter(templates.values()))

        def report() -> None:
            if progress is not None:
                progress(run.sent + run.failed + run.in_doubt, total)

        def build(recipient: ledger.Recipient) -> bytes:
            token = make_token(
                self.secret,
                purpose="unsubscribe",
                subscriber_id=recipient.subscriber_id,
                nonce=recipient.token_nonce,
                issued_at=now,
            )
            return fill_message(
                templates.get(recipient.language, fallback),
                to=recipient.email,
                subscriber_id=recipient.subscriber_id,
                unsubscribe_url=unsubscribe_url(token, info=self.mail_info),
            )

        report()
        keeper = asyncio.create_task(self._keep_leases(run))
        workers = [self._work(run, build, report) for _ in range(max(1, self.policy.connections))]
        try:
            results = await asyncio.gather(*workers, return_exceptions=True)
        except BaseException:  # cancelled (a caller's timeout): what the run opened is closed
            try:
                await self._wind_down(run, keeper)
            finally:  # cancelled again meanwhile, too
                try:
                    self._let_go(run)
                finally:
                    await self.mailer.aclose()
                    await marks.close()
            raise
        await self._wind_down(run, keeper)
        bug = next((r for r in results if _is_bug(r)), None)
        try:
            self._server_deferred(run)
            self._refused_at_end(run)
            self._give_up_deferred(run)
            if not self.stop.stopping:
                self._confirm_refusals(run)  # no whole-server refusal: they were real bounces
            else:
                self._give_back_refusals(run)
            # Claimed and never started (a stop, a setup error): owed again, to anyone, now.
            ledger.release(self.db, day=day, owner=self.worker)
        except SyndicateError as exc:
            if bug is None:
                raise
            # A bug ended a connection, and the store failed as the run wound down: the bug
            # is what ends the run (exit 1, to be reported), not the store's error (75, which
            # cron retries), and it must not be lost. Raised below, not in this handler: here
            # Python made the store's error its context, in place of the bug's own (what its
            # connection was handling, often the clue), so the store's error is a note.
            bug.add_note(f"The store failed too as the run wound down: {exc}")
        finally:
            await self.mailer.aclose()
            await marks.close()
        if run.dropped:
            log.info(
                "%d recipients were taken over by another worker while this one (%s) had lost "
                "its lease, or left the list meanwhile; it did not send them.",
                run.dropped,
                self.worker,
            )
        if bug is not None:
            raise bug
        error = self.stop.error
        if isinstance(error, DeliveryError | TempFailError):
            # The run stops here: the one error line also says how far this digest got.
            if error.cause is None:
                error.cause = error.message.rstrip(".")
            error.message = f"{error.message.rstrip('.')}. {_so_far(run)}"
        if error is not None:
            raise error
        return SendSummary(
            digest=day.isoformat(),
            sent=run.sent,
            failed=run.failed,
            skipped=skipped,
            seconds=time.monotonic() - started,
            bounced=run.bounced,
            in_flight=run.in_doubt,
        )

    def _let_go(self, run: _Run) -> None:
        """A cancelled run: leave the messages it had started in doubt (for the next run), and
        give back at once every other row it holds, so no worker waits out its lease.

        Never raises: the cancellation under way must reach the caller. A store that fails
        here (within its own timeouts) is logged, and the rows wait for their lease."""
        try:
            for subscriber_id in sorted(run.started):
                self._in_doubt(run, subscriber_id)
            ledger.release(self.db, day=run.day, owner=self.worker)
        except Exception as exc:  # logged: the CancelledError must go on up
            log.warning(
                "%s: cancelled, and could not give back its recipients: %s; they are owed "
                "again once their lease runs out (smtp.lease, %g s).",
                self.worker,
                exc,
                self.policy.lease,
            )

    def _in_doubt(self, run: _Run, subscriber_id: int, reply: str = "") -> bool:
        """Leave a message that may have gone to the next run, as one of its attempts: True
        when that was its last (the row is `failed`)."""
        return ledger.mark_in_doubt(
            self.db,
            day=run.day,
            subscriber_id=subscriber_id,
            owner=self.worker,
            now=self.tick(),
            max_attempts=self.policy.max_attempts,
            reply=reply,
        )

    @staticmethod
    async def _wind_down(run: _Run, keeper: asyncio.Task[None]) -> None:
        """Stop renewing leases; wait for the commits and the claim under way."""
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper
        await run.committer.drain()  # every commit finished before its connection closes
        if run.claiming is not None:  # a batch claimed ahead and never taken: released below
            with contextlib.suppress(Exception):
                await run.claiming

    def _follow_server_clock(self) -> None:
        """Take lease times from the database server's clock, not this machine's.

        Workers on several machines compare each other's lease times: a machine whose
        clock ran ahead by more than two thirds of a lease saw live leases as run out, and
        sent what another worker was sending. This machine's clock is used for the time
        that passes, read off its monotonic clock; the server's sets where it starts.
        Measured with the wall clock, a step of it (NTP setting it back an hour during
        the run) moved every lease this worker took or renewed after: they had run out an
        hour before, and another machine claimed the rows this one was sending.
        """
        before, started = self.clock(), self.monotonic()
        server = ledger.server_time(self.db)
        after, ended = self.clock(), self.monotonic()
        offset = server - (before + (after - before) / 2)
        if abs(offset) > _SKEW_WARNING:
            log.warning(
                "this machine's clock is %.1f s %s the database server's (%s); the send "
                "queue's leases follow the server's. Keep the clocks in step (NTP).",
                abs(offset.total_seconds()),
                "behind" if offset > timedelta(0) else "ahead of",
                self.db.path,
            )
        middle = (started + ended) / 2
        self.tick = lambda: server + timedelta(seconds=self.monotonic() - middle)
        self.looked = self._clocks()

    def _clocks(self) -> tuple[float, float]:
        """The wall clock less the lease clock (seconds), and how uncertain that is: the
        wall clock is read between two reads of the lease clock."""
        first = self.monotonic()
        wall = self.wall()
        last = self.monotonic()
        return wall - (first + last) / 2, (last - first) / 2

    def _now(self) -> tuple[datetime, bool]:
        """The lease time now, and whether the clocks jumped since the last look (`_look`)."""
        jumped, _ = self._look()
        return self.tick(), jumped

    def _look(self) -> tuple[bool, float]:
        """Whether the clocks jumped since the last look, and the lease clock now.

        The wall clock and the lease clock should agree on the time passed. When they do
        not, this machine was suspended or paused (a lease clock that does not count it:
        CLOCK_MONOTONIC, a VM's clocks once its wall clock is put right) or its clock was
        set: on PostgreSQL the lease time is taken from the server's clock again, and
        either way the caller renews before it trusts the lease it remembers.
        """
        first = self.monotonic()
        wall = self.wall()
        last = self.monotonic()
        offset, error = wall - (first + last) / 2, (last - first) / 2
        before, erred = self.looked
        self.looked = (offset, error)
        jump = offset - before
        # A look cut in two by the scheduler (the process preempted between its reads) is no
        # jump: the reads' own uncertainty is allowed for.
        if abs(jump) < min(_JUMP, self.policy.lease / 4) + error + erred:
            return False, last
        log.warning(
            "%s: this machine's clock jumped %.1f s %s its lease clock (a suspend, a paused "
            "VM, or the clock set); the lease is checked with the store before the next "
            "message.",
            self.worker,
            abs(jump),
            "ahead of" if jump > 0 else "behind",
        )
        if isinstance(self.db, PgDatabase):
            self._follow_server_clock()
        return True, self.monotonic()

    async def _next(self, run: _Run) -> ledger.Recipient | None:
        """The next recipient this worker holds; None when none is left to claim now.

        Recipients are claimed a batch at a time, and the next batch is claimed while the
        last half of this one is sent (on PostgreSQL a claim is a round trip: made when the
        list ran dry, every connection stood idle for it)."""
        if run.claiming is not None and (not run.buffer or run.claiming.done()):
            claiming, run.claiming = run.claiming, None
            page, now = await claiming  # raises what the claim raised
            # Nothing ahead is no proof of an end: leases may run out before this batch is
            # sent. Only a claim made with the list empty says that (below).
            run.dry = not page
            self._took(run, page, now)
        if not run.buffer and not run.exhausted and run.remaining != 0:
            page, now = await self._claim(run)
            run.dry = run.exhausted = not page
            run.looked_at = now
            if page:
                run.passed_by = 0
            self._took(run, page, now)
        if (
            run.claiming is None
            and not run.exhausted
            and not run.dry
            and run.remaining != 0
            and len(run.buffer) <= self.claim_size // 2
            and not self.stop.stopping
        ):
            run.claiming = asyncio.create_task(self._claim(run))
        return run.buffer.pop() if run.buffer else None

    async def _claim(self, run: _Run) -> tuple[list[ledger.Recipient], datetime]:
        """Claim a batch (its size taken from run.remaining at once: claims may overlap)."""
        size = self.claim_size if run.remaining is None else min(self.claim_size, run.remaining)
        if size <= 0:
            return [], self.tick()
        if run.remaining is not None:
            run.remaining -= size
        now = self.tick()
        try:
            page = await run.queue.claim(
                day=run.day,
                owner=self.worker,
                now=now,
                lease=self.policy.lease,
                limit=size,
                max_attempts=self.policy.max_attempts,
                confirmed_by=run.confirmed_by,
            )
        except BaseException:
            if run.remaining is not None:
                run.remaining += size
            raise
        if run.remaining is not None:
            run.remaining += size - len(page)
        return page, now

    def _took(self, run: _Run, page: list[ledger.Recipient], now: datetime) -> None:
        # A row of this worker's own whose lease ran out (renewals late on a starved machine)
        # may be claimed again while it is still listed or in flight here: keep one copy.
        fresh = [r for r in page if r.subscriber_id not in run.taken]
        if run.remaining is not None:
            run.remaining += len(page) - len(fresh)
        page = fresh
        if not page:
            return
        run.taken.update(r.subscriber_id for r in page)
        until = now + timedelta(seconds=self.policy.lease)
        run.held.update(r.subscriber_id for r in page)
        if run.held_until is None or until < run.held_until:
            self._held_until(run, until)
        run.buffer[:0] = page[::-1]  # after the ones still held: the list pops from its end

    def _renew(self, run: _Run, now: datetime) -> None:
        """Extend the lease on every row this worker still holds; forget the others."""
        run.held = ledger.renew(
            self.db, day=run.day, owner=self.worker, now=now, lease=self.policy.lease
        )
        self._held_until(run, now + timedelta(seconds=self.policy.lease))

    def _held_until(self, run: _Run, until: datetime) -> None:
        """Remember when the lease in memory runs out, and when the fence renews it: a
        quarter of the lease before, on the lease clock."""
        run.held_until = until
        left = (until - self.tick()).total_seconds() - self.policy.lease / 4
        run.renew_at = self.monotonic() + left

    def _holds(self, run: _Run, subscriber_id: int) -> bool:
        """Fencing, before each message: whether this worker still holds the recipient.

        Cheap while the lease in memory has a quarter of its length left; past that
        (a stall: SIGSTOP, swap, a busy store) the lease is renewed first, which
        also says which rows are still ours: one another worker claimed is not.
        """
        jumped, now = self._look()
        if jumped or run.renew_at is None or now >= run.renew_at:
            self._renew(run, self.tick())
        return subscriber_id in run.held

    async def _keep_leases(self, run: _Run) -> None:
        """Renew the lease every third of its length while the run goes on (deferred and
        in-flight recipients included), so a live worker never loses a row."""
        while True:
            await asyncio.sleep(self.policy.lease / 3)
            if not run.held:
                continue
            try:
                self._renew(run, self._now()[0])
            except SyndicateError as exc:  # the fence renews again before the next message
                log.warning("%s: could not renew the lease: %s", self.worker, exc)

    async def _wait_for_others(self, run: _Run) -> bool:
        """Nothing left to claim: wait a moment (at most until the first lease another worker
        holds runs out), then claim again.

        Returns False when no other worker holds anything owed (this worker is done).
        Other workers renew their leases while they live, so a worker ends only once
        everything owed is sent or given up, and a dead worker's batch is taken over.
        """
        if run.remaining == 0:
            return False
        # Leases live when the claim that found nothing was made: one that ran out since is
        # claimable now, and is found by claiming again (asked "live now?", a lease that ran
        # out between that claim and this question made the worker end with it unsent).
        expiry = ledger.next_expiry(
            self.db,
            day=run.day,
            owner=self.worker,
            now=run.looked_at or self.tick(),
            max_attempts=self.policy.max_attempts,
            confirmed_by=run.confirmed_by,
        )
        if expiry is None:
            return False
        if run.looked_at is not None and expiry <= run.looked_at:
            # Rows the claim passed by, locked by another worker (PostgreSQL): its claim or
            # renewal, done in a moment, so look again at once; then less and less often, up
            # to _LOOK_AGAIN: a lock held long (a worker stopped mid-transaction, a session
            # left open) was looked at every 0.01 s, a claim and a query each, as long as held.
            wait = min(_PASSED_BY_FIRST * 2**run.passed_by, _LOOK_AGAIN)
            run.passed_by += 1
        else:
            # Look again soon: the other worker may finish (or give rows back) long before
            # its lease would run out, and this one must not hold up the end of the run by a
            # lease.
            run.passed_by = 0
            wait = min(
                max(0.0, (expiry - self.tick()).total_seconds()) + 0.01,
                _LOOK_AGAIN,
                self.policy.lease / 4,
            )
        await self.stop.sleep(wait)
        run.exhausted = False
        return True

    async def _work(
        self,
        run: _Run,
        build: Callable[[ledger.Recipient], bytes],
        report: Callable[[], None],
    ) -> None:
        # The commit of this sender's last accepted message while it runs. The
        # next message waits for it before its DATA, so this sender never has more than one
        # accepted message uncommitted: a crash leaves at most one per connection in doubt.
        unsaved: asyncio.Future[None] | None = None

        async def saved() -> None:
            if unsaved is not None:
                await unsaved

        try:
            while not self.stop.stopping:
                recipient, tries = await self._next(run), 0
                if recipient is None:
                    loop = asyncio.get_running_loop()
                    if run.deadline is None:
                        run.deadline = loop.time() + self.policy.retry_window
                    # Deferred ones past the window are left to the next run.
                    if not run.deferred or run.deferred[0][0] > run.deadline:
                        self._park_deferred(run)
                        if await self._wait_for_others(run):
                            continue
                        break
                    due, _, item = run.deferred[0]
                    if due > loop.time():
                        await self.stop.sleep(due - loop.time())
                        continue
                    heapq.heappop(run.deferred)
                    run.waiting.discard(item.recipient.subscriber_id)
                    recipient, tries = item.recipient, item.tries
                    # It waited seconds to minutes: ask the store again whether it is still
                    # this worker's and still confirmed (one may unsubscribe meanwhile).
                    if not ledger.still_held(
                        self.db,
                        day=run.day,
                        owner=self.worker,
                        subscriber_id=recipient.subscriber_id,
                    ):
                        run.held.discard(recipient.subscriber_id)
                if not tries and recipient.taken_over:
                    run.uncharged.add(recipient.subscriber_id)
                committing = None
                try:
                    committing = await self._deliver(run, recipient, tries, build(recipient), saved)
                finally:
                    self._done_with(run, recipient.subscriber_id, committing)
                if committing is not None:  # accepted, after the one before it was saved
                    unsaved = committing
                elif unsaved is not None and unsaved.done():
                    unsaved.result()  # raises what its commit raised
                    unsaved = None
                report()
            await saved()
        except BaseException as exc:
            self.stop.by_error(exc)
            raise

    async def _charge(self, run: _Run, recipient: ledger.Recipient) -> bool:
        """A recipient taken over from a worker that was gone (killed, or stalled past its
        lease): count that worker's attempt, which may have had the message in flight, before
        this one starts it. Without it, a message its worker is killed by every time (a
        recipient the process dies on) went again in every run, for good. False when it is
        not to be sent: out of attempts (failed), or no longer this worker's.

        Counted when this worker is about to send the body (its DATA), not when it takes the
        row: a worker killed with a batch claimed had only the rows on its connections in
        flight, and a row charged on every takeover and never reached (its connection slow
        while another recipient kills the process) ran out of attempts unsent.

        Through the send queue, as the claims and the `sent` marks: made on the loop with the
        store's lock busy (another process writing), the statement stopped every connection
        of this worker for up to store.busy_timeout."""
        status = await run.queue.charge(
            day=run.day,
            subscriber_id=recipient.subscriber_id,
            owner=self.worker,
            now=self.tick(),
            max_attempts=self.policy.max_attempts,
        )
        if status is None:
            run.dropped += 1
            return False
        if status == "failed":
            log.warning(
                "%s: taken over again from a worker that was gone (killed, or stalled past its "
                "lease) with its message: out of attempts (%d), not sent again.",
                recipient.email,
                self.policy.max_attempts,
            )
            run.failed += 1
            return False
        run.charged.add(recipient.subscriber_id)
        log.info(
            "%s: taken over from a worker that was gone; its attempt counts (%d of %d).",
            recipient.email,
            recipient.attempts + 1,
            self.policy.max_attempts,
        )
        return True

    @staticmethod
    def _done_with(run: _Run, subscriber_id: int, committing: asyncio.Future[None] | None) -> None:
        """Unlist a recipient once its row can no longer come back to this worker's claims
        as owed: not while it waits in `deferred`, nor while its `sent` mark is committed
        (after a stall past the lease, a claim finds such a row `sending`, its lease run out)."""
        if subscriber_id in run.waiting:
            return
        if committing is not None and not committing.done():
            committing.add_done_callback(lambda _done: run.taken.discard(subscriber_id))
        else:
            run.taken.discard(subscriber_id)

    def _sender(self, run: _Run, recipient: ledger.Recipient) -> str:
        """MAIL FROM for one recipient: a VERP address when mail.bounce_address is set."""
        return return_path(
            info=self.mail_info,
            secret=self.secret,
            subscriber_id=recipient.subscriber_id,
            nonce=recipient.token_nonce,
            day=run.day,
        )

    async def _deliver(
        self,
        run: _Run,
        recipient: ledger.Recipient,
        tries: int,
        message: bytes,
        saved: Callable[[], Awaitable[None]],
    ) -> asyncio.Future[None] | None:
        """Send one message and carry out what its outcome means.

        `saved` is awaited before DATA (the sender's previous commit). Returns the commit
        of this message when it was accepted and is being committed off the event loop.
        """
        reconnects, sent_before = 0, run.sent
        while True:
            await self.pacer.wait()
            if self.stop.stopping:
                return None  # claimed, never started: released at the end of the run
            if not self._holds(run, recipient.subscriber_id):
                run.dropped += 1  # another worker claimed it after this one's lease ran out
                return None
            try:
                # Asked again once a connection is ready: the wait for one may have outlasted
                # the lease (a stall), and the recipient may be another worker's by then.
                await self._send_one(run, recipient, message, saved)
            except _NotSent:  # counted by `_charge`
                return None
            except FencedOff:
                run.dropped += 1
                return None
            except (RecipientRefusedError, TransientSendError) as exc:
                action, reply = to_action(outcome_of(exc)), exc.reply
                failure: SyndicateError = exc
            except DeliveryError as exc:  # the mailer's own setup errors (TLS, login, sender)
                self.stop.by_error(exc)
                return None
            else:
                return await self._record_sent(run, recipient.subscriber_id)
            if action is Action.RECONNECT:
                if run.sent != sent_before:  # the server took others meanwhile: start over
                    reconnects, sent_before = 0, run.sent
                reconnects += 1
                if reconnects >= self.policy.attempts:
                    gave_up = TempFailError(
                        f"{failure.message} (after {reconnects} tries). "
                        "The server stayed unavailable.",
                        hint="Try again later; the next run sends to everyone not yet sent.",
                    )
                    gave_up.cause = f"{failure.message} (after {reconnects} tries)"
                    self.stop.by_error(gave_up)
                    return None
                log.info("%s (try %d of %d)", failure.message, reconnects, self.policy.attempts)
                await self.stop.sleep(_jitter(self.policy.backoff(reconnects)))
                if self.stop.stopping:
                    return None
                continue
            break
        subscriber_id = recipient.subscriber_id
        if action is Action.DEFER:
            log.info("%s (deferred)", failure.message)
            run.first_deferred.setdefault(subscriber_id, run.sent)
            loop = asyncio.get_running_loop()
            due = loop.time() + _jitter(self.policy.backoff(tries + 1))
            item = _Deferred(recipient, tries + 1, reply)
            heapq.heappush(run.deferred, (due, next(run.order), item))
            run.waiting.add(subscriber_id)
        elif action is Action.IN_DOUBT:
            if self._in_doubt(run, subscriber_id, reply):  # its last attempt: failed
                log.warning("%s; the message may have been accepted: out of attempts", failure)
                run.failed += 1
            else:
                log.warning("%s; the message may have been accepted: left for a later run", failure)
                run.in_doubt += 1
        elif action is Action.SETUP_STOP:
            self.stop.by_error(failure)
        else:
            log.warning("%s", failure.message)
            self._refused(run, recipient, action, reply)
        return None

    async def _send_one(
        self,
        run: _Run,
        recipient: ledger.Recipient,
        message: bytes,
        saved: Callable[[], Awaitable[None]],
    ) -> None:
        """`mailer.send`, the recipient listed in `run.started` from `before_data` on (its
        body may go): a send cancelled then may have gone, and the cancelled run leaves it
        in doubt (`_let_go`); one cancelled before is given back with the unstarted rows."""
        subscriber_id = recipient.subscriber_id

        async def body_next() -> None:
            await saved()
            if subscriber_id in run.uncharged:
                run.uncharged.discard(subscriber_id)
                if not await self._charge(run, recipient):
                    raise _NotSent
            run.started.add(subscriber_id)

        try:
            await self.mailer.send(
                self._sender(run, recipient),
                [recipient.email],
                message,
                still_ours=lambda: self._holds(run, subscriber_id),
                before_data=body_next,
            )
        except asyncio.CancelledError:
            raise  # still listed if its body may have gone
        except BaseException:
            run.started.discard(subscriber_id)
            raise
        run.started.discard(subscriber_id)

    def _refused(self, run: _Run, recipient: ledger.Recipient, action: Action, reply: str) -> None:
        """Record a permanent refusal; its bounce waits for proof the server takes mail at all."""
        subscriber_id = recipient.subscriber_id
        run.failed += 1
        if run.sent:
            self._settle(run, subscriber_id, action, reply)
            return
        # Until one message is accepted, every refusal may be the server's setup refusing all.
        # Failed for now (no worker of this run takes it again); a run that stops before any
        # accept gives it back with no attempt used (`_give_back_refusals`).
        if not ledger.mark_failed(
            self.db,
            day=run.day,
            subscriber_id=subscriber_id,
            reply=reply,
            now=self.tick(),
            owner=self.worker,
        ):
            self._fenced_refusal(run)
            return
        run.pending.append((subscriber_id, action, reply))
        # One refused by an earlier run stopped this way is no news: counted, the same ten
        # first in the list, refused for real, stopped every later run with nobody mailed.
        if action is Action.COUNT_BOUNCE and not recipient.refused_before:
            run.refused_unaccepted += 1
            if run.refused_unaccepted >= self.policy.refuse_all_after:
                self._refused_all(run, reply)

    def _refused_all(self, run: _Run, reply: str) -> None:
        refused = sum(1 for p in run.pending if p[1] is Action.COUNT_BOUNCE)
        self.stop.by_error(
            DeliveryError(
                f"mail server refused the first {refused} recipients "
                f"(last reply: {reply}). This is a setup problem (sender, relay "
                "permission, authentication), not bad addresses; the run stopped "
                "and bounced nobody.",
                hint="Check smtp.* and mail.from, then run `syndicate send` again.",
            )
        )

    def _server_deferred(self, run: _Run) -> None:
        """End of a run whose server stopped taking mail: it deferred many recipients on
        their first try of the digest, and accepted nothing since (or nothing at all).

        A relay that defers everyone (its queue full, a block on the sender), or that takes
        so many an hour and then defers the rest (a smarthost's rate limit), used one of the
        rest's runs each run, and after five the day was lost for them. Such a run stops as
        the server being unavailable (exit 75) and gives back, with no attempt used, each
        recipient deferred since the run's last accept (`_give_up_deferred`). A recipient
        deferred while the server went on accepting others (a full mailbox) uses its
        attempt, as does any deferred one when fewer than `refuse_all_after` on their first
        try were deferred since the last accept (a rerun left only the full mailboxes of an
        earlier run, say).
        """
        if self.stop.stopping or not run.deferred:
            return
        stalled = {
            item.recipient.subscriber_id: item
            for _due, _order, item in run.deferred
            if run.first_deferred.get(item.recipient.subscriber_id) == run.sent
        }
        fresh = sum(1 for item in stalled.values() if not item.recipient.attempts)
        if fresh < self.policy.refuse_all_after:
            return
        run.server_deferred = set(stalled)
        reply = run.deferred[0][2].reply
        if run.sent:
            what = (
                f"mail server stopped taking mail after it accepted {run.sent}: it deferred "
                f"{fresh} recipients on their first try since (last reply: {reply})"
            )
        else:
            what = (
                f"mail server deferred {fresh} recipients on their first try and accepted "
                f"none (last reply: {reply})"
            )
        self.stop.by_error(
            TempFailError(
                f"{what}. The server is not taking mail now; the run used none of their attempts",
                hint="Try again later; the next run sends to everyone not yet sent.",
            )
        )

    def _refused_at_end(self, run: _Run) -> None:
        """A run that accepted nothing and ends with `refuse_all_after` refusals or more not
        stopped for them (refused by an earlier run too, so not counted): the server refuses
        everyone still, and they are given back, not bounced."""
        if run.sent or self.stop.stopping:
            return
        refused = [p for p in run.pending if p[1] is Action.COUNT_BOUNCE]
        if len(refused) >= self.policy.refuse_all_after:
            self._refused_all(run, refused[-1][2])

    def _settle(self, run: _Run, subscriber_id: int, action: Action, reply: str) -> None:
        """Record a permanent refusal (counted failed already) and what it means for its
        subscriber: one fact of one row, written by the worker that holds the row.

        A refusal for a row this worker no longer holds (it stalled past its lease between
        its fence and the reply, and another worker took the row over; or the row is `sent`)
        changes nothing: not the row, not the subscriber. The holder sends that message
        itself and records its own reply, a refusal too when the address is gone, so the
        bounce is neither lost nor counted twice (bounced here, it was missing from the
        run's ledger counts, and a second refusal of the same digest counted toward
        `mail.bounce_limit` again)."""
        now = self.tick()
        if not ledger.mark_refused(
            self.db,
            day=run.day,
            subscriber_id=subscriber_id,
            reply=reply,
            max_attempts=self.policy.max_attempts,
            now=now,
            owner=self.worker,
        ):
            self._fenced_refusal(run)
            return
        limit = 1 if action is Action.BOUNCE_NOW else self.policy.bounce_limit
        if record_bounce(self.db, subscriber_id, limit=limit, now=now):
            run.bounced += 1

    @staticmethod
    def _fenced_refusal(run: _Run) -> None:
        """A refusal of a row another worker took over: not this worker's failure (`_settle`)."""
        run.failed -= 1
        run.dropped += 1

    def _give_back_refusals(self, run: _Run) -> None:
        """A run that stopped before any accept (the server refusing everyone, a signal): its
        refusals prove nothing about the recipients. Owed again with no attempt used: marked
        failed, five hourly runs against a relay refusing everyone cost the first recipients
        the day's digest, and the next run took the others' refusals as real."""
        pending, run.pending = run.pending, []
        run.failed -= len(pending)  # none of them failed: the summary says so
        ledger.unmark_failed(
            self.db,
            day=run.day,
            subscriber_ids=[p[0] for p in pending],
            owner=self.worker,
            now=self.tick(),
        )

    def _confirm_refusals(self, run: _Run) -> None:
        pending, run.pending = run.pending, []
        for subscriber_id, action, reply in pending:
            self._settle(run, subscriber_id, action, reply)

    async def _record_sent(self, run: _Run, subscriber_id: int) -> asyncio.Future[None]:
        run.sent += 1
        committing = run.committer.commit(subscriber_id)  # off the loop's way; see _work
        if run.pending:
            self._confirm_refusals(run)
        return committing

    def _park_deferred(self, run: _Run) -> None:
        """The deferred left are past the retry window: this worker will not retry them, and
        another worker of the run must not wait for their leases (with `--workers N`, two
        workers each left with some waited for each other for ever). Kept out of every claim
        of this run until it ends (`_give_up_deferred`)."""
        ids = [item.recipient.subscriber_id for _due, _order, item in run.deferred]
        fresh = [i for i in ids if i not in run.parked]
        ledger.park(self.db, day=run.day, owner=self.worker, subscriber_ids=fresh)
        run.parked.update(fresh)

    def _give_up_deferred(self, run: _Run) -> None:
        """Record the recipients still deferred as failed (temporarily): later runs retry them.

        Those deferred since the server stopped taking mail (`_server_deferred`) are given
        back (parked or not): owed again, with no attempt used.

        A recipient taken over from a gone worker and charged for it at this worker's DATA
        (`_charge`) uses no further attempt for this worker's deferral of the same message:
        the takeover and this try count one attempt together. The store cannot tell whether
        the gone worker had begun DATA for it (knowing would take a commit before each body),
        so the charge is made in case it had; a deferral is a reply that this try delivered
        nothing, and counted again, each run that took a row over and was deferred (a
        greylisting recipient, runs that get killed) used two of its attempts, and the
        recipient ran out in 3 runs instead of 5. A takeover whose new try is left in doubt
        still counts two: both copies may have been delivered.

        A row this worker no longer holds (it stalled past its lease and another worker took
        the row over, which records its own outcome) is not written and not counted failed,
        as a refusal fenced off so (`_settle`): the summary says what the ledger holds."""
        deferred, run.deferred = run.deferred, []
        ledger.unpark(
            self.db, day=run.day, owner=self.worker, subscriber_ids=sorted(run.server_deferred)
        )
        for _due, _order, item in deferred:
            if item.recipient.subscriber_id in run.server_deferred:
                continue
            if ledger.mark_failed(
                self.db,
                day=run.day,
                subscriber_id=item.recipient.subscriber_id,
                reply=item.reply,
                now=self.tick(),
                owner=self.worker,
                counted=item.recipient.subscriber_id in run.charged,
            ):
                run.failed += 1
            else:  # another worker took it over meanwhile: its reply counts, not this one's
                run.dropped += 1


def _is_bug(result: object) -> bool:
    """Whether a connection's result is an exception that is no SyndicateError: a bug."""
    return isinstance(result, BaseException) and not isinstance(result, SyndicateError)


def make_run_id() -> str:
    """A new run's id: random hex, so `<run>/%` matches only its own workers' ids."""
    return secrets.token_hex(6)


def make_worker_id(run: str, number: int) -> str:
    """The lease owner of worker `number` of `run`."""
    return f"{run}/{number}"


def _jitter(delay: float) -> float:
    return delay + random.uniform(0, delay / 2)  # noqa: S311 - spreads retries, not a secret


def _so_far(run: _Run) -> str:
    line = f"Digest {run.day.isoformat()} so far: {run.sent} sent, {run.failed} failed"
    if run.in_doubt:
        line += f", {run.in_doubt} in flight (the next run sends them again)"
    return line + "."


def watch_signals(stop: Stop, mailers: list[Mailer]) -> None:
    """Turn SIGINT and SIGTERM into a graceful stop; a second SIGINT quits at once."""
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        waiting = sum(m.in_flight for m in mailers)
        if stop.signal == signal.SIGINT and signum == signal.SIGINT:
            log.error(
                "interrupted again: quitting at once; %d in flight not recorded (the next run "
                "sends them again).",
                waiting,
            )
            logging.shutdown()
            os._exit(128 + signum)
        log.warning(
            "stopping (%s): no new messages; waiting for %d in flight%s.",
            signal.Signals(signum).name,
            waiting,
            " (Ctrl-C again to quit at once)" if signum == signal.SIGINT else "",
        )
        stop.by_signal(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)


def unwatch_signals() -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(signum)


async def send_digest(
    *,
    db: Database,
    mailer: Mailer,
    templates: Mapping[str, MessageTemplate],
    settings: Settings,
    secret: bytes,
    day: date,
    now: datetime,
    policy: SendPolicy | None = None,
    confirmed_by: datetime | None = None,
    limit: int | None = None,
    stop: Stop | None = None,
    worker: str | None = None,
) -> SendSummary:
    """Deliver the digest of `day` once, under `policy` (default: from the settings)."""
    sender = DigestSender(
        db=db,
        mailer=mailer,
        settings=settings,
        secret=secret,
        policy=policy or SendPolicy.from_settings(settings),
        stop=stop,
        worker=worker,
    )
    return await sender.send(
        templates=templates, day=day, now=now, confirmed_by=confirmed_by, limit=limit
    )

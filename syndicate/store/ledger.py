"""Store: the send ledger, one `deliveries` row per (digest day, subscriber).

A row moves `sending -> sent | failed`. `sending` is committed before the
message goes and `sent` only after the server accepted it, so a crash leaves
at most the in-flight messages in doubt; a rerun sends every row that is not
`sent` again (at-least-once).

The ledger is also the work queue that the send workers share (schema step 11).
A run enqueues a `sending` row, with no lease, for each owed recipient
(`enqueue_owed`); each worker then claims batches (`claim`): owed rows that no
live lease holds get its lease, `(lease_owner, lease_until)`. A worker keeps
its lease with `renew`, which also says which rows are still its own, and
sends only those (fencing); a dead worker's rows are claimed by another once
its lease has run out. A row this run is done with but did not send (failed,
or in doubt) keeps its owner with no expiry, so no worker of the same run
claims it again; a later run does.

The queries that say who is owed a digest take `confirmed_by`: when set (a
digest of an earlier day being caught up), only subscribers confirmed at or
before that time count, so a new subscriber is not sent last week's digest;
and so does one whose row a run made or touched since they confirmed (a run on
the digest's own day set out to send it to them: `updated_at >= confirmed_at`).
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from syndicate.errors import StoreBusyError, StoreError
from syndicate.store import DB_ERRORS, Database, PgDatabase, store_error

if TYPE_CHECKING:  # psycopg loads with store.postgres, on PostgreSQL only
    import asyncio

    from syndicate.store.postgres import LoopStatement

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Recipient:
    """A confirmed subscriber still owed the day's digest."""

    subscriber_id: int
    email: str
    language: str
    attempts: int  # finished attempts in earlier runs
    token_nonce: bytes  # signed into the unsubscribe token (tokens.make_token)
    # Refused (5xx) by a run that stopped before any accept and gave the attempt back
    # (`unmark_failed` keeps the reply): a refusal again is no news of the server refusing all.
    refused_before: bool = False
    # Taken over from a worker that held it and is gone (its lease ran out: killed, or
    # stalled): its message may have been in flight then. `charge_taken_over` counts that
    # attempt before this worker starts it.
    taken_over: bool = False


# Whether subscriber `s` is owed the digest of delivery row `d`'s day by when they
# confirmed: always for today's (:confirmed_by NULL); for an earlier day's, when confirmed
# by the time it was made, or when a run of that day made or touched their row since they
# confirmed (it set out to send it to them). The one statement of it, for every query below.
_CONFIRMED_IN_TIME = (
    "(CAST(:confirmed_by AS TEXT) IS NULL OR s.confirmed_at <= :confirmed_by"
    " OR d.updated_at >= s.confirmed_at)"
)

# Which confirmed subscribers (confirmed by :confirmed_by, when given) are still owed the
# digest of :day: no row, or a row left 'sending' (a crash, a message in doubt) or 'failed'
# with attempts to spare. A row at or past the limit is owed nothing whatever its status:
# one a run with a higher limit left in doubt is not sent once more. Keyset-paged by id.
_OWED_PAGE = f"""
    SELECT s.id, s.email, s.language, coalesce(d.attempts, 0), s.token_nonce
    FROM subscribers AS s
    LEFT JOIN deliveries AS d ON d.digest_day = :day AND d.subscriber_id = s.id
    WHERE s.status = 'confirmed' AND s.id > :after
      AND {_CONFIRMED_IN_TIME}
      AND (d.status IS NULL OR (d.status <> 'sent' AND d.attempts < :max_attempts))
    ORDER BY s.id
    LIMIT :limit
"""  # noqa: S608 - one constant clause, no input
# How many confirmed subscribers are owed the digest (the progress bar's total).
_OWED_COUNT = f"""
    SELECT count(*)
    FROM subscribers AS s
    LEFT JOIN deliveries AS d ON d.digest_day = :day AND d.subscriber_id = s.id
    WHERE s.status = 'confirmed'
      AND {_CONFIRMED_IN_TIME}
      AND (d.status IS NULL OR (d.status <> 'sent' AND d.attempts < :max_attempts))
"""  # noqa: S608 - one constant clause, no input
# Confirmed subscribers skipped this run: already sent, or out of attempts.
_SKIPPED_COUNT = f"""
    SELECT count(*)
    FROM subscribers AS s
    JOIN deliveries AS d ON d.digest_day = :day AND d.subscriber_id = s.id
    WHERE s.status = 'confirmed'
      AND {_CONFIRMED_IN_TIME}
      AND (d.status = 'sent' OR d.attempts >= :max_attempts)
"""  # noqa: S608 - one constant clause, no input
# Claim a recipient before its message goes (committed first: the crash-safety point).
_MARK_SENDING = """
    INSERT INTO deliveries (digest_day, subscriber_id, status, attempts, updated_at)
    VALUES (:day, :id, 'sending', 0, :now)
    ON CONFLICT (digest_day, subscriber_id)
    DO UPDATE SET status = 'sending', updated_at = excluded.updated_at
"""
# The server accepted the message. Not fenced: it was sent, whoever holds the row now.
# The owner stays (who sent it); the lease ends.
_MARK_SENT = """
    UPDATE deliveries SET status = 'sent', attempts = attempts + 1, reply = NULL,
        updated_at = :now, lease_until = NULL
    WHERE digest_day = :day AND subscriber_id = :id
"""
# An accepted message ends a run of permanent refusals: bounce_limit counts them in a row.
_RESET_BOUNCES = """
    UPDATE subscribers SET bounce_count = 0 WHERE id = :id AND bounce_count > 0
"""
# PostgreSQL: both marks for a batch in one statement, so one round trip (a statement on its
# own is its own transaction: all of it commits, or none). Four round trips (BEGIN, the two
# batches, COMMIT) made each accepted message cost PostgreSQL a multiple of SQLite. A
# data-modifying WITH runs whole whether or not its output is read; the reset looks the ids
# up itself (each one has a delivery row: it was claimed): joined to the WITH's RETURNING it
# hashed and memoized them, a third of the statement's time at 3 ids.
_MARK_SENT_MANY_PG = """
    WITH sent AS (
        UPDATE deliveries SET status = 'sent', attempts = attempts + 1, reply = NULL,
            updated_at = :now, lease_until = NULL
        WHERE digest_day = :day AND subscriber_id = ANY(:ids)
    )
    UPDATE subscribers SET bounce_count = 0
    WHERE id = ANY(:ids) AND bounce_count > 0
"""
# The attempt failed; keep the server's reply. The owner stays with no expiry: the same
# run claims it no more (see _CLAIM). :counted is 1, or 0 for a try already counted (a
# takeover's charge: see `mark_failed`).
_MARK_FAILED = """
    UPDATE deliveries SET status = 'failed', attempts = attempts + :counted, reply = :reply,
        updated_at = :now, lease_until = NULL
    WHERE digest_day = :day AND subscriber_id = :id
"""
# Fencing for the failure marks: a worker records a failure only on a row it still holds,
# so a stalled worker never overwrites what the worker that took the row over recorded;
# and never on a row already `sent` (a stalled worker's late 250 marks the row it lost
# `sent`, unfenced: the new holder's failure must not undo that). A refusal fenced off so
# bounces nobody either: the holder records its own reply (`DigestSender._settle`).
_HELD = " AND lease_owner = :owner AND status <> 'sent'"
# The server refused the recipient for good: failed, with no attempts left (never retried).
_MARK_REFUSED = """
    UPDATE deliveries SET status = 'failed', reply = :reply, updated_at = :now,
        attempts = CASE WHEN attempts + 1 > :max_attempts THEN attempts + 1
                        ELSE :max_attempts END,
        lease_until = NULL
    WHERE digest_day = :day AND subscriber_id = :id
"""
# Undo a failure this run marked (`_MARK_FAILED` with :owner) before knowing whether the
# server takes mail at all: the row is owed again, to any run, with the attempt given back.
# The refusal's reply is kept: the next run that meets it first does not take the same
# refusal for the server refusing everyone again (`Recipient.refused_before`).
_UNMARK_FAILED = """
    UPDATE deliveries SET status = 'sending', attempts = attempts - 1,
        updated_at = :now, lease_owner = NULL, lease_until = NULL
    WHERE digest_day = :day AND subscriber_id = :id AND lease_owner = :owner
      AND lease_until IS NULL AND status = 'failed' AND attempts > 0
"""
# What the workers of one run (lease owners '<run>/<n>', :run_like = '<run>/%') did to the
# digest of :day, killed ones included: a row keeps its owner once sent (claimed by no one
# again) or failed (claimed by no worker of the same run again), so the rows a run sent or
# failed are still its own afterwards. A row still `sending` under one of them once they
# have all ended is left in doubt, with no expiry (`_MARK_IN_DOUBT`: its body went and no
# reply came), or held under a lease by a worker that died (killed: whether it had begun
# that message nobody knows, and the next run counts a try for it, `_CHARGE_TAKEN_OVER`).
# A row a worker that died had parked (`_PARK`: deferred, never in flight) is neither.
# The rows a worker gave back have no owner (`_RELEASE`).
_RUN_COUNTS = """
    SELECT coalesce(sum(CASE WHEN status = 'sent' THEN 1 ELSE 0 END), 0),
           coalesce(sum(CASE WHEN status = 'failed' THEN 1 ELSE 0 END), 0),
           coalesce(sum(CASE WHEN status = 'sending' AND lease_until IS NULL AND parked = 0
                             THEN 1 ELSE 0 END), 0),
           coalesce(sum(CASE WHEN status = 'sending' AND lease_until IS NOT NULL
                             THEN 1 ELSE 0 END), 0)
    FROM deliveries
    WHERE digest_day = :day AND lease_owner LIKE :run_like
"""
# The subscribers the run's refusals of the digest of :day made bounced: a refusal that
# bounced its subscriber wrote one time to both (`DigestSender._settle`: mark_refused, then
# record_bounce), so the row's updated_at is the subscriber's bounced_at. Times are to the
# second: two refusals of one subscriber in one second (two digests of a catch-up) both
# match, and `run_counts` keeps the last.
_RUN_BOUNCED = """
    SELECT d.subscriber_id
    FROM deliveries AS d
    JOIN subscribers AS s ON s.id = d.subscriber_id
    WHERE d.digest_day = :day AND d.lease_owner LIKE :run_like AND d.status = 'failed'
      AND s.status = 'bounced' AND s.bounced_at = d.updated_at
"""
# Counts per status for one day (stats, tests).
_DAY_COUNTS = "SELECT status, count(*) FROM deliveries WHERE digest_day = ? GROUP BY status"
# One row, for `inspect`-style checks and tests.
_SELECT_ROW = """
    SELECT status, attempts, reply FROM deliveries WHERE digest_day = ? AND subscriber_id = ?
"""


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def _fail(db: Database, exc: Exception) -> StoreError:
    return store_error(db.path, "send ledger query failed", exc)


def _cutoff(confirmed_by: datetime | None) -> str | None:
    # Same text form as subscribers.confirmed_at, so SQLite compares them as text.
    return _iso(confirmed_by) if confirmed_by is not None else None


def owed_page(
    db: Database,
    *,
    day: date,
    after: int,
    limit: int,
    max_attempts: int,
    confirmed_by: datetime | None = None,
) -> list[Recipient]:
    """Return up to `limit` recipients owed the digest of `day` with ids above `after`."""
    params = {
        "day": day.isoformat(),
        "after": after,
        "limit": limit,
        "max_attempts": max_attempts,
        "confirmed_by": _cutoff(confirmed_by),
    }
    try:
        rows = db.conn.execute(_OWED_PAGE, params).fetchall()
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc
    return [Recipient(int(r[0]), str(r[1]), str(r[2]), int(r[3]), bytes(r[4])) for r in rows]


def _count_params(day: date, max_attempts: int, confirmed_by: datetime | None) -> dict[str, object]:
    return {
        "day": day.isoformat(),
        "max_attempts": max_attempts,
        "confirmed_by": _cutoff(confirmed_by),
    }


def count_owed(
    db: Database, *, day: date, max_attempts: int, confirmed_by: datetime | None = None
) -> int:
    """Return how many confirmed subscribers are owed the digest of `day`."""
    try:
        row = db.conn.execute(
            _OWED_COUNT, _count_params(day, max_attempts, confirmed_by)
        ).fetchone()
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc
    return int(row[0])


def count_skipped(
    db: Database, *, day: date, max_attempts: int, confirmed_by: datetime | None = None
) -> int:
    """Return how many confirmed subscribers a run skips: already sent, or out of attempts."""
    try:
        row = db.conn.execute(
            _SKIPPED_COUNT, _count_params(day, max_attempts, confirmed_by)
        ).fetchone()
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc
    return int(row[0])


def mark_sending(db: Database, *, day: date, subscriber_ids: Iterable[int], now: datetime) -> None:
    """Claim recipients in one committed transaction, before any of their messages goes."""
    stamp, key = _iso(now), day.isoformat()
    try:
        with db.transaction(rows_only=True) as conn:
            conn.executemany(
                _MARK_SENDING, ({"day": key, "id": i, "now": stamp} for i in subscriber_ids)
            )
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc


def mark_sent(db: Database, *, day: date, subscriber_id: int, now: datetime) -> None:
    """Record (committed at once) that the server accepted this recipient's message."""
    try:
        with db.transaction(rows_only=True) as conn:
            conn.execute(
                _MARK_SENT, {"day": day.isoformat(), "id": subscriber_id, "now": _iso(now)}
            )
            conn.execute(_RESET_BOUNCES, {"id": subscriber_id})
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc


def mark_sent_many(
    db: Database, *, day: date, subscriber_ids: Sequence[int], now: datetime
) -> None:
    """Record several accepted messages in one committed transaction."""
    stamp, key = _iso(now), day.isoformat()
    if db.dialect == "postgresql" and not db.in_transaction:
        params = {"day": key, "ids": [int(i) for i in subscriber_ids], "now": stamp}
        try:
            db.conn.execute(_MARK_SENT_MANY_PG, params)
        except DB_ERRORS as exc:
            raise _fail(db, exc) from exc
        return
    try:
        with db.transaction(rows_only=True) as conn:
            conn.executemany(
                _MARK_SENT, ({"day": key, "id": i, "now": stamp} for i in subscriber_ids)
            )
            conn.executemany(_RESET_BOUNCES, ({"id": i} for i in subscriber_ids))
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc


class PgQueue:
    """The send queue's statements made from an event loop, on PostgreSQL (`PgDatabase`):
    accepted messages marked `sent`, and recipients claimed, each on a connection of its own.

    Each is a round trip to the server, which the sync connection would make with the
    event loop stopped and every SMTP connection idle. `start_mark` runs
    `mark_sent_many`'s statement on libpq directly (`postgres.LoopStatement`): it is on
    its way to the server when the call returns, and done in the loop turn the reply
    arrives (a sender waits for it before its next message's DATA). `claim` is `claim`'s
    statement through psycopg. One statement each, so autocommit makes each one
    transaction; both prepared once on the server.
    """

    def __init__(self, db: PgDatabase, conn: Any, marks: LoopStatement) -> None:
        from syndicate.store.postgres import translate

        self.where, self.conn, self.marks = db.path, conn, marks
        self.claim_sql = translate(_CLAIM["postgresql"])
        self.charge_sql = translate(_CHARGE_TAKEN_OVER)

    @classmethod
    async def open(cls, db: PgDatabase) -> PgQueue:
        """Raises StoreUnavailableError (exit 75) when the server cannot be reached."""
        from syndicate.store.postgres import LoopStatement, positional

        where = db.path

        def failure(exc: Exception) -> Exception:
            return store_error(where, "send ledger query failed", exc)

        opened = [await db.connect_async()]
        try:  # the second connection refused (a connection limit, say): close the first
            opened.append(await db.connect_async())
            marks = await LoopStatement.prepare(
                opened[1],
                "syndicate_mark_sent",
                positional(_MARK_SENT_MANY_PG, ["day", "ids", "now"]),
                ["text", "bigint[]", "text"],
                failure,
                # Planned once: PostgreSQL costs the generic plan of `= ANY($2)` (an array of
                # unknown length) above its custom plans, and so planned the mark again at each
                # run, a fifth of its server time (the plan is index lookups by key either way;
                # tests/test_ledger_plan.py).
                plan_once=True,
            )
        except BaseException as exc:
            for conn in opened:
                await conn.close()
            if isinstance(exc, DB_ERRORS):
                raise failure(exc) from exc
            raise
        return cls(db, opened[0], marks)

    def start_mark(
        self, *, day: date, subscriber_ids: Sequence[int], now: datetime
    ) -> asyncio.Future[None]:
        """Mark `subscriber_ids` sent, in one transaction; done once committed. One at a time."""
        ids = "{" + ",".join(str(int(i)) for i in subscriber_ids) + "}"
        return self.marks.start([day.isoformat().encode(), ids.encode(), _iso(now).encode()])

    async def mark(self, *, day: date, subscriber_ids: Sequence[int], now: datetime) -> None:
        await self.start_mark(day=day, subscriber_ids=subscriber_ids, now=now)

    async def claim(
        self,
        *,
        day: date,
        owner: str,
        now: datetime,
        lease: float,
        limit: int,
        max_attempts: int,
        confirmed_by: datetime | None = None,
    ) -> list[Recipient]:
        """As `claim`."""
        params = _claim_params(day, owner, now, lease, limit, max_attempts, confirmed_by)
        try:
            cursor = await self.conn.execute(self.claim_sql, params, prepare=True)
            rows = await cursor.fetchall()
        except DB_ERRORS as exc:
            raise store_error(self.where, "send ledger query failed", exc) from exc
        return _recipients(rows)

    async def charge(
        self, *, day: date, subscriber_id: int, owner: str, now: datetime, max_attempts: int
    ) -> str | None:
        """As `charge_taken_over`, on the claims' connection (psycopg runs one statement at a
        time on it: a claim under way is waited for, with the loop free)."""
        params = _charge_params(day, subscriber_id, owner, now, max_attempts)
        try:
            cursor = await self.conn.execute(self.charge_sql, params, prepare=True)
            rows = await cursor.fetchall()
        except DB_ERRORS as exc:
            raise store_error(self.where, "send ledger query failed", exc) from exc
        return str(rows[0][0]) if rows else None

    async def close(self) -> None:
        self.marks.close()
        for conn in (self.conn, self.marks.conn):
            with contextlib.suppress(Exception):  # a connection that broke is closed already
                await conn.close()


class SqliteQueue:
    """`PgQueue` on SQLite: the same marks and claims, never waiting for the write lock with
    the event loop stopped.

    Beside another process that writes (the other `send --workers` processes, `serve`), the
    lock is often held for a moment when a group of marks is due. SQLite's own busy wait
    sleeps in the calling thread, 1 ms and then longer, however soon the lock is free, and
    every SMTP connection of the process stood idle meanwhile: with two workers, a sixth of
    each one's time. Here a busy lock is tried again after an asyncio sleep (0.2 ms, doubling
    up to 5 ms) while the other connections go on sending, until `store.busy_timeout` has
    passed (StoreBusyError then, as for any write). The statements are `mark_sent_many`'s
    and `claim`'s, on the store's own connection, each in one transaction with no await
    inside.
    """

    _FIRST_PAUSE, _LAST_PAUSE = 0.0002, 0.005

    def __init__(self, db: Database) -> None:
        # Imported here, once a queue, where `send` runs it in its event loop: `digest` and
        # `send --dry-run` read this module without the event loop and the ssl it brings.
        import asyncio

        self.db = db
        self.busy_ms = int(db.conn.execute("PRAGMA busy_timeout").fetchone()[0])
        self._ensure_future = asyncio.ensure_future
        self._sleep = asyncio.sleep

    def start_mark(
        self, *, day: date, subscriber_ids: Sequence[int], now: datetime
    ) -> asyncio.Future[None]:
        """As `PgQueue.start_mark`: here a task, which commits in the next turn of the loop."""
        return self._ensure_future(self.mark(day=day, subscriber_ids=subscriber_ids, now=now))

    async def mark(self, *, day: date, subscriber_ids: Sequence[int], now: datetime) -> None:
        await self._retrying(
            lambda: mark_sent_many(self.db, day=day, subscriber_ids=subscriber_ids, now=now)
        )

    async def claim(
        self,
        *,
        day: date,
        owner: str,
        now: datetime,
        lease: float,
        limit: int,
        max_attempts: int,
        confirmed_by: datetime | None = None,
    ) -> list[Recipient]:
        """As `claim`."""
        return await self._retrying(
            lambda: claim(
                self.db,
                day=day,
                owner=owner,
                now=now,
                lease=lease,
                limit=limit,
                max_attempts=max_attempts,
                confirmed_by=confirmed_by,
            )
        )

    async def charge(
        self, *, day: date, subscriber_id: int, owner: str, now: datetime, max_attempts: int
    ) -> str | None:
        """As `charge_taken_over`."""
        return await self._retrying(
            lambda: charge_taken_over(
                self.db,
                day=day,
                subscriber_id=subscriber_id,
                owner=owner,
                now=now,
                max_attempts=max_attempts,
            )
        )

    async def _retrying(self, write: Callable[[], _T]) -> _T:
        conn = self.db.conn
        deadline = time.monotonic() + self.busy_ms / 1000
        pause = self._FIRST_PAUSE
        while True:
            conn.execute("PRAGMA busy_timeout = 0")
            try:
                return write()
            except StoreBusyError:
                if time.monotonic() >= deadline:
                    raise
            finally:
                conn.execute(f"PRAGMA busy_timeout = {self.busy_ms}")
            await self._sleep(pause)
            pause = min(pause * 2, self._LAST_PAUSE)

    async def close(self) -> None:
        return None  # the store's own connection: its owner closes it


# The send queue's statements made from an event loop, on either engine.
SendQueue = PgQueue | SqliteQueue


def mark_failed(
    db: Database,
    *,
    day: date,
    subscriber_id: int,
    reply: str,
    now: datetime,
    owner: str | None = None,
    counted: bool = False,
) -> bool:
    """Record a failed attempt with the server's reply; with `owner`, only on a row it holds.
    Returns whether the row was written (False: `owner` no longer holds it).

    `counted`: the attempt was counted already (`charge_taken_over` for this same try), so
    the row's attempts stay as they are."""
    params = {
        "day": day.isoformat(),
        "id": subscriber_id,
        "reply": reply[:1000],
        "now": _iso(now),
        "owner": owner,
        "counted": 0 if counted else 1,
    }
    try:
        with db.transaction(rows_only=True) as conn:
            cursor = conn.execute(_MARK_FAILED + (_HELD if owner is not None else ""), params)
            return int(cursor.rowcount) > 0
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc


def unmark_failed(
    db: Database, *, day: date, subscriber_ids: Sequence[int], owner: str, now: datetime
) -> None:
    """Give back the attempts `owner` marked failed on `subscriber_ids` (its run stopped
    before it could tell the recipients' fault from the server's): owed again at once."""
    _each(db, _UNMARK_FAILED, day=day, owner=owner, subscriber_ids=subscriber_ids, now=now)


def mark_refused(
    db: Database,
    *,
    day: date,
    subscriber_id: int,
    reply: str,
    max_attempts: int,
    now: datetime,
    owner: str | None = None,
) -> bool:
    """Record a permanent refusal: `failed` with its attempts used up, so no run retries it.

    With `owner`, only on a row that worker still holds. Returns whether the row was
    written: False when another worker took it over meanwhile (or it is `sent`), whose own
    reply for it is the one that counts (`DigestSender._settle`).
    """
    params = {
        "day": day.isoformat(),
        "id": subscriber_id,
        "reply": reply[:1000],
        "max_attempts": max_attempts,
        "now": _iso(now),
        "owner": owner,
    }
    try:
        with db.transaction(rows_only=True) as conn:
            cursor = conn.execute(_MARK_REFUSED + (_HELD if owner is not None else ""), params)
            return int(cursor.rowcount) > 0
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc


def day_counts(db: Database, *, day: date) -> dict[str, int]:
    """Return the number of ledger rows per status for `day`."""
    try:
        rows = db.conn.execute(_DAY_COUNTS, (day.isoformat(),)).fetchall()
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc
    return {str(status): int(n) for status, n in rows}


@dataclass(frozen=True, slots=True)
class RunCounts:
    """What one run's workers did to one digest, as the ledger has it."""

    sent: int
    failed: int
    bounced: int  # of `failed`: refusals that made their subscriber bounced, each one once
    # Once the run's workers have ended: `sending` with no expiry, its body sent and no reply
    # (as one process counts it in flight; not a row parked by a worker that died, deferred
    # and never in flight); and `sending` under the lease of a worker that died (killed), its
    # messages in flight among them.
    in_doubt: int
    held: int


def run_counts(db: Database, *, days: Sequence[date], run: str) -> list[RunCounts]:
    """Return what the workers of `run` (lease owners '<run>/<n>') did to the digest of each
    of `days` (in the order the run sends them), each worker's rows counted, a killed one's
    too.

    A subscriber the run bounced counts once, in the last of `days` whose refusal matches
    their bounce: the refusal that bounced them, as one process counts it (two refusals in
    one second both match, and the last one sent is the one that did)."""
    counts: list[tuple[int, ...]] = []
    bounced_in: dict[int, int] = {}  # subscriber -> index of the digest that bounced them
    try:
        for index, day in enumerate(days):
            params = {"day": day.isoformat(), "run_like": run + "/%"}
            row = db.conn.execute(_RUN_COUNTS, params).fetchone()
            counts.append(tuple(int(n) for n in row))
            for (subscriber_id,) in db.conn.execute(_RUN_BOUNCED, params).fetchall():
                bounced_in[int(subscriber_id)] = index
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc
    bounced = Counter(bounced_in.values())
    return [
        RunCounts(sent=sent, failed=failed, bounced=bounced[index], in_doubt=doubt, held=held)
        for index, (sent, failed, doubt, held) in enumerate(counts)
    ]


def get_delivery(
    db: Database, *, day: date, subscriber_id: int
) -> tuple[str, int, str | None] | None:
    """Return (status, attempts, reply) of one ledger row, or None."""
    try:
        row = db.conn.execute(_SELECT_ROW, (day.isoformat(), subscriber_id)).fetchone()
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc
    return (str(row[0]), int(row[1]), row[2]) if row else None


# -- The work queue (schema step 11) -----------------------------------------------------

# Enqueue: a `sending` row with no lease for every confirmed subscriber (confirmed by
# :confirmed_by, when given) who has no row for :day yet. Idempotent: every worker of every
# run does it first, and rows already there (sent, failed, leased) are left alone.
# One batch: the subscribers with ids in (:after, :upto].
_ENQUEUE = """
    INSERT INTO deliveries (digest_day, subscriber_id, status, attempts, updated_at)
    SELECT :day, s.id, 'sending', 0, :now
    FROM subscribers AS s
    WHERE s.id > :after AND s.id <= :upto AND s.status = 'confirmed'
      AND (CAST(:confirmed_by AS TEXT) IS NULL OR s.confirmed_at <= :confirmed_by)
    ORDER BY s.id
    ON CONFLICT (digest_day, subscriber_id) DO NOTHING
"""
# The highest subscriber id: where the enqueue's batches end.
_TOP_SUBSCRIBER = "SELECT coalesce(max(id), 0) FROM subscribers"
# Subscriber ids per enqueue transaction. In one transaction the whole list took 11-15 s at
# 300,000 the first time, and every other worker starting meanwhile (of this machine or
# another) waited on its rows past store.busy_timeout and gave up (exit 75): now each
# waits at most one batch of another's (about 0.4 s).
ENQUEUE_BATCH = 10_000
# On SQLite every enqueue transaction takes the store's one write lock, which sign-ups,
# confirms and unsubscribes wait for with SQLite's own busy wait: it tries again 1, 2, 5,
# 10, 15, 20, 25, 25, 25 ms after it began waiting, then every 50 and 100 ms, and never in
# between. A batch committed and the next one begun at once left it almost no moment to try
# in: a sign-up waited 4.1 s at 400,000 subscribers, and near 1,000,000 could pass
# store.busy_timeout (503; bench/enqueue_signups.py). So on SQLite a batch is cut to about
# `_ENQUEUE_HOLD` seconds of work (its size follows the last one's time) and the lock is
# left free for `_ENQUEUE_PAUSE` after it: a writer that began waiting during a batch tries
# again inside that pause (its tries are at most 25 ms apart for its first 128 ms), so it
# waits about one batch.
_ENQUEUE_HOLD = 0.075
_ENQUEUE_PAUSE = 0.025
_ENQUEUE_FIRST = 1_000  # subscriber ids in the first SQLite batch, before one was timed
# The most a SQLite batch grows to, in ENQUEUE_BATCHes: its time keeps it short, and an idle
# machine does 10,000 ids in about 33 ms (capped at one ENQUEUE_BATCH, the pauses doubled
# the enqueue there).
_ENQUEUE_MOST = 20

# Claim: up to :limit owed rows of :day that no live lease holds get the lease
# (:owner, :until), in one write transaction. Owed: `sending` or `failed`, with attempts
# to spare (as _OWED_PAGE), of a subscriber still confirmed (by :confirmed_by). Not
# claimed: a row with a live lease (lease_until > :at), and a row this run is done with (its
# owner is a worker of this run, :run_like = '<run>/%', and it has no expiry: failed or in
# doubt this run; the next run takes it). The inner SELECT finds the rows through
# deliveries_queue; the `status <> 'sent'` term is the partial index's own, so the planner
# may use it.
# On SQLite, BEGIN IMMEDIATE serialises claimers; on PostgreSQL the same statement with
# `FOR UPDATE OF d SKIP LOCKED` lets claimers pass each other's locked rows.
# A row whose lease ran out while its owner still held it (a worker killed or stalled) is
# taken over (`Recipient.taken_over`): the claim says so in `taken_over` (store step 13), as
# RETURNING cannot show the old row. A row given back (no owner: released, unparked, a
# refusal unmarked) keeps the mark it had until its attempt is charged
# (`_CHARGE_TAKEN_OVER`): a takeover given back before its body went is still one, and the
# next claim, of any run, charges it. A row done with under an owner (failed or in doubt,
# its try counted) is no takeover.
# RETURNING may name only the updated table on SQLite, so the subscriber's fields come
# from scalar subqueries (primary-key lookups).
# The shape keeps both planners on indexes (docs/performance.md, tests/test_ledger_plan.py):
# - the subscriber test is a correlated lookup, not a JOIN: joined, PostgreSQL merge-joined
#   both tables in subscriber order, and SQLite after ANALYZE scanned subscribers, each
#   reading every row already sent: a claim cost more the more of the day was sent;
# - ORDER BY is deliveries_queue's own order, so that reading the index is always cheaper
#   than a scan that would have to sort (with few rows sent, or stale statistics, both
#   planners otherwise scanned the ledger from its start, past every row sent so far);
#   SQLite sorts NULL (unleased) first, PostgreSQL last (lapsed leases first);
# - on PostgreSQL the ids are `= ANY(ARRAY(..))`, one value looked up in the primary key:
#   with `IN (..)` it hash-joined them against a sequential scan of the whole ledger.
_CLAIM_TEMPLATE = """
    UPDATE deliveries
    SET status = 'sending', lease_owner = :owner, lease_until = :until, updated_at = :now,
        parked = 0,
        taken_over = CASE WHEN lease_owner IS NOT NULL AND lease_until IS NOT NULL THEN 1
                          WHEN lease_owner IS NULL THEN taken_over ELSE 0 END
    WHERE id {ids}(
        SELECT d.id
        FROM deliveries AS d
        WHERE d.digest_day = :day AND d.status <> 'sent'
          AND (d.lease_until IS NULL OR d.lease_until <= :at)
          AND NOT (d.lease_until IS NULL AND coalesce(d.lease_owner, '') LIKE :run_like)
          AND d.attempts < :max_attempts
          AND (SELECT s.status = 'confirmed'
                      AND {in_time}
               FROM subscribers AS s WHERE s.id = d.subscriber_id)
        ORDER BY d.digest_day, d.lease_until
        LIMIT :limit{lock}
    ){close}
    RETURNING subscriber_id, attempts,
        (SELECT email FROM subscribers WHERE id = deliveries.subscriber_id),
        (SELECT language FROM subscribers WHERE id = deliveries.subscriber_id),
        (SELECT token_nonce FROM subscribers WHERE id = deliveries.subscriber_id), reply,
        taken_over
"""
_CLAIM = {
    "sqlite": _CLAIM_TEMPLATE.format(in_time=_CONFIRMED_IN_TIME, ids="IN ", lock="", close=""),
    "postgresql": _CLAIM_TEMPLATE.format(
        in_time=_CONFIRMED_IN_TIME,
        ids="= ANY(ARRAY",
        lock="\n        FOR UPDATE OF d SKIP LOCKED",
        close=")",
    ),
}


def claim_statement(dialect: str) -> str:
    """The claim's SQL on `dialect` ("sqlite" | "postgresql"), for reading its plan (bench,
    tests)."""
    return _CLAIM[dialect]


# Renew: extend the lease of every row :owner still holds for :day, and say which those
# are. A row another worker claimed (its lease had run out) is no longer :owner's: it is
# left out, and its sender drops it (fencing). So is the row of a subscriber no longer
# confirmed (unsubscribed, bounced, complained since the claim; an erased one has no row):
# nobody who left is mailed by a run that claimed them before. Rows sent, failed or in
# doubt have no expiry.
#
# On PostgreSQL the rows are locked first, passing by any row another transaction holds
# locked (`_HELD_ROWS`): it is changing hands or being marked (sent by a worker that stalled
# past its lease, or this worker's own mark or charge under way on its other connection), so
# it is not a row to keep sending now. Waiting for it deadlocked: a stalled worker's sent
# mark of rows the renewing worker had taken over took them in its plan's order, the
# renewal in its own, each took one and waited for the other's, and PostgreSQL failed one
# of them (40P01): that machine's send exited 75. Never waiting, the renewal and the release
# are in no such cycle, whatever order any plan reads rows in.
_HELD_ROWS = """
    id = ANY(ARRAY(
        SELECT d.id FROM deliveries AS d
        WHERE d.digest_day = :day AND d.status <> 'sent' AND d.lease_until IS NOT NULL
          AND d.lease_owner = :owner AND d.status = 'sending'
        FOR UPDATE SKIP LOCKED
    ))"""
_RENEW_TEMPLATE = """
    UPDATE deliveries SET lease_until = :until
    WHERE {held}
      AND (SELECT s.status FROM subscribers AS s WHERE s.id = deliveries.subscriber_id)
          = 'confirmed'
    RETURNING subscriber_id
"""
_HELD_SQLITE = """digest_day = :day AND status <> 'sent' AND lease_until IS NOT NULL
      AND lease_owner = :owner AND status = 'sending'"""
_RENEW = {
    "sqlite": _RENEW_TEMPLATE.format(held=_HELD_SQLITE),
    "postgresql": _RENEW_TEMPLATE.format(held=_HELD_ROWS),
}

# Still held: whether :owner holds one row (as _RENEW would keep it), its subscriber still
# confirmed. Asked before a deferred recipient's retry: one row, not a renewal of every row
# the worker holds (with N deferred, N renewals of up to N rows each).
_STILL_HELD = """
    SELECT 1 FROM deliveries AS d JOIN subscribers AS s ON s.id = d.subscriber_id
    WHERE d.digest_day = :day AND d.subscriber_id = :id AND d.lease_owner = :owner
      AND d.status = 'sending' AND d.lease_until IS NOT NULL AND s.status = 'confirmed'
"""

# Release: rows :owner claimed but never started (a stop, a limit, a setup error) are
# owed again, to any worker of any run, at once.
# On PostgreSQL passing by rows another transaction holds, as the renewal (`_HELD_ROWS`).
_RELEASE_TEMPLATE = """
    UPDATE deliveries SET lease_owner = NULL, lease_until = NULL
    WHERE {held}
"""
_RELEASE = {
    "sqlite": _RELEASE_TEMPLATE.format(held=_HELD_SQLITE),
    "postgresql": _RELEASE_TEMPLATE.format(held=_HELD_ROWS),
}

# Park: deferred rows :owner will not retry in this run (past its retry window) keep their
# owner with no expiry, as a failed or in-doubt row does: no worker of this run claims them,
# and none waits for their lease (each worker of a run left holding such rows took the
# other's for live work and waited for it for ever). The run ends them (failed, or given
# back); a worker killed meanwhile leaves them to the next run. Marked `parked`: a row
# left in doubt looks the same otherwise, and only that one may have been in flight
# (`_RUN_COUNTS`).
_PARK = """
    UPDATE deliveries SET lease_until = NULL, parked = 1
    WHERE digest_day = :day AND subscriber_id = :id AND lease_owner = :owner
      AND status = 'sending' AND lease_until IS NOT NULL
"""
# Give back parked rows: owed again, to any run, with no attempt used.
_UNPARK = """
    UPDATE deliveries SET lease_owner = NULL, lease_until = NULL, parked = 0
    WHERE digest_day = :day AND subscriber_id = :id AND lease_owner = :owner
      AND status = 'sending'
"""
# Give back every row a worker of one run (:run_like = '<run>/%') parked and never ended, as
# _UNPARK does: once all of the run's workers have ended, those are a killed worker's (a
# live one fails them or gives them back itself). Owed again, to any worker of the run too.
_UNPARK_RUN = """
    UPDATE deliveries SET lease_owner = NULL, lease_until = NULL, parked = 0
    WHERE digest_day = :day AND lease_owner LIKE :run_like AND parked = 1
      AND status = 'sending' AND lease_until IS NULL
"""

# In doubt: the body went and no reply came. The row stays `sending` and keeps its owner
# with no expiry, so no worker of this run sends it again; the next run does. A row already
# `sent` (by a worker whose lease had lapsed: `sent` is not fenced) stays sent.
_MARK_IN_DOUBT = """
    UPDATE deliveries SET lease_until = NULL, attempts = attempts + 1, updated_at = :now,
        status = CASE WHEN attempts + 1 >= :max_attempts THEN 'failed' ELSE status END,
        reply = CASE WHEN attempts + 1 >= :max_attempts THEN :reply ELSE reply END
    WHERE digest_day = :day AND subscriber_id = :id AND lease_owner = :owner
      AND status = 'sending'
    RETURNING status
"""

# The earliest expiry among the live leases other workers hold on rows still owed: a
# worker with nothing left to claim waits until then, in case that worker has died. A row
# the claim would have taken at :at (as _CLAIM sees it) counts as expiring at :at: the
# claim did not get it because another worker had it locked (PostgreSQL's SKIP LOCKED: a
# claim or a renewal under way), so it is not done with, and is claimed again at once.
_NEXT_EXPIRY = f"""
    SELECT min(CASE WHEN d.lease_until > :at THEN d.lease_until ELSE :at END)
    FROM deliveries AS d
    JOIN subscribers AS s ON s.id = d.subscriber_id
    WHERE d.digest_day = :day AND d.status <> 'sent'
      AND s.status = 'confirmed'
      AND {_CONFIRMED_IN_TIME}
      AND (
        (d.lease_until > :at AND d.status = 'sending' AND d.lease_owner <> :owner)
        OR ((d.lease_until IS NULL OR d.lease_until <= :at)
            AND NOT (d.lease_until IS NULL AND coalesce(d.lease_owner, '') LIKE :run_like)
            AND d.attempts < :max_attempts)
      )
"""  # noqa: S608 - one constant clause, no input

# Break every lease: only under the SQLite send lock, which proves that no worker of any
# other run is alive (the lock is held by a run's parent and by each of its workers). The
# lease runs out (it is claimable at once) and the owner stays, so the claim knows the row
# is taken over from a dead worker (`Recipient.taken_over`).
_BREAK_LEASES = """
    UPDATE deliveries SET lease_until = :ended
    WHERE status <> 'sent' AND lease_until IS NOT NULL AND lease_until > :ended
"""
_LEASE_ENDED = "1970-01-01T00:00:00.000000+00:00"

# Taken over: count the attempt of the worker that held the row and is gone (its message
# may have been in flight), before this worker starts it. One a worker is killed by every
# time (a recipient its process dies on) so runs out of attempts, as one never answered
# does (_MARK_IN_DOUBT); the last makes it `failed` with :reply. Fenced: only a row
# :owner holds. The mark goes with the charge: given back after it, the row is charged once.
_CHARGE_TAKEN_OVER = """
    UPDATE deliveries SET attempts = attempts + 1, updated_at = :now, taken_over = 0,
        status = CASE WHEN attempts + 1 >= :max_attempts THEN 'failed' ELSE status END,
        reply = CASE WHEN attempts + 1 >= :max_attempts THEN :reply ELSE reply END,
        lease_until = CASE WHEN attempts + 1 >= :max_attempts THEN NULL ELSE lease_until END
    WHERE digest_day = :day AND subscriber_id = :id AND lease_owner = :owner
      AND status = 'sending' AND lease_until IS NOT NULL
    RETURNING status
"""


# Rows enqueued at once from which PostgreSQL's statistics of the ledger are refreshed.
_ANALYZE_AFTER = 1000


def lease_stamp(moment: datetime) -> str:
    """A lease time as stored: UTC ISO-8601 with microseconds, fixed width, so text order is
    time order."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def run_of(owner: str) -> str:
    """The run part of a worker id '<run>/<n>'."""
    return owner.rsplit("/", 1)[0]


def server_time(db: Database) -> datetime:
    """The database server's clock now (PostgreSQL): what the send queue's leases follow."""
    try:
        row = db.conn.execute("SELECT clock_timestamp()").fetchone()
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc
    return row[0] if isinstance(row[0], datetime) else datetime.fromisoformat(str(row[0]))


def enqueue_owed(
    db: Database, *, day: date, now: datetime, confirmed_by: datetime | None = None
) -> int:
    """Add a `sending` row, with no lease, for each confirmed subscriber with no row for `day`.

    Idempotent. Returns how many rows were added. Committed in batches of subscriber ids
    (`ENQUEUE_BATCH`; on SQLite about 75 ms of work each, with a pause after each for the
    other writers):
    one cut off part way leaves rows the next enqueue completes.
    """
    params: dict[str, object] = {
        "day": day.isoformat(),
        "now": _iso(now),
        "confirmed_by": _cutoff(confirmed_by),
    }
    added = after = 0
    sqlite = db.dialect == "sqlite"
    first = min(_ENQUEUE_FIRST, ENQUEUE_BATCH)
    size = first if sqlite else ENQUEUE_BATCH
    try:
        top = int(db.conn.execute(_TOP_SUBSCRIBER).fetchone()[0])
        # Without the store-wide write lock on PostgreSQL: the statements read every confirmed
        # subscriber (2 s at 300,000, 13 s the first time), which held sign-ups, confirms and
        # bounces up for that long, for each worker of each machine, past store.busy_timeout.
        # Two enqueuers at once insert in the same order; the second waits on the first's
        # rows of one batch, then leaves them. Each batch commits on its own: an enqueue cut
        # off between two leaves the ids after it to the next one (ON CONFLICT DO NOTHING).
        while after < top:
            with db.transaction(rows_only=True) as conn:
                started = time.monotonic()  # the lock is held: not counting the wait for it
                batch = params | {"after": after, "upto": after + size}
                added += max(int(conn.execute(_ENQUEUE, batch).rowcount), 0)
            after += size
            if sqlite and after < top:
                took = max(time.monotonic() - started, 1e-4)
                # Never under the first batch's size: a store whose every commit is slow
                # (a slow disk) would otherwise go down to one id a transaction.
                size = max(
                    first,
                    min(
                        _ENQUEUE_MOST * ENQUEUE_BATCH, 2 * size, round(size * _ENQUEUE_HOLD / took)
                    ),
                )
                time.sleep(_ENQUEUE_PAUSE)  # the write lock is free: a waiting writer's turn
        if db.dialect == "postgresql" and added >= _ANALYZE_AFTER:
            # The day's rows are new to the planner's statistics until autovacuum samples
            # them (a minute or more): meanwhile it costs the claim as a few rows, and
            # bitmap-scans and sorts the whole day for each batch (1.4 s a claim at 300,000
            # rows; 13 ms once analysed). See docs/performance.md.
            with db.transaction(rows_only=True) as conn:
                conn.execute("ANALYZE deliveries")
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc
    return added


def claim(
    db: Database,
    *,
    day: date,
    owner: str,
    now: datetime,
    lease: float,
    limit: int,
    max_attempts: int,
    confirmed_by: datetime | None = None,
) -> list[Recipient]:
    """Lease up to `limit` owed, unleased recipients of `day` to `owner` for `lease` seconds.

    One write transaction; the rows are `sending` once it commits. Returns them
    in subscriber order.
    """
    params = _claim_params(day, owner, now, lease, limit, max_attempts, confirmed_by)
    try:
        with db.transaction(rows_only=True) as conn:
            rows = conn.execute(_CLAIM[db.dialect], params).fetchall()
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc
    return _recipients(rows)


def _claim_params(
    day: date,
    owner: str,
    now: datetime,
    lease: float,
    limit: int,
    max_attempts: int,
    confirmed_by: datetime | None,
) -> dict[str, Any]:
    return {
        "day": day.isoformat(),
        "owner": owner,
        "until": lease_stamp(now + timedelta(seconds=lease)),
        "at": lease_stamp(now),
        "now": _iso(now),
        "run_like": run_of(owner) + "/%",
        "limit": limit,
        "max_attempts": max_attempts,
        "confirmed_by": _cutoff(confirmed_by),
    }


def _recipients(rows: Iterable[Any]) -> list[Recipient]:
    """Claimed rows as recipients, in subscriber order."""
    found = [
        Recipient(
            int(r[0]), str(r[2]), str(r[3]), int(r[1]), bytes(r[4]), _refused(r[5]), bool(r[6])
        )
        for r in rows
    ]
    return sorted(found, key=lambda r: r.subscriber_id)


def _refused(reply: str | None) -> bool:
    """Whether an owed row's reply is a refusal given back (a 5xx: real ones are final, and
    every other failure that leaves attempts to spare is a 4xx, or no reply at all)."""
    return bool(reply) and str(reply).startswith("5")


def renew(db: Database, *, day: date, owner: str, now: datetime, lease: float) -> set[int]:
    """Extend `owner`'s lease on its rows of `day`; return the ids it still holds (of
    subscribers still confirmed)."""
    params = {
        "day": day.isoformat(),
        "owner": owner,
        "until": lease_stamp(now + timedelta(seconds=lease)),
    }
    try:
        rows = _one_statement(db, _RENEW[db.dialect], params, fetch=True)
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc
    return {int(r[0]) for r in rows}


def still_held(db: Database, *, day: date, owner: str, subscriber_id: int) -> bool:
    """Whether `owner` still holds `subscriber_id`'s row of `day`, its subscriber confirmed."""
    params = {"day": day.isoformat(), "owner": owner, "id": subscriber_id}
    try:
        return db.conn.execute(_STILL_HELD, params).fetchone() is not None
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc


def release(db: Database, *, day: date, owner: str) -> None:
    """Give back the rows of `day` that `owner` claimed and never started."""
    try:
        _one_statement(db, _RELEASE[db.dialect], {"day": day.isoformat(), "owner": owner})
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc


def park(db: Database, *, day: date, owner: str, subscriber_ids: Sequence[int]) -> None:
    """Keep `owner`'s deferred rows it will not retry this run from every worker of it (no
    lease, so none waits for them either)."""
    _each(db, _PARK, day=day, owner=owner, subscriber_ids=subscriber_ids)


def unpark(db: Database, *, day: date, owner: str, subscriber_ids: Sequence[int]) -> None:
    """Give back `owner`'s deferred rows (parked or leased): owed again, no attempt used."""
    _each(db, _UNPARK, day=day, owner=owner, subscriber_ids=subscriber_ids)


def unpark_run(db: Database, *, days: Sequence[date], run: str) -> int:
    """Give back the rows of `days` that the workers of `run` parked and never ended: owed
    again, to any worker (of `run` too), with no attempt used. Only once every worker of
    `run` has ended (a live one's parked rows are its own to end). Returns how many."""
    given = 0
    try:
        with db.transaction(rows_only=True) as conn:
            for day in days:
                params = {"day": day.isoformat(), "run_like": run + "/%"}
                given += max(int(conn.execute(_UNPARK_RUN, params).rowcount), 0)
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc
    return given


def _each(
    db: Database,
    sql: str,
    *,
    day: date,
    owner: str,
    subscriber_ids: Sequence[int],
    now: datetime | None = None,
) -> None:
    """Run `sql` once per id of `subscriber_ids` (`:day`, `:id`, `:owner`, and `:now` when
    given), all in one committed transaction."""
    if not subscriber_ids:
        return
    common: dict[str, object] = {"day": day.isoformat(), "owner": owner}
    if now is not None:
        common["now"] = _iso(now)
    try:
        with db.transaction(rows_only=True) as conn:
            conn.executemany(sql, ({**common, "id": i} for i in subscriber_ids))
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc


def mark_in_doubt(
    db: Database,
    *,
    day: date,
    subscriber_id: int,
    owner: str,
    now: datetime,
    max_attempts: int,
    reply: str = "",
) -> bool:
    """Leave a message whose reply never came to the next run (no worker of this one).

    It counts as one of the recipient's `max_attempts` runs: a server that takes the body
    and never answers (or garbles the answer) would otherwise be sent the digest again by
    every run until the catch-up window closed. The last one makes the row `failed` with
    `reply`, as a temporary failure out of attempts: then it returns True.
    """
    params = {
        "day": day.isoformat(),
        "id": subscriber_id,
        "owner": owner,
        "now": _iso(now),
        "max_attempts": max_attempts,
        "reply": reply or "no reply after the message body",
    }
    try:
        rows = _one_statement(db, _MARK_IN_DOUBT, params, fetch=True)
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc
    return bool(rows) and rows[0][0] == "failed"


def charge_taken_over(
    db: Database, *, day: date, subscriber_id: int, owner: str, now: datetime, max_attempts: int
) -> str | None:
    """Count the attempt of the gone worker a row was taken over from (see
    `Recipient.taken_over`), before `owner` starts it. Returns the row's status after:
    'sending' (go on), 'failed' (that was its last attempt), or None when `owner` no
    longer holds it."""
    params = _charge_params(day, subscriber_id, owner, now, max_attempts)
    try:
        rows = _one_statement(db, _CHARGE_TAKEN_OVER, params, fetch=True)
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc
    return str(rows[0][0]) if rows else None


def _charge_params(
    day: date, subscriber_id: int, owner: str, now: datetime, max_attempts: int
) -> dict[str, Any]:
    return {
        "day": day.isoformat(),
        "id": subscriber_id,
        "owner": owner,
        "now": _iso(now),
        "max_attempts": max_attempts,
        "reply": "no reply: the worker sending it was gone (killed, or stalled past its "
        "lease) with it in flight, in each of its runs",
    }


def _one_statement(
    db: Database, sql: str, params: dict[str, Any], *, fetch: bool = False
) -> list[Any]:
    """Run one statement that writes only rows the caller holds, as one transaction.

    On PostgreSQL it goes alone (autocommit), not between a BEGIN and a COMMIT of ours: a
    worker stopped (SIGSTOP, swapped out) between those kept its rows locked, and the
    others' claims (SKIP LOCKED) passed them by until it woke, however long after its lease.
    The statement alone runs to its end on the server whatever the worker does meanwhile.
    """
    if db.dialect == "postgresql" and not db.in_transaction:
        cursor = db.conn.execute(sql, params)
        return list(cursor.fetchall()) if fetch else []
    with db.transaction(rows_only=True) as conn:
        cursor = conn.execute(sql, params)
        return list(cursor.fetchall()) if fetch else []


def next_expiry(
    db: Database,
    *,
    day: date,
    owner: str,
    now: datetime,
    max_attempts: int,
    confirmed_by: datetime | None = None,
) -> datetime | None:
    """When the first live lease that another worker holds on an owed row of `day` runs out;
    `now` when a row was claimable then (a claim at `now` passed it by: locked by another
    worker's claim or renewal); None when neither: nothing left for `owner` to wait for."""
    params = {
        "day": day.isoformat(),
        "owner": owner,
        "at": lease_stamp(now),
        "run_like": run_of(owner) + "/%",
        "max_attempts": max_attempts,
        "confirmed_by": _cutoff(confirmed_by),
    }
    try:
        row = db.conn.execute(_NEXT_EXPIRY, params).fetchone()
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc
    return datetime.fromisoformat(row[0]) if row and row[0] is not None else None


def break_leases(db: Database) -> int:
    """End every lease (SQLite, under the send lock only). Returns how many there were."""
    try:
        with db.transaction() as conn:
            return max(int(conn.execute(_BREAK_LEASES, {"ended": _LEASE_ENDED}).rowcount), 0)
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc

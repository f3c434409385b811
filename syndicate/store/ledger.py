"""Store: the send ledger, one `deliveries` row per (digest day, subscriber).

A row moves `sending -> sent | failed`. `sending` is committed before the
message goes and `sent` only after the server accepted it, so a crash leaves
at most the in-flight messages in doubt; a rerun sends every row that is not
`sent` again (at-least-once).

The queries that say who is owed a digest take `confirmed_by`: when set (a
digest of an earlier day being caught up), only subscribers confirmed at or
before that time count, so a new subscriber is not sent last week's digest.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

from syndicate.errors import StoreError
from syndicate.store import DB_ERRORS, Database, store_error


@dataclass(frozen=True, slots=True)
class Recipient:
    """A confirmed subscriber still owed the day's digest."""

    subscriber_id: int
    email: str
    language: str
    attempts: int  # finished attempts in earlier runs
    token_nonce: bytes  # signed into the unsubscribe token (tokens.make_token)


# Which confirmed subscribers (confirmed by :confirmed_by, when given) are still owed the
# digest of :day: no row, a row a crashed run left in 'sending', or a 'failed' row with
# attempts to spare. Keyset-paged by id.
_OWED_PAGE = """
    SELECT s.id, s.email, s.language, coalesce(d.attempts, 0), s.token_nonce
    FROM subscribers AS s
    LEFT JOIN deliveries AS d ON d.digest_day = :day AND d.subscriber_id = s.id
    WHERE s.status = 'confirmed' AND s.id > :after
      AND (:confirmed_by IS NULL OR s.confirmed_at <= :confirmed_by)
      AND (d.status IS NULL OR d.status = 'sending'
           OR (d.status = 'failed' AND d.attempts < :max_attempts))
    ORDER BY s.id
    LIMIT :limit
"""
# How many confirmed subscribers are owed the digest (the progress bar's total).
_OWED_COUNT = """
    SELECT count(*)
    FROM subscribers AS s
    LEFT JOIN deliveries AS d ON d.digest_day = :day AND d.subscriber_id = s.id
    WHERE s.status = 'confirmed'
      AND (:confirmed_by IS NULL OR s.confirmed_at <= :confirmed_by)
      AND (d.status IS NULL OR d.status = 'sending'
           OR (d.status = 'failed' AND d.attempts < :max_attempts))
"""
# Confirmed subscribers skipped this run: already sent, or out of attempts.
_SKIPPED_COUNT = """
    SELECT count(*)
    FROM subscribers AS s
    JOIN deliveries AS d ON d.digest_day = :day AND d.subscriber_id = s.id
    WHERE s.status = 'confirmed'
      AND (:confirmed_by IS NULL OR s.confirmed_at <= :confirmed_by)
      AND (d.status = 'sent' OR (d.status = 'failed' AND d.attempts >= :max_attempts))
"""
# Claim a recipient before its message goes (committed first: the crash-safety point).
_MARK_SENDING = """
    INSERT INTO deliveries (digest_day, subscriber_id, status, attempts, updated_at)
    VALUES (:day, :id, 'sending', 0, :now)
    ON CONFLICT (digest_day, subscriber_id)
    DO UPDATE SET status = 'sending', updated_at = excluded.updated_at
"""
# The server accepted the message.
_MARK_SENT = """
    UPDATE deliveries SET status = 'sent', attempts = attempts + 1, reply = NULL,
        updated_at = :now
    WHERE digest_day = :day AND subscriber_id = :id
"""
# An accepted message ends a run of permanent refusals: bounce_limit counts them in a row.
_RESET_BOUNCES = """
    UPDATE subscribers SET bounce_count = 0 WHERE id = :id AND bounce_count > 0
"""
# The attempt failed; keep the server's reply.
_MARK_FAILED = """
    UPDATE deliveries SET status = 'failed', attempts = attempts + 1, reply = :reply,
        updated_at = :now
    WHERE digest_day = :day AND subscriber_id = :id
"""
# The server refused the recipient for good: failed, with no attempts left (never retried).
_MARK_REFUSED = """
    UPDATE deliveries SET status = 'failed', reply = :reply, updated_at = :now,
        attempts = CASE WHEN attempts + 1 > :max_attempts THEN attempts + 1 ELSE :max_attempts END
    WHERE digest_day = :day AND subscriber_id = :id
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
        with db.transaction() as conn:
            conn.executemany(
                _MARK_SENDING, ({"day": key, "id": i, "now": stamp} for i in subscriber_ids)
            )
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc


def mark_sent(db: Database, *, day: date, subscriber_id: int, now: datetime) -> None:
    """Record (committed at once) that the server accepted this recipient's message."""
    try:
        with db.transaction() as conn:
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
    try:
        with db.transaction() as conn:
            conn.executemany(
                _MARK_SENT, ({"day": key, "id": i, "now": stamp} for i in subscriber_ids)
            )
            conn.executemany(_RESET_BOUNCES, ({"id": i} for i in subscriber_ids))
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc


def mark_failed(db: Database, *, day: date, subscriber_id: int, reply: str, now: datetime) -> None:
    """Record a failed attempt with the server's reply."""
    params = {"day": day.isoformat(), "id": subscriber_id, "reply": reply[:1000], "now": _iso(now)}
    try:
        with db.transaction() as conn:
            conn.execute(_MARK_FAILED, params)
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc


def mark_refused(
    db: Database, *, day: date, subscriber_id: int, reply: str, max_attempts: int, now: datetime
) -> None:
    """Record a permanent refusal: `failed` with its attempts used up, so no run retries it."""
    params = {
        "day": day.isoformat(),
        "id": subscriber_id,
        "reply": reply[:1000],
        "max_attempts": max_attempts,
        "now": _iso(now),
    }
    try:
        with db.transaction() as conn:
            conn.execute(_MARK_REFUSED, params)
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc


def day_counts(db: Database, *, day: date) -> dict[str, int]:
    """Return the number of ledger rows per status for `day`."""
    try:
        rows = db.conn.execute(_DAY_COUNTS, (day.isoformat(),)).fetchall()
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc
    return {str(status): int(n) for status, n in rows}


def get_delivery(
    db: Database, *, day: date, subscriber_id: int
) -> tuple[str, int, str | None] | None:
    """Return (status, attempts, reply) of one ledger row, or None."""
    try:
        row = db.conn.execute(_SELECT_ROW, (day.isoformat(), subscriber_id)).fetchone()
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc
    return (str(row[0]), int(row[1]), row[2]) if row else None

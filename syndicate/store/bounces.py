"""Store: bounces and complaints read from mail, and the rates they make.

`apply_report` records one bounce or complaint against a subscriber in one
transaction, keyed by the report mail (its Message-ID, else a hash of its
bytes), so the same mail read twice changes nothing. A hard bounce makes a
confirmed or pending subscriber `bounced` (a sign-up that never agreed to anything
still lapses as a pending one: `subscribers.expire_sign_ups`); soft bounces make them `bounced`
once mail.bounce_limit digests in a row bounced softly (a digest sent between
them that did not bounce starts the count again); a complaint makes them
`complained`, whatever their status was.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum

from syndicate.errors import StoreError
from syndicate.store import DB_ERRORS, Database

RATE_DAYS = 30
# Mailbox providers' limits (Gmail and Yahoo sender rules, 2024): complaints must stay
# under 0.3% of delivered mail, better under 0.1%.
COMPLAINT_LIMIT = 0.003
COMPLAINT_TARGET = 0.001
# Hard bounces: the common guidance (not a published provider limit) is under 2%.
BOUNCE_LIMIT = 0.02


class ReportKind(StrEnum):
    HARD = "hard"
    SOFT = "soft"
    COMPLAINT = "complaint"


# Has this report mail been applied before?
_SELECT_REPORT = "SELECT 1 FROM mail_reports WHERE key = ?"
# Remember a report mail as applied.
_INSERT_REPORT = "INSERT INTO mail_reports (key, created_at) VALUES (?, ?)"
# One bounce or complaint, with the digest it was about.
_INSERT_EVENT = """
    INSERT INTO mail_events (subscriber_id, kind, digest_day, detail, created_at)
    VALUES (:id, :kind, :day, :detail, :now)
"""
# A pending row nothing changed since it was stored keeps updated_at as it is when it
# bounces: a sign-up that never agreed to anything still lapses, bounced, when it would have
# (store.subscribers._LAPSED_FORM_ROW), and is not kept for ever.
_BOUNCED_UPDATED_AT = """
    updated_at = CASE WHEN status = 'pending' AND updated_at = created_at THEN updated_at
                      ELSE :now END
"""
# A hard bounce: a subscriber still (to be) mailed is bounced.
_HARD_BOUNCE = f"""
    UPDATE subscribers SET status = 'bounced', bounced_at = :now, {_BOUNCED_UPDATED_AT}
    WHERE id = :id AND status IN ('confirmed', 'pending')
"""  # noqa: S608
# A hard bounce of a confirmation mail: only the pending sign-up it asked to confirm is
# bounced (one who confirmed since proved the address works; their digests' bounces count).
_HARD_BOUNCE_PENDING = f"""
    UPDATE subscribers SET status = 'bounced', bounced_at = :now, {_BOUNCED_UPDATED_AT}
    WHERE id = :id AND status = 'pending'
"""  # noqa: S608
# Soft bounces: a confirmed subscriber is bounced.
_SOFT_LIMIT = """
    UPDATE subscribers SET status = 'bounced', bounced_at = :now, updated_at = :now
    WHERE id = :id AND status = 'confirmed'
"""
# A complaint: never mailed again, whatever the status was.
_COMPLAIN = """
    UPDATE subscribers SET status = 'complained', complained_at = :now, updated_at = :now
    WHERE id = :id AND status != 'complained'
"""
# Soft bounces in a row: the digests that bounced softly after the last digest before the
# latest soft bounce that was sent and did not bounce. Order-independent: reports of
# earlier digests may arrive after later ones.
_SOFT_STREAK = """
    WITH bad AS (
        SELECT DISTINCT digest_day AS day FROM mail_events
        WHERE subscriber_id = :id AND kind = 'soft' AND digest_day IS NOT NULL
    ),
    good AS (
        SELECT max(d.digest_day) AS day FROM deliveries AS d
        WHERE d.subscriber_id = :id AND d.status = 'sent'
          AND d.digest_day < (SELECT max(day) FROM bad)
          AND d.digest_day NOT IN (SELECT day FROM bad)
    )
    SELECT count(*) FROM bad WHERE day > coalesce((SELECT day FROM good), '')
"""
# The last digest the ledger says was sent to a subscriber (a bounce without a day).
_LAST_SENT_DAY = """
    SELECT max(digest_day) FROM deliveries WHERE subscriber_id = ? AND status = 'sent'
"""
# A rate's numerator counts the messages its denominator counts: the ledger's `sent` rows
# (digests, one per subscriber and day). A report counts when it is about one of them (its
# digest day and subscriber), each message once a kind however many reports name it; a
# confirmation mail's (no digest day), or one about a digest the span does not count, is in
# no rate. Reports are read after their message went, so only those read in the span are
# looked at.
# Messages accepted since a time (the ledger's `sent` rows are stamped when accepted).
_SENT_SINCE = "SELECT count(*) FROM deliveries WHERE status = 'sent' AND updated_at >= ?"
# Of those messages, the ones that bounced or drew a complaint, per kind.
_EVENTS_SINCE = """
    SELECT kind, count(*) FROM (
        SELECT DISTINCT e.kind, e.subscriber_id, e.digest_day
        FROM mail_events AS e
        JOIN deliveries AS d ON d.digest_day = e.digest_day AND d.subscriber_id = e.subscriber_id
        WHERE e.created_at >= :since AND d.status = 'sent' AND d.updated_at >= :since
    ) AS messages
    GROUP BY kind
"""
# Reports read since a time about mail none of those messages is: confirmation mails, and
# digests accepted before the span (or retired with `digest --retire`).
_OTHER_EVENTS_SINCE = """
    SELECT kind, count(*) FROM mail_events AS e
    WHERE e.created_at >= :since AND NOT EXISTS (
        SELECT 1 FROM deliveries AS d
        WHERE d.digest_day = e.digest_day AND d.subscriber_id = e.subscriber_id
          AND d.status = 'sent' AND d.updated_at >= :since
    )
    GROUP BY kind
"""
# The latest digest that was sent to anyone.
_LAST_DIGEST = "SELECT max(digest_day) FROM deliveries WHERE status = 'sent'"
# Messages of one digest accepted.
_SENT_OF_DAY = "SELECT count(*) FROM deliveries WHERE status = 'sent' AND digest_day = ?"
# Of those messages, the ones that bounced or drew a complaint, per kind.
_EVENTS_OF_DAY = """
    SELECT e.kind, count(DISTINCT e.subscriber_id)
    FROM mail_events AS e
    JOIN deliveries AS d ON d.digest_day = e.digest_day AND d.subscriber_id = e.subscriber_id
    WHERE e.digest_day = ? AND d.status = 'sent'
    GROUP BY e.kind
"""


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def _fail(db: Database, exc: Exception) -> StoreError:
    return StoreError(f"{db.path}: bounce query failed: {exc}.")


def is_applied(db: Database, key: str) -> bool:
    """Tell whether the report mail with this key was applied before."""
    try:
        return db.conn.execute(_SELECT_REPORT, (key,)).fetchone() is not None
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc


def last_sent_day(db: Database, subscriber_id: int) -> date | None:
    """Return the day of the last digest sent to a subscriber, or None."""
    try:
        row = db.conn.execute(_LAST_SENT_DAY, (subscriber_id,)).fetchone()
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc
    return date.fromisoformat(row[0]) if row and row[0] else None


def apply_report(
    db: Database,
    *,
    key: str,
    subscriber_id: int,
    kind: ReportKind,
    day: date | None,
    detail: str,
    bounce_limit: int,
    now: datetime,
    confirmation: bool = False,
) -> bool | None:
    """Record one bounce or complaint; return whether it changed the subscriber's status.

    Returns None when the report mail (`key`) was applied before: nothing changes. A hard
    bounce of a confirmation mail (`confirmation`) bounces only a pending subscriber.
    """
    params = {
        "id": subscriber_id,
        "kind": str(kind),
        "day": day.isoformat() if day else None,
        "detail": detail[:200],
        "now": _iso(now),
    }
    try:
        with db.transaction() as conn:
            if conn.execute(_SELECT_REPORT, (key,)).fetchone() is not None:
                return None
            conn.execute(_INSERT_REPORT, (key, params["now"]))
            conn.execute(_INSERT_EVENT, params)
            if kind is ReportKind.HARD:
                hard = _HARD_BOUNCE_PENDING if confirmation else _HARD_BOUNCE
                changed = conn.execute(hard, params).rowcount
            elif kind is ReportKind.COMPLAINT:
                changed = conn.execute(_COMPLAIN, params).rowcount
            else:
                streak = int(conn.execute(_SOFT_STREAK, {"id": subscriber_id}).fetchone()[0])
                changed = 0
                if streak >= max(bounce_limit, 1):
                    changed = conn.execute(_SOFT_LIMIT, params).rowcount
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc
    return bool(changed > 0)


@dataclass(frozen=True, slots=True)
class Rates:
    """Messages sent, hard bounces and complaints over a span (30 days, or one digest)."""

    sent: int
    hard: int
    complaints: int

    @property
    def bounce_rate(self) -> float:
        return self.hard / self.sent if self.sent else 0.0

    @property
    def complaint_rate(self) -> float:
        return self.complaints / self.sent if self.sent else 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "sent": self.sent,
            "hard_bounces": self.hard,
            "complaints": self.complaints,
            "bounce_rate": round(self.bounce_rate, 6),
            "complaint_rate": round(self.complaint_rate, 6),
        }


def recent_rates(db: Database, *, now: datetime, days: int = RATE_DAYS) -> Rates:
    """Return the rates of the last `days` days: the messages accepted, and of those the
    ones that bounced hard or drew a complaint (by the reports read in the span)."""
    since = _iso(now - timedelta(days=days))
    try:
        sent = int(db.conn.execute(_SENT_SINCE, (since,)).fetchone()[0])
        kinds = dict(db.conn.execute(_EVENTS_SINCE, {"since": since}).fetchall())
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc
    return Rates(sent, int(kinds.get("hard", 0)), int(kinds.get("complaint", 0)))


def other_reports(db: Database, *, now: datetime, days: int = RATE_DAYS) -> tuple[int, int]:
    """Return the hard bounces and complaints read in the last `days` days that are in no
    rate: about confirmation mails, or digests accepted before the span or retired."""
    since = _iso(now - timedelta(days=days))
    try:
        kinds = dict(db.conn.execute(_OTHER_EVENTS_SINCE, {"since": since}).fetchall())
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc
    return int(kinds.get("hard", 0)), int(kinds.get("complaint", 0))


def last_digest_rates(db: Database) -> tuple[date | None, Rates]:
    """Return the latest digest sent to anyone, and its rates (reports about it)."""
    try:
        row = db.conn.execute(_LAST_DIGEST).fetchone()
        if not row or not row[0]:
            return None, Rates(0, 0, 0)
        day = str(row[0])
        sent = int(db.conn.execute(_SENT_OF_DAY, (day,)).fetchone()[0])
        kinds = dict(db.conn.execute(_EVENTS_OF_DAY, (day,)).fetchall())
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc
    rates = Rates(sent, int(kinds.get("hard", 0)), int(kinds.get("complaint", 0)))
    return date.fromisoformat(day), rates


def complaint_warning(rates: Rates) -> str | None:
    """Return the one-line warning `send` prints when complaints pass the providers' limit."""
    if rates.complaint_rate <= COMPLAINT_LIMIT:
        return None
    return (
        f"spam complaints over the last {RATE_DAYS} days are {rates.complaint_rate:.2%} of "
        f"{rates.sent} messages sent, above the 0.3% mailbox providers allow (keep it under "
        "0.1%). Check who is on the list and how they signed up."
    )

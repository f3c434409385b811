"""Store: the digests table and the articles' digest marks. SQL only; model objects out."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime

from syndicate.errors import StoreError
from syndicate.model import MESSAGE_KEY, Article, DigestPlan
from syndicate.store import DB_ERRORS, Database, store_error
from syndicate.store.articles import decode_article

log = logging.getLogger(__name__)

# Articles no digest has carried yet, one batch after the id `:last`.
SELECT_CANDIDATES = """
    SELECT id, record, body, first_seen_at FROM articles
    WHERE digest_day IS NULL AND id > :last
    ORDER BY id LIMIT :n
"""
# The newest known publish time in the whole store (published_at is UTC ISO text).
SELECT_NEWEST_PUBLISHED = "SELECT max(published_at) FROM articles WHERE published_at IS NOT NULL"
# The same of the articles a dump on disk still gives (the index's and the feeds' articles).
SELECT_NEWEST_LIVE_PUBLISHED = """
    SELECT max(published_at) FROM articles
    WHERE published_at IS NOT NULL AND precision <> 'unknown'
      AND id IN (SELECT article_id FROM dumps WHERE article_id IS NOT NULL)
"""
# One day's digest row.
SELECT_DIGEST = "SELECT article_ids, more, message_key FROM digests WHERE day = :day"
# The stored record of one article.
SELECT_ARTICLE = "SELECT record, body FROM articles WHERE id = :id"
# Articles that a dump on disk still gives (build keeps `dumps` in step with the files):
# the articles that have pages.
SELECT_LIVE_ARTICLE_IDS = "SELECT DISTINCT article_id FROM dumps WHERE article_id IS NOT NULL"
# Record a day's digest; the day is the primary key, so a second one is refused.
INSERT_DIGEST = """
    INSERT INTO digests (day, created_at, article_ids, more, message_key)
    VALUES (:day, :created_at, :article_ids, :more, :message_key)
    ON CONFLICT (day) DO NOTHING
"""
# Mark an article as carried by the digest of :day (never moves it to another day).
MARK_ARTICLE = "UPDATE articles SET digest_day = :day WHERE id = :id AND digest_day IS NULL"
# The day of the newest digest made before :before (days are ISO text: text order is day
# order).
# Digests of days before :before that `send` has not closed yet, oldest first.
SELECT_OPEN_DIGESTS = """
    SELECT day, created_at FROM digests
    WHERE closed_at IS NULL AND day < :before
    ORDER BY day
"""
# Digests of days after :after and before :before, oldest first (those dated after today).
SELECT_DIGESTS_BETWEEN = """
    SELECT day, created_at FROM digests
    WHERE day > :after AND day < :before
    ORDER BY day
"""
# Retire a digest: its ledger rows first (they refer to it), then the digest itself. Its
# articles keep their mark: they went out in it.
DELETE_DELIVERIES = "DELETE FROM deliveries WHERE digest_day = :day"
DELETE_DIGEST = "DELETE FROM digests WHERE day = :day"
# Close a digest: nobody is owed it any more, or it was given up.
CLOSE_DIGEST = "UPDATE digests SET closed_at = :now WHERE day = :day AND closed_at IS NULL"


@dataclass(frozen=True, slots=True)
class StoredDigest:
    """A digest row: its day and when it was created (the cutoff for catching it up)."""

    day: date
    created_at: datetime


def _utc_text(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def _parse_time(value: str, *, where: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise StoreError(f"{where}: time {value!r} is not ISO 8601.") from exc
    if parsed.tzinfo is None:  # written as UTC by every writer; be lenient on reading
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def _article(record_json: str, body: str | None, *, where: str) -> Article:
    try:
        return decode_article(record_json, body)
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(
            f"{where}: the stored article record is damaged: {exc!r}.",
            hint="Run `syndicate build` to store the articles again.",
        ) from exc


def _article_or_none(record_json: str, body: str | None, *, where: str) -> Article | None:
    """The stored article, or None (with one warning) when its record is damaged: one bad
    article never stops a digest."""
    try:
        return _article(record_json, body, where=where)
    except StoreError as exc:
        log.warning("%s", exc)
        return None


def iter_candidates(db: Database, *, batch: int = 500) -> Iterator[tuple[Article, datetime]]:
    """Yield (article, first_seen_at) for every article not yet in a digest, by id.

    Reads `batch` rows at a time, so memory stays flat however large the store.
    """
    last = ""
    while True:
        try:
            rows = db.conn.execute(SELECT_CANDIDATES, {"last": last, "n": batch}).fetchall()
        except DB_ERRORS as exc:
            raise store_error(db.path, "cannot read articles", exc) from exc
        for article_id, record_json, body, first_seen_at in rows:
            where = f"{db.path}: article {article_id!r}"
            article = _article_or_none(record_json, body, where=where)
            if article is not None:
                yield article, _parse_time(first_seen_at, where=where)
        if len(rows) < batch:
            return
        last = rows[-1][0]


def newest_published(db: Database, *, live: bool = False) -> datetime | None:
    """The newest publish time of any article in the store, or None when none is dated.

    With `live`, of the articles a dump on disk still gives (`live_article_ids`): those
    the index and the feeds order by (model.newest_published).
    """
    try:
        row = db.conn.execute(
            SELECT_NEWEST_LIVE_PUBLISHED if live else SELECT_NEWEST_PUBLISHED
        ).fetchone()
    except DB_ERRORS as exc:
        raise store_error(db.path, "cannot read articles", exc) from exc
    if row is None or row[0] is None:
        return None
    return _parse_time(row[0], where=f"{db.path}: articles.published_at")


def live_article_ids(db: Database) -> set[str]:
    """The ids of the articles a dump still on disk gives: the ones `build` makes pages for."""
    try:
        return {row[0] for row in db.conn.execute(SELECT_LIVE_ARTICLE_IDS)}
    except DB_ERRORS as exc:
        raise store_error(db.path, "cannot read the dump cache", exc) from exc


def get_digest(db: Database, day: date) -> DigestPlan | None:
    """The digest stored for `day`, with its articles in digest order, or None."""
    try:
        row = db.conn.execute(SELECT_DIGEST, {"day": day.isoformat()}).fetchone()
        if row is None:
            return None
        ids = json.loads(row[0])
        articles = []
        for article_id in ids:
            found = db.conn.execute(SELECT_ARTICLE, {"id": article_id}).fetchone()
            if found is not None:
                where = f"{db.path}: article {article_id!r}"
                article = _article_or_none(found[0], found[1], where=where)
                if article is not None:
                    articles.append(article)
        key = None if row[2] is None else str(row[2])
        if key is not None and not MESSAGE_KEY.fullmatch(key):
            raise ValueError(f"its message key {key!r} is not lowercase hex")
    except DB_ERRORS as exc:
        raise store_error(db.path, f"cannot read the digest of {day}", exc) from exc
    except ValueError as exc:
        raise StoreError(f"{db.path}: the digest of {day} is damaged: {exc}.") from exc
    return DigestPlan(day=day, articles=tuple(articles), more=int(row[1]), message_key=key)


def create_digest(
    db: Database, plan: DigestPlan, *, now: datetime, message_key: str | None = None
) -> None:
    """Store `plan` as its day's digest and mark its articles, in one transaction.

    A day has one digest: when one is already stored, this changes nothing. `message_key`
    is the digest's own part of its Message-IDs (`DigestPlan.message_key`).
    """
    day = plan.day.isoformat()
    with db.transaction() as conn:
        try:
            inserted = conn.execute(
                INSERT_DIGEST,
                {
                    "day": day,
                    "created_at": _utc_text(now),
                    "article_ids": json.dumps([a.id for a in plan.articles]),
                    "more": plan.more,
                    "message_key": message_key,
                },
            ).rowcount
            if inserted:
                conn.executemany(MARK_ARTICLE, [{"day": day, "id": a.id} for a in plan.articles])
        except DB_ERRORS as exc:
            raise store_error(db.path, f"cannot store the digest of {day}", exc) from exc


def open_digests(db: Database, *, before: date) -> list[StoredDigest]:
    """The digests of days before `before` not closed yet, oldest first.

    Few: `send` closes each one a later day finds finished or too old.
    """
    return _stored(db, SELECT_OPEN_DIGESTS, {"before": before.isoformat()})


def digests_between(db: Database, *, after: date, before: date) -> list[StoredDigest]:
    """The digests of days after `after` and before `before`, oldest first."""
    return _stored(
        db, SELECT_DIGESTS_BETWEEN, {"after": after.isoformat(), "before": before.isoformat()}
    )


def delete_digest(db: Database, day: date) -> int | None:
    """Remove the digest of `day` and its ledger rows, in one transaction; its articles keep
    their mark. Returns how many ledger rows went, or None when no digest of `day` is stored.
    """
    key = {"day": day.isoformat()}
    try:
        with db.transaction() as conn:
            rows = max(int(conn.execute(DELETE_DELIVERIES, key).rowcount), 0)
            if not conn.execute(DELETE_DIGEST, key).rowcount:
                return None
    except DB_ERRORS as exc:
        raise store_error(db.path, f"cannot remove the digest of {day}", exc) from exc
    return rows


def _stored(db: Database, sql: str, params: dict[str, str]) -> list[StoredDigest]:
    try:
        rows = db.conn.execute(sql, params).fetchall()
    except DB_ERRORS as exc:
        raise store_error(db.path, "cannot read the digests", exc) from exc
    where = f"{db.path}: digests"
    try:
        return [
            StoredDigest(date.fromisoformat(day), _parse_time(created_at, where=where))
            for day, created_at in rows
        ]
    except ValueError as exc:
        raise StoreError(f"{where}: a stored day is damaged: {exc}.") from exc


def close_digest(db: Database, day: date, *, now: datetime) -> None:
    """Mark the digest of `day` closed, so later runs no longer look for recipients owed it."""
    try:
        with db.transaction() as conn:
            conn.execute(CLOSE_DIGEST, {"day": day.isoformat(), "now": _utc_text(now)})
    except DB_ERRORS as exc:
        raise store_error(db.path, f"cannot close the digest of {day}", exc) from exc

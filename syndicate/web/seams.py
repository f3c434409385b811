"""Web: the app's seams (the clock, the store operations it needs) and the SQLite store."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from typing import Protocol

from syndicate.config import Settings
from syndicate.errors import StoreUnavailableError
from syndicate.model import Subscriber
from syndicate.store import DB_ERRORS, Database, meta, open_database
from syndicate.store import limits as store_limits
from syndicate.store import subscribers as store_subscribers
from syndicate.web.guard import RateWindow


class Clock(Protocol):
    """Gives the current time, tz-aware UTC."""

    def __call__(self) -> datetime: ...


class SubscriptionStore(Protocol):
    """The store operations the web app needs.

    `find` and `check` only read: the app calls them on a thread of their own, at the
    same time as the writing calls (so a read never queues behind a write that waits
    for the database's write lock). The others are called one at a time.
    """

    def read_secret(self) -> bytes:
        """The signing secret for tokens."""
        ...

    def sign_up(self, email: str, *, language: str, now: datetime) -> tuple[Subscriber, bool]:
        """Store a sign-up as pending; True when a confirmation mail should go out now."""
        ...

    def count_signup(self, network: str, *, now: datetime) -> tuple[int, int]:
        """Count a sign-up request of `network` (web.guard.rate_limit_key) at `now`.

        Returns its count in the previous rate-limit window and in this one (this request
        included), as every process sharing the store counted them.
        """
        ...

    def find(self, subscriber_id: int) -> Subscriber | None: ...

    def confirm(
        self, subscriber_id: int, *, now: datetime, language: str | None = None
    ) -> None: ...

    def unsubscribe(self, subscriber_id: int, *, now: datetime) -> None: ...

    def check(self) -> None:
        """Raise StoreError when the database is not usable."""
        ...


# Counts are swept only this long after their window: each server names windows by its own
# clock, and one running ahead swept the windows another was still counting in (from a
# minute of skew on), which gave a client there a fresh allowance.
SWEEP_AFTER = timedelta(minutes=10)


def utc_now() -> datetime:
    return datetime.now(UTC)


class DatabaseStore:
    """The store behind the web app, SQLite or PostgreSQL (implements SubscriptionStore).

    Writes go through `db`, reads (`find`, `check`) through `reader`, a second
    connection to the same file (`open_database(..., read_only=True)`): under WAL a
    reader neither waits for the write lock nor holds it. The app uses each from a
    thread of its own, one call at a time: open both with `any_thread=True`.
    """

    def __init__(self, settings: Settings, db: Database, reader: Database) -> None:
        self.settings = settings
        self.db = db
        self.reader = reader
        self._swept: datetime | None = None  # the rate-limit window last swept
        # The connections (`db`, `reader`) the database server dropped: opened anew on use.
        self._lost: set[Database] = set()
        # One call at a time on each connection: `find` runs on the writing thread too (the
        # unsubscribe endpoint), and a connection must not be found gone, closed and
        # replaced while the other thread runs a statement on it.
        self._guards = {db: threading.Lock(), reader: threading.Lock()}

    def read_secret(self) -> bytes:
        with self._using(self.db) as db:
            return meta.get_secret(self.settings, db)

    def sign_up(self, email: str, *, language: str, now: datetime) -> tuple[Subscriber, bool]:
        with self._using(self.db) as db:
            return store_subscribers.signup(
                db,
                email,
                language=language,
                now=now,
                resend_after=timedelta(minutes=self.settings.subscribe.resend_minutes),
            )

    def count_signup(self, network: str, *, now: datetime) -> tuple[int, int]:
        window = RateWindow.at(now)
        # Once per window, this process sweeps the counts of windows that are over (any
        # process may: a sweep another one did already finds nothing).
        sweep = window.previous - SWEEP_AFTER if window.start != self._swept else None
        with self._using(self.db) as db:
            counts = store_limits.count_request(
                db,
                network,
                window_at=window.start,
                previous_at=window.previous,
                sweep_before=sweep,
            )
        self._swept = window.start
        return counts

    def find(self, subscriber_id: int) -> Subscriber | None:
        with self._using(self.reader) as reader:
            return store_subscribers.get_by_id(reader, subscriber_id)

    def confirm(self, subscriber_id: int, *, now: datetime, language: str | None = None) -> None:
        with self._using(self.db) as db:
            store_subscribers.confirm(db, subscriber_id, now=now, language=language)

    def unsubscribe(self, subscriber_id: int, *, now: datetime) -> None:
        with self._using(self.db) as db:
            store_subscribers.unsubscribe(db, subscriber_id, now=now)

    def check(self) -> None:
        # A primary-key lookup: cheap, and it fails (StoreError) when the file is unusable.
        with self._using(self.reader) as reader:
            store_subscribers.get_by_id(reader, 0)

    @contextmanager
    def _using(self, db: Database) -> Iterator[Database]:
        """Run a call on `db` (the writer or the reader), on a new connection to the same
        store when the server dropped the last one (a PostgreSQL restart or fail-over).

        The call that finds the server gone raises StoreUnavailableError (503): a write
        is not tried again, since it may have committed. The next call on that
        connection connects anew, so `serve` outlives the restart.
        """
        # A connection the server ended while it was idle (a restart during which only
        # the other one was used) is opened anew before the call, not found gone by it.
        with self._guards[db]:
            if db in self._lost or (db.dialect == "postgresql" and db.conn.is_dropped()):
                fresh = open_database(
                    self.settings.paths.database,
                    url=self.settings.store.url,
                    any_thread=True,
                    busy_timeout=self.settings.store.busy_timeout,
                    reply_timeout=self.settings.store.reply_timeout,
                    read_only=db is self.reader,
                    url_name=self.settings.store_url_from,
                )
                with suppress(*DB_ERRORS):
                    db.conn.close()
                db.conn = fresh.conn  # the caller's Database, which it closes, now holds it
                self._lost.discard(db)
            try:
                yield db
            except StoreUnavailableError:
                self._lost.add(db)
                raise

"""The send ledger as a work queue: enqueue, claim, renew, release and fencing, on a real
SQLite file, with the clock passed in (no waiting for a lease to run out)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from syndicate.errors import StoreBusyError, StoreError, StoreUnavailableError
from syndicate.send.deliver import MarkCommitter
from syndicate.store import Database, PgDatabase, ledger, open_database
from syndicate.store.pg_schema import PG_FIRST_VERSION, PG_MIGRATIONS
from syndicate.store.schema import MIGRATIONS
from syndicate.store.subscribers import add_subscriber, signup, unsubscribe
from tests.plugins.postgres import ENV_STORE_URL, open_store, start_cluster

pytestmark = pytest.mark.usefixtures("store")

DAY = date(2024, 11, 1)
T0 = datetime(2024, 11, 1, 6, 0, tzinfo=UTC)
LEASE = 30.0


def _store(tmp_path: Path, subscribers: int) -> Database:
    db = open_store(tmp_path / "queue.db")
    with db.transaction() as conn:
        conn.execute(
            "INSERT INTO digests (day, created_at, article_ids) VALUES (?, ?, '[]')",
            (DAY.isoformat(), T0.isoformat()),
        )
    for i in range(subscribers):
        add_subscriber(db, f"u{i}@example.org", now=T0 - timedelta(days=1))
    return db


def _claim(db: Database, owner: str, at: datetime, limit: int = 100) -> list[int]:
    found = ledger.claim(db, day=DAY, owner=owner, now=at, lease=LEASE, limit=limit, max_attempts=5)
    return [r.subscriber_id for r in found]


def test_enqueue_is_idempotent_and_owes_only_confirmed_subscribers(tmp_path: Path) -> None:
    with _store(tmp_path, 4) as db:
        unsubscribe(db, 4, now=T0)
        assert ledger.enqueue_owed(db, day=DAY, now=T0) == 3
        assert ledger.enqueue_owed(db, day=DAY, now=T0) == 0
        assert ledger.day_counts(db, day=DAY) == {"sending": 3}
        assert ledger.count_owed(db, day=DAY, max_attempts=5) == 3


def test_claims_split_the_queue_and_a_live_lease_is_never_claimed_twice(tmp_path: Path) -> None:
    with _store(tmp_path, 10) as db:
        ledger.enqueue_owed(db, day=DAY, now=T0)
        first = _claim(db, "run1/1", T0, limit=4)
        second = _claim(db, "run1/2", T0, limit=100)
        assert first == [1, 2, 3, 4]
        assert second == [5, 6, 7, 8, 9, 10]
        assert _claim(db, "run1/3", T0 + timedelta(seconds=LEASE - 1)) == []
        # Worker 1 still holds its rows, and says so when it renews.
        assert ledger.renew(db, day=DAY, owner="run1/1", now=T0, lease=LEASE) == {1, 2, 3, 4}
        # The others wait for the first live lease held by someone else to run out.
        expiry = ledger.next_expiry(db, day=DAY, owner="run1/2", now=T0, max_attempts=5)
        assert expiry == T0 + timedelta(seconds=LEASE)


def test_a_lapsed_lease_is_taken_over_and_the_old_owner_is_fenced_off(tmp_path: Path) -> None:
    with _store(tmp_path, 3) as db:
        ledger.enqueue_owed(db, day=DAY, now=T0)
        assert _claim(db, "run1/1", T0) == [1, 2, 3]
        ledger.mark_sent(db, day=DAY, subscriber_id=1, now=T0)
        # Worker 1 stalls past its lease; worker 2 takes the rest over.
        later = T0 + timedelta(seconds=LEASE + 1)
        assert _claim(db, "run1/2", later) == [2, 3]
        # Worker 1 wakes: its renewal says nothing is its own any more ...
        assert ledger.renew(db, day=DAY, owner="run1/1", now=later, lease=LEASE) == set()
        # ... and a failure it records on a row it lost changes nothing.
        ledger.mark_sent(db, day=DAY, subscriber_id=2, now=later)
        ledger.mark_failed(db, day=DAY, subscriber_id=2, reply="451 x", now=later, owner="run1/1")
        ledger.mark_refused(
            db, day=DAY, subscriber_id=3, reply="550 x", max_attempts=5, now=later, owner="run1/1"
        )
        assert ledger.get_delivery(db, day=DAY, subscriber_id=2) == ("sent", 1, None)
        assert ledger.get_delivery(db, day=DAY, subscriber_id=3) == ("sending", 0, None)
        assert ledger.renew(db, day=DAY, owner="run1/2", now=later, lease=LEASE) == {3}


def test_a_message_left_in_doubt_never_unmarks_a_row_another_worker_sent(tmp_path: Path) -> None:
    # run1/1 stalled past its lease with the body at the server; run2/1 took the row over
    # and sent it too. run1/1's 250 came (`sent` is not fenced: the server took it), then
    # run2/1's reply was garbled: in doubt, on its last attempt. The row stays `sent`.
    with _store(tmp_path, 1) as db:
        ledger.enqueue_owed(db, day=DAY, now=T0)
        assert _claim(db, "run1/1", T0) == [1]
        later = T0 + timedelta(seconds=LEASE + 1)
        assert _claim(db, "run2/1", later) == [1]
        ledger.mark_sent(db, day=DAY, subscriber_id=1, now=later)
        gave_up = ledger.mark_in_doubt(
            db, day=DAY, subscriber_id=1, owner="run2/1", now=later, max_attempts=2
        )
        assert gave_up is False
        assert ledger.get_delivery(db, day=DAY, subscriber_id=1) == ("sent", 1, None)


@pytest.mark.parametrize("refusal", ["temporary", "permanent"])
def test_a_failure_never_unmarks_a_row_another_worker_sent(tmp_path: Path, refusal: str) -> None:
    # As above, with the new holder's reply a refusal: the row stays `sent` (a later run
    # would have sent it again).
    with _store(tmp_path, 1) as db:
        ledger.enqueue_owed(db, day=DAY, now=T0)
        assert _claim(db, "run1/1", T0) == [1]
        later = T0 + timedelta(seconds=LEASE + 1)
        assert _claim(db, "run2/1", later) == [1]
        ledger.mark_sent(db, day=DAY, subscriber_id=1, now=later)
        if refusal == "temporary":
            ledger.mark_failed(
                db, day=DAY, subscriber_id=1, reply="451 later", now=later, owner="run2/1"
            )
        else:
            ledger.mark_refused(
                db,
                day=DAY,
                subscriber_id=1,
                reply="550 5.1.1 no such user",
                now=later,
                max_attempts=5,
                owner="run2/1",
            )
        assert ledger.get_delivery(db, day=DAY, subscriber_id=1) == ("sent", 1, None)


def test_a_takeover_is_recorded_in_its_own_column_and_the_row_keeps_the_claim_s_time(
    tmp_path: Path,
) -> None:
    # The flag was smuggled through updated_at, written with microseconds on a takeover
    # (RETURNING cannot show the old row): now `deliveries.taken_over`, set by each claim.
    with _store(tmp_path, 3) as db:
        ledger.enqueue_owed(db, day=DAY, now=T0)
        first = ledger.claim(
            db, day=DAY, owner="run1/1", now=T0, lease=LEASE, limit=5, max_attempts=5
        )
        assert [r.taken_over for r in first] == [False, False, False]
        ledger.unpark(db, day=DAY, owner="run1/1", subscriber_ids=[2, 3])  # given back
        later = T0 + timedelta(seconds=LEASE + 1)
        taken = ledger.claim(
            db, day=DAY, owner="run2/1", now=later, lease=LEASE, limit=5, max_attempts=5
        )
        assert [(r.subscriber_id, r.taken_over) for r in taken] == [
            (1, True),  # its lease ran out while run1/1 held it
            (2, False),  # given back: nobody held it
            (3, False),
        ]
        rows = db.conn.execute(
            "SELECT subscriber_id, taken_over, updated_at FROM deliveries ORDER BY subscriber_id"
        ).fetchall()
        stamp = later.isoformat(timespec="seconds")
        assert [tuple(r) for r in rows] == [(1, 1, stamp), (2, 0, stamp), (3, 0, stamp)]


@pytest.mark.parametrize("give_back", ["release", "unpark", "unmark_failed"])
def test_a_takeover_given_back_before_its_body_keeps_its_mark_for_the_next_run(
    tmp_path: Path, give_back: str
) -> None:
    # run1/1 was killed holding both rows; run1/2 took them over, then gave them back before
    # their body went (a stop: released; a server not taking mail: unparked; a refusal
    # before any accept: unmarked). The give-back cleared the owner, and with it the mark:
    # the next run charged no attempt for run1/1's message that may have been in flight.
    with _store(tmp_path, 2) as db:
        ledger.enqueue_owed(db, day=DAY, now=T0)
        assert _claim(db, "run1/1", T0) == [1, 2]
        later = T0 + timedelta(seconds=LEASE + 1)
        taken = ledger.claim(
            db, day=DAY, owner="run1/2", now=later, lease=LEASE, limit=5, max_attempts=5
        )
        assert [r.taken_over for r in taken] == [True, True]
        if give_back == "release":
            ledger.release(db, day=DAY, owner="run1/2")
        elif give_back == "unpark":
            ledger.park(db, day=DAY, owner="run1/2", subscriber_ids=[1, 2])
            ledger.unpark(db, day=DAY, owner="run1/2", subscriber_ids=[1, 2])
        else:
            for i in (1, 2):
                ledger.mark_failed(
                    db, day=DAY, subscriber_id=i, reply="550 5.7.1 no", now=later, owner="run1/2"
                )
            ledger.unmark_failed(db, day=DAY, subscriber_ids=[1, 2], owner="run1/2", now=later)
        again = ledger.claim(
            db, day=DAY, owner="run2/1", now=later, lease=LEASE, limit=5, max_attempts=5
        )
        assert [(r.subscriber_id, r.taken_over) for r in again] == [(1, True), (2, True)]
        # Charged once: the mark goes with the charge, so no later give-back charges again.
        status = ledger.charge_taken_over(
            db, day=DAY, subscriber_id=1, owner="run2/1", now=later, max_attempts=5
        )
        assert status == "sending"
        ledger.release(db, day=DAY, owner="run2/1")
        last = ledger.claim(
            db, day=DAY, owner="run3/1", now=later, lease=LEASE, limit=5, max_attempts=5
        )
        assert [(r.subscriber_id, r.attempts, r.taken_over) for r in last] == [
            (1, 1, False),
            (2, 0, True),
        ]


def test_rows_a_dead_worker_parked_are_not_counted_in_flight(tmp_path: Path) -> None:
    # run1/1 left one message in doubt and parked two deferred rows past the retry window,
    # then was killed before it ended them. The run's counts took the parked rows (`sending`
    # with no expiry, as a message in doubt) for messages in flight: "3 in flight".
    with _store(tmp_path, 4) as db:
        ledger.enqueue_owed(db, day=DAY, now=T0)
        assert _claim(db, "run1/1", T0) == [1, 2, 3, 4]
        ledger.mark_in_doubt(db, day=DAY, subscriber_id=1, owner="run1/1", now=T0, max_attempts=5)
        ledger.park(db, day=DAY, owner="run1/1", subscriber_ids=[2, 3])
        assert ledger.run_counts(db, days=[DAY], run="run1") == [
            ledger.RunCounts(sent=0, failed=0, bounced=0, in_doubt=1, held=1)
        ]
        # Parked rows are still kept from the run's other workers, and owed to the next run,
        # which takes them as it did (no takeover: their worker had them deferred).
        assert _claim(db, "run1/2", T0) == []
        later = T0 + timedelta(seconds=LEASE + 1)
        taken = ledger.claim(
            db, day=DAY, owner="run2/1", now=later, lease=LEASE, limit=5, max_attempts=5
        )
        assert [(r.subscriber_id, r.taken_over) for r in taken] == [
            (1, False),
            (2, False),
            (3, False),
            (4, True),
        ]
        # Claimed again, a row is no longer parked: left in doubt now, it counts in flight.
        ledger.mark_in_doubt(
            db, day=DAY, subscriber_id=2, owner="run2/1", now=later, max_attempts=5
        )
        ledger.release(db, day=DAY, owner="run2/1")
        assert ledger.run_counts(db, days=[DAY], run="run2") == [
            ledger.RunCounts(sent=0, failed=0, bounced=0, in_doubt=1, held=0)
        ]


_ROWS = (
    "SELECT subscriber_id, status, attempts, lease_owner, parked FROM deliveries"
    " WHERE digest_day = ? ORDER BY subscriber_id"
)


def test_a_runs_parked_rows_go_back_to_its_next_round_and_nothing_else(tmp_path: Path) -> None:
    # `send --workers N --limit M`: a worker killed with rows parked (deferred past the retry
    # window) left them kept from every worker of its run, so the run's next round, sharing
    # what was left of the limit, could not send them. Once the run's workers have all
    # ended they are given back, with no attempt used; nothing else the run did is.
    with _store(tmp_path, 6) as db:
        ledger.enqueue_owed(db, day=DAY, now=T0)
        assert _claim(db, "run1/1", T0, limit=5) == [1, 2, 3, 4, 5]
        assert _claim(db, "run9/1", T0) == [6]  # another run, still going
        ledger.mark_in_doubt(db, day=DAY, subscriber_id=1, owner="run1/1", now=T0, max_attempts=5)
        ledger.mark_failed(
            db, day=DAY, subscriber_id=2, reply="451 4.3.0 later", now=T0, owner="run1/1"
        )
        ledger.mark_sent(db, day=DAY, subscriber_id=3, now=T0)
        ledger.park(db, day=DAY, owner="run1/1", subscriber_ids=[4])
        ledger.park(db, day=DAY, owner="run9/1", subscriber_ids=[6])
        # 5 is still held under the killed worker's lease: taken over once that runs out.
        assert ledger.unpark_run(db, days=[DAY], run="run1") == 1
        assert [tuple(r) for r in db.conn.execute(_ROWS, (DAY.isoformat(),))] == [
            (1, "sending", 1, "run1/1", 0),  # in doubt: its body may have gone
            (2, "failed", 1, "run1/1", 0),
            (3, "sent", 1, "run1/1", 0),
            (4, "sending", 0, None, 0),  # given back, its attempt unused
            (5, "sending", 0, "run1/1", 0),
            (6, "sending", 0, "run9/1", 1),  # another run's own to end
        ]
        # The given-back row is nobody's in the run's counts, in flight least of all.
        assert ledger.run_counts(db, days=[DAY], run="run1") == [
            ledger.RunCounts(sent=1, failed=1, bounced=0, in_doubt=1, held=1)
        ]
        # The run's next round claims it, not as a takeover (it was never in flight); and 6
        # as before: a row another run parked is kept from that run's workers only.
        taken = ledger.claim(
            db, day=DAY, owner="run1/3", now=T0, lease=LEASE, limit=5, max_attempts=5
        )
        assert [(r.subscriber_id, r.attempts, r.taken_over) for r in taken] == [
            (4, 0, False),
            (6, 0, False),
        ]
        assert ledger.unpark_run(db, days=[DAY], run="run1") == 0


def _store_at_step_12(path: Path) -> None:
    """A store at schema step 12 (before `taken_over`), with a row a claim took over (its
    updated_at with microseconds, as that step's claims wrote it) and one it did not."""
    taken, plain = "2024-11-01T06:00:31.000000+00:00", "2024-11-01T06:00:31+00:00"
    until = "2024-11-01T06:01:01.000000+00:00"
    rows: list[tuple[str, tuple[object, ...]]] = [
        (
            "INSERT INTO digests (day, created_at, article_ids) VALUES (?, ?, '[]')",
            ("2024-11-01", "2024-11-01T06:00:00+00:00"),
        ),
        *(
            (
                "INSERT INTO subscribers (email, email_key, language, status, created_at,"
                " updated_at, confirmed_at, token_nonce) VALUES (?, ?, 'en', 'confirmed', ?, ?,"
                " ?, ?)",
                (f"u{i}@example.org", f"u{i}@example.org", plain, plain, plain, bytes(16)),
            )
            for i in (1, 2)
        ),
        *(
            (
                "INSERT INTO deliveries (digest_day, subscriber_id, status, attempts,"
                " updated_at, lease_owner, lease_until) VALUES (?, ?, 'sending', 0, ?, ?, ?)",
                ("2024-11-01", i, stamp, "run2/1", until),
            )
            for i, stamp in ((1, taken), (2, plain))
        ),
    ]
    url = os.environ.get(ENV_STORE_URL)
    if url:
        with psycopg.connect(url, autocommit=True) as pg:
            for version in range(PG_FIRST_VERSION, 13):
                for statement in PG_MIGRATIONS[version]:
                    pg.execute(statement)
            pg.execute("UPDATE syndicate_schema SET version = 12")
            for sql, params in rows:
                pg.execute(sql.replace("?", "%s"), params)
        return
    with closing(sqlite3.connect(path, isolation_level=None)) as lite:
        for step in MIGRATIONS[:12]:
            for statement in step:
                lite.execute(statement)
        for sql, params in rows:
            lite.execute(sql, params)
        lite.execute("PRAGMA user_version = 12")
    path.chmod(0o600)


def test_the_step_adding_taken_over_marks_the_rows_a_claim_had_taken_over(
    tmp_path: Path,
) -> None:
    _store_at_step_12(tmp_path / "old.db")
    with open_store(tmp_path / "old.db") as db:
        assert db.schema_version == len(MIGRATIONS)
        rows = db.conn.execute(
            "SELECT subscriber_id, taken_over FROM deliveries ORDER BY subscriber_id"
        ).fetchall()
        assert [tuple(r) for r in rows] == [(1, 1), (2, 0)]


def test_rows_given_up_in_a_run_wait_for_the_next_run_and_released_rows_do_not(
    tmp_path: Path,
) -> None:
    with _store(tmp_path, 4) as db:
        ledger.enqueue_owed(db, day=DAY, now=T0)
        assert _claim(db, "run1/1", T0) == [1, 2, 3, 4]
        ledger.mark_failed(db, day=DAY, subscriber_id=1, reply="451 later", now=T0, owner="run1/1")
        ledger.mark_in_doubt(db, day=DAY, subscriber_id=2, owner="run1/1", now=T0, max_attempts=5)
        ledger.release(db, day=DAY, owner="run1/1")  # 3 and 4 were never started
        # Another worker of the same run takes only the released rows, at once ...
        assert _claim(db, "run1/2", T0) == [3, 4]
        assert ledger.next_expiry(db, day=DAY, owner="run1/1", now=T0, max_attempts=5) is not None
        # ... and a worker of the next run takes the failed and in-doubt ones.
        later = T0 + timedelta(seconds=LEASE + 1)
        assert _claim(db, "run2/1", later) == [1, 2, 3, 4]
        assert ledger.get_delivery(db, day=DAY, subscriber_id=1) == ("sending", 1, "451 later")


def test_breaking_leases_frees_a_killed_runs_rows(tmp_path: Path) -> None:
    with _store(tmp_path, 2) as db:
        ledger.enqueue_owed(db, day=DAY, now=T0)
        assert _claim(db, "run1/1", T0) == [1, 2]
        assert _claim(db, "run2/1", T0) == []
        assert ledger.break_leases(db) == 2
        assert _claim(db, "run2/1", T0) == [1, 2]


def test_rows_a_claim_passed_by_locked_keep_a_worker_with_nothing_claimed_waiting(
    tmp_path: Path,
) -> None:
    # On PostgreSQL a claim skips the rows another worker has locked (its claim or renewal
    # under way: SKIP LOCKED). Those rows held no live lease yet, so `next_expiry` said
    # there was nothing to wait for, and the worker that claimed nothing ended: when the
    # other one then stopped (a server refusing its session), the rows were left unsent
    # and the run exited 75 with everyone else sent.
    url = os.environ.get(ENV_STORE_URL)
    if not url:
        pytest.skip("on SQLite claims take turns on the one write lock: none is passed by")
    with _store(tmp_path, 3) as db:
        ledger.enqueue_owed(db, day=DAY, now=T0)
        with psycopg.connect(url) as other:  # another worker's claim, mid-transaction
            other.execute(
                "SELECT id FROM deliveries WHERE subscriber_id IN (2, 3) FOR UPDATE"
            ).fetchall()
            assert _claim(db, "run1/1", T0) == [1]
            ledger.mark_sent(db, day=DAY, subscriber_id=1, now=T0)
            assert _claim(db, "run1/1", T0) == []
            assert ledger.next_expiry(db, day=DAY, owner="run1/1", now=T0, max_attempts=5) == T0
            other.rollback()
        assert _claim(db, "run1/1", T0) == [2, 3]
        # Now that this worker holds them, there is nothing left to wait for.
        assert ledger.next_expiry(db, day=DAY, owner="run1/1", now=T0, max_attempts=5) is None


def test_enqueueing_a_long_list_holds_no_sign_up_up(tmp_path: Path) -> None:
    # The enqueue reads every confirmed subscriber: seconds at a few hundred thousand. Under
    # the store-wide write lock, a sign-up waited for it, past store.busy_timeout (503).
    # Here the enqueue is held up on a row another connection is inserting.
    url = os.environ.get(ENV_STORE_URL)
    if not url:
        pytest.skip("on SQLite every write waits for the one writer: that is its design")
    with _store(tmp_path, 3) as db, open_store(tmp_path / "x.db", busy_timeout=1) as web:
        with psycopg.connect(url) as blocker:  # a transaction, left open
            blocker.execute(
                "INSERT INTO deliveries (digest_day, subscriber_id, status, attempts, updated_at)"
                " VALUES (%s, 3, 'sending', 0, %s)",
                (DAY.isoformat(), T0.isoformat()),
            )
            added: list[int] = []
            enqueuer = threading.Thread(
                target=lambda: added.append(ledger.enqueue_owed(db, day=DAY, now=T0))
            )
            enqueuer.start()
            try:
                deadline = time.monotonic() + 10
                while not blocker.execute(  # the enqueue waits on the row, mid-statement
                    "SELECT count(*) FROM pg_locks WHERE NOT granted"
                ).fetchone()[0]:
                    assert time.monotonic() < deadline, "the enqueue never waited"
                    time.sleep(0.01)
                # Stored while the enqueue still waits: had it waited for the enqueue, which
                # cannot end before the blocker does, it would have given up (StoreBusyError).
                signup(web, "new@example.org", language="vi", now=T0, resend_after=timedelta(0))
                assert enqueuer.is_alive()
            finally:
                blocker.rollback()
                enqueuer.join(10)
        assert added == [3]


def test_workers_enqueueing_at_once_do_not_wait_on_each_other_past_the_busy_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every worker enqueues first. In one transaction, the first one's rows stayed
    # uncommitted for the whole list (11 s at 300,000 subscribers), and every other worker
    # waited on them past store.busy_timeout and gave up (exit 75). Here the first enqueue
    # is held mid-list, at its sixth batch's first row, for as long as the second one runs:
    # its first five batches are committed by then, so the second waits on nothing. (Held
    # by a lock, not slowed by a timer: a loaded machine once stretched a timed batch past
    # the busy timeout.)
    url = os.environ.get(ENV_STORE_URL)
    if not url:
        pytest.skip("on SQLite the enqueues take turns on the one write lock")
    monkeypatch.setattr(ledger, "ENQUEUE_BATCH", 10, raising=False)
    with _store(tmp_path, 100) as db, psycopg.connect(url, autocommit=True) as admin:
        first_pid = db.conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        admin.execute("SELECT pg_advisory_lock(23)")  # held until the second one is done
        admin.execute(
            "CREATE FUNCTION hold_row() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            f" IF pg_backend_pid() = {int(first_pid)} AND NEW.subscriber_id = 51 THEN"
            " PERFORM pg_advisory_lock_shared(23); PERFORM pg_advisory_unlock_shared(23);"
            " END IF; RETURN NEW; END $$"
        )
        admin.execute(
            "CREATE TRIGGER hold_row BEFORE INSERT ON deliveries "
            "FOR EACH ROW EXECUTE FUNCTION hold_row()"
        )
        added: list[int] = []
        first = threading.Thread(
            target=lambda: added.append(ledger.enqueue_owed(db, day=DAY, now=T0))
        )
        first.start()
        try:
            deadline = time.monotonic() + 30
            while not admin.execute(  # the first enqueue waits on the lock, mid-list
                "SELECT count(*) FROM pg_locks"
                " WHERE locktype = 'advisory' AND NOT granted AND pid = %s",
                (first_pid,),
            ).fetchone()[0]:
                assert first.is_alive(), "the first enqueue ended without reaching row 51"
                assert time.monotonic() < deadline, "the first enqueue never reached row 51"
                time.sleep(0.01)
            with open_store(tmp_path / "x.db", busy_timeout=0.5) as other:
                added.append(ledger.enqueue_owed(other, day=DAY, now=T0))
            assert added == [50]  # rows 51 to 100: the first one had committed 1 to 50
        finally:
            admin.execute("SELECT pg_advisory_unlock(23)")
            first.join(30)
        assert added == [50, 50]  # both finished, each row added once between them
        assert ledger.day_counts(db, day=DAY) == {"sending": 100}


@pytest.mark.sqlite_only  # SQLite's write lock: on PostgreSQL the enqueue takes no such lock
@pytest.mark.slow(seconds=4)
def test_a_sign_up_waiting_for_a_long_sqlite_enqueue_gets_in_between_its_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On SQLite the enqueue's batches take the one write lock in turn. Committed one after
    # the other with no moment between, they left a sign-up waiting in SQLite's busy wait no
    # turn until the whole list was done (4.1 s at 400,000 subscribers, past
    # store.busy_timeout at 1,000,000). Here the list is 100 batches: a sign-up that began
    # waiting during the first ones must be stored before the last one is. (Not grown past
    # ENQUEUE_BATCH: to 20 of them, fast ones double to 200 ids, and the list was 9 batches,
    # 0.2 s, for this thread to see the first, sign up and count before the last.)
    monkeypatch.setattr(ledger, "ENQUEUE_BATCH", 10)
    monkeypatch.setattr(ledger, "_ENQUEUE_MOST", 1)
    with _store(tmp_path, 1000) as db:
        added: list[int] = []

        def enqueue() -> None:
            with open_store(tmp_path / "queue.db") as own:
                added.append(ledger.enqueue_owed(own, day=DAY, now=T0))

        enqueuer = threading.Thread(target=enqueue)
        enqueuer.start()
        try:
            deadline = time.monotonic() + 30
            while not ledger.day_counts(db, day=DAY):  # its first batch is committed
                assert enqueuer.is_alive(), "the enqueue ended before it was seen"
                assert time.monotonic() < deadline, "the enqueue never began"
                time.sleep(0.001)
            signup(db, "new@example.org", language="vi", now=T0, resend_after=timedelta(0))
            enqueued = ledger.day_counts(db, day=DAY).get("sending", 0)
        finally:
            enqueuer.join(60)
        assert enqueued < 1000, "the sign-up waited for the whole enqueue"
        assert added == [1000]
        assert ledger.day_counts(db, day=DAY) == {"sending": 1000}


def test_an_enqueue_cut_off_between_batches_is_finished_by_the_next_each_row_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batches commit one by one: an enqueue stopped at one (here an insert refused at
    subscriber 51, as a kill would leave it) keeps the batches before it, and the next
    enqueue adds exactly the rest."""
    url = os.environ.get(ENV_STORE_URL)
    monkeypatch.setattr(ledger, "ENQUEUE_BATCH", 10)
    with _store(tmp_path, 100) as db:
        if url:
            with psycopg.connect(url, autocommit=True) as admin:
                admin.execute(
                    "CREATE FUNCTION refuse_51() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                    " IF NEW.subscriber_id = 51 THEN RAISE EXCEPTION 'cut off'; END IF;"
                    " RETURN NEW; END $$"
                )
                admin.execute(
                    "CREATE TRIGGER refuse_51 BEFORE INSERT ON deliveries "
                    "FOR EACH ROW EXECUTE FUNCTION refuse_51()"
                )
        else:
            with db.transaction() as conn:
                conn.execute(
                    "CREATE TRIGGER refuse_51 BEFORE INSERT ON deliveries"
                    " WHEN NEW.subscriber_id = 51 BEGIN SELECT RAISE(ABORT, 'cut off'); END"
                )
        with pytest.raises(StoreError):
            ledger.enqueue_owed(db, day=DAY, now=T0)
        with db.transaction() as conn:
            conn.execute("DROP TRIGGER refuse_51" + (" ON deliveries" if url else ""))
        rows = [r[0] for r in db.conn.execute("SELECT subscriber_id FROM deliveries").fetchall()]
        kept = len(rows)
        assert 0 < kept <= 50  # the batches before the one cut off
        assert sorted(rows) == list(range(1, kept + 1))
        assert ledger.enqueue_owed(db, day=DAY, now=T0) == 100 - kept
        rows = [r[0] for r in db.conn.execute("SELECT subscriber_id FROM deliveries").fetchall()]
        assert sorted(rows) == list(range(1, 101))  # each once
        assert ledger.day_counts(db, day=DAY) == {"sending": 100}


@pytest.mark.sqlite_only  # SQLite's write lock, held by another process's connection
async def test_sent_marks_wait_for_the_write_lock_without_stopping_the_event_loop(
    tmp_path: Path,
) -> None:
    """A held lock is waited for with asyncio sleeps: the loop runs on meanwhile; the marks
    land once the lock is free, and the store's busy timeout is as it was."""
    with _store(tmp_path, 3) as db:
        ledger.enqueue_owed(db, day=DAY, now=T0)
        assert _claim(db, "run1/1", T0) == [1, 2, 3]
        busy_ms = db.conn.execute("PRAGMA busy_timeout").fetchone()[0]
        other = sqlite3.connect(tmp_path / "queue.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        marks = ledger.SqliteQueue(db)
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.001)
                ticks += 1

        released = False

        async def release_later() -> None:
            # Freed only once the loop has run on 20 times while the mark waits: SQLite's own
            # busy wait would stop the loop (no tick), so the lock would stay held and the
            # mark end in StoreBusyError after the busy timeout. Counted, not timed, so a
            # loaded machine cannot fail it.
            nonlocal released
            while ticks < 20:
                await asyncio.sleep(0.001)
            released = True
            other.rollback()

        ticker = asyncio.create_task(tick())
        releaser = asyncio.create_task(release_later())
        await marks.mark(day=DAY, subscriber_ids=[1, 2], now=T0)
        assert released  # the mark waited for the lock, and the loop ran meanwhile
        ticker.cancel()
        await releaser
        other.close()
        assert ledger.day_counts(db, day=DAY) == {"sent": 2, "sending": 1}
        assert db.conn.execute("PRAGMA busy_timeout").fetchone()[0] == busy_ms


@pytest.mark.sqlite_only
async def test_sent_marks_give_up_as_any_write_once_the_busy_timeout_has_passed(
    tmp_path: Path,
) -> None:
    with _store(tmp_path, 2) as db:
        ledger.enqueue_owed(db, day=DAY, now=T0)
        db.conn.execute("PRAGMA busy_timeout = 300")
        other = sqlite3.connect(tmp_path / "queue.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(StoreBusyError):
            await ledger.SqliteQueue(db).mark(day=DAY, subscriber_ids=[1], now=T0)
        assert 0.3 <= time.monotonic() - started < 2
        other.rollback()
        other.close()
        assert ledger.day_counts(db, day=DAY) == {"sending": 2}
        assert db.conn.execute("PRAGMA busy_timeout").fetchone()[0] == 300


async def test_a_mark_made_as_the_last_commit_ends_is_committed_all_the_same(
    tmp_path: Path,
) -> None:
    """The committer's task ends once no mark is left; a mark made right after, before the
    loop has run the ended task's callbacks, starts a commit of its own (it once waited
    forever for the ended task: a send that hung in one run of three)."""
    with _store(tmp_path, 3) as db:
        ledger.enqueue_owed(db, day=DAY, now=T0)
        assert _claim(db, "run1/1", T0) == [1, 2, 3]
        queue = (
            await ledger.PgQueue.open(db) if isinstance(db, PgDatabase) else ledger.SqliteQueue(db)
        )
        try:
            committer = MarkCommitter(queue, DAY, lambda: T0)
            await committer.commit(1)
            await asyncio.wait_for(committer.commit(2), 5)
            await committer.drain()
        finally:
            await queue.close()
        assert ledger.day_counts(db, day=DAY) == {"sent": 2, "sending": 1}


# Run in a process of its own: a drain that spins never yields, so no timeout inside the
# test's own event loop could end it.
_DRAIN_AS_THE_COMMIT_ENDS = """
import asyncio, sys
from pathlib import Path
from datetime import UTC, date, datetime
from syndicate.send.deliver import MarkCommitter
from syndicate.store import ledger, open_database

DAY, T0 = date(2024, 11, 1), datetime(2024, 11, 1, 6, tzinfo=UTC)

async def main() -> None:
    with open_database(Path(sys.argv[1])) as db:
        queue = ledger.SqliteQueue(db)
        committer = MarkCommitter(queue, DAY, lambda: T0)
        done = committer.commit(1)  # its task runs in the next turn of the loop
        # Made after that task, this one runs right after it in the same turn: the commit's
        # future is done there and its done-callback is still due.
        await asyncio.create_task(committer.drain())
        await done
        print(ledger.day_counts(db, day=DAY))

asyncio.run(main())
"""


def test_a_drain_that_starts_as_the_last_commit_ends_returns(tmp_path: Path) -> None:
    """`drain` found the commit's future done with its callback still due, and awaited it
    again and again (a done future does not yield): a send spun forever at its end."""
    with _store(tmp_path, 1) as db:
        if isinstance(db, PgDatabase):
            pytest.skip("SQLite's commit is a task: the turn it ends in is known")
    path = tmp_path / "drain.db"
    with open_database(path) as db:
        with db.transaction() as conn:
            conn.execute(
                "INSERT INTO digests (day, created_at, article_ids) VALUES (?, ?, '[]')",
                (DAY.isoformat(), T0.isoformat()),
            )
        add_subscriber(db, "u0@example.org", now=T0 - timedelta(days=1))
        ledger.enqueue_owed(db, day=DAY, now=T0)
    done = subprocess.run(
        [sys.executable, "-c", _DRAIN_AS_THE_COMMIT_ENDS, str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "{'sent': 1}"


def _pg_url() -> str:
    url = os.environ.get(ENV_STORE_URL)
    if not url:
        pytest.skip("PostgreSQL's marks run on libpq directly; SQLite's in a task")
    return url


async def test_a_mark_is_on_its_way_before_start_mark_returns(tmp_path: Path) -> None:
    # The statement goes out in the call: the server commits it while this event loop stands
    # still (no await in between), and the future is done by the reply alone.
    url = _pg_url()
    with _store(tmp_path, 3) as db, psycopg.connect(url, autocommit=True) as other:
        ledger.enqueue_owed(db, day=DAY, now=T0)
        queue = await ledger.PgQueue.open(db)
        try:
            done = queue.start_mark(day=DAY, subscriber_ids=[1, 3], now=T0)
            deadline = time.monotonic() + 5
            while other.execute(
                "SELECT count(*) FROM deliveries WHERE status = 'sent'"
            ).fetchone() != (2,):
                assert time.monotonic() < deadline, "the mark never reached the server"
                time.sleep(0.01)  # the loop stays stopped meanwhile
            assert not done.done()  # its reply is read by the loop
            await asyncio.wait_for(done, 5)
            assert queue.marks.running is False
            # Again on the same connection: one at a time, many in a row.
            await asyncio.wait_for(queue.start_mark(day=DAY, subscriber_ids=[2], now=T0), 5)
        finally:
            await queue.close()
        assert ledger.day_counts(db, day=DAY) == {"sent": 3}


async def test_a_mark_waits_one_at_a_time_and_a_long_one_goes_out_whole(tmp_path: Path) -> None:
    _pg_url()
    with _store(tmp_path, 2) as db:
        ledger.enqueue_owed(db, day=DAY, now=T0)
        queue = await ledger.PgQueue.open(db)
        try:
            # 1,000,000 ids are about 8 MB of text: more than a socket takes in one write,
            # so the rest goes out from the loop's writer callback.
            many = [1, *range(10, 1_000_010)]
            first = queue.start_mark(day=DAY, subscriber_ids=many, now=T0)
            with pytest.raises(RuntimeError, match="one statement at a time"):
                queue.start_mark(day=DAY, subscriber_ids=[2], now=T0)
            await asyncio.wait_for(first, 30)
        finally:
            await queue.close()
        assert ledger.day_counts(db, day=DAY) == {"sent": 1, "sending": 1}


async def test_a_mark_that_waits_past_the_busy_timeout_fails_as_busy(tmp_path: Path) -> None:
    url = _pg_url()
    with _store(tmp_path, 2) as db, open_store(tmp_path / "x.db", busy_timeout=0.2) as short:
        ledger.enqueue_owed(db, day=DAY, now=T0)
        queue = await ledger.PgQueue.open(short)  # type: ignore[arg-type]
        try:
            with psycopg.connect(url) as holder:  # holds the row in an open transaction
                holder.execute("SELECT 1 FROM deliveries WHERE subscriber_id = 1 FOR UPDATE")
                with pytest.raises(StoreBusyError):
                    await asyncio.wait_for(
                        queue.start_mark(day=DAY, subscriber_ids=[1], now=T0), 10
                    )
            # The connection is still good for the next one.
            await asyncio.wait_for(queue.start_mark(day=DAY, subscriber_ids=[1], now=T0), 5)
        finally:
            await queue.close()
        assert ledger.day_counts(db, day=DAY) == {"sent": 1, "sending": 1}


async def test_a_mark_whose_connection_dies_fails_as_unreachable(tmp_path: Path) -> None:
    url = _pg_url()
    with _store(tmp_path, 2) as db, psycopg.connect(url, autocommit=True) as admin:
        ledger.enqueue_owed(db, day=DAY, now=T0)
        queue = await ledger.PgQueue.open(db)
        try:
            with psycopg.connect(url) as holder:  # the mark waits on the row meanwhile
                holder.execute("SELECT 1 FROM deliveries WHERE subscriber_id = 1 FOR UPDATE")
                waiting = queue.start_mark(day=DAY, subscriber_ids=[1], now=T0)
                await asyncio.sleep(0.2)
                assert not waiting.done()
                admin.execute("SELECT pg_terminate_backend(%s)", (queue.marks.pgconn.backend_pid,))
                with pytest.raises(StoreUnavailableError):
                    await asyncio.wait_for(waiting, 10)
            with pytest.raises(StoreUnavailableError):  # and so does every later one, at once
                await asyncio.wait_for(queue.start_mark(day=DAY, subscriber_ids=[2], now=T0), 5)
        finally:
            await queue.close()
        assert ledger.day_counts(db, day=DAY) == {"sending": 2}


async def test_closing_the_queue_fails_a_mark_still_running(tmp_path: Path) -> None:
    url = _pg_url()
    with _store(tmp_path, 1) as db:
        ledger.enqueue_owed(db, day=DAY, now=T0)
        queue = await ledger.PgQueue.open(db)
        with psycopg.connect(url) as holder:
            holder.execute("SELECT 1 FROM deliveries WHERE subscriber_id = 1 FOR UPDATE")
            waiting = queue.start_mark(day=DAY, subscriber_ids=[1], now=T0)
            await queue.close()
            with pytest.raises(StoreUnavailableError):
                await asyncio.wait_for(waiting, 5)
            assert queue.marks.running is False


async def _running(queue: ledger.PgQueue) -> None:
    """Wait until the queue's mark statement has gone to the server."""
    async with asyncio.timeout(5):
        while not queue.marks.running:
            await asyncio.sleep(0.001)


async def test_a_cancelled_mark_leaves_the_queue_usable_and_the_next_one_waits_its_turn(
    tmp_path: Path,
) -> None:
    # The caller gives up (cancels) while the statement waits on a locked row: it sees
    # CancelledError; the statement still runs to its end (its reply is read and dropped),
    # and a mark started meanwhile goes out after it, on the same connection. A second
    # start used to raise RuntimeError ("one statement at a time").
    url = _pg_url()
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        with _store(tmp_path, 3) as db:
            ledger.enqueue_owed(db, day=DAY, now=T0)
            queue = await ledger.PgQueue.open(db)
            try:
                with psycopg.connect(url) as holder:
                    holder.execute("SELECT 1 FROM deliveries WHERE subscriber_id = 1 FOR UPDATE")
                    given_up = asyncio.ensure_future(
                        queue.mark(day=DAY, subscriber_ids=[1], now=T0)
                    )
                    await _running(queue)  # the statement is at the server, waiting
                    given_up.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await given_up
                    after = queue.start_mark(day=DAY, subscriber_ids=[2], now=T0)
                    await asyncio.sleep(0.1)
                    assert not after.done()  # waits for the cancelled one's reply
                await asyncio.wait_for(after, 5)
                await asyncio.wait_for(queue.mark(day=DAY, subscriber_ids=[3], now=T0), 5)
            finally:
                await queue.close()
            # The cancelled statement committed all the same: a mark may outlive its caller.
            assert ledger.day_counts(db, day=DAY) == {"sent": 3}
    finally:
        loop.set_exception_handler(None)
    assert errors == []


async def test_closing_the_queue_with_a_cancelled_mark_in_flight_fails_the_one_waiting(
    tmp_path: Path,
) -> None:
    url = _pg_url()
    with _store(tmp_path, 2) as db:
        ledger.enqueue_owed(db, day=DAY, now=T0)
        queue = await ledger.PgQueue.open(db)
        with psycopg.connect(url) as holder:
            holder.execute("SELECT 1 FROM deliveries FOR UPDATE")
            given_up = asyncio.ensure_future(queue.mark(day=DAY, subscriber_ids=[1], now=T0))
            await _running(queue)
            given_up.cancel()
            with pytest.raises(asyncio.CancelledError):
                await given_up
            waiting = queue.start_mark(day=DAY, subscriber_ids=[2], now=T0)
            await asyncio.wait_for(queue.close(), 5)
            with pytest.raises(StoreUnavailableError):
                await asyncio.wait_for(waiting, 5)
            assert queue.marks.running is False
        # The one waiting never went (the cancelled one may yet commit on the server: its
        # backend sees the connection gone only when it answers).
        assert ledger.get_delivery(db, day=DAY, subscriber_id=2)[0] == "sending"


async def test_a_mark_whose_backend_dies_while_its_statement_is_still_going_out_fails_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The backend stops reading (SIGSTOP) with most of an 8 MB mark unsent, then dies
    # (SIGKILL: the socket is reset). libpq closes the socket inside the reader callback
    # while the writer is still registered: removing the reader then failed on the closed
    # descriptor (OSError, EBADF, in the callback, where the loop only logs it) and the
    # future was left for the writer's callback to finish, if it happened to be queued.
    _pg_url()
    cluster = start_cluster()  # its own: a killed backend restarts every other one
    try:
        monkeypatch.setenv(ENV_STORE_URL, cluster.new_database())
        with _store(tmp_path, 2) as db:
            ledger.enqueue_owed(db, day=DAY, now=T0)
            queue = await ledger.PgQueue.open(db)
            loop = asyncio.get_running_loop()
            errors: list[dict[str, object]] = []
            loop.set_exception_handler(lambda _loop, context: errors.append(context))
            try:
                pid = queue.marks.pgconn.backend_pid
                os.kill(pid, signal.SIGSTOP)
                try:
                    dying = queue.start_mark(
                        day=DAY, subscriber_ids=[1, *range(10, 1_000_010)], now=T0
                    )
                finally:
                    os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
                while os.path.exists(f"/proc/{pid}"):  # reset before the loop looks again
                    assert time.monotonic() < deadline, "the backend never went"
                    time.sleep(0.01)
                with pytest.raises(StoreUnavailableError):
                    await asyncio.wait_for(asyncio.shield(dying), 10)
                for _ in range(3):  # any callback still queued runs
                    await asyncio.sleep(0)
                assert errors == []
                assert queue.marks.running is False
            finally:
                loop.set_exception_handler(None)
                await queue.close()
    finally:
        cluster.stop("immediate")
        shutil.rmtree(cluster.folder, ignore_errors=True)


async def test_a_mark_the_server_refuses_fails_with_the_error_line_of_any_store_error(
    tmp_path: Path,
) -> None:
    # The same StoreError, word for word and class for class, as the statement made through
    # psycopg on the store's own connection (`mark_sent_many`): no "ERROR:  " of libpq's
    # raw message text in the one line.
    url = _pg_url()
    with _store(tmp_path, 2) as db, psycopg.connect(url, autocommit=True) as admin:
        ledger.enqueue_owed(db, day=DAY, now=T0)
        admin.execute(
            "CREATE FUNCTION no_marks() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'no marks today' USING HINT = 'a hint'; END $$"
        )
        admin.execute(
            "CREATE TRIGGER no_marks BEFORE UPDATE ON deliveries "
            "FOR EACH ROW EXECUTE FUNCTION no_marks()"
        )
        with pytest.raises(StoreError) as through_psycopg:
            ledger.mark_sent_many(db, day=DAY, subscriber_ids=[1], now=T0)
        queue = await ledger.PgQueue.open(db)
        try:
            with pytest.raises(StoreError) as on_libpq:
                await asyncio.wait_for(queue.start_mark(day=DAY, subscriber_ids=[1], now=T0), 5)
        finally:
            await queue.close()
        assert type(on_libpq.value) is type(through_psycopg.value) is StoreError
        assert str(on_libpq.value) == str(through_psycopg.value)
        assert str(on_libpq.value).endswith("send ledger query failed: no marks today.")
        assert ledger.day_counts(db, day=DAY) == {"sending": 2}


async def test_a_queue_that_cannot_open_its_second_connection_leaves_none_open(
    tmp_path: Path,
) -> None:
    # The queue opens two connections (claims, marks). A role allowed two connections has
    # the store's own and the first of them: the second is refused (StoreUnavailableError,
    # exit 75), and the first was left open, to be closed by the garbage collector with a
    # ResourceWarning, if ever.
    url = _pg_url()
    role = f"limited_{os.getpid()}"
    with _store(tmp_path, 1) as db, psycopg.connect(url, autocommit=True) as admin:
        ledger.enqueue_owed(db, day=DAY, now=T0)
        admin.execute(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 2')
        try:
            admin.execute(f'GRANT pg_read_all_data, pg_write_all_data TO "{role}"')
            as_role = url.replace("postgres@", f"{role}@")

            def open_now() -> int:
                row = admin.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (role,)
                ).fetchone()
                return int(row[0]) if row else 0

            with open_database(tmp_path / "unused.db", url=as_role) as limited:
                assert isinstance(limited, PgDatabase)
                with pytest.raises(StoreUnavailableError, match="too many connections"):
                    await ledger.PgQueue.open(limited)
                deadline = time.monotonic() + 5
                while open_now() > 1:  # the store's own connection alone
                    assert time.monotonic() < deadline, "a connection of the queue stayed open"
                    await asyncio.sleep(0.02)
        finally:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (role,),
            )
            admin.execute(f'DROP ROLE "{role}"')


def _waiting(other: psycopg.Connection[tuple[object, ...]], count: int) -> None:
    """Wait until `count` locks are waited for (row locks: a tuple or a transaction)."""
    deadline = time.monotonic() + 10
    while other.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone() != (count,):
        assert time.monotonic() < deadline, "never waited for the row"
        time.sleep(0.01)


def _mark_as_a_sender(db: Database, ids: list[int], now: datetime) -> None:
    """Mark `ids` sent as `send` does: the prepared statement of the queue's marks."""

    async def mark() -> None:
        assert isinstance(db, PgDatabase)
        queue = await ledger.PgQueue.open(db)
        try:
            await queue.mark(day=DAY, subscriber_ids=ids, now=now)
        finally:
            await queue.close()

    asyncio.run(mark())


def test_a_renewal_never_waits_for_a_stalled_workers_mark(tmp_path: Path) -> None:
    # run1/1 stalled past its lease with two messages at the server; run2/1 took both rows
    # over. run1/1's mark (here in subscriber order) and run2/1's renewal (in the order its
    # plan read the rows: here row 2's version lies first) each took one row and waited for
    # the other's: PostgreSQL broke the deadlock by failing one, and that machine's send
    # exited 75 (test_send_machines' ten kills, once at load 15).
    url = _pg_url()
    with (
        _store(tmp_path, 300) as db,
        open_store(tmp_path / "queue.db") as stalled,
        psycopg.connect(url, autocommit=True) as blocker,
        psycopg.connect(url, autocommit=True) as watcher,
    ):
        ledger.enqueue_owed(db, day=DAY, now=T0)
        db.conn.execute("ANALYZE deliveries")
        assert _claim(db, "run1/1", T0, limit=300) == list(range(1, 301))
        later = T0 + timedelta(seconds=LEASE + 1)
        assert _claim(db, "run2/1", later, limit=300) == list(range(1, 301))
        # A new version of row 1, after row 2's (lease_until is indexed: not a HOT update).
        db.conn.execute(
            "UPDATE deliveries SET lease_until = lease_until || '0' WHERE subscriber_id = 1"
        )
        errors: list[BaseException] = []
        held: list[set[int]] = []

        def mark() -> None:
            try:
                _mark_as_a_sender(stalled, [1, 2], later)
            except BaseException as exc:
                errors.append(exc)

        def renew() -> None:
            try:
                held.append(ledger.renew(db, day=DAY, owner="run2/1", now=later, lease=LEASE))
            except BaseException as exc:
                errors.append(exc)

        with blocker.transaction():
            blocker.execute("SELECT 1 FROM deliveries WHERE subscriber_id = 1 FOR UPDATE")
            marking = threading.Thread(target=mark)
            marking.start()
            _waiting(watcher, 1)  # the mark waits for row 1, first in line
            renewing = threading.Thread(target=renew)
            renewing.start()
            renewing.join(timeout=30)  # at once: it passes row 1 by
            assert not renewing.is_alive(), "the renewal waited for a row"
        marking.join(timeout=30)
        assert not errors, [(e, getattr(e.__cause__, "sqlstate", None)) for e in errors]
        # Row 1 was locked: not this worker's to send now (sent meanwhile). Row 2 was free
        # when the renewal read it (the mark had not reached it), so it was renewed.
        assert held == [set(range(2, 301))]
        assert ledger.day_counts(db, day=DAY) == {"sent": 2, "sending": 298}

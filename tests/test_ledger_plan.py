"""The claim statement keeps to indexes: its plan, read on a store of a few thousand rows
after ANALYZE, on both engines (issue 13: the claim query uses an index, not a scan)."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from syndicate.store import Database, PgDatabase, ledger
from tests.plugins.postgres import open_store

pytestmark = pytest.mark.usefixtures("store")

DAY = date(2024, 11, 1)
NOW = datetime(2024, 11, 1, 6, 0, tzinfo=UTC)
SUBSCRIBERS = 3000
SENT = 30


def _fill(db: Database, stamp: str) -> None:
    with db.transaction() as conn:
        conn.execute(
            "INSERT INTO digests (day, created_at, article_ids) VALUES (?, ?, '[]')",
            (DAY.isoformat(), stamp),
        )
        conn.executemany(
            "INSERT INTO subscribers (email, email_key, language, status, created_at, "
            "updated_at, confirmed_at, token_nonce) "
            "VALUES (?, ?, 'en', 'confirmed', ?, ?, ?, ?)",
            [
                (f"u{i}@example.org", f"u{i}@example.org", stamp, stamp, stamp, os.urandom(16))
                for i in range(SUBSCRIBERS)
            ],
        )


def _plan(db: Database) -> str:
    params = {
        "day": DAY.isoformat(),
        "owner": "run2/1",
        "until": ledger.lease_stamp(NOW + timedelta(seconds=300)),
        "at": ledger.lease_stamp(NOW),
        "now": NOW.isoformat(),
        "run_like": "run2/%",
        "limit": 128,
        "max_attempts": 3,
        "confirmed_by": None,
    }
    statement = ledger.claim_statement(db.dialect)
    explain = "EXPLAIN " if db.dialect == "postgresql" else "EXPLAIN QUERY PLAN "
    with db.transaction(rows_only=True) as conn:
        rows = conn.execute(explain + statement, params).fetchall()
    return "\n".join(str(row[0] if db.dialect == "postgresql" else row[3]) for row in rows)


def test_the_claim_reads_the_queue_index_and_scans_no_table(tmp_path: Path) -> None:
    stamp = NOW.isoformat()
    with open_store(tmp_path / "plan.db") as db:
        _fill(db, stamp)
        ledger.enqueue_owed(db, day=DAY, now=NOW)
        with db.transaction() as conn:  # some of the day already sent: a claim must not read it
            conn.execute("UPDATE deliveries SET status = 'sent' WHERE subscriber_id <= ?", (SENT,))
            conn.execute("ANALYZE")
        plan = _plan(db)
        assert "deliveries_queue" in plan, plan
        # PostgreSQL says "Seq Scan on t", SQLite "SCAN t" for a whole-table read.
        assert "Seq Scan" not in plan, plan
        assert not any(line.strip().startswith("SCAN ") for line in plan.splitlines()), plan
        # And the claim itself still takes the lowest owed subscribers.
        found = ledger.claim(
            db, day=DAY, owner="run2/1", now=NOW, lease=300, limit=4, max_attempts=3
        )
        assert [r.subscriber_id for r in found] == [SENT + 1, SENT + 2, SENT + 3, SENT + 4]


def test_a_day_just_enqueued_is_claimed_through_the_index_not_scanned_and_sorted(
    tmp_path: Path,
) -> None:
    # The statistics were taken while the ledger was empty (autovacuum on a new store), as
    # they are when a day's rows have just been enqueued; the enqueue refreshes them.
    with open_store(tmp_path / "plan.db") as db:
        _fill(db, NOW.isoformat())
        with db.transaction() as conn:
            conn.execute("ANALYZE")
        ledger.enqueue_owed(db, day=DAY, now=NOW)
        plan = _plan(db)
        assert "deliveries_queue" in plan, plan
        assert "Sort" not in plan, plan
        assert "Bitmap" not in plan, plan
        assert "Seq Scan" not in plan, plan
        assert "TEMP B-TREE" not in plan, plan  # SQLite's sort


async def test_the_sent_mark_is_planned_once_and_looks_rows_up_by_key(tmp_path: Path) -> None:
    # PostgreSQL re-planned the prepared mark at every run (a custom plan: the generic one's
    # `= ANY($2)` costs more to the planner), a fifth of its server time. Its one generic
    # plan must still look the rows up in indexes, with earlier days in the ledger too.
    with open_store(tmp_path / "plan.db") as db:
        if not isinstance(db, PgDatabase):
            pytest.skip("SQLite's marks are not prepared on a server")
        _fill(db, NOW.isoformat())
        with db.transaction() as conn:
            for back in (1, 2, 3):
                earlier = (DAY - timedelta(days=back)).isoformat()
                conn.execute(
                    "INSERT INTO digests (day, created_at, article_ids) VALUES (?, ?, '[]')",
                    (earlier, NOW.isoformat()),
                )
                conn.execute(
                    "INSERT INTO deliveries (digest_day, subscriber_id, status, attempts, "
                    "updated_at) SELECT CAST(? AS TEXT), id, 'sent', 1, CAST(? AS TEXT) "
                    "FROM subscribers",
                    (earlier, NOW.isoformat()),
                )
        ledger.enqueue_owed(db, day=DAY, now=NOW)  # and ANALYZE
        queue = await ledger.PgQueue.open(db)
        try:
            cursor = await queue.marks.conn.execute(
                f"EXPLAIN EXECUTE syndicate_mark_sent ('{DAY.isoformat()}', '{{5,6,7}}', 'x')"
            )
            plan = "\n".join(str(row[0]) for row in await cursor.fetchall())
        finally:
            await queue.close()
    assert "$2" in plan, plan  # the generic plan (a custom one shows the values)
    assert "Seq Scan" not in plan, plan
    assert "subscribers_pkey" in plan, plan
    assert "Index Cond: ((digest_day = $1) AND (subscriber_id = ANY ($2)))" in plan, plan

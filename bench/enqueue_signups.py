"""Benchmark how long sign-ups wait while `send` enqueues a big list on SQLite.

For each size, makes a SQLite store with that many confirmed subscribers, starts the
enqueue (`store.ledger.enqueue_owed`, what `send` does before its first message) in a
process of its own, and meanwhile signs up new addresses from this process, one every
`--pace` seconds, each on its own connection with the default store.busy_timeout, as
`syndicate serve` would. Reports the enqueue's own time, and each sign-up's time while
the enqueue ran: how many, the median, p99 and max, and how many gave up (busy).

    python bench/enqueue_signups.py [--sizes 100000,400000,1000000] [--pace 0.02]

Run it with PYTHONPATH naming the tree to measure (before and after a change).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path

from syndicate.errors import StoreBusyError
from syndicate.store import ledger, open_database
from syndicate.store.subscribers import signup

DAY = date(2024, 11, 1)
NOW = datetime(2024, 11, 1, 6, 0, tzinfo=UTC)

ENQUEUE = """
import sys, time
from pathlib import Path
from datetime import UTC, date, datetime
from syndicate.store import ledger, open_database
with open_database(Path(sys.argv[1])) as db:
    print("go", flush=True)
    started = time.monotonic()
    added = ledger.enqueue_owed(db, day=date(2024, 11, 1), now=datetime(2024, 11, 1, 6, tzinfo=UTC))
    print(added, time.monotonic() - started, flush=True)
"""


def make_store(path: Path, count: int) -> None:
    columns = (
        "email, email_key, language, status, created_at, updated_at, confirmed_at, token_nonce"
    )
    stamp = "2024-10-01T00:00:00+00:00"
    nonce = bytes(16)
    rows = (
        (f"r{i}@example.org", f"r{i}@example.org", "vi", "confirmed", stamp, stamp, stamp, nonce)
        for i in range(count)
    )
    with open_database(path) as db, db.transaction() as conn:
        conn.executemany(
            f"INSERT INTO subscribers ({columns}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
            rows,
        )
        conn.execute(
            "INSERT INTO digests (day, created_at, article_ids) VALUES (?, ?, '[]')",
            (DAY.isoformat(), stamp),
        )


def bench_size(count: int, pace: float) -> str:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "syndicate.db"
        make_store(path, count)
        enqueue = subprocess.Popen(
            [sys.executable, "-c", ENQUEUE, str(path)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=folder,
        )
        assert enqueue.stdout is not None
        assert enqueue.stdout.readline() == "go\n"
        waits: list[float] = []
        busy = 0
        with open_database(path) as web:
            while enqueue.poll() is None:
                started = time.monotonic()
                try:
                    signup(web, f"new{len(waits)}@example.org", language="vi", now=NOW)
                except StoreBusyError:
                    busy += 1
                waits.append(time.monotonic() - started)
                time.sleep(pace)
        added, took = enqueue.stdout.read().split()
        assert int(added) == count, added
    waits.sort()
    p99 = waits[min(len(waits) - 1, int(len(waits) * 0.99))]
    return (
        f"{count:>9,} subscribers: enqueue {float(took):6.2f} s;"
        f" {len(waits):4d} sign-ups meanwhile:"
        f" median {statistics.median(waits) * 1000:6.1f} ms, p99 {p99 * 1000:7.1f} ms,"
        f" max {waits[-1] * 1000:7.1f} ms, busy {busy}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default="100000,400000,1000000")
    parser.add_argument("--pace", type=float, default=0.02, help="seconds between sign-ups")
    options = parser.parse_args()
    print(f"syndicate from {Path(ledger.__file__).parents[2]}")
    for size in (int(text) for text in options.sizes.split(",")):
        print(bench_size(size, options.pace), flush=True)


if __name__ == "__main__":
    main()

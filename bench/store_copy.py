"""Benchmark `syndicate store copy`: time and peak memory by list size, both directions.

Makes a SQLite store with N confirmed subscribers and one sent delivery each, starts a
throwaway PostgreSQL cluster (as the tests do: tests/plugins/postgres.py), and copies
SQLite -> PostgreSQL, then PostgreSQL -> a new SQLite file, each in a child process of
its own so its peak RSS is its own. The copy streams in batches: the peak RSS should not
grow with N.

    python bench/store_copy.py --n 100000
    python bench/store_copy.py --n 1000000
"""

from __future__ import annotations

import argparse
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_FILL = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n})
INSERT INTO subscribers (id, email, email_key, status, created_at, updated_at, token_nonce)
SELECT i, 'user' || i || '@example.org', 'user' || i || '@example.org', 'confirmed',
    '2024-11-01T06:00:00+00:00', '2024-11-01T06:00:00+00:00', randomblob(16) FROM n
"""
_DIGEST = (
    "INSERT INTO digests (day, created_at, article_ids) "
    "VALUES ('2024-11-01', '2024-11-01T06:00:00+00:00', '[]')"
)
_LEDGER = (
    "INSERT INTO deliveries (digest_day, subscriber_id, status, attempts, updated_at) "
    "SELECT '2024-11-01', id, 'sent', 1, '2024-11-01T06:00:00+00:00' FROM subscribers"
)


def _open(location: str):  # type: ignore[no-untyped-def]
    from syndicate.store import open_database

    if location.startswith("postgresql://"):
        return open_database(Path(), url=location)
    return open_database(Path(location))


def child(name: str, source: str, target: str) -> None:
    from syndicate.store.copy import copy_store

    with _open(source) as src, _open(target) as dst:
        started = time.perf_counter()
        counts = copy_store(src, dst)
        seconds = time.perf_counter() - started
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = sum(counts.values())
    rate = rows / seconds
    print(
        f"{name:<20} {rows:>10,} rows {seconds:7.1f} s {rate:>9,.0f} rows/s, peak RSS {rss:.0f} MiB"
    )


def main() -> None:
    sys.path.insert(0, str(ROOT))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="subscribers (default 100,000)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    from syndicate.store import open_database
    from tests.plugins.postgres import start_cluster

    folder = Path(tempfile.mkdtemp(prefix="syndicate-copy-bench-"))
    source = folder / "source.db"
    open_database(source).close()
    conn = sqlite3.connect(source)
    conn.execute(_DIGEST)
    conn.execute(_FILL.format(n=int(args.n)))
    conn.execute(_LEDGER)
    conn.commit()
    conn.close()
    cluster = start_cluster()
    try:
        url = cluster.new_database()
        for name, src, dst in (
            ("sqlite -> postgresql", str(source), url),
            ("postgresql -> sqlite", url, str(folder / "back.db")),
        ):
            subprocess.run(
                [sys.executable, __file__, "--child", name, src, dst], check=True, cwd=ROOT
            )
    finally:
        cluster.stop("immediate")


if __name__ == "__main__":
    main()

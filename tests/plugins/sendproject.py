"""A `syndicate send` project for subprocess tests: one dump, an SMTP config, subscribers.

The worker, machine and link tests each start real `syndicate send` processes in a folder
of their own; this is the folder they share the shape of, written once here.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from syndicate.store import open_database
from tests.plugins.postgres import Cluster

DUMP = """Thông xe cầu Sông Lam
31/10/2024 09:15
LGO - Sáng nay 31/10, tỉnh Lam Giang thông xe cầu Sông Lam.
Cầu dài 680 m, rộng 21 m với bốn làn xe cơ giới.
Hoài Nam
"""


def write_send_project(folder: Path, *, port: int, connections: int, lease: float) -> Path:
    """`folder` with seeds/ holding DUMP and a syndicate.toml sending to 127.0.0.1:`port`."""
    (folder / "seeds").mkdir(parents=True)
    (folder / "seeds" / "day1.txt").write_text(DUMP, encoding="utf-8")
    (folder / "syndicate.toml").write_text(
        '[site]\nbase_url = "https://news.example.org/"\n'
        '[mail]\ntransport = "smtp"\nfrom = "News <news@example.org>"\n'
        'postal_address = "12 Trần Hưng Đạo"\n'
        f'[smtp]\nhost = "127.0.0.1"\nport = {port}\ntls = "none"\n'
        f"connections = {connections}\ntimeout = 5\nlease = {lease:g}\n",
        encoding="utf-8",
    )
    return folder


def add_confirmed(folder: Path, url: str, count: int) -> list[str]:
    """`count` subscribers confirmed yesterday (before today's digest), in one transaction:
    reader0@example.org onwards."""
    emails = [f"reader{i}@example.org" for i in range(count)]
    stamp = (datetime.now(UTC) - timedelta(days=1)).isoformat(timespec="seconds")
    rows = [{"email": e, "key": e, "now": stamp, "nonce": secrets.token_bytes(16)} for e in emails]
    with open_database(folder / "syndicate.db", url=url) as db, db.transaction() as conn:
        conn.executemany(
            "INSERT INTO subscribers (email, email_key, language, status, created_at,"
            " updated_at, confirmed_at, token_nonce)"
            " VALUES (:email, :key, 'vi', 'confirmed', :now, :now, :now, :nonce)",
            rows,
        )
    return emails


@pytest.fixture
def store_url(pg_cluster: Cluster) -> Iterator[str]:
    """A new, empty database of the session's cluster, dropped after the test."""
    url = pg_cluster.new_database()
    yield url
    pg_cluster.drop_database(url)

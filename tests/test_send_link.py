"""`syndicate send --workers 2` on PostgreSQL over a slow link that stalls and breaks.

Real `syndicate send` subprocesses, a real aiosmtpd sink recording every message, and the
session's PostgreSQL cluster reached through a TCP proxy on 127.0.0.1 (tests/plugins/
link.py) that holds every chunk some milliseconds each way, stops forwarding for a while
(past `smtp.lease`), or cuts every connection. Waits are on the sink's counts.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from syndicate.store import open_database
from tests.plugins.link import Link, run_link
from tests.plugins.postgres import ENV_STORE_URL, Cluster
from tests.plugins.sendproject import add_confirmed, write_send_project
from tests.plugins.smtp import run_smtp_server

pytestmark = pytest.mark.slow

CONNECTIONS = 2
WORKERS = 2
SUMMARY = re.compile(r"Digest \S+: sent (\d+), failed (\d+), skipped (\d+) in ")


Send = Callable[[Path, str], subprocess.Popen[str]]


@pytest.fixture
def send() -> Iterator[Send]:
    """Start `syndicate send --workers 2` in a folder, on a store URL; a run still going
    when the test ends (a failed wait) is killed, so it never outlives the test."""
    started: list[subprocess.Popen[str]] = []

    def start(folder: Path, url: str) -> subprocess.Popen[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SYNDICATE_")}
        env[ENV_STORE_URL] = url
        started.append(
            subprocess.Popen(
                [sys.executable, "-m", "syndicate", "send", "--workers", str(WORKERS)],
                cwd=folder,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
        return started[-1]

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)


def _check_ending(process: subprocess.Popen[str], *, timeout: float = 60) -> tuple[str, str]:
    """Wait for `process`: exit 0, or 75 with one clear line; never a traceback."""
    out, err = process.communicate(timeout=timeout)
    assert process.returncode in (0, 75), err
    assert "Traceback" not in err, err
    if process.returncode == 75:
        errors = [line for line in err.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1, err
        assert "PostgreSQL at 127.0.0.1:" in errors[0], err
    return out, err


@pytest.mark.slow(seconds=16)
def test_two_workers_over_a_slow_link_deliver_exactly_once(
    tmp_path: Path, store_url: str, pg_cluster: Cluster, send: Send
) -> None:
    count = 300
    with run_smtp_server() as server, run_link(pg_cluster.port, latency=0.03) as link:
        write_send_project(tmp_path, port=server.port, connections=4, lease=60)
        emails = add_confirmed(tmp_path, store_url, count)
        out, err = _check_ending(send(tmp_path, link.url(store_url)))
        assert link.accepted >= WORKERS  # it went through the link
    assert SUMMARY.findall(out) == [(str(count), "0", "0")], out + err
    got = Counter(server.handler.recipients())
    assert set(got) == set(emails)
    assert max(got.values()) == 1, got.most_common(3)


def _finish(send: Send, tmp_path: Path, link: Link, url: str, first: subprocess.Popen[str]) -> int:
    """The first run's exit code (0 or 75); after a 75 the next run, which finishes (0)."""
    _check_ending(first)
    if first.returncode == 75:
        again = send(tmp_path, link.url(url))
        _out, err = _check_ending(again)
        assert again.returncode == 0, err
    return first.returncode


def _check_everyone_once(url: str, folder: Path, got: Counter[str], emails: list[str]) -> int:
    """Nobody lost, each recorded sent; returns the number of second copies."""
    assert set(got) == set(emails), "somebody was never sent the digest"
    with open_database(folder / "syndicate.db", url=url) as db:
        rows = db.conn.execute("SELECT status, count(*) FROM deliveries GROUP BY 1").fetchall()
    assert {str(status): int(n) for status, n in rows} == {"sent": len(emails)}
    return sum(n - 1 for n in got.values())


@pytest.mark.slow(seconds=12)
def test_a_link_stalled_past_the_lease_mid_send_loses_nobody(
    tmp_path: Path, store_url: str, pg_cluster: Cluster, send: Send
) -> None:
    count = 200
    lease = 2.0
    with run_smtp_server() as server, run_link(pg_cluster.port, latency=0.005) as link:
        server.handler.delay = 0.01
        write_send_project(tmp_path, port=server.port, connections=CONNECTIONS, lease=lease)
        emails = add_confirmed(tmp_path, store_url, count)
        first = send(tmp_path, link.url(store_url))
        assert server.handler.wait_for(40, timeout=30), "the send never got going"
        link.stall(lease + 1.0)  # every worker's lease runs out while it waits on the link
        at_stall = len(server.handler.messages)
        assert link.resumed.wait(30)
        # A sender waits for its last message's commit before its next DATA: during the
        # stall at most the message each connection was sending can be accepted.
        accepted_in_stall = len(server.handler.messages) - at_stall
        assert accepted_in_stall <= CONNECTIONS * WORKERS
        _finish(send, tmp_path, link, store_url, first)
    assert at_stall < count  # the stall came in the middle of the send
    got = Counter(server.handler.recipients())
    duplicates = _check_everyone_once(store_url, tmp_path, got, emails)
    # At most the messages in flight when the leases ran out: one per connection per worker.
    assert duplicates <= CONNECTIONS * WORKERS, got.most_common(5)


@pytest.mark.slow(seconds=9)
def test_a_link_cut_mid_send_is_one_line_and_exit_75_and_the_next_run_finishes(
    tmp_path: Path, store_url: str, pg_cluster: Cluster, send: Send
) -> None:
    count = 200
    with run_smtp_server() as server, run_link(pg_cluster.port, latency=0.005) as link:
        server.handler.delay = 0.01
        # The next run takes the cut run's rows over once their lease runs out.
        write_send_project(tmp_path, port=server.port, connections=CONNECTIONS, lease=2.0)
        emails = add_confirmed(tmp_path, store_url, count)
        first = send(tmp_path, link.url(store_url))
        assert server.handler.wait_for(40, timeout=30), "the send never got going"
        link.cut()  # every connection to the store breaks (a fail-over, a reset link)
        code = _finish(send, tmp_path, link, store_url, first)
    assert code == 75
    got = Counter(server.handler.recipients())
    duplicates = _check_everyone_once(store_url, tmp_path, got, emails)
    # The cut run's messages accepted and not yet recorded: one per connection per worker.
    assert duplicates <= CONNECTIONS * WORKERS, got.most_common(5)

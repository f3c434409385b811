"""`syndicate send` on a PostgreSQL store when the server is not there, or goes away.

A real `syndicate send` subprocess, a real aiosmtpd sink, and a PostgreSQL cluster of
this module's own (it is restarted, so not the session's): unreachable at start is one
line and exit 75; restarted in the middle of a send, the run finishes or exits 75 and the
next run finishes, and nobody is lost.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from syndicate.store import open_database
from syndicate.store.subscribers import add_subscriber
from tests.plugins.postgres import ENV_STORE_URL, Cluster
from tests.plugins.smtp import SmtpServer, run_smtp_server

pytestmark = pytest.mark.slow

DUMP = """Thông xe cầu Sông Lam
31/10/2024 09:15
LGO - Sáng nay 31/10, tỉnh Lam Giang thông xe cầu Sông Lam.
Cầu dài 680 m, rộng 21 m với bốn làn xe cơ giới.
Hoài Nam
"""
CONNECTIONS = 2


def _project(folder: Path, server: SmtpServer) -> None:
    (folder / "seeds").mkdir()
    (folder / "seeds" / "day1.txt").write_text(DUMP, encoding="utf-8")
    (folder / "syndicate.toml").write_text(
        '[site]\nbase_url = "https://news.example.org/"\n'
        '[mail]\ntransport = "smtp"\nfrom = "News <news@example.org>"\n'
        'postal_address = "12 Trần Hưng Đạo"\n'
        f'[smtp]\nhost = "127.0.0.1"\nport = {server.port}\ntls = "none"\n'
        f"connections = {CONNECTIONS}\ntimeout = 5\n"
        "lease = 3\n",  # the next run takes over a cut-off run's batch once this runs out
        encoding="utf-8",
    )


def _send(folder: Path, url: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNDICATE_")}
    env[ENV_STORE_URL] = url
    return subprocess.Popen(
        [sys.executable, "-m", "syndicate", "-q", "send"],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_an_unreachable_server_at_start_is_one_line_and_exit_75(
    tmp_path: Path, smtpd: SmtpServer
) -> None:
    _project(tmp_path, smtpd)
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = _send(tmp_path, f"postgresql://news:pw-never-shown@127.0.0.1:{port}/news")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err
    lines = err.strip().splitlines()
    assert len(lines) <= 2, err  # the error line, and at most its hint on the next
    assert f"PostgreSQL at 127.0.0.1:{port}/news: cannot reach the database" in lines[0]
    assert "pw-never-shown" not in out + err
    assert "Traceback" not in err
    assert smtpd.handler.messages == []
    assert not (tmp_path / "syndicate.db").exists()


@pytest.mark.slow(seconds=8)
def test_a_restart_in_the_middle_of_a_send_loses_nobody(
    tmp_path: Path, own_cluster: Cluster
) -> None:
    url = own_cluster.new_database()
    emails = [f"reader{i}@example.org" for i in range(300)]
    confirmed = datetime.now(UTC) - timedelta(days=1)  # before today's digest is made
    with open_database(tmp_path / "unused.db", url=url) as db:
        for email in emails:
            add_subscriber(db, email, now=confirmed)
    with run_smtp_server() as server:
        server.handler.delay = 0.01  # slow enough to restart the server mid-send
        _project(tmp_path, server)
        first = _send(tmp_path, url)
        assert server.handler.wait_for(40), "the send never got going"
        own_cluster.stop("fast")  # every connection is cut
        time.sleep(0.5)
        own_cluster.start()
        _out, err = first.communicate(timeout=120)
        assert first.returncode in (0, 75), err
        assert "Traceback" not in err
        if first.returncode == 75:
            assert "cannot reach the database" in err
        again = _send(tmp_path, url)  # the next run (cron's) finishes the job
        _out, err = again.communicate(timeout=120)
        assert again.returncode == 0, err
        received = Counter(server.handler.recipients())
    assert set(received) == set(emails), "somebody was never sent the digest"
    duplicates = sum(n - 1 for n in received.values())
    assert duplicates <= CONNECTIONS, received.most_common(5)

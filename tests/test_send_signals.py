"""`syndicate send` stopped by SIGINT and SIGTERM: a real subprocess against a real aiosmtpd.

No message the server may have accepted is cancelled, the lock is released, one line says
what happened, and a later run finishes the job without losing or repeating anyone.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from syndicate.send import open_send_lock
from syndicate.store import open_database
from syndicate.store.subscribers import add_subscriber
from tests.plugins.postgres import open_store, store_environ
from tests.plugins.smtp import SmtpServer, run_smtp_server

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("store")]

SMTP_TIMEOUT = 5
LINE = re.compile(
    r"interrupted: [\d,]+ sent, \d+ in flight; run `syndicate send` again to finish\."
)
DUMP = """Thông xe cầu Sông Lam
31/10/2024 09:15
LGO - Sáng nay 31/10, tỉnh Lam Giang thông xe cầu Sông Lam.
Cầu dài 680 m, rộng 21 m với bốn làn xe cơ giới.
Hoài Nam
"""


def _project(
    folder: Path, server: SmtpServer, subscribers: int, url: str | None = None
) -> list[str]:
    """A project folder; `url`: a PostgreSQL store of its own, named in its syndicate.toml."""
    (folder / "seeds").mkdir()
    (folder / "seeds" / "day1.txt").write_text(DUMP, encoding="utf-8")
    (folder / "syndicate.toml").write_text(
        '[site]\nbase_url = "https://news.example.org/"\n'
        '[mail]\ntransport = "smtp"\nfrom = "News <news@example.org>"\n'
        'postal_address = "12 Trần Hưng Đạo"\n'
        f'[smtp]\nhost = "127.0.0.1"\nport = {server.port}\ntls = "none"\n'
        f"connections = 2\ntimeout = {SMTP_TIMEOUT}\n"
        + (f'[store]\nurl = "{url}"\n' if url else ""),
        encoding="utf-8",
    )
    emails = [f"reader{i}@example.org" for i in range(subscribers)]
    opened = (
        open_database(folder / "syndicate.db", url=url)
        if url
        else open_store(folder / "syndicate.db")
    )
    with opened as db:
        for email in emails:
            add_subscriber(db, email, now=_now())
    return emails


def _now() -> datetime:
    return datetime.now(UTC) - timedelta(days=1)  # confirmed before today's digest is made


def _start(folder: Path, *, own_store: bool = False) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNDICATE_")}
    if not own_store:  # else the folder's syndicate.toml names it
        env |= store_environ()  # the test's store
    return subprocess.Popen(
        [sys.executable, "-m", "syndicate", "-q", "send"],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _lock_is_free(folder: Path) -> bool:
    with open_send_lock(folder / "syndicate.db"):
        return True


def _interrupt_at_random_points(
    folder: Path, seed: int, signals: int, url: str | None = None
) -> int:
    """`signals` runs of `syndicate send`, each stopped by SIGINT at a random point, then a
    run to the end: every subscriber gets exactly one message. Returns the runs interrupted."""
    rng = random.Random(seed)
    with run_smtp_server() as server:
        server.handler.delay = 0.02  # each message takes a moment after its body
        emails = _project(folder, server, 300, url)
        interrupted = 0
        for _ in range(signals):
            before = len(server.handler.messages)
            process = _start(folder, own_store=url is not None)
            # A random point of the send loop: after 1 to 12 more accepted messages.
            server.handler.wait_for(before + rng.randint(1, 12), timeout=60)
            process.send_signal(signal.SIGINT)
            started = time.monotonic()
            _out, err = process.communicate(timeout=SMTP_TIMEOUT + 5)
            assert time.monotonic() - started < SMTP_TIMEOUT + 5
            if process.returncode == 0:  # it finished before the signal came
                break
            assert process.returncode == 130, err
            last = err.splitlines()[-1]
            assert LINE.fullmatch(last), err
            assert _lock_is_free(folder)
            interrupted += 1
        server.handler.delay = 0  # nothing left to interrupt: the last run need not crawl
        final = _start(folder, own_store=url is not None)
        _out, err = final.communicate(timeout=120)
        assert final.returncode == 0, err
        got = Counter(r for m in server.handler.messages for r in m.recipients)
        assert set(got) == set(emails)
        assert max(got.values()) == 1, [e for e, n in got.items() if n > 1]
    return interrupted


@pytest.mark.slow(seconds=30)
def test_interrupts_at_random_points_stop_cleanly_and_a_final_run_loses_nothing(
    tmp_path: Path, store: str, request: pytest.FixtureRequest
) -> None:
    # 20 SIGINTs in two projects of 10, side by side: each start of `syndicate send` is
    # mostly Python starting up, so the two chains share the machine's cores.
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    second = request.getfixturevalue("pg_cluster").new_database() if store == "postgresql" else None
    with ThreadPoolExecutor(max_workers=2) as pool:
        chains = [
            pool.submit(_interrupt_at_random_points, tmp_path / "a", 20, 10),
            # On PostgreSQL the second project has a store of its own, named in its config.
            pool.submit(_interrupt_at_random_points, tmp_path / "b", 21, 10, second),
        ]
        interrupted = [chain.result() for chain in chains]
    assert min(interrupted) >= 5, interrupted


def test_sigterm_stops_gracefully_with_exit_143_and_the_line(tmp_path: Path) -> None:
    with run_smtp_server() as server:
        server.handler.delay = 0.05
        _project(tmp_path, server, 100)
        process = _start(tmp_path)
        server.handler.wait_for(5, timeout=60)
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=SMTP_TIMEOUT + 5)
        assert process.returncode == 143, err
        sent = len(server.handler.messages)
        assert err.splitlines()[-1] == (
            f"interrupted: {sent:,} sent, 0 in flight; run `syndicate send` again to finish."
        )
        assert _lock_is_free(tmp_path)


def test_a_second_ctrl_c_quits_at_once(tmp_path: Path) -> None:
    with run_smtp_server() as server:
        server.handler.delay = 30.0  # every message hangs after its body
        _project(tmp_path, server, 4)
        process = _start(tmp_path)
        assert server.handler.wait_for_data(2, timeout=60)
        process.send_signal(signal.SIGINT)
        with pytest.raises(subprocess.TimeoutExpired):
            process.communicate(timeout=0.5)  # the first waits for the messages in flight
        process.send_signal(signal.SIGINT)
        _out, err = process.communicate(timeout=5)
        assert process.returncode == 130, err
        assert "interrupted again: quitting at once; 2 in flight not recorded" in err
        assert _lock_is_free(tmp_path)

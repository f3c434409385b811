"""Send: a message whose worker is killed (SIGKILL) with it in flight, in every run.

A real `syndicate send` process per run, a real SMTP server (aiosmtpd) that tells the test
when the poisonous recipient's body has arrived, and never answers it; the test kills the
process then, as a recipient that makes its sender die every time would.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from syndicate.send.policy import MAX_ATTEMPTS
from syndicate.store.ledger import day_counts
from tests.plugins.postgres import ENV_STORE_URL, open_store
from tests.plugins.sendproject import write_send_project
from tests.plugins.smtp import SmtpRecorder, run_smtp_server
from tests.test_send_workers import _subscribe

pytestmark = pytest.mark.usefixtures("store")

POISON = "reader3@example.org"


class _Poison(SmtpRecorder):
    """Accepts mail, but never answers the body of a message to POISON: it tells the test,
    which kills the sender."""

    def __init__(self) -> None:
        super().__init__()
        self.reached = threading.Event()
        self.bodies = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if POISON in envelope.rcpt_tos:
            with self.lock:
                self.bodies += 1
            self.reached.set()
            await asyncio.sleep(60)  # the sender is killed long before
            return "451 4.3.0 too late"
        return await super().handle_DATA(server, session, envelope)


def _send(folder: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNDICATE_")}
    if os.environ.get(ENV_STORE_URL):  # the test's PostgreSQL store
        env[ENV_STORE_URL] = os.environ[ENV_STORE_URL]
    return subprocess.Popen(
        [sys.executable, "-m", "syndicate", "send"],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow(seconds=12)
def test_a_message_its_worker_is_killed_by_every_time_stops_after_the_attempt_limit(
    tmp_path: Path,
) -> None:
    # Each run sent it again without counting an attempt: a recipient that kills its sender
    # every time was sent the digest by every run, for good, and the run died each time.
    handler = _Poison()
    with run_smtp_server(handler) as server:
        write_send_project(tmp_path, port=server.port, connections=1, lease=1)
        emails = _subscribe(tmp_path, 0, 8)
        kills, last = 0, None
        for _run in range(MAX_ATTEMPTS + 3):
            process = _send(tmp_path)
            while process.poll() is None and not handler.reached.wait(0.05):
                pass
            if handler.reached.is_set():
                process.kill()
                process.communicate(timeout=30)
                handler.reached.clear()
                kills += 1
                continue
            last = process.communicate(timeout=60)
            assert process.returncode == 1, last  # one recipient failed
            break
    assert last is not None, f"killed in each of {kills} runs"
    # Killed in flight in MAX_ATTEMPTS runs (each counted as an attempt), then given up.
    assert kills == MAX_ATTEMPTS
    assert handler.bodies == MAX_ATTEMPTS
    assert f"{POISON}: taken over again from a worker that was gone" in last[1]
    # Everyone else had it once: the crashes lost nobody and used none of their attempts.
    got = Counter(handler.recipients())
    assert got == Counter(e for e in emails if e != POISON)
    with open_store(tmp_path / "syndicate.db") as db:
        (day,) = db.conn.execute("SELECT day FROM digests").fetchone()
        assert day_counts(db, day=date.fromisoformat(day)) == {"sent": 7, "failed": 1}
        attempts = db.conn.execute(
            "SELECT s.email, d.attempts FROM deliveries AS d"
            " JOIN subscribers AS s ON s.id = d.subscriber_id"
        ).fetchall()
    # Those a killed worker had claimed and never started count its attempt once each, when
    # they go (nobody can tell whether a gone worker had begun them): still sent, and once.
    assert dict(attempts)[POISON] == MAX_ATTEMPTS
    assert all(1 <= n <= 2 for e, n in attempts if e != POISON), attempts


class _PoisonFirst(_Poison):
    """As _Poison, with the poisonous recipient first, and while `stall` every other
    recipient's RCPT slow (a tarpit, DNS checks) until the test has killed the sender
    (`released`): the message on the sender's other connection is still at its envelope
    when the sender is killed. (Released when the poisonous body arrived, as before, a
    loaded machine let that message finish before the kill: a copy in flight, sent twice.)"""

    stall = True

    def __init__(self) -> None:
        super().__init__()
        self.released = threading.Event()

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if address != FIRST and self.stall:
            for _ in range(2000):  # 20 s, within smtp.timeout (below)
                if self.released.is_set():
                    break
                await asyncio.sleep(0.01)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if FIRST in envelope.rcpt_tos:
            self.reached.set()
            await asyncio.sleep(60)  # the sender is killed long before
            return "451 4.3.0 too late"
        return await SmtpRecorder.handle_DATA(self, server, session, envelope)


FIRST = "reader0@example.org"


@pytest.mark.slow(seconds=12)
def test_a_message_never_begun_beside_the_one_killing_its_worker_is_not_charged(
    tmp_path: Path,
) -> None:
    # Each takeover charged the gone worker's attempt on every row it had held, begun or
    # not: reader1, on the other connection and still at its envelope each time reader0's
    # body killed the process, ran out of attempts with reader0 and was never mailed.
    handler = _PoisonFirst()
    with run_smtp_server(handler) as server:
        config = write_send_project(tmp_path, port=server.port, connections=2, lease=1)
        toml = config / "syndicate.toml"
        toml.write_text(toml.read_text().replace("timeout = 5\n", "timeout = 30\n"))
        emails = _subscribe(tmp_path, 0, 4)
        kills, last = 0, None
        for _run in range(MAX_ATTEMPTS + 3):
            handler.stall = kills < MAX_ATTEMPTS  # the last run does not meet reader0's body
            handler.released.clear()
            process = _send(tmp_path)
            while process.poll() is None and not handler.reached.wait(0.05):
                pass
            if handler.reached.is_set():
                process.kill()
                process.communicate(timeout=30)
                handler.released.set()  # the stalled RCPT answers a connection now closed
                handler.reached.clear()
                kills += 1
                continue
            last = process.communicate(timeout=60)
            break
    assert last is not None, f"killed in each of {kills} runs"
    assert kills == MAX_ATTEMPTS, last
    assert Counter(handler.recipients()) == Counter(e for e in emails if e != FIRST), last
    with open_store(tmp_path / "syndicate.db") as db:
        rows = db.conn.execute(
            "SELECT s.email, d.status FROM deliveries AS d"
            " JOIN subscribers AS s ON s.id = d.subscriber_id"
        ).fetchall()
    assert dict(rows) == {e: "failed" if e == FIRST else "sent" for e in emails}

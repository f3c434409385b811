"""A PostgreSQL server that stops answering is a lost server within `store.reply_timeout`.

A real cluster of this module's own whose processes are stopped (SIGSTOP: the kernel still
takes and acknowledges every packet, so TCP never notices, as with a hung host or a
partition that drops replies) and always continued afterwards. A store call, a psycopg
asyncio statement, a sent mark (`LoopStatement`) and a whole `syndicate send` end with the
one-line "cannot reach the database" error (exit 75) within the bound plus a little, never
hang; once the server answers again the next run finishes, nobody lost.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from datetime import UTC, date, datetime
from pathlib import Path

import httpx
import pytest

from syndicate.config import Settings, load_settings
from syndicate.errors import ConfigError, StoreUnavailableError
from syndicate.store import Database, open_database
from syndicate.store.ledger import PgQueue
from syndicate.store.subscribers import add_subscriber, get_by_email
from tests.plugins.postgres import ENV_STORE_URL, Cluster
from tests.plugins.sendproject import add_confirmed, write_send_project
from tests.plugins.smtp import run_smtp_server
from tests.plugins.web import start_live_server
from tests.test_web import form_token, sign_up, subscriber

pytestmark = pytest.mark.slow

BOUND = 1.0  # store.reply_timeout in these tests (seconds)
SLACK = 1.5  # what a wait may take past it: the 0.1 s wake-ups, a loaded machine

CONNECTIONS = 2


def _postmaster(cluster: Cluster) -> int:
    return int((cluster.folder / "data" / "postmaster.pid").read_text().split()[0])


@contextmanager
def stopped(*pids: int, at_most: float = 10.0) -> Iterator[None]:
    """`pids` stopped (SIGSTOP) for the block, in that order, and always continued after:
    at the latest after `at_most` seconds, so a call that would wait for ever (no bound)
    returns and fails its test instead of hanging it."""
    done: list[int] = []

    def go_on() -> None:
        for pid in done:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    watchdog = threading.Timer(at_most, go_on)
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
            done.append(pid)
        watchdog.start()
        yield
    finally:
        watchdog.cancel()
        go_on()


def _whole_server(cluster: Cluster) -> list[int]:
    """The postmaster, then every process it started (backends, checkpointer ...)."""
    postmaster = _postmaster(cluster)
    children = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
    return [postmaster, *map(int, children)]


def _backend(db: Database) -> int:
    return int(db.conn.raw.pgconn.backend_pid)


def test_a_store_call_on_a_silent_server_is_unreachable_within_the_bound(
    tmp_path: Path, own_cluster: Cluster
) -> None:
    url = own_cluster.new_database()
    now = datetime.now(UTC)
    db = open_database(tmp_path / "unused.db", url=url, busy_timeout=0.5, reply_timeout=BOUND)
    try:
        add_subscriber(db, "before@example.org", now=now)
        with stopped(_postmaster(own_cluster), _backend(db)):
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError) as caught:
                add_subscriber(db, "during@example.org", now=now)
            took = time.monotonic() - started
            assert BOUND <= took < BOUND + SLACK, took
            message = str(caught.value)
            where = f"PostgreSQL at 127.0.0.1:{own_cluster.port}/"
            assert message.startswith(where), message
            assert "cannot reach the database: the server sent nothing for 1 s" in message
            assert "\n" not in message
            # The connection was closed: the next call fails at once, never waits again, and
            # says why.
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError, match="sent nothing for 1 s"):
                get_by_email(db, "before@example.org")
            assert time.monotonic() - started < 0.5
            # Connecting to a postmaster that does not answer ends too (2 s: libpq's least).
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError, match="cannot reach the database"):
                open_database(tmp_path / "unused.db", url=url, reply_timeout=BOUND * 2)
            assert time.monotonic() - started < 2 + SLACK
    finally:
        db.close()
    with open_database(tmp_path / "unused.db", url=url) as again:
        assert get_by_email(again, "before@example.org") is not None
        assert get_by_email(again, "during@example.org") is None  # the cut write never committed


def test_a_statement_shorter_than_the_bound_is_not_cut(
    tmp_path: Path, own_cluster: Cluster
) -> None:
    url = own_cluster.new_database()
    with open_database(
        tmp_path / "unused.db", url=url, busy_timeout=0.5, reply_timeout=BOUND
    ) as db:
        db.conn.execute("SELECT pg_sleep(?)", (BOUND * 0.6,))
        # A reply that keeps coming is never silence, however long it all takes (rows of
        # 100 kB: the server sends each at once, where it would gather small ones).
        rows = db.conn.execute(
            "SELECT repeat('x', 100000), pg_sleep(?) FROM generate_series(1, 3)", (BOUND * 0.4,)
        ).fetchall()
        assert len(rows) == 3
    with open_database(tmp_path / "unused.db", url=url, reply_timeout=0) as db:  # 0: no bound
        db.conn.execute("SELECT pg_sleep(?)", (BOUND * 1.3,))


def test_asyncio_statements_on_a_silent_server_end_within_the_bound(
    tmp_path: Path, own_cluster: Cluster
) -> None:
    url = own_cluster.new_database()
    db = open_database(tmp_path / "unused.db", url=url, busy_timeout=0.5, reply_timeout=BOUND)

    async def run() -> None:
        queue = await PgQueue.open(db)  # type: ignore[arg-type]
        try:
            claims = int(queue.conn.pgconn.backend_pid)
            marks = int(queue.marks.conn.pgconn.backend_pid)
            with stopped(_postmaster(own_cluster), claims, marks):
                started = time.monotonic()
                with pytest.raises(StoreUnavailableError, match="sent nothing for 1 s"):
                    await queue.claim(
                        day=date(2024, 10, 31),
                        owner="test",
                        now=datetime.now(UTC),
                        lease=60,
                        limit=10,
                        max_attempts=3,
                    )
                assert BOUND <= time.monotonic() - started < BOUND + SLACK
                assert queue.conn.closed
                started = time.monotonic()
                with pytest.raises(StoreUnavailableError, match="sent nothing for 1 s"):
                    await queue.start_mark(
                        day=date(2024, 10, 31), subscriber_ids=[1], now=datetime.now(UTC)
                    )
                assert BOUND <= time.monotonic() - started < BOUND + SLACK
                assert queue.marks.conn.closed
                assert not queue.marks.running
        finally:
            await queue.close()

    try:
        asyncio.run(run())
    finally:
        db.close()


def test_serve_answers_503_while_postgresql_is_silent_and_uses_it_again_after(
    settings: Settings, now: datetime, own_cluster: Cluster
) -> None:
    store = dataclasses.replace(
        settings.store, url=own_cluster.new_database(), busy_timeout=0.5, reply_timeout=BOUND
    )
    with ExitStack() as stack:
        server = start_live_server(stack, settings, now, store=store)
        with httpx.Client(base_url=server.url, timeout=15) as client:
            assert sign_up(client, "an@example.org", server=server).status_code == 200
            token = form_token(client)
            with stopped(*_whole_server(own_cluster)):
                started = time.monotonic()
                away = client.post(
                    "subscribe",
                    data={"email": "binh@example.org", "language": "vi", "form_token": token},
                )
                assert away.status_code == 503
                assert away.headers["retry-after"] == "5"
                assert time.monotonic() - started < BOUND + SLACK
                started = time.monotonic()
                health = client.get("healthz")
                assert health.json()["checks"]["database"] == "unavailable"
                assert time.monotonic() - started < BOUND + SLACK
            # Answering again: the connections closed for the silence are opened anew.
            assert client.get("healthz").json()["checks"]["database"] == "ok"
            assert sign_up(client, "binh@example.org", server=server).status_code == 200
        assert subscriber(server.settings, "binh@example.org") is not None


def test_reply_timeout_must_be_more_than_busy_timeout(tmp_path: Path) -> None:
    config = tmp_path / "syndicate.toml"
    config.write_text("[store]\nbusy_timeout = 10\nreply_timeout = 10\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"store\.reply_timeout .* more than store\.busy_timeout"):
        load_settings(config, {})
    config.write_text("[store]\nbusy_timeout = 10\nreply_timeout = 0\n", encoding="utf-8")
    assert load_settings(config, {}).store.reply_timeout == 0


def _project(folder: Path, smtp_port: int) -> None:
    # The next run takes over a cut-off run's batch once its lease (3 s) runs out.
    write_send_project(folder, port=smtp_port, connections=CONNECTIONS, lease=3)
    config = folder / "syndicate.toml"
    config.write_text(
        config.read_text(encoding="utf-8")
        + f"[store]\nbusy_timeout = 0.5\nreply_timeout = {BOUND}\n",
        encoding="utf-8",
    )


def _send(folder: Path, url: str, *options: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNDICATE_")}
    env[ENV_STORE_URL] = url
    return subprocess.Popen(
        [sys.executable, "-m", "syndicate", "-q", "send", *options],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_a_send_whose_server_stops_answering_exits_75_and_the_next_run_finishes(
    tmp_path: Path, own_cluster: Cluster, workers: int
) -> None:
    url = own_cluster.new_database()
    with run_smtp_server() as server:
        server.handler.delay = 0.01  # slow enough to stop the server mid-send
        _project(tmp_path, server.port)
        emails = add_confirmed(tmp_path, url, 300)
        first = _send(tmp_path, url, "--workers", str(workers))
        try:
            assert server.handler.wait_for(40 * workers), "the send never got going"
            with stopped(*_whole_server(own_cluster)):
                started = time.monotonic()
                _out, err = first.communicate(timeout=15)
                took = time.monotonic() - started
                sent_while_stopped = len(server.handler.messages)
        finally:
            if first.poll() is None:
                first.kill()
                first.communicate()
        assert first.returncode == 75, err
        assert "Traceback" not in err
        lines = [line for line in err.splitlines() if line.startswith("Error:")]
        assert len(lines) == 1, err  # the error in one line, its hint on it
        assert f"PostgreSQL at 127.0.0.1:{own_cluster.port}/" in lines[0], err
        # The first silence is what it says, not a later statement's closed connection.
        assert "cannot reach the database: the server sent nothing for 1 s" in lines[0], err
        # Each of the run's three connections may wait out the bound once, one after another.
        assert took < 3 * BOUND + SLACK, (took, err)
        assert sent_while_stopped < len(emails), "the whole send fitted before the stop"
        again = _send(tmp_path, url)
        _out, err = again.communicate(timeout=60)
        assert again.returncode == 0, err
        received = Counter(server.handler.recipients())
    assert set(received) == set(emails), "somebody was never sent the digest"
    duplicates = sum(n - 1 for n in received.values())
    assert duplicates <= CONNECTIONS * workers, received.most_common(5)


def _stalled_in_a_write(url: str, process: subprocess.Popen[str], at_most: float = 30.0) -> None:
    """Stop `process` (SIGSTOP) at a moment its session holds the store's write lock, idle
    in its transaction: a machine that stalls (or dies behind a firewall that drops its
    packets) in the middle of a write. Tries again (continue, stop) until it is so."""
    import psycopg

    check = (
        "SELECT count(*) FROM pg_stat_activity AS a JOIN pg_locks AS l ON l.pid = a.pid"
        " WHERE a.datname = current_database() AND a.state = 'idle in transaction'"
        " AND l.locktype = 'advisory' AND l.granted"
    )
    deadline = time.monotonic() + at_most
    with psycopg.connect(url, autocommit=True) as admin:
        while time.monotonic() < deadline:
            assert process.poll() is None, "it finished before it could be stopped in a write"
            os.kill(process.pid, signal.SIGSTOP)
            if admin.execute(check).fetchone()[0]:
                return
            os.kill(process.pid, signal.SIGCONT)
            time.sleep(0.005)  # let it run on to another statement
    raise AssertionError("never found it in a write transaction")


def test_a_machine_stalled_inside_a_write_frees_the_store_after_the_reply_timeout(
    pg_cluster: Cluster, tmp_path: Path
) -> None:
    # Every write takes the store's one advisory lock. A machine that stopped inside a write
    # transaction (hung, swapped out, or gone behind a firewall that drops its packets, so
    # the server's TCP keeps the session for about two hours) held it: every other
    # machine's writes (sign-ups, `send`, `subscribers add`) were busy, exit 75 or 503, until
    # then. The server now ends a write transaction whose client has sent nothing for
    # store.reply_timeout, as the client ends a wait for a server that sends nothing.
    url = pg_cluster.new_database()
    config = "[store]\nbusy_timeout = 0.5\nreply_timeout = 2\n"
    machines = [tmp_path / "a", tmp_path / "b"]
    for folder in machines:
        (folder / "seeds").mkdir(parents=True)
        (folder / "syndicate.toml").write_text(config, encoding="utf-8")
    rows = "".join(f"reader{n}@example.org\n" for n in range(20000))
    (machines[0] / "list.csv").write_text("email\n" + rows, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNDICATE_")}
    env[ENV_STORE_URL] = url
    with open_database(tmp_path / "unused.db", url=url):
        pass  # made and migrated: the import's writes are its rows'
    stalled = subprocess.Popen(
        [sys.executable, "-m", "syndicate", "subscribers", "import", "list.csv"],
        cwd=machines[0],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _stalled_in_a_write(url, stalled)
        started = time.monotonic()
        while True:  # the other machine's write: busy until the stalled one's lock is gone
            done = subprocess.run(
                [sys.executable, "-m", "syndicate", "subscribers", "add", "lan@example.org"],
                cwd=machines[1],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            if done.returncode != 75 or time.monotonic() - started > 12:
                break
        assert done.returncode == 0, done.stderr
        assert time.monotonic() - started < 2 + 10  # the bound, the busy waits, a start
        # The stalled machine, going on, finds its session ended: one line, exit 75, and
        # what it had not committed is not there (the next run imports the rest).
        os.kill(stalled.pid, signal.SIGCONT)
        _out, err = stalled.communicate(timeout=60)
        assert stalled.returncode == 75, err
        [line] = err.splitlines()
        assert line.startswith("Error: PostgreSQL at 127.0.0.1:"), line
        assert "Traceback" not in err
    finally:
        with suppress(ProcessLookupError):
            os.kill(stalled.pid, signal.SIGCONT)
            stalled.kill()
        stalled.wait()
        pg_cluster.drop_database(url)

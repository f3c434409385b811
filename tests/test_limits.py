"""Where production machines run out of things: a PostgreSQL server's connection slots.

Real parts only: a PostgreSQL cluster of this module's own with a small max_connections
(and connections of the test's holding most of them), `syndicate send` as a subprocess.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from email import message_from_bytes
from pathlib import Path

import pytest

from syndicate.errors import StoreUnavailableError
from tests.plugins.postgres import ENV_STORE_URL, Cluster, start_cluster
from tests.plugins.sendproject import DUMP

MAX_CONNECTIONS = 8


@pytest.fixture(scope="module")
def small_cluster() -> Iterator[Cluster]:
    """A cluster of the module's own taking MAX_CONNECTIONS connections, none kept for
    superusers (the tests connect as one)."""
    try:
        cluster = start_cluster()
    except (FileNotFoundError, KeyError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"no PostgreSQL cluster could start here: {exc}")
    try:
        cluster.stop()
        options = (
            f"-p {cluster.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={cluster.folder} -c fsync=off "
            f"-c max_connections={MAX_CONNECTIONS} -c superuser_reserved_connections=0"
        )
        cluster.pg_ctl("-w", "-l", str(cluster.folder / "server.log"), "-o", options, "start")
        yield cluster
    finally:
        cluster.stop("immediate")
        shutil.rmtree(cluster.folder, ignore_errors=True)


def _syndicate(folder: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNDICATE_")}
    env[ENV_STORE_URL] = url
    return subprocess.run(
        [sys.executable, "-m", "syndicate", *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if not line.startswith("Warning: digest of")]


@pytest.mark.parametrize(
    "words",
    [
        "sorry, too many clients already",
        'too many connections for role "news"',
        'too many connections for database "news"',
        "remaining connection slots are reserved for roles with the SUPERUSER attribute",
    ],
)
def test_a_server_out_of_connection_slots_is_named_so(words: str) -> None:
    from syndicate.store import not_connected

    where = "PostgreSQL at db.example.org:5432/news"
    failed = Exception(
        f'connection failed: connection to server at "10.0.0.5", port 5432 failed: FATAL:  {words}'
    )
    error = not_connected(where, "postgresql://news@db.example.org/news", failed)
    assert isinstance(error, StoreUnavailableError)
    assert error.exit_code == 75
    assert error.message == f"{where}: the server takes no more connections: {words}."
    assert "max_connections" in str(error)


@pytest.mark.slow(seconds=8)
def test_send_workers_beyond_max_connections_say_so_and_the_next_run_finishes(
    small_cluster: Cluster, tmp_path: Path
) -> None:
    import psycopg

    url = small_cluster.new_database()
    (tmp_path / "seeds").mkdir()
    (tmp_path / "seeds" / "day1.txt").write_text(DUMP, encoding="utf-8")
    emails = [f"reader{n}@example.org" for n in range(12)]
    (tmp_path / "list.csv").write_text("email\n" + "\n".join(emails) + "\n", encoding="utf-8")
    assert _syndicate(tmp_path, url, "subscribers", "import", "list.csv").returncode == 0
    # Others hold all but two of the server's connections: no worker gets the three it needs.
    held = [psycopg.connect(url, autocommit=True) for _ in range(MAX_CONNECTIONS - 2)]
    try:
        done = _syndicate(tmp_path, url, "send", "--workers", "3")
    finally:
        for conn in held:
            conn.close()
    assert done.returncode == 75, done.stderr
    assert "Traceback" not in done.stderr
    [line] = _errors(done.stderr)
    assert line.startswith("Error: PostgreSQL at 127.0.0.1:"), line
    assert "the server takes no more connections: sorry, too many clients already." in line
    assert "raise its max_connections" in line
    assert "Check that the server runs" not in line  # it does: it is full
    # Slots free again, for the parent and two workers: that run sends each reader the
    # digest, once.
    again = _syndicate(tmp_path, url, "send", "--workers", "2")
    assert again.returncode == 0, again.stderr
    assert _errors(again.stderr) == []
    mails = sorted((tmp_path / "outbox").glob("*/*.eml"))
    to = Counter(str(message_from_bytes(path.read_bytes())["To"]) for path in mails)
    assert to == Counter(emails)

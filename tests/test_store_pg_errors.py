"""psycopg loads only for a PostgreSQL store, and its errors never leave `store.postgres`.

A command on SQLite never imports psycopg (about 70 ms of every start): `store.DB_ERRORS`
names PostgreSQL's failures by the store's own classes (`store.pgerrors`), into which
`store.postgres` turns each psycopg error that leaves it: a statement's, a row fetched
(client- or server-side), a constraint's, the asyncio connection's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from syndicate.errors import StoreBusyError
from syndicate.store import DB_ERRORS, INTEGRITY_ERRORS, PgDatabase, open_database, store_error
from syndicate.store.pgerrors import PgError, PgIntegrityError
from tests.plugins.postgres import ENV_STORE_URL, Cluster

SEEDS = Path(__file__).resolve().parent.parent / "seeds"

# Runs commands in process, then says whether psycopg was imported.
_PROBE = """
import sys
from click.testing import CliRunner
from syndicate.cli import cli
for args in (
    ["build"],
    ["subscribers", "add", "reader@example.org"],
    ["subscribers", "list"],
    ["digest"],
    ["send", "--dry-run"],
):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, (args, result.output, result.exception)
print("psycopg" in sys.modules)
"""


def _probe(folder: Path, url: str) -> str:
    shutil.copytree(SEEDS, folder / "seeds")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNDICATE_", "PG"))}
    if url:
        env[ENV_STORE_URL] = url
    done = subprocess.run(
        [sys.executable, "-c", _PROBE],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.slow(seconds=4)
def test_commands_on_sqlite_never_import_psycopg(tmp_path: Path) -> None:
    assert _probe(tmp_path, "") == "False"


@pytest.mark.slow(seconds=4)
def test_the_same_commands_on_postgresql_import_it(pg_cluster: Cluster, tmp_path: Path) -> None:
    url = pg_cluster.new_database()
    try:
        assert _probe(tmp_path, url) == "True"
    finally:
        pg_cluster.drop_database(url)


@pytest.fixture
def pg(pg_cluster: Cluster, tmp_path: Path) -> Iterator[PgDatabase]:
    url = pg_cluster.new_database()
    db = open_database(tmp_path / "unused.db", url=url)
    assert isinstance(db, PgDatabase)
    yield db
    db.close()
    pg_cluster.drop_database(url)


def _check(error: BaseException, sqlstate: str | None) -> None:
    """`error` is the store's own, with psycopg's as its cause."""
    assert isinstance(error, PgError)
    assert isinstance(error, DB_ERRORS)
    assert isinstance(error.__cause__, psycopg.Error)
    assert error.sqlstate == sqlstate
    assert str(error) == str(error.__cause__)


def test_a_failed_statement_and_a_refused_row_are_the_stores_errors(pg: PgDatabase) -> None:
    with pytest.raises(PgError) as caught:
        pg.conn.execute("SELECT no_such_column FROM meta")
    _check(caught.value, "42703")
    assert type(caught.value) is PgError
    pg.conn.execute("CREATE TABLE t (id integer PRIMARY KEY)")
    pg.conn.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(PgIntegrityError) as refused:
        pg.conn.execute("INSERT INTO t VALUES (?)", (1,))
    _check(refused.value, "23505")
    assert isinstance(refused.value, INTEGRITY_ERRORS)
    with pytest.raises(PgIntegrityError):
        pg.conn.executemany("INSERT INTO t VALUES (?)", [(2,), (2,)])
    assert "duplicate key" in str(store_error(pg.path, "cannot add", refused.value))


def test_a_row_that_fails_as_it_is_fetched_is_the_stores_error(pg: PgDatabase) -> None:
    # psycopg reads each row as it is fetched: a date past year 9999 cannot be one.
    cursor = pg.conn.execute("SELECT 'infinity'::date")
    with pytest.raises(PgError) as caught:
        cursor.fetchone()
    _check(caught.value, None)
    for fetch in ("fetchall", "fetchmany", "__next__"):
        cursor = pg.conn.execute("SELECT 'infinity'::date")
        with pytest.raises(PgError):
            getattr(cursor, fetch)()
    # A server-side cursor (`store copy` reads through one): the server fails the FETCH.
    with pg.snapshot():
        named = pg.conn.raw.cursor(name="probe")
        named.execute("SELECT 1 / (5 - x) FROM generate_series(1, 10) AS x")
        with pytest.raises(PgError) as fetched:
            named.fetchmany(10)
        _check(fetched.value, "22012")
        named.close()
    # COPY, as `store copy` writes: a row the table refuses.
    pg.conn.execute("CREATE TABLE c (id integer PRIMARY KEY)")

    def copy_twice() -> None:
        with pg.transaction(), pg.conn.raw.cursor().copy("COPY c (id) FROM STDIN") as copy:
            copy.write_row((1,))
            copy.write_row((1,))

    with pytest.raises(PgIntegrityError):
        copy_twice()


async def test_the_async_connections_errors_are_the_stores(pg: PgDatabase) -> None:
    conn = await pg.connect_async()
    try:
        with pytest.raises(PgError) as caught:
            await conn.execute("SELECT no_such_function()")
        _check(caught.value, "42883")
        cursor = await conn.execute("SELECT 'infinity'::date")
        with pytest.raises(PgError):
            await cursor.fetchall()
    finally:
        await conn.close()
    with pytest.raises(PgError) as closed:  # a closed connection: the server is gone
        await conn.execute("SELECT 1")
    assert closed.value.broken


def test_a_busy_server_says_what_kept_it_busy(pg: PgDatabase) -> None:
    """Each of PostgreSQL's "try again later" errors is the busy line (exit 75), saying what
    happened: a deadlock between two senders was reported as "another syndicate command is
    writing", which sent an operator looking for a command that was not there."""
    pg.conn.execute("SET statement_timeout = 50")
    with pytest.raises(PgError) as caught:
        pg.conn.execute("SELECT pg_sleep(5)")
    pg.conn.execute("SET statement_timeout = 0")
    _check(caught.value, "57014")
    timed_out = store_error(pg.path, "cannot read", caught.value)
    assert isinstance(timed_out, StoreBusyError)
    assert timed_out.exit_code == 75
    assert str(timed_out) == (
        f"{pg.path}: the database is busy (a statement ran past its time limit). "
        "Try again in a moment."
    )
    deadlock = store_error(pg.path, "cannot mark", PgError("deadlock", sqlstate="40P01"))
    assert "waited on each other's rows; PostgreSQL stopped this one" in str(deadlock)
    full = store_error(pg.path, "cannot open", PgError("too many", sqlstate="53300"))
    assert "no connection free (max_connections)" in str(full)
    lock = store_error(pg.path, "cannot write", PgError("lock timeout", sqlstate="55P03"))
    assert "(another syndicate command is writing)" in str(lock)

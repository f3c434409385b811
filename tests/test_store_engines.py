"""The two store engines: same schema, same version, and the failures a user meets.

SQLite builds its tables step by step (store/schema.py); PostgreSQL's twin starts at step
9 (store/pg_schema.py). These tests hold the two together, and check what `syndicate`
says when PostgreSQL is down, refuses, or was written by a newer syndicate.
"""

from __future__ import annotations

import os
import random
import socket
import threading
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from syndicate.cli import cli
from syndicate.errors import StoreError, StoreUnavailableError
from syndicate.store import PgDatabase, open_database, teasers
from syndicate.store.pg_schema import PG_FIRST_VERSION, PG_MIGRATIONS
from syndicate.store.pgerrors import PgError, is_gone
from syndicate.store.postgres import positional, redact, translate, where
from syndicate.store.schema import MIGRATIONS
from tests.plugins.postgres import ENV_STORE_URL, Cluster


def _sqlite_columns(path: Path) -> dict[str, list[str]]:
    with open_database(path) as db:
        tables = [
            str(row[0])
            for row in db.conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        return {
            table: [str(col[1]) for col in db.conn.execute(f'PRAGMA table_info("{table}")')]
            for table in tables
        }


def _pg_columns(url: str) -> dict[str, list[str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'public' AND table_name != 'syndicate_schema' "
            "ORDER BY table_name, ordinal_position"
        ).fetchall()
    columns: dict[str, list[str]] = {}
    for table, column in rows:
        columns.setdefault(str(table), []).append(str(column))
    return columns


def test_both_engines_have_the_same_tables_columns_and_version(
    tmp_path: Path, pg_cluster: Cluster
) -> None:
    url = pg_cluster.new_database()
    with open_database(Path("unused"), url=url) as db:
        assert isinstance(db, PgDatabase)
        assert db.schema_version == len(MIGRATIONS)
    with open_database(tmp_path / "s.db") as db:
        assert db.schema_version == len(MIGRATIONS)
    assert _pg_columns(url) == _sqlite_columns(tmp_path / "s.db")


def test_every_step_from_the_first_postgresql_one_has_a_postgresql_twin() -> None:
    assert sorted(PG_MIGRATIONS) == list(range(PG_FIRST_VERSION, len(MIGRATIONS) + 1))


def test_opening_twice_migrates_once(pg_cluster: Cluster) -> None:
    url = pg_cluster.new_database()
    open_database(Path("unused"), url=url).close()
    with open_database(Path("unused"), url=url) as db:  # nothing left to run
        assert db.schema_version == len(MIGRATIONS)


def test_processes_opening_a_new_store_at_once_migrate_it_once(pg_cluster: Cluster) -> None:
    """A transaction begun before another's migration committed could still see no tables
    in its catalog cache after waiting for the lock, and make them again (it did)."""
    url = pg_cluster.new_database()
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            open_database(Path("unused"), url=url).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with open_database(Path("unused"), url=url) as db:
        assert db.schema_version == len(MIGRATIONS)


def test_a_store_from_a_newer_syndicate_is_one_clear_line(pg_cluster: Cluster) -> None:
    url = pg_cluster.new_database()
    open_database(Path("unused"), url=url).close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE syndicate_schema SET version = 99")
    with pytest.raises(StoreError, match="schema version 99 is newer than this syndicate knows"):
        open_database(Path("unused"), url=url)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed again when the block ends


def test_an_unreachable_server_is_exit_75_naming_the_host_and_never_the_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    port = _closed_port()
    url = f"postgresql://news:s3cr3t-pw@127.0.0.1:{port}/syndicate"
    with pytest.raises(StoreUnavailableError) as caught:
        open_database(tmp_path / "unused.db", url=url)
    assert caught.value.exit_code == 75
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert "s3cr3t-pw" not in str(caught.value)
    assert not (tmp_path / "unused.db").exists()  # no SQLite file made instead

    (tmp_path / "seeds").mkdir()
    result = CliRunner().invoke(
        cli,
        ["subscribers", "add", "an@example.org"],
        env={ENV_STORE_URL: url, "SYNDICATE_CONFIG": ""},
        catch_exceptions=False,
    )
    assert result.exit_code == 75, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].startswith(f"Error: PostgreSQL at 127.0.0.1:{port}/syndicate: cannot reach")
    assert "s3cr3t-pw" not in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "syndicate.db").exists()


def test_vietnamese_text_goes_through_whatever_client_encoding_the_machine_sets(
    pg_cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGCLIENTENCODING", "LATIN1")
    text = "Thông xe cầu Sông Lam"
    url = pg_cluster.new_database()
    for given in (url, url + "?client_encoding=LATIN1"):
        with open_database(Path("unused"), url=given) as db:
            with db.transaction() as conn:
                conn.execute("DELETE FROM meta WHERE key = 'probe'")
                conn.execute("INSERT INTO meta (key, value) VALUES ('probe', ?)", (text,))
            assert db.conn.execute("SELECT value FROM meta WHERE key = 'probe'").fetchone() == (
                text,
            )


def test_a_role_without_rights_is_one_line_not_a_traceback(pg_cluster: Cluster) -> None:
    # A database and a role of the test's own, both dropped after: not one emptied after an
    # earlier test, and no role left with rights on a database for a later one.
    dbname, role = f"weak_{os.getpid()}", f"reader_{os.getpid()}"
    with psycopg.connect(pg_cluster.url("postgres"), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{dbname}" TEMPLATE template0 STRATEGY FILE_COPY')
        admin.execute(f'CREATE ROLE "{role}" LOGIN')
        try:
            url = pg_cluster.url(dbname)
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
                conn.execute(f'GRANT CONNECT ON DATABASE "{dbname}" TO "{role}"')
            weak = url.replace("postgres@", f"{role}@")
            with pytest.raises(StoreError, match="not a usable syndicate database: permission"):
                open_database(Path("unused"), url=weak)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
            admin.execute(f'DROP ROLE IF EXISTS "{role}"')


def test_store_url_must_be_a_postgresql_url_and_is_not_echoed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "seeds").mkdir()
    result = CliRunner().invoke(
        cli,
        ["subscribers", "list"],
        env={ENV_STORE_URL: "mysql://u:hunter2@db/x", "SYNDICATE_CONFIG": ""},
    )
    assert result.exit_code == 2
    assert "store.url" in result.output
    assert "hunter2" not in result.output


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://news:s3cr3t%pw@127.0.0.1:1/db",  # libpq quoted the token: the password
        "postgresql://news:s3cr3t%00pw@127.0.0.1:1/db",
        "postgresql://news:s3cr3t-pw@[::1/db",  # libpq quoted the whole URL
        "postgresql://news:s3cr3t/pw@127.0.0.1:1/db",  # read as host news, port s3cr3t
        # libpq ends the password at the first '@': the rest was the host, shown and looked up
        "postgresql://news:p@s3cr3t@127.0.0.1:1/db",
        "postgresql://news:s3cr3t-pw@127.0.0.1:port/db",  # urlsplit raised: a traceback
        "postgresql://news:s3cr3t-pw@127.0.0.1/db?bogus=1",
    ],
)
def test_a_url_libpq_cannot_read_is_one_line_that_never_shows_the_password(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "seeds").mkdir()
    result = CliRunner().invoke(
        cli, ["subscribers", "list"], env={ENV_STORE_URL: url, "SYNDICATE_CONFIG": ""}
    )
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: PostgreSQL URL: libpq cannot read it: ")
    assert len(result.output.splitlines()) == 1
    assert "s3cr3t" not in result.output
    assert not (tmp_path / "syndicate.db").exists()


def test_messages_name_the_hosts_libpq_connects_to() -> None:
    assert where("postgresql://u:pw@h1:5432,h2:5433/news") == "PostgreSQL at h1:5432,h2:5433/news"
    assert where("postgresql://u:pw@ignored/news?host=/run/pg") == "PostgreSQL at /run/pg/news"
    assert where("postgresql://u:pw@db.example.org/news") == "PostgreSQL at db.example.org/news"
    assert where("postgresql://u:s3cr3t%pw@h/news") == "PostgreSQL"
    # What libpq reads as it is: '#' in a password, '@' in a parameter's value.
    assert where("postgresql://u:pw#x@h/news") == "PostgreSQL at h/news"
    assert where("postgresql://u@h/news?passfile=/home/a@b/p") == "PostgreSQL at h/news"


@pytest.mark.parametrize(
    ("sqlite", "psycopg_form"),
    [
        ("SELECT ? , ?", "SELECT %s , %s"),
        ("WHERE a = :a AND b = :b_2", "WHERE a = %(a)s AND b = %(b_2)s"),
        ("SELECT 'a:b ? 50%' , x::text", "SELECT 'a:b ? 50%%' , x::text"),
        ("SELECT 'it''s :x' || ?", "SELECT 'it''s :x' || %s"),
        ("LIKE '%x' OR y = 5 % 2", "LIKE '%%x' OR y = 5 %% 2"),
        (
            'SELECT "odd:name" FROM t -- a ? comment\nWHERE 1',
            'SELECT "odd:name" FROM t -- a ? comment\nWHERE 1',
        ),
        ("key < teasers.key || char(1114111)", "key < teasers.key || chr(1114111)"),
        # Read whole, so what is inside stays as written (a `'` there opened no literal):
        ("SELECT E'it\\'s :x ?' , ?", "SELECT E'it\\'s :x ?' , %s"),
        ("SELECT $$ it's :x ? $$, $q$ ? $q$ , :y", "SELECT $$ it's :x ? $$, $q$ ? $q$ , %(y)s"),
        ("SELECT /* it's ?\n char( */ :a, 'b'", "SELECT /* it's ?\n char( */ %(a)s, 'b'"),
        ("WHERE name='x' AND LIKE'?'", "WHERE name='x' AND LIKE'?'"),
    ],
)
def test_statements_are_translated_outside_literals_only(sqlite: str, psycopg_form: str) -> None:
    assert translate(sqlite) == psycopg_form


def test_named_parameters_are_numbered_for_a_server_side_prepare() -> None:
    sql = "UPDATE t SET a = :now, b = ':day' WHERE d = :day AND x::text = '50%' AND id = ANY(:ids)"
    assert positional(sql, ["day", "ids", "now"]) == (
        "UPDATE t SET a = $3, b = ':day' WHERE d = $1 AND x::text = '50%' AND id = ANY($2)"
    )
    with pytest.raises(ValueError, match="named parameters only"):
        positional("SELECT ?", [])


def test_redact_drops_only_the_password() -> None:
    assert (
        redact("postgresql://u:pw@h:5/d?sslmode=require") == "postgresql://u@h:5/d?sslmode=require"
    )
    assert redact("postgresql://u@h/d") == "postgresql://u@h/d"


def test_teasers_are_linked_alike_on_both_engines(tmp_path: Path, pg_cluster: Cluster) -> None:
    """PostgreSQL links a batch's teasers with statements of its own (store.teasers): the
    same batches, with many keys sharing prefixes and articles stored again, give the same
    links as SQLite's row-by-row statements."""
    rng = random.Random(20261206)
    base = "tin mới tỉnh lam giang "  # 23 characters: keys differ past the probe's length

    def key() -> str:
        return base + "".join(rng.choice("abc") for _ in range(rng.randint(1, 4)))

    ids = [f"{n:04x}" for n in range(120)]
    batches = []
    for _ in range(12):
        chosen = rng.sample(ids, 15)  # the same id may come back later: stored again
        batches.append(
            [
                (
                    article,
                    tuple(dict.fromkeys(key() for _ in range(rng.randint(0, 2)))),
                    tuple(key() for _ in range(rng.randint(0, 4))),
                )
                for article in chosen
            ]
        )
    found = []
    for db in (
        open_database(tmp_path / "s.db"),
        open_database(Path("unused"), url=pg_cluster.new_database()),
    ):
        with db:
            for batch in batches:
                with db.transaction():
                    teasers.index_keys(db, batch)
            rows = db.conn.execute(
                "SELECT article_id, position, key, target_id FROM teasers"
            ).fetchall()
            found.append(sorted(tuple(row) for row in rows))
    assert found[0] == found[1]
    assert sum(1 for row in found[0] if row[3] is not None) > 50  # many links to compare


def test_a_connection_the_server_ended_while_idle_is_found_dropped_before_use(
    pg_cluster: Cluster, tmp_path: Path
) -> None:
    url = pg_cluster.new_database()
    try:
        with open_database(tmp_path / "unused.db", url=url) as db:
            assert isinstance(db, PgDatabase)
            assert db.conn.is_dropped() is False
            with db.transaction():  # a connection in use is never called dropped
                assert db.conn.is_dropped() is False
            pid = db.conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            with psycopg.connect(url, autocommit=True) as admin:
                # Waits until the backend has ended (and sent its farewell) or 5 s went by.
                ended = admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,)).fetchone()
            assert ended == (True,)
            assert db.conn.is_dropped() is True  # no round trip needed to know
            with pytest.raises(PgError) as caught:  # the store's own, psycopg's as its cause
                db.conn.execute("SELECT 1")
            assert is_gone(caught.value)
            assert isinstance(caught.value.__cause__, psycopg.OperationalError)
            assert db.conn.is_dropped() is True
    finally:
        pg_cluster.drop_database(url)

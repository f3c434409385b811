"""`syndicate store copy`: a whole store from SQLite to PostgreSQL and back, on real stores.

The source is built the way a user builds one (seeds, `send`, sign-ups, erasure, bounce
reports); the PostgreSQL side is a database of the session's throwaway cluster.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from syndicate.cli import AppContext, cli
from syndicate.store import Database, open_database
from syndicate.store.bounces import ReportKind, apply_report
from syndicate.store.copy import copy_store
from syndicate.store.schema import MIGRATIONS
from syndicate.store.subscribers import add_subscriber, expire_sign_ups, get_by_email, signup
from tests.conftest import FIXED_NOW
from tests.plugins.postgres import ENV_STORE_URL, Cluster
from tests.test_store_subscribers import _store_from_before_every_row_was_keyed

SEEDS = Path(__file__).resolve().parent.parent / "seeds"
# The tables a store built as `full_store` builds it has rows in: every kind of row.
FILLED = {
    "article_pages",
    "articles",
    "deliveries",
    "digests",
    "dumps",
    "mail_events",
    "mail_reports",
    "meta",
    "pages",
    "stories",
    "subscribers",
    "suppressions",
    "teasers",
}
PASSWORD = "s3cr3t-pw"  # a test password that must never be printed


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def project(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for seed in SEEDS.glob("*.txt"):
        shutil.copy(seed, workdir / "seeds" / seed.name)
    monkeypatch.chdir(workdir)
    for name in ("SYNDICATE_CONFIG", "SYNDICATE_SECRET", ENV_STORE_URL):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(AppContext, "now", lambda self: FIXED_NOW.timestamp())
    return workdir


@pytest.fixture
def new_pg(pg_cluster: Cluster) -> Iterator[Callable[[], str]]:
    """Make empty databases on the session's cluster; dropped after the test."""
    made: list[str] = []

    def make() -> str:
        made.append(pg_cluster.new_database())
        return made[-1]

    yield make
    for url in made:
        pg_cluster.drop_database(url)


@pytest.fixture
def full_store(project: Path) -> Path:
    """A SQLite store with a row in every table: the seeds built and a digest sent to
    some, then subscribers in every status, an erased one (the newest id), a bounce
    and a complaint read from mail."""
    for email in ("an@example.org", "binh@example.org", "chi@example.org", "dung@example.org"):
        assert _run("subscribers", "add", email)[0] == 0
    code, out, err = _run("send")
    assert (code, err) == (0, ""), out
    assert "sent 4" in out
    assert _run("subscribers", "add", "late@example.org", "--lang", "en")[0] == 0
    assert _run("subscribers", "remove", "binh@example.org")[0] == 0
    db = open_database(project / "syndicate.db")
    with db:
        signup(db, "pending@example.org", language="vi", now=FIXED_NOW)
        for email, kind in (("chi@example.org", "hard"), ("dung@example.org", "complaint")):
            found = get_by_email(db, email)
            assert found is not None
            apply_report(
                db,
                key=f"<report-{kind}@example.org>",
                subscriber_id=found.id,
                kind=ReportKind(kind),
                day=date(2024, 11, 1),
                detail="5.1.1" if kind == "hard" else "abuse",
                bounce_limit=3,
                now=FIXED_NOW,
            )
        add_subscriber(db, "gone@example.org", now=FIXED_NOW)  # the highest id, erased below
        with db.transaction() as conn:  # a row taken over from a gone worker (migration 13)
            conn.execute(
                "UPDATE deliveries SET taken_over = 1 WHERE id = (SELECT min(id) FROM deliveries)"
            )
    assert _run("subscribers", "erase", "gone@example.org")[0] == 0
    return project / "syndicate.db"


def _rows(db: Database) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, by column name, in primary key order."""
    found: dict[str, list[tuple[Any, ...]]] = {}
    with db.snapshot() as conn:
        for table in sorted(TABLES):
            columns, key = SCHEMA[table]
            listed, order = (", ".join(f'"{c}"' for c in names) for names in (columns, key))
            sql = f'SELECT {listed} FROM "{table}" ORDER BY {order}'  # noqa: S608
            found[table] = [tuple(row) for row in conn.execute(sql).fetchall()]
    return found


def _schema() -> dict[str, tuple[list[str], list[str]]]:
    """Each table of the current schema (as SQLite's steps make it): columns, primary key."""
    db = sqlite3.connect(":memory:")
    try:
        for step in MIGRATIONS:
            for statement in step:
                if isinstance(statement, str):  # a Python step changes rows, not tables
                    db.execute(statement)
        names = [
            r[0]
            for r in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%'"
            )
        ]
        schema = {}
        for table in names:
            info = db.execute(f"PRAGMA table_info({table})").fetchall()
            key = [r[1] for r in sorted((r for r in info if r[5]), key=lambda r: r[5])]
            schema[table] = ([r[1] for r in info], key)
        return schema
    finally:
        db.close()


SCHEMA = _schema()
TABLES = set(SCHEMA)


def _count_rows(db: Database) -> int:
    with db.snapshot() as conn:
        return sum(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES)  # noqa: S608


def test_a_full_store_goes_to_postgresql_and_back_with_every_row_unchanged(
    full_store: Path, new_pg: Callable[[], str], tmp_path: Path
) -> None:
    pg_url, pg_url_2 = new_pg(), new_pg()
    back = tmp_path / "back" / "syndicate.db"
    code, out, err = _run("store", "copy", "--from", str(full_store), "--to", pg_url)
    assert (code, err) == (0, "")
    with open_database(full_store) as source:
        before = _rows(source)
        sequence = source.conn.execute("SELECT seq FROM sqlite_sequence").fetchall()
    assert FILLED <= TABLES
    assert all(before[t] for t in FILLED), [t for t in FILLED if not before[t]]
    counts = ", ".join(f"{len(before[t])} {t}" for t in re.findall(r"\d+ (\w+)", out))
    assert out == f"copied: {counts}\n"
    assert set(re.findall(r"\d+ (\w+)", out)) == TABLES
    # PostgreSQL to PostgreSQL, then back to SQLite (a sqlite:/// URL), with --json.
    assert _run("store", "copy", "--from", pg_url, "--to", pg_url_2)[0] == 0
    code, out, err = _run("store", "copy", "--from", pg_url_2, "--to", f"sqlite://{back}", "--json")
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert report["copied"] == {t: len(rows) for t, rows in before.items()}
    assert report["to"] == str(back)
    for url in (pg_url, pg_url_2):
        with open_database(Path(), url=url) as pg:
            assert _rows(pg) == before
    with open_database(back) as copied:
        assert _rows(copied) == before
        assert copied.conn.execute("SELECT seq FROM sqlite_sequence").fetchall() == sequence
        assert copied.schema_version == len(MIGRATIONS)
    taken_over = SCHEMA["deliveries"][0].index("taken_over")
    assert sorted(row[taken_over] for row in before["deliveries"])[-1] == 1
    nonces = [row[SCHEMA["subscribers"][0].index("token_nonce")] for row in before["subscribers"]]
    assert all(type(n) is bytes and len(n) == 16 for n in nonces)


def test_on_postgresql_the_copied_store_goes_on_where_sqlite_left_it(
    full_store: Path, new_pg: Callable[[], str], project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, url, _ = _run("unsubscribe-token", "make", "an@example.org")
    assert code == 0
    token = url.strip().rsplit("token=", 1)[1]
    with open_database(full_store) as source:
        top = source.conn.execute("SELECT max(id) FROM subscribers").fetchone()[0]
        erased = source.conn.execute("SELECT seq FROM sqlite_sequence").fetchone()[0]
    assert erased > top  # the newest subscriber was erased: its id is never handed out again
    outbox = sorted(p.name for p in (project / "outbox").rglob("*.eml"))
    pg_url = new_pg()
    assert _run("store", "copy", "--from", str(full_store), "--to", pg_url)[0] == 0

    monkeypatch.setenv(ENV_STORE_URL, pg_url)
    code, out, err = _run("unsubscribe-token", "verify", token)
    assert (code, err) == (0, "")
    assert out.startswith("valid: subscriber 1 <an@example.org> (confirmed)")
    assert _run("subscribers", "add", "new@example.org")[0] == 0
    with open_database(Path(), url=pg_url) as pg:
        new = get_by_email(pg, "new@example.org")
    assert new is not None
    assert new.id == erased + 1
    # The digest already sent goes only to those who have not had it: the ledger came along.
    code, out, err = _run("send")
    assert code == 0, err
    assert re.search(r"sent 2, failed 0", out), out
    now_in_outbox = sorted(p.name for p in (project / "outbox").rglob("*.eml"))
    day = FIXED_NOW.date().isoformat()
    key = outbox[0].split(".")[2].split("_")[0]  # the digest's (digests.message_key)
    late = [f"{day}.{n}.{key}_localhost.eml" for n in (5, new.id)]  # added after the first send
    assert now_in_outbox == sorted(outbox + late)


def test_a_leavers_sign_up_copied_to_the_other_engine_lapses_back_to_what_it_was(
    full_store: Path, new_pg: Callable[[], str]
) -> None:
    # What a leaver was before the form made them pending is read from the row's own stamps,
    # which the copy carries: on PostgreSQL it lapses back as it would have on SQLite.
    with open_database(full_store) as db:
        before = get_by_email(db, "binh@example.org")
        assert before is not None
        assert signup(db, "binh@example.org", language="vi", now=FIXED_NOW)[0].status == "pending"
    pg_url = new_pg()
    assert _run("store", "copy", "--from", str(full_store), "--to", pg_url)[0] == 0
    with open_database(Path(), url=pg_url) as pg:
        lapsed = expire_sign_ups(pg, now=FIXED_NOW + timedelta(days=3), link_hours=48)
        assert lapsed.restored == 1
        assert get_by_email(pg, "binh@example.org") == before


def test_a_copy_of_a_store_from_before_every_row_was_keyed_has_every_row_keyed(
    project: Path, new_pg: Callable[[], str]
) -> None:
    # Rows stored before schema 16 had no mailbox key, and a copy carried the gap along.
    old = project / "old.db"
    _store_from_before_every_row_was_keyed(old, 16, FIXED_NOW)
    pg_url, copy = new_pg(), project / "copy" / "syndicate.db"
    for target in (pg_url, f"sqlite://{copy}"):
        code, _, err = _run("store", "copy", "--from", str(old), "--to", target)
        assert (code, err) == (0, "")
    for url, path in ((pg_url, Path()), ("", copy)):
        with open_database(path, url=url) as db:
            counts = db.conn.execute(
                "SELECT count(*), count(mailbox_key) FROM subscribers"
            ).fetchone()
            assert tuple(counts) == (2505, 2505)


def test_a_nul_that_sqlite_kept_goes_to_postgresql_as_a_replacement_character(
    project: Path, new_pg: Callable[[], str]
) -> None:
    # A server's reply kept on SQLite with a NUL in it: COPY refused the row, so the store
    # could never move to PostgreSQL.
    with open_database(project / "syndicate.db") as db, db.transaction() as conn:
        conn.execute("INSERT INTO meta (key, value) VALUES ('note', ?)", ("550 a\x00b",))
    pg_url = new_pg()
    code, _, err = _run("store", "copy", "--from", str(project / "syndicate.db"), "--to", pg_url)
    assert (code, err) == (0, "")
    with open_database(Path(), url=pg_url) as pg:
        row = pg.conn.execute("SELECT value FROM meta WHERE key = 'note'").fetchone()
    assert row == ("550 a\ufffdb",)


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_a_target_that_is_not_empty_is_refused_and_left_as_it_was(
    full_store: Path, new_pg: Callable[[], str], tmp_path: Path, engine: str
) -> None:
    if engine == "postgresql":
        url = new_pg()
        target = open_database(Path(), url=url)
        where = url.replace("postgresql://postgres@", "PostgreSQL at ")
    else:
        url = str(tmp_path / "target.db")
        target = open_database(Path(url))
        where = url
    with target:
        add_subscriber(target, "someone@example.org", now=FIXED_NOW)
        code, out, err = _run("store", "copy", "--from", str(full_store), "--to", url)
        assert (code, out) == (2, "")
        assert err == (
            f"Error: {where}: table subscribers is not empty; nothing was copied. "
            "Copy into a new, empty store (a new SQLite file or an empty PostgreSQL database).\n"
        )
        assert _count_rows(target) == 1


def _damage(store: Path) -> None:
    """A damaged source: a delivery of a subscriber who is not there (written with the
    foreign keys off). It is copied last but one, after every other table went in."""
    raw = sqlite3.connect(store)
    raw.execute(
        "INSERT INTO deliveries (digest_day, subscriber_id, status, updated_at) "
        "SELECT day, 999, 'sent', created_at FROM digests"
    )
    raw.commit()
    raw.close()


def _listing(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Every file and folder below `folder`: mode, size and modification time."""
    found = {}
    for path in sorted(folder.rglob("*")):
        st = path.lstat()
        found[str(path.relative_to(folder))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return found


def _start_copy(project: Path, source: str, target: str) -> subprocess.Popen[str]:
    """`syndicate store copy --from source --to target` in a process of its own (to signal)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNDICATE_")}
    return subprocess.Popen(
        [sys.executable, "-m", "syndicate", "store", "copy", "--from", source, "--to", target],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _target_folder(tmp_path: Path) -> Path:
    """A folder to copy into, holding a file of its own."""
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "keep.txt").write_text("not a store\n")
    return folder


def _pg_tables(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return sorted(r[0] for r in rows.fetchall())


@pytest.mark.parametrize("store_before", [False, True])
def test_a_failure_part_way_leaves_the_postgresql_target_as_it_was(
    full_store: Path, new_pg: Callable[[], str], store_before: bool
) -> None:
    # A database with no store yet kept the tables the copy's migration made in it; one
    # that held an empty store keeps it, with no row.
    _damage(full_store)
    url = new_pg()
    if store_before:
        open_database(Path(), url=url).close()
    before = _pg_tables(url)
    assert bool(before) == store_before
    code, out, err = _run("store", "copy", "--from", str(full_store), "--to", url)
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1
    assert "cannot copy the store" in err
    assert "foreign key" in err.lower()
    assert _pg_tables(url) == before
    if store_before:
        with open_database(Path(), url=url) as target:
            assert _count_rows(target) == 0


@pytest.mark.parametrize("name", ["target.db", "new/deeper/target.db"])
def test_a_new_sqlite_file_that_fails_part_way_is_never_made(
    full_store: Path, tmp_path: Path, name: str
) -> None:
    # Every table but deliveries went into the new file before the foreign key failed: it
    # was left there, empty and migrated, with its -wal and -shm (and the folders made).
    _damage(full_store)
    folder = _target_folder(tmp_path)
    before = _listing(folder)
    code, out, err = _run("store", "copy", "--from", str(full_store), "--to", str(folder / name))
    assert (code, out) == (2, "")
    assert err.startswith(f"Error: {folder / name}: cannot copy the store: ")
    assert len(err.splitlines()) == 1
    assert "foreign key" in err.lower()
    assert _listing(folder) == before


def test_copy_store_reports_rows_per_table_in_foreign_key_order(
    full_store: Path, tmp_path: Path
) -> None:
    with open_database(full_store) as source, open_database(tmp_path / "t.db") as target:
        counts = copy_store(source, target)
    order = list(counts)
    assert set(order) == TABLES
    assert order.index("subscribers") < order.index("deliveries")
    assert order.index("digests") < order.index("deliveries")
    assert order.index("subscribers") < order.index("mail_events")


def test_an_unreachable_server_is_exit_75_naming_the_host_never_the_password(
    full_store: Path, tmp_path: Path
) -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql://syndicate:{PASSWORD}@127.0.0.1:{port}/news"
    for args in (("--from", str(full_store), "--to", url), ("--from", url, "--to", "new.db")):
        code, out, err = _run("store", "copy", *args)
        assert (code, out) == (75, "")
        assert len(err.splitlines()) == 1
        assert err.startswith(f"Error: PostgreSQL at 127.0.0.1:{port}/news: cannot reach")
        # A copy has no next run (it said "the next run tries again"): run it again.
        option = args[0] if args[1] == url else args[2]
        assert err.endswith(
            f"Check that the server runs and the {option} URL, then run the copy again.\n"
        )
        assert PASSWORD not in err
    assert not Path("new.db").exists()


def test_bad_locations_are_usage_errors_and_create_nothing(project: Path) -> None:
    code, out, err = _run("store", "copy", "--from", "missing.db", "--to", "new.db")
    assert (code, out) == (2, "")
    assert err == (
        "Error: missing.db: no such store to copy from; nothing was copied. "
        "Check the path given to --from.\n"
    )
    code, _, err = _run("store", "copy", "--from", "mysql://db/x", "--to", "new.db")
    assert code == 2
    assert "Invalid value for --from: a 'mysql://' location is neither a postgresql:// URL" in err
    assert not Path("missing.db").exists()
    assert not Path("new.db").exists()


def test_an_empty_file_is_no_store_to_copy_from_and_is_left_as_it_was(project: Path) -> None:
    # A 0-byte file (a `touch`, a failed download) was opened as a store "of version 0" and
    # migrated: the source got a whole schema (0 -> 286,720 bytes), its mode changed, and
    # the copy said "copied: 0 ..." with exit 0 (review22).
    empty = Path("empty.db")
    empty.touch(mode=0o644)
    empty.chmod(0o644)
    code, out, err = _run("store", "copy", "--from", "empty.db", "--to", "new.db")
    assert (code, out) == (2, "")
    assert err == (
        "Error: empty.db: no such store to copy from; nothing was copied. "
        "Check the path given to --from.\n"
    )
    assert (empty.stat().st_size, empty.stat().st_mode & 0o777) == (0, 0o644)
    assert not Path("new.db").exists()
    assert not Path("empty.db-wal").exists()


def test_a_file_that_is_no_store_or_a_folder_is_named_by_its_option(
    project: Path, full_store: Path
) -> None:
    # The hints were the store's own, "Check paths.database ..." and "Point paths.database at
    # a new file ...": paths.database has nothing to do with a copy's --from and --to.
    (project / "notes.txt").write_text("not a database\n" * 100, encoding="utf-8")
    (project / "copies").mkdir()
    code, out, err = _run("store", "copy", "--from", "notes.txt", "--to", "new.db")
    assert (code, out) == (2, "")
    assert err == (
        "Error: notes.txt: not a usable syndicate database: file is not a database. "
        "Check the path given to --from: it must be a syndicate store, such as the file "
        "paths.database names.\n"
    )
    for target, wrong in (
        ("notes.txt", "not a usable syndicate database: file is not a database"),
        ("copies", "a folder, not a file"),
    ):
        code, out, err = _run("store", "copy", "--from", str(full_store), "--to", target)
        assert (code, out) == (2, "")
        assert err == (
            f"Error: {target}: {wrong}. Give --to a new file in a folder this user may "
            "write to, or an empty syndicate store.\n"
        )
    assert (project / "notes.txt").read_text(encoding="utf-8") == "not a database\n" * 100
    assert not (project / "new.db").exists()
    assert not any((project / "copies").iterdir())


def test_a_target_under_a_file_says_that_it_is_a_file(project: Path, full_store: Path) -> None:
    # "afile/x.db" where afile is a file: "cannot make the new store: Not a directory ...
    # Check the folder's permissions and free space", which no permission fixes.
    (project / "afile").write_text("notes\n", encoding="utf-8")
    for target in ("afile/x.db", "afile/deeper/x.db"):
        code, out, err = _run("store", "copy", "--from", str(full_store), "--to", target)
        assert (code, out) == (2, "")
        assert err == (
            f"Error: {target}: afile is a file, not a folder; nothing was copied. Give --to a "
            "new file in a folder this user may write to, or an empty syndicate store.\n"
        )
    assert (project / "afile").read_text(encoding="utf-8") == "notes\n"


def test_a_postgresql_target_that_is_no_syndicate_store_says_to_point_to_elsewhere(
    full_store: Path, new_pg: Callable[[], str]
) -> None:
    # It said "Point store.url at a new database", which a copy does not read.
    url = new_pg()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE subscribers (note text)")  # another program's table
    where = "PostgreSQL at " + url.split("@", 1)[1]
    code, out, err = _run("store", "copy", "--from", str(full_store), "--to", url)
    assert (code, out) == (2, "")
    assert err.startswith(f"Error: {where}: not a usable syndicate database: ")
    assert err.endswith(
        ". Point --to at a new database, or check the role's privileges (docs/operating.md).\n"
    )
    # A store a step cannot be run on (its tables gone): the same, said of --from.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE syndicate_schema (version integer)")
        conn.execute("INSERT INTO syndicate_schema VALUES (%s)", (len(MIGRATIONS) - 1,))
    code, out, err = _run("store", "copy", "--from", url, "--to", "new.db")
    assert (code, out) == (2, "")
    assert err.startswith(f"Error: {where}: not a usable syndicate database: ")
    assert err.endswith(
        ". Check the URL given to --from: it must be a syndicate store; or check the role's "
        "privileges (docs/operating.md).\n"
    )


def test_a_postgresql_database_syndicate_never_wrote_is_no_store_to_copy_from(
    project: Path, new_pg: Callable[[], str]
) -> None:
    """As a missing SQLite file is: refused in one line, and left without a table."""
    url = new_pg()
    code, out, err = _run("store", "copy", "--from", url, "--to", "new.db")
    where = "PostgreSQL at " + url.split("@", 1)[1]
    assert (code, out) == (2, "")
    assert err == (
        f"Error: {where}: no such store to copy from; nothing was copied. "
        "Check the URL given to --from.\n"
    )
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        assert row.fetchone() == (0,)


@pytest.mark.parametrize(
    "url",
    [
        f"postgresq://syndicate:{PASSWORD}@db/news",  # a typo in the scheme
        f"POSTGRESQL://syndicate:{PASSWORD}@db/news",  # libpq reads lower case only
        f"postgresql://syndicate:{PASSWORD}%@db/news",  # libpq quotes the bad token
    ],
)
def test_a_location_that_is_not_a_store_is_exit_2_without_its_password(
    full_store: Path, url: str
) -> None:
    for args in (("--from", str(full_store), "--to", url), ("--from", url, "--to", "new.db")):
        for extra in ((), ("--json",)):
            code, out, err = _run("store", "copy", *args, *extra)
            assert (code, out) == (2, "")
            assert PASSWORD not in err
    assert not Path("new.db").exists()


def test_a_role_with_only_the_documented_privileges_takes_the_copy(
    full_store: Path, pg_cluster: Cluster, tmp_path: Path
) -> None:
    # docs/operating.md: a role that does not own the database needs CONNECT on it and
    # USAGE and CREATE on its schema (PostgreSQL 15 no longer gives CREATE to everyone).
    role = f"syndicate_{os.getpid()}"
    url = pg_cluster.new_database()
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(pg_cluster.url("postgres"), autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN')
        admin.execute(f'REVOKE ALL ON DATABASE "{name}" FROM PUBLIC')
        admin.execute(f'GRANT CONNECT ON DATABASE "{name}" TO "{role}"')
    try:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f'GRANT USAGE, CREATE ON SCHEMA public TO "{role}"')
        as_role = url.replace("postgres@", f"{role}@")
        assert _run("store", "copy", "--from", str(full_store), "--to", as_role)[0] == 0
        back = tmp_path / "back.db"
        assert _run("store", "copy", "--from", as_role, "--to", str(back))[0] == 0
        with open_database(full_store) as source, open_database(back) as copied:
            assert _rows(copied) == _rows(source)
    finally:
        pg_cluster.drop_database(url)
        with psycopg.connect(pg_cluster.url("postgres"), autocommit=True) as admin:
            admin.execute(f'DROP ROLE "{role}"')


def test_a_read_only_role_copying_out_is_told_about_the_source_it_may_not_read(
    full_store: Path, pg_cluster: Cluster, tmp_path: Path
) -> None:
    # A backup role with SELECT on the tables (the usual read-only grant) but not on their
    # id sequences: the copy blamed the new file ('back.db: cannot copy the store:
    # permission denied for sequence ...'), with nothing to do. It names the source and the
    # grant; the new file is not made.
    role = f"syndicate_ro_{os.getpid()}"
    url = pg_cluster.new_database()
    assert _run("store", "copy", "--from", str(full_store), "--to", url)[0] == 0
    with psycopg.connect(pg_cluster.url("postgres"), autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f'GRANT USAGE ON SCHEMA public TO "{role}"')
            admin.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}"')
        as_role = url.replace("postgres@", f"{role}@")
        back = tmp_path / "back.db"
        code, out, err = _run("store", "copy", "--from", as_role, "--to", str(back))
        assert (code, out) == (2, "")
        where = "PostgreSQL at " + url.split("@", 1)[1]
        assert err.startswith(f"Error: {where}: "), err
        assert "permission denied for sequence" in err
        assert "GRANT SELECT ON ALL SEQUENCES IN SCHEMA public" in err
        assert len(err.splitlines()) == 1
        assert not back.exists()
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f'GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO "{role}"')
        assert _run("store", "copy", "--from", as_role, "--to", str(back))[0] == 0
    finally:
        pg_cluster.drop_database(url)
        with psycopg.connect(pg_cluster.url("postgres"), autocommit=True) as admin:
            admin.execute(f'DROP ROLE "{role}"')


def test_a_store_from_a_newer_syndicate_is_one_line_and_nothing_is_made(project: Path) -> None:
    open_database(project / "new.db").close()
    raw = sqlite3.connect(project / "new.db")
    raw.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    raw.close()
    code, out, err = _run("store", "copy", "--from", "new.db", "--to", "target.db")
    assert (code, out) == (2, "")
    assert err == (
        f"Error: new.db: schema version {len(MIGRATIONS) + 1} is newer than this syndicate "
        f"knows ({len(MIGRATIONS)}). Upgrade syndicate before using this database.\n"
    )
    assert not Path("target.db").exists()


class SilentRelay:
    """A TCP relay on 127.0.0.1 to the cluster that goes silent (holds every reply of the
    server) from the moment a client sends `trigger`, until `speak()` or `at_most` seconds:
    a server that stopped answering part way, as a stopped one does (test_pg_no_reply),
    at a chosen statement. `silent` is set when it fell silent."""

    def __init__(self, port: int, trigger: bytes, *, at_most: float = 20.0) -> None:
        self.upstream = port
        self.trigger = trigger
        self.at_most = at_most
        self.silent = threading.Event()
        self.spoken = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, url: str) -> str:
        return url.replace(f":{self.upstream}/", f":{self.port}/")

    def speak(self) -> None:
        self.spoken.set()

    def close(self) -> None:
        self.spoken.set()
        for sock in self.sockets:
            with suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            self.sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, read: socket.socket, write: socket.socket, asking: bool) -> None:
        try:
            while data := read.recv(65536):
                if asking and self.trigger in data:
                    self.silent.set()  # before the server can answer it
                    threading.Timer(self.at_most, self.spoken.set).start()
                if not asking and self.silent.is_set():
                    self.spoken.wait()
                write.sendall(data)
        except OSError:
            pass
        finally:
            with suppress(OSError):
                write.shutdown(socket.SHUT_WR)


@pytest.fixture
def pg_source(full_store: Path, new_pg: Callable[[], str]) -> str:
    """A PostgreSQL store holding `full_store`'s rows."""
    url = new_pg()
    assert _run("store", "copy", "--from", str(full_store), "--to", url)[0] == 0
    return url


@pytest.fixture
def silent_source(pg_source: str, pg_cluster: Cluster) -> Iterator[tuple[SilentRelay, str]]:
    """`pg_source` behind a relay that falls silent once the copy reads the subscribers
    (after the tables before them went into the target), and its URL through the relay."""
    relay = SilentRelay(pg_cluster.port, b'"syndicate_copy_subscribers"')
    try:
        yield relay, relay.url(pg_source)
    finally:
        relay.close()


def _configure(project: Path, **store: float) -> None:
    lines = ["[store]", *(f"{key} = {value}" for key, value in store.items())]
    (project / "syndicate.toml").write_text("\n".join(lines) + "\n")


def test_a_silent_source_ends_the_copy_after_the_configured_reply_timeout_leaving_nothing(
    project: Path, silent_source: tuple[SilentRelay, str], tmp_path: Path
) -> None:
    # store copy opened both stores with the default store.reply_timeout (120 s), whatever
    # the settings said: here the relay speaks again after 20 s and the copy went through.
    relay, url = silent_source
    _configure(project, busy_timeout=0.5, reply_timeout=1)
    folder = _target_folder(tmp_path)
    before = _listing(folder)
    started = time.monotonic()
    code, out, err = _run("store", "copy", "--from", url, "--to", str(folder / "target.db"))
    took = time.monotonic() - started
    assert relay.silent.is_set()
    assert (code, out) == (75, ""), err
    where = "PostgreSQL at " + url.split("@", 1)[1]
    assert err.startswith(f"Error: {where}: cannot reach the database: the server sent nothing ")
    assert "for 1 s (store.reply_timeout)" in err
    assert len(err.splitlines()) == 1
    assert took < 1 + 10, took  # well before the relay's 20 s, let alone 120 s
    assert _listing(folder) == before


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "code", "line"),
    [
        (
            signal.SIGTERM,
            143,
            "Error: store copy: stopped by SIGTERM; the target was left as it was.",
        ),
        (signal.SIGINT, 130, "Interrupted."),
    ],
)
def test_a_copy_into_a_new_file_stopped_by_a_signal_leaves_nothing(
    project: Path,
    silent_source: tuple[SilentRelay, str],
    tmp_path: Path,
    signum: int,
    code: int,
    line: str,
) -> None:
    # SIGTERM killed the copy where it stood (no handler): the half-made file stayed, under
    # the target's own name; Ctrl-C left it as well.
    relay, url = silent_source
    _configure(project, reply_timeout=0)  # no bound: only the signal ends the wait
    folder = _target_folder(tmp_path)
    before = _listing(folder)
    process = _start_copy(project, url, "out/t.db")
    try:
        assert relay.silent.wait(60), "the copy never read the subscribers"
        assert _listing(folder) != before, "nothing made yet: no unfinished copy to clean up"
        process.send_signal(signum)
        # The held reply now comes: on Ctrl-C psycopg cancels the statement and waits for
        # its end (else 5 s, and 5 s more for the cancel), then lets KeyboardInterrupt go.
        relay.speak()
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
        process.wait()
    assert (process.returncode, out) == (code, "")
    assert err.splitlines()[-1:] == [line]
    assert _listing(folder) == before


@pytest.mark.slow
def test_a_new_file_that_cannot_grow_part_way_is_never_made(
    full_store: Path, tmp_path: Path
) -> None:
    # The process may write files of 1 MiB at most (RLIMIT_FSIZE): the target cannot grow
    # part way through the copy, after the empty store (about 280 KiB) was made, as on a
    # disk that fills up. SQLite sees EFBIG, not ENOSPC: a "disk I/O error", exit 2 (a
    # full disk is StoreFullError, exit 75, with the same clean-up).
    with open_database(full_store) as db, db.transaction() as conn:
        conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            ((f"filler-{n}", os.urandom(5000).hex()) for n in range(300)),
        )
    folder = _target_folder(tmp_path)
    before = _listing(folder)
    limit = 1 << 20

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNDICATE_")}
    args = ["store", "copy", "--from", str(full_store), "--to", str(folder / "target.db")]
    done = subprocess.run(
        [sys.executable, "-m", "syndicate", *args],
        cwd=full_store.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=small_disk,
        check=False,
    )
    assert (done.returncode, done.stdout) == (2, ""), done.stderr
    assert done.stderr == f"Error: {folder / 'target.db'}: cannot copy the store: disk I/O error.\n"
    assert _listing(folder) == before


@pytest.mark.slow
def test_a_file_that_appears_at_the_target_meanwhile_is_never_overwritten(
    project: Path, silent_source: tuple[SilentRelay, str], tmp_path: Path
) -> None:
    relay, url = silent_source
    _configure(project, reply_timeout=0)
    folder = _target_folder(tmp_path)
    before = _listing(folder)
    process = _start_copy(project, url, "out/t.db")
    try:
        assert relay.silent.wait(60), "the copy never read the subscribers"
        (folder / "t.db").write_text("another's file\n")  # made while the copy runs
        before["t.db"] = _listing(folder)["t.db"]
        relay.speak()
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
        process.wait()
    assert (process.returncode, out) == (2, "")
    assert err == (
        "Error: out/t.db: a file appeared there while the copy ran; it is left as it is and "
        "nothing was copied. Copy again into a new path (or remove that file if it is not "
        "wanted).\n"
    )
    assert _listing(folder) == before
    assert (folder / "t.db").read_text() == "another's file\n"


@pytest.mark.slow
def test_a_copy_into_a_new_postgresql_database_stopped_by_sigterm_leaves_it_as_it_was(
    project: Path, silent_source: tuple[SilentRelay, str], new_pg: Callable[[], str]
) -> None:
    relay, url = silent_source
    target = new_pg()
    _configure(project, reply_timeout=0)
    process = _start_copy(project, url, target)
    try:
        assert relay.silent.wait(60), "the copy never read the subscribers"
        assert _pg_tables(target), "no tables made yet: nothing to clean up"
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
        process.wait()
    assert (process.returncode, out) == (143, "")
    assert err == "Error: store copy: stopped by SIGTERM; the target was left as it was.\n"
    assert _pg_tables(target) == []


def test_a_failed_copy_into_a_new_database_never_drops_another_applications_tables(
    full_store: Path, new_pg: Callable[[], str]
) -> None:
    # A database that held no store but another application's (empty) tables: the copy
    # fails (the target has a table the source has not), and the clean-up dropped every
    # empty table of the schema, the other application's too, not only those it made.
    url = new_pg()
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE app_orders (id integer PRIMARY KEY)")
        conn.execute("CREATE TABLE app_lines (order_id integer REFERENCES app_orders (id))")
    code, out, err = _run("store", "copy", "--from", str(full_store), "--to", url)
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1
    assert _pg_tables(url) == ["app_lines", "app_orders"]


@pytest.mark.slow
def test_sigterm_while_the_new_database_waits_on_the_server_still_drops_its_tables(
    full_store: Path, new_pg: Callable[[], str]
) -> None:
    # SIGTERM's exception cut psycopg's wait for a statement short, and psycopg cancels the
    # statement only for Ctrl-C: the connection stayed busy with it, the clean-up's first
    # statement failed ("another command is already in progress") and the empty tables were
    # kept, under "the target was left as it was". Here the copy's write transaction waits
    # for the store's write lock, which another connection holds until after the signal.
    from syndicate.errors import TerminatedError
    from syndicate.store.copy import copy_to_new_database
    from syndicate.store.postgres import WRITE_LOCK_KEY

    url = new_pg()
    target = open_database(Path(), url=url, busy_timeout=60)
    assert _pg_tables(url)
    holder = psycopg.connect(url, autocommit=True)
    holder.execute("SELECT pg_advisory_lock(%s)", (WRITE_LOCK_KEY,))
    handled = threading.Event()

    def terminated(*_: object) -> None:  # as `store copy` turns SIGTERM into an exception
        handled.set()
        raise TerminatedError("store copy: stopped by SIGTERM")

    def stop_the_copy() -> None:
        """SIGTERM once the copy waits for the lock; the lock let go once it was handled."""
        with psycopg.connect(url, autocommit=True) as watcher:
            deadline = time.monotonic() + 30
            while not watcher.execute(
                "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
            ).fetchone():
                assert time.monotonic() < deadline, "the copy never waited for the lock"
                time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)
        handled.wait(30)
        holder.execute("SELECT pg_advisory_unlock_all()")

    before = signal.signal(signal.SIGTERM, terminated)
    stopper = threading.Thread(target=stop_the_copy)
    try:
        with open_database(full_store) as source, target:
            stopper.start()
            with pytest.raises(TerminatedError):
                copy_to_new_database(source, target)
    finally:
        stopper.join()
        signal.signal(signal.SIGTERM, before)
        holder.close()
    assert handled.is_set()
    assert _pg_tables(url) == []


def test_a_link_at_the_target_path_to_no_file_yet_gets_a_private_complete_store(
    full_store: Path, tmp_path: Path
) -> None:
    # The target path is a link to a file not made yet (a data volume's place for it):
    # SQLite followed it and made the file with its own mode (0644 under umask 022: every
    # address and the signing secret readable by all users), filled in place, and a copy
    # that failed left it behind. It is now made as a new file is: 0600, complete or not
    # at all, at the place the link leads to.
    data = tmp_path / "volume"
    data.mkdir()
    link = tmp_path / "moved.db"
    link.symlink_to(data / "syndicate.db")
    _damage(full_store)
    code, out, err = _run("store", "copy", "--from", str(full_store), "--to", str(link))
    assert (code, out) == (2, "")
    assert "foreign key" in err.lower()
    assert list(data.iterdir()) == []
    _repair(full_store)
    code, out, err = _run("store", "copy", "--from", str(full_store), "--to", str(link))
    assert (code, err) == (0, ""), out
    assert sorted(p.name for p in data.iterdir()) == ["syndicate.db"]
    assert (data / "syndicate.db").stat().st_mode & 0o777 == 0o600
    assert link.is_symlink()


def _repair(store: Path) -> None:
    raw = sqlite3.connect(store)
    raw.execute("DELETE FROM deliveries WHERE subscriber_id = 999")
    raw.commit()
    raw.close()


def _leftovers(folder: Path) -> list[str]:
    """The temporary files of copies into `folder` (theirs and SQLite's beside them)."""
    return sorted(p.name for p in folder.iterdir() if ".copy" in p.name)


@pytest.mark.slow
def test_the_next_copy_removes_what_a_killed_copy_left_and_never_a_live_copys_file(
    project: Path,
    full_store: Path,
    silent_source: tuple[SilentRelay, str],
    pg_source: str,
    pg_cluster: Cluster,
    tmp_path: Path,
) -> None:
    # SIGKILL gives the copy no chance to clean up: its temporary file (0600, every
    # subscriber's address in it) stayed beside the target, and nothing ever removed it.
    relay, url = silent_source
    _configure(project, reply_timeout=0)
    folder = _target_folder(tmp_path)
    killed = _start_copy(project, url, "out/t.db")
    try:
        assert relay.silent.wait(60), "the copy never read the subscribers"
        killed.kill()  # SIGKILL
        killed.communicate(timeout=60)
    finally:
        killed.kill()
        killed.wait()
    left = _leftovers(folder)  # the file, and SQLite's -wal and -shm beside it
    assert len(left) == 3, left
    assert re.fullmatch(r"\.t\.db\.\w{8}\.copy", left[0]), left
    assert (folder / left[0]).stat().st_mode & 0o777 == 0o600
    # The next copy into the folder removes it first; its own source stalls, so it is
    # under way, holding its own temporary file, while a third copy runs.
    live_relay = SilentRelay(pg_cluster.port, b'"syndicate_copy_subscribers"')
    live = _start_copy(project, live_relay.url(pg_source), "out/u.db")
    try:
        assert live_relay.silent.wait(60), "the live copy never read the subscribers"
        live_files = _leftovers(folder)
        assert [n[:6] for n in live_files] == [".u.db."] * 3, live_files
        live_before = {n: _listing(folder)[n][:2] for n in live_files}
        code, out, err = _run("store", "copy", "--from", str(full_store), "--to", "out/c.db")
        assert (code, err) == (0, "")
        assert out.startswith("copied: ")
        # The live copy's files are untouched, and it finishes.
        assert {n: _listing(folder)[n][:2] for n in _leftovers(folder)} == live_before
        live_relay.speak()
        out, err = live.communicate(timeout=60)
    finally:
        live_relay.close()
        live.kill()
        live.wait()
    assert (live.returncode, err) == (
        0,
        f"warning: out/{left[0]}: removed the unfinished store a `store copy` that was "
        "stopped left behind.\n",
    )
    assert _leftovers(folder) == []
    for name in ("c.db", "u.db"):
        with open_database(folder / name) as copied, open_database(full_store) as source:
            assert _rows(copied) == _rows(source)


def _strace() -> str:
    """strace, when it may trace a child here (ptrace allowed); else the test is skipped."""
    found = shutil.which("strace")
    if found is None:
        pytest.skip("strace is not installed")
    probe = subprocess.run(
        [found, "-o", os.devnull, "true"], capture_output=True, timeout=30, check=False
    )
    if probe.returncode != 0:
        pytest.skip(f"strace cannot trace here: {probe.stderr.decode(errors='replace')}")
    return found


def _child(pid: int) -> int:
    """The one child process of `pid`."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def _copy_under_strace(full_store: Path, target: Path, *inject: str) -> subprocess.Popen[str]:
    """`syndicate store copy` from `full_store` to `target` under strace with `inject` (its
    `-e` options): the code runs as is, one system call made slow or failing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNDICATE_")}
    copy_args = ["store", "copy", "--from", str(full_store), "--to", str(target)]
    return subprocess.Popen(
        [_strace(), "-o", os.devnull, *inject, sys.executable, "-m", "syndicate", *copy_args],
        cwd=full_store.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow(seconds=9)  # mostly idle: strace holds link(2) for 8 s
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_as_the_new_file_is_linked_into_place_reports_the_copy_complete(
    full_store: Path, tmp_path: Path, signum: signal.Signals
) -> None:
    # The signal, held back while the complete store was linked to its name, was delivered
    # once it was there: "the target was left as it was" (exit 143), or "Interrupted."
    # (130), with the complete copy in place. strace holds link(2)'s return for 8 s (the
    # file has its name by then), so the signal comes in that window; the code runs as is.
    folder = _target_folder(tmp_path)
    target = folder / "t.db"
    delay = ["-e", "trace=link", "-e", "inject=link:delay_exit=8000000"]
    process = _copy_under_strace(full_store, target, *delay)
    try:
        deadline = time.monotonic() + 60
        while not target.exists():  # no event to wait on: the name appears in the folder
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the copy never linked its file"
            time.sleep(0.01)
        started = time.monotonic()
        os.kill(_child(process.pid), signum)
        out, err = process.communicate(timeout=90)
    finally:
        process.kill()
        process.wait()
    assert time.monotonic() - started > 3, "the signal came after link(2) returned"
    name = signal.Signals(signum).name
    assert (process.returncode, err) == (
        0,
        f"warning: {target}: {name} came as the new store was put in place; the copy is "
        "complete.\n",
    )
    assert out.startswith("copied: ")
    assert _leftovers(folder) == []
    with open_database(target) as copied, open_database(full_store) as source:
        assert _rows(copied) == _rows(source)


def test_a_copy_onto_a_file_system_without_flock_still_copies(
    full_store: Path, tmp_path: Path
) -> None:
    # flock(2) refused (ENOLCK: an NFS mount without its lock daemon; some FUSE file systems):
    # the copy made a temporary file, failed to lock it, and made another, for ever: a hang
    # that filled the folder with empty 0600 files. Without locks it copies as it did before
    # them (nothing to sweep with either). strace makes every flock fail; the code runs as is.
    folder = _target_folder(tmp_path)
    target = folder / "t.db"
    refuse = ["-e", "trace=flock", "-e", "inject=flock:error=ENOLCK"]
    process = _copy_under_strace(full_store, target, *refuse)
    try:
        out, err = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        made = len(_leftovers(folder))
        pytest.fail(f"the copy never ended; it left {made} temporary files")
    assert (process.returncode, err) == (0, ""), out
    assert out.startswith("copied: ")
    assert _leftovers(folder) == []
    with open_database(target) as copied, open_database(full_store) as source:
        assert _rows(copied) == _rows(source)

"""Commands that only read the store make none: the same output, and nothing made, on
SQLite with no database file and on a PostgreSQL database no command has used yet.

Each command runs as a real subprocess, once per engine (the module's `store` fixture),
and must print exactly the same lines on both.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from syndicate.cli.commands_subscribers import EMPTY_LIST
from syndicate.store.pg_schema import PG_FIRST_VERSION, PG_MIGRATIONS
from syndicate.store.schema import MIGRATIONS
from syndicate.tokens import make_token
from tests.plugins.postgres import ENV_STORE_URL, open_store

pytestmark = pytest.mark.usefixtures("store")

DUMP = (
    "Hội thảo chuyển đổi số\n31/10/2024 09:15\n{head}\n"
    "QTO - Sáng nay, tại TP. Đông Hà, hội thảo diễn ra. Câu hai.\n"
    "Đoạn thân bài thứ hai.\n"
    "Trúc Phương\n"
)
RATES = (
    "0 sent, 0 hard bounces (0.00%, keep under 2%), 0 complaints (0.00%, keep under 0.3%, "
    "better under 0.1%)"
)
OTHER = (
    "last 30 days, other mail: 0 hard bounces, 0 complaints (confirmation mails, earlier "
    "digests; in no rate)"
)
STATS_JSON = (
    '{"pending": 0, "confirmed": 0, "unsubscribed": 0, "bounced": 0, "complained": 0, '
    '"total": 0, "erased": 0, "rates": {"last_30_days": {"sent": 0, "hard_bounces": 0, '
    '"complaints": 0, "bounce_rate": 0.0, "complaint_rate": 0.0, "other_hard_bounces": 0, '
    '"other_complaints": 0}, "last_digest": '
    '{"day": null, "sent": 0, "hard_bounces": 0, "complaints": 0, "bounce_rate": 0.0, '
    '"complaint_rate": 0.0}, "limits": {"bounce_rate": 0.02, "complaint_rate": 0.003, '
    '"complaint_rate_target": 0.001}}}\n'
)
# What each read-only command prints when there is no store yet: exit code, stdout.
NO_STORE_YET = {
    "inspect": (
        ["inspect", "seeds/a.txt"],
        0,
        "seeds/a.txt\n"
        "  id:          {id}\n"
        "  slug:        hoi-thao-chuyen-doi-so\n"  # no `page:` line: there is no store
        "  title:       Hội thảo chuyển đổi số\n"
        "  published:   2024-10-31T09:15:00+07:00 (datetime)\n"
        "  author:      Trúc Phương\n"
        "  language:    vi\n"
        "  dateline:    QTO\n"
        "  head:        -\n"
        "  lead:        Sáng nay, tại TP. Đông Hà, hội thảo diễn ra. Câu hai.\n"
        "  paragraphs:  2\n"
        "  captions:    0\n"
        "  teasers:     0\n",
    ),
    "inspect-json": (["inspect", "seeds/a.txt", "--json"], 0, None),
    "list": (
        ["subscribers", "list"],
        0,
        "No subscribers yet. Add one with `syndicate subscribers add EMAIL`.\n",
    ),
    "list-status": (["subscribers", "list", "--status", "bounced"], 0, "No bounced subscribers.\n"),
    "list-json": (["subscribers", "list", "--json"], 0, ""),
    "stats": (
        ["subscribers", "stats"],
        0,
        "pending: 0\nconfirmed: 0\nunsubscribed: 0\nbounced: 0\ncomplained: 0\ntotal: 0\n"
        f"erased: 0\nlast 30 days: {RATES}\n{OTHER}\nlast digest (none): {RATES}\n",
    ),
    "stats-json": (["subscribers", "stats", "--json"], 0, STATS_JSON),
    "export": (
        ["subscribers", "export", "out/list.csv"],
        0,
        "Exported 0 subscribers to out/list.csv.\n",
    ),
}


@pytest.fixture
def project(workdir: Path) -> Path:
    (workdir / "seeds" / "a.txt").write_text(DUMP, encoding="utf-8")
    return workdir


def syndicate(project: Path, *args: str, secret: str = "") -> subprocess.CompletedProcess[str]:
    """Run `python -m syndicate ARGS` in `project`, on the test's store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNDICATE_")}
    if os.environ.get(ENV_STORE_URL):
        env[ENV_STORE_URL] = os.environ[ENV_STORE_URL]
    if secret:
        env["SYNDICATE_SECRET"] = secret
    return subprocess.run(
        [sys.executable, "-m", "syndicate", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def store_tables(project: Path) -> int | None:
    """How many tables the test's store has; None for no SQLite file (no store at all)."""
    url = os.environ.get(ENV_STORE_URL)
    if url:
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
            ).fetchone()
        assert row is not None
        return int(row[0])
    path = project / "syndicate.db"
    return None if not path.exists() else -1  # a file: made, which is the failure here


def article_id(project: Path) -> str:
    done = syndicate(project, "inspect", "seeds/a.txt", "--json")
    return str(json.loads(done.stdout)["id"])


@pytest.mark.parametrize("name", list(NO_STORE_YET))
def test_a_read_only_command_makes_no_store_and_says_the_same_on_both_engines(
    project: Path, store: str, name: str
) -> None:
    args, code, expected = NO_STORE_YET[name]
    done = syndicate(project, *args)
    assert (done.returncode, done.stderr) == (code, "")
    if expected is None:  # --json: one object, the same whatever the store
        assert done.stdout.startswith('{"id": "')
        assert done.stdout.count("\n") == 1
    else:
        assert done.stdout == expected.replace("{id}", article_id(project))
    # Nothing made: no SQLite file; on PostgreSQL not one table.
    assert store_tables(project) == (0 if store == "postgresql" else None)


SECRET = "a configured secret"
SIGNED = make_token(
    SECRET.encode(),
    purpose="unsubscribe",
    subscriber_id=1,
    nonce=bytes(16),
    issued_at=datetime(2026, 1, 1, tzinfo=UTC),
)
# What the unsubscribe-token commands say when there is no store yet: exit 2, one line.
NO_STORE_TOKENS = {
    "verify-malformed": (
        ["verify", "xyz"],
        "",
        "Error: not valid: unsubscribe token: the token is malformed. Check that the token "
        "was copied whole (the part of the link after token=) and that this is the store (and "
        "SYNDICATE_SECRET) that made it.\n",
    ),
    "verify-no-secret": (  # no secret was ever made here: nothing this store signed
        ["verify", SIGNED],
        "",
        "Error: not valid: unsubscribe token: the signature does not match (altered, or "
        "signed with another secret). Check that the token was copied whole (the part of the "
        "link after token=) and that this is the store (and SYNDICATE_SECRET) that made it.\n",
    ),
    "verify-configured-secret": (
        ["verify", SIGNED],
        SECRET,
        "Error: not valid: unsubscribe token: the subscriber it was made for no longer "
        "exists (erased). Nothing was changed.\n",
    ),
    "make": (
        ["make", "An@Example.org"],
        "",
        "Error: email address 'An@example.org' is not a subscriber. "
        "Check it against `syndicate subscribers list`.\n",
    ),
}


@pytest.mark.parametrize("name", list(NO_STORE_TOKENS))
def test_unsubscribe_token_commands_make_no_store_and_say_the_same_on_both_engines(
    project: Path, store: str, name: str
) -> None:
    args, secret, error = NO_STORE_TOKENS[name]
    done = syndicate(project, "unsubscribe-token", *args, secret=secret)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", error)
    assert store_tables(project) == (0 if store == "postgresql" else None)


BAD_ADDRESS = (
    "Error: email address 'an@@example.org' is not valid: The part after the @-sign contains "
    "invalid characters: '@'. Check it for typos.\n"
)
# Commands that change the list, refused before they make a store: exit 2, one line.
NO_STORE_REFUSED = {
    "add-bad-address": (["add", "an@@example.org"], BAD_ADDRESS),
    "erase-bad-address": (["erase", "an@@example.org"], BAD_ADDRESS),
    "remove-bad-address": (["remove", "an@@example.org"], BAD_ADDRESS),
    "remove-nobody": (
        ["remove", "An@Example.org"],
        "Error: email address 'An@Example.org' is not a subscriber. "
        "Check it against `syndicate subscribers list`.\n",
    ),
}


@pytest.mark.parametrize("name", list(NO_STORE_REFUSED))
def test_a_refused_change_to_the_list_makes_no_store(project: Path, store: str, name: str) -> None:
    # A typo in an address, or removing someone from a list that does not exist yet, made
    # an empty store (a syndicate.db, or every table on PostgreSQL) before saying so.
    args, error = NO_STORE_REFUSED[name]
    done = syndicate(project, "subscribers", *args)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", error)
    assert store_tables(project) == (0 if store == "postgresql" else None)


def test_export_of_no_store_writes_just_the_header(project: Path) -> None:
    done = syndicate(project, "subscribers", "export", "list.csv")
    assert done.returncode == 0
    assert (project / "list.csv").read_text(encoding="utf-8") == "email,name,language,status\n"


def test_a_store_made_since_is_read_by_the_same_commands(project: Path) -> None:
    """Once a writing command made the store, the read-only ones read it (and `inspect`
    names the page, `-` before any build)."""
    assert syndicate(project, "subscribers", "add", "an@example.org").returncode == 0
    listed = syndicate(project, "subscribers", "list")
    assert (listed.returncode, listed.stderr) == (0, "")
    assert listed.stdout == "1\tan@example.org\tvi\tconfirmed\n"
    shown = syndicate(project, "inspect", "seeds/a.txt")
    assert "\n  page:        -\n" in shown.stdout
    assert syndicate(project, "subscribers", "stats").stdout.startswith(
        "pending: 0\nconfirmed: 1\n"
    )


def make_older_store(project: Path, older: int = len(MIGRATIONS) - 1) -> int:
    """An empty store at schema version `older` (one step behind this syndicate); `older`.

    A Python step (schema.Statement) changes only rows, and an empty store has none.
    """
    url = os.environ.get(ENV_STORE_URL)
    if url:
        with psycopg.connect(url, autocommit=True) as pg:
            for version in range(PG_FIRST_VERSION, older + 1):
                for statement in PG_MIGRATIONS[version]:
                    if isinstance(statement, str):
                        pg.execute(statement)
            pg.execute("UPDATE syndicate_schema SET version = %s", (older,))
    else:
        with closing(sqlite3.connect(project / "syndicate.db", isolation_level=None)) as lite:
            for steps in MIGRATIONS[:older]:
                for statement in steps:
                    if isinstance(statement, str):
                        lite.execute(statement)
            lite.execute(f"PRAGMA user_version = {older}")
        (project / "syndicate.db").chmod(0o600)
    return older


def _newest_altering() -> tuple[int, str]:
    """The newest schema step that alters a table (its first statement), and that table:
    what an upgrade from the version before it waits on (a Python step, which changes only
    rows, takes no lock a reader's conflicts with)."""
    for version in sorted(PG_MIGRATIONS, reverse=True):
        first = PG_MIGRATIONS[version][0]
        found = re.search(r"ALTER TABLE (\w+)", first) if isinstance(first, str) else None
        if found:
            return version, found.group(1)
    raise AssertionError("no schema step alters a table")


ALTERING, LAST_ALTERED = _newest_altering()


def schema_version(project: Path) -> int:
    with open_store(project / "syndicate.db") as db:
        return db.schema_version


def test_a_read_only_command_brings_an_older_store_up_to_date_and_reads_it(
    project: Path,
) -> None:
    """As after any upgrade: the store is migrated first, on either engine, then read."""
    assert make_older_store(project) == len(MIGRATIONS) - 1
    done = syndicate(project, "subscribers", "list")
    assert (done.returncode, done.stdout, done.stderr) == (0, EMPTY_LIST + "\n", "")
    assert schema_version(project) == len(MIGRATIONS)


def _pg_version(url: str) -> int:
    """The schema version of the PostgreSQL store at `url`, read without migrating it."""
    with psycopg.connect(url) as pg:
        row = pg.execute("SELECT version FROM syndicate_schema").fetchone()
        assert row is not None
        return int(row[0])


def _pg_url() -> str:
    url = os.environ.get(ENV_STORE_URL, "")
    if not url:
        pytest.skip("PostgreSQL's schema upgrade (SQLite's waits store.busy_timeout, as any write)")
    return url


def test_an_upgrade_waiting_on_a_lock_another_session_holds_ends_with_exit_75(
    project: Path,
) -> None:
    # Another session (psql, a report, a backup) reads the ledger in an open transaction:
    # the step that alters the table waits for it. It ends after store.busy_timeout with a
    # line that says what waited on what (it said "another syndicate command is writing").
    url = _pg_url()
    older = make_older_store(project, ALTERING - 1)
    (project / "syndicate.toml").write_text("[store]\nbusy_timeout = 1\nreply_timeout = 3\n")
    where = "PostgreSQL at " + url.split("@", 1)[1]
    with psycopg.connect(url) as holder:
        # ACCESS SHARE, held on the table the step alters
        holder.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(LAST_ALTERED))
        ).fetchone()
        started = time.monotonic()
        done = syndicate(project, "subscribers", "list")
        took = time.monotonic() - started
        assert (done.returncode, done.stdout) == (75, "")
        assert done.stderr == (
            f"Error: {where}: the schema upgrade from version {older} to {len(MIGRATIONS)} "
            "waited 1 s (store.busy_timeout) for a lock another session holds; the step it was "
            "on was rolled back. Run the command again once that session is done "
            "(pg_stat_activity shows it), or raise store.busy_timeout.\n"
        )
    assert _pg_version(url) == older
    started = time.monotonic()
    done = syndicate(project, "subscribers", "list")
    baseline = time.monotonic() - started  # the same command, upgrading with nothing held
    assert (done.returncode, done.stderr) == (0, "")
    assert schema_version(project) == len(MIGRATIONS)
    # It ended after the 1 s wait, not a hang: timed against the same command's own run,
    # so a loaded machine's slow start counts on both sides.
    assert took < baseline + 1 + 5, (took, baseline)


def test_an_upgrade_whose_server_falls_silent_ends_after_the_reply_timeout(
    project: Path, pg_cluster: Any
) -> None:
    # The upgrade's statements waited with no bound: a server that stopped answering during
    # a step hung the first command after an upgrade (here until the relay spoke again).
    from tests.test_store_copy import SilentRelay

    url = _pg_url()
    older = make_older_store(project, ALTERING - 1)
    (project / "syndicate.toml").write_text("[store]\nbusy_timeout = 1\nreply_timeout = 2\n")
    relay = SilentRelay(pg_cluster.port, f"ALTER TABLE {LAST_ALTERED}".encode(), at_most=30)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNDICATE_")}
    env[ENV_STORE_URL] = relay.url(url)
    try:
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "syndicate", "subscribers", "list"],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        took = time.monotonic() - started
    finally:
        relay.close()
    assert relay.silent.is_set()
    assert (done.returncode, done.stdout) == (75, ""), done.stderr
    where = "PostgreSQL at " + relay.url(url).split("@", 1)[1]
    assert done.stderr == (
        f"Error: {where}: the schema upgrade from version {older} to {len(MIGRATIONS)} did not "
        "finish within 2 s (store.reply_timeout); the step it was on was rolled back. Run the "
        "command again, or raise store.reply_timeout (0: no bound) if a step needs longer.\n"
    )
    assert _pg_version(url) == older
    started = time.monotonic()
    again = syndicate(project, "subscribers", "list")  # straight to the server this time
    baseline = time.monotonic() - started
    assert (again.returncode, again.stderr) == (0, "")
    # It ended after the 2 s reply timeout, not once the relay spoke again (30 s): timed
    # against the same command's own run, so a loaded machine's slow start counts on both sides.
    assert took < baseline + 2 + 8, (took, baseline)

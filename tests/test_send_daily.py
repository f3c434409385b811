"""The daily job and its previews in the core (send/daily.py), without the CLI."""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

import pytest

from syndicate.config import Settings
from syndicate.errors import ConfigError, LockedError
from syndicate.send.daily import preview, run_daily
from syndicate.send.lock import open_send_lock
from syndicate.store import Database
from syndicate.store.subscribers import add_subscriber
from tests.conftest import FIXED_NOW
from tests.plugins.postgres import open_store

pytestmark = pytest.mark.usefixtures("store")

SEEDS = Path(__file__).resolve().parent.parent / "seeds"


@pytest.fixture
def seeded(settings: Settings) -> Settings:
    for seed in SEEDS.glob("*.txt"):
        shutil.copy(seed, settings.paths.seeds / seed.name)
    return settings


def _opener(settings: Settings, opened: list[Database]):  # type: ignore[no-untyped-def]
    def open_db() -> Database:
        db = open_store(settings.paths.database)
        opened.append(db)
        return db

    return open_db


def test_run_daily_builds_sends_today_and_reports_without_the_cli(seeded: Settings) -> None:
    opened: list[Database] = []
    with open_store(seeded.paths.database) as db:
        add_subscriber(db, "an@example.org", now=FIXED_NOW)
    notices: list[str] = []
    report = run_daily(
        seeded,
        open_db=_opener(seeded, opened),
        now=FIXED_NOW,
        on_notice=notices.append,
        handle_signals=False,
    )
    for db in opened:
        db.close()
    assert report.today is not None
    assert (report.today.digest, report.today.sent, report.today.failed) == ("2024-11-01", 1, 0)
    assert report.earlier == ()
    assert report.subscribers
    assert not report.failed
    assert notices == []
    assert (seeded.paths.output / "digests" / "2024-11-01.html").is_file()
    assert len(list((seeded.paths.outbox / "2024-11-01").glob("*.eml"))) == 1


@pytest.mark.sqlite_only  # the send lock is SQLite's; on PostgreSQL runs share the queue
def test_run_daily_opens_no_database_while_another_run_holds_the_lock(seeded: Settings) -> None:
    opened: list[Database] = []
    with open_send_lock(seeded.paths.database), pytest.raises(LockedError):
        run_daily(seeded, open_db=_opener(seeded, opened), now=FIXED_NOW, handle_signals=False)
    assert opened == []


def test_smtp_settings_are_checked_before_the_database_is_made(
    seeded: Settings, now: datetime
) -> None:
    from dataclasses import replace

    broken = replace(
        seeded,
        mail=replace(seeded.mail, transport="smtp"),
        smtp=replace(seeded.smtp, username="news", password=""),
    )
    opened: list[Database] = []
    for call in (
        lambda: run_daily(broken, open_db=_opener(broken, opened), now=now, handle_signals=False),
        lambda: preview(broken, open_db=_opener(broken, opened), now=now, to=None, dry_run=True),
    ):
        with pytest.raises(ConfigError, match="SYNDICATE_SMTP_PASSWORD is empty"):
            call()
    assert opened == []
    assert not broken.paths.database.exists()


def test_preview_counts_without_storing_a_digest(seeded: Settings) -> None:
    opened: list[Database] = []
    with open_store(seeded.paths.database) as db:
        add_subscriber(db, "an@example.org", now=FIXED_NOW)
    shown = preview(
        seeded, open_db=_opener(seeded, opened), now=FIXED_NOW, to="An@Example.org", dry_run=True
    )
    for db in opened:
        db.close()
    assert shown is not None
    assert (shown.digest, shown.would_send, shown.test_copy) == ("2024-11-01", 1, None)
    assert shown.address == "An@example.org"  # the domain is normalised, not the local part
    assert not (seeded.paths.outbox / "2024-11-01").exists()

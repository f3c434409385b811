"""`syndicate send` and `unsubscribe-token` through CliRunner: lines, files, exit codes."""

from __future__ import annotations

import asyncio
import errno
import json
import math
import os
import re
import shutil
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import click
import pytest
import trustme
from click.testing import CliRunner

from syndicate.cli import AppContext, cli
from syndicate.model import SubscriptionStatus
from syndicate.send import open_send_lock
from syndicate.store.subscribers import (
    add_subscriber,
    confirm,
    erase,
    is_suppressed,
    signup,
    unsubscribe,
)
from tests.conftest import FIXED_NOW
from tests.plugins.postgres import open_store
from tests.plugins.smtp import SmtpRecorder, SmtpServer, free_port, run_smtp_server

SEEDS = Path(__file__).resolve().parent.parent / "seeds"
SUMMARY = re.compile(
    r"Digest (?P<day>\d{4}-\d\d-\d\d): sent (?P<sent>\d+), failed (?P<failed>\d+)"
    r"(?:, (?P<bounced>\d+) bounced)?, skipped (?P<skipped>\d+) in \d+\.\d s "
    r"\(\d+\.\d messages/s\)\.\n"
)
NOTHING_COUNTS = {"sent": 0, "failed": 0, "skipped": 0, "bounced": 0, "seconds": 0.0, "rate": 0.0}


@pytest.fixture
def project(folder: Path, store: str) -> Path:
    """The project folder, with a store on the module's engine."""
    return folder


@pytest.fixture
def folder(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The project folder, for a test that stops before it opens the store."""
    for seed in SEEDS.glob("*.txt"):
        shutil.copy(seed, workdir / "seeds" / seed.name)
    monkeypatch.chdir(workdir)
    for name in ("SYNDICATE_CONFIG", "SYNDICATE_SECRET", "SYNDICATE_SMTP_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    # The day the seeds were news: a clock years later would add the freshness warning.
    monkeypatch.setattr(AppContext, "now", lambda self: FIXED_NOW.timestamp())
    return workdir


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def _subscribe(*emails: str) -> None:
    for email in emails:
        assert _run("subscribers", "add", email)[0] == 0


def _smtp_config(project: Path, server: SmtpServer, *, extra: str = "") -> None:
    (project / "syndicate.toml").write_text(
        '[site]\nbase_url = "https://news.example.org/"\n'
        '[mail]\ntransport = "smtp"\nfrom = "Tin mới <news@example.org>"\n'
        'postal_address = "12 Trần Hưng Đạo, TP. Bến Lam"\n'
        f'[smtp]\nhost = "127.0.0.1"\nport = {server.port}\ntls = "none"\n'
        "connections = 2\n" + extra,
        encoding="utf-8",
    )


def _message_ids(smtpd: SmtpServer) -> list[str]:
    """The Message-IDs the server got, sorted, each digest's key (digests.message_key) as
    'KEY' (checked to be one)."""
    ids = sorted(str(m.message["Message-ID"]) for m in smtpd.handler.messages)
    return [re.sub(r"\.[0-9a-f]{12}@", ".KEY@", i, count=1) for i in ids]


def test_send_to_the_outbox_then_rerun_sends_nothing(project: Path) -> None:
    _subscribe("an@example.org", "bob@example.org")
    code, out, err = _run("send")
    assert (code, err) == (0, "")
    match = SUMMARY.fullmatch(out)
    assert match, out
    assert match.group("sent", "failed", "skipped") == ("2", "0", "0")
    day = match.group("day")
    files = sorted(p.name for p in (project / "outbox" / day).iterdir())
    with open_store(project / "syndicate.db") as db:
        (key,) = db.conn.execute("SELECT message_key FROM digests").fetchone()
    assert files == [f"{day}.1.{key}_localhost.eml", f"{day}.2.{key}_localhost.eml"]
    assert (project / "feeds" / "rss.xml").is_file()
    assert (project / "feeds" / "digests" / f"{day}.html").is_file()
    code, out, _ = _run("send")
    match = SUMMARY.fullmatch(out)
    assert code == 0
    assert match
    assert match.group("sent", "failed", "skipped") == ("0", "0", "2")


def _listed() -> dict[str, str]:
    code, out, err = _run("subscribers", "list")
    assert (code, err) == (0, "")
    return {line.split("\t")[1]: line.split("\t")[3] for line in out.splitlines()}


def test_send_deletes_sign_ups_left_unconfirmed_past_their_link_and_keeps_the_rest(
    project: Path,
) -> None:
    """Pending sign-ups never expired: a bot within the rate limit added rows for ever."""

    def hours(ago: float) -> datetime:
        return FIXED_NOW - timedelta(hours=ago)

    with open_store(project / "syndicate.db") as db:
        signup(db, "lapsed@example.org", language="vi", now=hours(48) - timedelta(minutes=2))
        signup(db, "fresh@example.org", language="vi", now=hours(47))  # its link still works
        signup(db, "again@example.org", language="en", now=hours(60))
        signup(db, "again@example.org", language="en", now=hours(1))  # signed up again since
        confirmed = signup(db, "yes@example.org", language="vi", now=hours(100))[0]
        confirm(db, confirmed.id, now=hours(99))
        # Back through the form after leaving: the row is put back as it was (not deleted).
        left = add_subscriber(db, "left@example.org", now=hours(200))
        unsubscribe(db, left.id, now=hours(150))
        signup(db, "left@example.org", language="vi", now=hours(100))
        add_subscriber(db, "spam@example.org", status=SubscriptionStatus.COMPLAINED, now=hours(200))
        signup(db, "spam@example.org", language="vi", now=hours(100))
        # Imported as pending (no sign-up through the form): it waits for its own.
        add_subscriber(
            db, "imported@example.org", status=SubscriptionStatus.PENDING, now=hours(200)
        )
        # Erased, then signed up again through the form: the sign-up goes, the hash stays.
        erase(db, "gone@example.org", now=hours(200))
        signup(db, "gone@example.org", language="vi", now=hours(100))
    assert len(_listed()) == 8
    code, out, err = _run("send")
    assert (code, err) == (0, "")
    assert _listed() == {
        "fresh@example.org": "pending",
        "again@example.org": "pending",
        "yes@example.org": "confirmed",
        "left@example.org": "unsubscribed",
        "spam@example.org": "complained",
        "imported@example.org": "pending",
    }
    code, out, _ = _run("subscribers", "stats")
    assert out.splitlines()[:7] == [
        "pending: 3",
        "confirmed: 1",
        "unsubscribed: 1",
        "bounced: 0",
        "complained: 1",
        "total: 6",
        "erased: 1",
    ]
    with open_store(project / "syndicate.db") as db:
        assert is_suppressed(db, "gone@example.org")
        # A new sign-up of a deleted address starts afresh and is mailed.
        assert signup(db, "lapsed@example.org", language="vi", now=FIXED_NOW)[1] is True


def test_a_sign_up_is_kept_while_the_confirmation_cap_still_counts_its_mail(
    project: Path,
) -> None:
    # With confirm links valid for an hour, deleting a sign-up after that hour would let the
    # same mailbox be mailed again and again: it stays the cap's day (24 hours).
    (project / "syndicate.toml").write_text("[subscribe]\nconfirm_hours = 1\n")
    with open_store(project / "syndicate.db") as db:
        signup(db, "an+0@example.org", language="vi", now=FIXED_NOW - timedelta(hours=50))
        for minutes, address in ((180, "an+1@"), (170, "an+2@"), (160, "an+3@")):
            mailed = signup(
                db,
                address + "example.org",
                language="vi",
                now=FIXED_NOW - timedelta(minutes=minutes),
            )
            assert mailed[1]
    assert _run("send")[0] == 0
    assert sorted(_listed()) == ["an+1@example.org", "an+2@example.org", "an+3@example.org"]
    with open_store(project / "syndicate.db") as db:
        assert signup(db, "an@example.org", language="vi", now=FIXED_NOW)[1] is False


def test_send_on_a_fresh_checkout_builds_and_says_who_to_add(project: Path) -> None:
    code, out, err = _run("send")
    assert (code, err) == (0, "")
    assert out.endswith(
        "; no confirmed subscribers yet (add one with `syndicate subscribers add EMAIL`, "
        "or let readers sign up through `syndicate serve`).\n"
    )
    assert out.startswith("Digest ")
    assert (project / "feeds" / "index.html").is_file()
    assert not (project / "outbox").exists()


def test_send_with_nothing_new_says_so(project: Path) -> None:
    for seed in (project / "seeds").iterdir():
        seed.unlink()
    _subscribe("an@example.org")
    assert _run("send") == (0, "Nothing new to send.\n", "")
    assert _run("-q", "send") == (0, "", "")
    code, out, _ = _run("send", "--json")
    assert code == 0
    assert json.loads(out) == {"digest": None, **NOTHING_COUNTS, "earlier": []}


def test_quiet_send_prints_nothing_on_success_and_json_prints_the_summary(project: Path) -> None:
    _subscribe("an@example.org")
    assert _run("-q", "send") == (0, "", "")
    _subscribe("bob@example.org")
    code, out, _ = _run("send", "--json")
    summary = json.loads(out)
    assert code == 0
    assert {k: summary[k] for k in ("sent", "failed", "skipped", "bounced")} == {
        "sent": 1,
        "failed": 0,
        "skipped": 1,
        "bounced": 0,
    }
    assert set(summary) == {
        "digest",
        "sent",
        "failed",
        "skipped",
        "bounced",
        "seconds",
        "rate",
        "earlier",
    }
    assert summary["earlier"] == []


def test_dry_run_writes_and_sends_nothing(project: Path) -> None:
    _subscribe("an@example.org", "bob@example.org")
    code, out, err = _run("send", "--dry-run")
    assert code == 0, err
    assert re.fullmatch(
        r"Dry run: the \d{4}-\d\d-\d\d digest \(\d+ articles\) would go to 2 subscribers, "
        r"0 skipped; no digest was stored and nothing was sent\.\n",
        out,
    )
    assert not (project / "outbox").exists()
    assert not (project / "feeds").exists()
    with open_store(project / "syndicate.db") as db:
        assert db.conn.execute("SELECT count(*) FROM digests").fetchone()[0] == 0
        assert db.conn.execute("SELECT count(*) FROM deliveries").fetchone()[0] == 0
        # What it parsed is kept (as `build` keeps it); no article is marked as mailed.
        assert db.conn.execute("SELECT count(*) FROM dumps").fetchone()[0] > 0
        marked = db.conn.execute("SELECT count(*) FROM articles WHERE digest_day IS NOT NULL")
        assert marked.fetchone()[0] == 0
    code, out, _ = _run("send", "--dry-run", "--json", "--limit", "1")
    assert json.loads(out)["would_send"] == 1


def test_test_copy_is_sent_but_not_recorded(project: Path) -> None:
    _subscribe("an@example.org")
    code, out, err = _run("send", "--to", "Editor@Example.org")
    assert code == 0, err
    assert re.fullmatch(r"Sent a test copy of the \S+ digest to Editor@example.org\.\n", out)
    copies = list((project / "outbox" / "test").iterdir())
    assert len(copies) == 1
    assert b"To: Editor@example.org\r\n" in copies[0].read_bytes()
    with open_store(project / "syndicate.db") as db:
        assert db.conn.execute("SELECT count(*) FROM deliveries").fetchone()[0] == 0
        assert db.conn.execute("SELECT count(*) FROM digests").fetchone()[0] == 0
    assert _run("send", "--to", "nope@")[0] == 2


@pytest.mark.sqlite_only  # the send lock is SQLite's; on PostgreSQL runs share the queue
def test_send_while_another_run_holds_the_lock_exits_75(project: Path) -> None:
    _subscribe("an@example.org")
    with open_send_lock(project / "syndicate.db"):
        code, out, err = _run("send")
    assert (code, out) == (75, "")
    assert err == (
        f"Error: {project / 'syndicate.db.lock'}: another `syndicate send` is running "
        "(it holds this lock). Let it finish; run again later.\n"
    )


def test_send_over_smtp_reports_failures_with_exit_1_and_never_retries_a_refusal(
    project: Path, smtpd: SmtpServer
) -> None:
    _smtp_config(project, smtpd)
    _subscribe("an@example.org", "bad@example.org", "cee@example.org")
    smtpd.handler.refuse("bad@example.org", "550 5.1.1 no such user")
    code, out, err = _run("-q", "send")
    assert (code, out) == (1, "")
    match = SUMMARY.fullmatch(err)  # -q: only the summary, on stderr, so cron mails it
    assert match, err
    assert match.group("sent", "failed", "skipped") == ("2", "1", "0")
    assert sorted(smtpd.handler.recipients()) == ["an@example.org", "cee@example.org"]
    code, out, err = _run("send")  # no such user: bounced at once, never tried again
    assert (code, err) == (0, "")
    match = SUMMARY.fullmatch(out)
    assert match
    assert match.group("sent", "failed", "skipped") == ("0", "0", "2")
    assert len(smtpd.handler.recipients()) == 2


def test_a_setup_problem_stops_the_run_with_exit_2(project: Path, smtpd: SmtpServer) -> None:
    _smtp_config(project, smtpd)
    _subscribe("an@example.org")
    smtpd.handler.refuse("an@example.org", "535 5.7.8 Authentication credentials invalid")
    code, _, err = _run("send")
    assert code == 2
    assert err.startswith(
        f"Error: smtp 127.0.0.1:{smtpd.port}: the server asks for authentication: "
        "535 5.7.8 Authentication credentials invalid. "
    )
    assert re.search(r"\. Digest \d{4}-\d\d-\d\d so far: 0 sent, 0 failed\. ", err), err


@pytest.mark.parametrize(
    ("said", "shown"),
    [
        ("\x1b]0;owned\x07", "\\x1b]0;owned\\x07"),
        # Bidirectional controls are not control characters: RLO (U+202E) showed the rest
        # of the line reversed, and an isolate (U+2066-2069) reorders what follows it.
        ("\u202eowned\u2066x\u2069\u200f", "\\u202eowned\\u2066x\\u2069\\u200f"),
    ],
    ids=["escape sequence", "bidi controls"],
)
def test_an_error_line_shows_the_servers_control_characters_as_escapes(
    project: Path, smtpd: SmtpServer, said: str, shown: str
) -> None:
    # The error line quotes the server's reply: its escape sequence (OSC 0, which retitles
    # the terminal; any other could clear or recolour it) reached the terminal as it came.
    _smtp_config(project, smtpd)
    _subscribe("an@example.org")
    smtpd.handler.refuse("an@example.org", f"535 5.7.8 {said} credentials invalid")
    code, _, err = _run("send")
    assert code == 2
    assert not {c for c in said if not c.isprintable()} & set(err), repr(err)
    assert err.startswith(
        f"Error: smtp 127.0.0.1:{smtpd.port}: the server asks for authentication: "
        f"535 5.7.8 {shown} credentials invalid. "
    ), repr(err)


def test_smtp_login_needs_the_password_variable(folder: Path, smtpd: SmtpServer) -> None:
    _smtp_config(folder, smtpd)
    config = folder / "syndicate.toml"
    config.write_text(config.read_text() + 'username = "news"\n', encoding="utf-8")
    assert _run("send") == (
        2,
        "",
        "Error: config key smtp.username is set, but SYNDICATE_SMTP_PASSWORD is empty. "
        "Export the password in SYNDICATE_SMTP_PASSWORD, or leave smtp.username empty.\n",
    )


def test_unsubscribe_token_make_and_verify(project: Path) -> None:
    _subscribe("an@example.org")
    code, url, _ = _run("unsubscribe-token", "make", "an@example.org")
    assert code == 0
    assert url.startswith("http://localhost:8000/unsubscribe?token=")
    token = url.strip().split("token=")[1]
    assert _run("unsubscribe-token", "verify", token) == (
        0,
        "valid: subscriber 1 <an@example.org> (confirmed)\n",
        "",
    )
    forged = token[:-3] + ("AAA" if token[-3:] != "AAA" else "BBB")
    code, out, err = _run("unsubscribe-token", "verify", forged)
    assert (code, out) == (2, "")
    assert err == (
        "Error: not valid: unsubscribe token: the signature does not match (altered, or "
        "signed with another secret). Check that the token was copied whole (the part of the "
        "link after token=) and that this is the store (and SYNDICATE_SECRET) that made it.\n"
    )


def test_unsubscribe_token_of_an_erased_subscriber_is_not_valid_for_the_next_one(
    project: Path,
) -> None:
    _subscribe("an@example.org")
    url = _run("unsubscribe-token", "make", "an@example.org")[1]
    assert _run("subscribers", "erase", "an@example.org")[0] == 0
    _subscribe("binh@example.org")
    token = url.strip().split("token=")[1]
    assert _run("unsubscribe-token", "verify", token) == (
        2,
        "",
        "Error: not valid: unsubscribe token: the subscriber it was made for no longer "
        "exists (erased). Nothing was changed.\n",
    )
    binh = _run("unsubscribe-token", "make", "binh@example.org")[1].strip().split("token=")[1]
    assert _run("unsubscribe-token", "verify", binh) == (
        0,
        "valid: subscriber 2 <binh@example.org> (confirmed)\n",
        "",
    )


# --------------------------------------------------------------------------- across days

DAY1 = datetime(2024, 10, 31, 6, 0, tzinfo=UTC)  # 13:00 on 31 October in Asia/Ho_Chi_Minh
DUMP_DAY1 = """Thông xe cầu Sông Lam
31/10/2024 09:15
LGO - Sáng nay 31/10, tỉnh Lam Giang thông xe cầu Sông Lam.
Cầu dài 680 m, rộng 21 m với bốn làn xe cơ giới.
Hoài Nam
"""
DUMP_DAY2 = """Hội thảo chuyển đổi số
01/11/2024 09:00
LGO - Sáng 1/11, hội thảo chuyển đổi số diễn ra tại TP. Bến Lam.
Hơn 200 đại biểu tham dự hội thảo.
"""


@dataclass
class Clock:
    now: datetime

    def next_day(self, days: int = 1) -> None:
        self.now += timedelta(days=days)


@pytest.fixture
def clock(workdir: Path, store: str, monkeypatch: pytest.MonkeyPatch) -> Clock:
    """A project folder with the day-1 dump, and a clock the commands read (day 1, 13:00)."""
    monkeypatch.chdir(workdir)
    for name in ("SYNDICATE_CONFIG", "SYNDICATE_SECRET", "SYNDICATE_SMTP_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    (workdir / "seeds" / "day1.txt").write_text(DUMP_DAY1, encoding="utf-8")
    current = Clock(DAY1)
    monkeypatch.setattr(AppContext, "now", lambda self: current.now.timestamp())
    return current


def _outbox_recipients(project: Path, day: str) -> list[str]:
    folder = project / "outbox" / day
    if not folder.exists():
        return []
    found = []
    for path in folder.iterdir():
        message = message_from_bytes(path.read_bytes(), policy=policy.default)
        found.append(str(message["To"]))
    return sorted(found)


def _summaries(text: str) -> list[tuple[str, str, str, str]]:
    lines = text.splitlines(keepends=True)
    matches = [SUMMARY.fullmatch(line) for line in lines]
    assert all(matches), text
    return [m.group("day", "sent", "failed", "skipped") for m in matches if m]


def test_a_day_cut_short_is_finished_by_the_next_days_run_before_todays_digest(
    clock: Clock, workdir: Path
) -> None:
    _subscribe("a@example.org", "b@example.org", "c@example.org", "d@example.org", "e@example.org")
    code, out, err = _run("send", "--limit", "1")
    assert (code, err) == (0, "")
    assert _summaries(out) == [("2024-10-31", "1", "0", "0")]
    # What a failed or killed day-1 run leaves: b in flight when the process died, c deferred
    # once by the server, e out of attempts; d was never tried.
    with open_store(workdir / "syndicate.db") as db:
        db.conn.executemany(
            "INSERT INTO deliveries (digest_day, subscriber_id, status, attempts, reply, "
            "updated_at) VALUES ('2024-10-31', ?, ?, ?, ?, '2024-10-31T06:00:00+00:00') "
            "ON CONFLICT (digest_day, subscriber_id) DO UPDATE SET status = excluded.status, "
            "attempts = excluded.attempts, reply = excluded.reply",  # the run enqueued them all
            [(2, "sending", 0, None), (3, "failed", 1, "451 4.3.0 later"), (5, "failed", 5, "x")],
        )
    clock.next_day()
    _subscribe("new@example.org")  # confirmed after the day-1 digest was made
    (workdir / "seeds" / "day2.txt").write_text(DUMP_DAY2, encoding="utf-8")
    code, out, err = _run("send")
    assert (code, err) == (0, "")
    assert _summaries(out) == [("2024-10-31", "3", "0", "2"), ("2024-11-01", "6", "0", "0")]
    assert _outbox_recipients(workdir, "2024-10-31") == [
        "a@example.org",
        "b@example.org",
        "c@example.org",
        "d@example.org",
    ]
    assert len(_outbox_recipients(workdir, "2024-11-01")) == 6
    assert (workdir / "feeds" / "digests" / "2024-10-31.html").is_file()
    # Nobody is owed the day-1 digest any more: the next run closes it and sends nothing.
    code, out, err = _run("send")
    assert (code, err) == (0, "")
    assert _summaries(out) == [("2024-11-01", "0", "0", "6")]
    with open_store(workdir / "syndicate.db") as db:
        closed = db.conn.execute("SELECT day, closed_at FROM digests ORDER BY day").fetchall()
    assert closed == [("2024-10-31", "2024-11-01T06:00:00+00:00"), ("2024-11-01", None)]


def test_limit_covers_the_whole_run_today_first_and_json_lists_the_earlier_digests(
    clock: Clock, workdir: Path
) -> None:
    _subscribe("a@example.org", "b@example.org", "c@example.org")
    assert _run("send", "--limit", "1")[0] == 0
    clock.next_day()
    (workdir / "seeds" / "day2.txt").write_text(DUMP_DAY2, encoding="utf-8")
    code, out, err = _run("send", "--json", "--limit", "4")
    assert (code, err) == (0, "")
    summary = json.loads(out)
    counts = ("digest", "sent", "failed", "skipped", "bounced")
    assert {k: summary[k] for k in counts} == {
        "digest": "2024-11-01",
        "sent": 3,
        "failed": 0,
        "skipped": 0,
        "bounced": 0,
    }
    assert [{k: e[k] for k in counts} for e in summary["earlier"]] == [
        {"digest": "2024-10-31", "sent": 1, "failed": 0, "skipped": 1, "bounced": 0}
    ]
    assert set(summary["earlier"][0]) == set(summary) - {"earlier"}
    code, out, _ = _run("send", "--json")
    summary = json.loads(out)
    assert (summary["sent"], summary["skipped"]) == (0, 3)
    assert [(e["digest"], e["sent"], e["skipped"]) for e in summary["earlier"]] == [
        ("2024-10-31", 1, 2)
    ]


def test_a_limit_used_up_by_todays_digest_leaves_the_catch_up_for_the_next_run(
    clock: Clock, workdir: Path
) -> None:
    _subscribe("a@example.org", "b@example.org", "c@example.org")
    assert _run("send", "--limit", "1")[0] == 0
    clock.next_day()
    (workdir / "seeds" / "day2.txt").write_text(DUMP_DAY2, encoding="utf-8")
    code, out, _ = _run("send", "--limit", "2")
    assert code == 0
    assert _summaries(out) == [("2024-11-01", "2", "0", "0")]
    assert _outbox_recipients(workdir, "2024-10-31") == ["a@example.org"]
    code, out, _ = _run("send")
    assert _summaries(out) == [("2024-10-31", "2", "0", "1"), ("2024-11-01", "1", "0", "2")]


def test_a_story_corrected_after_its_digest_went_out_is_not_mailed_again(
    clock: Clock, workdir: Path
) -> None:
    # An article's id is a hash of its text: a dump corrected after its digest went out (or
    # read again by a new parser version, which changes some ids) gave a new article, which
    # the next day's digest mailed to everyone again as news.
    _subscribe("a@example.org")
    assert _run("send")[0] == 0
    assert _outbox_recipients(workdir, "2024-10-31") == ["a@example.org"]
    dump = workdir / "seeds" / "day1.txt"
    dump.write_text(DUMP_DAY1.replace("680 m", "690 m"), encoding="utf-8")
    clock.next_day()
    assert _run("send") == (0, "Nothing new to send.\n", "")
    assert _outbox_recipients(workdir, "2024-11-01") == []
    # The correction is published all the same: the page says 690 m.
    (page,) = (workdir / "feeds" / "articles").glob("*.html")
    text = page.read_text(encoding="utf-8")
    assert "690" in text
    assert "680" not in text
    # It keeps its digest day, and when it was first seen (its place among undated ones).
    with open_store(workdir / "syndicate.db") as db:
        rows = db.conn.execute("SELECT first_seen_at, digest_day FROM articles").fetchall()
    assert len(rows) == 2  # the first text's article stays stored, without a page
    assert rows[0][0] == rows[1][0]
    assert str(rows[0][1]) == str(rows[1][1]) == "2024-10-31"


def test_an_earlier_digest_caught_up_after_a_correction_links_the_storys_page(
    clock: Clock, workdir: Path
) -> None:
    # A story corrected after its digest was made is another article (another id) that
    # keeps the story's page; the first text's article stays stored without one. A day
    # caught up later rendered that article, and so the "view in browser" page and the
    # mail still owed showed the story unlinked.
    _subscribe("a@example.org", "b@example.org")
    assert _run("send", "--limit", "1")[0] == 0
    page_name = "thong-xe-cau-song-lam.html"
    link = f'href="http://localhost:8000/articles/{page_name}"'
    view = workdir / "feeds" / "digests" / "2024-10-31.html"
    assert link in view.read_text(encoding="utf-8")
    dump = workdir / "seeds" / "day1.txt"
    dump.write_text(DUMP_DAY1.replace("680 m", "690 m"), encoding="utf-8")
    clock.next_day()
    code, out, _ = _run("send")
    assert code == 0
    assert out.splitlines()[1:] == ["Nothing new to send."]
    assert _summaries(out.splitlines(keepends=True)[0]) == [("2024-10-31", "1", "0", "1")]
    assert (workdir / "feeds" / "articles" / page_name).is_file()
    assert link in view.read_text(encoding="utf-8")
    (mail,) = [
        message_from_bytes(p.read_bytes(), policy=policy.default)
        for p in (workdir / "outbox" / "2024-10-31").iterdir()
        if "b@example.org" in p.read_text(encoding="utf-8")
    ]
    html = mail.get_body(("html",)).get_content()
    text = mail.get_body(("plain",)).get_content()
    assert link in html
    assert f"http://localhost:8000/articles/{page_name}" in text


def test_another_story_in_a_dump_path_read_before_is_mailed(clock: Clock, workdir: Path) -> None:
    # A scraper that reuses its file names (or a folder link moved to another day's dumps):
    # the dump's new article is another story, not a correction (another title, another
    # publish time). It took the old story's digest day and was never mailed.
    _subscribe("a@example.org")
    assert _run("send")[0] == 0
    assert _outbox_recipients(workdir, "2024-10-31") == ["a@example.org"]
    (workdir / "seeds" / "day1.txt").write_text(DUMP_DAY2, encoding="utf-8")
    clock.next_day()
    code, out, err = _run("send")
    assert (code, err) == (0, "")
    assert _summaries(out) == [("2024-11-01", "1", "0", "0")]
    assert _outbox_recipients(workdir, "2024-11-01") == ["a@example.org"]
    with open_store(workdir / "syndicate.db") as db:
        rows = db.conn.execute(
            "SELECT title, first_seen_at, digest_day FROM articles ORDER BY first_seen_at"
        ).fetchall()
    assert [(title, str(day)) for title, _, day in rows] == [
        ("Thông xe cầu Sông Lam", "2024-10-31"),
        ("Hội thảo chuyển đổi số", "2024-11-01"),
    ]
    assert rows[0][1] < rows[1][1]


def test_an_earlier_digest_is_caught_up_on_a_day_with_nothing_new(
    clock: Clock, workdir: Path
) -> None:
    _subscribe("a@example.org", "b@example.org")
    assert _run("send", "--limit", "1")[0] == 0
    clock.next_day(7)  # the last day of the catch-up window
    code, out, err = _run("send")
    assert (code, err) == (0, "")
    lines = out.splitlines(keepends=True)
    assert _summaries(lines[0]) == [("2024-10-31", "1", "0", "1")]
    assert lines[1:] == ["Nothing new to send.\n"]
    assert _outbox_recipients(workdir, "2024-10-31") == ["a@example.org", "b@example.org"]
    code, out, _ = _run("send", "--json")
    assert json.loads(out) == {"digest": None, **NOTHING_COUNTS, "earlier": []}


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one-process", "workers"])
def test_an_owed_digest_whose_articles_are_unreadable_is_closed_with_one_warning(
    clock: Clock, workdir: Path, workers: list[str]
) -> None:
    _subscribe("a@example.org", "b@example.org")
    assert _run("send", "--limit", "1")[0] == 0
    with open_store(workdir / "syndicate.db") as db, db.transaction() as conn:
        (ids,) = conn.execute("SELECT article_ids FROM digests").fetchone()
        for article_id in json.loads(ids):
            conn.execute("UPDATE articles SET record = '{' WHERE id = ?", (article_id,))
    clock.next_day()
    code, out, err = _run("send", *workers)
    assert (code, out) == (0, "Nothing new to send.\n")
    assert err.endswith(
        "warning: digest 2024-10-31: its articles are no longer stored, so it cannot be sent "
        "to the 1 subscriber still owed it.\n"
    ), err
    assert _outbox_recipients(workdir, "2024-10-31") == ["a@example.org"]
    assert _run("send", *workers) == (0, "Nothing new to send.\n", "")  # said once: closed


def test_a_digest_older_than_the_window_is_given_up_with_one_warning(
    clock: Clock, workdir: Path
) -> None:
    _subscribe("a@example.org", "b@example.org")
    assert _run("send", "--limit", "1")[0] == 0
    clock.next_day(8)
    assert _run("send") == (
        0,
        "Nothing new to send.\n",
        "warning: digest 2024-10-31: given up with 1 subscriber never sent it: it is older "
        "than the 7-day catch-up window.\n",
    )
    assert _outbox_recipients(workdir, "2024-10-31") == ["a@example.org"]
    assert _run("send") == (0, "Nothing new to send.\n", "")  # warned once, then closed


def test_a_run_stopped_by_a_down_server_is_finished_the_next_day(
    clock: Clock, workdir: Path, smtpd: SmtpServer
) -> None:
    down = SmtpServer("127.0.0.1", free_port(), smtpd.handler)  # nothing listens there
    _smtp_config(workdir, down, extra="retry_window = 0.1\n")  # retry at once: fast test
    _subscribe("a@example.org", "b@example.org")
    code, out, err = _run("-q", "send")
    assert (code, out) == (75, "")
    assert err.startswith(f"Error: smtp 127.0.0.1:{down.port}: cannot connect")
    assert re.search(r"\. Digest \d{4}-\d\d-\d\d so far: 0 sent, 0 failed\. ", err), err
    assert len(err.splitlines()) == 1
    clock.next_day()
    _smtp_config(workdir, smtpd)
    (workdir / "seeds" / "day2.txt").write_text(DUMP_DAY2, encoding="utf-8")
    code, out, err = _run("send")
    assert (code, err) == (0, "")
    assert _summaries(out) == [("2024-10-31", "2", "0", "0"), ("2024-11-01", "2", "0", "0")]
    assert _message_ids(smtpd) == [
        "<2024-10-31.1.KEY@news.example.org>",
        "<2024-10-31.2.KEY@news.example.org>",
        "<2024-11-01.1.KEY@news.example.org>",
        "<2024-11-01.2.KEY@news.example.org>",
    ]


def test_a_subscriber_a_run_of_the_day_set_out_to_mail_is_caught_up_the_next_day(
    clock: Clock, workdir: Path, smtpd: SmtpServer
) -> None:
    # Cron runs `send` hourly (docs/operating.md). The 13:00 run makes the day's digest; b
    # confirms at 14:00 and the 15:00 run sets out to mail b that digest, but the server is
    # down for the rest of the day. The next day's catch-up dropped b in silence (b was
    # confirmed after the digest was made) while it finished everyone else's.
    _smtp_config(workdir, smtpd)
    _subscribe("a@example.org")
    assert _run("-q", "send") == (0, "", "")
    clock.now += timedelta(hours=1)
    _subscribe("b@example.org")
    clock.now += timedelta(hours=1)
    down = SmtpServer("127.0.0.1", free_port(), smtpd.handler)  # nothing listens there
    _smtp_config(workdir, down, extra="retry_window = 0.1\n")
    assert _run("-q", "send")[0] == 75
    clock.next_day()
    _smtp_config(workdir, smtpd)
    (workdir / "seeds" / "day2.txt").write_text(DUMP_DAY2, encoding="utf-8")
    code, out, err = _run("send")
    assert (code, err) == (0, "")
    assert _summaries(out) == [("2024-10-31", "1", "0", "1"), ("2024-11-01", "2", "0", "0")]
    assert _message_ids(smtpd) == [
        "<2024-10-31.1.KEY@news.example.org>",
        "<2024-10-31.2.KEY@news.example.org>",
        "<2024-11-01.1.KEY@news.example.org>",
        "<2024-11-01.2.KEY@news.example.org>",
    ]


DUMP_DAY0 = """Khai mạc hội chợ nông sản
30/10/2024 16:00
LGO - Chiều nay 30/10, hội chợ nông sản Lam Giang khai mạc tại TP. Bến Lam.
Hội chợ có 120 gian hàng.
"""


DUMP_NOV = {
    2: "Khai mạc hội sách\n02/11/2024 08:30\nLGO - Sáng 2/11, hội sách Lam Giang khai mạc.\n"
    "Hội sách có 80 gian hàng của các nhà xuất bản.\n",
    3: "Giải chạy ven sông\n03/11/2024 07:00\nLGO - Sáng 3/11, giải chạy ven sông Lam diễn ra.\n"
    "Gần 3.000 vận động viên tham gia giải năm nay.\n",
}


# On PostgreSQL the server's clock (real) vouches for this machine's (the test's): see
# tests/test_send_machines.py for the days-ahead digest there.
@pytest.mark.sqlite_only
def test_a_digest_a_clock_days_ahead_made_stops_no_later_days_digest(
    clock: Clock, workdir: Path
) -> None:
    # The clock ran three days ahead: the run of 31 October made and mailed the digest of
    # 3 November. NTP set the clock right, and every run refused its day (exit 75) until 3
    # November came: subscribers got nothing for three days.
    _subscribe("a@example.org")
    clock.next_day(3)
    assert _run("-q", "send") == (0, "", "")
    clock.next_day(-3)  # the clock is right again: 31 October
    (workdir / "seeds" / "day0.txt").write_text(DUMP_DAY0, encoding="utf-8")
    code, out, err = _run("send")
    assert (code, _summaries(out)) == (0, [("2024-10-31", "1", "0", "0")]), err
    warning = (
        "send: the digest of 2024-11-03, after today (2024-10-31 by this machine's clock), "
        "was made at 2024-11-03T13:00+07:00 by a clock that ran ahead; today's digest goes "
        "out all the same. `syndicate digest --retire DAY` removes it, so that day gets a "
        "digest of its own when it comes."
    )
    assert warning in err
    assert len(err.splitlines()) == 1, err
    clock.next_day()
    (workdir / "seeds" / "day2.txt").write_text(DUMP_DAY2, encoding="utf-8")
    code, out, err = _run("send")
    assert (code, _summaries(out)) == (0, [("2024-11-01", "1", "0", "0")]), err
    assert "send: the digest of 2024-11-03, after today (2024-11-01 " in err
    # Retiring: only a day after today, and only one stored.
    code, _out, err = _run("digest", "--retire", "2024-11-01")
    assert code == 2
    assert "2024-11-01 is not after today (2024-11-01" in err
    assert _run("digest", "--retire", "2024-11-02")[0] == 2
    code, out, err = _run("digest", "--retire", "2024-11-03")
    assert (code, err) == (0, ""), err
    assert "Retired the digest of 2024-11-03 (1 ledger rows)" in out
    for day, dump in DUMP_NOV.items():
        clock.next_day()
        (workdir / "seeds" / f"nov{day}.txt").write_text(dump, encoding="utf-8")
        code, out, err = _run("send")
        assert (code, err) == (0, "")
        assert _summaries(out) == [(f"2024-11-0{day}", "1", "0", "0")]
    with open_store(workdir / "syndicate.db") as db:
        days = db.conn.execute("SELECT day FROM digests ORDER BY day").fetchall()
    assert [d for (d,) in days] == [
        "2024-10-31", "2024-11-01", "2024-11-02", "2024-11-03"
    ]  # fmt: skip
    # The retired copy of 3 November and the day's own had the same Message-ID: Gmail
    # dropped the real one as a duplicate, and the outbox file of the first was overwritten.
    copies = sorted((workdir / "outbox" / "2024-11-03").iterdir())
    ids = [message_from_bytes(p.read_bytes())["Message-ID"] for p in copies]
    assert len(copies) == 2, ids
    assert len(set(ids)) == 2
    assert all(re.fullmatch(r"<2024-11-03\.1\.[0-9a-f]{12}@localhost>", i) for i in ids), ids


def test_a_clock_set_back_a_little_past_midnight_waits_for_the_day(
    clock: Clock, workdir: Path
) -> None:
    # The clock ran 30 s ahead: the run at 00:00:20 by it made and mailed the digest of
    # 1 November. NTP set it right, and the next run, at 23:59:55 on 31 October, must not
    # make and mail a digest of the 31st after the 1st's: it waits (exit 75) for the day.
    _subscribe("a@example.org")
    clock.now = datetime(2024, 10, 31, 17, 0, 20, tzinfo=UTC)  # 00:00:20 on 1 November
    assert _run("-q", "send") == (0, "", "")
    clock.now = datetime(2024, 10, 31, 16, 59, 55, tzinfo=UTC)
    (workdir / "seeds" / "day0.txt").write_text(DUMP_DAY0, encoding="utf-8")
    code, out, err = _run("-q", "send")
    assert (code, out) == (75, "")
    assert err == (
        "Error: send: today is 2024-10-31 by this machine's clock (site.timezone "
        "Asia/Ho_Chi_Minh), before the day of the last digest made, 2024-11-01: the clock "
        "was set back, or site.timezone moved west. Check the clock (NTP); `send` goes on "
        "once this machine's day is 2024-11-01 or later.\n"
    )
    assert _outbox_recipients(workdir, "2024-10-31") == []
    # A dry run says what `send` would do: the same line, not a digest it would never send.
    assert _run("-q", "send", "--dry-run") == (75, "", err)
    clock.now = datetime(2024, 11, 1, 17, 0, tzinfo=UTC)  # the next day has come
    (workdir / "seeds" / "day2.txt").write_text(DUMP_DAY2, encoding="utf-8")
    code, out, err = _run("send")
    assert (code, err) == (0, "")
    assert _summaries(out) == [("2024-11-02", "1", "0", "0")]


def test_digest_retire_refuses_a_digest_no_clock_ahead_made(clock: Clock, workdir: Path) -> None:
    # The digest of 1 November, made 20 s after midnight by a clock 30 s ahead, is the day's
    # own, not a clock's mistake. `digest --retire 2024-11-01` at 23:59:55 on 31 October
    # deleted it and the ledger rows of everyone it had gone to: the day's next run made a
    # second digest of 1 November and mailed it to them with the same Message-IDs.
    _subscribe("a@example.org")
    clock.now = datetime(2024, 10, 31, 17, 0, 20, tzinfo=UTC)  # 00:00:20 on 1 November
    assert _run("-q", "send") == (0, "", "")
    clock.now = datetime(2024, 10, 31, 16, 59, 55, tzinfo=UTC)
    code, out, err = _run("digest", "--retire", "2024-11-01")
    assert (code, out) == (2, "")
    assert "the digest of 2024-11-01 was made at 2024-11-01T00:00+07:00, within" in err
    with open_store(workdir / "syndicate.db") as db:
        assert db.conn.execute("SELECT count(*) FROM deliveries").fetchone()[0] == 1
        assert db.conn.execute("SELECT count(*) FROM digests").fetchone()[0] == 1


def test_moving_the_site_timezone_west_mails_no_day_twice_or_out_of_order(
    clock: Clock, workdir: Path
) -> None:
    _subscribe("a@example.org")
    assert _run("-q", "send") == (0, "", "")  # 13:00 on 31 October in Asia/Ho_Chi_Minh
    (workdir / "syndicate.toml").write_text(
        '[site]\ntimezone = "America/Los_Angeles"\n', encoding="utf-8"
    )
    (workdir / "seeds" / "day0.txt").write_text(DUMP_DAY0, encoding="utf-8")
    code, out, err = _run("-q", "send")  # 23:00 on 30 October there
    assert (code, out) == (75, "")
    assert "today is 2024-10-30 by this machine's clock (site.timezone America/Los_Angeles)" in err
    clock.next_day()  # 23:00 on 31 October there: that day's digest went out already
    code, out, err = _run("send")
    assert (code, err) == (0, "")
    assert _summaries(out) == [("2024-10-31", "0", "0", "1")]
    clock.next_day()
    code, out, err = _run("send")
    assert (code, err) == (0, "")
    assert _summaries(out) == [("2024-11-01", "1", "0", "0")]
    assert _outbox_recipients(workdir, "2024-10-31") == ["a@example.org"]
    assert _outbox_recipients(workdir, "2024-11-01") == ["a@example.org"]


def test_a_digest_made_while_the_clock_ran_weeks_ahead_does_not_stop_the_daily_job(
    clock: Clock, workdir: Path
) -> None:
    clock.next_day(30)  # one run while the clock ran a month ahead
    _subscribe("a@example.org")
    assert _run("-q", "send")[0] == 0  # (with the freshness warning: news a month old)
    clock.next_day(-29)  # the clock is right again: the next day's run goes on
    (workdir / "seeds" / "day2.txt").write_text(DUMP_DAY2, encoding="utf-8")
    code, out, err = _run("send")
    assert (code, err) == (0, "")
    assert _summaries(out) == [("2024-11-01", "1", "0", "0")]


def test_a_clock_that_was_never_set_makes_no_digest(clock: Clock, workdir: Path) -> None:
    # A machine without a battery-backed clock boots at 1970-01-01, and cron runs `send`
    # before NTP sets the clock: with VERP on, the run made a digest of 1 January 1970 (its
    # articles marked as sent), then stopped with a traceback; once the clock was right,
    # that digest was given up, and its articles were never mailed.
    config = workdir / "syndicate.toml"
    config.write_text('[mail]\nbounce_address = "bounces@example.org"\n', encoding="utf-8")
    _subscribe("a@example.org")
    clock.now = datetime(1970, 1, 1, 0, 0, 42, tzinfo=UTC)
    code, out, err = _run("-q", "send")
    assert (code, out) == (75, "")
    assert err == (
        "Error: send: today is 1970-01-01 by this machine's clock, before 2000-01-01: the "
        "clock is not set. Set it (NTP); `send` dates each digest by it.\n"
    )
    with open_store(workdir / "syndicate.db") as db:
        assert db.conn.execute("SELECT count(*) FROM digests").fetchone()[0] == 0
    clock.now = DAY1
    code, out, err = _run("send")
    assert (code, err) == (0, "")
    assert _summaries(out) == [("2024-10-31", "1", "0", "0")]


def test_a_clock_far_ahead_makes_no_digest_and_no_traceback(clock: Clock, workdir: Path) -> None:
    # A token carries its time as a 32-bit count of seconds from 1970 (a return path, the
    # digest's day as a 16-bit count of days from 2000): a clock past 2106-02-07 made a
    # digest, then stopped at its first message with a traceback (struct.error).
    config = workdir / "syndicate.toml"
    config.write_text('[mail]\nbounce_address = "bounces@example.org"\n', encoding="utf-8")
    _subscribe("a@example.org")
    clock.now = datetime(2200, 1, 1, 6, tzinfo=UTC)
    code, out, err = _run("-q", "send")
    assert (code, out) == (75, "")
    assert err == (
        "Error: send: this machine's clock reads 2200-01-01 06:00 UTC, past 2106-02-07 06:27 "
        "UTC, the last time a mail's links can be signed for: the clock is wrong. Set it "
        "(NTP); `send` dates each digest by it.\n"
    )
    with open_store(workdir / "syndicate.db") as db:
        assert db.conn.execute("SELECT count(*) FROM digests").fetchone()[0] == 0
    clock.now = DAY1
    code, out, err = _run("send")
    assert (code, err) == (0, "")
    assert _summaries(out) == [("2024-10-31", "1", "0", "0")]


def test_unsubscribe_token_make_on_a_clock_past_2106_is_one_line_and_exit_75(
    clock: Clock, workdir: Path
) -> None:
    # A token carries its time as a 32-bit count of seconds from 1970: past 2106-02-07 no
    # link can be signed (tokens.make_token's ClockError), and the clock is what is wrong.
    _subscribe("a@example.org")
    clock.now = datetime(2200, 1, 1, 6, tzinfo=UTC)
    assert _run("unsubscribe-token", "make", "a@example.org") == (
        75,
        "",
        "Error: token: the time 2200-01-01 06:00 UTC is outside 1970-01-01..2106-02-07 06:27 "
        "UTC, the times a token can carry: this machine's clock is wrong. Set it (NTP).\n",
    )
    clock.now = DAY1
    code, url, err = _run("unsubscribe-token", "make", "a@example.org")
    assert (code, err) == (0, "")
    assert url.startswith("http://localhost:8000/unsubscribe?token=")


@pytest.mark.parametrize("command", [["build"], ["digest"]])
def test_a_build_on_a_clock_that_was_never_set_dates_nothing(
    clock: Clock, workdir: Path, command: list[str]
) -> None:
    # The same machine, cron running `build` (or an editor `digest`) before NTP: an article
    # with no publish time was stored as first seen on 1 January 1970, for good, and no
    # digest ever took it (too old); the site listed it last.
    (workdir / "seeds" / "undated.txt").write_text(
        "Thư viện số cho học sinh vùng cao\n{publish}\n{head}\n"
        "Thư viện tỉnh Lam Giang vừa đưa vào sử dụng hệ thống thư viện số.\n",
        encoding="utf-8",
    )
    _subscribe("a@example.org")
    clock.now = datetime(1970, 1, 1, 0, 0, 42, tzinfo=UTC)
    code, out, err = _run("-q", *command)
    assert (code, out) == (75, "")
    assert err == (
        "Error: this machine's clock reads 1970-01-01, before 2000-01-01: it is not set. Set "
        "it (NTP) and run again; articles with no publish time are dated by it.\n"
    )
    with open_store(workdir / "syndicate.db") as db:
        assert db.conn.execute("SELECT count(*) FROM articles").fetchone()[0] == 0
    assert not (workdir / "feeds").exists()
    clock.now = DAY1
    assert _run("build")[0] == 0
    code, out, err = _run("send")
    assert (code, err) == (0, "")
    assert _summaries(out) == [("2024-10-31", "1", "0", "0")]
    (mail,) = (workdir / "outbox" / "2024-10-31").glob("*.eml")
    text = message_from_bytes(mail.read_bytes(), policy=policy.default)
    body = text.get_body(preferencelist=("plain",))
    assert body is not None
    assert "Thư viện số cho học sinh vùng cao" in body.get_content()


def test_failures_in_an_earlier_digest_exit_1_with_its_line_on_stderr(
    clock: Clock, workdir: Path, smtpd: SmtpServer
) -> None:
    _smtp_config(workdir, smtpd)
    _subscribe("a@example.org", "b@example.org")
    assert _run("send", "--limit", "1")[0] == 0
    clock.next_day()
    smtpd.handler.refuse("b@example.org", "550 5.1.1 no such user", times=1)
    code, out, err = _run("-q", "send")
    assert (code, out) == (1, "")
    assert _summaries(err) == [("2024-10-31", "0", "1", "1")]  # nothing new on day 2


@pytest.mark.parametrize(
    ("error", "code"), [(errno.EPIPE, 141), (errno.ENOSPC, 75)], ids=["reader gone", "full disk"]
)
def test_failed_deliveries_exit_1_when_standard_output_cannot_be_written(
    clock: Clock,
    workdir: Path,
    smtpd: SmtpServer,
    monkeypatch: pytest.MonkeyPatch,
    error: int,
    code: int,
) -> None:
    # The earlier digest's failures go to stderr; the run's last line ("nothing new") to
    # stdout, whose reader had gone (or whose disk was full): the run ended 141, quietly
    # (or 75, "try again later"), not 1, the exit code of failed deliveries.
    _smtp_config(workdir, smtpd)
    _subscribe("a@example.org", "b@example.org")
    assert _run("send", "--limit", "1")[0] == 0
    clock.next_day()
    smtpd.handler.refuse("b@example.org", "550 5.1.1 no such user", times=1)
    real_echo = click.echo

    def echo(message: Any = None, file: Any = None, nl: bool = True, err: bool = False) -> None:
        if not err and file is None:  # standard output, as the system would fail it
            raise OSError(error, os.strerror(error))
        real_echo(message, file=file, nl=nl, err=err)

    monkeypatch.setattr(click, "echo", echo)
    result = CliRunner().invoke(cli, ["send"], catch_exceptions=False)
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert "Digest 2024-10-31: sent 0, failed 1, 1 bounced, skipped 1" in result.stderr
    full = (
        "Error: standard output: cannot write: No space left on device. Free some space or "
        "send the output elsewhere; nothing was half-written."
    )
    said = [line for line in lines if line.startswith("Error: ")]
    assert said == ([] if error == errno.EPIPE else [full])


def test_each_test_copy_has_its_own_message_id(clock: Clock, workdir: Path) -> None:
    for _ in range(2):
        assert _run("send", "--to", "editor@example.org") == (
            0,
            "Sent a test copy of the 2024-10-31 digest to editor@example.org.\n",
            "",
        )
    copies = list((workdir / "outbox" / "test").iterdir())
    ids = [
        str(message_from_bytes(p.read_bytes(), policy=policy.default)["Message-ID"]) for p in copies
    ]
    assert len(ids) == 2
    assert ids[0] != ids[1]
    for message_id in ids:
        assert re.fullmatch(r"<2024-10-31\.test-[0-9a-f]{16}@localhost>", message_id)


def test_dry_run_counts_in_the_singular(clock: Clock) -> None:
    _subscribe("a@example.org")
    assert _run("send", "--dry-run") == (
        0,
        "Dry run: the 2024-10-31 digest (1 article) would go to 1 subscriber, 0 skipped; "
        "no digest was stored and nothing was sent.\n",
        "",
    )


def test_smtp_without_a_postal_address_warns_once(project: Path, smtpd: SmtpServer) -> None:
    _smtp_config(project, smtpd)
    config = project / "syndicate.toml"
    config.write_text(
        "\n".join(
            line
            for line in config.read_text(encoding="utf-8").splitlines()
            if not line.startswith("postal_address")
        ),
        encoding="utf-8",
    )
    _subscribe("an@example.org")
    code, _out, err = _run("send")
    assert code == 0
    assert err == (
        "warning: config key mail.postal_address is empty, so the digest carries no postal "
        "address; set the sender's address in syndicate.toml.\n"
    )
    assert smtpd.handler.recipients() == ["an@example.org"]


@pytest.mark.parametrize(
    "base_url",
    [
        "http://localhost:8000/",
        "http://127.0.0.1:8000/news/",
        "http://[::1]/",
        # The address `serve --host` was given, copied: readers' browsers reach their own.
        "http://0.0.0.0:8000/",
        "http://[::ffff:127.0.0.1]:8000/",
        # IPv4 as browsers read it (WHATWG URL): 1 to 4 parts, decimal, octal or hex.
        "http://127.1/",
        "http://2130706433:8000/",
        "http://0x7f.1/",
        "http://0177.0.0.1/",
        "http://0x7F000001/",
        "http://127.0.0.1./",
        "http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/",  # full-width digits
        "http://[0:0:0:0:0:0:0:1]/",
        "http://[::ffff:7f00:1]/",
    ],
)
def test_smtp_with_a_loopback_base_url_warns_that_the_links_lead_nowhere(
    project: Path, smtpd: SmtpServer, base_url: str
) -> None:
    # An operator who switched to SMTP but kept the embedded default base_url mailed every
    # reader links (unsubscribe too) to their own machine, without a word.
    _smtp_config(project, smtpd)
    config = project / "syndicate.toml"
    config.write_text(
        config.read_text(encoding="utf-8").replace("https://news.example.org/", base_url),
        encoding="utf-8",
    )
    _subscribe("an@example.org")
    code, _out, err = _run("send")
    assert code == 0
    assert err == (
        f"warning: config key site.base_url is {base_url!r}, this machine's own address, so "
        "the links in every digest (unsubscribe too) lead nowhere for its readers; set the "
        "address the site is served under in syndicate.toml.\n"
    )
    assert smtpd.handler.recipients() == ["an@example.org"]


@pytest.mark.parametrize(
    "base_url",
    ["http://128.1/", "http://2147483649/", "http://0x80.1/", "http://10.0.0.127/"],
)
def test_smtp_with_a_base_url_of_another_machine_in_ipv4_shorthand_warns_nothing(
    project: Path, smtpd: SmtpServer, base_url: str
) -> None:
    # The shorthand parser must still tell other machines (128.0.0.1 in three spellings)
    # from this one.
    _smtp_config(project, smtpd)
    config = project / "syndicate.toml"
    config.write_text(
        config.read_text(encoding="utf-8").replace("https://news.example.org/", base_url),
        encoding="utf-8",
    )
    _subscribe("an@example.org")
    code, _out, err = _run("send")
    assert (code, err) == (0, "")
    assert smtpd.handler.recipients() == ["an@example.org"]


def test_erase_deletes_the_outbox_messages_to_that_address(project: Path) -> None:
    _subscribe("an@example.org", "bob@example.org")
    assert _run("send")[0] == 0
    confirmations = project / "outbox" / "confirmations"
    confirmations.mkdir(parents=True)
    (confirmations / "x.eml").write_bytes(
        b"From: news@example.org\r\nTo: =?utf-8?q?=C3=82n?= <AN@example.org>\r\n"
        b"Subject: confirm\r\n\r\nbody with an@example.org\r\n"
    )
    (confirmations / "y.eml").write_bytes(
        b"From: news@example.org\r\nTo: bob@example.org\r\n\r\nan@example.org\r\n"
    )
    before = sorted(p.name for p in (project / "outbox").rglob("*.eml"))
    code, out, _err = _run("subscribers", "erase", "an@example.org")
    assert code == 0
    assert out.splitlines()[-1] == "Deleted 2 outbox messages to an@example.org."
    after = sorted(p.name for p in (project / "outbox").rglob("*.eml"))
    assert len(before) == 4
    assert sorted(set(before) - set(after)) == sorted(
        ["x.eml", next(n for n in before if re.search(r"\.1\.[0-9a-f]{12}_", n))]
    )
    for path in (project / "outbox").rglob("*.eml"):
        assert b"To: an@example.org" not in path.read_bytes()


def test_implicit_tls_to_a_plain_smtp_port_is_a_setup_error_not_a_retry(
    project: Path, smtpd: SmtpServer
) -> None:
    _smtp_config(project, smtpd)
    config = project / "syndicate.toml"
    config.write_text(
        config.read_text(encoding="utf-8").replace('tls = "none"', 'tls = "tls"'),
        encoding="utf-8",
    )
    _subscribe("an@example.org")
    code, out, err = _run("-q", "send")
    assert (code, out) == (2, "")
    line = (
        re.escape(
            f"Error: smtp 127.0.0.1:{smtpd.port}: implicit TLS (smtp.tls = 'tls') failed: "
            "WRONG_VERSION_NUMBER; the server does not speak TLS on this port."
        )
        # No DATA started: nothing is in flight.
        + r" Digest [\d-]+ so far: 0 sent, 0 failed\. "
    )
    hint = re.escape(
        "Use smtp.tls = 'starttls' for a port like 587 or 25, or the server's implicit TLS "
        "port (usually 465).\n"
    )
    assert re.fullmatch(line + hint, err), err
    assert smtpd.handler.recipients() == []


@pytest.mark.parametrize("tls", ["starttls", "tls"])
def test_send_over_smtp_with_tls_verifies_the_certificate(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tls: str
) -> None:
    """STARTTLS (the server refuses mail before it) and implicit TLS, against a certificate
    from a throwaway CA: trusted, mail goes; not trusted, the run stops with one line."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    if tls == "starttls":
        options = {"tls_context": server_context, "require_starttls": True}
    else:
        options = {"ssl_context": server_context}
    with run_smtp_server(**options) as server:
        handler, port = server.handler, server.port
        _smtp_config(project, server)
        config = project / "syndicate.toml"
        config.write_text(
            config.read_text(encoding="utf-8").replace('tls = "none"', f'tls = "{tls}"'),
            encoding="utf-8",
        )
        _subscribe("an@example.org")
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "nobody-trusts-this.pem"))
        code, _out, err = _run("send")
        assert code == 2  # a setup problem, not retried
        assert err.startswith(
            f"Error: smtp 127.0.0.1:{port}: the server's TLS certificate is not trusted: "
        )
        assert len(err.splitlines()) <= 2  # the error and its hint, no traceback
        assert handler.recipients() == []
        ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
        code, _out, err = _run("send")
        assert (code, err) == (0, "")
        assert handler.recipients() == ["an@example.org"]


def _dump_for(day: datetime) -> str:
    local = day.astimezone(ZoneInfo("Asia/Ho_Chi_Minh"))
    return (
        f"Tin ngày {local:%d/%m}\n{local:%d/%m/%Y} 09:00\n"
        f"LGO - Sáng {local.day}/{local.month}, tỉnh Lam Giang họp bàn kế hoạch tuần.\n"
        f"Các sở, ngành báo cáo tiến độ công việc số {local.day} trong tháng {local.month}.\n"
    )


@pytest.mark.slow(seconds=12)
def test_a_week_of_dead_and_full_mailboxes_never_holds_up_a_days_digest(
    clock: Clock, workdir: Path, smtpd: SmtpServer
) -> None:
    # 25 of 250 answer 550 5.1.1 and 6 answer 452 4.2.2 all week; 3 are greylisted once a
    # day. Every day's digest must reach every deliverable subscriber on its day, once.
    # Each run waits out the retry window once per digest with full mailboxes (36 in the
    # week); greylisted retries are due after window / 8, well inside it.
    _smtp_config(workdir, smtpd, extra="retry_window = 0.02\n")
    emails = [f"reader{i}@example.org" for i in range(250)]
    unknown = set(emails[::10])
    full = {emails[i] for i in range(1, 250, 42)}
    greylisted = {emails[i] for i in range(7, 250, 100)}
    deliverable = set(emails) - unknown - full
    assert (len(unknown), len(full), len(deliverable)) == (25, 6, 219)
    assert greylisted <= deliverable
    assert len(greylisted) == 3
    with open_store(workdir / "syndicate.db") as db:
        for email in emails:
            add_subscriber(db, email, now=clock.now - timedelta(hours=1))
    for email in unknown:
        smtpd.handler.refuse(email, "550 5.1.1 User unknown")
    for email in full:
        smtpd.handler.refuse(email, "452 4.2.2 Mailbox full")
    for offset in range(8):
        day = (clock.now.astimezone(ZoneInfo("Asia/Ho_Chi_Minh"))).date().isoformat()
        if offset:
            (workdir / "seeds" / f"week{offset}.txt").write_text(
                _dump_for(clock.now), encoding="utf-8"
            )
        for email in greylisted:
            smtpd.handler.refuse(email, "451 4.7.1 Greylisted", times=1)
        code, _out, err = _run("-q", "send")
        assert code == 1, err  # the full mailboxes failed (and are left to later runs)
        by_day: dict[str, list[str]] = {}
        for received in smtpd.handler.messages:
            digest_day = str(received.headers["Message-ID"]).strip("<").split(".")[0]
            by_day.setdefault(digest_day, []).extend(received.recipients)
        assert sorted(by_day[day]) == sorted(deliverable), day  # on its day, exactly once
        assert all(sorted(got) == sorted(deliverable) for got in by_day.values())
        clock.next_day()
    assert len(by_day) == 8
    # A refused address was tried once, then bounced; never retried.
    tried = [address for address, _ in smtpd.handler.rcpt_log if address in unknown]
    assert sorted(tried) == sorted(unknown)
    with open_store(workdir / "syndicate.db") as db:
        bounced = db.conn.execute("SELECT count(*) FROM subscribers WHERE status = 'bounced'")
        assert bounced.fetchone()[0] == 25


def test_quiet_send_warns_once_on_stderr_when_the_newest_article_is_old(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _subscribe("an@example.org")
    later = FIXED_NOW + timedelta(days=30)
    monkeypatch.setattr(AppContext, "now", lambda self: later.timestamp())
    assert _run("-q", "send") == (
        0,
        "",
        "Warning: digest of 2024-12-01: its newest article is from 2024-11-01, 30 days before "
        "the digest's day. Check that the scraper still delivers new dumps.\n",
    )


def test_send_warns_in_one_line_when_complaints_pass_three_in_a_thousand(project: Path) -> None:
    _subscribe("an@example.org", "bob@example.org")
    assert _run("send")[0] == 0
    # One complaint about the digest just sent to two: 50%.
    arf = (Path(__file__).parent / "data" / "bounces" / "microsoft-arf.eml").read_bytes()
    arf = arf.replace(b"complainer@outlook.example", b"bob@example.org")
    result = CliRunner().invoke(cli, ["bounces", "-"], input=arf, catch_exceptions=False)
    assert result.stdout == "bounces: 0 hard, 0 soft, 1 complaint, 0 ignored, 0 unreadable\n"
    code, _, err = _run("send")
    assert code == 0
    assert err == (
        "warning: spam complaints over the last 30 days are 50.00% of 2 messages sent, above "
        "the 0.3% mailbox providers allow (keep it under 0.1%). Check who is on the list and "
        "how they signed up.\n"
    )


def _set_ledger(project: Path, day: str, rows: dict[str, tuple[str, int]]) -> None:
    """Rewrite ledger rows (email -> (status, attempts)) as a run with a higher limit left them."""
    with open_store(project / "syndicate.db") as db, db.transaction() as conn:
        for email, (status, attempts) in rows.items():
            conn.execute(
                "UPDATE deliveries SET status = ?, attempts = ?, lease_owner = NULL, "
                "lease_until = NULL WHERE digest_day = ? AND subscriber_id = "
                "(SELECT id FROM subscribers WHERE email = ?)",
                (status, attempts, day, email),
            )


def test_a_row_at_or_past_the_attempt_limit_is_never_sent_again(
    clock: Clock, workdir: Path, smtpd: SmtpServer
) -> None:
    # A store left by a run whose limit was higher than today's (an upgrade that lowered
    # MAX_ATTEMPTS): messages left in doubt (`sending`) or failed with as many attempts as
    # the limit, or more, are out of attempts. Only the row with one to spare goes again:
    # on the same day, by --workers, and in the next day's catch-up.
    _smtp_config(workdir, smtpd)
    _subscribe("a@example.org", "b@example.org", "c@example.org", "d@example.org")
    assert _summaries(_run("send")[1]) == [("2024-10-31", "4", "0", "0")]
    at_limit = {
        "a@example.org": ("sending", 5),
        "b@example.org": ("sending", 7),
        "c@example.org": ("failed", 6),
        "d@example.org": ("sending", 4),
    }
    _set_ledger(workdir, "2024-10-31", at_limit)
    smtpd.handler.messages.clear()
    code, out, _ = _run("send", "--dry-run")
    assert code == 0
    assert "would go to 1 subscriber, 3 skipped;" in out, out
    assert _summaries(_run("send", "--workers", "2")[1]) == [("2024-10-31", "1", "0", "3")]
    assert smtpd.handler.recipients() == ["d@example.org"]
    _set_ledger(workdir, "2024-10-31", at_limit)
    smtpd.handler.messages.clear()
    clock.next_day()
    code, out, err = _run("send")
    assert (code, err) == (0, "")
    assert _summaries(out.splitlines(keepends=True)[0]) == [("2024-10-31", "1", "0", "3")]
    assert smtpd.handler.recipients() == ["d@example.org"]
    _set_ledger(workdir, "2024-10-31", {"d@example.org": ("sending", 5)})
    clock.next_day()
    assert _run("send") == (0, "Nothing new to send.\n", "")
    assert smtpd.handler.recipients() == ["d@example.org"]


def test_a_damaged_message_key_stops_the_send_with_one_line(project: Path) -> None:
    # digests.message_key goes into every Message-ID header: a store (or a copied one) that
    # holds anything but the hex key made for it is damaged, not a header to write.
    _subscribe("an@example.org")
    assert _run("send")[0] == 0
    with open_store(project / "syndicate.db") as db, db.transaction() as conn:
        conn.execute("UPDATE digests SET message_key = 'ab>\r\nBcc: evil@example.net'")
    _subscribe("bob@example.org")
    code, out, err = _run("send")
    assert code == 2, (out, err)
    assert err.startswith("Error: "), err
    assert err.count("\n") == 1, err  # one line, the key's repr escapes its CR LF
    assert "is damaged: its message key 'ab>\\r\\nBcc: evil@example.net' is not" in err


class _FullOnTheSecond(SmtpRecorder):
    """Refuses FULL for good with a counted bounce (552 5.2.2), its first refusal given just
    after the wall clock's second turns: the run's next refusal of it (the catch-up's) falls
    in the same second of the ledger's times, as on a quick machine."""

    FULL = "full@example.org"

    def __init__(self) -> None:
        super().__init__()
        self.refuse(self.FULL, "552 5.2.2 Mailbox full")
        self.aligned = False

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if address.lower() == self.FULL and not self.aligned:
            self.aligned = True
            now = time.time()
            await asyncio.sleep(math.ceil(now) - now + 0.005)
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)


def _bounce_rows(project: Path, email: str) -> tuple[list[tuple[str, str, str]], str | None]:
    """The subscriber's ledger rows (day, status, updated_at) and when they bounced."""
    with open_store(project / "syndicate.db") as db:
        rows = db.conn.execute(
            "SELECT d.digest_day, d.status, d.updated_at FROM deliveries AS d"
            " JOIN subscribers AS s ON s.id = d.subscriber_id WHERE s.email = ?"
            " ORDER BY d.digest_day",
            (email,),
        ).fetchall()
        (bounced_at,) = db.conn.execute(
            "SELECT bounced_at FROM subscribers WHERE email = ?", (email,)
        ).fetchone()
    return [(str(d), str(s), str(u)) for d, s, u in rows], bounced_at


def _bounced_twice_in_one_second(
    clock: Clock, project: Path, workers: int
) -> tuple[int, str, str, bool]:
    """Day 1's digest owed to FULL, then a run sending day 2's and catching up day 1's, FULL
    refused by both; return that run's exit, output and errors, and whether both refusals
    fell in one second of the ledger's times (the case; a loaded machine can miss it)."""
    handler = _FullOnTheSecond()
    with run_smtp_server(handler) as server:
        (project / "syndicate.toml").write_text(
            '[site]\nbase_url = "https://news.example.org/"\n'
            '[mail]\ntransport = "smtp"\nfrom = "Tin mới <news@example.org>"\n'
            'postal_address = "12 Trần Hưng Đạo, TP. Bến Lam"\nbounce_limit = 2\n'
            f'[smtp]\nhost = "127.0.0.1"\nport = {server.port}\ntls = "none"\n',
            encoding="utf-8",
        )
        _subscribe("a@example.org", handler.FULL)
        assert _run("send", "--limit", "1")[0] == 0  # the day-1 digest is owed to FULL
        assert handler.recipients() == ["a@example.org"]
        clock.next_day()
        (project / "seeds" / "day2.txt").write_text(DUMP_DAY2, encoding="utf-8")
        code, out, err = _run("send", "--json", "--workers", str(workers))
    rows, bounced_at = _bounce_rows(project, handler.FULL)
    assert [(day, status) for day, status, _at in rows] == [
        ("2024-10-31", "failed"),
        ("2024-11-01", "failed"),
    ]
    return code, out, err, [at for _day, _status, at in rows] == [bounced_at] * 2


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "workers"])
def test_a_subscriber_bounced_by_two_digests_in_one_second_counts_once(
    clock: Clock,
    workdir: Path,
    workers: int,
    new_store: Callable[[], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Refused for good by today's digest and by the catch-up's, bounced by the second (its
    # bounce_limit 2), both refusals in the same second: `send --workers` counted the
    # bounce in both digests' summaries (the ledger's row time matched the bounce's twice).
    # The second refusal comes tens of milliseconds after the first; when a loaded machine
    # pushes it into the next second, the case is made again in a new folder and store.
    project = workdir
    for attempt in range(3):
        if attempt:
            project = workdir / f"again{attempt}"
            (project / "seeds").mkdir(parents=True)
            (project / "seeds" / "day1.txt").write_text(DUMP_DAY1, encoding="utf-8")
            monkeypatch.chdir(project)
            new_store()
            clock.now = DAY1
        code, out, err, one_second = _bounced_twice_in_one_second(clock, project, workers)
        if one_second:
            break
    assert one_second, "the two refusals never fell in one second"
    assert code == 1, err  # FULL failed
    summary = json.loads(out)
    counts = ("digest", "sent", "failed", "bounced")
    assert {k: summary[k] for k in counts} == {
        "digest": "2024-11-01",
        "sent": 1,
        "failed": 1,
        "bounced": 0,
    }
    assert [{k: e[k] for k in counts} for e in summary["earlier"]] == [
        {"digest": "2024-10-31", "sent": 0, "failed": 1, "bounced": 1}
    ]


@pytest.mark.parametrize("error", [errno.EPIPE, errno.ENOSPC], ids=["reader gone", "full disk"])
def test_an_earlier_digests_failures_are_said_after_another_summary_could_not_be_printed(
    clock: Clock,
    workdir: Path,
    smtpd: SmtpServer,
    monkeypatch: pytest.MonkeyPatch,
    error: int,
) -> None:
    # The catch-up printed no more summaries once one could not go to standard output: the
    # failures of a later earlier digest (a stderr line, the one cron mails) were said
    # nowhere.
    _smtp_config(workdir, smtpd)
    _subscribe("a@example.org", "b@example.org")
    assert _run("send", "--limit", "1")[0] == 0  # 31 October: b@ still owed it
    clock.next_day()
    (workdir / "seeds" / "day2.txt").write_text(DUMP_DAY2, encoding="utf-8")
    _subscribe("d@example.org")
    assert _run("send", "--limit", "1")[0] == 0  # 1 November: two still owed it
    clock.next_day()
    smtpd.handler.refuse("d@example.org", "550 5.1.1 no such user", times=3)
    real_echo = click.echo

    def echo(message: Any = None, file: Any = None, nl: bool = True, err: bool = False) -> None:
        if not err and file is None:  # standard output, as the system would fail it
            raise OSError(error, os.strerror(error))
        real_echo(message, file=file, nl=nl, err=err)

    monkeypatch.setattr(click, "echo", echo)
    result = CliRunner().invoke(cli, ["send"], catch_exceptions=False)
    assert result.exit_code == 1
    assert "Digest 2024-11-01: sent 1, failed 1, 1 bounced, skipped 1" in result.stderr
    assert "Digest 2024-10-31" not in result.stderr  # its summary is standard output's

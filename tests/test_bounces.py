"""Bounces: DSN, ARF and non-standard bounce mail read back into subscriber statuses."""

from __future__ import annotations

import hashlib
import json
import platform
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from syndicate.bounces.parse import Kind, ReportFormatError, digest_hint, parse_report
from syndicate.cli import AppContext, cli
from syndicate.config import load_settings
from syndicate.model import SubscriptionStatus
from syndicate.store import Database, open_database
from syndicate.store.bounces import complaint_warning, recent_rates
from syndicate.store.meta import get_secret
from syndicate.store.schema import MIGRATIONS
from syndicate.store.subscribers import (
    add_subscriber,
    confirm,
    get_by_email,
    iter_subscribers,
    signup,
    unsubscribe,
)
from syndicate.tokens import make_return_token
from tests.conftest import DATA
from tests.plugins.postgres import ENV_STORE_URL, open_store

BOUNCES = DATA / "bounces"
BOUNCE_ADDRESS = "bounces@news.example.org"
NOW = datetime(2024, 11, 2, 6, 0, tzinfo=UTC)
# Which subscriber each sample mail is about (by address; Yahoo's ARF redacts it).
SUBSCRIBERS = (
    "gone@gmail.example",
    "nobody@outlook.example",
    "full@yahoo.example",
    "complainer@outlook.example",
    "yahoo-reader@yahoo.example",
    "old@qmail.example",
    "an@example.org",
)


@pytest.mark.parametrize(
    ("name", "kind", "detail", "recipient"),
    [
        ("gmail-hard.eml", Kind.HARD, "5.1.1", "gone@gmail.example"),
        ("microsoft-hard.eml", Kind.HARD, "5.5.0", "nobody@outlook.example"),
        ("yahoo-soft.eml", Kind.SOFT, "4.7.0", "full@yahoo.example"),
        ("microsoft-arf.eml", Kind.COMPLAINT, "feedback abuse", "complainer@outlook.example"),
        ("yahoo-arf.eml", Kind.COMPLAINT, "feedback abuse", "redacted@yahoo.example"),
        ("qmail-hard.eml", Kind.HARD, "non-standard bounce", "old@qmail.example"),
        ("vacation.eml", Kind.IGNORED, "auto-reply", None),
        ("not-a-bounce.eml", Kind.IGNORED, "not a bounce", None),
    ],
)
def test_sample_reports_parse_to_their_kind_and_recipient(
    name: str, kind: Kind, detail: str, recipient: str | None
) -> None:
    report = parse_report((BOUNCES / name).read_bytes())
    assert (report.kind, report.detail) == (kind, detail)
    if recipient is not None:
        assert report.recipients[0] == recipient
        assert BOUNCE_ADDRESS in report.return_paths


@pytest.mark.parametrize(
    "original", ["<2024-11-01.3@news.example.org>", "<2024-11-01.3.5eed0f1c2a3b@news.example.org>"]
)
def test_the_digest_a_report_is_about_is_read_from_either_message_id_form(original: str) -> None:
    # Digests now carry their key (<DAY.ID.KEY@HOST>); mail sent before bounces for days.
    raw = (BOUNCES / "yahoo-soft.eml").read_bytes()
    raw = raw.replace(b"<2024-11-01.3@news.example.org>", original.encode())
    report = parse_report(raw)
    assert report.original_id == original
    assert digest_hint(report.original_id) == (date(2024, 11, 1), 3)


def test_a_dsn_that_reports_delivery_is_not_a_bounce() -> None:
    raw = (BOUNCES / "gmail-hard.eml").read_bytes()
    raw = raw.replace(b"Action: failed\nStatus: 5.1.1", b"Action: delivered\nStatus: 2.0.0")
    assert parse_report(raw).kind is Kind.IGNORED


@pytest.mark.parametrize("raw", [b"", b"   \n\n", b"\x00\x01\x02 binary junk without headers"])
def test_bytes_that_are_no_mail_are_unreadable(raw: bytes) -> None:
    with pytest.raises(ReportFormatError):
        parse_report(raw)


# Through the command.


@pytest.fixture
def project(workdir: Path, store: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project of 7 confirmed subscribers, each sent the digest of 2024-11-01, on the
    module's store engine (the parse-only tests above run once)."""
    monkeypatch.chdir(workdir)
    monkeypatch.delenv("SYNDICATE_CONFIG", raising=False)
    monkeypatch.delenv("SYNDICATE_SECRET", raising=False)
    monkeypatch.setattr(AppContext, "now", lambda self: NOW.timestamp())
    (workdir / "syndicate.toml").write_text(
        f'[mail]\nbounce_address = "{BOUNCE_ADDRESS}"\nbounce_limit = 2\n', encoding="utf-8"
    )
    with open_store(workdir / "syndicate.db") as db:
        for address in SUBSCRIBERS:
            add_subscriber(db, address, now=NOW)
        _sent(db, "2024-11-01", [s.id for s in iter_subscribers(db)])
    return workdir


@pytest.fixture
def plain_project(project: Path) -> Path:
    """The project of an operator without VERP (no mail.bounce_address): reports are tied
    to subscribers by the address they name."""
    (project / "syndicate.toml").write_text("[mail]\nbounce_limit = 2\n", encoding="utf-8")
    return project


def _sent(db: Database, day: str, ids: list[int]) -> None:
    with db.transaction() as conn:
        conn.execute(
            "INSERT INTO digests (day, created_at, article_ids) VALUES (?, ?, '[]')"
            " ON CONFLICT (day) DO NOTHING",
            (day, f"{day}T06:00:00+00:00"),
        )
        for subscriber_id in ids:
            conn.execute(
                "INSERT INTO deliveries (digest_day, subscriber_id, status, attempts, updated_at)"
                " VALUES (?, ?, 'sent', 1, ?)",
                (day, subscriber_id, f"{day}T06:00:01+00:00"),
            )


def _run(*args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), input=stdin, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def _maildir(root: Path, names: list[str], *, replace: dict[bytes, bytes] | None = None) -> Path:
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        raw = (BOUNCES / name).read_bytes()
        for old, new in (replace or {}).items():
            raw = raw.replace(old, new)
        (root / "new" / f"1730440000.{index}.host").write_bytes(raw)
    return root


def _statuses(project: Path) -> dict[str, str]:
    with open_store(project / "syndicate.db") as db:
        return {s.email: str(s.status) for s in iter_subscribers(db)}


def _verp(project: Path, email: str, day: date) -> str:
    settings = load_settings(project / "syndicate.toml", {}, cwd=project)
    with open_store(project / "syndicate.db") as db:
        found = get_by_email(db, email)
        assert found is not None
        token = make_return_token(
            get_secret(settings, db), subscriber_id=found.id, nonce=found.token_nonce, day=day
        )
    return f"bounces+{token}@news.example.org"


def test_bounces_reads_a_maildir_and_files_each_handled_message(plain_project: Path) -> None:
    project = plain_project
    names = [
        "gmail-hard.eml",
        "microsoft-hard.eml",
        "qmail-hard.eml",
        "yahoo-soft.eml",
        "microsoft-arf.eml",
        "vacation.eml",
        "not-a-bounce.eml",
    ]
    box = _maildir(project / "Maildir", names)
    (box / "new" / "1730440099.junk.host").write_bytes(b"")
    code, out, err = _run("bounces", str(box))
    assert out == "bounces: 3 hard, 1 soft, 1 complaint, 2 ignored, 1 unreadable\n"
    assert code == 1
    assert (
        err == f"warning: {box}/new/1730440099.junk.host: not a readable mail: "
        "the message is empty; left in place.\n"
    )
    assert _statuses(project) == {
        "gone@gmail.example": "bounced",
        "nobody@outlook.example": "bounced",
        "full@yahoo.example": "confirmed",  # one soft bounce, limit 2
        "complainer@outlook.example": "complained",
        "yahoo-reader@yahoo.example": "confirmed",
        "old@qmail.example": "bounced",
        "an@example.org": "confirmed",
    }
    assert sorted(p.name for p in (box / "new").iterdir()) == ["1730440099.junk.host"]
    assert sorted(p.name for p in (box / "cur").iterdir()) == [
        f"1730440000.{i}.host:2,S" for i in range(len(names))
    ]
    # cron runs it again: the handled mail is not read twice.
    assert _run("bounces", str(box))[1] == (
        "bounces: 0 hard, 0 soft, 0 complaints, 0 ignored, 1 unreadable\n"
    )


def test_a_nul_in_a_stranger_s_report_does_not_stop_the_others(plain_project: Path) -> None:
    # Anyone can mail the bounce address. PostgreSQL's text holds no NUL: the report's key
    # (its Message-ID) failed every run at that mail (exit 2), and no report after it was read.
    poison = {b"<6724d0a4.170a0220": b"<6724d0a4.\x00.170a0220"}
    box = _maildir(plain_project / "Maildir", ["gmail-hard.eml"], replace=poison)
    _maildir(box, [])
    (box / "new" / "1730440001.host").write_bytes((BOUNCES / "qmail-hard.eml").read_bytes())
    code, out, err = _run("bounces", str(box))
    assert (code, err) == (0, "")
    assert out == "bounces: 2 hard, 0 soft, 0 complaints, 0 ignored, 0 unreadable\n"
    assert _statuses(plain_project)["gone@gmail.example"] == "bounced"
    assert _statuses(plain_project)["old@qmail.example"] == "bounced"
    assert _run("bounces", str(box))[1] == (  # each filed as read, as any other
        "bounces: 0 hard, 0 soft, 0 complaints, 0 ignored, 0 unreadable\n"
    )


def test_a_stranger_s_report_with_a_huge_message_id_does_not_stop_the_others(
    plain_project: Path,
) -> None:
    # The report's key was its whole Message-ID: PostgreSQL's index takes no row over 2704
    # bytes, so a 16,000-character one failed every run at that mail (exit 2), and no
    # report after it was read. Read twice, it still changes nothing.
    noise = "".join(hashlib.sha256(bytes([n])).hexdigest() for n in range(250))  # no TOAST
    huge = {b"<6724d0a4.170a0220": f"<6724d0a4.{noise}.170a0220".encode()}
    box = _maildir(plain_project / "Maildir", ["gmail-hard.eml"], replace=huge)
    (box / "new" / "1730440001.host").write_bytes((BOUNCES / "qmail-hard.eml").read_bytes())
    (plain_project / "again.eml").write_bytes((box / "new" / "1730440000.0.host").read_bytes())
    code, out, err = _run("bounces", str(box))
    assert (code, err) == (0, "")
    assert out == "bounces: 2 hard, 0 soft, 0 complaints, 0 ignored, 0 unreadable\n"
    assert _statuses(plain_project)["gone@gmail.example"] == "bounced"
    assert _run("bounces", str(plain_project / "again.eml"))[1] == (
        "bounces: 0 hard, 0 soft, 0 complaints, 1 ignored, 0 unreadable\n"
    )
    with open_store(plain_project / "syndicate.db") as db:
        keys = [row[0] for row in db.conn.execute("SELECT key FROM mail_reports")]
    assert max(len(key) for key in keys) < 600


def test_the_same_report_read_twice_changes_nothing(plain_project: Path) -> None:
    project = plain_project
    soft = BOUNCES / "yahoo-soft.eml"
    assert _run("bounces", str(soft))[1] == (
        "bounces: 0 hard, 1 soft, 0 complaints, 0 ignored, 0 unreadable\n"
    )
    # The limit is 2: were the same mail counted again, the subscriber would be bounced.
    assert _run("bounces", str(soft), str(soft), "--json") == (
        0,
        json.dumps({"hard": 0, "soft": 0, "complaints": 0, "ignored": 2, "unreadable": 0}) + "\n",
        "",
    )
    assert _statuses(project)["full@yahoo.example"] == "confirmed"
    with open_store(project / "syndicate.db") as db:
        assert db.conn.execute("SELECT count(*) FROM mail_events").fetchone()[0] == 1


def test_a_verp_token_names_the_subscriber_when_the_report_hides_the_address(
    project: Path,
) -> None:
    verp = _verp(project, "yahoo-reader@yahoo.example", date(2024, 11, 1))
    raw = (BOUNCES / "yahoo-arf.eml").read_bytes().replace(BOUNCE_ADDRESS.encode(), verp.encode())
    # Some MTAs lower- or upper-case the local part: the token survives either.
    raw = raw.replace(verp.encode(), verp.upper().encode(), 1)
    assert _run("bounces", "-", stdin=raw)[1] == (
        "bounces: 0 hard, 0 soft, 1 complaint, 0 ignored, 0 unreadable\n"
    )
    assert _statuses(project)["yahoo-reader@yahoo.example"] == "complained"
    with open_store(project / "syndicate.db") as db:
        assert db.conn.execute("SELECT kind, digest_day FROM mail_events").fetchall() == [
            ("complaint", "2024-11-01")
        ]


def test_the_token_wins_over_the_address_the_report_names(project: Path) -> None:
    verp = _verp(project, "an@example.org", date(2024, 11, 1))
    raw = (BOUNCES / "gmail-hard.eml").read_bytes().replace(BOUNCE_ADDRESS.encode(), verp.encode())
    _run("bounces", "-", stdin=raw)
    statuses = _statuses(project)
    assert (statuses["an@example.org"], statuses["gone@gmail.example"]) == ("bounced", "confirmed")


def test_a_forged_token_is_ignored(project: Path) -> None:
    verp = _verp(project, "gone@gmail.example", date(2024, 11, 1))
    local, _, domain = verp.partition("@")
    forged = f"{local[:-2]}{'aa' if not local.endswith('aa') else 'bb'}@{domain}"
    raw = (
        (BOUNCES / "gmail-hard.eml").read_bytes().replace(BOUNCE_ADDRESS.encode(), forged.encode())
    )
    assert _run("bounces", "-", stdin=raw)[1] == (
        "bounces: 0 hard, 0 soft, 0 complaints, 1 ignored, 0 unreadable\n"
    )
    assert _statuses(project)["gone@gmail.example"] == "confirmed"


def test_soft_bounces_of_distinct_digests_in_a_row_reach_the_limit(project: Path) -> None:
    with open_store(project / "syndicate.db") as db:
        reader = get_by_email(db, "full@yahoo.example")
        assert reader is not None
        _sent(db, "2024-11-02", [reader.id])
        _sent(db, "2024-11-03", [reader.id])

    def soft(day: date, n: int) -> bytes:
        verp = _verp(project, "full@yahoo.example", day)
        raw = (BOUNCES / "yahoo-soft.eml").read_bytes()
        raw = raw.replace(BOUNCE_ADDRESS.encode(), verp.encode())
        return raw.replace(b"yahoo-dsn@", f"yahoo-dsn-{n}@".encode())

    # Digest 1 bounced softly, digest 2 was delivered (no bounce), digest 3 bounced softly:
    # not two in a row.
    _run("bounces", "-", stdin=soft(date(2024, 11, 1), 1))
    _run("bounces", "-", stdin=soft(date(2024, 11, 3), 2))
    assert _statuses(project)["full@yahoo.example"] == "confirmed"
    # A late report says digest 2 bounced softly too (a delay notice for the same digest
    # counts once): now three digests in a row.
    _run("bounces", "-", stdin=soft(date(2024, 11, 2), 3))
    _run("bounces", "-", stdin=soft(date(2024, 11, 2), 4))
    assert _statuses(project)["full@yahoo.example"] == "bounced"


@pytest.mark.parametrize(
    "original_id",
    [b"<confirm.3f9a0c1d2e4b@news.example.org>", None],  # None: the report quotes none
)
def test_a_soft_bounce_of_a_confirmation_mail_never_counts_as_a_digest(
    plain_project: Path, original_id: bytes | None
) -> None:
    # One who had the digest of 2024-11-01, left and signed up again: the soft bounce of the
    # confirmation mail was put on 2024-11-01 (the last digest sent to them), so with a limit
    # of 2 one soft bounce of the next digest made them bounced. The limit counts digests.
    project = plain_project
    with open_store(project / "syndicate.db") as db:
        reader = get_by_email(db, "full@yahoo.example")
        assert reader is not None
        unsubscribe(db, reader.id, now=NOW)
        assert signup(db, "full@yahoo.example", language="vi", now=NOW)[1]
    raw = (BOUNCES / "yahoo-soft.eml").read_bytes()
    quoted = b"Message-ID: <2024-11-01.3@news.example.org>\r\n"
    if quoted not in raw:
        quoted = quoted.replace(b"\r\n", b"\n")
    assert quoted in raw
    confirmation = raw.replace(
        quoted, b"" if original_id is None else b"Message-ID: " + original_id + quoted[-2:]
    )
    assert _run("bounces", "-", stdin=confirmation)[1] == (
        "bounces: 0 hard, 1 soft, 0 complaints, 0 ignored, 0 unreadable\n"
    )
    with open_store(project / "syndicate.db") as db:
        days = db.conn.execute("SELECT digest_day FROM mail_events").fetchall()
        assert [tuple(row) for row in days] == [(None,)]
        confirm(db, reader.id, now=NOW)
        _sent(db, "2024-11-02", [reader.id])
    digest = raw.replace(b"2024-11-01.3@", b"2024-11-02.3@").replace(b"yahoo-dsn@", b"dsn-2@")
    _run("bounces", "-", stdin=digest)
    assert _statuses(project)["full@yahoo.example"] == "confirmed"


def test_bad_invocations_exit_2(project: Path) -> None:
    assert _run("bounces") == (
        2,
        "",
        "Error: bounces: no PATH given. Give a Maildir, mbox or .eml file, or '-'.\n",
    )
    assert _run("bounces", "missing") == (
        2,
        "",
        "Error: missing: no such file or folder. Give a Maildir, mbox or .eml file.\n",
    )
    (project / "plain").mkdir()
    assert _run("bounces", "plain")[0] == 2


def test_bounces_reads_an_mbox_file(plain_project: Path) -> None:
    project = plain_project
    mbox = project / "bounces.mbox"
    with mbox.open("wb") as out:
        for name in ("gmail-hard.eml", "microsoft-arf.eml"):
            out.write(b"From MAILER-DAEMON Fri Nov  1 06:00:04 2024\n")
            out.write((BOUNCES / name).read_bytes().replace(b"\nFrom ", b"\n>From "))
            out.write(b"\n")
    assert _run("bounces", str(mbox))[1] == (
        "bounces: 1 hard, 0 soft, 1 complaint, 0 ignored, 0 unreadable\n"
    )
    assert mbox.exists()


def test_a_complainer_comes_back_only_through_the_sign_up_form(plain_project: Path) -> None:
    project = plain_project
    _run("bounces", str(BOUNCES / "microsoft-arf.eml"))
    address = "complainer@outlook.example"
    (project / "list.csv").write_text(f"email\n{address}\n", encoding="utf-8")
    assert (
        _run("subscribers", "import", "list.csv")[1]
        == "Imported 0, unchanged 1, rejected 0 (syndicate list).\n"
    )
    code, _, err = _run("subscribers", "add", address)
    assert code == 2
    assert "already stored with status complained" in err
    assert _statuses(project)[address] == "complained"
    with open_store(project / "syndicate.db") as db:
        pending, send = signup(db, address, language="vi", now=NOW)
        assert (pending.status, send) == (SubscriptionStatus.PENDING, True)
        assert confirm(db, pending.id, now=NOW).status is SubscriptionStatus.CONFIRMED


def test_complaint_rate_warning_passes_only_above_three_in_a_thousand(plain_project: Path) -> None:
    project = plain_project
    with open_store(project / "syndicate.db") as db:
        assert complaint_warning(recent_rates(db, now=NOW)) is None
    _run("bounces", str(BOUNCES / "microsoft-arf.eml"))
    with open_store(project / "syndicate.db") as db:
        rates = recent_rates(db, now=NOW)
        assert (rates.sent, rates.complaints) == (7, 1)
        assert complaint_warning(rates) == (
            "spam complaints over the last 30 days are 14.29% of 7 messages sent, above the "
            "0.3% mailbox providers allow (keep it under 0.1%). Check who is on the list and "
            "how they signed up."
        )


def test_a_version_4_database_keeps_ids_nonces_and_its_sequence_through_the_bounce_step(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v4.db"
    conn = sqlite3.connect(path)
    for step in MIGRATIONS[:4]:
        for statement in step:
            conn.execute(statement)
    stamp = NOW.isoformat()
    for subscriber_id in (1, 2, 9):
        conn.execute(
            "INSERT INTO subscribers (id, email, email_key, status, created_at, updated_at, "
            "token_nonce) VALUES (?, ?, ?, 'confirmed', ?, ?, ?)",
            (
                subscriber_id,
                f"r{subscriber_id}@x.org",
                f"r{subscriber_id}@x.org",
                stamp,
                stamp,
                bytes([subscriber_id]) * 16,
            ),
        )
    conn.execute("DELETE FROM subscribers WHERE id = 9")  # erased: 9 must not come back
    conn.execute("PRAGMA user_version = 4")
    conn.commit()
    conn.close()
    with open_database(path) as db:  # a SQLite file of version 4: SQLite only
        kept = list(iter_subscribers(db))
        assert [(s.id, s.token_nonce) for s in kept] == [(1, b"\x01" * 16), (2, b"\x02" * 16)]
        added = add_subscriber(db, "new@x.org", now=NOW)
        assert added.id == 10
        with pytest.raises(sqlite3.IntegrityError):
            db.conn.execute("UPDATE subscribers SET status = 'nonsense' WHERE id = 1")
        db.conn.execute("UPDATE subscribers SET status = 'complained' WHERE id = 1")


@pytest.mark.usefixtures("plain_project")
def test_stats_show_rates_for_30_days_and_the_last_digest() -> None:
    _run("bounces", str(BOUNCES / "gmail-hard.eml"), str(BOUNCES / "microsoft-arf.eml"))
    code, out, _ = _run("subscribers", "stats")
    assert code == 0
    assert out.splitlines()[-3:] == [
        "last 30 days: 7 sent, 1 hard bounce (14.29%, keep under 2%), 1 complaint (14.29%, "
        "keep under 0.3%, better under 0.1%)",
        "last 30 days, other mail: 0 hard bounces, 0 complaints (confirmation mails, earlier "
        "digests; in no rate)",
        "last digest 2024-11-01: 7 sent, 1 hard bounce (14.29%, keep under 2%), 1 complaint "
        "(14.29%, keep under 0.3%, better under 0.1%)",
    ]
    rates = json.loads(_run("subscribers", "stats", "--json")[1])["rates"]
    assert rates["last_digest"] == {
        "day": "2024-11-01",
        "sent": 7,
        "hard_bounces": 1,
        "complaints": 1,
        "bounce_rate": 0.142857,
        "complaint_rate": 0.142857,
    }
    assert rates["limits"] == {
        "bounce_rate": 0.02,
        "complaint_rate": 0.003,
        "complaint_rate_target": 0.001,
    }


def _confirmation_bounce(project: Path, address: str, *, number: int) -> bytes:
    """A hard bounce of the confirmation mail a sign-up of `address` was sent (VERP token)."""
    settings = load_settings(project / "syndicate.toml", {}, cwd=project)
    with open_store(project / "syndicate.db") as db:
        pending, mailed = signup(db, address, language="vi", now=NOW)
        assert mailed
        token = make_return_token(
            get_secret(settings, db),
            subscriber_id=pending.id,
            nonce=pending.token_nonce,
            day=NOW.date(),
            confirmation=True,
        )
    raw = (BOUNCES / "gmail-hard.eml").read_bytes()
    for old, new in (
        (BOUNCE_ADDRESS.encode(), f"bounces+{token}@news.example.org".encode()),
        (b"gone@gmail.example", address.encode()),
        (b"<2024-11-01.1@news.example.org>", f"<confirm.{number}@news.example.org>".encode()),
        (b"0001.GMR@", f"{number}.GMR@".encode()),
    ):
        raw = raw.replace(old, new)
    return raw


def test_a_bounced_confirmation_mail_is_in_no_rate(project: Path) -> None:
    # 7 digests sent, 1 bounced hard; a bot's sign-up of an address that does not exist
    # bounced too: "2 hard bounces (28.57%)", counting a message "sent" did not.
    digest = (BOUNCES / "gmail-hard.eml").read_bytes()
    digest = digest.replace(
        BOUNCE_ADDRESS.encode(), _verp(project, "gone@gmail.example", date(2024, 11, 1)).encode()
    )
    bounced = _confirmation_bounce(project, "khong-co@gmail.example", number=1)
    assert _run("bounces", "-", stdin=digest)[0] == 0
    assert _run("bounces", "-", stdin=bounced)[1] == (
        "bounces: 1 hard, 0 soft, 0 complaints, 0 ignored, 0 unreadable\n"
    )
    assert _statuses(project)["khong-co@gmail.example"] == "bounced"
    recent = json.loads(_run("subscribers", "stats", "--json")[1])["rates"]["last_30_days"]
    assert (recent["sent"], recent["hard_bounces"], recent["bounce_rate"]) == (7, 1, 0.142857)
    assert recent == {
        "sent": 7,
        "hard_bounces": 1,
        "complaints": 0,
        "bounce_rate": 0.142857,
        "complaint_rate": 0.0,
        "other_hard_bounces": 1,
        "other_complaints": 0,
    }
    code, out, _ = _run("subscribers", "stats")
    assert code == 0
    assert out.splitlines()[-3:] == [
        "last 30 days: 7 sent, 1 hard bounce (14.29%, keep under 2%), 0 complaints (0.00%, "
        "keep under 0.3%, better under 0.1%)",
        "last 30 days, other mail: 1 hard bounce, 0 complaints (confirmation mails, earlier "
        "digests; in no rate)",
        "last digest 2024-11-01: 7 sent, 1 hard bounce (14.29%, keep under 2%), 0 complaints "
        "(0.00%, keep under 0.3%, better under 0.1%)",
    ]


def test_a_message_two_reports_name_counts_once_in_a_rate(plain_project: Path) -> None:
    # The relay's report and the final server's, both about one digest to one reader: the
    # rate counted two hard bounces of 7 messages.
    first = (BOUNCES / "gmail-hard.eml").read_bytes()
    second = first.replace(b"0001.GMR@", b"0002.GMR@")
    _run("bounces", "-", stdin=first)
    assert _run("bounces", "-", stdin=second)[1] == (
        "bounces: 1 hard, 0 soft, 0 complaints, 0 ignored, 0 unreadable\n"
    )
    rates = json.loads(_run("subscribers", "stats", "--json")[1])["rates"]
    assert (rates["last_30_days"]["hard_bounces"], rates["last_digest"]["hard_bounces"]) == (1, 1)
    # A digest sent before the 30 days is no message of theirs: its report is "other".
    with open_store(plain_project / "syndicate.db") as db:
        reader = get_by_email(db, "nobody@outlook.example")
        assert reader is not None
        _sent(db, "2024-09-20", [reader.id])
    old = (BOUNCES / "microsoft-hard.eml").read_bytes()
    assert b"2024-11-01" in old
    _run("bounces", "-", stdin=old.replace(b"2024-11-01", b"2024-09-20"))
    recent = json.loads(_run("subscribers", "stats", "--json")[1])["rates"]["last_30_days"]
    assert (recent["hard_bounces"], recent["other_hard_bounces"]) == (1, 1)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "bounces+x@news.example.org",
            "Error: config key mail.bounce_address has value 'bounces+x@news.example.org'; its "
            "local part may not hold '+' (the VERP delimiter). Use an address like "
            "'bounces@news.example.org'.\n",
        ),
        (
            "b" * 30 + "@news.example.org",
            "Error: config key mail.bounce_address has value "
            f"'{'b' * 30}@news.example.org'; its local part is too long for a VERP address "
            "(at most 29 characters). Use a shorter one like 'bounces'.\n",
        ),
        (
            "bounces",
            "Error: config key mail.bounce_address has value 'bounces'; expected a plain "
            "address like 'bounces@news.example.org'.\n",
        ),
    ],
)
def test_a_bad_bounce_address_is_a_config_error(project: Path, value: str, message: str) -> None:
    (project / "syndicate.toml").write_text(f'[mail]\nbounce_address = "{value}"\n')
    assert _run("bounces", str(BOUNCES / "gmail-hard.eml")) == (2, "", message)
    # 29 characters is the longest local part that keeps the VERP one within 64 octets.
    verp_ok = "b" * 29 + "@news.example.org"
    (project / "syndicate.toml").write_text(f'[mail]\nbounce_address = "{verp_ok}"\n')
    assert _run("bounces", str(BOUNCES / "gmail-hard.eml"))[0] == 0


def test_with_verp_a_report_without_a_token_changes_nothing(project: Path) -> None:
    # Anyone can mail the bounce address and name a subscriber: with mail.bounce_address
    # set, only a report carrying a signed return-path token counts.
    for sample in ("microsoft-arf.eml", "gmail-hard.eml"):
        result = CliRunner().invoke(cli, ["bounces", str(BOUNCES / sample)], catch_exceptions=False)
        assert result.stdout == "bounces: 0 hard, 0 soft, 0 complaints, 1 ignored, 0 unreadable\n"
    with open_store(project / "syndicate.db") as db:
        assert {s.status for s in iter_subscribers(db)} == {SubscriptionStatus.CONFIRMED}


def test_bounces_take_the_send_policys_bounce_limit_not_the_settings() -> None:
    # mail.bounce_limit is read once, by SendPolicy; the bounces stage is handed its value.
    import inspect

    from syndicate.bounces import apply_mail

    parameters = inspect.signature(apply_mail).parameters
    assert "settings" not in parameters
    assert "bounce_limit" in parameters


def test_piped_mail_a_setup_fault_is_exit_75_so_the_mta_keeps_it(project: Path) -> None:
    # Under an MTA's pipe exit 75 defers (Postfix keeps the message and tries again), any
    # other code returns the message: a config or store fault the operator can fix must
    # not lose the report. Reading a Maildir, the same fault stays exit 2.
    (project / "syndicate.toml").write_text("[mail]\nbounce_limit = -1\n", encoding="utf-8")
    raw = (BOUNCES / "gmail-hard.eml").read_bytes()
    code, out, err = _run("bounces", "-", stdin=raw)
    assert (code, out) == (75, "")
    assert err.startswith("Error: "), err
    assert err.endswith(" Exit 75: the mail server keeps the message and retries.\n"), err
    assert len(err.splitlines()) == 1
    box = _maildir(project / "Maildir", ["gmail-hard.eml"])
    code, _, err = _run("bounces", str(box))
    assert code == 2
    assert "Exit 75" not in err, err
    (project / "syndicate.toml").write_text("", encoding="utf-8")
    # A message that is no mail is not retried: exit 1, so the MTA returns it.
    assert _run("bounces", "-", stdin=b"\n") == (
        1,
        "bounces: 0 hard, 0 soft, 0 complaints, 0 ignored, 1 unreadable\n",
        "warning: <stdin>: not a readable mail: the message is empty; exit 1: the mail server "
        "returns it.\n",
    )


def test_piped_mail_with_the_store_out_of_reach_says_the_mta_keeps_it(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A store that cannot be reached is exit 75 already; its line said "the next run tries
    # again", the hint for cron, where the MTA's postmaster needs to know the report is kept.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the test starts the command: refused
    monkeypatch.setenv(ENV_STORE_URL, f"postgresql://news@127.0.0.1:{port}/news")
    raw = (BOUNCES / "gmail-hard.eml").read_bytes()
    code, out, err = _run("bounces", "-", stdin=raw)
    assert (code, out) == (75, "")
    assert err.startswith(f"Error: PostgreSQL at 127.0.0.1:{port}/news: "), err
    assert err.endswith(" Exit 75: the mail server keeps the message and retries.\n"), err
    assert len(err.splitlines()) == 1


def _reading_stdin(pid: int) -> bool:
    """Whether process `pid` waits in read(2) on its standard input (x86-64 Linux)."""
    return Path(f"/proc/{pid}/syscall").read_text(encoding="ascii").startswith("0 0x0 ")


@pytest.mark.skipif(
    not Path("/proc/self/syscall").exists() or platform.machine() != "x86_64",
    reason="waits on /proc/PID/syscall, read(2) numbered as on x86-64 Linux",
)
def test_piped_mail_stopped_by_sigterm_is_exit_75_so_the_mta_keeps_it(project: Path) -> None:
    # A shutdown (or the MTA's own stop) sends SIGTERM while `bounces -` reads its message:
    # exit 143 is a failure to Postfix's pipe, which returns the report to the postmaster.
    # As with a setup fault, the message is left to the MTA to deliver again (handling it
    # twice changes nothing).
    raw = (BOUNCES / "gmail-hard.eml").read_bytes()
    with subprocess.Popen(
        [sys.executable, "-m", "syndicate", "bounces", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as piped:
        assert piped.stdin is not None
        piped.stdin.write(raw[: len(raw) // 2])  # half the message; the rest never comes
        piped.stdin.flush()
        deadline = time.monotonic() + 60
        while not _reading_stdin(piped.pid):  # the command runs, and waits for the rest
            assert piped.poll() is None
            assert time.monotonic() < deadline
            time.sleep(0.01)
        piped.send_signal(signal.SIGTERM)
        out, err = piped.communicate(timeout=60)
    assert (piped.returncode, out) == (75, b""), err
    assert err.decode() == (
        "Error: bounces: stopped by SIGTERM before the message was handled. Exit 75: the mail "
        "server keeps the message and retries.\n"
    )
    with open_store(project / "syndicate.db") as db:
        assert db.conn.execute("SELECT count(*) FROM mail_reports").fetchone()[0] == 0


def test_two_runs_on_one_maildir_at_once_report_nothing_unreadable(plain_project: Path) -> None:
    # cron starts the next `bounces ~/Maildir` while a slow one still runs (or the MTA's
    # pipe and cron overlap): a message the other run filed into cur/ between this run's
    # listing of new/ and its read was "not a regular file", counted unreadable, exit 1.
    raw = (BOUNCES / "gmail-hard.eml").read_bytes()
    box = _maildir(plain_project / "Maildir", [])
    for index in range(1000):  # distinct Message-IDs: each is read, not known already
        (box / "new" / f"1730440000.{index:04d}.host").write_bytes(
            raw.replace(b"Message-ID: <", b"Message-ID: <%d." % index, 1)
        )
    command = [sys.executable, "-m", "syndicate", "bounces", str(box)]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as first:
        deadline = time.monotonic() + 60
        while not any((box / "cur").iterdir()):  # the first run is under way
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.005)
        second = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        out, err = first.communicate(timeout=120)
    runs = [(first.returncode, out, err), (second.returncode, second.stdout, second.stderr)]
    for code, printed, warned in runs:
        assert (code, warned) == (0, ""), (printed, warned)
        assert printed.endswith(" ignored, 0 unreadable\n"), printed
    assert list((box / "new").iterdir()) == []
    assert len(list((box / "cur").glob("*:2,S"))) == 1000
    assert _statuses(plain_project)["gone@gmail.example"] == "bounced"

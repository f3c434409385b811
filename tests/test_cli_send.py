"""`syndicate send` and `unsubscribe-token` through CliRunner: lines, files, exit codes."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from syndicate.cli import cli
from syndicate.send import open_send_lock
from tests.plugins.smtp import SmtpServer

SEEDS = Path(__file__).resolve().parent.parent / "seeds"
SUMMARY = re.compile(
    r"Digest (?P<day>\d{4}-\d\d-\d\d): sent (?P<sent>\d+), failed (?P<failed>\d+)"
    r"(?:, (?P<bounced>\d+) bounced)?, skipped (?P<skipped>\d+) in \d+\.\d s "
    r"\(\d+\.\d messages/s\)\.\n"
)


@pytest.fixture
def project(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for seed in SEEDS.glob("*.txt"):
        shutil.copy(seed, workdir / "seeds" / seed.name)
    monkeypatch.chdir(workdir)
    for name in ("SYNDICATE_CONFIG", "SYNDICATE_SECRET", "SYNDICATE_SMTP_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    return workdir


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def _subscribe(*emails: str) -> None:
    for email in emails:
        assert _run("subscribers", "add", email)[0] == 0


def _smtp_config(project: Path, server: SmtpServer) -> None:
    (project / "syndicate.toml").write_text(
        '[site]\nbase_url = "https://news.example.org/"\n'
        '[mail]\ntransport = "smtp"\nfrom = "Tin mới <news@example.org>"\n'
        f'[smtp]\nhost = "127.0.0.1"\nport = {server.port}\ntls = "none"\n'
        "connections = 2\n",
        encoding="utf-8",
    )


def test_send_to_the_outbox_then_rerun_sends_nothing(project: Path) -> None:
    _subscribe("an@example.org", "bob@example.org")
    code, out, err = _run("send")
    assert (code, err) == (0, "")
    match = SUMMARY.fullmatch(out)
    assert match, out
    assert match.group("sent", "failed", "skipped") == ("2", "0", "0")
    day = match.group("day")
    files = sorted(p.name for p in (project / "outbox" / day).iterdir())
    assert files == [f"{day}.1_localhost.eml", f"{day}.2_localhost.eml"]
    assert (project / "feeds" / "rss.xml").is_file()
    assert (project / "feeds" / "digests" / f"{day}.html").is_file()
    code, out, _ = _run("send")
    match = SUMMARY.fullmatch(out)
    assert code == 0
    assert match
    assert match.group("sent", "failed", "skipped") == ("0", "0", "2")


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
    assert json.loads(out) == {
        "digest": None,
        "sent": 0,
        "failed": 0,
        "skipped": 0,
        "bounced": 0,
        "seconds": 0.0,
        "rate": 0.0,
    }


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
    assert set(summary) == {"digest", "sent", "failed", "skipped", "bounced", "seconds", "rate"}


def test_dry_run_writes_and_sends_nothing(project: Path) -> None:
    _subscribe("an@example.org", "bob@example.org")
    code, out, err = _run("send", "--dry-run")
    assert code == 0, err
    assert re.fullmatch(
        r"Dry run: the \d{4}-\d\d-\d\d digest \(\d+ articles\) would go to 2 subscribers, "
        r"0 skipped; nothing was written or sent\.\n",
        out,
    )
    assert not (project / "outbox").exists()
    assert not (project / "feeds").exists()
    with sqlite3.connect(project / "syndicate.db") as conn:
        assert conn.execute("SELECT count(*) FROM digests").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM deliveries").fetchone()[0] == 0
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
    with sqlite3.connect(project / "syndicate.db") as conn:
        assert conn.execute("SELECT count(*) FROM deliveries").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM digests").fetchone()[0] == 0
    assert _run("send", "--to", "nope@")[0] == 2


def test_send_while_another_run_holds_the_lock_exits_75(project: Path) -> None:
    _subscribe("an@example.org")
    with open_send_lock(project / "syndicate.db"):
        code, out, err = _run("send")
    assert (code, out) == (75, "")
    assert err == (
        f"Error: {project / 'syndicate.db.lock'}: another `syndicate send` is running "
        "(it holds this lock). Let it finish; run again later.\n"
    )


def test_send_over_smtp_reports_failures_with_exit_1(project: Path, smtpd: SmtpServer) -> None:
    _smtp_config(project, smtpd)
    _subscribe("an@example.org", "bad@example.org", "cee@example.org")
    smtpd.handler.refuse("bad@example.org", "550 5.1.1 no such user")
    code, out, err = _run("-q", "send")
    assert (code, out) == (1, "")
    match = SUMMARY.fullmatch(err)  # -q: only the summary, on stderr, so cron mails it
    assert match, err
    assert match.group("sent", "failed", "skipped") == ("2", "1", "0")
    assert sorted(smtpd.handler.recipients()) == ["an@example.org", "cee@example.org"]
    code, out, err = _run("send")  # the rerun retries the refused one, and says why it failed
    assert (code, out) == (1, "")
    lines = err.splitlines(keepends=True)
    assert lines[0] == (
        "warning: bad@example.org: the server refused the message: 550 5.1.1 no such user\n"
    )
    match = SUMMARY.fullmatch(lines[1])
    assert match
    assert match.group("sent", "failed", "skipped") == ("0", "1", "2")


def test_a_setup_problem_stops_the_run_with_exit_2(project: Path, smtpd: SmtpServer) -> None:
    _smtp_config(project, smtpd)
    _subscribe("an@example.org")
    smtpd.handler.refuse("an@example.org", "535 5.7.8 Authentication credentials invalid")
    code, _, err = _run("send")
    assert code == 2
    assert err.startswith(f"Error: smtp 127.0.0.1:{smtpd.port}: the server refused ")
    assert "This is a setup problem" in err


def test_smtp_login_needs_the_password_variable(project: Path, smtpd: SmtpServer) -> None:
    _smtp_config(project, smtpd)
    config = project / "syndicate.toml"
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
        "signed with another secret). Use the link from the email.\n"
    )

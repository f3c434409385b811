"""End to end, the cron path: dumps -> `python -m syndicate send` -> a real SMTP server.

Runs real subprocesses: one send, a rerun, a run killed with SIGKILL mid-batch
and rerun, and a concurrent run that must exit 75.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest

from syndicate.store.subscribers import add_subscriber
from syndicate.tokens import read_token
from tests.plugins.postgres import open_store, store_environ
from tests.plugins.smtp import Received, SmtpServer

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("store")]

SECRET = "e2e-secret-0123456789"
DUMPS = {
    "001.txt": (
        "<script>alert(1)</script> Khánh thành cầu & đường {{ 7*7 }}\n"
        "31/10/2024 09:15\n"
        "QTO - Sáng nay, tỉnh khánh thành <b>cầu mới</b> nối hai huyện ]]>.\n"
        "Cây cầu dài 300 mét, rộng 12 mét <img src=x onerror=alert(1)>.\n"
        "Trúc Phương\n"
    ),
    "002.txt": (
        "Hội thảo chuyển đổi số tại Đông Hà\n"
        "30/10/2024 15:00\n"
        "{head}\n"
        "QTO - Chiều nay, hội thảo về chuyển đổi số diễn ra tại TP. Đông Hà.\n"
        "Các đại biểu thảo luận về ứng dụng công nghệ.\n"
    ),
}


def _write_project(root: Path, server: SmtpServer, *, connections: int = 2) -> None:
    seeds = root / "seeds"
    seeds.mkdir(exist_ok=True)
    for name, text in DUMPS.items():
        (seeds / name).write_text(text, encoding="utf-8")
    (root / "syndicate.toml").write_text(
        '[site]\nbase_url = "https://news.example.org/"\ntitle = "Tin mới Lam Giang"\n'
        '[mail]\ntransport = "smtp"\nfrom = "Tin mới <news@example.org>"\n'
        'postal_address = "12 Trần Hưng Đạo, TP. Bến Lam"\n'
        'reply_to = "toa-soan@example.org"\n'
        f'[smtp]\nhost = "127.0.0.1"\nport = {server.port}\ntls = "none"\n'
        f"connections = {connections}\ntimeout = 10\n"
        # On PostgreSQL a killed run's batch is taken over once its lease runs out (there is
        # no file lock to prove it dead): a short one keeps the next run's wait short.
        "lease = 3\n",
        encoding="utf-8",
    )


STALE = re.compile(
    r"Warning: digest of \d{4}-\d\d-\d\d: its newest article is from \d{4}-\d\d-\d\d, "
    r"\d+ days before the digest's day\. Check that the scraper still delivers new dumps\.\n"
)


def _subscribe(root: Path, count: int) -> dict[str, str]:
    now = datetime.now(UTC)
    languages = {}
    with open_store(root / "syndicate.db") as db, db.transaction():
        for i in range(count):
            lang = "en" if i % 3 == 0 else "vi"
            added = add_subscriber(db, f"reader{i:03d}@example.org", language=lang, now=now)
            languages[added.email] = lang
        add_subscriber(db, "left@example.org", now=now)
        db.conn.execute("UPDATE subscribers SET status = 'unsubscribed' WHERE email LIKE 'left@%'")
    return languages


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNDICATE_")}
    env["SYNDICATE_SECRET"] = SECRET
    return env | store_environ()  # the test's store


def _send(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "syndicate", "send", *args],
        cwd=root,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _start(root: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "syndicate", "send"],
        cwd=root,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _check_message(received: Received, lang: str) -> None:
    msg: EmailMessage = received.message
    assert not msg.defects
    assert msg.get_content_type() == "multipart/alternative"
    text, html = msg.iter_parts()
    assert (text.get_content_type(), html.get_content_type()) == ("text/plain", "text/html")
    assert msg["From"] == "Tin mới <news@example.org>"
    assert msg["Reply-To"] == "toa-soan@example.org"
    assert msg["To"] == received.recipients[0]
    assert msg["Content-Language"] == lang
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["List-Id"] == "Tin mới Lam Giang <digest.news.example.org>"
    assert msg["Date"]
    subject = msg["Subject"]
    assert subject.startswith("Tin mới Lam Giang: ")
    # The top story, and how many more (the dumps give more than one article): in the
    # reader's words after a Vietnamese headline only in Vietnamese.
    assert re.search(r" và \d+ tin khác$" if lang == "vi" else r" \(\+\d+\)$", subject)
    url = msg["List-Unsubscribe"].strip("<>")
    assert url.startswith("https://news.example.org/unsubscribe?token=")
    token, _, link_lang = url.split("token=")[1].partition("&lang=")
    assert link_lang == lang  # the pages it opens speak the mail's language
    subscriber_id = read_token(
        SECRET.encode(), token, purpose="unsubscribe", now=datetime.now(UTC)
    ).subscriber_id
    assert re.fullmatch(
        rf"<\d{{4}}-\d\d-\d\d\.{subscriber_id}\.[0-9a-f]{{12}}@news\.example\.org>",
        msg["Message-ID"],
    )
    html_text, plain = html.get_content(), text.get_content()
    assert f'href="{url.replace("&", "&amp;")}"' in html_text
    assert url in plain
    assert "@" not in url
    assert "<script>alert(1)</script>" not in html_text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html_text
    assert "<img src=x" not in html_text
    assert "<b>cầu mới</b>" not in html_text
    assert "Khánh thành cầu" in plain


def test_send_delivers_exactly_one_message_per_confirmed_subscriber(
    tmp_path: Path, smtpd: SmtpServer
) -> None:
    _write_project(tmp_path, smtpd)
    languages = _subscribe(tmp_path, 25)
    result = _send(tmp_path)
    assert result.returncode == 0, result.stderr
    # The dumps are from 2024: the clock is years later, so send warns, once, on stderr.
    assert STALE.fullmatch(result.stderr), result.stderr
    assert result.stdout.startswith("Digest ")
    assert "sent 25, failed 0, skipped 0" in result.stdout
    counts = Counter(smtpd.handler.recipients())
    assert counts == Counter(list(languages))  # everyone once; not the unsubscribed one
    for received in smtpd.handler.messages:
        _check_message(received, languages[received.recipients[0]])
    again = _send(tmp_path)
    assert again.returncode == 0, again.stderr
    assert "sent 0, failed 0, skipped 25" in again.stdout
    assert len(smtpd.handler.messages) == 25


def _kill_mid_run(tmp_path: Path, smtpd: SmtpServer, *, after: int) -> int | None:
    """Start `syndicate send` against a slow server, SIGKILL it after `after` messages."""
    smtpd.handler.delay = 0.05
    process = _start(tmp_path)
    try:
        assert smtpd.handler.wait_for(after, timeout=60), "the first messages never arrived"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()
    return process.returncode


@pytest.mark.slow(seconds=6)
def test_a_killed_send_is_completed_by_the_next_run(tmp_path: Path, smtpd: SmtpServer) -> None:
    connections = 3
    _write_project(tmp_path, smtpd, connections=connections)
    languages = _subscribe(tmp_path, 60)
    returncode = _kill_mid_run(tmp_path, smtpd, after=9)
    assert returncode == -signal.SIGKILL
    first = len(smtpd.handler.messages)
    assert first < 60, "the run finished before it was killed"
    smtpd.handler.delay = 0
    result = _send(tmp_path)
    assert result.returncode == 0, result.stderr
    counts = Counter(smtpd.handler.recipients())
    assert set(counts) == set(languages)  # at least once each
    duplicates = sum(n - 1 for n in counts.values())
    assert duplicates <= connections
    final = _send(tmp_path)
    assert "sent 0, failed 0, skipped 60" in final.stdout


@pytest.mark.sqlite_only  # the send lock is SQLite's; on PostgreSQL runs share the queue
def test_a_concurrent_send_exits_75(tmp_path: Path, smtpd: SmtpServer) -> None:
    _write_project(tmp_path, smtpd)
    _subscribe(tmp_path, 80)
    # The run is held mid-send (no DATA answered after the first message) until the second
    # start has been refused, however slow the machine: with 0.1 s a message it could end
    # before a second start under load, which then found the lock free (CI, load 10).
    smtpd.handler.hold_after = 1
    process = _start(tmp_path)
    try:
        assert smtpd.handler.wait_for(1, timeout=60)
        second = _send(tmp_path)
        assert second.returncode == 75
        assert second.stdout == ""
        assert second.stderr == (
            f"Error: {tmp_path / 'syndicate.db.lock'}: another `syndicate send` is running "
            "(it holds this lock). Let it finish; run again later.\n"
        )
        smtpd.handler.release.set()
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert "sent 80, failed 0" in out


def _make_yesterdays(root: Path) -> str:
    """Turn the stored digest into yesterday's, as if the killed run had been a day earlier.

    Its creation time stays (after the subscribers confirmed), so they are still owed it.
    """
    with open_store(root / "syndicate.db") as db, db.transaction() as conn:
        (today,) = conn.execute("SELECT day FROM digests").fetchone()
        yesterday = (date.fromisoformat(today) - timedelta(days=1)).isoformat()
        # The ledger's rows point at the digest (a foreign key): a copy under the old day
        # first, the rows moved onto it, then the digest of today gone.
        for statement in (
            "INSERT INTO digests (day, created_at, article_ids, more, closed_at)"
            " SELECT :old, created_at, article_ids, more, closed_at FROM digests WHERE day = :day",
            "UPDATE deliveries SET digest_day = :old WHERE digest_day = :day",
            "UPDATE articles SET digest_day = :old WHERE digest_day = :day",
            "DELETE FROM digests WHERE day = :day",
        ):
            conn.execute(statement, {"old": yesterday, "day": today})
    return yesterday


@pytest.mark.slow(seconds=6)
def test_a_killed_send_is_finished_by_the_next_days_run(tmp_path: Path, smtpd: SmtpServer) -> None:
    connections = 2
    _write_project(tmp_path, smtpd, connections=connections)
    languages = _subscribe(tmp_path, 30)
    _kill_mid_run(tmp_path, smtpd, after=5)
    assert len(smtpd.handler.messages) < 30, "the run finished before it was killed"
    smtpd.handler.delay = 0
    yesterday = _make_yesterdays(tmp_path)
    (tmp_path / "seeds" / "003.txt").write_text(
        "Giải chạy bộ vì sức khỏe cộng đồng\n01/11/2024 07:00\n"
        "QTO - Sáng 1/11, hơn 2.000 người tham gia giải chạy bộ ven sông.\n"
        "Giải năm nay có ba cự ly.\n",
        encoding="utf-8",
    )
    result = _send(tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2, result.stdout
    assert lines[0].startswith(f"Digest {yesterday}: sent ")
    # Today's digest (its day is `today` unless the clock passed midnight meanwhile).
    assert re.match(r"Digest \d{4}-\d\d-\d\d: sent 30, failed 0, skipped 0 ", lines[1])
    assert not lines[1].startswith(f"Digest {yesterday}")
    first, second = Counter[str](), Counter[str]()
    for received in smtpd.handler.messages:
        plain = received.message.get_body(("plain",))
        assert plain is not None
        is_first = "Khánh thành cầu" in plain.get_content()
        (first if is_first else second)[received.recipients[0]] += 1
    assert set(first) == set(languages)  # the interrupted digest: at least once each
    assert sum(n - 1 for n in first.values()) <= connections
    assert second == Counter(list(languages))  # today's: exactly once each
    final = _send(tmp_path)
    assert re.match(r"Digest \S+: sent 0, failed 0, skipped 30 ", final.stdout)
    assert len(final.stdout.splitlines()) == 1

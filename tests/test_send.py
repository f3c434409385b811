"""Send: the ledger-driven delivery loop against a real aiosmtpd server that misbehaves on cue."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import psycopg
import pytest

from syndicate.config import Settings
from syndicate.digest import RenderedEmail
from syndicate.errors import DeliveryError, LockedError, TempFailError
from syndicate.mail import MailInfo, MessageTemplate, build_digest_template
from syndicate.model import SubscriptionStatus
from syndicate.send import (
    OutboxMailer,
    SendPolicy,
    SendSummary,
    SmtpMailer,
    open_mailer,
    open_send_lock,
    read_earlier_digests,
    send_digest,
)
from syndicate.send.deliver import DigestSender, Stop
from syndicate.send.policy import MAX_ATTEMPTS
from syndicate.store import Database, PgDatabase, ledger
from syndicate.store.subscribers import add_subscriber, get_by_id
from syndicate.tokens import verify_token
from tests.plugins.postgres import ENV_STORE_URL, open_store
from tests.plugins.smtp import (
    Conversation,
    SmtpRecorder,
    SmtpServer,
    free_port,
    run_smtp_server,
    scripted,
)

pytestmark = pytest.mark.usefixtures("store")

DAY = date(2024, 11, 1)
DAY2 = date(2024, 11, 2)
SECRET = b"t" * 32
MARKER = "https://marker.syndicate.invalid/unsubscribe?token=MARKER-1"
KEY = "5eed0f1c2a3b"  # the digest's part of its Message-IDs


def _add_digest(database: Database, day: date) -> None:
    with database.transaction() as conn:
        conn.execute(
            "INSERT INTO digests (day, created_at, article_ids) VALUES (?, ?, '[]')",
            (day.isoformat(), f"{day.isoformat()}T06:00:00+00:00"),
        )


@pytest.fixture
def db(tmp_path: Path):  # type: ignore[no-untyped-def]
    database = open_store(tmp_path / "syndicate.db")
    _add_digest(database, DAY)
    yield database
    database.close()


@pytest.fixture
def send_settings(settings: Settings) -> Settings:
    return dataclasses.replace(
        settings,
        site=dataclasses.replace(settings.site, base_url="https://news.example.org/"),
        mail=dataclasses.replace(settings.mail, from_="News <news@example.org>", bounce_limit=2),
    )


def _templates(settings: Settings, now) -> dict[str, MessageTemplate]:  # type: ignore[no-untyped-def]
    built = {}
    for lang, word in (("vi", "Hủy đăng ký"), ("en", "Unsubscribe")):
        rendered = RenderedEmail(
            lang=lang,
            subject=f"Bản tin {lang}",
            preheader="",
            html=f'<p>{word}: <a href="{MARKER}">{word}</a></p>\n',
            text=f"{word}: {MARKER}\n",
        )
        built[lang] = build_digest_template(
            rendered,
            info=MailInfo.from_settings(settings),
            digest_day=DAY,
            marker=MARKER,
            now=now,
            message_key=KEY,
        )
    return built


def _subscribe(db: Database, count: int, now, *, lang: str = "vi") -> list[str]:  # type: ignore[no-untyped-def]
    emails = [f"reader{i}@example.org" for i in range(count)]
    for email in emails:
        add_subscriber(db, email, language=lang, now=now)
    return emails


async def _send(db, server: SmtpServer | None, settings, now, **options):  # type: ignore[no-untyped-def]
    connections = options.pop("connections", 2)
    mailer = options.pop("mailer", None) or SmtpMailer(
        host="127.0.0.1",
        port=server.port if server else free_port(),
        tls="none",
        timeout=5,
        connections=connections,
        messages_per_connection=options.pop("per_connection", 100),
    )
    policy = SendPolicy(
        connections=connections,
        rate=options.pop("rate", 0.0),
        retry_window=options.pop("retry_window", 1.0),
        retry_delay=options.pop("retry_delay", 0.01),
        attempts=options.pop("retries", 2) + 1,
        bounce_limit=settings.mail.bounce_limit,
    )
    return await send_digest(
        db=db,
        mailer=mailer,
        templates=_templates(settings, now),
        settings=settings,
        secret=SECRET,
        day=options.pop("day", DAY),
        now=now,
        policy=policy,
        **options,
    )


async def test_send_delivers_one_message_per_confirmed_subscriber(  # type: ignore[no-untyped-def]
    db, smtpd, send_settings, now
) -> None:
    emails = _subscribe(db, 12, now)
    add_subscriber(db, "gone@example.org", status=SubscriptionStatus.UNSUBSCRIBED, now=now)
    summary = await _send(db, smtpd, send_settings, now)
    assert (summary.sent, summary.failed, summary.skipped) == (12, 0, 0)
    assert sorted(smtpd.handler.recipients()) == sorted(emails)
    for received in smtpd.handler.messages:
        msg = received.message
        assert received.sender == "news@example.org"
        assert msg["To"] == received.recipients[0]
        url = msg["List-Unsubscribe"].strip("<>")
        token, _, lang = url.split("token=")[1].partition("&lang=")
        assert lang == msg["Content-Language"]
        found = verify_token(
            SECRET, token, purpose="unsubscribe", now=now, find=lambda i: get_by_id(db, i)
        )
        assert msg["Message-ID"] == f"<2024-11-01.{found.id}.{KEY}@news.example.org>"
        assert found.email == msg["To"]
        assert url in msg.get_body(("plain",)).get_content()
    assert ledger.day_counts(db, day=DAY) == {"sent": 12}


async def test_send_skips_already_sent_subscribers(db, smtpd, send_settings, now) -> None:  # type: ignore[no-untyped-def]
    _subscribe(db, 5, now)
    await _send(db, smtpd, send_settings, now)
    again = await _send(db, smtpd, send_settings, now)
    assert (again.sent, again.failed, again.skipped) == (0, 0, 5)
    assert len(smtpd.handler.messages) == 5


async def test_rows_left_sending_by_a_crash_are_sent_again(db, smtpd, send_settings, now) -> None:  # type: ignore[no-untyped-def]
    _subscribe(db, 4, now)
    ledger.mark_sending(db, day=DAY, subscriber_ids=[1, 2], now=now)
    ledger.mark_sent(db, day=DAY, subscriber_id=1, now=now)
    summary = await _send(db, smtpd, send_settings, now)
    assert (summary.sent, summary.skipped) == (3, 1)
    assert sorted(smtpd.handler.recipients()) == [f"reader{i}@example.org" for i in (1, 2, 3)]


async def test_an_unknown_user_is_bounced_at_once_and_never_retried(  # type: ignore[no-untyped-def]
    db, smtpd, send_settings, now
) -> None:
    _subscribe(db, 6, now)
    smtpd.handler.refuse("reader2@example.org", "550 5.1.1 <reader2@example.org>: no such user")
    summary = await _send(db, smtpd, send_settings, now)
    assert (summary.sent, summary.failed, summary.bounced) == (5, 1, 1)
    status, attempts, reply = ledger.get_delivery(db, day=DAY, subscriber_id=3) or ("", 0, "")
    assert (status, attempts) == ("failed", 5)  # final: no run tries it again
    assert reply == "550 5.1.1 <reader2@example.org>: no such user"
    refused = get_by_id(db, 3)
    assert refused is not None
    assert refused.status is SubscriptionStatus.BOUNCED
    again = await _send(db, smtpd, send_settings, now)
    assert (again.sent, again.failed, again.skipped) == (0, 0, 5)
    assert smtpd.handler.recipients().count("reader2@example.org") == 0


async def test_a_policy_refusal_for_one_recipient_counts_a_bounce_and_the_run_goes_on(  # type: ignore[no-untyped-def]
    db, smtpd, send_settings, now
) -> None:
    _subscribe(db, 20, now)
    smtpd.handler.refuse("reader0@example.org", "550 5.7.1 message refused by policy")
    for run in range(4):
        summary = await _send(db, smtpd, send_settings, now, connections=3)
        assert (summary.sent, summary.failed) == ((19, 1) if run == 0 else (0, 0))
        assert "sending" not in ledger.day_counts(db, day=DAY)
    recipients = smtpd.handler.recipients()
    assert sorted(recipients) == sorted(f"reader{i}@example.org" for i in range(1, 20))
    assert ledger.get_delivery(db, day=DAY, subscriber_id=1) == (
        "failed",
        5,
        "550 5.7.1 message refused by policy",
    )
    refused = get_by_id(db, 1)
    assert refused is not None
    assert (refused.bounce_count, refused.status) == (1, SubscriptionStatus.CONFIRMED)


async def test_an_accepted_message_resets_the_bounce_count(db, smtpd, send_settings, now) -> None:  # type: ignore[no-untyped-def]
    # bounce_limit counts permanent refusals in a row, across digests: one delivery clears them.
    _subscribe(db, 3, now)
    smtpd.handler.refuse("reader2@example.org", "550 5.2.2 mailbox full", times=1)
    first = await _send(db, smtpd, send_settings, now)
    assert (first.sent, first.failed) == (2, 1)
    assert (get_by_id(db, 3) or pytest.fail("gone")).bounce_count == 1  # reader2 is id 3
    _add_digest(db, DAY2)
    again = await _send(db, smtpd, send_settings, now, day=DAY2)
    assert (again.sent, again.failed) == (3, 0)
    after = get_by_id(db, 3)
    assert after is not None
    assert (after.bounce_count, after.status) == (0, SubscriptionStatus.CONFIRMED)


async def test_transient_failures_are_deferred_and_retried_until_accepted(  # type: ignore[no-untyped-def]
    db, smtpd, send_settings, now
) -> None:
    _subscribe(db, 6, now)
    smtpd.handler.fail_next("451 4.3.0 try again later", 2)
    smtpd.handler.refuse("reader3@example.org", "421 4.3.2 shutting down", times=1)
    smtpd.handler.refuse("reader5@example.org", "452 4.2.2 mailbox full", times=2)
    summary = await _send(db, smtpd, send_settings, now, connections=1)
    assert (summary.sent, summary.failed) == (6, 0)
    assert sorted(smtpd.handler.recipients()) == sorted(f"reader{i}@example.org" for i in range(6))
    assert smtpd.handler.data_attempts == 6 + 2
    assert smtpd.handler.connections >= 1 + 5  # every retry went out on a fresh connection


async def test_a_message_whose_data_reply_never_came_is_left_for_the_next_run(  # type: ignore[no-untyped-def]
    db, smtpd, send_settings, now
) -> None:
    _subscribe(db, 4, now)
    smtpd.handler.drop_next = 1  # the body went; the connection dropped before the reply
    summary = await _send(db, smtpd, send_settings, now, connections=1)
    assert (summary.sent, summary.failed, summary.in_flight) == (3, 0, 1)
    assert smtpd.handler.data_attempts == 4  # never twice within one run
    assert ledger.day_counts(db, day=DAY) == {"sent": 3, "sending": 1}
    again = await _send(db, smtpd, send_settings, now)
    assert (again.sent, again.in_flight) == (1, 0)
    assert sorted(smtpd.handler.recipients()) == sorted(f"reader{i}@example.org" for i in range(4))


class _Garbling(Conversation):
    """Answers one recipient's RCPT with a line that is not SMTP, and another's message body
    with a reply too long to be SMTP; each once."""

    def __init__(self, at_rcpt: str, after_body: str) -> None:
        super().__init__()
        self.at_rcpt, self.after_body = at_rcpt, after_body
        self.garbled: list[str] = []

    async def rcpt(self, recipient: str) -> bytes | None:
        if recipient == self.at_rcpt and recipient not in self.garbled:
            self.garbled.append(recipient)
            return b"hello, this is not SMTP\r\n"
        return await super().rcpt(recipient)

    async def body(self, recipient: str) -> bytes | None:
        if recipient == self.after_body and recipient not in self.garbled:
            self.garbled.append(recipient)
            return b"250 " + b"x" * 10_000 + b"\r\n"
        return await super().body(recipient)


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-by-one"])
async def test_a_garbled_reply_bounces_nobody_and_is_retried_or_left_in_doubt(  # type: ignore[no-untyped-def]
    db, send_settings, now, pipelining
) -> None:
    # A reply that is not SMTP says nothing of the recipient: before the body it is
    # deferred and sent on retry; after the body it is in doubt like a lost reply. Neither
    # counts a bounce, and neither stops the run.
    emails = _subscribe(db, 4, now)
    conversation = _Garbling(at_rcpt=emails[1], after_body=emails[2])
    async with scripted(conversation, pipelining=pipelining) as port:
        mailer = SmtpMailer(host="127.0.0.1", port=port, tls="none", timeout=5, connections=1)
        summary = await _send(db, None, send_settings, now, mailer=mailer, connections=1)
        assert conversation.garbled == [emails[1], emails[2]]
        assert (summary.sent, summary.failed, summary.bounced, summary.in_flight) == (3, 0, 0, 1)
        assert ledger.day_counts(db, day=DAY) == {"sent": 3, "sending": 1}
        assert ledger.get_delivery(db, day=DAY, subscriber_id=3)[0] == "sending"
        for subscriber_id in range(1, 5):
            subscriber = get_by_id(db, subscriber_id)
            assert subscriber is not None
            assert (subscriber.status, subscriber.bounce_count) == (
                SubscriptionStatus.CONFIRMED,
                0,
            )
        mailer = SmtpMailer(host="127.0.0.1", port=port, tls="none", timeout=5, connections=1)
        again = await _send(db, None, send_settings, now, mailer=mailer, connections=1)
    assert (again.sent, again.failed, again.in_flight) == (1, 0, 0)
    assert ledger.day_counts(db, day=DAY) == {"sent": 4}
    assert sorted(conversation.accepted) == sorted(emails)


class _NeverAnswersAfterTheBody(Conversation):
    """Takes one recipient's message body every time and answers it with a line that is not
    SMTP: the message may have been accepted, and no run can tell."""

    def __init__(self, recipient: str) -> None:
        super().__init__()
        self.recipient = recipient
        self.bodies = 0

    async def body(self, recipient: str) -> bytes | None:
        if recipient == self.recipient:
            self.bodies += 1
            return b"hello, this is not SMTP\r\n"
        return await super().body(recipient)


async def _runs(  # type: ignore[no-untyped-def]
    db, settings, now, conversation: Conversation, count: int
) -> AsyncIterator[tuple[int, SendSummary]]:
    """`count` sends of one connection, one after the other, to `conversation`: each run's
    number (from 1) and summary."""
    async with scripted(conversation) as port:
        for run in range(1, count + 1):
            mailer = SmtpMailer(host="127.0.0.1", port=port, tls="none", timeout=5, connections=1)
            yield run, await _send(db, None, settings, now, mailer=mailer, connections=1)


async def test_a_message_left_in_doubt_run_after_run_is_sent_at_most_max_attempts_times(  # type: ignore[no-untyped-def]
    db, send_settings, now
) -> None:
    # Each run that leaves a message in doubt uses one of the recipient's attempts: a relay
    # that takes the body and never answers would otherwise get the digest again from every
    # run (every cron run of the catch-up window). After the last, the row is failed.
    emails = _subscribe(db, 3, now)
    conversation = _NeverAnswersAfterTheBody(emails[1])
    async for run, summary in _runs(db, send_settings, now, conversation, MAX_ATTEMPTS + 1):
        owed = run < MAX_ATTEMPTS
        assert summary.in_flight == (1 if run < MAX_ATTEMPTS else 0), run
        assert conversation.bodies == min(run, MAX_ATTEMPTS)
        status, attempts, reply = ledger.get_delivery(db, day=DAY, subscriber_id=2)
        assert (status, attempts) == ("sending" if owed else "failed", min(run, MAX_ATTEMPTS))
        assert (reply is not None and "not SMTP" in reply) == (not owed), reply
    assert sorted(conversation.accepted) == [emails[0], emails[2]]
    assert ledger.count_owed(db, day=DAY, max_attempts=MAX_ATTEMPTS) == 0
    subscriber = get_by_id(db, 2)
    assert subscriber is not None
    assert (subscriber.status, subscriber.bounce_count) == (SubscriptionStatus.CONFIRMED, 0)


async def test_the_run_that_uses_a_message_s_last_attempt_in_doubt_counts_it_failed(  # type: ignore[no-untyped-def]
    db, send_settings, now
) -> None:
    # The run whose in-doubt message uses the recipient's last attempt makes the row failed:
    # no later run sends it again. It counts as failed (so `send` exits 1 and prints its
    # line on stderr, as for a temporary failure out of attempts), not as in flight, which
    # says the next run sends it again.
    emails = _subscribe(db, 2, now)
    conversation = _NeverAnswersAfterTheBody(emails[1])
    async for run, summary in _runs(db, send_settings, now, conversation, MAX_ATTEMPTS):
        last = run == MAX_ATTEMPTS
        assert (summary.failed, summary.in_flight) == (int(last), int(not last)), run
    assert ledger.day_counts(db, day=DAY) == {"sent": 1, "failed": 1}


class _AlwaysGarbled(Conversation):
    async def rcpt(self, recipient: str) -> bytes | None:
        return b"hello, this is not SMTP\r\n"


async def test_a_server_that_only_garbles_is_retried_like_one_that_drops_and_bounces_nobody(  # type: ignore[no-untyped-def]
    db, send_settings, now
) -> None:
    # As a server that keeps dropping the connection: each recipient is deferred; with none
    # accepted, the run stops as the server not taking mail (exit 75), using none of their
    # attempts; the next run tries them all again.
    _subscribe(db, 12, now)
    async with scripted(_AlwaysGarbled()) as port:
        mailer = SmtpMailer(host="127.0.0.1", port=port, tls="none", timeout=5, connections=2)
        with pytest.raises(TempFailError, match="deferred 12 recipients on their first try"):
            await _send(db, None, send_settings, now, mailer=mailer, retry_window=0.2)
    assert ledger.count_owed(db, day=DAY, max_attempts=5) == 12
    assert db.conn.execute("SELECT max(attempts) FROM deliveries").fetchone()[0] == 0
    assert db.conn.execute("SELECT max(bounce_count) FROM subscribers").fetchone()[0] == 0


async def test_a_recipient_deferred_past_the_retries_is_failed_with_the_reply(  # type: ignore[no-untyped-def]
    db, smtpd, send_settings, now
) -> None:
    _subscribe(db, 3, now)
    smtpd.handler.refuse("reader1@example.org", "452 4.2.2 mailbox full")
    summary = await _send(db, smtpd, send_settings, now, retry_window=0.2)
    assert (summary.sent, summary.failed, summary.bounced) == (2, 1, 0)
    assert ledger.get_delivery(db, day=DAY, subscriber_id=2) == (
        "failed",
        1,
        "452 4.2.2 mailbox full",
    )
    refused = get_by_id(db, 2)
    assert refused is not None
    assert refused.bounce_count == 0


async def test_a_server_refusing_everyone_stops_the_run_without_bounces(  # type: ignore[no-untyped-def]
    db, smtpd, send_settings, now
) -> None:
    emails = _subscribe(db, 30, now)
    for email in emails[:5]:  # unknown users do not count toward the stop, nor bounce here
        smtpd.handler.refuse(email, "550 5.1.1 no such user")
    for email in emails[5:]:
        smtpd.handler.refuse(email, "554 5.7.1 Relaying denied")
    with pytest.raises(DeliveryError, match=r"refused the first 10 recipients") as caught:
        await _send(db, smtpd, send_settings, now, connections=1)
    assert caught.value.exit_code == 2
    assert "bounced nobody" in str(caught.value)
    # The refusals were given back, so the line counts none failed (it said "15 failed").
    assert "so far: 0 sent, 0 failed." in str(caught.value)
    # Nothing recorded against the refused ones: the run used none of their attempts.
    assert ledger.day_counts(db, day=DAY) == {"sending": 30}
    assert db.conn.execute("SELECT max(attempts) FROM deliveries").fetchone()[0] == 0
    assert db.conn.execute("SELECT max(bounce_count) FROM subscribers").fetchone()[0] == 0
    assert (
        db.conn.execute("SELECT count(*) FROM subscribers WHERE status = 'confirmed'").fetchone()[0]
        == 30
    )
    assert ledger.count_owed(db, day=DAY, max_attempts=5) == 30  # all retried by the next run


async def test_an_unreachable_server_is_a_temporary_failure(db, send_settings, now) -> None:  # type: ignore[no-untyped-def]
    _subscribe(db, 3, now)
    with pytest.raises(TempFailError, match=r"cannot connect.*after 3 tries") as caught:
        await _send(db, None, send_settings, now, retries=2)
    assert caught.value.exit_code == 75
    assert ledger.day_counts(db, day=DAY).get("sent") is None
    assert ledger.count_owed(db, day=DAY, max_attempts=5) == 3  # all left for the next run


async def test_connections_are_reused_up_to_the_cap(db, smtpd, send_settings, now) -> None:  # type: ignore[no-untyped-def]
    _subscribe(db, 10, now)
    summary = await _send(db, smtpd, send_settings, now, connections=1, per_connection=3)
    assert summary.sent == 10
    assert smtpd.handler.connections == 4


async def test_limit_sends_to_at_most_n(db, smtpd, send_settings, now) -> None:  # type: ignore[no-untyped-def]
    _subscribe(db, 10, now)
    summary = await _send(db, smtpd, send_settings, now, limit=3)
    assert summary.sent == 3
    assert sorted(smtpd.handler.recipients()) == [f"reader{i}@example.org" for i in range(3)]


async def test_a_limit_over_several_batches_claimed_ahead_sends_exactly_n(  # type: ignore[no-untyped-def]
    db, smtpd, send_settings, now
) -> None:
    # Two connections claim 32 at a time, the next batch while half of one is left: the
    # claims overlap, and the limit is still met exactly, with no one else left leased.
    _subscribe(db, 150, now)
    summary = await _send(db, smtpd, send_settings, now, connections=2, limit=75)
    assert summary.sent == 75
    assert len(set(smtpd.handler.recipients())) == 75
    leased = db.conn.execute(
        "SELECT count(*) FROM deliveries WHERE status <> 'sent' AND lease_until IS NOT NULL"
    ).fetchone()[0]
    assert leased == 0


async def test_each_subscriber_gets_their_language(db, smtpd, send_settings, now) -> None:  # type: ignore[no-untyped-def]
    _subscribe(db, 2, now, lang="vi")
    add_subscriber(db, "en@example.org", language="en", now=now)
    await _send(db, smtpd, send_settings, now)
    langs = {m.recipients[0]: m.message["Content-Language"] for m in smtpd.handler.messages}
    assert langs == {
        "reader0@example.org": "vi",
        "reader1@example.org": "vi",
        "en@example.org": "en",
    }


async def test_outbox_writes_one_file_per_recipient(db, tmp_path, send_settings, now) -> None:  # type: ignore[no-untyped-def]
    _subscribe(db, 3, now)
    folder = tmp_path / "outbox" / DAY.isoformat()
    summary = await _send(db, None, send_settings, now, mailer=OutboxMailer(folder), connections=1)
    assert summary.sent == 3
    files = sorted(p.name for p in folder.iterdir())
    assert files == [f"2024-11-01.{i}.{KEY}_news.example.org.eml" for i in (1, 2, 3)]
    parsed = message_from_bytes((folder / files[0]).read_bytes(), policy=policy.default)
    assert parsed["To"] == "reader0@example.org"


def test_send_lock_is_exclusive(tmp_path: Path) -> None:
    database = tmp_path / "syndicate.db"
    with open_send_lock(database) as path:
        assert path == tmp_path / "syndicate.db.lock"
        with pytest.raises(LockedError, match=r"another `syndicate send` is running") as caught:
            with open_send_lock(database):
                pass
        assert caught.value.exit_code == 75
    with open_send_lock(database):
        pass


async def test_rate_spaces_the_messages(db, smtpd, send_settings, now) -> None:  # type: ignore[no-untyped-def]
    _subscribe(db, 10, now)
    summary = await _send(db, smtpd, send_settings, now, connections=4, rate=20.0)
    assert summary.sent == 10
    # Ten starts 1/20 s apart: the last starts 9 intervals (450 ms) after the first.
    assert summary.seconds >= 0.4


async def test_an_idle_connection_the_server_closed_is_not_reused() -> None:
    import asyncio

    from aiosmtpd.controller import Controller

    from tests.plugins.smtp import SmtpRecorder

    handler = SmtpRecorder()
    # The server drops connections idle for 0.2 s, as real ones do after a few minutes.
    controller = Controller(handler, hostname="127.0.0.1", port=free_port(), timeout=0.2)
    controller.start()
    try:
        mailer = SmtpMailer(host="127.0.0.1", port=controller.port, tls="none", connections=1)
        message = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: x\r\n\r\nhi\r\n"
        await mailer.send("a@example.org", ["b@example.org"], message)
        idle = mailer._idle[0].client
        async with asyncio.timeout(10):
            while idle.is_connected:  # wait for the server's idle timeout to close it
                await asyncio.sleep(0.05)
        await mailer.send("a@example.org", ["b@example.org"], message)  # a fresh connection
        await mailer.aclose()
    finally:
        controller.stop()
    assert len(handler.messages) == 2
    assert handler.connections == 2


async def test_confirmed_by_leaves_out_subscribers_confirmed_after_the_digest(  # type: ignore[no-untyped-def]
    db, smtpd, send_settings, now
) -> None:
    _subscribe(db, 2, now)
    add_subscriber(db, "late@example.org", now=now + timedelta(hours=3))
    created = now  # the fixture's digest was made at 06:00, as `now`
    summary = await _send(db, smtpd, send_settings, now, confirmed_by=created)
    assert (summary.sent, summary.failed, summary.skipped) == (2, 0, 0)
    assert sorted(smtpd.handler.recipients()) == ["reader0@example.org", "reader1@example.org"]
    today = await _send(db, smtpd, send_settings, now)  # today's digest: everyone confirmed
    assert (today.sent, today.skipped) == (1, 2)


def _stored_digest(db: Database, day: date, created_at: str) -> None:
    with db.transaction() as conn:
        conn.execute(
            "INSERT INTO digests (day, created_at, article_ids) VALUES (?, ?, '[]')",
            (day.isoformat(), created_at),
        )


def test_earlier_digests_owed_to_someone_are_found_oldest_first(db, now, caplog) -> None:  # type: ignore[no-untyped-def]
    # DAY (1 November, the fixture's) and three more: one too old, one finished, one owed.
    _stored_digest(db, date(2024, 10, 20), "2024-10-20T06:00:00+00:00")
    _stored_digest(db, date(2024, 10, 28), "2024-10-28T06:00:00+00:00")
    _stored_digest(db, date(2024, 10, 30), "2024-10-30T06:00:00+00:00")
    early = add_subscriber(db, "early@example.org", now=now - timedelta(days=30))
    add_subscriber(db, "later@example.org", now=datetime(2024, 10, 29, 12, 0, tzinfo=UTC))
    ledger.mark_sending(db, day=date(2024, 10, 28), subscriber_ids=[early.id], now=now)
    ledger.mark_sent(db, day=date(2024, 10, 28), subscriber_id=early.id, now=now)
    today = date(2024, 11, 3)
    with caplog.at_level("WARNING", logger="syndicate"):
        found = read_earlier_digests(db, today=today, now=now)
    assert [(d.day, d.owed) for d in found] == [(date(2024, 10, 30), 2), (DAY, 2)]
    assert found[0].created_at == datetime(2024, 10, 30, 6, 0, tzinfo=UTC)
    assert caplog.messages == [
        "digest 2024-10-20: given up with 1 subscriber never sent it: it is older than the "
        "7-day catch-up window."
    ]
    # 20 October (given up) and 28 October (sent to all confirmed by then) are closed.
    closed = db.conn.execute("SELECT day FROM digests WHERE closed_at IS NOT NULL").fetchall()
    assert sorted(closed) == [("2024-10-20",), ("2024-10-28",)]
    caplog.clear()
    with caplog.at_level("WARNING", logger="syndicate"):
        again = read_earlier_digests(db, today=today, now=now)
    assert [d.day for d in again] == [date(2024, 10, 30), DAY]
    assert caplog.messages == []
    # Today's digest and later ones are not "earlier".
    assert read_earlier_digests(db, today=DAY, now=now) == [found[0]]


async def test_a_slow_reply_after_the_body_waits_data_timeout_and_makes_one_copy(  # type: ignore[no-untyped-def]
    db, smtpd, send_settings, now
) -> None:
    # RFC 5321 4.5.3.2.6: the reply after the body may take minutes; smtp.timeout is for
    # commands. Giving up at smtp.timeout and retrying made one copy per retry.
    _subscribe(db, 2, now)
    smtpd.handler.delay = 0.9  # three times smtp.timeout, well inside data_timeout
    mailer = SmtpMailer(
        host="127.0.0.1", port=smtpd.port, tls="none", timeout=0.3, data_timeout=10, connections=2
    )
    summary = await _send(db, smtpd, send_settings, now, mailer=mailer)
    assert (summary.sent, summary.failed, summary.in_flight) == (2, 0, 0)
    assert sorted(smtpd.handler.recipients()) == ["reader0@example.org", "reader1@example.org"]
    assert smtpd.handler.data_attempts == 2
    again = await _send(db, smtpd, send_settings, now)
    assert again.sent == 0
    assert len(smtpd.handler.messages) == 2


async def test_a_data_reply_slower_than_data_timeout_is_in_flight_and_never_resent_in_the_run(  # type: ignore[no-untyped-def]
    db, smtpd, send_settings, now
) -> None:
    _subscribe(db, 1, now)
    smtpd.handler.delay = 1.0
    mailer = SmtpMailer(
        host="127.0.0.1", port=smtpd.port, tls="none", timeout=5, data_timeout=0.2, connections=1
    )
    summary = await _send(db, smtpd, send_settings, now, mailer=mailer, connections=1)
    assert (summary.sent, summary.failed, summary.in_flight) == (0, 0, 1)
    assert smtpd.handler.data_attempts == 1
    assert ledger.day_counts(db, day=DAY) == {"sending": 1}


class _SilentAtData(Conversation):
    async def data(self, recipient: str) -> bytes | None:
        return None


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-by-one"])
async def test_a_server_silent_after_data_is_given_up_on_at_the_command_timeout(  # type: ignore[no-untyped-def]
    db, send_settings, now, pipelining
) -> None:
    # RFC 5321 4.5.3.2: DATA's 354 is a command's reply (smtp.timeout); smtp.data_timeout
    # is for the reply after the body only. No body went: deferred, then failed for now.
    _subscribe(db, 1, now)
    async with scripted(_SilentAtData(), pipelining=pipelining) as port:
        settings = dataclasses.replace(
            send_settings,
            mail=dataclasses.replace(send_settings.mail, transport="smtp"),
            smtp=dataclasses.replace(
                send_settings.smtp,
                host="127.0.0.1",
                port=port,
                tls="none",
                timeout=0.2,
                data_timeout=60.0,
            ),
        )
        mailer = open_mailer(settings, folder="unused")
        started = time.monotonic()
        summary = await asyncio.wait_for(
            _send(db, None, settings, now, mailer=mailer, connections=1, retry_window=0.1), 20
        )
    assert time.monotonic() - started < 10  # a few command timeouts, not data_timeout
    assert (summary.sent, summary.failed, summary.in_flight) == (0, 1, 0)
    status, attempts, _reply = ledger.get_delivery(db, day=DAY, subscriber_id=1) or ("", 0, "")
    assert (status, attempts) == ("failed", 1)  # retried by the next run


async def test_deferred_recipients_wait_after_everyone_else_and_hold_no_worker(  # type: ignore[no-untyped-def]
    db, smtpd, send_settings, now
) -> None:
    emails = _subscribe(db, 500, now)
    deferred = set(emails[::5])  # 100 of 500
    for email in deferred:
        smtpd.handler.refuse(email, "451 4.7.1 greylisted, try again later")
    window = 0.3  # the first retries are due after window / 8: several fit in it
    others_sent: list[float] = []  # when the 400 deliverable recipients had all been sent

    def watch() -> None:
        if smtpd.handler.wait_for(400, timeout=300):
            others_sent.append(time.monotonic())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    summary = await _send(db, smtpd, send_settings, now, connections=4, retry_window=window)
    ended = time.monotonic()
    watcher.join(timeout=5)
    assert (summary.sent, summary.failed) == (400, 100)
    # Nobody waited behind a deferred recipient: every other message went before any retry.
    log = smtpd.handler.rcpt_log
    seen: set[str] = set()
    first_retry = len(log)
    for i, (address, _reply) in enumerate(log):
        if address in seen:
            first_retry = i
            break
        seen.add(address)
    accepted_before = sum(1 for address, reply in log[:first_retry] if reply == "250 OK")
    assert accepted_before >= 400 - 4  # at most the other connections' last messages after it
    tries = [sum(1 for a, _ in log if a == email) for email in sorted(deferred)]
    assert min(tries) >= 2  # retried within the window, with backoff
    assert ledger.get_delivery(db, day=DAY, subscriber_id=1) == (
        "failed",
        1,
        "451 4.7.1 greylisted, try again later",
    )
    # Once everyone else was sent, the deferred ones took about the window, not a window
    # each: measured from that moment, so the time the 400 sends take on a loaded machine
    # does not count (generous still: a few hundred retries on a shared machine).
    assert others_sent
    tail = ended - others_sent[0]
    assert tail < window + 5, tail


async def test_with_a_bounce_address_each_message_has_its_own_verp_sender(  # type: ignore[no-untyped-def]
    db, smtpd, send_settings, now, tmp_path
) -> None:
    from syndicate.tokens import verify_return_token

    verp = dataclasses.replace(
        send_settings,
        mail=dataclasses.replace(send_settings.mail, bounce_address="bounces@news.example.org"),
    )
    _subscribe(db, 3, now)
    summary = await _send(db, smtpd, verp, now)
    assert summary.sent == 3
    senders = set()
    for received in smtpd.handler.messages:
        local, _, domain = received.sender.partition("@")
        assert domain == "news.example.org"
        assert local.startswith("bounces+")
        assert len(local) <= 64
        claim = verify_return_token(
            SECRET, local.removeprefix("bounces+"), find=lambda i: get_by_id(db, i)
        )
        assert claim.subscriber.email == received.recipients[0]
        assert claim.day == DAY
        # From and the Message-ID's domain stay as they were.
        assert received.message["From"] == "News <news@example.org>"
        senders.add(received.sender)
    assert len(senders) == 3
    # The outbox writes the same envelope sender as its Return-Path.
    outbox = OutboxMailer(tmp_path / "outbox")
    with db.transaction() as conn:
        conn.execute("DELETE FROM deliveries")
    await _send(db, None, verp, now, mailer=outbox)
    for path in (tmp_path / "outbox").iterdir():
        parsed = message_from_bytes(path.read_bytes(), policy=policy.default)
        path_local = parsed["Return-Path"].strip("<>").partition("@")[0]
        claim = verify_return_token(
            SECRET, path_local.removeprefix("bounces+"), find=lambda i: get_by_id(db, i)
        )
        assert claim.subscriber.email == parsed["To"]


async def test_a_crash_could_leave_at_most_one_accepted_message_per_connection_unrecorded(  # type: ignore[no-untyped-def]
    db, smtpd, send_settings, now, monkeypatch
) -> None:
    """The bound behind "duplicates <= smtp.connections per kill", checked at every message.

    Commits are slowed down (on PostgreSQL they run beside the sending, see
    deliver.MarkCommitter): whenever the server takes a message's data, the messages it took
    before and the store has not yet recorded as sent must be fewer than the connections.
    """
    connections = 4
    _subscribe(db, 40, now)
    events: list[tuple[str, object]] = []
    handle_data = smtpd.handler.handle_DATA

    async def taking_data(server, session, envelope):  # type: ignore[no-untyped-def]
        events.append(("data", envelope.rcpt_tos[0]))
        return await handle_data(server, session, envelope)

    monkeypatch.setattr(smtpd.handler, "handle_DATA", taking_data)
    mark_async, mark_sync = ledger.PgQueue.start_mark, ledger.mark_sent_many

    def slow_mark(self, *, day, subscriber_ids, now):  # type: ignore[no-untyped-def]
        async def later() -> None:
            await asyncio.sleep(0.02)
            await mark_async(self, day=day, subscriber_ids=subscriber_ids, now=now)
            events.append(("saved", list(subscriber_ids)))

        return asyncio.ensure_future(later())

    def slow_mark_sync(database, *, day, subscriber_ids, now):  # type: ignore[no-untyped-def]
        time.sleep(0.02)
        mark_sync(database, day=day, subscriber_ids=subscriber_ids, now=now)
        events.append(("saved", list(subscriber_ids)))

    monkeypatch.setattr(ledger.PgQueue, "start_mark", slow_mark)
    monkeypatch.setattr(ledger, "mark_sent_many", slow_mark_sync)
    summary = await _send(db, smtpd, send_settings, now, connections=connections)
    assert summary.sent == 40
    emails = dict(db.conn.execute("SELECT id, email FROM subscribers").fetchall())
    taken: set[str] = set()
    saved: set[str] = set()
    worst = 0
    for kind, what in events:
        if kind == "saved":
            saved.update(emails[i] for i in what)  # type: ignore[attr-defined]
        else:
            # Every message taken before this one and not yet recorded could be sent twice.
            worst = max(worst, len(taken - saved))
            taken.add(str(what))
    assert saved == taken == set(emails.values())
    assert worst < connections, f"{worst} accepted messages unrecorded at once"


async def test_on_postgresql_the_bound_holds_with_the_marks_slowed_on_the_server(  # type: ignore[no-untyped-def]
    db, smtpd, send_settings, now, monkeypatch
) -> None:
    """The test above with the marks as they run (deliver.MarkCommitter on the libpq
    statement, `postgres.LoopStatement`), slowed by the server itself: at each DATA the
    store, read from another connection, has recorded every message accepted before but
    fewer than one per connection."""
    url = os.environ.get(ENV_STORE_URL)
    if not url:
        pytest.skip("the marks run on libpq on PostgreSQL only")
    connections = 4
    _subscribe(db, 60, now)
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(
            "CREATE FUNCTION slow_sent() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM pg_sleep(0.01); RETURN NEW; END $$"
        )
        admin.execute(
            "CREATE TRIGGER slow_sent BEFORE UPDATE ON deliveries FOR EACH ROW "
            "WHEN (NEW.status = 'sent' AND OLD.status <> 'sent') EXECUTE FUNCTION slow_sent()"
        )
    unrecorded: list[int] = []
    handle_data = smtpd.handler.handle_DATA
    with psycopg.connect(url, autocommit=True) as watcher:

        async def taking_data(server, session, envelope):  # type: ignore[no-untyped-def]
            accepted = {m.recipients[0] for m in smtpd.handler.messages}
            rows = watcher.execute(
                "SELECT s.email FROM deliveries AS d JOIN subscribers AS s"
                " ON s.id = d.subscriber_id WHERE d.status = 'sent'"
            ).fetchall()
            unrecorded.append(len(accepted - {email for (email,) in rows}))
            return await handle_data(server, session, envelope)

        monkeypatch.setattr(smtpd.handler, "handle_DATA", taking_data)
        summary = await _send(db, smtpd, send_settings, now, connections=connections)
    assert summary.sent == 60
    assert 0 < max(unrecorded) < connections


def _stalling_clocks(stalled: Callable[[], bool]) -> dict[str, Any]:
    """A sender's clocks (wall and monotonic) jumping an hour on once `stalled()`: a stall.

    On PostgreSQL leases follow the server's clock plus the monotonic time passed since."""

    def clock() -> datetime:
        return datetime.now(UTC) + (timedelta(hours=1) if stalled() else timedelta(0))

    def monotonic() -> float:
        return time.monotonic() + (3600.0 if stalled() else 0.0)

    return {"clock": clock, "monotonic": monotonic}


async def test_a_deferred_recipient_claimed_again_after_a_stall_is_sent_once(  # type: ignore[no-untyped-def]
    db, smtpd, send_settings, now
) -> None:
    # The worker stalls (its clock jumps past the lease) while its one recipient waits in the
    # deferred list. Its next claim finds that row's lease run out and claims it again: the
    # row is its own and still listed, so it must not go out twice (once as the fresh claim,
    # once as the retry).
    [email] = _subscribe(db, 1, now)
    smtpd.handler.refuse(email, "451 4.7.1 greylisted, try again later", times=1)

    def stalled() -> bool:
        return any(reply.startswith("451") for _address, reply in smtpd.handler.rcpt_log)

    mailer = SmtpMailer(host="127.0.0.1", port=smtpd.port, tls="none", timeout=5, connections=1)
    policy = SendPolicy(connections=1, retry_window=1.0, retry_delay=0.01, attempts=3)
    sender = DigestSender(
        db=db,
        mailer=mailer,
        settings=send_settings,
        secret=SECRET,
        policy=policy,
        **_stalling_clocks(stalled),
    )
    summary = await sender.send(templates=_templates(send_settings, now), day=DAY, now=now)
    assert smtpd.handler.recipients() == [email]
    assert (summary.sent, summary.failed) == (1, 0)
    assert ledger.day_counts(db, day=DAY) == {"sent": 1}


async def test_an_accepted_recipient_claimed_again_after_a_stall_is_sent_once(  # type: ignore[no-untyped-def]
    db, smtpd, send_settings, now
) -> None:
    # The worker stalls (its clock jumps past the lease) just as its message is accepted,
    # before the `sent` mark is committed: its next claim finds the row still `sending` with
    # its lease run out. The message went: it must not go again.
    [email] = _subscribe(db, 1, now)

    mailer = SmtpMailer(host="127.0.0.1", port=smtpd.port, tls="none", timeout=5, connections=1)
    policy = SendPolicy(connections=1, retry_window=1.0, retry_delay=0.01, attempts=3)
    sender = DigestSender(
        db=db,
        mailer=mailer,
        settings=send_settings,
        secret=SECRET,
        policy=policy,
        **_stalling_clocks(lambda: bool(smtpd.handler.messages)),
    )
    summary = await sender.send(templates=_templates(send_settings, now), day=DAY, now=now)
    assert smtpd.handler.recipients() == [email]
    assert (summary.sent, summary.failed) == (1, 0)
    assert ledger.day_counts(db, day=DAY) == {"sent": 1}


class _StallsAfterTheFirst(SmtpRecorder):
    """Holds the SQLite write lock from the first message's DATA (its `sent` mark waits) to the
    second's RCPT, when another worker takes the second row over: the sender's previous commit
    outlasts its lease, as in a stall (SIGSTOP) while the next message waited for it."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.locker: sqlite3.Connection | None = None
        self.stalled = False

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        if self.locker is None:
            self.locker = sqlite3.connect(self.path, isolation_level=None)
            self.locker.execute("BEGIN IMMEDIATE")
        return await super().handle_DATA(server, session, envelope)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # type: ignore[no-untyped-def]
        if self.locker is not None and not self.stalled:
            # The other worker has sent it already by the time this one wakes up.
            self.locker.execute(
                "UPDATE deliveries SET lease_owner = 'other/1', lease_until = NULL, "
                "status = 'sent' WHERE subscriber_id = 2"
            )
            self.locker.execute("COMMIT")
            self.locker.close()
            self.stalled = True
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)


@pytest.mark.sqlite_only
@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-by-one"])
async def test_a_message_that_waited_past_its_lease_for_the_last_commit_is_fenced(  # type: ignore[no-untyped-def]
    db, send_settings, now, tmp_path, pipelining
) -> None:
    # The second message waits (before its body) for the first one's commit; meanwhile its
    # lease runs out and another worker takes its row over. Its body must not go then.
    first, _second = _subscribe(db, 2, now)
    handler = _StallsAfterTheFirst(tmp_path / "syndicate.db")
    handler.pipelining = pipelining

    def clock() -> datetime:
        return datetime.now(UTC) + (timedelta(hours=1) if handler.stalled else timedelta(0))

    with run_smtp_server(handler) as server:
        mailer = SmtpMailer(host="127.0.0.1", port=server.port, tls="none", connections=1)
        policy = SendPolicy(connections=1, retry_window=1.0, retry_delay=0.01, attempts=3)
        sender = DigestSender(
            db=db, mailer=mailer, settings=send_settings, secret=SECRET, policy=policy, clock=clock
        )
        summary = await sender.send(templates=_templates(send_settings, now), day=DAY, now=now)
    assert handler.stalled
    assert handler.recipients() == [first]
    assert summary.sent == 1
    assert ledger.get_delivery(db, day=DAY, subscriber_id=2)[0] == "sent"


class _TakenOverAtRcpt(SmtpRecorder):
    """Refuses `address` for good at RCPT (a 5.7.1: it counts toward mail.bounce_limit), and
    the first time, meanwhile, has another worker take its row over: the sender stalled
    past its lease between its fence (before MAIL FROM) and the reply. That worker is gone
    in turn (its lease run out), so the sender takes the row back and sends it again."""

    def __init__(self, path: Path, address: str) -> None:
        super().__init__()
        self.path, self.address, self.taken = path, address, False
        self.refuse(address, "550 5.7.1 refused by policy")

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # type: ignore[no-untyped-def]
        if address == self.address and not self.taken:
            self.taken = True
            with open_store(self.path) as other, other.transaction() as conn:
                conn.execute(
                    "UPDATE deliveries SET lease_owner = 'other/1',"
                    " lease_until = '1970-01-01T00:00:00.000000+00:00' WHERE subscriber_id ="
                    " (SELECT id FROM subscribers WHERE email = ?)",
                    (address,),
                )
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)


@pytest.mark.parametrize("refused", ["after-an-accept", "before-any-accept"])
async def test_a_refusal_for_a_row_another_worker_took_over_changes_nothing(  # type: ignore[no-untyped-def]
    db, send_settings, now, tmp_path, refused
) -> None:
    # The refused row's mark was fenced off (another worker held it), but record_bounce
    # still counted the refusal against its subscriber: missing from the ledger (and so
    # from a `--workers` run's summary), and counted again when the row's holder got its
    # own refusal of the same message: with mail.bounce_limit 2, one digest bounced them.
    # The holder's reply is the one that counts, once.
    first, second = _subscribe(db, 2, now)
    address = second if refused == "after-an-accept" else first
    subscriber_id = 2 if address == second else 1
    handler = _TakenOverAtRcpt(tmp_path / "syndicate.db", address)
    with run_smtp_server(handler) as server:
        summary = await _send(db, server, send_settings, now, connections=1, worker="run1/1")
    assert [a for a, reply in handler.rcpt_log if reply.startswith("550")] == [address] * 2
    assert handler.recipients() == [first if address == second else second]
    assert (summary.sent, summary.failed, summary.bounced) == (1, 1, 0)
    # What `send --workers` counts (the ledger's rows of the run) says the same.
    assert ledger.run_counts(db, days=[DAY], run="run1") == [
        ledger.RunCounts(sent=1, failed=1, bounced=0, in_doubt=0, held=0)
    ]
    taken = get_by_id(db, subscriber_id)
    assert taken is not None
    assert (taken.status, taken.bounce_count) == (SubscriptionStatus.CONFIRMED, 1)
    assert ledger.get_delivery(db, day=DAY, subscriber_id=subscriber_id) == (
        "failed",
        MAX_ATTEMPTS,
        "550 5.7.1 refused by policy",
    )


class _SentByAnotherWhileDeferred(SmtpRecorder):
    """Defers `address` at RCPT (a 450) once, and meanwhile has another worker take its row
    over and send it: the sender stalled past its lease between its fence and the reply."""

    def __init__(self, path: Path, address: str) -> None:
        super().__init__()
        self.path, self.address = path, address
        self.refuse(address, "450 4.2.0 mailbox busy, try later", times=1)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # type: ignore[no-untyped-def]
        if address == self.address:
            with open_store(self.path) as other, other.transaction() as conn:
                conn.execute(
                    "UPDATE deliveries SET status = 'sent', attempts = attempts + 1,"
                    " lease_owner = 'other/1', lease_until = NULL WHERE subscriber_id ="
                    " (SELECT id FROM subscribers WHERE email = ?)",
                    (address,),
                )
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)


async def test_a_deferral_given_up_on_a_row_another_worker_took_over_is_no_failure(  # type: ignore[no-untyped-def]
    db, send_settings, now, tmp_path
) -> None:
    # The deferred row, left past the retry window, was given up (`mark_failed`, fenced off:
    # another worker had taken it over and sent it), and counted failed all the same: the
    # summary said one failure more than the ledger holds for the run.
    first, second = _subscribe(db, 2, now)
    handler = _SentByAnotherWhileDeferred(tmp_path / "syndicate.db", second)
    with run_smtp_server(handler) as server:
        summary = await _send(
            db,
            server,
            send_settings,
            now,
            connections=1,
            worker="run1/1",
            retry_window=0.0,
            retry_delay=60.0,  # never retried: given up at the end of the first pass
        )
    assert handler.rcpt_log == [(first, "250 OK"), (second, "450 4.2.0 mailbox busy, try later")]
    assert (summary.sent, summary.failed, summary.in_flight) == (1, 0, 0)
    assert ledger.run_counts(db, days=[DAY], run="run1") == [
        ledger.RunCounts(sent=1, failed=0, bounced=0, in_doubt=0, held=0)
    ]
    assert ledger.get_delivery(db, day=DAY, subscriber_id=2) == ("sent", 1, None)


async def test_a_send_cancelled_before_the_server_answers_ehlo_hangs_up() -> None:
    """A send cancelled while its new connection waits for EHLO's reply (a caller's
    timeout, a stop) closes that connection. Left open, it was closed by the garbage
    collector with a ResourceWarning (unclosed transport), in whichever test ran then."""
    asked, hung_up = asyncio.Event(), asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 slow ESMTP\r\n")
        await reader.readuntil(b"\r\n")  # EHLO, never answered
        asked.set()
        await reader.read()  # until the client hangs up
        hung_up.set()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        mailer = SmtpMailer(host="127.0.0.1", port=port, tls="none", timeout=30, connections=1)
        message = b"Subject: x\r\n\r\nx\r\n"
        sending = asyncio.create_task(mailer.send("news@example.org", ["a@example.org"], message))
        await asyncio.wait_for(asked.wait(), 30)
        sending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sending
        # The client's close reaches the server at once; 30 s only bounds a failure.
        await asyncio.wait_for(hung_up.wait(), 30)
        await mailer.aclose()
    finally:
        server.close()
        await server.wait_closed()


async def test_a_run_cancelled_while_marks_are_under_way_closes_everything_and_loses_nobody(  # type: ignore[no-untyped-def]
    db, smtpd, send_settings, now
) -> None:
    """A cancelled send (a caller's timeout, say) still records the marks under way, and
    closes the queue's connections: left open, each was closed by the garbage collector
    with a ResourceWarning (an error here), and the loop ran callbacks on them after."""
    connections = 4
    emails = _subscribe(db, 200, now)
    smtpd.handler.delay = 0.005
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        sending = asyncio.create_task(_send(db, smtpd, send_settings, now, connections=connections))
        await asyncio.wait_for(_until(lambda: len(smtpd.handler.messages) >= 30), 10)
        sending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sending
        if isinstance(db, PgDatabase):  # the queue's connections are closed by then
            others = (
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            await asyncio.wait_for(_until(lambda: db.conn.execute(others).fetchone() == (0,)), 5)
        for _ in range(20):  # any callback still due runs
            await asyncio.sleep(0.005)
        del sending
        gc.collect()  # a connection left open warns here
    finally:
        loop.set_exception_handler(None)
    assert errors == []
    sent = {
        email
        for (email,) in db.conn.execute(
            "SELECT s.email FROM deliveries AS d JOIN subscribers AS s ON s.id = d.subscriber_id"
            " WHERE d.status = 'sent'"
        ).fetchall()
    }
    received = set(smtpd.handler.recipients())
    assert sent <= received <= set(emails)
    # Like a crash: at most the message each connection had at the server is not recorded.
    assert len(received - sent) <= connections


async def test_a_run_cancelled_again_while_it_waits_for_its_marks_still_closes_its_queue(  # type: ignore[no-untyped-def]
    db, smtpd, send_settings, now
) -> None:
    """A second cancellation (a caller giving up on the wait) lands in the wait for the
    marks under way, made slow by the server: the queue's connections are closed all the
    same."""
    url = os.environ.get(ENV_STORE_URL)
    if not url:
        pytest.skip("the queue has connections of its own on PostgreSQL only")
    _subscribe(db, 40, now)
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(
            "CREATE FUNCTION slow_sent() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM pg_sleep(0.1); RETURN NEW; END $$"
        )
        admin.execute(
            "CREATE TRIGGER slow_sent BEFORE UPDATE ON deliveries FOR EACH ROW "
            "WHEN (NEW.status = 'sent' AND OLD.status <> 'sent') EXECUTE FUNCTION slow_sent()"
        )
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        sending = asyncio.create_task(_send(db, smtpd, send_settings, now, connections=4))
        await asyncio.wait_for(_until(lambda: len(smtpd.handler.messages) >= 5), 10)
        sending.cancel()
        await asyncio.sleep(0.03)  # the senders have stopped; a mark takes 0.1 s a row
        assert not sending.done()
        sending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sending
        others = (
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        await asyncio.wait_for(_until(lambda: db.conn.execute(others).fetchone() == (0,)), 5)
        for _ in range(20):  # any callback still due runs
            await asyncio.sleep(0.005)
        del sending
        gc.collect()
    finally:
        loop.set_exception_handler(None)
    assert errors == []


async def test_a_cancelled_run_gives_back_its_unstarted_recipients_at_once(  # type: ignore[no-untyped-def]
    db, send_settings, now
) -> None:
    """A caller's timeout cancels a run while a message is at the server: that one is left
    in doubt (for the next run), every other row it held is given back, so the next run
    takes them at once instead of waiting out the lease (smtp.lease, 60 s here)."""
    emails = _subscribe(db, 20, now)
    handler = SmtpRecorder(hold_after=3)  # the fourth message's DATA is not answered
    with run_smtp_server(handler) as server:
        sending = asyncio.create_task(_send(db, server, send_settings, now, connections=1))
        await asyncio.wait_for(_until(lambda: handler.data_attempts >= 4), 10)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(sending, 0.05)
        rows = db.conn.execute(
            "SELECT s.email, d.status, d.lease_owner, d.lease_until FROM deliveries AS d"
            " JOIN subscribers AS s ON s.id = d.subscriber_id"
        ).fetchall()
        assert [r for r in rows if r[3] is not None] == []  # no lease left to wait out
        in_doubt = [r[0] for r in rows if r[1] == "sending" and r[2] is not None]
        assert in_doubt == [emails[3]]  # the one at the server: left to the next run
        sent = {r[0] for r in rows if r[1] == "sent"}
        handler.hold_after = None
        handler.release.set()
        again = await asyncio.wait_for(_send(db, server, send_settings, now, connections=1), 20)
    assert again.sent == 20 - len(sent)
    assert ledger.day_counts(db, day=DAY) == {"sent": 20}
    assert set(handler.recipients()) == set(emails)


class _SilentAtRcpt(Conversation):
    """Never answers one recipient's RCPT: its message's body never goes."""

    def __init__(self, recipient: str) -> None:
        super().__init__()
        self.recipient = recipient
        self.held = 0

    async def rcpt(self, recipient: str) -> bytes | None:
        if recipient == self.recipient:
            self.held += 1
            return None
        return await super().rcpt(recipient)


async def test_a_run_cancelled_before_a_message_s_body_went_uses_none_of_its_attempts(  # type: ignore[no-untyped-def]
    db, send_settings, now
) -> None:
    """A caller's timeout cancels run after run while the message waits for its RCPT
    reply: its body never went, so it is not in doubt. It uses none of the recipient's
    attempts (five such runs made the row failed, the digest never sent) and is owed again
    at once."""
    emails = _subscribe(db, 1, now)
    conversation = _SilentAtRcpt(emails[0])
    async with scripted(conversation) as port:
        for run in range(1, MAX_ATTEMPTS + 1):
            mailer = SmtpMailer(host="127.0.0.1", port=port, tls="none", timeout=5, connections=1)
            sending = asyncio.create_task(
                _send(db, None, send_settings, now, mailer=mailer, connections=1)
            )
            await asyncio.wait_for(_until(lambda: conversation.held >= run), 10)  # noqa: B023
            sending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await sending
            row = db.conn.execute(
                "SELECT status, attempts, lease_owner, lease_until FROM deliveries"
            ).fetchall()
            assert [tuple(r) for r in row] == [("sending", 0, None, None)], run
    assert conversation.accepted == []
    assert ledger.count_owed(db, day=DAY, max_attempts=MAX_ATTEMPTS) == 1


async def test_a_cancelled_run_whose_store_fails_to_give_back_still_raises_cancelled(  # type: ignore[no-untyped-def]
    tmp_path, send_settings, now, caplog
) -> None:
    """The store is locked by another connection when the run is cancelled: giving back
    fails within the store's busy timeout, is logged, and the cancellation still reaches
    the caller (the rows wait for their lease)."""
    db = open_store(tmp_path / "syndicate.db", busy_timeout=0.3)
    try:
        _add_digest(db, DAY)
        _subscribe(db, 20, now)
        handler = SmtpRecorder(hold_after=3)
        with run_smtp_server(handler) as server:
            sending = asyncio.create_task(_send(db, server, send_settings, now, connections=1))
            await asyncio.wait_for(_until(lambda: handler.data_attempts >= 4), 10)
            url = os.environ.get(ENV_STORE_URL)
            if url:
                locker: psycopg.Connection | sqlite3.Connection = psycopg.connect(url)
                locker.execute("SELECT 1 FROM deliveries FOR UPDATE")
            else:
                locker = sqlite3.connect(db.path, isolation_level=None)
                locker.execute("BEGIN IMMEDIATE")
            try:
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(sending, 0.05)
            finally:
                locker.rollback()
                locker.close()
                handler.release.set()
        leased = db.conn.execute(
            "SELECT count(*) FROM deliveries WHERE lease_until IS NOT NULL"
        ).fetchone()[0]
        assert leased > 0
        assert any("cancelled, and could not give back" in m for m in caplog.messages)
    finally:
        db.close()


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.001)


class _LocksAtTheTakenOver(SmtpRecorder):
    """Holds the store's write lock (SQLite) or the taken-over row's lock (PostgreSQL) from
    the taken-over recipient's RCPT until another connection's body has arrived (or `hold`
    seconds): the charge of that row waits for it. The other recipients' RCPT waits for the
    lock, so their bodies can only go while it is held."""

    def __init__(self, path: Path, taken_over: str, hold: float) -> None:
        super().__init__()
        self.path, self.taken_over, self.hold = path, taken_over, hold
        self.locker: Any = None
        self.during = 0  # other recipients' bodies that arrived while the lock was held

    def _lock(self) -> None:
        url = os.environ.get(ENV_STORE_URL)
        if url:
            self.locker = psycopg.connect(url)
            self.locker.execute(
                "SELECT 1 FROM deliveries AS d JOIN subscribers AS s ON s.id = d.subscriber_id"
                " WHERE s.email = %s FOR UPDATE OF d",
                (self.taken_over,),
            )
        else:
            self.locker = sqlite3.connect(self.path, isolation_level=None)
            self.locker.execute("BEGIN IMMEDIATE")

    async def _unlock_later(self) -> None:
        deadline = time.monotonic() + self.hold
        while not self.during and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        self.locker.rollback()
        self.locker.close()
        self.locker = False

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # type: ignore[no-untyped-def]
        if address == self.taken_over:
            self._lock()
            self.unlocking = asyncio.ensure_future(self._unlock_later())
        else:
            for _ in range(2000):
                if self.locker is not None:
                    break
                await asyncio.sleep(0.005)
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        reply = await super().handle_DATA(server, session, envelope)
        if self.locker and self.taken_over not in envelope.rcpt_tos:
            self.during += 1
        return reply


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-by-one"])
async def test_charging_a_taken_over_row_never_holds_the_other_connections_up(  # type: ignore[no-untyped-def]
    tmp_path, send_settings, now, pipelining
) -> None:
    # The charge of a row taken over from a gone worker was a store statement made on the
    # event loop: with the lock busy it stopped every connection of the worker for as long
    # as it waited (up to store.busy_timeout).
    db = open_store(tmp_path / "syndicate.db", busy_timeout=10)
    try:
        _add_digest(db, DAY)
        emails = _subscribe(db, 4, now)
        ledger.enqueue_owed(db, day=DAY, now=now)
        gone = datetime.now(UTC) - timedelta(hours=1)
        claimed = ledger.claim(
            db, day=DAY, owner="gone/1", now=gone, lease=30, limit=1, max_attempts=MAX_ATTEMPTS
        )
        assert [r.subscriber_id for r in claimed] == [1]
        handler = _LocksAtTheTakenOver(tmp_path / "syndicate.db", emails[0], hold=3.0)
        handler.pipelining = pipelining
        with run_smtp_server(handler) as server:
            summary = await _send(db, server, send_settings, now, connections=2)
        assert handler.locker is False  # it was taken, and let go
        assert handler.during >= 1  # before: 0, the loop stood still until the lock was free
        assert sorted(handler.recipients()) == sorted(emails)
        assert summary.sent == 4
        assert ledger.get_delivery(db, day=DAY, subscriber_id=1) == ("sent", 2, None)
    finally:
        db.close()


class _GreylistsAfterTheBody(SmtpRecorder):
    """Defers every message to `address` after its body (a content check that greylists)."""

    def __init__(self, address: str) -> None:
        super().__init__()
        self.address = address
        self.tries: list[int] = []  # the run of each deferred body

    run = 0

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        if self.address in envelope.rcpt_tos:
            with self.lock:
                self.tries.append(self.run)
            return "451 4.7.1 greylisted, try again later"
        return await super().handle_DATA(server, session, envelope)


async def test_a_takeover_and_the_new_holder_s_deferral_count_one_attempt(  # type: ignore[no-untyped-def]
    db, send_settings, now
) -> None:
    # Each run takes the row over from a gone worker (charged at DATA) and is deferred: the
    # charge and the deferral counted one attempt each, and a recipient greylisted every
    # time ran out of its MAX_ATTEMPTS in 3 runs.
    emails = _subscribe(db, 2, now)
    handler = _GreylistsAfterTheBody(emails[0])
    attempts = []
    with run_smtp_server(handler) as server:
        for run in range(MAX_ATTEMPTS):
            handler.run = run
            ledger.enqueue_owed(db, day=DAY, now=now)
            gone = datetime.now(UTC) - timedelta(hours=1)
            claimed = ledger.claim(
                db,
                day=DAY,
                owner=f"gone{run}/1",
                now=gone,
                lease=30,
                limit=1,
                max_attempts=MAX_ATTEMPTS,
            )
            if not claimed:  # out of attempts
                break
            assert [r.subscriber_id for r in claimed] == [1]
            await _send(db, server, send_settings, now, connections=1, retry_window=0.1)
            attempts.append(ledger.get_delivery(db, day=DAY, subscriber_id=1)[1])
    assert attempts == [1, 2, 3, 4, 5]  # before: [2, 4, 5, 5, 5]
    # Tried by each run but the last, whose takeover charge was the last attempt.
    assert sorted(set(handler.tries)) == list(range(MAX_ATTEMPTS - 1))
    assert ledger.get_delivery(db, day=DAY, subscriber_id=1)[0] == "failed"
    assert handler.recipients() == [emails[1]]


async def test_a_row_locked_for_long_is_looked_at_less_and_less_often(  # type: ignore[no-untyped-def]
    db, smtpd, send_settings, now
) -> None:
    """A row the claim passes by (PostgreSQL: SKIP LOCKED) keeps a worker with nothing
    claimed waiting, and it claims again soon, as another worker's claim or renewal holds a
    row for a moment. A lock held for long (a worker stopped mid-transaction, a session left
    open in psql) was looked at every 0.01 s, a claim and a query each time, for as long as
    it was held; now the looks back off to the usual 0.2 s."""
    url = os.environ.get(ENV_STORE_URL)
    if not url:
        pytest.skip("on SQLite claims take turns on the one write lock: none is passed by")
    emails = _subscribe(db, 2, now)
    ledger.enqueue_owed(db, day=DAY, now=now)
    waits: list[float] = []
    with psycopg.connect(url) as other:  # holds subscriber 2's row, as a stalled worker would
        other.execute("SELECT id FROM deliveries WHERE subscriber_id = 2 FOR UPDATE").fetchall()

        class Looking(Stop):
            async def sleep(self, seconds: float) -> None:
                waits.append(seconds)
                if len(waits) == 10:
                    other.rollback()
                await super().sleep(seconds)

        summary = await _send(db, smtpd, send_settings, now, stop=Looking())
    assert summary.sent == 2
    assert sorted(smtpd.handler.recipients()) == sorted(emails)
    assert len(waits) >= 10
    assert waits[0] < 0.05  # a claim's lock is gone in a moment
    assert waits[9] == pytest.approx(0.2), waits

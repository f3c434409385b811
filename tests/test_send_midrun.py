"""Send: what changes under a run's feet (a subscriber leaves while the run goes on)."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from syndicate.config import Settings
from syndicate.digest import RenderedEmail
from syndicate.errors import DeliveryError, TempFailError
from syndicate.mail import MailInfo, MessageTemplate, build_digest_template
from syndicate.send import SendPolicy, SmtpMailer, send_digest
from syndicate.send.deliver import DigestSender, make_run_id, make_worker_id
from syndicate.send.policy import MAX_ATTEMPTS
from syndicate.store import Database, ledger
from syndicate.store.subscribers import add_subscriber, get_by_email, unsubscribe
from tests.plugins.postgres import open_store
from tests.plugins.smtp import SmtpRecorder, run_smtp_server

pytestmark = pytest.mark.usefixtures("store")

DAY = date(2024, 11, 1)
SECRET = b"t" * 32
MARKER = "https://marker.syndicate.invalid/unsubscribe?token=MARKER-1"


def _templates(settings: Settings, now: Any) -> dict[str, MessageTemplate]:
    rendered = RenderedEmail(
        lang="vi", subject="Bản tin", preheader="", html=f'<a href="{MARKER}">x</a>\n', text=MARKER
    )
    info = MailInfo.from_settings(settings)
    return {
        "vi": build_digest_template(
            rendered, info=info, digest_day=DAY, marker=MARKER, now=now, message_key=None
        )
    }


@pytest.fixture
def db(tmp_path: Path):  # type: ignore[no-untyped-def]
    database = open_store(tmp_path / "syndicate.db")
    with database.transaction() as conn:
        conn.execute(
            "INSERT INTO digests (day, created_at, article_ids) VALUES (?, ?, '[]')",
            (DAY.isoformat(), f"{DAY.isoformat()}T06:00:00+00:00"),
        )
    yield database
    database.close()


@pytest.fixture
def send_settings(settings: Settings) -> Settings:
    return dataclasses.replace(
        settings,
        site=dataclasses.replace(settings.site, base_url="https://news.example.org/"),
        mail=dataclasses.replace(settings.mail, from_="News <news@example.org>"),
    )


class _LeavesMidRun(SmtpRecorder):
    """Accepts mail; once `trigger`'s message is in, `leave` unsubscribes (committed) through
    a connection of its own, as `syndicate serve` would."""

    def __init__(self, path: Path, trigger: str, leave: str) -> None:
        super().__init__()
        self.path, self.trigger, self.leave = path, trigger, leave

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        if self.trigger in envelope.rcpt_tos and reply.startswith("250"):
            with open_store(self.path) as other:
                found = get_by_email(other, self.leave)
                assert found is not None
                unsubscribe(other, found.id, now=found.created_at)
        return reply


async def _send(db: Database, port: int, settings: Settings, now: Any, **policy: Any) -> Any:
    return await send_digest(
        db=db,
        mailer=SmtpMailer(host="127.0.0.1", port=port, tls="none", timeout=5, connections=1),
        templates=_templates(settings, now),
        settings=settings,
        secret=SECRET,
        day=DAY,
        now=now,
        policy=SendPolicy(connections=1, retry_delay=0.01, **policy),
    )


async def test_a_deferred_recipient_who_unsubscribes_meanwhile_is_not_mailed(  # type: ignore[no-untyped-def]
    db, tmp_path, send_settings, now
) -> None:
    # reader0 is deferred (451), then unsubscribes while reader1's message goes: the retry,
    # seconds to minutes later (smtp.retry_window), must not mail them.
    for i in range(3):
        add_subscriber(db, f"reader{i}@example.org", now=now)
    handler = _LeavesMidRun(tmp_path / "syndicate.db", "reader1@example.org", "reader0@example.org")
    handler.refuse("reader0@example.org", "451 4.2.0 mailbox busy, try later", times=1)
    with run_smtp_server(handler) as server:
        summary = await _send(db, server.port, send_settings, now, retry_window=5.0)
    assert sorted(handler.recipients()) == ["reader1@example.org", "reader2@example.org"]
    assert (summary.sent, summary.failed) == (2, 0)
    assert ledger.day_counts(db, day=DAY) == {"sent": 2, "sending": 1}
    again = await _send(db, server.port, send_settings, now)  # the next run owes them nothing
    assert (again.sent, again.failed) == (0, 0)


async def test_a_claimed_recipient_who_unsubscribes_is_dropped_at_the_next_lease_renewal(  # type: ignore[no-untyped-def]
    db, tmp_path, send_settings, now
) -> None:
    # All three are claimed at once; reader2 unsubscribes once reader0's message is in, and
    # reader1's takes longer than a renewal (every third of the lease): reader2 is not mailed.
    for i in range(3):
        add_subscriber(db, f"reader{i}@example.org", now=now)
    handler = _LeavesMidRun(tmp_path / "syndicate.db", "reader0@example.org", "reader2@example.org")
    handler.delay = 0.4
    with run_smtp_server(handler) as server:
        summary = await _send(db, server.port, send_settings, now, lease=0.6)
    assert sorted(handler.recipients()) == ["reader0@example.org", "reader1@example.org"]
    assert (summary.sent, summary.failed) == (2, 0)


class _DefersEveryone(SmtpRecorder):
    """A relay that answers every RCPT with `reply` (a 4xx: its own queue is full, say) while
    `deferring` is set, whoever the recipient."""

    deferring = True
    reply = "452 4.3.1 insufficient system storage"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if self.deferring:
            return self.reply
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)


async def test_a_relay_deferring_everyone_uses_none_of_their_attempts(  # type: ignore[no-untyped-def]
    db, send_settings, now
) -> None:
    # Cron runs `send` hourly; the relay defers every recipient for longer than five runs.
    # That is the server's fault, not the recipients': once it accepts mail again, everyone
    # still gets the day's digest (before, each run used one of everyone's 5 attempts, and
    # the sixth run found nobody owed: the day was lost for the whole list).
    emails = [f"reader{i}@example.org" for i in range(12)]
    for email in emails:
        add_subscriber(db, email, now=now)
    handler = _DefersEveryone()
    with run_smtp_server(handler) as server:
        for _run in range(MAX_ATTEMPTS + 1):
            with pytest.raises(
                TempFailError, match="deferred 12 recipients on their first try"
            ) as caught:
                await _send(db, server.port, send_settings, now, retry_window=0.1)
            assert caught.value.exit_code == 75
        assert ledger.count_owed(db, day=DAY, max_attempts=MAX_ATTEMPTS) == 12
        handler.deferring = False
        summary = await _send(db, server.port, send_settings, now)
    assert (summary.sent, summary.failed) == (12, 0)
    assert sorted(handler.recipients()) == sorted(emails)


class _Throttles(SmtpRecorder):
    """A smarthost's hourly rate limit: accepts `budget` messages, then answers every RCPT
    with 421 (as Gmail's and Yahoo's "try again later") until the test gives it more."""

    budget = 0

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if self.budget <= 0:
            return "421 4.7.0 Rate limit reached, try again later"
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        if reply.startswith("250"):
            self.budget -= 1
        return reply


async def test_a_relay_that_takes_a_few_then_defers_the_rest_uses_none_of_their_attempts(  # type: ignore[no-untyped-def]
    db, send_settings, now
) -> None:
    # Hourly cron against a smarthost that takes 5 messages an hour and defers the rest:
    # each run used one of the rest's 5 attempts, so after five runs the 15 left were never
    # owed the day's digest again. Recipients deferred once the server stopped taking mail
    # are given back (exit 75): six such runs, then one with room for the last 10.
    emails = [f"reader{i:02}@example.org" for i in range(40)]
    for email in emails:
        add_subscriber(db, email, now=now)
    handler = _Throttles()
    with run_smtp_server(handler) as server:
        for run in range(1, MAX_ATTEMPTS + 2):
            handler.budget = 5
            with pytest.raises(
                TempFailError, match="stopped taking mail after it accepted 5: it deferred"
            ) as caught:
                await _send(db, server.port, send_settings, now, retry_window=0.1)
            assert caught.value.exit_code == 75
            assert len(handler.recipients()) == 5 * run
            assert db.conn.execute("SELECT max(attempts) FROM deliveries").fetchone()[0] == 1
        handler.budget = 100
        summary = await _send(db, server.port, send_settings, now, retry_window=0.1)
    assert (summary.sent, summary.failed) == (10, 0)
    assert sorted(handler.recipients()) == sorted(emails)  # each once
    assert ledger.day_counts(db, day=DAY) == {"sent": 40}


async def test_a_full_mailbox_deferred_while_others_are_accepted_still_uses_its_attempt(  # type: ignore[no-untyped-def]
    db, send_settings, now
) -> None:
    # The server goes on accepting others after the deferral: it is that mailbox, not the
    # server, and the run uses its attempt (a later run tries it again).
    emails = [f"reader{i:02}@example.org" for i in range(12)]
    for email in emails:
        add_subscriber(db, email, now=now)
    handler = SmtpRecorder()
    handler.refuse("reader00@example.org", "452 4.2.2 mailbox full")
    with run_smtp_server(handler) as server:
        summary = await _send(db, server.port, send_settings, now, retry_window=0.1)
    assert (summary.sent, summary.failed) == (11, 1)
    full = get_by_email(db, emails[0])
    assert full is not None
    row = ledger.get_delivery(db, day=DAY, subscriber_id=full.id)
    assert row is not None
    assert row[:2] == ("failed", 1)


async def test_a_few_recipients_deferred_while_none_is_accepted_still_use_their_attempts(  # type: ignore[no-untyped-def]
    db, send_settings, now
) -> None:
    # Fewer than 10 owed, all deferred: nothing says it is the server (one full mailbox left
    # for a rerun looks the same); each run uses one of their attempts, as before.
    for i in range(3):
        add_subscriber(db, f"reader{i}@example.org", now=now)
    with run_smtp_server(_DefersEveryone()) as server:
        summary = await _send(db, server.port, send_settings, now, retry_window=0.1)
    assert (summary.sent, summary.failed) == (0, 3)
    assert ledger.day_counts(db, day=DAY) == {"failed": 3}


async def test_a_relay_refusing_everyone_for_hours_uses_none_of_their_attempts(  # type: ignore[no-untyped-def]
    db, send_settings, now
) -> None:
    # The relay refuses every recipient (5.7.1 relaying denied: the sending machine's address
    # changed) for more than five hourly runs, each stopped as a setup problem. Once it is
    # fixed, every subscriber still gets the day's digest: the recipients those runs tried
    # first must not have used their 5 runs up on the relay's setup.
    emails = [f"reader{i}@example.org" for i in range(15)]
    for email in emails:
        add_subscriber(db, email, now=now)
    handler = _DefersEveryone()
    handler.reply = "554 5.7.1 Relaying denied"
    with run_smtp_server(handler) as server:
        for _run in range(MAX_ATTEMPTS + 1):
            # The first run stops at ten; each later one meets those again (given back, not
            # counted: they may be refused for real) and then five new: all fifteen.
            first = "10" if _run == 0 else "15"
            with pytest.raises(
                DeliveryError, match=f"refused the first {first} recipients"
            ) as caught:
                await _send(db, server.port, send_settings, now)
            # Given back, none of them failed: the line says so (not "10 failed").
            assert "so far: 0 sent, 0 failed." in caught.value.message
        assert db.conn.execute("SELECT max(bounce_count) FROM subscribers").fetchone()[0] == 0
        handler.deferring = False
        summary = await _send(db, server.port, send_settings, now)
    assert (summary.sent, summary.failed) == (15, 0)
    assert sorted(handler.recipients()) == sorted(emails)


class _RefusesOnceBothConnected(_DefersEveryone):
    """Refuses every RCPT with `reply`, but holds the first ones until two SMTP sessions
    have asked: each of two workers has claimed its batch before either hears a refusal
    (else the first could take and finish every row while the second is still starting)."""

    reply = "550 5.1.1 no such user"

    def __init__(self) -> None:
        super().__init__()
        self.sessions: set[int] = set()

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        self.sessions.add(id(session))
        for _ in range(1000):  # 10 s at most: the test's own timeout tells the rest
            if len(self.sessions) >= 2:
                break
            await asyncio.sleep(0.01)
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)


async def _two_workers(
    db: Database, port: int, settings: Settings, now: Any, **policy: Any
) -> list[Any]:
    """Two workers of one run (`--workers 2`) sending the day's digest side by side, each
    over one connection to `port`; their summaries, or what each raised. 20 s at most."""
    run = make_run_id()
    templates = _templates(settings, now)

    def worker(number: int) -> DigestSender:
        return DigestSender(
            db=db,
            mailer=SmtpMailer(host="127.0.0.1", port=port, tls="none", timeout=5, connections=1),
            settings=settings,
            secret=SECRET,
            policy=SendPolicy(connections=1, retry_window=0.1, retry_delay=0.01, **policy),
            worker=make_worker_id(run, number),
        )

    sends = (worker(n).send(templates=templates, day=DAY, now=now) for n in (1, 2))
    return await asyncio.wait_for(asyncio.gather(*sends, return_exceptions=True), timeout=20)


async def test_two_workers_refused_before_any_accept_both_finish(  # type: ignore[no-untyped-def]
    db, send_settings, now
) -> None:
    # Two workers of one run (`--workers 2`), each holding a batch that the server refuses
    # before it accepted anything: each must finish (a row waiting for its refusal to be
    # confirmed must not look like another worker's live lease to the other, or each waits for
    # the other for ever). The refusals are real here: every address bounces.
    emails = [f"reader{i}@example.org" for i in range(24)]
    for email in emails:
        add_subscriber(db, email, now=now)
    with run_smtp_server(_RefusesOnceBothConnected()) as server:
        summaries = await _two_workers(db, server.port, send_settings, now)
    assert not [s for s in summaries if isinstance(s, BaseException)], summaries
    assert all(s.failed for s in summaries)  # each worker held some of them
    assert sum(s.failed for s in summaries) == 24
    assert ledger.day_counts(db, day=DAY) == {"failed": 24}


async def test_two_workers_with_everyone_deferred_both_finish(  # type: ignore[no-untyped-def]
    db, send_settings, now
) -> None:
    # Two workers of one run (`--workers 2`) against a relay deferring everyone: each ends up
    # with deferred recipients past its retry window, leased while it waits. Neither may wait
    # for the other's leases for ever (each took the other's deferred rows for live work).
    emails = [f"reader{i}@example.org" for i in range(32)]
    for email in emails:
        add_subscriber(db, email, now=now)
    with run_smtp_server(_DefersEveryone()) as server:
        # refuse_all_after=1: whichever worker defers anyone stops as the server
        # deferring everyone, however the claims split the list between them.
        results = await _two_workers(
            db, server.port, send_settings, now, lease=3.0, refuse_all_after=1
        )
    assert any(isinstance(r, TempFailError) for r in results)
    assert [r for r in results if isinstance(r, BaseException)] == [
        r for r in results if isinstance(r, TempFailError)
    ]
    # Nothing is left leased, and none of them used an attempt on the relay's fault.
    assert ledger.day_counts(db, day=DAY) == {"sending": 32}
    assert ledger.count_owed(db, day=DAY, max_attempts=MAX_ATTEMPTS) == 32
    held = db.conn.execute("SELECT count(*) FROM deliveries WHERE lease_owner IS NOT NULL")
    assert held.fetchone()[0] == 0


@pytest.mark.sqlite_only  # counts the statements through SQLite's trace callback
async def test_a_retry_checks_its_own_recipient_not_every_row_the_worker_holds(  # type: ignore[no-untyped-def]
    db, send_settings, now
) -> None:
    # Greylisting defers every recipient once. Each retry asks whether its recipient is still
    # this worker's and still confirmed; renewing every row the worker holds for each retry
    # made the retries cost N lease renewals of up to N rows each (100,000 deferred: hours).
    emails = [f"reader{i}@example.org" for i in range(40)]
    for email in emails:
        add_subscriber(db, email, now=now)
    handler = SmtpRecorder()
    for email in emails:
        handler.refuse(email, "451 4.7.1 greylisted, try again later", times=1)
    renewals: list[str] = []
    db.conn.set_trace_callback(
        lambda sql: renewals.append(sql) if "SET lease_until = " in sql else None
    )
    try:
        with run_smtp_server(handler) as server:
            summary = await _send(db, server.port, send_settings, now, retry_window=5.0)
    finally:
        db.conn.set_trace_callback(None)
    assert (summary.sent, summary.failed) == (40, 0)
    assert len(renewals) < 5, len(renewals)


async def test_ten_real_refusals_first_in_the_list_do_not_stop_every_later_run(  # type: ignore[no-untyped-def]
    db, send_settings, now
) -> None:
    # The first ten owed (subscribers of one company, imported together) are refused for
    # real (554 5.7.1: that company's server blocks the sender); the rest of the list is
    # fine. A run stops at those ten as the relay refusing everyone and gives them back; the
    # next run, hourly, must not meet the same ten first and stop again, for ever, with
    # nobody else ever mailed the day's digest.
    emails = [f"reader{i}@example.org" for i in range(15)]
    for email in emails:
        add_subscriber(db, email, now=now)
    handler = SmtpRecorder()
    for email in emails[:10]:
        handler.refuse(email, "554 5.7.1 rejected by recipient policy")
    stops = 0
    with run_smtp_server(handler) as server:
        for _run in range(MAX_ATTEMPTS + 2):
            try:
                await _send(db, server.port, send_settings, now)
            except DeliveryError:
                stops += 1
    assert sorted(handler.recipients()) == sorted(emails[10:]), stops
    assert stops == 1  # the second run met them again, mailed the others, and so bounced them
    assert ledger.day_counts(db, day=DAY) == {"sent": 5, "failed": 10}

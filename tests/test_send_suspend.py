"""Send: a worker whose machine is suspended (laptop lid shut, VM paused) past its lease.

The worker runs in a thread of its own with its own event loop, so the test can freeze
it whole, as a suspend does: its lease clock (and its event loop's clock) stops while
the wall clock goes on, as CLOCK_MONOTONIC does through a suspend. Another worker, of
another run (another machine), takes its rows over once the lease has run out. The SMTP
servers (one per worker) and the store are real.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from syndicate.send import SendPolicy, SmtpMailer
from syndicate.send.deliver import DigestSender, lease_clock
from syndicate.store.subscribers import add_subscriber
from tests.plugins.postgres import open_store
from tests.plugins.smtp import TimedRecorder, run_smtp_server
from tests.test_send_midrun import DAY, SECRET, _templates

pytestmark = pytest.mark.usefixtures("store")

LEASE = 1.0


class _SuspendableClock:
    """A lease clock that stops counting while its thread is frozen (CLOCK_MONOTONIC through
    a suspend). `suspend()` freezes the worker's thread at its next look at the clock (its
    event loop looks at every turn) until `resume()`."""

    def __init__(self) -> None:
        self.lost = 0.0  # seconds of suspend not counted
        self.asked = threading.Event()
        self.frozen = threading.Event()
        self.woken = threading.Event()

    def __call__(self) -> float:
        if self.asked.is_set() and not self.woken.is_set():
            began = time.monotonic()
            self.frozen.set()
            self.woken.wait()
            self.lost += time.monotonic() - began
        return time.monotonic() - self.lost

    def suspend(self) -> None:
        self.asked.set()
        assert self.frozen.wait(10), "the worker never looked at its clock"

    def resume(self) -> None:
        self.woken.set()


class _Loop(asyncio.SelectorEventLoop):
    """An event loop timed by the suspendable clock (a suspended machine's timers wait)."""

    def __init__(self, clock: _SuspendableClock) -> None:
        super().__init__()
        self.clock = clock

    def time(self) -> float:
        return self.clock()


@pytest.fixture
def send_settings(settings: Any) -> Any:
    return dataclasses.replace(
        settings,
        site=dataclasses.replace(settings.site, base_url="https://news.example.org/"),
        mail=dataclasses.replace(settings.mail, from_="News <news@example.org>"),
    )


def _sender(db: Any, port: int, settings: Any, **options: Any) -> DigestSender:
    return DigestSender(
        db=db,
        mailer=SmtpMailer(host="127.0.0.1", port=port, tls="none", timeout=5, connections=1),
        settings=settings,
        secret=SECRET,
        policy=SendPolicy(connections=1, lease=LEASE, retry_delay=0.01),
        **options,
    )


def test_the_lease_clock_counts_time_the_machine_spent_suspended() -> None:
    # CLOCK_MONOTONIC stands still through a suspend; CLOCK_BOOTTIME counts it.
    assert inspect.signature(DigestSender).parameters["monotonic"].default is lease_clock
    if hasattr(time, "CLOCK_BOOTTIME"):
        assert abs(lease_clock() - time.clock_gettime(time.CLOCK_BOOTTIME)) < 0.5


def test_a_worker_suspended_past_its_lease_sends_nothing_another_took_over(
    tmp_path: Path,
    send_settings: Any,
    now: Any,
) -> None:
    count = 40
    with open_store(tmp_path / "syndicate.db") as db:
        with db.transaction() as conn:
            conn.execute(
                "INSERT INTO digests (day, created_at, article_ids) VALUES (?, ?, '[]')",
                (DAY.isoformat(), f"{DAY.isoformat()}T06:00:00+00:00"),
            )
        for i in range(count):
            add_subscriber(db, f"reader{i}@example.org", now=now)
    slept, other = TimedRecorder(), TimedRecorder()
    slept.delay = other.delay = 0.02
    clock = _SuspendableClock()
    outcome: list[Any] = []

    def sleeper(port: int) -> None:
        loop = _Loop(clock)
        try:
            with open_store(tmp_path / "syndicate.db") as db:
                sender = _sender(db, port, send_settings, monotonic=clock)
                send = sender.send(templates=_templates(send_settings, now), day=DAY, now=now)
                outcome.append(loop.run_until_complete(send))
        except BaseException as exc:
            outcome.append(exc)
        finally:
            loop.close()

    with run_smtp_server(slept) as one, run_smtp_server(other) as two:
        thread = threading.Thread(target=sleeper, args=(one.port,))
        thread.start()
        try:
            assert slept.wait_for(5, timeout=30), "the first worker never sent"
            clock.suspend()
            suspended_at = time.monotonic()
            # The other machine sends the rest and, once the lease has run out, what the
            # suspended one held.
            with open_store(tmp_path / "syndicate.db") as db:
                awake = _sender(db, two.port, send_settings)
                summary = asyncio.run(
                    awake.send(templates=_templates(send_settings, now), day=DAY, now=now)
                )
            assert time.monotonic() - suspended_at > LEASE
            assert summary.sent > 0
        finally:
            clock.resume()
            thread.join(60)
    assert not thread.is_alive()
    assert not isinstance(outcome[0], BaseException), outcome
    got = Counter(r for _at, r in [*slept.started, *other.started])
    assert set(got) == {f"reader{i}@example.org" for i in range(count)}
    # A second copy only of the message the suspended worker had begun before it slept (in
    # flight); none it began after it woke up: those rows were no longer its own.
    twice = [r for r, n in got.items() if n > 1]
    assert len(twice) <= 1, twice
    after = [r for at, r in slept.started if at > suspended_at]
    assert set(after) <= set(twice), (after, twice)

"""`syndicate send --workers N`: real worker processes sharing the ledger, a real aiosmtpd
that records every message, and real signals (SIGKILL, SIGSTOP/SIGCONT, SIGINT).

Short leases (`smtp.lease = 1`) keep the takeovers quick; the waits are on the sink's
counts, never fixed sleeps.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from syndicate.send import open_send_lock
from syndicate.store.subscribers import add_subscriber
from tests.plugins.postgres import ENV_STORE_URL, open_store
from tests.plugins.sendproject import write_send_project
from tests.plugins.smtp import SmtpRecorder, SmtpServer, TimedRecorder, run_smtp_server

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("store")]

CONNECTIONS = 2
FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
SUMMARY = re.compile(r"Digest \S+: sent (\d+), failed (\d+), skipped (\d+) in ")


def _project(folder: Path, server: SmtpServer) -> None:
    write_send_project(folder, port=server.port, connections=CONNECTIONS, lease=1)


def _subscribe(folder: Path, start: int, count: int) -> list[str]:
    emails = [f"reader{i}@example.org" for i in range(start, start + count)]
    yesterday = datetime.now(UTC) - timedelta(days=1)  # confirmed before today's digest
    with open_store(folder / "syndicate.db") as db:
        for email in emails:
            add_subscriber(db, email, now=yesterday)
    return emails


def _start(
    folder: Path, *args: str, clock_file: Path | None = None, pythonpath: Path | None = None
) -> subprocess.Popen[str]:
    """`send --workers 2` in `folder`; with `clock_file`, under libfaketime, whose offset the
    test changes while it runs by writing the file (the monotonic clock stays real); with
    `pythonpath`, that folder's modules first on every process's path (a sitecustomize)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNDICATE_")}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    if os.environ.get(ENV_STORE_URL):  # the test's PostgreSQL store
        env[ENV_STORE_URL] = os.environ[ENV_STORE_URL]
    if clock_file is not None:
        env |= {
            "LD_PRELOAD": FAKETIME_LIB,
            "FAKETIME_TIMESTAMP_FILE": str(clock_file),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }
    return subprocess.Popen(
        [sys.executable, "-m", "syndicate", "send", "--workers", "2", *args],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _workers(process: subprocess.Popen[str]) -> list[int]:
    """The worker processes of a running `send` (its children)."""
    path = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    try:
        return [int(pid) for pid in path.read_text().split()]
    except FileNotFoundError:  # it has ended
        return []


def _wait_for_workers(process: subprocess.Popen[str], count: int = 2) -> list[int]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = _workers(process)
        if len(found) >= count or process.poll() is not None:
            return found
        time.sleep(0.01)
    raise AssertionError("the workers never started")


def _lock_is_free(folder: Path) -> bool:
    with open_send_lock(folder / "syndicate.db"):
        return True


def _finish(folder: Path) -> str:
    """Run `send` again in `folder` to its end, as the next cron run would; its output."""
    final = _start(folder)
    out, err = final.communicate(timeout=60)
    assert final.returncode == 0, err
    return out


def _both_sending(
    folder: Path, server: SmtpServer
) -> tuple[list[str], subprocess.Popen[str], list[int]]:
    """`send --workers 2` to 100 subscribers, once both workers have sent some, held there
    (`_hold`: the test sets `server.handler.release` once the run may go on): the
    subscribers, the run and its workers' pids. The lease outlives a test's steps: no
    takeover meanwhile."""
    write_send_project(folder, port=server.port, connections=CONNECTIONS, lease=5)
    emails = _subscribe(folder, 0, 100)
    _hold(server.handler)
    process = _start(folder)
    workers = _wait_for_workers(process)
    _wait_until_both_send(folder, server.handler, workers)
    return emails, process, workers


def _sitecustomize(folder: Path, source: str) -> Path:
    """A folder to put on a send's PYTHONPATH holding `source` as its sitecustomize (a
    test-only hook its Python processes run as they start)."""
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(source, encoding="utf-8")
    return folder


@contextmanager
def _hooked_send(
    folder: Path, hook: str, *, subscribers: int, delay: float = 0.0
) -> Iterator[tuple[subprocess.Popen[str], str, list[str], SmtpServer]]:
    """`send --workers 2` in `folder` to `subscribers` confirmed ones, every process of it
    running `hook` as its sitecustomize, to its end: the run, its stderr, the subscribers
    and the server, which stays up inside the block (for `_finish`)."""
    path = _sitecustomize(folder / "hook", hook)
    with run_smtp_server() as server:
        server.handler.delay = delay
        _project(folder, server)
        emails = _subscribe(folder, 0, subscribers)
        process = _start(folder, pythonpath=path)
        _out, err = process.communicate(timeout=60)
        yield process, err, emails, server


_SENT_BY_OWNER = "SELECT lease_owner, count(*) FROM deliveries WHERE status = 'sent' GROUP BY 1"


def _owners(folder: Path) -> Counter[str]:
    with open_store(folder / "syndicate.db") as db:
        rows = db.conn.execute(_SENT_BY_OWNER).fetchall()
    return Counter({str(owner): int(n) for owner, n in rows})


def _hold(handler: SmtpRecorder) -> None:
    """Have `handler` hold every message body unanswered (`_wait_until_both_send` lets
    through the first ones, and the test sets `handler.release` once the run may go on)."""
    handler.holding = True


def _wait_until_both_send(folder: Path, handler: SmtpRecorder, workers: list[int]) -> None:
    """Wait until each of the two `workers` has a message body held at the sink (`_hold`),
    let those through, and wait until each worker has recorded its message as sent. Every
    later body stays held until the test sets `handler.release`: the run stays mid-send,
    both workers with rows left, whatever the machine's load (waiting with the messages
    flowing, a worker that started late found none left: the other had sent all 100, 40 a
    second, before it claimed any).
    """
    assert handler.let_through_once_all_send(workers), "the two workers never both sent"
    # Each has its 250 now, and commits its mark at once. One store for the whole wait:
    # opening one every 10 ms (a new PostgreSQL backend each time) cost more CPU than the
    # workers it waits for.
    deadline = time.monotonic() + 30
    with open_store(folder / "syndicate.db") as db:
        while len(db.conn.execute(_SENT_BY_OWNER).fetchall()) < 2:
            assert time.monotonic() < deadline, "the two workers never both sent"
            time.sleep(0.01)


@pytest.mark.slow(seconds=6)
def test_two_workers_deliver_exactly_once_to_every_subscriber(tmp_path: Path) -> None:
    with run_smtp_server() as server:
        server.handler.delay = 0.01
        _project(tmp_path, server)
        emails = _subscribe(tmp_path, 0, 120)
        process = _start(tmp_path)
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        assert SUMMARY.search(out) is not None, out
        assert SUMMARY.findall(out) == [("120", "0", "0")]
        got = Counter(server.handler.recipients())
        assert set(got) == set(emails)
        assert max(got.values()) == 1
        owners = _owners(tmp_path)
        assert sum(owners.values()) == 120
        assert all(owner.endswith(("/1", "/2")) for owner in owners)


# A module named as one the worker imports first (`signal`), left in the folder `send` is
# started from: it notes that it ran, then hands over the standard library's own.
_PLANTED = """
import importlib.util, pathlib, sys, sysconfig
pathlib.Path(__file__).with_name("it-ran").touch()
spec = importlib.util.spec_from_file_location(
    "signal", pathlib.Path(sysconfig.get_path("stdlib"), "signal.py")
)
real = importlib.util.module_from_spec(spec)
sys.modules["signal"] = real
spec.loader.exec_module(real)
"""


def test_workers_run_no_module_from_the_folder_send_was_started_in(tmp_path: Path) -> None:
    """Another user who may write in the folder `send` is started from (a shared one, /tmp)
    must not get code run in the workers, which are handed the signing secret: a worker's
    Python put that folder first on its path (`python -c`), so a `signal.py` there ran."""
    project, shared = tmp_path / "project", tmp_path / "shared"
    shared.mkdir()
    (shared / "signal.py").write_text(_PLANTED, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNDICATE_")}
    if os.environ.get(ENV_STORE_URL):  # the test's PostgreSQL store
        env[ENV_STORE_URL] = os.environ[ENV_STORE_URL]
    with run_smtp_server() as server:
        _project(project, server)
        emails = _subscribe(project, 0, 4)
        config = str(project / "syndicate.toml")
        # -P: the parent (the `syndicate` script's part) keeps its own path clean, as the
        # installed script does; only what it starts is on trial.
        done = subprocess.run(
            [sys.executable, "-P", "-m", "syndicate", "--config", config, "send", "--workers", "2"],
            cwd=shared,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sorted(server.handler.recipients()) == sorted(emails)
    assert sorted(path.name for path in shared.iterdir()) == ["signal.py"]
    assert done.returncode == 0, done.stderr
    assert SUMMARY.findall(done.stdout) == [("4", "0", "0")]


def test_workers_run_the_syndicate_the_parent_runs(tmp_path: Path) -> None:
    """`python -m syndicate` run from a checkout, with another syndicate installed: the
    workers looked for the package last (-P, the checkout appended to their path), so
    they ran the installed one, another version than their parent's. The installed one
    is stood for by a package earlier on the path (PYTHONPATH) that notes it ran."""
    root = Path(__file__).resolve().parent.parent
    checkout, other, project = tmp_path / "checkout", tmp_path / "other", tmp_path / "project"
    for name in ("syndicate", "templates"):
        shutil.copytree(root / name, checkout / name)
    (other / "syndicate").mkdir(parents=True)
    (other / "syndicate" / "__init__.py").write_text(
        f"open({str(tmp_path / 'other-ran')!r}, 'w').close()\n"
        "raise ImportError('the installed syndicate, not the parent's')\n",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNDICATE_")}
    if os.environ.get(ENV_STORE_URL):  # the test's PostgreSQL store
        env[ENV_STORE_URL] = os.environ[ENV_STORE_URL]
    env["PYTHONPATH"] = str(other)
    with run_smtp_server() as server:
        _project(project, server)
        emails = _subscribe(project, 0, 4)
        config = str(project / "syndicate.toml")
        done = subprocess.run(
            [sys.executable, "-m", "syndicate", "--config", config, "send", "--workers", "2"],
            cwd=checkout,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sorted(server.handler.recipients()) == sorted(emails)
    assert not (tmp_path / "other-ran").exists()
    assert done.returncode == 0, done.stderr
    assert SUMMARY.findall(done.stdout) == [("4", "0", "0")]


@pytest.mark.slow(seconds=18)
def test_a_clock_stepped_an_hour_ahead_mid_run_leaves_the_summarys_time_right(
    tmp_path: Path,
) -> None:
    # NTP steps the clock an hour ahead while two workers send: the summary said
    # "sent 300 ... in 3602.4 s (0.1 messages/s)" for a run of 3 s.
    if not Path(FAKETIME_LIB).exists():
        pytest.skip("libfaketime is not installed (Debian package faketime)")
    handler = TimedRecorder()
    count = 100  # the step comes mid-run by construction (`_hold`), not by a long run
    offset = tmp_path / "faketime.rc"
    offset.write_text("+0\n", encoding="ascii")
    with run_smtp_server(handler) as server:
        handler.delay = 0.02
        _hold(handler)
        _project(tmp_path, server)
        emails = _subscribe(tmp_path, 0, count)
        process = _start(tmp_path, clock_file=offset)
        _wait_until_both_send(tmp_path, handler, _wait_for_workers(process))
        offset.write_text("+1h\n", encoding="ascii")
        handler.release.set()
        out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    got = Counter(r for _at, r in handler.started)
    assert got == Counter(emails)  # each once
    seconds = re.search(r" in (\d+\.\d) s ", out)
    assert seconds is not None, out
    assert float(seconds[1]) < 600, out


def test_a_worker_killed_at_random_points_loses_nobody(tmp_path: Path) -> None:
    rng = random.Random(13)
    kills = 0
    with run_smtp_server() as server:
        server.handler.delay = 0.01
        _project(tmp_path, server)
        emails: list[str] = []
        for round_ in range(3):
            emails += _subscribe(tmp_path, len(emails), 80)  # owed today's digest too
            before = len(server.handler.messages)
            process = _start(tmp_path)
            workers = _wait_for_workers(process)
            server.handler.wait_for(before + rng.randint(1, 40), timeout=60)
            try:
                os.kill(rng.choice(workers), signal.SIGKILL)
            except ProcessLookupError:  # that worker had finished already
                pass
            else:
                kills += 1
            _out, err = process.communicate(timeout=60)
            assert process.returncode in (0, 1), err
            if process.returncode == 1:
                assert "was killed by SIGKILL before it finished" in err, err
            assert _lock_is_free(tmp_path), round_
        out = _finish(tmp_path)
    assert kills >= 2
    # The last run's summary counts its workers' ledger rows; who was sent before is skipped.
    sent, failed, skipped = (int(n) for n in SUMMARY.findall(out)[0])
    assert (failed, sent + skipped) == (0, len(emails))
    got = Counter(server.handler.recipients())
    assert set(got) == set(emails)  # nobody lost
    duplicates = sum(n - 1 for n in got.values())
    assert duplicates <= CONNECTIONS * kills, got.most_common(5)


@pytest.mark.slow(seconds=15)
def test_a_worker_stalled_past_its_lease_sends_nothing_another_took_over(
    tmp_path: Path,
) -> None:
    handler = TimedRecorder()
    with run_smtp_server(handler) as server:
        handler.delay = 0.02
        _hold(handler)
        _project(tmp_path, server)
        emails = _subscribe(tmp_path, 0, 150)
        process = _start(tmp_path)
        workers = _wait_for_workers(process)
        _wait_until_both_send(tmp_path, handler, workers)  # each holds a batch now
        stalled = workers[0]
        os.kill(stalled, signal.SIGSTOP)
        stopped_at = time.monotonic()
        handler.release.set()
        try:
            # The other worker sends its own share, then, once the stalled one's lease has
            # run out, the rows the stalled one held.
            with handler.lock:
                everyone = handler.lock.wait_for(
                    lambda: len({r for m in handler.messages for r in m.recipients}) >= 150, 30
                )
            assert everyone
        finally:
            os.kill(stalled, signal.SIGCONT)
        _out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
    got = Counter(r for _at, r in handler.started)
    assert set(got) == set(emails)
    # A second copy only of a message the stalled worker had begun before it stopped (in
    # flight); never one it began after it woke up: those rows were no longer its own.
    grace = 0.2  # its last commands may reach the sink a moment after the signal was sent
    twice = [r for r, n in got.items() if n > 1]
    assert len(twice) <= CONNECTIONS, twice
    for recipient in twice:
        starts = sorted(at for at, r in handler.started if r == recipient)
        assert starts[0] < stopped_at + grace, (recipient, starts, stopped_at)
    assert len(_owners(tmp_path)) == 2


@pytest.mark.sqlite_only  # on PostgreSQL a second run shares the queue (no lock)
@pytest.mark.slow(seconds=12)
def test_sigint_stops_every_worker_gracefully_and_a_second_send_exits_75(
    tmp_path: Path,
) -> None:
    with run_smtp_server() as server:
        server.handler.delay = 0.05
        server.handler.hold_after = 5  # the run stays mid-send until the SIGINT is sent
        _project(tmp_path, server)
        emails = _subscribe(tmp_path, 0, 100)
        process = _start(tmp_path)
        _wait_for_workers(process)
        server.handler.wait_for(5, timeout=60)
        other = _start(tmp_path)  # a second, separate run while this one sends
        _out, err = other.communicate(timeout=60)
        assert other.returncode == 75, err
        assert "another `syndicate send` is running" in err
        process.send_signal(signal.SIGINT)
        server.handler.release.set()  # the rest would take a second: the signal comes first
        _out, err = process.communicate(timeout=30)
        assert process.returncode == 130, err
        assert (
            "warning: stopping (SIGINT): no new messages; waiting for the 2 workers' messages "
            "in flight (Ctrl-C again to quit at once).\n"
        ) in err
        sent = len(server.handler.messages)
        assert err.splitlines()[-1] == (
            f"interrupted: {sent:,} sent, 0 in flight; run `syndicate send` again to finish."
        )
        assert _lock_is_free(tmp_path)
        _finish(tmp_path)
    got = Counter(server.handler.recipients())
    assert set(got) == set(emails)
    assert max(got.values()) == 1


def _send(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNDICATE_")}
    if os.environ.get(ENV_STORE_URL):  # the test's PostgreSQL store
        env[ENV_STORE_URL] = os.environ[ENV_STORE_URL]
    return subprocess.run(
        [sys.executable, "-m", "syndicate", "send", *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _gated_project(folder: Path, server: SmtpServer, *, connections: int) -> None:
    """Short retries (a refused connection is tried 3 times within about 3 s)."""
    write_send_project(folder, port=server.port, connections=connections, lease=1)
    with (folder / "syndicate.toml").open("a", encoding="utf-8") as config:
        config.write("retry_window = 8\n")


@pytest.mark.slow(seconds=8)
def test_workers_the_server_takes_fewer_connections_from_exit_0_when_everyone_got_it(
    tmp_path: Path,
) -> None:
    # The server takes one session at a time: one worker sends, the other is refused (421)
    # on every try and stops. The first sent everyone, the summary and ledger say so: the
    # run exited 75 ("the server stayed unavailable") all the same.
    with run_smtp_server(sessions=1) as server:
        server.handler.delay = 0.02  # both workers claim a batch before the first is done
        _gated_project(tmp_path, server, connections=1)
        emails = _subscribe(tmp_path, 0, 60)
        done = _send(tmp_path, "--workers", "2")
        refused = server.refused
    assert refused, "the test meant a worker to be refused"
    assert done.returncode == 0, done.stderr
    assert SUMMARY.findall(done.stdout) == [("60", "0", "0")]
    assert Counter(server.handler.recipients()) == Counter(emails)
    # One clear line: before, it repeated the worker's own error ("... The server stayed
    # unavailable. Digest ... so far: 0 sent, 0 failed") beside "the others sent everyone".
    (line,) = [x for x in done.stderr.splitlines() if "send worker" in x]
    assert re.fullmatch(
        r"warning: send worker [12] stopped: smtp 127\.0\.0\.1:\d+: [^;]* \(after 3 tries\); "
        r"the other workers sent everyone owed\. Lower --workers or smtp\.connections to what "
        r"the server takes\.",
        line,
    ), line
    assert "Traceback" not in done.stderr


# The one line of a run whose killed worker's recipients the other workers sent.
_KILLED_THE_OTHERS_SENT_EVERYONE = (
    r"warning: send worker [12] \(pid \d+\) was killed by SIGKILL before it finished; the "
    r"other workers sent everyone owed \(its messages in flight may have gone twice\)\."
)


@pytest.mark.slow(seconds=10)
def test_a_killed_worker_whose_recipients_the_others_sent_exits_0_with_one_warning(
    tmp_path: Path,
) -> None:
    # The other worker took the killed one's rows over and sent everyone; the ledger owed
    # nobody, and the run exited 1 all the same.
    with run_smtp_server() as server:
        server.handler.delay = 0.01
        server.handler.hold_after = 5  # mid-send until the kill is done
        _project(tmp_path, server)
        emails = _subscribe(tmp_path, 0, 40)
        process = _start(tmp_path)
        workers = _wait_for_workers(process)
        assert server.handler.wait_for(5, timeout=60)
        os.kill(workers[-1], signal.SIGKILL)
        server.handler.release.set()
        out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    (line,) = [x for x in err.splitlines() if "send worker" in x]
    assert re.fullmatch(_KILLED_THE_OTHERS_SENT_EVERYONE, line), err
    assert "rror" not in err, err
    assert set(server.handler.recipients()) == set(emails)
    assert SUMMARY.findall(out)[0][1] == "0"  # none failed


@pytest.mark.slow(seconds=6)
def test_workers_a_server_taking_no_connection_exits_75(tmp_path: Path) -> None:
    with run_smtp_server(sessions=0) as server:
        _gated_project(tmp_path, server, connections=1)
        _subscribe(tmp_path, 0, 10)
        done = _send(tmp_path, "--workers", "2")
    assert done.returncode == 75, done.stderr
    assert "The server stayed unavailable" in done.stderr
    assert server.handler.recipients() == []


@pytest.mark.slow(seconds=4)
def test_one_process_the_server_takes_fewer_connections_from_exit_0(tmp_path: Path) -> None:
    # The same outcome from one process with two connections, one of them always refused.
    with run_smtp_server(sessions=1) as server:
        server.handler.delay = 0.02
        _gated_project(tmp_path, server, connections=2)
        emails = _subscribe(tmp_path, 0, 40)
        done = _send(tmp_path)
        refused = server.refused
    assert refused, "the test meant a connection to be refused"
    assert done.returncode == 0, done.stderr
    assert SUMMARY.findall(done.stdout) == [("40", "0", "0")]
    assert Counter(server.handler.recipients()) == Counter(emails)


def _day_sent(folder: Path) -> int:
    """The ledger's `sent` rows (one digest in these tests: today's)."""
    with open_store(folder / "syndicate.db") as db:
        return int(
            db.conn.execute("SELECT count(*) FROM deliveries WHERE status = 'sent'").fetchone()[0]
        )


@pytest.mark.slow(seconds=8)
def test_a_killed_workers_unused_share_of_the_limit_goes_to_the_others(tmp_path: Path) -> None:
    # --limit 60 over two workers is 30 each. One killed after a few messages left the rest
    # of its 30 unused: the other stopped at its own 30, and the run sent fewer than 60 (and
    # exited 1, someone owed within the limit).
    with run_smtp_server() as server:
        server.handler.delay = 0.05
        _hold(server.handler)
        _project(tmp_path, server)
        emails = _subscribe(tmp_path, 0, 100)
        process = _start(tmp_path, "--limit", "60")
        workers = _wait_for_workers(process)
        _wait_until_both_send(tmp_path, server.handler, workers)
        os.kill(workers[0], signal.SIGKILL)
        server.handler.release.set()
        out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert re.search(
        rf"^warning: send worker [12] \(pid {workers[0]}\) was killed by SIGKILL before it "
        r"finished; the other workers sent everyone owed",
        err,
        re.MULTILINE,
    ), err
    assert _day_sent(tmp_path) == 60
    assert SUMMARY.findall(out) == [("60", "0", "0")], out
    got = Counter(server.handler.recipients())
    # The killed worker's messages in flight (at most its connections) may have reached the
    # server unrecorded: beside the 60 recorded, or sent again to the same recipients.
    assert 60 <= len(got) <= 60 + CONNECTIONS, got
    assert set(got) <= set(emails)
    assert sum(got.values()) - 60 <= CONNECTIONS, got


# Test only, on PYTHONPATH as sitecustomize: a worker that parks deferred rows (past the
# retry window) is killed (SIGKILL) as soon as they are parked, and says so (file `parked`).
_KILLED_ONCE_PARKED = """
import os
import signal
import sys

if sys.argv[:1] == ["-c"]:
    import syndicate.store.ledger as ledger

    real = ledger.park

    def park_then_die(db, *, day, owner, subscriber_ids):
        real(db, day=day, owner=owner, subscriber_ids=subscriber_ids)
        if subscriber_ids:
            open("parked", "w").close()
            os.kill(os.getpid(), signal.SIGKILL)

    ledger.park = park_then_die
"""


class _DeferredUntilParked(SmtpRecorder):
    """Defers `address` at RCPT (a 450) until the file `flag` exists."""

    def __init__(self, address: str, flag: Path) -> None:
        super().__init__()
        self.address, self.flag = address, flag

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # type: ignore[no-untyped-def]
        if address == self.address and not self.flag.exists():
            with self.lock:
                self.rcpt_log.append((address, "450"))
            return "450 4.2.0 mailbox busy, try later"
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)


@pytest.mark.slow(seconds=8)
def test_a_later_round_of_the_limit_sends_what_a_killed_worker_had_parked(
    tmp_path: Path,
) -> None:
    # --limit 40 to 40 subscribers: the worker holding the one deferred recipient parks it
    # (past the retry window) and is killed. The run's next round, sharing what is left of
    # the limit, could not claim the parked row (kept from every worker of the run): it sent
    # nothing, and the run exited 1 with the recipient owed within the limit.
    hook = _sitecustomize(tmp_path / "hook", _KILLED_ONCE_PARKED)
    emails = [f"reader{i}@example.org" for i in range(40)]
    deferred = emails[7]
    handler = _DeferredUntilParked(deferred, tmp_path / "parked")
    with run_smtp_server(handler) as server:
        _project(tmp_path, server)
        with (tmp_path / "syndicate.toml").open("a", encoding="utf-8") as config:
            config.write("retry_window = 1\n")
        assert _subscribe(tmp_path, 0, 40) == emails
        process = _start(tmp_path, "--limit", "40", pythonpath=hook)
        out, err = process.communicate(timeout=60)
    assert (tmp_path / "parked").exists(), err  # a worker did park the row, and was killed
    assert process.returncode == 0, err
    (line,) = [x for x in err.splitlines() if "send worker" in x]
    assert re.fullmatch(_KILLED_THE_OTHERS_SENT_EVERYONE, line), err
    assert SUMMARY.findall(out) == [("40", "0", "0")], out
    assert "in flight" not in out + err.replace("messages in flight may have gone", ""), err
    assert Counter(server.handler.recipients()) == Counter(emails)  # each exactly once
    assert (deferred, "450") in server.handler.rcpt_log
    with open_store(tmp_path / "syndicate.db") as db:
        row = db.conn.execute(
            "SELECT d.status, d.attempts, d.parked FROM deliveries AS d"
            " JOIN subscribers AS s ON s.id = d.subscriber_id WHERE s.email = ?",
            (deferred,),
        ).fetchone()
    assert tuple(row) == ("sent", 1, 0)  # the park used none of its attempts


@pytest.mark.slow(seconds=8)
@pytest.mark.parametrize("as_json", [False, True], ids=["line", "json"])
def test_the_summary_counts_what_a_killed_worker_sent(tmp_path: Path, as_json: bool) -> None:
    # A worker killed after it sent some: the run exited 0 and its summary (line and
    # --json) said only what the surviving worker had sent, fewer than the ledger holds.
    with run_smtp_server() as server:
        server.handler.delay = 0.05
        _hold(server.handler)  # the kill comes mid-run
        _project(tmp_path, server)
        emails = _subscribe(tmp_path, 0, 100)
        process = _start(tmp_path, *(["--json"] if as_json else []))
        workers = _wait_for_workers(process)
        _wait_until_both_send(tmp_path, server.handler, workers)  # the one killed has sent some
        os.kill(workers[0], signal.SIGKILL)
        server.handler.release.set()
        out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "was killed by SIGKILL before it finished" in err, err
    got = Counter(server.handler.recipients())
    assert set(got) == set(emails)  # nobody lost
    assert _day_sent(tmp_path) == len(emails)
    if as_json:
        summary = json.loads(out)
        sent, failed, skipped = summary["sent"], summary["failed"], summary["skipped"]
        assert summary["rate"] == pytest.approx(sent / summary["seconds"], abs=0.1)
    else:
        sent, failed, skipped = (int(n) for n in SUMMARY.findall(out)[0])
        rate = re.search(r" in (\d+\.\d) s \((\d+\.\d) messages/s\)", out)
        assert rate is not None, out
        assert float(rate[2]) == pytest.approx(sent / float(rate[1]), rel=0.1, abs=0.1)
    assert (sent, failed, skipped) == (len(emails), 0, 0), out


# Test only, on PYTHONPATH as sitecustomize: a bug in a send worker. The first worker
# process (`python -c ENTRY`; the parent is `python -m syndicate`) to make its Nth call of
# a function of syndicate fails there (raises, or reads address 0); the others, and its
# own other calls, are unharmed.
_CRASHING_WORKER = """
import os
import sys

if sys.argv[:1] == ["-c"]:
    import {module} as module

    real = module.{name}
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        if len(calls) == {call}:
            try:  # one worker of the run only: the first here (the project folder)
                os.close(os.open("crashed", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass
            else:
                {fault}
        return real(*args, **kwargs)

    module.{name} = broken
"""


def _send_with_a_broken_worker(
    folder: Path, where: str, fault: str
) -> tuple[list[str], SmtpServer, subprocess.Popen[str], str, str]:
    """`send --workers 2` to 100 subscribers with `fault` in the first worker to make the
    Nth call of module:function:N (`_CRASHING_WORKER`); what it sent, printed and exited."""
    module, name, call = where.split(":")
    code = _CRASHING_WORKER.format(module=module, name=name, call=call, fault=fault)
    broken = _sitecustomize(folder / "broken", code)
    with run_smtp_server() as server:
        server.handler.delay = 0.02
        _project(folder, server)
        emails = _subscribe(folder, 0, 100)
        process = _start(folder, pythonpath=broken)
        out, err = process.communicate(timeout=60)
    return emails, server, process, out, err


_SEGFAULT = (
    "import ctypes, resource; resource.setrlimit(resource.RLIMIT_CORE, (0, 0)); ctypes.string_at(0)"
)
_ITS_TRACEBACK = r"send worker [12] \(pid \d+\) crashed; its traceback:\nTraceback \(most recent"


@pytest.mark.slow(seconds=8)
@pytest.mark.parametrize(
    ("where", "fault", "how", "traceback"),
    [
        # Building its 10th message: the sender winds down and reports the exception.
        (
            "syndicate.send.deliver:fill_message:10",
            "1 / 0",
            r"crashed \(ZeroDivisionError: division by zero\)",
            _ITS_TRACEBACK,
        ),
        (
            "syndicate.send.deliver:fill_message:10",
            _SEGFAULT,
            r"crashed \(killed by SIGSEGV\)",
            r"Fatal Python error: Segmentation fault",
        ),
        # Opening its store, outside the send loop: no report, Python's own traceback, exit 1.
        (
            "syndicate.send.workers:open_database:1",
            "raise RuntimeError('no store')",
            r"crashed \(exited 1\)",
            r"Traceback \(most recent call last\):(.|\n)*RuntimeError: no store",
        ),
    ],
    ids=["exception", "segfault", "unreported"],
)
def test_a_worker_that_crashes_loses_nobody_and_the_run_exits_1_naming_the_crash(
    tmp_path: Path, where: str, fault: str, how: str, traceback: str
) -> None:
    # A worker that raised (a bug in syndicate) was taken for one killed: one warning line,
    # "exited 1", and exit 0 once the other had sent everyone.
    emails, server, process, out, err = _send_with_a_broken_worker(tmp_path, where, fault)
    assert (tmp_path / "crashed").exists(), err  # a worker did crash
    assert process.returncode == 1, err
    (line,) = [x for x in err.splitlines() if re.match(r"(error|warning): send worker", x)]
    assert re.fullmatch(
        rf"error: send worker [12] \(pid \d+\) {how}, a bug in syndicate: its traceback is "
        r"above, on stderr\. The other workers sent everyone owed\. Please report the bug "
        r"with that traceback\.",
        line,
    ), err
    found = re.search(traceback, err)  # its traceback, before that line
    assert found is not None, err
    assert found.start() < err.index(line)
    got = Counter(server.handler.recipients())
    assert set(got) == set(emails)  # nobody lost
    assert _day_sent(tmp_path) == len(emails)
    assert SUMMARY.findall(out) == [(str(len(emails)), "0", "0")]


@pytest.mark.slow(seconds=6)
def test_a_run_stopped_while_a_worker_crashed_exits_1_after_the_interrupt_line(
    tmp_path: Path,
) -> None:
    # A worker crashed (a bug) just as the run was stopped (SIGTERM): the crash's error line
    # was printed, but the run exited 143, as a clean stop, and a cron wrapper or systemd
    # unit could not tell a run with a bug in it. A crash makes it 1, as any crash.
    emails, server, process, _out, err = _send_with_a_broken_worker(
        tmp_path,
        "syndicate.send.deliver:fill_message:10",
        "import signal; os.kill(os.getppid(), signal.SIGTERM); 1 / 0",
    )
    assert (tmp_path / "crashed").exists(), err  # a worker did crash
    assert process.returncode == 1, err
    assert re.search(
        r"^error: send worker [12] \(pid \d+\) crashed \(ZeroDivisionError: division by "
        r"zero\), a bug in syndicate: its traceback is above, on stderr\.",
        err,
        re.MULTILINE,
    ), err
    sent = _day_sent(tmp_path)
    assert err.splitlines()[-1] == (
        f"interrupted: {sent:,} sent, 0 in flight; run `syndicate send` again to finish."
    ), err
    assert _held(tmp_path) == 0  # the crashed worker gave back what it held, as the other
    got = Counter(server.handler.recipients())
    assert (len(got), max(got.values())) == (sent, 1)
    assert set(got) < set(emails)  # stopped: some are left for the next run


class _SenderRefused(SmtpRecorder):
    """Refuses every MAIL FROM (a setup problem: the run stops with exit 2)."""

    async def handle_MAIL(self, server, session, envelope, address, mail_options):  # type: ignore[no-untyped-def]
        return "553 5.7.1 sender address rejected: not owned by user"


def _crash_at_start(folder: Path, fault: str = "1 / 0") -> Path:
    """A sitecustomize crashing the first worker as it opens its first mailer, before it
    claims anyone (its `fault`, then a division by zero)."""
    code = _CRASHING_WORKER.format(
        module="syndicate.send.workers", name="open_mailer", call=1, fault=fault
    )
    return _sitecustomize(folder / "broken", code)


_CRASH_LINE = (
    r"error: send worker [12] \(pid \d+\) crashed \(ZeroDivisionError: division by zero\), a "
    r"bug in syndicate: its traceback is above, on stderr\. Some recipients are still owed: "
    r"run `syndicate send` again to finish\. Please report the bug with that traceback\."
)


@pytest.mark.slow(seconds=8)
@pytest.mark.parametrize(
    ("server_kind", "last_line"),
    [
        ("unavailable", r"Error: smtp 127\.0\.0\.1:\d+: .* The server stayed unavailable\. .*"),
        ("setup", r"Error: .*553 5\.7\.1 sender address rejected.*"),
    ],
    ids=["unavailable", "setup"],
)
def test_a_worker_crash_wins_over_the_mail_server_stopping_the_run(
    tmp_path: Path, server_kind: str, last_line: str
) -> None:
    # One worker crashed (a bug) while the server turned the other away (no connection: 75;
    # the sender refused: 2) with everyone still owed: the crash's line was printed, but the
    # run exited 75 or 2, and a cron wrapper retrying on 75 retried a bug. A crash wins.
    broken = _crash_at_start(tmp_path)
    handler = _SenderRefused() if server_kind == "setup" else None
    sessions = 0 if server_kind == "unavailable" else None
    with run_smtp_server(handler, sessions=sessions) as server:
        _gated_project(tmp_path, server, connections=1)
        _subscribe(tmp_path, 0, 10)
        process = _start(tmp_path, pythonpath=broken)
        _out, err = process.communicate(timeout=60)
    assert (tmp_path / "crashed").exists(), err  # a worker did crash
    assert process.returncode == 1, err
    (line,) = [x for x in err.splitlines() if re.match(r"(error|warning): send worker", x)]
    assert re.fullmatch(_CRASH_LINE, line), err
    # The line of what stopped the other worker is still the run's last, as before.
    assert re.fullmatch(last_line, err.splitlines()[-1]), err
    assert server.handler.recipients() == []


# Test only: the crashing worker waits for the test to lock the store (file `locked`).
_AFTER_THE_LOCK = (
    "import time\n"
    "                while not os.path.exists('locked'):\n"
    "                    time.sleep(0.01)\n"
    "                1 / 0"
)


@contextmanager
def _store_write_locked(folder: Path) -> Iterator[None]:
    """Another writer holding the write lock of `folder`'s store (the deliveries table on
    PostgreSQL) inside the block; nothing it did stays."""
    with open_store(folder / "syndicate.db") as db:
        if db.dialect == "sqlite":
            db.conn.execute("BEGIN IMMEDIATE")
        else:
            db.conn.execute("BEGIN")
            db.conn.execute("LOCK TABLE deliveries IN EXCLUSIVE MODE")
        try:
            yield
        finally:
            db.conn.execute("ROLLBACK")


def _crash_with_the_store_locked(folder: Path, broken: Path) -> tuple[int, str]:
    """`send --workers 2` to 100 subscribers with `broken` (a `_CRASHING_WORKER` hook whose
    fault is `_AFTER_THE_LOCK`) on its path and store.busy_timeout at 1 s: once a worker is
    about to crash, another writer holds the store's write lock until the run ends. The
    run's exit status and stderr."""
    with run_smtp_server() as server:
        server.handler.delay = 0.05
        _project(folder, server)
        with (folder / "syndicate.toml").open("a", encoding="utf-8") as config:
            config.write("[store]\nbusy_timeout = 1\n")
        _subscribe(folder, 0, 100)
        process = _start(folder, pythonpath=broken)
        deadline = time.monotonic() + 30
        while not (folder / "crashed").exists():  # the crashing worker waits for the lock
            assert process.poll() is None, "the run ended and no worker crashed"
            assert time.monotonic() < deadline, "no worker crashed"
            time.sleep(0.01)
        with _store_write_locked(folder):
            (folder / "locked").touch()
            _out, err = process.communicate(timeout=60)
    return process.returncode, err


@pytest.mark.slow(seconds=8)
def test_a_worker_crash_wins_over_a_store_error(tmp_path: Path) -> None:
    # One worker crashed (a bug) while the other could not write the store (locked by
    # another writer past store.busy_timeout): the run exited 75 on the store's error, and
    # a cron wrapper retrying on 75 retried a bug. A crash wins: exit 1, the store's line
    # last as before.
    status, err = _crash_with_the_store_locked(tmp_path, _crash_at_start(tmp_path, _AFTER_THE_LOCK))
    assert status == 1, err
    (line,) = [x for x in err.splitlines() if re.match(r"(error|warning): send worker", x)]
    assert re.fullmatch(_CRASH_LINE, line), err
    assert err.splitlines()[-1].startswith("Error: "), err
    assert "busy" in err.splitlines()[-1], err
    assert _lock_is_free(tmp_path)


@pytest.mark.slow(seconds=8)
def test_a_crash_stays_a_crash_when_its_worker_cannot_write_the_store_as_it_ends(
    tmp_path: Path,
) -> None:
    # A worker's connection crashed (a bug) mid-send while another writer held the store
    # past store.busy_timeout: the worker's wind-down (giving back what it had claimed)
    # failed on the store, and that error replaced the bug. The run said "busy" and exited
    # 75 (cron retries), with no crash line at all. The crash must stay the worker's outcome.
    code = _CRASHING_WORKER.format(
        module="syndicate.send.deliver", name="fill_message", call=10, fault=_AFTER_THE_LOCK
    )
    status, err = _crash_with_the_store_locked(tmp_path, _sitecustomize(tmp_path / "broken", code))
    assert status == 1, err
    assert re.search(_CRASH_LINE, err), err
    assert _lock_is_free(tmp_path)


# As _AFTER_THE_LOCK, the bug raised while its connection handled another error (its context).
_IN_A_HANDLER_AFTER_THE_LOCK = _AFTER_THE_LOCK.removesuffix("1 / 0") + (
    "try:\n"
    "                    raise LookupError('what the connection was handling')\n"
    "                except LookupError:\n"
    "                    1 / 0"
)


@pytest.mark.slow(seconds=8)
def test_a_crash_kept_over_a_store_error_keeps_its_own_context(tmp_path: Path) -> None:
    # The crash stays the outcome when the wind-down fails on the store (above), but it was
    # raised again inside the store error's handler: Python made that error the crash's
    # context, and what the bug had happened while handling (often the clue to it) was gone
    # from its traceback, which read as a bug met while handling the store's busy error.
    code = _CRASHING_WORKER.format(
        module="syndicate.send.deliver",
        name="fill_message",
        call=10,
        fault=_IN_A_HANDLER_AFTER_THE_LOCK,
    )
    status, err = _crash_with_the_store_locked(tmp_path, _sitecustomize(tmp_path / "broken", code))
    assert status == 1, err
    assert re.search(_CRASH_LINE, err), err
    assert "LookupError: what the connection was handling" in err, err
    # The store's error is told, as a note of the crash, not as what the bug met.
    assert "The store failed too as the run wound down: " in err, err
    assert _lock_is_free(tmp_path)


# Test only: at its 10th message the worker may open no more files, for real (its limit
# put at what it holds, one file opened: the kernel's EMFILE), then has its limit back.
_OUT_OF_FILES = (
    "import resource; soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE); "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir('/proc/self/fd')) - 1, hard))\n"
    "                try:\n"
    "                    open(os.devnull)\n"
    "                finally:\n"
    "                    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))"
)


@pytest.mark.slow(seconds=6)
def test_a_worker_out_of_open_files_is_the_machines_limit_not_a_crash(tmp_path: Path) -> None:
    # Any exception in a worker was called a bug in syndicate (exit 1, 'Please report the
    # bug'); running out of open files is the limit of the machine, as for one process:
    # one line saying so, exit 75, and the next run (here: the other worker) finishes.
    emails, server, process, _out, err = _send_with_a_broken_worker(
        tmp_path, "syndicate.send.deliver:fill_message:10", _OUT_OF_FILES
    )
    assert (tmp_path / "crashed").exists(), err  # a worker did run out
    assert process.returncode == 75, err
    assert "crashed" not in err, err
    assert "Traceback" not in err, err
    assert re.search(
        r"^Error: syndicate: this process reached its open-files limit, \d+ \(ulimit -n\) "
        r"opening /dev/null; what was written so far is whole\. Raise the limit",
        err,
        re.MULTILINE,
    ), err
    assert set(server.handler.recipients()) == set(emails)  # nobody lost
    assert _day_sent(tmp_path) == len(emails)


@pytest.mark.slow(seconds=6)
def test_workers_that_all_crash_leave_everyone_owed_and_the_next_run_sends_them(
    tmp_path: Path,
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "sitecustomize.py").write_text(
        'import sys\nif sys.argv[:1] == ["-c"]:\n'
        "    import syndicate.send.workers as workers\n\n"
        "    def broken(*args, **kwargs):\n"
        "        raise RuntimeError('no store')\n\n"
        "    workers.open_database = broken\n",
        encoding="utf-8",
    )
    with run_smtp_server() as server:
        _project(tmp_path, server)
        emails = _subscribe(tmp_path, 0, 20)
        process = _start(tmp_path, pythonpath=broken)
        out, err = process.communicate(timeout=60)
        assert process.returncode == 1, err
        lines = [x for x in err.splitlines() if re.match(r"(error|warning): send worker", x)]
        assert sorted(re.sub(r"pid \d+", "pid P", x) for x in lines) == [
            f"error: send worker {n} (pid P) crashed (exited 1), a bug in syndicate: its "
            "traceback is above, on stderr. Some recipients are still owed: run `syndicate "
            "send` again to finish. Please report the bug with that traceback."
            for n in (1, 2)
        ], err
        assert SUMMARY.findall(out) == [("0", "0", "0")], out  # today's digest, said
        assert server.handler.recipients() == []
        out = _finish(tmp_path)
    assert SUMMARY.findall(out) == [(str(len(emails)), "0", "0")], out
    assert Counter(server.handler.recipients()) == Counter(emails)  # each once


@pytest.mark.slow(seconds=5)
def test_workers_summary_of_refusals_is_the_ledgers(tmp_path: Path) -> None:
    # The counts are the ledger's rows of the run: failed, and of those the refusals that
    # made their subscriber bounced, as the workers themselves counted them.
    with run_smtp_server() as server:
        _project(tmp_path, server)
        emails = _subscribe(tmp_path, 0, 40)
        refused = emails[5::10]
        for email in refused:
            server.handler.refuse(email, "550 5.1.1 no such user")
        process = _start(tmp_path, "--json")
        out, err = process.communicate(timeout=60)
    assert process.returncode == 1, err  # some failed
    summary = json.loads(out)
    assert (summary["sent"], summary["failed"], summary["bounced"]) == (36, 4, 4), out
    assert set(server.handler.recipients()) == set(emails) - set(refused)


def _rows_by_status(folder: Path) -> tuple[set[str], set[str]]:
    """The addresses whose row is `sent`, and those whose row is still `sending` under an
    owner (left in doubt, or held by a worker killed since)."""
    with open_store(folder / "syndicate.db") as db:
        rows = db.conn.execute(
            "SELECT s.email, d.status FROM deliveries AS d"
            " JOIN subscribers AS s ON s.id = d.subscriber_id"
            " WHERE d.status = 'sent' OR (d.status = 'sending' AND d.lease_owner IS NOT NULL)"
        ).fetchall()
    sent = {str(email) for email, status in rows if status == "sent"}
    return sent, {str(email) for email, status in rows if status == "sending"}


class _BodyLog(SmtpRecorder):
    """Also lists the recipients of every message body that arrived, answered or not (a
    body whose sender is killed before the reply may have been delivered: a real server
    queues it at the final dot)."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[str] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.bodies.extend(envelope.rcpt_tos)
        return await super().handle_DATA(server, session, envelope)


@pytest.mark.slow(seconds=10)
def test_the_interrupt_line_counts_in_flight_what_a_killed_worker_left_in_doubt(
    tmp_path: Path,
) -> None:
    # A worker killed with bodies at the server and no reply yet, then the run stopped by
    # SIGTERM: the line said "0 in flight" (the workers' reports: the killed one never
    # reported), while the ledger holds its rows in doubt and the next run sends them again.
    handler = _BodyLog()
    with run_smtp_server(handler) as server:
        handler.delay = 0.02
        emails, process, workers = _both_sending(tmp_path, server)
        with handler.lock:  # from now on no DATA is answered: every connection holds a body
            handler.hold_after = len(handler.messages)
            holding = handler.lock.wait_for(
                lambda: handler.data_attempts - len(handler.messages) >= 2 * CONNECTIONS, 30
            )
        assert holding
        os.kill(workers[0], signal.SIGKILL)
        process.send_signal(signal.SIGTERM)
        handler.release.set()  # the other worker's messages in flight finish, and are recorded
        _out, err = process.communicate(timeout=60)
        assert process.returncode == 143, err
        sent, held = _rows_by_status(tmp_path)
        # The killed worker's bodies: at the server, not recorded as sent; each a row it
        # still holds (with the rest of what it held: the ledger cannot tell them apart).
        unrecorded = set(handler.bodies) - sent
        assert len(unrecorded) >= 1, err
        assert unrecorded <= held
        assert err.splitlines()[-1] == (
            f"interrupted: {len(sent):,} sent, 0 in flight, {len(held)} held by a dead "
            "worker, its messages in flight among them; run `syndicate send` again to finish."
        ), err
        assert _lock_is_free(tmp_path)
        out = _finish(tmp_path)
    sent_now, failed, skipped = (int(n) for n in SUMMARY.findall(out)[0])
    assert (failed, sent_now + skipped) == (0, len(emails))
    got = Counter(handler.recipients())
    assert set(got) == set(emails)  # nobody lost
    assert sum(n - 1 for n in got.values()) <= CONNECTIONS  # the killed worker's, at most


def _held(folder: Path) -> int:
    """Rows still `sending` under an owner: held, or left in doubt."""
    with open_store(folder / "syndicate.db") as db:
        (n,) = db.conn.execute(
            "SELECT count(*) FROM deliveries WHERE status = 'sending' AND lease_owner IS NOT NULL"
        ).fetchone()
    return int(n)


@pytest.mark.slow(seconds=8)
@pytest.mark.parametrize("who", ["one-worker", "parent-and-workers"])
def test_sigterm_to_a_worker_stops_the_whole_run_gracefully_with_exit_143(
    tmp_path: Path, who: str
) -> None:
    # SIGTERM to one worker's pid (an operator's `kill`), or to every process of the run at
    # once (systemd's KillMode=control-group). The worker stopped gracefully and said so in
    # its report, which the parent ignored: the others went on and the run exited 0.
    with run_smtp_server() as server:
        server.handler.delay = 0.05
        _hold(server.handler)
        _project(tmp_path, server)
        emails = _subscribe(tmp_path, 0, 100)
        process = _start(tmp_path)
        workers = _wait_for_workers(process)
        _wait_until_both_send(tmp_path, server.handler, workers)
        for pid in workers[:1] if who == "one-worker" else [process.pid, *workers]:
            os.kill(pid, signal.SIGTERM)
        server.handler.release.set()
        _out, err = process.communicate(timeout=60)
        assert process.returncode == 143, err
        if who == "one-worker":
            assert re.search(
                rf"^warning: send worker [12] \(pid {workers[0]}\) was stopped by SIGTERM: "
                r"stopping the run: no new messages; waiting for the other workers' messages "
                r"in flight\.$",
                err,
                re.MULTILINE,
            ), err
        sent = _day_sent(tmp_path)
        assert err.splitlines()[-1] == (
            f"interrupted: {sent:,} sent, 0 in flight; run `syndicate send` again to finish."
        ), err
        assert _held(tmp_path) == 0  # every worker gave back what it held
        got = Counter(server.handler.recipients())
        assert (len(got), max(got.values())) == (sent, 1)
        assert _lock_is_free(tmp_path)
        out = _finish(tmp_path)
    assert SUMMARY.findall(out) == [(str(len(emails) - sent), "0", str(sent))]
    assert Counter(server.handler.recipients()) == Counter(emails)  # each exactly once


# Test only, on PYTHONPATH as sitecustomize: the parent (`python -m syndicate`) sends itself
# a SIGINT (a Ctrl-C) while it starts its second worker, once the first one catches SIGINT
# (its handlers in place: /proc's SigCgt).
_CTRL_C_WHILE_STARTING = """
import sys

if sys.argv[:1] == ["-m"]:
    import asyncio
    import os
    import signal

    real = asyncio.create_subprocess_exec
    started = []

    def catches_sigint(pid):
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("SigCgt:"):
                    return int(line.split()[1], 16) & (1 << (signal.SIGINT - 1))
        return 0

    async def ctrl_c_at_the_second(*args, **kwargs):
        if len(started) == 1:
            while not catches_sigint(started[0].pid):
                await asyncio.sleep(0.001)
            os.kill(os.getpid(), signal.SIGINT)
        started.append(await real(*args, **kwargs))
        return started[-1]

    asyncio.create_subprocess_exec = ctrl_c_at_the_second
"""


@pytest.mark.slow(seconds=5)
def test_a_ctrl_c_while_the_workers_start_stops_each_once_gracefully(tmp_path: Path) -> None:
    # The parent passed the signal on to every worker started so far, then again to all of
    # them after starting each next one: the first worker got two SIGINTs, a second Ctrl-C
    # to it, and quit at once ('exited 130 before it finished', an error line).
    with _hooked_send(tmp_path, _CTRL_C_WHILE_STARTING, subscribers=20) as run:
        process, err, emails, server = run
        assert process.returncode == 130, err
        assert "send worker" not in err, err
        sent = _day_sent(tmp_path)
        assert err.splitlines()[-1] == (
            f"interrupted: {sent:,} sent, 0 in flight; run `syndicate send` again to finish."
        ), err
        assert _held(tmp_path) == 0
        assert _lock_is_free(tmp_path)
        _finish(tmp_path)
    assert Counter(server.handler.recipients()) == Counter(emails)  # each exactly once


# Test only, on PYTHONPATH as sitecustomize: the first worker process to start (`python -c
# ENTRY`) gets a SIGTERM before its first line runs (an operator's `kill PID` as it starts).
_SIGTERM_AS_IT_STARTS = """
import os
import signal
import sys

if sys.argv[:1] == ["-c"]:
    try:  # one worker of the run only: the first here (the project folder)
        os.close(os.open("killed", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        pass
    else:
        os.kill(os.getpid(), signal.SIGTERM)
"""


@pytest.mark.slow(seconds=5)
def test_a_sigterm_to_a_worker_before_its_handlers_stops_the_run_with_exit_143(
    tmp_path: Path,
) -> None:
    # A worker killed by a SIGTERM before it could catch it (starting up; or ending, its
    # loop closed) sent no report: it was taken for a worker killed mid-run, the other one
    # went on, and the run exited 0 as if no one had asked it to stop.
    with _hooked_send(tmp_path, _SIGTERM_AS_IT_STARTS, subscribers=100, delay=0.02) as run:
        process, err, emails, server = run
        assert (tmp_path / "killed").exists(), err
        assert process.returncode == 143, err
        assert re.search(
            r"^warning: send worker [12] \(pid \d+\) was stopped by SIGTERM: stopping the run",
            err,
            re.MULTILINE,
        ), err
        assert "before it finished" not in err, err  # it held nothing
        sent = _day_sent(tmp_path)
        assert err.splitlines()[-1] == (
            f"interrupted: {sent:,} sent, 0 in flight; run `syndicate send` again to finish."
        ), err
        assert _held(tmp_path) == 0
        out = _finish(tmp_path)
    assert SUMMARY.findall(out) == [(str(len(emails) - sent), "0", str(sent))]
    assert Counter(server.handler.recipients()) == Counter(emails)  # each exactly once


class _Gate(SmtpRecorder):
    """Once `closed`, holds every message body at DATA unanswered but those to `opened`
    recipients; lists the recipients of the bodies it holds (`held`)."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = False
        self.opened: set[str] = set()
        self.held: list[str] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        to = set(envelope.rcpt_tos)
        with self.lock:
            if self.closed:
                self.held.extend(to)
                self.lock.notify_all()
        while True:
            with self.lock:
                if not self.closed or to <= self.opened:
                    break
            await asyncio.sleep(0.01)
        return await super().handle_DATA(server, session, envelope)


def _owned_by(folder: Path, emails: list[str], number: int) -> set[str]:
    """Which of `emails` have their row held by worker `number` of the run."""
    with open_store(folder / "syndicate.db") as db:
        rows = db.conn.execute(
            "SELECT s.email, d.lease_owner FROM deliveries AS d"
            " JOIN subscribers AS s ON s.id = d.subscriber_id WHERE d.status = 'sending'"
        ).fetchall()
    mine = {str(e) for e, owner in rows if owner and str(owner).endswith(f"/{number}")}
    return mine & set(emails)


@pytest.mark.slow(seconds=8)
def test_a_ctrl_c_after_a_worker_alone_got_a_sigint_does_not_quit_the_others_at_once(
    tmp_path: Path,
) -> None:
    # `kill -INT` to one worker stopped the run: the parent passed the SIGINT on to the
    # others. Then the operator's first Ctrl-C to the parent ('Ctrl-C again to quit at
    # once') was passed on too: a second SIGINT for each other worker, which quit at once
    # with its messages in flight unrecorded.
    gate = _Gate()
    with run_smtp_server(gate) as server:
        gate.delay = 0.02
        emails, process, workers = _both_sending(tmp_path, server)
        with gate.lock:  # every connection of both workers comes to hold a body
            gate.closed = True
            gate.release.set()  # the bodies held since the workers both sent: not in `held`
            assert gate.lock.wait_for(lambda: len(gate.held) >= 2 * CONNECTIONS, 30)
            held = list(gate.held)
        first = _owned_by(tmp_path, held, 1)
        assert len(first) == CONNECTIONS, (held, first)
        lines: list[str] = []
        stopped = threading.Event()

        def read_stderr() -> None:
            assert process.stderr is not None
            for line in process.stderr:
                lines.append(line)
                if "was stopped by SIGINT" in line:
                    stopped.set()

        reader = threading.Thread(target=read_stderr)
        reader.start()
        os.kill(workers[0], signal.SIGINT)  # worker 1: the first started
        with gate.lock:
            gate.opened |= first  # its messages in flight are answered; it ends
        assert stopped.wait(30), "".join(lines)  # the parent stopped the run
        process.send_signal(signal.SIGINT)  # the operator's first Ctrl-C
        with gate.lock:
            gate.closed = False  # the other worker's messages in flight are answered
        process.wait(timeout=60)
        reader.join(timeout=30)
        assert process.stdout is not None
        assert process.stderr is not None
        process.stdout.close()
        process.stderr.close()
        err = "".join(lines)
        assert process.returncode == 130, err
        assert re.search(rf"^warning: send worker 1 \(pid {workers[0]}\) was stopped", err, re.M)
        assert "before it finished" not in err, err
        sent = _day_sent(tmp_path)
        assert err.splitlines()[-1] == (
            f"interrupted: {sent:,} sent, 0 in flight; run `syndicate send` again to finish."
        ), err
        assert set(held) <= set(gate.recipients())  # all answered, none left in doubt
        assert _held(tmp_path) == 0
        _finish(tmp_path)
    assert Counter(gate.recipients()) == Counter(emails)  # each exactly once


@pytest.mark.slow(seconds=6)
def test_a_sigint_to_the_parent_and_every_worker_at_once_stops_them_gracefully(
    tmp_path: Path,
) -> None:
    # systemd with KillSignal=SIGINT (KillMode=control-group), or `pkill -INT`: each worker
    # got the SIGINT itself and again from the parent, took that for a second Ctrl-C and quit
    # at once, its messages in flight unrecorded ('exited 130 before it finished', '60 held
    # by dead workers'), to be sent again by the next run.
    with run_smtp_server() as server:
        server.handler.delay = 0.05
        _hold(server.handler)
        _project(tmp_path, server)
        emails = _subscribe(tmp_path, 0, 100)
        process = _start(tmp_path)
        workers = _wait_for_workers(process)
        _wait_until_both_send(tmp_path, server.handler, workers)
        for pid in [process.pid, *workers]:
            os.kill(pid, signal.SIGINT)
        server.handler.release.set()
        _out, err = process.communicate(timeout=60)
        assert process.returncode == 130, err
        assert "before it finished" not in err, err
        sent = _day_sent(tmp_path)
        assert err.splitlines()[-1] == (
            f"interrupted: {sent:,} sent, 0 in flight; run `syndicate send` again to finish."
        ), err
        assert _held(tmp_path) == 0
        _finish(tmp_path)
    assert Counter(server.handler.recipients()) == Counter(emails)  # each exactly once


def _alive(pid: int) -> bool:
    """Whether process `pid` runs (not ended, nor a zombie waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.slow(seconds=6)
def test_a_second_ctrl_c_to_the_parent_quits_the_workers_at_once(tmp_path: Path) -> None:
    # The workers' messages in flight get no reply: the first Ctrl-C waits for them, the
    # second quits at once, the workers too (the send lock free), leaving them to the next run.
    with run_smtp_server() as server:
        server.handler.delay = 0.02
        _hold(server.handler)  # once both send, no message is answered till the end
        _project(tmp_path, server)
        _subscribe(tmp_path, 0, 100)
        process = _start(tmp_path)
        workers = _wait_for_workers(process)
        _wait_until_both_send(tmp_path, server.handler, workers)
        assert server.handler.wait_for_data(len(server.handler.messages) + 2 * CONNECTIONS)
        assert process.stderr is not None
        process.send_signal(signal.SIGINT)
        for line in process.stderr:  # the first Ctrl-C is taken
            if line.startswith("warning: stopping (SIGINT)"):
                break
        process.send_signal(signal.SIGINT)
        _out, err = process.communicate(timeout=30)
        assert process.returncode == 130, err
        assert "interrupted again: quitting at once" in err, err
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in workers):
            assert time.monotonic() < deadline, "the workers go on"
            time.sleep(0.01)
        assert _lock_is_free(tmp_path)
        server.handler.release.set()


@pytest.mark.slow(seconds=8)
def test_a_stop_on_a_store_the_workers_cannot_write_says_the_stores_error(
    tmp_path: Path,
) -> None:
    # The store locked by another writer past store.busy_timeout as the run was stopped: no
    # worker could record its last messages or give back what it held. The line said
    # 'interrupted: 4 sent, 0 in flight, 60 held by dead workers, ...' though none had died,
    # and not a word of the busy store; one process says the store's error (exit 75).
    with run_smtp_server() as server:
        server.handler.delay = 0.05
        _project(tmp_path, server)
        with (tmp_path / "syndicate.toml").open("a", encoding="utf-8") as config:
            config.write("[store]\nbusy_timeout = 1\n")
        _hold(server.handler)
        _subscribe(tmp_path, 0, 100)
        process = _start(tmp_path)
        workers = _wait_for_workers(process)
        _wait_until_both_send(tmp_path, server.handler, workers)
        with _store_write_locked(tmp_path):
            process.send_signal(signal.SIGTERM)
            server.handler.release.set()
            _out, err = process.communicate(timeout=60)
        assert process.returncode == 75, err
        assert "dead worker" not in err, err
        assert "busy" in err.splitlines()[-1], err
        assert _lock_is_free(tmp_path)


# Test only, on PYTHONPATH as sitecustomize: the first worker process to end its send loop
# gets a SIGTERM as soon as the loop has closed (its handlers gone), before it reports.
_SIGTERM_AS_IT_ENDS = """
import os
import signal
import sys

if sys.argv[:1] == ["-c"]:
    import syndicate.send.workers as workers

    real = workers.run_event_loop

    def then_sigterm(make):
        result = real(make)
        try:  # one worker of the run only: the first here (the project folder)
            os.close(os.open("killed", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            pass
        else:
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    workers.run_event_loop = then_sigterm
"""


@pytest.mark.slow(seconds=5)
def test_a_sigterm_to_a_worker_as_its_loop_closes_is_reported_not_fatal(tmp_path: Path) -> None:
    # Between its loop's end (the default handlers back) and its report, a SIGTERM killed the
    # worker: no report, 'was killed by SIGTERM before it finished', and the stop was lost.
    with _hooked_send(tmp_path, _SIGTERM_AS_IT_ENDS, subscribers=20) as run:
        process, err, emails, server = run
    assert (tmp_path / "killed").exists(), err
    assert process.returncode == 143, err
    assert "before it finished" not in err, err
    assert re.search(r"^warning: send worker [12] \(pid \d+\) was stopped by SIGTERM", err, re.M)
    assert err.splitlines()[-1] == (
        f"interrupted: {len(emails)} sent, 0 in flight; run `syndicate send` again to finish."
    ), err
    assert Counter(server.handler.recipients()) == Counter(emails)  # each exactly once

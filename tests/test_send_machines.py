"""Issue 13 §4: `syndicate send` on several "machines" sharing one PostgreSQL store.

Each machine is a project folder of its own (its own syndicate.toml, the same site and
seeds, the same SYNDICATE_SECRET so tokens agree) and a separate `syndicate send`
process; they share one database of the session's cluster through SYNDICATE_STORE_URL.
The sinks are real: Postfix's `smtp-sink` (C, fast) dumping each accepted message to a
file, or aiosmtpd where the test needs to know when each message began. Signals are real
(SIGKILL, SIGSTOP/SIGCONT); waits are on the sink's counts, never fixed sleeps.
"""

from __future__ import annotations

import os
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from syndicate.store import Database, open_database
from syndicate.store.ledger import day_counts
from tests.plugins.postgres import ENV_STORE_URL
from tests.plugins.sendproject import add_confirmed, write_send_project
from tests.plugins.smtp import SmtpRecorder, SmtpServer, TimedRecorder, run_smtp_server

pytestmark = pytest.mark.slow

CONNECTIONS = 2
SECRET = "machines-share-this-secret-" + "x" * 16
SUMMARY = re.compile(r"Digest (\S+): sent (\d+), failed (\d+), skipped (\d+) in ")
SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _machine(folder: Path, port: int, *, connections: int = CONNECTIONS) -> Path:
    """A project folder standing for one machine: its own config, the shared site and seeds."""
    return write_send_project(folder, port=port, connections=connections, lease=1)


def _send(
    folder: Path, url: str, *, clock: str = "", clock_file: Path | None = None
) -> subprocess.Popen[str]:
    """One machine's `syndicate send`: its own folder and config, the shared store.

    `clock`: how far this machine's clock is off (libfaketime's `+30s`), else none.
    `clock_file`: a file holding that offset, read again at each look at the clock: the
    test steps this machine's clock while it runs by writing another one.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNDICATE_")}
    env |= {ENV_STORE_URL: url, "SYNDICATE_SECRET": SECRET}
    skewed = ["faketime", "-f", clock] if clock else []
    if clock or clock_file is not None:
        env["FAKETIME_DONT_FAKE_MONOTONIC"] = "1"  # the event loop's timers stay real
    if clock_file is not None:
        env |= {
            "LD_PRELOAD": FAKETIME_LIB,
            "FAKETIME_TIMESTAMP_FILE": str(clock_file),
            "FAKETIME_NO_CACHE": "1",
        }
    return subprocess.Popen(
        [*skewed, sys.executable, "-m", "syndicate", "send"],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen[str], timeout: float = 120) -> str:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err
    assert "Traceback" not in err, err
    return out


def _sent_ids(url: str, folder: Path) -> set[int]:
    with open_database(folder / "syndicate.db", url=url) as db:
        rows = db.conn.execute("SELECT subscriber_id FROM deliveries WHERE status = 'sent'")
        return {int(r[0]) for r in rows.fetchall()}


def _ids_by_email(url: str, folder: Path) -> dict[str, int]:
    with open_database(folder / "syndicate.db", url=url) as db:
        rows = db.conn.execute("SELECT email, id FROM subscribers").fetchall()
    return {str(email): int(i) for email, i in rows}


class Sink:
    """Postfix's smtp-sink on a free port of 127.0.0.1, one file per accepted message.

    A transaction's file is there (empty or in part) while it goes on, and removed when
    it is cut off before its final dot; once the sink is quiet, the files are exactly the
    messages it accepted.
    """

    def __init__(self) -> None:
        # Not under the test's own folder, which only its owner may enter: as root,
        # smtp-sink drops to `nobody`, who owns this one.
        self.dump = Path(tempfile.mkdtemp(prefix="syndicate-sink-"))
        self.port = _free_port()
        args = [SINK]
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(self.dump, nobody.pw_uid, nobody.pw_gid)
            args += ["-u", "nobody"]
        args += ["-d", f"{self.dump}/%H%M%S.", f"127.0.0.1:{self.port}", "1024"]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        self._read: dict[str, str] = {}  # dump file -> its recipient
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "smtp-sink never listened"
                time.sleep(0.01)

    def count(self) -> int:
        return len(os.listdir(self.dump))

    def recipients(self) -> list[str]:
        """The recipient of every accepted message (each file read once)."""
        for name in os.listdir(self.dump):
            if name not in self._read:
                head = (self.dump / name).read_bytes()[:400].decode("ascii", "replace")
                found = re.search(r"^X-Rcpt-Args: <([^>]*)>\n", head, re.MULTILINE)
                if found is not None:  # else a transaction still going on: not accepted yet
                    self._read[name] = found[1]
        return list(self._read.values())

    def wait_done_with_closed(self, timeout: float = 60) -> float:
        """Wait until the sink has read to its end every connection a client closed (a
        killed machine's): none of its sockets is left in CLOSE_WAIT. It reads each
        connection in order, so by then it has accepted every message whose final dot the
        client sent, and cut off the others. Returns the seconds it took.

        After a kill the test waited a fixed 0.1 s for this; under load the sink took longer,
        and a message the victim had sent in full was missing from the kill's list of
        messages in doubt, then sent again: a duplicate the test blamed on the product.
        """
        local = f"0100007F:{self.port:04X}"  # 127.0.0.1:port, as /proc/net/tcp writes it
        started = time.monotonic()
        while True:
            with open("/proc/net/tcp", encoding="ascii") as table:
                next(table)
                closing = [
                    row for row in map(str.split, table) if row[1] == local and row[3] == "08"
                ]
            if not closing:
                return time.monotonic() - started
            assert self.process.poll() is None, "smtp-sink ended"
            assert time.monotonic() - started < timeout, f"smtp-sink never read {closing}"
            time.sleep(0.005)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture
def sink() -> Iterator[Sink]:
    if not Path(SINK).exists():
        pytest.skip("Postfix's smtp-sink is not installed (Debian package postfix)")
    running = Sink()
    yield running
    running.close()
    shutil.rmtree(running.dump, ignore_errors=True)


def _wait_for_count(
    sink: Sink, point: int, victim: subprocess.Popen[str], rng: random.Random
) -> None:
    """Wait until the sink has accepted `point` messages, looking every 5 to 30 ms (a
    random moment of the send) once it is close.

    Counting lists a folder of up to 20,000 files (9 ms of CPU at 20,000): looked at every
    5 to 30 ms all along, that was a fifth of a core for the whole send. Until it is close,
    it waits about half the time the rate so far says is left.
    """
    started, first = time.monotonic(), sink.count()
    while (count := sink.count()) < point:
        assert sink.process.poll() is None, f"smtp-sink ended at {count}"
        assert victim.poll() is None, victim.communicate()[1]
        rate = (count - first) / max(time.monotonic() - started, 1e-3)
        left = (point - count) / rate / 2 if rate > 0 else 0.0
        time.sleep(max(rng.uniform(0.005, 0.03), min(left, 1.0)))


def _kill(process: subprocess.Popen[str]) -> None:
    process.kill()
    process.communicate(timeout=30)


SUBSCRIBERS = 20_000
KILLS = 10
# Connections per machine: 8, as `bench/send.py` measures; with 2 the send alone takes
# twice as long (66 s against 31-35 s here, under load 5 to 9).
FAST_CONNECTIONS = 8


@pytest.mark.slow(seconds=40)
def test_two_machines_one_killed_ten_times_lose_nobody(
    tmp_path: Path, store_url: str, sink: Sink
) -> None:
    rng = random.Random(13)
    one = _machine(tmp_path / "one", sink.port, connections=FAST_CONNECTIONS)
    two = _machine(tmp_path / "two", sink.port, connections=FAST_CONNECTIONS)
    emails = add_confirmed(one, store_url, SUBSCRIBERS)
    # The kill points: counts of accepted messages, spread over the whole send.
    points = sorted(rng.sample(range(200, SUBSCRIBERS - 1_000), KILLS))
    started = time.monotonic()
    victim, other = _send(one, store_url), _send(two, store_url)
    # What the sink had accepted that the ledger did not say was sent, right after each
    # kill: the victim's messages in flight (and the other machine's not yet recorded).
    in_doubt: list[set[str]] = []
    lags: list[float] = []  # how long the sink took to read the victim's connections out
    ids = _ids_by_email(store_url, one)
    for point in points:
        _wait_for_count(sink, point, victim, rng)
        assert victim.poll() is None, "the machine to kill had ended"
        _kill(victim)
        sent = _sent_ids(store_url, one)  # the victim can record nothing more now
        lags.append(sink.wait_done_with_closed())  # what the victim had sent in full is in
        accepted = set(sink.recipients())
        in_doubt.append({e for e in accepted if ids[e] not in sent})
        victim = _send(one, store_url)  # restarted at once, as cron or systemd would
    _finish(victim)
    _finish(other)
    both = time.monotonic() - started
    out = _finish(_send(two, store_url))  # a final run: nothing left to send
    day, sent_now, failed, skipped = SUMMARY.findall(out)[0]
    assert (int(sent_now), int(failed), int(skipped)) == (0, 0, SUBSCRIBERS)
    with open_database(one / "syndicate.db", url=store_url) as db:
        assert day_counts(db, day=date.fromisoformat(day)) == {"sent": SUBSCRIBERS}
        assert db.conn.execute("SELECT count(*) FROM digests").fetchone()[0] == 1
    sink.close()  # quiet: every file left is a whole accepted message
    got = Counter(sink.recipients())
    assert set(got) == set(emails)  # nobody lost
    twice = {r for r, n in got.items() if n > 1}
    duplicates = sum(n - 1 for n in got.values())
    assert duplicates <= FAST_CONNECTIONS * KILLS, got.most_common(5)
    # Every second copy is of a message the server had accepted when a machine was killed
    # and that the ledger did not yet call sent: a message in flight at a kill, at most
    # one per connection of the killed machine.
    assert twice <= set().union(*in_doubt), sorted(twice - set().union(*in_doubt))
    # (A message left in doubt stays so until another machine sends it again: it is put
    # down to the first kill it was in doubt at.)
    seen: set[str] = set()
    per_kill = []
    for doubt in in_doubt:
        per_kill.append(len(twice & (doubt - seen)))
        seen |= doubt
    print(  # noqa: T201 - the figures, with -s
        f"\n{SUBSCRIBERS} sent by two machines in {both:.1f} s with {KILLS} kills; "
        f"{duplicates} duplicates, by kill {per_kill}; accepted and not yet recorded "
        f"sent at each kill (both machines): {[len(s) for s in in_doubt]}; the sink read "
        f"the victim's connections out in at most {max(lags):.3f} s"
    )
    assert max(per_kill) <= FAST_CONNECTIONS, per_kill


def _owners(url: str, folder: Path) -> Counter[str]:
    with open_database(folder / "syndicate.db", url=url) as db:
        return _owners_in(db)


def _owners_in(db: Database) -> Counter[str]:
    rows = db.conn.execute(
        "SELECT lease_owner, count(*) FROM deliveries WHERE status = 'sent' GROUP BY 1"
    ).fetchall()
    return Counter({str(owner).rsplit("/", 1)[0]: int(n) for owner, n in rows})


def _python(run: subprocess.Popen[str]) -> int:
    """The pid of the Python a machine's `send` runs in: its own, or under `faketime` (which
    forks it, and waits) its child's. Told by what was started, not by the process's name:
    until it has exec'd, a `faketime` just started is still named as the test's Python (4
    times in 5 here; CI at 4d2df01 then waited for a body from faketime's own pid)."""
    if Path(run.args[0]).name != "faketime":
        return run.pid
    deadline = time.monotonic() + 30
    while True:
        children = Path(f"/proc/{run.pid}/task/{run.pid}/children").read_text().split()
        if children:
            return int(children[0])
        assert time.monotonic() < deadline, "faketime never started its command"
        time.sleep(0.01)


def _both_sending(handler: SmtpRecorder, runs: list[subprocess.Popen[str]]) -> None:
    """Once a body of each machine is held at the sink (`handler.holding`), let those
    through: both are mid-send at once, however late one started (with the messages
    flowing, one started late under load could find nothing left). The later bodies stay
    held until the test sets `handler.release`."""
    assert handler.let_through_once_all_send([_python(run) for run in runs])


def _wait_until_both_send(
    url: str, folder: Path, runs: list[subprocess.Popen[str]], handler: SmtpRecorder
) -> None:
    """Wait until each machine holds a batch and has sent from it (`_both_sending`).

    One store for the whole wait: opening one every 10 ms (a new PostgreSQL backend each
    time) cost more CPU than the machines it waits for.
    """
    _both_sending(handler, runs)
    deadline = time.monotonic() + 60
    with open_database(folder / "syndicate.db", url=url) as db:
        while len(_owners_in(db)) < 2:
            assert time.monotonic() < deadline, "the two machines never both sent"
            assert all(run.poll() is None for run in runs)
            time.sleep(0.01)


@pytest.mark.slow(seconds=7)
def test_a_machine_stopped_past_its_lease_sends_nothing_the_other_took_over(
    tmp_path: Path, store_url: str
) -> None:
    handler = TimedRecorder()
    count = 200
    with run_smtp_server(handler) as server:
        handler.delay = 0.02
        handler.holding = True
        one = _machine(tmp_path / "one", server.port)
        two = _machine(tmp_path / "two", server.port)
        emails = add_confirmed(one, store_url, count)
        stalled, other = _send(one, store_url), _send(two, store_url)
        _wait_until_both_send(store_url, one, [stalled, other], handler)  # each holds a batch
        stalled.send_signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        handler.release.set()
        try:
            # The other machine sends its own share and, once the stopped one's lease has
            # run out (1 s), the rows the stopped one held.
            with handler.lock:
                everyone = handler.lock.wait_for(
                    lambda: len({r for m in handler.messages for r in m.recipients}) >= count,
                    60,
                )
            assert everyone, "the other machine never took the stopped one's rows over"
            assert time.monotonic() - stopped_at > 1.0  # past the lease
        finally:
            stalled.send_signal(signal.SIGCONT)
        _finish(stalled)
        _finish(other)
    got = Counter(r for _at, r in handler.started)
    assert set(got) == set(emails)
    # A second copy only of a message the stopped machine had begun before it stopped (in
    # flight); never one it began after it woke up: those rows were no longer its own.
    grace = 0.2  # its last commands may reach the sink a moment after the signal was sent
    twice = [r for r, n in got.items() if n > 1]
    assert len(twice) <= CONNECTIONS, twice
    for recipient in twice:
        starts = sorted(at for at, r in handler.started if r == recipient)
        assert starts[0] < stopped_at + grace, (recipient, starts, stopped_at)
    assert len(_owners(store_url, one)) == 2


def test_two_machines_starting_at_once_make_one_digest(
    tmp_path: Path, store_url: str, smtpd: SmtpServer
) -> None:
    count = 60
    one = _machine(tmp_path / "one", smtpd.port)
    two = _machine(tmp_path / "two", smtpd.port)
    emails = add_confirmed(one, store_url, count)
    runs = [_send(one, store_url), _send(two, store_url)]  # the same moment, no digest yet
    outs = [_finish(run) for run in runs]
    summaries = [SUMMARY.findall(out) for out in outs]
    days = {found[0][0] for found in summaries if found}
    assert len(days) == 1, outs
    (day,) = days
    with open_database(one / "syndicate.db", url=store_url) as db:
        digests = db.conn.execute("SELECT day, article_ids FROM digests").fetchall()
        assert day_counts(db, day=date.fromisoformat(day)) == {"sent": count}
    assert [row[0] for row in digests] == [day]
    got = Counter(smtpd.handler.recipients())
    assert set(got) == set(emails)
    assert max(got.values()) == 1  # nobody mailed twice
    assert len({m.headers["Subject"] for m in smtpd.handler.messages}) == 1  # one digest
    ids = {m.headers["Message-ID"].split(".", 1)[0] for m in smtpd.handler.messages}
    assert ids == {f"<{day}"}
    sent = sum(int(found[0][1]) for found in summaries if found)
    assert sent == count, outs


@pytest.mark.slow(seconds=6)
def test_a_machine_whose_clock_runs_ahead_never_takes_a_live_lease(
    tmp_path: Path, store_url: str
) -> None:
    # Leases are compared across machines. With each machine's own clock, one running 30 s
    # ahead saw every lease of the other (1 s) as run out, claimed rows the other held
    # and was sending, and both sent them: 75 second copies of 300 in one run.
    if shutil.which("faketime") is None:
        pytest.skip("libfaketime is not installed (Debian package faketime)")
    handler = TimedRecorder()
    count = 300
    with run_smtp_server(handler) as server:
        handler.delay = 0.02
        handler.holding = True
        one = _machine(tmp_path / "one", server.port)
        two = _machine(tmp_path / "two", server.port)
        emails = add_confirmed(one, store_url, count)
        runs = [_send(one, store_url), _send(two, store_url, clock="+30s")]
        _both_sending(handler, runs)
        handler.release.set()
        results = [run.communicate(timeout=120) for run in runs]
    for run, (_out, err) in zip(runs, results, strict=True):
        assert run.returncode == 0, err
        assert "Traceback" not in err, err
    got = Counter(r for _at, r in handler.started)
    assert set(got) == set(emails)
    assert len(_owners(store_url, one)) == 2, results  # both machines did send
    assert sum(got.values()) - count == 0, got.most_common(3)
    assert "this machine's clock is 30." in results[1][1]


@pytest.mark.slow(seconds=6)
def test_a_machine_whose_clock_steps_back_mid_run_never_loses_its_leases(
    tmp_path: Path, store_url: str
) -> None:
    # NTP steps one machine's clock back an hour while both send. Its leases followed the
    # server's clock from where its own clock said time had got to: each lease it took or
    # renewed after the step had run out an hour before, the other machine claimed the rows
    # it was sending, and both sent them.
    if not Path(FAKETIME_LIB).exists():
        pytest.skip("libfaketime is not installed (Debian package faketime)")
    handler = TimedRecorder()
    count = 300
    offset = tmp_path / "faketime.rc"
    offset.write_text("+0\n", encoding="ascii")
    with run_smtp_server(handler) as server:
        handler.delay = 0.02
        handler.holding = True
        one = _machine(tmp_path / "one", server.port)
        two = _machine(tmp_path / "two", server.port)
        emails = add_confirmed(one, store_url, count)
        runs = [_send(one, store_url), _send(two, store_url, clock_file=offset)]
        _wait_until_both_send(store_url, one, runs, handler)  # each machine holds a batch now
        offset.write_text("-1h\n", encoding="ascii")  # the step, on machine two only
        handler.release.set()
        results = [run.communicate(timeout=120) for run in runs]
    for run, (_out, err) in zip(runs, results, strict=True):
        assert run.returncode == 0, err
        assert "Traceback" not in err, err
    got = Counter(r for _at, r in handler.started)
    assert set(got) == set(emails)
    assert sum(got.values()) - count == 0, got.most_common(3)


def test_two_machines_either_side_of_midnight_never_mail_the_days_out_of_order(
    tmp_path: Path, store_url: str, smtpd: SmtpServer
) -> None:
    # The site's midnight (Asia/Ho_Chi_Minh) falls between two machines' clocks, 40 s apart.
    # The one ahead made and mailed the digest of 1 November; a dump came in; the one behind,
    # still on 31 October, made a digest of the 31st from it and mailed it after the 1st's.
    if shutil.which("faketime") is None:
        pytest.skip("libfaketime is not installed (Debian package faketime)")
    one = _machine(tmp_path / "one", smtpd.port)
    two = _machine(tmp_path / "two", smtpd.port)
    emails = add_confirmed(one, store_url, 5)
    ahead = _send(one, store_url, clock="@2024-10-31 17:00:30")  # 00:00:30 on 1 November
    assert SUMMARY.findall(_finish(ahead))[0][:2] == ("2024-11-01", "5")
    (two / "seeds" / "day2.txt").write_text(
        "Hội chợ nông sản\n31/10/2024 23:50\nLGO - Tối 31/10, hội chợ nông sản bế mạc.\n"
        "Hội chợ có 120 gian hàng.\n",
        encoding="utf-8",
    )
    behind = _send(two, store_url, clock="@2024-10-31 16:59:50")  # 23:59:50 on 31 October
    _out, err = behind.communicate(timeout=120)
    assert behind.returncode == 75, err
    assert "today is 2024-10-31 by this machine's clock" in err
    got = Counter(smtpd.handler.recipients())
    assert got == Counter(emails)  # each once, the digest of 1 November
    with open_database(one / "syndicate.db", url=store_url) as db:
        days = db.conn.execute("SELECT day FROM digests").fetchall()
    assert [d for (d,) in days] == ["2024-11-01"]


def test_a_digest_a_machine_days_ahead_made_stops_no_later_days_digest_elsewhere(
    tmp_path: Path, store_url: str, smtpd: SmtpServer
) -> None:
    # One machine's clock ran three days ahead: it made and mailed the digest of that day.
    # Every other machine, its clock right, refused each day before it (exit 75) until the
    # day came: subscribers got nothing for three days. A machine whose own clock is the
    # one behind (the database server's clock says so) still refuses.
    if shutil.which("faketime") is None:
        pytest.skip("libfaketime is not installed (Debian package faketime)")
    ahead, right, behind = (
        _machine(tmp_path / name, smtpd.port) for name in ("ahead", "right", "behind")
    )
    emails = add_confirmed(ahead, store_url, 5)
    (day_ahead, sent, *_rest) = SUMMARY.findall(_finish(_send(ahead, store_url, clock="+3d")))[0]
    assert sent == "5"
    (right / "seeds" / "day2.txt").write_text(
        "Hội chợ nông sản\n01/11/2024 09:00\nLGO - Sáng 1/11, hội chợ nông sản bế mạc.\n"
        "Hội chợ có 120 gian hàng.\n",
        encoding="utf-8",
    )
    on_time = _send(right, store_url)
    out, err = on_time.communicate(timeout=120)
    assert on_time.returncode == 0, err
    (today, sent, *_rest) = SUMMARY.findall(out)[0]
    assert sent == "5"
    assert date.fromisoformat(today) < date.fromisoformat(day_ahead)
    assert f"send: the digest of {day_ahead}, after today ({today} by this machine's" in err
    assert "`syndicate digest --retire DAY` removes it" in err
    late = _send(behind, store_url, clock="-3d")
    _out, err = late.communicate(timeout=120)
    assert late.returncode == 75, err
    assert "behind the database server's: one of them is wrong" in err
    assert Counter(smtpd.handler.recipients()) == Counter(emails * 2)  # two days, each once


def test_a_machine_whose_clock_is_behind_cannot_retire_todays_digest(
    tmp_path: Path, store_url: str, smtpd: SmtpServer
) -> None:
    # A machine whose clock is a day behind takes today's digest, made and mailed by a
    # machine with the right clock, for one dated ahead. `digest --retire` from it deleted
    # the digest and the ledger rows of everyone it went to: the day's next run mailed them
    # all a second digest of the day, with the same Message-IDs.
    if shutil.which("faketime") is None:
        pytest.skip("libfaketime is not installed (Debian package faketime)")
    right, behind = (_machine(tmp_path / name, smtpd.port) for name in ("right", "behind"))
    add_confirmed(right, store_url, 3)
    (today, sent, *_rest) = SUMMARY.findall(_finish(_send(right, store_url)))[0]
    assert sent == "3"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNDICATE_")}
    env |= {ENV_STORE_URL: store_url, "SYNDICATE_SECRET": SECRET}
    env["FAKETIME_DONT_FAKE_MONOTONIC"] = "1"
    retire = subprocess.run(
        ["faketime", "-f", "-1d", sys.executable, "-m", "syndicate", "digest", "--retire", today],
        cwd=behind,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert retire.returncode == 75, retire.stderr
    assert "behind the database server's" in retire.stderr
    with open_database(right / "syndicate.db", url=store_url) as db:
        assert day_counts(db, day=date.fromisoformat(today)) == {"sent": 3}

"""Reading never blocks writing: previews and reads take no write lock, and a busy
database (or a full disk) is "try again later": exit 75 on the command line, 503 on the web.

Real stores on both engines (SQLite files, PostgreSQL databases), real concurrent
connections and processes, the live web server.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from syndicate.cli import AppContext, cli
from syndicate.config import Settings, SubscribeSettings
from syndicate.errors import StoreBusyError, StoreFullError
from syndicate.publish import pool, sync_articles
from syndicate.send.digests import preview_digest
from syndicate.store import postgres
from syndicate.store.subscribers import add_subscriber, get_by_email, iter_subscribers
from tests.conftest import FIXED_NOW, ROOT
from tests.plugins.postgres import ENV_STORE_URL, open_store, store_environ
from tests.plugins.web import LiveServer

pytestmark = pytest.mark.usefixtures("store")

SEEDS = ROOT / "seeds"
# Seeds written long before the run: the parse cache vouches for them by their stat alone.
OLD_MTIME = 1_700_000_000
SHORT_WAIT = 0.1  # store.busy_timeout in these tests, seconds


def store_name(database: Path) -> str:
    """How messages name the test's store: the SQLite file, or `PostgreSQL at host:port/db`."""
    url = os.environ.get(ENV_STORE_URL)
    return postgres.where(url) if url else str(database)


def busy_line(database: Path) -> str:
    return (
        f"Error: {store_name(database)}: the database is busy (another syndicate command is "
        "writing). Try again in a moment.\n"
    )


def environ() -> dict[str, str]:
    """A subprocess's environment: none of ours but the test's store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNDICATE_")}
    return env | store_environ()


@contextmanager
def held_write_lock(database: Path) -> Iterator[None]:
    """Another connection's write transaction, as `send` holds one while it records a batch
    (SQLite's `BEGIN IMMEDIATE`, PostgreSQL's advisory write lock)."""
    with open_store(database) as holder, holder.transaction():
        yield


def copy_seeds(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for seed in SEEDS.glob("*.txt"):
        target = folder / seed.name
        shutil.copy(seed, target)
        os.utime(target, (OLD_MTIME, OLD_MTIME))


@pytest.fixture
def project(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder with the shipped seeds and a short busy timeout; returns the database."""
    copy_seeds(workdir / "seeds")
    (workdir / "syndicate.toml").write_text(
        f"[store]\nbusy_timeout = {SHORT_WAIT}\n", encoding="utf-8"
    )
    monkeypatch.chdir(workdir)
    # The day of the shipped seeds: a digest of them is fresh, so no freshness warning.
    monkeypatch.setattr(AppContext, "now", lambda self: FIXED_NOW.timestamp())
    for name in ("SYNDICATE_CONFIG", "SYNDICATE_SECRET", "SYNDICATE_SMTP_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    database = workdir.resolve() / "syndicate.db"
    open_store(database).close()  # created and migrated: opening it later writes nothing
    return database


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


# --------------------------------------------------------------------------- command line


@pytest.mark.parametrize(
    "args",
    [("subscribers", "add", "lan@example.org"), ("build",), ("send",)],
    ids=["subscribers-add", "build", "send"],
)
def test_a_command_that_must_write_exits_75_with_one_line_while_the_database_is_busy(
    project: Path, args: tuple[str, ...]
) -> None:
    with held_write_lock(project):
        started = time.monotonic()
        code, out, err = run(*args)
        waited = time.monotonic() - started
    assert (code, out, err) == (75, "", busy_line(project))
    assert waited >= SHORT_WAIT  # it waited its busy timeout first, then gave up


@pytest.mark.slow
def test_a_busy_database_is_one_line_and_exit_75_in_a_real_process(project: Path) -> None:
    with held_write_lock(project):
        done = subprocess.run(
            [sys.executable, "-m", "syndicate", "subscribers", "add", "lan@example.org"],
            cwd=project.parent,
            env=environ(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert (done.returncode, done.stdout, done.stderr) == (75, "", busy_line(project))


def test_previews_and_reads_go_on_while_another_connection_holds_the_write_lock(
    project: Path,
) -> None:
    assert run("subscribers", "add", "lan@example.org")[0] == 0
    assert run("build")[0] == 0  # the parse cache now vouches for every seed
    with held_write_lock(project):
        code, out, err = run("digest", "--out", "preview")
        assert (code, err) == (0, ""), err
        assert re.match(r"Digest of \d{4}-\d\d-\d\d: \d+ articles\.\n", out)
        assert (project.parent / "preview" / "digest.html").is_file()
        code, out, err = run("send", "--dry-run")
        assert (code, err) == (0, ""), err
        assert "would go to 1 subscriber, 0 skipped" in out
        code, out, err = run("subscribers", "stats")
        assert (code, err) == (0, "")
        assert out.startswith(
            "pending: 0\nconfirmed: 1\nunsubscribed: 0\nbounced: 0\ncomplained: 0\ntotal: 1\n"
        )
        code, out, _ = run("subscribers", "list")
        assert (code, out) == (0, "1\tlan@example.org\tvi\tconfirmed\n")
        code, out, _ = run("subscribers", "export", "backup.csv")
        assert (code, out) == (0, "Exported 1 subscribers to backup.csv.\n")
        seed = sorted((project.parent / "seeds").iterdir())[0]
        assert run("inspect", str(seed))[0] == 0
    with open_store(project) as db:
        # The previews stored no digest and marked no article.
        assert db.conn.execute("SELECT count(*) FROM digests").fetchone()[0] == 0
        marked = db.conn.execute("SELECT count(*) FROM articles WHERE digest_day IS NOT NULL")
        assert marked.fetchone()[0] == 0


def test_a_preview_over_new_dumps_waits_then_exits_75_while_the_database_is_busy(
    project: Path,
) -> None:
    # New dumps must go into the parse cache, which is a write: it waits, then gives up.
    with held_write_lock(project):
        assert run("digest", "--out", "preview") == (75, "", busy_line(project))
    assert not (project.parent / "preview").exists()


def test_a_write_goes_on_while_a_preview_is_reading(settings: Settings) -> None:
    copy_seeds(settings.paths.seeds)
    now = datetime(2024, 11, 1, 6, 0, tzinfo=UTC)
    with open_store(settings.paths.database) as db:
        sync_articles(settings, db, now=now)
    # Hold the preview mid-way: at its second query inside its read transaction, its
    # snapshot is taken and still open.
    reached, release = threading.Event(), threading.Event()
    statements: list[str] = []

    def trace(statement: str) -> None:
        statements.append(statement)
        if any(s in READ_BEGINS for s in statements[:-1]) and not reached.is_set():
            if sum(s.lstrip().upper().startswith("SELECT") for s in statements) >= 2:
                reached.set()
                release.wait(timeout=30)

    plans = []
    with open_store(settings.paths.database, any_thread=True) as preview_db:
        preview_db.conn = Traced(preview_db.conn, trace)

        def preview() -> None:
            plans.append(preview_digest(settings, preview_db, now=now))

        thread = threading.Thread(target=preview)
        thread.start()
        try:
            assert reached.wait(timeout=30), "the preview never reached its read transaction"
            # A sign-up (another connection, a short busy timeout) goes through at once.
            with open_store(settings.paths.database, busy_timeout=SHORT_WAIT) as other:
                add_subscriber(other, "lan@example.org", language="vi", now=now)
                assert get_by_email(other, "lan@example.org") is not None
        finally:
            release.set()
            thread.join(timeout=30)
    assert len(plans) == 1
    assert plans[0] is not None
    assert plans[0].articles


# What opens a read snapshot, on either engine.
READ_BEGINS = ("BEGIN DEFERRED", *postgres.BEGIN_READ)


class Traced:
    """A store connection that shows each statement to `trace` before it runs it."""

    def __init__(self, conn: Any, trace: Callable[[str], None]) -> None:
        self._conn, self._trace = conn, trace

    def execute(self, sql: str, *params: Any) -> Any:
        self._trace(sql)
        return self._conn.execute(sql, *params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def _dump(n: int) -> str:
    return (
        f"Tin số {n}: tỉnh Lam Giang khánh thành công trình thứ {n}\n"
        f"{1 + n % 28:02d}/10/2024 {8 + n % 12:02d}:{n % 60:02d}\n"
        f"LGO - Sáng {1 + n % 28}/10, tỉnh Lam Giang khánh thành công trình số {n}.\n"
        f"Công trình số {n} có tổng mức đầu tư {n * 7} tỷ đồng, do tỉnh quản lý.\n"
        f"Đây là một trong những công trình trọng điểm của năm, mã {n}.\n"
        "Hoài Nam\n"
    )


# The preview's reading processes (publish/pool.py starts one per core, at most _MAX_WORKERS).
WORKERS = min(pool._MAX_WORKERS, os.cpu_count() or 1)


def _children(pid: int) -> set[int]:
    """The processes `pid` has started and not yet reaped (its threads' children too)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # the thread has ended
            found |= {int(child) for child in (task / "children").read_text().split()}
    return found


@pytest.mark.skipif(WORKERS < 2, reason="on one core the preview reads in its own process")
@pytest.mark.slow(seconds=8)
def test_sign_ups_are_answered_at_once_while_a_big_preview_runs(
    live_server: Callable[..., LiveServer], settings: Settings, workdir: Path
) -> None:
    # Enough dumps for the preview to read them in worker processes: it once held the write
    # lock throughout, and a sign-up waited for it past store.busy_timeout (503). Here the
    # workers are stopped mid-run, so the preview waits for its reads for as long as the
    # sign-ups take: it may finish writing the batches it has (each its own short
    # transaction), then holds no lock. (Held, not raced: a loaded machine once stretched a
    # sign-up overlapping a batch past a 1 s busy timeout.)
    for n in range(4000):
        (settings.paths.seeds / f"{n:05d}.txt").write_text(_dump(n), encoding="utf-8")
    server = live_server(subscribe=SubscribeSettings(rate_limit=100_000))
    preview = subprocess.Popen(  # the same folder, so the same seeds and database
        [sys.executable, "-m", "syndicate", "-q", "digest", "--out", "preview"],
        cwd=workdir,
        env=environ(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while len(workers) < WORKERS:  # the pool starts them all with the first reads
            assert preview.poll() is None, "the preview ended before it read in workers"
            assert time.monotonic() < deadline, f"the preview started {len(workers)} workers"
            with contextlib.suppress(FileNotFoundError):  # it has just ended
                workers = _children(preview.pid)
            time.sleep(0.01)
        try:  # each one stopped is continued, whatever fails, even a worker gone meanwhile
            for worker in workers:
                os.kill(worker, signal.SIGSTOP)
            with httpx.Client(
                base_url=server.url, timeout=30, headers={"origin": server.url[:-1]}
            ) as web:
                for n in range(5):
                    answer = web.post(
                        "subscribe", data={"email": f"r{n}@example.org", "language": "vi"}
                    )
                    assert answer.status_code == 200  # not 503: the store was not busy
            assert preview.poll() is None  # the sign-ups were answered mid-run
        finally:
            for worker in workers:
                with contextlib.suppress(ProcessLookupError):  # it has ended
                    os.kill(worker, signal.SIGCONT)
        _, err = preview.communicate(timeout=60)
    finally:  # a failure above must not leave the preview running past the test
        if preview.poll() is None:
            preview.kill()
            for worker in workers:  # they hold its output open
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker, signal.SIGKILL)
            preview.communicate()
    # The generated dumps are dated in the past: the freshness warning is expected, nothing else.
    errors = [line for line in err.decode().splitlines() if not line.startswith("Warning: digest")]
    assert (preview.returncode, errors) == (0, []), err.decode()
    server.signups.wait_for(5, timeout=30)
    with open_store(settings.paths.database) as db:  # each one stored at its first try
        assert sum(1 for _ in iter_subscribers(db)) == 5


# --------------------------------------------------------------------------- web


def test_a_busy_database_answers_503_with_retry_after_and_the_pages_still_answer(
    live_server: Callable[..., LiveServer], settings: Settings
) -> None:
    server = live_server(store=replace(settings.store, busy_timeout=SHORT_WAIT))
    (server.settings.paths.output / "rss.xml").write_bytes(b"<rss/>")
    origin = {"origin": server.url[:-1]}
    with httpx.Client(base_url=server.url, timeout=30, headers=origin) as web:
        assert web.post("subscribe", data={"email": "lan@example.org"}).status_code == 200
        [message] = server.mail.wait_for(1)
        body = message.get_body(("plain",))
        assert body is not None
        found = re.search(
            re.escape(server.url) + r"confirm\?token=[A-Za-z0-9_\-]+", body.get_content()
        )
        assert found, "the confirmation mail has no confirm link"
        with held_write_lock(server.settings.paths.database):
            # Confirming must write: it waits its busy timeout, then asks to come back.
            busy = web.post(found.group(0))
            assert busy.status_code == 503
            assert busy.headers["retry-after"] == "5"
            assert busy.headers["content-type"] == "text/html; charset=utf-8"
            assert '<html lang="vi">' in busy.text
            assert "Hệ thống đang bận" in busy.text
            english = web.post(found.group(0), headers={"accept-language": "en"})
            assert (english.status_code, english.headers["retry-after"]) == (503, "5")
            assert "Busy for a moment" in english.text
            # Pages, the form, the confirm button and the health check read only: they
            # still answer.
            assert web.get("rss.xml").content == b"<rss/>"
            assert web.get(found.group(0)).status_code == 200
            assert web.get("subscribe").status_code == 200
            assert web.get("healthz").json()["checks"]["database"] == "ok"
            # A sign-up must write before it is answered: it waits its busy timeout,
            # then asks to come back, so nothing is dropped behind a 200 (not stored,
            # and not tried again behind the client's back).
            refused = web.post("subscribe", data={"email": "an@example.org"})
            assert (refused.status_code, refused.headers["retry-after"]) == (503, "5")
            assert "Hệ thống đang bận" in refused.text
            # Lan's only: this one met the busy database at its first write (its count
            # for the rate limit), before anything of it was stored.
            assert server.signups.count == 1
        with open_store(server.settings.paths.database) as db:
            assert get_by_email(db, "an@example.org") is None
        # Sent again once the lock is gone, as the 503 asked: stored, and mailed once.
        assert web.post("subscribe", data={"email": "an@example.org"}).status_code == 200
        [_, mailed] = server.mail.wait_for(2)
        assert mailed["To"] == "an@example.org"
        # The lock gone, the same link confirms.
        assert web.post(found.group(0)).status_code == 200
    with open_store(server.settings.paths.database) as db:
        stored = get_by_email(db, "an@example.org")
        assert stored is not None
        assert stored.status == "pending"
        confirmed = get_by_email(db, "lan@example.org")
        assert confirmed is not None
        assert confirmed.status == "confirmed"


def test_store_errors_name_a_busy_database(tmp_path: Path) -> None:
    database = tmp_path / "syndicate.db"
    with open_store(database, busy_timeout=SHORT_WAIT) as db:
        with held_write_lock(database), pytest.raises(StoreBusyError) as busy:
            add_subscriber(db, "lan@example.org", language="vi", now=datetime.now(UTC))
        assert busy.value.exit_code == 75
        assert str(busy.value) == busy_line(database)[len("Error: ") : -1]


@pytest.mark.sqlite_only
def test_a_sqlite_file_that_may_not_grow_is_a_full_disk(tmp_path: Path) -> None:
    database = tmp_path / "syndicate.db"
    with open_store(database, busy_timeout=SHORT_WAIT) as db:
        # A database that may not grow is SQLite's "disk is full".
        pages = db.conn.execute("PRAGMA page_count").fetchone()[0]
        db.conn.execute(f"PRAGMA max_page_count = {pages}")

        def sign_up_many() -> None:
            for n in range(200):
                add_subscriber(db, f"r{n}@example.org", language="vi", now=datetime.now(UTC))

        with pytest.raises(StoreFullError) as full:
            sign_up_many()
        assert full.value.exit_code == 75
        assert str(full.value) == (
            f"{database}: the disk is full, so the database cannot grow. "
            "Free some space, then try again."
        )


# --------------------------------------------------------------------------- full disk


def _can_mount() -> bool:
    return sys.platform == "linux" and os.geteuid() == 0 and shutil.which("unshare") is not None


@pytest.mark.slow
@pytest.mark.sqlite_only
@pytest.mark.skipif(not _can_mount(), reason="needs root and unshare to mount a small tmpfs")
def test_a_full_disk_is_exit_75_not_2(workdir: Path) -> None:
    """A real full disk: a 2 MiB tmpfs in a private mount namespace, filled up."""
    copy_seeds(workdir / "seeds")
    disk = workdir / "disk"
    disk.mkdir()
    # The database on the small disk; and one beside it, for a file write that fails.
    (workdir / "on-disk.toml").write_text(
        '[paths]\noutput = "disk/feeds"\ndatabase = "disk/syndicate.db"\n', encoding="utf-8"
    )
    (workdir / "beside.toml").write_text('[paths]\ndatabase = "syndicate.db"\n', encoding="utf-8")
    syndicate = f"{sys.executable} -m syndicate"
    script = f"""
    mount -t tmpfs -o size=2m tmpfs disk || exit 99
    {syndicate} --config on-disk.toml subscribers add lan@example.org > /dev/null || exit 98
    {syndicate} --config beside.toml subscribers add lan@example.org > /dev/null || exit 98
    dd if=/dev/zero of=disk/filler bs=4k 2> /dev/null
    {syndicate} --config on-disk.toml subscribers add an@example.org; echo "exit $?"
    {syndicate} --config beside.toml subscribers export disk/backup.csv; echo "exit $?"
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNDICATE_")}
    done = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode == 99:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    database = workdir.resolve() / "disk" / "syndicate.db"
    assert done.stdout == "exit 75\nexit 75\n", done.stderr
    assert done.stderr == (
        f"Error: {database}: the disk is full, so the database cannot grow. "
        "Free some space, then try again.\n"
        "Error: disk/backup.csv: cannot write: No space left on device. "
        "Free some space on that disk, then run again (nothing was half-written).\n"
    )

"""Where production machines run out of things: room on the outbox's disk, a PostgreSQL
server's connection slots, a process's open files, the right to write a store another user
owns.

Real parts only: a PostgreSQL cluster of this module's own with a small max_connections
(and connections of the test's holding most of them), a real aiosmtpd, `syndicate send`
as a subprocess under a low RLIMIT_NOFILE.
"""

from __future__ import annotations

import json
import os
import pwd
import resource
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from pathlib import Path

import pytest

from syndicate.errors import StoreUnavailableError
from syndicate.store.subscribers import add_subscriber
from tests.plugins.postgres import ENV_STORE_URL, Cluster, open_store, start_cluster
from tests.plugins.sendproject import DUMP, write_send_project
from tests.plugins.smtp import run_smtp_server

MAX_CONNECTIONS = 8


@pytest.fixture(scope="module")
def small_cluster() -> Iterator[Cluster]:
    """A cluster of the module's own taking MAX_CONNECTIONS connections, none kept for
    superusers (the tests connect as one)."""
    try:
        cluster = start_cluster()
    except (FileNotFoundError, KeyError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"no PostgreSQL cluster could start here: {exc}")
    try:
        cluster.stop()
        options = (
            f"-p {cluster.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={cluster.folder} -c fsync=off "
            f"-c max_connections={MAX_CONNECTIONS} -c superuser_reserved_connections=0"
        )
        cluster.pg_ctl("-w", "-l", str(cluster.folder / "server.log"), "-o", options, "start")
        yield cluster
    finally:
        cluster.stop("immediate")
        shutil.rmtree(cluster.folder, ignore_errors=True)


def _syndicate(folder: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = _clean_env()
    env[ENV_STORE_URL] = url
    return subprocess.run(
        [sys.executable, "-m", "syndicate", *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if not line.startswith("Warning: digest of")]


@pytest.mark.parametrize(
    "words",
    [
        "sorry, too many clients already",
        'too many connections for role "news"',
        'too many connections for database "news"',
        "remaining connection slots are reserved for roles with the SUPERUSER attribute",
    ],
)
def test_a_server_out_of_connection_slots_is_named_so(words: str) -> None:
    from syndicate.store import not_connected

    where = "PostgreSQL at db.example.org:5432/news"
    failed = Exception(
        f'connection failed: connection to server at "10.0.0.5", port 5432 failed: FATAL:  {words}'
    )
    error = not_connected(where, "postgresql://news@db.example.org/news", failed)
    assert isinstance(error, StoreUnavailableError)
    assert error.exit_code == 75
    assert error.message == f"{where}: the server takes no more connections: {words}."
    assert "max_connections" in str(error)


def test_a_copy_to_a_full_server_says_to_run_the_copy_again(
    small_cluster: Cluster, tmp_path: Path
) -> None:
    # "The next run (or request, in `serve`) tries again": nothing runs a copy again.
    import psycopg

    url = small_cluster.new_database()
    with open_store(tmp_path / "source.db") as db:
        add_subscriber(db, "an@example.org", now=datetime(2024, 11, 1, tzinfo=UTC))
    held = [psycopg.connect(url, autocommit=True) for _ in range(MAX_CONNECTIONS)]
    try:
        done = _syndicate(tmp_path, "", "store", "copy", "--from", "source.db", "--to", url)
    finally:
        for conn in held:
            conn.close()
    assert (done.returncode, done.stdout) == (75, "")
    [line] = _errors(done.stderr)
    assert "the server takes no more connections: sorry, too many clients already." in line
    assert line.endswith("holds 3 per worker and 1 more. Then run the copy again."), line


@pytest.mark.slow(seconds=8)
def test_send_workers_beyond_max_connections_say_so_and_the_next_run_finishes(
    small_cluster: Cluster, tmp_path: Path
) -> None:
    import psycopg

    url = small_cluster.new_database()
    (tmp_path / "seeds").mkdir()
    (tmp_path / "seeds" / "day1.txt").write_text(DUMP, encoding="utf-8")
    emails = [f"reader{n}@example.org" for n in range(12)]
    (tmp_path / "list.csv").write_text("email\n" + "\n".join(emails) + "\n", encoding="utf-8")
    assert _syndicate(tmp_path, url, "subscribers", "import", "list.csv").returncode == 0
    # Others hold all but two of the server's connections: no worker gets the three it needs.
    held = [psycopg.connect(url, autocommit=True) for _ in range(MAX_CONNECTIONS - 2)]
    try:
        done = _syndicate(tmp_path, url, "send", "--workers", "3")
    finally:
        for conn in held:
            conn.close()
    assert done.returncode == 75, done.stderr
    assert "Traceback" not in done.stderr
    [line] = _errors(done.stderr)
    assert line.startswith("Error: PostgreSQL at 127.0.0.1:"), line
    assert "the server takes no more connections: sorry, too many clients already." in line
    assert "raise its max_connections" in line
    assert "Check that the server runs" not in line  # it does: it is full
    # Slots free again, for the parent and two workers: that run sends each reader the
    # digest, once.
    again = _syndicate(tmp_path, url, "send", "--workers", "2")
    assert again.returncode == 0, again.stderr
    assert _errors(again.stderr) == []
    mails = sorted((tmp_path / "outbox").glob("*/*.eml"))
    to = Counter(str(message_from_bytes(path.read_bytes())["To"]) for path in mails)
    assert to == Counter(emails)


@pytest.mark.slow(seconds=4)
@pytest.mark.parametrize("hard_limit", ["same", "higher"])
def test_send_fits_its_smtp_connections_to_the_open_files_it_may_have(
    store: str, tmp_path: Path, hard_limit: str
) -> None:
    # 100 connections, 64 open files: before, each connection past the limit failed to
    # open (EMFILE) and waited out its retries, a run ten times slower, said nowhere.
    soft = 64
    hard = soft if hard_limit == "same" else resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard_limit == "higher" and hard != resource.RLIM_INFINITY and hard < 200:
        pytest.skip(f"the hard open-files limit here ({hard}) is too low to raise to")
    with run_smtp_server() as server:
        write_send_project(tmp_path, port=server.port, connections=100, lease=60)
        emails = [f"reader{n}@example.org" for n in range(150)]
        yesterday = datetime.now(UTC) - timedelta(days=1)
        with open_store(tmp_path / "syndicate.db") as db:
            for email in emails:
                add_subscriber(db, email, now=yesterday)
        env = _clean_env()
        if os.environ.get(ENV_STORE_URL):
            env[ENV_STORE_URL] = os.environ[ENV_STORE_URL]
        done = subprocess.run(
            [sys.executable, "-m", "syndicate", "send"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)),
        )
        assert done.returncode == 0, done.stderr
        assert "sent 150, failed 0" in done.stdout
        assert Counter(server.handler.recipients()) == Counter(emails)
    if hard_limit == "same":
        assert _errors(done.stderr) == [
            "warning: smtp.connections = 100 needs about 132 open files, and this process may "
            "open 64 (ulimit -n): sending on 32 connections. Raise the limit (ulimit -n, or "
            "LimitNOFILE= in a systemd unit) or lower smtp.connections."
        ]
    else:  # raised to what the connections need: nothing to say
        assert _errors(done.stderr) == []


# The user a misconfigured cron job runs as; root made the store.
OTHER_USER = "nobody"


def _python_for(user: str, folder: Path) -> str | None:
    """A Python that `user` can run and that imports this checkout's syndicate: this one,
    or a venv made in `folder` from the system's Python of the same version (this one may
    live under /root) reading this venv's site-packages. None when there is none."""
    probe = ["-c", "import syndicate"]
    if _runs_as(user, [sys.executable, *probe]):
        return sys.executable
    base = shutil.which(f"python{sys.version_info.major}.{sys.version_info.minor}", path="/usr/bin")
    if base is None:
        return None
    venv = folder / "venv"
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    site = sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)})
    ours = sysconfig.get_path("purelib")
    Path(site, "syndicate-tests.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    python = str(venv / "bin" / "python")
    return python if _runs_as(user, [python, *probe]) else None


def _runs_as(user: str, argv: list[str]) -> bool:
    done = subprocess.run(
        ["runuser", "-u", user, "--", *argv], capture_output=True, cwd="/", timeout=60
    )
    return done.returncode == 0


def _syndicate_as_other_user(
    python: str, project: Path, env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    """`python -m syndicate ARGS` in `project`, run as OTHER_USER."""
    return subprocess.run(
        ["runuser", "-u", OTHER_USER, "--", python, "-m", "syndicate", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def as_other_user() -> Iterator[tuple[Path, str]]:
    """A folder every user may enter, and a Python OTHER_USER can run syndicate with."""
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("running a command as another user needs root and runuser")
    pwd.getpwnam(OTHER_USER)
    folder = Path(tempfile.mkdtemp(prefix="syndicate-limits-"))
    try:
        folder.chmod(0o755)
        python = _python_for(OTHER_USER, folder)
        if python is None:
            pytest.skip(f"no Python the user {OTHER_USER} can run")
        yield folder, python
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow(seconds=3)
@pytest.mark.parametrize(
    ("case", "command", "said"),
    [
        # Readable by all, written by its owner only: before, "not a usable syndicate
        # database ... restore this one from a backup", for a store with nothing wrong.
        (
            "read-only",
            ("subscribers", "add", "b@example.org"),
            "may not read and write it (owner root, mode 0644). Run syndicate as root, whose "
            "store it is, or give nobody what it needs: chown nobody {project}/syndicate.db "
            "{project}; nothing was changed.",
        ),
        # Private to its owner: before, "cannot open the database: unable to open database file".
        (
            "private",
            ("subscribers", "list"),
            "may not read and write it (owner root, mode 0600). Run syndicate as root, whose "
            "store it is, or give nobody what it needs: chown nobody {project}/syndicate.db "
            "{project}; nothing was changed.",
        ),
        # No store yet, in a folder this user may not write to.
        (
            "no-store",
            ("subscribers", "add", "b@example.org"),
            "may not make it in {project} (owner root, mode 0755). Run syndicate as root, or "
            "point paths.database at a folder nobody may write to.",
        ),
    ],
)
def test_another_users_store_is_named_with_its_owner_and_left_as_it_was(
    as_other_user: tuple[Path, str], case: str, command: tuple[str, ...], said: str
) -> None:
    folder, python = as_other_user
    project = folder / case
    project.mkdir(mode=0o755)
    database = project / "syndicate.db"
    env = _clean_env()
    if case != "no-store":  # made by root, closed cleanly: no -wal or -shm beside it
        made = subprocess.run(
            [sys.executable, "-m", "syndicate", "subscribers", "add", "a@example.org"],
            cwd=project,
            env=env,
            capture_output=True,
            check=False,
        )
        assert made.returncode == 0, made.stderr
        database.chmod(0o644 if case == "read-only" else 0o600)
    before = database.read_bytes() if database.exists() else None
    done = _syndicate_as_other_user(python, project, env, *command)
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == (
        f"Error: {database}: this user (nobody) " + said.format(project=project)
    )
    assert "Traceback" not in done.stderr
    assert (database.read_bytes() if database.exists() else None) == before
    if before is not None:
        with closing(sqlite3.connect(database)) as conn:
            assert conn.execute("SELECT email FROM subscribers").fetchall() == [("a@example.org",)]


@pytest.mark.slow(seconds=3)
def test_a_store_in_the_project_folder_is_given_without_the_folder_and_the_advice_works(
    as_other_user: tuple[Path, str],
) -> None:
    # Root ran the setup in the project folder (syndicate.toml, seeds/ beside the store);
    # cron runs as nobody. Before, the advice was to give nobody "the store, its -wal and
    # -shm files and its folder (chown)": the whole project folder, config and all. The
    # narrowest change: the store's file, and its -wal and -shm made for nobody.
    folder, python = as_other_user
    project = folder / "in-project"
    project.mkdir(mode=0o755)
    (project / "syndicate.toml").write_text('[site]\ntitle = "Tin"\n', encoding="utf-8")
    env = _clean_env()
    made = subprocess.run(
        [sys.executable, "-m", "syndicate", "subscribers", "add", "a@example.org"],
        cwd=project,
        env=env,
        capture_output=True,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    database = project / "syndicate.db"

    def as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
        return _syndicate_as_other_user(python, project, env, *args)

    done = as_nobody("subscribers", "add", "b@example.org")
    assert done.returncode == 2
    command = (
        f"touch {database}-wal {database}-shm && chmod 600 {database}-wal {database}-shm && "
        f"chown nobody {database} {database}-wal {database}-shm"
    )
    assert done.stderr.splitlines()[-1] == (
        f"Error: {database}: this user (nobody) may not read and write it (owner root, mode "
        f"0600). Run syndicate as root, whose store it is, or give nobody what it needs: "
        f"{command}; nothing was changed."
    )
    # The advice, taken as written, is enough: the folder and the config stay root's.
    subprocess.run(["sh", "-c", command], check=True, timeout=30)
    for email in ("b@example.org", "c@example.org"):  # the second finds the -wal left
        done = as_nobody("subscribers", "add", email)
        assert done.returncode == 0, done.stderr
    listed = as_nobody("subscribers", "list")
    assert listed.returncode == 0, listed.stderr
    assert [line.split("\t")[1] for line in listed.stdout.splitlines()] == [
        "a@example.org",
        "b@example.org",
        "c@example.org",
    ]
    assert (project.stat().st_uid, (project / "syndicate.toml").stat().st_uid) == (0, 0)


@pytest.mark.slow(seconds=3)
def test_a_linked_store_is_judged_where_the_link_leads(as_other_user: tuple[Path, str]) -> None:
    # paths.database a link into a data folder (a container's volume): SQLite makes the
    # -wal and -shm files beside the file the link leads to, so that folder is the one to
    # name. Before, the link's folder was looked at: the user may write there, so the line
    # was "not a usable syndicate database ... restore this one from a backup".
    folder, python = as_other_user
    project, data = folder / "linked", folder / "linked-data"
    project.mkdir(mode=0o755)
    data.mkdir(mode=0o755)
    uid = pwd.getpwnam(OTHER_USER).pw_uid
    os.chown(project, uid, -1)  # the user's own project folder
    env = _clean_env()
    made = subprocess.run(
        [sys.executable, "-m", "syndicate", "subscribers", "add", "a@example.org"],
        cwd=data,
        env=env,
        capture_output=True,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    stored = data / "syndicate.db"
    os.chown(stored, uid, -1)  # the user's store, in root's folder: no -wal can be made
    (project / "syndicate.db").symlink_to(stored)
    before = stored.read_bytes()
    done = _syndicate_as_other_user(python, project, env, "subscribers", "list")
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines()[-1] == (
        f"Error: {project / 'syndicate.db'}: this user (nobody) may not make its -wal and -shm "
        f"files in {data} (owner root, mode 0755). Run syndicate as root, whose folder it is, "
        f"or give nobody what it needs: chown nobody {data}; nothing was changed."
    )
    assert stored.read_bytes() == before


# A snippet run between the two sends, inside their mount namespace: the ledger's counts
# and the addresses marked sent, as JSON.
_LEDGER = """
import json, sys
from pathlib import Path
from syndicate.config import load_settings
from syndicate.store import open_database
import os
settings = load_settings(None, dict(os.environ), cwd=Path.cwd())
with open_database(settings.paths.database, url=settings.store.url) as db:
    rows = db.conn.execute(
        "SELECT s.email FROM deliveries AS d JOIN subscribers AS s ON s.id = d.subscriber_id"
        " WHERE d.status = 'sent'"
    ).fetchall()
json.dump(sorted(r[0] for r in rows), sys.stdout)
"""


def _clean_env() -> dict[str, str]:
    """This process's environment without syndicate's own variables."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SYNDICATE_")}


def _in_own_mounts(
    script: str, cwd: Path, env: dict[str, str], *, timeout: float, what: str
) -> subprocess.CompletedProcess[str]:
    """Run the shell `script` in a mount namespace of its own; skip the test when it exits
    99 (it could not `what`)."""
    done = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode == 99:
        pytest.skip(f"cannot {what} here: {done.stderr.strip()}")
    return done


def _can_mount() -> bool:
    return sys.platform == "linux" and os.geteuid() == 0 and shutil.which("unshare") is not None


@pytest.mark.slow(seconds=5)
@pytest.mark.skipif(not _can_mount(), reason="needs root and unshare to mount a small tmpfs")
def test_an_outbox_disk_that_fills_mid_send_marks_only_whole_mails_sent(
    store: str, tmp_path: Path
) -> None:
    (tmp_path / "seeds").mkdir()
    (tmp_path / "seeds" / "day1.txt").write_text(DUMP, encoding="utf-8")
    (tmp_path / "syndicate.toml").write_text('[paths]\noutbox = "disk/outbox"\n', encoding="utf-8")
    emails = [f"reader{n}@example.org" for n in range(40)]
    yesterday = datetime.now(UTC) - timedelta(days=1)
    with open_store(tmp_path / "syndicate.db") as db:
        for email in emails:
            add_subscriber(db, email, now=yesterday)
    (tmp_path / "disk").mkdir()
    (tmp_path / "ledger.py").write_text(_LEDGER, encoding="utf-8")
    syndicate = f"{sys.executable} -m syndicate"
    # The disk filled, then 64 KiB freed: room for a few mails, not for forty.
    script = f"""
    mount -t tmpfs -o size=1m tmpfs disk || exit 99
    dd if=/dev/zero of=disk/filler bs=4k 2> /dev/null || true  # until the disk is full
    truncate -s -64K disk/filler
    {syndicate} send > out1 2> err1; echo $? > code1
    cp -r disk/outbox after1
    {sys.executable} ledger.py > sent1
    rm disk/filler
    {syndicate} send > out2 2> err2; echo $? > code2
    cp -r disk/outbox after2 && test -s sent1
    """
    env = _clean_env()
    if os.environ.get(ENV_STORE_URL):
        env[ENV_STORE_URL] = os.environ[ENV_STORE_URL]
    done = _in_own_mounts(script, tmp_path, env, timeout=120, what="mount a tmpfs")
    assert done.returncode == 0, done.stderr

    def read(name: str) -> str:
        return (tmp_path / name).read_text(encoding="utf-8")

    def mails(folder: str) -> dict[str, bytes]:
        found = {}
        for path in (tmp_path / folder).rglob("*"):
            if path.is_file():
                assert path.suffix == ".eml", f"left behind: {path}"  # no temp file
                raw = path.read_bytes()
                message = message_from_bytes(raw)
                assert message.defects == [], path
                # Whole: up to the closing boundary of its multipart body.
                assert raw.rstrip().endswith(f"--{message.get_boundary()}--".encode()), path
                found[str(message["To"])] = raw
        return found

    # The first run: one line, exit 75; every address marked sent has its whole mail.
    assert read("code1").strip() == "75", read("err1")
    [line] = _errors(read("err1"))
    assert line.startswith(f"Error: {tmp_path.resolve()}/disk/outbox/"), line
    assert line.endswith(
        ": cannot write: No space left on device. Free some space on that disk, then run "
        "again (nothing was half-written)."
    )
    sent = json.loads(read("sent1"))
    written = mails("after1")
    assert 0 < len(sent) < len(emails)
    assert set(sent) <= set(written)
    # Room again: the next run sends the rest, and each address has one mail, whole.
    assert read("code2").strip() == "0", read("err2")
    assert f"sent {len(emails) - len(sent)}, failed 0" in read("out2")
    final = mails("after2")
    assert sorted(final) == sorted(emails)
    assert all(final[address] == written[address] for address in sent)  # not sent again


@pytest.mark.slow(seconds=2)
@pytest.mark.skipif(not _can_mount(), reason="needs root and unshare to mount read-only")
def test_a_store_on_a_read_only_mount_is_named_so_not_its_owners(tmp_path: Path) -> None:
    # Root may write any file, but not on a read-only mount: before, the line said the
    # store was "not a usable syndicate database" and to restore it from a backup.
    project = tmp_path / "project"
    project.mkdir()
    syndicate = f"{sys.executable} -m syndicate"
    script = f"""
    {syndicate} subscribers add an@example.org > /dev/null || exit 98
    mount --bind {project} {project} && mount -o remount,bind,ro {project} || exit 99
    {syndicate} subscribers add binh@example.org; echo "exit $?"
    """
    env = _clean_env()
    done = _in_own_mounts(script, project, env, timeout=60, what="mount read-only")
    assert (done.returncode, done.stdout) == (0, "exit 2\n"), done.stderr
    assert done.stderr == (
        f"Error: {project / 'syndicate.db'}: the file system holding it is mounted read-only. "
        "Mount it read-write, or point paths.database at a disk this machine may write to; "
        "nothing was changed.\n"
    )
    with closing(sqlite3.connect(project / "syndicate.db")) as conn:
        assert conn.execute("SELECT email FROM subscribers").fetchall() == [("an@example.org",)]


@pytest.mark.slow(seconds=5)
def test_serve_under_a_low_open_files_limit_caps_its_connections_and_logs_no_traceback(
    tmp_path: Path,
) -> None:
    # 128 open files for 800 connections: before, each accept past the limit logged
    # asyncio's traceback, once a second, for as long as the connections stayed.
    import re
    import signal
    import socket
    import threading
    import time

    import httpx

    (tmp_path / "feeds").mkdir()
    (tmp_path / "feeds" / "index.html").write_text("<!doctype html><title>Tin</title>\n")
    env = _clean_env()
    process = subprocess.Popen(
        [sys.executable, "-m", "syndicate", "serve", "--port", "0"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128)),
    )
    assert process.stdout is not None
    assert process.stderr is not None
    held: list[socket.socket] = []
    lines: list[str] = []
    refused = threading.Event()

    def read_log(stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            lines.append(line)
            if "accept" in line:
                refused.set()

    reader = threading.Thread(target=read_log, args=(process.stderr,), daemon=True)
    reader.start()
    try:
        found = re.search(r" at (http://127\.0\.0\.1:(\d+)/) ", process.stdout.readline())
        assert found, "".join(lines)
        port = int(found.group(2))
        # More idle connections than files: those past the limit wait in the listen queue.
        held.extend(socket.create_connection(("127.0.0.1", port)) for _ in range(150))
        assert refused.wait(30), "".join(lines)
        for conn in held:
            conn.close()
        held.clear()
        # Files free again: served as before, once serve has seen the closed ones go (those
        # still in the listen queue are taken, and found closed, first).
        deadline = time.monotonic() + 20
        while (answer := httpx.get(f"{found.group(1)}healthz", timeout=20)).status_code != 200:
            assert answer.status_code == 503
            assert time.monotonic() < deadline, "serve never took connections again"
    finally:
        for conn in held:
            conn.close()
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=20)
        reader.join(timeout=5)
    log = "".join(lines)
    assert "Traceback" not in log, log
    assert (
        "warning: serve: this process may open 128 files (ulimit -n), too few for 800 "
        "connections at once: it takes 64, and answers more with 503. Raise the limit "
        "(ulimit -n, or LimitNOFILE= in a systemd unit).\n"
    ) in lines
    [accept] = [line for line in lines if "accept" in line]
    assert accept.startswith("serve: cannot accept connections now (Too many open files)")


def _under_open_files(
    folder: Path, soft: int, hard: int, *args: str
) -> subprocess.CompletedProcess[str]:
    """`syndicate ARGS` in `folder` under an open-files limit of `soft` (hard `hard`)."""
    env = _clean_env()
    if os.environ.get(ENV_STORE_URL):
        env[ENV_STORE_URL] = os.environ[ENV_STORE_URL]
    return subprocess.run(
        [sys.executable, "-m", "syndicate", *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)),
    )


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("command", ["build", "send", "serve --port 0", "subscribers list"])
def test_too_few_open_files_for_any_command_is_one_line_and_nothing_written(
    store: str, tmp_path: Path, command: str
) -> None:
    # `ulimit -n 10`: before, each command failed where its next file was due, with a
    # traceback (an import, Babel's data, asyncio's self-pipe), or `send` called the store
    # "not a usable syndicate database" and had the operator restore a backup.
    with run_smtp_server() as server:
        write_send_project(tmp_path, port=server.port, connections=2, lease=60)
        before = _tree(tmp_path)
        done = _under_open_files(tmp_path, 10, 10, *command.split())
        assert server.handler.recipients() == []
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        "Error: syndicate: this process may open 10 files (ulimit -n), fewer than the 32 any "
        "command needs; nothing was done. Raise the limit (ulimit -n 1024, or LimitNOFILE= in "
        "a systemd unit).\n"
    )
    assert _tree(tmp_path) == before


def test_a_low_soft_open_files_limit_is_raised_toward_the_hard_one(
    store: str, tmp_path: Path
) -> None:
    with run_smtp_server() as server:
        write_send_project(tmp_path, port=server.port, connections=2, lease=60)
        done = _under_open_files(tmp_path, 10, 256, "build")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Built 1 article")


@pytest.mark.slow(seconds=5)
def test_send_workers_fit_the_open_files_each_process_may_have_and_say_whose(
    store: str, tmp_path: Path
) -> None:
    # 40 open files for `--workers 4` with 20 connections each. Before, the warning said
    # "this process" of a limit that binds each worker, and a parent with too few files for
    # the workers' pipes failed with a traceback halfway through starting them.
    with run_smtp_server() as server:
        write_send_project(tmp_path, port=server.port, connections=20, lease=60)
        emails = [f"reader{n}@example.org" for n in range(60)]
        yesterday = datetime.now(UTC) - timedelta(days=1)
        with open_store(tmp_path / "syndicate.db") as db:
            for email in emails:
                add_subscriber(db, email, now=yesterday)
        done = _under_open_files(tmp_path, 40, 40, "send", "--workers", "4")
        assert done.returncode == 0, done.stderr
        assert "sent 60, failed 0" in done.stdout
        assert Counter(server.handler.recipients()) == Counter(emails)
    assert _errors(done.stderr) == [
        "warning: send --workers 4 needs about 44 open files in this process (its pipes to "
        "each worker), and it may open 40 (ulimit -n): sending with 2 workers. Raise the "
        "limit (ulimit -n, or LimitNOFILE= in a systemd unit) or lower --workers.",
        "warning: smtp.connections = 20 needs about 52 open files, and each of the 2 worker "
        "processes may open 40 (ulimit -n): sending on 8 connections each. Raise the limit "
        "(ulimit -n, or LimitNOFILE= in a systemd unit) or lower smtp.connections.",
    ]


@pytest.mark.slow(seconds=6)
def test_serve_under_a_low_open_files_limit_leaves_each_sign_up_its_confirmation_mail(
    store: str, tmp_path: Path
) -> None:
    # 32 open files, smtp.connections = 8: before, serve took 16 connections as if the
    # confirmation mails needed no files, and a burst of sign-ups on kept-alive connections
    # left the mails none ("confirmation to subscriber 11 failed: ... Too many open files").
    import re
    import signal
    import threading

    import httpx

    with run_smtp_server() as server:
        server.handler.delay = 0.2  # the mails overlap the sign-ups' connections
        write_send_project(tmp_path, port=server.port, connections=8, lease=60)
        with (tmp_path / "syndicate.toml").open("a", encoding="utf-8") as config:
            config.write("[subscribe]\nrate_limit = 100000\n")
        (tmp_path / "feeds").mkdir()
        (tmp_path / "feeds" / "index.html").write_text("<!doctype html><title>Tin</title>\n")
        env = _clean_env()
        if os.environ.get(ENV_STORE_URL):
            env[ENV_STORE_URL] = os.environ[ENV_STORE_URL]
        process = subprocess.Popen(
            [sys.executable, "-m", "syndicate", "serve", "--port", "0"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32)),
        )
        assert process.stdout is not None
        try:
            found = re.search(r" at (http://127\.0\.0\.1:\d+/) ", process.stdout.readline())
            assert found, process.stderr.read() if process.stderr else ""
            url = found.group(1)
            # As many sign-ups at once as serve takes (its warning says 12), each client
            # keeping its connection open while the mails go.
            burst = 12
            answers: list[int | str] = []
            lined_up = threading.Barrier(burst + 1)
            all_done = threading.Barrier(burst + 1)

            def sign_up(number: int) -> None:
                with httpx.Client(base_url=url, timeout=30, headers={"origin": url[:-1]}) as web:
                    web.get("healthz")  # connected before the burst goes
                    lined_up.wait(timeout=30)
                    try:
                        answer = web.post(
                            "subscribe", data={"email": f"r{number}@example.org", "language": "vi"}
                        )
                        answers.append(answer.status_code)
                    except httpx.HTTPError as exc:
                        answers.append(repr(exc))
                    all_done.wait(timeout=60)

            threads = [threading.Thread(target=sign_up, args=(n,)) for n in range(burst)]
            for thread in threads:
                thread.start()
            lined_up.wait(timeout=30)
            assert server.handler.wait_for(burst, timeout=30), answers
            all_done.wait(timeout=60)
            for thread in threads:
                thread.join(timeout=30)
        finally:
            process.send_signal(signal.SIGINT)
            _out, err = process.communicate(timeout=30)
    assert answers == [200] * burst
    assert sorted(server.handler.recipients()) == sorted(f"r{n}@example.org" for n in range(burst))
    assert "Traceback" not in err, err
    assert "failed" not in err, err
    assert (
        "warning: serve: this process may open 32 files (ulimit -n), too few for 800 "
        "connections at once and 8 for confirmation mails (it sends on 4): it takes 12, and "
        "answers more with 503. Raise the limit (ulimit -n, or LimitNOFILE= in a systemd unit)."
    ) in err.splitlines()


@pytest.mark.sqlite_only
@pytest.mark.slow(seconds=5)
@pytest.mark.parametrize("command", ["build", "send"])
def test_a_command_left_few_open_files_by_its_parent_says_so_and_never_blames_the_store(
    store: str, tmp_path: Path, command: str
) -> None:
    # A parent (a supervisor, a shell script) that leaks its open files into the cron job
    # leaves it only a few of its 32. Before, SQLite's "unable to open database file" for a
    # -wal it had no file left for became "not a usable syndicate database ... restore this
    # one from a backup", for a store with nothing wrong; other runs ended in a traceback.
    # `send` (it builds first) with 25 of them ended in Jinja's TemplateNotFound for the
    # page templates: listing their folder found no file left and said nothing.
    env = _clean_env()
    codes: list[int] = []
    for leaked in range(20, 28):  # from plenty left to the last Python can start with
        project = write_send_project(tmp_path / str(leaked), port=25, connections=1, lease=60)
        # Held open from descriptor 3 up (below the limit, where they count), as a leaking
        # parent leaves them: bash opens them for the command it runs.
        held = " ".join(f"{fd}</dev/null" for fd in range(3, 3 + leaked))
        done = subprocess.run(
            [
                "bash",
                "-c",
                f'ulimit -n 32 && exec "$0" -m syndicate {command} {held}',
                sys.executable,
            ],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        codes.append(done.returncode)
        assert done.returncode in (0, 75), (leaked, done.stderr)
        assert "Traceback" not in done.stderr, (leaked, done.stderr)
        if done.returncode == 75:
            # One line, after the warnings `send` gives first (the digest's old articles,
            # the connections these files allow).
            errors = [
                line
                for line in done.stderr.splitlines()
                if not line.lower().startswith("warning: ")
            ]
            assert len(errors) == 1, done.stderr
            assert errors[0].startswith("Error: "), done.stderr
            assert "(ulimit -n)" in errors[0]
            assert done.stderr.endswith(errors[0] + "\n"), done.stderr
    assert 0 in codes, "the test meant some runs to have files enough"
    assert 75 in codes, "the test meant some runs to run out of files"
    for made in tmp_path.glob("*/syndicate.db"):  # each store made is whole
        with closing(sqlite3.connect(made)) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


@pytest.mark.slow(seconds=3)
def test_erase_says_which_outbox_folder_it_could_not_read_and_exits_1(
    as_other_user: tuple[Path, str],
) -> None:
    # `subscribers erase` walked the outbox with os.walk, which skips a folder it cannot
    # list without a word: the erased address's mails in it stayed, and the command said
    # the address was erased and exited 0.
    folder, python = as_other_user
    project = folder / "erase"
    project.mkdir(mode=0o755)
    env = _clean_env()
    made = subprocess.run(
        [sys.executable, "-m", "syndicate", "subscribers", "add", "an@example.org"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    mail = b"To: an@example.org\r\nSubject: x\r\n\r\nbody\r\n"
    readable = project / "outbox" / "2024-11-01"
    hidden = project / "outbox" / "2024-11-02"  # root's, closed to others
    for day in (readable, hidden):
        day.mkdir(parents=True)
        (day / f"{day.name}.1_news.example.org.eml").write_bytes(mail)
    owner = pwd.getpwnam(OTHER_USER)
    for path in [project, *project.rglob("*")]:
        if hidden not in (path, path.parent):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    hidden.chmod(0o700)
    done = _syndicate_as_other_user(python, project, env, "subscribers", "erase", "an@example.org")
    assert "Traceback" not in done.stderr
    assert done.returncode == 1, done
    assert not (readable / "2024-11-01.1_news.example.org.eml").exists()
    assert done.stderr.splitlines()[-1] == (
        f"Error: {hidden}: cannot read this outbox folder (Permission denied), so mails to "
        "an@example.org in it may remain; give this user access to it and run "
        "`syndicate subscribers erase an@example.org` again."
    )


@pytest.mark.slow(seconds=3)
@pytest.mark.skipif(not _can_mount(), reason="needs root and unshare to mount read-only")
@pytest.mark.parametrize("read_only", ["outbox", "outbox/confirmations"])
def test_serve_on_the_outbox_checks_the_folder_it_writes_its_confirmations_in(
    tmp_path: Path, read_only: str
) -> None:
    # `serve` writes confirmation mails in outbox/confirmations/ only, but checked that the
    # outbox itself could be written: a read-only outbox whose confirmations/ could be was
    # refused (exit 2), and a read-only confirmations/ in a writable outbox was not.
    (tmp_path / "feeds").mkdir()
    (tmp_path / "feeds" / "index.html").write_text("<!doctype html><title>Tin</title>\n")
    confirmations = tmp_path / "outbox" / "confirmations"
    confirmations.mkdir(parents=True)
    writable = tmp_path / "writable"
    writable.mkdir()
    folder = tmp_path / read_only
    mounts = f"mount --bind {folder} {folder} && mount -o remount,bind,ro {folder}"
    if read_only == "outbox":  # and a writable folder mounted on its confirmations/
        mounts += f" && mount --bind {writable} {confirmations}"
    script = f"{mounts} || exit 99\nexec {sys.executable} -m syndicate serve --port 0"
    serving = subprocess.Popen(
        ["unshare", "--mount", "sh", "-c", script],
        cwd=tmp_path,
        env=_clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert serving.stdout is not None
    try:
        line = serving.stdout.readline()  # the first line, once it serves; "" at its exit
    finally:
        serving.terminate()
        _, err = serving.communicate(timeout=30)
    if serving.returncode == 99:
        pytest.skip(f"cannot mount read-only here: {err.strip()}")
    if read_only == "outbox":
        assert line.startswith("Serving "), err
        assert "confirmation mails are written to outbox/confirmations/, not sent" in line
        return
    assert (line, serving.returncode) == ("", 2)
    assert err == (
        f"Error: config key paths.outbox: cannot write in {confirmations}: Read-only file "
        "system. Give a folder this user can write to (or one it can make).\n"
    )

"""A throwaway PostgreSQL cluster for the test session, and a fresh database per test.

The cluster comes from Debian's `postgresql` package: `initdb` in a temporary folder and
`pg_ctl` on a free port of 127.0.0.1, with its socket in that folder too. `initdb` refuses
to run as root, so as root (CI, these machines) the cluster runs as the `postgres` system
user that the package creates, in a folder owned by it. It is never a server the tests
did not start. Each test gets a new, empty database of its own, which syndicate migrates
on first use as it does any new store, and which is dropped after the test.

Without PostgreSQL on the machine the PostgreSQL half of the store tests is skipped with
the reason; `.ci/run` installs it, so CI runs both halves.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from syndicate.store import Database, open_database

# The PostgreSQL connection URL of the current test's database, when it runs on PostgreSQL.
ENV_STORE_URL = "SYNDICATE_STORE_URL"


def _bindir() -> Path | None:
    """The folder holding initdb and pg_ctl (Debian keeps them out of PATH)."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), reverse=True)
    return versions[0].parent if versions else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Cluster:
    """A running throwaway cluster: its folder, port, and how to run its programs."""

    folder: Path
    port: int
    bindir: Path
    run_as: str | None  # the system user the server runs as, when we are root
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    # Databases emptied after their test, for the next ones (see `drop_database`).
    _free: list[str] = field(default_factory=list)

    def command(self, program: str, *args: str) -> list[str]:
        argv = [str(self.bindir / program), *args]
        return ["runuser", "-u", self.run_as, "--", *argv] if self.run_as else argv

    def url(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command("pg_ctl", "-D", str(self.folder / "data"), *args),
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={self.folder} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200"
        )
        self.pg_ctl("-w", "-l", str(self.folder / "server.log"), "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("-w", "-m", mode, "stop", check=False)

    def new_database(self) -> str:
        """An empty database (syndicate makes its tables on first use); its URL.

        One emptied after an earlier test when there is one, else a new one.
        """
        import psycopg

        if self._free:
            return self.url(self._free.pop())
        name = f"t{os.getpid()}_{next(self._names)}"
        # FILE_COPY copies template0's few files (a checkpoint, cheap with fsync off): about
        # 0.1 s, where PostgreSQL 15's default WAL_LOG writes every block to the WAL (0.8 s).
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0 STRATEGY FILE_COPY')
        return self.url(name)

    def drop_database(self, url: str) -> bool:
        """Empty the database at `url` for a later test; return whether syndicate had made
        its tables in it.

        Emptying is ending every other connection to it (a killed process's, a server
        thread's) and dropping its `public` schema, with all syndicate made there: about
        0.05 s, where dropping the database and making a new one costs 0.3 to 0.8 s here
        (CREATE DATABASE waits for a checkpoint).
        """
        import psycopg

        name = url.rsplit("/", 1)[1]
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            used = conn.execute("SELECT to_regclass('syndicate_schema')").fetchone()
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute("CREATE SCHEMA public")
            reusable = conn.execute(_AS_MADE).fetchone()
        if reusable is not None and reusable[0]:
            self._free.append(name)
        else:  # a test gave a role rights on it: dropped, so the role can go
            with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
                conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        return used is not None and used[0] is not None


# Whether the current database is as CREATE DATABASE made it, once its schema is emptied:
# its access list untouched and no role's rights or objects recorded in it.
_AS_MADE = """
    SELECT b.datacl IS NULL AND NOT EXISTS (
        SELECT 1 FROM pg_shdepend AS d
        WHERE d.dbid = b.oid OR (d.classid = 'pg_database'::regclass AND d.objid = b.oid)
    )
    FROM pg_database AS b WHERE b.datname = current_database()
"""


def start_cluster() -> Cluster:
    bindir = _bindir()
    if bindir is None or not (bindir / "initdb").exists():
        raise FileNotFoundError("PostgreSQL's initdb and pg_ctl are not installed")
    run_as: str | None = None
    if os.geteuid() == 0:
        run_as = "postgres"
        pwd.getpwnam(run_as)  # KeyError when the package's user is missing
    folder = Path(tempfile.mkdtemp(prefix="syndicate-pg-"))
    if run_as:
        entry = pwd.getpwnam(run_as)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    cluster = Cluster(folder, _free_port(), bindir, run_as)
    subprocess.run(
        cluster.command(
            "initdb",
            "-D",
            str(folder / "data"),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        ),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    cluster.start()
    return cluster


def _a_cluster() -> Iterator[Cluster]:
    try:
        cluster = start_cluster()
    except (FileNotFoundError, KeyError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        pytest.skip(f"no PostgreSQL cluster could start here: {detail}")
    try:
        yield cluster
    finally:
        cluster.stop("immediate")
        shutil.rmtree(cluster.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """The session's PostgreSQL cluster."""
    yield from _a_cluster()


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[Cluster]:
    """A cluster of the module's own, which its tests may stop, freeze or restart without
    touching the session's."""
    yield from _a_cluster()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store_backend(request: pytest.FixtureRequest) -> str:
    """The engine a module's store tests run on: each such module runs once on each.

    Module-scoped, so a server started once per module (`shared_server`) runs on it too;
    the tests themselves take `store`, which gives each one an empty store of its own.
    """
    return str(request.param)


@pytest.fixture
def store(
    store_backend: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """An empty store for this test on the module's engine; yields the engine's name.

    On PostgreSQL, `SYNDICATE_STORE_URL` points every command the test runs, in process
    or as a subprocess, at a new, empty database of the session's cluster (`open_store`
    opens it), dropped afterwards. On SQLite the variable is unset and each test has its
    own file, as before.
    """
    if store_backend != "postgresql":
        monkeypatch.delenv(ENV_STORE_URL, raising=False)
        yield store_backend
        return
    cluster: Cluster = request.getfixturevalue("pg_cluster")
    url = cluster.new_database()
    monkeypatch.setenv(ENV_STORE_URL, url)
    yield store_backend
    if not cluster.drop_database(url):
        UNTOUCHED.append(request.node.nodeid)


# PostgreSQL runs of tests that never opened their store (see pytest_terminal_summary).
UNTOUCHED: list[str] = []


def pytest_sessionfinish(session: pytest.Session) -> None:
    """In an xdist worker: hand this process's list to the controller, which prints it."""
    output = getattr(session.config, "workeroutput", None)
    if output is not None:
        output["syndicate_untouched"] = list(UNTOUCHED)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """In the xdist controller: gather each worker's list as it ends."""
    UNTOUCHED.extend(getattr(node, "workeroutput", {}).get("syndicate_untouched", []))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if UNTOUCHED:
        terminalreporter.write_line(
            f"{len(UNTOUCHED)} PostgreSQL runs never opened their store "
            "(set SYNDICATE_LIST_UNTOUCHED=1 to list them)."
        )
        if os.environ.get("SYNDICATE_LIST_UNTOUCHED"):
            for nodeid in UNTOUCHED:
                terminalreporter.write_line(f"  {nodeid}")


def store_environ() -> dict[str, str]:
    """The part of os.environ that says which store the current test uses."""
    url = os.environ.get(ENV_STORE_URL)
    return {ENV_STORE_URL: url} if url else {}


def open_store(path: Path, **options: Any) -> Database:
    """Open the test's store: its PostgreSQL database under `store_backend`, else `path`."""
    return open_database(path, url=os.environ.get(ENV_STORE_URL, ""), **options)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sqlite_only: about the SQLite file itself (modes, WAL, old schemas)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Drop the PostgreSQL run of a test marked sqlite_only (it is about the file)."""
    keep, drop = [], []
    for item in items:
        params = getattr(item, "callspec", None)
        on_pg = params is not None and params.params.get("store_backend") == "postgresql"
        (drop if on_pg and item.get_closest_marker("sqlite_only") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture
def new_store(
    store: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[], str]]:
    """Move the test to another empty store, as a second project folder (or a deleted
    database file) gives on SQLite; the function returns the new store's URL.

    On SQLite it does nothing and returns "": each folder has its own file already. On
    PostgreSQL `SYNDICATE_STORE_URL` points at a new database of the session's cluster,
    dropped after the test; `monkeypatch.setenv(ENV_STORE_URL, url)` goes back to one.
    """
    made: list[str] = []

    def make() -> str:
        if store != "postgresql":
            return ""
        cluster: Cluster = request.getfixturevalue("pg_cluster")
        made.append(cluster.new_database())
        monkeypatch.setenv(ENV_STORE_URL, made[-1])
        return made[-1]

    yield make
    if made:
        cluster = request.getfixturevalue("pg_cluster")
        for url in made:
            cluster.drop_database(url)

"""Shared fixtures. Area fixtures live in tests/plugins/*.py, listed in `pytest_plugins`."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest


def _cache_bytecode_outside_the_tree() -> None:
    """Keep compiled bytecode in .pytest_cache/pycache when PYTHONDONTWRITEBYTECODE is set.

    With it set, this process and every `python -m syndicate` the tests start compile
    syndicate (and pytest rewrites the test modules) from source on each start: about
    0.15 s a child process and several seconds of collection. The cache sits in the
    ignored .pytest_cache, so the source tree stays free of __pycache__ as the variable
    intends. Runs before anything below imports syndicate.
    """
    if not os.environ.get("PYTHONDONTWRITEBYTECODE") or os.environ.get("PYTHONPYCACHEPREFIX"):
        return
    prefix = Path(__file__).resolve().parent.parent / ".pytest_cache" / "pycache"
    try:
        prefix.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only checkout: compile as before
        return
    sys.pycache_prefix = str(prefix)
    sys.dont_write_bytecode = False
    os.environ["PYTHONPYCACHEPREFIX"] = str(prefix)  # for the child processes
    del os.environ["PYTHONDONTWRITEBYTECODE"]


def _scratch_folders_in_memory() -> None:
    """Put the tests' scratch folders (tmp_path, tempfile) on /dev/shm, a RAM-backed tmpfs.

    The tests create hundreds of SQLite databases and build sites whose every file is
    fsynced (output.write_atomic); on a disk shared with other jobs those waits were a
    large part of the suite's time. Nothing here tests the disk itself (the full-disk test
    mounts its own tmpfs). A TMPDIR or PYTEST_DEBUG_TEMPROOT the user set wins, and so
    does a missing or nearly full /dev/shm.
    """
    if os.environ.get("TMPDIR") or os.environ.get("PYTEST_DEBUG_TEMPROOT"):
        return
    shm = "/dev/shm"
    try:
        disk = os.statvfs(shm)
    except OSError:
        return
    if not os.access(shm, os.W_OK) or disk.f_bavail * disk.f_frsize < 2 << 30:
        return
    tempfile.tempdir = shm  # pytest's tmp_path root, and tempfile's, in this process
    os.environ["TMPDIR"] = shm  # and in the child processes


_cache_bytecode_outside_the_tree()
_scratch_folders_in_memory()

from syndicate.config import ENV_STORE_URL, Settings, load_settings  # noqa: E402 - after the cache

pytest_plugins: list[str] = [
    "tests.plugins.postgres",  # first: the others import it
    "tests.plugins.web",
    "tests.plugins.articles",
    "tests.plugins.smtp",
    "tests.plugins.dns",
    "tests.plugins.sendproject",
]

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
GOLDEN = Path(__file__).resolve().parent / "golden"
SHARED_SEEDS = ROOT.parent / "shared" / "seeds"

# Fixed clock for every golden and deterministic test.
FIXED_NOW = datetime(2024, 11, 1, 6, 0, tzinfo=UTC)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto` (the default, in pyproject.toml): two test processes per core, at most 8.

    Most of the suite's time is waiting, not computing: on child processes starting, on
    servers answering, on signals and leases, so one process per core leaves the cores
    idle much of the time.
    `-n 0` runs everything in this one process; `-n N` chooses.
    """
    return max(2, min(8, 2 * (os.cpu_count() or 1)))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden", action="store_true", help="Rewrite tests/golden/ from current output."
    )


@pytest.fixture(autouse=True)
def _syndicate_logger_as_found() -> Iterator[None]:
    """Put the `syndicate` logger back as it was after each test.

    An in-process CLI run (CliRunner) gives it a handler of its own and stops it from
    propagating, so `caplog` in a later test of the same process saw nothing: with the
    suite spread over processes, which test comes later changes from run to run.
    """
    logger = logging.getLogger("syndicate")
    handlers, propagate, level = logger.handlers[:], logger.propagate, logger.level
    yield
    logger.handlers[:] = handlers
    logger.propagate, logger.level = propagate, level


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


@pytest.fixture
def check_golden(update_golden: bool):  # type: ignore[no-untyped-def]
    """Compare bytes with tests/golden/<name>, or rewrite it under --update-golden."""

    def check(name: str, data: bytes) -> None:
        path = GOLDEN / name
        if update_golden or not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            if not update_golden:
                pytest.fail(f"golden file {name} was missing and has been written; rerun")
            return
        expected = path.read_bytes()
        assert data.decode("utf-8") == expected.decode("utf-8"), f"golden mismatch: {name}"

    return check


@pytest.fixture
def now() -> datetime:
    return FIXED_NOW


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty working folder with its own seeds/ and feeds/."""
    (tmp_path / "seeds").mkdir()
    return tmp_path


@pytest.fixture
def settings(workdir: Path, request: pytest.FixtureRequest) -> Settings:
    """Default settings rooted in a temporary working folder, on the test's store engine."""
    if "store" in request.fixturenames:
        request.getfixturevalue("store")  # first: it says which store the settings name
    url = os.environ.get(ENV_STORE_URL, "")
    return load_settings(None, {ENV_STORE_URL: url} if url else {}, cwd=workdir)

"""Shared fixtures. Area fixtures live in tests/plugins/*.py, listed in `pytest_plugins`."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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


# Modules one process runs whole: their module fixtures cost more than spreading their
# tests gains (Chromium's start, a cluster of their own, RSA keys and a CA).
ONE_PROCESS = {
    "tests/test_browser.py",
    "tests/test_preflight.py",
    "tests/test_send_postgres.py",
    "tests/test_validators.py",
    "tests/test_bounces_pipe.py",  # one private Postfix, not one per process
}


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """xdist's default `--dist load`, as one queue in collection order (see below).

    `load` sends each process a quarter of its share at once, then more in chunks; a
    test sent to a busy process waits there while another sits idle. Here each process
    takes the next test, or the next whole module of ONE_PROCESS, when it has two or
    fewer left (xdist's `loadscope` scheduler, with one scope per test). Any other
    `--dist` (loadfile, worksteal ...) is left to xdist.
    """
    if config.getoption("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class OneQueue(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module in ONE_PROCESS else nodeid

    config.option.loadscopereorder = False  # keep the order below, not biggest scope first
    return OneQueue(config, log)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Start the slow tests early, longest first, spread over the first 60% of the run.

    In module order the longest tests (20 to 40 s under load) started in the last
    minute, while the other processes sat idle at the end waiting for them; all at the
    very start, they ran side by side and slowed each other past their own timeouts.
    `@pytest.mark.slow(seconds=N)` says about how long a test takes here under load; a
    plain `slow` counts as a few seconds. Every process sorts the same items the same
    way, as xdist requires.
    """

    def seconds(item: pytest.Item) -> float:
        marker = item.get_closest_marker("slow")
        return 0.0 if marker is None else float(marker.kwargs.get("seconds", 3.0))

    slow = sorted((item for item in items if seconds(item)), key=seconds, reverse=True)
    quick = [item for item in items if not seconds(item)]
    # After each slow test, quick ones in proportion to its length (at least one), so
    # the next slow one starts a while later: the slow ones fill the first 60% of the run.
    per_second = 0.6 * len(quick) / max(1.0, sum(map(seconds, slow)))
    order: list[pytest.Item] = []
    taken = 0.0
    for item in slow:
        start, taken = round(taken), taken + max(1.0, seconds(item) * per_second)
        order += [item, *quick[start : round(taken)]]
    items[:] = order + quick[round(taken) :]


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

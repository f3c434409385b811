"""Shared fixtures. Area fixtures live in tests/plugins/*.py, listed in `pytest_plugins`."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from syndicate.config import ENV_STORE_URL, Settings, load_settings

pytest_plugins: list[str] = [
    "tests.plugins.postgres",  # first: the others import it
    "tests.plugins.web",
    "tests.plugins.articles",
    "tests.plugins.smtp",
    "tests.plugins.dns",
]

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
GOLDEN = Path(__file__).resolve().parent / "golden"
SHARED_SEEDS = ROOT.parent / "shared" / "seeds"

# Fixed clock for every golden and deterministic test.
FIXED_NOW = datetime(2024, 11, 1, 6, 0, tzinfo=UTC)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden", action="store_true", help="Rewrite tests/golden/ from current output."
    )


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

"""What the commands load as they start.

`bounces -` runs once for every bounce an MTA pipes to it, the `subscribers`
commands run from scripts, and `send --workers N` starts N worker processes: none
renders a template, a feed or a date, so none loads Jinja2, Babel, the CSS inliner,
feedgen (and lxml) or flufl.bounce's detectors at start. Measured in bench/startup.py;
this keeps an import added in the wrong place from undoing it.

And each command, run as a real process as cron and the tests start it hundreds of times a
day, leaves alone what only another command needs: the feeds' libraries, the event loop and
SMTP stack, the send workers, the digest's templates.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from syndicate.cli import COMMAND_MODULES

RENDERING = ("jinja2", "babel", "css_inline", "feedgen", "lxml", "flufl", "email_validator")


def _loaded(module: str) -> set[str]:
    """The top-level packages loaded once `module` is imported, in a new interpreter."""
    code = (
        "import json, sys\n"
        f"import {module}\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(done.stdout))


@pytest.mark.parametrize(
    "module",
    [
        "syndicate.cli.commands_bounces",
        "syndicate.cli.commands_subscribers",
        # `send --workers N` starts N of these: each sends messages its parent rendered.
        "syndicate.send.workers",
    ],
)
def test_a_command_that_renders_nothing_starts_without_the_rendering_libraries(
    module: str,
) -> None:
    loaded = _loaded(module)
    assert [name for name in RENDERING if name in loaded] == []


def test_rendering_libraries_load_where_they_are_used() -> None:
    """The check above can fail: the digest command does load them."""
    assert {"jinja2", "babel", "css_inline"} <= _loaded("syndicate.cli.commands_digest")


REPO_SEEDS = Path(__file__).parents[1] / "seeds"

# Runs the command line as `python -m syndicate` does, then writes the names in sys.modules
# (however the command ended) to the file named first.
_DRIVER = """
import json, sys
out = sys.argv.pop(1)
sys.argv[0] = "syndicate"
try:
    from syndicate.cli import main
    main()
finally:
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(sorted(sys.modules), handle)
"""

# The feeds' libraries: only a build that writes feeds needs them.
FEEDS = {"syndicate.feeds", "syndicate.publish.run", "feedgen", "lxml", "dateutil"}
# The event loop and the SMTP stack: only what sends or serves.
EVENT_LOOP = {"asyncio", "ssl", "aiosmtplib", "syndicate.send.transports"}
# The commands' own modules: `syndicate --help` lists them from a table.
COMMANDS = {f"syndicate.cli.{module}" for module in COMMAND_MODULES.values()}
# The digest and its templates.
DIGEST = {"syndicate.digest", "jinja2", "css_inline", "syndicate.publish"}


@pytest.fixture
def project(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(workdir)
    monkeypatch.delenv("SYNDICATE_CONFIG", raising=False)
    monkeypatch.delenv("SYNDICATE_SECRET", raising=False)
    (workdir / "syndicate.toml").write_text('[mail]\nfrom = "News <news@example.org>"\n')
    for dump in sorted(REPO_SEEDS.glob("*.txt"))[:3]:
        shutil.copy(dump, workdir / "seeds" / dump.name)
    _run_loaded(workdir, "subscribers", "add", "a@example.org")
    return workdir


def _run_loaded(workdir: Path, *args: str) -> set[str]:
    """Run `syndicate ARGS` in a process of its own; the modules it had loaded at exit."""
    out = workdir / "modules.json"
    result = subprocess.run(
        [sys.executable, "-c", _DRIVER, str(out), *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(out.read_text(encoding="utf-8")))


def _present(loaded: set[str], names: set[str]) -> set[str]:
    """Those of `names` loaded, each a module or any module in its package."""
    return {name for name in names if any(m == name or m.startswith(f"{name}.") for m in loaded)}


@pytest.mark.parametrize(
    ("args", "unneeded"),
    [
        (("--version",), FEEDS | EVENT_LOOP | DIGEST),
        (("--help",), COMMANDS),
        (("subscribers", "list"), FEEDS | EVENT_LOOP | DIGEST),
        (("subscribers", "export", "list.csv"), FEEDS | EVENT_LOOP | DIGEST),
        (("unsubscribe-token", "make", "a@example.org"), FEEDS | EVENT_LOOP | DIGEST),
        (("inspect", "seeds"), FEEDS | EVENT_LOOP | DIGEST),
        (("digest", "--out", "preview"), FEEDS | EVENT_LOOP),
        (("send", "--dry-run"), FEEDS | {"syndicate.send.workers"}),
        (("send",), {"syndicate.send.workers"}),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, tuple) else "",
)
def test_a_command_loads_only_what_it_uses(
    project: Path, args: tuple[str, ...], unneeded: set[str]
) -> None:
    assert _present(_run_loaded(project, *args), unneeded) == set()


def test_a_build_loads_the_feed_libraries_it_writes_with(project: Path) -> None:
    """The other side: the check above would pass for a module nobody ever loads."""
    assert _present(_run_loaded(project, "build"), FEEDS) == FEEDS

"""The command group: version, help, and the one error boundary."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from syndicate import __version__
from syndicate.cli import COMMAND_MODULES, COMMAND_SUMMARIES, cli
from syndicate.errors import log_lines_to_stderr


def test_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"syndicate, version {__version__}\n"


def test_help_lists_the_commands() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in COMMAND_MODULES:
        assert f"  {name} " in result.output


@pytest.mark.parametrize("name", sorted(COMMAND_MODULES))
def test_help_lists_each_command_by_its_docstring_s_first_paragraph(name: str) -> None:
    """`syndicate --help` shows COMMAND_SUMMARIES, not loading the commands: each line is what
    click makes of the command's own help, and the command has nothing that changes it."""
    command = cli.get_command(click.Context(cli), name)
    assert command is not None
    assert (command.short_help, command.hidden, command.deprecated) == (None, False, False)
    assert command.help is not None
    assert " ".join(command.help.partition("\n\n")[0].split()) == COMMAND_SUMMARIES[name]


@pytest.mark.usefixtures("store")  # the subprocess inherits the test's store
def test_build_loads_neither_the_web_server_nor_the_mail_stack(tmp_path: Path) -> None:
    """Commands load lazily: a cron `syndicate build` starts without them, on either engine."""
    script = (
        "import sys\n"
        "from syndicate.cli import cli\n"
        "cli.main(['-q', 'build'], standalone_mode=False)\n"
        "heavy = ('syndicate.web', 'syndicate.send', 'syndicate.mail', 'uvicorn', 'aiosmtplib')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    (tmp_path / "seeds").mkdir()
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert done.stdout == "[]\n"


def test_bad_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[feeds]\nlimit = 'many'\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["--config", str(config), "build"])
    assert result.exit_code == 2
    assert result.stderr == (
        "Error: config key feeds.limit has value 'many'; expected a whole number like 50.\n"
    )
    assert result.stdout == ""


def test_unknown_command_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["frobnicate"])
    assert result.exit_code == 2
    assert "No such command 'frobnicate'" in result.stderr


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[feeds]\nlimit = 'many'\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["--debug", "--config", str(config), "build"])
    assert result.exit_code == 1
    assert result.exception is not None
    assert type(result.exception).__name__ == "ConfigError"


@pytest.mark.slow
def test_real_subprocess_reports_a_bad_config_without_traceback(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[nope]\n", encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "syndicate", "--config", str(config), "build"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("Error: config section [nope] is not known;")
    assert "Traceback" not in proc.stderr


@pytest.mark.usefixtures("store")  # the subprocess inherits the test's store
def test_build_and_send_run_with_standard_output_and_error_closed(tmp_path: Path) -> None:
    # A job started with its standard error closed (`2>&-`, a wrapper that closes what it
    # does not read) stopped on the first look at it (`sys.stderr.isatty()` on None): exit
    # 1, nothing built or sent, and no line to say why.
    seeds = Path(__file__).resolve().parent.parent / "seeds"
    (tmp_path / "seeds").mkdir()
    for seed in seeds.glob("*.txt"):
        (tmp_path / "seeds" / seed.name).write_bytes(seed.read_bytes())
    env = {k: v for k, v in os.environ.items() if k != "SYNDICATE_CONFIG"}

    def run(*args: str) -> int:
        command = 'exec "$0" -m syndicate "$@" >&- 2>&-'
        done = subprocess.run(
            ["sh", "-c", command, sys.executable, *args],
            cwd=tmp_path,
            env=env,
            timeout=120,
            check=False,
        )
        return done.returncode

    assert run("build") == 0
    assert (tmp_path / "feeds" / "index.html").is_file()
    assert run("subscribers", "add", "an@example.org") == 0
    assert run("send") == 0
    assert len(list((tmp_path / "outbox").glob("*/*.eml"))) == 1
    assert run("build", "nope") == 2  # an error still has its exit code


def test_a_logged_exception_says_what_it_was_on_its_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # serve logs a confirmation mail that failed unexpectedly with `log.exception`; the line
    # formatter printed the message alone ("error: subscribe: a confirmation mail failed"),
    # leaving the operator no clue of what went wrong.
    root = logging.getLogger("syndicate")
    handlers, level = root.handlers[:], root.level
    try:
        log_lines_to_stderr(logging.WARNING)
        try:
            raise KeyError("b\x1b[2Jc")
        except KeyError:
            logging.getLogger("syndicate.web.signups").exception(
                "subscribe: a confirmation mail failed"
            )
    finally:
        root.handlers[:], root.level = handlers, level
    assert capsys.readouterr().err == (
        "error: subscribe: a confirmation mail failed (KeyError: 'b\\x1b[2Jc')\n"
    )

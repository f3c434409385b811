"""Standard output that cannot be written: on a full disk (/dev/full) one line and exit 75,
on a pipe whose reader has gone exit 141 (128 + SIGPIPE) and nothing said, as Unix tools
end; never a traceback. Every command that prints runs as a real subprocess, on both
engines, and what it did to the store before it printed is kept, whole.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import IO

import click
import pytest
from click.testing import CliRunner

import syndicate.cli
from syndicate.cli import cli
from tests.plugins.postgres import ENV_STORE_URL

REPO_SEEDS = Path(__file__).parents[1] / "seeds"
FULL_LINE = (
    "Error: standard output: cannot write: No space left on device. Free some space or "
    "send the output elsewhere; nothing was half-written."
)
# `export -`'s own line (the CSV is its output, and a file path can take it).
EXPORT_FULL_LINE = (
    "Error: standard output: cannot write the CSV: No space left on device. "
    "Send it to a disk with room, or give a file path instead of -."
)


@pytest.fixture
def project(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(workdir)
    monkeypatch.delenv("SYNDICATE_CONFIG", raising=False)
    monkeypatch.delenv("SYNDICATE_SECRET", raising=False)
    (workdir / "syndicate.toml").write_text('[mail]\nfrom = "News <news@example.org>"\n')
    for dump in sorted(REPO_SEEDS.glob("*.txt"))[:3]:
        shutil.copy(dump, workdir / "seeds" / dump.name)
    for sub in ("new", "cur", "tmp"):
        (workdir / "Maildir" / sub).mkdir(parents=True)
    (workdir / "list.csv").write_text("email,name,language,status\nc@example.org,,vi,confirmed\n")
    for address in ("a@example.org", "b@example.org"):
        _run("subscribers", "add", address)
    return workdir


def _run(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _leaf_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        if isinstance(command, click.Group):
            yield from _leaf_commands(command, (*prefix, name))
        else:
            yield (*prefix, name)


def _printing_runs(project: Path) -> dict[tuple[str, ...], list[list[str]]]:
    """Every command, with the runs of it that print on standard output (in this order:
    a run may need what an earlier one stored)."""
    token = _run("unsubscribe-token", "make", "a@example.org").strip().rpartition("token=")[2]
    source = os.environ.get(ENV_STORE_URL) or "syndicate.db"
    dns = f"127.0.0.1:{_closed_port()}"
    return {
        ("build",): [["build"]],
        ("digest",): [["digest", "--out", "preview"]],
        ("send",): [["send", "--dry-run"], ["send", "--to", "x@example.org"], ["send"]],
        ("inspect",): [["inspect", "seeds"], ["inspect", "--json", "seeds"]],
        ("preflight",): [["preflight", "--timeout", "0.1", "--nameserver", dns]],
        ("subscribers", "add"): [["subscribers", "add", "d@example.org"]],
        ("subscribers", "remove"): [["subscribers", "remove", "b@example.org"]],
        ("subscribers", "import"): [["subscribers", "import", "list.csv"]],
        ("subscribers", "list"): [["subscribers", "list"], ["subscribers", "list", "--json"]],
        ("subscribers", "export"): [["subscribers", "export", "-"]],
        ("subscribers", "stats"): [["subscribers", "stats"]],
        ("subscribers", "erase"): [["subscribers", "erase", "e@example.org"]],
        ("unsubscribe-token", "make"): [["unsubscribe-token", "make", "a@example.org"]],
        ("unsubscribe-token", "verify"): [["unsubscribe-token", "verify", token]],
        ("bounces",): [["bounces", "Maildir"], ["bounces", "--json", "Maildir"]],
        ("store", "copy"): [["store", "copy", "--from", source, "--to", "copy.db"]],
        ("serve",): [["serve", "--port", "0"]],
    }


@pytest.mark.usefixtures("store")
def test_every_command_is_in_the_table(project: Path) -> None:
    # A new command must be added to the runs below, so its printing is tested too.
    assert set(_printing_runs(project)) == set(_leaf_commands(cli))


@contextmanager
def _stdout(kind: str) -> Iterator[IO[bytes]]:
    """A standard output that cannot be written: /dev/full, or a pipe with no reader."""
    if kind == "full":
        with open("/dev/full", "wb") as full:
            yield full
        return
    reader, writer = os.pipe()
    os.close(reader)
    with os.fdopen(writer, "wb") as pipe:
        yield pipe


# What click itself prints: help and the version, of the group and of a command.
CLICK_RUNS = [["--help"], ["--version"], ["subscribers", "--help"], ["send", "--help"]]


def _run_each(project: Path, kind: str) -> list[str]:
    """Run every printing run with standard output `kind`; the ways each went wrong."""
    wrong = []
    for runs in [*_printing_runs(project).values(), CLICK_RUNS]:
        for args in runs:
            if args[-1] == "copy.db" and (project / "copy.db").exists():
                (project / "copy.db").unlink()  # a copy goes into a new store only
            with _stdout(kind) as stdout:
                done = subprocess.run(
                    [sys.executable, "-m", "syndicate", *args],
                    stdout=stdout,
                    stderr=subprocess.PIPE,
                    text=True,
                    timeout=60,
                    check=False,
                )
            # Warnings about the digest (old sample dumps) go to stderr, as always.
            said = [line for line in done.stderr.splitlines() if not line.startswith("Warning:")]
            line = EXPORT_FULL_LINE if args[:2] == ["subscribers", "export"] else FULL_LINE
            expected = (75, [line]) if kind == "full" else (141, [])
            if (done.returncode, said) != expected:
                wrong.append(f"{' '.join(args)}: exit {done.returncode}, stderr {done.stderr!r}")
    return wrong


def _statuses() -> dict[str, str]:
    listed = _run("subscribers", "list", "--json").splitlines()
    return {record["email"]: record["status"] for record in map(json.loads, listed)}


@pytest.mark.usefixtures("store")
@pytest.mark.parametrize("kind", ["full", "closed pipe"])
def test_a_command_whose_output_cannot_be_written_ends_in_one_line_or_quietly(
    project: Path, kind: str
) -> None:
    assert _run_each(project, kind) == []
    # What the commands did before they printed is kept: the store took each change whole.
    assert _statuses() == {
        "a@example.org": "confirmed",
        "b@example.org": "unsubscribed",
        "c@example.org": "confirmed",
        "d@example.org": "confirmed",
    }
    with closing(sqlite3.connect(project / "copy.db")) as copy:
        assert copy.execute("SELECT count(*) FROM subscribers").fetchone() == (4,)
    assert sorted(p.name for p in (project / "preview").iterdir()) == [
        "digest.html",
        "digest.txt",
    ]


def test_commands_print_only_through_the_one_output_function() -> None:
    # Every line goes through `syndicate.cli.echo`, which alone can tell a failed write to
    # standard output from any other OSError. The runs above catch a command that prints
    # around it on the paths they take; this catches the paths they do not.
    folder = Path(syndicate.cli.__file__).parent
    found = []
    for path in sorted(folder.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if path.name == "__init__.py":  # the function itself, and its error
            exempt = ("echo", "stdout_error")
            tree.body = [n for n in tree.body if getattr(n, "name", None) not in exempt]
        for node in ast.walk(tree):
            name = ast.unparse(node) if isinstance(node, ast.Attribute | ast.Name) else ""
            if name in ("click.echo", "click.secho", "print", "sys.stdout"):
                found.append(f"{path.name}:{node.lineno}: {name}")
    assert found == []

"""The README is the manual: every command, option, config key and exit code is in it."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from syndicate.cli import cli
from syndicate.config import Settings
from syndicate.errors import EXIT_FAILED, EXIT_OK, EXIT_TEMPFAIL, EXIT_USAGE

ROOT = Path(__file__).resolve().parent.parent
README = "\n".join(
    p.read_text(encoding="utf-8") for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
)


def _commands(group: click.Command, prefix: str) -> Iterator[tuple[str, click.Command]]:
    yield prefix, group
    if isinstance(group, click.Group):
        ctx = click.Context(group)
        for name in group.list_commands(ctx):  # loads the lazy ones too
            command = group.get_command(ctx, name)
            assert command is not None, f"{prefix} {name} does not load"
            yield from _commands(command, f"{prefix} {name}")


COMMANDS = list(_commands(cli, "syndicate"))


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[p for p, _ in COMMANDS])
def test_every_command_and_option_is_documented(path: str, command: click.Command) -> None:
    if path != "syndicate":
        assert f"`{path}" in README, f"README does not document `{path}`"
    for param in command.params:
        if isinstance(param, click.Option):
            longest = max(param.opts, key=len)
            assert re.search(rf"`[^`]*{re.escape(longest)}\b", README), (
                f"README does not document option {longest} of `{path}`"
            )


def _config_keys() -> Iterator[str]:
    for section in dataclasses.fields(Settings):
        if not isinstance(section.default_factory, type):  # type: ignore[misc]
            continue
        for key in dataclasses.fields(section.default_factory):
            if (section.name, key.name) == ("smtp", "password"):
                continue
            yield f"{section.name}.{key.name.rstrip('_')}"


@pytest.mark.parametrize("key", list(_config_keys()))
def test_every_config_key_is_documented(key: str) -> None:
    assert f"`{key}`" in README, f"README does not document config key {key}"


@pytest.mark.parametrize("code", [EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TEMPFAIL])
def test_every_exit_code_is_documented(code: int) -> None:
    assert re.search(rf"^\| {code} \|", README, re.MULTILINE)


@pytest.mark.parametrize(
    "variable", ["SYNDICATE_CONFIG", "SYNDICATE_SECRET", "SYNDICATE_SMTP_PASSWORD"]
)
def test_environment_variables_are_documented(variable: str) -> None:
    assert f"`{variable}`" in README

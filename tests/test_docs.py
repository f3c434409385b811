"""The manual is complete and current.

docs/cli-reference.md, docs/config-reference.md and syndicate.example.toml are generated
from the code by cog;
the tests here fail when they drift, when a command's option is missing from its own
command's section, when a key, exit code or variable is undocumented, and when a link in
the README or docs/ points at a file or anchor that does not exist.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from syndicate.cli import AppContext, cli
from syndicate.config import Settings
from syndicate.errors import EXIT_FAILED, EXIT_OK, EXIT_PIPE, EXIT_TEMPFAIL, EXIT_USAGE
from tests.conftest import FIXED_NOW

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
MANUAL = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md"]
MANUAL += sorted(DOCS.glob("*.md"))
GENERATED = [
    DOCS / "cli-reference.md",
    DOCS / "config-reference.md",
    ROOT / "syndicate.example.toml",
]


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _outside_fences(text: str) -> Iterator[str]:
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            yield line


def _sections(text: str) -> dict[str, str]:
    """Heading text -> the text under it, up to the next heading of any level."""
    sections: dict[str, str] = {}
    title, body = "", []
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        heading = re.match(r"#{1,6} (.+)", line)
        if heading and not fenced:
            sections[title] = "\n".join(body)
            title, body = heading.group(1).strip(), []
        else:
            body.append(line)
    sections[title] = "\n".join(body)
    return sections


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    kept = "".join(c for c in heading.lower() if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    anchors: set[str] = set()
    for line in _outside_fences(_read(path)):
        heading = re.match(r"#{1,6} (.+)", line)
        if heading:
            base = _anchor(heading.group(1).strip())
            anchor, n = base, 0
            while anchor in anchors:
                n += 1
                anchor = f"{base}-{n}"
            anchors.add(anchor)
    return anchors


def _commands(group: click.Command, ctx: click.Context) -> Iterator[tuple[str, click.Command]]:
    yield ctx.command_path, group
    if isinstance(group, click.Group):
        for name in group.list_commands(ctx):  # loads the lazy ones too
            command = group.get_command(ctx, name)
            assert command is not None, f"{ctx.command_path} {name} does not load"
            yield from _commands(command, click.Context(command, info_name=name, parent=ctx))


COMMANDS = list(_commands(cli, click.Context(cli, info_name="syndicate", **cli.context_settings)))


@pytest.mark.slow
def test_generated_files_match_the_code() -> None:
    # A process of its own: click caches each command's help option on first use.
    done = subprocess.run(
        [sys.executable, "-m", "cogapp", "--check", *map(str, GENERATED)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, (
        f"generated files are out of date ({done.stderr.strip()}); "
        "run `cog -r docs/*.md syndicate.example.toml` and commit the result"
    )


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[p for p, _ in COMMANDS])
def test_every_option_is_in_its_own_commands_section(path: str, command: click.Command) -> None:
    sections = _sections(_read(DOCS / "cli-reference.md"))
    assert path in sections, f"docs/cli-reference.md has no section `## {path}`"
    for param in command.params:
        if isinstance(param, click.Option):
            for opt in [*param.opts, *param.secondary_opts]:
                assert re.search(rf"(?<![\w-]){re.escape(opt)}\b", sections[path]), (
                    f"docs/cli-reference.md does not document {opt} under `## {path}`"
                )


def _chapter(text: str, path: str) -> str:
    """The `## `syndicate CMD...`` part of commands.md, its ### subsections included."""
    top = path if path.count(" ") < 2 else path.rsplit(" ", 1)[0]
    lines = iter(text.splitlines())
    chapter: list[str] = []
    for line in lines:
        if line.startswith(f"## `{top}"):
            chapter.append(line)
            for rest in lines:
                if rest.startswith("## "):
                    break
                chapter.append(rest)
            break
    return "\n".join(chapter)


@pytest.mark.parametrize(("path", "command"), COMMANDS[1:], ids=[p for p, _ in COMMANDS[1:]])
def test_every_command_and_option_is_described_in_the_manual(
    path: str, command: click.Command
) -> None:
    chapter = _chapter(_read(DOCS / "commands.md"), path)
    assert chapter, f"docs/commands.md has no section `## `{path}...`"
    assert f"`{path}" in chapter, f"docs/commands.md does not describe `{path}`"
    for param in command.params:
        if isinstance(param, click.Option):
            longest = max(param.opts, key=len)
            assert re.search(rf"`[^`]*{re.escape(longest)}\b", chapter), (
                f"docs/commands.md does not describe {longest} in the section on `{path}`"
            )


def test_global_options_are_described_in_the_manual() -> None:
    intro = _sections(_read(DOCS / "commands.md"))["Commands"]
    for param in cli.params:
        if isinstance(param, click.Option):
            assert f"`{max(param.opts, key=len)}" in intro


def _config_keys() -> Iterator[tuple[str, str]]:
    for section in dataclasses.fields(Settings):
        if not isinstance(section.default_factory, type):  # type: ignore[misc]
            continue
        for key in dataclasses.fields(section.default_factory):
            if (section.name, key.name) == ("smtp", "password"):
                continue
            yield section.name, f"{section.name}.{key.name.rstrip('_')}"


CONFIG_KEYS = list(_config_keys())


@pytest.mark.parametrize(("section", "key"), CONFIG_KEYS, ids=[k for _, k in CONFIG_KEYS])
def test_every_config_key_is_in_the_reference(section: str, key: str) -> None:
    sections = _sections(_read(DOCS / "config-reference.md"))
    assert f"`{key}`" in sections.get(f"[{section}]", ""), (
        f"docs/config-reference.md does not document {key} under `## [{section}]`"
    )


@pytest.mark.parametrize("code", [EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TEMPFAIL, EXIT_PIPE])
def test_every_exit_code_is_documented(code: int) -> None:
    exit_codes = _sections(_read(DOCS / "commands.md"))["Exit codes"]
    assert re.search(rf"^\| {code} \|", exit_codes, re.MULTILINE)


@pytest.mark.parametrize(
    "variable", ["SYNDICATE_CONFIG", "SYNDICATE_SECRET", "SYNDICATE_SMTP_PASSWORD"]
)
def test_environment_variables_are_documented(variable: str) -> None:
    assert f"`{variable}`" in _read(DOCS / "configuration.md")


def _links() -> Iterator[tuple[Path, str]]:
    for path in MANUAL:
        if not path.exists():
            continue
        for line in _outside_fences(_read(path)):
            line = re.sub(r"`[^`]*`", "", line)  # code spans hold no links
            for target in re.findall(r"\]\(([^)\s]+)\)", line):
                if not re.match(r"[a-z]+:", target):  # not http:, https:, mailto:
                    yield path, target


LINKS = list(_links())


@pytest.mark.parametrize(
    ("source", "target"), LINKS, ids=[f"{s.relative_to(ROOT)}->{t}" for s, t in LINKS]
)
def test_links_resolve(source: Path, target: str) -> None:
    file_part, _, anchor = target.partition("#")
    linked = (source.parent / file_part).resolve() if file_part else source
    where = f"{source.relative_to(ROOT)}: link {target!r}"
    assert linked.exists(), f"{where} points at a missing file"
    assert linked.is_relative_to(ROOT), f"{where} leaves the repository"
    if anchor:
        assert linked.suffix == ".md", f"{where} has an anchor into a non-Markdown file"
        assert anchor in _anchors(linked), f"{where} points at a missing heading"


def test_manual_points_at_nothing_outside_the_repository() -> None:
    for path in MANUAL:
        if path.exists():
            assert "../shared" not in _read(path), f"{path.relative_to(ROOT)} cites ../shared"


def test_readme_stays_short() -> None:
    assert len((ROOT / "README.md").read_bytes()) <= 12 * 1024


def test_the_digest_preview_example_prints_what_the_manual_shows(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`syndicate digest --lang en --out /tmp/preview` on the shipped seeds, the day they
    were news, prints the lines docs/commands.md shows (the folder aside)."""
    block = re.search(
        r"```console\n\$ (syndicate digest --lang en --out /tmp/preview)\n(.*?)```",
        _read(DOCS / "commands.md"),
        re.DOTALL,
    )
    assert block is not None
    for seed in (ROOT / "seeds").glob("*.txt"):
        (workdir / "seeds" / seed.name).write_bytes(seed.read_bytes())
    monkeypatch.chdir(workdir)
    monkeypatch.delenv("SYNDICATE_CONFIG", raising=False)
    monkeypatch.setattr(AppContext, "now", lambda self: FIXED_NOW.timestamp())
    preview = workdir / "preview"
    args = [*block.group(1).split()[1:-1], str(preview)]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout.replace(str(preview), "/tmp/preview") == block.group(2)


def _requirement_names(requirements: list[str]) -> list[str]:
    return [re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0] for r in requirements]


def test_every_dependency_is_explained_in_the_architecture() -> None:
    """docs/architecture.md says why each dependency is there: every runtime one has a row
    of its Dependencies table, and every test one is named after it."""
    import tomllib

    project = tomllib.loads(_read(ROOT / "pyproject.toml"))["project"]
    table, test_only = _sections(_read(DOCS / "architecture.md"))["Dependencies"].split(
        "Test-only:", 1
    )
    rows = [line.split("|")[1] for line in table.splitlines() if line.startswith("| `")]
    in_table = set(re.findall(r"`([\w.-]+)`", " ".join(rows)))
    runtime = _requirement_names(project["dependencies"])
    assert [name for name in runtime if name not in in_table] == []
    named = set(re.findall(r"`([\w.-]+)`", test_only))
    tests = _requirement_names(project["optional-dependencies"]["test"])
    assert [name for name in tests if name not in named] == []

"""Compiled templates kept between processes (config.make_environment's bytecode cache).

Each case runs the real factory in fresh processes with a temp folder of its own, as two
cron runs would: what one compiled, the next must be able to use; and whatever state the
cache is in, a template renders from its current source.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Renders page.j2 from the folder in argv[1]; with argv[2] == "no-compile", Jinja2's compiler
# fails, so only a template the cache holds can render.
RENDER = """
import sys
import jinja2
if sys.argv[2] == "no-compile":
    def refuse(*args, **kwargs):
        raise SystemExit("compiled again")
    jinja2.Environment.compile = refuse
from pathlib import Path
from syndicate.config import make_environment
page = make_environment(Path(sys.argv[1])).get_template("page.j2")
print(page.render(name="Hà Nội & co"), end="")
"""


def _render(folder: Path, tmpdir: Path, mode: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    return subprocess.run(
        [sys.executable, "-c", RENDER, str(folder), mode],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "page.j2").write_text("<p>{{ name }}</p>\n", encoding="utf-8")
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    return templates, tmpdir


def _cache(tmpdir: Path) -> Path:
    return tmpdir / f"syndicate-templates-{os.getuid()}"


def _entries(tmpdir: Path) -> list[Path]:
    return sorted(_cache(tmpdir).glob("*.cache"))


def test_a_second_process_renders_what_the_first_compiled_without_compiling(
    folders: tuple[Path, Path],
) -> None:
    templates, tmpdir = folders
    assert _render(templates, tmpdir, "no-compile").returncode != 0  # nothing cached yet
    first = _render(templates, tmpdir)
    assert first.stdout == "<p>Hà Nội &amp; co</p>\n", first.stderr
    (entry,) = _entries(tmpdir)
    assert (entry.parent.stat().st_mode & 0o777) == 0o700
    again = _render(templates, tmpdir, "no-compile")
    assert (again.returncode, again.stdout) == (0, first.stdout), again.stderr


def test_an_edited_template_renders_its_new_source(folders: tuple[Path, Path]) -> None:
    templates, tmpdir = folders
    assert _render(templates, tmpdir).returncode == 0
    (templates / "page.j2").write_text("<b>{{ name }}</b>\n", encoding="utf-8")
    assert _render(templates, tmpdir, "no-compile").returncode != 0  # the old entry is not used
    assert _render(templates, tmpdir).stdout == "<b>Hà Nội &amp; co</b>\n"


@pytest.mark.parametrize("damage", [b"", b"j2/garbage", None])
def test_a_damaged_cache_entry_is_compiled_again(
    folders: tuple[Path, Path], damage: bytes | None
) -> None:
    templates, tmpdir = folders
    assert _render(templates, tmpdir).returncode == 0
    (entry,) = _entries(tmpdir)
    data = entry.read_bytes()
    # Empty, a wrong header, or the right header and checksum with the code cut short.
    entry.write_bytes(data[: len(data) // 2] if damage is None else damage)
    result = _render(templates, tmpdir)
    assert (result.returncode, result.stdout, result.stderr) == (0, "<p>Hà Nội &amp; co</p>\n", "")


def test_a_cache_folder_others_may_write_to_is_not_used(folders: tuple[Path, Path]) -> None:
    templates, tmpdir = folders
    assert _render(templates, tmpdir).returncode == 0
    _cache(tmpdir).chmod(0o777)
    result = _render(templates, tmpdir, "no-compile")
    assert result.returncode != 0  # compiled again: its entry was not read ...
    assert (_cache(tmpdir).stat().st_mode & 0o777) == 0o777  # ... and its mode left alone
    assert _render(templates, tmpdir).stdout == "<p>Hà Nội &amp; co</p>\n"


@pytest.mark.parametrize("mode", [0o755, 0o700])
def test_a_link_planted_as_the_cache_folder_is_not_followed(
    folders: tuple[Path, Path], mode: int
) -> None:
    # In a shared /tmp another user may make the path a link to a folder of someone else's:
    # it must be neither written into nor have its mode changed (Jinja2's own cache folder
    # is put back to 0700 with a chmod that follows the link).
    templates, tmpdir = folders
    victim = tmpdir / "victim"
    victim.mkdir()
    victim.chmod(mode)
    _cache(tmpdir).symlink_to(victim)
    result = _render(templates, tmpdir)
    assert (result.returncode, result.stdout, result.stderr) == (0, "<p>Hà Nội &amp; co</p>\n", "")
    assert (victim.stat().st_mode & 0o777, list(victim.iterdir())) == (mode, [])


@pytest.mark.skipif(os.geteuid() != 0, reason="giving the folder to another user takes root")
def test_a_cache_folder_of_another_user_is_not_used(folders: tuple[Path, Path]) -> None:
    templates, tmpdir = folders
    assert _render(templates, tmpdir).returncode == 0
    os.chown(_cache(tmpdir), 65534, 65534)  # nobody's now
    result = _render(templates, tmpdir)
    assert (result.returncode, result.stdout, result.stderr) == (0, "<p>Hà Nội &amp; co</p>\n", "")
    assert _render(templates, tmpdir, "no-compile").returncode != 0  # its entry was not read


def test_a_cache_folder_taken_by_a_file_still_renders(folders: tuple[Path, Path]) -> None:
    templates, tmpdir = folders
    _cache(tmpdir).write_text("not a folder")
    result = _render(templates, tmpdir)
    assert (result.returncode, result.stdout, result.stderr) == (0, "<p>Hà Nội &amp; co</p>\n", "")
    assert _render(templates, tmpdir, "no-compile").returncode != 0  # nothing was cached

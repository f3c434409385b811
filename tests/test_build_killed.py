"""Temp files left by killed processes: the next build removes them, and nothing else.

A build killed with SIGKILL mid-way (a real `syndicate build` subprocess), and a writer
killed between creating its temp file and renaming it with no staging folder to say so
(a `send` writing the digest page, a build killed before it made its staging folder).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from syndicate.config import Settings
from syndicate.publish import run_build
from syndicate.publish.staging import WRITTEN_FOLDERS
from tests.plugins.postgres import open_store

pytestmark = pytest.mark.usefixtures("store")

DUMPS = 400
# A writer killed between `_create_temp` and the rename, as a killed `send` is while it
# writes digests/<day>.html: it prints its temp file's path, then waits to be killed.
KILLED_WRITER = r"""
import sys
from pathlib import Path
from syndicate.output import _create_temp
fd, tmp = _create_temp(Path(sys.argv[1]))
import os
os.write(fd, b"<html>half a digest")
print(tmp, flush=True)
sys.stdin.read()
"""


def _write_dumps(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        body = "\n".join(
            f"Đoạn {p} của tin số {n}: người dân Quảng Trị đón tin vui về mùa màng năm nay."
            for p in range(40)
        )
        (folder / f"{n:05d}.txt").write_text(
            f"Tin số {n} về mùa màng\n{1 + n % 28:02d}/10/2024 09:{n % 60:02d}\n"
            f"QTO - Tóm tắt tin số {n}.\n{body}\n",
            encoding="utf-8",
        )


def _temp_files(output: Path) -> set[str]:
    return {
        p.relative_to(output).as_posix()
        for p in output.rglob("*.tmp")
        if ".staging" not in p.relative_to(output).parts
    }


def _build(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "syndicate", "build"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _kill_writer(target: Path) -> tuple[int, Path]:
    """Run a writer of `target` and SIGKILL it while its temp file exists: (pid, temp)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(target)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as writer:
        assert writer.stdout is not None
        temp = Path(writer.stdout.readline().strip())
        writer.send_signal(signal.SIGKILL)
        assert writer.wait(timeout=30) == -signal.SIGKILL
    assert temp.exists()
    return writer.pid, temp


def test_a_build_killed_mid_way_leaves_no_temp_files_after_the_next_build(
    workdir: Path, settings: Settings
) -> None:
    _write_dumps(settings.paths.seeds, DUMPS)
    output = settings.paths.output
    build = subprocess.Popen(
        [sys.executable, "-m", "syndicate", "build"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Killed once its first pages are being written (no event to wait on: another
        # process's files, looked for every few milliseconds).
        deadline = time.monotonic() + 120
        while build.poll() is None and time.monotonic() < deadline:
            articles = output / "articles"
            if articles.is_dir() and any(articles.iterdir()):
                break
            time.sleep(0.005)
        assert build.poll() is None, "the build ended before it could be killed"
    finally:
        build.send_signal(signal.SIGKILL)
        build.wait(timeout=30)
    assert build.returncode == -signal.SIGKILL
    # Whatever temp files the kill left (the timing decides), and for certain one in each
    # folder the build or `send` writes into, as if it was killed mid-write there too.
    for folder in WRITTEN_FOLDERS:
        (output / folder).mkdir(parents=True, exist_ok=True)
        (output / folder / f".x.html.{build.pid}.7.tmp").write_bytes(b"half")
    # Not syndicate's temp files, or those of a process still running: they stay.
    keep = {
        "notes.tmp": b"mine",
        ".hidden": b"mine",
        f"articles/.y.html.{os.getpid()}.1.tmp": b"a live writer's",
        "articles/.z.html.x.1.tmp": b"not a pid",
    }
    for rel, data in keep.items():
        (output / rel).write_bytes(data)
    assert _temp_files(output) - set(keep)

    done = _build(workdir)
    assert done.returncode == 0, done.stderr
    assert _temp_files(output) == {rel for rel in keep if rel.endswith(".tmp")}
    for rel, data in keep.items():
        assert (output / rel).read_bytes() == data
    assert not (output / ".staging").exists()
    assert len(list((output / "articles").glob("*.html"))) == DUMPS


def test_a_killed_writers_temp_file_without_a_staging_folder_goes_at_the_next_build(
    workdir: Path, settings: Settings, now: datetime
) -> None:
    _write_dumps(settings.paths.seeds, 3)
    output = settings.paths.output
    with open_store(settings.paths.database) as db:
        run_build(settings, db, now=now)
        before = {p: p.read_bytes() for p in output.rglob("*") if p.is_file()}
        pid, digest_temp = _kill_writer(output / "digests" / "2024-11-01.html")
        _, page_temp = _kill_writer(output / "articles" / "tin-so-1-ve-mua-mang.html")
        assert not (output / ".staging").exists()  # nothing else says a writer was killed
        assert digest_temp.name.startswith(f".2024-11-01.html.{pid}.")
        run_build(settings, db, now=now)
    assert not digest_temp.exists()
    assert not page_temp.exists()
    assert {p: p.read_bytes() for p in output.rglob("*") if p.is_file()} == before


@pytest.mark.slow(seconds=6)
@pytest.mark.parametrize("command", ["build", "send"])
def test_sigterm_mid_build_is_one_line_exit_143_and_leaves_nothing_half_written(
    workdir: Path, settings: Settings, store: str, command: str
) -> None:
    """SIGTERM (systemd stopping the unit, `timeout`, an operator's kill) as the pages
    are written, by `build` or by `send` building before it sends: the command cleans up
    as Ctrl-C would and says so, where it used to vanish without a word."""
    if command == "send" and store == "postgresql":
        pytest.skip("send's build phase is build's own run, on PostgreSQL in the build run")
    _write_dumps(settings.paths.seeds, DUMPS)
    output = settings.paths.output
    with subprocess.Popen(
        [sys.executable, "-m", "syndicate", command],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as run:
        deadline = time.monotonic() + 120
        while run.poll() is None and time.monotonic() < deadline:
            articles = output / "articles"
            if articles.is_dir() and any(articles.iterdir()):
                break
            time.sleep(0.005)
        assert run.poll() is None, "the command ended before it could be stopped"
        run.send_signal(signal.SIGTERM)
        try:
            _, stderr = run.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # pragma: no cover - the failure looked for
            run.kill()
            pytest.fail(f"{command} did not end within 60 s of SIGTERM: it hung")
    assert run.returncode == 143, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        f"{command}: stopped by SIGTERM before it finished; nothing was half-written. "
        "Run it again to finish."
    )
    assert _temp_files(output) == set()
    assert not (output / ".staging").exists()

    done = _build(workdir)
    assert done.returncode == 0, done.stderr
    assert len(list((output / "articles").glob("*.html"))) == DUMPS

"""Atomic writes: whole files or nothing, unchanged bytes not rewritten."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from syndicate.errors import OutputError
from syndicate.output import write_atomic


def test_write_creates_folders_and_file(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "x.html"
    assert write_atomic(target, "Đông Hà".encode()) is True
    assert target.read_bytes() == "Đông Hà".encode()


def test_unchanged_bytes_are_not_rewritten(tmp_path: Path) -> None:
    target = tmp_path / "x.xml"
    write_atomic(target, b"<a/>")
    before = target.stat().st_mtime_ns
    os.utime(target, ns=(before - 10**9, before - 10**9))
    assert write_atomic(target, b"<a/>") is False
    assert target.stat().st_mtime_ns == before - 10**9
    assert write_atomic(target, b"<b/>") is True
    assert target.read_bytes() == b"<b/>"


def test_failed_write_leaves_no_temp_file_and_raises_our_error(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "x.txt").write_bytes(b"old")
    blocker = folder / "sub"
    blocker.write_bytes(b"")  # a file where a folder is needed
    with pytest.raises(OutputError, match=r"cannot write"):
        write_atomic(blocker / "y.txt", b"new")
    assert sorted(p.name for p in folder.iterdir()) == ["sub", "x.txt"]
    assert (folder / "x.txt").read_bytes() == b"old"

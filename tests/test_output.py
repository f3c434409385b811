"""Atomic writes: whole files or nothing, unchanged bytes not rewritten."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from syndicate.errors import OutputError
from syndicate.output import move_into_place, write_atomic, write_new


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


def test_write_new_never_overwrites_and_makes_a_public_file(tmp_path: Path) -> None:
    target = tmp_path / "page.html"
    write_new(target, "Quảng Trị".encode())
    assert target.read_bytes() == "Quảng Trị".encode()
    assert target.stat().st_mode & 0o777 == 0o644
    with pytest.raises(FileExistsError):
        write_new(target, b"other")
    assert target.read_bytes() == "Quảng Trị".encode()


def test_move_into_place_renames_and_makes_folders(tmp_path: Path) -> None:
    staged = tmp_path / "stage" / "a.html"
    staged.parent.mkdir()
    write_new(staged, b"<p>new</p>")
    target = tmp_path / "site" / "articles" / "a.html"
    assert move_into_place(staged, target) is True
    assert target.read_bytes() == b"<p>new</p>"
    assert not staged.exists()


def test_move_into_place_keeps_a_file_that_holds_the_same_bytes(tmp_path: Path) -> None:
    target = tmp_path / "a.html"
    write_atomic(target, b"<p>same</p>")
    inode = target.stat().st_ino
    staged = tmp_path / "staged.html"
    write_new(staged, b"<p>same</p>")
    assert move_into_place(staged, target) is False
    assert target.stat().st_ino == inode  # not replaced
    assert not staged.exists()
    write_new(staged, b"<p>else</p>")  # same size, other bytes: replaced
    assert move_into_place(staged, target) is True
    assert target.read_bytes() == b"<p>else</p>"


def test_move_into_place_without_a_staged_file_touches_nothing(tmp_path: Path) -> None:
    assert move_into_place(tmp_path / "gone.html", tmp_path / "a.html") is None
    write_atomic(tmp_path / "a.html", b"kept")
    assert move_into_place(tmp_path / "gone.html", tmp_path / "a.html") is None
    assert (tmp_path / "a.html").read_bytes() == b"kept"


def test_move_into_place_reports_other_failures_as_our_error(tmp_path: Path) -> None:
    staged = tmp_path / "staged.html"
    write_new(staged, b"page")
    (tmp_path / "blocker").write_bytes(b"")  # a file where a folder is needed
    with pytest.raises(OutputError, match=r"a\.html: cannot write"):
        move_into_place(staged, tmp_path / "blocker" / "a.html")
    assert staged.read_bytes() == b"page"


def test_move_into_place_across_file_systems_leaves_it_to_the_caller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An output folder linked to another volume: no rename there, the page is written anew."""
    import errno

    staged = tmp_path / "staged.html"
    write_new(staged, b"page")

    def cross_device(src: object, dst: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "replace", cross_device)
    assert move_into_place(staged, tmp_path / "a.html") is None
    assert not (tmp_path / "a.html").exists()

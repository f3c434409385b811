"""Load: the edge that touches the file system: find dump files and read their bytes.

Only regular files are read, up to load.max_bytes; a file that cannot be read
is a DumpError naming it. `read_dumps` also parses each dump, lazily.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple
from zoneinfo import ZoneInfo

from syndicate.errors import DumpError, InputError
from syndicate.load.parse import parse_dump
from syndicate.model import Article


def find_dumps(paths: Sequence[Path]) -> Iterator[Path]:
    """Yield the dump files named by `paths`, in a stable order.

    A file is taken as it is, whatever its name; a folder gives every `*.txt` below it,
    recursively, sorted by path. Every path is checked before the first one is yielded:
    a path that does not exist raises InputError.
    """
    for path in find_dump_paths(paths):
        yield Path(path)


# What to do when the folder paths.seeds names is missing (the command was given none).
SEEDS_HINT = "Make that folder, or set paths.seeds to the folder the dumps are in."


def check_dump_paths(
    paths: Sequence[Path], *, hint: str = "Give existing dump files or folders."
) -> None:
    """Raise InputError naming the first of `paths` that does not exist, with `hint`
    (SEEDS_HINT when the path is paths.seeds, not one the user gave).

    Commands call it before they open the database or make any folder: a run that
    fails on its input leaves nothing behind.
    """
    for path in paths:
        if not path.exists():
            raise InputError(f"{path}: no such file or folder.", hint=hint)


def find_dump_paths(paths: Sequence[Path]) -> Iterator[str]:
    """`find_dumps` as text: `str(path)` of each dump, without making a Path per dump."""
    check_dump_paths(paths)
    for path in paths:
        root = os.fspath(path)
        if path.is_dir():
            try:
                found = sorted(_dump_names(root))
            except OSError as exc:
                raise InputError(
                    f"{path}: cannot read this folder: {exc.strerror or exc}.",
                    hint="Check its permissions.",
                ) from exc
            # As str(path.joinpath(*parts)) has it: "." is dropped, "/" not doubled.
            prefix = "" if root == "." else root if root.endswith("/") else root + "/"
            yield from (prefix + "/".join(parts) for parts in found)
        else:
            yield root


def _dump_names(root: str) -> Iterator[tuple[str, ...]]:
    """The `*.txt` files below `root` as path parts, as `Path(root).rglob("*.txt")` finds them
    (dot files too; into real subfolders, not linked ones; an unreadable subfolder, or one
    too deep for the system to name, is passed over), keeping regular files and links (a
    broken link too, so that it is reported).

    One `scandir` per folder, and the file types it reports: no `stat` per file. Folders
    wait on a list, not in a call each: a folder a thousand levels deep (`mkdir -p`) went
    past Python's recursion limit.
    """
    folders: list[tuple[str, ...]] = [()]
    while folders:
        parts = folders.pop()
        try:
            with os.scandir(os.path.join(root, *parts)) as entries:
                listed = list(entries)
        except OSError:
            if not parts:
                raise
            continue
        for entry in listed:
            name = entry.name
            if name.endswith(".txt") and _is_dump(entry):
                yield (*parts, name)
            try:
                is_folder = entry.is_dir() and not entry.is_symlink()
            except OSError:
                continue
            if is_folder:
                folders.append((*parts, name))


def _is_dump(entry: os.DirEntry[str]) -> bool:
    """A regular file or a link (even a broken one); a file whose type cannot be told is
    taken too, so that reading it reports the problem."""
    try:
        return entry.is_file() or entry.is_symlink()
    except OSError:
        return True


def display_path(path: Path | str) -> str:
    """A path as text that is safe to print and store on one line.

    Bytes that are not UTF-8, line breaks and other control characters show as U+FFFD,
    so a file name cannot split or forge a warning line.
    """
    text = str(path).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else "\ufffd" for c in text)


def check_name(path: Path | str, *, source: str | None = None) -> None:
    """Raise DumpError when the file name is not valid UTF-8 (it could not be stored or shown)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise DumpError(
            display_path(source or path),
            "the file name is not valid UTF-8.",
            hint="Rename the file (for example with convmv -f cp1258 -t utf-8).",
        ) from None


def real_folders(paths: Sequence[Path]) -> tuple[str, ...]:
    """The real paths (links resolved) of the folders among `paths`, for `check_link`."""
    return tuple(os.path.realpath(path) for path in paths if path.is_dir())


def check_link(path: str, folders: Sequence[str], *, source: str | None = None) -> None:
    """Raise DumpError when `path` is a symbolic link that leads outside every folder in
    `folders` (real paths, from `real_folders`). Not a link, or a link within: nothing."""
    if not os.path.islink(path):
        return
    target = os.path.realpath(path)
    if _inside(target, folders):
        return
    raise DumpError(
        display_path(source or path),
        f"is a link to {display_path(target)!r}, outside the dump folder.",
        hint="Copy the file into the dump folder, or set load.follow_symlinks = true.",
    )


def _inside(target: str, folders: Sequence[str]) -> bool:
    return any(target == f or target.startswith(f.rstrip("/") + "/") for f in folders)


def _opened_path(fd: int) -> str | None:
    """Where the file open as `fd` is, as the kernel names it (Linux's /proc); else None."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


class DumpPin(NamedTuple):
    """The file a dump's path was checked to be (by lstat, and stat for a link): what
    `read_dump` must find when it opens the path. A named tuple: it crosses to the workers."""

    device: int
    inode: int
    link: bool  # the path was a link, checked to stay inside the dump folder
    folders: tuple[str, ...] = ()  # the dump folders (real paths) the file must be inside


class LinkCheck:
    """The link check of dumps, as the build makes it and `read_dumps` too.

    A link found in a folder of `paths` must lead inside one of them (unless
    `follow_symlinks`); a file named on its own is read wherever its link leads: it was
    asked for. `stat` takes a dump's stat before it is read, and the pin `read_dump` holds
    the path to, so a dump swapped for a link after the check is refused as well.
    """

    __slots__ = ("folders", "named")

    def __init__(self, paths: Sequence[Path], *, follow_symlinks: bool) -> None:
        # The folders links must stay inside (real paths; None: links are not checked).
        self.folders = None if follow_symlinks else real_folders(paths)
        self.named = {os.fspath(path) for path in paths if not path.is_dir()}

    def folders_for(self, path: str) -> tuple[str, ...] | None:
        """The folders the dump at `path` must stay inside (None: not checked)."""
        return None if self.folders is None or path in self.named else self.folders

    def stat(self, path: str, *, source: str | None = None) -> tuple[os.stat_result, bool]:
        """The dump's stat (through a link), and whether it was a link checked to stay in.

        DumpError (named by `source`, default the path) when the name is not UTF-8, the
        file cannot be stat'ed, or it is a link leading outside the folders.
        """
        check_name(path, source=source)
        checked = False
        try:
            st = os.lstat(path)  # as cheap as stat: a link costs a second call, a file none
            if stat.S_ISLNK(st.st_mode):
                folders = self.folders_for(path)
                if folders is not None:
                    check_link(path, folders, source=source)
                    checked = True
                st = os.stat(path)
        except OSError as exc:
            where = display_path(source or path)
            raise DumpError(where, f"cannot be read: {exc.strerror or exc}.") from exc
        return st, checked

    def pin(self, path: str, device: int, inode: int, link: bool) -> DumpPin | None:
        """What reading `path` must find: the file `stat` checked (its device and inode,
        and whether it was a link), or None where links are not checked."""
        folders = self.folders_for(path)
        return None if folders is None else DumpPin(device, inode, link, folders)


def read_dump(
    path: str | Path, *, max_bytes: int, source: str | None = None, pin: DumpPin | None = None
) -> bytes:
    """Return the bytes of one dump; DumpError when it is too large or cannot be read.

    `source` names the file in messages (default: the path). Only regular files are
    read: a FIFO or device would block or never end. With a `pin` (the link check made
    before), the path must still be the file that was checked: a path that was no link is
    opened with O_NOFOLLOW, the file opened must be the pinned one and, where the system
    names open files (Linux), lie inside the pin's folders. So a dump swapped for a link, or
    a folder on its path swapped for one, after the check is refused.
    """
    where = display_path(source or path)
    check_name(path, source=source)
    # O_NONBLOCK: opening a FIFO must not wait for a writer; it changes nothing for files.
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if pin is not None and not pin.link:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except IsADirectoryError:
        raise DumpError(where, "is a folder, not a dump file.") from None
    except OSError as exc:
        if flags & os.O_NOFOLLOW and exc.errno in (errno.ELOOP, errno.EMLINK):
            raise _swapped(where, path) from exc
        raise _unreadable(where, exc) from exc
    try:
        st = os.fstat(fd)
        if pin is not None:
            if (st.st_dev, st.st_ino) != (pin.device, pin.inode):
                raise _swapped(where, path)
            # The pin itself came from paths: a folder swapped for a link before the check
            # leaves it naming an outside file. Where the file opened really is settles it.
            opened = _opened_path(fd) if pin.folders else None
            if opened is not None and not _inside(opened, pin.folders):
                raise _swapped(where, path, opened)
        if not stat.S_ISREG(st.st_mode):
            if stat.S_ISDIR(st.st_mode):
                raise DumpError(where, "is a folder, not a dump file.")
            raise DumpError(
                where,
                "is not a regular file (a FIFO, socket or device).",
                hint="Give dump files only.",
            )
        # Larger already: not read at all (the check below covers a file that grows).
        data = b"" if st.st_size > max_bytes else _read_to_end(fd, st.st_size, max_bytes)
    except OSError as exc:
        raise _unreadable(where, exc) from exc
    finally:
        os.close(fd)
    if len(data) > max_bytes or st.st_size > max_bytes:
        raise DumpError(
            where,
            f"is larger than the limit of {_size(max_bytes)}.",
            hint="Raise load.max_bytes in the config if the file is a real article.",
        )
    return data


def _swapped(where: str, path: str | Path, opened: str | None = None) -> DumpError:
    # Between the link check and the open, the dump (or a folder on its path) was replaced:
    # by a link, perhaps leading out of the dump folder. Refused like a link that fails it.
    target = opened or os.path.realpath(path)
    if target == os.path.abspath(path):
        reason = "was replaced by another file after its link check; skipped."
    else:
        reason = f"became a link to {display_path(target)!r} after its link check; skipped."
    return DumpError(
        where,
        reason,
        hint="Build again; a link leading outside the dump folder is skipped unless "
        "load.follow_symlinks = true.",
    )


def _unreadable(where: str, exc: OSError) -> DumpError:
    return DumpError(
        where,
        f"cannot be read: {exc.strerror or exc}.",
        hint="Check that the file exists and is readable.",
    )


def _read_to_end(fd: int, size: int, max_bytes: int) -> bytes:
    """Read the file `fd` to its end, but no more than `max_bytes` + 1 bytes.

    `size` (from fstat) sizes the first read: one read and one at the end of the file,
    where a buffered read of `max_bytes` + 1 would allocate that much (10 MiB) each time.
    A file that grows meanwhile is read on; one byte over the limit is enough to tell.
    """
    parts = []
    total = 0
    want = min(max(size, 0), max_bytes) + 1
    while total <= max_bytes:
        chunk = os.read(fd, want)
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
        want = min(1 << 20, max_bytes + 1 - total)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def read_dumps(
    paths: Sequence[Path], *, max_bytes: int, tz: ZoneInfo, follow_symlinks: bool = False
) -> Iterator[tuple[Path, Article | DumpError]]:
    """Yield (path, article) or (path, DumpError) for every dump, lazily, one file at a time.

    Links are checked as the build checks them (`LinkCheck`, load.follow_symlinks): one
    found in a folder that leads outside the folders given, or a dump swapped for one
    after the check, is a DumpError. Never raises DumpError (it is yielded, so the caller
    can count and go on); InputError for a path that does not exist.
    """
    links = LinkCheck(paths, follow_symlinks=follow_symlinks)
    for text in find_dump_paths(paths):
        path = Path(text)
        try:
            st, link = links.stat(text)
            pin = links.pin(text, st.st_dev, st.st_ino, link)
            data = read_dump(text, max_bytes=max_bytes, pin=pin)
            yield path, parse_dump(data, source=display_path(path), tz=tz)
        except DumpError as exc:
            yield path, exc


def _size(count: int) -> str:
    """Say a byte count for people: "10 MiB (10485760 bytes)", "100 bytes"."""
    if count >= 1024 * 1024:
        return f"{count / (1024 * 1024):.3g} MiB ({count} bytes)"
    if count >= 1024:
        return f"{count / 1024:.3g} KiB ({count} bytes)"
    return f"{count} bytes"

"""Output: atomic file writes. The only code that writes files to disk."""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from syndicate.errors import DiskFullError, OutputError

# Temp files: created exclusively (O_EXCL, never following a link) and readable by
# their owner only until they are complete.
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL
_TEMP_FLAGS |= getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_counter = itertools.count()
_PUBLIC_MODE = 0o644  # pages and feeds, served to everyone
_PRIVATE_MODE = 0o600  # personal data: the owner only, whatever the umask
_PRIVATE_FOLDER_MODE = 0o700


def write_atomic(
    path: Path,
    data: bytes,
    *,
    skip_unchanged: bool = True,
    fsync: bool = True,
    private: bool = False,
) -> bool:
    """Write `data` to `path` atomically (temp file in the same folder, fsync, rename).

    Returns False, touching nothing, when `skip_unchanged` and the file already
    holds exactly these bytes. Raises OutputError on any OS failure (DiskFullError,
    exit 75, when the disk is full or over quota); a failed
    write leaves the old file as it was and no temp file behind. `fsync=False`
    keeps the write atomic for readers (rename) but skips the disk flush, for
    bulk page writes where one flush per file would dominate the run. The file
    is public (0644) unless `private` (personal data: mails, exports): then it is
    0600, and the folders made for it are 0700.
    """
    try:
        if skip_unchanged and _same_bytes(path, data):
            return False
        fd, tmp = _create_temp(path, private=private)
        try:
            _fill(fd, data, fsync=fsync, mode=_PRIVATE_MODE if private else _PUBLIC_MODE)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise _write_error(path, exc) from exc
    return True


def _fill(fd: int, data: bytes, *, fsync: bool, mode: int = _PUBLIC_MODE) -> int:
    """Write all of `data` to the new file `fd`, flush it if asked, give it `mode` (public,
    0644, by default) and close it. Returns the file's modification time (ns) once written."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if fsync:
            os.fsync(fd)
        os.fchmod(fd, mode)
        return os.fstat(fd).st_mtime_ns
    finally:
        os.close(fd)


# A full disk or an exhausted quota: nothing is wrong with the path, only with the moment.
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def _write_error(path: str | Path, exc: OSError) -> OutputError:
    if exc.errno in _FULL_ERRNOS:
        return DiskFullError(
            f"{path}: cannot write: {exc.strerror or exc}.",
            hint="Free some space on that disk, then run again (nothing was half-written).",
        )
    return OutputError(
        f"{path}: cannot write: {exc.strerror or exc}.",
        hint=f"Check that {Path(path).parent} is a folder (or can be made one) that this "
        "user can write to.",
    )


def check_writable_folder(folder: Path, *, name: str) -> None:
    """Raise OutputError (exit 2) unless `folder` is, or can be made, a folder this process
    can write files in: called before a command makes anything else (its store, its lock),
    so that a bad path leaves nothing behind. `name` says where the path came from
    (`config key paths.output`, `--out`).

    Tried, not guessed from the mode bits (root may write where they say no, and nobody in
    a read-only mount or in /proc): an empty temp file is made and removed in `folder`, or
    in its nearest existing parent when it is still to be made.
    """
    hint = "Give a folder this user can write to (or one it can make)."
    probe = folder
    try:
        while not probe.is_dir() and probe.parent != probe:
            if probe.exists() or probe.is_symlink():
                where = folder if probe == folder else f"{folder}: {probe}"
                raise OutputError(f"{name}: {where} is not a folder.", hint=hint)
            probe = probe.parent
        fd, tmp = _create_temp(probe / "probe")
        os.close(fd)
        os.unlink(tmp)
    except OutputError:
        raise
    except OSError as exc:
        what = f"write in {folder}" if probe == folder else f"make {folder} in {probe}"
        raise OutputError(f"{name}: cannot {what}: {exc.strerror or exc}.", hint=hint) from exc


def _create_temp(path: Path, *, private: bool = False) -> tuple[int, str]:
    """Create a new, empty temp file beside `path` (making its folder, 0700 if `private`)."""
    folder = os.fspath(path.parent)
    prefix = os.path.join(folder, f".{path.name}.{os.getpid()}.")
    made_folder = False
    while True:
        tmp = f"{prefix}{next(_counter)}.tmp"
        try:
            return os.open(tmp, _TEMP_FLAGS, 0o600), tmp
        except FileExistsError:  # left by a crashed run that had our pid: take the next
            continue
        except FileNotFoundError:
            if made_folder:
                raise
            if private:
                make_private_folder(path.parent)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
            made_folder = True


def make_private_folder(folder: Path) -> None:
    """Create `folder` and any missing parents, each 0700; existing folders are left alone.

    Raises OSError.
    """
    missing: list[Path] = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for made in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made by a concurrent process meanwhile
            made.mkdir(mode=_PRIVATE_FOLDER_MODE)


# The name `_create_temp` gives a temp file: ".<name>.<pid>.<n>.tmp".
_TEMP_NAME = re.compile(r"\..+\.(?P<pid>[0-9]+)\.[0-9]+\.tmp")


def remove_temp_files(root: Path, *, alive: Callable[[int], bool], skip: str = "") -> int:
    """Delete the temp files `write_atomic` left anywhere under `root` (a process killed
    between creating one and renaming it), except those of processes still `alive`, and
    folders named `skip`. Returns how many were deleted; a file that cannot be is left."""
    removed = 0
    for folder, folders, files in os.walk(root):
        if skip in folders:
            folders.remove(skip)
        removed += _remove_dead_temps(folder, files, alive)
    return removed


def remove_temp_files_in(folder: Path, *, alive: Callable[[int], bool]) -> int:
    """Delete the temp files `write_atomic` left in `folder` itself (not below it), except
    those of processes still `alive`. One listing, names only: cheap for 10,000 pages.
    Returns how many were deleted; a missing folder, or a file that cannot be, is left."""
    try:
        with os.scandir(folder) as entries:
            names = [e.name for e in entries if e.name[0] == "." and e.name.endswith(".tmp")]
    except OSError:
        return 0
    return _remove_dead_temps(folder, names, alive)


def _remove_dead_temps(
    folder: str | Path, names: Iterable[str], alive: Callable[[int], bool]
) -> int:
    """Delete the temp files among `names` in `folder` whose process is not `alive`."""
    removed = 0
    for name in names:
        match = _TEMP_NAME.fullmatch(name)
        if match is None or alive(int(match.group("pid"))):
            continue
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(folder, name))
            removed += 1
    return removed


def _same_bytes(path: str | Path, data: bytes) -> bool:
    try:
        if os.stat(path).st_size != len(data):
            return False
        with open(path, "rb") as handle:
            return handle.read(len(data) + 1) == data
    except FileNotFoundError:
        return False


def write_new(path: str | Path, data: bytes) -> int:
    """Create `path` (which must not exist) holding `data`, mode 0644; no fsync. Returns
    its modification time (ns), which a rename keeps.

    For staged files in a private folder: they reach their public name later through
    `move_into_place`, which is the atomic step. Raises OSError (FileExistsError when
    `path` exists); a failed write removes what it created.
    """
    fd = os.open(path, _TEMP_FLAGS, 0o600)
    try:
        return _fill(fd, data, fsync=False)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise


def move_into_place(staged: str | Path, path: str | Path, *, absent: bool = False) -> bool | None:
    """Atomically replace `path` with the finished file `staged` (same file system).

    Returns True when moved; False, removing `staged` and leaving `path` as it was, when
    `path` already holds exactly the same bytes; None when there is no `staged` file, or
    when `path` is on another file system (its folder links elsewhere): the caller then
    writes the file there itself. Raises OutputError on any other OS failure.
    `absent` says the caller knows `path` is not there: it is then not looked for.
    """
    try:
        if not absent and os.path.exists(path):
            try:
                with open(staged, "rb") as handle:
                    data = handle.read()
            except FileNotFoundError:
                return None
            if _same_bytes(path, data):
                os.unlink(staged)
                return False
        try:
            os.replace(staged, path)
        except FileNotFoundError:
            if not os.path.exists(staged):
                return None
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, path)
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                return None
            raise
    except OSError as exc:
        raise _write_error(path, exc) from exc
    return True

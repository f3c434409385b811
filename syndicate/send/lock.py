"""Send: the send lock, `<database>.lock`: one `syndicate send` run at a time."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from syndicate.errors import LockedError, OutputError
from syndicate.output import make_private_folder
from syndicate.store import user_name


@dataclass(frozen=True, slots=True)
class SendLock:
    """The held send lock: its file, and the descriptor that holds it.

    A child process given `fd` (`pass_fds`) shares the lock: it stays held until
    the last process holding it ends, so the send workers of a run whose parent
    was killed still keep a second run out.
    """

    path: Path
    fd: int


@contextlib.contextmanager
def open_send_lock(database: Path) -> Iterator[Path]:
    """Hold the send lock, `<database>.lock`, for the block; never wait for it.

    Raises LockedError (exit 75) at once when another process holds it. The
    kernel drops the lock when the holder dies, even by SIGKILL.
    """
    with hold_send_lock(database) as held:
        yield held.path


@contextlib.contextmanager
def hold_send_lock(database: Path) -> Iterator[SendLock]:
    """`open_send_lock`, giving the descriptor too (to share with the send workers)."""
    path = database.with_name(database.name + ".lock")
    try:
        make_private_folder(path.parent)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        owner = _other_owner(path) if isinstance(exc, PermissionError) else None
        if owner is not None:
            me = user_name(os.geteuid())
            raise OutputError(
                f"{path}: cannot open the send lock: {exc.strerror or exc}; it belongs to "
                f"{owner} and this command runs as {me}.",
                hint=f"Run syndicate as one user; the lock holds no data, so when no `syndicate "
                f"send` runs it may be removed, or given to {me} (chown).",
            ) from exc
        raise OutputError(
            f"{path}: cannot open the send lock: {exc.strerror or exc}.",
            hint="Check that the database folder is writable (paths.database).",
        ) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(
                f"{path}: another `syndicate send` is running (it holds this lock).",
                hint="Let it finish; run again later.",
            ) from None
        yield SendLock(path, fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def shared_store_no_lock(database: Path) -> Iterator[SendLock]:
    """No send lock, for a PostgreSQL store: runs on any number of machines share its queue.

    The ledger's leases keep them from sending the same message (`store.ledger.claim`);
    a file lock on one machine would only keep out a second run on that machine.
    """
    yield SendLock(database.with_name(database.name + ".lock"), -1)


def _other_owner(path: Path) -> str | None:
    """The name of the user who owns the lock file, when that is not this one (a run with
    sudo left it); None when it is ours, or missing, or cannot be looked at."""
    try:
        uid = path.stat().st_uid
    except OSError:
        return None
    return None if uid == os.geteuid() else user_name(uid)

"""Send: the send lock, `<database>.lock`: one `syndicate send` run at a time."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from syndicate.errors import LockedError, OutputError
from syndicate.output import make_private_folder


@contextlib.contextmanager
def open_send_lock(database: Path) -> Iterator[Path]:
    """Hold the send lock, `<database>.lock`, for the block; never wait for it.

    Raises LockedError (exit 75) at once when another process holds it. The
    kernel drops the lock when the holder dies, even by SIGKILL.
    """
    path = database.with_name(database.name + ".lock")
    try:
        make_private_folder(path.parent)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
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
        yield path
    finally:
        os.close(fd)

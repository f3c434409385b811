"""Output: atomic file writes. The only code that writes files to disk."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from syndicate.errors import OutputError


def write_atomic(
    path: Path, data: bytes, *, skip_unchanged: bool = True, fsync: bool = True
) -> bool:
    """Write `data` to `path` atomically (temp file in the same folder, fsync, rename).

    Returns False, touching nothing, when `skip_unchanged` and the file already
    holds exactly these bytes. Raises OutputError on any OS failure; a failed
    write leaves the old file as it was and no temp file behind. `fsync=False`
    keeps the write atomic for readers (rename) but skips the disk flush, for
    bulk page writes where one flush per file would dominate the run.
    """
    try:
        if skip_unchanged and _same_bytes(path, data):
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                if fsync:
                    os.fsync(handle.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise OutputError(
            f"{path}: cannot write: {exc.strerror or exc}.",
            hint="Check that the output folder exists and is writable (paths.output).",
        ) from exc
    return True


def _same_bytes(path: Path, data: bytes) -> bool:
    try:
        if path.stat().st_size != len(data):
            return False
        return path.read_bytes() == data
    except FileNotFoundError:
        return False

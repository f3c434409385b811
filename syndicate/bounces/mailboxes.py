"""Bounces: the mail to read, from Maildir folders, mbox files and single .eml files.

A Maildir message is read from new/ (and from cur/ unless it has the S flag)
and, once handled, moved to cur/ with the S (seen) flag, so the next run skips
it. mbox and .eml files are only read: the ledger of applied reports
(store.bounces) keeps a second reading from changing anything.

No mail is read past MAX_MAIL_BYTES: one over it is unreadable, left in place.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from syndicate.errors import InputError

log = logging.getLogger(__name__)

# The most of one mail that is read: a DSN or ARF report with the digest it returns is well
# under 1 MiB, so more is not a report (or is an attack on memory), and is not read whole.
MAX_MAIL_BYTES = 10 * 2**20
TOO_BIG = "over 10 MiB, more than a bounce or complaint report holds"
_PIECE = 2**20  # an mbox is scanned in lines of at most this many bytes


@dataclass(frozen=True, slots=True)
class Item:
    """One mail to read: where it is, its bytes (None: could not be read), and how to file it."""

    label: str
    raw: bytes | None
    error: str = ""
    done: Callable[[], None] | None = None  # called once the mail was handled
    # What becomes of it when it cannot be handled, as the warning line says it.
    kept: str = "left in place"


def _is_maildir(path: Path) -> bool:
    return (path / "cur").is_dir() and (path / "new").is_dir()


def _mark_seen(path: Path, folder: Path) -> Callable[[], None]:
    def move() -> None:
        base, _sep, info = path.name.partition(":2,")
        flags = "".join(sorted(set(info) | {"S"}))
        try:
            os.replace(path, folder / "cur" / f"{base}:2,{flags}")
        except FileNotFoundError:
            pass  # moved meanwhile by another run, which read it too (reading twice is a no-op)
        except OSError as exc:
            log.warning("%s: cannot move to cur/: %s", path, exc.strerror or exc)

    return move


def _maildir(folder: Path) -> Iterator[Item]:
    for sub in ("new", "cur"):
        try:
            names = sorted(os.listdir(folder / sub))
        except OSError as exc:
            raise InputError(f"{folder}: cannot list {sub}/: {exc.strerror or exc}.") from exc
        for name in names:
            if name.startswith("."):
                continue
            if sub == "cur" and "S" in name.partition(":2,")[2]:
                continue
            path = folder / sub / name
            try:
                with _open_file(path) as handle:
                    raw = handle.read(MAX_MAIL_BYTES + 1)
            except FileNotFoundError:
                if os.path.lexists(path):  # a link to nothing
                    yield Item(str(path), None, "not a regular file")
                # Else gone since the listing: another run (cron's next, or the MTA's pipe)
                # or the mail client took it. Nothing of this run's to read or to report.
                continue
            except OSError as exc:
                yield Item(str(path), None, exc.strerror or str(exc))
                continue
            if len(raw) > MAX_MAIL_BYTES:
                yield Item(str(path), None, TOO_BIG)
                continue
            yield Item(str(path), raw, done=_mark_seen(path, folder))


def _open_file(path: Path) -> BinaryIO:
    """Open a file to read it; a FIFO swapped in since it was checked is not waited on."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    handle = open(descriptor, "rb", buffering=_PIECE)
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        handle.close()
        raise OSError("not a regular file")
    return handle


def _mbox_spans(handle: BinaryIO) -> Iterator[tuple[int, int]]:
    """Where each message of an mbox is, as (start, stop) offsets from its From_ line on.

    As Python's mailbox.mbox finds them (a message starts at each line beginning "From ";
    an empty line before the next one is not part of it), but reading lines in pieces of
    at most _PIECE bytes, so a line with no end is never held in memory whole.
    """
    handle.seek(0)
    start: int | None = None
    offset = 0
    line_start = True  # the next piece begins a line
    empty_line = False  # the last line read was empty
    while piece := handle.readline(_PIECE):
        if line_start:
            if piece.startswith(b"From "):
                if start is not None:
                    yield start, offset - 1 if empty_line else offset
                start = offset
            empty_line = piece == b"\n"
        line_start = piece.endswith(b"\n")
        offset += len(piece)
    if start is not None:
        yield start, offset - 1 if empty_line else offset


def _mbox(path: Path, handle: BinaryIO) -> Iterator[Item]:
    spans = list(_mbox_spans(handle))
    for index, (start, stop) in enumerate(spans, start=1):
        label = f"{path} message {index}"
        try:
            handle.seek(start)
            while not handle.readline(_PIECE).endswith(b"\n") and handle.tell() < stop:
                pass  # the From_ line, which is not part of the message
            size = stop - handle.tell()
            if size > MAX_MAIL_BYTES:
                yield Item(label, None, TOO_BIG)
                continue
            raw = handle.read(max(size, 0))
        except OSError as exc:
            yield Item(label, None, exc.strerror or str(exc))
            continue
        yield Item(label, raw)


def read_piped_mail(stream: BinaryIO) -> Item:
    """The one mail on `stream` (an MTA's pipe), read up to MAX_MAIL_BYTES."""
    raw = stream.read(MAX_MAIL_BYTES + 1)
    kept = "exit 1: the mail server returns it"  # nothing stays behind to be left in place
    if len(raw) > MAX_MAIL_BYTES:
        return Item("<stdin>", None, TOO_BIG, kept=kept)
    return Item("<stdin>", raw, kept=kept)


def read_mail(paths: Sequence[Path]) -> Iterator[Item]:
    """Return an iterator over every mail under `paths` (Maildir folders, mbox files,
    single messages).

    Raises InputError at the call, before anything is read (and before the caller
    opens its store), for a path that does not exist or a folder that is not a
    Maildir (no cur/ and new/).
    """
    for path in paths:
        if not path.exists():
            raise InputError(f"{path}: no such file or folder. Give a Maildir, mbox or .eml file.")
        if path.is_dir() and not _is_maildir(path):
            raise InputError(
                f"{path}: a folder but not a Maildir (no cur/ and new/). "
                "Give a Maildir, an mbox file or an .eml file."
            )
        if not path.is_dir() and not path.is_file():  # reading would wait, or never end
            mode = path.stat().st_mode
            kind = "device"
            if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
                kind = "named pipe" if stat.S_ISFIFO(mode) else "socket"
            raise InputError(
                f"{path}: a {kind}, not a file or a Maildir. Give a Maildir, mbox or .eml file."
            )
    return _read_paths(paths)


def _read_paths(paths: Sequence[Path]) -> Iterator[Item]:
    for path in paths:
        if path.is_dir():
            yield from _maildir(path)
            continue
        try:
            with _open_file(path) as handle:
                if handle.read(5) == b"From ":
                    yield from _mbox(path, handle)
                    continue
                handle.seek(0)
                raw = handle.read(MAX_MAIL_BYTES + 1)
        except OSError as exc:
            yield Item(str(path), None, exc.strerror or str(exc))
            continue
        yield Item(str(path), None, TOO_BIG) if len(raw) > MAX_MAIL_BYTES else Item(str(path), raw)

"""Bounces: the mail to read, from Maildir folders, mbox files and single .eml files.

A Maildir message is read from new/ (and from cur/ unless it has the S flag)
and, once handled, moved to cur/ with the S (seen) flag, so the next run skips
it. mbox and .eml files are only read: the ledger of applied reports
(store.bounces) keeps a second reading from changing anything.
"""

from __future__ import annotations

import logging
import mailbox
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from syndicate.errors import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Item:
    """One mail to read: where it is, its bytes (None: could not be read), and how to file it."""

    label: str
    raw: bytes | None
    error: str = ""
    done: Callable[[], None] | None = None  # called once the mail was handled


def _is_maildir(path: Path) -> bool:
    return (path / "cur").is_dir() and (path / "new").is_dir()


def _mark_seen(path: Path, folder: Path) -> Callable[[], None]:
    def move() -> None:
        base, _sep, info = path.name.partition(":2,")
        flags = "".join(sorted(set(info) | {"S"}))
        try:
            os.replace(path, folder / "cur" / f"{base}:2,{flags}")
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
            if not path.is_file():  # a FIFO would block the read, and the run, for good
                yield Item(str(path), None, "not a regular file")
                continue
            try:
                raw = path.read_bytes()
            except OSError as exc:
                yield Item(str(path), None, exc.strerror or str(exc))
                continue
            yield Item(str(path), raw, done=_mark_seen(path, folder))


def _mbox(path: Path) -> Iterator[Item]:
    box = mailbox.mbox(path, create=False)
    try:
        for index, key in enumerate(box.keys(), start=1):
            label = f"{path} message {index}"
            try:
                raw = box.get_bytes(key)
            except (OSError, KeyError) as exc:
                yield Item(label, None, str(exc))
                continue
            yield Item(label, raw)
    finally:
        box.close()


def read_mail(paths: Sequence[Path]) -> Iterator[Item]:
    """Yield every mail under `paths` (Maildir folders, mbox files, single messages).

    Raises InputError, before anything is read, for a path that does not
    exist or a folder that is not a Maildir (no cur/ and new/).
    """
    for path in paths:
        if not path.exists():
            raise InputError(f"{path}: no such file or folder. Give a Maildir, mbox or .eml file.")
        if path.is_dir() and not _is_maildir(path):
            raise InputError(
                f"{path}: a folder but not a Maildir (no cur/ and new/). "
                "Give a Maildir, an mbox file or an .eml file."
            )
    for path in paths:
        if path.is_dir():
            yield from _maildir(path)
            continue
        try:
            with open(path, "rb") as handle:
                start = handle.read(5)
        except OSError as exc:
            yield Item(str(path), None, exc.strerror or str(exc))
            continue
        if start == b"From ":
            yield from _mbox(path)
            continue
        try:
            yield Item(str(path), path.read_bytes())
        except OSError as exc:
            yield Item(str(path), None, exc.strerror or str(exc))

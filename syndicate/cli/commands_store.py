"""Commands: store (copy a whole store between SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import click

from syndicate.cli import AppContext, cli, echo, pass_app
from syndicate.config import StoreSettings
from syndicate.errors import StoreError, TerminatedError
from syndicate.store import (
    FOLDER_HINT,
    NEXT_RUN,
    NEXT_RUN_OR_REQUEST,
    NO_FOLDER_HINT,
    NOT_A_STORE_HINT,
    OPEN_HINT,
    UNUSABLE_HINT,
    Database,
    open_reader,
)
from syndicate.store.copy import copy_into

log = logging.getLogger(__name__)

_PG_SCHEMES = ("postgresql://", "postgres://")
_SQLITE_SCHEME = "sqlite://"


@cli.group("store")
def store_group() -> None:
    """Manage the store itself.

    Example: syndicate store copy --from syndicate.db --to postgresql://syndicate@db/syndicate
    """


@dataclass(frozen=True, slots=True)
class _Location:
    """Where a store is: a PostgreSQL URL, or a SQLite file."""

    url: str  # empty: the SQLite file at `path`
    path: Path
    given: str  # "URL" or "path", for messages


def _parse(location: str, *, option: str) -> _Location:
    """Read `location`: a PostgreSQL URL, `sqlite:///path` or a plain path."""
    if location.startswith(_PG_SCHEMES):
        return _Location(location, Path(), "URL")
    text = location.removeprefix(_SQLITE_SCHEME)
    if not text or "://" in text:
        # Named by its scheme only: the rest may hold a password (a mistyped postgresql://).
        scheme = location.partition("://")[0] + "://" if "://" in location else location
        raise click.BadParameter(
            f"a {scheme!r} location is neither a postgresql:// URL nor a SQLite file "
            "(sqlite:///path/to/file.db or a plain path).",
            param_hint=option,
        )
    return _Location("", Path(text), "path")


# What to do, said of the option that named the file, where the store's own hints name
# paths.database (which a copy does not use).
_OPTION_HINTS = {
    "--from": "Check the path given to --from: it must be a syndicate store, such as the file "
    "paths.database names.",
    "--to": "Give --to a new file in a folder this user may write to, or an empty syndicate store.",
}
# The same for a PostgreSQL database that is no syndicate store (UNUSABLE_HINT).
_UNUSABLE_HINTS = {
    "--from": "Check the URL given to --from: it must be a syndicate store; or check the "
    "role's privileges (docs/operating.md).",
    "--to": "Point --to at a new database, or check the role's privileges (docs/operating.md).",
}


@contextmanager
def _named_by(option: str) -> Iterator[None]:
    """Give a StoreError raised in the block, about a file that cannot be opened or is no
    store, the hint of `option` instead of paths.database's (a refused login names the URL
    by the `url_name` the caller gave)."""
    try:
        yield
    except StoreError as exc:
        if exc.hint in (OPEN_HINT, NOT_A_STORE_HINT, FOLDER_HINT, NO_FOLDER_HINT):
            exc.hint = _OPTION_HINTS[option]
        elif exc.hint == UNUSABLE_HINT:
            exc.hint = _UNUSABLE_HINTS[option]
        elif exc.hint and exc.hint.endswith(NEXT_RUN):  # a copy has no next run
            exc.hint = exc.hint.removesuffix(NEXT_RUN) + ", then run the copy again."
        elif exc.hint and exc.hint.endswith(NEXT_RUN_OR_REQUEST):
            exc.hint = exc.hint.removesuffix(NEXT_RUN_OR_REQUEST) + " Then run the copy again."
        raise


def _open_source(found: _Location, settings: StoreSettings) -> Database:
    """Open the store to copy from, to read only. A missing file or a PostgreSQL database
    syndicate never wrote is refused, left as it is."""
    path, url = found.path, found.url
    db = None
    if url or path.is_file():
        with _named_by("--from"):
            db = open_reader(
                path,
                url=url,
                busy_timeout=settings.busy_timeout,
                reply_timeout=settings.reply_timeout,
                url_name="the --from URL",
            )
    if db is None:
        from syndicate.store import postgres  # psycopg: loaded only for a PostgreSQL store

        raise StoreError(
            f"{postgres.where(url) if url else path}: no such store to copy from; "
            "nothing was copied.",
            hint=f"Check the {found.given} given to --from.",
        )
    return db


def _terminated(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the clean-up must not be cut short
    raise TerminatedError("store copy: stopped by SIGTERM; the target was left as it was.")


@store_group.command("copy")
@click.option(
    "--from",
    "source_url",
    required=True,
    metavar="URL",
    help="The store to copy: a postgresql:// URL, or a SQLite file (sqlite:///path or a "
    "plain path).",
)
@click.option(
    "--to",
    "target_url",
    required=True,
    metavar="URL",
    help="The empty store to fill: a postgresql:// URL, or a SQLite file (sqlite:///path "
    "or a plain path; created if missing).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@pass_app
def copy_command(app: AppContext, source_url: str, target_url: str, as_json: bool) -> None:
    """Copy a whole store into an empty one (SQLite to PostgreSQL, or back).

    Both stores are migrated to this version's schema first. A target holding any row
    is refused and nothing is written; a failure part way, Ctrl-C or SIGTERM leaves the
    target as it was (a new SQLite file appears only once complete).

    Example: syndicate store copy --from syndicate.db --to postgresql://syndicate@db/syndicate
    """
    source_at = _parse(source_url, option="--from")
    target_at = _parse(target_url, option="--to")
    settings = app.settings.store
    # SIGTERM ends the copy as Ctrl-C does (an exception), so a new file is cleaned up.
    # (Python lets only the main thread set a handler: elsewhere, the default stays.)
    main = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGTERM, _terminated) if main else None
    before_int = signal.getsignal(signal.SIGINT)
    late: list[str] = []

    def complete() -> None:
        # Called with both signals held back, once a new file has its name: one that came
        # meanwhile (or comes later) ends nothing more, the copy is complete.
        if main and before_int is not None:
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda n, _: late.append(signal.Signals(n).name))

    try:
        with _open_source(source_at, settings) as source, _named_by("--to"):
            counts, target_name = copy_into(
                source,
                url=target_at.url,
                path=target_at.path,
                busy_timeout=settings.busy_timeout,
                reply_timeout=settings.reply_timeout,
                on_complete=complete,
                url_name="the --to URL",
            )
            names = (str(source.path), target_name)
    finally:
        if main:
            signal.signal(signal.SIGTERM, before)
            if before_int is not None:  # None: not set from Python, so never swapped here
                signal.signal(signal.SIGINT, before_int)
    for name in dict.fromkeys(late):
        log.warning(
            "%s: %s came as the new store was put in place; the copy is complete.",
            target_name,
            name,
        )
    if as_json:
        record = {"from": names[0], "to": names[1], "copied": counts}
        echo(json.dumps(record, ensure_ascii=False))
        return
    app.echo("copied: " + ", ".join(f"{n} {table}" for table, n in counts.items()))

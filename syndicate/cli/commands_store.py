"""Commands: store (copy a whole store between SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from syndicate.cli import AppContext, cli, pass_app
from syndicate.errors import StoreError
from syndicate.store import Database, open_database, open_reader
from syndicate.store.copy import copy_store

_PG_SCHEMES = ("postgresql://", "postgres://")
_SQLITE_SCHEME = "sqlite://"


@cli.group("store")
def store_group() -> None:
    """Manage the store itself.

    Example: syndicate store copy --from syndicate.db --to postgresql://syndicate@db/syndicate
    """


def _open(location: str, *, option: str, must_exist: bool) -> Database:
    """Open the store at `location`: a PostgreSQL URL, `sqlite:///path` or a plain path.

    With `must_exist` (the source) it is opened to read only, and a missing file or a
    PostgreSQL database syndicate never wrote is refused, left as it is.
    """
    if location.startswith(_PG_SCHEMES):
        url, path, given = location, Path(), "URL"
    else:
        text = location.removeprefix(_SQLITE_SCHEME)
        if not text or "://" in text:
            # Named by its scheme only: the rest may hold a password (a mistyped postgresql://).
            scheme = location.partition("://")[0] + "://" if "://" in location else location
            raise click.BadParameter(
                f"a {scheme!r} location is neither a postgresql:// URL nor a SQLite file "
                "(sqlite:///path/to/file.db or a plain path).",
                param_hint=option,
            )
        url, path, given = "", Path(text), "path"
    if not must_exist:
        return open_database(path, url=url)
    found = open_reader(path, url=url) if url or path.is_file() else None
    if found is None:
        from syndicate.store import postgres  # psycopg: loaded only for a PostgreSQL store

        raise StoreError(
            f"{postgres.where(url) if url else path}: no such store to copy from; "
            "nothing was copied.",
            hint=f"Check the {given} given to {option}.",
        )
    return found


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
    is refused and nothing is written; a failure part way leaves the target empty.

    Example: syndicate store copy --from syndicate.db --to postgresql://syndicate@db/syndicate
    """
    with _open(source_url, option="--from", must_exist=True) as source:
        with _open(target_url, option="--to", must_exist=False) as target:
            counts = copy_store(source, target)
            names = (str(source.path), str(target.path))
    if as_json:
        record = {"from": names[0], "to": names[1], "copied": counts}
        click.echo(json.dumps(record, ensure_ascii=False))
        return
    app.echo("copied: " + ", ".join(f"{n} {table}" for table, n in counts.items()))

"""Commands: subscribers (add, remove, list, import, export, erase, stats)."""

from __future__ import annotations

import csv
import io
import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import click

from syndicate.cli import AppContext, cli, echo, pass_app
from syndicate.errors import (
    DiskFullError,
    InputError,
    OutputError,
    ReaderGoneError,
    SubscriberError,
)
from syndicate.i18n import LANGUAGES
from syndicate.model import Subscriber, SubscriptionStatus
from syndicate.output import write_atomic
from syndicate.store.bounces import (
    BOUNCE_LIMIT,
    COMPLAINT_LIMIT,
    COMPLAINT_TARGET,
    RATE_DAYS,
    Rates,
    last_digest_rates,
    other_reports,
    recent_rates,
)
from syndicate.store.lists import OWN_COLUMNS, RowError, defuse_cell, import_rows, read_list
from syndicate.store.subscribers import (
    add_subscriber,
    erase,
    get_by_email,
    iter_subscribers,
    normalize_email,
    stats,
    unsubscribe,
)

NOT_LISTED_HINT = "Check it against `syndicate subscribers list`."
EMPTY_LIST = "No subscribers yet. Add one with `syndicate subscribers add EMAIL`."
# What a rejected row's line ends with.
_ROW_FIX = "Fix the row and import the file again; the other rows are kept."


_STATUSES = [str(s) for s in SubscriptionStatus]


def _now(app: AppContext) -> datetime:
    return datetime.fromtimestamp(app.now(), UTC)


def _record(subscriber: Subscriber) -> dict[str, object]:
    def iso(moment: datetime | None) -> str | None:
        return moment.isoformat() if moment else None

    return {
        "id": subscriber.id,
        "email": subscriber.email,
        "name": subscriber.name,
        "language": subscriber.language,
        "status": str(subscriber.status),
        "created_at": iso(subscriber.created_at),
        "confirmed_at": iso(subscriber.confirmed_at),
        "unsubscribed_at": iso(subscriber.unsubscribed_at),
        "bounced_at": iso(subscriber.bounced_at),
        "bounce_count": subscriber.bounce_count,
    }


@cli.group("subscribers")
def subscribers_group() -> None:
    """Manage the mailing list: add, remove, list, import, export, erase, stats.

    Example: syndicate subscribers add an@example.org --lang en
    """


@subscribers_group.command("add")
@click.argument("email")
@click.option("--name", default=None, help="The subscriber's name.")
@click.option(
    "--lang",
    "language",
    type=click.Choice(LANGUAGES),
    default=None,
    help="Language of the digest they get (default: site.language).",
)
@pass_app
def add_command(app: AppContext, email: str, name: str | None, language: str | None) -> None:
    """Add a confirmed subscriber (you vouch for their consent).

    Example: syndicate subscribers add an@example.org --name "An" --lang vi
    """
    normalize_email(email)  # a typo is refused before the store is made
    db = app.database
    existing = get_by_email(db, email)
    if existing is not None and existing.status is SubscriptionStatus.CONFIRMED:
        app.echo(f"{existing.email} is already subscribed (id {existing.id}).")
        return
    if existing is not None:
        raise SubscriberError(
            f"email address {existing.email!r} is already stored with status {existing.status}.",
            hint="Only the person can subscribe again, through the sign-up form."
            if existing.status is not SubscriptionStatus.PENDING
            else "They will be subscribed when they follow the confirmation link.",
        )
    added = add_subscriber(
        db,
        email,
        name=name,
        language=language or app.settings.site.language,
        status=SubscriptionStatus.CONFIRMED,
        now=_now(app),
    )
    app.echo(f"Added {added.email} (id {added.id}, {added.language}).")


@subscribers_group.command("remove")
@click.argument("email")
@pass_app
def remove_command(app: AppContext, email: str) -> None:
    """Unsubscribe an address; it stays on file so no send or import brings it back.

    Example: syndicate subscribers remove an@example.org
    """
    normalize_email(email)
    # Where there is no store yet nobody is on the list: say so and make none.
    found = get_by_email(app.database, email) if app.read_store() is not None else None
    if found is None:
        raise SubscriberError(
            f"email address {email.strip()!r} is not a subscriber.", hint=NOT_LISTED_HINT
        )
    db = app.database
    was = found.status
    unsubscribe(db, found.id, now=_now(app))
    if was is SubscriptionStatus.UNSUBSCRIBED:
        app.echo(f"{found.email} was already unsubscribed.")
    else:
        app.echo(f"Unsubscribed {found.email}.")


@subscribers_group.command("list")
@click.option("--status", type=click.Choice(_STATUSES), default=None, help="Only this status.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@pass_app
def list_command(app: AppContext, status: str | None, as_json: bool) -> None:
    """List subscribers, oldest first.

    Example: syndicate subscribers list --status confirmed --json
    """
    wanted = SubscriptionStatus(status) if status else None
    db = app.reader  # reads only: a store not made yet reads as an empty one
    # One read transaction: a consistent list, and no write lock (sign-ups go on).
    listed = 0
    with db.snapshot():
        for subscriber in iter_subscribers(db, status=wanted):
            listed += 1
            if as_json:
                echo(json.dumps(_record(subscriber), ensure_ascii=False))
            else:
                name = f"  {subscriber.name}" if subscriber.name else ""
                echo(
                    f"{subscriber.id}\t{subscriber.email}\t{subscriber.language}\t"
                    f"{subscriber.status}{name}"
                )
    if not listed and not as_json:  # an empty list says so; --json stays machine-readable
        if wanted is None:
            app.echo(EMPTY_LIST)
        else:
            app.echo(f"No {wanted} subscribers.")


@subscribers_group.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@pass_app
def import_command(app: AppContext, file: Path) -> None:
    """Add subscribers from a CSV list: syndicate's export, or listmonk's, Mailchimp's, Substack's.

    Each row keeps its status: unsubscribed and bounced addresses are stored as such and
    never mailed; pending ones wait for their own confirmation. Bad rows are reported
    with their line and column and skipped; addresses already stored are left as they
    are (a row saying they left unsubscribes them), so importing twice changes nothing.

    Example: syndicate subscribers import list.csv
    """
    try:
        text = file.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"{file}: no such file. Give the path of a CSV file.") from None
    except OSError as exc:
        raise InputError(f"{file}: cannot read: {exc.strerror or exc}.") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{file}: not UTF-8 text ({exc.reason}). Save it as UTF-8 CSV.") from exc
    shape, rows = read_list(text, source=str(file))

    def report(line: int, exc: SubscriberError) -> None:
        column = exc.column if isinstance(exc, RowError) else "email"
        where = f"{file} line {line}" + (f", column {column}" if column else "")
        echo(f"{where}: {exc}" + ("" if exc.hint else f" {_ROW_FIX}"), err=True)

    counts = import_rows(
        app.database,
        rows,
        now=_now(app),
        language=app.settings.site.language,
        on_error=report,
    )
    left = f", {counts.stopped} stored ones marked as having left" if counts.stopped else ""
    app.echo(
        f"Imported {counts.added}{left}, unchanged {counts.unchanged}, "
        f"rejected {counts.rejected} ({shape.name} list)."
    )
    if counts.rejected:
        click.get_current_context().exit(1)


@subscribers_group.command("export")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path, allow_dash=True))
@pass_app
def export_command(app: AppContext, file: Path) -> None:
    """Write every subscriber to a CSV file (email,name,language,status), atomically, 0600;
    `-` writes it to standard output.

    A cell that starts like a spreadsheet formula (= + - @) gets a leading apostrophe,
    which `import` removes.

    Example: syndicate subscribers export backup.csv
    """
    to_stdout = str(file) == "-"
    if not to_stdout:
        _check_export_target(file)
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(OWN_COLUMNS)
    count = 0
    db = app.reader  # reads only: a store not made yet reads as an empty one
    with db.snapshot():  # a consistent copy, taken without the write lock
        for subscriber in iter_subscribers(db):
            writer.writerow(
                [
                    defuse_cell(subscriber.email),
                    defuse_cell(subscriber.name or ""),
                    subscriber.language,
                    subscriber.status,
                ]
            )
            count += 1
    if to_stdout:
        _write_stdout(buffer.getvalue().encode("utf-8"))
        if not app.quiet:  # stdout holds the CSV alone
            echo(f"Exported {count} subscribers to standard output.", err=True)
        return
    write_atomic(file, buffer.getvalue().encode("utf-8"), skip_unchanged=False, private=True)
    app.echo(f"Exported {count} subscribers to {file}.")


def _write_stdout(data: bytes) -> None:
    """Write `data` to standard output; DiskFullError (exit 75) or OutputError when it
    cannot take it or is closed, saying so of the CSV (a pipe whose reader has gone ends
    quietly)."""
    try:
        echo(data, nl=False, needed=True)
    except ReaderGoneError:
        raise
    except OutputError as exc:
        full = isinstance(exc, DiskFullError)
        raise type(exc)(
            exc.message.replace("cannot write:", "cannot write the CSV:"),
            hint=("Send it to a disk with room, or give" if full else "Give")
            + " a file path instead of -.",
        ) from None


def _check_export_target(file: Path) -> None:
    """Refuse a path that holds something other than a file (a device, a pipe, through a
    link or not): the export replaces what is there (a new file, renamed into place), and
    `/dev/stdout` so replaced, as root, was a file for every later process."""
    try:
        mode = os.stat(file).st_mode
    except OSError:
        return  # nothing there (or a link to nothing): the export makes the file
    if not stat.S_ISREG(mode):
        raise InputError(
            f"{file} is not a regular file: the export writes a new file in its place.",
            hint="Give a file path, or - to write the CSV to standard output.",
        )
    if _links_into_proc(file):
        # /dev/stdout with stdout sent to a file: a regular file, but behind a link that
        # the export would replace (in /dev, as root) with a file of its own.
        raise InputError(
            f"{file} is a link to a file this process has open: the export writes a new "
            "file in its place.",
            hint="Give a file path, or - to write the CSV to standard output.",
        )


def _links_into_proc(file: Path) -> bool:
    """Whether `file`, or a link on the way to what it names, is in /proc (/dev/stdout,
    /dev/fd/N and /proc/self/fd/N name an open file of the process through /proc)."""
    path = os.path.abspath(file)
    for _ in range(40):  # the kernel's own limit on links followed
        folder = os.path.realpath(os.path.dirname(path))
        if folder == "/proc" or folder.startswith("/proc/"):
            return True
        path = os.path.join(folder, os.path.basename(path))
        if not os.path.islink(path):
            return False
        path = os.path.normpath(os.path.join(folder, os.readlink(path)))
    return False


@subscribers_group.command("erase")
@click.argument("email")
@pass_app
def erase_command(app: AppContext, email: str) -> None:
    """Delete an address and its history for good; a keyed hash stops it coming back.

    Messages to it in the outbox folder are deleted too.

    Example: syndicate subscribers erase an@example.org
    """
    normalize_email(email)  # a typo is refused before the store is made
    db = app.database
    address = email.strip()
    deleted = erase(db, address, now=_now(app))
    if deleted:
        app.echo(f"Erased {address}; only a keyed hash remains, so it cannot be imported again.")
    else:
        app.echo(f"{address} was not stored; its hash is kept so it cannot be imported.")
    # Here, not at the top: the send stage (the SMTP stack among it) is loaded only by the
    # one subscribers command that needs it, not by list, add and the rest.
    from syndicate.send import forget_recipient

    # The mails carry the address as stored (IDN domains as ASCII), not as typed.
    removed = forget_recipient(app.settings.paths.outbox, normalize_email(address))
    if removed:
        app.echo(f"Deleted {removed} outbox message{'s' if removed != 1 else ''} to {address}.")


def _rates_line(label: str, rates: Rates) -> str:
    complaint = "complaint" if rates.complaints == 1 else "complaints"
    bounce = "hard bounce" if rates.hard == 1 else "hard bounces"
    return (
        f"{label}: {rates.sent} sent, {rates.hard} {bounce} ({rates.bounce_rate:.2%}, "
        f"keep under {BOUNCE_LIMIT:.0%}), {rates.complaints} {complaint} "
        f"({rates.complaint_rate:.2%}, keep under {COMPLAINT_LIMIT:.1%}, "
        f"better under {COMPLAINT_TARGET:.1%})"
    )


def _other_line(hard: int, complaints: int) -> str:
    bounce = "hard bounce" if hard == 1 else "hard bounces"
    complaint = "complaint" if complaints == 1 else "complaints"
    return (
        f"last {RATE_DAYS} days, other mail: {hard} {bounce}, {complaints} {complaint} "
        "(confirmation mails, earlier digests; in no rate)"
    )


@subscribers_group.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@pass_app
def stats_command(app: AppContext, as_json: bool) -> None:
    """Count subscribers by status, and bounce and complaint rates.

    Rates are for the last 30 days and for the last digest sent.

    Example: syndicate subscribers stats
    """
    db = app.reader  # reads only: a store not made yet reads as an empty one
    with db.snapshot():
        counts = stats(db)
        now = _now(app)
        recent = recent_rates(db, now=now)
        other_hard, other_complaints = other_reports(db, now=now)
        day, last = last_digest_rates(db)
    if as_json:
        rates = {
            "last_30_days": {
                **recent.to_dict(),
                "other_hard_bounces": other_hard,
                "other_complaints": other_complaints,
            },
            "last_digest": {"day": day.isoformat() if day else None, **last.to_dict()},
            "limits": {
                "bounce_rate": BOUNCE_LIMIT,
                "complaint_rate": COMPLAINT_LIMIT,
                "complaint_rate_target": COMPLAINT_TARGET,
            },
        }
        echo(json.dumps({**counts, "rates": rates}))
        return
    for key in (*_STATUSES, "total", "erased"):
        echo(f"{key}: {counts[key]}")
    echo(_rates_line(f"last {RATE_DAYS} days", recent))
    echo(_other_line(other_hard, other_complaints))
    echo(_rates_line(f"last digest {day.isoformat() if day else '(none)'}", last))

"""Commands: send (the daily cron job) and unsubscribe-token."""

from __future__ import annotations

import json
import secrets
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import click

from syndicate.cli import AppContext, cli, echo, pass_app
from syndicate.errors import (
    InterruptError,
    OutputError,
    ReaderGoneError,
    SubscriberError,
    TokenError,
    printable,
)
from syndicate.mail import MailInfo, unsubscribe_url
from syndicate.store.meta import get_secret, read_secret
from syndicate.store.subscribers import get_by_email, get_by_id, normalize_email
from syndicate.tokens import make_token, verify_token

if TYPE_CHECKING:
    from syndicate.send import SendSummary
    from syndicate.send.daily import Preview

NOTHING_NEW = "Nothing new to send."

# The most `--workers`: each is a process with smtp.connections SMTP connections and three
# store connections, so more is a slip (1000 for 10) that would swamp the relay and
# PostgreSQL's max_connections, not a setting. A fixed number, not one from the core
# count, so a cron line means the same on every machine sharing the queue.
MOST_WORKERS = 64


class _ProgressLine:
    """One self-rewriting stderr line: sent of total, rate, time left (terminals only)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.shown = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.shown < 0.1 and done < total:
            return
        self.shown = now
        elapsed = max(now - self.started, 1e-6)
        rate = done / elapsed
        left = (total - done) / rate if rate > 0 else 0.0
        echo(
            f"\r{done}/{total} sent, {rate:.0f} messages/s, {timedelta(seconds=round(left))} left ",
            err=True,
            nl=False,
        )

    def close(self) -> None:
        echo("", err=True)


def format_summary(summary: SendSummary) -> str:
    """The one summary line of a run."""
    bounced = f", {summary.bounced} bounced" if summary.bounced else ""
    return (
        f"Digest {summary.digest}: sent {summary.sent}, failed {summary.failed}{bounced}, "
        f"skipped {summary.skipped} in {summary.seconds:.1f} s "
        f"({summary.rate:.1f} messages/s)."
    )


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _print_summary(app: AppContext, summary: SendSummary, *, note: str = "") -> None:
    """Print one summary line: on stderr when some failed (so `-q` under cron still shows it)."""
    line = format_summary(summary)
    if note:
        line = f"{line[:-1]}; {note}"
    if summary.failed:
        echo(line, err=True)
    else:
        app.echo(line)


@cli.command("send")
@click.option("--dry-run", is_flag=True, help="Render and count; store no digest, send nothing.")
@click.option(
    "--to",
    "to",
    metavar="ADDRESS",
    default=None,
    help="Send one test copy to ADDRESS instead (not recorded).",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="Send to at most N subscribers in this run (today's digest first).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1, max=MOST_WORKERS),
    default=1,
    show_default=True,
    help="Send through N worker processes sharing the ledger (each with smtp.connections "
    "connections and 1/N of smtp.rate).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@pass_app
def send_command(
    app: AppContext,
    dry_run: bool,
    to: str | None,
    limit: int | None,
    workers: int,
    as_json: bool,
) -> None:
    """Build feeds and today's digest, and deliver it to every confirmed subscriber owed it.

    Safe to rerun: subscribers already sent are skipped; deferred ones are retried.
    Then digests of the last 7 days still owed to someone are finished.

    Example: syndicate -q send
    """
    # Imported here: `unsubscribe-token`, in this module too, needs none of the send stack.
    from syndicate.send.daily import preview, run_daily

    settings = app.settings
    now = datetime.fromtimestamp(app.now(), UTC)
    if dry_run or to is not None:
        shown = preview(
            settings, open_db=lambda: app.database, now=now, to=to, dry_run=dry_run, limit=limit
        )
        _print_preview(app, shown, as_json=as_json)
        return
    lines = _ProgressLines(show=not as_json and sys.stderr.isatty() and not app.quiet)

    unprinted: list[OutputError] = []

    def show(summary: SendSummary) -> None:
        # A summary that cannot be printed does not cut the catch-up short: the error ends
        # the command once the owed digests are delivered. Failures still say so after it
        # (on stderr, which cron mails).
        if not as_json and (summary.failed or not unprinted):
            try:
                _print_summary(app, summary)
            except OutputError as exc:
                unprinted.append(exc)

    try:
        report = run_daily(
            settings,
            open_db=lambda: app.database,
            now=now,
            limit=limit,
            progress=lines.next,
            on_earlier=show,
            on_notice=lambda line: echo(line, err=True),  # also under -q: cron mails it
            workers=workers,
        )
    except InterruptError as exc:
        echo(exc.message, err=True)
        click.get_current_context().exit(exc.exit_code)
    finally:
        lines.close()
    today = report.today
    try:
        if unprinted:
            raise unprinted[0]
        if as_json:
            # The same keys whether or not there was a digest today, so a script reads one
            # shape.
            shape = today.to_dict() if today is not None else {"digest": None, **_NOTHING_COUNTS}
            echo(json.dumps({**shape, "earlier": [s.to_dict() for s in report.earlier]}))
        elif today is None:
            app.echo(NOTHING_NEW)
        else:
            _print_summary(app, today, note="" if report.subscribers else NO_SUBSCRIBERS)
    except OutputError as exc:
        if not report.failed:
            raise
        # Failed deliveries say so whatever became of standard output: their lines went to
        # stderr, and the exit code is theirs (1), not the output's (141 or 75).
        if today is not None and today.failed and not as_json:
            _print_summary(app, today)
        if not isinstance(exc, ReaderGoneError):
            echo(f"Error: {printable(str(exc))}", err=True)
    if report.failed:
        click.get_current_context().exit(1)


class _ProgressLines:
    """A fresh progress line for each digest sent, on terminals only."""

    def __init__(self, *, show: bool) -> None:
        self.show = show
        self._line: _ProgressLine | None = None

    def next(self) -> _ProgressLine | None:
        self.close()
        self._line = _ProgressLine() if self.show else None
        return self._line

    def close(self) -> None:
        if self._line is not None:
            self._line.close()
            self._line = None


NO_SUBSCRIBERS = (
    "no confirmed subscribers yet (add one with `syndicate subscribers add EMAIL`, "
    "or let readers sign up through `syndicate serve`)."
)


# The counts of a run that had no digest to send: the keys of SendSummary.to_dict().
_NOTHING_COUNTS = {"sent": 0, "failed": 0, "skipped": 0, "bounced": 0, "seconds": 0.0, "rate": 0.0}


def _print_preview(app: AppContext, shown: Preview | None, *, as_json: bool) -> None:
    """Print what --dry-run counted, or where the --to test copy went."""
    if shown is None:
        if as_json:
            # The same keys as a run's summary, so a script reads one shape.
            echo(json.dumps({"digest": None, **_NOTHING_COUNTS}))
        else:
            app.echo(NOTHING_NEW)
        return
    if shown.test_copy is not None:
        if as_json:
            echo(json.dumps({"digest": shown.digest, "test_copy": shown.test_copy}))
        else:
            app.echo(f"Sent a test copy of the {shown.digest} digest to {shown.test_copy}.")
        return
    note = f" (no test copy to {shown.address} either)" if shown.address else ""
    if as_json:
        echo(
            json.dumps(
                {
                    "digest": shown.digest,
                    "dry_run": True,
                    "articles": shown.articles,
                    "would_send": shown.would_send,
                    "skipped": shown.skipped,
                    "message_bytes": shown.message_bytes,
                }
            )
        )
        return
    app.echo(
        f"Dry run: the {shown.digest} digest ({_plural(shown.articles, 'article')}) "
        f"would go to {_plural(shown.would_send, 'subscriber')}, {shown.skipped} skipped; "
        f"no digest was stored and nothing was sent{note}."
    )


# What an operator checks when a token given to `unsubscribe-token verify` is not one this
# store signed (a reader's page says nothing of the kind: the web answers with its own).
_VERIFY_HINT = (
    "Check that the token was copied whole (the part of the link after token=) and that this "
    "is the store (and SYNDICATE_SECRET) that made it."
)


@cli.group("unsubscribe-token")
def unsubscribe_token_group() -> None:
    """Check or make the signed tokens of unsubscribe links.

    Example: syndicate unsubscribe-token verify TOKEN
    """


@unsubscribe_token_group.command("verify")
@click.argument("token")
@pass_app
def verify_command(app: AppContext, token: str) -> None:
    """Check an unsubscribe token and show whom it is for; exit 2 if it is not valid.

    A token whose subscriber is gone (erased, or a test copy's) is not valid.

    Example: syndicate unsubscribe-token verify AQIAAAAAAAAAKmckm3Dk...
    """
    settings = app.settings
    db = app.reader  # checks only: no store, and no secret, is made for it
    now = datetime.fromtimestamp(app.now(), UTC)
    # With no secret yet no token was ever signed here: an unkept random one fails it with
    # the reason (malformed, another purpose, altered) a new secret would.
    secret = read_secret(settings, app.read_store()) or secrets.token_bytes(32)
    try:
        found = verify_token(
            secret,
            token,
            purpose="unsubscribe",
            now=now,
            find=lambda subscriber_id: get_by_id(db, subscriber_id),
        )
    except TokenError as exc:
        raise TokenError(f"not valid: {exc.message}", hint=exc.hint or _VERIFY_HINT) from None
    echo(f"valid: subscriber {found.id} <{found.email}> ({found.status})")


@unsubscribe_token_group.command("make")
@click.argument("email")
@pass_app
def make_command(app: AppContext, email: str) -> None:
    """Print the unsubscribe URL of a stored subscriber (for support requests).

    Example: syndicate unsubscribe-token make an@example.org
    """
    settings = app.settings
    # With no store yet nobody is a subscriber: the error makes none.
    db = app.database if app.read_store() is not None else None
    found = get_by_email(db, email) if db is not None else None
    if db is None or found is None:
        from syndicate.cli.commands_subscribers import NOT_LISTED_HINT

        raise SubscriberError(
            f"email address {normalize_email(email)!r} is not a subscriber.",
            hint=NOT_LISTED_HINT,
        )
    now = datetime.fromtimestamp(app.now(), UTC)
    token = make_token(
        get_secret(settings, db),
        purpose="unsubscribe",
        subscriber_id=found.id,
        nonce=found.token_nonce,
        issued_at=now,
    )
    echo(unsubscribe_url(token, info=MailInfo.from_settings(settings)))

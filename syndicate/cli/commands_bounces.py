"""Command: bounces (read bounce and complaint mail, update subscribers)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import click

from syndicate.bounces import Item, apply_mail, read_mail, read_piped_mail
from syndicate.cli import AppContext, Terminated, cli, echo, pass_app
from syndicate.errors import EXIT_TEMPFAIL, InputError, SyndicateError
from syndicate.mail import MailInfo
from syndicate.send.policy import SendPolicy
from syndicate.store.meta import get_secret


@cli.command("bounces")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path, allow_dash=True))
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@pass_app
def bounces_command(app: AppContext, paths: tuple[Path, ...], as_json: bool) -> None:
    """Read bounces (DSN) and spam complaints (ARF) from Maildirs, mbox or .eml files.

    `-` reads one message from standard input (an MTA pipe). Hard bounces and
    complaints stop mail to the subscriber; soft bounces count toward
    mail.bounce_limit. Exit 1 when some message could not be read. With `-`,
    any other failure (config, store) is exit 75, so the MTA keeps the message.

    Example: syndicate bounces ~/Maildir
    """
    if not paths:
        raise InputError("bounces: no PATH given. Give a Maildir, mbox or .eml file, or '-'.")
    if Path("-") in paths:
        if len(paths) > 1:
            raise InputError("bounces: '-' (standard input) cannot be mixed with other paths.")
        if sys.stdin is None:  # started with file descriptor 0 closed
            raise InputError(
                "bounces: '-' reads standard input, but it is closed. Pipe one message "
                "into it, or give a Maildir, mbox or .eml file."
            )
        try:
            _apply(app, [read_piped_mail(sys.stdin.buffer)], as_json=as_json)
        except SyndicateError as exc:  # exit 75 too: the line says the MTA keeps it
            raise _Deferred(str(exc)) from exc
        except Terminated:  # a shutdown: exit 143 would make the MTA return the message
            raise _Deferred("bounces: stopped by SIGTERM before the message was handled.") from None
    else:
        _apply(app, read_mail(list(paths)), as_json=as_json)


class _Deferred(SyndicateError):
    """`bounces -` could not handle the piped message for a reason of its own setup (the
    config or the store cannot be read): EX_TEMPFAIL, so the MTA keeps the message and
    tries again (Postfix: until maximal_queue_lifetime), where exit 2 would bounce it."""

    exit_code = EXIT_TEMPFAIL

    def __init__(self, message: str) -> None:
        super().__init__(message, hint="Exit 75: the mail server keeps the message and retries.")


def _apply(app: AppContext, items: Iterable[Item], *, as_json: bool) -> None:
    settings = app.settings
    db = app.database
    summary = apply_mail(
        db,
        items,
        info=MailInfo.from_settings(settings),
        bounce_limit=SendPolicy.from_settings(settings).bounce_limit,
        secret=get_secret(settings, db),
        now=datetime.fromtimestamp(app.now(), UTC),
    )
    if as_json:
        echo(json.dumps(summary.to_dict()))
    else:
        app.echo(summary.line())
    if summary.unreadable:
        click.get_current_context().exit(1)

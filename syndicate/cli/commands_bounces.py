"""Command: bounces (read bounce and complaint mail, update subscribers)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import click

from syndicate.bounces import Item, apply_mail, read_mail, read_piped_mail
from syndicate.cli import AppContext, cli, pass_app
from syndicate.errors import InputError
from syndicate.mail import MailInfo
from syndicate.send import SendPolicy
from syndicate.store.meta import get_secret


@cli.command("bounces")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path, allow_dash=True))
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@pass_app
def bounces_command(app: AppContext, paths: tuple[Path, ...], as_json: bool) -> None:
    """Read bounces (DSN) and spam complaints (ARF) from Maildirs, mbox or .eml files.

    `-` reads one message from standard input (an MTA pipe). Hard bounces and
    complaints stop mail to the subscriber; soft bounces count toward
    mail.bounce_limit. Exit 1 when some message could not be read.

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
        items: Iterable[Item] = [read_piped_mail(sys.stdin.buffer)]
    else:
        items = read_mail(list(paths))
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
        click.echo(json.dumps(summary.to_dict()))
    else:
        app.echo(summary.line())
    if summary.unreadable:
        click.get_current_context().exit(1)

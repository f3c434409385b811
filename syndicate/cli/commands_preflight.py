"""Command: preflight (will the digest be accepted? SPF, DKIM, DMARC, SMTP, message, volume)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import click

from syndicate.cli import AppContext, cli, pass_app
from syndicate.errors import SyndicateError
from syndicate.preflight import run_preflight
from syndicate.send.digests import build_sample_messages
from syndicate.store.subscribers import stats


@cli.command("preflight")
@click.option(
    "--nameserver",
    metavar="HOST[:PORT]",
    default=None,
    help="Ask this DNS server (an IP address) instead of the system's resolver.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="Seconds each DNS or SMTP check may take.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the checks as a JSON array.")
@pass_app
def preflight_command(
    app: AppContext, nameserver: str | None, timeout: float, as_json: bool
) -> None:
    """Check that mail from this setup will be accepted: SPF, DKIM, DMARC, SMTP, the message.

    Run it before the first send and after any DNS change; exit 0 when every check passes.

    Example: syndicate preflight --nameserver 9.9.9.9
    """
    settings = app.settings
    db = app.database
    now = datetime.fromtimestamp(app.now(), UTC)
    message_error = ""
    try:
        messages = build_sample_messages(settings, db, now=now)
    except SyndicateError as exc:
        messages, message_error = {}, str(exc)
    checks = run_preflight(
        settings,
        messages=messages,
        message_error=message_error,
        confirmed=stats(db)["confirmed"],
        nameserver=nameserver,
        timeout=timeout,
    )
    if as_json:
        click.echo(json.dumps([c.to_dict() for c in checks], ensure_ascii=False))
    else:
        for check in checks:
            click.echo(f"{'✓' if check.ok else '✗'} {check.check}: {check.detail}")
    if not all(c.ok for c in checks):
        click.get_current_context().exit(1)

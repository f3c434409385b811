"""Command: preflight (will the digest be accepted? SPF, DKIM, DMARC, SMTP, message, volume)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

import click

from syndicate.cli import AppContext, cli, echo, pass_app
from syndicate.errors import printable
from syndicate.preflight import preflight_setup

# The longest a check may take: RFC 5321's longest wait (10 minutes, for the reply after
# DATA). More, like inf, would wait on a silent DNS or SMTP server as good as for ever.
_MOST_SECONDS = 600


class _Seconds(click.FloatRange):
    """A FloatRange that refuses nan too: every comparison with nan is false, so it passed."""

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        number = float(super().convert(value, param, ctx))
        if math.isnan(number):
            self.fail(f"{number} is not a number of seconds.", param, ctx)
        return number


@cli.command("preflight")
@click.option(
    "--nameserver",
    metavar="HOST[:PORT]",
    default=None,
    help="Ask this DNS server (an IP address) instead of the system's resolver, for the "
    "SPF, DKIM and DMARC checks (the SMTP check connects as send does).",
)
@click.option(
    "--timeout",
    type=_Seconds(min=0.1, max=_MOST_SECONDS),
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
    now = datetime.fromtimestamp(app.now(), UTC)
    checks = preflight_setup(
        settings, open_db=lambda: app.database, now=now, nameserver=nameserver, timeout=timeout
    )
    if as_json:
        echo(json.dumps([c.to_dict() for c in checks], ensure_ascii=False))
    else:
        for check in checks:
            # A detail may quote what a record holds: the nameserver's to say.
            echo(f"{'✓' if check.ok else '✗'} {check.check}: {printable(check.detail)}")
    if not all(c.ok for c in checks):
        click.get_current_context().exit(1)

"""Command: preflight (will the digest be accepted? SPF, DKIM, DMARC, SMTP, message, volume)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import click

from syndicate.cli import AppContext, cli, pass_app
from syndicate.cli.flow import digest_view_url, preview_digest
from syndicate.config import Settings
from syndicate.digest import DigestInfo, render_digest
from syndicate.errors import SyndicateError
from syndicate.i18n import LANGUAGES
from syndicate.mail import build_digest_template, fill_message, unsubscribe_url
from syndicate.preflight import run_preflight
from syndicate.store import Database
from syndicate.store.subscribers import stats

# Stands in for a subscriber's token: the check looks at the link's form, not its signature.
_SAMPLE_TOKEN = "PREFLIGHT-SAMPLE-TOKEN"  # noqa: S105
_MARKER = "https://marker.syndicate.invalid/unsubscribe?token=PREFLIGHT-MARKER"


def _digest_messages(settings: Settings, db: Database, now: datetime) -> dict[str, bytes]:
    """Today's digest as one recipient's message per language, built as `send` builds it."""
    plan = preview_digest(settings, db, now=now)  # reads without the write lock
    if plan is None:
        return {}
    url = unsubscribe_url(settings, _SAMPLE_TOKEN)
    messages: dict[str, bytes] = {}
    for lang in LANGUAGES:
        rendered = render_digest(
            plan,
            lang=lang,
            info=DigestInfo.from_settings(settings),
            unsubscribe_url=_MARKER,
            now=now,
            view_url=digest_view_url(settings, plan.day),
        )
        template = build_digest_template(
            rendered, settings=settings, digest_day=plan.day, marker=_MARKER, now=now
        )
        messages[lang] = fill_message(
            template, to="preflight@example.invalid", subscriber_id=0, unsubscribe_url=url
        )
    return messages


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
        messages = _digest_messages(settings, db, now)
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

"""Commands: send (the daily cron job) and unsubscribe-token."""

from __future__ import annotations

import asyncio
import gc
import json
import secrets
import sys
import time
from datetime import UTC, datetime, timedelta

import click

from syndicate.build import run_build, sync_articles
from syndicate.cli import AppContext, cli, pass_app
from syndicate.cli.flow import digest_view_url, todays_digest, write_digest_page
from syndicate.config import Settings
from syndicate.digest import render_digest
from syndicate.errors import ConfigError, SubscriberError, TokenError
from syndicate.mail import (
    MessageTemplate,
    build_digest_template,
    envelope_sender,
    fill_message,
    unsubscribe_url,
)
from syndicate.model import DigestPlan
from syndicate.send import (
    MAX_ATTEMPTS,
    SendSummary,
    mailer_concurrency,
    open_mailer,
    open_send_lock,
    read_dkim_key,
    send_digest,
)
from syndicate.store import Database, ledger
from syndicate.store.meta import get_secret
from syndicate.store.subscribers import (
    confirmed_languages,
    get_by_email,
    get_by_id,
    normalize_email,
)
from syndicate.tokens import make_token, verify_token

NOTHING_NEW = "Nothing new to send."
# Substituted by each recipient's URL in the built message; never leaves this process.
_MARKER_BASE = "https://marker.syndicate.invalid/unsubscribe?token=MARKER-"


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
        click.echo(
            f"\r{done}/{total} sent, {rate:.0f} messages/s, {timedelta(seconds=round(left))} left ",
            err=True,
            nl=False,
        )

    def close(self) -> None:
        click.echo("", err=True)


def format_summary(summary: SendSummary) -> str:
    """The one summary line of a run."""
    bounced = f", {summary.bounced} bounced" if summary.bounced else ""
    return (
        f"Digest {summary.digest}: sent {summary.sent}, failed {summary.failed}{bounced}, "
        f"skipped {summary.skipped} in {summary.seconds:.1f} s "
        f"({summary.rate:.1f} messages/s)."
    )


def _templates(
    settings: Settings, plan: DigestPlan, languages: list[str], *, marker: str, now: datetime
) -> dict[str, MessageTemplate]:
    dkim = read_dkim_key(settings)
    view_url = digest_view_url(settings, plan.day)
    built: dict[str, MessageTemplate] = {}
    for lang in dict.fromkeys([*languages, settings.site.language]):
        rendered = render_digest(
            plan, lang=lang, settings=settings, unsubscribe_url=marker, now=now, view_url=view_url
        )
        built[lang] = build_digest_template(
            rendered, settings=settings, digest_day=plan.day, marker=marker, now=now, dkim=dkim
        )
    return built


def _check_smtp(settings: Settings) -> None:
    if settings.mail.transport != "smtp":
        return
    envelope_sender(settings)
    if settings.smtp.username and not settings.smtp.password:
        raise ConfigError(
            "config key smtp.username is set, but SYNDICATE_SMTP_PASSWORD is empty.",
            key="smtp.username",
            hint="Export the password in SYNDICATE_SMTP_PASSWORD, or leave smtp.username empty.",
        )


@cli.command("send")
@click.option("--dry-run", is_flag=True, help="Render and count; write and send nothing.")
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
    help="Send to at most N subscribers in this run.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@pass_app
def send_command(
    app: AppContext, dry_run: bool, to: str | None, limit: int | None, as_json: bool
) -> None:
    """Build feeds and today's digest, and deliver it to every confirmed subscriber owed it.

    Safe to rerun: subscribers already sent are skipped; failed ones are retried.

    Example: syndicate -q send
    """
    settings = app.settings
    _check_smtp(settings)
    if dry_run or to is not None:
        _preview_send(app, settings, dry_run=dry_run, to=to, limit=limit, as_json=as_json)
        return
    with open_send_lock(settings.paths.database):
        db = app.database
        now = datetime.fromtimestamp(app.now(), UTC)
        run_build(settings, db, now=now)
        plan = todays_digest(settings, db, now=now, create=True)
        if plan is None:
            _nothing(app, as_json)
            return
        write_digest_page(settings, plan, now=now)
        marker = _MARKER_BASE + secrets.token_hex(8)
        languages = confirmed_languages(db)
        templates = _templates(settings, plan, languages, marker=marker, now=now)
        progress = (
            _ProgressLine() if sys.stderr.isatty() and not app.quiet and not as_json else None
        )
        # Everything loaded so far (templates, Babel data, parsed articles) lives until exit:
        # keep it out of the collector's full passes during the send loop.
        gc.collect()
        gc.freeze()
        try:
            summary = asyncio.run(
                send_digest(
                    db=db,
                    mailer=open_mailer(settings, folder=plan.day.isoformat()),
                    templates=templates,
                    settings=settings,
                    secret=get_secret(settings, db),
                    day=plan.day,
                    now=now,
                    connections=mailer_concurrency(settings),
                    limit=limit,
                    rate=settings.smtp.rate if settings.mail.transport == "smtp" else 0.0,
                    progress=progress,
                )
            )
        finally:
            if progress is not None:
                progress.close()
    if as_json:
        click.echo(json.dumps(summary.to_dict()))
    elif summary.failed:
        click.echo(format_summary(summary), err=True)
    elif not languages:
        app.echo(format_summary(summary)[:-1] + f"; {NO_SUBSCRIBERS}")
    else:
        app.echo(format_summary(summary))
    if summary.failed:
        click.get_current_context().exit(1)


NO_SUBSCRIBERS = (
    "no confirmed subscribers yet (add one with `syndicate subscribers add EMAIL`, "
    "or let readers sign up through `syndicate serve`)."
)


def _nothing(app: AppContext, as_json: bool) -> None:
    if as_json:
        # The same keys as a run's summary, so a script reads one shape.
        nothing = {"sent": 0, "failed": 0, "skipped": 0, "bounced": 0, "seconds": 0.0, "rate": 0.0}
        click.echo(json.dumps({"digest": None, **nothing}))
    else:
        app.echo(NOTHING_NEW)


def _preview_send(
    app: AppContext,
    settings: Settings,
    *,
    dry_run: bool,
    to: str | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """--dry-run and --to: no lock, no feeds, no digest row, no ledger rows."""
    db = app.database
    now = datetime.fromtimestamp(app.now(), UTC)
    address = normalize_email(to) if to is not None else None
    # Refresh the article cache (as `digest` does) so the plan matches what `send` would mail.
    sync_articles(settings, db, now=now)
    plan = todays_digest(settings, db, now=now, create=False)
    if plan is None:
        _nothing(app, as_json)
        return
    marker = _MARKER_BASE + secrets.token_hex(8)
    languages = confirmed_languages(db)
    templates = _templates(settings, plan, languages, marker=marker, now=now)
    if address is not None and not dry_run:
        template = templates[settings.site.language]
        token = make_token(
            get_secret(settings, db), purpose="unsubscribe", subscriber_id=0, issued_at=now
        )
        message = fill_message(
            template, to=address, subscriber_id=0, unsubscribe_url=unsubscribe_url(settings, token)
        )

        async def deliver() -> None:
            mailer = open_mailer(settings, folder="test")
            try:
                await mailer.send(envelope_sender(settings), [address], message)
            finally:
                await mailer.aclose()

        asyncio.run(deliver())
        if as_json:
            click.echo(json.dumps({"digest": plan.day.isoformat(), "test_copy": address}))
        else:
            app.echo(f"Sent a test copy of the {plan.day.isoformat()} digest to {address}.")
        return
    owed = ledger.count_owed(db, day=plan.day, max_attempts=MAX_ATTEMPTS)
    if limit is not None:
        owed = min(owed, limit)
    note = f" (no test copy to {address} either)" if address else ""
    skipped = ledger.count_skipped(db, day=plan.day, max_attempts=MAX_ATTEMPTS)
    sizes = {lang: sum(len(c) for c in t.chunks) for lang, t in templates.items()}
    if as_json:
        click.echo(
            json.dumps(
                {
                    "digest": plan.day.isoformat(),
                    "dry_run": True,
                    "articles": len(plan.articles),
                    "would_send": owed,
                    "skipped": skipped,
                    "message_bytes": sizes,
                }
            )
        )
        return
    app.echo(
        f"Dry run: the {plan.day.isoformat()} digest ({len(plan.articles)} articles) would go to "
        f"{owed} subscribers, {skipped} skipped; nothing was written or sent{note}."
    )


@cli.group("unsubscribe-token")
def unsubscribe_token_group() -> None:
    """Check or make the signed tokens of unsubscribe links.

    Example: syndicate unsubscribe-token verify TOKEN
    """


def _subscriber_line(db: Database, subscriber_id: int) -> str:
    found = get_by_id(db, subscriber_id)
    if found is None:
        return f"subscriber {subscriber_id} (no longer stored: erased, or a test copy)"
    return f"subscriber {found.id} <{found.email}> ({found.status})"


@unsubscribe_token_group.command("verify")
@click.argument("token")
@pass_app
def verify_command(app: AppContext, token: str) -> None:
    """Check an unsubscribe token and show whom it is for; exit 2 if it is not valid.

    Example: syndicate unsubscribe-token verify AQIAAAAAAAAAKmckm3Dk...
    """
    settings = app.settings
    db = app.database
    now = datetime.fromtimestamp(app.now(), UTC)
    try:
        subscriber_id = verify_token(
            get_secret(settings, db), token, purpose="unsubscribe", now=now
        )
    except TokenError as exc:
        raise TokenError(f"not valid: {exc.message}", hint=exc.hint) from None
    click.echo(f"valid: {_subscriber_line(db, subscriber_id)}")


@unsubscribe_token_group.command("make")
@click.argument("email")
@pass_app
def make_command(app: AppContext, email: str) -> None:
    """Print the unsubscribe URL of a stored subscriber (for support requests).

    Example: syndicate unsubscribe-token make an@example.org
    """
    settings = app.settings
    db = app.database
    found = get_by_email(db, email)
    if found is None:
        raise SubscriberError(f"email address {normalize_email(email)!r} is not a subscriber.")
    now = datetime.fromtimestamp(app.now(), UTC)
    token = make_token(
        get_secret(settings, db), purpose="unsubscribe", subscriber_id=found.id, issued_at=now
    )
    click.echo(unsubscribe_url(settings, token))

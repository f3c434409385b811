"""Commands: send (the daily cron job) and unsubscribe-token."""

from __future__ import annotations

import gc
import json
import logging
import secrets
import sys
import time
from datetime import UTC, datetime, timedelta

import click

from syndicate.cli import AppContext, cli, pass_app
from syndicate.cli.commands_digest import warn_if_stale
from syndicate.cli.flow import (
    digest_view_url,
    preview_digest,
    stored_digest,
    todays_digest,
    write_digest_page,
)
from syndicate.config import Settings
from syndicate.digest import DigestInfo, render_digest
from syndicate.errors import (
    ConfigError,
    InterruptError,
    SubscriberError,
    TokenError,
)
from syndicate.load import check_dump_paths
from syndicate.mail import (
    MessageTemplate,
    build_digest_template,
    envelope_sender,
    unsubscribe_url,
)
from syndicate.model import DigestPlan
from syndicate.publish import run_build
from syndicate.send import (
    SendSummary,
    open_send_lock,
    read_dkim_key,
)
from syndicate.send.daily import preview, run_daily
from syndicate.store import Database
from syndicate.store.bounces import complaint_warning, recent_rates
from syndicate.store.meta import get_secret
from syndicate.store.subscribers import (
    confirmed_languages,
    get_by_email,
    get_by_id,
    normalize_email,
)
from syndicate.tokens import make_token, verify_token

log = logging.getLogger(__name__)

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


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _print_summary(app: AppContext, summary: SendSummary, *, note: str = "") -> None:
    """Print one summary line: on stderr when some failed (so `-q` under cron still shows it)."""
    line = format_summary(summary)
    if note:
        line = f"{line[:-1]}; {note}"
    if summary.failed:
        click.echo(line, err=True)
    else:
        app.echo(line)


def _templates(
    settings: Settings, plan: DigestPlan, languages: list[str], *, marker: str, now: datetime
) -> dict[str, MessageTemplate]:
    dkim = read_dkim_key(settings)
    view_url = digest_view_url(settings, plan.day)
    built: dict[str, MessageTemplate] = {}
    for lang in dict.fromkeys([*languages, settings.site.language]):
        rendered = render_digest(
            plan,
            lang=lang,
            info=DigestInfo.from_settings(settings),
            unsubscribe_url=marker,
            now=now,
            view_url=view_url,
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
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@pass_app
def send_command(
    app: AppContext, dry_run: bool, to: str | None, limit: int | None, as_json: bool
) -> None:
    """Build feeds and today's digest, and deliver it to every confirmed subscriber owed it.

    Safe to rerun: subscribers already sent are skipped; deferred ones are retried.
    Then digests of the last 7 days still owed to someone are finished.

    Example: syndicate -q send
    """
    settings = app.settings
    _check_smtp(settings)
    check_dump_paths([settings.paths.seeds])  # before the lock and database are made
    if dry_run or to is not None:
        _preview_send(app, settings, dry_run=dry_run, to=to, limit=limit, as_json=as_json)
        return
    with open_send_lock(settings.paths.database):
        db = app.database
        now = datetime.fromtimestamp(app.now(), UTC)
        # Reputation: one warning line when spam complaints pass the providers' limit.
        if (complaints := complaint_warning(recent_rates(db, now=now))) is not None:
            log.warning("%s", complaints)
        run_build(settings, db, now=now)
        plan = todays_digest(settings, db, now=now, create=True)
        warn_if_stale(settings, plan)  # ed2: freshness warning (stderr, also under -q)
        messages = _Messages(app, db, now=now, progress=not as_json)

        def show(summary: SendSummary) -> None:
            if not as_json and summary.digest != (plan and plan.day.isoformat()):
                _print_summary(app, summary)

        try:
            report = run_daily(
                db=db,
                settings=settings,
                secret=messages.secret,
                now=now,
                today=plan,
                prepare=messages.prepare,
                load_stored=lambda day: stored_digest(db, day),
                limit=limit,
                progress=messages.progress_line,
                on_summary=show,
            )
        except InterruptError as exc:
            click.echo(exc.message, err=True)
            click.get_current_context().exit(exc.exit_code)
        finally:
            messages.close_progress()
    today = report.today
    if as_json:
        # The same keys whether or not there was a digest today, so a script reads one shape.
        shape = today.to_dict() if today is not None else {"digest": None, **_NOTHING_COUNTS}
        click.echo(json.dumps({**shape, "earlier": [s.to_dict() for s in report.earlier]}))
    elif today is None:
        app.echo(NOTHING_NEW)
    else:
        _print_summary(app, today, note="" if messages.languages else NO_SUBSCRIBERS)
    if report.failed:
        click.get_current_context().exit(1)


class _Messages:
    """Builds each digest's messages (and writes its web page) for the daily job."""

    def __init__(self, app: AppContext, db: Database, *, now: datetime, progress: bool) -> None:
        self.settings, self.now = app.settings, now
        self.languages = confirmed_languages(db)
        self.secret = get_secret(self.settings, db)
        mail = self.settings.mail
        if self.languages and mail.transport == "smtp" and not mail.postal_address.strip():
            # Bulk-mail rules (CAN-SPAM, and the like elsewhere) want one in every message.
            log.warning(
                "config key mail.postal_address is empty, so the digest carries no postal "
                "address; set the sender's address in syndicate.toml."
            )
        self.show_progress = progress and sys.stderr.isatty() and not app.quiet
        self._line: _ProgressLine | None = None

    def prepare(self, plan: DigestPlan) -> dict[str, MessageTemplate]:
        write_digest_page(self.settings, plan, now=self.now)
        marker = _MARKER_BASE + secrets.token_hex(8)
        templates = _templates(self.settings, plan, self.languages, marker=marker, now=self.now)
        # Everything loaded so far (templates, Babel data, parsed articles) lives until exit:
        # keep it out of the collector's full passes during the send loop.
        gc.collect()
        gc.freeze()
        return templates

    def progress_line(self) -> _ProgressLine | None:
        self.close_progress()
        self._line = _ProgressLine() if self.show_progress else None
        return self._line

    def close_progress(self) -> None:
        if self._line is not None:
            self._line.close()
            self._line = None


NO_SUBSCRIBERS = (
    "no confirmed subscribers yet (add one with `syndicate subscribers add EMAIL`, "
    "or let readers sign up through `syndicate serve`)."
)


# The counts of a run that had no digest to send: the keys of SendSummary.to_dict().
_NOTHING_COUNTS = {"sent": 0, "failed": 0, "skipped": 0, "bounced": 0, "seconds": 0.0, "rate": 0.0}


def _nothing(app: AppContext, as_json: bool) -> None:
    if as_json:
        # The same keys as a run's summary, so a script reads one shape.
        click.echo(json.dumps({"digest": None, **_NOTHING_COUNTS}))
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
    # Read the seeds as `send` would; no write lock is held while the digest is planned.
    plan = preview_digest(settings, db, now=now)
    if plan is None:
        _nothing(app, as_json)
        return
    marker = _MARKER_BASE + secrets.token_hex(8)
    languages = confirmed_languages(db)
    templates = _templates(settings, plan, languages, marker=marker, now=now)
    test_copy = address is not None and not dry_run
    shown = preview(
        db=db,
        settings=settings,
        plan=plan,
        templates=templates,
        # The secret is made (once) and kept: a test copy's link must verify. A dry run
        # needs none, so it never waits for the write lock to store one.
        secret=get_secret(settings, db) if test_copy else b"",
        now=now,
        test_copy_to=address if test_copy else None,
        limit=limit,
    )
    if shown.test_copy is not None:
        if as_json:
            click.echo(json.dumps({"digest": shown.digest, "test_copy": shown.test_copy}))
        else:
            app.echo(f"Sent a test copy of the {shown.digest} digest to {shown.test_copy}.")
        return
    note = f" (no test copy to {address} either)" if address else ""
    if as_json:
        click.echo(
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
    db = app.database
    now = datetime.fromtimestamp(app.now(), UTC)
    try:
        found = verify_token(
            get_secret(settings, db),
            token,
            purpose="unsubscribe",
            now=now,
            find=lambda subscriber_id: get_by_id(db, subscriber_id),
        )
    except TokenError as exc:
        raise TokenError(f"not valid: {exc.message}", hint=exc.hint) from None
    click.echo(f"valid: subscriber {found.id} <{found.email}> ({found.status})")


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
        get_secret(settings, db),
        purpose="unsubscribe",
        subscriber_id=found.id,
        nonce=found.token_nonce,
        issued_at=now,
    )
    click.echo(unsubscribe_url(settings, token))

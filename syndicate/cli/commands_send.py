"""Commands: send (the daily cron job) and unsubscribe-token."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import logging
import secrets
import sys
import time
from datetime import UTC, date, datetime, timedelta

import click

from syndicate.build import run_build, sync_articles
from syndicate.cli import AppContext, cli, pass_app
from syndicate.cli.flow import (
    digest_day,
    digest_view_url,
    stored_digest,
    todays_digest,
    write_digest_page,
)
from syndicate.config import Settings
from syndicate.digest import render_digest
from syndicate.errors import ConfigError, SubscriberError, SyndicateError, TokenError
from syndicate.mail import (
    MessageTemplate,
    build_digest_template,
    envelope_sender,
    fill_message,
    sign_message,
    unsubscribe_url,
)
from syndicate.model import DeliveryStatus, DigestPlan
from syndicate.send import (
    MAX_ATTEMPTS,
    SendSummary,
    mailer_concurrency,
    open_mailer,
    open_send_lock,
    read_dkim_key,
    read_earlier_digests,
    send_digest,
)
from syndicate.store import Database, ledger
from syndicate.store.bounces import complaint_warning, recent_rates
from syndicate.store.digests import close_digest
from syndicate.store.meta import get_secret
from syndicate.store.subscribers import (
    confirmed_languages,
    get_by_email,
    get_by_id,
    normalize_email,
)
from syndicate.tokens import NONCE_BYTES, make_token, verify_token

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
    help="Send to at most N subscribers in this run (earlier days first).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@pass_app
def send_command(
    app: AppContext, dry_run: bool, to: str | None, limit: int | None, as_json: bool
) -> None:
    """Build feeds and today's digest, and deliver it to every confirmed subscriber owed it.

    Safe to rerun: subscribers already sent are skipped; failed ones are retried.
    Digests of the last 7 days still owed to someone are finished first.

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
        # Reputation: one warning line when spam complaints pass the providers' limit.
        if (complaints := complaint_warning(recent_rates(db, now=now))) is not None:
            log.warning("%s", complaints)
        run_build(settings, db, now=now)
        plan = todays_digest(settings, db, now=now, create=True)
        deliver = _Delivery(app, db, now=now, progress=not as_json)
        # Earlier days first, oldest first: a day whose run failed, was killed or was cut
        # short by --limit is finished before today's digest goes out.
        earlier: list[SendSummary] = []
        budget = limit
        for owed in read_earlier_digests(db, today=digest_day(settings, now), now=now):
            if budget == 0:
                break
            earlier_plan = stored_digest(db, owed.day)
            if earlier_plan is None:
                log.warning(
                    "digest %s: its articles are no longer stored, so it cannot be sent to "
                    "the %s still owed it.",
                    owed.day.isoformat(),
                    _plural(owed.owed, "subscriber"),
                )
                close_digest(db, owed.day, now=now)
                continue
            summary = deliver(earlier_plan, confirmed_by=owed.created_at, limit=budget)
            earlier.append(summary)
            if budget is not None:
                budget -= summary.sent + summary.failed
            if not as_json:
                _print_summary(app, summary)
        today = deliver(plan, confirmed_by=None, limit=budget) if plan is not None else None
    failed = any(s.failed for s in earlier) or bool(today and today.failed)
    if as_json:
        # The same keys whether or not there was a digest today, so a script reads one shape.
        shape = today.to_dict() if today is not None else {"digest": None, **_NOTHING_COUNTS}
        click.echo(json.dumps({**shape, "earlier": [s.to_dict() for s in earlier]}))
    elif today is None:
        app.echo(NOTHING_NEW)
    else:
        _print_summary(app, today, note="" if deliver.languages else NO_SUBSCRIBERS)
    if failed:
        click.get_current_context().exit(1)


class _Delivery:
    """Sends one stored digest (an earlier day's or today's) to whoever is owed it."""

    def __init__(self, app: AppContext, db: Database, *, now: datetime, progress: bool) -> None:
        self.app, self.settings, self.db, self.now = app, app.settings, db, now
        self.languages = confirmed_languages(db)
        self.secret = get_secret(self.settings, db)
        mail = self.settings.mail
        if self.languages and mail.transport == "smtp" and not mail.postal_address.strip():
            # Bulk-mail rules (CAN-SPAM, and the like elsewhere) want one in every message.
            log.warning(
                "config key mail.postal_address is empty, so the digest carries no postal "
                "address; set the sender's address in syndicate.toml."
            )
        self.progress = progress and sys.stderr.isatty() and not app.quiet

    def __call__(
        self, plan: DigestPlan, *, confirmed_by: datetime | None, limit: int | None
    ) -> SendSummary:
        settings = self.settings
        write_digest_page(settings, plan, now=self.now)
        marker = _MARKER_BASE + secrets.token_hex(8)
        templates = _templates(settings, plan, self.languages, marker=marker, now=self.now)
        progress = _ProgressLine() if self.progress else None
        # Everything loaded so far (templates, Babel data, parsed articles) lives until exit:
        # keep it out of the collector's full passes during the send loop.
        gc.collect()
        gc.freeze()
        try:
            summary = asyncio.run(
                send_digest(
                    db=self.db,
                    mailer=open_mailer(settings, folder=plan.day.isoformat()),
                    templates=templates,
                    settings=settings,
                    secret=self.secret,
                    day=plan.day,
                    now=self.now,
                    confirmed_by=confirmed_by,
                    connections=mailer_concurrency(settings),
                    limit=limit,
                    rate=settings.smtp.rate if settings.mail.transport == "smtp" else 0.0,
                    progress=progress,
                )
            )
        except SyndicateError as exc:
            # The run stops here: the one error line also says how far this digest got.
            exc.message = f"{exc.message.rstrip('.')}. {self._so_far(plan)}"
            raise
        finally:
            if progress is not None:
                progress.close()
        return summary

    def _so_far(self, plan: DigestPlan) -> str:
        counts = ledger.day_counts(self.db, day=plan.day)
        sent, failed, sending = (
            counts.get(str(status), 0)
            for status in (DeliveryStatus.SENT, DeliveryStatus.FAILED, DeliveryStatus.SENDING)
        )
        line = f"Digest {plan.day.isoformat()} so far: {sent} sent, {failed} failed"
        if sending:
            line += f", {sending} in flight (the next run settles them)"
        return line + "."


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
    # The secret is made (once) outside the scratch transaction: a test copy's link must verify.
    secret = get_secret(settings, db)
    # Read the seeds as `send` would, in a transaction that is rolled back: nothing stays.
    with db.scratch():
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
        # Subscriber 0 never exists, so the copy's link acts on nobody.
        token = make_token(
            secret,
            purpose="unsubscribe",
            subscriber_id=0,
            nonce=secrets.token_bytes(NONCE_BYTES),
            issued_at=now,
        )
        message = _test_copy(
            template, to=address, day=plan.day, url=unsubscribe_url(settings, token)
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
        f"Dry run: the {plan.day.isoformat()} digest ({_plural(len(plan.articles), 'article')}) "
        f"would go to {_plural(owed, 'subscriber')}, {skipped} skipped; "
        f"nothing was written or sent{note}."
    )


def _test_copy(template: MessageTemplate, *, to: str, day: date, url: str) -> bytes:
    """One test copy, with a Message-ID of its own (`<day.test-RANDOM@domain>`).

    Subscribers' Message-IDs are deterministic (`<day.id@domain>`); test copies
    are not recorded, so each gets a random one: two copies must not look like
    one message to a mail client or to the outbox folder.
    """
    message = fill_message(
        dataclasses.replace(template, dkim=None), to=to, subscriber_id=0, unsubscribe_url=url
    )
    slot = f"\r\nMessage-ID: <{day.isoformat()}.0@".encode("ascii")
    unique = f"\r\nMessage-ID: <{day.isoformat()}.test-{secrets.token_hex(8)}@".encode("ascii")
    head_end = message.index(b"\r\n\r\n")
    if message.find(slot, 0, head_end) < 0:  # pragma: no cover - mail.py puts it after To
        raise AssertionError("the digest template has no Message-ID after To")
    message = message.replace(slot, unique, 1)
    if template.dkim is not None:  # sign what goes out, with its final Message-ID
        message = sign_message(message, template.dkim)
    return message


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

"""Commands: digest (the preview of what `send` would mail now)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import click

from syndicate.cli import AppContext, cli, echo, pass_app
from syndicate.config import Settings
from syndicate.digest import stale_warning
from syndicate.i18n import LANGUAGES
from syndicate.model import DigestPlan
from syndicate.output import check_writable_folder
from syndicate.send.digests import retire_digest, write_digest_preview

DEFAULT_OUT = Path("digest-preview")
NOTHING_NEW = "Nothing new for a digest."


def warn_if_stale(settings: Settings, plan: DigestPlan | None) -> None:
    """Print the digest's freshness warning on stderr (also under -q: cron mails it)."""
    warning = stale_warning(plan, tz=settings.site.tz) if plan is not None else None
    if warning is not None:
        echo(warning, err=True)


@cli.command("digest")
@click.option(
    "--lang",
    type=click.Choice(LANGUAGES),
    default=None,
    help="Language of the preview (default: site.language).",
)
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_OUT,
    show_default=True,
    help="Folder for digest.html and digest.txt.",
)
@click.option(
    "--retire",
    "retire",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    default=None,
    metavar="DAY",
    help="Remove the stored digest of DAY, a day after today (made while a clock ran ahead), "
    "and its ledger rows, so that day gets its own digest; previews nothing.",
)
@pass_app
def digest_command(app: AppContext, lang: str | None, out: Path, retire: datetime | None) -> None:
    """Preview the digest `send` would mail now, as HTML and text files.

    Reads the seeds as `send` would (keeping what it parsed, as `build` does), then
    writes the digest without storing it, and without sending.

    Example: syndicate digest --lang en --out /tmp/preview
    """
    settings = app.settings
    now = datetime.fromtimestamp(app.now(), UTC)
    if retire is not None:
        day: date = retire.date()
        rows = retire_digest(settings, app.database, day=day, now=now)
        app.echo(
            f"Retired the digest of {day.isoformat()} ({rows} ledger rows); that day gets "
            "a digest of its own when it comes."
        )
        return
    check_writable_folder(out, name="--out")  # before the store is made
    written = write_digest_preview(
        settings, open_db=lambda: app.database, now=now, lang=lang, out=out
    )
    warn_if_stale(settings, written.plan if written is not None else None)
    if written is None:
        app.echo(NOTHING_NEW)
        return
    plan = written.plan
    more = f", {plan.more} more" if plan.more else ""
    count = len(plan.articles)
    articles = f"{count} article" if count == 1 else f"{count} articles"
    app.echo(f"Digest of {plan.day.isoformat()}: {articles}{more}.")
    app.echo(f"Subject: {written.subject}")
    app.echo(str(written.html_path))
    app.echo(str(written.text_path))

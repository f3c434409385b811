"""Commands: digest (the preview of what `send` would mail now)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import click

from syndicate.cli import AppContext, cli, pass_app
from syndicate.cli.flow import digest_view_url, preview_digest
from syndicate.config import Settings, base_url
from syndicate.digest import DigestInfo, render_digest, stale_warning
from syndicate.i18n import LANGUAGES
from syndicate.load import check_dump_paths
from syndicate.model import DigestPlan
from syndicate.output import write_atomic

DEFAULT_OUT = Path("digest-preview")
NOTHING_NEW = "Nothing new for a digest."


def warn_if_stale(settings: Settings, plan: DigestPlan | None) -> None:
    """Print the digest's freshness warning on stderr (also under -q: cron mails it)."""
    warning = stale_warning(plan, tz=settings.site.tz) if plan is not None else None
    if warning is not None:
        click.echo(warning, err=True)


def preview_unsubscribe_url(root: str) -> str:
    """A clearly fake unsubscribe link for previews: no real token is ever made for them."""
    return f"{root}unsubscribe?token=PREVIEW-SAMPLE-TOKEN"


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
@pass_app
def digest_command(app: AppContext, lang: str | None, out: Path) -> None:
    """Preview the digest `send` would mail now, as HTML and text files.

    Reads the seeds as `send` would (keeping what it parsed, as `build` does), then
    writes the digest without storing it, and without sending.

    Example: syndicate digest --lang en --out /tmp/preview
    """
    settings = app.settings
    check_dump_paths([settings.paths.seeds])  # no database is made for a missing seeds folder
    db = app.database
    now = datetime.fromtimestamp(app.now(), UTC)
    plan = preview_digest(settings, db, now=now)
    warn_if_stale(settings, plan)
    if plan is None:
        app.echo(NOTHING_NEW)
        return
    rendered = render_digest(
        plan,
        lang=lang or settings.site.language,
        info=DigestInfo.from_settings(settings),
        unsubscribe_url=preview_unsubscribe_url(base_url(settings)),
        now=now,
        view_url=digest_view_url(settings, plan.day),
    )
    html_path = out / "digest.html"
    text_path = out / "digest.txt"
    write_atomic(html_path, rendered.html.encode("utf-8"))
    write_atomic(text_path, rendered.text.encode("utf-8"))
    more = f", {plan.more} more" if plan.more else ""
    count = len(plan.articles)
    articles = f"{count} article" if count == 1 else f"{count} articles"
    app.echo(f"Digest of {plan.day.isoformat()}: {articles}{more}.")
    app.echo(f"Subject: {rendered.subject}")
    app.echo(str(html_path))
    app.echo(str(text_path))

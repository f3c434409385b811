"""Orchestration shared by the `digest` and `send` commands: the day's digest and its web page."""

from __future__ import annotations

import dataclasses
from datetime import date, datetime
from pathlib import Path

from syndicate.config import Settings, base_url
from syndicate.digest import DigestInfo, plan_digest, render_digest
from syndicate.model import DigestPlan, StoryLink
from syndicate.output import write_atomic
from syndicate.publish import sync_articles
from syndicate.site import assign_slugs
from syndicate.store import Database
from syndicate.store.articles import iter_summaries
from syndicate.store.digests import (
    create_digest,
    get_digest,
    iter_candidates,
    live_article_ids,
    newest_published,
)
from syndicate.store.teasers import article_links

DIGESTS_FOLDER = "digests"  # under paths.output, served under base_url


def digest_day(settings: Settings, now: datetime) -> date:
    """The digest's day: the date of `now` in the site's timezone."""
    return now.astimezone(settings.site.tz).date()


def todays_digest(
    settings: Settings, db: Database, *, now: datetime, create: bool
) -> DigestPlan | None:
    """Today's digest: the one already stored for today, else a new plan, else None.

    One digest a day: a stored digest is returned as it is, even when newer
    articles have arrived since. `create=True` stores a new plan (and marks its
    articles) in the same transaction that looked for one; `create=False`
    changes nothing.
    """
    day = digest_day(settings, now)
    if not create:
        plan = get_digest(db, day) or _plan(settings, db, day, now=now)
    else:
        with db.transaction():
            plan = get_digest(db, day)
            if plan is None:
                plan = _plan(settings, db, day, now=now)
                if plan is not None:
                    create_digest(db, plan, now=now)
    if plan is None or not plan.articles:  # a stored digest whose articles are gone
        return None
    return _with_page_slugs(db, plan)


def preview_digest(settings: Settings, db: Database, *, now: datetime) -> DigestPlan | None:
    """Today's digest as `send` would make it now, without storing it (`digest`, `--dry-run`).

    The dumps are synced as `build` syncs them: what was parsed is kept (the parse
    cache and the articles, in short write transactions of a batch each), so the
    next `build` or `send` need not parse it again. The plan is then worked out in
    one read transaction, which takes no write lock: `send` and sign-ups go on
    meanwhile. No digest row is stored and no article is marked.
    """
    sync_articles(settings, db, now=now)
    with db.snapshot():
        return todays_digest(settings, db, now=now, create=False)


def stored_digest(db: Database, day: date) -> DigestPlan | None:
    """The digest stored for `day`, with its pages' slugs; None if none, or its articles are gone.

    For `send` catching up an earlier day: the digest is sent as it was made.
    """
    plan = get_digest(db, day)
    if plan is None or not plan.articles:
        return None
    return _with_page_slugs(db, plan)


def _with_page_slugs(db: Database, plan: DigestPlan) -> DigestPlan:
    """Give the plan's articles the slugs their pages have, and its teasers their links.

    `build` resolves slug collisions among the articles its dumps give; do the
    same over the same set (all stored articles when no dump is recorded). A teaser
    links to the article it advertises when that article has a page.
    """
    live = live_article_ids(db)
    wanted = {a.id for a in plan.articles}
    summaries = {s.id: s for s in iter_summaries(db) if not live or s.id in live or s.id in wanted}
    slugs = assign_slugs((s.id, s.slug, s.published, s.first_seen_at) for s in summaries.values())
    articles = tuple(dataclasses.replace(a, slug=slugs.get(a.id, a.slug)) for a in plan.articles)
    links: dict[str, StoryLink] = {}
    for found in article_links(db, wanted).values():
        for key, target_id in found:
            target = summaries.get(target_id)
            if target is not None and (not live or target_id in live):
                links.setdefault(
                    key,
                    StoryLink(
                        target.id,
                        slugs[target.id],
                        target.title,
                        target.published,
                        target.precision,
                        target.first_seen_at,
                    ),
                )
    return dataclasses.replace(plan, articles=articles, links=links)


def _plan(settings: Settings, db: Database, day: date, *, now: datetime) -> DigestPlan | None:
    # Mail only articles the site has a page for: a stored article whose dump
    # was removed lost its page at the last build.
    live = live_article_ids(db)
    candidates = iter_candidates(db)
    if live:
        candidates = (c for c in candidates if c[0].id in live)
    # A publish date in the future (a typo like 2042 in a dump) must not move the age
    # cutoff past every real article: it would stop all later digests, for good.
    newest = newest_published(db)
    if newest is not None and newest > now:
        newest = now
    return plan_digest(
        candidates,
        day=day,
        newest_published=newest,
        max_age_hours=settings.digest.max_age_hours,
        max_articles=settings.digest.max_articles,
    )


def digest_view_url(settings: Settings, day: date) -> str:
    """The public URL of a day's "view in browser" page."""
    return f"{base_url(settings)}{DIGESTS_FOLDER}/{day.isoformat()}.html"


def generic_unsubscribe_url(settings: Settings) -> str:
    """The unsubscribe page (asks for the address) for pages that carry no personal token."""
    return f"{base_url(settings)}unsubscribe"


def write_digest_page(settings: Settings, plan: DigestPlan, *, now: datetime) -> Path:
    """Write the digest's "view in browser" page, feeds/digests/<day>.html, atomically.

    The page is the HTML part in the site's language, with a link to the
    generic unsubscribe page instead of a personal one. Returns its path.
    """
    rendered = render_digest(
        plan,
        lang=settings.site.language,
        info=DigestInfo.from_settings(settings),
        unsubscribe_url=generic_unsubscribe_url(settings),
        now=now,
        web=True,
    )
    path = settings.paths.output / DIGESTS_FOLDER / f"{plan.day.isoformat()}.html"
    write_atomic(path, rendered.html.encode("utf-8"))
    return path

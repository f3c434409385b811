"""Send: the digests the daily job sends: today's (planned and stored once), an earlier day's
(as stored), their web page and their messages, and the previews of them (`digest`,
`preflight`, `send --dry-run`)."""

from __future__ import annotations

import dataclasses
import logging
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from syndicate import urls
from syndicate.config import Settings, base_url
from syndicate.digest import DigestInfo, plan_digest, render_digest
from syndicate.errors import ClockError, InputError
from syndicate.i18n import LANGUAGES
from syndicate.load import SEEDS_HINT, check_dump_paths
from syndicate.mail import (
    DkimKey,
    MailInfo,
    MessageTemplate,
    build_digest_template,
    fill_message,
    unsubscribe_url,
)
from syndicate.model import DigestPlan, StoryLink
from syndicate.output import write_atomic
from syndicate.publish import sync_articles
from syndicate.store import Database
from syndicate.store.articles import ArticleSummary, iter_summaries
from syndicate.store.digests import (
    create_digest,
    delete_digest,
    digests_between,
    get_digest,
    iter_candidates,
    live_article_ids,
    newest_published,
)
from syndicate.store.ledger import server_time
from syndicate.store.teasers import article_links
from syndicate.tokens import LAST_TOKEN_TIME, RETURN_EPOCH


def digest_day(settings: Settings, now: datetime) -> date:
    """The digest's day: the date of `now` in the site's timezone."""
    return now.astimezone(settings.site.tz).date()


# How far back a clock set back is looked for. A digest dated further ahead than this was
# made while the clock ran far ahead (a year, say): it must not stop every run until then.
CLOCK_BACK_DAYS = 7
# A digest dated after today made more than this after now (by its own created_at) was made
# by a clock that ran ahead: it does not stop today's. Within it (two machines either side
# of midnight, seconds apart; NTP setting a clock back a few minutes past midnight) `send`
# waits for the day to come rather than mail the days out of order.
CLOCK_SKEW = timedelta(minutes=10)

log = logging.getLogger("syndicate.send")


def check_day(settings: Settings, db: Database, *, now: datetime) -> None:
    """Refuse a day before the newest digest's, before 2000, or a clock past
    tokens.LAST_TOKEN_TIME (2106: no link could be signed): ClockError (exit 75).

    Days only go forward: a clock set back past midnight (NTP correcting a clock that ran
    ahead by a little, a machine booted before its clock was set) or a site.timezone moved
    west would make and mail a digest dated before one readers already have, or the old one
    again. Digests dated more than CLOCK_BACK_DAYS after today are not looked at. Nor, with
    a warning, are those made more than CLOCK_SKEW after now (by their created_at): a clock
    that ran ahead by days made them, and refusing every day until theirs came left the
    subscribers with nothing for days. `syndicate digest --retire DAY` removes one. On
    PostgreSQL, only when this machine's clock agrees with the database server's (within
    CLOCK_SKEW): else this machine's clock may be the one behind, and it refuses.
    """
    today = digest_day(settings, now)
    if today < RETURN_EPOCH:  # 1970-01-01: a machine without a battery-backed clock
        raise ClockError(
            f"send: today is {today.isoformat()} by this machine's clock, before "
            f"{RETURN_EPOCH.isoformat()}: the clock is not set. Set it (NTP); `send` dates "
            "each digest by it."
        )
    if now > LAST_TOKEN_TIME:  # a clock set far ahead (return paths last till 2179)
        raise ClockError(
            f"send: this machine's clock reads {now.astimezone(UTC):%Y-%m-%d %H:%M} UTC, "
            f"past {LAST_TOKEN_TIME:%Y-%m-%d %H:%M} UTC, the last time a mail's links can be "
            "signed for: the clock is wrong. Set it (NTP); `send` dates each digest by it."
        )
    ahead = digests_between(db, after=today, before=today + timedelta(days=CLOCK_BACK_DAYS + 1))
    if not ahead:
        return
    near = [d for d in ahead if d.created_at - now <= CLOCK_SKEW]
    if near:
        last = near[-1].day
        raise ClockError(
            f"send: today is {today.isoformat()} by this machine's clock (site.timezone "
            f"{settings.site.timezone}), before the day of the last digest made, "
            f"{last.isoformat()}: the clock was set back, or site.timezone moved west. Check "
            f"the clock (NTP); `send` goes on once this machine's day is {last.isoformat()} "
            "or later."
        )
    days = ", ".join(d.day.isoformat() for d in ahead)
    # Several machines: the digest may be right and this machine's clock behind. The
    # database server's clock says which.
    if (off := _off_server_clock(db, now)) is not None:
        raise ClockError(
            f"send: the digest of {days} is dated after today ({today.isoformat()} by "
            f"this machine's clock), and this machine's clock is {abs(off) / 3600:.1f} h "
            f"{'behind' if off > 0 else 'ahead of'} the database server's: one of them "
            "is wrong. Check the clocks (NTP); `syndicate digest --retire DAY` removes a "
            "digest made by a clock that ran ahead."
        )
    made = ahead[0].created_at.astimezone(settings.site.tz).isoformat(timespec="minutes")
    log.warning(
        "send: the digest of %s, after today (%s by this machine's clock), was made at %s by "
        "a clock that ran ahead; today's digest goes out all the same. `syndicate digest "
        "--retire DAY` removes it, so that day gets a digest of its own when it comes.",
        days,
        today.isoformat(),
        made,
    )


def _off_server_clock(db: Database, now: datetime) -> float | None:
    """On PostgreSQL, how many seconds the database server's clock is ahead of `now` (this
    machine's), when that is more than CLOCK_SKEW either way; None within it, and on SQLite
    (no other clock to ask)."""
    if db.dialect != "postgresql":
        return None
    off = (server_time(db) - now).total_seconds()
    return off if abs(off) > CLOCK_SKEW.total_seconds() else None


def retire_digest(settings: Settings, db: Database, *, day: date, now: datetime) -> int:
    """Remove the digest of `day`, dated after today (made while a clock ran ahead), with its
    ledger rows, so that day gets its own digest when it comes. Returns how many ledger rows
    went. Raises InputError for a day that is not after today, or has no digest."""
    today = digest_day(settings, now)
    if day <= today:
        raise InputError(
            f"digest --retire: {day.isoformat()} is not after today ({today.isoformat()} by "
            "this machine's clock): only a digest dated ahead, made while a clock ran ahead, "
            "can be retired."
        )
    stored = digests_between(db, after=day - timedelta(days=1), before=day + timedelta(days=1))
    if not stored:
        raise InputError(f"digest --retire: no digest of {day.isoformat()} is stored.")
    # As check_day tells one a clock ahead made: else it is the day's own (made a little
    # early, or this machine's clock is the one behind), and the readers it went to would
    # get a second digest of the day with the same Message-IDs.
    made = stored[0].created_at
    if made - now <= CLOCK_SKEW:
        shown = made.astimezone(settings.site.tz).isoformat(timespec="minutes")
        raise InputError(
            f"digest --retire: the digest of {day.isoformat()} was made at {shown}, within "
            f"{CLOCK_SKEW.total_seconds() / 60:.0f} minutes of this machine's clock: it is "
            "that day's own, made a little early; nothing was removed."
        )
    if (off := _off_server_clock(db, now)) is not None:
        raise ClockError(
            f"digest --retire: this machine's clock is {abs(off) / 3600:.1f} h "
            f"{'behind' if off > 0 else 'ahead of'} the database server's: the digest of "
            f"{day.isoformat()} may be the right one. Set the clock (NTP), or retire it "
            "from a machine whose clock is right; nothing was removed."
        )
    rows = delete_digest(db, day)
    if rows is None:
        raise InputError(f"digest --retire: no digest of {day.isoformat()} is stored.")
    return rows


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
                    create_digest(db, plan, now=now, message_key=make_message_key())
                    plan = get_digest(db, day)  # as stored, with its message_key
    if plan is None or not plan.articles:  # a stored digest whose articles are gone
        return None
    return _with_pages(db, plan)


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
    """The digest stored for `day`, with its articles' pages; None if none or its articles gone.

    For `send` catching up an earlier day: the digest is sent as it was made.
    """
    plan = get_digest(db, day)
    if plan is None or not plan.articles:
        return None
    return _with_pages(db, plan)


def _with_pages(db: Database, plan: DigestPlan) -> DigestPlan:
    """Give the plan its articles' pages, and its teasers links, as the last build stored them.

    Nothing is worked out here: an article (or an advertised one) without a stored page path
    has the page of its story (a text of it corrected since keeps the story's page: see
    store.articles.carry_over), else none, and is then shown unlinked.
    """
    wanted = {a.id for a in plan.articles}
    found = article_links(db, wanted)
    targets = {target_id for pairs in found.values() for _key, target_id in pairs}
    summaries = {s.id: s for s in iter_summaries(db) if s.id in wanted or s.id in targets}
    # An earlier day's digest holds the texts it was made with: a story corrected since is
    # another article, which has the story's page (the first text's keeps none).
    pageless = {s.story_id for s in summaries.values() if not s.page_path}
    story_pages = _story_pages(db, pageless) if pageless else {}

    def page_of(summary: ArticleSummary) -> str | None:
        return summary.page_path or story_pages.get(summary.story_id)

    pages = {i: p for i, s in summaries.items() if i in wanted and (p := page_of(s))}
    links: dict[str, StoryLink] = {}
    for pairs in found.values():
        for key, target_id in pairs:
            target = summaries.get(target_id)
            if target is not None and (page := page_of(target)):
                links.setdefault(
                    key,
                    StoryLink(
                        target.id,
                        page,
                        target.title,
                        target.published,
                        target.precision,
                        target.first_seen_at,
                    ),
                )
    return dataclasses.replace(plan, links=links, pages=pages)


def _story_pages(db: Database, stories: set[str]) -> dict[str, str]:
    """The page of each story in `stories` (by ArticleSummary.story_id) that has one: the
    page of the article of the story the last build gave one."""
    found: dict[str, str] = {}
    for summary in iter_summaries(db):
        if summary.page_path and summary.story_id in stories:
            found[summary.story_id] = min(
                found.get(summary.story_id, summary.page_path), summary.page_path
            )
    return found


def _plan(settings: Settings, db: Database, day: date, *, now: datetime) -> DigestPlan | None:
    # Mail only articles the site has a page for: a stored article whose dump
    # was removed lost its page at the last build.
    live = live_article_ids(db)
    candidates = iter_candidates(db)
    if live:
        candidates = (c for c in candidates if c[0].id in live)
    # A publish date in the future (a typo like 2042 in a dump) must not move the age
    # cutoff past every real article: it would stop all later digests, for good. Of the
    # live articles, as the index and the feeds take it (model.order_key places undated
    # ones by it): an article whose dump was removed neither moves the cutoff nor the order.
    newest = newest_published(db, live=bool(live))
    if newest is not None and newest > now:
        newest = now
    return plan_digest(
        candidates,
        day=day,
        newest_published=newest,
        max_age_hours=settings.digest.max_age_hours,
        max_articles=settings.digest.max_articles,
        tz=settings.site.tz,
    )


def _page_lang(settings: Settings, lang: str | None) -> str | None:
    """The language part of a digest page's name: none for the site's own language."""
    return None if lang is None or lang == settings.site.language else lang


def digest_view_url(settings: Settings, day: date, lang: str | None = None) -> str:
    """The public URL of a day's "view in browser" page in `lang` (default: the site's)."""
    return urls.digest_view_url(base_url(settings), day, _page_lang(settings, lang))


def generic_unsubscribe_url(settings: Settings, lang: str | None = None) -> str:
    """The unsubscribe page (asks for the address) for pages that carry no personal token."""
    return urls.unsubscribe_page_url(base_url(settings), lang or settings.site.language)


def write_digest_page(settings: Settings, plan: DigestPlan, *, now: datetime) -> Path:
    """Write the digest's "view in browser" pages atomically: feeds/digests/<day>.html in the
    site's language, and feeds/digests/<day>.<lang>.html in each other language, the one
    each reader's message links to.

    Each is the HTML part in its language, with a link to the generic unsubscribe page (in
    that language) instead of a personal one, and one to the sign-up form in that language
    (the page may have been forwarded to someone who is not on the list). Returns the site-
    language page's path.
    """
    info = DigestInfo.from_settings(settings)
    paths = []
    for lang in dict.fromkeys([settings.site.language, *LANGUAGES]):
        rendered = render_digest(
            plan,
            lang=lang,
            info=info,
            unsubscribe_url=generic_unsubscribe_url(settings, lang),
            now=now,
            web=True,
            subscribe_url=urls.subscribe_page_url(base_url(settings), lang),
        )
        path = settings.paths.output / urls.digest_page_path(plan.day, _page_lang(settings, lang))
        write_atomic(path, rendered.html.encode("utf-8"))
        paths.append(path)
    return paths[0]


# Substituted by each recipient's URL in the built message; never leaves this process.
MARKER_BASE = "https://marker.syndicate.invalid/unsubscribe?token=MARKER-"
# Stands in for a subscriber's token in `preflight`: the check looks at the link's form.
_SAMPLE_TOKEN = "PREFLIGHT-SAMPLE-TOKEN"  # noqa: S105
_SAMPLE_MARKER = "https://marker.syndicate.invalid/unsubscribe?token=PREFLIGHT-MARKER"


def make_message_key() -> str:
    """A new digest's own part of its Message-IDs (`mail.build_digest_template`)."""
    return secrets.token_hex(6)


def make_marker() -> str:
    """A fresh unsubscribe-URL marker for one digest's templates."""
    return MARKER_BASE + secrets.token_hex(8)


def build_templates(
    settings: Settings,
    plan: DigestPlan,
    languages: Iterable[str],
    *,
    marker: str,
    now: datetime,
    dkim: DkimKey | None,
) -> dict[str, MessageTemplate]:
    """Build the digest's message template in each language (and the site's), once each."""
    info = DigestInfo.from_settings(settings)
    mail_info = MailInfo.from_settings(settings)
    built: dict[str, MessageTemplate] = {}
    for lang in dict.fromkeys([*languages, settings.site.language]):
        view_url = digest_view_url(settings, plan.day, lang)
        rendered = render_digest(
            plan, lang=lang, info=info, unsubscribe_url=marker, now=now, view_url=view_url
        )
        built[lang] = build_digest_template(
            rendered,
            info=mail_info,
            digest_day=plan.day,
            marker=marker,
            now=now,
            message_key=plan.message_key,
            dkim=dkim,
        )
    return built


def build_send_templates(
    settings: Settings, plan: DigestPlan, languages: Iterable[str], *, now: datetime
) -> dict[str, MessageTemplate]:
    """The templates `send` fills for each recipient: a fresh marker, DKIM-signed when set up."""
    # Imported here, once a run: `digest` writes its preview without the SMTP stack.
    from syndicate.send.transports import read_dkim_key

    return build_templates(
        settings, plan, languages, marker=make_marker(), now=now, dkim=read_dkim_key(settings)
    )


def build_sample_messages(settings: Settings, db: Database, *, now: datetime) -> dict[str, bytes]:
    """Today's digest as one recipient's message per language, built as `send` builds it.

    For `preflight`: read without the write lock (see `preview_digest`); unsigned, with a
    sample token in the unsubscribe link. Empty when there is no digest to send.
    """
    plan = preview_digest(settings, db, now=now)
    if plan is None:
        return {}
    url = unsubscribe_url(_SAMPLE_TOKEN, info=MailInfo.from_settings(settings))
    templates = build_templates(
        settings, plan, LANGUAGES, marker=_SAMPLE_MARKER, now=now, dkim=None
    )
    return {
        lang: fill_message(
            template, to="preflight@example.invalid", subscriber_id=0, unsubscribe_url=url
        )
        for lang, template in templates.items()
    }


def preview_unsubscribe_url(root: str) -> str:
    """A clearly fake unsubscribe link for previews: no real token is ever made for them."""
    return urls.preview_unsubscribe_url(root)


@dataclass(frozen=True, slots=True)
class PreviewFiles:
    """What `write_digest_preview` wrote: the digest's plan, its subject and two files."""

    plan: DigestPlan
    subject: str
    html_path: Path
    text_path: Path


def write_digest_preview(
    settings: Settings,
    *,
    open_db: Callable[[], Database],
    now: datetime,
    lang: str | None,
    out: Path,
) -> PreviewFiles | None:
    """Write today's digest as `send` would mail it now to out/digest.html and digest.txt.

    Reads the seeds as `send` would (see `preview_digest`); stores no digest and sends
    nothing. Returns None, writing nothing, when there is no digest to send.
    """
    # no database is made for a missing seeds folder
    check_dump_paths([settings.paths.seeds], hint=SEEDS_HINT)
    plan = preview_digest(settings, open_db(), now=now)
    if plan is None:
        return None
    rendered = render_digest(
        plan,
        lang=lang or settings.site.language,
        info=DigestInfo.from_settings(settings),
        unsubscribe_url=preview_unsubscribe_url(base_url(settings)),
        now=now,
        view_url=digest_view_url(settings, plan.day, lang),
    )
    html_path = out / "digest.html"
    text_path = out / "digest.txt"
    write_atomic(html_path, rendered.html.encode("utf-8"))
    write_atomic(text_path, rendered.text.encode("utf-8"))
    return PreviewFiles(plan, rendered.subject, html_path, text_path)

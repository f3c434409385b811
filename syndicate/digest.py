"""Digest stage: pick a day's articles and render the digest; the email templates' renderer.

Pure: no clock, no database, no network; `now`, a `DigestInfo` (the values it needs
from the settings) and the URLs are passed in. Templates are read from
`DigestInfo.templates_dir`.
"""

from __future__ import annotations

import bisect
import functools
import heapq
import logging
import re
import textwrap
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import css_inline
import jinja2

from syndicate import i18n
from syndicate.config import (
    Settings,
    base_url,
    email_templates_dir,
    make_environment,
    templates_root,
)
from syndicate.errors import ConfigError, InputError
from syndicate.i18n import LANGUAGES
from syndicate.model import (
    RENDER_ERRORS,
    Article,
    DigestPlan,
    OrderKey,
    OtherNews,
    Precision,
    Teaser,
    credit_line,
    order_key,
    order_teasers,
    prefix_related,
    settle_relative_day,
)
from syndicate.text import (
    MAX_LINE_BYTES,
    after_title,
    detect_language,
    header_safe,
    lead_excerpt,
    nfc,
    one_line,
    shorten,
    shorten_headline,
    trailing_ellipsis,
    typeset,
)
from syndicate.urls import feed_url

log = logging.getLogger(__name__)

TEXT_WIDTH = 72  # columns of the text part
PREHEADER_CHARS = 100
MAX_TEASERS = 15  # "Other news" items: enough for a sidebar, small enough for Gmail's 102 KB
# What one article may add to a digest, whatever its dump holds: a digest stays a few
# hundred kilobytes, under every mail server's size limit. Real titles and teasers are far
# shorter; a lead is cut at `digest.lead_words` words first, then at this many characters
# per word (a "word" of thousands of characters is a broken scrape).
TITLE_CHARS = 300
TEASER_CHARS = 300
CHARS_PER_LEAD_WORD = 20
SUBJECT_CHARS = 78  # RFC 5322's recommended line length, before encoding
STALE_DAYS = 7  # a digest whose newest article is older than this gets a warning

_STRINGS = i18n.STRINGS["digest"]


@dataclass(frozen=True, slots=True)
class DigestInfo:
    """What the digest stage needs from the settings, as SiteInfo and FeedInfo are for theirs."""

    site_title: str
    base_url: str  # ends in '/'
    tz: ZoneInfo
    subject: str  # mail.subject, placeholders and all
    postal_address: str
    lead_words: int
    max_teasers: int
    templates_dir: Path

    @classmethod
    def from_settings(cls, settings: Settings) -> DigestInfo:
        """Take the digest's values from `settings`."""
        return cls(
            site_title=settings.site.title,
            base_url=base_url(settings),
            tz=settings.site.tz,
            subject=settings.mail.subject,
            postal_address=settings.mail.postal_address,
            lead_words=settings.digest.lead_words,
            max_teasers=settings.digest.max_teasers,
            templates_dir=email_templates_dir(settings),
        )


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    """One rendered message body in one language; headers are the mail stage's job."""

    lang: str
    subject: str
    preheader: str
    html: str
    text: str


# --------------------------------------------------------------------------- planning


def plan_digest(
    candidates: Iterable[tuple[Article, datetime]],
    *,
    day: date,
    newest_published: datetime | None,
    max_age_hours: int,
    max_articles: int,
    tz: tzinfo,
) -> DigestPlan | None:
    """Choose the day's articles from (article, first_seen_at) pairs not yet in a digest.

    An article counts from its publish time, or from the start of the day (in `tz`) it
    was first seen when its date is unknown, or of `newest_published`'s day if earlier
    (model.order_key). One older than
    `newest_published` minus `max_age_hours` is dropped. The newest `max_articles` are
    kept, newest first (on a tie a dated article first, then by id, descending); the rest
    are counted in `more`. Streams: holds at most `max_articles` articles. Returns None when
    nothing is left.
    """
    cutoff = newest_published - timedelta(hours=max_age_hours) if newest_published else None
    # A min-heap of the best so far: its root is the first to drop out.
    heap: list[tuple[OrderKey, Article]] = []
    eligible = 0
    for article, first_seen_at in candidates:
        key = order_key(
            article.published,
            article.precision,
            first_seen_at,
            article.id,
            tz=tz,
            newest=newest_published,
        )
        if cutoff is not None and key[0] < cutoff:
            continue
        eligible += 1
        if len(heap) < max_articles:
            heapq.heappush(heap, (key, article))
        elif key > heap[0][0]:
            heapq.heapreplace(heap, (key, article))
    if not heap:
        return None
    chosen = sorted(heap, key=lambda e: e[0], reverse=True)
    return DigestPlan(day=day, articles=tuple(e[1] for e in chosen), more=eligible - len(chosen))


# --------------------------------------------------------------------------- other news

_NON_WORD = re.compile(r"[\W_]+")
_ELLIPSIS_END = re.compile(r"(?:\.{2,}|…)\s*$")
_MIN_MATCH_WORDS = 3


def _words(text: str) -> list[str]:
    return _NON_WORD.sub(" ", nfc(text).casefold()).split()


def _teaser_words(text: str) -> list[str]:
    """The teaser's words, without a last word that the ellipsis may have cut."""
    found = _words(text)
    if _ELLIPSIS_END.search(text) and len(found) > 1:
        found = found[:-1]
    return found


def _joined(words: list[str]) -> str:
    """Words as one text in which a prefix is a prefix of whole words: each word followed
    by a NUL, which no word holds (`_words` splits on everything but letters and digits)."""
    return "".join(word + "\0" for word in words)


def select_other_news(articles: Iterable[Article], *, limit: int = MAX_TEASERS) -> list[Teaser]:
    """The teasers of `articles`, deduplicated, minus those advertising one of `articles`.

    Teasers are compared on normalized words (case, punctuation and the
    ellipsis ignored); a teaser is a duplicate when one is a prefix of the
    other, and advertises an article when it is a prefix of that article's
    lead, title or summary. Keeps the first `limit`, in digest order.
    """
    articles = list(articles)
    # The articles' own texts, as word texts (`_joined`): all of them, and sorted.
    whole: set[str] = set()
    for article in articles:
        for field in (article.lead, article.title, article.head or ""):
            found = _words(field)
            if found:
                whole.add(_joined(found))
    own = sorted(whole)
    # Word texts of the teasers kept, sorted: none is a prefix of another, so each new
    # teaser is checked by two binary searches (model.prefix_related), not against each.
    seen: list[str] = []
    kept: list[Teaser] = []
    for article in articles:
        for teaser in article.teasers:
            words = _teaser_words(teaser.text)
            if not words:
                continue
            key = _joined(words)
            if prefix_related(seen, key) or _advertises(key, len(words), own, whole):
                continue
            bisect.insort(seen, key)
            kept.append(teaser)
            if len(kept) >= limit:
                return kept
    return kept


def _advertises(key: str, count: int, own: list[str], whole: set[str]) -> bool:
    """Whether the teaser of `count` words (word text `key`) advertises one of the articles
    (`own`, their word texts sorted; `whole`, the same as a set): it opens one of them. A
    teaser of one or two words says too little to tie it to an article: it must be all
    of one."""
    if count < _MIN_MATCH_WORDS:
        return key in whole
    at = bisect.bisect_left(own, key)
    return at < len(own) and own[at].startswith(key)


def plan_other_news(plan: DigestPlan, *, limit: int, tz: tzinfo) -> list[OtherNews]:
    """The digest's "Other news": at most `limit` teasers of its articles, see order_teasers.

    None for an article in the digest; those tied to a stored article (`plan.links`) first,
    newest first, then the others in digest order, less those dated after the digest's
    newest article.
    """
    if limit <= 0:
        return []
    candidates = select_other_news(plan.articles, limit=sum(len(a.teasers) for a in plan.articles))
    newest = _newest_day(plan, tz)
    exclude = {a.id for a in plan.articles}
    return order_teasers(candidates, plan.links, newest=newest, tz=tz, exclude=exclude, limit=limit)


def _newest_day(plan: DigestPlan, tz: tzinfo) -> date | None:
    """The local day of the digest's newest dated article, or None when none is dated."""
    days = []
    for article in plan.articles:
        if article.published is None or article.precision is Precision.UNKNOWN:
            continue
        try:
            days.append(article.published.astimezone(tz).date())
        except RENDER_ERRORS:  # out of range in the site's timezone: render_digest skips it
            continue
    return max(days) if days else None


def stale_warning(plan: DigestPlan, *, tz: tzinfo) -> str | None:
    """A one-line warning when the digest's newest article is more than STALE_DAYS older than
    the digest's day (the scraper has probably stopped), else None."""
    newest = _newest_day(plan, tz)
    if newest is None:
        return None
    age = (plan.day - newest).days
    if age <= STALE_DAYS:
        return None
    return (
        f"Warning: digest of {plan.day.isoformat()}: its newest article is from "
        f"{newest.isoformat()}, {age} days before the digest's day. "
        "Check that the scraper still delivers new dumps."
    )


def _published_text(article: Article, *, lang: str, tz: tzinfo) -> str | None:
    """The article's date as its page writes it (i18n.format_published), or None."""
    if article.published is None or article.precision is Precision.UNKNOWN:
        return None
    with_time = article.precision is Precision.DATETIME
    return i18n.format_published(article.published, lang=lang, tz=tz, with_time=with_time)


# --------------------------------------------------------------------------- rendering


def make_strings(lang: str, site: str) -> dict[str, str]:
    """The email strings of `lang` with {site} filled in; `InputError` for another language."""
    if lang not in _STRINGS:
        raise InputError(
            f"language {lang!r} is not supported; expected one of {', '.join(LANGUAGES)}."
        )
    return {k: v.replace("{site}", site) for k, v in _STRINGS[lang].items()}


_PLACEHOLDER = re.compile(r"\{(site|date|headline|more)\}")


def make_subject(
    info: DigestInfo,
    *,
    lang: str,
    day: date,
    headline: str = "",
    others: int = 0,
    headline_language: str | None = None,
) -> str:
    """The digest's Subject: mail.subject with its placeholders filled in, on one line.

    {site} is the site's title, {date} the digest's day, {headline} the top story's title
    and {more} "và N tin khác" / "and N more" for the `others` (empty when none); "(+N)"
    when the headline is in another language than `lang` (`headline_language`), where the
    reader's words would run on from a headline in another ("Cầu mới and 6 more"). The
    headline is shortened at a word boundary so that the subject keeps to SUBJECT_CHARS
    characters when the rest of the template leaves room.
    """
    strings = make_strings(lang, info.site_title)
    key = "subject_more" if headline_language in (None, lang) else "subject_more_other"
    more = strings[key].replace("{n}", str(others)) if others > 0 else ""
    values = {"site": info.site_title, "date": i18n.format_issue_day(day, lang), "more": more}
    headline = header_safe(headline)

    def fill(title: str) -> str:
        # str.replace, not str.format: a site title with braces must stay text.
        found = dict(values, headline=title)
        return header_safe(_PLACEHOLDER.sub(lambda m: found[m.group(1)], info.subject))

    subject = fill(headline)
    if len(subject) <= SUBJECT_CHARS or "{headline}" not in info.subject:
        return subject
    room = SUBJECT_CHARS - len(fill("")) - 1
    for limit in range(room, _MIN_HEADLINE - 1, -1):
        subject = fill(shorten_headline(headline, limit=limit))
        if len(subject) <= SUBJECT_CHARS:
            return subject
    return subject


_MIN_HEADLINE = 12  # shorter than this, a headline says nothing: the subject may run long


def render_digest(
    plan: DigestPlan,
    *,
    lang: str,
    info: DigestInfo,
    unsubscribe_url: str,
    now: datetime,
    view_url: str | None = None,
    web: bool = False,
    subscribe_url: str | None = None,
) -> RenderedEmail:
    """Render the digest in `lang` as HTML (CSS inlined) and wrapped text.

    `unsubscribe_url` appears verbatim in both parts (a caller may substitute it in the
    bytes later). Every line of the text part stays under 998 bytes; the mail stage folds
    long HTML lines (mail.fold_html_lines). `web=True` words the footer for the "view in
    browser" page rather than a mail; its `subscribe_url` (the form) lets one it was
    forwarded to sign up. Raises ConfigError when the templates are missing or broken.
    """
    site_title = info.site_title
    strings = make_strings(lang, site_title)
    root = info.base_url
    tz = info.tz
    words = info.lead_words
    articles: list[dict[str, Any]] = []
    shown: list[Article] = []  # the articles that went in, for the subject
    for article in plan.articles:
        page = plan.pages.get(article.id)
        try:
            articles.append(
                {
                    "number": len(articles) + 1,
                    "title": typeset(
                        shorten_headline(header_safe(article.title), limit=TITLE_CHARS)
                    ),
                    "url": root + page if page else None,  # no page: no link
                    "language": article.language,
                    "date": _published_text(article, lang=lang, tz=tz),
                    "author": one_line(article.author) if article.author else None,
                    # The source it is credited to, in the reader's words ("Theo TTXVN").
                    "credit": (
                        credit_line(one_line(article.credit), language=lang)
                        if article.credit
                        else None
                    ),
                    "lead": typeset(
                        shorten(
                            lead_excerpt(
                                _as_read(_summary(article), article, plan.day, tz), words=words
                            ),
                            limit=words * CHARS_PER_LEAD_WORD,
                        )
                    ),
                }
            )
            shown.append(article)
        except RENDER_ERRORS as exc:  # one article's content: the digest goes without it
            log.warning(
                "%s: cannot go in the digest (%s); left out.",
                article.source or f"article {article.id}",
                shorten(one_line(f"{type(exc).__name__}: {exc}"), limit=200),
            )
    # The subject names the top story that went in, and counts the others.
    subject = make_subject(
        info,
        lang=lang,
        day=plan.day,
        headline=shown[0].title if shown else "",
        others=len(shown) - 1,
        headline_language=shown[0].language if shown else None,
    )
    first = plan.articles[0] if plan.articles else None
    # The inbox shows it after the subject, which names the first headline: a title made
    # from the summary is not said twice there either.
    preheader = shorten(
        _as_read(_summary(first) or first.summary or first.title, first, plan.day, tz)
        if first
        else site_title,
        limit=PREHEADER_CHARS,
    )
    more_key = "more_one" if plan.more == 1 else "more_many"
    issue_day = i18n.format_issue_day(plan.day, lang)
    context = {
        "lang": lang,
        "t": strings,
        "site_title": site_title,
        "site_url": root,
        # A mail's <title> is its subject; the "view in browser" page's reads as a page's.
        "subject": strings["page_title"].replace("{date}", issue_day) if web else subject,
        "preheader": preheader,
        "heading": strings["heading"].replace("{date}", issue_day),
        "articles": articles,
        "other_news": [
            {
                "dateline": one_line(n.teaser.dateline),
                "text": typeset(
                    trailing_ellipsis(
                        shorten(
                            settle_relative_day(
                                one_line(n.teaser.text), written=None, day=plan.day
                            ),
                            limit=TEASER_CHARS,
                        )
                    )
                ),
                "title": (
                    typeset(shorten_headline(header_safe(n.link.title), limit=TITLE_CHARS))
                    if n.link
                    else None
                ),
                "url": root + n.link.path if n.link else None,
                # What the item shows (the linked title, else the teaser) says its language.
                "language": detect_language(n.link.title if n.link else n.teaser.text),
            }
            for n in plan_other_news(plan, limit=info.max_teasers, tz=tz)
        ],
        "more": plan.more,
        "more_text": strings[more_key].replace("{n}", str(plan.more)),
        "feeds": _feed_links(root),
        "unsubscribe_url": unsubscribe_url,
        "view_url": view_url,
        "subscribe_url": subscribe_url,
        # The web page's skip link says what every page's does (none in the mail).
        "skip": i18n.STRINGS["pages"][lang]["skip"] if web else None,
        "why": strings["why_web"] if web else strings["why"],
        "postal_address": info.postal_address,
        "year": now.astimezone(tz).year,
    }
    html, text = render_email(info.templates_dir, "digest", context, keep={unsubscribe_url})
    return RenderedEmail(lang=lang, subject=subject, preheader=preheader, html=html, text=text)


def _as_read(text: str, article: Article, day: date, tz: tzinfo) -> str:
    """`text` of `article` as read in the digest of `day`: "Sáng nay 1/11" is "Sáng 1/11"
    in a later digest (model.settle_relative_day)."""
    written = None
    if article.published is not None and article.precision is not Precision.UNKNOWN:
        try:
            written = article.published.astimezone(tz).date()
        except RENDER_ERRORS:  # out of range in the site's timezone: no day to settle on
            written = None
    return settle_relative_day(text, written=written, day=day)


def _summary(article: Article) -> str:
    """The summary under the article's headline: a title made from it is not printed twice
    (the words after it, as on the article's page)."""
    if article.title_derived:
        return after_title(article.title, article.summary)
    return article.summary


def _feed_links(root: str) -> list[dict[str, str]]:
    return [
        {"label": "RSS", "url": feed_url(root, "rss")},
        {"label": "Atom", "url": feed_url(root, "atom")},
        {"label": "JSON Feed", "url": feed_url(root, "json")},
    ]


def render_email(
    folder: Path, name: str, context: dict[str, Any], *, keep: set[str]
) -> tuple[str, str]:
    """Render `<name>.html.j2` (CSS inlined) and `<name>.txt.j2` (wrapped) from `folder`.

    The words in `keep` (substitution markers, URLs) are never split. A missing or broken
    template is a `ConfigError` naming digest.templates_dir.
    """
    env = _environment(folder)
    html = _render(env, folder, f"{name}.html.j2", context)
    text = _render(env, folder, f"{name}.txt.j2", context)
    return nfc(_inline_css(html)), nfc(wrap_text(text, keep=keep))


# The templates a digest and a confirmation mail are rendered from (with what they include).
EMAIL_TEMPLATES = ("digest.html.j2", "digest.txt.j2", "confirm.html.j2", "confirm.txt.j2")


def check_email_templates(folder: Path) -> None:
    """Load every email template from `folder`: a `ConfigError` naming
    digest.templates_dir for one that is missing or not valid Jinja, as rendering
    would raise it, so a command that mails can refuse before it makes anything."""
    env = _environment(folder)
    for name in EMAIL_TEMPLATES:
        _load(env, folder, name)


def _unloadable(
    where: str, name: str, exc: jinja2.TemplateNotFound | jinja2.TemplateSyntaxError
) -> ConfigError:
    """The one line for a template (or one it includes) missing or not valid Jinja."""
    if isinstance(exc, jinja2.TemplateNotFound):
        return ConfigError(
            f"{where}: template {exc.name!r} is missing.",
            key="digest.templates_dir",
            hint="Copy templates/email/ from syndicate, or leave digest.templates_dir empty.",
        )
    return ConfigError(
        f"{where}: {exc.name or name} line {exc.lineno}: {exc.message}.",
        key="digest.templates_dir",
        hint="Fix the template syntax.",
    )


def _load(env: jinja2.Environment, folder: Path, name: str) -> jinja2.Template:
    try:
        return env.get_template(name)
    except (jinja2.TemplateNotFound, jinja2.TemplateSyntaxError) as exc:
        where = f"config key digest.templates_dir ({str(folder)!r})"
        raise _unloadable(where, name, exc) from exc


def _render(env: jinja2.Environment, folder: Path, name: str, context: dict[str, Any]) -> str:
    where = f"config key digest.templates_dir ({str(folder)!r})"
    template = _load(env, folder, name)
    try:
        return template.render(context)
    except (jinja2.TemplateNotFound, jinja2.TemplateSyntaxError) as exc:  # one it includes
        raise _unloadable(where, name, exc) from exc
    except jinja2.UndefinedError as exc:
        raise ConfigError(
            f"{where}: {name}: {exc.message}.",
            key="digest.templates_dir",
            hint="Use only the variables the shipped templates use.",
        ) from exc
    except (jinja2.TemplateError, ArithmeticError, LookupError, TypeError, ValueError) as exc:
        # What an expression in an operator's template can raise ({{ n / 0 }}, {{ t + 1 }});
        # in the shipped templates it is a bug, with its traceback.
        if folder == templates_root() / "email":
            raise
        raise ConfigError(
            f"{where}: {name}: rendering failed: {type(exc).__name__}: {exc}.",
            key="digest.templates_dir",
            hint="Fix the template; templates/email/ holds the shipped ones.",
        ) from exc


# The email templates are read once per folder.
_environment = functools.lru_cache(maxsize=8)(make_environment)


_INLINER = css_inline.CSSInliner(
    keep_at_rules=True,  # dark mode and narrow-screen @media rules stay in a <style>
    load_remote_stylesheets=False,
)


_KEPT_STYLE = re.compile(r"<head>(\s*<style>.*?</style>)", re.DOTALL)


def _inline_css(html: str) -> str:
    try:
        inlined = _INLINER.inline(html)
    except css_inline.InlineError as exc:
        raise ConfigError(
            f"config key digest.templates_dir: the email CSS cannot be inlined: {exc}.",
            key="digest.templates_dir",
            hint="Fix the CSS in the email templates.",
        ) from exc
    # css-inline puts the kept @media rules first in <head>; move them after the
    # <meta charset>, which must come early, and before </head>.
    match = _KEPT_STYLE.search(inlined)
    if match is None:
        return inlined
    style = match.group(1).strip()
    inlined = inlined[: match.start(1)] + inlined[match.end(1) :]
    return inlined.replace("</head>", style + "\n</head>", 1)


# --------------------------------------------------------------------------- text part


_URLISH = re.compile(r"^(?:[a-z][a-z0-9+.-]*://|mailto:)", re.IGNORECASE)
_MARKER = re.compile(r"^(\s*)((?:\d+\.|[-*•]|\[\d+\])\s+)?")


def wrap_text(text: str, *, width: int = TEXT_WIDTH, keep: Iterable[str] = ()) -> str:
    """Wrap every line of a text part to `width` columns; a URL is never split.

    A long line keeps its indent, and a list item ("1. ", "- ") hangs under its
    text. Words longer than `width` are split unless they are URLs or in
    `keep` (such as a substitution marker), which stay whole on a line of
    their own.
    """
    protected = set(keep)
    lines: list[str] = []
    for line in text.split("\n"):
        if len(line) <= width:
            lines.append(line)
            continue
        match = _MARKER.match(line)
        indent = match.group(1) if match else ""
        hang = indent + " " * len(match.group(2) or "") if match else ""
        # Split on plain spaces only: a no-break space (typeset) holds its words together.
        words = [
            piece
            for word in line.split(" ")
            if word
            for piece in _split_word(word, width, protected)
        ]
        filled = textwrap.fill(
            " ".join(words),
            width=width,
            initial_indent=indent,
            subsequent_indent=hang,
            break_long_words=False,
            break_on_hyphens=False,
        )
        lines.extend(filled.split("\n"))
    return "\n".join(lines)


def _split_word(word: str, width: int, protected: set[str]) -> list[str]:
    if len(word) <= width:
        return [word]
    if word in protected or (_URLISH.match(word) and len(word.encode()) <= MAX_LINE_BYTES):
        return [word]
    pieces: list[str] = []
    current = ""
    for char in word:
        if len(current) >= width and not unicodedata.combining(char):
            pieces.append(current)
            current = ""
        current += char
    pieces.append(current)
    return pieces

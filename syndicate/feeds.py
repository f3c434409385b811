"""Feeds stage: articles in, RSS 2.0 / Atom 1.0 / JSON Feed 1.1 bytes out. Pure: no I/O.

RSS and Atom go through feedgen, whose traps are handled here: entries are
appended in our order (it prepends by default), the feed's updated time is set
from the articles (it defaults to the wall clock), the RSS channel link is set by
the last link() call, content:encoded needs a description beside it, and only
tz-aware datetimes are passed. JSON Feed is built as JSON (feedgen has none).

Item ids are `urn:uuid:` names derived from the id the article's story was first
stored under (the store's `first_id`, else Article.id, a content hash), so they never
change across runs, machines, a move of the site to another base_url, or a correction
of the story's text. An undated article gets no published date; its updated time
(required by Atom) is when its text was last revised, else the feed's updated time, so
the output depends on the input alone.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any, Literal
from zoneinfo import ZoneInfo

from feedgen import version as feedgen_version
from feedgen.feed import FeedGenerator
from lxml import etree
from markupsafe import escape

from syndicate.i18n import STRINGS
from syndicate.model import (
    Article,
    BlockKind,
    credit_line,
    dated_at,
    newest_published,
    order_key,
    shown_blocks,
    shown_standfirst,
)
from syndicate.text import one_line, shorten
from syndicate.urls import FEED_TYPES, FeedKind, feed_url

JSON_FEED_VERSION = "https://jsonfeed.org/version/1.1"

_ATOM_NS = "http://www.w3.org/2005/Atom"
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
# Our own feedgen output is re-read with entity expansion and network access off, and
# without libxml2's 10 MB cap on one text node: an article's escaped content can pass it.
_SAFE_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, huge_tree=True
)

# What building a feed can raise because of one article's content (lxml refuses some
# values, feedgen others): the build leaves that article out of the feeds and goes on.
ENTRY_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    LookupError,
    TypeError,
    ArithmeticError,
    RecursionError,
    etree.LxmlError,
)

# Namespace for the UUIDs of our item ids; fixed forever (changing it changes every id).
_ID_NAMESPACE = uuid.UUID("6f1d7c3e-5b0a-4c52-9d3e-8a2f51c0b7e4")


# The libraries that write the feed bytes: their versions are part of what a build
# fingerprints before it skips rendering unchanged feeds.
LIBRARY_VERSIONS = (feedgen_version.version_str, etree.LXML_VERSION)


@dataclass(frozen=True, slots=True)
class FeedInfo:
    """Feed-level facts, from the site settings."""

    title: str
    description: str
    base_url: str  # ends in '/'
    language: str
    timezone: str

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def item_id(article_id: str) -> str:
    """The permanent feed id of an article: a name-based UUID URN."""
    return f"urn:uuid:{uuid.uuid5(_ID_NAMESPACE, article_id)}"


# Bytes of HTML past which an entry carries the opening of its article and a link to the
# rest on its page. An article runs 5 to 50 KB; a dump of a whole report (or a hostile one)
# can reach megabytes, and feed readers refuse or cut feeds that large: one odd dump must
# not weigh on every reader of the feed. The page keeps the whole text.
CONTENT_LIMIT = 256 * 1024
# Characters kept of a single paragraph that alone passes the limit (escaped, at most 6
# bytes each, with room left for the link).
_CUT_PARAGRAPH = CONTENT_LIMIT // 8


def build_content_html(article: Article, *, page_url: str = "", limit: int = CONTENT_LIMIT) -> str:
    """The article as HTML: its standfirst, then each paragraph and photo note, each
    escaped on its own. Past `limit` bytes (UTF-8), and with its `page_url`, the paragraphs
    that fit and a link to the whole article on its page (in the article's language).

    It is the text the article page shows under its headline: the standfirst
    (model.shown_standfirst: the head, which feed readers showing the full text would
    otherwise never show) and the body (model.shown_blocks): a caption is a note of what
    the source's photo showed, `<p class="photo-note"><em>…</em></p>`, which reads well
    in feed readers that drop class names; a credit alone is left out. A story credited to
    its source ends on the credit, as the paper prints it: `<p class="credit">Theo
    TTXVN</p>`, in the article's language (readers show no other field for it).
    """
    parts: list[str] = []
    standfirst = shown_standfirst(article)
    if standfirst:
        parts.append(f"<p>{escape(one_line(standfirst))}</p>")
    for block in shown_blocks(article.body, language=article.language):
        text = str(escape(one_line(block.text)))  # escaped here; the tags are ours
        if block.kind is BlockKind.CAPTION:
            parts.append(f'<p class="photo-note"><em>{text}</em></p>')
        else:
            parts.append(f"<p>{text}</p>")
    if article.credit:
        credit = credit_line(one_line(article.credit), language=article.language)
        parts.append(f'<p class="credit">{escape(credit)}</p>')
    content = "\n".join(parts)
    if not page_url or len(content) <= limit // 4 or len(content.encode()) <= limit:
        return content
    return _cut_content(parts, article, page_url=page_url, limit=limit)


def _cut_content(parts: list[str], article: Article, *, page_url: str, limit: int) -> str:
    """The first `parts` that fit in `limit` bytes with a link to `page_url` after them (the
    first paragraph cut short when it alone does not fit)."""
    label = STRINGS["pages"].get(article.language, STRINGS["pages"]["vi"])["whole_article"]
    link = f'<p class="whole-article"><a href="{escape(page_url)}">{escape(label)} →</a></p>'
    room = limit - len(link.encode()) - 1
    kept: list[str] = []
    for part in parts:
        size = len(part.encode()) + 1
        if size > room:
            break
        kept.append(part)
        room -= size
    if not kept:  # one paragraph past the limit on its own: its opening words
        first = shown_standfirst(article) or next(
            (b.text for b in shown_blocks(article.body, language=article.language)), ""
        )
        kept.append(f"<p>{escape(shorten(one_line(first), limit=_CUT_PARAGRAPH))}</p>")
    return "\n".join([*kept, link])


# The longest summary (`description`, `summary`) an entry carries, in characters: a head runs
# to about 500; a longer one is cut at a word, with "…" (the content has it whole, or its
# opening when the article passes CONTENT_LIMIT).
SUMMARY_LIMIT = 1000


def _summary(article: Article) -> str:
    summary = one_line(article.summary)
    if len(summary) > SUMMARY_LIMIT:
        summary = shorten(summary, limit=SUMMARY_LIMIT)
    return summary or _title(article)


def _title(article: Article) -> str:
    """The title on one line, NFC (a title must never carry a line break)."""
    return one_line(article.title)


def _author(article: Article) -> str | None:
    """The byline on one line, or None: an article without one names no author (the site
    is not one; readers such as rss2email would show "Site: Site" as the sender)."""
    return one_line(article.author or "") or None


def _credit(article: Article) -> str | None:
    """The source a story is credited to, on one line, or None."""
    return one_line(article.credit or "") or None


def _order(
    articles: Sequence[Article],
    first_seen: Mapping[str, datetime],
    tz: tzinfo,
    newest: datetime | None,
) -> list[Article]:
    """The site's one order (model.order_key, as the index and the digest): newest first, an
    undated article after the dated ones of the day it was first seen, ties by id. The same
    for any input order."""
    return sorted(
        articles,
        key=lambda a: order_key(
            a.published, a.precision, first_seen[a.id], a.id, tz=tz, newest=newest
        ),
        reverse=True,
    )


def _feed_updated(dates: Sequence[datetime | None], now: datetime) -> datetime:
    dated = [when for when in dates if when is not None]
    return max(dated) if dated else now


def build_feed(
    articles: Sequence[Article],
    *,
    kind: FeedKind,
    now: datetime,
    info: FeedInfo,
    limit: int,
    page_urls: Mapping[str, str],
    first_seen: Mapping[str, datetime],
    story_ids: Mapping[str, str] | None = None,
    revised: Mapping[str, datetime] | None = None,
    newest: datetime | None = None,
) -> bytes:
    """Render one feed of the newest `limit` articles, in the site's order (model.order_key).

    `page_urls` maps Article.id to the absolute URL of its page, where the build
    wrote it (the feed never works a page out from a slug); every chosen article
    must have one. `first_seen` maps every Article.id to when syndicate first saw it
    (stored by the build): it places an undated article, and dates one whose dump gave a
    day and no time (model.dated_at). `story_ids` maps an Article.id to the id its story
    was first stored under, whose `item_id` its item keeps (missing: its own); `revised`
    to when its text replaced an earlier one of the story (its updated time). `now` is
    used only when no chosen article has a date. `newest` is the newest publish time of the
    list the feed heads (the index's: model.newest_published), which places undated
    articles; None: that of `articles` (the same unless one was left out). The bytes are
    the same for the same arguments.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if newest is None:
        newest = newest_published(articles)
    chosen = _order(articles, first_seen, info.tz, newest)[:limit]
    dates = {a.id: dated_at(a.published, a.precision, first_seen[a.id]) for a in chosen}
    revised = revised or {}
    story_ids = story_ids or {}
    # When a story's text was revised after the time it is dated at: its updated time, and
    # the feed's when that is the newest.
    changes = {
        a.id: when
        for a in chosen
        if a.id in revised and (when := _changed(dates[a.id], revised[a.id])) is not None
    }
    updated = _local(_feed_updated([*dates.values(), *changes.values()], now), info.tz)
    entries = [
        _Entry(
            article,
            item_id(story_ids.get(article.id, article.id)),
            page_urls[article.id],
            dates[article.id],
            changes.get(article.id),
        )
        for article in chosen
    ]
    if kind == "json":
        return _build_json_feed(entries, info=info, updated=updated)
    return _build_xml_feed(entries, kind=kind, info=info, updated=updated)


@dataclass(frozen=True, slots=True)
class _Entry:
    """One article as its feed item shows it."""

    article: Article
    id: str  # feeds.item_id of its story
    url: str  # its page
    dated: datetime | None  # model.dated_at
    changed: datetime | None  # when its text was revised, if later than it is dated


def _changed(dated: datetime | None, revised: datetime) -> datetime | None:
    return None if dated is not None and revised <= dated else revised


def _local(value: datetime, tz: ZoneInfo) -> datetime:
    return value.astimezone(tz).replace(microsecond=0)


def _build_xml_feed(
    entries: Sequence[_Entry],
    *,
    kind: Literal["rss", "atom"],
    info: FeedInfo,
    updated: datetime,
) -> bytes:
    fg = FeedGenerator()
    # Dublin Core for RSS only (dc:creator, dc:language); Atom has author and xml:lang.
    fg.load_extension("dc", atom=False, rss=True)
    fg.id(f"urn:uuid:{uuid.uuid5(_ID_NAMESPACE, 'feed:' + info.base_url)}")
    fg.title(info.title)
    fg.description(info.description or info.title)
    fg.subtitle(info.description or info.title)
    fg.language(info.language)
    fg.author({"name": info.title})
    fg.generator("syndicate", uri=None, version=None)
    fg.updated(updated)
    self_type = FEED_TYPES[kind]
    fg.link(href=feed_url(info.base_url, kind), rel="self", type=self_type)
    # The RSS channel <link> is the last link() call: the site must come last.
    fg.link(href=info.base_url, rel="alternate", type="text/html")
    for entry in entries:
        _add_entry(fg, entry, info=info, updated=updated)
    if kind == "rss":
        data: bytes = fg.rss_str(pretty=True, encoding="UTF-8", xml_declaration=True)
        return data
    data = fg.atom_str(pretty=True, encoding="UTF-8", xml_declaration=True)
    return _fix_atom_entries(data, [e.article for e in entries])


def _fix_atom_entries(atom: bytes, articles: Sequence[Article]) -> bytes:
    """Give every Atom entry its own xml:lang (feedgen cannot), in entry order, put back
    the rel and type feedgen drops from entry links, and name the source a story is
    credited to (feedgen's source needs a feed URL we do not have)."""
    root = etree.fromstring(atom, _SAFE_PARSER)
    entries = root.findall(f"{{{_ATOM_NS}}}entry")
    for entry, article in zip(entries, articles, strict=True):
        entry.set(_XML_LANG, article.language)
        for link in entry.findall(f"{{{_ATOM_NS}}}link"):
            link.set("rel", "alternate")
            link.set("type", "text/html")
        credit = _credit(article)
        if credit is not None:
            # RFC 4287 4.2.11: the entry came from another publisher; its title names it.
            source = etree.SubElement(entry, f"{{{_ATOM_NS}}}source")
            etree.SubElement(source, f"{{{_ATOM_NS}}}title").text = credit
    result: bytes = etree.tostring(root, encoding="UTF-8", xml_declaration=True)
    return result


def _add_entry(fg: FeedGenerator, entry: _Entry, *, info: FeedInfo, updated: datetime) -> None:
    article, dated = entry.article, entry.dated
    fe = fg.add_entry(order="append")
    fe.id(entry.id)
    fe.guid(entry.id, permalink=False)
    fe.title(_title(article))
    fe.link(href=entry.url, rel="alternate", type="text/html")
    # RSS <description> is entity-encoded HTML, so the plain lead is escaped once more.
    fe.description(str(escape(_summary(article))))
    fe.summary(_summary(article))
    fe.content(build_content_html(article, page_url=entry.url), type="html")
    author = _author(article)
    if author is not None:
        fe.author({"name": author})
        fe.dc.dc_creator(author)
    credit = _credit(article)
    if credit is not None:
        # RSS's <source> names an RSS channel by its URL: a news agency has none here.
        fe.dc.dc_source(credit)
    fe.dc.dc_language(article.language)
    if dated is not None:
        published = _local(dated, info.tz)
        fe.published(published)
        fe.pubDate(published)
        fe.updated(published)
    else:
        fe.updated(updated)
    if entry.changed is not None:  # Atom: when the text last changed (RSS has no such date)
        fe.updated(_local(entry.changed, info.tz))


def _build_json_feed(entries: Sequence[_Entry], *, info: FeedInfo, updated: datetime) -> bytes:
    items: list[dict[str, Any]] = []
    for entry in entries:
        article = entry.article
        item: dict[str, Any] = {
            "id": entry.id,
            "url": entry.url,
            "title": _title(article),
            "content_html": build_content_html(article, page_url=entry.url),
            "summary": _summary(article),
        }
        if entry.dated is not None:
            stamp = _local(entry.dated, info.tz).isoformat()
            item["date_published"] = stamp
            item["date_modified"] = stamp
        else:
            item["date_modified"] = updated.isoformat()
        if entry.changed is not None:
            item["date_modified"] = _local(entry.changed, info.tz).isoformat()
        author = _author(article)
        if author is not None:
            item["authors"] = [{"name": author}]
        item["language"] = article.language
        items.append(item)
    feed: dict[str, Any] = {
        "version": JSON_FEED_VERSION,
        "title": info.title,
        "home_page_url": info.base_url,
        "feed_url": feed_url(info.base_url, "json"),
        "description": info.description,
        "language": info.language,
        "authors": [{"name": info.title}],
        "items": items,
    }
    return (json.dumps(feed, ensure_ascii=False, indent=2) + "\n").encode("utf-8")

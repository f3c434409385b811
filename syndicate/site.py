"""Site stage: articles in, static HTML pages out (bytes). Pure apart from reading templates.

Pages are rendered with Jinja2 autoescaping from `config.site_templates_dir()`;
article text only ever enters a template as a variable, so it is escaped and
never compiled. Links between pages are relative (the site works from any
folder and from file://); canonical and feed links are absolute under base_url.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import secrets
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast
from zoneinfo import ZoneInfo

import babel
from markupsafe import Markup

from syndicate import i18n
from syndicate.config import make_environment
from syndicate.model import (
    Article,
    Block,
    BlockKind,
    Precision,
    StoryLink,
    credit_line,
    order_teasers,
    shown_block,
    shown_blocks,
    shown_standfirst,
)
from syndicate.text import (
    STORY_PROBE_CHARS,
    after_title,
    detect_language,
    one_line,
    shorten,
    slugify,
    story_key,
    trailing_ellipsis,
    typeset,
    typeset_utf8,
)
from syndicate.urls import article_path, article_url

if TYPE_CHECKING:
    import jinja2

# Bump when page rendering changes in code (not templates), so old pages get re-rendered.
# 4: a teaser advertising the page's own article is not listed under "Other news"; each
#    item says its language. (The standfirst is model.shown_standfirst: same bytes.)
RENDER_VERSION = 4

ARTICLE_TEMPLATE = "article.html.j2"
INDEX_TEMPLATE = "index.html.j2"
CHROME_TEMPLATE = "_chrome.html.j2"

_STRINGS = i18n.STRINGS["pages"]

# An article page's body is tagged as UTF-8 bytes, between these.
_PARAGRAPH_OPEN = b"<p>"
_CAPTION_OPEN = b'<p class="photo-note">'
_CLOSE = b"</p>"
# What the article template prints for `article.body`: the rendered page is split there and
# the body's bytes put in between. A NUL never reaches a page (`one_line` and the loader
# turn controls into spaces) and the token is new in each process.
_BODY_MARK = f"\0{secrets.token_hex(16)}\0"


class _BodyHole:
    """`article.body` in the article template: prints `_BODY_MARK`, unescaped."""

    __slots__ = ()

    def __html__(self) -> str:
        return _BODY_MARK


_BODY_HOLE = _BodyHole()
_SAFE_SLUG = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


@dataclass(frozen=True, slots=True)
class SiteInfo:
    """Site-level facts, from the settings."""

    title: str
    description: str
    base_url: str  # ends in '/'
    language: str
    timezone: str
    page_size: int

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """What an index page shows of one article."""

    id: str
    slug: str
    title: str
    published: datetime | None
    precision: Precision
    author: str | None
    language: str | None = None  # the article's; None: the site's
    credit: str | None = None  # the source it is credited to, when it has no author


INDEX_PAGE = "index.html"


def archive_path(number: int) -> str:
    """The output path of archive page `number` (page/1.html holds the oldest articles)."""
    return f"page/{number}.html"


@dataclass(frozen=True, slots=True)
class IndexPage:
    """A page listing articles: index.html (`archive` None) or archive page `archive`."""

    rel: str
    archive: int | None
    archives: int  # how many archive pages the site has
    start: int  # its articles are [start:stop] of the list sorted newest first
    stop: int


def index_pages(total: int, page_size: int) -> list[IndexPage]:
    """index.html with the newest `page_size` of `total` articles, then the archive pages.

    Archive pages are numbered from the oldest articles, `page_size` each; the newest may
    hold fewer. A new article therefore changes index.html and the newest archive page or
    two; the older archive pages keep their articles and their bytes.
    """
    archived = max(0, total - page_size)
    archives = -(-archived // page_size)
    pages = [IndexPage(INDEX_PAGE, None, archives, 0, min(total, page_size))]
    for number in range(1, archives + 1):
        start = max(page_size, total - number * page_size)
        pages.append(
            IndexPage(
                archive_path(number), number, archives, start, total - (number - 1) * page_size
            )
        )
    return pages


def _safe_slug(slug: str, article_id: str) -> str:
    if _SAFE_SLUG.fullmatch(slug):
        return slug
    return slugify(slug) or slugify(article_id) or "bai-viet"


def assign_slugs(
    items: Iterable[tuple[str, str, datetime | None, datetime | None]],
    *,
    kept: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Give every article (id, slug, published, first_seen) a unique page slug.

    An article that has a page already keeps its slug (`kept`: id -> the slug of its page),
    so a published URL stays put. In a group sharing a slug, the article syndicate saw
    first gets it, so a published URL never changes hands when an older article arrives
    later; among those seen at once, the earliest published (undated after dated, then the
    smallest id). The others get `-<first 6 of id>` (longer if that is taken too). The
    result depends on the set of articles (and `kept`) only, never on their order.
    """
    items = list(items)
    wanted = {item[0] for item in items}
    kept = kept or {}
    # Pages that exist keep their slugs: claimed first, in sorted order (one build never
    # records two articles under one page, so no claim loses unless `kept` is damaged).
    result: dict[str, str] = {}
    taken: set[str] = set()
    for own, article_id in sorted(
        (own, article_id)
        for article_id, own in kept.items()
        if _SAFE_SLUG.fullmatch(own) and article_id in wanted
    ):
        if own not in taken:
            result[article_id] = own
            taken.add(own)
    groups: dict[str, list[tuple[float, bool, float, str]]] = {}
    losers: list[tuple[str, str]] = []
    for article_id, slug, published, first_seen in items:
        if article_id in result:
            continue
        key = (
            first_seen.timestamp() if first_seen else 0.0,
            published is None,
            published.timestamp() if published else 0.0,
            article_id,
        )
        groups.setdefault(_safe_slug(slug, article_id), []).append(key)
    for slug in sorted(groups):
        members = sorted(groups[slug])
        if slug in taken:  # kept by an article that has its page under it
            losers.extend((slug, member[3]) for member in members)
            continue
        losers.extend((slug, member[3]) for member in members[1:])
        result[members[0][3]] = slug
        taken.add(slug)
    for slug, article_id in sorted(losers):
        suffix_source = slugify(article_id) or "x"
        for width in (6, 12, len(suffix_source)):
            candidate = f"{slug}-{suffix_source[:width]}"
            if candidate not in taken:
                break
        else:
            number = 2
            while f"{candidate}-{number}" in taken:
                number += 1
            candidate = f"{candidate}-{number}"
        result[article_id] = candidate
        taken.add(candidate)
    return result


def format_published(
    published: datetime | None, precision: Precision, *, locale: str, tz: ZoneInfo
) -> str:
    """The publish date as a reader of `locale` expects it (i18n.format_published, as the
    digest writes it). A time of day is shown only when the dump gave one; an unknown date
    says so.
    """
    if published is None or precision is Precision.UNKNOWN:
        return _STRINGS.get(locale, _STRINGS["vi"])["unknown_date"]
    with_time = precision is Precision.DATETIME
    return i18n.format_published(published, lang=locale, tz=tz, with_time=with_time)


def _advertises(key: str, own: Sequence[str]) -> bool:
    """Whether a teaser's story key advertises the article with keys `own` (as the store
    ties teasers: the key, of at least STORY_PROBE_CHARS, a prefix of one of them)."""
    return len(key) >= STORY_PROBE_CHARS and any(o.startswith(key) for o in own)


def _machine_date(published: datetime | None, precision: Precision, tz: ZoneInfo) -> str:
    if published is None or precision is Precision.UNKNOWN:
        return ""
    local = published.astimezone(tz).replace(microsecond=0)
    if precision is Precision.DATETIME:
        return local.isoformat()
    return local.date().isoformat()


def _joined_texts(blocks: Sequence[Block], *, checked: bool) -> str:
    """The texts of `blocks` joined by line breaks, each a printable NFC line: unless
    `checked` (the loader's are), a block that is not is put on one line first."""
    joined = "\n".join([block.text for block in blocks])
    if checked or (
        # The whole text at once: a line break is a starter that composes with nothing,
        # so the joined text is NFC exactly when every block is, and it holds one line
        # break fewer than there are blocks exactly when no block holds one.
        joined.count("\n") == len(blocks) - 1
        and joined.replace("\n", " ").isprintable()
        and unicodedata.is_normalized("NFC", joined)
    ):
        return joined
    return "\n".join(
        [
            text
            if text.isprintable() and unicodedata.is_normalized("NFC", text)
            else one_line(text)
            for text in (block.text for block in blocks)
        ]
    )


def _escape_utf8(text: bytes) -> bytes:
    """UTF-8 `text` escaped for HTML as markupsafe.escape escapes it (& < > ' "): the
    characters it replaces are ASCII, which UTF-8 never uses inside another character."""
    return (
        text.replace(b"&", b"&amp;")
        .replace(b"<", b"&lt;")
        .replace(b">", b"&gt;")
        .replace(b"'", b"&#39;")
        .replace(b'"', b"&#34;")
    )


def _tagged_body(blocks: Sequence[Block], body: bytes, *, language: str | None) -> bytes:
    """The body as the page shows it: each block between fixed tags, its text the line of
    `body` (the blocks' texts joined by line breaks, as UTF-8) typeset and escaped, all
    lines in one pass (a line is typeset as the whole text would set it). The body is split
    into lines once, here.

    With a `language`, `blocks` are the loader's: a caption is shown as its note in that
    language, or left out (`shown_block`), and its line is not used. Without one, `blocks`
    are shown already (`shown_blocks`).
    """
    if not blocks:
        return b""
    tagged: list[bytes] = []
    for block, line in zip(blocks, _escape_utf8(typeset_utf8(body)).split(b"\n"), strict=True):
        if block.kind is not BlockKind.CAPTION:
            tagged.append(_PARAGRAPH_OPEN + line + _CLOSE)
        elif language is None:
            tagged.append(_CAPTION_OPEN + line + _CLOSE)
        elif (note := shown_block(block, language=language)) is not None:
            text = _escape_utf8(typeset(note.text).encode("utf-8"))
            tagged.append(_CAPTION_OPEN + text + _CLOSE)
    return b"\n".join(tagged)


def page_context(info: SiteInfo, *, root: str) -> dict[str, Any]:
    """What `_base.html.j2` needs besides `chrome` (`render_chrome` of these): lang, site,
    root (the way to the site root from the page: "", "../" or an absolute URL), t
    (the chrome strings), and the site's description and its language (the page's: the
    static pages are all in the site's language)."""
    return {
        "site": info,
        "lang": info.language,
        "root": root,
        "t": _STRINGS.get(info.language, _STRINGS["vi"]),
        "description": info.description,
        "description_lang": info.language,
    }


@dataclass(frozen=True, slots=True)
class PageChrome:
    """The site-wide parts `_base.html.j2` prints around a page's own, ready to print."""

    feeds: Markup  # the feed links in <head>
    header: Markup
    footer: Markup


def render_chrome(env: jinja2.Environment, context: Mapping[str, Any]) -> PageChrome:
    """The macros of `_chrome.html.j2` rendered with `context` (lang, site, root, t): what
    `_base.html.j2` takes as `chrome`. They use those site-wide values only, so a caller
    renders them once for all the pages that share them, not with each page."""
    try:
        chrome: Any = env.get_template(CHROME_TEMPLATE).make_module(dict(context))
        return PageChrome(feeds=chrome.feeds(), header=chrome.header(), footer=chrome.footer())
    except Exception:
        env.handle_exception()  # raises it, with the template's lines in its traceback


def _template_sources(folder: Path) -> tuple[tuple[str, str], ...]:
    """Each page template of `folder` (`*.j2`, partials included) and its source, by name.

    Raises OSError when a folder of them cannot be listed. Jinja's `list_templates` walks
    with `os.walk`, which skips such a folder without a word: a process out of open files
    (EMFILE) found no template at all, and the build failed on a "missing"
    article.html.j2 with a traceback, not the CLI's one line for EMFILE.
    """
    env = make_environment(folder)
    loader = cast("jinja2.FileSystemLoader", env.loader)
    return tuple((name, loader.get_source(env, name)[0]) for name in _template_names(folder))


def _template_names(folder: Path) -> list[str]:
    """The names (`/`-separated, from `folder`) of the `*.j2` files below `folder`, sorted."""

    def fail(exc: OSError) -> None:
        raise exc

    names = []
    for parent, _folders, files in os.walk(folder, onerror=fail):
        prefix = Path(parent).relative_to(folder).as_posix()
        for file in files:
            if file.endswith(".j2"):
                names.append(file if prefix == "." else f"{prefix}/{file}")
    return sorted(names)


@functools.lru_cache(maxsize=4)
def _site_environment(folder: Path, sources: tuple[tuple[str, str], ...]) -> jinja2.Environment:
    """The page templates compiled from exactly `sources` (what the fingerprint covers), once
    per process for each set of sources: compiling takes longer than rendering a small site,
    and a process that builds again (a test, `send` after `build`) reuses them. A template
    edited between builds gives other sources, so a new environment. Nothing is read from the
    folder again: a file changed mid-build cannot make pages that differ from the fingerprint.
    """
    import jinja2

    env = make_environment(folder)
    texts = dict(sources)

    def load(name: str) -> tuple[str, str, Any] | None:
        text = texts.get(name)
        return None if text is None else (text, str(folder / name), lambda: True)

    env.loader = jinja2.FunctionLoader(load)
    env.auto_reload = False
    return env


class SiteRenderer:
    """Renders article and index pages for one site; `fingerprint` covers all its inputs.

    Two renderers with the same fingerprint give the same bytes for the same pages.
    """

    def __init__(self, info: SiteInfo, templates_dir: Path) -> None:
        self.info = info
        self.templates_dir = templates_dir
        sources = _template_sources(templates_dir)
        self.env = _site_environment(templates_dir, sources)
        self.strings = _STRINGS.get(info.language, _STRINGS["vi"])
        self._tz = info.tz
        self._article = self.env.get_template(ARTICLE_TEMPLATE)
        self._index = self.env.get_template(INDEX_TEMPLATE)
        self._chromes: dict[str, PageChrome] = {}  # by root
        digest = hashlib.blake2b(digest_size=16)
        # The words of the pages (all languages: a credit is in its article's) too.
        digest.update(repr((RENDER_VERSION, babel.__version__, info, _STRINGS)).encode())
        for name, source in sources:
            digest.update(name.encode() + b"\0" + source.encode() + b"\0")
        self.fingerprint = digest.hexdigest()

    @functools.cached_property
    def _article_vars(self) -> dict[str, Any]:
        """The article page's template globals and site-wide values, its chrome rendered,
        merged once, for the first page: a build with no article page to render compiles
        no chrome."""
        return {**self._article.globals, **self._context("../")}

    # Template values are objects with attributes, not dicts: Jinja tries an attribute
    # first, and a dict key only after that lookup has failed (an exception each time).
    def _date(self, published: datetime | None, precision: Precision) -> SimpleNamespace:
        return SimpleNamespace(
            text=format_published(published, precision, locale=self.info.language, tz=self._tz),
            machine=_machine_date(published, precision, self._tz),
        )

    def _credit(self, credit: str | None) -> str | None:
        """A source credit in the site's words ("Theo TTXVN"), or None."""
        if not credit:
            return None
        return credit_line(one_line(credit), language=self.info.language)

    def _context(self, root: str) -> dict[str, Any]:
        """The site-wide values of a page at `root`, its chrome rendered once per root."""
        context = page_context(self.info, root=root)
        context["t"] = SimpleNamespace(**context["t"])
        chrome = self._chromes.get(root)
        if chrome is None:
            chrome = self._chromes[root] = render_chrome(self.env, context)
        context["chrome"] = chrome
        return context

    def render_article(
        self,
        article: Article,
        *,
        slug: str,
        from_loader: bool = False,
        links: Mapping[str, StoryLink] | None = None,
        body: bytes | None = None,
    ) -> bytes:
        """The page of one article, written at `article_path(slug)`.

        `from_loader` says the article comes straight from the loader, whose blocks are
        one clean NFC line each: they are then not checked again. `links` maps the story
        keys of its teasers to the articles they advertise (see `order_teasers`). `body`,
        with `from_loader`, is the article's block texts joined by line breaks, as UTF-8:
        what `load.parse_dump_with_body` returns beside the article (not encoded again here).
        """
        # Article text is never part of a template: the blocks are escaped here (in one
        # pass over their UTF-8 text, joined by line breaks, which no block holds) and put
        # between fixed tags. A block that is not printable NFC text (not the loader's) is
        # first put on one line.
        blocks = article.body
        standfirst = shown_standfirst(article)
        has_head = bool(article.head) and article.head != article.lead
        if article.title_derived and not has_head:
            # The headline was made from the text right below it: print those words once.
            if blocks and blocks[0].kind is BlockKind.PARAGRAPH:
                rest = after_title(article.title, blocks[0].text)
                if rest != blocks[0].text:
                    first = (Block(BlockKind.PARAGRAPH, rest),) if rest else ()
                    blocks = first + blocks[1:]
                    body = None
        if body is not None and from_loader:
            tagged = _tagged_body(blocks, body, language=article.language)
        else:
            if any(block.kind is BlockKind.CAPTION for block in blocks):
                blocks = shown_blocks(blocks, language=article.language)
            body = _joined_texts(blocks, checked=from_loader).encode("utf-8")
            tagged = _tagged_body(blocks, body, language=None)
        context = {
            **self._article_vars,
            "article": SimpleNamespace(
                title=typeset(one_line(article.title)),
                summary=shorten(one_line(article.summary), limit=160),
                standfirst=typeset(one_line(standfirst)) if standfirst else None,
                language=article.language,
                author=one_line(article.author) if article.author else None,
                credit=self._credit(article.credit),
                date=self._date(article.published, article.precision),
                body=_BODY_HOLE,
            ),
            "other_news": self._other_news(article, links or {}),
            "canonical": article_url(self.info.base_url, slug),
        }
        # What Template.render does, with the globals merged once per renderer rather than
        # per page (new_context and root_render_func are Jinja's documented "low level
        # API"; Template.render itself costs 0.6% more instructions over a full build);
        # the template's text is encoded, the body put in as bytes.
        try:
            html = "".join(
                self._article.root_render_func(self._article.new_context(context, shared=True))
            )
        except Exception:
            self.env.handle_exception()
        return tagged.join([part.encode("utf-8") for part in html.split(_BODY_MARK)])

    def _other_news(
        self, article: Article, links: Mapping[str, StoryLink]
    ) -> list[SimpleNamespace]:
        if not article.teasers:
            return []
        dated = article.published is not None and article.precision is not Precision.UNKNOWN
        newest = article.published.astimezone(self._tz).date() if dated else None  # type: ignore[union-attr]
        # The sidebar scraped with a story often lists that story: the store never ties a
        # teaser to its own article, so it is left out here by the same rule (its key a
        # prefix of the article's head or lead key).
        own = [story_key(text) for text in (article.head, article.lead) if text]
        teasers = [
            teaser for teaser in article.teasers if not _advertises(story_key(teaser.text), own)
        ]
        items = []
        for item in order_teasers(teasers, links, newest=newest, tz=self._tz, exclude={article.id}):
            link = item.link
            items.append(
                SimpleNamespace(
                    href=None if link is None else "../" + link.path,
                    title=None if link is None else typeset(one_line(link.title)),
                    dateline=one_line(item.teaser.dateline),
                    text=typeset(trailing_ellipsis(one_line(item.teaser.text))),
                    # What the item shows (the linked title, else the teaser) says its
                    # language: a page's reader may not share it.
                    language=detect_language(link.title if link else item.teaser.text),
                )
            )
        return items

    def render_index(
        self,
        entries: Sequence[IndexEntry],
        *,
        archive: int | None,
        archives: int,
    ) -> bytes:
        """index.html (`archive` None) or archive page `archive` of `archives`, listing
        `entries` (already newest first). Newer and older links lead along the pages; an
        archive page shows nothing else of `archives`, so it stays the same as they grow."""
        root = "" if archive is None else "../"
        items = [
            SimpleNamespace(
                href=root + article_path(e.slug),
                title=typeset(one_line(e.title)),
                author=one_line(e.author) if e.author else None,
                credit=self._credit(e.credit),
                date=self._date(e.published, e.precision),
                # The other language's entry says so: a screen reader picks its voice.
                lang=e.language if e.language and e.language != self.info.language else None,
            )
            for e in entries
        ]
        if archive is None:
            newer = None
            older = archive_path(archives) if archives else None
        else:
            newer = root + (archive_path(archive + 1) if archive < archives else INDEX_PAGE)
            older = root + archive_path(archive - 1) if archive > 1 else None
        html = self._index.render(
            **self._context(root),
            entries=items,
            archive=archive,
            newer=newer,
            older=older,
            canonical=self.info.base_url + ("" if archive is None else archive_path(archive)),
        )
        return html.encode("utf-8")

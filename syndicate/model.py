"""Model: the plain, immutable values that flow between stages."""

from __future__ import annotations

import bisect
import hashlib
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from enum import StrEnum
from typing import Any, Protocol

from syndicate.i18n import LANGUAGES, STRINGS, format_text_day
from syndicate.text import after_title, photo_description, story_key, tell_article_language


class Precision(StrEnum):
    """How much of an article's publish time is known."""

    DATETIME = "datetime"  # date and time of day from the publish line
    DATE = "date"  # a full date, no time of day
    INFERRED_YEAR = "inferred-year"  # day/month from the text, year inferred from other dates
    UNKNOWN = "unknown"


class BlockKind(StrEnum):
    PARAGRAPH = "paragraph"
    CAPTION = "caption"


# BlockKind by value: a dict lookup where calling the enum takes about 1 us (per block of
# every article read back from the store).
_BLOCK_KINDS = {kind.value: kind for kind in BlockKind}


def _block_kind(value: Any) -> BlockKind:
    """`BlockKind(value)`, found by value first; the enum itself refuses what is no kind."""
    try:
        return _BLOCK_KINDS[value]
    except (KeyError, TypeError):
        return BlockKind(value)


@dataclass(frozen=True, slots=True)
class Block:
    """One body line of an article, in reading order."""

    kind: BlockKind
    text: str


@dataclass(frozen=True, slots=True)
class Teaser:
    """A blurb advertising another story, from the end of a dump."""

    dateline: str
    text: str


def make_article_id(body: bytes, author: str | None) -> str:
    """An article's id: the BLAKE2b digest of its body text (UTF-8 block texts, one per
    line), then a NUL and the byline when there is one. Header lines, teasers and the
    encoding are not part of it: they vary between scrapes of one story."""
    digest = hashlib.blake2b(body, digest_size=16)
    if author:
        digest.update(b"\0" + author.encode("utf-8"))
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Article:
    """One normalized article. All text is NFC; `published` is tz-aware or None.

    `body` holds paragraphs and captions in reading order; its first paragraph
    is the lead (dateline removed). `head` is the header's line 3 (the sapo), dateline
    removed, or None when the dump left it unfilled: a summary, never a paragraph.
    """

    id: str  # stable content id (hash of the normalized body): the dedup key
    slug: str
    title: str
    title_derived: bool
    published: datetime | None
    precision: Precision
    body: tuple[Block, ...]
    author: str | None = None
    teasers: tuple[Teaser, ...] = ()
    source: str = ""
    language: str = "vi"
    dateline: str | None = None  # the agency tag the lead opened with, if any
    head: str | None = field(default=None)  # the header's sapo, when the dump had one
    # The agency or paper the story is credited to ("Theo TTXVN", "Nguồn: VnExpress" give
    # "TTXVN", "VnExpress"): its source, not its author (then None).
    credit: str | None = None

    @property
    def paragraphs(self) -> tuple[str, ...]:
        return tuple(b.text for b in self.body if b.kind is BlockKind.PARAGRAPH)

    @property
    def captions(self) -> tuple[str, ...]:
        return tuple(b.text for b in self.body if b.kind is BlockKind.CAPTION)

    @property
    def lead(self) -> str:
        for block in self.body:
            if block.kind is BlockKind.PARAGRAPH:
                return block.text
        return ""

    @property
    def summary(self) -> str:
        """What summarises the article: its head when the dump had one, else its lead."""
        return self.head or self.lead

    def to_dict(self) -> dict[str, Any]:
        """The `inspect --json` shape (also the cache format, plus `body` and `language`)."""
        return {
            "id": self.id,
            "slug": self.slug,
            "title": self.title,
            "title_derived": self.title_derived,
            "published": self.published.isoformat() if self.published else None,
            "published_precision": str(self.precision),
            "head": self.head,
            "lead": self.lead,
            "paragraphs": list(self.paragraphs),
            "captions": list(self.captions),
            "author": self.author,
            "credit": self.credit,
            "teasers": [{"dateline": t.dateline, "text": t.text} for t in self.teasers],
            "source": self.source,
        }

    def to_record(self, *, body: str | None = None) -> dict[str, Any]:
        """A lossless JSON-able dict, read back by `from_record`. `body`, when given, takes
        the place of the blocks (the store's kind letters, their texts stored apart)."""
        # Built directly (not from to_dict): it runs once per parsed dump.
        record = {
            "id": self.id,
            "slug": self.slug,
            "title": self.title,
            "title_derived": self.title_derived,
            "published": self.published.isoformat() if self.published else None,
            "published_precision": self.precision.value,
            "author": self.author,
            "teasers": [{"dateline": t.dateline, "text": t.text} for t in self.teasers],
            "source": self.source,
            "body": [[b.kind.value, b.text] for b in self.body] if body is None else body,
            "language": self.language,
            "dateline": self.dateline,
            "head": self.head,
        }
        if self.credit is not None:
            # Only then: the records (and page fingerprints) of the others stay as they were.
            record["credit"] = self.credit
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Article:
        published = record["published"]
        body = tuple([Block(_block_kind(kind), text) for kind, text in record["body"]])
        language = record["language"]
        if language not in LANGUAGES:
            # Stored by another writer (another syndicate version sharing the store, a hand
            # edit): told anew from the text as the parser tells it, never printed as it is.
            language = tell_article_language(record["title"], "\n".join(b.text for b in body))
        return cls(
            id=record["id"],
            slug=record["slug"],
            title=record["title"],
            title_derived=bool(record["title_derived"]),
            published=datetime.fromisoformat(published) if published else None,
            precision=Precision(record["published_precision"]),
            body=body,
            author=record["author"],
            teasers=tuple(Teaser(t["dateline"], t["text"]) for t in record["teasers"]),
            source=record["source"],
            language=language,
            dateline=record.get("dateline"),
            head=record.get("head"),  # records stored before heads existed have none
            credit=record.get("credit"),  # nor before credits did
        )


@dataclass(frozen=True, slots=True)
class StoryLink:
    """The stored article a teaser advertises: what a link to its page shows."""

    id: str
    path: str  # its page, as the build stored it: relative to the site root
    title: str
    published: datetime | None  # None when its date is unknown
    precision: Precision
    first_seen_at: datetime  # places it when undated


# A digest's own part of its Message-IDs (`DigestPlan.message_key`, digests.message_key):
# lowercase hex, as `send.digests.make_message_key` makes it. It goes into a mail header as
# it is, so the store's reader refuses anything else as damage.
MESSAGE_KEY = re.compile(r"[0-9a-f]{1,32}")


@dataclass(frozen=True, slots=True)
class DigestPlan:
    """The articles of one day's digest, in digest order (newest first)."""

    day: date  # in the site's timezone
    articles: tuple[Article, ...]
    more: int = 0  # articles left out past digest.max_articles
    # The stored articles its teasers advertise, by the teaser's text.story_key.
    links: Mapping[str, StoryLink] = field(default_factory=dict)
    # Each article's page as the build stored it (id -> path relative to the site root);
    # an article missing here has no page and is shown unlinked.
    pages: Mapping[str, str] = field(default_factory=dict)
    # The digest's own part of its Message-IDs (digests.message_key), made when it is
    # stored; None for a plan not stored, or a digest stored before there was one.
    message_key: str | None = None


class SubscriptionStatus(StrEnum):
    PENDING = "pending"
    CONFIRMED = "confirmed"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    # A spam complaint (ARF abuse report): never mailed again; only the person can come back,
    # through the sign-up form and its confirmation.
    COMPLAINED = "complained"


class DeliveryStatus(StrEnum):
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Subscriber:
    id: int
    email: str
    name: str | None
    language: str
    status: SubscriptionStatus
    created_at: datetime
    confirmed_at: datetime | None = None
    unsubscribed_at: datetime | None = None
    bounced_at: datetime | None = None
    bounce_count: int = 0
    # Random, stored with the subscriber and signed into their tokens: a link dies with them.
    token_nonce: bytes = field(default=b"", repr=False)


def shown_standfirst(article: Article) -> str | None:
    """The head as the article's page prints it under the headline (its standfirst), and
    as the feeds' full text opens: None when there is no head or it is the lead; of a
    head a title was derived from, the words after the title (None when none are left)."""
    if not article.head or article.head == article.lead:
        return None
    if article.title_derived:
        return after_title(article.title, article.head) or None
    return article.head


def credit_line(credit: str, *, language: str) -> str:
    """A story's source credit as a reader of `language` reads it: "Theo TTXVN", "Source:
    Reuters" (pages, feeds and the digest: one wording)."""
    label = STRINGS["pages"].get(language, STRINGS["pages"]["vi"])["credit"]
    return label.replace("{source}", credit)


def shown_blocks(blocks: Sequence[Block], *, language: str) -> tuple[Block, ...]:
    """The body as pages and feeds show it. The dumps carry captions, never photos: a
    caption under no photo would read as a stray line, and its credit names a photo not
    shown. A caption becomes a note of what the source's photo showed, marked as such in
    the article's `language` ("Ảnh trong bài gốc: Quang cảnh hội thảo"); one that says
    nothing of the story (a credit alone, an illustration) is left out. Paragraphs stay."""
    shown = [shown_block(block, language=language) for block in blocks]
    return tuple(block for block in shown if block is not None)


def shown_block(block: Block, *, language: str) -> Block | None:
    """One block as `shown_blocks` shows it: a paragraph as it is, a caption as its note,
    None when it is left out."""
    if block.kind is not BlockKind.CAPTION:
        return block
    description = photo_description(block.text)
    if description is None:
        return None
    label = STRINGS["pages"].get(language, STRINGS["pages"]["vi"])["photo_note"]
    return Block(BlockKind.CAPTION, f"{label}: {description}")


# --- The one order of articles and teasers (index pages and the digest share it) -------

# What rendering one article's page can raise because of that article (a value a library
# refuses, a date out of range in the site's timezone, a damaged stored record): the build
# leaves that article out and goes on.
RENDER_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    LookupError,
    TypeError,
    ArithmeticError,
    RecursionError,
)


# The hour of the day a date-only article is dated at where a time is needed (feeds: RFC 822
# and RFC 3339 have no date without a time; the order): midday, neither "midnight" nor, for
# readers west of the site, the day before.
DATE_ONLY_HOUR = 12


def dated_at(
    published: datetime | None, precision: Precision, first_seen_at: datetime
) -> datetime | None:
    """The instant an article is dated at in the feeds and placed at in the one order.

    Its publish time when the dump gave the time of day. A date alone (`published` is the
    day's start in the site's timezone) stands for DATE_ONLY_HOUR of that day, or for when
    syndicate first saw the article if that was earlier the same day (it was out by then).
    None when the date is unknown.
    """
    if published is None or precision is Precision.UNKNOWN:
        return None
    if precision is Precision.DATETIME:
        return published
    midday = published + timedelta(hours=DATE_ONLY_HOUR)
    if published <= first_seen_at < midday:
        return first_seen_at.astimezone(published.tzinfo)
    return midday


class _Dated(Protocol):
    @property
    def published(self) -> datetime | None: ...
    @property
    def precision(self) -> Precision: ...


def newest_published(articles: Iterable[_Dated]) -> datetime | None:
    """The newest publish time of `articles` (Article or stored summaries), for order_key.

    The newest dated article of a list stands above every undated one in the order, so
    the feeds (the first `limit` of the index's order) find the index's value."""
    dated = [
        a.published
        for a in articles
        if a.published is not None and a.precision is not Precision.UNKNOWN
    ]
    return max(dated) if dated else None


# An article's place in the one order: sort by it, reversed (see order_key).
OrderKey = tuple[datetime, bool, datetime, str]


def order_key(
    published: datetime | None,
    precision: Precision,
    first_seen_at: datetime,
    article_id: str,
    *,
    tz: tzinfo,
    newest: datetime | None,
) -> OrderKey:
    """Where an article stands in the index, the feeds and the digest: sort by this key,
    reversed.

    A dated article counts from when it is dated (`dated_at`: its publish time, midday of
    its day when the dump gave no time). An article whose date is unknown stands after
    the dated ones of the day (in `tz`, the site's) syndicate first saw it, or of the day
    of `newest` (newest_published of the articles ordered) when that is earlier (a
    future date, a typo, changes nothing: the day first seen is the earlier). An editor
    does not lead with a story nobody can date (an archive read late: its undated stories
    are as old as its others, for all anyone knows), nor bury it under the day before.
    Among themselves, the last seen first. On a tie a dated article comes first, then the
    larger id.
    """
    when = dated_at(published, precision, first_seen_at)
    if when is not None:
        when = when.astimezone(UTC)
        return when, True, when, article_id
    try:
        day = first_seen_at.astimezone(tz).date()
        if newest is not None:
            day = min(day, newest.astimezone(tz).date())
        day_start = datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)
    except OverflowError:  # a date at an end of the calendar (a hostile dump's)
        day_start = first_seen_at.astimezone(UTC)
    return day_start, False, first_seen_at.astimezone(UTC), article_id


# The day a teaser opens with ("Hôm nay 21/11", "Sáng nay 30/10", "Ngày 27.10.2024").
_TEASER_DAY = re.compile(
    r"(?:(?:sáng|chiều|tối|trưa|đêm|rạng sáng|hôm)\s+(?:nay|qua)|ngày)\s+"
    r"(\d{1,2})[/.-](\d{1,2})(?:[/.-](\d{4}))?\b",
    re.IGNORECASE,
)


def teaser_day(text: str, *, near: date) -> date | None:
    """The day a teaser's opening words give, the year (when missing) chosen nearest `near`."""
    match = _TEASER_DAY.match(text)
    if match is None:
        return None
    day, month = int(match.group(1)), int(match.group(2))
    years = [int(match.group(3))] if match.group(3) else [near.year - 1, near.year, near.year + 1]
    found: list[date] = []
    for year in years:
        try:
            found.append(date(year, month, day))
        except ValueError:
            continue
    return min(found, key=lambda d: abs((d - near).days)) if found else None


# A teaser's or lead's opening relative day: "Sáng nay 1/11", "Hôm qua", "Chiều qua 30-10";
# "Yesterday", "This morning". Only at the start: the dateline's words.
# The date may stand in brackets or after a comma, as datelines often give it: "Sáng nay
# (1/11), UBND ...", "Sáng nay, 1/11, UBND ...".
_TEXT_DATE = r"\d{1,2}[/.-]\d{1,2}(?:[/.-]\d{4})?"
_RELATIVE_DAY_VI = re.compile(
    r"(?P<when>rạng sáng|sáng|trưa|chiều|tối|đêm|hôm)\s+(?P<rel>nay|qua)\b"
    rf"(?P<date>\s+(?:\((?P<bracketed>{_TEXT_DATE})\)|(?P<bare>{_TEXT_DATE})\b)"
    rf"|\s*,\s*(?P<after_comma>{_TEXT_DATE})\b)?",
    re.IGNORECASE,
)
_RELATIVE_DAY_EN = re.compile(
    r"(?P<rel>today|yesterday|this morning|this afternoon|this evening|tonight|last night)\b",
    re.IGNORECASE,
)
# After an English relative day, what makes it the sentence's subject ("Today's vote",
# "Today is the last day"): the date alone takes its place, not "On <date>".
_EN_SUBJECT = re.compile(
    r"(?:['\u2019]s\b|\s+(?:is|was|will|has|had|marks|marked|saw|sees|brings|brought)\b)",
    re.IGNORECASE,
)
_BEFORE = ("qua", "yesterday", "last night")  # the day before the one written on


def settle_relative_day(text: str, *, written: date | None, day: date) -> str:
    """`text` as read on `day`: an opening relative day word ("Sáng nay 1/11", "Hôm qua")
    rewritten when the text was not written on `day` ("Sáng 1/11", "Ngày 15/11", "On
    October 31"); kept when it was, or when nothing says which day it names.

    `written` is the day the text was written on (its story's publish day), None when
    unknown; an explicit date after the word ("Sáng nay 1/11") says it too.
    """
    try:
        return _settled(text, written, day)
    except OverflowError:  # a day at an end of the calendar (a hostile dump's)
        return text


def _settled(text: str, written: date | None, day: date) -> str:
    match = _RELATIVE_DAY_VI.match(text)
    if match is not None:
        before = match["rel"].casefold() in _BEFORE
        given = match["bracketed"] or match["bare"] or match["after_comma"]
        named = teaser_day(f"ngày {given}", near=written or day) if given else None
        if named is not None:
            written = named + timedelta(days=1) if before else named
        elif written is not None:
            named = written - timedelta(days=1) if before else written
        # Kept when read the day it was written, or when its date comes after the day it
        # is read (no dateline: "Tối nay 3-1 là tỷ số" names a score, not 3 January).
        if written is None or named is None or written >= day:
            return text
        word = match["when"]
        head = "ngày" if word.casefold() == "hôm" else word.casefold()
        when = given or format_text_day(named, "vi")
        opening = f"{head} {when}"
        if text[:1].isupper():
            opening = opening[0].upper() + opening[1:]
        return opening + text[match.end() :]
    match = _RELATIVE_DAY_EN.match(text)
    if match is None or written is None or written >= day:
        return text
    named = written - timedelta(days=1) if match["rel"].casefold() in _BEFORE else written
    rest = text[match.end() :]
    if _EN_SUBJECT.match(rest):
        return format_text_day(named, "en") + rest
    return f"On {format_text_day(named, 'en')}" + rest


def prefix_related(keys: Sequence[str], key: str) -> bool:
    """Whether `key` is a prefix of one of `keys`, or one of them a prefix of `key`.

    `keys` must be sorted, none a prefix of another. Two binary searches, not a look at
    every key: a sidebar of 10,000 teasers compared each with those before it (50 million
    comparisons a page). A key that `key` begins sorts at or right after it; and a prefix
    of `key` is the greatest key below it, since any key between the two would begin with
    the prefix too.
    """
    at = bisect.bisect_left(keys, key)
    if at < len(keys) and keys[at].startswith(key):
        return True
    return at > 0 and key.startswith(keys[at - 1])


@dataclass(frozen=True, slots=True)
class OtherNews:
    """One "Other news" item: a teaser, and the page of the article it advertises if known."""

    teaser: Teaser
    link: StoryLink | None


_EARLIEST = datetime.min.replace(tzinfo=UTC)


def order_teasers(
    teasers: Iterable[Teaser],
    links: Mapping[str, StoryLink],
    *,
    newest: date | None,
    tz: tzinfo,
    exclude: Collection[str] = (),
    limit: int | None = None,
) -> list[OtherNews]:
    """The "Other news" of a page or digest: linked teasers first, newest first, then the others.

    `links` maps a teaser's story key to the article it advertises. A teaser linking to an
    article in `exclude` (shown already) is left out, and so is an unlinked one whose
    opening words date it after `newest` (a sidebar scraped weeks later). Duplicates (one
    key a prefix of another, or the same article) count once. At most `limit` items.
    """
    linked: list[OtherNews] = []
    unlinked: list[OtherNews] = []
    keys: list[str] = []  # sorted, none a prefix of another (see prefix_related)
    targets: set[str] = set()
    for teaser in teasers:
        key = story_key(teaser.text)
        if not key or prefix_related(keys, key):
            continue
        bisect.insort(keys, key)
        link = links.get(key)
        if link is not None:
            if link.id in exclude or link.id in targets:
                continue
            targets.add(link.id)
            linked.append(OtherNews(teaser, link))
            continue
        if newest is not None:
            day = teaser_day(teaser.text, near=newest)
            if day is not None and day > newest:
                continue
        unlinked.append(OtherNews(teaser, None))
    linked.sort(
        key=lambda n: (
            order_key(
                n.link.published,
                n.link.precision,
                n.link.first_seen_at,
                n.link.id,
                tz=tz,
                newest=None,  # undated articles among the links: by the day first seen
            )
            if n.link is not None
            else (_EARLIEST, False, _EARLIEST, "")
        ),
        reverse=True,
    )
    items = linked + unlinked
    return items if limit is None else items[:limit]

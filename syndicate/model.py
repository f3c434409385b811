"""Model: the plain, immutable values that flow between stages."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from typing import Any


class Precision(StrEnum):
    """How much of an article's publish time is known."""

    DATETIME = "datetime"  # date and time of day from the publish line
    DATE = "date"  # a full date, no time of day
    INFERRED_YEAR = "inferred-year"  # day/month from the text, year inferred from other dates
    UNKNOWN = "unknown"


class BlockKind(StrEnum):
    PARAGRAPH = "paragraph"
    CAPTION = "caption"


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
            "teasers": [{"dateline": t.dateline, "text": t.text} for t in self.teasers],
            "source": self.source,
        }

    def to_record(self) -> dict[str, Any]:
        """A lossless JSON-able dict, read back by `from_record`."""
        # Built directly (not from to_dict): it runs once per parsed dump.
        return {
            "id": self.id,
            "slug": self.slug,
            "title": self.title,
            "title_derived": self.title_derived,
            "published": self.published.isoformat() if self.published else None,
            "published_precision": self.precision.value,
            "author": self.author,
            "teasers": [{"dateline": t.dateline, "text": t.text} for t in self.teasers],
            "source": self.source,
            "body": [[b.kind.value, b.text] for b in self.body],
            "language": self.language,
            "dateline": self.dateline,
            "head": self.head,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Article:
        published = record["published"]
        return cls(
            id=record["id"],
            slug=record["slug"],
            title=record["title"],
            title_derived=bool(record["title_derived"]),
            published=datetime.fromisoformat(published) if published else None,
            precision=Precision(record["published_precision"]),
            body=tuple(Block(BlockKind(kind), text) for kind, text in record["body"]),
            author=record["author"],
            teasers=tuple(Teaser(t["dateline"], t["text"]) for t in record["teasers"]),
            source=record["source"],
            language=record["language"],
            dateline=record.get("dateline"),
            head=record.get("head"),  # records stored before heads existed have none
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

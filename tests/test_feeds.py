"""Feeds stage: RSS / Atom / JSON Feed bytes, read back with feedparser."""

from __future__ import annotations

import dataclasses
import email.utils
import html
import json
import re
import unicodedata
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import feedparser
import pytest

from syndicate.feeds import FeedInfo, build_content_html, build_feed, item_id
from syndicate.model import Article, Block, BlockKind, Precision, dated_at, shown_blocks

TZ = ZoneInfo("Asia/Ho_Chi_Minh")
BASE = "https://news.example.org/"
INFO = FeedInfo(
    title="Tin mới Quảng Trị",
    description="Tin tức mới nhất, tổng hợp bởi syndicate.",
    base_url=BASE,
    language="vi",
    timezone="Asia/Ho_Chi_Minh",
)
HOSTILE_TITLE = "<script>alert('x')</script> ]]> {{ 7*7 }} & Đông Hà"
HOSTILE_BODY = "Sáng nay <b>đậm</b> ]]> {{ 7*7 }} {% raw %} & &amp; tại TP. Đông Hà."
SEEN = datetime(2024, 1, 1, tzinfo=UTC)
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?([+-]\d\d:\d\d|Z)$")


def _article(
    n: int,
    *,
    title: str | None = None,
    body: tuple[Block, ...] | None = None,
    published: datetime | None = None,
    precision: Precision = Precision.DATETIME,
    author: str | None = "Trúc Phương",
    language: str = "vi",
) -> Article:
    return Article(
        id=f"{n:032x}",
        slug=f"bai-{n}",
        title=title or f"Bài số {n}: hội nghị ở Đông Hà",
        title_derived=False,
        published=published,
        precision=precision if published else Precision.UNKNOWN,
        body=body
        or (
            Block(BlockKind.PARAGRAPH, f"Sáng nay, bài {n} mở đầu tại TP. Đông Hà."),
            Block(BlockKind.CAPTION, "Quang cảnh hội thảo - Ảnh: T.P"),
            Block(BlockKind.PARAGRAPH, "Đoạn thứ hai của bài viết."),
        ),
        author=author,
        language=language,
    )


@pytest.fixture
def articles() -> list[Article]:
    day = datetime(2024, 10, 31, 9, 15, tzinfo=TZ)
    return [
        _article(1, published=day),
        _article(2, published=day - timedelta(days=1), author=None),
        _article(
            3,
            title=HOSTILE_TITLE,
            body=(
                Block(BlockKind.PARAGRAPH, HOSTILE_BODY),
                Block(BlockKind.CAPTION, "<img src=x onerror=alert(1)> - Ảnh: X"),
            ),
            published=day - timedelta(hours=3),
        ),
        _article(4, published=None),
        _article(
            5,
            title="Hội nghị tổng kết",
            published=datetime(2024, 10, 29, tzinfo=TZ),
            precision=Precision.INFERRED_YEAR,
            language="en",
        ),
    ]


def _build(articles: list[Article], kind: str, **kw: object) -> bytes:
    options: dict[str, object] = {
        "now": datetime(2024, 11, 1, 6, 0, tzinfo=UTC),
        "info": INFO,
        "limit": 50,
        # Where the build would write each page (it passes the paths it wrote).
        "page_urls": {a.id: f"{INFO.base_url}articles/{a.slug}.html" for a in articles},
        # When the build first saw each (it places the undated): before any publish date.
        "first_seen": dict.fromkeys((a.id for a in articles), SEEN),
    }
    options.update(kw)
    return build_feed(articles, kind=kind, **options)  # type: ignore[arg-type]


def _dated(article: Article) -> datetime:
    """When a feed dates `article`, first seen at SEEN (a date alone: midday of the day)."""
    when = dated_at(article.published, article.precision, SEEN)
    assert when is not None
    return when


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


@pytest.mark.parametrize("kind", ["rss", "atom"])
def test_xml_feed_reads_back_with_every_entry_intact(articles: list[Article], kind: str) -> None:
    parsed = feedparser.parse(_build(articles, kind))
    assert parsed.bozo == 0, parsed.get("bozo_exception")
    by_id = {a.id: a for a in articles}
    assert len(parsed.entries) == len(articles)
    for entry in parsed.entries:
        article = next(a for a in by_id.values() if item_id(a.id) == entry.id)
        assert _nfc(entry.title) == article.title
        assert entry.link == f"{BASE}articles/{article.slug}.html"
        # No byline, no author: the site is not one (rss2email would show "Site: Site").
        assert entry.get("author") == article.author
        summary = html.unescape(entry.summary) if kind == "rss" else entry.summary
        assert _nfc(summary) == article.lead
        content = entry.content[0].value
        for block in shown_blocks(article.body, language=article.language):
            assert html.escape(block.text, quote=False) in content
        if article.published is None:
            assert "published" not in entry
        else:
            assert entry.published_parsed[:6] == _dated(article).astimezone(UTC).timetuple()[:6]


def test_rss_uses_rfc822_dates_self_link_and_the_site_as_channel_link(
    articles: list[Article],
) -> None:
    data = _build(articles, "rss")
    text = data.decode("utf-8")
    parsed = feedparser.parse(data)
    assert parsed.feed.link == BASE
    assert f'<atom:link href="{BASE}rss.xml" rel="self" type="application/rss+xml"/>' in text
    assert parsed.feed.language == "vi"
    for value in re.findall(r"<(?:pubDate|lastBuildDate)>([^<]+)<", text):
        assert email.utils.parsedate_to_datetime(value).tzinfo is not None
    # content:encoded is present for every item (feedgen drops it without a description).
    assert text.count("<content:encoded>") == len(articles)
    assert text.count('<guid isPermaLink="false">urn:uuid:') == len(articles)


def test_atom_has_rfc3339_dates_authors_and_self_link(articles: list[Article]) -> None:
    data = _build(articles, "atom")
    text = data.decode("utf-8")
    for value in re.findall(r"<(?:updated|published)>([^<]+)<", text):
        assert RFC3339.match(value), value
    # The feed's own (RFC 4287 wants one when an entry has none), then each byline's.
    assert text.count("<author>") == 1 + sum(1 for a in articles if a.author)
    assert text.count(f"<name>{INFO.title}</name>") == 1
    assert f'<link href="{BASE}atom.xml" rel="self" type="application/atom+xml"/>' in text
    assert '<content type="html">' in text
    assert text.count('<entry xml:lang="vi">') == len(articles) - 1
    assert text.count('<entry xml:lang="en">') == 1
    # feedgen drops rel and type from entry links; they are put back.
    assert text.count('.html" rel="alternate" type="text/html"/>') == len(articles)
    parsed = feedparser.parse(data)
    assert [e.title_detail.language for e in parsed.entries].count("en") == 1


def test_json_feed_follows_version_1_1(articles: list[Article]) -> None:
    feed = json.loads(_build(articles, "json"))
    assert list(feed) == [
        "version",
        "title",
        "home_page_url",
        "feed_url",
        "description",
        "language",
        "authors",
        "items",
    ]
    assert feed["version"] == "https://jsonfeed.org/version/1.1"
    assert feed["feed_url"] == f"{BASE}feed.json"
    assert feed["home_page_url"] == BASE
    ids = [item["id"] for item in feed["items"]]
    assert len(set(ids)) == len(ids)
    first = feed["items"][0]
    assert set(first) == {
        "id",
        "url",
        "title",
        "content_html",
        "summary",
        "date_published",
        "date_modified",
        "authors",
        "language",
    }
    assert RFC3339.match(first["date_published"])
    no_byline = next(i for i in feed["items"] if i["title"].startswith("Bài số 2"))
    assert "authors" not in no_byline
    undated = feed["items"][-1]
    assert "date_published" not in undated
    assert [i["language"] for i in feed["items"]].count("en") == 1


@pytest.mark.parametrize("kind", ["rss", "atom", "json"])
def test_hostile_text_shows_as_text_in_every_feed(articles: list[Article], kind: str) -> None:
    data = _build(articles, kind)
    text = data.decode("utf-8")
    if kind == "json":
        # JSON Feed title and summary are plain text by the spec; content_html is HTML.
        item = next(i for i in json.loads(data)["items"] if i["title"] == HOSTILE_TITLE)
        assert item["summary"] == HOSTILE_BODY
        assert html.escape(HOSTILE_BODY, quote=False) in item["content_html"]
        assert "<img" not in item["content_html"]
        assert "<b>" not in item["content_html"]
        return
    assert "<script>" not in text
    assert "<img" not in text
    assert "<b>" not in text
    assert "]]>" not in text
    entry = next(e for e in feedparser.parse(data).entries if "alert" in e.title)
    assert entry.title == HOSTILE_TITLE
    # The content, read as HTML by a feed reader, shows the markup as text.
    assert "&lt;b&gt;đậm&lt;/b&gt;" in entry.content[0].value
    assert "{{ 7*7 }}" in entry.content[0].value


def test_content_html_escapes_each_paragraph_and_marks_captions() -> None:
    article = _article(
        9,
        body=(
            Block(BlockKind.PARAGRAPH, "a < b & c"),
            Block(BlockKind.CAPTION, "Ảnh <x> - Ảnh: T.P"),
        ),
    )
    assert build_content_html(article) == (
        "<p>a &lt; b &amp; c</p>\n"
        '<p class="photo-note"><em>Ảnh trong bài gốc: Ảnh &lt;x&gt;</em></p>'
    )


@pytest.mark.parametrize("kind", ["rss", "atom", "json"])
def test_items_are_newest_first_undated_last_and_limited(
    articles: list[Article], kind: str
) -> None:
    data = _build(list(reversed(articles)), kind, limit=4)
    if kind == "json":
        ids = [i["id"] for i in json.loads(data)["items"]]
    else:
        ids = [e.id for e in feedparser.parse(data).entries]
    assert ids == [item_id(articles[n].id) for n in (0, 2, 1, 4)]
    everything = _build(articles, kind, limit=50)
    last = (
        json.loads(everything)["items"][-1]["id"]
        if kind == "json"
        else feedparser.parse(everything).entries[-1].id
    )
    assert last == item_id(articles[3].id)  # the undated one


@pytest.mark.parametrize("kind", ["rss", "atom", "json"])
def test_items_are_in_the_index_order_for_ties_and_undated_articles(kind: str) -> None:
    """model.order_key, as the index and the digest: on a tie the larger id first; an
    undated article after the dated ones of the day it was first seen (it led them all,
    placed where it was first seen)."""
    at = datetime(2024, 10, 31, 9, 15, tzinfo=TZ)
    tied = [_article(n, published=at) for n in (1, 2)]
    undated = [_article(n, published=None) for n in (3, 4)]
    older = _article(5, published=at - timedelta(hours=1))
    articles = [*tied, *undated, older]
    first_seen = {a.id: (at if a in undated else SEEN) for a in articles}
    data = _build(articles, kind, first_seen=first_seen)
    if kind == "json":
        ids = [i["id"] for i in json.loads(data)["items"]]
    else:
        ids = [e.id for e in feedparser.parse(data).entries]
    assert ids == [item_id(a.id) for a in (tied[1], tied[0], older, undated[1], undated[0])]


@pytest.mark.parametrize("kind", ["rss", "atom", "json"])
def test_feed_bytes_do_not_depend_on_input_order(articles: list[Article], kind: str) -> None:
    assert _build(articles, kind) == _build(list(reversed(articles)), kind)


def test_feed_updated_is_the_newest_article_date_never_the_clock(
    articles: list[Article],
) -> None:
    later = datetime(2030, 1, 1, tzinfo=UTC)
    for kind in ("rss", "atom", "json"):
        assert _build(articles, kind) == _build(articles, kind, now=later)
    atom = feedparser.parse(_build(articles, "atom"))
    assert atom.feed.updated == "2024-10-31T09:15:00+07:00"
    rss = feedparser.parse(_build(articles, "rss"))
    assert rss.feed.updated == "Thu, 31 Oct 2024 09:15:00 +0700"


def test_feed_updated_falls_back_to_now_without_dated_articles() -> None:
    now = datetime(2024, 11, 1, 6, 0, tzinfo=UTC)
    atom = feedparser.parse(_build([_article(1, published=None)], "atom", now=now))
    assert atom.feed.updated == "2024-11-01T13:00:00+07:00"
    assert atom.entries[0].updated == "2024-11-01T13:00:00+07:00"
    empty = feedparser.parse(_build([], "rss", now=now))
    assert empty.bozo == 0
    assert empty.entries == []


def test_item_ids_never_depend_on_base_url_or_paths(articles: list[Article]) -> None:
    other = FeedInfo("x", "y", "http://127.0.0.1:9/", "vi", "Asia/Ho_Chi_Minh")
    first = [e.id for e in feedparser.parse(_build(articles, "atom")).entries]
    second = [e.id for e in feedparser.parse(_build(articles, "atom", info=other)).entries]
    assert first == second
    assert item_id("abc") == "urn:uuid:" + item_id("abc").removeprefix("urn:uuid:")
    assert item_id("abc") != item_id("abd")


def test_page_urls_given_by_the_site_are_used(articles: list[Article]) -> None:
    urls = {a.id: f"{BASE}articles/x-{a.id[-6:]}.html" for a in articles}
    parsed = feedparser.parse(_build(articles, "rss", page_urls=urls))
    assert sorted(e.link for e in parsed.entries) == sorted(urls.values())


def test_naive_now_is_refused(articles: list[Article]) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        _build(articles, "rss", now=datetime(2024, 11, 1))  # noqa: DTZ001


@pytest.mark.parametrize(
    ("kind", "name"), [("rss", "rss.xml"), ("atom", "atom.xml"), ("json", "feed.json")]
)
def test_feeds_match_golden_files(
    articles: list[Article], kind: str, name: str, check_golden, now
) -> None:  # type: ignore[no-untyped-def]
    check_golden(name, _build(articles, kind, now=now))


@pytest.mark.parametrize("kind", ["rss", "atom", "json"])
def test_shared_hostile_articles_come_out_as_nfc_text(
    hostile_articles: list[Article], kind: str
) -> None:
    data = _build(hostile_articles, kind)
    text = data.decode("utf-8")
    assert "\r" not in text
    assert not re.search(r"^\s*Bcc:", text, re.MULTILINE)
    if kind == "json":
        items = json.loads(data)["items"]
        titles = [i["title"] for i in items]
        contents = [i["content_html"] for i in items]
    else:
        parsed = feedparser.parse(data)
        assert parsed.bozo == 0, parsed.get("bozo_exception")
        titles = [e.title for e in parsed.entries]
        contents = [e.content[0].value for e in parsed.entries]
        assert "<script" not in text
        assert "<img" not in text
    assert len(titles) == len(hostile_articles)
    for title in titles:
        assert title == unicodedata.normalize("NFC", title)
        assert "\n" not in title
    assert "Tin khẩn Bcc: evil@example.com" in titles
    assert "Quảng Trị đón bão số 6: Đông Hà ngập sâu" in titles  # built in NFD, output NFC
    joined = "\n".join(contents)
    assert joined == unicodedata.normalize("NFC", joined)
    assert "&lt;script&gt;alert(" in joined
    assert "&amp;amp;" in joined  # the literal five characters "&amp;" stay text
    for tag in ("<script", "<img", "<b>"):
        assert tag not in joined


@pytest.mark.parametrize("kind", ["rss", "atom"])
def test_the_repo_seeds_read_back_intact(sample_articles: list[Article], kind: str) -> None:
    if not sample_articles:
        pytest.skip("no seeds/ in this checkout")
    unique = list({a.id: a for a in sample_articles}.values())
    parsed = feedparser.parse(_build(unique, kind))
    assert parsed.bozo == 0, parsed.get("bozo_exception")
    assert len(parsed.entries) == len(unique)
    by_item = {item_id(a.id): a for a in unique}
    for entry in parsed.entries:
        article = by_item[entry.id]
        assert _nfc(entry.title) == article.title
        assert entry.link == f"{BASE}articles/{article.slug}.html"
        assert ("published" in entry) == (article.published is not None)


@pytest.mark.parametrize("precision", [Precision.DATE, Precision.INFERRED_YEAR])
def test_a_date_only_article_is_dated_at_noon_or_when_first_seen_that_morning_never_midnight(
    precision: Precision,
) -> None:
    """A dump with a date and no time was dated 00:00 +0700: feed readers showed "midnight",
    and readers west of Vietnam the day before. Feeds need a time (RFC 822 / RFC 3339):
    noon of that day in the site's timezone, or when syndicate first saw the article if that
    was earlier the same day (it was out by then)."""
    day = datetime(2024, 10, 29, tzinfo=TZ)
    late = _article(1, published=day, precision=precision)
    morning = _article(2, published=day, precision=precision)
    first_seen = {late.id: day + timedelta(days=3), morning.id: day + timedelta(hours=8.5)}
    for kind in ("rss", "atom", "json"):
        data = _build([late, morning], kind, first_seen=first_seen)
        if kind == "json":
            dates = {i["id"]: i["date_published"] for i in json.loads(data)["items"]}
        else:
            dates = {e.id: e.published for e in feedparser.parse(data).entries}
        expected = (
            ("2024-10-29T12:00:00+07:00", "2024-10-29T08:30:00+07:00")
            if kind != "rss"
            else ("Tue, 29 Oct 2024 12:00:00 +0700", "Tue, 29 Oct 2024 08:30:00 +0700")
        )
        assert (dates[item_id(late.id)], dates[item_id(morning.id)]) == expected, kind
        # The feed lists them in that order too: the one order places them at those times.
        order = list(dates)
        assert order == [item_id(late.id), item_id(morning.id)], kind


def _long_article(body: tuple[Block, ...], *, head: str | None = None) -> Article:
    return dataclasses.replace(
        _article(1, body=body, published=datetime(2024, 10, 31, tzinfo=TZ)), head=head
    )


def _paragraphs(count: int) -> tuple[Block, ...]:
    """`count` paragraphs of about 1.4 KB each (UTF-8), numbered."""
    text = "Người dân Quảng Trị đón tin vui về mùa màng năm nay, đoạn {n}. " * 20
    return tuple(Block(BlockKind.PARAGRAPH, text.format(n=n)) for n in range(count))


@pytest.mark.parametrize("kind", ["rss", "atom", "json"])
def test_an_entry_past_the_content_limit_carries_its_opening_and_a_link_to_the_rest(
    kind: str,
) -> None:
    """A dump of a whole report (the loader takes up to a million characters) must not make
    every reader of the feed fetch megabytes: the entry keeps whole paragraphs up to
    CONTENT_LIMIT and links to its page, which has the whole text."""
    from syndicate.feeds import CONTENT_LIMIT

    long = _long_article(_paragraphs(600))  # about 840 KB of HTML
    page = f"{BASE}articles/{long.slug}.html"
    whole = build_content_html(long)
    assert len(whole.encode()) > 3 * CONTENT_LIMIT
    data = _build([long], kind)
    assert len(data) < 1.5 * CONTENT_LIMIT
    if kind == "json":
        content = json.loads(data)["items"][0]["content_html"]
    else:
        content = feedparser.parse(data).entries[0].content[0].value
    assert len(content.encode()) <= CONTENT_LIMIT
    paragraphs = content.split("\n")
    assert paragraphs[:-1] == whole.split("\n")[: len(paragraphs) - 1]  # whole, in order
    assert len(paragraphs) > 100
    assert paragraphs[-1] == (
        f'<p class="whole-article"><a href="{page}">Đọc toàn bài trên trang →</a></p>'
    )
    # An article of ordinary length is whole, with no link.
    short = _article(2)
    assert build_content_html(short, page_url=page) == build_content_html(short)


def test_one_paragraph_past_the_limit_is_cut_and_a_summary_past_its_limit_too() -> None:
    from syndicate.feeds import CONTENT_LIMIT, SUMMARY_LIMIT

    wall = "<>" * 400_000  # one "word" that escapes to 3.2 MB
    article = _long_article((Block(BlockKind.PARAGRAPH, wall),), head="Tóm tắt dài " * 500)
    page = f"{BASE}articles/bai-1.html"
    # The head fits: it is kept whole; the paragraph past the limit goes.
    head, link = build_content_html(article, page_url=page).split("\n")
    assert head == f"<p>{'Tóm tắt dài ' * 499}Tóm tắt dài</p>"
    assert link.startswith(f'<p class="whole-article"><a href="{page}">')
    # Nothing before it: its opening words, escaped.
    content = build_content_html(dataclasses.replace(article, head=None), page_url=page)
    assert len(content.encode()) <= CONTENT_LIMIT
    cut, link = content.split("\n")
    assert cut.startswith("<p>&lt;&gt;&lt;&gt;")
    assert cut.endswith("…</p>")
    assert link.startswith(f'<p class="whole-article"><a href="{page}">')
    entry = json.loads(_build([article], "json"))["items"][0]
    assert len(entry["summary"]) <= SUMMARY_LIMIT
    assert entry["summary"].endswith("…")
    assert len(json.dumps(entry)) < 1.5 * CONTENT_LIMIT

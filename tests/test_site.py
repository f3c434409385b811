"""Site stage: article and index pages, dates for Vietnamese readers, slugs."""

from __future__ import annotations

import itertools
import re
import shutil
import unicodedata
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from syndicate.config import site_templates_dir
from syndicate.model import Article, Block, BlockKind, Precision
from syndicate.site import (
    IndexEntry,
    SiteInfo,
    SiteRenderer,
    archive_path,
    article_url,
    assign_slugs,
    format_published,
    index_pages,
)

TZ = ZoneInfo("Asia/Ho_Chi_Minh")
BASE = "https://news.example.org/"
INFO = SiteInfo(
    title="Tin mới Quảng Trị",
    description="Tin tức mới nhất, tổng hợp bởi syndicate.",
    base_url=BASE,
    language="vi",
    timezone="Asia/Ho_Chi_Minh",
    page_size=30,
)
HOSTILE_TITLE = "<script>alert('x')</script> ]]> {{ 7*7 }} & Đông Hà"
HOSTILE_BODY = "Sáng nay <b>đậm</b> {{ 7*7 }} {% raw %} & tại TP. Đông Hà."


class _Page(HTMLParser):
    """Collects what the checks need: tags, attributes, text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(data: bytes) -> _Page:
    page = _Page()
    page.feed(data.decode("utf-8"))
    return page


@pytest.fixture
def renderer() -> SiteRenderer:
    return SiteRenderer(INFO, site_templates_dir())


@pytest.fixture
def hostile() -> Article:
    return Article(
        id="f" * 32,
        slug="script-alert",
        title=HOSTILE_TITLE,
        title_derived=False,
        published=datetime(2024, 10, 31, 9, 15, tzinfo=TZ),
        precision=Precision.DATETIME,
        body=(
            Block(BlockKind.PARAGRAPH, HOSTILE_BODY),
            Block(BlockKind.CAPTION, "<img src=x onerror=alert(1)> Quang cảnh - Ảnh: T.P"),
            Block(BlockKind.PARAGRAPH, "Đoạn hai ]]> kết thúc."),
        ),
        author="Trúc <i>Phương</i>",
    )


def test_article_page_shows_hostile_text_as_text(renderer: SiteRenderer, hostile: Article) -> None:
    data = renderer.render_article(hostile, slug="script-alert")
    text = data.decode("utf-8")
    assert "<script" not in text
    assert "<img" not in text
    assert "<b>" not in text
    assert "<i>" not in text
    assert "49" not in text  # {{ 7*7 }} was never evaluated
    page = _parse(data)
    shown = "".join(page.text)
    assert HOSTILE_TITLE in shown
    assert HOSTILE_BODY in shown
    assert "Trúc <i>Phương</i>" in shown


def test_article_page_is_self_contained_html5(renderer: SiteRenderer, hostile: Article) -> None:
    data = renderer.render_article(hostile, slug="script-alert")
    text = data.decode("utf-8")
    assert text.startswith('<!DOCTYPE html>\n<html lang="vi">')
    page = _parse(data)
    tags = [tag for tag, _ in page.tags]
    assert ("meta", {"charset": "utf-8"}) in page.tags
    assert ("meta", {"name": "viewport", "content": "width=device-width, initial-scale=1"}) in (
        page.tags
    )
    assert "style" in tags
    assert "script" not in tags
    for tag, attrs in page.tags:
        assert "src" not in attrs, tag
        if tag == "link" and attrs.get("rel") == "stylesheet":
            pytest.fail("external stylesheet")
    assert ("link", {"rel": "canonical", "href": f"{BASE}articles/script-alert.html"}) in page.tags
    hrefs = {attrs.get("href") for tag, attrs in page.tags if tag == "a"}
    assert {"../index.html", "../rss.xml", "../atom.xml", "../feed.json"} <= hrefs
    assert ("article", {"lang": "vi"}) in page.tags
    assert '<p class="photo-note">' in text


def test_article_page_shows_the_date_for_vietnamese_readers(
    renderer: SiteRenderer, hostile: Article
) -> None:
    text = renderer.render_article(hostile, slug="x").decode("utf-8")
    assert (
        '<time datetime="2024-10-31T09:15:00+07:00">Thứ Năm, 31/10/2024, 09:15 (GMT+7)</time>'
        in text
    )
    assert "Tác giả: Trúc &lt;i&gt;Phương&lt;/i&gt;" in text


@pytest.mark.parametrize(
    ("published", "precision", "locale", "expected"),
    [
        (datetime(2024, 10, 31, 2, 15, tzinfo=UTC), Precision.DATETIME, "vi",
         "Thứ Năm, 31/10/2024, 09:15 (GMT+7)"),
        (datetime(2024, 10, 31, tzinfo=TZ), Precision.DATE, "vi", "Thứ Năm, 31/10/2024"),
        (datetime(2024, 10, 29, tzinfo=TZ), Precision.INFERRED_YEAR, "vi",
         "Thứ Ba, 29/10/2024"),
        (None, Precision.UNKNOWN, "vi", "Chưa rõ ngày"),
        (None, Precision.UNKNOWN, "en", "Date unknown"),
        (datetime(2024, 10, 31, 2, 15, tzinfo=UTC), Precision.DATETIME, "en",
         "Thursday, October 31, 2024, 9:15\u202fAM (GMT+7)"),
    ],
)  # fmt: skip
def test_format_published_by_precision(
    published: datetime | None, precision: Precision, locale: str, expected: str
) -> None:
    assert format_published(published, precision, locale=locale, tz=TZ) == expected


def _entries(count: int) -> list[IndexEntry]:
    start = datetime(2024, 10, 31, 9, 0, tzinfo=TZ)
    return [
        IndexEntry(
            id=f"{n:032x}",
            slug=f"bai-{n}",
            title=f"Bài {n} <em>",
            published=start - timedelta(hours=n) if n % 5 else None,
            precision=Precision.DATETIME if n % 5 else Precision.UNKNOWN,
            author=None if n % 2 else "NHÓM PV",
        )
        for n in range(count)
    ]


def test_index_page_lists_entries_with_feed_autodiscovery(renderer: SiteRenderer) -> None:
    entries = _entries(3)
    data = renderer.render_index(entries, archive=None, archives=0)
    page = _parse(data)
    alternates = {
        attrs["type"]: attrs["href"]
        for tag, attrs in page.tags
        if tag == "link" and attrs.get("rel") == "alternate"
    }
    assert alternates == {
        "application/rss+xml": "rss.xml",
        "application/atom+xml": "atom.xml",
        "application/feed+json": "feed.json",
    }
    links = [attrs["href"] for tag, attrs in page.tags if tag == "a"]
    assert [link for link in links if link and link.startswith("articles/")] == [
        "articles/bai-0.html",
        "articles/bai-1.html",
        "articles/bai-2.html",
    ]
    text = data.decode("utf-8")
    assert "Bài 0 &lt;em&gt;" in text
    assert "Chưa rõ ngày" in text  # entry 0 is undated
    assert 'rel="next"' not in text


def test_archive_pages_link_back_and_on(renderer: SiteRenderer) -> None:
    # Three archive pages: page/3.html is the newest, page/1.html the oldest.
    first = renderer.render_index(_entries(2), archive=None, archives=3).decode("utf-8")
    assert '<a href="page/3.html" rel="next">' in first
    assert 'rel="prev"' not in first
    newest = renderer.render_index(_entries(2), archive=3, archives=3).decode("utf-8")
    assert '<a href="../index.html" rel="prev">' in newest
    assert '<a href="../page/2.html" rel="next">' in newest
    assert 'href="../articles/bai-0.html"' in newest
    assert "<h1>Lưu trữ, trang 3</h1>" in newest
    assert '<link rel="canonical" href="https://news.example.org/page/3.html">' in newest
    middle = renderer.render_index(_entries(2), archive=2, archives=3).decode("utf-8")
    assert '<a href="../page/3.html" rel="prev">' in middle
    assert '<a href="../page/1.html" rel="next">' in middle
    oldest = renderer.render_index(_entries(1), archive=1, archives=3).decode("utf-8")
    assert '<a href="../page/2.html" rel="prev">' in oldest
    assert 'rel="next"' not in oldest
    # An archive page does not say how many there are: more of them leave it unchanged.
    assert renderer.render_index(_entries(2), archive=2, archives=7) == middle.encode()


def test_archive_pages_are_numbered_from_the_oldest() -> None:
    assert archive_path(4) == "page/4.html"

    def layout(total: int) -> list[tuple[str, int | None, int, int]]:
        return [(p.rel, p.archive, p.start, p.stop) for p in index_pages(total, 30)]

    assert layout(0) == [("index.html", None, 0, 0)]
    assert layout(30) == [("index.html", None, 0, 30)]
    assert layout(31) == [("index.html", None, 0, 30), ("page/1.html", 1, 30, 31)]
    assert layout(95) == [
        ("index.html", None, 0, 30),
        ("page/1.html", 1, 65, 95),  # the 30 oldest
        ("page/2.html", 2, 35, 65),
        ("page/3.html", 3, 30, 35),  # the newest archive page holds the rest
    ]
    assert {p.archives for p in index_pages(95, 30)} == {3}
    # One more article (the newest): index.html and page/3.html change, pages 1-2 keep
    # exactly the same articles (the list grew by one at its head).
    before = {p.rel: (p.start, p.stop) for p in index_pages(95, 30)}
    after = {p.rel: (p.start - 1, p.stop - 1) for p in index_pages(96, 30)}
    assert [rel for rel in before if before[rel] != after[rel]] == ["index.html", "page/3.html"]
    assert article_url("https://x.org", "a-b") == "https://x.org/articles/a-b.html"


def test_slug_collisions_get_a_stable_suffix_in_any_order() -> None:
    day = datetime(2024, 10, 31, tzinfo=TZ)
    items = [
        ("b" * 32, "hoi-nghi", day, None),
        ("a" * 32, "hoi-nghi", day + timedelta(days=1), None),
        ("c" * 32, "hoi-nghi", None, None),
        ("d" * 32, "khac", None, None),
    ]
    expected = {
        "b" * 32: "hoi-nghi",  # earliest published keeps the plain slug
        "a" * 32: "hoi-nghi-aaaaaa",
        "c" * 32: "hoi-nghi-cccccc",
        "d" * 32: "khac",
    }
    for order in itertools.permutations(items):
        assert assign_slugs(order) == expected


def test_an_older_article_seen_later_does_not_take_a_published_slug() -> None:
    day = datetime(2024, 10, 31, tzinfo=TZ)
    first_build = day + timedelta(days=2)
    items = [
        ("b" * 32, "hoi-nghi", day, first_build),
        ("a" * 32, "hoi-nghi", day - timedelta(days=5), first_build + timedelta(days=1)),
    ]
    for order in itertools.permutations(items):
        slugs = assign_slugs(order)
        assert slugs == {"b" * 32: "hoi-nghi", "a" * 32: "hoi-nghi-aaaaaa"}


def test_an_article_with_a_page_keeps_its_slug_when_the_plain_one_is_free_or_wanted() -> None:
    day = datetime(2024, 10, 31, tzinfo=TZ)
    items = [
        ("b" * 32, "hoi-nghi", day, day),  # seen first, but its page is suffixed already
        ("a" * 32, "hoi-nghi", day, day + timedelta(days=1)),  # has the plain page
        ("c" * 32, "khac", None, None),
    ]
    kept = {"b" * 32: "hoi-nghi-bbbbbb", "a" * 32: "hoi-nghi", "z" * 32: "khac"}
    expected = {"b" * 32: "hoi-nghi-bbbbbb", "a" * 32: "hoi-nghi", "c" * 32: "khac"}
    for order in itertools.permutations(items):
        assert assign_slugs(order, kept=kept) == expected
    # Alone in a build, a suffixed page stays where it is rather than move to the plain slug.
    assert assign_slugs(items[:1], kept=kept) == {"b" * 32: "hoi-nghi-bbbbbb"}
    assert assign_slugs(items[:1]) == {"b" * 32: "hoi-nghi"}


def test_slug_ties_go_to_the_smallest_id_and_suffixes_never_clash() -> None:
    items = [
        ("123456ff", "tin", None, None),
        ("123456aa", "tin", None, None),
        ("999999aa", "tin-123456ff", None, None),  # already owns what would be the suffixed slug
        ("00", "", None, None),
        ("11", "Không hợp lệ/..", None, None),
    ]
    slugs = assign_slugs(items)
    assert slugs["123456aa"] == "tin"
    assert slugs["999999aa"] == "tin-123456ff"
    assert slugs["123456ff"] not in {"tin", "tin-123456ff"}
    assert len(set(slugs.values())) == len(slugs)
    for slug in slugs.values():
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", slug)


def test_renderer_fingerprint_follows_settings() -> None:
    one = SiteRenderer(INFO, site_templates_dir())
    same = SiteRenderer(INFO, site_templates_dir())
    other = SiteRenderer(
        SiteInfo(INFO.title, INFO.description, "https://other.example/", "vi", INFO.timezone, 30),
        site_templates_dir(),
    )
    assert one.fingerprint == same.fingerprint != other.fingerprint


def test_pages_come_from_the_templates_the_fingerprint_covers(
    tmp_path: Path, hostile: Article
) -> None:
    # A template edited while a build runs does not reach that build's pages (their
    # fingerprint says which sources made them); the next build reads the edit, even in a
    # process that has rendered the folder before (a server, `send` after `build`).
    folder = tmp_path / "site"
    shutil.copytree(site_templates_dir(), folder)
    base = folder / "_base.html.j2"
    before = SiteRenderer(INFO, folder)
    base.write_text(base.read_text(encoding="utf-8").replace("<body", "<body data-v=2"), "utf-8")
    old_page = before.render_article(hostile, slug="x").decode()
    after = SiteRenderer(INFO, folder)
    new_page = after.render_article(hostile, slug="x").decode()
    assert "data-v=2" not in old_page
    assert "data-v=2" in new_page
    assert before.fingerprint != after.fingerprint
    assert SiteRenderer(INFO, folder).fingerprint == after.fingerprint


def test_english_site_chrome(hostile: Article) -> None:
    info = SiteInfo("News", "All the news.", BASE, "en", "Asia/Ho_Chi_Minh", 30)
    text = SiteRenderer(info, site_templates_dir()).render_article(hostile, slug="x").decode()
    assert '<html lang="en">' in text
    assert "By Trúc" in text  # English: "By Trúc Phương", not "By: Trúc Phương"


def test_pages_match_golden_files(renderer: SiteRenderer, hostile: Article, check_golden) -> None:  # type: ignore[no-untyped-def]
    check_golden("article.html", renderer.render_article(hostile, slug="script-alert"))
    # In build order: newest first, undated last.
    entries = sorted(
        _entries(4), key=lambda e: (e.published is None, e.published and -e.published.timestamp())
    )
    check_golden("index.html", renderer.render_index(entries, archive=None, archives=2))


def test_shared_hostile_articles_render_as_nfc_text(
    renderer: SiteRenderer, hostile_articles: list[Article]
) -> None:
    for article in hostile_articles:
        data = renderer.render_article(article, slug=article.slug)
        text = data.decode("utf-8")
        assert text == unicodedata.normalize("NFC", text)
        for tag in ("<script", "<img", "<b>", "<em>"):
            assert tag not in text
        assert "49" not in text
        (h1,) = re.findall(r"<h1>(.*?)</h1>", text, re.DOTALL)
        assert "\n" not in h1
        assert "\r" not in text
    entries = [
        IndexEntry(a.id, a.slug, a.title, a.published, a.precision, a.author)
        for a in hostile_articles
    ]
    index = renderer.render_index(entries, archive=None, archives=0).decode("utf-8")
    assert "Tin khẩn Bcc: evil@example.com</a>" in index
    assert "Quảng Trị đón bão số 6: Đông Hà ngập sâu" in index
    assert "&lt;script&gt;alert(1)&lt;/script&gt; Tin nóng &amp; lạnh" in index


def test_a_loader_article_renders_the_same_unchecked(sample_articles: list[Article]) -> None:
    """from_loader=True skips re-checking text the loader made clean: same bytes."""
    renderer = SiteRenderer(INFO, site_templates_dir())
    for article in sample_articles:
        assert renderer.render_article(article, slug="x", from_loader=True) == (
            renderer.render_article(article, slug="x")
        )


def _parsed_page(renderer: SiteRenderer, text: str) -> str:
    from syndicate.load import parse_dump

    article = parse_dump(text.encode(), source="x.txt", tz=TZ)
    return renderer.render_article(article, slug="x", from_loader=True).decode("utf-8")


def _after_h1(html: str) -> str:
    """The article's text from its H1 on, tags dropped, one line."""
    page = _parse(html.split("<h1>", 1)[1].encode())
    return " ".join(" ".join(page.text).split())


def test_head_is_the_standfirst_and_the_meta_description(renderer: SiteRenderer) -> None:
    html = _parsed_page(
        renderer,
        "Tiêu đề thật\n31/10/2024 09:15\nQTO - Tỉnh bàn chuyển đổi số <b>mạnh</b>.\n"
        "Đoạn thân bài đầu.\nĐoạn hai.\n",
    )
    assert (
        '<meta name="description" content="Tỉnh bàn chuyển đổi số &lt;b&gt;mạnh&lt;/b&gt;.">'
        in html
    )
    assert '<p class="standfirst">Tỉnh bàn chuyển đổi số &lt;b&gt;mạnh&lt;/b&gt;.</p>' in html
    assert html.index('class="standfirst"') < html.index("<p>Đoạn thân bài đầu.</p>")


def test_page_with_a_title_derived_from_the_lead_prints_its_words_once(
    renderer: SiteRenderer,
) -> None:
    html = _parsed_page(renderer, "{title}\n{publish}\n{head}\nAi sẽ thắng? Không ai biết.\nHết.\n")
    assert "<h1>Ai sẽ thắng?</h1>" in html
    assert _after_h1(html).count("Ai sẽ thắng?") == 1
    assert "<p>Không ai biết.</p>" in html
    # A lead that is all title leaves no empty paragraph behind.
    html = _parsed_page(renderer, "{title}\n{publish}\n{head}\nHội nghị tổng kết năm.\nHết.\n")
    assert "<h1>Hội nghị tổng kết năm</h1>" in html
    assert "<p></p>" not in html
    assert _after_h1(html).count("Hội nghị tổng kết năm") == 1


def test_page_with_a_cut_derived_title_goes_on_where_the_title_stopped(
    renderer: SiteRenderer,
) -> None:
    words = "Hội nghị tổng kết công tác chuyển đổi số của các cơ quan đảng và mặt trận tỉnh"
    html = _parsed_page(renderer, f"{{title}}\n{{publish}}\n{{head}}\n{words} {words}.\n")
    assert "<h1>Hội nghị tổng kết công tác chuyển đổi số" in html
    assert "<p>…tổng kết công tác chuyển đổi số của các cơ quan đảng và mặt trận tỉnh.</p>" in html


def test_page_with_a_derived_title_that_is_a_whole_quotation_goes_on_after_it(
    renderer: SiteRenderer,
) -> None:
    # The lead's first sentence is a quotation its speaker broke off ("…”"): the title is
    # all of it, uncut, and the paragraph goes on after it, not with "……”" (review23).
    html = _parsed_page(
        renderer,
        "{title}\n{publish}\n{head}\n“Chúng tôi sẽ cố gắng…” Ông Minh nói vậy.\nHết.\n",
    )
    assert "<h1>“Chúng tôi sẽ cố gắng…”</h1>" in html
    assert "<p>Ông Minh nói vậy.</p>" in html
    assert "……" not in html


def test_page_with_a_title_derived_from_the_head_shows_the_rest_of_the_head(
    renderer: SiteRenderer,
) -> None:
    html = _parsed_page(
        renderer,
        "{title}\n{publish}\nQTO - Tỉnh khen thưởng 20 tập thể. Lễ diễn ra tại Đông Hà.\n"
        "Thân bài.\n",
    )
    assert "<h1>Tỉnh khen thưởng 20 tập thể</h1>" in html
    assert '<p class="standfirst">Lễ diễn ra tại Đông Hà.</p>' in html
    assert "<p>Thân bài.</p>" in html


def test_lead_that_opens_with_an_adverbial_is_printed_whole(renderer: SiteRenderer) -> None:
    html = _parsed_page(
        renderer, "{title}\n{publish}\n{head}\nSáng nay 31/10, tỉnh khai mạc hội chợ.\nHết.\n"
    )
    assert "<h1>Tỉnh khai mạc hội chợ</h1>" in html
    assert "<p>Sáng nay 31/10, tỉnh khai mạc hội chợ.</p>" in html


_MARKUP_DUMP = """{title}
06/12/2026 08:00
QTO - Tóm tắt: "giá" <b>lúa</b> & 'gạo' tăng.
Mở đầu bài với "ngoặc kép", 'nháy đơn', <i>thẻ</i> & dấu và.
Quang cảnh buổi lễ <script>alert(1)</script> - Ảnh: T.P & "Nam"
Đoạn hai: a < b > c && d "" '' dài 21 km - xa.
Ảnh: Trúc Phương
Đoạn ba sau một chú thích chỉ có tên tác giả ảnh.
Trúc Phương
"""


@pytest.mark.parametrize("title", ['Tiêu đề <có> & "thẻ"', "{title}"])
def test_the_loaders_body_bytes_give_the_same_page(title: str) -> None:
    """render_article(body=...) puts the loader's UTF-8 text in as bytes, escaped as
    markupsafe escapes text (a derived title shortens the lead: the bytes are not used)."""
    from markupsafe import escape

    from syndicate.load import parse_dump_with_body
    from syndicate.text import photo_description, typeset

    renderer = SiteRenderer(INFO, site_templates_dir())
    article, body = parse_dump_with_body(
        _MARKUP_DUMP.format(title=title).encode(), source="x.txt", tz=TZ
    )
    page = renderer.render_article(article, slug="x", from_loader=True, body=body)
    assert page == renderer.render_article(article, slug="x", from_loader=True)
    assert page == renderer.render_article(article, slug="x")
    text = page.decode("utf-8")
    caption = next(b.text for b in article.body if b.kind is BlockKind.CAPTION)
    note = f"Ảnh trong bài gốc: {photo_description(caption)}"
    assert f'<p class="photo-note">{escape(typeset(note))}</p>' in text
    assert f"<p>{escape(typeset(article.body[-1].text))}</p>\n</article>" in text
    assert "<script>" not in text
    assert "<i>" not in text


def test_a_number_keeps_its_unit_and_a_spaced_dash_its_word_on_the_page(
    renderer: SiteRenderer,
) -> None:
    """On a phone "21 km" broke after the number and a line opened with "- xã hội" (a
    list bullet, to the eye): those spaces are no-break spaces in the body, the standfirst
    and the sidebar, whether the page is made from the loader's bytes or not."""
    from syndicate.load import parse_dump_with_body

    dump = (
        "Giải chạy ven biển dài 42 km\n31/10/2024 09:15\n"
        "QTO - Cự ly dài nhất 21 km, ngắn nhất 5 km.\n"
        "Các tổ chức chính trị - xã hội cùng tham gia, lượng mưa 312 mm trong 3 ngày.\n"
        "Trúc Phương\n"
        "QTO - Sáng nay 30/10, tỉnh khánh thành 12 km đường ven biển nối hai huyện...\n"
    )
    article, body = parse_dump_with_body(dump.encode(), source="x.txt", tz=TZ)
    for page in (
        renderer.render_article(article, slug="x", from_loader=True, body=body),
        renderer.render_article(article, slug="x"),
    ):
        text = "".join(_parse(page).text)
        assert "21\u00a0km, ngắn nhất 5\u00a0km." in text  # standfirst
        assert "chính trị\u00a0- xã hội" in text  # body
        assert "312\u00a0mm trong 3 ngày" in text  # "3 ngày": no unit, a plain space
        assert "12\u00a0km đường ven biển nối hai huyện…" in text  # sidebar, "…" for "..."
        assert "<h1>Giải chạy ven biển dài 42\u00a0km</h1>" in page.decode()  # headline
    index = renderer.render_index(
        [IndexEntry("a" * 32, "x", article.title, article.published, article.precision, None)],
        archive=None,
        archives=0,
    ).decode()
    assert ">Giải chạy ven biển dài 42\u00a0km</a></h2>" in index


def _edited_templates(tmp_path: Path, name: str, edits: list[tuple[str, str, str]]) -> Path:
    """A copy of the page templates with `edits` (file, old, new: each old found once)."""
    folder = tmp_path / name
    shutil.copytree(site_templates_dir(), folder)
    for file, old, new in edits:
        source = (folder / file).read_text(encoding="utf-8")
        assert source.count(old) == 1, (file, old)
        (folder / file).write_text(source.replace(old, new), encoding="utf-8")
    return folder


# The base template with the site-wide parts of `_chrome.html.j2` rendered inline, with
# each page, rather than given to it rendered once.
_CHROME_INLINE = [
    (
        "_base.html.j2",
        "<!DOCTYPE html>",
        '{% import "_chrome.html.j2" as inline with context %}<!DOCTYPE html>',
    ),
    ("_base.html.j2", "{{ chrome.feeds }}", "{{ inline.feeds() }}"),
    ("_base.html.j2", "{{ chrome.header }}", "{{ inline.header() }}"),
    ("_base.html.j2", "{{ chrome.footer }}", "{{ inline.footer() }}"),
]
# An article template whose block prints the base's block too (super() climbs the chain).
_SUPER_IN_ARTICLE = [
    (
        "article.html.j2",
        "{% block title %}{{ article.title }}",
        "{% block title %}{{ super() }} | {{ article.title }}",
    )
]


@pytest.mark.parametrize("language", ["vi", "en"])
@pytest.mark.parametrize("edits", [[], _SUPER_IN_ARTICLE], ids=["shipped", "super"])
def test_the_chrome_rendered_once_gives_the_pages_of_a_base_that_renders_it_with_each(
    tmp_path: Path,
    language: str,
    edits: list[tuple[str, str, str]],
    sample_articles: list[Article],
    hostile_articles: list[Article],
) -> None:
    """A renderer renders the base's site-wide parts (feed links, header, footer) once for
    each way to the site root and gives them to its pages: the article, index and archive
    pages, in any order, are those of a base that renders those parts itself with each."""
    from syndicate.load import parse_dump_with_body
    from syndicate.model import StoryLink
    from syndicate.text import story_key

    info = SiteInfo('Tin <mới> & "Trị"', "Mô tả <b>&</b>", BASE, language, INFO.timezone, 30)
    once = SiteRenderer(info, _edited_templates(tmp_path, "once", edits))
    whole = SiteRenderer(info, _edited_templates(tmp_path, "whole", edits + _CHROME_INLINE))
    assert once.fingerprint != whole.fingerprint
    article, body = parse_dump_with_body(
        _MARKUP_DUMP.format(title="Tiêu đề <có> & 21 km").encode(), source="x.txt", tz=TZ
    )
    teased = next(a for a in sample_articles if a.teasers)
    when = datetime(2024, 10, 30, 8, 0, tzinfo=TZ)
    target = StoryLink("a" * 32, "articles/a.html", "Bài <kia> & 5 km", when, Precision.DATE, when)
    links = {story_key(teased.teasers[0].text): target}
    entries = _entries(4)
    pages = [
        lambda r: r.render_article(article, slug="x", from_loader=True, body=body),
        lambda r: r.render_index(entries, archive=None, archives=2),
        lambda r: r.render_article(teased, slug="x", links=links),
        lambda r: r.render_index(entries, archive=1, archives=2),
        *(
            (lambda r, a=a: r.render_article(a, slug=a.slug))
            for a in [*sample_articles, *hostile_articles]
        ),
        lambda r: r.render_index(entries, archive=None, archives=2),
    ]
    brand = '<a class="brand" href="{}index.html">Tin &lt;mới&gt; &amp; &#34;Trị&#34;</a>'
    assert brand.format("../") in pages[0](once).decode()
    assert brand.format("") in pages[1](once).decode()
    assert "other-news" in pages[2](once).decode()
    for page in pages:
        assert page(once) == page(whole)


# A base template shared with the index pages, which have no article, may ask what a page's
# value is (`is sequence`, `is string`: no error where it is missing) before printing from it.
_TESTED_IN_BASE = {
    "sequence": (
        "{% if other_news is sequence %}{% for n in other_news if n.href %}"
        '<link rel="related" href="{{ n.href }}">\n{% endfor %}{% endif %}',
        '<link rel="related" href="../articles/a.html">\n',
    ),
    "string": (
        "{% if canonical is string and article is defined and article.author %}"
        '<meta name="author" content="{{ article.author }}">\n{% endif %}',
        '<meta name="author" content="Trúc Phương">\n',
    ),
}


@pytest.mark.parametrize("test", sorted(_TESTED_IN_BASE))
def test_a_base_that_tests_a_page_value_prints_what_each_page_gives(
    tmp_path: Path, test: str, sample_articles: list[Article]
) -> None:
    """What the base prints from a page's value follows each page, also after a first page
    that gave none of it (the first-page check of the frame that rendered the base's text
    once per renderer compared that page alone, and later pages lost the text)."""
    from dataclasses import replace

    from syndicate.model import StoryLink
    from syndicate.text import story_key

    edit, shown = _TESTED_IN_BASE[test]
    folder = _edited_templates(
        tmp_path, "site", [("_base.html.j2", "{% block head %}", edit + "{% block head %}")]
    )
    renderer = SiteRenderer(INFO, folder)
    teased = replace(next(a for a in sample_articles if a.teasers), author="Trúc Phương")
    when = datetime(2024, 10, 30, 8, 0, tzinfo=TZ)
    target = StoryLink("a" * 32, "articles/a.html", "Bài kia", when, Precision.DATE, when)
    links = {story_key(teased.teasers[0].text): target}
    plain = renderer.render_article(replace(teased, teasers=(), author=None), slug="x")
    page = renderer.render_article(teased, slug="x", links=links).decode()
    assert shown.encode() not in plain
    assert shown in page
    index = renderer.render_index(_entries(2), archive=None, archives=0).decode()
    assert "related" not in index
    assert '<meta name="author"' not in index

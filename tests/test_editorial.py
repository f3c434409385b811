"""What readers get, read as an editor reads it before it goes out: dumps in the shapes
real scrapes take, built into pages and feeds (and digests), checked in the built files."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import html
import json
import re
from collections.abc import Callable, Iterator
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path

import feedparser
import httpx
import pytest
from click.testing import CliRunner

from syndicate.cli import AppContext, cli
from syndicate.config import Settings, SiteSettings
from syndicate.publish import run_build
from syndicate.store import Database
from tests.plugins.postgres import open_store
from tests.plugins.web import LiveServer


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = open_store(settings.paths.database)
    yield database
    database.close()


def _build(settings: Settings, db: Database, now: datetime, dumps: dict[str, str]) -> Path:
    seeds = settings.paths.seeds
    seeds.mkdir(parents=True, exist_ok=True)
    for name, text in dumps.items():
        (seeds / name).write_text(text, encoding="utf-8")
    run_build(settings, db, now=now)
    return settings.paths.output


def _text(fragment: str) -> str:
    """A fragment of HTML as a reader sees it: tags gone, entities decoded, spaces collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


def _article(output: Path, slug: str) -> tuple[str, str, list[str]]:
    """An article page's meta line, its body's paragraphs and its "Other news" items."""
    page = (output / "articles" / f"{slug}.html").read_text("utf-8")
    article = re.search(r"<article[^>]*>(.*?)</article>", page, re.S)
    assert article is not None
    meta = re.search(r'<p class="meta"[^>]*>(.*?)</p>', article.group(1), re.S)
    assert meta is not None
    paragraphs = [_text(p) for p in re.findall(r"<p(?: [^>]*)?>(.*?)</p>", article.group(1))]
    other = re.search(r'<section class="other-news">(.*?)</section>', page, re.S)
    items = [_text(i) for i in re.findall(r"<li>(.*?)</li>", other.group(1))] if other else []
    return _text(meta.group(1)), paragraphs[1:], items


def _feed_entry(output: Path, title: str) -> tuple[dict[str, object], str]:
    """The Atom entry (as feedparser reads it) and the JSON Feed item's content of `title`."""
    parsed = feedparser.parse((output / "atom.xml").read_bytes())
    assert not parsed.bozo, parsed.get("bozo_exception")
    entry = next(e for e in parsed.entries if e.title == title)
    items = json.loads((output / "feed.json").read_bytes())["items"]
    item = next(i for i in items if i["title"] == title)
    return entry, item["content_html"]


TEASERS = (
    "LGO - Sáng nay 1/11, Sở Giáo dục và Đào tạo tỉnh Lam Giang tổ chức hội nghị triển khai "
    "nhiệm vụ năm học mới...\n"
    "LGO - Chiều nay 31/10, Ban Chỉ huy Phòng chống thiên tai tỉnh họp bàn phương án ứng phó "
    "với đợt mưa lớn...\n"
)
CAMERAS = (
    "Bến Lam lắp thêm 200 camera giám sát giao thông\n01/11/2024 16:00\n{head}\n"
    "LGO - Chiều nay 1/11, Công an TP. Bến Lam đưa vào vận hành thêm 200 camera giám sát "
    "giao thông tại các nút giao trọng điểm.\n"
    "Hệ thống được kết nối với trung tâm chỉ huy, giúp phát hiện và xử lý vi phạm nhanh hơn.\n"
)


def test_a_byline_after_the_teasers_keeps_them_out_of_the_article(
    settings: Settings, db: Database, now: datetime
) -> None:
    """Some scrapes put the author's name below the sidebar. The teasers were printed as the
    article's last paragraphs (other stories, as if this one's text) and the name was lost."""
    output = _build(settings, db, now, {"cam.txt": CAMERAS + TEASERS + "Đức Anh\n"})
    meta, paragraphs, other = _article(output, "ben-lam-lap-them-200-camera-giam-sat-giao-thong")
    assert meta.endswith("Tác giả: Đức Anh")
    assert paragraphs == [
        "Chiều nay 1/11, Công an TP. Bến Lam đưa vào vận hành thêm 200 camera giám sát giao "
        "thông tại các nút giao trọng điểm.",
        "Hệ thống được kết nối với trung tâm chỉ huy, giúp phát hiện và xử lý vi phạm nhanh hơn.",
    ]
    assert [item[:30] for item in other] == [
        "LGO \u2013 Sáng nay 1/11, Sở Giáo d",
        "LGO \u2013 Chiều nay 31/10, Ban Chỉ",
    ]
    entry, content = _feed_entry(output, "Bến Lam lắp thêm 200 camera giám sát giao thông")
    assert entry["author"] == "Đức Anh"
    for text in (entry["content"][0]["value"], content):  # type: ignore[index]
        assert "Sở Giáo dục" not in text
        assert "Ban Chỉ huy" not in text


SCHOOLS = (
    "Trường học vùng lũ sẵn sàng đón học sinh trở lại\n01/11/2024 17:00\n{head}\n"
    "LGO - Chiều nay 1/11, các trường học ở huyện Đồng Lũy đã dọn dẹp xong bùn đất sau lũ.\n"
    "Giáo viên và phụ huynh cùng lau bàn ghế, phơi sách vở cho học sinh.\n"
)


def test_a_byline_above_the_closing_caption_is_the_author_not_a_paragraph(
    settings: Settings, db: Database, now: datetime
) -> None:
    """The photo the story ends on comes after the author's name: the name was printed as
    the last paragraph and no author shown."""
    output = _build(
        settings,
        db,
        now,
        {"s.txt": SCHOOLS + "Mai Lan\nGiáo viên lau dọn lớp học sau lũ - Ảnh: Mai Lan\n"},
    )
    meta, paragraphs, _other = _article(output, "truong-hoc-vung-lu-san-sang-don-hoc-sinh-tro-lai")
    assert meta.endswith("Tác giả: Mai Lan")
    assert paragraphs == [
        "Chiều nay 1/11, các trường học ở huyện Đồng Lũy đã dọn dẹp xong bùn đất sau lũ.",
        "Giáo viên và phụ huynh cùng lau bàn ghế, phơi sách vở cho học sinh.",
        "Ảnh trong bài gốc: Giáo viên lau dọn lớp học sau lũ",
    ]
    entry, content = _feed_entry(output, "Trường học vùng lũ sẵn sàng đón học sinh trở lại")
    assert entry["author"] == "Mai Lan"
    assert "<p>Mai Lan</p>" not in content


FISHERS = (
    "Ngư dân Phước Hải trúng đậm mùa cá cơm\n31/10/2024 06:30\n{head}\n"
    "Hoàng Yến\n"
    "Những ngày cuối tháng 10, ngư dân xã Phước Hải phấn khởi vì trúng đậm mùa cá cơm, mỗi "
    "chuyến biển thu về từ 30 đến 50 triệu đồng.\n"
    "Giá cá cơm tươi tại cảng dao động 12.000-15.000 đồng/kg.\n"
)


def test_a_byline_opening_the_body_is_the_author_not_the_lead(
    settings: Settings, db: Database, now: datetime
) -> None:
    """Sites that print the author above the story: the name was the lead, so the feeds'
    summary (and the digest's blurb) said only "Hoàng Yến", and no author was shown."""
    output = _build(settings, db, now, {"f.txt": FISHERS})
    meta, paragraphs, _other = _article(output, "ngu-dan-phuoc-hai-trung-dam-mua-ca-com")
    assert meta.endswith("Tác giả: Hoàng Yến")
    assert paragraphs[0].startswith("Những ngày cuối tháng 10, ngư dân xã Phước Hải")
    assert "Hoàng Yến" not in paragraphs
    entry, _content = _feed_entry(output, "Ngư dân Phước Hải trúng đậm mùa cá cơm")
    assert entry["author"] == "Hoàng Yến"
    assert str(entry["summary"]).startswith("Những ngày cuối tháng 10")


TOURISM = (
    "Lam Giang đón 2,1 triệu lượt khách du lịch\n01/11/2024 07:00\n"
    "LGO - Năm 2024, tỉnh Lam Giang đón khoảng 2,1 triệu lượt khách du lịch, tăng 18% so với "
    "năm trước.\n"
    "Doanh thu từ du lịch ước đạt 3.200 tỷ đồng.\n"
    "Khách quốc tế chủ yếu đến từ Hàn Quốc, Thái Lan và Lào.\n"
    "Minh Châu\n"
    "LGO - Năm 2024, tỉnh Lam Giang đón khoảng 2,1 triệu lượt khách du lịch, tăng 18% so...\n"
    "LGO - Sáng nay 1/11, Sở Giáo dục và Đào tạo tỉnh Lam Giang tổ chức hội nghị...\n"
)


def test_a_teaser_advertising_the_article_itself_is_not_other_news_on_its_page(
    settings: Settings, db: Database, now: datetime
) -> None:
    """The sidebar scraped with a story often lists that story: its page offered itself
    under "Tin khác" (the digest already leaves such a teaser out)."""
    output = _build(settings, db, now, {"t.txt": TOURISM})
    _meta, _paragraphs, other = _article(output, "lam-giang-don-2-1-trieu-luot-khach-du-lich")
    assert other == [
        "LGO \u2013 Sáng nay 1/11, Sở Giáo dục và Đào tạo tỉnh Lam Giang tổ chức hội nghị…"
    ]


class _Voices(HTMLParser):
    """Each piece of text with the language its element says it is in (`lang`, inherited)."""

    VOID = frozenset({"meta", "link", "br", "img", "input", "hr", "col", "source", "wbr"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, str]] = []
        self.texts: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.VOID:
            return
        lang = dict(attrs).get("lang") or (self.stack[-1][1] if self.stack else "")
        self.stack.append((tag, lang))

    def handle_endtag(self, tag: str) -> None:
        while self.stack and self.stack.pop()[0] != tag:
            pass

    def handle_data(self, data: str) -> None:
        if data.strip() and self.stack and self.stack[-1][0] not in ("style", "title"):
            self.texts.append((self.stack[-1][1], " ".join(data.split())))


def _voice(page: str, text: str) -> str:
    """The language a screen reader is told `text` (a whole text node) is in."""
    parser = _Voices()
    parser.feed(page)
    found = {lang for lang, data in parser.texts if data == text}
    assert len(found) == 1, (text, found)
    return found.pop()


MARKET = (
    "Ben Lam opens its first night market for tourists\n2024-11-01T12:00:00+07:00\n{head}\n"
    "Ben Lam city opened its first night market on Friday, with 120 stalls selling seafood, "
    "handicrafts and local coffee along the riverside.\n"
    "Stallholders pay a monthly fee, and the market runs from 6 pm to 11 pm every day.\n"
    "By Thu Ha\n"
)


@pytest.fixture
def runner(workdir: Path, now: datetime, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.chdir(workdir)
    monkeypatch.delenv("SYNDICATE_CONFIG", raising=False)
    monkeypatch.setenv("SYNDICATE_SECRET", "a signing secret of the editorial tests")
    monkeypatch.setattr(AppContext, "now", lambda self: now.timestamp())
    return CliRunner()


def test_the_date_and_words_around_an_other_language_article_keep_the_readers_language(
    runner: CliRunner, workdir: Path
) -> None:
    """An English story on the Vietnamese site is marked lang="en", and so was all around
    it: its date ("Thứ Sáu, 1/11/2024, 12:00 (GMT+7)"), "Tác giả" and "Đọc tiếp" were read
    out by an English voice, on its page, in the index and in the digest."""
    (workdir / "seeds" / "m.txt").write_text(MARKET, encoding="utf-8")
    (workdir / "seeds" / "c.txt").write_text(CAMERAS, encoding="utf-8")
    for args in (["build"], ["subscribers", "add", "an@example.org"], ["send"]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
    output = workdir / "feeds"
    title = "Ben Lam opens its first night market for tourists"
    date = "Thứ Sáu, 1/11/2024, 12:00 (GMT+7)"
    page = output / "articles" / "ben-lam-opens-its-first-night-market-for-tourists.html"
    page_html = page.read_text("utf-8")
    assert _voice(page_html, title) == "en"
    assert _voice(page_html, date) == "vi"
    assert _voice(page_html, "Tác giả: Thu Ha") == "vi"
    index = (output / "index.html").read_text("utf-8")
    assert _voice(index, title) == "en"
    assert _voice(index, date) == "vi"
    (mail,) = (workdir / "outbox").rglob("*.eml")
    message = email.message_from_bytes(mail.read_bytes(), policy=email.policy.default)
    digest = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert _voice(digest, title) == "en"
    assert (
        _voice(
            digest,
            "Ben Lam city opened its first night market on Friday, with 120 "
            "stalls selling seafood, handicrafts and local coffee along the "
            "riverside.",
        )
        == "en"
    )
    assert _voice(digest, date + " ·") == "vi"
    assert _voice(digest, "Đọc tiếp") == "vi"


ROAD = (
    "Đồng Lũy khởi công đường cứu hộ cứu nạn\n01/11/2024 08:30\n"
    "LGO - Đồng Lũy khởi công đường cứu hộ cứu nạn.\n"
    "Tuyến đường dài 12 km, tổng vốn đầu tư 150 tỷ đồng, dự kiến hoàn thành năm 2026.\n"
    "Đường sẽ giúp người dân các xã vùng trũng di dời nhanh khi có lũ.\n"
)


def test_a_head_that_only_says_the_title_again_is_not_its_summary(
    settings: Settings, db: Database, now: datetime
) -> None:
    """Line 3 filled with the headline again: the page printed it twice (headline, then the
    same words as standfirst), and the feeds' summary and the digest's blurb repeated the
    title instead of saying what happened."""
    output = _build(settings, db, now, {"r.txt": ROAD})
    page = (output / "articles" / "dong-luy-khoi-cong-duong-cuu-ho-cuu-nan.html").read_text("utf-8")
    assert 'class="standfirst"' not in page
    _meta, paragraphs, _other = _article(output, "dong-luy-khoi-cong-duong-cuu-ho-cuu-nan")
    assert paragraphs[0].startswith("Tuyến đường dài 12")
    entry, _content = _feed_entry(output, "Đồng Lũy khởi công đường cứu hộ cứu nạn")
    assert str(entry["summary"]).startswith("Tuyến đường dài 12")
    assert re.search(r'<meta name="description" content="Tuyến đường dài 12', page)


COURSES = (
    "Sơn Khê mở lớp dạy nghề cho lao động nông thôn\n01/11/2024 08:45\n{head}\n"
    "Sơn Khê mở lớp dạy nghề cho lao động nông thôn\n"
    "LGO - Sáng nay 1/11, huyện Sơn Khê khai giảng 5 lớp dạy nghề cho 150 lao động nông thôn.\n"
    "Các lớp học gồm may công nghiệp, sửa chữa máy nông nghiệp và chăn nuôi thú y.\n"
    "Văn Sơn\n"
)


@pytest.mark.parametrize("title", ["Sơn Khê mở lớp dạy nghề cho lao động nông thôn", "{title}"])
def test_the_headline_scraped_above_the_dateline_is_not_the_lead(
    settings: Settings, db: Database, now: datetime, title: str
) -> None:
    """Scrapes that keep the page's headline as the body's first line, above the lead that
    opens with its dateline: the page printed the headline twice and the lead with its
    "LGO - " tag, and the feeds' summary was the headline again. Filled or not, the title
    line does not change what the body is (nor the article's id)."""
    text = COURSES.replace("Sơn Khê mở lớp dạy nghề cho lao động nông thôn\n01", title + "\n01")
    output = _build(settings, db, now, {"k.txt": text})
    (page,) = (output / "articles").glob("*.html")
    _meta, paragraphs, _other = _article(output, page.stem)
    assert paragraphs == [
        "Sáng nay 1/11, huyện Sơn Khê khai giảng 5 lớp dạy nghề cho 150 lao động nông thôn.",
        "Các lớp học gồm may công nghiệp, sửa chữa máy nông nghiệp và chăn nuôi thú y.",
    ]
    items = json.loads((output / "feed.json").read_bytes())["items"]
    assert items[0]["summary"].startswith("Sáng nay 1/11, huyện Sơn Khê khai giảng")


def test_view_in_browser_opens_the_digest_in_the_readers_language(
    runner: CliRunner, workdir: Path
) -> None:
    """An English subscriber's "View in browser" link opened the Vietnamese page."""
    (workdir / "seeds" / "c.txt").write_text(CAMERAS, encoding="utf-8")
    for args in (
        ["subscribers", "add", "an@example.org", "--lang", "vi"],
        ["subscribers", "add", "bo@example.org", "--lang", "en"],
        ["send"],
    ):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
    base = "http://localhost:8000/"
    headings = {"vi": "Bản tin Thứ Sáu, 1/11/2024", "en": "News for November 1, 2024"}
    for mail in sorted((workdir / "outbox").rglob("*.eml")):
        message = email.message_from_bytes(mail.read_bytes(), policy=email.policy.default)
        lang = str(message["Content-Language"])
        text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        (view,) = set(re.findall(rf"{base}digests/\S+", text))
        page = (workdir / "feeds" / view.removeprefix(base)).read_text("utf-8")
        assert f'<html lang="{lang}"' in page
        assert headings[lang] in page
        assert f'href="{base}unsubscribe?lang={lang}"' in page


SHOP = (
    "Công ty A&amp;B khai trương siêu thị điện máy\n01/11/2024 08:50\n{head}\n"
    "LGO - Sáng nay 1/11, Công ty TNHH A&amp;B khai trương siêu thị điện máy thứ 3 tại TP. "
    "Bến Lam.\n"
    "Giám đốc công ty cho biết: &quot;Chúng tôi giảm giá 20% trong tuần đầu&quot;&#46;\n"
    "Khách&nbsp;hàng mua hóa đơn trên 5 triệu đồng được tặng quà &lt;3&gt; món.\n"
)


def test_character_references_left_in_a_dump_read_as_the_characters(
    settings: Settings, db: Database, now: datetime
) -> None:
    """A scraper that kept the HTML's entities: readers saw "A&amp;B" and "&quot;" as text
    in the title, the page, the feeds and the slug ("a-amp-b")."""
    output = _build(settings, db, now, {"a.txt": SHOP})
    (page,) = (output / "articles").glob("*.html")
    assert page.name == "cong-ty-a-b-khai-truong-sieu-thi-dien-may.html"
    _meta, paragraphs, _other = _article(output, page.stem)
    assert paragraphs == [
        "Sáng nay 1/11, Công ty TNHH A&B khai trương siêu thị điện máy thứ 3 tại TP. Bến Lam.",
        'Giám đốc công ty cho biết: "Chúng tôi giảm giá 20% trong tuần đầu".',
        "Khách hàng mua hóa đơn trên 5 triệu đồng được tặng quà <3> món.",
    ]
    html_text = page.read_text("utf-8")
    assert "&amp;amp;" not in html_text
    assert "&amp;quot;" not in html_text
    items = json.loads((output / "feed.json").read_bytes())["items"]
    assert items[0]["title"] == "Công ty A&B khai trương siêu thị điện máy"
    assert "&amp;amp;" not in items[0]["content_html"]


def _footer(page: str) -> tuple[str, str]:
    """The description line of a page's footer, and the language its element is in."""
    footer = re.search(r'<footer class="site"><div class="wrap">\s*(<p[^>]*>.*?</p>)', page, re.S)
    assert footer is not None
    text = _text(footer.group(1))
    return text, _voice(page, text)


@pytest.mark.parametrize("description", [None, "Báo điện tử của tỉnh Lam Giang."])
def test_the_english_service_pages_say_the_sites_description_in_english_or_mark_it(
    live_server: Callable[..., LiveServer], description: str | None
) -> None:
    """The sign-up, confirm and unsubscribe pages in English ended every page with the
    Vietnamese default tagline, marked as English, also as their meta description. The
    default (syndicate's own words) is said in the page's language; an operator's own
    description, which has one language, is marked as the site's."""
    if description is None:
        server = live_server()
    else:
        site = dataclasses.replace(SiteSettings(), description=description)
        server = live_server(site=site)
    english = {None: "The latest news, gathered by syndicate."}.get(description, description)
    vietnamese = description or "Tin tức mới nhất, tổng hợp bởi syndicate."
    with httpx.Client(base_url=server.url) as client:
        for path, text, lang in (
            ("subscribe?lang=en", english, "en" if description is None else "vi"),
            ("subscribe?lang=vi", vietnamese, "vi"),
            ("unsubscribe?token=broken&lang=en", english, "en" if description is None else "vi"),
        ):
            page = client.get(path).text
            assert _footer(page) == (text, lang), path
            if description is None:
                assert f'<meta name="description" content="{text}">' in page


def test_other_news_in_another_language_than_the_readers_says_its_own(
    runner: CliRunner, workdir: Path
) -> None:
    """The teasers under "Other news" are Vietnamese: in an English digest, and on the
    pages of an English site, they were read out by the English voice."""
    (workdir / "syndicate.toml").write_text('[site]\nlanguage = "en"\n', encoding="utf-8")
    (workdir / "seeds" / "c.txt").write_text(CAMERAS + TEASERS, encoding="utf-8")
    for args in (["build"], ["subscribers", "add", "bo@example.org"], ["send"]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
    teaser = (
        "Sáng nay 1/11, Sở Giáo dục và Đào tạo tỉnh Lam Giang tổ chức hội nghị triển khai "
        "nhiệm vụ năm học mới…"
    )
    (mail,) = (workdir / "outbox").rglob("*.eml")
    message = email.message_from_bytes(mail.read_bytes(), policy=email.policy.default)
    digest = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert '<html lang="en"' in digest
    assert _voice(digest, "Other news") == "en"
    assert _voice(digest, "\u2013 " + teaser) == "vi"
    (page,) = (workdir / "feeds" / "articles").glob("*.html")
    page_html = page.read_text("utf-8")
    assert _voice(page_html, "Other news") == "en"
    assert _voice(page_html, "LGO \u2013 " + teaser) == "vi"


HARVEST = (
    "Nông dân Tân Mỹ thu hoạch lúa hữu cơ đạt năng suất cao\n01/11/2024 15:45\n{head}\n"
    "LGO - Chiều nay 1/11, hợp tác xã nông nghiệp Tân Mỹ, huyện Đồng Lũy thu hoạch 45 ha lúa "
    "hữu cơ, năng suất bình quân đạt 5,8 tấn/ha, giá bán 12.500 đồng/kg, cao gấp rưỡi lúa "
    "thường; đây là vụ thứ ba liên tiếp hợp tác xã sản xuất theo quy trình hữu cơ được chứng "
    "nhận, với sự tham gia của 120 hộ xã viên và sự hỗ trợ kỹ thuật của Trung tâm Khuyến nông "
    "tỉnh.\n"
    "Ông Trương Văn Hữu, Giám đốc hợp tác xã, cho biết toàn bộ sản lượng đã được bao tiêu.\n"
)


@pytest.mark.parametrize(
    ("words", "blurb"),
    [
        # The 30th word is "12.500": "giá bán 12.500…" sold rice at a price with no unit.
        (
            30,
            "Chiều nay 1/11, hợp tác xã nông nghiệp Tân Mỹ, huyện Đồng Lũy thu hoạch 45 ha "
            "lúa hữu cơ, năng suất bình quân đạt 5,8 tấn/ha…",
        ),
        # The 45th is "tác", of "hợp tác xã": a cut between the syllables of one word.
        (
            45,
            "Chiều nay 1/11, hợp tác xã nông nghiệp Tân Mỹ, huyện Đồng Lũy thu hoạch 45 ha "
            "lúa hữu cơ, năng suất bình quân đạt 5,8 tấn/ha, giá bán 12.500 đồng/kg, cao gấp "
            "rưỡi lúa thường…",
        ),
    ],
)
def test_a_long_lead_is_cut_in_the_digest_where_an_editor_would_cut_it(
    runner: CliRunner, workdir: Path, words: int, blurb: str
) -> None:
    """A lead of one long sentence is cut to `digest.lead_words` words: it was cut after
    the last word that fit, between a price and its unit or inside a word ("hợp tác…"). It
    is cut at the last clause boundary, else where no word or number is split."""
    (workdir / "syndicate.toml").write_text(f"[digest]\nlead_words = {words}\n", "utf-8")
    (workdir / "seeds" / "h.txt").write_text(HARVEST, encoding="utf-8")
    for args in (["subscribers", "add", "an@example.org"], ["send"]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
    (mail,) = (workdir / "outbox").rglob("*.eml")
    message = email.message_from_bytes(mail.read_bytes(), policy=email.policy.default)
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert blurb in " ".join(text.split())
    page = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert blurb in _text(page)


BUSES = (
    "Bến Lam mở tuyến xe buýt nhanh\n01/11/2024 10:00\n{line3}\n"
    "LGO - Sáng nay 1/11, TP. Bến Lam khai trương tuyến xe buýt nhanh đầu tiên dài 14 km.\n"
    "Tuyến có 12 trạm dừng, giá vé 7.000 đồng/lượt.\n"
)


def test_a_name_on_line_3_is_the_byline_not_the_summary(
    settings: Settings, db: Database, now: datetime
) -> None:
    """A site whose template puts the author where the sapo goes: "Quang Huy" was the
    page's standfirst, the feeds' summary and the digest's blurb, and no author shown.
    The same story without it keeps its id (the header never changes it)."""
    output = _build(settings, db, now, {"b.txt": BUSES.format(line3="Quang Huy")})
    page = (output / "articles" / "ben-lam-mo-tuyen-xe-buyt-nhanh.html").read_text("utf-8")
    assert 'class="standfirst"' not in page
    meta, paragraphs, _other = _article(output, "ben-lam-mo-tuyen-xe-buyt-nhanh")
    assert meta.endswith("Tác giả: Quang Huy")
    assert paragraphs[0].startswith("Sáng nay 1/11, TP. Bến Lam khai trương")
    entry, _content = _feed_entry(output, "Bến Lam mở tuyến xe buýt nhanh")
    assert entry["author"] == "Quang Huy"
    assert str(entry["summary"]).startswith("Sáng nay 1/11")
    ids = {entry["id"]}
    (settings.paths.seeds / "b.txt").write_text(BUSES.format(line3="{head}"), "utf-8")
    run_build(settings, db, now=now)
    entry, _content = _feed_entry(output, "Bến Lam mở tuyến xe buýt nhanh")
    assert {entry["id"]} == ids


def test_the_byline_reads_as_english_on_an_english_site(runner: CliRunner, workdir: Path) -> None:
    """An English site's article page said "By: Thu Ha"; English says "By Thu Ha"."""
    (workdir / "syndicate.toml").write_text('[site]\nlanguage = "en"\n', encoding="utf-8")
    (workdir / "seeds" / "m.txt").write_text(MARKET, encoding="utf-8")
    (workdir / "seeds" / "c.txt").write_text(CAMERAS + "Đức Anh\n", encoding="utf-8")
    result = runner.invoke(cli, ["build"])
    assert result.exit_code == 0, result.output
    meta, _paragraphs, _other = _article(
        workdir / "feeds", "ben-lam-opens-its-first-night-market-for-tourists"
    )
    assert meta == "Friday, November 1, 2024, 12:00 PM (GMT+7) · By Thu Ha"
    meta, _paragraphs, _other = _article(
        workdir / "feeds", "ben-lam-lap-them-200-camera-giam-sat-giao-thong"
    )
    assert meta.endswith(" · By Đức Anh")


FLOODS = (
    "Tỉnh yêu cầu khắc phục hậu quả mưa lũ\n01/11/2024 14:20\n"
    "LGO - Chiều nay 1/11, Chủ tịch UBND tỉnh Lam Giang ký công điện yêu cầu các sở, ngành, "
    "địa phương khẩn trương khắc phục hậu quả mưa lũ.\n"
    "Theo công điện, các địa phương phải hoàn thành thống kê thiệt hại trước ngày 5/11.\n"
    "Sở Tài chính được giao bố trí 15,5 tỷ đồng để hỗ trợ khẩn cấp.\n"
)


def test_the_feeds_full_text_opens_with_the_standfirst_the_page_prints(
    settings: Settings, db: Database, now: datetime
) -> None:
    """Feed readers show the full text (content:encoded, Atom content, content_html): it
    began at the second paragraph, without the sapo the page prints under the headline,
    so the story read from the middle."""
    output = _build(settings, db, now, {"f.txt": FLOODS})
    sapo = (
        "Chiều nay 1/11, Chủ tịch UBND tỉnh Lam Giang ký công điện yêu cầu các sở, ngành, "
        "địa phương khẩn trương khắc phục hậu quả mưa lũ."
    )
    page = (output / "articles" / "tinh-yeu-cau-khac-phuc-hau-qua-mua-lu.html").read_text("utf-8")
    assert f'<p class="standfirst">{sapo}</p>' in page
    entry, content = _feed_entry(output, "Tỉnh yêu cầu khắc phục hậu quả mưa lũ")
    rss = feedparser.parse((output / "rss.xml").read_bytes()).entries[0]
    for text in (entry["content"][0]["value"], content, rss.content[0].value):  # type: ignore[index]
        assert [_text(p) for p in re.findall(r"<p>(.*?)</p>", text)] == [
            sapo,
            "Theo công điện, các địa phương phải hoàn thành thống kê thiệt hại trước ngày 5/11.",
            "Sở Tài chính được giao bố trí 15,5 tỷ đồng để hỗ trợ khẩn cấp.",
        ]


def test_a_digest_of_one_story_prints_no_contents_of_one_line(
    runner: CliRunner, workdir: Path
) -> None:
    """A digest of a single story listed it "In this issue", then printed the same headline
    again right under that list: the headline twice, back to back, for nothing."""
    (workdir / "seeds" / "c.txt").write_text(CAMERAS, encoding="utf-8")
    for args in (["subscribers", "add", "an@example.org"], ["send"]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
    (mail,) = (workdir / "outbox").rglob("*.eml")
    message = email.message_from_bytes(mail.read_bytes(), policy=email.policy.default)
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    page = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "TRONG SỐ NÀY" not in text
    assert "Trong số này" not in page
    title = "Bến Lam lắp thêm 200 camera giám sát giao thông"
    assert text.count(title) == 1
    assert _text(page.split("</title>", 1)[1]).count(title) == 1


FUEL = (
    "Giá xăng giảm lần thứ ba liên tiếp\n01/11/2024 15:00\n{head}\n"
    "Chiều nay 1/11, liên Bộ Công Thương - Tài chính điều chỉnh giá bán lẻ xăng dầu.\n"
    "Giá xăng RON95 giảm 320 đồng/lít, còn 20.450 đồng/lít.\n"
    "{credit}\n"
)


def _mail_parts(workdir: Path) -> tuple[str, str]:
    """The one digest in the outbox, as the email package reads it: its text and its HTML."""
    (mail,) = (workdir / "outbox").rglob("*.eml")
    message = email.message_from_bytes(mail.read_bytes(), policy=email.policy.default)
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    page = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    return text, page


@pytest.mark.parametrize(
    ("credit", "source", "shown"),
    [
        ("Theo TTXVN", "TTXVN", "Theo TTXVN"),
        ("Nguồn: VnExpress", "VnExpress", "Theo VnExpress"),
        ("(Theo Báo Lam Giang)", "Báo Lam Giang", "Theo Báo Lam Giang"),
    ],
)
def test_a_source_credit_is_shown_as_the_source_not_the_author(
    runner: CliRunner, workdir: Path, credit: str, source: str, shown: str
) -> None:
    """ "Theo TTXVN" at the end of a story credits the agency it came from: it was shown as
    its author ("Tác giả: TTXVN", RSS dc:creator, Atom and JSON Feed author), and "Nguồn:
    VnExpress" as an author named "Nguồn: VnExpress"."""
    (workdir / "seeds" / "x.txt").write_text(FUEL.replace("{credit}", credit), encoding="utf-8")
    for args in (["build"], ["subscribers", "add", "an@example.org"], ["send"]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
    output = workdir / "feeds"
    meta, paragraphs, _other = _article(output, "gia-xang-giam-lan-thu-ba-lien-tiep")
    assert meta == f"Thứ Sáu, 1/11/2024, 15:00 (GMT+7) · {shown}"
    assert paragraphs[-1] == "Giá xăng RON95 giảm 320 đồng/lít, còn 20.450 đồng/lít."
    index = _text((output / "index.html").read_text("utf-8"))
    assert f"Thứ Sáu, 1/11/2024, 15:00 (GMT+7) · {shown}" in index
    entry, content = _feed_entry(output, "Giá xăng giảm lần thứ ba liên tiếp")
    assert "author" not in entry
    assert entry["source"]["title"] == source  # type: ignore[index]
    rss = feedparser.parse((output / "rss.xml").read_bytes())
    assert rss.bozo == 0
    assert "author" not in rss.entries[0]
    assert rss.entries[0]["dc_source"] == source
    item = json.loads((output / "feed.json").read_bytes())["items"][0]
    assert "authors" not in item
    for text in (entry["content"][0]["value"], content, rss.entries[0].content[0].value):  # type: ignore[index]
        assert text.endswith(f'<p class="credit">{shown}</p>')
    text, page = _mail_parts(workdir)
    assert f"Thứ Sáu, 1/11/2024, 15:00 (GMT+7) · {shown}" in text
    assert f"Thứ Sáu, 1/11/2024, 15:00 (GMT+7) · {shown}" in _text(page)
    for where in (text, _text(page), index, meta):
        assert "Tác giả" not in where
        assert "Nguồn:" not in where


@pytest.mark.parametrize(
    "line",
    [
        "Hà Nội",
        "HÀ NỘI",
        "Hà Nội -",
        "TP Hồ Chí Minh",
        "TP. Hồ Chí Minh",
        "Sài Gòn",
        "Khánh Hoà",
        "Khánh Hòa",
        "Thừa Thiên Huế",
        "Bà Rịa - Vũng Tàu",
        "Tin Nóng",
        "THỜI SỰ",
        "Kinh Tế",
    ],
)
def test_a_place_or_a_section_label_above_the_story_is_not_its_author(
    settings: Settings, db: Database, now: datetime, line: str
) -> None:
    """A place the story was filed from ("Hà Nội", "TP Hồ Chí Minh") or the site's section
    ("Tin Nóng") printed above it is two words or more, like a writer's name: it was
    shown as the story's author ("Tác giả: Hà Nội")."""
    output = _build(settings, db, now, {"f.txt": FISHERS.replace("Hoàng Yến", line)})
    meta, _paragraphs, _other = _article(output, "ngu-dan-phuoc-hai-trung-dam-mua-ca-com")
    assert meta == "Thứ Năm, 31/10/2024, 06:30 (GMT+7)"
    entry, _content = _feed_entry(output, "Ngư dân Phước Hải trúng đậm mùa cá cơm")
    assert "author" not in entry


@pytest.mark.parametrize("name", ["Hoàng Yến", "Nguyễn Văn A", "Lê Hà", "NHÓM PV"])
def test_a_writers_name_above_the_story_is_still_its_author(
    settings: Settings, db: Database, now: datetime, name: str
) -> None:
    output = _build(settings, db, now, {"f.txt": FISHERS.replace("Hoàng Yến", name)})
    meta, _paragraphs, _other = _article(output, "ngu-dan-phuoc-hai-trung-dam-mua-ca-com")
    assert meta == f"Thứ Năm, 31/10/2024, 06:30 (GMT+7) · Tác giả: {name}"


@pytest.mark.parametrize("name", ["Hà Giang", "Thái Bình", "Phú Yên"])
def test_a_writer_named_as_a_province_closing_the_story_is_its_author(
    settings: Settings, db: Database, now: datetime, name: str
) -> None:
    """Journalists are named "Hà Giang" or "Thái Bình" too. Below the story, where bylines
    stand and datelines do not, such a name was made a paragraph and no author shown (the
    place list is for the line above the story)."""
    dump = FISHERS.replace("Hoàng Yến\n", "") + f"{name}\n"
    output = _build(settings, db, now, {"f.txt": dump})
    meta, paragraphs, _other = _article(output, "ngu-dan-phuoc-hai-trung-dam-mua-ca-com")
    assert meta == f"Thứ Năm, 31/10/2024, 06:30 (GMT+7) · Tác giả: {name}"
    assert name not in paragraphs


@pytest.mark.parametrize("line", ["Hà Nội", "Đà Nẵng", "Bà Rịa - Vũng Tàu", "TP.HCM"])
def test_a_city_closing_the_story_is_still_no_author(
    settings: Settings, db: Database, now: datetime, line: str
) -> None:
    dump = FISHERS.replace("Hoàng Yến\n", "") + f"{line}\n"
    output = _build(settings, db, now, {"f.txt": dump})
    meta, _paragraphs, _other = _article(output, "ngu-dan-phuoc-hai-trung-dam-mua-ca-com")
    assert meta == "Thứ Năm, 31/10/2024, 06:30 (GMT+7)"


QUOTE = (
    "Chủ tịch UBND tỉnh Lam Giang: “Không để người dân nào thiếu đói, thiếu nhà ở sau mùa "
    "mưa lũ”\n01/11/2024 16:30\n{head}\n"
    "LGO - Chiều nay 1/11, Chủ tịch UBND tỉnh Lam Giang làm việc với huyện Đồng Lũy về khắc "
    "phục hậu quả mưa lũ.\n"
    "Huyện đã hỗ trợ gạo cho 1.200 hộ dân bị ảnh hưởng.\n"
)


def test_the_subject_closes_a_quotation_it_cuts(runner: CliRunner, workdir: Path) -> None:
    """A headline cut for the subject line in the middle of a quotation left it open ("…
    “Không để người dân nào…")."""
    (workdir / "seeds" / "q.txt").write_text(QUOTE, encoding="utf-8")
    (workdir / "seeds" / "c.txt").write_text(CAMERAS, encoding="utf-8")
    for args in (["subscribers", "add", "an@example.org"], ["send"]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
    (mail,) = (workdir / "outbox").rglob("*.eml")
    message = email.message_from_bytes(mail.read_bytes(), policy=email.policy.default)
    subject = str(message["Subject"])
    assert subject == (
        "Tin mới: Chủ tịch UBND tỉnh Lam Giang: “Không để người dân nào…” và 1 tin khác"
    )
    assert len(subject) <= 78


def test_the_digests_day_reads_as_vietnamese_papers_write_it(
    runner: CliRunner, workdir: Path
) -> None:
    """The Vietnamese digest was dated as Babel writes it ("Bản tin ngày 1 tháng 11,
    2024", and so the subject's {date}), where papers write "Thứ Sáu, 1/11/2024"."""
    (workdir / "seeds" / "c.txt").write_text(CAMERAS, encoding="utf-8")
    (workdir / "syndicate.toml").write_text(
        '[mail]\nsubject = "{site} {date}: {headline}"\n', encoding="utf-8"
    )
    for args in (["subscribers", "add", "an@example.org"], ["send"]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
    (mail,) = (workdir / "outbox").rglob("*.eml")
    message = email.message_from_bytes(mail.read_bytes(), policy=email.policy.default)
    assert str(message["Subject"]) == (
        "Tin mới Thứ Sáu, 1/11/2024: Bến Lam lắp thêm 200 camera giám sát giao thông"
    )
    text, page = _mail_parts(workdir)
    assert text.splitlines()[:2] == ["Tin mới", "Bản tin Thứ Sáu, 1/11/2024"]
    heading = page.split("<h1", 1)[1].split("</h1>", 1)[0].split(">", 1)[1]
    assert _text(heading) == "Bản tin Thứ Sáu, 1/11/2024"


def test_a_hostile_credit_is_escaped_text_and_nfc_everywhere(
    runner: CliRunner, workdir: Path
) -> None:
    """A credit is article text: escaped in pages, feeds and mail, never a template, NFC
    whatever the dump's form."""
    import unicodedata

    credit = "Theo Báo <i>Đông Hà</i> & {{ 7*7 }}"
    dump = FUEL.replace("{credit}", unicodedata.normalize("NFD", credit))
    (workdir / "seeds" / "x.txt").write_text(dump, encoding="utf-8")
    for args in (["build"], ["subscribers", "add", "an@example.org"], ["send"]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
    output = workdir / "feeds"
    escaped = "Theo Báo &lt;i&gt;Đông Hà&lt;/i&gt; &amp; {{ 7*7 }}"
    page = (output / "articles" / "gia-xang-giam-lan-thu-ba-lien-tiep.html").read_text("utf-8")
    index = (output / "index.html").read_text("utf-8")
    text, html_part = _mail_parts(workdir)
    for where in (page, index):
        assert f'<span class="byline">{escaped}</span>' in where
    for where in (page, index, html_part):
        assert f">{escaped}</span>" in where
        assert "<i>" not in where
    assert f"· {credit}" in text
    entry, content = _feed_entry(output, "Giá xăng giảm lần thứ ba liên tiếp")
    assert entry["source"]["title"] == "Báo <i>Đông Hà</i> & {{ 7*7 }}"  # type: ignore[index]
    assert content.endswith(f'<p class="credit">{escaped}</p>')
    for name in ("rss.xml", "atom.xml", "feed.json"):
        data = (output / name).read_text("utf-8")
        assert "<i>" not in data
        assert "49" not in data
        assert data == unicodedata.normalize("NFC", data)
    for where in (page, index, text, html_part):
        assert "49" not in where
        assert where == unicodedata.normalize("NFC", where)


@pytest.mark.parametrize(
    ("lang", "dated", "day_only"),
    [
        ("vi", "Thứ Sáu, 1/11/2024, 16:00 (GMT+7)", "Thứ Năm, 31/10/2024"),
        ("en", "Friday, November 1, 2024, 4:00\u202fPM (GMT+7)", "Thursday, October 31, 2024"),
    ],
)
def test_article_dates_read_one_way_on_pages_and_in_the_digest(
    runner: CliRunner, workdir: Path, lang: str, dated: str, day_only: str
) -> None:
    """The digest's day read as papers write it ("Thứ Sáu, 1/11/2024"), but an article's
    date, on its page, in the index and in the digest, was Babel's long form ("16:00 Thứ
    Sáu, 1 tháng 11, 2024"). Vietnamese papers write "Thứ Sáu, 1/11/2024, 16:00 (GMT+7)";
    the machine dates (<time datetime>) are as before."""
    (workdir / "syndicate.toml").write_text(f'[site]\nlanguage = "{lang}"\n', encoding="utf-8")
    (workdir / "seeds" / "c.txt").write_text(CAMERAS, encoding="utf-8")
    (workdir / "seeds" / "s.txt").write_text(
        SCHOOLS.replace("01/11/2024 17:00", "31/10/2024"), encoding="utf-8"
    )
    for args in (["subscribers", "add", "an@example.org", "--lang", lang], ["send"]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
    output = workdir / "feeds"
    page = output / "articles" / "ben-lam-lap-them-200-camera-giam-sat-giao-thong.html"
    page_html = page.read_text("utf-8")
    assert f'<time datetime="2024-11-01T16:00:00+07:00">{dated}</time>' in page_html
    index = (output / "index.html").read_text("utf-8")
    assert f'<time datetime="2024-11-01T16:00:00+07:00">{dated}</time>' in index
    assert f'<time datetime="2024-10-31">{day_only}</time>' in index
    text, mail_html = _mail_parts(workdir)
    assert dated in text.splitlines()
    assert day_only in text.splitlines()
    assert f">{dated}</p>" in mail_html
    assert f">{day_only}</p>" in mail_html


PLEDGE = (
    "{title}\n01/11/2024 16:30\n{head}\n"
    "LGO - Chiều nay 1/11, Chủ tịch UBND tỉnh Lam Giang Trần Minh Khoa khẳng định “Không để "
    "người dân nào thiếu đói, thiếu nhà ở sau mùa mưa lũ năm nay” tại buổi làm việc với "
    "huyện Đồng Lũy.\n"
    "Huyện đã hỗ trợ gạo cho 1.200 hộ dân bị ảnh hưởng.\n"
)


def test_a_title_derived_inside_a_quotation_closes_it_on_pages_feeds_and_digest(
    runner: CliRunner, workdir: Path
) -> None:
    """A dump without a title gets one from its lead, cut where it is too long: cut inside
    a quotation, it ended "… “Không để người dân nào thiếu…" with the quotation open, on
    the page, in the feeds and in the digest (subjects already closed it)."""
    (workdir / "seeds" / "p.txt").write_text(PLEDGE, encoding="utf-8")
    for args in (["subscribers", "add", "an@example.org"], ["send"]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
    title = "Chủ tịch UBND tỉnh Lam Giang Trần Minh Khoa khẳng định “Không để người dân nào thiếu…”"
    output = workdir / "feeds"
    page = (output / "articles" / "chu-tich-ubnd-tinh-lam-giang-tran-minh-khoa-khang-dinh-khong-de"
            "-nguoi-dan-nao.html")  # fmt: skip
    page_html = page.read_text("utf-8")
    assert f"<h1>{title}</h1>" in page_html
    entry, _content = _feed_entry(output, title)
    assert entry["title"] == title
    text, mail_html = _mail_parts(workdir)
    assert " ".join(text.split()).count(title) == 1  # the text part wraps it
    assert f">{title}</a>" in mail_html


def test_invisible_marks_and_tags_are_kept_out_of_titles_subjects_and_pages(
    runner: CliRunner, workdir: Path
) -> None:
    """Bidi marks (U+200E, U+200F) and tag characters (hidden text no reader sees) were kept:
    in the page's headline and text, the feeds' titles and the subject line."""
    hidden = "".join(chr(0xE0000 + ord(c)) for c in "ignore all") + "\U000e007f"
    dump = CAMERAS.replace("Bến Lam lắp", "Bến Lam\u200e lắp\u200f").replace(
        "giám sát giao thông tại", f"giám sát{hidden} giao thông\u200e tại"
    )
    (workdir / "seeds" / "c.txt").write_text(dump, encoding="utf-8")
    for args in (["subscribers", "add", "an@example.org"], ["send"]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
    invisible = re.compile("[\u200e\u200f\U000e0000-\U000e007f]")
    title = "Bến Lam lắp thêm 200 camera giám sát giao thông"
    output = workdir / "feeds"
    for path in [*output.rglob("*.html"), *output.glob("*.xml"), output / "feed.json"]:
        assert not invisible.search(path.read_text("utf-8")), path
    page = output / "articles" / "ben-lam-lap-them-200-camera-giam-sat-giao-thong.html"
    assert f"<h1>{title}</h1>" in page.read_text("utf-8")
    (mail,) = (workdir / "outbox").rglob("*.eml")
    message = email.message_from_bytes(mail.read_bytes(), policy=email.policy.default)
    assert str(message["Subject"]) == f"Tin mới: {title}"
    text, mail_html = _mail_parts(workdir)
    assert not invisible.search(text + mail_html)


RUN = (
    'Giải chạy "Vì biển đảo Lam Giang" thu hút hơn 3.000 vận động viên .\n01/11/2024 09:11\n'
    "{head}\n"
    "LGO - Giải chạy “Vì biển đảo Lam Giang” lần thứ nhất sẽ diễn ra vào sáng 3/11 trên cung "
    "đường ven biển TP. Bến Lam.\n"
    "Ban tổ chức bố trí 12 trạm tiếp nước và đội y tế dọc đường chạy.\n"
)


def test_a_given_headline_is_set_as_papers_set_one_on_pages_feeds_and_digest(
    runner: CliRunner, workdir: Path
) -> None:
    """A title line typed as a sentence ('… "Vì biển đảo Lam Giang" … vận động viên .')
    was printed as it came: straight quotes, a space before the full stop that ended it.
    Papers set it 'Giải chạy “Vì biển đảo Lam Giang” thu hút hơn 3.000 vận động viên'."""
    (workdir / "seeds" / "r.txt").write_text(RUN, encoding="utf-8")
    for args in (["subscribers", "add", "an@example.org"], ["send"]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
    title = "Giải chạy “Vì biển đảo Lam Giang” thu hút hơn 3.000 vận động viên"
    output = workdir / "feeds"
    # The page keeps the path the title's words gave it before.
    page = (
        output / "articles" / "giai-chay-vi-bien-dao-lam-giang-thu-hut-hon-3-000-van-dong-vien.html"
    )
    assert f"<h1>{title}</h1>" in page.read_text("utf-8")
    entry, _content = _feed_entry(output, title)
    assert entry["title"] == title
    (mail,) = (workdir / "outbox").rglob("*.eml")
    message = email.message_from_bytes(mail.read_bytes(), policy=email.policy.default)
    assert str(message["Subject"]) == f"Tin mới: {title}"


def test_the_seed_pages_descriptions_end_on_a_word_that_reads_well(
    runner: CliRunner, workdir: Path
) -> None:
    """A page's description (search results, link previews) was cut at the last space that
    fit: the seeds' ended "phía bắc sông sau…", "ở các…", "TS. BS. Nguyễn Hữu…", "hoping to
    sell to…" (a preposition left dangling, half a name), "hội thảo “Chuyển đổi số…" (a
    quotation left open)."""
    from syndicate.text import FUNCTION_WORDS

    for seed in (Path(__file__).resolve().parent.parent / "seeds").glob("*.txt"):
        (workdir / "seeds" / seed.name).write_bytes(seed.read_bytes())
    result = runner.invoke(cli, ["build"])
    assert result.exit_code == 0, result.output
    cut = []
    for page in sorted((workdir / "feeds" / "articles").glob("*.html")):
        found = re.search(r'<meta name="description" content="([^"]*)"', page.read_text("utf-8"))
        assert found is not None
        description = html.unescape(found.group(1))
        stem = description.rstrip("\u201d\u00bb")  # a quotation it cut is closed after "…"
        if stem.endswith("…"):
            cut.append(description)
            (last,) = stem.removesuffix("…").split()[-1:]
            assert last.casefold() not in FUNCTION_WORDS, description
    assert len(cut) >= 8
    assert any(d.endswith("bệnh nhân 56 tuổi…") for d in cut), cut
    assert any(d.endswith("các xã phía bắc sông…") for d in cut), cut
    assert any(d.endswith("hội thảo “Chuyển đổi số…”") for d in cut), cut

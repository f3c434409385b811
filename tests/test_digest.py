"""Digest stage: planning, lead excerpts, other news, rendering (escaping, NFC, size, golden)."""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from syndicate.config import Settings
from syndicate.digest import (
    MAX_TEASERS,
    DigestInfo,
    RenderedEmail,
    make_subject,
    plan_digest,
    plan_other_news,
    render_digest,
    select_other_news,
    stale_warning,
    wrap_text,
)
from syndicate.errors import ConfigError, InputError
from syndicate.mail import MailInfo, build_digest_template, fill_message, fold_html_lines
from syndicate.model import (
    Article,
    Block,
    BlockKind,
    DigestPlan,
    Precision,
    StoryLink,
    Teaser,
    settle_relative_day,
)
from syndicate.text import lead_excerpt, story_key
from syndicate.urls import article_path, article_url

DAY = date(2024, 11, 1)
MARKER = "https://news.example.org/unsubscribe?t=UNSUB-MARKER-0123456789abcdef"
VIEW = "http://localhost:8000/digests/2024-11-01.html"


def make_article(
    ident: str,
    *,
    title: str = "Tiêu đề",
    lead: str = "Nội dung đầu tiên của bài viết.",
    published: datetime | None = datetime(2024, 10, 31, 2, 15, tzinfo=UTC),
    precision: Precision | None = None,
    author: str | None = None,
    teasers: tuple[Teaser, ...] = (),
    slug: str | None = None,
    paragraphs: tuple[str, ...] = (),
) -> Article:
    if precision is None:
        precision = Precision.DATETIME if published else Precision.UNKNOWN
    body = (
        Block(BlockKind.PARAGRAPH, lead),
        *tuple(Block(BlockKind.PARAGRAPH, p) for p in paragraphs),
    )
    return Article(
        id=ident,
        slug=slug or f"bai-{ident}",
        title=title,
        title_derived=False,
        published=published,
        precision=precision,
        body=body,
        author=author,
        teasers=teasers,
        source=f"seeds/{ident}.txt",
    )


def html_lines_ok(text: str) -> bool:
    return all(len(line.encode()) < 998 for line in text.split("\n"))


class _Collector(HTMLParser):
    """Collects tags and the visible text of an HTML document."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag in ("style", "title"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "title"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.text.append(data)


def parse_html(html: str) -> _Collector:
    collector = _Collector()
    collector.feed(html)
    collector.close()
    return collector


def golden_articles() -> tuple[Article, ...]:
    """A fixed, realistic digest: dated, date-only, undated; teasers to keep and to drop."""
    return (
        make_article(
            "a1",
            title="Thông xe cầu Sông Lam nối hai bờ TP. Bến Lam",
            lead=(
                "Sáng nay 1/11, UBND tỉnh Lam Giang tổ chức lễ thông xe cầu Sông Lam, công "
                "trình giao thông trọng điểm nối trung tâm TP. Bến Lam với các xã phía bắc "
                "sông sau hơn hai năm thi công. Cầu dài 680 m, rộng 21 m. TS. Nguyễn Văn "
                "Hùng, Giám đốc Sở Giao thông vận tải, cho biết cầu được thiết kế cho tải "
                "trọng lớn và chịu được lũ lịch sử."
            ),
            published=datetime(2024, 11, 1, 2, 15, tzinfo=UTC),
            author="Hoài Nam",
            slug="thong-xe-cau-song-lam",
            teasers=(
                Teaser("LGO", "Hội thảo chuyển đổi số trong ngành y tế tỉnh Lam Giang..."),
                Teaser("LGO", "Mưa lũ gây sạt lở nhiều tuyến đường ở huyện miền núi..."),
            ),
        ),
        make_article(
            "b2",
            title="Hội thảo chuyển đổi số trong ngành y tế",
            lead=(
                "Hội thảo chuyển đổi số trong ngành y tế tỉnh Lam Giang diễn ra với sự tham "
                "gia của PGS. TS. Trần Thị Mai và hơn 200 đại biểu."
            ),
            published=datetime(2024, 10, 31, 17, 0, tzinfo=UTC),
            precision=Precision.DATE,
            author="NHÓM PV",
            slug="hoi-thao-chuyen-doi-so",
            teasers=(
                Teaser("LGO", "mưa lũ gây sạt lở nhiều tuyến đường ở huyện miền núi…"),
                Teaser("(QT)", "Khai mạc lễ hội cầu ngư làng biển Đồng Luỹ..."),
            ),
        ),
        make_article(
            "c3",
            title="Thư viện số mở cửa miễn phí cho học sinh",
            lead="Thư viện tỉnh vừa ra mắt thư viện số với hơn 12.000 đầu sách.",
            published=None,
            slug="thu-vien-so",
            teasers=(
                # Scraped three weeks later, and no article of the store: left out.
                Teaser("LGO", "Hôm nay 21/11, Bộ Chỉ huy Bộ đội Biên phòng tỉnh tuần tra song..."),
                # Its article is stored (GOLDEN_LINK): linked, and listed first.
                Teaser("LGO", "Sáng nay 30/10, Sở Y tế tỉnh Lam Giang khánh thành trung tâm..."),
            ),
        ),
    )


def digest_plan(*, day: date, articles: tuple[Article, ...], **rest: Any) -> DigestPlan:
    """A plan whose articles all have pages where the build puts them (articles/<slug>.html)."""
    pages = {a.id: article_path(a.slug) for a in articles}
    return DigestPlan(day=day, articles=articles, pages=pages, **rest)


# The stored article the last teaser of golden_articles() advertises.
GOLDEN_LINK = StoryLink(
    "d4",
    "articles/cap-cuu-115.html",
    "Khánh thành trung tâm cấp cứu 115 của tỉnh",
    datetime(2024, 10, 30, 1, 0, tzinfo=UTC),
    Precision.DATETIME,
    datetime(2024, 10, 30, 3, 0, tzinfo=UTC),
)


@pytest.fixture
def golden_plan() -> DigestPlan:
    links = {
        story_key("Sáng nay 30/10, Sở Y tế tỉnh Lam Giang khánh thành trung tâm..."): GOLDEN_LINK
    }
    return digest_plan(day=DAY, articles=golden_articles(), more=4, links=links)


@pytest.fixture
def mail_settings(settings: Settings) -> Settings:
    mail = dataclasses.replace(
        settings.mail, postal_address="Báo Lam Giang, 12 Trần Hưng Đạo, TP. Bến Lam"
    )
    return dataclasses.replace(settings, mail=mail)


def render(
    plan: DigestPlan, settings: Settings, now: datetime, *, lang: str = "vi"
) -> RenderedEmail:
    return render_digest(
        plan,
        lang=lang,
        info=DigestInfo.from_settings(settings),
        unsubscribe_url=MARKER,
        now=now,
        view_url=VIEW,
    )


# --------------------------------------------------------------------------- plan_digest

NEWEST = datetime(2024, 11, 1, 0, 0, tzinfo=UTC)
SEEN = datetime(2024, 11, 1, 6, 0, tzinfo=UTC)
SITE_TZ = ZoneInfo("Asia/Ho_Chi_Minh")


def plan(candidates: list[tuple[Article, datetime]], **kwargs: object) -> DigestPlan | None:
    options: dict[str, object] = {
        "day": DAY,
        "newest_published": NEWEST,
        "max_age_hours": 48,
        "max_articles": 20,
        "tz": SITE_TZ,
    }
    options.update(kwargs)
    return plan_digest(candidates, **options)  # type: ignore[arg-type]


def test_plan_drops_articles_older_than_max_age_before_the_newest() -> None:
    fresh = make_article("fresh", published=NEWEST - timedelta(hours=47))
    edge = make_article("edge", published=NEWEST - timedelta(hours=48))
    stale = make_article("stale", published=NEWEST - timedelta(hours=48, seconds=1))
    result = plan([(stale, SEEN), (fresh, SEEN), (edge, SEEN)])
    assert result is not None
    assert [a.id for a in result.articles] == ["fresh", "edge"]
    assert result.more == 0
    assert result.day == DAY


def test_plan_counts_undated_articles_from_first_seen() -> None:
    recent = make_article("recent", published=None)
    old = make_article("old", published=None)
    dated = make_article("dated", published=NEWEST - timedelta(hours=1))
    result = plan(
        [
            (recent, NEWEST + timedelta(hours=5)),
            (old, NEWEST - timedelta(days=3)),
            (dated, SEEN),
        ]
    )
    assert result is not None
    # Both on 1/11 in Vietnam: the undated one after the dated one of its day.
    assert [a.id for a in result.articles] == ["dated", "recent"]


def test_plan_puts_an_undated_article_after_the_dated_ones_of_its_day() -> None:
    """An undated story (no publish time in its dump) first seen at the build led the
    digest above every story published that day and earlier (editor23's brief)."""
    seen = datetime(2024, 11, 1, 23, 0, tzinfo=SITE_TZ)
    undated = make_article("undated", published=None)
    morning = make_article("morning", published=datetime(2024, 11, 1, 7, 0, tzinfo=SITE_TZ))
    evening = make_article("evening", published=datetime(2024, 11, 1, 20, 0, tzinfo=SITE_TZ))
    yesterday = make_article("yesterday", published=datetime(2024, 10, 31, 22, tzinfo=SITE_TZ))
    later_undated = make_article("a-later", published=None)
    items = [
        (yesterday, SEEN),
        (undated, seen),
        (morning, SEEN),
        (later_undated, seen + timedelta(minutes=30)),
        (evening, SEEN),
    ]
    result = plan(items, newest_published=evening.published)
    assert result is not None
    # The day's dated stories, then its undated ones (the last seen first), then the day
    # before: whatever the input order.
    assert [a.id for a in result.articles] == [
        "evening",
        "morning",
        "a-later",
        "undated",
        "yesterday",
    ]
    assert plan(list(reversed(items)), newest_published=evening.published) == result


def test_plan_orders_newest_first_with_ties_by_id() -> None:
    when = NEWEST - timedelta(hours=2)
    items = [
        (make_article("m", published=when), SEEN),
        (make_article("z", published=when), SEEN),
        (make_article("new", published=NEWEST), SEEN),
        (make_article("old", published=NEWEST - timedelta(hours=20)), SEEN),
    ]
    result = plan(items)
    assert result is not None
    assert [a.id for a in result.articles] == ["new", "z", "m", "old"]
    again = plan(list(reversed(items)))
    assert again == result


def test_plan_puts_an_archive_read_late_before_its_undated_story() -> None:
    """The seeds built in 2026: their undated story, first seen then, led a digest of 2024
    stories. It stands after the dated ones of the newest story's day."""
    undated = make_article("undated", published=None)
    newest = make_article("newest", published=NEWEST)
    before = make_article("before", published=NEWEST - timedelta(days=1))
    result = plan([(undated, NEWEST + timedelta(days=700)), (newest, SEEN), (before, SEEN)])
    assert result is not None
    assert [a.id for a in result.articles] == ["newest", "undated", "before"]


def test_plan_puts_a_dated_article_before_an_undated_one_seen_at_that_time() -> None:
    dated = make_article("a-dated", published=NEWEST)
    undated = make_article("z-undated", published=None)
    result = plan([(undated, NEWEST), (dated, SEEN)])
    assert result is not None
    assert [a.id for a in result.articles] == ["a-dated", "z-undated"]


def test_plan_keeps_max_articles_and_counts_the_rest_in_more() -> None:
    items = (
        (make_article(f"x{i:03}", published=NEWEST - timedelta(minutes=i)), SEEN)
        for i in range(300)
    )
    result = plan(list(items), max_articles=5)
    assert result is not None
    assert [a.id for a in result.articles] == ["x000", "x001", "x002", "x003", "x004"]
    assert result.more == 295


def test_plan_streams_from_a_one_shot_iterator() -> None:
    def generate() -> Iterator[tuple[Article, datetime]]:
        for i in range(2000):
            yield make_article(f"s{i:05}", published=NEWEST - timedelta(seconds=i)), SEEN

    result = plan_digest(
        generate(), day=DAY, newest_published=NEWEST, max_age_hours=48, max_articles=3, tz=SITE_TZ
    )
    assert result is not None
    assert [a.id for a in result.articles] == ["s00000", "s00001", "s00002"]
    assert result.more == 1997


def test_plan_is_none_when_nothing_is_left() -> None:
    stale = make_article("stale", published=NEWEST - timedelta(days=10))
    assert plan([]) is None
    assert plan([(stale, SEEN - timedelta(days=10))]) is None


def test_plan_without_any_dated_article_keeps_everything() -> None:
    items = [(make_article(f"u{i}", published=None), SEEN - timedelta(days=i)) for i in range(4)]
    result = plan(items, newest_published=None)
    assert result is not None
    assert [a.id for a in result.articles] == ["u0", "u1", "u2", "u3"]


def test_plan_treats_unknown_precision_as_undated() -> None:
    odd = make_article("odd", published=NEWEST - timedelta(days=30), precision=Precision.UNKNOWN)
    result = plan([(odd, SEEN)])
    assert result is not None
    assert result.articles[0].id == "odd"


# --------------------------------------------------------------------------- lead_excerpt


def test_lead_excerpt_keeps_short_text_whole() -> None:
    text = "Sáng nay 31/10, TP. Đông Hà tổ chức hội thảo."
    assert lead_excerpt(text, words=60) == text


def test_lead_excerpt_cuts_at_the_last_sentence_that_fits() -> None:
    text = "Câu một có năm từ. Câu hai cũng có sáu từ. Câu ba thì dài hơn hẳn hai câu trước."
    assert lead_excerpt(text, words=11) == "Câu một có năm từ. Câu hai cũng có sáu từ."
    assert lead_excerpt(text, words=10) == "Câu một có năm từ."


@pytest.mark.parametrize(
    "abbreviation",
    ["TP.", "TS.", "ThS.", "PGS.", "GS.", "BS.", "T.P.", "N.V.", "Q.", "Dr.", "Mr."],
)
def test_lead_excerpt_does_not_end_a_sentence_at_an_abbreviation(abbreviation: str) -> None:
    text = (
        f"Ông được {abbreviation} Nguyễn Văn An mời dự họp. Sau đó mọi người ra về sớm hơn dự kiến."
    )
    result = lead_excerpt(text, words=12)
    assert result == f"Ông được {abbreviation} Nguyễn Văn An mời dự họp."


def test_lead_excerpt_ends_a_sentence_after_a_lowercase_unit_or_an_acronym() -> None:
    text = "Cầu dài 680 m. Vốn đến từ EU. Công trình hoàn thành sớm hơn kế hoạch ba tháng."
    assert lead_excerpt(text, words=8) == "Cầu dài 680 m. Vốn đến từ EU."


def test_lead_excerpt_reads_an_ellipsis_before_lowercase_as_mid_sentence() -> None:
    text = "Nhiều loại cây... như lúa, ngô được trồng. Mùa này nông dân rất bận rộn với vụ đông."
    assert lead_excerpt(text, words=10) == "Nhiều loại cây... như lúa, ngô được trồng."


def test_lead_excerpt_knows_question_marks_and_closing_quotes() -> None:
    text = "Ông hỏi: “Có ai ở đây không?” Không ai trả lời câu hỏi ấy cả trong suốt buổi chiều."
    assert lead_excerpt(text, words=8) == "Ông hỏi: “Có ai ở đây không?”"


def test_lead_excerpt_cuts_a_long_first_sentence_at_a_word_with_an_ellipsis() -> None:
    text = "Một câu rất dài " + " ".join(f"từ{i}," for i in range(100)) + " kết thúc."
    result = lead_excerpt(text, words=10)
    assert result.endswith("…")
    assert len(result.split()) == 10
    assert result == "Một câu rất dài từ0, từ1, từ2, từ3, từ4, từ5…"


def test_lead_excerpt_never_splits_a_character_and_returns_nfc() -> None:
    decomposed = unicodedata.normalize("NFD", "Người dân Quảng Trị đón mừng. " * 30)
    result = lead_excerpt(decomposed, words=18)
    assert unicodedata.is_normalized("NFC", result)
    assert result == " ".join(["Người dân Quảng Trị đón mừng."] * 3)
    for word in result.split():
        assert not unicodedata.combining(word[0])


def test_lead_excerpt_respects_the_word_limit_everywhere() -> None:
    text = "Hà Nội. " + "Đây là câu số một trăm hai mươi. " * 40
    for words in range(1, 70, 7):
        result = lead_excerpt(text, words=words)
        assert 1 <= len(result.split()) <= words


# --------------------------------------------------------------------------- other news


def test_other_news_drops_teasers_for_articles_in_the_digest_and_duplicates() -> None:
    chosen = select_other_news(golden_articles()[:2])
    assert [(t.dateline, t.text) for t in chosen] == [
        ("LGO", "Mưa lũ gây sạt lở nhiều tuyến đường ở huyện miền núi..."),
        ("(QT)", "Khai mạc lễ hội cầu ngư làng biển Đồng Luỹ..."),
    ]


def _link(ident: str, published: datetime | None, title: str = "") -> StoryLink:
    precision = Precision.DATETIME if published else Precision.UNKNOWN
    seen = datetime(2024, 10, 31, 12, 0, tzinfo=UTC)
    return StoryLink(
        ident, f"articles/bai-{ident}.html", title or f"Bài {ident}", published, precision, seen
    )


def _teaser(text: str) -> Teaser:
    return Teaser("QTO", text)


# Teasers long enough to tie to an article, each about something else.
T_OLD = "Sáng nay 28/10, tỉnh khởi công đường ven biển nối ba huyện..."
T_NEW = "Chiều nay 30/10, Sở Y tế kiểm tra an toàn thực phẩm tại các chợ..."
T_UNDATED = "Phó Chủ tịch UBND tỉnh vừa ký văn bản gửi Công ty Cảng quốc tế..."
T_PLAIN = "Hiện tỉnh còn 26 xã miền núi chưa đạt chuẩn nông thôn mới..."
T_LATER = "Hôm nay 21/11, Bộ Chỉ huy Bộ đội Biên phòng tỉnh tuần tra song..."
T_IN_DIGEST = "Hội thảo chuyển đổi số diễn ra với sự tham gia của hơn 200 đại biểu..."


def _other_news_plan(*, teasers: tuple[str, ...], links: dict[str, StoryLink]) -> DigestPlan:
    a = make_article(
        "a",
        published=datetime(2024, 10, 31, 2, 0, tzinfo=UTC),
        teasers=tuple(map(_teaser, teasers)),
    )
    b = make_article("b", title="Hội thảo", lead=T_IN_DIGEST.removesuffix("..."), published=None)
    return digest_plan(day=DAY, articles=(a, b), links={story_key(k): v for k, v in links.items()})


def test_other_news_puts_linked_teasers_first_newest_first_then_the_others() -> None:
    plan = _other_news_plan(
        teasers=(T_PLAIN, T_OLD, T_UNDATED, T_NEW),
        links={
            T_OLD: _link("old", datetime(2024, 10, 28, 1, 0, tzinfo=UTC)),
            T_NEW: _link("new", datetime(2024, 10, 30, 8, 0, tzinfo=UTC)),
            # Undated: placed by when it was first seen (31/10 12:00), newest of the three.
            T_UNDATED: _link("undated", None),
        },
    )
    chosen = plan_other_news(plan, limit=10, tz=UTC)
    assert [(n.link.id if n.link else n.teaser.text) for n in chosen] == [
        "undated",
        "new",
        "old",
        T_PLAIN,
    ]


def test_other_news_leaves_out_articles_in_the_digest_and_later_unlinked_teasers() -> None:
    plan = _other_news_plan(
        teasers=(T_IN_DIGEST, T_LATER, T_PLAIN, T_NEW),
        # The first teaser advertises article b, which this digest carries.
        links={T_IN_DIGEST: _link("b", None, "Hội thảo"), T_NEW: _link("new", None)},
    )
    chosen = plan_other_news(plan, limit=10, tz=UTC)
    # T_LATER opens with 21/11: three weeks after the newest article (31/10), and unlinked.
    assert [(n.link.id if n.link else n.teaser.text) for n in chosen] == ["new", T_PLAIN]


def test_a_linked_teaser_dated_later_is_kept() -> None:
    plan = _other_news_plan(teasers=(T_LATER,), links={T_LATER: _link("later", None)})
    assert [n.link.id for n in plan_other_news(plan, limit=5, tz=UTC) if n.link] == ["later"]


def test_other_news_keeps_at_most_max_teasers_and_none_at_zero(
    mail_settings: Settings, now: datetime
) -> None:
    teasers = tuple(f"Tin số {i} về chuyện khác hẳn nhau ở xã {i}..." for i in range(12))
    plan = _other_news_plan(teasers=teasers, links={teasers[7]: _link("x", None, "Tin bảy")})
    chosen = plan_other_news(plan, limit=5, tz=UTC)
    assert len(chosen) == 5
    assert chosen[0].link == _link("x", None, "Tin bảy")
    default = render(plan, mail_settings, now)
    assert default.text.count("\n- ") == 5  # digest.max_teasers defaults to 5
    hidden = dataclasses.replace(
        mail_settings, digest=dataclasses.replace(mail_settings.digest, max_teasers=0)
    )
    rendered = render(plan, hidden, now)
    assert "Tin khác" not in rendered.html
    assert "TIN KHÁC" not in rendered.text


def _subject_settings(settings: Settings, template: str | None = None) -> Settings:
    mail = (
        settings.mail if template is None else dataclasses.replace(settings.mail, subject=template)
    )
    return dataclasses.replace(settings, mail=mail)


@pytest.mark.parametrize(
    ("lang", "others", "expected"),
    [
        ("vi", 6, "Tin mới: Thông xe cầu Sông Lam và 6 tin khác"),
        ("en", 6, "Tin mới: Thông xe cầu Sông Lam and 6 more"),
        ("vi", 0, "Tin mới: Thông xe cầu Sông Lam"),
        ("en", 1, "Tin mới: Thông xe cầu Sông Lam and 1 more"),
    ],
)
def test_subject_names_the_top_story_and_how_many_more(
    settings: Settings, lang: str, others: int, expected: str
) -> None:
    subject = make_subject(
        DigestInfo.from_settings(settings),
        lang=lang,
        day=DAY,
        headline="Thông xe cầu Sông Lam",
        others=others,
    )
    assert subject == expected


@pytest.mark.parametrize(
    ("lang", "headline", "language", "expected"),
    [
        ("en", "Thông xe cầu Sông Lam", "vi", "Tin mới: Thông xe cầu Sông Lam (+6)"),
        ("vi", "Thông xe cầu Sông Lam", "vi", "Tin mới: Thông xe cầu Sông Lam và 6 tin khác"),
        ("vi", "Coffee growers bet on beans", "en", "Tin mới: Coffee growers bet on beans (+6)"),
        (
            "en",
            "Coffee growers bet on beans",
            "en",
            "Tin mới: Coffee growers bet on beans and 6 more",
        ),
    ],
)
def test_subject_counts_the_others_without_words_when_the_headline_is_in_another_language(
    settings: Settings, lang: str, headline: str, language: str, expected: str
) -> None:
    """An English reader's subject read "Thông xe cầu Sông Lam and 6 more": English words
    running on from a Vietnamese headline. The count stands alone then, in either language."""
    subject = make_subject(
        DigestInfo.from_settings(settings),
        lang=lang,
        day=DAY,
        headline=headline,
        others=6,
        headline_language=language,
    )
    assert subject == expected


def test_subject_shortens_a_long_headline_at_a_word_boundary_to_78_characters(
    settings: Settings,
) -> None:
    headline = (
        "Phó Bí thư Thường trực Tỉnh ủy, Chủ tịch HĐND tỉnh Nguyễn Đăng Quang dự hội thảo "
        "chuyển đổi số trong các cơ quan đảng"
    )
    subject = make_subject(
        DigestInfo.from_settings(settings), lang="vi", day=DAY, headline=headline, others=6
    )
    assert subject == ("Tin mới: Phó Bí thư Thường trực Tỉnh ủy, Chủ tịch HĐND tỉnh… và 6 tin khác")
    assert len(subject) <= 78
    # Decomposed input gives the same, NFC, subject.
    decomposed = unicodedata.normalize("NFD", headline)
    assert (
        make_subject(
            DigestInfo.from_settings(settings), lang="vi", day=DAY, headline=decomposed, others=6
        )
        == subject
    )


def test_subject_cuts_a_headline_between_words_not_inside_one(settings: Settings) -> None:
    # A space in Vietnamese falls between syllables: cut at one, the subject read
    # "… thư viện số cho học… và 6 tin khác" ("học sinh", pupils, split; "cho" left hanging).
    subject = make_subject(
        DigestInfo.from_settings(settings),
        lang="vi",
        day=DAY,
        headline="Thư viện tỉnh Lam Giang ra mắt thư viện số cho học sinh vùng cao",
        others=6,
    )
    assert subject == "Tin mới: Thư viện tỉnh Lam Giang ra mắt thư viện số… và 6 tin khác"
    assert len(subject) <= 78


def test_subject_template_takes_headline_and_more_or_is_used_as_written(
    settings: Settings,
) -> None:
    custom = _subject_settings(settings, "[{site}] {date}: {headline} ({more})")
    assert (
        make_subject(
            DigestInfo.from_settings(custom), lang="en", day=DAY, headline="Cầu mới", others=2
        )
        == "[Tin mới] November 1, 2024: Cầu mới (and 2 more)"
    )
    fixed = _subject_settings(settings, "Bản tin {site} {{headline}")
    assert (
        make_subject(
            DigestInfo.from_settings(fixed), lang="vi", day=DAY, headline="Cầu mới", others=2
        )
        == "Bản tin Tin mới {Cầu mới"
    )
    plain = _subject_settings(settings, "Bản tin sáng")
    assert (
        make_subject(
            DigestInfo.from_settings(plain), lang="vi", day=DAY, headline="x " * 100, others=9
        )
        == "Bản tin sáng"
    )


@pytest.mark.parametrize(
    ("headline", "expected"),
    [
        # Cut inside a quotation: it is closed after the "…".
        (
            "Chủ tịch UBND tỉnh Lam Giang: “Không để người dân nào thiếu đói, thiếu nhà ở "
            "sau mùa mưa lũ”",
            "Tin mới: Chủ tịch UBND tỉnh Lam Giang: “Không để người dân nào…” và 6 tin khác",
        ),
        (
            'Ngư dân Phước Hải nói "mùa cá cơm năm nay là mùa bội thu nhất trong mười năm '
            'qua" và vui mừng',
            'Tin mới: Ngư dân Phước Hải nói "mùa cá cơm năm nay là mùa bội…" và 6 tin khác',
        ),
        # A quotation the cut leaves whole, or never opens, needs nothing.
        (
            "Giải chạy “Vì biển đảo Lam Giang” thu hút hơn 3.000 vận động viên trong và ngoài "
            "tỉnh đăng ký",
            "Tin mới: Giải chạy “Vì biển đảo Lam Giang” thu hút hơn 3.000… và 6 tin khác",
        ),
    ],
)
def test_subject_closes_a_quotation_its_cut_leaves_open(
    settings: Settings, headline: str, expected: str
) -> None:
    subject = make_subject(
        DigestInfo.from_settings(settings), lang="vi", day=DAY, headline=headline, others=6
    )
    assert subject == expected
    assert len(subject) <= 78


@pytest.mark.parametrize(
    ("lang", "expected"),
    [("vi", "Bản tin Thứ Sáu, 1/11/2024"), ("en", "News for November 1, 2024")],
)
def test_the_digests_day_reads_as_papers_write_it(
    settings: Settings, lang: str, expected: str
) -> None:
    """Vietnamese papers date an issue "Thứ Sáu, 1/11/2024"; Babel's long form, "1 tháng
    11, 2024", is no paper's. English keeps CLDR's."""
    custom = _subject_settings(settings, "Bản tin {date}" if lang == "vi" else "News for {date}")
    subject = make_subject(DigestInfo.from_settings(custom), lang=lang, day=DAY, headline="x")
    assert subject == expected
    plan = DigestPlan(day=DAY, articles=(make_article("a"),))
    rendered = render(plan, custom, datetime(2024, 11, 1, tzinfo=UTC), lang=lang)
    assert expected in rendered.text.splitlines()
    assert f">{expected}</h1>" in rendered.html


def test_stale_warning_when_the_newest_article_is_over_a_week_older_than_the_day() -> None:
    article = make_article("a", published=datetime(2024, 10, 24, 23, 0, tzinfo=UTC))
    undated = make_article("u", published=None)
    # Published 25/10 at 06:00 in Vietnam: 7 days before 1/11, not yet stale.
    fresh = digest_plan(day=date(2024, 11, 1), articles=(undated, article))
    assert stale_warning(fresh, tz=ZoneInfo("Asia/Ho_Chi_Minh")) is None
    stale = digest_plan(day=date(2024, 11, 2), articles=(undated, article))
    assert stale_warning(stale, tz=ZoneInfo("Asia/Ho_Chi_Minh")) == (
        "Warning: digest of 2024-11-02: its newest article is from 2024-10-25, 8 days before "
        "the digest's day. Check that the scraper still delivers new dumps."
    )
    assert stale_warning(digest_plan(day=DAY, articles=(undated,)), tz=UTC) is None


def test_other_news_matches_a_teaser_cut_mid_word_against_a_lead() -> None:
    article = make_article(
        "a",
        lead="Sáng nay 31/10, TP. Đông Hà tổ chức hội thảo khoa học về di sản văn hoá.",
        teasers=(Teaser("QTO", "Sáng nay 31/10, TP. Đông Hà tổ chức hội th..."),),
    )
    other = make_article("b", teasers=(Teaser("QTO", "Sáng nay 31/10, TP Đông Hà tổ chức hội..."),))
    assert select_other_news([article, other]) == []


def test_other_news_matches_against_titles_and_keeps_unrelated_teasers() -> None:
    article = make_article(
        "a",
        title="Giải chạy bộ vì người nghèo thu hút 3.000 vận động viên",
        teasers=(
            Teaser("TTO", "Giải chạy bộ vì người nghèo thu hút 3.000..."),
            Teaser("TTO", "Giá cà phê xuất khẩu tăng mạnh..."),
        ),
    )
    assert [t.text for t in select_other_news([article])] == ["Giá cà phê xuất khẩu tăng mạnh..."]


def test_other_news_keeps_a_teaser_too_short_to_tie_to_an_article() -> None:
    article = make_article(
        "a", lead="Hội thảo chuyển đổi số.", teasers=(Teaser("QTO", "Hội thảo..."),)
    )
    assert [t.text for t in select_other_news([article])] == ["Hội thảo..."]


def test_other_news_is_capped() -> None:
    teasers = tuple(Teaser("QTO", f"Tin số {i} về chuyện khác hẳn nhau {i}...") for i in range(40))
    chosen = select_other_news([make_article("a", teasers=teasers)])
    assert len(chosen) == MAX_TEASERS
    assert chosen[0].text.startswith("Tin số 0 ")


# --------------------------------------------------------------------------- rendering


def test_golden_digest_vi(
    golden_plan: DigestPlan, mail_settings: Settings, now: datetime, check_golden
) -> None:
    rendered = render(golden_plan, mail_settings, now, lang="vi")
    check_golden("digest.html", rendered.html.encode("utf-8"))
    check_golden("digest.txt", rendered.text.encode("utf-8"))
    assert rendered.subject == "Tin mới: Thông xe cầu Sông Lam nối hai bờ TP. Bến Lam và 2 tin khác"
    assert rendered.lang == "vi"


def test_an_article_without_a_page_is_shown_unlinked(
    golden_plan: DigestPlan, mail_settings: Settings, now: datetime
) -> None:
    first, *others = golden_plan.articles
    pages = {i: p for i, p in golden_plan.pages.items() if i != first.id}
    rendered = render(dataclasses.replace(golden_plan, pages=pages), mail_settings, now)
    url = article_url("http://localhost:8000/", first.slug)
    assert url not in rendered.html
    assert url not in rendered.text
    assert first.title in rendered.text
    assert f">{first.title}</h2>" in rendered.html  # in the digest, its title unlinked
    for article in others:
        assert f'href="{article_url("http://localhost:8000/", article.slug)}"' in rendered.html
    assert rendered.text.count("Đọc tiếp") == len(others)


def test_golden_digest_en(
    golden_plan: DigestPlan, mail_settings: Settings, now: datetime, check_golden
) -> None:
    rendered = render(golden_plan, mail_settings, now, lang="en")
    check_golden("digest.en.html", rendered.html.encode("utf-8"))
    check_golden("digest.en.txt", rendered.text.encode("utf-8"))
    # A Vietnamese headline: "(+2)", not English words running on from it.
    assert rendered.subject == "Tin mới: Thông xe cầu Sông Lam nối hai bờ TP. Bến Lam (+2)"


def test_digest_has_every_required_part(
    golden_plan: DigestPlan, mail_settings: Settings, now: datetime
) -> None:
    rendered = render(golden_plan, mail_settings, now)
    html, text = rendered.html, rendered.text
    doc = parse_html(html)
    links = [attrs.get("href") for tag, attrs in doc.tags if tag == "a"]
    urls = [article_url("http://localhost:8000/", a.slug) for a in golden_plan.articles]
    for url in urls:
        assert links.count(url) == 3  # headline list, title, read more
        assert text.count(url) == 1
    root = "http://localhost:8000/"
    for target in (MARKER, VIEW, root + "rss.xml", root + "atom.xml", root + "feed.json", root):
        assert target in links
        assert target in text
    visible = " ".join(doc.text)
    assert "Trong số này" in visible
    assert "Đọc tiếp" in visible
    assert "Đọc tiếp" in text
    assert "Tin khác" in visible
    assert "TIN KHÁC" in text
    assert "Và 4 tin khác trên trang" in visible
    assert "Và 4 tin khác trên trang" in text
    assert "Báo Lam Giang, 12 Trần Hưng Đạo, TP. Bến Lam" in visible
    assert "Báo Lam Giang, 12 Trần Hưng Đạo, TP. Bến Lam" in text
    assert "Bạn nhận được thư này vì đã đăng ký" in visible
    # Dates: time of day when known, date only for a date, nothing when unknown.
    assert "Thứ Sáu, 1/11/2024, 09:15 (GMT+7) · Hoài Nam" in text
    assert "Thứ Sáu, 1/11/2024 · NHÓM PV" in text
    assert "00:00" not in text
    # The preheader is the first lead, cut to about 100 characters, and hidden.
    assert rendered.preheader.startswith("Sáng nay 1/11, UBND tỉnh Lam Giang")
    assert len(rendered.preheader) <= 100
    assert rendered.preheader.endswith("…")
    hidden = [attrs for tag, attrs in doc.tags if attrs.get("class") == "preheader"]
    assert len(hidden) == 1
    assert "display: none" in (hidden[0]["style"] or "")


def test_digest_html_is_an_accessible_600px_table_layout(
    golden_plan: DigestPlan, mail_settings: Settings, now: datetime
) -> None:
    html = render(golden_plan, mail_settings, now).html
    doc = parse_html(html)
    assert ("html", {"lang": "vi", "dir": "ltr", "style": "color-scheme: light dark;"}) in doc.tags
    tables = [attrs for tag, attrs in doc.tags if tag == "table"]
    assert tables
    assert all(t.get("role") == "presentation" for t in tables)
    assert any(t.get("width") == "600" and "width: 600px" in (t.get("style") or "") for t in tables)
    assert not [tag for tag, _ in doc.tags if tag in ("img", "script", "link")]
    assert '<meta name="color-scheme" content="light dark">' in html
    assert "@media (prefers-color-scheme: dark)" in html
    # CSS is inlined: styled elements carry style attributes, class rules are gone.
    assert "font-family: Arial" in html
    assert ".toc-title {" not in html
    assert html.index('<meta charset="utf-8">') < 200


def test_digest_shows_no_more_link_when_nothing_is_left_out(
    mail_settings: Settings, now: datetime
) -> None:
    rendered = render(digest_plan(day=DAY, articles=golden_articles()[:1]), mail_settings, now)
    assert "tin khác trên trang" not in rendered.html
    assert "tin khác trên trang" not in rendered.text


def test_digest_in_english(golden_plan: DigestPlan, mail_settings: Settings, now: datetime) -> None:
    rendered = render(golden_plan, mail_settings, now, lang="en")
    assert 'lang="en"' in rendered.html
    for phrase in ("In this issue", "Read more", "Other news", "And 4 more stories on the site"):
        assert phrase in rendered.html
    assert "November 1, 2024" in rendered.text
    assert "Đọc tiếp" not in rendered.text


HOSTILE_TITLE = "<script>alert('x')</script> {{ 7*7 }} {% raw %}\r\nBcc: victim@example.org"
HOSTILE_LEAD = "Tin <b>đậm</b> & {{ config }} ]]> <img src=x onerror=alert(1)> kết thúc."


def hostile_plan() -> DigestPlan:
    article = make_article(
        "h1",
        title=HOSTILE_TITLE,
        lead=HOSTILE_LEAD,
        author="<i>Tác giả</i>",
        teasers=(Teaser("<QTO>", "Tin <script>x</script> khác {{ 1+1 }}..."),),
    )
    return digest_plan(day=DAY, articles=(article,))


def test_hostile_article_text_is_escaped_in_html(mail_settings: Settings, now: datetime) -> None:
    site = dataclasses.replace(mail_settings.site, title="<b>Site</b> {{ 7*7 }}")
    html = render(hostile_plan(), dataclasses.replace(mail_settings, site=site), now).html
    doc = parse_html(html)
    tags = {tag for tag, _ in doc.tags}
    assert not tags & {"script", "b", "i", "img"}
    visible = " ".join(doc.text)
    assert "<script>alert('x')</script> {{ 7*7 }} {% raw %} Bcc: victim@example.org" in visible
    assert "Tin <b>đậm</b> & {{ config }} ]]> <img src=x onerror=alert(1)> kết thúc." in visible
    assert "<i>Tác giả</i>" in visible
    assert "Tin <script>x</script> khác {{ 1+1 }}…" in visible
    assert "49" not in visible
    assert "<b>Site</b> {{ 7*7 }}" in visible
    assert "&lt;script&gt;" in html
    assert "<title>[&lt;b&gt;Site" in html or "<title>&lt;b&gt;Site" in html
    # The hidden preheader is escaped too (it comes from a partial).
    assert "Tin &lt;b&gt;đậm&lt;/b&gt;" in html.split("</div>", 1)[0]


def test_hostile_article_text_is_literal_in_text_part(
    mail_settings: Settings, now: datetime
) -> None:
    text = render(hostile_plan(), mail_settings, now).text
    flat = " ".join(text.split())
    assert "<script>alert('x')</script> {{ 7*7 }} {% raw %} Bcc: victim@example.org" in flat
    assert "\nBcc:" not in text
    assert "\r" not in text
    assert "{{ config }}" in text
    assert "49" not in text


def test_subject_is_one_line_and_takes_braces_literally(settings: Settings, now: datetime) -> None:
    site = dataclasses.replace(settings.site, title="Tin {{ 7*7 }} {date}\r\nBcc: x@example.org")
    mail = dataclasses.replace(settings.mail, subject="[{site}] {date} {unknown}")
    odd = dataclasses.replace(settings, site=site, mail=mail)
    rendered = render(hostile_plan(), odd, now)
    assert (
        rendered.subject == "[Tin {{ 7*7 }} {date} Bcc: x@example.org] Thứ Sáu, 1/11/2024 {unknown}"
    )
    assert "{{ 7*7 }}" in rendered.html


def test_vietnamese_text_is_nfc_in_both_parts(mail_settings: Settings, now: datetime) -> None:
    title = "Người dân Quảng Trị đón Tết Nguyên đán"
    lead = "Hội nghị tổng kết công tác hòa giải ở cơ sở được tổ chức tại thành phố Đông Hà."
    article = make_article(
        "nfd",
        title=unicodedata.normalize("NFD", title),
        lead=unicodedata.normalize("NFD", lead),
        author=unicodedata.normalize("NFD", "Trúc Phương"),
    )
    rendered = render(digest_plan(day=DAY, articles=(article,)), mail_settings, now)
    for part in (rendered.html, rendered.text, rendered.subject, rendered.preheader):
        assert unicodedata.is_normalized("NFC", part)
    for expected in (title, lead, "Trúc Phương"):
        encoded = expected.encode("utf-8")
        assert encoded in rendered.html.encode("utf-8")
        assert encoded in " ".join(rendered.text.split()).encode("utf-8")


def long_plan(count: int = 20) -> DigestPlan:
    sentence = "Ủy ban nhân dân tỉnh Quảng Trị triển khai nhiều giải pháp phát triển kinh tế xã hội"
    articles = tuple(
        make_article(
            f"long{i:02}",
            title=f"{sentence} bền vững trong giai đoạn mới, bài số {i}",
            lead=" ".join(f"{sentence} ở huyện số {i}-{j}." for j in range(30)),
            author="Nguyễn Thị Phương Thảo",
            slug=f"uy-ban-nhan-dan-tinh-quang-tri-trien-khai-nhieu-giai-phap-{i}",
            teasers=tuple(
                Teaser("QTO", f"Tin riêng số {i}-{k}: {sentence} ở vùng {k}...") for k in range(10)
            ),
        )
        for i in range(count)
    )
    return digest_plan(day=DAY, articles=articles, more=123)


def test_digest_with_max_articles_stays_under_gmail_clipping(
    mail_settings: Settings, now: datetime
) -> None:
    plan_ = long_plan(mail_settings.digest.max_articles)
    rendered = render(plan_, mail_settings, now)
    size = len(rendered.html.encode("utf-8"))
    assert size < 102 * 1024, size
    # Every lead was cut to digest.lead_words at a sentence boundary.
    leads = [lead_excerpt(a.lead, words=60) for a in plan_.articles]
    assert all(lead in rendered.text.replace("\n", " ") for lead in leads)
    assert all(len(lead.split()) <= 60 for lead in leads)


def test_every_line_is_short_enough_for_smtp(mail_settings: Settings, now: datetime) -> None:
    giant = "X" * 5000
    article = make_article("g", title="Đ" * 3000, lead=f"Mở đầu {giant} tiếp {giant}.")
    for plan_ in (long_plan(), digest_plan(day=DAY, articles=(article,))):
        rendered = render(plan_, mail_settings, now)
        assert html_lines_ok(rendered.text)
        assert MARKER in rendered.html
        assert MARKER in rendered.text
        # The mail stage folds the HTML part's long lines.
        template = build_digest_template(
            rendered,
            info=MailInfo.from_settings(mail_settings),
            digest_day=DAY,
            marker=MARKER,
            now=now,
            message_key=None,
        )
        data = fill_message(
            template, to="a@example.org", subscriber_id=1, unsubscribe_url=MARKER + "-filled"
        )
        assert max(len(line) for line in data.split(b"\r\n")) <= 998


def test_text_part_wraps_at_72_columns_but_never_splits_a_url(
    mail_settings: Settings, now: datetime
) -> None:
    long_slug = "-".join(["mot-duong-dan-rat-dai-cho-bai-viet"] * 4)
    plan_ = long_plan(5)
    articles = (dataclasses.replace(plan_.articles[0], slug=long_slug), *plan_.articles[1:])
    pages = {a.id: article_path(a.slug) for a in articles}
    rendered = render(
        dataclasses.replace(plan_, articles=articles, pages=pages), mail_settings, now
    )
    long_url = article_url("http://localhost:8000/", long_slug)
    assert len(long_url) > 72
    for line in rendered.text.split("\n"):
        assert len(line) <= 72 or re.fullmatch(r"\S*https?://\S+", line), line
    assert f"\n{long_url}\n" in rendered.text
    assert f"\n{MARKER}\n" in rendered.text


def test_unsubscribe_marker_appears_verbatim(mail_settings: Settings, now: datetime) -> None:
    marker = "SYNDICATE-UNSUBSCRIBE-" + "a1B2-_:/.?=" * 8
    rendered = render_digest(
        long_plan(2),
        lang="vi",
        info=DigestInfo.from_settings(mail_settings),
        unsubscribe_url=marker,
        now=now,
    )
    assert rendered.html.count(marker) == 1
    assert rendered.text.count(marker) == 1
    assert f"\n{marker}\n" in rendered.text


def test_web_version_says_so_and_has_no_view_link(mail_settings: Settings, now: datetime) -> None:
    rendered = render_digest(
        digest_plan(day=DAY, articles=golden_articles()),
        lang="vi",
        info=DigestInfo.from_settings(mail_settings),
        unsubscribe_url="http://localhost:8000/unsubscribe",
        now=now,
        web=True,
    )
    site = mail_settings.site.title
    # One "của", as a news site words it (it said "bản xem ... của bản tin ... của").
    assert f"Bạn đang xem bản tin hằng ngày của {site} trên trình duyệt." in rendered.html
    assert "Xem trong trình duyệt" not in rendered.html
    # A page's title, not the mail's subject line.
    assert f"<title>Bản tin Thứ Sáu, 1/11/2024 — {site}</title>" in rendered.html
    assert f"<title>{rendered.subject}</title>" not in rendered.html


def test_web_version_in_english_has_a_page_title(mail_settings: Settings, now: datetime) -> None:
    rendered = render_digest(
        digest_plan(day=DAY, articles=golden_articles()),
        lang="en",
        info=DigestInfo.from_settings(mail_settings),
        unsubscribe_url="http://localhost:8000/unsubscribe",
        now=now,
        web=True,
    )
    site = mail_settings.site.title
    assert f"<title>News for November 1, 2024 — {site}</title>" in rendered.html
    assert f"You are reading the {site} daily digest in your browser." in rendered.html


@pytest.mark.parametrize(
    ("lang", "label"), [("vi", "Chuyển đến nội dung chính"), ("en", "Skip to main content")]
)
def test_web_version_has_a_main_landmark_and_a_skip_link_the_mail_has_not(
    mail_settings: Settings, now: datetime, lang: str, label: str
) -> None:
    # The "view in browser" page had neither, unlike every other page of the site.
    plan = digest_plan(day=DAY, articles=golden_articles())
    info = DigestInfo.from_settings(mail_settings)
    url = "http://localhost:8000/unsubscribe"
    page = render_digest(plan, lang=lang, info=info, unsubscribe_url=url, now=now, web=True)
    body = page.html.split("<body", 1)[1]
    assert body.count("<main>") == body.count("</main>") == 1
    skip = re.search(r'<a class="skip" href="#heading"[^>]*>([^<]*)</a>\s*<main>', body)
    assert skip is not None
    assert skip.group(1) == label
    # The heading it leads to, past the site's name, is in <main>.
    assert re.search(r'<main>.*<h1 id="heading" tabindex="-1"[^>]*>', body, re.DOTALL)
    assert body.index("</table>\n</main>") > body.rindex("unsubscribe")
    # Out of sight until focused: kept in a <style> (@media), not inlined onto the link.
    assert "a.skip:not(:focus)" in page.html.split("</head>", 1)[0]
    mail = render_digest(plan, lang=lang, info=info, unsubscribe_url=url, now=now)
    assert "<main" not in mail.html
    assert "skip" not in mail.html
    assert 'id="heading"' not in mail.html


def test_mail_title_is_its_subject(mail_settings: Settings, now: datetime) -> None:
    rendered = render_digest(
        digest_plan(day=DAY, articles=golden_articles()),
        lang="vi",
        info=DigestInfo.from_settings(mail_settings),
        unsubscribe_url="http://localhost:8000/unsubscribe",
        now=now,
    )
    assert f"<title>{rendered.subject}</title>" in rendered.html


@pytest.mark.parametrize(
    ("text", "written", "day", "expected"),
    [
        # Read on the day it was written: as it is.
        ("Sáng nay 1/11, UBND tỉnh", None, date(2024, 11, 1), "Sáng nay 1/11, UBND tỉnh"),
        ("Chiều qua 30-10, Sở", date(2024, 10, 31), date(2024, 10, 31), "Chiều qua 30-10, Sở"),
        # Read later: the relative word goes, the explicit date stays as written.
        ("Sáng nay 1/11, UBND tỉnh", None, date(2024, 11, 3), "Sáng 1/11, UBND tỉnh"),
        ("Chiều qua 30-10, Sở", None, date(2024, 11, 3), "Chiều 30-10, Sở"),
        ("Hôm nay 21/11, Bộ Chỉ huy", None, date(2024, 11, 25), "Ngày 21/11, Bộ Chỉ huy"),
        ("Rạng sáng nay 1/11, lũ", None, date(2024, 11, 2), "Rạng sáng 1/11, lũ"),
        # No date in the text: the story's day gives it.
        (
            "Hôm qua, tỉnh Lam Giang",
            date(2024, 10, 31),
            date(2024, 11, 1),
            "Ngày 30/10, tỉnh Lam Giang",
        ),
        (
            "Sáng nay, tại TP. Bến Lam",
            date(2024, 10, 31),
            date(2024, 11, 1),
            "Sáng 31/10, tại TP. Bến Lam",
        ),
        (
            "Yesterday, the province",
            date(2024, 10, 29),
            date(2024, 11, 1),
            "On October 28, the province",
        ),
        (
            "This morning the province",
            date(2024, 10, 29),
            date(2024, 11, 1),
            "On October 29 the province",
        ),
        ("Today, farmers", date(2024, 10, 29), date(2024, 10, 29), "Today, farmers"),
        # Nothing says which day: as it is.
        ("Hôm qua, tỉnh Lam Giang", None, date(2024, 11, 1), "Hôm qua, tỉnh Lam Giang"),
        # Not an opening relative day.
        (
            "Hội thảo diễn ra sáng nay 1/11",
            None,
            date(2024, 11, 3),
            "Hội thảo diễn ra sáng nay 1/11",
        ),
        ("Sáng nayx 1/11", None, date(2024, 11, 3), "Sáng nayx 1/11"),
        # The date in brackets, as many datelines give it: not said twice.
        ("Sáng nay (1/11), UBND tỉnh", None, date(2024, 11, 3), "Sáng 1/11, UBND tỉnh"),
        ("Chiều nay (1/11), Sở", date(2024, 11, 1), date(2024, 11, 3), "Chiều 1/11, Sở"),
        ("Hôm qua (31/10), Sở", None, date(2024, 11, 3), "Ngày 31/10, Sở"),
        # The date after a comma, as other datelines give it: not said twice either.
        ("Sáng nay, 1/11, UBND tỉnh", None, date(2024, 11, 3), "Sáng 1/11, UBND tỉnh"),
        ("Rạng sáng nay, 1/11, Sở", None, date(2024, 11, 3), "Rạng sáng 1/11, Sở"),
        ("Hôm qua, 31/10, Sở", date(2024, 11, 1), date(2024, 11, 3), "Ngày 31/10, Sở"),
        ("Tối nay, 1/11 UBND tỉnh", None, date(2024, 11, 1), "Tối nay, 1/11 UBND tỉnh"),
        ("Tối nay, 3-1 là tỷ số", None, date(2024, 11, 3), "Tối nay, 3-1 là tỷ số"),
        # A number after the word that would be a date after the reading day: a score.
        ("Tối nay 3-1 là tỷ số", None, date(2024, 11, 3), "Tối nay 3-1 là tỷ số"),
        # The English word as the subject: the date takes its place, without "On".
        (
            "Today's vote was close",
            date(2024, 10, 29),
            date(2024, 11, 1),
            "October 29's vote was close",
        ),
        (
            "Today is the last day",
            date(2024, 10, 29),
            date(2024, 11, 1),
            "October 29 is the last day",
        ),
        ("Yesterday saw rain", date(2024, 10, 29), date(2024, 11, 1), "October 28 saw rain"),
    ],
)
def test_a_relative_day_is_settled_when_read_on_another_day(
    text: str, written: date | None, day: date, expected: str
) -> None:
    assert settle_relative_day(text, written=written, day=day) == expected


def test_a_later_digest_drops_sang_nay_from_leads_and_teasers(
    mail_settings: Settings, now: datetime
) -> None:
    """A digest sent days after its stories said "Sáng nay 1/11" (this morning) of a story
    of 1/11 and of a teaser of 30/10 (editor23's brief); the day's own digest keeps it."""
    info = DigestInfo.from_settings(mail_settings)
    later = render_digest(
        digest_plan(day=DAY + timedelta(days=3), articles=golden_articles()),
        lang="vi",
        info=info,
        unsubscribe_url="http://localhost:8000/unsubscribe",
        now=now,
    )
    for part in (later.html, later.text):
        assert "Sáng nay" not in part
        assert "Sáng 1/11, UBND tỉnh Lam Giang" in part
    assert "Sáng 30/10, Sở Y tế" in later.text
    same_day = render(digest_plan(day=DAY, articles=golden_articles()), mail_settings, now)
    assert "Sáng nay 1/11, UBND tỉnh Lam Giang" in same_day.text


def test_the_web_versions_sign_up_link_is_escaped(mail_settings: Settings, now: datetime) -> None:
    rendered = render_digest(
        digest_plan(day=DAY, articles=golden_articles()),
        lang="en",
        info=DigestInfo.from_settings(mail_settings),
        unsubscribe_url="http://localhost:8000/unsubscribe",
        now=now,
        web=True,
        subscribe_url='http://localhost:8000/a"<b>&/subscribe?lang=en',
    )
    # The quote cannot end the attribute (the CSS inliner writes the rest as HTML allows).
    assert '<a href="http://localhost:8000/a&quot;<b>&amp;/subscribe?lang=en" ' in rendered.html


def test_unknown_language_is_refused(mail_settings: Settings, now: datetime) -> None:
    with pytest.raises(
        InputError, match=r"^language 'fr' is not supported; expected one of vi, en\.$"
    ):
        render(hostile_plan(), mail_settings, now, lang="fr")


def test_operator_templates_dir_without_templates_is_a_clear_error(
    mail_settings: Settings, now: datetime, tmp_path: Path
) -> None:
    empty = tmp_path / "my-templates"
    empty.mkdir()
    odd = dataclasses.replace(
        mail_settings, digest=dataclasses.replace(mail_settings.digest, templates_dir=empty)
    )
    with pytest.raises(ConfigError) as info:
        render(hostile_plan(), odd, now)
    assert str(info.value) == (
        f"config key digest.templates_dir ({str(empty)!r}): template 'digest.html.j2' is missing. "
        "Copy templates/email/ from syndicate, or leave digest.templates_dir empty."
    )


def test_operator_templates_are_used(
    mail_settings: Settings, now: datetime, tmp_path: Path
) -> None:
    folder = tmp_path / "tpl"
    folder.mkdir()
    (folder / "digest.html.j2").write_text(
        "<html><body>{% for a in articles %}<p>{{ a.title }}</p>{% endfor %}</body></html>",
        encoding="utf-8",
    )
    (folder / "digest.txt.j2").write_text("{{ site_title }}: {{ articles|length }}\n", "utf-8")
    odd = dataclasses.replace(
        mail_settings, digest=dataclasses.replace(mail_settings.digest, templates_dir=folder)
    )
    rendered = render(hostile_plan(), odd, now)
    assert "&lt;script&gt;" in rendered.html
    assert rendered.text == "Tin mới: 1\n"


# --------------------------------------------------------------------------- line helpers


def test_fold_html_lines_breaks_only_outside_attribute_values() -> None:
    value = "a b " * 40
    html = f'<p title="{value}" class="x">' + "từ " * 600 + "</p>"
    folded = fold_html_lines(html, limit=200)
    assert html_lines_ok(folded)
    assert all(len(line.encode()) <= 200 for line in folded.split("\n") if value not in line)
    assert f'title="{value}"' in folded
    assert folded.replace("\n", " ") == html


@pytest.mark.parametrize("before", ["", "x ", "x" * 100 + " "], ids=["alone", "a word", "words"])
def test_fold_html_lines_keeps_every_line_in_its_limit_around_a_run_after_an_ampersand(
    before: str,
) -> None:
    # Breaking before an "&" that opens a character reference: a run after it longer than a
    # line (no ";") left lines of up to 1,404 bytes at the default 900 (a break at a space
    # kept the "&"'s place on the line before; one at a line's start broke nothing).
    for length in (250, 410, 1000):
        html = f"<p>{before}&{'a' * length};</p>"
        folded = fold_html_lines(html, limit=200)
        assert max(len(line.encode()) for line in folded.split("\n")) <= 200, length
        assert folded.replace("\n", "").replace(" ", "") == html.replace(" ", ""), length
    # A reference shorter than a line is still never split.
    html = "<p>" + "từ " * 60 + "&amp; " * 100 + "</p>"
    folded = fold_html_lines(html, limit=200)
    assert all(line.count("&") == line.count("&amp;") for line in folded.split("\n"))


def test_fold_html_lines_keeps_the_limit_when_a_space_opens_a_line_of_wide_letters() -> None:
    # A break at a space one or two bytes into the line left the letter that overflowed it
    # on the new line without measuring again: "x " + "ệ" * 300 made a line of 201 bytes
    # at 200 (at most 3 bytes over: 903 at the default 900, still under SMTP's 998).
    # The same after a break before an "&" whose run nearly fills the line.
    for html in (" " + "ệ" * 300, "x " + "ệ" * 300, " xaxệaệ", "b&baabaệbbbệ"):
        for limit in (8, 200):
            folded = fold_html_lines(html, limit=limit)
            assert max(len(line.encode()) for line in folded.split("\n")) <= limit, (html, limit)
            assert folded.replace("\n", "").replace(" ", "") == html.replace(" ", "")


def test_wrap_text_hangs_list_items_and_keeps_protected_words() -> None:
    keep = "MARKER-" + "x" * 90
    text = "1. " + "chữ " * 40 + "\n" + keep + "\n" + "y" * 100
    wrapped = wrap_text(text, keep={keep})
    lines = wrapped.split("\n")
    assert lines[0].startswith("1. chữ")
    assert lines[1].startswith("   chữ")
    assert keep in lines
    assert "y" * 72 in lines
    assert "y" * 28 in lines


# --------------------------------------------------------------------------- shared fixtures


def test_shared_hostile_articles_come_out_as_text_in_both_parts(
    hostile_articles: list[Article], mail_settings: Settings, now: datetime
) -> None:
    plan_ = digest_plan(day=DAY, articles=tuple(hostile_articles))
    for lang in ("vi", "en"):
        rendered = render(plan_, mail_settings, now, lang=lang)
        doc = parse_html(rendered.html)
        assert not {tag for tag, _ in doc.tags} & {"script", "b", "i", "em", "img"}
        visible = unicodedata.normalize("NFC", " ".join(" ".join(doc.text).split()))
        flat_text = " ".join(rendered.text.split())
        for article in hostile_articles:
            title = unicodedata.normalize("NFC", " ".join(article.title.split()))
            dated = article.published is not None and article.precision is not Precision.UNKNOWN
            written = article.published.astimezone(SITE_TZ).date() if dated else None  # type: ignore[union-attr]
            # As read on DAY ("Sáng nay" of an earlier day is "Sáng <date>").
            lead = lead_excerpt(
                settle_relative_day(article.lead, written=written, day=DAY),
                words=mail_settings.digest.lead_words,
            )
            for expected in (title, lead):
                assert expected.encode("utf-8") in visible.encode("utf-8"), expected
                assert expected.encode("utf-8") in flat_text.encode("utf-8"), expected
        assert "Giá {{ 7*7 }} và {% raw %}mẫu{% endraw %} ]]>" in flat_text
        assert "Giá 49" not in visible
        assert "Giá 49" not in flat_text
        assert "\nBcc:" not in rendered.text
        assert "\r" not in rendered.text
        assert "\r" not in rendered.html
        assert unicodedata.is_normalized("NFC", rendered.html)
        assert unicodedata.is_normalized("NFC", rendered.text)
        assert "\n" not in rendered.subject


def test_shared_sample_articles_make_a_sound_digest(
    sample_articles: list[Article], mail_settings: Settings, now: datetime
) -> None:
    newest = max(a.published for a in sample_articles if a.published)
    result = plan_digest(
        ((a, now) for a in sample_articles),
        day=DAY,
        newest_published=newest,
        max_age_hours=48,
        max_articles=20,
        tz=SITE_TZ,
    )
    assert result is not None
    assert all(
        a.published is None or a.published >= newest - timedelta(hours=48) for a in result.articles
    )
    rendered = render(result, mail_settings, now)
    assert html_lines_ok(rendered.html)
    assert html_lines_ok(rendered.text)
    assert len(rendered.html.encode()) < 102 * 1024
    for article in sample_articles:
        excerpt = lead_excerpt(article.lead, words=mail_settings.digest.lead_words)
        assert len(excerpt.split()) <= mail_settings.digest.lead_words
        assert " ".join(article.lead.split()).startswith(excerpt.rstrip("…"))


def test_digest_blurb_is_the_head_when_the_article_has_one(
    settings: Settings, now: datetime
) -> None:
    with_head = dataclasses.replace(
        make_article("h", lead="Đoạn thân bài đầu tiên."), head="Sapo <b>tóm tắt</b> bài."
    )
    without = make_article("l", lead="Chỉ có đoạn mở đầu.")
    email = render(digest_plan(day=DAY, articles=(with_head, without)), settings, now)
    assert "Sapo &lt;b&gt;tóm tắt&lt;/b&gt; bài." in email.html
    assert "Sapo <b>tóm tắt</b> bài." in email.text
    assert "Đoạn thân bài đầu tiên." not in email.text
    assert "Chỉ có đoạn mở đầu." in email.text


def test_rendering_takes_digest_info_not_the_whole_settings() -> None:
    import inspect

    for function in (make_subject, render_digest):
        annotations = {str(p.annotation) for p in inspect.signature(function).parameters.values()}
        assert "Settings" not in annotations, function.__name__
        assert "DigestInfo" in annotations, function.__name__


def test_digest_info_takes_the_digest_values_from_the_settings(settings: Settings) -> None:
    info = DigestInfo.from_settings(settings)
    assert info.site_title == settings.site.title
    assert info.base_url.endswith("/")
    assert info.tz == settings.site.tz
    assert info.subject == settings.mail.subject
    assert (info.lead_words, info.max_teasers) == (
        settings.digest.lead_words,
        settings.digest.max_teasers,
    )
    assert (info.templates_dir / "digest.html.j2").is_file()


# --------------------------------------------------------------------------- typesetting

# Each word is where a 72-column line (text part) or a phone's line (HTML) may end.
# The text part's first line would end at "21" (71 columns), leaving "km" for the next.
_UNITS_LEAD = (
    "Giải chạy “Vì biển đảo Lam Giang” diễn ra sáng 3/11, cự ly dài nhất 21 km và 10 km; "
    "các tổ chức chính trị - xã hội cùng tham gia dù lượng mưa đo được là 312 mm."
)


def test_a_number_keeps_its_unit_and_a_spaced_dash_its_word_on_one_line(
    mail_settings: Settings, now: datetime
) -> None:
    """A phone broke "21 km" after the number and opened a line with "- xã hội", which
    reads as a list bullet: the spaces there are no-break spaces, in both parts."""
    article = make_article("u1", title="Hơn 3.000 vận động viên dự giải chạy", lead=_UNITS_LEAD)
    rendered = render(digest_plan(day=DAY, articles=(article,)), mail_settings, now)
    visible = "".join(parse_html(rendered.html).text)
    for text in (visible, re.sub(r"\n *", " ", rendered.text)):
        assert "21\u00a0km" in text
        assert "10\u00a0km" in text
        assert "312\u00a0mm" in text
        assert "chính trị\u00a0- xã hội" in text
        assert "3/11, cự ly" in text  # a number and a word that is no unit: a plain space
    # The text part wraps at 72 columns: the line ends before "21", not between it and km.
    lines = rendered.text.split("\n")
    assert not any(line.startswith(("km", "mm", "- xã")) for line in lines)
    assert any(line.endswith("cự ly dài nhất") for line in lines)
    # The subject stays plain: a header has no business with no-break spaces.
    assert "\u00a0" not in rendered.subject


def test_an_unlinked_teaser_cut_with_three_dots_ends_in_an_ellipsis(
    mail_settings: Settings, now: datetime
) -> None:
    """The sidebar's "..." reads as one character "…", as every other cut in the digest;
    the dateline stands apart by the same dash in both parts (the text part wrote "LGO - "
    after its own "- " bullet)."""
    teaser = Teaser("LGO", "Sáng nay 31/10, Sở Giáo dục tổ chức hội nghị cho cán bộ các trường...")
    article = make_article("t1", teasers=(teaser,))
    rendered = render(digest_plan(day=DAY, articles=(article,)), mail_settings, now)
    visible = "".join(parse_html(rendered.html).text)
    for text in (visible, re.sub(r"\n *", " ", rendered.text)):
        assert "cán bộ các trường…" in text
        assert "trường..." not in text
        # (Read on 1/11: "Sáng nay 31/10" is "Sáng 31/10".)
        assert "LGO \u2013 Sáng 31/10" in text


@pytest.mark.parametrize(
    ("lang", "when", "precision", "shown"),
    [
        (
            "vi",
            datetime(2024, 10, 31, 2, 15, tzinfo=UTC),
            Precision.DATETIME,
            "Thứ Năm, 31/10/2024, 09:15 (GMT+7)",
        ),
        (
            "vi",
            datetime(2024, 10, 30, 17, 0, tzinfo=UTC),
            Precision.DATE,
            "Thứ Năm, 31/10/2024",
        ),
        (
            "en",
            datetime(2024, 10, 31, 2, 15, tzinfo=UTC),
            Precision.DATETIME,
            "Thursday, October 31, 2024, 9:15\u202fAM (GMT+7)",
        ),
    ],
)
def test_an_articles_date_reads_as_on_its_page(
    mail_settings: Settings,
    now: datetime,
    lang: str,
    when: datetime,
    precision: Precision,
    shown: str,
) -> None:
    """The digest said "09:15 31 tháng 10, 2024": a time and a day's number side by side
    read as one figure. It now writes the date as the article's page does (with the
    weekday), in both parts."""
    from syndicate.site import format_published

    article = make_article("d1", published=when, precision=precision, author="Hoài Nam")
    rendered = render(digest_plan(day=DAY, articles=(article,)), mail_settings, now, lang=lang)
    tz = ZoneInfo("Asia/Ho_Chi_Minh")
    assert format_published(when, precision, locale=lang, tz=tz) == shown
    assert f"{shown} · Hoài Nam" in "".join(parse_html(rendered.html).text)
    assert f"\n{shown} · Hoài Nam\n" in rendered.text


def test_a_summary_does_not_repeat_a_title_made_from_it(
    mail_settings: Settings, now: datetime
) -> None:
    """A dump without a title gets one from its head or lead; the digest then printed those
    words twice, as the headline and again as the summary's first sentence. It goes on
    after them, as the article's page does; a summary that opens otherwise is kept whole."""
    from syndicate.load import parse_dump

    tz = ZoneInfo("Asia/Ho_Chi_Minh")
    dumps = {
        "head": "{title}\n31/10/2024 09:15\nQTO - Tỉnh khen thưởng 20 tập thể xuất sắc. "
        "Lễ diễn ra tại TP. Đông Hà.\nThân bài.\n",
        "lead": "{title}\n30/10/2024\n{head}\nHội chợ nông sản mở cửa. Hơn 80 gian hàng "
        "tham gia.\nThân bài.\n",
        "adverbial": "{title}\n30/10/2024\n{head}\nSáng nay 30/10, tỉnh khai mạc hội chợ.\n"
        "Thân bài.\n",
    }
    articles = tuple(
        dataclasses.replace(parse_dump(text.encode(), source=f"{key}.txt", tz=tz), id=key)
        for key, text in dumps.items()
    )
    assert [a.title for a in articles] == [
        "Tỉnh khen thưởng 20 tập thể xuất sắc",
        "Hội chợ nông sản mở cửa",
        "Tỉnh khai mạc hội chợ",
    ]
    rendered = render(digest_plan(day=DAY, articles=articles), mail_settings, now)
    text = re.sub(r"\n *", " ", rendered.text)
    assert text.count("Tỉnh khen thưởng 20 tập thể xuất sắc") == 2  # contents, headline
    assert text.count("Hội chợ nông sản mở cửa") == 2
    leads = [
        "".join(parse_html(p).text)
        for p in re.findall(r"<p style=[^>]*>.*?</p>", rendered.html)
        if "class=" not in p
    ]
    for part in (leads, text):
        assert "Lễ diễn ra tại TP. Đông Hà." in part
        assert "Hơn 80 gian hàng tham gia." in part
        assert "Sáng 30/10, tỉnh khai mạc hội chợ." in part  # read on 1/11: not "Sáng nay"
    # The inbox preview, shown after the subject (which names the first headline), goes on
    # after it too.
    assert rendered.subject.startswith("Tin mới: Tỉnh khen thưởng 20 tập thể xuất sắc")
    assert rendered.preheader == "Lễ diễn ra tại TP. Đông Hà."


def test_an_article_in_the_other_language_is_marked_as_such(
    mail_settings: Settings, now: datetime
) -> None:
    """An English article in the Vietnamese digest (and the reverse) carries its own `lang`,
    in the contents and in its section, so a screen reader speaks it in its language."""
    english = dataclasses.replace(
        make_article(
            "en1",
            title="Lam Giang coffee growers bet on specialty beans",
            lead="Coffee farmers in the highland districts are replacing ageing trees.",
        ),
        language="en",
    )
    vietnamese = make_article("vi1", title="Thông xe cầu Sông Lam")
    plan_ = digest_plan(day=DAY, articles=(english, vietnamese))
    html = render(plan_, mail_settings, now).html
    doc = parse_html(html)
    marked = [attrs for tag, attrs in doc.tags if attrs.get("lang") == "en"]
    assert len(marked) == 2  # its line in the contents, its section
    html_en = render(plan_, mail_settings, now, lang="en").html
    # The page, its line in the contents, its section, and inside that its date line and
    # "Read more", which are in the reader's language.
    assert [attrs.get("lang") for tag, attrs in parse_html(html_en).tags if "lang" in attrs] == [
        "en",
        "vi",
        "vi",
        "en",
        "en",
    ]

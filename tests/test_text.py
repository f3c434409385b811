"""Text helpers: NFC, invisible characters, header-safe strings, slugs, sentences, language."""

from __future__ import annotations

import random
import re
import time
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syndicate import text as text_module
from syndicate.text import (
    COMPOUND_WORDS,
    FUNCTION_WORDS,
    TITLE_LIMIT,
    after_title,
    clean_line,
    clean_text,
    collapse_spaces,
    derive_title,
    detect_language,
    drop_opening_adverbial,
    first_sentence,
    header_safe,
    lead_excerpt,
    nfc,
    one_line,
    photo_description,
    set_headline,
    shorten,
    shorten_headline,
    slugify,
    story_key,
    trailing_ellipsis,
    typeset,
    typeset_utf8,
)


def test_nfc_composes_decomposed_vietnamese() -> None:
    decomposed = unicodedata.normalize("NFD", "Quảng Trị")
    assert decomposed != "Quảng Trị"
    assert nfc(decomposed).encode("utf-8") == "Quảng Trị".encode()


def test_nfc_does_not_unify_tone_placement() -> None:
    assert nfc("hòa") != nfc("hoà")


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("QTO\u00a0-\u00a0Sáng nay", "QTO - Sáng nay"),
        ("a\u200bb\u200cc\u200dd\u2060e\ufefff", "abcdef"),
        ("chuyển\u00ad đổi", "chuyển đổi"),
        ("\ttab\t\tđôi  ", "tab đôi"),
        ("a\fb\u2028c\u2029d\x85e", "a b c d e"),
        ("\ufeff{title}", "{title}"),
        ("x\x1b[31my", "x [31my"),
        (unicodedata.normalize("NFD", "Đông  Hà"), "Đông Hà"),
        ("thin\u2009space\u202fnarrow\u3000wide", "thin space narrow wide"),
    ],
)
def test_clean_line(raw: str, clean: str) -> None:
    assert clean_line(raw) == clean


def test_header_safe_removes_line_breaks_and_bounds_length() -> None:
    assert header_safe("Tin khẩn\r\nBcc: evil@example.com") == "Tin khẩn Bcc: evil@example.com"
    long = header_safe("x" * 1000, limit=10)
    assert long == "xxxxxxxxx…"
    assert len(long) == 10


# Every way a title, author or other one-line field is cleaned.
ONE_LINE_CLEANERS = [clean_line, one_line, header_safe]


@pytest.mark.parametrize("clean", ONE_LINE_CLEANERS)
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # RIGHT-TO-LEFT OVERRIDE would show "gpj.exe" as "exe.jpg".
        ("Ảnh\u202egpj.exe", "Ảnhgpj.exe"),
        ("a\u202ab\u202bc\u202cd\u202de\u202ef", "abcdef"),
        ("Tin \u2066nóng\u2069 \u2067x\u2069\u2068y\u2069", "Tin nóng xy"),
        # Decomposed text around a control composes once it is gone.
        (unicodedata.normalize("NFD", "Hà\u202e Nội"), "Hà Nội"),
    ],
)
def test_bidi_controls_are_removed_from_one_line_fields(clean, raw: str, expected: str) -> None:  # type: ignore[no-untyped-def]
    assert clean(raw) == expected


@pytest.mark.parametrize("clean", ONE_LINE_CLEANERS)
@pytest.mark.parametrize(
    "emoji",
    [
        "👨\u200d👩\u200d👧",  # family
        "🏳\ufe0f\u200d🌈",  # rainbow flag: variation selector before the joiner
        "👩🏽\u200d💻",  # skin tone before the joiner
        "❤\ufe0f\u200d🔥",  # a dingbat heart
    ],
)
def test_zero_width_joiner_inside_an_emoji_sequence_is_kept(clean, emoji: str) -> None:  # type: ignore[no-untyped-def]
    assert clean(f"Gia đình {emoji} vui") == f"Gia đình {emoji} vui"


@pytest.mark.parametrize("clean", ONE_LINE_CLEANERS)
def test_zero_width_joiner_outside_emoji_is_removed(clean) -> None:  # type: ignore[no-untyped-def]
    assert clean("a\u200db \u200d👍 👍\u200d x\u200d\u200d👍") == "ab 👍 👍 x👍"


SCOTLAND = "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f"


@pytest.mark.parametrize("clean", ONE_LINE_CLEANERS)
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # Bidi marks: invisible, and nothing a Vietnamese or English line needs.
        ("Tin\u200e nóng\u200f về\u061c Huế", "Tin nóng về Huế"),
        # Tag characters spell hidden text ("ASCII smuggling") that no reader sees...
        ("Tin\U000e0001\U000e0069\U000e0067\U000e006e\U000e007f nóng", "Tin nóng"),
        # ... but spell a subdivision flag after the black flag: kept there.
        (f"Cờ {SCOTLAND} tung bay", f"Cờ {SCOTLAND} tung bay"),
        (f"\U000e0067{SCOTLAND}\U000e007f", SCOTLAND),
        # Invisible operators (function application, times, separator, plus).
        ("a\u2061b\u2062c\u2063d\u2064e", "abcde"),
        # A byte order mark inside the text, and a zero-width space between Latin letters
        # (neither was ever kept).
        ("Quảng\ufeff Trị, Hà\u200bNội", "Quảng Trị, HàNội"),
        # Thai, Lao, Khmer and Burmese write no spaces: a zero-width space between two of
        # their letters is where a line may break, and stays.
        ("ภาษา\u200bไทย", "ภาษา\u200bไทย"),
        (
            "ພາສາ\u200bລາວ ភាសា\u200bខ្មែរ မြန်မာ\u200bစာ",
            "ພາສາ\u200bລາວ ភាសា\u200bខ្មែរ မြန်မာ\u200bစာ",
        ),
        # ... but not at their edge, nor doubled.
        ("ไทย\u200b Huế\u200bไทย ไทย\u200b\u200bไทย", "ไทย Huếไทย ไทยไทย"),
    ],
)
def test_invisible_characters_are_removed_from_one_line_fields(
    clean, raw: str, expected: str
) -> None:  # type: ignore[no-untyped-def]
    assert clean(raw) == expected
    assert clean_text(raw).strip() == expected
    assert clean(clean(raw)) == expected


@pytest.mark.parametrize(
    ("raw", "headline"),
    [
        # No paper ends a headline with a full stop...
        ("Thông xe cầu Sông Lam.", "Thông xe cầu Sông Lam"),
        ("Thông xe cầu Sông Lam .", "Thông xe cầu Sông Lam"),
        ("Khánh thành cầu “Sông Lam”.", "Khánh thành cầu “Sông Lam”"),
        # ... but an abbreviation keeps its own, and a question or exclamation stays.
        ("Lam Giang hợp tác với Công ty A.B.C.", "Lam Giang hợp tác với Công ty A.B.C."),
        ("Ai sẽ thắng?", "Ai sẽ thắng?"),
        # Three dots are an ellipsis; no space before a comma, colon or question mark.
        ("Mùa lũ đã qua...", "Mùa lũ đã qua…"),
        ("Cầu Sông Lam , nối hai bờ : vì sao ?", "Cầu Sông Lam, nối hai bờ: vì sao?"),
        # Straight double quotes that pair up are a quotation's curly marks.
        (
            'Giải chạy "Vì biển đảo Lam Giang" thu hút 3.000 người',
            "Giải chạy “Vì biển đảo Lam Giang” thu hút 3.000 người",
        ),
        ('"Không để ai thiếu đói": Chủ tịch tỉnh', "“Không để ai thiếu đói”: Chủ tịch tỉnh"),
        # Left as they are when they do not pair (an inch mark, a lone quote).
        ('Màn hình 55" giảm giá', 'Màn hình 55" giảm giá'),
        ('Ông A nói "sẽ về', 'Ông A nói "sẽ về'),
        ("Thông xe cầu Sông Lam", "Thông xe cầu Sông Lam"),
        # A short last word is no abbreviation for being short (review23): it loses the
        # stop; an abbreviation of any length keeps it, and an initial too.
        ("Xe bồn phát nổ.", "Xe bồn phát nổ"),
        ("Hà Nội rét 9 độ.", "Hà Nội rét 9 độ"),
        ("Lãi suất tăng 2%.", "Lãi suất tăng 2%"),
        ("Samsung mua cổ phần của Harman Inc.", "Samsung mua cổ phần của Harman Inc."),
        ("Rau, củ, quả etc.", "Rau, củ, quả etc."),
        ("Luận văn xuất sắc của ThS.", "Luận văn xuất sắc của ThS."),
        ("Khen thưởng ông Nguyễn Văn A.", "Khen thưởng ông Nguyễn Văn A."),
        ("Đoàn công tác đến TP.", "Đoàn công tác đến TP."),
        # A score or a ratio keeps its spaced colon; a label loses the space before it.
        ("Việt Nam thắng Lào 2 : 1", "Việt Nam thắng Lào 2 : 1"),
        ("Tỷ lệ chọi 1 : 20 : kỷ lục", "Tỷ lệ chọi 1 : 20: kỷ lục"),
    ],
)
def test_a_headline_is_set_as_papers_set_one(raw: str, headline: str) -> None:
    assert set_headline(raw) == headline
    assert set_headline(headline) == headline


@pytest.mark.parametrize(
    ("title", "slug"),
    [
        ("Đông Hà", "dong-ha"),
        ("Sáng nay 31/10, tại TP. Đông Hà", "sang-nay-31-10-tai-tp-dong-ha"),
        ("<script>alert(1)</script>", "script-alert-1-script"),
        (unicodedata.normalize("NFD", "Quảng Trị"), "quang-tri"),
        ("!!!", ""),
        ("Ưu đãi ĐẶC BIỆT ở Huế", "uu-dai-dac-biet-o-hue"),
    ],
)
def test_slugify(title: str, slug: str) -> None:
    assert slugify(title) == slug


def test_slugify_cuts_at_a_hyphen() -> None:
    slug = slugify("một hai ba bốn năm sáu bảy tám chín mười " * 5)
    assert len(slug) <= 80
    assert not slug.endswith("-")
    assert slug == ("mot-hai-ba-bon-nam-sau-bay-tam-chin-muoi-mot-hai-ba-bon-nam-sau-bay-tam-chin")


def test_collapse_spaces() -> None:
    assert collapse_spaces("  a \n\t b  ") == "a b"


@pytest.mark.parametrize(
    ("text", "sentence"),
    [
        (
            "Sáng nay, tại TP. Đông Hà, hội thảo diễn ra. Câu hai.",
            "Sáng nay, tại TP. Đông Hà, hội thảo diễn ra.",
        ),
        ("TS. Lê và ThS. Hồ họp. Sau.", "TS. Lê và ThS. Hồ họp."),
        ("PGS. TS. Nguyễn Văn A nói. Sau.", "PGS. TS. Nguyễn Văn A nói."),
        ("Ảnh của T.P cho thấy. Sau.", "Ảnh của T.P cho thấy."),
        ("Ông N.V. Hải phát biểu. Sau.", "Ông N.V. Hải phát biểu."),
        ("Giá 1.000 đồng. Sau.", "Giá 1.000 đồng."),
        ("Ai thắng? Không rõ.", "Ai thắng?"),
        ("Ông nói: “Tốt lắm.” Sau đó ông về.", "Ông nói: “Tốt lắm.”"),
        ("Hết câu... nhưng chưa hết. Sau.", "Hết câu... nhưng chưa hết."),
        ("Không có dấu chấm", "Không có dấu chấm"),
        ("Hội nghị ở Đông Hà. Sau đó ông về.", "Hội nghị ở Đông Hà."),
        ("Ông H. phát biểu. Sau.", "Ông H. phát biểu."),
        ("Mr. Smith met Dr. Jones. Then left.", "Mr. Smith met Dr. Jones."),
    ],
)
def test_first_sentence_knows_abbreviations(text: str, sentence: str) -> None:
    assert first_sentence(text) == sentence


def test_first_sentence_and_lead_excerpt_share_one_abbreviation_list() -> None:
    # "UBND." was known only to the digest's splitter, "Oct." only to first_sentence.
    assert first_sentence("Phó Chủ tịch UBND. Tỉnh dự họp.") == "Phó Chủ tịch UBND. Tỉnh dự họp."
    lead = "The bridge opened on Oct. 31 after two years of work. It cost a lot."
    assert lead_excerpt(lead, words=8) == "The bridge opened on Oct. 31 after two…"
    assert lead_excerpt(lead, words=11) == "The bridge opened on Oct. 31 after two years of work."


def test_shorten_keeps_a_word_that_ends_at_the_limit_and_returns_nfc() -> None:
    assert shorten("một hai ba bốn", limit=11) == "một hai ba…"
    assert shorten("Ho\u0300a bi\u0300nh", limit=20) == "Hòa bình"


def test_shorten_cuts_at_a_word_boundary() -> None:
    assert shorten("ngắn", limit=10) == "ngắn"
    assert shorten("một hai ba bốn năm", limit=12) == "một hai ba…"
    assert shorten("một, hai ba", limit=8) == "một…"
    assert len(shorten("từ " * 100, limit=100)) <= 100


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        # The seeds' page descriptions (160 characters) ended "phía bắc sông sau…", "ở
        # các…", "TS. BS. Nguyễn Hữu…", "hoping to sell to…": a function word, half a name.
        (
            "Sáng nay 1/11, UBND tỉnh Lam Giang tổ chức lễ thông xe cầu Sông Lam, công trình "
            "giao thông trọng điểm nối trung tâm TP. Bến Lam với các xã phía bắc sông sau hơn "
            "hai năm thi công.",
            160,
            "Sáng nay 1/11, UBND tỉnh Lam Giang tổ chức lễ thông xe cầu Sông Lam, công trình "
            "giao thông trọng điểm nối trung tâm TP. Bến Lam với các xã phía bắc sông…",
        ),
        (
            "Bệnh viện Đa khoa tỉnh Lam Giang vừa thực hiện thành công ca phẫu thuật nội soi "
            "cắt khối u tuyến thượng thận cho một bệnh nhân 56 tuổi, do TS. BS. Nguyễn Hữu Tâm "
            "và ThS. BS. Phan Văn Lực trực tiếp thực hiện.",
            160,
            "Bệnh viện Đa khoa tỉnh Lam Giang vừa thực hiện thành công ca phẫu thuật nội soi "
            "cắt khối u tuyến thượng thận cho một bệnh nhân 56 tuổi…",
        ),
        (
            "Coffee farmers in the highland districts of Lam Giang province are replacing "
            "ageing robusta trees with arabica and fine robusta varieties, hoping to sell to "
            "specialty roasters at home and abroad.",
            160,
            "Coffee farmers in the highland districts of Lam Giang province are replacing "
            "ageing robusta trees with arabica and fine robusta varieties, hoping to sell…",
        ),
        # A number keeps its unit, or goes with it.
        ("Cầu Sông Lam dài 680 m, rộng 21 m với bốn làn xe", 32, "Cầu Sông Lam dài 680 m, rộng…"),
    ],
)
def test_shorten_ends_on_a_word_that_reads_well(text: str, limit: int, expected: str) -> None:
    """`shorten` cut at the last space that fits: in Vietnamese as often inside a word as
    between words, and before "…" it left a preposition or half a name dangling."""
    assert shorten(text, limit=limit) == expected
    assert len(expected) <= limit


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        # The sample flood story's page description (160 characters) ended "thuộc huyện…":
        # a district without its name.
        (
            "Từ đêm 30/10 đến chiều 31/10, mưa lớn kéo dài khiến nước sông Lam dâng cao, gây "
            "ngập cục bộ tại nhiều thôn của các xã Đồng Lũy, Phước Sơn và Tân Mỹ thuộc huyện "
            "Đồng Lũy, tỉnh Lam Giang.",
            160,
            "Từ đêm 30/10 đến chiều 31/10, mưa lớn kéo dài khiến nước sông Lam dâng cao, gây "
            "ngập cục bộ tại nhiều thôn của các xã Đồng Lũy, Phước Sơn và Tân Mỹ…",
        ),
        # The digest's lead of the seminar story ended "Hiệp hội Doanh nghiệp tỉnh…".
        (
            "Sở Thông tin và Truyền thông tỉnh Lam Giang phối hợp với Hiệp hội Doanh nghiệp "
            "tỉnh tổ chức hội thảo",
            90,
            "Sở Thông tin và Truyền thông tỉnh Lam Giang phối hợp với Hiệp hội Doanh nghiệp…",
        ),
        (
            "Lễ khởi công cầu Cửa Tùng sẽ được tổ chức vào ngày 12/11 tại xã Phước Sơn",
            56,
            "Lễ khởi công cầu Cửa Tùng sẽ được tổ chức…",
        ),
        ("Phát biểu tại buổi lễ, ông Nguyễn Văn An cho biết", 28, "Phát biểu tại buổi lễ…"),
        ("The ceremony was opened by Mr Smith of the province", 33, "The ceremony was opened…"),
        # A counted place needs no name.
        (
            "Tuyến đường ven biển nối hai huyện Vân Trạch và Đồng Lũy",
            40,
            "Tuyến đường ven biển nối hai huyện…",
        ),
        # "Chuyển đổi số" (digital transformation) ends on "số", which stays a whole word.
        (
            "Hội thảo về chuyển đổi số trong doanh nghiệp nhỏ",
            30,
            "Hội thảo về chuyển đổi số…",
        ),
    ],
)
def test_shorten_leaves_no_noun_without_its_name(text: str, limit: int, expected: str) -> None:
    """A place, a person's title or a date's noun before "…" reads as the name left out
    (text.CUT_STOP_WORDS); lead_excerpt cuts the same way."""
    assert shorten(text, limit=limit) == expected
    assert len(expected) <= limit
    if "," not in text:  # (lead_excerpt cuts at a clause boundary first)
        assert lead_excerpt(text, words=len(text[:limit].split()) - 1) == expected


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        # Quotations a scrape left open, one inside another: cut again to make room for
        # their closing marks, the cut fell before a quote whose mark then needed room too.
        ('“ “đồng “ " «hàng ” "', 20),
        ("“đồng “ “không bị ” TP. sau “không", 20),
        ("Nội “đồng ai “đồng bị sau sau “đồng ) ” «hàng nói «hàng người", 40),
    ],
)
def test_a_cut_that_closes_quotations_keeps_to_its_limit(text: str, limit: int) -> None:
    """shorten and shorten_headline close the quotations their cut leaves open: the marks
    took them past `limit` (23 characters of 20, 43 of 40) (review23)."""
    for cut in (shorten(text, limit=limit), shorten_headline(text, limit=limit)):
        assert len(cut) <= limit, cut
        assert cut.endswith(("…", "”", '"', "»"))


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("Sáng nay, tại TP. Đông Hà, hội thảo về chuyển đổi số đã diễn ra.", "vi"),
        ("Coffee growers in Quảng Trị and Đông Hà say prices are rising fast this year.", "en"),
        ("The province opened a new bridge on Monday.", "en"),
        ("", "vi"),
    ],
)
def test_detect_language(text: str, language: str) -> None:
    assert detect_language(text) == language


def _reference_detect_language(text: str) -> str:
    """detect_language as it counted before: each language's words in a pass of its own."""
    raw = text.lower().split()[:600]
    words = [w.strip(".,;:!?()\"'\u201c\u201d\u2018\u2019") for w in raw]
    words = [w for w in words if w]
    if not words:
        return "vi"
    vi = sum(w in text_module._VI_WORDS for w in words)
    en = sum(w in text_module._EN_WORDS for w in words)
    if vi != en:
        return "vi" if vi > en else "en"
    marked = sum(1 for w in words if not text_module.VIETNAMESE_LETTERS.isdisjoint(w))
    return "vi" if marked * 3 >= len(words) else "en"


_LANGUAGE_WORDS = [
    *sorted(text_module._VI_WORDS),
    *sorted(text_module._EN_WORDS),
    "Và",
    "THE",
    "(và",
    "the,",
    "“của”",
    "it's",
    "u.s.",
    "...",
    "Quảng",
    "Trị",
    "coffee",
    "growers",
    "",
]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(_LANGUAGE_WORDS), max_size=40), st.sampled_from([" ", "\n", "  "]))
def test_detect_language_counts_as_it_did(words: list[str], space: str) -> None:
    text = space.join(words)
    assert detect_language(text) == _reference_detect_language(text)


# ---------------------------------------------------------------- derived titles


@pytest.mark.parametrize(
    ("lead", "title"),
    [
        ("Sáng nay 31/10, Sở Y tế tỉnh tổ chức hội nghị.", "Sở Y tế tỉnh tổ chức hội nghị"),
        (
            "Chiều 2/11, tại TP. Đông Hà, UBND tỉnh họp bàn kế hoạch năm 2025.",
            "UBND tỉnh họp bàn kế hoạch năm 2025",
        ),
        ("Ngày 27.10, huyện Gio Linh ra quân trồng rừng.", "Huyện Gio Linh ra quân trồng rừng"),
        ("Hôm qua (15/11), đoàn công tác đến thăm xã.", "Đoàn công tác đến thăm xã"),
        ("Tối nay 30-10, đêm nhạc diễn ra ở quảng trường.", "Đêm nhạc diễn ra ở quảng trường"),
        ("On Thursday, the ministry said exports rose.", "The ministry said exports rose"),
        ("Yesterday, farmers began the harvest early.", "Farmers began the harvest early"),
        # Not an adverbial: kept as written.
        (
            "Sáng tạo trong công tác dân vận được biểu dương.",
            "Sáng tạo trong công tác dân vận được biểu dương",
        ),
        ("Ngày hội đọc sách thu hút học sinh.", "Ngày hội đọc sách thu hút học sinh"),
    ],
)
def test_derived_title_drops_the_opening_time_and_place(lead: str, title: str) -> None:
    assert derive_title(lead) == title


def test_adverbial_is_kept_when_too_little_would_be_left() -> None:
    assert drop_opening_adverbial("Sáng nay 31/10, họp.") == "Sáng nay 31/10, họp."


def test_derived_title_prefers_a_clause_boundary_between_40_and_90_characters() -> None:
    lead = (
        "Tỉnh Quảng Trị hoàn thành kế hoạch trồng rừng năm 2024 sớm hai tháng, vượt chỉ tiêu "
        "được giao và mở rộng diện tích rừng gỗ lớn ở các huyện miền núi phía tây."
    )
    assert derive_title(lead) == (
        "Tỉnh Quảng Trị hoàn thành kế hoạch trồng rừng năm 2024 sớm hai tháng…"
    )


def test_derived_title_cuts_after_a_closing_quotation_mark() -> None:
    lead = (
        "Sở Văn hóa tổ chức hội thảo khoa học “Di sản văn hóa biển đảo Quảng Trị”, với sự tham "
        "gia của nhiều nhà nghiên cứu trong và ngoài tỉnh cùng đông đảo người dân địa phương."
    )
    assert derive_title(lead) == (
        "Sở Văn hóa tổ chức hội thảo khoa học “Di sản văn hóa biển đảo Quảng Trị”…"
    )


@pytest.mark.parametrize(
    ("lead", "title"),
    [
        (
            "Sáng nay 1/11, Chủ tịch UBND tỉnh Lam Giang Trần Minh Khoa khẳng định “Không để "
            "người dân nào thiếu đói, thiếu nhà ở sau mùa mưa lũ năm nay” tại buổi làm việc.",
            "Chủ tịch UBND tỉnh Lam Giang Trần Minh Khoa khẳng định “Không để người dân nào "
            "thiếu…”",
        ),
        (
            'Ông Nguyễn Văn Hải nói "mùa cá cơm năm nay là mùa bội thu nhất trong mười năm qua '
            'của ngư dân Phước Hải" và vui mừng.',
            'Ông Nguyễn Văn Hải nói "mùa cá cơm năm nay là mùa bội thu nhất trong mười năm…"',
        ),
    ],
)
def test_derived_title_closes_a_quotation_its_cut_leaves_open(lead: str, title: str) -> None:
    """A title cut inside a quotation ended with it open, as subjects did before they
    closed it: the same rule now (text.shorten_headline's), for every derived title."""
    assert derive_title(lead) == title
    assert len(title) <= TITLE_LIMIT
    # The words after it are still found in its text (the digest and pages print them).
    rest = after_title(title, first_sentence(drop_opening_adverbial(lead)))
    assert rest.startswith("…")
    assert rest.endswith(("” tại buổi làm việc.", '" và vui mừng.'))


def test_derived_title_without_a_clause_boundary_never_splits_a_compound_word() -> None:
    # 89 characters end between "hội" and "thảo".
    lead = (
        "Đông đảo đại biểu các sở ngành địa phương trong tỉnh đã về dự buổi tọa đàm trực tuyến "
        "hội thảo chuyên đề về chuyển đổi số."
    )
    title = derive_title(lead)
    assert title == (
        "Đông đảo đại biểu các sở ngành địa phương trong tỉnh đã về dự buổi tọa đàm trực tuyến…"
    )
    assert len(title) <= TITLE_LIMIT
    assert "hội thảo" in COMPOUND_WORDS


def test_derived_title_never_ends_on_a_function_word() -> None:
    lead = (
        "Nhiều hộ dân ở vùng ven biển huyện Triệu Phong chủ động gia cố nhà cửa chằng chống "
        "của người dân và tàu thuyền trước khi bão số 6 đổ bộ vào đất liền."
    )
    title = derive_title(lead)
    assert title.endswith("…")
    assert title.removesuffix("…").rsplit(" ", 1)[-1] not in FUNCTION_WORDS
    assert title == (
        "Nhiều hộ dân ở vùng ven biển huyện Triệu Phong chủ động gia cố nhà cửa chằng chống…"
    )


def test_derived_title_keeps_names_whole() -> None:
    lead = (
        "Sáng nay 31/10, Phó Bí thư Thường trực Tỉnh ủy, Chủ tịch HĐND tỉnh tiếp và làm việc "
        "với đoàn công tác của Đại sứ quán Cộng hòa Dân chủ Nhân dân Lào tại Việt Nam."
    )
    title = derive_title(lead)
    assert title == (
        "Phó Bí thư Thường trực Tỉnh ủy, Chủ tịch HĐND tỉnh tiếp và làm việc với đoàn công tác…"
    )


def test_derived_english_title_is_cut_without_a_dangling_article() -> None:
    # 89 characters end in "prices of the harv": "the" and "of" may not end it.
    lead = (
        "On Thursday, coffee growers across the central highlands province now reported that "
        "prices of the harvest had doubled within a single dry season."
    )
    title = derive_title(lead)
    assert title == "Coffee growers across the central highlands province now reported that prices…"
    assert len(title) <= TITLE_LIMIT


def test_derived_title_has_an_ellipsis_only_when_cut() -> None:
    assert derive_title("Ai sẽ thắng? Không ai biết.") == "Ai sẽ thắng?"
    assert derive_title("Sáng nay 31/10, trời mưa to ở khắp các huyện.") == (
        "Trời mưa to ở khắp các huyện"
    )
    assert not derive_title("x " * 30).endswith("…")


def test_compound_list_is_lower_case_nfc_pairs() -> None:
    for word in COMPOUND_WORDS:
        assert word == nfc(word).lower()
        assert len(word.split()) == 2, word


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("Khánh thành trung tâm...", "khánh thành trung tâm"),
        ("Khánh thành trung tâm …", "khánh thành trung tâm"),
        ("Khánh thành. . .. …  ", "khánh thành. ."),
        ("Khánh thành trung tâm.", "khánh thành trung tâm."),
        ("Khánh thành... trung tâm", "khánh thành... trung tâm"),
        ("Khánh\u00a0thành ....\n", "khánh thành"),
        ("...", ""),
        (" . ", "."),
    ],
)
def test_story_key_drops_only_a_trailing_ellipsis(text: str, key: str) -> None:
    assert story_key(text) == key


@pytest.mark.parametrize(
    "text",
    [
        "Cự ly 5 km, 10 km và 21 km - xã hội; 2020 \u2013 2025 \u2014 hết",
        "3 mưa, 3 mở, 20 triệu đồng, 5 m², 7 %, 30 °C, 4 kg/ngày, 2 km/h",
        "5 km—5 km… “5 km” 5 km. 5 kmx 5 km_ 5 km1",
        "x - - y;  - a; - b; a -- b; a - ; <b>5 km</b> & 5 km &amp; ]]> 5 km\x00",
        "\u0661\u0662 km, \uff15 km, 5\u00a0km, a\u00a0- b, 5 Km, 5 KM",
        "Dòng một 5\nkm - dòng hai 5 km\n- dòng ba",
    ],
)
def test_typesetting_text_and_utf8_agree(text: str) -> None:
    # Digest leads are typeset as text, page bodies as UTF-8 bytes: one article, the same
    # no-break spaces in both. Only spaces change, and nothing else about the text.
    from syndicate.text import NBSP, typeset, typeset_utf8

    typeset_text = typeset(text)
    assert typeset_utf8(text.encode()) == typeset_text.encode()
    assert typeset_text.replace(NBSP, " ") == text.replace(NBSP, " ")


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("Tin tiếp...", "Tin tiếp\u2026"),
        ("Tin tiếp ....", "Tin tiếp\u2026"),
        ("...", "\u2026"),
        ("Tin tiếp..", "Tin tiếp.."),
        ("Tin... tiếp", "Tin... tiếp"),
    ],
)
def test_trailing_ellipsis_writes_the_dots_that_end_a_text_as_one(text: str, shown: str) -> None:
    assert trailing_ellipsis(text) == shown


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        # The shared sample's sidebar, cut by its site at a character count.
        (
            "Chủ tịch UBND xã Hướng Sơn cho biết, do ảnh hưởng bão số 6, các tuyến giao "
            "thông vào 2...",
            "Chủ tịch UBND xã Hướng Sơn cho biết, do ảnh hưởng bão số 6, các tuyến giao thông…",
        ),
        (
            "đã có mặt tại thôn Sa Nam, xã Vĩnh Long, huyện Vĩnh Linh, tỉnh...",
            "đã có mặt tại thôn Sa Nam, xã Vĩnh Long, huyện Vĩnh Linh…",
        ),
        (
            "có buổi làm việc với Trường Chính trị tỉnh Savannakhet, Salavan (Lào) để...",
            "có buổi làm việc với Trường Chính trị tỉnh Savannakhet, Salavan (Lào)…",
        ),
        (
            "thực hiện Đề án “Phát huy vai trò của các...",
            "thực hiện Đề án “Phát huy vai trò…”",
        ),
        # A counted noun is whole; a cut keeps at least half.
        ("tỉnh khánh thành 12 km đường ven biển nối hai huyện...", None),
        ("và các...", "và các…"),
        # A capital "A" is a name (or a block, a ward), no English article; a number after a
        # noun is whole; a cut stopped by the half it keeps splits no word ("diễn|ra").
        ("Ông Nguyễn Văn A...", None),
        ("Dự án khởi công năm 2024...", None),
        ("Tai nạn trên Quốc lộ 1...", None),
        ("Lễ diễn ra...", None),
        # The word before a dropped one is not left half a word ("diễn ra").
        (
            "Chiều nay, hội thảo về chuyển đổi số diễn ra tại...",
            "Chiều nay, hội thảo về chuyển đổi số…",
        ),
        ("Tin tiếp…", "Tin tiếp…"),
    ],
)
def test_a_cut_teaser_does_not_end_on_a_dangling_word(text: str, shown: str | None) -> None:
    """A sidebar teaser ended "…, tỉnh…", "tại các…", "vào 2…" on the pages and in the
    digest: the cut its site made, shown as it was."""
    assert trailing_ellipsis(text) == (shown or text.removesuffix("...") + "…")


def test_a_cut_teaser_loses_a_few_words_at_most() -> None:
    """Each word dropped copies the text, and a teaser is one dump line (megabytes): a run
    of "các" would have cost a copy per word."""
    assert trailing_ellipsis("các " * 40 + "...") == " ".join(["các"] * 34) + "…"


@pytest.mark.parametrize("filler", [".", " "])
def test_trailing_ellipsis_is_linear_in_a_hostile_run_of_dots_or_spaces(filler: str) -> None:
    # A sidebar teaser is one dump line, as long as load.max_bytes lets it be, and the page
    # shows it whole: a regex that tries every dot (or space) of a long run as the start
    # of the final dots took 14 s for a 60 KB teaser, and days for a 10 MiB one.
    # Linear, it takes about a millisecond: the best of three tries under 1 s, so a loaded
    # machine that stops the test once does not fail it.
    text = "Tin" + filler * 50_000 + "x"
    tries = []
    for _ in range(3):
        started = time.perf_counter()
        assert trailing_ellipsis(text) == text
        tries.append(time.perf_counter() - started)
        if tries[-1] < 1.0:
            break
    assert min(tries) < 1.0, tries


@pytest.mark.parametrize(
    "text",
    [
        "Đường dài 21 km… rồi 3 mưa",
        "“dài 21 km” và 10 %»",
        "tăng 1 triệu—2 tỷ, 2020 — 2025, chính trị - xã hội",
        "5 m² 5 m²x 5 kmé 5 km_ 7 hà",
        "\u0663 km, \uff13 kg",
    ],
)
def test_typeset_utf8_sets_a_body_as_typeset_sets_its_headline(text: str) -> None:
    # A page's headline and standfirst are typeset as str, its body as UTF-8 bytes: the
    # same words must come out the same (before, "21 km…" broke in the body only).
    assert typeset_utf8(text.encode()) == typeset(text).encode()


def test_typeset_utf8_finds_a_space_after_every_digit_the_rule_knows() -> None:
    # typeset_utf8 decodes only the lines where its byte marks see a digit or a dash before
    # a space: a digit it did not mark would leave "<digit> km" breakable in a body only.
    everything = "".join(map(chr, [*range(0xD800), *range(0xE000, 0x110000)]))
    digits = re.findall(r"\d", everything)
    assert len(digits) > 600  # "\d" is every Unicode decimal digit
    for digit in digits:
        text = f"Dòng một - hai\ndài {digit} km\nDòng ba"
        assert typeset_utf8(text.encode()) == typeset(text).encode(), ascii(digit)


@pytest.mark.parametrize(
    "text",
    [
        "Dòng một không số\nDòng hai 5 km\nDòng ba - không\ncuối 2020 \u2013 2025",
        "5 km\n5 km\n\n - a\nb -\n- c\n5\n km 5 \u2014 x",
        "hồ Gươm\nỔ khóa\nsố 7 lít\n\u1040 km \u1000 km \u1e00 km\n\u14c5 - x",
        "chính trị - xã hội\r\n21 km\rx 3 mưa\n\u0661 km",
        "Quảng Trị 2 tỷ đồng\n\u00a0- a 5\u00a0km\n\u4e2d 5 km",
    ],
)
def test_typeset_utf8_sets_only_the_lines_that_bind_as_the_whole_text(text: str) -> None:
    assert typeset_utf8(text.encode()) == typeset(text).encode()


def test_typeset_utf8_agrees_with_typeset_on_random_texts() -> None:
    # Seeded: the digits, dashes, units and letters whose bytes typeset_utf8 marks, mixed
    # with those it must not take for them (Vietnamese letters ending in 0x93/0x94 bytes,
    # U+1000-U+1DFF letters), line breaks and the odd byte that is not UTF-8.
    pieces = [
        *"ab mđ2²50_.,\t\n\xa0…\u3000\x1c",
        *[" ", " ", " ", " - ", " \u2013 ", " \u2014 ", "\u2013", "-"],
        *["ạ", "ồ", "Ổ ", "é", "\u0663", "\uff15", "\u1040", "\u1000", "\u14c5", "\u4e2d"],
        *["\U0001f600", "km", "m²", "°C", "%", "tấn", "đồng", "triệu", "tỷ", "kmx", "USD"],
    ]
    rng = random.Random(20261207)
    for _ in range(20_000):
        data = "".join(rng.choices(pieces, k=rng.randint(1, 14))).encode()
        if rng.random() < 0.05:
            at = rng.randrange(len(data) + 1)
            data = data[:at] + bytes([rng.randrange(256)]) + data[at:]
        expected = typeset(data.decode("utf-8", "surrogateescape"))
        assert typeset_utf8(data) == expected.encode("utf-8", "surrogateescape"), data


def test_typeset_utf8_binds_a_unit_before_non_ascii_punctuation() -> None:
    assert (
        typeset_utf8("dài 21 km… và “50 %”".encode()) == "dài 21\u00a0km… và “50\u00a0%”".encode()
    )


def test_typeset_utf8_leaves_bytes_that_are_not_utf8_as_they_are() -> None:
    assert typeset_utf8(b"21 km \xff\xfe 3 - x") == b"21\xc2\xa0km \xff\xfe 3\xc2\xa0- x"


@pytest.mark.parametrize(
    ("caption", "description"),
    [
        ("Quang cảnh hội thảo - Ảnh: T.P", "Quang cảnh hội thảo"),
        (
            "Các đại biểu tham quan gian trưng bày \u2013 Ảnh: N.V.",  # en dash
            "Các đại biểu tham quan gian trưng bày",
        ),
        (
            "Người dân gặt lúa trước khi nước lên (Ảnh: Minh Đức)",
            "Người dân gặt lúa trước khi nước lên",
        ),
        ("Cầu mới nối hai huyện. Ảnh: Hoài Nam", "Cầu mới nối hai huyện"),
        ("The new bridge - Photo: Thu Ha", "The new bridge"),
        ("ẢNH: NGỌC VĂN", None),
        ("Gian hàng rau hữu cơ luôn đông khách - Ảnh minh hoạ", None),
        ("Học sinh đọc sách trên máy tính bảng - Ảnh minh họa", None),
        ("Trụ sở Ủy ban nhân dân tỉnh - Ảnh tư liệu", None),
    ],
)
def test_photo_description_drops_the_credit_and_says_nothing_for_a_credit_alone(
    caption: str, description: str | None
) -> None:
    assert photo_description(caption) == description

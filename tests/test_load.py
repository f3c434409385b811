"""Load stage: every FORMAT.md rule, the failure modes, the real sample, arbitrary bytes."""

from __future__ import annotations

import os
import re
import sys
import unicodedata
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syndicate import text as text_module
from syndicate.config import load_settings
from syndicate.errors import DumpError, InputError
from syndicate.load import (
    PARSER_VERSION,
    DumpPin,
    decode_dump,
    find_dump_paths,
    find_dumps,
    parse_dump,
    read_dump,
    read_dumps,
)
from syndicate.load import decode as decode_module
from syndicate.load import parse as parse_module
from syndicate.load.places import PROVINCES, is_place_or_label
from syndicate.model import Article, BlockKind, Precision, Teaser, make_article_id
from syndicate.publish.sync import sync_articles  # the build's reading path
from syndicate.store import open_database
from syndicate.text import clean_text, nfc
from tests.conftest import DATA, ROOT, SHARED_SEEDS
from tests.data.dumps import make_dumps

DUMPS = DATA / "dumps"
TZ = ZoneInfo("Asia/Ho_Chi_Minh")
SAMPLE = SHARED_SEEDS / "000_bb14428c403474a4.txt"

BASIC_LEAD = (
    "Sáng nay 31/10, tại TP. Đông Hà, Sở Y tế tỉnh tổ chức hội nghị tổng kết công tác "
    "phòng chống dịch bệnh năm 2024. Ông Lê Văn Hải chủ trì hội nghị."
)
BASIC_PARAGRAPHS = [
    BASIC_LEAD,
    "Theo báo cáo, năm qua toàn tỉnh không để xảy ra dịch lớn, các ca bệnh được phát hiện sớm.",
    "Hội nghị cũng đề ra nhiều giải pháp cho năm tới, trong đó chú trọng y tế cơ sở.",
]
# The lead's first sentence is 122 characters: cut at a word boundary within 100.
# The time and place adverbial goes (the date is in `published`); the sentence fits.
BASIC_TITLE = "Sở Y tế tỉnh tổ chức hội nghị tổng kết công tác phòng chống dịch bệnh năm 2024"


def load(name: str) -> Article:
    return parse_dump((DUMPS / name).read_bytes(), source=f"dumps/{name}", tz=TZ)


def parse_text(text: str, source: str = "x.txt") -> Article:
    return parse_dump(text.encode("utf-8"), source=source, tz=TZ)


def rejected(name: str) -> str:
    with pytest.raises(DumpError) as info:
        load(name)
    return str(info.value)


def test_committed_dumps_match_their_generator() -> None:
    for name, data in make_dumps.cases().items():
        assert (DUMPS / name).read_bytes() == data, name


def test_parser_version_is_a_positive_int() -> None:
    assert isinstance(PARSER_VERSION, int)
    assert PARSER_VERSION >= 1


# ---------------------------------------------------------------- layout


def test_basic_dump_parses_every_part() -> None:
    article = load("basic_utf8.txt")
    assert article.title == BASIC_TITLE
    assert article.title_derived is True
    assert article.lead == BASIC_LEAD
    assert article.dateline == "QTO"
    assert list(article.paragraphs) == BASIC_PARAGRAPHS
    assert article.captions == ("Quang cảnh hội nghị - Ảnh: T.P",)
    assert [b.kind for b in article.body] == [
        BlockKind.PARAGRAPH,
        BlockKind.CAPTION,
        BlockKind.PARAGRAPH,
        BlockKind.PARAGRAPH,
    ]
    assert article.author == "Trúc Phương"
    assert article.teasers == (
        Teaser(
            "QTO",
            "Chiều nay 30/10, Ban Văn hóa - Xã hội HĐND tỉnh làm việc với Sở Giáo dục về kế...",
        ),
        Teaser(
            "QTO",
            "Phó Thủ tướng vừa ký Quyết định số 1281/QĐ-TTg ngày 29/10/2024 ban hành Kế hoạch...",
        ),
    )
    assert article.published == datetime(2024, 10, 31, tzinfo=TZ)
    assert article.published.isoformat() == "2024-10-31T00:00:00+07:00"
    assert article.precision is Precision.INFERRED_YEAR
    assert article.source == "dumps/basic_utf8.txt"
    assert article.language == "vi"
    assert article.head is None
    assert article.summary == BASIC_LEAD
    assert article.slug == (
        "so-y-te-tinh-to-chuc-hoi-nghi-tong-ket-cong-tac-phong-chong-dich-benh-nam-2024"
    )
    assert len(article.id) == 32
    int(article.id, 16)


def test_to_dict_has_exactly_the_inspect_keys() -> None:
    record = load("basic_utf8.txt").to_dict()
    assert list(record) == [
        "id",
        "slug",
        "title",
        "title_derived",
        "published",
        "published_precision",
        "head",
        "lead",
        "paragraphs",
        "captions",
        "author",
        "credit",
        "teasers",
        "source",
    ]
    assert record["teasers"][0] == {
        "dateline": "QTO",
        "text": "Chiều nay 30/10, Ban Văn hóa - Xã hội HĐND tỉnh làm việc với Sở Giáo dục về kế...",
    }


def test_filled_header_gives_title_date_and_head_and_the_lead_is_the_first_body_line() -> None:
    article = load("header_filled.txt")
    assert article.title == "Tiêu đề thật của bài"
    assert article.title_derived is False
    assert article.published == datetime(2024, 10, 31, 9, 15, tzinfo=TZ)
    assert article.precision is Precision.DATETIME
    assert article.head == "Sapo của bài: tỉnh tổ chức hội nghị tổng kết."
    assert article.summary == article.head
    assert article.lead == "Đoạn thân bài thứ nhất."
    assert article.dateline == "QTO"
    assert list(article.paragraphs) == ["Đoạn thân bài thứ nhất.", "Đoạn thân bài thứ hai."]
    assert (article.author, article.credit) == (None, "TTXVN")  # "Theo TTXVN": a source
    assert article.to_dict()["head"] == "Sapo của bài: tỉnh tổ chức hội nghị tổng kết."


def test_header_is_the_first_three_physical_lines_even_when_blank() -> None:
    article = parse_text("\n\n\nĐoạn mở đầu.\nĐoạn hai.\n")
    assert article.title == "Đoạn mở đầu"
    assert article.title_derived is True
    assert list(article.paragraphs) == ["Đoạn mở đầu.", "Đoạn hai."]
    # A real third line is the sapo (the head), not the lead of the body.
    article = parse_text("Tiêu đề\n\nSapo.\nThân bài.\n")
    assert article.head == "Sapo."
    assert article.lead == "Thân bài."
    assert list(article.paragraphs) == ["Thân bài."]


def test_teasers_are_the_trailing_run_and_a_paragraph_may_end_in_an_ellipsis() -> None:
    article = load("ellipsis_paragraph.txt")
    assert list(article.paragraphs) == [
        "Đoạn mở đầu.",
        "Các tham luận xoay quanh những nội dung như: chuyển đổi số, cải cách hành chính...",
    ]
    assert article.dateline == "QTO"
    assert article.teasers == (
        Teaser("QTO", "Tin khác thứ nhất..."),
        Teaser("QTO", "Tin khác thứ hai…"),
    )


def test_dateline_line_in_the_middle_of_the_body_is_a_paragraph() -> None:
    article = parse_text("T\n{publish}\n{head}\nMở đầu.\nQTO - Giữa bài.\nKết bài.\n")
    assert list(article.paragraphs) == ["Mở đầu.", "QTO - Giữa bài.", "Kết bài."]
    assert article.teasers == ()


def test_teasers_never_eat_the_lead() -> None:
    article = parse_text("T\n{publish}\n{head}\nQTO - Chỉ có một đoạn...\n")
    assert list(article.paragraphs) == ["Chỉ có một đoạn..."]
    assert article.teasers == ()
    article = parse_text("T\n{publish}\n{head}\nẢNH: A\nQTO - Lead.\nQTO - Tin khác...\n")
    assert article.captions == ("ẢNH: A",)
    assert article.lead == "Lead."
    assert article.teasers == (Teaser("QTO", "Tin khác..."),)


def test_every_dateline_form_is_recognised() -> None:
    article = load("datelines.txt")
    assert article.dateline == "QTO"
    assert article.lead == "Đoạn mở đầu."
    assert article.author == "Thu Ha"
    assert [t.dateline for t in article.teasers] == [
        "QTO",
        "QTO",
        "(QT)",
        "(QBĐT)",
        "TTO",
        "TPO",
        "(Dân trí)",
        "VOV.VN",
        "(PLO)",
        "VTV.vn",
        "(Chinhphu.vn)",
        "TTO",
    ]
    assert [t.text for t in article.teasers] == [f"Tin {n}..." for n in range(1, 13)]


def test_no_break_spaces_inside_datelines() -> None:
    article = load("nbsp_dateline.txt")
    assert article.dateline == "QTO"
    assert article.lead == "Sáng nay 31/10, hội nghị bắt đầu lúc 8 giờ."
    assert article.teasers == (
        Teaser("QTO", "Chiều nay 30/10, một tin khác ngày 29/10/2024..."),
        Teaser("TTO", "Tin thứ hai..."),
    )
    assert article.published == datetime(2024, 10, 31, tzinfo=TZ)


@pytest.mark.parametrize(
    ("line", "author", "credit"),
    [
        ("Trúc Phương", "Trúc Phương", None),
        ("NHÓM PV", "NHÓM PV", None),
        ("Theo TTXVN", None, "TTXVN"),
        ("Theo Báo Lam Giang", None, "Báo Lam Giang"),
        ("Nguồn: VnExpress", None, "VnExpress"),
        ("Nguồn : Dân trí", None, "Dân trí"),
        ("(Theo Dân trí)", None, "Dân trí"),
        ("Source: Reuters", None, "Reuters"),
        ("By Thu Ha", "Thu Ha", None),
        ("Thu Hà (tổng hợp)", "Thu Hà (tổng hợp)", None),
        ("Hoài Nam - Minh Đức", "Hoài Nam - Minh Đức", None),
    ],
)
def test_byline_shapes(line: str, author: str | None, credit: str | None) -> None:
    """A writer is the author; "Theo TTXVN" and "Nguồn: ..." credit the story's source."""
    article = parse_text(f"T\n{{publish}}\n{{head}}\nMở đầu.\nThân bài.\n{line}\nQTO - Tin...\n")
    assert (article.author, article.credit) == (author, credit)
    assert list(article.paragraphs) == ["Mở đầu.", "Thân bài."]


@pytest.mark.parametrize(
    "line",
    [
        "Kết thúc bài viết ở đây.",
        "một dòng viết thường",
        "Một Dòng Viết Hoa Rất Dài Có Quá Nhiều Chữ Để Là Tên",
        "Ai Đó Nói Thế?",
        "Người dân đón xem - Ảnh: Minh Đức",
    ],
)
def test_not_a_byline(line: str) -> None:
    article = parse_text(f"T\n{{publish}}\n{{head}}\nMở đầu.\n{line}\n")
    assert article.author is None


def test_lone_short_line_is_the_lead_not_a_byline() -> None:
    article = parse_text("T\n{publish}\n{head}\nTrúc Phương\n")
    assert article.author is None
    assert article.lead == "Trúc Phương"


def test_caption_forms() -> None:
    article = load("caption_forms.txt")
    assert article.captions == (
        "Quang cảnh hội thảo - Ảnh: T.P",
        "Đại biểu phát biểu \u2013 Ảnh: N.V.",
        "Người dân đón xem (Ảnh: Minh Đức)",
        "ẢNH: NGỌC VĂN",
        "Cánh đồng lúa chín - Ảnh minh họa",
        "Cánh đồng lúa chín vàng - Ảnh minh hoạ",
        "Farmers at work - Photo: Thu Ha",
    )
    assert list(article.paragraphs) == [
        "Lead của bài viết về các dạng chú thích ảnh trong báo điện tử.",
        "Theo tác giả bức ảnh: đây là khoảnh khắc đẹp nhất mà anh từng chụp được trong đời.",
        "Đoạn cuối của bài viết.",
    ]


def test_anh_mid_sentence_is_not_a_caption() -> None:
    article = load("anh_midsentence.txt")
    assert article.captions == ()
    assert article.lead == (
        "Ông cho biết bức ảnh: đây là kỷ niệm đẹp nhất của gia đình, được chụp năm 1975."
    )


# Pieces of lines near the edges of the caption screen: credits with and without a colon or
# a bracket, in any case, other spaces, long and short tails after the colon.
_CAPTION_PIECES = [
    "Ảnh",
    "ảnh",
    "ẢNH",
    "aNh",
    "photo",
    "Photos",
    "PHOTO",
    ":",
    " : ",
    "(",
    ")",
    " ",
    "  ",
    " - ",
    " \u2013 ",
    "\u2014",
    ". ",
    "\u1680",
    "\u2003",
    "\n",
    "\t",
    "minh",
    "MINH",
    "họa",
    "hoạ",
    "HỌA",
    "HOẠ",
    "tư liệu",
    "TƯ LIỆU",
    "internet",
    "FILE",
    "T.P",
    "Ngọc Văn",
    "Quang cảnh buổi lễ",
    "x" * 20,
    "y" * 48,
    "!",
    "?",
    "…",
    "...",
    "a",
    "E",
    "u",
    "T",
    "ạ",
    ".",
]


@pytest.mark.parametrize(
    "text",
    [
        "Quang cảnh buổi lễ - Ảnh: T.P",
        "Ảnh minh họa",
        "Ảnh minh hoạ (TTXVN)",
        "Ảnh minh họa: " + "x" * 48,
        "Ảnh minh họa: " + "x" * 49,
        "Lễ khánh thành. Ảnh tư liệu",
        "Lễ khánh thành (Ảnh: Internet)",
        "Đoàn công tác - PHOTO FILE)",
        "Ảnh:" + "\u1680" * 60 + "T.P",
        "Ảnh: " + "y" * 49 + ")",
        "Ảnh: " + "y" * 49 + "))",
        "Ông cho biết bức ảnh: đây là kỷ niệm đẹp nhất của gia đình, được chụp năm 1975.",
        "Mã tin 12-3.",
        "",
        " ",
        ")",
    ],
)
def test_the_caption_screen_keeps_every_caption(text: str) -> None:
    assert parse_module._is_caption(text) is parse_module._credit_ends(text)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(_CAPTION_PIECES), max_size=12) | st.text(max_size=80))
def test_the_caption_screen_gives_the_same_verdicts(pieces: list[str] | str) -> None:
    text = "".join(pieces)
    assert parse_module._is_caption(text) is parse_module._credit_ends(text)


def test_the_caption_screen_knows_every_last_letter_of_a_credit() -> None:
    # A credit without a colon or a bracket ends in "họa", "hoạ", "liệu", "internet" or
    # "file": every character PHOTO_CAPTION (re.IGNORECASE) takes for their last letter.
    every = "".join(map(chr, range(sys.maxunicode + 1)))
    found = set(re.findall("[aạute]", every, re.IGNORECASE))
    assert found == parse_module._CREDIT_LAST_LETTERS


def test_caption_before_the_lead() -> None:
    article = parse_text("T\n{publish}\n{head}\nẢNH: NGỌC VĂN\nQTO - Mở đầu.\nHai.\n")
    assert article.body[0].kind is BlockKind.CAPTION
    assert article.lead == "Mở đầu."
    assert article.dateline == "QTO"


def test_consecutive_duplicate_lines_collapse() -> None:
    article = load("duplicate_lines.txt")
    assert list(article.paragraphs) == ["Đoạn mở đầu.", "Đoạn hai.", "Đoạn ba."]


# ---------------------------------------------------------------- text pitfalls


@pytest.mark.parametrize(
    "name",
    [
        "utf8_bom.txt",
        "utf16le_bom.txt",
        "utf16be_bom.txt",
        "cp1258.txt",
        "nfd.txt",
        "crlf.txt",
        "cr_only.txt",
        "duplicate_a.txt",
    ],
)
def test_encodings_and_line_endings_parse_like_plain_utf8(name: str) -> None:
    expected = load("basic_utf8.txt")
    article = load(name)
    assert article.title == expected.title
    assert article.title_derived is True  # a BOM did not make "{title}" a real title
    assert article.body == expected.body
    assert article.id == expected.id
    assert article.published == expected.published
    assert article.author == "Trúc Phương"
    assert len(article.teasers) == 2


def test_nfd_and_cp1258_come_out_as_nfc_bytes() -> None:
    nfc_bytes = BASIC_LEAD.encode("utf-8")
    for name in ("nfd.txt", "cp1258.txt"):
        article = load(name)
        assert article.lead.encode("utf-8") == nfc_bytes
        assert unicodedata.is_normalized("NFC", article.title)
        assert all(unicodedata.is_normalized("NFC", b.text) for b in article.body)
    # What SiteRenderer.render_article(from_loader=True) relies on: one printable line each.
    assert all(b.text.isprintable() for b in article.body)


def test_cp1258_is_tried_before_anything_western() -> None:
    data = (DUMPS / "cp1258.txt").read_bytes()
    text = decode_dump(data, source="x")
    assert "Đông Hà" in unicodedata.normalize("NFC", text)
    assert "Ð" not in text  # what cp1252/latin-1 would have made of 0xD0


def test_form_feed_and_line_separators_do_not_split_lines() -> None:
    article = load("formfeed_u2028.txt")
    assert list(article.paragraphs) == [
        "Sáng nay 31/10, hội nghị bắt đầu lúc 8 giờ tại hội trường.",
        "Đoạn hai của bài.",
    ]


def test_zero_width_characters_and_tabs_are_cleaned() -> None:
    article = load("zero_width.txt")
    assert article.title == "Tiêu đề có ký tự ẩn"
    assert article.title_derived is False
    assert article.dateline == "QTO"
    assert list(article.paragraphs) == ["Đoạn mở đầu của bài. Có tab.", "Đoạn hai."]


def test_bidi_controls_are_removed_and_emoji_joiners_kept() -> None:
    article = parse_text(
        "Tin \u202enóng\u202c về gia đình 👨\u200d👩\u200d👧\n31/10/2024 09:15\n"
        "QTO - Đoạn mở đầu \u2066của\u2069 bài.\nĐoạn hai.\nTrúc\u202e Phương\n"
    )
    assert article.title == "Tin nóng về gia đình 👨\u200d👩\u200d👧"
    assert article.author == "Trúc Phương"
    assert article.head == "Đoạn mở đầu của bài."
    assert article.lead == "Đoạn hai."


def test_soft_hyphens_are_deleted() -> None:
    article = load("soft_hyphen.txt")
    assert article.title == "Chuyển đổi số ở Quảng Trị"
    assert article.slug == "chuyen-doi-so-o-quang-tri"
    assert article.lead == "Đoạn mở đầu nói về chuyển đổi số."


def test_duplicates_share_an_id_across_encodings_and_teaser_blocks() -> None:
    a = load("duplicate_a.txt")
    b = load("duplicate_b.txt")
    c = load("duplicate_c_cp1258.txt")
    assert a.id == b.id == c.id
    assert a.teasers != b.teasers != c.teasers
    assert a.source != b.source


def test_id_depends_on_the_body_not_on_title_or_teasers() -> None:
    one = parse_text("Tiêu đề A\n{publish}\n{head}\nMở đầu.\nHai.\n", "a.txt")
    two = parse_text("Tiêu đề B\n31/10/2024\n{head}\nMở  đầu.\nHai.\nTTO - Khác...\n", "b.txt")
    three = parse_text("Tiêu đề A\n{publish}\n{head}\nMở đầu.\nBa.\n", "a.txt")
    assert one.id == two.id
    assert one.id != three.id


# ---------------------------------------------------------------- dates

PUBLISH_LAYOUTS = [
    ("date_dmy_hm.txt", datetime(2024, 10, 31, 9, 15, tzinfo=TZ), Precision.DATETIME),
    ("date_hm_dmy.txt", datetime(2019, 8, 26, 18, 2, tzinfo=TZ), Precision.DATETIME),
    ("date_pipe_gmt.txt", datetime(2022, 9, 9, 9, 11, tzinfo=TZ), Precision.DATETIME),
    ("date_weekday_dash.txt", datetime(2017, 3, 9, 21, 41, tzinfo=TZ), Precision.DATETIME),
    ("date_weekday_comma_gmt.txt", datetime(2024, 10, 31, 9, 15, tzinfo=TZ), Precision.DATETIME),
    ("date_ngay_thang_nam.txt", datetime(2024, 12, 8, tzinfo=TZ), Precision.DATE),
    ("date_sql.txt", datetime(2019, 8, 3, 9, 23, 32, tzinfo=TZ), Precision.DATETIME),
    ("date_iso.txt", datetime(2024, 10, 31, 9, 15, tzinfo=TZ), Precision.DATETIME),
    ("date_iso_utc.txt", datetime(2024, 10, 31, 2, 15, tzinfo=UTC), Precision.DATETIME),
]


@pytest.mark.parametrize(("name", "expected", "precision"), PUBLISH_LAYOUTS)
def test_publish_line_layouts(name: str, expected: datetime, precision: Precision) -> None:
    article = load(name)
    assert article.published == expected
    assert article.published is not None
    assert article.published.utcoffset() == expected.utcoffset()
    assert article.precision is precision


def test_local_publish_times_keep_the_plus_seven_offset() -> None:
    published = load("date_dmy_hm.txt").published
    assert published is not None
    assert published.isoformat() == "2024-10-31T09:15:00+07:00"


def test_publish_line_with_another_offset_keeps_it() -> None:
    published = load("date_gmt8.txt").published
    assert published is not None
    assert published.isoformat() == "2024-10-31T10:15:00+08:00"
    assert published.utcoffset() == timedelta(hours=8)
    assert published.tzinfo == timezone(timedelta(hours=8))


@pytest.mark.parametrize(
    ("line", "expected", "precision"),
    [
        ("October 31, 2024 9:15 am", datetime(2024, 10, 31, 9, 15, tzinfo=TZ), "datetime"),
        ("31 Oct 2024, 3:05 PM", datetime(2024, 10, 31, 15, 5, tzinfo=TZ), "datetime"),
        ("Cập nhật: 31.10.2024 9h15", datetime(2024, 10, 31, 9, 15, tzinfo=TZ), "datetime"),
        ("31-10-2024", datetime(2024, 10, 31, tzinfo=TZ), "date"),
        ("2024-10-31", datetime(2024, 10, 31, tzinfo=TZ), "date"),
        ("2024-10-31T09:15:00.123+0700", datetime(2024, 10, 31, 9, 15, tzinfo=TZ), "datetime"),
    ],
)
def test_more_publish_layouts(line: str, expected: datetime, precision: str) -> None:
    article = parse_text(f"T\n{line}\n{{head}}\nMở đầu.\n")
    assert article.published == expected
    assert str(article.precision) == precision


def test_impossible_publish_date_is_an_error_with_the_line_number() -> None:
    assert rejected("bad_date_31_02.txt") == (
        "dumps/bad_date_31_02.txt line 2: publish time '31/02/2025 08:00' is not a real date. "
        "Fix the dump or move it out of the dump folder."
    )


@pytest.mark.parametrize(
    ("line", "what"),
    [
        ("31/10/2024 25:10", "is not a real time of day"),
        ("31/13/2024", "is not a real date"),
        ("hôm nay", "holds no date syndicate understands (for example '31/10/2024 09:15')"),
        ("31/10/2024 09:15 GMT+19", "has an impossible UTC offset"),
    ],
)
def test_bad_publish_lines(line: str, what: str) -> None:
    with pytest.raises(DumpError) as info:
        parse_text(f"T\n{line}\n{{head}}\nMở đầu.\n", "seeds/017.txt")
    assert str(info.value) == (
        f"seeds/017.txt line 2: publish time {line!r} {what}. "
        "Fix the dump or move it out of the dump folder."
    )
    assert info.value.line == 2


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("lead_sang_nay.txt", date(2024, 10, 31)),
        ("lead_chieu_nay.txt", date(2024, 10, 29)),
        ("lead_toi_nay.txt", date(2024, 10, 30)),
        ("lead_hom_nay.txt", date(2024, 11, 21)),
        # "Hôm qua 15-11": the event was on the 15th, so the article is from the 16th.
        ("lead_hom_qua.txt", date(2024, 11, 16)),
        ("lead_ngay_dot.txt", date(2024, 10, 27)),
    ],
)
def test_lead_dates_get_their_year_from_the_teasers(name: str, expected: date) -> None:
    article = load(name)
    assert article.published == datetime.combine(expected, datetime.min.time(), tzinfo=TZ)
    assert article.precision is Precision.INFERRED_YEAR


def test_year_inference_picks_the_nearest_year() -> None:
    article = load("year_nearest.txt")
    # 2/1 next to a teaser dated 30/12/2024 is 2 January 2025, and the 1945 in the body
    # is not used while the teasers have a date.
    assert article.published == datetime(2025, 1, 2, tzinfo=TZ)
    assert article.precision is Precision.INFERRED_YEAR


def test_year_inference_uses_body_dates_when_teasers_have_none() -> None:
    article = parse_text(
        "{title}\n{publish}\n{head}\nSáng nay 3/11, hội nghị khai mạc.\n"
        "Trước đó, ngày 1/11/2023 tỉnh đã ban hành kế hoạch.\n"
    )
    assert article.published == datetime(2023, 11, 3, tzinfo=TZ)


def test_lead_date_must_open_the_lead() -> None:
    near = parse_text(
        "T\n{publish}\n{head}\nTheo UBND tỉnh, chiều nay 29/10, đoàn công tác đã đến.\n"
        "QTO - Ngày 30/10/2024 tin khác...\n"
    )
    assert near.published == datetime(2024, 10, 29, tzinfo=TZ)
    far = parse_text(
        "T\n{publish}\n{head}\nTheo kế hoạch của Sở Văn hóa, Thể thao và Du lịch tỉnh Lam "
        "Giang, giải chạy diễn ra vào sáng 3/11.\nQTO - Ngày 30/10/2024 tin khác...\n"
    )
    assert far.published is None
    assert far.precision is Precision.UNKNOWN


def test_full_date_in_the_lead_has_date_precision() -> None:
    article = parse_text("T\n{publish}\n{head}\nNgày 27/10/2024, tỉnh tổ chức hội nghị.\n")
    assert article.published == datetime(2024, 10, 27, tzinfo=TZ)
    assert article.precision is Precision.DATE


def test_dates_in_teasers_or_later_paragraphs_are_never_the_articles_own() -> None:
    article = load("no_date.txt")
    assert article.published is None
    assert article.precision is Precision.UNKNOWN
    article = parse_text(
        "T\n{publish}\n{head}\nHội nghị diễn ra tại hội trường.\n"
        "Sáng nay 31/10/2024, đoàn đã về đến tỉnh.\nQTO - Ngày 30/10/2024 tin khác...\n"
    )
    assert article.published is None
    assert article.precision is Precision.UNKNOWN


def test_day_month_without_any_full_date_is_unknown_not_this_year() -> None:
    article = load("formfeed_u2028.txt")
    assert article.published is None
    assert article.precision is Precision.UNKNOWN


def test_publish_line_wins_over_the_lead() -> None:
    article = parse_text("T\n30/10/2024 07:00\n{head}\nSáng nay 31/10, hội nghị.\n")
    assert article.published == datetime(2024, 10, 30, 7, 0, tzinfo=TZ)


# ---------------------------------------------------------------- titles


def test_title_from_lead_knows_abbreviations_and_initials() -> None:
    article = parse_text(
        "{title}\n{publish}\n{head}\nPGS. TS. Lê Minh và ThS. T.P Hải dự họp. Câu thứ hai.\n"
    )
    assert article.title == "PGS. TS. Lê Minh và ThS. T.P Hải dự họp"
    assert article.title_derived is True
    assert article.slug == "pgs-ts-le-minh-va-ths-t-p-hai-du-hop"


def test_long_derived_title_is_cut_at_a_word_boundary() -> None:
    words = "Hội nghị tổng kết công tác chuyển đổi số của các cơ quan đảng và mặt trận tỉnh"
    article = parse_text(f"{{title}}\n{{publish}}\n{{head}}\n{words} {words}.\n")
    # 89 characters would end inside "hội nghị"; 86 would end on the compound's first half.
    assert article.title == (
        "Hội nghị tổng kết công tác chuyển đổi số của các cơ quan đảng và mặt trận tỉnh Hội nghị…"
    )
    assert len(article.title) <= 90


def test_a_title_line_past_the_headline_limit_is_cut_as_a_headline() -> None:
    """A paragraph scraped into the title line would head every index page, feed and digest
    listing the article: past HEADLINE_LIMIT it is cut at a word, with "…". A headline of
    the limit's length stays whole."""
    limit = parse_module.HEADLINE_LIMIT
    line = "Người dân Quảng Trị đón tin vui về mùa màng năm nay " * 40
    article = parse_text(f"{line}\n31/10/2024 09:15\nQTO - Tóm tắt.\nĐoạn một.\n")
    assert len(article.title) <= limit
    assert article.title.endswith("…")
    assert line.startswith(article.title[:-1])
    assert not article.title_derived
    whole = ("Khánh thành cầu mới nối hai huyện " * 10)[: limit - 1] + "A"
    assert len(whole) == limit
    kept = parse_text(f"{whole}\n31/10/2024 09:15\nQTO - Tóm tắt.\nĐoạn một.\n")
    assert kept.title == whole


def test_question_keeps_its_mark_in_a_derived_title() -> None:
    article = parse_text("{title}\n{publish}\n{head}\nAi sẽ thắng? Không ai biết.\n")
    assert article.title == "Ai sẽ thắng?"


def test_slug_maps_d_stroke() -> None:
    article = parse_text("Đông Hà đón Đoàn đại biểu\n{publish}\n{head}\nMở đầu.\n")
    assert article.slug == "dong-ha-don-doan-dai-bieu"


def test_title_of_symbols_only_gets_a_slug_from_the_id() -> None:
    article = parse_text("!!!\n{publish}\n{head}\nMở đầu.\n")
    assert article.slug == f"bai-{article.id[:12]}"


# ---------------------------------------------------------------- language


def test_english_dump() -> None:
    article = load("english.txt")
    assert article.language == "en"
    assert article.title == "Coffee farmers in Lam Giang are replanting with arabica"
    assert article.author == "Thu Ha"
    assert article.captions == ("A farmer sorts coffee cherries - Photo: Lam Giang Times",)
    assert article.published == datetime(2024, 10, 29, 10, 30, tzinfo=TZ)


# ---------------------------------------------------------------- failures


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("empty.txt", "dumps/empty.txt: is empty. Remove it, or fill it with an article."),
        (
            "blank.txt",
            "dumps/blank.txt: holds only blank space. Remove it, or fill it with an article.",
        ),
        (
            "binary.bin.txt",
            "dumps/binary.bin.txt: looks like a binary file (it holds NUL bytes), not a text "
            "dump. Remove it from the dump folder; UTF-16 text needs a byte-order mark.",
        ),
        (
            "placeholders_only.txt",
            "dumps/placeholders_only.txt: has only the three placeholder lines ({title}, "
            "{publish}, {head}) and no article text. "
            "Fix the dump or move it out of the dump folder.",
        ),
        (
            "vni.txt",
            "dumps/vni.txt: looks like Vietnamese in the legacy VNI encoding, which syndicate "
            "does not read. Convert it to UTF-8 (for example with UniKey's converter) and try "
            "again.",
        ),
        (
            "tcvn3.txt",
            "dumps/tcvn3.txt: looks like Vietnamese in the legacy TCVN3 encoding, which "
            "syndicate does not read. Convert it to UTF-8 (for example with UniKey's converter) "
            "and try again.",
        ),
    ],
)
def test_rejected_dumps_have_clear_reasons(name: str, message: str) -> None:
    assert rejected(name) == message


def test_header_without_body_is_rejected() -> None:
    with pytest.raises(DumpError) as info:
        parse_text("Tiêu đề\n31/10/2024\n{head}\n\n")
    assert info.value.reason == "has a header but no article text after line 3."


def test_only_captions_is_rejected() -> None:
    with pytest.raises(DumpError) as info:
        parse_text("T\n{publish}\n{head}\nQuang cảnh - Ảnh: T.P\n")
    assert info.value.reason == "has no article paragraph (only captions, a byline or teasers)."


def test_random_binary_without_nul_is_rejected() -> None:
    data = bytes(b for b in range(1, 256) if b not in b"\n\r") * 8
    with pytest.raises(DumpError) as info:
        decode_dump(data, source="b.txt")
    assert "binary" in info.value.reason or "neither UTF-8" in info.value.reason


def test_utf8_with_a_stray_byte_is_not_read_as_cp1258() -> None:
    data = (DUMPS / "basic_utf8.txt").read_bytes()
    broken = data[:40] + b"\xff" + data[40:]
    with pytest.raises(DumpError) as info:
        decode_dump(broken, source="b.txt")
    assert str(info.value) == (
        "b.txt: is UTF-8 with 1 invalid byte sequence (the first is byte 0xFF at offset 40). "
        "Fix or export the file again as UTF-8."
    )


def test_utf8_cut_inside_the_last_character_keeps_the_whole_ones() -> None:
    data = "T\n{publish}\n{head}\nMở đầu về Đông Hà".encode()
    text = decode_dump(data[:-1], source="c.txt")
    assert text == "T\n{publish}\n{head}\nMở đầu về Đông H"
    assert parse_dump(data[:-1], source="c.txt", tz=TZ).lead == "Mở đầu về Đông H"


def test_bytes_undefined_in_cp1258_are_reported() -> None:
    with pytest.raises(DumpError) as info:
        decode_dump(b"T\n{publish}\n{head}\nabc \x81\x8d xyz\n", source="u.txt")
    assert str(info.value) == (
        "u.txt: is neither UTF-8 nor Windows-1258 text (byte 0x81 at offset 23). "
        "Save it again as UTF-8."
    )


def test_bytes_neither_encoding_reads_name_where_each_fails_when_they_differ() -> None:
    # A few Vietnamese letters and two bad bytes: the line named only where cp1258 failed,
    # byte 0x81 at offset 10, inside a whole UTF-8 "ề" (the bytes wrong for UTF-8 come
    # later), so whoever opened the file at that offset found nothing wrong there.
    data = "Tiêu đề\n31/10/2024\nhead\nabc ".encode() + b"\xff\xfe def\n"
    with pytest.raises(DumpError) as info:
        decode_dump(data, source="e.txt")
    assert str(info.value) == (
        "e.txt: is neither UTF-8 (byte 0xFF at offset 32) nor Windows-1258 text (byte 0x81 "
        "at offset 10). Save it again as UTF-8."
    )


def test_utf16_bom_with_broken_bytes() -> None:
    with pytest.raises(DumpError) as info:
        decode_dump(b"\xff\xfeA\x00\x00\xd8", source="u.txt")
    assert str(info.value) == (
        "u.txt: starts with a UTF-16-LE byte-order mark but byte 4 is not valid UTF-16-LE. "
        "Save it again as UTF-8."
    )


# ---------------------------------------------------------------- files


def test_read_dump_enforces_the_size_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    path.write_bytes(b"x" * 2049)
    assert read_dump(path, max_bytes=4096) == b"x" * 2049
    with pytest.raises(DumpError) as info:
        read_dump(path, max_bytes=2048)
    assert str(info.value) == (
        f"{path}: is larger than the limit of 2 KiB (2048 bytes). "
        "Raise load.max_bytes in the config if the file is a real article."
    )


def test_read_dump_reads_whole_files_of_any_size_up_to_the_limit(tmp_path: Path) -> None:
    for size in (0, 1, 4095, 4096):
        path = tmp_path / f"{size}.txt"
        path.write_bytes(bytes(range(256)) * (size // 256) + b"y" * (size % 256))
        assert read_dump(path, max_bytes=4096) == path.read_bytes()
    with pytest.raises(DumpError, match="larger than the limit"):
        read_dump(tmp_path / "4096.txt", max_bytes=4095)


def test_read_dump_reads_on_past_the_size_the_file_reported() -> None:
    # Files under /proc report size 0 but have content: the read goes on to the real end,
    # as it must for a file that grew after it was looked at.
    status = Path("/proc/self/status")
    if not status.is_file():  # pragma: no cover - Linux only
        pytest.skip("needs /proc")
    data = read_dump(status, max_bytes=1 << 20)
    assert data.startswith(b"Name:")
    assert data.endswith(b"\n")
    assert len(data) > 100
    with pytest.raises(DumpError, match="larger than the limit"):
        read_dump(status, max_bytes=50)


def test_read_dump_reports_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(DumpError) as info:
        read_dump(tmp_path / "missing.txt", max_bytes=100)
    assert str(info.value) == (
        f"{tmp_path / 'missing.txt'}: cannot be read: No such file or directory. "
        "Check that the file exists and is readable."
    )
    with pytest.raises(DumpError) as info:
        read_dump(tmp_path, max_bytes=100)
    assert info.value.reason == "is a folder, not a dump file."


def test_find_dumps_takes_files_as_given_and_folders_recursively(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.txt").write_text("x")
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "c.md").write_text("x")
    (tmp_path / "b" / "1.txt").write_text("x")
    (tmp_path / "b" / "d.txt").mkdir()
    odd = tmp_path / "dump.export"
    odd.write_text("x")
    assert list(find_dumps([tmp_path])) == [
        tmp_path / "a.txt",
        tmp_path / "b" / "1.txt",
        tmp_path / "b" / "2.txt",
    ]
    assert list(find_dumps([odd, tmp_path / "b"])) == [
        odd,
        tmp_path / "b" / "1.txt",
        tmp_path / "b" / "2.txt",
    ]


def test_find_dumps_names_a_missing_path_before_yielding_anything(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x")
    found = find_dumps([tmp_path, tmp_path / "nope"])
    with pytest.raises(InputError) as info:
        next(found)
    assert str(info.value) == (
        f"{tmp_path / 'nope'}: no such file or folder. Give existing dump files or folders."
    )


def test_read_dumps_yields_errors_and_goes_on(tmp_path: Path) -> None:
    for name in ("basic_utf8.txt", "empty.txt", "vni.txt", "english.txt"):
        (tmp_path / name).write_bytes((DUMPS / name).read_bytes())
    (tmp_path / "big.txt").write_bytes(b"T\n{publish}\n{head}\n" + b"a" * 5000)
    results = list(read_dumps([tmp_path], max_bytes=4096, tz=TZ))
    assert [(p.name, type(r).__name__) for p, r in results] == [
        ("basic_utf8.txt", "Article"),
        ("big.txt", "DumpError"),
        ("empty.txt", "DumpError"),
        ("english.txt", "Article"),
        ("vni.txt", "DumpError"),
    ]
    article = results[0][1]
    assert isinstance(article, Article)
    assert article.source == str(tmp_path / "basic_utf8.txt")


def test_read_dumps_is_lazy(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes((DUMPS / "basic_utf8.txt").read_bytes())
    (tmp_path / "b.txt").write_bytes((DUMPS / "basic_utf8.txt").read_bytes())
    results = read_dumps([tmp_path], max_bytes=4096, tz=TZ)
    first_path, _ = next(results)
    (tmp_path / "b.txt").unlink()  # not read yet: the iterator reads one file at a time
    second_path, second = next(results)
    assert (first_path.name, second_path.name) == ("a.txt", "b.txt")
    assert isinstance(second, DumpError)
    assert second.reason.startswith("cannot be read")


# ---------------------------------------------------------------- seeds and the sample


def test_repo_seeds_all_parse_and_cover_the_format(sample_articles: list[Article]) -> None:
    assert len(sample_articles) >= 8
    assert len({a.id for a in sample_articles}) == len(sample_articles)
    assert {a.language for a in sample_articles} == {"vi", "en"}
    assert any(a.title_derived for a in sample_articles)
    assert any(not a.title_derived for a in sample_articles)
    assert any(a.published is None for a in sample_articles)
    assert any(a.precision is Precision.INFERRED_YEAR for a in sample_articles)
    assert any(a.author is None for a in sample_articles)
    assert sum(1 for a in sample_articles if a.author) >= 4
    assert len({t.dateline for a in sample_articles for t in a.teasers}) >= 5
    dated = sorted(a.published for a in sample_articles if a.published)
    assert len({d.date() for d in dated}) >= 4
    newest_day = dated[-1].date()
    assert sum(1 for d in dated if d.date() == newest_day) >= 2
    for path in (ROOT / "seeds").glob("*.txt"):
        assert 1800 <= path.stat().st_size <= 6 * 1024, path.name


@pytest.mark.skipif(not SAMPLE.exists(), reason="shared sample not present")
def test_real_shared_sample() -> None:
    article = parse_dump(SAMPLE.read_bytes(), source=str(SAMPLE), tz=TZ)
    # The adverbial goes; the cut splits neither "hội thảo" nor "chủ đề".
    assert article.title == (
        "Ban Tuyên giáo Tỉnh ủy, Văn phòng Tỉnh ủy phối hợp tổ chức hội thảo với chủ đề…"
    )
    assert article.title_derived is True
    assert article.head is None
    assert article.lead.startswith("Sáng nay 31/10, tại TP. Đông Hà, Ban Tuyên giáo Tỉnh ủy")
    assert article.lead.endswith("Trưởng Ban Tuyên giáo Tỉnh ủy Hồ Đại Nam chủ trì hội thảo.")
    assert article.published == datetime(2024, 10, 31, tzinfo=TZ)
    assert article.precision is Precision.INFERRED_YEAR
    assert article.author == "Trúc Phương"
    assert len(article.teasers) == 12
    assert {t.dateline for t in article.teasers} == {"QTO"}
    assert article.teasers[-1].text.startswith("Chiều nay 29/10, Phó Chủ tịch UBND tỉnh")
    assert article.captions == (
        "Quang cảnh hội thảo - Ảnh: T.P",
        "Phó Bí thư Thường trực Tỉnh ủy, Chủ tịch HĐND tỉnh Nguyễn Đăng Quang phát biểu tại "
        "hội thảo - Ảnh: T.P",
    )
    assert len(article.paragraphs) == 12
    assert article.language == "vi"
    assert article.slug.startswith("ban-tuyen-giao-tinh-uy-van-phong-tinh-uy")


# Pieces of text in the encodings a non-UTF-8 dump may mix: the decoder's byte counts must
# reach the same verdict as decoding everything (the reference functions below).
_MIXED_PIECES = [
    "Quảng Trị ".encode(),
    "Đông Hà ".encode(),
    "người dân ".encode(),
    "Đông Hà ".encode("cp1258", "replace"),
    "Vi\u00eat ".encode("cp1258"),
    b"Hu\xf8 ",  # VNI-looking
    b"S\xb8ng nay, t\xb9i TP. \xa7\xabng H\xb5 ",  # TCVN3
    b"\xe2\x82",  # a cut sequence
    b"\x80\x81\xbf",  # lone continuation bytes
    b"\xc0\xff\xf5",  # bytes UTF-8 never uses
    b"plain ascii ",
    "\ufffd".encode(),
]


def _reference_broken_utf8(data: bytes) -> bool:
    replaced = data.decode("utf-8", "replace")
    bad = replaced.count("\ufffd")
    good = len(replaced) - len(replaced.encode("ascii", "ignore")) - bad
    return good >= 3 and good >= 4 * bad


def _reference_legacy(data: bytes) -> str | None:
    high = sum(b >= 0x80 for b in data)
    if sum(0xA1 <= b <= 0xBF for b in data) >= 3:
        tcvn = len(decode_module._TCVN3_LETTERS.findall(data))
        if tcvn >= 3 and tcvn * 4 >= high:
            return "TCVN3"
    foreign = sum(b in decode_module._VNI_BYTES for b in data)
    return "VNI" if foreign >= 3 and foreign * 4 >= high else None


@pytest.mark.parametrize(
    ("data", "broken", "legacy"),
    [
        ("Quảng Trị, Đông Hà ".encode() * 3 + b"\xff", True, None),
        ("Quảng Trị ".encode() + b"\xff\xfe\xfd", False, None),
        (b"S\xb8ng nay, t\xb9i TP. \xa7\xabng H\xb5, Ban Tuy\xaan gi\xb8o", False, "TCVN3"),
        (b"Ha\xf8 Quau\xfbng Vie\xe4t \xd1o\xe2ng", False, "VNI"),
        ("Đông Hà, Quảng Trị".encode("cp1258", "replace"), False, None),
    ],
)
def test_the_cp1258_checks_on_known_cases(data: bytes, broken: bool, legacy: str | None) -> None:
    assert _reference_broken_utf8(data) is broken
    assert _reference_legacy(data) == legacy
    _check_cp1258_verdicts(data)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_MIXED_PIECES), min_size=1, max_size=30))
def test_the_cp1258_checks_count_bytes_to_the_same_verdict(pieces: list[bytes]) -> None:
    _check_cp1258_verdicts(b"".join(pieces))


def _check_cp1258_verdicts(data: bytes) -> None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        continuation = sum(0x80 <= b <= 0xBF for b in data)
        if _reference_broken_utf8(data):
            with pytest.raises(DumpError, match="invalid byte sequence"):
                decode_module._check_broken_utf8(data, exc, "x.txt", continuation)
        else:
            decode_module._check_broken_utf8(data, exc, "x.txt", continuation)
        assert decode_module._legacy_encoding(data, continuation) == _reference_legacy(data)


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=200) | st.lists(st.sampled_from(_MIXED_PIECES), max_size=10).map(b"".join),
    st.sampled_from(["_CONTROL_SET", "_NEVER_UTF8", "_TCVN3_RANGE", "_VNI_BYTES", "_HIGH"]),
)
def test_counting_bytes_gives_the_plain_count(data: bytes, name: str) -> None:
    byte_set = getattr(decode_module, name)
    assert decode_module._count(data, byte_set) == sum(byte in byte_set for byte in data)


def test_the_plain_screen_sees_every_character_clean_text_changes() -> None:
    # "\r" aside: the parser makes every line break "\n" before it cleans the text.
    every = "".join(map(chr, range(sys.maxunicode + 1))).replace("\r", "")
    changed = text_module._SPECIAL_RE.findall(every)
    assert len(changed) > 2048  # the surrogates and more
    controls = set(decode_module._CONTROL_SET)
    for char in changed:
        encoded = char.encode("utf-8", "surrogatepass")
        assert set(encoded) & (controls | set(decode_module._SCREEN_UTF8)), hex(ord(char))
    for byte in range(256):
        try:
            char = bytes([byte]).decode("cp1258")
        except UnicodeDecodeError:
            continue
        if text_module._SPECIAL_RE.search(char) and char != "\r":
            assert byte in controls or byte in decode_module._SCREEN_CP1258, hex(byte)


# Text a dump may hold, the characters clean_text changes among it.
_SCREEN_PIECES = [
    "Quảng Trị ",
    "Đông Hà\n",
    "\r\n",
    "\u201ctrích dẫn\u201d \u2013 \u2026 ",
    "\u00a0",
    "\u00ad",
    "\u200b",
    "\u200d",
    "\u2028",
    "\u202e",
    "\u3000",
    "\ufeff",
    "\t",
    "\x0b",
    "\x0c",
    "\x85",
    "\x01",
    "\u1680",
    "e\u0301",
    "\U0001d400\U0001f3f3\ufe0f\u200d\U0001f308",
    "plain ascii ",
]


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.sampled_from(_SCREEN_PIECES), min_size=1, max_size=20) | st.text(max_size=60),
    st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-32", "cp1258"]),
)
def test_a_plain_dump_needs_only_nfc(pieces: list[str] | str, encoding: str) -> None:
    text = "".join(pieces)
    try:
        data = text.encode(encoding)
        decoded = decode_module.decode_dump_screened(data, source="p.txt")
    except (UnicodeEncodeError, DumpError):
        return
    assert decoded.text == decode_dump(data, source="p.txt")
    if decoded.plain:
        lines = decoded.text.replace("\r\n", "\n").replace("\r", "\n")
        assert clean_text(lines) == nfc(lines)
    assert parse_module._split_lines(decoded.text, plain=decoded.plain) == (
        parse_module._split_lines(decoded.text)
    )


@pytest.mark.parametrize(
    ("data", "plain"),
    [
        ("Quảng Trị\r\nĐông Hà\n".encode(), True),
        ("Quảng Trị\u00a0Đông Hà".encode(), False),
        ("“Quảng Trị”".encode(), False),  # U+201C: E2 80 9C, screened out with U+2000-U+2FFF
        ("Quảng\tTrị".encode(), False),
        ("Quảng Trị".encode("utf-16"), True),
        ("Quảng\u200bTrị".encode("utf-16"), False),
        ("Đông Hà".encode("cp1258"), True),
        ("Đông\u00a0Hà".encode("cp1258"), False),
        (b"\xef\xbb\xbfQu\xe1\xba\xa3ng Tr\xe1\xbb\x8b\x0c", False),
    ],
)
def test_the_plain_screen_on_known_cases(data: bytes, plain: bool) -> None:
    assert decode_module.decode_dump_screened(data, source="p.txt").plain is plain


# ---------------------------------------------------------------- any bytes


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=600),
        st.text(max_size=400).map(lambda s: s.encode("utf-8")),
        st.lists(
            st.sampled_from(
                [
                    "{title}",
                    "{publish}",
                    "{head}",
                    "",
                    "QTO - Sáng nay 31/10, tin...",
                    "Quang cảnh - Ảnh: T.P",
                    "Trúc Phương",
                    "31/02/2025 08:00",
                    "2024-10-31T09:15:00+07:00",
                    "Hôm qua 15-11, hội nghị.",
                    "\ufeff\u00a0\u200b\u00ad\f\u2028",
                    "Ngày 29/2, tỉnh họp. QTO - 30/12/2023...",
                ]
            ),
            max_size=8,
        ).map(lambda lines: "\r\n".join(lines).encode("utf-8")),
    ),
    st.sampled_from(["utf-8", "cp1258", "utf-16"]),
)
def test_any_bytes_give_an_article_or_a_dump_error(data: bytes, encoding: str) -> None:
    if encoding != "utf-8":
        try:
            data = data.decode("utf-8").encode(encoding)
        except (UnicodeDecodeError, UnicodeEncodeError):
            pass
    try:
        article = parse_dump(data, source="h.txt", tz=TZ)
    except DumpError as exc:
        error = exc
    else:
        error = None
    if error is not None:
        assert str(error).startswith("h.txt")
        return
    assert isinstance(article, Article)
    assert article.lead
    assert article.title
    assert "\n" not in article.title
    assert article.published is None or article.published.tzinfo is not None
    assert all(unicodedata.is_normalized("NFC", b.text) for b in article.body)


def test_hostile_articles_fixture_is_well_formed(hostile_articles: list[Article]) -> None:
    assert len({a.id for a in hostile_articles}) == len(hostile_articles)
    assert len({a.slug for a in hostile_articles}) == len(hostile_articles)
    assert all(a.published is not None and a.published.tzinfo for a in hostile_articles)
    titles = " ".join(a.title for a in hostile_articles)
    for needle in ("<script>", "{{ 7*7 }}", "{% raw %}", "]]>", "\r\nBcc: evil@example.com"):
        assert needle in titles
    assert "&amp;" in hostile_articles[0].lead
    parsed = hostile_articles[3]
    assert parsed.title == "Hội nghị ở Đông Hà"
    assert unicodedata.is_normalized("NFC", parsed.lead)
    assert not unicodedata.is_normalized("NFC", hostile_articles[4].title)
    assert unicodedata.normalize("NFC", hostile_articles[4].title) == (
        "Quảng Trị đón bão số 6: Đông Hà ngập sâu"
    )


def test_find_dumps_finds_what_rglob_finds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scandir walk keeps pathlib's rules: dot files, no linked folders, links kept."""
    root = tmp_path / "seeds"
    (root / "b" / "deep").mkdir(parents=True)
    (root / ".hidden").mkdir()
    (root / "dir.txt").mkdir()  # a folder named like a dump: looked into, not yielded
    for rel in ("a.txt", "b/z.txt", "b/deep/y.txt", ".hidden/h.txt", ".dot.txt", "dir.txt/in.txt"):
        (root / rel).write_bytes(b"x")
    (root / "UPPER.TXT").write_bytes(b"x")  # not *.txt
    (root / "note.md").write_bytes(b"x")
    (root / "link.txt").symlink_to(root / "a.txt")
    (root / "broken.txt").symlink_to(root / "nowhere")
    (root / "linked-folder").symlink_to(root / "b")  # not followed
    os.mkfifo(root / "pipe.txt")  # not a regular file
    expected = sorted(p for p in root.rglob("*.txt") if p.is_file() or p.is_symlink())
    assert list(find_dumps([root])) == expected
    assert list(find_dump_paths([root])) == [str(p) for p in expected]
    # Text paths are spelled as str(Path) spells them, from any root.
    monkeypatch.chdir(root)
    for named in (Path("."), Path("b"), Path("b/"), Path("./b/deep"), Path("a.txt")):
        assert list(find_dump_paths([named])) == [str(p) for p in find_dumps([named])]
    assert list(find_dump_paths([Path(".")]))[:2] == [".dot.txt", ".hidden/h.txt"]
    assert [p.relative_to(root).as_posix() for p in expected] == [
        ".dot.txt",
        ".hidden/h.txt",
        "a.txt",
        "b/deep/y.txt",
        "b/z.txt",
        "broken.txt",
        "dir.txt/in.txt",
        "link.txt",
    ]


def test_a_pinned_read_refuses_a_dump_swapped_after_its_link_check(tmp_path: Path) -> None:
    root, outside = tmp_path / "seeds", tmp_path / "private"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "a.txt").write_bytes(b"secret")
    (root / "a.txt").write_bytes(b"dump")
    (root / "sub" / "a.txt").write_bytes(b"dump")
    (root / "in.txt").symlink_to(root / "sub" / "a.txt")

    def pin(path: Path, *, link: bool = False) -> DumpPin:
        st = os.stat(path) if link else os.lstat(path)
        return DumpPin(st.st_dev, st.st_ino, link=link)

    checked = {name: pin(root / name) for name in ("a.txt", "sub/a.txt")}
    checked["in.txt"] = pin(root / "in.txt", link=True)
    # Unchanged since the check: read as ever, links checked to stay inside included.
    for name, expected in checked.items():
        assert read_dump(root / name, max_bytes=100, pin=expected) == b"dump"
    # The file swapped for a link to outside (O_NOFOLLOW), a checked link pointed elsewhere
    # and a folder on the path swapped for a link (the opened file is not the pinned one).
    (root / "a.txt").unlink()
    (root / "a.txt").symlink_to(outside / "a.txt")
    (root / "in.txt").unlink()
    (root / "in.txt").symlink_to(outside / "a.txt")
    (root / "sub").rename(tmp_path / "old-sub")
    (root / "sub").symlink_to(outside)
    for name in ("a.txt", "in.txt", "sub/a.txt"):
        with pytest.raises(DumpError) as caught:
            read_dump(root / name, max_bytes=100, source=f"seeds/{name}", pin=checked[name])
        assert str(caught.value) == (
            f"seeds/{name}: became a link to '{outside / 'a.txt'}' after its link check; "
            "skipped. Build again; a link leading outside the dump folder is skipped unless "
            "load.follow_symlinks = true."
        )
    # Without a pin (links not checked: load.follow_symlinks, or a file named on its own).
    assert read_dump(root / "a.txt", max_bytes=100) == b"secret"


@pytest.mark.skipif(
    not Path("/proc/self/fd").is_dir(), reason="the system does not name open files"
)
def test_a_pinned_read_refuses_a_file_outside_its_folders_whatever_the_pin(tmp_path: Path) -> None:
    # A folder swapped for a link before the check: lstat went through it, so the pin names
    # the outside file. Where the opened file really is still refuses it.
    root, outside = tmp_path / "seeds", tmp_path / "private"
    root.mkdir()
    outside.mkdir()
    (outside / "a.txt").write_bytes(b"secret")
    (root / "sub").symlink_to(outside)
    st = os.lstat(root / "sub" / "a.txt")
    folders = (os.path.realpath(root),)
    pin = DumpPin(st.st_dev, st.st_ino, False, folders)
    with pytest.raises(DumpError) as caught:
        read_dump(root / "sub" / "a.txt", max_bytes=100, source="seeds/sub/a.txt", pin=pin)
    assert str(caught.value).startswith(
        f"seeds/sub/a.txt: became a link to '{outside / 'a.txt'}' after its link check; skipped."
    )
    (root / "b.txt").write_bytes(b"dump")
    st = os.lstat(root / "b.txt")
    assert (
        read_dump(root / "b.txt", max_bytes=100, pin=DumpPin(st.st_dev, st.st_ino, False, folders))
        == b"dump"
    )


# ------------------------------------------------------------- read_dumps: the link check


def _linked_folder(tmp_path: Path) -> tuple[Path, Path]:
    """A dump folder holding a dump, a link to it (inside) and a link to a file outside it
    that stands for /etc/passwd (a readable dump, so only the link check refuses it)."""
    dumps, outside = tmp_path / "dumps", tmp_path / "etc"
    dumps.mkdir()
    outside.mkdir()
    dump = (DUMPS / "basic_utf8.txt").read_bytes()
    (dumps / "a.txt").write_bytes(dump)
    (dumps / "in.txt").symlink_to(dumps / "a.txt")
    (outside / "passwd").write_bytes(dump)
    (dumps / "passwd.txt").symlink_to(outside / "passwd")
    return dumps, outside / "passwd"


def test_read_dumps_refuses_a_link_leading_outside_the_folder_and_reads_the_rest(
    tmp_path: Path,
) -> None:
    # read_dumps read any link, where the build refuses one leading outside the folder.
    dumps, secret = _linked_folder(tmp_path)
    results = list(read_dumps([dumps], max_bytes=4096, tz=TZ))
    assert [(p.name, type(r).__name__) for p, r in results] == [
        ("a.txt", "Article"),
        ("in.txt", "Article"),  # a link inside the folder is read, as by the build
        ("passwd.txt", "DumpError"),
    ]
    assert str(results[2][1]) == (
        f"{dumps / 'passwd.txt'}: is a link to '{secret}', outside the dump folder. "
        "Copy the file into the dump folder, or set load.follow_symlinks = true."
    )
    # As in the build: load.follow_symlinks reads it, and so does naming the file itself.
    followed = list(read_dumps([dumps], max_bytes=4096, tz=TZ, follow_symlinks=True))
    assert [type(r).__name__ for _, r in followed] == ["Article"] * 3
    named = list(read_dumps([dumps / "passwd.txt"], max_bytes=4096, tz=TZ))
    assert [type(r).__name__ for _, r in named] == ["Article"]


def test_read_dumps_refuses_what_the_build_refuses_with_the_same_line(tmp_path: Path) -> None:
    dumps, _ = _linked_folder(tmp_path)
    (dumps / "gone.txt").symlink_to(tmp_path / "nowhere")  # a broken link
    read = [str(r) for _, r in read_dumps([dumps], max_bytes=4096, tz=TZ)]
    settings = load_settings(None, {}, cwd=tmp_path)
    with open_database(tmp_path / "syndicate.db") as db:
        result = sync_articles(settings, db, now=datetime(2024, 11, 1, tzinfo=UTC), paths=[dumps])
    refused = [str(e) for e in result.errors]
    assert len(refused) == 2
    assert [line for line in read if line in refused] == refused


def test_a_title_case_headline_opening_the_body_is_not_taken_for_a_byline() -> None:
    """A name above the story is its byline; an English headline in title case repeated
    there (five words or more, no "By") is not a name."""
    article = parse_text(
        "T\n{publish}\n{head}\nBen Lam Opens Night Market\n"
        "The city opened its first night market on Friday.\nIt has 120 stalls.\n"
    )
    assert article.author is None
    assert article.lead == "Ben Lam Opens Night Market"
    article = parse_text("T\n{publish}\n{head}\nHoài Nam - Minh Đức\nMở đầu.\nThân bài.\n")
    assert article.author == "Hoài Nam - Minh Đức"


@pytest.mark.parametrize(
    "lead",
    [
        "Ông Nam nói: “Chúng tôi sẽ hoàn thành cây cầu trong tháng tới.”",
        "Trận đấu kết thúc với tỉ số 3-0 cho đội chủ nhà!",
    ],
)
def test_a_one_paragraph_story_above_its_teasers_keeps_its_lead(lead: str) -> None:
    """A brief whose only paragraph does not end in a full stop, with the sidebar's teasers
    below it, is not a headline scraped above a dateline's lead: the story was dropped, the
    first teaser made its lead, and every such brief over the same sidebar had one id."""
    teasers = "VOV.VN - Bến Lam mở tuyến xe buýt nhanh.\nVOV.VN - Sơn Khê mở lớp dạy nghề.\n"
    article = parse_text(f"T\n{{publish}}\n{{head}}\n{lead}\n{teasers}")
    assert article.paragraphs == (lead,)
    assert article.dateline is None
    assert [t.text for t in article.teasers] == [
        "Bến Lam mở tuyến xe buýt nhanh.",
        "Sơn Khê mở lớp dạy nghề.",
    ]
    # A byline below the teasers changes nothing of it, nor does one teaser alone.
    article = parse_text(f"T\n{{publish}}\n{{head}}\n{lead}\n{teasers}Văn Sơn\n")
    assert (article.paragraphs, article.author, len(article.teasers)) == ((lead,), "Văn Sơn", 2)
    article = parse_text(f"T\n{{publish}}\n{{head}}\n{lead}\n{teasers.splitlines()[0]}\nVăn Sơn\n")
    assert (article.paragraphs, article.author, len(article.teasers)) == ((lead,), "Văn Sơn", 1)


def test_the_headline_above_a_one_paragraph_dateline_story_is_dropped() -> None:
    """A headline (no sentence's punctuation at its end) above a story of one paragraph
    opening with its dateline, then the byline: that paragraph is the lead."""
    text = "LGO - Sáng nay huyện Sơn Khê khai giảng 5 lớp dạy nghề."
    article = parse_text(f"T\n{{publish}}\n{{head}}\nSơn Khê mở lớp dạy nghề\n{text}\nVăn Sơn\n")
    assert (article.paragraphs, article.dateline, article.author, article.teasers) == (
        ("Sáng nay huyện Sơn Khê khai giảng 5 lớp dạy nghề.",),
        "LGO",
        "Văn Sơn",
        (),
    )


@pytest.mark.parametrize("label", ["Video", "VIDEO", "Infographic", "TP.HCM"])
def test_a_one_word_label_opening_the_body_is_not_its_author(label: str) -> None:
    """A label or a place above the story ("Video", "TP.HCM") is one word; the names of the
    people who write stories are two or more ("Hoàng Yến"). It was credited as the author
    ("Tác giả: Video") once the top line could be the byline."""
    article = parse_text(f"T\n{{publish}}\n{{head}}\n{label}\nMở đầu câu chuyện.\nThân bài.\n")
    assert article.author is None
    assert article.paragraphs == (label, "Mở đầu câu chuyện.", "Thân bài.")
    article = parse_text("T\n{publish}\n{head}\nTheo Vnexpress\nMở đầu câu chuyện.\nThân bài.\n")
    assert (article.author, article.credit) == (None, "Vnexpress")


def test_a_credit_keeps_the_id_the_byline_gave() -> None:
    """Telling a credit from an author changes no id: readers would see the story twice."""
    body = "T\n{publish}\n{head}\nMở đầu.\nThân bài.\n"
    credited = parse_text(body + "Theo TTXVN\n")
    assert credited.id == make_article_id("Mở đầu.\nThân bài.".encode(), "TTXVN")


@pytest.mark.parametrize(
    "line",
    [
        "Hà Nội",
        "HÀ NỘI",
        "Hà Nội -",
        "Hà Nội \u2013",
        "TP Hồ Chí Minh",
        "TP. Hồ Chí Minh",
        "Tp.HCM",
        "Sài Gòn",
        "Thành phố Huế",
        "Tỉnh Quảng Trị",
        "Khánh Hoà",
        "Bà Rịa-Vũng Tàu",
        "Đắk Lắk",
        "Tin Nóng",
        "TIN NÓNG",
        "Sức Khoẻ",
    ],
)
def test_a_place_or_a_section_label_is_no_byline_above_the_story_or_below_it(line: str) -> None:
    above = parse_text(f"T\n{{publish}}\n{{head}}\n{line}\nMở đầu câu chuyện.\nThân bài.\n")
    assert (above.author, above.credit) == (None, None)
    assert above.paragraphs == (line, "Mở đầu câu chuyện.", "Thân bài.")
    below = parse_text(f"T\n{{publish}}\n{{head}}\nMở đầu câu chuyện.\nThân bài.\n{line}\n")
    # Below the story, a province's two-word name is a writer's ("Hà Giang", "Thái Bình"),
    # not one of the five cities' ("Hà Nội") nor a joined one ("Bà Rịa-Vũng Tàu").
    bare = line in ("Khánh Hoà", "Đắk Lắk")
    assert (below.author, below.credit) == ((line, None) if bare else (None, None))


@pytest.mark.parametrize("name", ["Hoàng Yến", "Nguyễn Văn A", "Lê Hà", "Hà Nam Anh", "Minh Hòa"])
def test_a_writers_name_that_shares_words_with_a_place_is_still_the_author(name: str) -> None:
    above = parse_text(f"T\n{{publish}}\n{{head}}\n{name}\nMở đầu câu chuyện.\nThân bài.\n")
    assert above.author == name
    below = parse_text(f"T\n{{publish}}\n{{head}}\nMở đầu câu chuyện.\nThân bài.\n{name}\n")
    assert below.author == name


def test_every_province_is_a_place() -> None:
    assert len(PROVINCES) == 63
    assert len(set(PROVINCES)) == 63
    for name in PROVINCES:
        assert is_place_or_label(name), name
        assert is_place_or_label(name.upper()), name
        assert is_place_or_label(f"Tỉnh {name}") or is_place_or_label(f"TP {name}"), name

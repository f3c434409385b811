"""Article fixtures for every stage: hostile input and the repo's own seeds."""

from __future__ import annotations

import hashlib
import unicodedata
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from syndicate.load import parse_dump
from syndicate.model import Article, Block, BlockKind, Precision, Teaser
from syndicate.text import slugify

SEEDS = Path(__file__).resolve().parent.parent.parent / "seeds"
TZ = ZoneInfo("Asia/Ho_Chi_Minh")


def _article(
    title: str,
    paragraphs: list[str],
    *,
    published: datetime,
    captions: tuple[str, ...] = (),
    author: str | None = None,
    slug: str | None = None,
    language: str = "vi",
) -> Article:
    body = [Block(BlockKind.PARAGRAPH, paragraphs[0])]
    body += [Block(BlockKind.CAPTION, c) for c in captions]
    body += [Block(BlockKind.PARAGRAPH, p) for p in paragraphs[1:]]
    content = "\n".join(b.text for b in body)
    return Article(
        id=hashlib.blake2b(content.encode(), digest_size=16).hexdigest(),
        slug=slug or slugify(title),
        title=title,
        title_derived=False,
        published=published,
        precision=Precision.DATETIME,
        body=tuple(body),
        author=author,
        teasers=(Teaser("QTO", "Tin khác <i>nghiêng</i> & {{ 1+1 }}..."),),
        source=f"hostile/{slug or slugify(title)}.txt",
        language=language,
    )


@pytest.fixture
def hostile_articles() -> list[Article]:
    """Articles whose text must come out as text in every output, never as markup or headers.

    - 0: `<script>` in title and body, `&amp;` that must stay the five characters `&amp;`;
    - 1: Jinja syntax `{{ 7*7 }}`, `{% raw %}` and CDATA's end `]]>`;
    - 2: a title holding "\\r\\nBcc: evil@example.com" (built directly: the loader would split
      it into lines);
    - 3: Vietnamese parsed from a decomposed (NFD) dump: the loader gives NFC;
    - 4: Vietnamese built directly in NFD (combining marks) to check a stage normalises it;
    - 5: plain English.
    Ids and slugs are distinct; every `published` is tz-aware.
    """
    nfd_dump = unicodedata.normalize(
        "NFD",
        "Hội nghị ở Đông Hà\n31/10/2024 08:30\n{head}\n"
        "QTO - Sáng nay, tại TP. Đông Hà, hội nghị về chuyển đổi số đã diễn ra.\n"
        "Quang cảnh hội nghị - Ảnh: T.P\n"
        "Đại biểu thảo luận sôi nổi về ứng dụng công nghệ.\n"
        "Trúc Phương\n",
    ).encode("utf-8")
    parsed = parse_dump(nfd_dump, source="hostile/nfd.txt", tz=TZ)
    return [
        _article(
            "<script>alert(1)</script> Tin nóng & lạnh",
            [
                "Mở đầu <b>đậm</b> và <script>alert('xss')</script> cùng &amp; và &lt;.",
                "Đoạn hai có <img src=x onerror=alert(1)> và \"ngoặc kép\" 'đơn'.",
            ],
            captions=("<em>Ảnh</em> - Ảnh: <T.P>",),
            author="<b>Tác giả</b>",
            published=datetime(2024, 10, 31, 9, 15, tzinfo=TZ),
        ),
        _article(
            "Giá {{ 7*7 }} và {% raw %}mẫu{% endraw %} ]]>",
            [
                "Nội dung {{ config }} {% for x in y %}lặp{% endfor %} ]]> <![CDATA[x]]>.",
                "{# chú thích #} và ${HOME} cùng %s %(name)s.",
            ],
            author="{{ author }}",
            published=datetime(2024, 10, 30, 18, 0, tzinfo=TZ),
        ),
        _article(
            "Tin khẩn\r\nBcc: evil@example.com",
            ["Tiêu đề chứa xuống dòng\r\nBcc: evil@example.com không được lọt vào header."],
            slug="tin-khan-bcc-evil-example-com",
            author="Kẻ xấu\nBcc: evil@example.com",
            published=datetime(2024, 10, 29, 7, 0, tzinfo=TZ),
        ),
        parsed,
        _article(
            unicodedata.normalize("NFD", "Quảng Trị đón bão số 6: Đông Hà ngập sâu"),
            [
                unicodedata.normalize("NFD", "Mưa lớn khiến nhiều tuyến phố ở Đông Hà ngập."),
                unicodedata.normalize("NFD", "Người dân được hỗ trợ di dời đến nơi an toàn."),
            ],
            slug="quang-tri-don-bao-so-6-dong-ha-ngap-sau",
            published=datetime(2024, 10, 28, 12, 0, tzinfo=TZ),
        ),
        _article(
            "Coffee <prices> & growers",
            ["Growers in Lam Giang say prices are at a record <high>."],
            author="Thu Ha",
            language="en",
            published=datetime(2024, 10, 27, 6, 30, tzinfo=TZ),
        ),
    ]


@pytest.fixture
def sample_articles() -> list[Article]:
    """Every dump in the repo's seeds/, parsed on its own (sorted by file name)."""
    return [
        parse_dump(path.read_bytes(), source=f"seeds/{path.name}", tz=TZ)
        for path in sorted(SEEDS.glob("*.txt"))
    ]

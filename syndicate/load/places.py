"""Load: the lines that look like a writer's name and are not one: Vietnam's provinces and
centrally run cities (and their usual short forms), and the sections news sites print above
a story. Pure data and one test."""

from __future__ import annotations

import functools
import re
import unicodedata

# The 63 provinces and centrally run cities (as before the 2025 mergers, whose 34 kept names
# from this list), as the press writes them.
PROVINCES = (
    "Hà Nội",
    "Hồ Chí Minh",
    "Hải Phòng",
    "Đà Nẵng",
    "Cần Thơ",
    "An Giang",
    "Bà Rịa - Vũng Tàu",
    "Bắc Giang",
    "Bắc Kạn",
    "Bạc Liêu",
    "Bắc Ninh",
    "Bến Tre",
    "Bình Định",
    "Bình Dương",
    "Bình Phước",
    "Bình Thuận",
    "Cà Mau",
    "Cao Bằng",
    "Đắk Lắk",
    "Đắk Nông",
    "Điện Biên",
    "Đồng Nai",
    "Đồng Tháp",
    "Gia Lai",
    "Hà Giang",
    "Hà Nam",
    "Hà Tĩnh",
    "Hải Dương",
    "Hậu Giang",
    "Hòa Bình",
    "Hưng Yên",
    "Khánh Hòa",
    "Kiên Giang",
    "Kon Tum",
    "Lai Châu",
    "Lâm Đồng",
    "Lạng Sơn",
    "Lào Cai",
    "Long An",
    "Nam Định",
    "Nghệ An",
    "Ninh Bình",
    "Ninh Thuận",
    "Phú Thọ",
    "Phú Yên",
    "Quảng Bình",
    "Quảng Nam",
    "Quảng Ngãi",
    "Quảng Ninh",
    "Quảng Trị",
    "Sóc Trăng",
    "Sơn La",
    "Tây Ninh",
    "Thái Bình",
    "Thái Nguyên",
    "Thanh Hóa",
    "Thừa Thiên Huế",
    "Tiền Giang",
    "Trà Vinh",
    "Tuyên Quang",
    "Vĩnh Long",
    "Vĩnh Phúc",
    "Yên Bái",
)
# Other names the press gives them ("TP.HCM" and "Hà Nội" take a "TP" before them below).
SHORT_FORMS = (
    "HCM",
    "TPHCM",
    "Sài Gòn",
    "Huế",
    "Thừa Thiên - Huế",
    "TT-Huế",
    "BR-VT",
    "Vũng Tàu",
    "Đắc Lắc",
    "Đắk Lắc",
    "Đăk Lăk",
    "Đắc Nông",
    "Đăk Nông",
    "Bắc Cạn",
)
# What may come before a place's name: "TP.HCM", "TP Hồ Chí Minh", "Thành phố Huế", "Tỉnh
# Quảng Trị".
_PREFIX = re.compile(r"^(?:tp\.?|thành phố|tỉnh)\s*")

# Sections and labels sites print above a story, each two words or more (one word above the
# story is never a byline: parse._is_name_sized).
SECTION_LABELS = (
    "Tin Nóng",
    "Tin Mới",
    "Tin Tức",
    "Tin Vắn",
    "Tin Nổi Bật",
    "Tin Trong Nước",
    "Tin Quốc Tế",
    "Tin Thế Giới",
    "Tin Địa Phương",
    "Tin Tổng Hợp",
    "Tin Ảnh",
    "Thời Sự",
    "Chính Trị",
    "Xã Hội",
    "Kinh Tế",
    "Kinh Doanh",
    "Tài Chính",
    "Chứng Khoán",
    "Bất Động Sản",
    "Thế Giới",
    "Quốc Tế",
    "Pháp Luật",
    "An Ninh",
    "Quân Sự",
    "Quốc Phòng",
    "Giáo Dục",
    "Sức Khỏe",
    "Y Tế",
    "Văn Hóa",
    "Giải Trí",
    "Thể Thao",
    "Bóng Đá",
    "Du Lịch",
    "Đời Sống",
    "Nhịp Sống",
    "Gia Đình",
    "Công Nghệ",
    "Khoa Học",
    "Số Hóa",
    "Ô Tô",
    "Xe Máy",
    "Môi Trường",
    "Nông Nghiệp",
    "Bạn Đọc",
    "Ý Kiến",
    "Góc Nhìn",
    "Phóng Sự",
    "Điều Tra",
    "Chuyên Đề",
    "Sự Kiện",
    "Ẩm Thực",
    "Thời Trang",
    "Breaking News",
    "Latest News",
)

# The five tone marks, apart from the vowel marks (circumflex, breve, horn) they sit with.
_TONES = frozenset("\u0300\u0301\u0303\u0309\u0323")
_DASH_SPACES = re.compile(r"\s*[-\u2013\u2014]\s*")
# A dateline's dash after the place: "Hà Nội -", "HÀ NỘI" and an en dash.
_TRAILING_DASH = re.compile(r"\s*[-\u2013\u2014]\s*$")


def _syllable_key(syllable: str) -> str:
    """A syllable with its tone mark moved to its end: "hòa" and "hoà" (the two tone
    placements sites use) give one key."""
    letters = unicodedata.normalize("NFD", syllable)
    tones = "".join(c for c in letters if c in _TONES)
    return "".join(c for c in letters if c not in _TONES) + tones


def _key(text: str) -> str:
    """`text` (casefolded, single-spaced) as the lists are looked up: tones at syllables'
    ends, no spaces around a dash ("Bà Rịa - Vũng Tàu", "Bà Rịa-Vũng Tàu")."""
    text = _DASH_SPACES.sub("-", text)
    return " ".join(_syllable_key(word) for word in text.split(" "))


_PLACES = frozenset(_key(" ".join(name.casefold().split())) for name in PROVINCES + SHORT_FORMS)
# The provinces whose names people bear ("Hà Giang", "Thái Bình", "Phú Yên"): two words, not
# one of the five centrally run cities (listed first) nor a joined name ("Bà Rịa - Vũng Tàu").
_NAME_LIKE = frozenset(
    _key(name.casefold()) for name in PROVINCES[5:] if len(name.split()) == 2 and "-" not in name
)
_LABELS = frozenset(_key(" ".join(label.casefold().split())) for label in SECTION_LABELS)


# Bylines repeat from dump to dump (a paper's writers, its sections): each is looked up once.
@functools.lru_cache(maxsize=4096)
def is_place_or_label(line: str, *, bare_places: bool = True) -> bool:
    """Whether `line` is a province or city ("Hà Nội", "TP.HCM", "TP Hồ Chí Minh", "Sài
    Gòn", "Hà Nội -"), or a section label ("Tin Nóng", "THỜI SỰ"): what stands above a
    story or under it where a byline may, and names no writer.

    Without `bare_places`, a province's name that people bear ("Hà Giang", "Thái Bình":
    two words, not one of the five cities) is not a place: below a story, where datelines
    do not stand, it is a writer's name; "Hà Nội", the prefixed forms ("TP.HCM", "Tỉnh Hà
    Giang"), the other names ("Sài Gòn") and a dateline's dash still are places.
    """
    bare = _TRAILING_DASH.sub("", line)
    text = " ".join(bare.casefold().split())
    key = _key(text)
    if key in _LABELS:
        return True
    if key in _PLACES:
        # A dash after it is a dateline's: a place wherever it stands.
        return bare_places or key not in _NAME_LIKE or bare != line
    bare = _PREFIX.sub("", text)
    return bare != text and _key(bare) in _PLACES

"""Text helpers: NFC normalisation, invisible characters, header-safe strings, slugs. Pure."""

from __future__ import annotations

import itertools
import re
import unicodedata
from collections.abc import Callable, Iterator

# Characters that render as nothing or as a plain space in the dumps we get.
_TO_SPACE = dict.fromkeys(
    map(
        ord,
        "\u00a0\u2007\u202f\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2008\u2009\u200a"
        "\u205f\u3000\t\v\f",
    ),
    " ",
)
# Bidi embedding, override and isolate controls: in a title they can reorder what a reader
# sees (an address or a name shown backwards), and an unclosed one spills into what follows.
_BIDI = "\u202a-\u202e\u2066-\u2069"
# Bidi marks (LRM, RLM, ALM) and the invisible operators: they show nothing, and no
# Vietnamese or English line needs them (a title copied out of a word processor or a social
# post carries them, and they split a word for search and matching).
_MARKS = "\u200e\u200f\u061c\u2061-\u2064"
# U+FFFE/U+FFFF are valid UTF-8 but not XML characters: a feed writer would refuse them.
# The zero-width joiner is kept inside an emoji sequence (see _ZWJ_OUTSIDE_EMOJI), the
# zero-width space between letters of a script written without spaces (_ZWSP_OUTSIDE_WORDS)
# and tag characters in a flag's tag sequence (_TAGS_OUTSIDE_FLAGS).
_DELETE = dict.fromkeys(map(ord, "\u200c\u2060\ufeff\u00ad\ufffe\uffff\u200e\u200f\u061c"), None)
_DELETE.update(dict.fromkeys(range(0x202A, 0x202F), None))
_DELETE.update(dict.fromkeys(range(0x2066, 0x206A), None))
_DELETE.update(dict.fromkeys(range(0x2061, 0x2065), None))
_CLEAN_TABLE = {**_TO_SPACE, **_DELETE}
# Characters an emoji ZWJ sequence joins (Extended_Pictographic, roughly), with the
# variation selector and skin tones that may end one: "👨‍👩‍👧", "🏳️‍🌈", "👩🏽‍💻".
_EMOJI = "\u00a9\u00ae\u203c\u2049\u2122\u2139\u2194-\u21aa\u231a-\u23ff\u24c2\u25aa-\u27bf"
_EMOJI += "\u2934\u2935\u2b05-\u2b55\u3030\u303d\u3297\u3299\U0001f000-\U0001faff"
# A zero-width joiner that does not join two emoji: deleted like the other invisibles.
# It starts with the joiner itself: a pattern opening with a lookbehind is tried at every
# position of the text, four times slower over a whole dump.
_ZWJ_OUTSIDE_EMOJI = re.compile(f"\u200d(?:(?<![{_EMOJI}\ufe0f]\u200d)|(?![{_EMOJI}]))")
# Thai, Lao, Myanmar, Khmer (and Tai Tham, Myanmar extensions) put no space between words: a
# zero-width space between two of their letters is where a line may break. Anywhere else it
# is an invisible that splits a word for search and matching ("Hà\u200bNội"): deleted.
_NO_SPACE_SCRIPTS = "\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u19e0-\u19ff\u1a20-\u1aaf"
_NO_SPACE_SCRIPTS += "\ua9e0-\ua9ff\uaa60-\uaa7f"
_ZWSP_OUTSIDE_WORDS = re.compile(
    f"\u200b(?:(?<![{_NO_SPACE_SCRIPTS}]\u200b)|(?![{_NO_SPACE_SCRIPTS}]))"
)
# Tag characters spell text no reader sees (hidden instructions, "ASCII smuggling"), except
# in the one sequence they exist for: a subdivision flag, the black flag, tags, CANCEL TAG.
_TAGS = "\U000e0000-\U000e007f"
_TAGS_OUTSIDE_FLAGS = re.compile(f"(\U0001f3f4[\U000e0020-\U000e007e]+\U000e007f)|[{_TAGS}]")
_ANY_TAG = re.compile(f"[{_TAGS}]")
_SPACES = re.compile(r" {2,}")
# C0/C1 controls other than \n (line breaks are split on before cleaning).
_CONTROLS = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")


# RFC 5322 caps a line at 998 bytes; the digest wraps its text and mail folds its HTML
# well below it, so a substituted per-recipient URL still fits.
MAX_LINE_BYTES = 900


def nfc(text: str) -> str:
    """Return `text` in Unicode NFC."""
    return unicodedata.normalize("NFC", text)


# The same mapping as _CLEAN_TABLE, as regexes: one C-level scan each, even on long texts.
_DELETE_RE = re.compile(f"[\u200c\u2060\ufeff\u00ad\ufffe\uffff\ud800-\udfff{_BIDI}{_MARKS}]")
_TO_SPACE_RE = re.compile(
    "[\u00a0\u2000-\u200a\u202f\u205f\u3000\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]"
)

# Any character either of them may change (the joiner included: most texts have none).
_SPECIAL_RE = re.compile(
    f"[\u200b-\u200d\u2060\ufeff\u00ad\ufffe\uffff\ud800-\udfff{_BIDI}{_MARKS}{_TAGS}"
    f"{_TO_SPACE_RE.pattern[1:]}"
)


def clean_text(text: str) -> str:
    """Clean a whole text, keeping its line breaks: NFC, invisible characters deleted.

    Odd spaces and control characters other than "\\n" become plain spaces; runs of spaces
    are left for the caller to collapse.
    """
    if _SPECIAL_RE.search(text):  # most texts have none: one scan instead of two rewrites
        text = _TO_SPACE_RE.sub(" ", _DELETE_RE.sub("", _drop_joiners(text)))
    return nfc(text)


def _drop_joiners(text: str) -> str:
    """`text` without the invisibles kept only in some places: the zero-width joiner outside
    emoji, the zero-width space outside words of scripts written without spaces, tag
    characters outside flags. Each is rare: its own pass keeps the class scans fast."""
    if "\u200d" in text:
        text = _ZWJ_OUTSIDE_EMOJI.sub("", text)
    if "\u200b" in text:
        text = _ZWSP_OUTSIDE_WORDS.sub("", text)
    if _ANY_TAG.search(text):
        text = _TAGS_OUTSIDE_FLAGS.sub(lambda m: m.group(1) or "", text)
    return text


def clean_line(line: str) -> str:
    """Normalise one line: NFC, invisible characters removed, spaces collapsed, trimmed."""
    return _SPACES.sub(" ", clean_text(line)).strip()


def one_line(text: str) -> str:
    """Text on one line (no CR/LF), NFC, invisible characters removed, spaces collapsed."""
    # Fast path: loader output is already clean (isprintable() is False for controls,
    # line breaks and the invisible characters clean_line removes).
    if (
        text.isprintable()
        and "  " not in text
        and text == text.strip()
        and unicodedata.is_normalized("NFC", text)
    ):
        return text
    return clean_line(text.replace("\r", " ").replace("\n", " "))


def header_safe(text: str, *, limit: int = 900) -> str:
    """Make article text safe for one email header: one line, no controls, NFC, bounded."""
    text = _CONTROLS.sub(" ", text.replace("\r", " ").replace("\n", " "))
    text = _drop_joiners(text).translate(_CLEAN_TABLE)
    text = _SPACES.sub(" ", text).strip()
    text = nfc(text)
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text


_SLUG_DROP = re.compile(r"[^a-z0-9]+")
# Combining Diacritical Marks, all of non-zero combining class (U+034F, the grapheme joiner,
# has class 0 and is left out).
_COMBINING_MARKS = re.compile("[\u0300-\u034e\u0350-\u036f]+")


def slugify(text: str, *, max_length: int = 80) -> str:
    """ASCII slug for URLs: `Đông Hà` -> `dong-ha`. Empty when nothing is left."""
    # đ/Đ have no Unicode decomposition, so NFD alone would drop them.
    text = text.replace("đ", "d").replace("Đ", "D")
    decomposed = unicodedata.normalize("NFKD", text)
    # Fast path: strip the usual combining marks with one regex; when only ASCII is left,
    # no other combining character can remain and the result is the same as the slow path.
    ascii_only = _COMBINING_MARKS.sub("", decomposed)
    if not ascii_only.isascii():
        ascii_only = "".join(c for c in decomposed if not unicodedata.combining(c))
    slug = _SLUG_DROP.sub("-", ascii_only.lower()).strip("-")
    if len(slug) > max_length:
        slug = (
            slug[:max_length].rsplit("-", 1)[0] if "-" in slug[:max_length] else slug[:max_length]
        )
    return slug.strip("-")


def collapse_spaces(text: str) -> str:
    """Collapse every run of whitespace to one space and trim."""
    # Fast path: the loader's lines are collapsed already. U+0020 is the only printable
    # whitespace, so printable text with no double, leading or trailing space is unchanged
    # (one C scan, where splitting builds a string per word: 5 us for a 350-character lead).
    if text.isprintable() and "  " not in text and text[:1] != " " and text[-1:] != " ":
        return text
    return " ".join(text.split())


# Vietnamese letters outside ASCII (lower case, NFC): a tie-break between Vietnamese and English.
VIETNAMESE_LETTERS = frozenset(
    "àảãáạăằẳẵắặâầẩẫấậèẻẽéẹêềểễếệìỉĩíịòỏõóọôồổỗốộơờởỡớợùủũúụưừửữứựỳỷỹýỵđ"
)


_WORD_PUNCTUATION = ".,;:!?()\"'\u201c\u201d\u2018\u2019"
_VI_WORDS = frozenset(
    "và của các là có được trong cho với đã này những người một không tại theo để khi từ đến "
    "về như ở sẽ đang cũng nhiều năm ngày tỉnh huyện xã".split()
)
_EN_WORDS = frozenset(
    "the and of to in is are was were a an for on with that this by from at as it its be has "
    "have had said says will not".split()
)
# What a word adds to the Vietnamese count less the English one, in one lookup a word.
_WORD_LEAN = {w: (w in _VI_WORDS) - (w in _EN_WORDS) for w in sorted(_VI_WORDS | _EN_WORDS)}


# Characters of an article's body read to tell its language: about 120 words.
ARTICLE_LANGUAGE_SAMPLE = 700


# Photo credits make a line a caption when they end it, after " - " (or an en or em dash),
# ". " or "(", or when they stand alone on the line (the loader's rule, FORMAT.md).
_PHOTO_CREDIT = (
    r"(?:ảnh|photo|photos)\s*:\s*[^\s:][^:]{0,48}"
    r"|ảnh\s+minh\s+(?:họa|hoạ)(?:\s*[:(][^:]{0,48})?"
    r"|(?:ảnh|photo)\s+(?:tư\s+liệu|internet|file)"
)
PHOTO_CAPTION = re.compile(
    rf"(?:^|\s[-\u2013\u2014]\s+|\.\s+|\(\s*)(?P<credit>{_PHOTO_CREDIT})\)?\s*$", re.IGNORECASE
)
# A credit that says the photo is no news photo of the story: an illustration, a file photo.
_STOCK_PHOTO = re.compile(r"ảnh\s+minh\s+(?:họa|hoạ)|(?:ảnh|photo)\s+(?:tư\s+liệu|file)", re.I)


def photo_description(caption: str) -> str | None:
    """What a caption says its photo shows, without the credit ("Quang cảnh hội thảo" of
    "Quang cảnh hội thảo - Ảnh: T.P"); None when it says nothing of the story: a credit
    alone, or the caption of an illustration or a file photo."""
    match = PHOTO_CAPTION.search(caption)
    if match is None:
        return caption.strip() or None
    if _STOCK_PHOTO.match(match.group("credit")):
        return None
    return caption[: match.start()].strip() or None


def tell_article_language(title: str, content: str) -> str:
    """Return the language of an article with this title and body text (lines joined by
    "\n"): what the parser stores, and what a stored record not in LANGUAGES becomes."""
    return detect_language(f"{title}\n{content[:ARTICLE_LANGUAGE_SAMPLE]}")


def detect_language(text: str) -> str:
    """Return "vi" when `text` reads as Vietnamese, else "en".

    Counts common function words of each language, then the share of words carrying
    Vietnamese letters as a tie-break: an English text with a few Vietnamese names stays "en".
    """
    raw = text.lower().split()[:600]
    words = [w for w in map(str.strip, raw, itertools.repeat(_WORD_PUNCTUATION)) if w]
    if not words:
        return "vi"
    lean = sum(map(_WORD_LEAN.get, words, itertools.repeat(0)))  # Vietnamese less English
    if lean:
        return "vi" if lean > 0 else "en"
    marked = sum(1 for w in words if not VIETNAMESE_LETTERS.isdisjoint(w))
    return "vi" if marked * 3 >= len(words) else "en"


# Tokens ending in "." that do not end a sentence (compared case-folded, without the final
# period): titles, degrees, place kinds and abbreviations seen in Vietnamese news ("TP. Đông
# Hà", "TS.", "ThS.", "PGS.") and in English news ("Mr.", "Dr.", "Oct.").
ABBREVIATIONS = frozenset(
    {
        # Vietnamese titles, degrees, place kinds and bodies
        "tp", "ts", "ths", "th.s", "pgs", "pgs.ts", "gs", "gs.ts", "bs", "bsck", "ks",
        "cn", "ls", "nsnd", "nsưt", "tt", "q", "p", "h", "x", "tx", "đh", "tw", "đc",
        "ubnd", "hđnd", "ttxvn", "v.v", "vv", "tr", "sđd", "nxb",
        # English titles and abbreviations
        "mr", "mrs", "ms", "dr", "prof", "st", "mt", "jr", "sr", "no", "vs", "etc", "e.g",
        "i.e", "inc", "ltd", "co", "corp", "gen", "col", "lt", "sgt", "u.s", "fig",
        # English months
        "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
    }
)  # fmt: skip
_CLOSERS = "\"'\u201d\u2019\u00bb)]"
# Terminal punctuation and closing quotes, then a space or the end of the text.
_SENTENCE_END = re.compile(f"[.!?\u2026]+[{re.escape(_CLOSERS)}]*(?=\\s|$)")
# Opening quotes and brackets; a new sentence may also open with a dash.
_QUOTE_OPENERS = "\"'\u201c\u2018\u00ab(["
_OPENERS = _QUOTE_OPENERS + "-\u2013\u2014"


def _is_initials(word: str) -> bool:
    """'T', 'T.P', 'N.V', 'Th.S' (the final period already cut off); not 'm' or 'EU'."""
    parts = word.split(".")
    if len(parts) == 1:
        return len(word) == 1 and word.isupper()
    return len(parts) <= 4 and all(1 <= len(p) <= 2 and p[0].isupper() for p in parts)


def sentence_ends(text: str) -> Iterator[int]:
    """Yield the offsets where the sentences of `text` end, in order; the one sentence splitter.

    A sentence ends at terminal punctuation (and closing quotes) followed by a space and
    a capital, a digit or an opening quote. A period after an abbreviation (ABBREVIATIONS)
    or initials (T.P, N.V.) ends none, nor does an ellipsis before lower-case text. The
    end of the text is not yielded.
    """
    for match in _SENTENCE_END.finditer(text):
        if match.group().rstrip(_CLOSERS) == ".":
            word = text[text.rfind(" ", 0, match.start()) + 1 : match.start()].lstrip(_OPENERS)
            if word.casefold() in ABBREVIATIONS or _is_initials(word):
                continue
        rest = text[match.end() :].lstrip()
        if rest and (rest[0].isupper() or rest[0].isdigit() or rest[0] in _OPENERS):
            yield match.end()


def first_sentence(text: str) -> str:
    """Return the first sentence of `text` (see sentence_ends), or all of it."""
    for end in sentence_ends(text):
        return text[:end].strip()
    return text.strip()


def lead_excerpt(text: str, *, words: int) -> str:
    """Cut `text` at a sentence boundary (sentence_ends) to at most `words` words.

    When even the first sentence is longer, cut it as an editor would, and end with "…":
    at its last clause boundary (comma, semicolon, colon, closing quotation mark) within
    the words when that keeps at least half of them, else at a word boundary that splits
    no word (a compound, a name, a number from its unit) and leaves no word of
    CUT_STOP_WORDS at the end. Works on whole words of NFC text, so no character is
    ever split.
    """
    tokens = nfc(text).split()
    if len(tokens) <= words:
        return " ".join(tokens)
    flat = " ".join(tokens)
    best = ""
    for end in sentence_ends(flat):
        piece = flat[:end]
        if len(piece.split()) > words:
            break
        best = piece
    if best:
        return best
    limit = len(" ".join(tokens[:words])) + 1
    cut = _clause_cut(flat, limit)
    if cut is None or len(cut) < limit // 2:
        cut = _word_cut(flat, limit, stop=CUT_STOP_WORDS)
    return cut.rstrip(_SHORTEN_STRIP).rstrip(".…") + "…"


# Punctuation that must not dangle before an added ellipsis.
_SHORTEN_STRIP = " ,;:-\u2013\u2014(\u201c\u2018\"'"


def shorten(text: str, *, limit: int = 100) -> str:
    """Cut NFC `text` at a word boundary to at most `limit` characters; the one shortener.

    Whitespace is collapsed; "…" ends the text only when something was cut, and no
    comma, dash or opening quote dangles before it. The cut is a derived title's word cut
    (_word_cut): it splits no compound word, name or number and unit, and leaves no
    function word (CUT_STOP_WORDS: nor a "huyện" without its name) before the "…", unless
    that would keep less than half of `limit`; a
    quotation the cut leaves open is closed after the "…" (as shorten_headline does).
    """
    text = nfc(collapse_spaces(text))
    if len(text) <= limit:
        return text
    return _with_closers(
        text,
        limit,
        lambda room: _word_cut(text, room, stop=CUT_STOP_WORDS).rstrip(_SHORTEN_STRIP) + "…",
    )


# How much of a head or lead a story key keeps: more than any teaser the sites cut off.
STORY_KEY_CHARS = 240
# A teaser must keep at least this much text to be tied to an article (its probe).
STORY_PROBE_CHARS = 24
_TRAILING_ELLIPSIS = re.compile(r"(?:\s*(?:\.{2,}|…))+\s*$")


def story_key(text: str) -> str:
    """The matching key of a head, lead or teaser text: NFC, invisible characters removed,
    case-folded, whitespace collapsed, a trailing ellipsis dropped, at most STORY_KEY_CHARS.

    A teaser advertises an article when its key is a prefix of the article's head or lead
    key (a teaser is that text, usually cut off).
    """
    key = collapse_spaces(clean_text(text).casefold())
    # Spaces collapsed, a trailing ellipsis is within the run of spaces, dots and "…" the
    # key ends with: only that run is searched (the regex would try every position).
    stem = len(key.rstrip(" .…"))
    key = key[:stem] + _TRAILING_ELLIPSIS.sub("", key[stem:])
    return key[:STORY_KEY_CHARS].rstrip()


# ---------------------------------------------------------------- derived titles
#
# A headline derived from the head (else the lead) is written as a sub-editor would: the
# opening time/place adverbial goes (the date is in `published`), the rest is capitalised
# and cut to TITLE_LIMIT characters at a clause boundary, else at a word boundary that
# splits no compound word and leaves no function word dangling.
#
# Vietnamese writes a space between syllables, so a space is not a word boundary. The
# maintained segmenters (underthesea, pyvi) cost 0.3-2.5 ms a title and 0.3-4 s of loading
# per process, against 0.12 ms a dump for the whole read-decode-split floor (docs/format.md,
# "Titles"): instead, two-syllable words that news leads use often are listed here,
# and runs of capitalised syllables (names: Đông Hà, Nguyễn Đăng Quang) are never split.

TITLE_LIMIT = 90  # characters of a derived title, "…" included
TITLE_CLAUSE_MIN = 40  # a clause boundary this far in (or further) is a good cut

# Words a headline must not end on: articles, prepositions, conjunctions, auxiliaries.
FUNCTION_WORDS = frozenset(
    "của và các những với cho trong tại về để là được đã sẽ đang bị do vì nên mà thì khi "
    "từ đến ở như theo trên dưới sau trước giữa cùng hay hoặc nhưng rằng cũng vẫn còn một "
    "mọi mỗi có không chưa nhằm qua bằng vào ra lên xuống này đó nơi thuộc "
    "the a an of and or to in on at for with by from as is are was were be been will has "
    "have had that its their his her but into over after before than about".split()
)

# What else a teaser, summary or description (`shorten`, `lead_excerpt`) must not end on: a
# noun whose name, or number, the cut leaves out, which the reader takes the "…" for
# ("thuộc huyện…", "Doanh nghiệp tỉnh…", "ông…", "vào ngày…"); not "số", which ends
# "chuyển đổi số" as often as it opens a number. Not for derived titles: their
# slug is a published URL, so how they are cut stays as it was (PARSER_VERSION).
NAMED_NOUNS = frozenset(
    "tỉnh huyện quận xã phường thôn xóm ấp trấn ông bà ngày tháng mr mrs ms dr".split()
)
# The words `shorten` and `lead_excerpt` keep from the end of a cut: the one list (a
# NAMED_NOUNS word counted, "hai huyện", "các xã", is whole: see `_dangles`).
CUT_STOP_WORDS = FUNCTION_WORDS | NAMED_NOUNS
# Words that count a noun, which then needs no name ("nối hai huyện", "ở các xã").
_QUANTIFIERS = frozenset(
    "các những nhiều mọi mỗi vài hai ba bốn năm sáu bảy tám chín mười trăm nghìn".split()
)


def _dangles(previous: str, bare: str) -> bool:
    """Does a cut ending "… `previous` <`bare`>" leave its last word, a stop word (`bare`,
    as `_bare` gives it), dangling? Not a NAMED_NOUNS word that `previous` counts."""
    if bare in FUNCTION_WORDS or bare not in NAMED_NOUNS:
        return True
    before = _bare(previous)
    return not (before in _QUANTIFIERS or before[:1].isdigit())


# Two-syllable Vietnamese words (lower case, NFC) that a cut must not split. Compared after
# lower-casing, so "Tỉnh ủy" and "tỉnh ủy" are one entry; both tone placements are listed
# where news sites use both (ủy/uỷ, hòa/hoà).
COMPOUND_WORDS = frozenset(
    line.strip()
    for line in """
    an ninh
    hàng chục
    hàng trăm
    hàng nghìn
    hàng ngàn
    hàng triệu
    ban hành
    biên giới
    biên phòng
    báo cáo
    bình quân
    bảo vệ
    bền vững
    bệnh nhân
    bệnh viện
    bộ đội
    cao tốc
    chuyển đổi
    chính phủ
    chính quyền
    chính sách
    chính trị
    chăm sóc
    chương trình
    chỉ huy
    chỉ đạo
    chủ trì
    chủ tịch
    chủ đề
    cán bộ
    công an
    công bố
    công nghệ
    công nhân
    công tác
    cơ quan
    cơ sở
    cải cách
    cấp uỷ
    cấp ủy
    cứu hộ
    cứu nạn
    cứu trợ
    cử tri
    diễn ra
    doanh nghiệp
    du khách
    du lịch
    dân tộc
    dịch vụ
    dữ liệu
    dự án
    giao thông
    giám sát
    giáo dục
    giáo viên
    giải pháp
    giải phóng
    hiện nay
    hiệp hội
    hiệu quả
    hoạt động
    huyện uỷ
    huyện ủy
    hành chính
    hạ tầng
    hậu quả
    hệ thống
    học sinh
    học tập
    họp báo
    hỗ trợ
    hội nghị
    hội thảo
    khen thưởng
    khoa học
    khánh thành
    khó khăn
    khắc phục
    khối u
    khởi công
    kinh doanh
    kinh tế
    kiểm tra
    kế hoạch
    kết quả
    kỷ niệm
    lao động
    lãnh đạo
    lễ hội
    lực lượng
    miền núi
    môi trường
    mưa lũ
    mặt bằng
    mặt trận
    nghiên cứu
    ngân hàng
    ngân sách
    người dân
    nhiệm vụ
    nhà nước
    nhân dân
    nâng cao
    nông dân
    nông nghiệp
    nông sản
    nông thôn
    nội dung
    nội soi
    phong trào
    phát biểu
    phát triển
    phòng chống
    phẫu thuật
    phối hợp
    quan trọng
    quy hoạch
    quân sự
    quản lý
    quốc gia
    quốc hội
    quốc phòng
    ra mắt
    sinh viên
    song phương
    sơ kết
    sạt lở
    sản xuất
    sức khoẻ
    sức khỏe
    sự kiện
    tai nạn
    tham dự
    tham gia
    tham luận
    thanh niên
    thiên tai
    thiệt hại
    thu nhập
    thành công
    thành phố
    thôn bản
    thông tin
    thông xe
    thúc đẩy
    thư viện
    thương binh
    thường trực
    thường vụ
    thể thao
    thị trường
    thị trấn
    thị xã
    thời gian
    thủ tướng
    thủ tục
    thực hiện
    thực trạng
    tiến độ
    tiếp tục
    trao tặng
    triển khai
    truyền thông
    trường học
    trực tuyến
    tuyên giáo
    tuyên truyền
    tuần tra
    tích cực
    tăng cường
    tăng trưởng
    tập huấn
    tỉnh uỷ
    tỉnh ủy
    tổ chức
    tổng kết
    uỷ ban
    viên chức
    vùng cao
    văn bản
    văn hoá
    văn hóa
    văn phòng
    vận động
    vụ án
    xuất khẩu
    xây dựng
    xã hội
    xúc tiến
    y tế
    yêu cầu
    ý nghĩa
    điều hành
    điều tra
    điện tử
    đoàn thể
    đào tạo
    đánh giá
    đô thị
    đơn vị
    đại biểu
    đại hội
    đảng viên
    đầu tư
    đề nghị
    đề án
    địa bàn
    địa phương
    đồng bào
    đồng chí
    đổi mới
    ủy ban
    ứng dụng
    """.strip().splitlines()
)

_WEEKDAYS_EN = "monday|tuesday|wednesday|thursday|friday|saturday|sunday"
_MONTHS_EN = (
    "jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
    "|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?"
)
_DAY_MONTH = r"\d{1,2}[/.\-]\d{1,2}(?:[/.\-]\d{2,4})?"
# A leading time adverbial, then optionally a place ("tại TP. Đông Hà"), each ending in a
# comma: "Sáng nay 31/10,", "Chiều 2/11, tại TP. Đông Hà,", "Ngày 27.10,", "Hôm qua (15/11),",
# "On Thursday,", "On Oct. 31,", "Yesterday,". The place alone opens a lead too ("Tại
# Hà Nội,"). Cased as written: the pattern is matched case-insensitively.
_OPENING_ADVERBIAL = re.compile(
    r"^(?:"
    r"(?:vào\s+)?(?:rạng\s+sáng|sáng\s+sớm|chiều\s+tối|tối\s+muộn|đêm\s+khuya|sáng|chiều|tối"
    r"|trưa|đêm|hôm|ngày)"
    rf"(?:(?:\s+(?:nay|qua|mai|hôm\s+qua|hôm\s+nay))?\s*(?:\(\s*{_DAY_MONTH}\s*\)|{_DAY_MONTH})"
    r"|\s+(?:nay|qua|mai|hôm\s+qua|hôm\s+nay))"
    r"(?:\s*\([^()]{1,30}\))?\s*,\s*"
    rf"|(?:(?:early|late)\s+)?on\s+(?:(?:{_WEEKDAYS_EN})(?:\s+(?:morning|afternoon|evening|night))?"
    rf"|(?:{_MONTHS_EN})\.?\s+\d{{1,2}}(?:,\s*\d{{4}})?|\d{{1,2}}\s+(?:{_MONTHS_EN})\.?(?:\s+\d{{4}})?)"
    r"\s*,\s*"
    r"|(?:yesterday|today|tonight|this\s+(?:morning|afternoon|evening|week)"
    r"|last\s+(?:night|week|month|year)|earlier\s+(?:today|this\s+week))\s*,\s*"
    r")?"
    r"(?:(?:tại|ở|in|at)\s+[^,;:!?\u201c\u201d\"]{2,40}?\s*,\s*)?",
    re.IGNORECASE,
)
_CLAUSE_END = re.compile("[,;:](?= )|[\u201d\u00bb](?=[ ,;:.!?]|$)")
_CUT_STRIP = " ,;:-\u2013\u2014(\u201c\u2018\"'"
_DASHES = frozenset("-\u2013\u2014")


def drop_opening_adverbial(text: str) -> str:
    """Drop a leading time/place adverbial ("Sáng nay 31/10, tại TP. Đông Hà,") and capitalise.

    The text is returned as it was when nothing is dropped, or too little would be left.
    """
    match = _OPENING_ADVERBIAL.match(text)
    if not match or not match.group():
        return text
    rest = text[match.end() :]
    if len(rest) < 12 or not rest[0].isalpha():
        return text
    return rest[0].upper() + rest[1:]


def _bare(word: str) -> str:
    return word.strip(_WORD_PUNCTUATION + "\u2026\u00ab\u00bb").lower()


def _quotes_open(text: str) -> bool:
    return text.count("\u201c") > text.count("\u201d") or text.count('"') % 2 == 1


def _clause_cut(text: str, limit: int) -> str | None:
    """The longest opening of `text` ending at a clause boundary, between the bounds."""
    best = None
    for match in _CLAUSE_END.finditer(text, 0, limit):
        kept = text[: match.end()] if match.group() in "\u201d\u00bb" else text[: match.start()]
        kept = kept.rstrip()
        if len(kept) > limit - 1:
            break
        if len(kept) < TITLE_CLAUSE_MIN or _quotes_open(kept):
            continue
        if _bare(kept.rsplit(" ", 1)[-1]) in FUNCTION_WORDS:
            continue
        best = kept
    return best


# Abbreviated titles and place kinds that a name follows (ABBREVIATIONS has others too:
# "etc.", "v.v.", the months).
_TITLE_WORDS = frozenset(
    "tp ts ths th.s pgs pgs.ts gs gs.ts bs bsck ks cn ls nsnd nsưt tt q p h x tx "
    "mr mrs ms dr prof st mt gen col lt sgt".split()
)


def _splits_a_word(left: str, right: str) -> bool:
    """Would a cut between the syllables `left` and `right` split one word?"""
    if not right:
        return False
    if left in _DASHES or right in _DASHES:
        return True  # "chính trị - xã hội" is one term
    if left[-1] == "." and right[0].isupper() and left[:-1].casefold() in _TITLE_WORDS:
        return True  # "TS. BS. Nguyễn Hữu Tâm", "TP. Đông Hà": a title and its name are one
    if left[-1] in _WORD_PUNCTUATION or right[0] in _WORD_PUNCTUATION:
        return False
    left, right = left.lstrip(_QUOTE_OPENERS), right.rstrip(_WORD_PUNCTUATION)
    if not left or not right:
        return False
    if f"{left} {right}".lower() in COMPOUND_WORDS:
        return True
    if left[-1].isdigit() and _UNIT.match(right):
        return True  # "12.500 đồng/kg", "21 km": a number without its unit says nothing
    # Names: a run of capitalised syllables (Đông Hà, Nguyễn Đăng Quang, MTTQ Việt Nam).
    return left[0].isupper() and right[0].isupper()


def _word_cut(text: str, limit: int, *, stop: frozenset[str] = FUNCTION_WORDS) -> str:
    """The longest opening of `text` ending at a word boundary that reads well: no word of
    `stop` at its end."""
    words = text[: limit + 40]  # the words near the cut are all it looks at
    fallback = None
    # The openings that fit end at a space before `limit`, or with the words: the longest
    # first, each found from the one after it (no walk over all the words before the cut).
    end = len(words) if len(words) <= limit - 1 else words.rfind(" ", 0, limit)
    while end >= 0:
        start = words.rfind(" ", 0, end)
        opening = text[:end].rstrip(_CUT_STRIP)
        if opening:
            fallback = fallback or opening
            last = words[start + 1 : end]
            bare = _bare(last)
            after = words.find(" ", end + 1)
            following = words[end + 1 : after if after >= 0 else len(words)]
            if (
                bare
                and not (bare in stop and _dangles(_word_before(words, start), bare))
                and not _splits_a_word(last, following)
                and not _quoted_briefly(opening)
            ):
                if len(opening) < limit // 2:
                    break
                return opening
        end = start
    return fallback or text[: limit - 1]


def _word_before(words: str, space: int) -> str:
    """The word of `words` that ends at offset `space` (a space, or -1: none)."""
    return words[words.rfind(" ", 0, max(space, 0)) + 1 : max(space, 0)]


def _quoted_briefly(opening: str) -> bool:
    """Does `opening` end inside a quotation after a word or two (which reads as a mistake)?"""
    quoted = opening.rsplit("\u201c", 1)[-1] if _quotes_open(opening) else None
    return quoted is not None and len(quoted.split()) < 3


def derive_title(text: str, *, limit: int = TITLE_LIMIT) -> str:
    """A headline from a head or lead: its first sentence, opening adverbial dropped, cut.

    At most `limit` characters. A cut falls at a clause boundary (comma, semicolon, colon,
    closing quotation mark) between TITLE_CLAUSE_MIN and `limit`, else at a word boundary
    that splits no compound word (COMPOUND_WORDS, names) and leaves no function word
    (FUNCTION_WORDS) at the end; "…" ends the title only when something was cut, and a
    quotation the cut leaves open is closed after it (as shorten_headline does).
    """
    if "  " in text or not text.isprintable() or text != text.strip():
        text = collapse_spaces(text)  # loader text has single spaces already
    sentence = first_sentence(text)
    if sentence.endswith(".") and not sentence.endswith(".."):
        sentence = sentence[:-1]
    return _cut_closed(drop_opening_adverbial(sentence), limit)


def shorten_headline(text: str, *, limit: int) -> str:
    """`text`, a headline, cut to at most `limit` characters as derived titles are: at a
    clause boundary past TITLE_CLAUSE_MIN, else at a word boundary that splits no compound
    word or name and leaves no function word at the end; "…" ends it when something was
    cut, and a quotation the cut leaves open is closed after it (`“Không để người dân
    nào…”`). For headlines shown short (the subject line, the digest's longest titles);
    `shorten` cuts at any space,
    which in Vietnamese falls between the syllables of a word as often as between words.
    """
    return _cut_closed(nfc(collapse_spaces(text)), limit)


def _cut_closed(text: str, limit: int) -> str:
    """`_cut_headline`, and the quotations the cut leaves open closed after its "…"."""
    if len(text) <= limit:
        return text
    return _with_closers(text, limit, lambda room: _cut_headline(text, room))


def _with_closers(text: str, limit: int, cut_at: Callable[[int], str]) -> str:
    """`cut_at(limit)`, the quotations it leaves open closed after its "…": cut again with
    room for their marks, and again while the marks that cut needs do not fit (it may fall
    before a quote, or inside one more)."""
    cut = cut_at(limit)
    closers = _open_quotes(cut)
    if not closers:
        return cut
    room = max(1, limit - len(closers))
    cut = cut_at(room)
    closers = _open_quotes(cut)
    while len(cut) + len(closers) > limit and room > 1:
        room = max(1, min(room - 1, limit - len(closers)))
        cut = cut_at(room)
        closers = _open_quotes(cut)
    return cut + closers


# Quotation marks, each opener with its closer; a straight double quote closes itself.
_QUOTE_PAIRS = {"\u201c": "\u201d", "\u00ab": "\u00bb", '"': '"'}
_QUOTE_CLOSERS = frozenset(_QUOTE_PAIRS.values())
_QUOTE_MARKS = re.compile('[\u201c\u201d\u00ab\u00bb"]')


def _open_quotes(text: str) -> str:
    """The closing marks of the quotations `text` leaves open, innermost first."""
    expected: list[str] = []
    for char in _QUOTE_MARKS.findall(text):  # the marks only: a C-level scan for them
        if expected and char == expected[-1]:
            expected.pop()
        elif char in _QUOTE_PAIRS:
            expected.append(_QUOTE_PAIRS[char])
        elif char in _QUOTE_CLOSERS and char in expected:
            del expected[len(expected) - 1 - expected[::-1].index(char) :]
    return "".join(reversed(expected))


def _cut_headline(text: str, limit: int) -> str:
    """`shorten_headline` of single-spaced NFC text (the loader's: not normalized again)."""
    if len(text) <= limit:
        return text
    cut = _clause_cut(text, limit) or _word_cut(text, limit)
    return cut.rstrip(_CUT_STRIP) + "\u2026"


# A space before a full stop, comma, semicolon, colon, question or exclamation mark (a
# scraper's, or a typist's: "Sông Lam , nối hai bờ"), where the mark ends a word; not the
# spaced colon of a score or a ratio between two numbers ("thắng 2 : 1").
_SPACE_BEFORE_MARK = re.compile(r" +(?=[.,;!?](?:\s|$))|(?<!\d) +(?=:(?:\s|$))| +(?=:(?:$|\s\D))")
_THREE_DOTS = re.compile(r"\.{3,}")
# A straight double quote opening a quotation (at the start, or after a space or bracket,
# before a character that is not a space) and the one closing it (after a character that
# is not a space, before the end, a space or punctuation).
_STRAIGHT_QUOTATION = re.compile(r'(?<![^\s(\[])"(?=\S)([^"]*?\S)"(?![^\s,;:.!?)\]\u2026])')
_CLOSING_MARKS = '\u201d\u2019\u00bb")]'


def set_headline(title: str) -> str:
    """A headline set as papers set one: no full stop at its end (an abbreviation keeps
    its own: "A.B.C.", "TP.", "Inc."), three dots as "…", no space before a full stop,
    comma, colon (but a score's: "2 : 1") or question mark, and straight double quotes that
    pair up as “ ” (left alone when one does not pair: an inch mark, a quotation left open).
    For a title the dump gives; the text around it keeps its own marks."""
    if "..." in title:
        title = _THREE_DOTS.sub("\u2026", title)
    if " " in title:
        title = _SPACE_BEFORE_MARK.sub("", title)
    if '"' in title and title.count('"') % 2 == 0:
        curly = _STRAIGHT_QUOTATION.sub("\u201c\\1\u201d", title)
        if '"' not in curly:
            title = curly
    if title.endswith(".") and not title.endswith(".."):
        last = title[:-1].rsplit(" ", 1)[-1].rstrip(_CLOSING_MARKS)
        # An abbreviation's own stop stays ("A.B.C.", "TP.", "Inc.", an initial: "Văn A."),
        # however short or long; a word's goes ("phát nổ.", "2%.").
        initial = len(last) == 1 and last.isupper()
        if "." not in last and not initial and last.casefold() not in ABBREVIATIONS:
            title = title[:-1]
    return title


# --------------------------------------------------------------------------- typesetting

NBSP = "\u00a0"
# Units, currencies and number words that belong to the number before them: a line
# break between "21" and "km" leaves a bare number at a line's end and a unit opening
# the next. Vietnamese and English, as the dumps write them.
_UNITS = (
    "mm|cm|dm|km|m|m2|m²|m3|m³|km2|km²|ha|kg|g|tấn|tạ|yến|lít|ml|l|°C|°|%|kW|kWh|MW|"
    "MWh|GB|MB|km/h|USD|VND|đồng|đ|triệu|tỷ|tỉ|nghìn|ngàn|"
    "hectares?|tonnes?|tons?|metres?|meters?|kilometres?|kilometers?|percent|"
    "million|billion|thousand"
)
# The spaces that must not break, in one pass over the text (each rule a pass of its own
# was 4x slower: a pattern that opens with a lookbehind is tried at every character, one
# that opens with the space only at the spaces):
# - a digit, the space, a unit that is not the start of a longer word ("3 mưa" stays);
# - the space before a spaced hyphen or dash between words ("chính trị - xã hội",
#   "2020 \u2013 2025"), so no line opens with a dash that reads as a list bullet.
# A unit (or number word) opening a word: what may not be cut off the number before it.
_UNIT_WORD = rf"(?:{_UNITS})(?![^\W_])"
_UNIT = re.compile(_UNIT_WORD)
_BINDING_SPACE = re.compile(rf" (?:(?<=\d )(?={_UNIT_WORD})|(?=[-\u2013\u2014] )(?<=\S ))")


def typeset(text: str) -> str:
    """`text` for display: a no-break space binds a number to its unit ("21 km") and a
    spaced dash to the word before it. For reader-facing text in pages and the digest,
    after any shortening and never in a mail header (one_line makes it a space again)."""
    if " " not in text:
        return text
    return _BINDING_SPACE.sub(NBSP, text)


# What `typeset_utf8` looks for, without decoding: the spaces `_BINDING_SPACE` may bind
# follow a digit, or come before a spaced dash (whose last byte is followed by a space
# too). Marked as b"0 ": an ASCII digit, "-" and the last byte of "\u2013" and "\u2014"
# followed by a space; and \xe1 followed by a byte in 0x80-0xB7 but 0x93-0x94: a character
# of U+1000-U+1DFF, where scripts have digits of their own (as U+14C0-U+153F has not).
# Every other byte that may start a non-ASCII decimal digit (they all match "\d") is
# marked \xff. Vietnamese letters (U+00C0-U+01B0, U+1EA0-U+1EF9) and the punctuation of
# U+2000-U+2FFF are neither. A rule added to `_BINDING_SPACE` must be found here too
# (tests/test_text.py tries every digit).
_UTF8_MARKS = bytes(
    0x30
    if byte in b"0123456789-\x93\x94\xe1"
    else 0x20
    if 0x80 <= byte <= 0xB7
    else 0xFF
    if 0xD8 <= byte <= 0xE0 or byte >= 0xE3
    else byte
    for byte in range(256)
)


def typeset_utf8(text: bytes) -> bytes:
    """`typeset` on UTF-8 text (the page writer's bodies), byte for byte as on the str.

    Only the lines that may hold a binding space (`_UTF8_MARKS`) are decoded and typeset,
    each as the whole text would set it: no rule looks past a line break, which is neither
    a digit, nor a word character, nor a space's neighbour that binds. A text that may hold
    a non-ASCII digit is typeset whole. Decoding a whole body cost more than the matching,
    and the matching runs over the few lines that need it."""
    marked = text.translate(_UTF8_MARKS)
    if b"\xff" in marked:
        return _typeset_decoded(text)
    starts: list[int] = []  # the lines to typeset, by where they start
    at = marked.find(b"0 ")
    while at >= 0:
        if text[at] == 0xE1:  # a character of U+1000-U+1DFF
            return _typeset_decoded(text)
        starts.append(text.rfind(b"\n", 0, at) + 1)
        end = text.find(b"\n", at)
        at = -1 if end < 0 else marked.find(b"0 ", end)
    if not starts:
        return text
    parts: list[bytes] = []
    done = 0
    for start in starts:
        end = text.find(b"\n", start)
        end = len(text) if end < 0 else end
        parts += [text[done:start], _typeset_decoded(text[start:end])]
        done = end
    parts.append(text[done:])
    return b"".join(parts)


def _typeset_decoded(text: bytes) -> bytes:
    return typeset(text.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")


def trailing_ellipsis(text: str) -> str:
    """`text` with the dots that end it ("...", " ....") written as one "…": a sidebar
    teaser cut off with three dots or more, shown with "…" like every other cut.

    The site that cut it counted characters: words our own cuts never end on
    (CUT_STOP_WORDS: "tại các…", "tỉnh…", "(Lào) để…") and a number without its unit
    ("vào 2…") go from its end, as long as half of it stays, and a quotation it leaves
    open is closed after the "…".

    Not a regex: a search for spaces and dots at the end tries each of a long run of them
    (one dump line: megabytes) as the start, time quadratic in its length."""
    kept = text.rstrip(".")
    if len(text) - len(kept) < 3:
        kept = text.removesuffix("\u2026")
        if kept == text:
            return text
    kept = kept.rstrip()
    half = len(kept) // 2
    dropped = ""  # the word dropped last: the word before it must not need it ("diễn ra")
    before = kept  # the text before that drop
    for _ in range(_MAX_DROPPED):  # bounded: each step copies the text (a line: megabytes)
        head, _, last = kept.rpartition(" ")
        bare = _bare(last)
        previous = head.rpartition(" ")[2]
        splits = bool(dropped) and _splits_a_word(last, dropped)
        dangling = (
            # A capital "A", "In" is a name or a label ("Nguyễn Văn A"), no English word.
            (bare in CUT_STOP_WORDS and _dangles(previous, bare) and not _capital_function(last))
            # A number after a noun is whole ("năm 2024", "Quốc lộ 1"); after a function
            # word its unit was cut off ("vào 2…").
            or (
                bare[:1].isdigit()
                and _DANGLING_NUMBER.match(bare) is not None
                and _bare(previous) in FUNCTION_WORDS
            )
            or splits
        )
        if not head or not dangling or len(head.rstrip(_SHORTEN_STRIP)) < half:
            if splits:  # stopped inside a word ("diễn|ra"): the word stays whole
                kept = before
            break
        before, kept, dropped = kept, head.rstrip(_SHORTEN_STRIP), last
    return kept + "\u2026" + _open_quotes(kept)


def _capital_function(word: str) -> bool:
    """Is `word` a FUNCTION_WORDS word written with a capital ("A", "In"): a name there?"""
    return word[:1].isupper() and _bare(word) in FUNCTION_WORDS


# The most words a cut teaser loses ("thuộc huyện…" ends such runs in two or three).
_MAX_DROPPED = 6
# A number alone at the end of a cut teaser: its unit or noun was cut off ("vào 2…").
_DANGLING_NUMBER = re.compile(r"[\d.,/]+$")


def after_title(title: str, text: str) -> str:
    """`text` without the words of a title derived from it, when it opens with them.

    A title that is the whole first sentence takes that sentence away; a title cut short
    ("…") leaves the rest of the text, which then opens with "…". Empty when nothing is
    left; `text` itself when it does not open with the title.
    """
    # A cut inside a quotation closed it after the "…" (derive_title): not the text's. A
    # title the text opens with, marks and all, is its own words ('“Sẽ cố gắng…” Ông nói').
    stem = title.rstrip("".join(_QUOTE_CLOSERS))
    cut = stem.endswith("\u2026") and (stem == title or not text.startswith(title))
    opening = stem.removesuffix("\u2026") if cut else title
    if not opening or not text.startswith(opening):
        return text
    rest = text[len(opening) :]
    if cut:
        rest = rest.lstrip(" ,;:")
        return "\u2026" + rest if rest else ""
    if rest and not rest[0].isspace() and rest[0] not in ".!?\u2026":
        return text  # the title ends inside a word of the text: not the same words
    return rest.lstrip(".").strip()

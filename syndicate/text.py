"""Text helpers: NFC normalisation, invisible characters, header-safe strings, slugs. Pure."""

from __future__ import annotations

import itertools
import re
import unicodedata

# Characters that render as nothing or as a plain space in the dumps we get.
_TO_SPACE = dict.fromkeys(
    map(
        ord,
        "\u00a0\u2007\u202f\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2008\u2009\u200a"
        "\u205f\u3000\t\v\f",
    ),
    " ",
)
# U+FFFE/U+FFFF are valid UTF-8 but not XML characters: a feed writer would refuse them.
_DELETE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad\ufffe\uffff"), None)
_CLEAN_TABLE = {**_TO_SPACE, **_DELETE}
_SPACES = re.compile(r" {2,}")
# C0/C1 controls other than \n (line breaks are split on before cleaning).
_CONTROLS = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def nfc(text: str) -> str:
    """Return `text` in Unicode NFC."""
    return unicodedata.normalize("NFC", text)


# The same mapping as _CLEAN_TABLE, as regexes: one C-level scan each, even on long texts.
_DELETE_RE = re.compile("[\u200b\u200c\u200d\u2060\ufeff\u00ad\ufffe\uffff\ud800-\udfff]")
_TO_SPACE_RE = re.compile(
    "[\u00a0\u2000-\u200a\u202f\u205f\u3000\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]"
)

_SPECIAL_RE = re.compile(f"{_DELETE_RE.pattern[:-1]}{_TO_SPACE_RE.pattern[1:]}")


def clean_text(text: str) -> str:
    """Clean a whole text, keeping its line breaks: NFC, invisible characters deleted.

    Odd spaces and control characters other than "\\n" become plain spaces; runs of spaces
    are left for the caller to collapse.
    """
    if _SPECIAL_RE.search(text):  # most texts have none: one scan instead of two rewrites
        text = _TO_SPACE_RE.sub(" ", _DELETE_RE.sub("", text))
    return nfc(text)


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
    text = _SPACES.sub(" ", text.translate(_CLEAN_TABLE)).strip()
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


def detect_language(text: str) -> str:
    """Return "vi" when `text` reads as Vietnamese, else "en".

    Counts common function words of each language, then the share of words carrying
    Vietnamese letters as a tie-break: an English text with a few Vietnamese names stays "en".
    """
    raw = text.lower().split()[:600]
    words = [w for w in map(str.strip, raw, itertools.repeat(_WORD_PUNCTUATION)) if w]
    if not words:
        return "vi"
    vi = sum(map(_VI_WORDS.__contains__, words))
    en = sum(map(_EN_WORDS.__contains__, words))
    if vi != en:
        return "vi" if vi > en else "en"
    marked = sum(1 for w in words if not VIETNAMESE_LETTERS.isdisjoint(w))
    return "vi" if marked * 3 >= len(words) else "en"


# Tokens ending in "." that do not end a sentence: titles and abbreviations seen in Vietnamese
# news ("TP. Đông Hà", "TS.", "ThS.", "PGS.") and in English news ("Mr.", "Dr.").
ABBREVIATIONS = frozenset(
    "tp tx tt q p h x ts ths th.s pgs pgs.ts gs gs.ts bs bsck ks ls nxb mr mrs ms dr prof no "
    "vs etc e.g i.e jr sr st mt gen col lt inc ltd co corp jan feb mar apr jun jul aug sep "
    "sept oct nov dec".split()
)
_SENTENCE_END = re.compile("[.!?\u2026]+[\"'\u201d\u2019\u00bb)\\]]*(?=\\s|$)")
# Initials such as "T.P", "N.V", "Th.S" (dotted parts of one or two letters) or one capital
# letter ("H."). A two-letter word such as "Hà." does end a sentence.
_INITIALS = re.compile(r"^(?:[^\W\d_]{1,2}\.)+[^\W\d_]{1,2}$|^[^\W\d_]$")
_OPENERS = "\"'\u201c\u2018\u00ab(["


def first_sentence(text: str) -> str:
    """Return the first sentence of `text`, knowing abbreviations (TP., TS.) and initials (T.P)."""
    for match in _SENTENCE_END.finditer(text):
        marks = match.group().rstrip("\"'\u201d\u2019\u00bb)]")
        if marks == ".":
            token = text[text.rfind(" ", 0, match.start()) + 1 : match.start()].lstrip(_OPENERS)
            if token.lower() in ABBREVIATIONS:
                continue
            if _INITIALS.match(token) and token[0].isupper():
                continue
        rest = text[match.end() :].lstrip()
        if rest and not (rest[0].isupper() or rest[0].isdigit() or rest[0] in _OPENERS):
            continue
        return text[: match.end()].strip()
    return text.strip()


def shorten(text: str, *, limit: int = 100) -> str:
    """Cut `text` at a word boundary to at most `limit` characters, ending in "…" when cut."""
    text = collapse_spaces(text)
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    if text[limit - 1] != " " and " " in cut:
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip(" ,;:-\u2013\u2014(\u201c\u2018\"'") + "…"


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
    key = _TRAILING_ELLIPSIS.sub("", key)
    return key[:STORY_KEY_CHARS].rstrip()

"""Text helpers: NFC normalisation, invisible characters, header-safe strings, slugs. Pure."""

from __future__ import annotations

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
_DELETE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"), None)
_CLEAN_TABLE = {**_TO_SPACE, **_DELETE}
_SPACES = re.compile(r" {2,}")
# C0/C1 controls other than \n (line breaks are split on before cleaning).
_CONTROLS = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def nfc(text: str) -> str:
    """Return `text` in Unicode NFC."""
    return unicodedata.normalize("NFC", text)


def clean_line(line: str) -> str:
    """Normalise one line: NFC, invisible characters removed, spaces collapsed, trimmed."""
    line = line.translate(_CLEAN_TABLE)
    line = _CONTROLS.sub(" ", line)
    line = _SPACES.sub(" ", line)
    return nfc(line.strip())


def header_safe(text: str, *, limit: int = 900) -> str:
    """Make article text safe for one email header: one line, no controls, NFC, bounded."""
    text = _CONTROLS.sub(" ", text.replace("\r", " ").replace("\n", " "))
    text = _SPACES.sub(" ", text.translate(_CLEAN_TABLE)).strip()
    text = nfc(text)
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text


_SLUG_DROP = re.compile(r"[^a-z0-9]+")


def slugify(text: str, *, max_length: int = 80) -> str:
    """ASCII slug for URLs: `Đông Hà` -> `dong-ha`. Empty when nothing is left."""
    # đ/Đ have no Unicode decomposition, so NFD alone would drop them.
    text = text.replace("đ", "d").replace("Đ", "D")
    decomposed = unicodedata.normalize("NFKD", text)
    ascii_only = "".join(c for c in decomposed if not unicodedata.combining(c))
    slug = _SLUG_DROP.sub("-", ascii_only.lower()).strip("-")
    if len(slug) > max_length:
        slug = (
            slug[:max_length].rsplit("-", 1)[0] if "-" in slug[:max_length] else slug[:max_length]
        )
    return slug.strip("-")

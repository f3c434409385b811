"""Load: dump bytes to text (BOM, else UTF-8, else Windows-1258). Pure.

Binary files and the legacy VNI and TCVN3 encodings are rejected, not guessed at.
"""

from __future__ import annotations

import codecs
import re
from typing import NamedTuple

from syndicate.errors import DumpError

_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
# Control characters other than \t \n \v \f \r: text has a few at most, binary has many.
_CONTROL_SET = bytes([*range(0x00, 0x09), *range(0x0E, 0x20), 0x7F])
_HIGH = bytes(range(0x80, 0x100))
# UTF-8 continuation bytes: every multi-byte UTF-8 character holds at least one.
_CONTINUATION = bytes(range(0x80, 0xC0))
# Bytes that never occur in UTF-8: each is one invalid sequence of its own.
_NEVER_UTF8 = bytes([0xC0, 0xC1, *range(0xF5, 0x100)])
# cp1258 bytes 0xA1-0xBF are symbols (¡ ¢ £ ... ¿); TCVN3 puts Vietnamese letters there,
# between ASCII letters: "ViÖt", "®­îc", "Qu¶ng".
_TCVN3_RANGE = bytes(range(0xA1, 0xC0))
_TCVN3_LETTERS = re.compile(rb"[A-Za-z][\xa1-\xbf]|[\xa1-\xbf][A-Za-z]")
# VNI writes tones as bytes that cp1258 reads as letters Vietnamese never uses: ø ù û ï ä å
# ö ü and Ñ/ñ (VNI's Đ/đ): "Haø", "Quaûng", "Vieät", "Ñoâng".
_VNI_BYTES = "øùûïäåöüÑñÄÅÖÜØÙÛÏ".encode("cp1258")
# What text.clean_text deletes or replaces (text._SPECIAL_RE), line breaks aside, is either a
# control counted in _CONTROL_SET, or "\t", "\v", "\f", or a character whose encoding holds
# one of these bytes: in UTF-8 the lead byte of U+0080-U+00BF, U+0600-U+063F (the Arabic
# letter mark), U+2000-U+2FFF, U+3000-U+3FFF, a surrogate (UTF-16 text encoded with
# "surrogatepass"), U+F000-U+FFFF and U+C0000-U+FFFFF (the tag characters); in Windows-1258
# the no-break space and the soft hyphen. tests/test_load.py checks every code point.
_SCREEN_UTF8 = b"\t\v\f\xc2\xd8\xe2\xe3\xed\xef\xf3"
_SCREEN_CP1258 = b"\t\v\f\xa0\xad"


class DecodedDump(NamedTuple):
    """A dump's text, and whether it is plain: none of its characters is one text.clean_text
    deletes or replaces, line breaks ("\r", "\n") aside. Most are; NFC is then all the text
    needs, and its bytes tell it with a few byte searches, where a scan of the text (even
    str.isprintable) costs twenty times as much."""

    text: str
    plain: bool


def decode_dump(data: bytes, *, source: str) -> str:
    """Decode dump bytes to text: BOM, else strict UTF-8, else Windows-1258. Never latin-1.

    DumpError for empty, binary and undecodable input, and for the legacy VNI and TCVN3
    encodings (reported as unsupported rather than read as garbage).
    """
    return decode_dump_screened(data, source=source).text


def decode_dump_screened(data: bytes, *, source: str) -> DecodedDump:
    """`decode_dump`, and whether the text is plain (see DecodedDump)."""
    if not data.strip():
        raise DumpError(
            source,
            "is empty." if not data else "holds only blank space.",
            hint="Remove it, or fill it with an article.",
        )
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                text = data[len(bom) :].decode(encoding)
            except UnicodeDecodeError as exc:
                raise DumpError(
                    source,
                    f"starts with a {encoding.upper()} byte-order mark but byte "
                    f"{exc.start + len(bom)} is not valid {encoding.upper()}.",
                    hint="Save it again as UTF-8.",
                ) from exc
            plain = _check_text(text, source, data[len(bom) :] if encoding == "utf-8" else None)
            return DecodedDump(text, plain)
    if b"\x00" in data:
        raise DumpError(
            source,
            "looks like a binary file (it holds NUL bytes), not a text dump.",
            hint="Remove it from the dump folder; UTF-16 text needs a byte-order mark.",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.end == len(data) and exc.reason == "unexpected end of data":
            # A scrape cut off inside the last character: keep what is whole.
            text = data[: exc.start].decode("utf-8")
            return DecodedDump(text, _check_text(text, source, data[: exc.start]))
        continuation = _count(data, _CONTINUATION)
        _check_broken_utf8(data, exc, source, continuation)
        not_utf8 = exc.start
    else:
        return DecodedDump(text, _check_text(text, source, data))
    # (cp1258 maps these controls to themselves: this is _check_text for its text.)
    controls = _count(data, _CONTROL_SET)
    if controls > max(2, len(data) // 100):
        raise DumpError(
            source,
            "looks like a binary file (many control bytes), not a text dump.",
            hint="Remove it from the dump folder.",
        )
    try:
        text = data.decode("cp1258")
    except UnicodeDecodeError as exc:
        # Where UTF-8 failed too, when elsewhere: cp1258's byte may sit in a whole UTF-8
        # character, and the bytes to fix are UTF-8's.
        utf8 = (
            "" if not_utf8 == exc.start else f" (byte 0x{data[not_utf8]:02X} at offset {not_utf8})"
        )
        raise DumpError(
            source,
            f"is neither UTF-8{utf8} nor Windows-1258 text (byte 0x{data[exc.start]:02X} "
            f"at offset {exc.start}).",
            hint="Save it again as UTF-8.",
        ) from exc
    legacy = _legacy_encoding(data, continuation)
    if legacy:
        raise DumpError(
            source,
            f"looks like Vietnamese in the legacy {legacy} encoding, "
            "which syndicate does not read.",
            hint="Convert it to UTF-8 (for example with UniKey's converter) and try again.",
        )
    return DecodedDump(text, not controls and _none_of(data, _SCREEN_CP1258))


def _none_of(data: bytes, byte_set: bytes) -> bool:
    """Whether `data` holds none of the bytes in `byte_set` (a few: one memchr each)."""
    return not any(map(data.__contains__, byte_set))


def _count(data: bytes, byte_set: bytes) -> int:
    """How many bytes of `data` are in `byte_set`.

    A set of a few dozen bytes is looked for first, one memchr a byte: text seldom holds any
    of the bytes counted here, and those searches cost a third of the copy that counts them.
    """
    if len(byte_set) <= 32 and _none_of(data, byte_set):
        return 0
    return len(data) - len(data.translate(None, byte_set))


def _check_broken_utf8(
    data: bytes, exc: UnicodeDecodeError, source: str, continuation: int
) -> None:
    """Reject UTF-8 with a few bad bytes, which cp1258 would silently turn into mojibake.

    `continuation` is the number of continuation bytes (0x80-0xBF) in `data`.
    """
    # The good characters are at most the continuation bytes (each has one or more) and
    # the bad ones at least the bytes UTF-8 never uses: most cp1258 text, which has few
    # bytes in 0x80-0xBF, is cleared by these counts without decoding it a second time.
    if continuation < 3 or continuation < 4 * _count(data, _NEVER_UTF8):
        return
    replaced = data.decode("utf-8", "replace")
    bad = replaced.count("\ufffd")
    good = len(replaced) - len(replaced.encode("ascii", "ignore")) - bad
    if good >= 3 and good >= 4 * bad:
        raise DumpError(
            source,
            f"is UTF-8 with {bad} invalid byte sequence{'s' if bad > 1 else ''} "
            f"(the first is byte 0x{data[exc.start]:02X} at offset {exc.start}).",
            hint="Fix or export the file again as UTF-8.",
        ) from exc


def _check_text(text: str, source: str, encoded: bytes | None = None) -> bool:
    """Reject text with many control characters; return whether it is plain (DecodedDump).

    `encoded` is `text` as UTF-8 when the caller has it: it keeps these controls as the
    same single bytes, and counting bytes is several times faster than a regex over the text.
    """
    if encoded is None:
        encoded = text.encode("utf-8", "surrogatepass")
    controls = _count(encoded, _CONTROL_SET)
    if controls > max(2, len(text) // 100):
        raise DumpError(
            source,
            "looks like a binary file (many control characters), not a text dump.",
            hint="Remove it from the dump folder.",
        )
    return not controls and _none_of(encoded, _SCREEN_UTF8)


def _legacy_encoding(data: bytes, continuation: int) -> str | None:
    """Name the legacy encoding `data` seems to be in ("VNI", "TCVN3"), or None for cp1258.

    `continuation` is the number of bytes 0x80-0xBF in `data` (the TCVN3 range is within).
    """
    high = -1  # counted when first needed
    if continuation >= 3 and _count(data, _TCVN3_RANGE) >= 3:
        tcvn = len(_TCVN3_LETTERS.findall(data))
        high = _count(data, _HIGH)
        if tcvn >= 3 and tcvn * 4 >= high:
            return "TCVN3"
    foreign = _count(data, _VNI_BYTES)
    if foreign >= 3:
        if high < 0:
            high = _count(data, _HIGH)
        if foreign * 4 >= high:
            return "VNI"
    return None

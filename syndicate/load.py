"""Load stage: article dump files in, `Article` values out.

`parse_dump` and `decode_dump` are pure; `find_dumps`, `read_dump` and `read_dumps` are the
edge that touches the file system. The format is described in FORMAT.md and the README.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo

from syndicate.errors import DumpError, InputError
from syndicate.model import Article, Block, BlockKind, Precision, Teaser
from syndicate.text import (
    clean_text,
    detect_language,
    first_sentence,
    shorten,
    slugify,
)

# Bump whenever parse output can change for the same bytes: the build cache keys on it.
PARSER_VERSION = 2

TITLE_LIMIT = 100  # characters of a title derived from the lead
LEAD_DATE_WITHIN = 60  # a lead's "Sáng nay 31/10" must start within this many characters
_HINT = "Fix the dump or move it out of seeds/."
_MIN_YEAR, _MAX_YEAR = 1900, 2200

# --------------------------------------------------------------------------- files


def find_dumps(paths: Sequence[Path]) -> Iterator[Path]:
    """Yield the dump files named by `paths`, in a stable order.

    A file is taken as it is, whatever its name; a folder gives every `*.txt` below it,
    recursively, sorted by path. Every path is checked before the first one is yielded:
    a path that does not exist raises InputError.
    """
    for path in paths:
        if not path.exists():
            raise InputError(
                f"{path}: no such file or folder.",
                hint="Give existing dump files or folders (the default is paths.seeds).",
            )
    for path in paths:
        if path.is_dir():
            # A broken link is yielded too, so that it is reported rather than passed over.
            yield from sorted(p for p in path.rglob("*.txt") if p.is_file() or p.is_symlink())
        else:
            yield path


def display_path(path: Path | str) -> str:
    """A path as text that is safe to print and store on one line.

    Bytes that are not UTF-8, line breaks and other control characters show as U+FFFD,
    so a file name cannot split or forge a warning line.
    """
    text = str(path).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else "\ufffd" for c in text)


def check_name(path: Path, *, source: str | None = None) -> None:
    """Raise DumpError when the file name is not valid UTF-8 (it could not be stored or shown)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise DumpError(
            display_path(source or path),
            "the file name is not valid UTF-8.",
            hint="Rename the file (for example with convmv -f cp1258 -t utf-8).",
        ) from None


def read_dump(path: Path, *, max_bytes: int, source: str | None = None) -> bytes:
    """Return the bytes of one dump; DumpError when it is too large or cannot be read.

    `source` names the file in messages (default: the path). Only regular files are
    read: a FIFO or device would block or never end.
    """
    where = display_path(source or path)
    check_name(path, source=source)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it changes nothing for files.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except IsADirectoryError:
        raise DumpError(where, "is a folder, not a dump file.") from None
    except OSError as exc:
        raise DumpError(
            where,
            f"cannot be read: {exc.strerror or exc}.",
            hint="Check that the file exists and is readable.",
        ) from exc
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise DumpError(where, "is a folder, not a dump file.")
        raise DumpError(
            where,
            "is not a regular file (a FIFO, socket or device).",
            hint="Give dump files only.",
        )
    with os.fdopen(fd, "rb") as handle:
        try:
            data = handle.read(max_bytes + 1)
        except OSError as exc:
            raise DumpError(
                where,
                f"cannot be read: {exc.strerror or exc}.",
                hint="Check that the file exists and is readable.",
            ) from exc
    if len(data) > max_bytes:
        raise DumpError(
            where,
            f"is larger than the limit of {_size(max_bytes)}.",
            hint="Raise load.max_bytes in the config if the file is a real article.",
        )
    return data


def read_dumps(
    paths: Sequence[Path], *, max_bytes: int, tz: ZoneInfo
) -> Iterator[tuple[Path, Article | DumpError]]:
    """Yield (path, article) or (path, DumpError) for every dump, lazily, one file at a time.

    Never raises DumpError (it is yielded, so the caller can count and go on); InputError
    for a path that does not exist.
    """
    for path in find_dumps(paths):
        try:
            data = read_dump(path, max_bytes=max_bytes)
            yield path, parse_dump(data, source=display_path(path), tz=tz)
        except DumpError as exc:
            yield path, exc


def _size(count: int) -> str:
    """Say a byte count for people: "10 MiB (10485760 bytes)", "100 bytes"."""
    if count >= 1024 * 1024:
        return f"{count / (1024 * 1024):.3g} MiB ({count} bytes)"
    if count >= 1024:
        return f"{count / 1024:.3g} KiB ({count} bytes)"
    return f"{count} bytes"


# --------------------------------------------------------------------------- decoding

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
# cp1258 bytes 0xA1-0xBF are symbols (¡ ¢ £ ... ¿); TCVN3 puts Vietnamese letters there,
# between ASCII letters: "ViÖt", "®­îc", "Qu¶ng".
_TCVN3_RANGE = bytes(range(0xA1, 0xC0))
_TCVN3_LETTERS = re.compile(rb"[A-Za-z][\xa1-\xbf]|[\xa1-\xbf][A-Za-z]")
# VNI writes tones as bytes that cp1258 reads as letters Vietnamese never uses: ø ù û ï ä å
# ö ü and Ñ/ñ (VNI's Đ/đ): "Haø", "Quaûng", "Vieät", "Ñoâng".
_VNI_BYTES = "øùûïäåöüÑñÄÅÖÜØÙÛÏ".encode("cp1258")


def decode_dump(data: bytes, *, source: str) -> str:
    """Decode dump bytes to text: BOM, else strict UTF-8, else Windows-1258. Never latin-1.

    DumpError for empty, binary and undecodable input, and for the legacy VNI and TCVN3
    encodings (reported as unsupported rather than read as garbage).
    """
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
            _check_text(text, source, data[len(bom) :] if encoding == "utf-8" else None)
            return text
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
            _check_text(text, source, data[: exc.start])
            return text
        _check_broken_utf8(data, exc, source)
    else:
        _check_text(text, source, data)
        return text
    if len(data) - len(data.translate(None, _CONTROL_SET)) > max(2, len(data) // 100):
        raise DumpError(
            source,
            "looks like a binary file (many control bytes), not a text dump.",
            hint="Remove it from the dump folder.",
        )
    try:
        text = data.decode("cp1258")
    except UnicodeDecodeError as exc:
        raise DumpError(
            source,
            f"is neither UTF-8 nor Windows-1258 text (byte 0x{data[exc.start]:02X} "
            f"at offset {exc.start}).",
            hint="Save it again as UTF-8.",
        ) from exc
    legacy = _legacy_encoding(data)
    if legacy:
        raise DumpError(
            source,
            f"looks like Vietnamese in the legacy {legacy} encoding, "
            "which syndicate does not read.",
            hint="Convert it to UTF-8 (for example with UniKey's converter) and try again.",
        )
    _check_text(text, source, data)  # cp1258 maps these controls to themselves
    return text


def _check_broken_utf8(data: bytes, exc: UnicodeDecodeError, source: str) -> None:
    """Reject UTF-8 with a few bad bytes, which cp1258 would silently turn into mojibake."""
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


def _check_text(text: str, source: str, encoded: bytes | None = None) -> None:
    """Reject text with many control characters. `encoded` is `text` as UTF-8 or cp1258
    bytes when the caller has them: both keep these controls as the same single bytes,
    and counting bytes is several times faster than a regex over the text."""
    if encoded is None:
        encoded = text.encode("utf-8", "surrogatepass")
    controls = len(encoded) - len(encoded.translate(None, _CONTROL_SET))
    if controls > max(2, len(text) // 100):
        raise DumpError(
            source,
            "looks like a binary file (many control characters), not a text dump.",
            hint="Remove it from the dump folder.",
        )


def _legacy_encoding(data: bytes) -> str | None:
    """Name the legacy encoding `data` seems to be in ("VNI", "TCVN3"), or None for cp1258."""
    high = len(data) - len(data.translate(None, _HIGH))
    if len(data) - len(data.translate(None, _TCVN3_RANGE)) >= 3:
        tcvn = len(_TCVN3_LETTERS.findall(data))
        if tcvn >= 3 and tcvn * 4 >= high:
            return "TCVN3"
    foreign = len(data) - len(data.translate(None, _VNI_BYTES))
    if foreign >= 3 and foreign * 4 >= high:
        return "VNI"
    return None


# --------------------------------------------------------------------------- lines

_SPACES = re.compile(" {2,}")
_PLACEHOLDER = re.compile(r"^\{\s*[A-Za-z_]+\s*\}$")
# A dateline: a short agency tag ("QTO", "VOV.VN", "VTV.vn", "(Dân trí)", "(PLO)"), then a
# hyphen, en dash or em dash, then the text. Spaces are already normalised (NBSP -> " ").
_DATELINE = re.compile(
    r"^(?P<tag>\([^()]{2,24}\)|[A-ZĐ]{2,}[A-Za-zĐ0-9]*(?:\.[A-Za-z]{2,4})?)"
    r" ?[-\u2013\u2014] +(?P<text>\S.*)$"
)
# Photo credits make a line a caption when they end it, after " - " (or an en or em dash),
# ". " or "(", or when they stand alone on the line.
_CREDIT = (
    r"(?:ảnh|photo|photos)\s*:\s*[^\s:][^:]{0,48}"
    r"|ảnh\s+minh\s+(?:họa|hoạ)(?:\s*[:(][^:]{0,48})?"
    r"|(?:ảnh|photo)\s+(?:tư\s+liệu|internet|file)"
)
_CAPTION = re.compile(
    rf"(?:^|\s[-\u2013\u2014]\s+|\.\s+|\(\s*)(?P<credit>{_CREDIT})\)?\s*$", re.IGNORECASE
)


def _split_lines(text: str) -> list[str]:
    """NFC, cleaned, whitespace-collapsed physical lines.

    Only "\\n" splits (after "\\r\\n" and "\\r" become "\\n"): str.splitlines() would also
    split on form feeds, U+0085 and U+2028, which are spaces inside a line here.
    """
    text = clean_text(text.replace("\r\n", "\n").replace("\r", "\n"))
    return [
        _SPACES.sub(" ", line).strip() if "  " in line else line.strip()
        for line in text.split("\n")
    ]


def _is_unfilled(value: str) -> bool:
    return not value or bool(_PLACEHOLDER.match(value))


def _split_dateline(text: str) -> tuple[str | None, str]:
    match = _DATELINE.match(text)
    if not match:
        return None, text
    return match.group("tag"), match.group("text")


def _is_caption(text: str) -> bool:
    tail = text[-90:].lower()
    if "ảnh" not in tail and "photo" not in tail:
        return False
    match = _CAPTION.search(text)
    if not match:
        return False
    credit = match.group("credit")
    # A credit is a name or two, not a sentence: "ảnh: đây là..." mid-sentence is prose.
    words = credit.split(":", 1)[-1].split()
    if len(words) > 8 or credit.rstrip(")").endswith(("!", "?", "…", "...")):
        return False
    return not (match.start() == 0 and len(text) > 60)


def _is_byline(text: str) -> bool:
    if len(text) > 50 or _is_caption(text) or _DATELINE.match(text):
        return False
    if text[-1] in ".!?:;,…" and not re.search(r"\b[A-ZĐ]\.$", text):
        return False
    body = re.sub(r"\s*\([^()]{1,30}\)$", "", text)  # "Thu Hà (tổng hợp)"
    prefixed = re.match(r"^(?:Theo|By)\s+(?P<rest>.+)$", body)
    if prefixed:
        body = prefixed.group("rest")
    words = [w for w in re.split(r"[\s,&/]+|\s[-\u2013]\s", body) if any(c.isalpha() for c in w)]
    if not 1 <= len(words) <= 6:
        return False
    if prefixed:
        return words[0][0].isupper() or words[0][0].isdigit()
    joiners = {"và", "and", "-"}
    return all(w[0].isupper() or w.lower() in joiners for w in words) and any(
        w[0].isupper() for w in words
    )


def _author(text: str) -> str:
    match = re.match(r"^(?:Theo|By)\s+(?P<rest>.+)$", text)
    return match.group("rest") if match else text


# --------------------------------------------------------------------------- dates

_OFFSET = re.compile(
    r"\(?\s*(?:GMT|UTC)\s*(?:(?P<sign>[+-])\s*(?P<h>[0-9]{1,2})(?::?(?P<m>[0-9]{2}))?)?\s*\)?",
    re.IGNORECASE,
)
_ISO = re.compile(
    r"(?P<y>[0-9]{4})-(?P<mo>[0-9]{2})-(?P<d>[0-9]{2})"
    r"(?:[T ](?P<H>[0-9]{2}):(?P<M>[0-9]{2})(?::(?P<S>[0-9]{2})(?:[.,][0-9]+)?)?"
    r"\s*(?P<tz>Z|[+-][0-9]{2}:?[0-9]{2})?)?(?![0-9])",
    re.IGNORECASE,
)
_DMY = re.compile(
    r"(?P<d>[0-9]{1,2})(?P<sep>[/.-])(?P<mo>[0-9]{1,2})(?P=sep)(?P<y>[0-9]{4})(?![0-9])"
)
_VI_LONG = re.compile(
    r"(?P<d>[0-9]{1,2})\s+tháng\s+(?P<mo>[0-9]{1,2})(?:\s*(?:năm|,)\s*|\s+)"
    r"(?P<y>[0-9]{4})",
    re.IGNORECASE,
)
_MONTHS = {
    name: number
    for number, names in enumerate(
        (
            ("january", "jan"),
            ("february", "feb"),
            ("march", "mar"),
            ("april", "apr"),
            ("may",),
            ("june", "jun"),
            ("july", "jul"),
            ("august", "aug"),
            ("september", "sep", "sept"),
            ("october", "oct"),
            ("november", "nov"),
            ("december", "dec"),
        ),
        start=1,
    )
    for name in names
}
_MONTH_NAME = "|".join(sorted(_MONTHS, key=len, reverse=True))
_EN_MDY = re.compile(
    rf"\b(?P<mon>{_MONTH_NAME})\.?\s+(?P<d>[0-9]{{1,2}})(?:st|nd|rd|th)?,?\s+(?P<y>[0-9]{{4}})\b",
    re.IGNORECASE,
)
_EN_DMY = re.compile(
    rf"\b(?P<d>[0-9]{{1,2}})(?:st|nd|rd|th)?\s+(?P<mon>{_MONTH_NAME})\.?,?\s+(?P<y>[0-9]{{4}})\b",
    re.IGNORECASE,
)
_TIME = re.compile(
    r"(?<![0-9:])(?P<H>[0-9]{1,2})\s*[:hH]\s*(?P<M>[0-9]{2})(?::(?P<S>[0-9]{2}))?(?![0-9])"
    r"(?:\s*(?P<ampm>am|pm|a\.m\.|p\.m\.|sa|ch)\b)?",
    re.IGNORECASE,
)
_WEEKDAY = re.compile(
    r"\b(?:thứ\s+(?:hai|ba|tư|năm|sáu|bảy|2|3|4|5|6|7)|chủ\s+nhật|cn|monday|tuesday|wednesday"
    r"|thursday|friday|saturday|sunday|mon|tue|tues|wed|thu|thur|thurs|fri|sat|sun)\b\.?",
    re.IGNORECASE,
)
# A day/month in the lead after a time word: "Sáng nay 31/10", "Hôm qua 15-11", "Ngày 27.10",
# optionally with a year ("Ngày 27/10/2024").
_LEAD_DATE = re.compile(
    r"(?:^|[\s,(])(?P<when>(?:sáng|trưa|chiều|tối|đêm|khuya|rạng\s+sáng|hôm|ngày)"
    r"(?:\s+(?P<rel>nay|qua|mai|hôm\s+qua|hôm\s+nay))?)\s*(?:\(|,)?\s*(?:ngày\s+)?"
    r"(?P<d>[0-9]{1,2})(?P<sep>[/.-])(?P<mo>[0-9]{1,2})(?:(?P=sep)(?P<y>[0-9]{4}))?(?![0-9])",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class _When:
    published: datetime | None
    precision: Precision


_UNKNOWN = _When(None, Precision.UNKNOWN)


def _bad_date(source: str, line: int, value: str, what: str) -> DumpError:
    return DumpError(source, f"publish time {value!r} {what}.", line=line, hint=_HINT)


def _make_date(y: int, mo: int, d: int) -> date | None:
    if not _MIN_YEAR <= y <= _MAX_YEAR:
        return None
    try:
        return date(y, mo, d)
    except ValueError:
        return None


def _attach(local: datetime, offset: timedelta | None, tz: ZoneInfo) -> datetime:
    """Make a wall-clock time aware: the site zone, or the offset the line states."""
    zoned = local.replace(tzinfo=tz)
    if offset is None or zoned.utcoffset() == offset:
        return zoned
    fixed: tzinfo = timezone(offset)
    return local.replace(tzinfo=fixed)


def _parse_publish(value: str, *, source: str, line: int, tz: ZoneInfo) -> _When:
    """Parse a filled publish line; DumpError when it holds no date or an impossible one."""
    text = _WEEKDAY.sub(" ", value)
    offset: timedelta | None = None
    iso = _search_date(_ISO, text)
    if iso and iso.group("tz"):
        raw = iso.group("tz").upper()
        if raw == "Z":
            offset = timedelta(0)
        else:
            sign = -1 if raw[0] == "-" else 1
            digits = raw[1:].replace(":", "")
            offset = sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
        text = text[: iso.start("tz")] + text[iso.end("tz") :]
    else:
        gmt = _OFFSET.search(text)
        if gmt:
            if gmt.group("h"):
                sign = -1 if gmt.group("sign") == "-" else 1
                offset = sign * timedelta(
                    hours=int(gmt.group("h")), minutes=int(gmt.group("m") or 0)
                )
            else:
                offset = timedelta(0)
            text = text[: gmt.start()] + " " + text[gmt.end() :]
    if offset is not None and abs(offset) > timedelta(hours=14):
        raise _bad_date(source, line, value, "has an impossible UTC offset")
    ymd: tuple[int, int, int] | None = None
    iso = _search_date(_ISO, text)
    clock: tuple[int, int, int] | None = None
    if iso:
        ymd = (int(iso.group("y")), int(iso.group("mo")), int(iso.group("d")))
        if iso.group("H"):
            clock = (int(iso.group("H")), int(iso.group("M")), int(iso.group("S") or 0))
        text = text[: iso.start()] + " " + text[iso.end() :]
    else:
        for pattern in (_DMY, _VI_LONG):
            found = _search_date(pattern, text)
            if found:
                ymd = (int(found.group("y")), int(found.group("mo")), int(found.group("d")))
                text = text[: found.start()] + " " + text[found.end() :]
                break
        else:
            for pattern in (_EN_MDY, _EN_DMY):
                found = pattern.search(text)
                if found:
                    month = _MONTHS[found.group("mon").lower()]
                    ymd = (int(found.group("y")), month, int(found.group("d")))
                    text = text[: found.start()] + " " + text[found.end() :]
                    break
    if ymd is None:
        raise _bad_date(
            source,
            line,
            value,
            "holds no date syndicate understands (for example '31/10/2024 09:15')",
        )
    day = _make_date(*ymd)
    if day is None:
        raise _bad_date(source, line, value, "is not a real date")
    if clock is None:
        found = _TIME.search(text)
        if found:
            hour = int(found.group("H"))
            ampm = (found.group("ampm") or "").lower().replace(".", "")
            if ampm and not 1 <= hour <= 12:
                raise _bad_date(source, line, value, "is not a real time of day")
            if ampm in ("pm", "ch") and hour != 12:
                hour += 12
            elif ampm in ("am", "sa") and hour == 12:
                hour = 0
            clock = (hour, int(found.group("M")), int(found.group("S") or 0))
    if clock is None:
        return _When(_attach(datetime.combine(day, time()), offset, tz), Precision.DATE)
    try:
        moment = time(*clock)
    except ValueError:
        raise _bad_date(source, line, value, "is not a real time of day") from None
    return _When(_attach(datetime.combine(day, moment), offset, tz), Precision.DATETIME)


def _starts_token(text: str, index: int) -> bool:
    """True when a date match at `index` is not the tail of a longer number ("1/31/10/2024")."""
    return index == 0 or text[index - 1] not in "0123456789/.-"


def _search_date(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    for found in pattern.finditer(text):
        if _starts_token(text, found.start()):
            return found
    return None


def _full_dates(text: str) -> Iterator[date]:
    """Yield every complete, real date written in `text` (d/m/yyyy, ISO, "ngày d tháng m năm y")."""
    patterns = [_DMY, _ISO]
    if "tháng" in text.lower():
        patterns.append(_VI_LONG)
    for pattern in patterns:
        for found in pattern.finditer(text):
            if not _starts_token(text, found.start()):
                continue
            day = _make_date(int(found.group("y")), int(found.group("mo")), int(found.group("d")))
            if day is not None:
                yield day


def _infer_year(month: int, day: int, references: Sequence[date]) -> date | None:
    """The date with this day/month nearest to the references (median distance), or None."""
    if not references:
        return None
    best: tuple[int, int, date] | None = None
    years = sorted({ref.year + delta for ref in references for delta in (-1, 0, 1)})
    for year in years:
        candidate = _make_date(year, month, day)
        if candidate is None:
            continue
        distances = sorted(abs((candidate - ref).days) for ref in references)
        score = (distances[len(distances) // 2], distances[0], candidate)
        if best is None or score[:2] < best[:2]:
            best = score
    return best[2] if best else None


def _lead_date(lead: str, references: Sequence[date], tz: ZoneInfo) -> _When:
    """The article's date from the opening of its lead: "Sáng nay 31/10", "Hôm qua 15-11"."""
    opening = first_sentence(lead)[:160]
    found = _LEAD_DATE.search(opening)
    # The article's own date opens the lead ("Sáng nay 31/10, ...", "Theo UBND tỉnh, chiều
    # nay 29/10, ..."); a date deep in the sentence is usually some other event's.
    if not found or found.start() > LEAD_DATE_WITHIN:
        return _UNKNOWN
    day, month = int(found.group("d")), int(found.group("mo"))
    if not (1 <= day <= 31 and 1 <= month <= 12):
        return _UNKNOWN
    if found.group("y"):
        full = _make_date(int(found.group("y")), month, day)
        when = _When(_midnight(full, tz), Precision.DATE) if full else _UNKNOWN
    else:
        inferred = _infer_year(month, day, references)
        when = _When(_midnight(inferred, tz), Precision.INFERRED_YEAR) if inferred else _UNKNOWN
    rel = (found.group("rel") or "").lower()
    if when.published is not None and rel:
        # The date names the event's day; "qua" (yesterday) means it was published a day
        # later, "mai" (tomorrow) a day earlier.
        shift = {"qua": 1, "hôm qua": 1, "mai": -1}.get(rel, 0)
        if shift:
            moved = when.published.date() + timedelta(days=shift)
            when = _When(_midnight(moved, tz), when.precision)
    return when


def _midnight(day: date, tz: ZoneInfo) -> datetime:
    return datetime.combine(day, time(), tzinfo=tz)


# --------------------------------------------------------------------------- parse


def parse_dump(data: bytes, *, source: str, tz: ZoneInfo) -> Article:
    """Turn one dump's bytes into an Article. Pure.

    Raises DumpError (naming `source`, and the line where it helps) for anything that is not
    a usable article: empty, binary, legacy-encoded, placeholders only, no article text, an
    impossible publish date.
    """
    raw = _split_lines(decode_dump(data, source=source))
    header = [*raw, "", "", ""][:3]
    title_line, publish_line, head_line = header
    lines: list[str] = []
    for line in raw[3:]:
        # Blank lines drop; consecutive duplicate lines collapse.
        if line and (not lines or lines[-1] != line):
            lines.append(line)
    head = "" if _is_unfilled(head_line) else head_line
    if head and lines and lines[0] == head:
        lines.pop(0)
    if not lines and not head:
        if all(_is_unfilled(value) for value in header):
            reason = (
                "has only the three placeholder lines ({title}, {publish}, {head}) "
                "and no article text."
            )
            if not any(header):
                reason = "has no text, only blank lines."
        else:
            reason = "has a header but no article text after line 3."
        raise DumpError(source, reason, hint=_HINT)

    # 1. Teasers: the maximal trailing run of dateline lines, scanned from the end. They may
    # not eat the lead: without a head, the first non-caption line is the lead.
    captions = [_is_caption(line) for line in lines]
    floor = 0
    if not head:
        floor = next((i for i, caption in enumerate(captions) if not caption), 0) + 1
    start = len(lines)
    while start > floor and _DATELINE.match(lines[start - 1]):
        start -= 1
    teasers = []
    for line in lines[start:]:
        tag, rest = _split_dateline(line)
        teasers.append(Teaser(dateline=tag or "", text=rest))
    lines, captions = lines[:start], captions[:start]

    # 2. Byline: the last remaining line, if it is byline-shaped and not the only text.
    author: str | None = None
    paragraphs_left = captions.count(False) + (1 if head else 0)
    if lines and paragraphs_left > 1 and not captions[-1] and _is_byline(lines[-1]):
        author = _author(lines.pop())
        captions.pop()

    # 3. Captions and paragraphs; the lead is the first paragraph, its dateline removed.
    blocks: list[Block] = []
    dateline: str | None = None
    summary: str | None = None
    has_paragraph = False
    if head:
        dateline, summary = _split_dateline(head)
        blocks.append(Block(BlockKind.PARAGRAPH, summary))
        has_paragraph = True
    for line, caption in zip(lines, captions, strict=True):
        if caption:
            blocks.append(Block(BlockKind.CAPTION, line))
        elif not has_paragraph:
            dateline, lead_text = _split_dateline(line)
            blocks.append(Block(BlockKind.PARAGRAPH, lead_text))
            has_paragraph = True
        else:
            blocks.append(Block(BlockKind.PARAGRAPH, line))
    lead = next((b.text for b in blocks if b.kind is BlockKind.PARAGRAPH), "")
    if not lead:
        raise DumpError(
            source,
            "has no article paragraph (only captions, a byline or teasers).",
            hint=_HINT,
        )

    # 4. Date: the publish line, else the opening of the lead with the year inferred from
    # full dates elsewhere in the dump (teasers first: they were scraped at the same time).
    if not _is_unfilled(publish_line):
        when = _parse_publish(publish_line, source=source, line=2, tz=tz)
    else:
        references = list(_full_dates("\n".join(t.text for t in teasers)))
        if not references:
            rest = "\n".join([title_line, *(b.text for b in blocks[1:])])
            references = list(_full_dates(rest))
        when = _lead_date(lead, references, tz)

    # 5. Title: the title line, else the lead's first sentence, shortened.
    if _is_unfilled(title_line):
        sentence = first_sentence(lead)
        if sentence.endswith(".") and not sentence.endswith(".."):
            sentence = sentence[:-1]
        title, derived = shorten(sentence, limit=TITLE_LIMIT), True
    else:
        title, derived = title_line, False

    content = "\n".join(b.text for b in blocks)
    article_id = hashlib.blake2b(content.encode("utf-8"), digest_size=16).hexdigest()
    return Article(
        id=article_id,
        slug=slugify(title) or f"bai-{article_id[:12]}",
        title=title,
        title_derived=derived,
        published=when.published,
        precision=when.precision,
        body=tuple(blocks),
        author=author,
        teasers=tuple(teasers),
        source=source,
        language=detect_language(f"{title}\n{content[:1500]}"),
        dateline=dateline,
        summary=summary,
    )

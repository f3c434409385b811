"""Load: publish dates, from the publish line or the opening of the lead. Pure.

A wall-clock time is read in the site zone unless the line states an offset; a
lead's day and month get the year nearest to the full dates elsewhere in the dump.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

from syndicate.errors import DumpError
from syndicate.model import Precision
from syndicate.text import first_sentence

LEAD_DATE_WITHIN = 60  # a lead's "Sáng nay 31/10" must start within this many characters
# The hint of every rejection for what a dump holds (dates here, the rest in `parse`).
DATE_HINT = "Fix the dump or move it out of the dump folder."
_MIN_YEAR, _MAX_YEAR = 1900, 2200

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
    return DumpError(source, f"publish time {value!r} {what}.", line=line, hint=DATE_HINT)


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


def parse_publish(value: str, *, source: str, line: int, tz: ZoneInfo) -> _When:
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


def find_full_dates(text: str) -> Iterator[date]:
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


def find_lead_date(lead: str, references: Sequence[date], tz: ZoneInfo) -> _When:
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

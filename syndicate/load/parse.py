"""Load: one dump's bytes in, an `Article` out: header, body blocks, byline, teasers, date. Pure."""

from __future__ import annotations

import html
import re
from dataclasses import replace
from zoneinfo import ZoneInfo

from syndicate.errors import DumpError
from syndicate.load.dates import DATE_HINT, find_full_dates, find_lead_date, parse_publish
from syndicate.load.decode import decode_dump_screened
from syndicate.load.places import is_place_or_label
from syndicate.model import Article, Block, BlockKind, Precision, Teaser, make_article_id
from syndicate.text import (
    PHOTO_CAPTION,
    TITLE_LIMIT,
    clean_text,
    derive_title,
    nfc,
    set_headline,
    shorten_headline,
    slugify,
    tell_article_language,
)

# Bump whenever parse output can change for the same bytes: the build cache keys on it.
# 4: the head (line 3) is a summary, not a paragraph; ids cover the byline; new titles.
# 5: size limits on a dump (TEXT_LIMIT, LINE_LIMIT); bidi controls removed.
# 6: a byline below the teasers, above closing captions or opening the body; a head that
#    repeats the title is no summary; the headline scraped above the dateline's lead;
#    HTML character references read as their characters; a name on line 3 is the byline.
# 7: a source credit ("Theo TTXVN", "Nguồn: VnExpress", "(Theo Dân trí)") is the story's
#    credit, not its author; a place or a section label ("Hà Nội", "Tin Nóng") no byline.
# 8: a derived title cut inside a quotation closes it ("…”"); bidi marks, invisible
#    operators and tag characters (outside a flag) removed, a zero-width space between
#    Thai, Lao, Khmer or Burmese letters kept; a given headline set as papers set one
#    (no final full stop but an abbreviation's or an initial's, "…", no space before a
#    colon but a score's, “ ” for paired straight quotes).
# 9: a given headline past HEADLINE_LIMIT characters is cut as a headline is, with "…".
PARSER_VERSION = 9

# The most a dump may hold to be taken as one article: ten times the longest real article
# (about 100,000 characters in 200 lines). Past them a dump is a scrape gone wrong, and its
# page and feed entries would grow tens of megabytes once escaped.
TEXT_LIMIT = 1_000_000  # characters, after decoding
LINE_LIMIT = 10_000  # lines
# The longest headline kept whole, in characters (real ones run to about 150). A longer
# title line (a paragraph scraped into it) is cut as headlines shown short are
# (text.shorten_headline, "…"): every index page, feed and digest listing the article shows it.
HEADLINE_LIMIT = 300
_LIMIT_HINT = "Split it into articles, or move it out of the dump folder."

_SPACES = re.compile(" {2,}")
# An HTML character reference a scraper left in the text ("A&amp;B", "&quot;", "&#8220;"):
# the dump is plain text, so the reader is owed the character. The ";" is required: without
# it ("R&D", "AT&T", "&copy2024") HTML's legacy rules would eat letters of real text.
_CHAR_REF = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
_NON_WORD = re.compile(r"[\W_]+")
_PLACEHOLDER = re.compile(r"^\{\s*[A-Za-z_]+\s*\}$")
# A dateline: a short agency tag ("QTO", "VOV.VN", "VTV.vn", "(Dân trí)", "(PLO)"), then a
# hyphen, en dash or em dash, then the text. Spaces are already normalised (NBSP -> " ").
_DATELINE = re.compile(
    r"^(?P<tag>\([^()]{2,24}\)|[A-ZĐ]{2,}[A-Za-zĐ0-9]*(?:\.[A-Za-z]{2,4})?)"
    r" ?[-\u2013\u2014] +(?P<text>\S.*)$"
)


def _split_lines(text: str, *, plain: bool = False) -> list[str]:
    """NFC, cleaned, whitespace-collapsed physical lines. `plain`: the decoder found none of
    the characters clean_text changes (line breaks aside) in the text's bytes.

    Only "\\n" splits (after "\\r\\n" and "\\r" become "\\n"): str.splitlines() would also
    split on form feeds, U+0085 and U+2028, which are spaces inside a line here.
    """
    if "&" in text and _CHAR_REF.search(text):
        text, plain = _CHAR_REF.sub(_char_ref, text), False
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    # Every character clean_text removes or replaces is unprintable: a text that is plain,
    # or printable (line breaks aside), only needs NFC.
    text = nfc(text) if plain or text.replace("\n", " ").isprintable() else clean_text(text)
    return [
        _SPACES.sub(" ", line).strip() if "  " in line else line.strip()
        for line in text.split("\n")
    ]


def _char_ref(match: re.Match[str]) -> str:
    # A reference to a line break is a space: it may not move the header's lines.
    char = html.unescape(match.group(0))
    return " " if char in ("\n", "\r") else char


def _is_unfilled(value: str) -> bool:
    return not value or bool(_PLACEHOLDER.match(value))


def _split_dateline(text: str) -> tuple[str | None, str]:
    match = _DATELINE.match(text)
    if not match:
        return None, text
    return match.group("tag"), match.group("text")


# The last letters a photo credit without a colon or a bracket can end with ("... minh họa",
# "... minh hoạ", "... tư liệu", "... internet", "... file"), in every case PHOTO_CAPTION
# (re.IGNORECASE) matches them in: tests/test_load.py checks this against every code point.
_CREDIT_LAST_LETTERS = frozenset("aAạẠuUtTeE")
# The most a credit after its colon can hold, stripped: one character, 48 more, a ")".
_CREDIT_AFTER_COLON = 50


def _may_be_caption(text: str) -> bool:
    """False when PHOTO_CAPTION cannot match `text`: a few scans in C where lowering and
    searching the line's end takes ten times as long (most lines are paragraphs).

    A credit ends the line, its end "\\)?\\s*$". It holds a colon with at most
    _CREDIT_AFTER_COLON characters after it (the text's last colon: no credit holds
    another), or a "(" ("Ảnh minh họa (TTXVN)", or the "(" before the credit), or it ends
    in one of _CREDIT_LAST_LETTERS.
    """
    colon = text.rfind(":")
    if colon >= 0 and len(text[colon + 1 :].strip()) <= _CREDIT_AFTER_COLON:
        return True
    if "(" in text:
        return True
    end = text.rstrip()
    if end.endswith(")"):
        end = end[:-1]
    return end[-1:] in _CREDIT_LAST_LETTERS


def _is_caption(text: str) -> bool:
    return _may_be_caption(text) and _credit_ends(text)


def _credit_ends(text: str) -> bool:
    """Whether a photo credit ends `text` (PHOTO_CAPTION, and not prose): the full test,
    which `_may_be_caption` screens lines for."""
    tail = text[-90:].lower()
    if "ảnh" not in tail and "photo" not in tail:
        return False
    match = PHOTO_CAPTION.search(text)
    if not match:
        return False
    credit = match.group("credit")
    # A credit is a name or two, not a sentence: "ảnh: đây là..." mid-sentence is prose.
    words = credit.split(":", 1)[-1].split()
    if len(words) > 8 or credit.rstrip(")").endswith(("!", "?", "…", "...")):
        return False
    return not (match.start() == 0 and len(text) > 60)


# A source credit: the agency or paper a story came from, not a writer ("Theo TTXVN",
# "Nguồn: VnExpress", "(Theo Dân trí)", "Source: Reuters"), brackets around it or none.
_CREDIT = re.compile(
    r"^(?P<open>\()?(?:Theo\s+|(?:Nguồn|Source)\s*:\s*)(?P<name>[^()]+?)\s*(?(open)\))$"
)


def _credit(text: str) -> str | None:
    """The source a credit line names ("Theo TTXVN" -> "TTXVN"), or None."""
    match = _CREDIT.match(text)
    if match is None:
        return None
    name = match.group("name")
    if not (name[0].isupper() or name[0].isdigit()) or name[-1] in ".!?:;,…":
        return None
    words = [w for w in re.split(r"[\s,&/]+", name) if any(c.isalpha() for c in w)]
    return name if 1 <= len(words) <= 6 else None


def _is_byline(text: str, *, closing: bool = False) -> bool:
    """Whether `text` is shaped as a byline; `closing`: it is below the story (where a
    province's bare name is a writer's: "Hà Giang"), not above it (where it is a place)."""
    if len(text) > 50 or _is_caption(text) or _DATELINE.match(text):
        return False
    if _credit(text) is not None:
        return True
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
    return (
        all(w[0].isupper() or w.lower() in joiners for w in words)
        and any(w[0].isupper() for w in words)
        # Shaped as a name, and yet none: "Hà Nội", "TP Hồ Chí Minh", "Tin Nóng".
        and not is_place_or_label(text, bare_places=not closing)
    )


# The longest headline a scrape repeats above the lead (the longest real ones: about 280).
_HEADLINE_CHARS = 300
# What a sentence (a story's paragraph), not a headline, ends with.
_SENTENCE_ENDS = (".", "!", "?", "…", "\u201d", '"', "\u00bb", ")", ":", ";")


def _is_scraped_headline(lines: list[str], captions: list[bool], first: int) -> bool:
    """Whether `lines[first]`, the body's first line that is not a caption, is the page's
    headline scraped along: headline-shaped (no dateline, no final full stop, not too long)
    and right above (captions aside) a paragraph that opens with a dateline."""
    line = lines[first]
    if captions[first] or len(line) > _HEADLINE_CHARS or line.endswith("."):
        return False
    if _DATELINE.match(line):
        return False
    after = next((i for i in range(first + 1, len(lines)) if not captions[i]), None)
    if after is None or not _DATELINE.match(lines[after]):
        return False
    rest = [lines[i] for i in range(after + 1, len(lines)) if not captions[i]]
    if any(not (_DATELINE.match(text) or _is_byline(text, closing=True)) for text in rest):
        return True  # the story goes on below its lead
    # Else a one-paragraph story under its headline, or a brief whose only paragraph is
    # `line`, the teasers below it: a headline ends on no sentence's punctuation, and its
    # story's one paragraph has no other dateline line (a teaser) after it.
    return not line.endswith(_SENTENCE_ENDS) and not any(_DATELINE.match(t) for t in rest)


def _words(text: str) -> list[str]:
    """The words of `text`, case and punctuation aside."""
    return _NON_WORD.sub(" ", text.casefold()).split()


def _is_name_sized(text: str) -> bool:
    """Two to four words besides joiners, or a "Theo "/"By " credit: a byline above the
    story, where a headline in title case ("Ben Lam Opens Night Market") may also sit, or
    a one-word label or place ("Video", "Infographic", "TP.HCM"): writers' names are two
    words or more ("Hoàng Yến")."""
    if re.match(r"^(?:Theo|By)\s", text) or _credit(text) is not None:
        return True
    words = [w for w in re.split(r"[\s,&/]+", text) if w not in {"và", "and", "-", "\u2013"}]
    return 2 <= len(words) <= 4


def _byline_key(text: str) -> str:
    """What the article's id covers of its byline line: the line without "Theo " or "By "
    (as before credits were told from authors, so that ids stay)."""
    match = re.match(r"^(?:Theo|By)\s+(?P<rest>.+)$", text)
    return match.group("rest") if match else text


def _author_and_credit(text: str | None) -> tuple[str | None, str | None]:
    """The author a byline line names ("By Thu Ha" -> "Thu Ha"), or the source it credits."""
    if text is None:
        return None, None
    credit = _credit(text)
    if credit is not None:
        return None, credit
    return _byline_key(text), None


def parse_dump(data: bytes, *, source: str, tz: ZoneInfo) -> Article:
    """Turn one dump's bytes into an Article. Pure.

    Raises DumpError (naming `source`, and the line where it helps) for anything that is not
    a usable article: empty, binary, legacy-encoded, placeholders only, no article text, an
    impossible publish date.
    """
    return parse_dump_with_body(data, source=source, tz=tz)[0]


def parse_dump_with_body(data: bytes, *, source: str, tz: ZoneInfo) -> tuple[Article, bytes]:
    """`parse_dump`, and the article's body text as UTF-8: its blocks' texts, one per line.

    Article.id is `make_article_id` of exactly these bytes and the byline: the header
    lines, the teasers and the encoding are not part of it, so one story scraped with and
    without its header, or with another sidebar, has one id. A caller that stores the
    bytes need neither encode nor hash them again.
    """
    text, plain = decode_dump_screened(data, source=source)
    if len(text) > TEXT_LIMIT:
        raise DumpError(
            source,
            f"holds {len(text):,} characters of text, more than an article's {TEXT_LIMIT:,}.",
            hint=_LIMIT_HINT,
        )
    raw = _split_lines(text, plain=plain)
    if len(raw) > LINE_LIMIT:
        raise DumpError(
            source,
            f"holds {len(raw):,} lines, more than an article's {LINE_LIMIT:,}.",
            hint=_LIMIT_HINT,
        )
    header = [*raw, "", "", ""][:3]
    title_line, publish_line, head_line = header
    lines: list[str] = []
    for line in raw[3:]:
        # Blank lines drop; consecutive duplicate lines collapse.
        if line and (not lines or lines[-1] != line):
            lines.append(line)
    head = "" if _is_unfilled(head_line) else head_line
    if not lines:
        if all(_is_unfilled(value) for value in header):
            reason = (
                "has only the three placeholder lines ({title}, {publish}, {head}) "
                "and no article text."
            )
            if not any(header):
                reason = "has no text, only blank lines."
        else:
            reason = "has a header but no article text after line 3."
        raise DumpError(source, reason, hint=DATE_HINT)

    # 1. Teasers: the maximal trailing run of dateline lines, scanned from the end. They may
    # not eat the lead: the first non-caption line is the lead. Nothing here looks at the
    # header, so the body (and the id) is the same whether the header was filled or not.
    captions = [_is_caption(line) for line in lines]
    floor = next((i for i, caption in enumerate(captions) if not caption), 0) + 1
    # The page's headline, kept by some scrapes as the body's first line: a line above the
    # paragraph that opens with the dateline is not the story's text (that paragraph is its
    # lead), and the teasers' run stops above the lead.
    headline = floor - 1 if _is_scraped_headline(lines, captions, floor - 1) else None
    if headline is not None:
        floor = captions.index(False, floor) + 1
    # Some scrapes put the byline below the sidebar: a byline-shaped last line with teasers
    # right above it is taken first, or the teasers would be read as the story's own text.
    end = len(lines)
    byline: str | None = None  # the byline's line, as the dump has it
    if (
        end - 1 > floor
        and not captions[-1]
        and _DATELINE.match(lines[-2])
        and _is_byline(lines[-1], closing=True)
    ):
        end -= 1
        byline = lines[-1]
    start = end
    while start > floor and _DATELINE.match(lines[start - 1]):
        start -= 1
    teasers = []
    for line in lines[start:end]:
        tag, rest = _split_dateline(line)
        teasers.append(Teaser(dateline=tag or "", text=rest))
    lines, captions = lines[:start], captions[:start]

    if headline is not None and not _is_byline(lines[headline]):
        del lines[headline], captions[headline]

    # 2. Byline: the last remaining line that is not a caption (the story may end on a
    # photo), if it is byline-shaped and not the only text.
    paragraphs_left = captions.count(False)
    last = len(lines) - 1
    while last >= 0 and captions[last]:
        last -= 1
    if byline is None and paragraphs_left > 1 and _is_byline(lines[last], closing=True):
        byline = lines.pop(last)
        captions.pop(last)
    elif byline is None and paragraphs_left > 1:
        # Else the first line that is not a caption, where some sites print the author
        # above the story: a name is never the lead (the feeds' summary, the digest blurb).
        first = captions.index(False)
        if _is_byline(lines[first]) and _is_name_sized(lines[first]):
            byline = lines.pop(first)
            captions.pop(first)

    # 3. Captions and paragraphs; the lead is the first paragraph, its dateline removed. The
    # head (line 3) is the summary, never a paragraph; its dateline is removed too.
    blocks: list[Block] = []
    dateline: str | None = None
    summary: str | None = None
    has_paragraph = False
    # The id covers the body's own byline only: one from the header would make a copy of
    # the story with its header unfilled another article.
    body_author = None if byline is None else _byline_key(byline)
    if head and _is_byline(head):
        # A name where the sapo goes (some templates put the author there) summarises
        # nothing: it is the byline when the body has none.
        byline = byline or head
    elif head:
        dateline, summary = _split_dateline(head)
    for line, caption in zip(lines, captions, strict=True):
        if caption:
            blocks.append(Block(BlockKind.CAPTION, line))
        elif not has_paragraph:
            lead_tag, lead_text = _split_dateline(line)
            dateline = lead_tag or dateline
            blocks.append(Block(BlockKind.PARAGRAPH, lead_text))
            has_paragraph = True
        else:
            blocks.append(Block(BlockKind.PARAGRAPH, line))
    lead = next((b.text for b in blocks if b.kind is BlockKind.PARAGRAPH), "")
    if not lead:
        raise DumpError(
            source,
            "has no article paragraph (only captions, a byline or teasers).",
            hint=DATE_HINT,
        )

    # 4. Date: the publish line, else the opening of the lead with the year inferred from
    # full dates elsewhere in the dump (teasers first: they were scraped at the same time).
    if not _is_unfilled(publish_line):
        when = parse_publish(publish_line, source=source, line=2, tz=tz)
    else:
        references = list(find_full_dates("\n".join(t.text for t in teasers)))
        if not references:
            rest = "\n".join([title_line, summary or "", *(b.text for b in blocks[1:])])
            references = list(find_full_dates(rest))
        when = find_lead_date(summary or "", references, tz)
        if when.published is None:
            when = find_lead_date(lead, references, tz)

    # 5. Title: the title line, else derived from the head (else the lead) as a sub-editor
    # would (text.derive_title).
    if _is_unfilled(title_line):
        title, derived = derive_title(summary or lead, limit=TITLE_LIMIT), True
    else:
        if len(title_line) > HEADLINE_LIMIT:
            title_line = shorten_headline(title_line, limit=HEADLINE_LIMIT)
        title, derived = set_headline(title_line), False
        if summary is not None and _words(summary) == _words(title):
            # A head that only says the headline again summarises nothing: the lead does.
            summary = None

    content = "\n".join([b.text for b in blocks])
    body = content.encode("utf-8")
    article_id = make_article_id(body, body_author)
    author, credit = _author_and_credit(byline)
    article = Article(
        id=article_id,
        slug=slugify(title) or f"bai-{article_id[:12]}",
        title=title,
        title_derived=derived,
        published=when.published,
        precision=when.precision,
        body=tuple(blocks),
        author=author,
        credit=credit,
        teasers=tuple(teasers),
        source=source,
        language=tell_article_language(title, content),
        dateline=dateline,
        head=summary,
    )
    return article, body


# How much of the publish time each precision knows, to take the better of two copies.
_PRECISION_RANK = {
    Precision.UNKNOWN: 0,
    Precision.INFERRED_YEAR: 1,
    Precision.DATE: 2,
    Precision.DATETIME: 3,
}


def merge_copies(first: Article, other: Article) -> Article:
    """`first`, with what `other` (another copy of the same story: same id) adds. Pure.

    The richer copy fills in what the first lacked: a real title for a derived one, a
    more precise publish time, a head (and a title derived again from it), a dateline.
    The id, slug, body, teasers and source stay the first copy's: a published URL never
    changes.
    """
    title, derived = first.title, first.title_derived
    head = first.head or other.head
    if derived and not other.title_derived:
        title, derived = other.title, False
    elif derived and head and not first.head:
        title = derive_title(head, limit=TITLE_LIMIT)
    published, precision = first.published, first.precision
    if _PRECISION_RANK[other.precision] > _PRECISION_RANK[precision]:
        published, precision = other.published, other.precision
    return replace(
        first,
        title=title,
        title_derived=derived,
        published=published,
        precision=precision,
        head=head,
        dateline=first.dateline or other.dateline,
    )

"""Mail stage: a rendered digest in, MIME bytes out. Pure: no I/O, no clock, no randomness.

The digest message of one day and language is built once as a `MessageTemplate`:
the serialised bytes cut at the per-recipient slots (To, the Message-ID's
subscriber id, the unsubscribe URL in the headers and in both parts).
`fill_message` joins the pieces with one recipient's values, and signs the
result with DKIM when a key is given. Both parts travel as 8bit UTF-8 so that
the URL sits in them verbatim.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from datetime import date, datetime
from email import errors as email_errors
from email import policy
from email.header import Header
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, getaddresses, parseaddr
from functools import lru_cache
from html import escape
from typing import Protocol
from urllib.parse import urlsplit

from syndicate import urls
from syndicate.config import Settings, base_url
from syndicate.errors import ConfigError
from syndicate.model import MESSAGE_KEY
from syndicate.text import MAX_LINE_BYTES, header_safe
from syndicate.tokens import RETURN_TOKEN_LENGTH, make_return_token
from syndicate.urls import ascii_host

# Headers covered by a DKIM signature (RFC 8058 asks for both List-Unsubscribe headers).
DKIM_HEADERS = (
    b"From",
    b"To",
    b"Subject",
    b"Date",
    b"Message-ID",
    b"List-Id",
    b"List-Unsubscribe",
    b"List-Unsubscribe-Post",
    b"Content-Type",
    b"MIME-Version",
)
# The marker URL handed to the renderer: only characters no escaping changes.
MARKER_PATTERN = re.compile(r"[A-Za-z0-9\-_:/.?=]+")
# What a per-recipient URL may hold: RFC 3986 characters that need no escaping in a header
# or in HTML ('&' and "'" would be escaped in the HTML part, so they are percent-encoded).
_URL_SAFE = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$()*+,;=%]+")
_SLOT_TO, _SLOT_ID, _SLOT_URL = 0, 1, 2
# A language as it ends an unsubscribe link: lowercase letters (i18n.LANGUAGES).
_LANGUAGE = re.compile(r"[a-z]+")
_SAFE_ADDRESS = re.compile(r"[^\s<>\"\\,;@]+@[^\s<>\"\\,;@]+")


def _plain_address(address: str) -> bool:
    """Whether `address` is one bare ASCII address (_SAFE_ADDRESS), fit for a header."""
    return _SAFE_ADDRESS.fullmatch(address) is not None and address.isascii()


# What to say of an address header value the parser had to mend (a '<' left open, a '>'
# never opened, a quote not closed, a name holding a ':' or ',' unquoted): the address it
# took is a guess.
_MALFORMED = (
    "it is not a well-formed address (check its quotes and angle brackets; a name holding "
    ", : ; or @ goes in double quotes): "
)


def _malformed(value: str) -> bool:
    """Whether the header parser finds `value` broken (and would mend it in silence)."""
    parsed = policy.default.header_factory("Reply-To", value)
    return any(isinstance(d, email_errors.InvalidHeaderDefect) for d in parsed.defects)


def _not_ascii(address: str) -> str | None:
    """What to say of an address refused only for its letters (an internationalised domain,
    a local part in Vietnamese), or None when it is refused for something else."""
    local, _at, domain = address.rpartition("@")
    if not local or not domain or address.isascii():
        return None
    if not local.isascii():
        return (
            "its local part is not ASCII, which mail to it needs SMTPUTF8 for (syndicate does "
            "not send it): give an ASCII address."
        )
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    if not _plain_address(f"{local}@{ascii_domain}"):
        return None
    return f"its domain is not ASCII: write it in its xn-- form, {local}@{ascii_domain}."


class Rendered(Protocol):
    """What mail needs from a rendered email (digest.RenderedEmail)."""

    @property
    def lang(self) -> str: ...
    @property
    def subject(self) -> str: ...
    @property
    def html(self) -> str: ...
    @property
    def text(self) -> str: ...


@dataclass(frozen=True, slots=True)
class _Body:
    """A `Rendered` whose parts were changed (build_digest_template's link language)."""

    lang: str
    subject: str
    html: str
    text: str


@dataclass(frozen=True, slots=True)
class DkimKey:
    """A DKIM signing key: `d=` domain, `s=` selector and the PEM private key."""

    domain: str
    selector: str
    private_key: bytes


class Canonical(bytes):
    """Message bytes known to be in canonical form: CRLF line ends only, a final CRLF and no
    line beginning with '.'. SMTP's DATA then carries them as they are (no line-end or dot
    pass over every message). Like markupsafe's `Markup` for escaped text, the type is the
    proof: `fill_message` returns one only when its template and values make it so."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class MessageTemplate:
    """One digest message with holes for each recipient's values."""

    lang: str
    digest_day: date
    chunks: tuple[bytes, ...]  # static bytes; a slot sits between each neighbouring pair
    slots: tuple[int, ...]  # which value fills each hole (_SLOT_TO, _SLOT_ID, _SLOT_URL)
    dkim: DkimKey | None = None
    # The chunks are canonical (`Canonical`) however they are joined to values without CR,
    # LF or a leading '.'; and the holes (by position) whose value begins a line.
    canonical: bool = False
    line_starts: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class MailInfo:
    """What the mail stage needs from the settings, as DigestInfo is for the digest's."""

    sender: str  # mail.from, or the outbox default
    reply_to: str
    list_id: str
    bounce_address: str
    mailto_unsubscribe: str
    site_title: str
    base_url: str  # ends in '/'

    @classmethod
    def from_settings(cls, settings: Settings) -> MailInfo:
        """Take the mail stage's values from `settings`."""
        return cls(
            sender=settings.mail.sender,
            reply_to=settings.mail.reply_to,
            list_id=settings.mail.list_id,
            bounce_address=settings.mail.bounce_address,
            mailto_unsubscribe=settings.mail.mailto_unsubscribe,
            site_title=settings.site.title,
            base_url=base_url(settings),
        )


def message_domain(*, info: MailInfo) -> str:
    """Return the Message-ID domain: base_url's host, else the From address's domain."""
    host = urlsplit(info.base_url).hostname
    if host:
        return ascii_host(host)
    _, address = parseaddr(info.sender)
    return address.rpartition("@")[2] or "localhost"


def envelope_sender(*, info: MailInfo) -> str:
    """Return the bare address of mail.from (the SMTP envelope sender).

    Raises ConfigError when mail.from holds no usable address, or more than one: the
    From header would name them all, which DMARC and most receivers refuse.
    """
    _name, address = parseaddr(info.sender)
    if not _plain_address(address):
        raise ConfigError(
            f"config key mail.from has value {info.sender!r}; "
            + (_not_ascii(address) or 'expected an address like "News <news@example.org>".'),
            key="mail.from",
        )
    if len(getaddresses([header_safe(info.sender)])) != 1:
        raise ConfigError(
            f"config key mail.from has value {info.sender!r}; "
            'expected one address like "News <news@example.org>".',
            key="mail.from",
        )
    if _malformed(header_safe(info.sender)):
        raise ConfigError(
            f"config key mail.from has value {info.sender!r}; "
            f'{_MALFORMED}expected one like "News <news@example.org>".',
            key="mail.from",
        )
    return address


def bounce_address(*, info: MailInfo) -> tuple[str, str] | None:
    """Return mail.bounce_address as (local part, domain), or None when it is not set.

    Raises ConfigError when it is no plain ASCII address, when its local part
    holds the VERP delimiter '+', or when a VERP local part made from it would
    pass the 64 octets RFC 5321 allows.
    """
    value = info.bounce_address.strip()
    if not value:
        return None
    local, _at, domain = value.rpartition("@")
    where = f"config key mail.bounce_address has value {info.bounce_address!r}"
    if not _plain_address(value) or '"' in local:
        raise ConfigError(
            f"{where}; "
            + (_not_ascii(value) or "expected a plain address like 'bounces@news.example.org'."),
            key="mail.bounce_address",
        )
    if "+" in local:
        raise ConfigError(
            f"{where}; its local part may not hold '+' (the VERP delimiter). "
            "Use an address like 'bounces@news.example.org'.",
            key="mail.bounce_address",
        )
    if len(local) + 1 + RETURN_TOKEN_LENGTH > 64:
        raise ConfigError(
            f"{where}; its local part is too long for a VERP address (at most "
            f"{63 - RETURN_TOKEN_LENGTH} characters). Use a shorter one like 'bounces'.",
            key="mail.bounce_address",
        )
    return local, domain.lower()


@lru_cache(maxsize=8)
def _return_parts(info: MailInfo) -> tuple[str, tuple[str, str] | None]:
    # Called per message: the checked addresses are worked out once per MailInfo.
    return envelope_sender(info=info), bounce_address(info=info)


def return_path(
    *, info: MailInfo, secret: bytes, subscriber_id: int, nonce: bytes, day: date
) -> str:
    """Return one digest message's envelope sender (SMTP MAIL FROM and Return-Path).

    With mail.bounce_address set, the VERP address `local+<token>@domain`,
    the token naming the subscriber and the digest day
    (tokens.make_return_token); else mail.from's address, as for every message.
    """
    sender, parts = _return_parts(info)
    if parts is None:
        return sender
    token = make_return_token(secret, subscriber_id=subscriber_id, nonce=nonce, day=day)
    return f"{parts[0]}+{token}@{parts[1]}"


def confirmation_return_path(
    *, info: MailInfo, secret: bytes, subscriber_id: int, nonce: bytes, day: date
) -> str:
    """Return a confirmation mail's envelope sender, as `return_path` does a digest's.

    With mail.bounce_address set, the VERP address whose token names the pending
    subscriber as a confirmation's (its bounce counts toward no digest); else mail.from's.
    """
    sender, parts = _return_parts(info)
    if parts is None:
        return sender
    token = make_return_token(
        secret, subscriber_id=subscriber_id, nonce=nonce, day=day, confirmation=True
    )
    return f"{parts[0]}+{token}@{parts[1]}"


def list_id(*, info: MailInfo) -> str:
    """Return the List-Id value: mail.list_id, else '<title> <digest.HOST>'."""
    configured = header_safe(info.list_id)
    if configured:
        return configured if "<" in configured else f"<{configured}>"
    host = ascii_host(urlsplit(info.base_url).hostname or "localhost")
    # Angle brackets in the phrase would make a reader take the wrong part as the id.
    phrase = header_safe(info.site_title.replace("<", " ").replace(">", " "))
    return f"{phrase} <digest.{host}>"


def reply_to(*, info: MailInfo) -> str:
    """Return the Reply-To value (empty when not set); raise ConfigError when it is no address."""
    value = header_safe(info.reply_to)
    if not value:
        return ""
    addresses = [address for _name, address in getaddresses([value])]
    wrong = [address for address in addresses if not _plain_address(address)]
    if not addresses or wrong:
        raise ConfigError(
            f"config key mail.reply_to has value {info.reply_to!r}; "
            + (
                (wrong and _not_ascii(wrong[0])) or "expected an address like 'editor@example.org'."
            ),
            key="mail.reply_to",
        )
    if _malformed(value):
        raise ConfigError(
            f"config key mail.reply_to has value {info.reply_to!r}; "
            f"{_MALFORMED}expected one like 'Editor <editor@example.org>'.",
            key="mail.reply_to",
        )
    return value


def mailto_unsubscribe(*, info: MailInfo) -> str:
    """Return mail.mailto_unsubscribe's bare address (empty when not set).

    Raises ConfigError when it is no plain ASCII address.
    """
    mailto = header_safe(info.mailto_unsubscribe)
    if not mailto:
        return ""
    address = mailto.removeprefix("mailto:")
    if not _plain_address(address):
        raise ConfigError(
            f"config key mail.mailto_unsubscribe has value {mailto!r}; "
            "expected a plain ASCII address like 'unsubscribe@example.org'.",
            key="mail.mailto_unsubscribe",
        )
    return address


def check_addresses(*, info: MailInfo) -> None:
    """Raise ConfigError naming the first mail.* address key that holds no usable address.

    mail.from, mail.reply_to, mail.bounce_address and mail.mailto_unsubscribe, as
    every digest and confirmation mail would use them: a command that mails checks
    them before it makes or stores anything.
    """
    envelope_sender(info=info)
    reply_to(info=info)
    bounce_address(info=info)
    mailto_unsubscribe(info=info)


def unsubscribe_url(token: str, *, info: MailInfo) -> str:
    """Return the one-click unsubscribe URL (urls.unsubscribe_url under the site's base_url)."""
    return urls.unsubscribe_url(info.base_url, token)


def _encode_text(name: str, text: str) -> str:
    """`text` as a header value, RFC 2047-encoded when not ASCII, folded at 76 columns.

    Spaces go inside the encoded words, so a reader decodes the text exactly; the
    email package's own folder drops a space that falls between two encoded words.
    ASCII text holding "=?" is encoded too (RFC 2047, section 5): written as it is, a word
    shaped like an encoded word ("=?utf-8?b?...?=", in an article's title) would be
    decoded by the reader into other text, a line break and a header of its own included.
    """
    charset = "us-ascii" if text.isascii() and "=?" not in text else "utf-8"
    return Header(text, charset, header_name=name).encode(linesep="\r\n")


def _encode_address(name: str, value: str, *, default_name: str = "") -> str:
    """An address header's value ('Name <addr>', bare addresses) with the names encoded;
    a bare address gets `default_name`, when given."""
    encoded = []
    for found, address in getaddresses([value]):
        display = found or default_name
        if not display:
            encoded.append(address)
            continue
        # ASCII: quoted when it holds specials (formataddr); else one encoded word (some
        # readers add a space between the words of a folded name). Encoded words, folded,
        # when that line would pass the limit (a name of quotes doubles in length quoted),
        # or for ASCII holding "=?", which a reader would decode into other text
        # (`_encode_text`): a title like "=?utf-8?b?...?=" is shown as written.
        plain = display.isascii() and "=?" not in display
        single = formataddr((display, address))  # utf-8 encoded words for non-ASCII
        if len(name) + 2 + len(single) > 990 or (not plain and display.isascii()):
            words = Header(display, "utf-8", header_name=name).encode(linesep="\r\n")
            single = f"{words} <{address}>"
        encoded.append(single)
    return ", ".join(encoded) if encoded else value


def _text_headers(rendered: Rendered, info: MailInfo) -> bytes:
    """From, Reply-To, Subject and List-Id as header bytes, encoded by `_encode_text`.

    A mail.from without a name is shown under the site's title: the name readers know.
    """
    title = " ".join(header_safe(info.site_title).split())
    lines = [f"From: {_encode_address('From', header_safe(info.sender), default_name=title)}"]
    answer_to = reply_to(info=info)
    if answer_to:
        lines.append(f"Reply-To: {_encode_address('Reply-To', answer_to)}")
    subject = header_safe(rendered.subject) or header_safe(info.site_title)
    lines.append(f"Subject: {_encode_text('Subject', subject)}")
    phrase, bracket, rest = list_id(info=info).rpartition("<")
    if bracket and phrase.strip():
        lines.append(f"List-Id: {_encode_text('List-Id', phrase.strip())} <{rest}")
    else:
        lines.append(f"List-Id: {list_id(info=info)}")
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def fold_html_lines(html: str, *, limit: int = MAX_LINE_BYTES) -> str:
    """Break HTML lines longer than `limit` bytes where a newline means the same.

    Breaks replace a space in text or a space between attributes of a tag,
    never one inside a quoted attribute value. A run with no such space (only
    hostile input makes one) is split between characters, never inside a character
    reference ("&amp;" split was shown as "&am p;").
    """
    if all(len(line.encode()) <= limit for line in html.split("\n")):
        return html
    return "\n".join(_fold_html_line(line, limit) for line in html.split("\n"))


def _fold_html_line(line: str, limit: int) -> str:
    if len(line.encode()) <= limit:
        return line
    out: list[str] = []
    in_tag = False
    quote = ""
    size = 0
    last_space = -1  # index in `out` of the last breakable space on this line
    size_after_space = 0
    reference = -1  # index in `out` of the "&" of a character reference not yet closed
    size_before_reference = 0
    for char in line:
        width = len(char.encode())
        if size + width > limit and last_space >= 0:
            out[last_space] = "\n"
            size -= size_after_space
            size_before_reference -= size_after_space  # an open one is on the new line
            last_space = -1
        # Each break is measured again: one at a space a byte or two into the line, or
        # before an "&" whose run fills the line, may leave too little room for `char`.
        if size + width > limit and reference >= 0 and size_before_reference > 0:
            out.insert(reference, "\n")  # break before the reference, not inside it
            size -= size_before_reference
            reference = -1
        if size + width > limit and not in_tag and not unicodedata.combining(char):
            out.append("\n")  # a run longer than a line, a "&"'s too, is split
            size = 0
            reference = -1
        if reference >= 0 and not (char.isascii() and (char.isalnum() or char == "#")):
            reference = -1  # ";" (or anything else) ends it
        if quote:
            if char == quote:
                quote = ""
        elif in_tag and char in "\"'":
            quote = char
        elif char == "<":
            in_tag = True
        elif char == ">":
            in_tag = False
        elif char == "&" and not in_tag:
            reference = len(out)
            size_before_reference = size
        elif char == " ":
            out.append(char)
            size += width
            last_space = len(out) - 1
            size_after_space = size
            continue
        out.append(char)
        size += width
    return "".join(out)


def _boundary(*parts: str) -> str:
    digest = hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()[:32]
    return f"=_syndicate_{digest}"


def _common_message(
    rendered: Rendered, *, info: MailInfo, now: datetime, html_cte: str
) -> EmailMessage:
    """The headers every recipient shares, and both parts, with a content-derived boundary.

    From, Reply-To, Subject and List-Id are not in it: `_text_headers` makes them.
    """
    envelope_sender(info=info)  # checks mail.from before anything is built
    bounce_address(info=info)  # and mail.bounce_address
    msg = EmailMessage(policy=policy.SMTP)
    msg["Date"] = format_datetime(now)
    msg.set_content(rendered.text, subtype="plain", charset="utf-8", cte=html_cte)
    html = fold_html_lines(rendered.html)
    msg.add_alternative(html, subtype="html", charset="utf-8", cte=html_cte)
    msg["Content-Language"] = header_safe(rendered.lang)  # after set_content, which drops it
    for part in msg.iter_parts():
        del part[
            "MIME-Version"
        ]  # add_alternative leaves one on the new part; only the top needs it
    msg.set_boundary(_boundary(rendered.text, rendered.html))
    return msg


def build_digest_template(
    rendered: Rendered,
    *,
    info: MailInfo,
    digest_day: date,
    marker: str,
    now: datetime,
    message_key: str | None,
    dkim: DkimKey | None = None,
) -> MessageTemplate:
    """Build the digest message of one language once, with per-recipient slots.

    `rendered` must have been rendered with `unsubscribe_url=marker`; each
    occurrence of the marker becomes an unsubscribe-URL slot, followed by the mail's
    language (`urls.link_language`), as is the List-Unsubscribe header's. `message_key` is the
    digest's own part of its Message-IDs (below), None for one stored without. Raises
    ConfigError when mail.from is unusable or the rendered digest lost the
    unsubscribe link (custom templates must keep it).
    """
    if not MARKER_PATTERN.fullmatch(marker):
        raise ValueError(f"marker {marker!r} holds characters escaping could change")
    if not _LANGUAGE.fullmatch(rendered.lang):
        raise ValueError(f"language {rendered.lang!r} is not a language code")
    mark = marker.encode("ascii")
    for part, body in (("text", rendered.text), ("HTML", rendered.html)):
        if marker not in body:
            raise ConfigError(
                f"digest ({rendered.lang}): the {part} part has no unsubscribe link.",
                hint="Keep the unsubscribe link in custom templates (digest.templates_dir).",
            )
    # The mail's language ends each unsubscribe link (`&lang=`, escaped in HTML): the same
    # for every recipient of this template, so it is static bytes after each URL slot and
    # filling one recipient's message costs nothing more. The pages the link opens speak
    # it, even for a subscriber erased since (whose language the store no longer knows).
    language = urls.link_language(rendered.lang)
    rendered = _Body(
        lang=rendered.lang,
        subject=rendered.subject,
        text=rendered.text.replace(marker, marker + language),
        html=rendered.html.replace(marker, marker + escape(language)),
    )
    common = _common_message(rendered, info=info, now=now, html_cte="8bit")
    domain = message_domain(info=info)
    head: list[bytes | int] = [
        b"To: ",
        _SLOT_TO,
        f"\r\nMessage-ID: <{digest_day.isoformat()}.".encode(),
        _SLOT_ID,
    ]
    # `<DAY.SUBSCRIBER-ID.KEY@domain>`: the same digest sent again (a message in doubt, a
    # rerun) keeps its Message-IDs, so a mailbox or the outbox keeps one copy; another
    # digest of the same day (one a clock ahead made, retired by `digest --retire`, then
    # the day's own) gets new ones: under the same IDs the day's own was dropped as a
    # duplicate of the copy readers already had, and its outbox files overwrote the
    # retired one's. A digest stored before keys existed keeps `<DAY.SUBSCRIBER-ID@domain>`,
    # as sent (bounces.parse.digest_hint reads both).
    if message_key is not None and not MESSAGE_KEY.fullmatch(message_key):
        raise ValueError(f"message key {message_key!r} is not lowercase hex")
    key = f".{message_key}" if message_key is not None else ""
    head += [
        f"{key}@{domain}>\r\nList-Unsubscribe: <".encode(),
        _SLOT_URL,
        f"{language}>".encode("ascii"),
    ]
    mailto = mailto_unsubscribe(info=info)
    if mailto:
        head.append(f", <mailto:{mailto}?subject=unsubscribe>".encode("ascii"))
    head.append(b"\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n")
    head.append(_text_headers(rendered, info))
    pieces: list[bytes | int] = [*head]
    chunks = common.as_bytes().split(mark)
    for index, chunk in enumerate(chunks):
        if index:
            pieces.append(_SLOT_URL)
        pieces.append(chunk)
    return compile_template(pieces, lang=rendered.lang, digest_day=digest_day, dkim=dkim)


def compile_template(
    pieces: list[bytes | int], *, lang: str, digest_day: date, dkim: DkimKey | None
) -> MessageTemplate:
    """A template from its pieces: static bytes, and ints naming the value of each hole
    (`fill_message`'s To address, subscriber id or unsubscribe URL)."""
    chunks: list[bytes] = [b""]
    slots: list[int] = []
    for piece in pieces:
        if isinstance(piece, int):
            slots.append(piece)
            chunks.append(b"")
        else:
            chunks[-1] += piece
    return MessageTemplate(
        lang=lang,
        digest_day=digest_day,
        chunks=tuple(chunks),
        slots=tuple(slots),
        dkim=dkim,
        canonical=_canonical_chunks(chunks),
        line_starts=tuple(n for n, chunk in enumerate(chunks[:-1]) if chunk.endswith(b"\n")),
    )


def _canonical_chunks(chunks: list[bytes]) -> bool:
    """Whether the chunks, joined by values without CR or LF, keep CRLF line ends only, end in
    CRLF and begin no line with '.' (holes that begin a line are checked per value)."""
    if not chunks[0] or chunks[0].startswith(b".") or not chunks[-1].endswith(b"\r\n"):
        return False
    # An empty chunk between two holes would let a value begin a line after another value.
    if any(not chunk for chunk in chunks[1:-1]):
        return False
    return all(
        chunk.count(b"\r\n") == chunk.count(b"\n") == chunk.count(b"\r") and b"\n." not in chunk
        for chunk in chunks
    )


def fill_message(
    template: MessageTemplate, *, to: str, subscriber_id: int, unsubscribe_url: str
) -> bytes:
    """Return one recipient's message bytes (CRLF line ends), DKIM-signed if the template says.

    `to` must be a checked address (store.subscribers.normalize_email) and the
    URL made of URL characters: both go into headers as they are.
    """
    if "\r" in to or "\n" in to or not to.isascii():
        raise ValueError(f"recipient {to!r} is not a checked ASCII address")
    if not _URL_SAFE.fullmatch(unsubscribe_url):
        raise ValueError(f"unsubscribe URL {unsubscribe_url!r} holds unsafe characters")
    values = (to.encode("ascii"), str(subscriber_id).encode("ascii"), unsubscribe_url.encode())
    chunks, slots = template.chunks, template.slots
    parts = [chunks[0]]
    for slot, chunk in zip(slots, chunks[1:], strict=True):
        parts.append(values[slot])
        parts.append(chunk)
    message = b"".join(parts)
    if template.dkim is not None:
        return sign_message(message, template.dkim)
    if template.canonical and all(
        values[template.slots[n]][:1] not in (b"", b".") for n in template.line_starts
    ):
        return Canonical(message)
    return message


def sign_message(message: bytes, key: DkimKey) -> bytes:
    """Prepend a DKIM-Signature (relaxed/relaxed, rsa-sha256) over DKIM_HEADERS present."""
    import dkim  # imported here: only operators who configure DKIM pay for it

    present = [h for h in DKIM_HEADERS if re.search(rb"(?im)^" + re.escape(h) + rb":", message)]
    try:
        signature = dkim.sign(
            message,
            key.selector.encode("ascii"),
            key.domain.encode("ascii"),
            key.private_key,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=present,
        )
    except dkim.DKIMException as exc:
        raise ConfigError(
            f"DKIM signing with selector {key.selector!r} of {key.domain!r} failed: {exc}.",
            key="dkim.key_file",
            hint="Check that dkim.key_file holds the PEM private key.",
        ) from exc
    return bytes(signature) + message


def build_confirmation_message(
    rendered: Rendered,
    *,
    info: MailInfo,
    to: str,
    now: datetime,
    dkim: DkimKey | None = None,
) -> bytes:
    """Return the double opt-in confirmation mail for `to` as bytes (7bit, quoted-printable).

    The Message-ID is derived from the address and the time, so it is
    deterministic for a given sign-up.
    """
    if "\r" in to or "\n" in to or not to.isascii():
        raise ValueError(f"recipient {to!r} is not a checked ASCII address")
    msg = _common_message(rendered, info=info, now=now, html_cte="quoted-printable")
    tag = hashlib.sha256(f"{to}\x00{now.isoformat()}".encode()).hexdigest()[:20]
    msg["To"] = to
    msg["Message-ID"] = f"<confirm.{tag}@{message_domain(info=info)}>"
    msg["Auto-Submitted"] = "auto-generated"
    message = _text_headers(rendered, info) + msg.as_bytes()
    return sign_message(message, dkim) if dkim is not None else message

"""The send loop's own DATA bytes (`transports.wire_data`) are aiosmtplib's, byte for byte."""

from __future__ import annotations

from datetime import UTC, date, datetime

from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from hypothesis import given
from hypothesis import strategies as st

from syndicate.digest import RenderedEmail
from syndicate.mail import (
    Canonical,
    MailInfo,
    build_digest_template,
    compile_template,
    fill_message,
)
from syndicate.send.transports import wire_data

MARKER = "https://marker.syndicate.invalid/unsubscribe?token=MARKER-abc123"


def _aiosmtplib(message: bytes) -> bytes:
    return PERIOD_REGEX.sub(b"..", normalize_message_line_endings(message)) + b".\r\n"


@given(st.lists(st.sampled_from([b"\r\n", b"\n", b"\r", b".", b"..", b"a", b"\xc3\xa1 "])))
def test_wire_data_is_what_aiosmtplib_sends(parts: list[bytes]) -> None:
    message = b"".join(parts)
    assert wire_data(message) == _aiosmtplib(message)


def test_wire_data_on_a_built_message() -> None:
    message = b"Subject: x\r\n\r\n.leading dot\r\nbody\r\n..two\r\nend"
    assert wire_data(message) == _aiosmtplib(message)
    assert wire_data(message).endswith(b"end\r\n.\r\n")


# Templates cut from random bytes: line ends of every kind, dots where lines begin; the
# holes all take the unsubscribe URL (slot 2), which may itself begin with a dot.
_PIECES = st.sampled_from([b"\r\n", b"\n", b"\r", b".", b"..", b"a", b"\xc3\xa1 ", b"\r\n."])
_URLS = st.sampled_from(["https://x.org/u?t=1", ".dot", "7", "..x"])


@given(st.lists(st.lists(_PIECES, max_size=6).map(b"".join), min_size=1, max_size=5), _URLS)
def test_a_canonical_message_is_sent_as_it_is(chunks: list[bytes], url: str) -> None:
    """What `fill_message` marks `Canonical` is what the full pass over it would send."""
    pieces: list[bytes | int] = [chunks[0]]
    for chunk in chunks[1:]:
        pieces += [2, chunk]
    template = compile_template(pieces, lang="vi", digest_day=date(2026, 12, 6), dkim=None)
    filled = fill_message(template, to="a@x.org", subscriber_id=1, unsubscribe_url=url)
    message = url.encode().join(chunks)
    assert bytes(filled) == message
    assert wire_data(filled) == _aiosmtplib(message)


def test_a_built_digest_is_canonical() -> None:
    """The real digest template gives `Canonical` messages, so the send loop skips the pass."""
    rendered = RenderedEmail(
        lang="vi",
        subject="Tin mới",
        preheader="Tin trong ngày",
        html=f'<!doctype html><html><body><p>Chấm.</p>\n<a href="{MARKER}">x</a>\n</body></html>\n',
        text=f"Tin mới\nChấm.\n\nHủy:\n{MARKER}\n",
    )
    info = MailInfo(
        sender="Tin <news@example.org>",
        reply_to="",
        list_id="",
        bounce_address="",
        mailto_unsubscribe="",
        site_title="Tin",
        base_url="https://news.example.org/",
    )
    template = build_digest_template(
        rendered,
        info=info,
        digest_day=date(2026, 12, 6),
        marker=MARKER,
        now=datetime(2026, 12, 6, 6, tzinfo=UTC),
        message_key="5eed0f1c2a3b",
    )
    message = fill_message(
        template, to="an@example.org", subscriber_id=7, unsubscribe_url="https://x.org/u?t=1"
    )
    assert isinstance(message, Canonical)
    assert wire_data(message) == _aiosmtplib(bytes(message))

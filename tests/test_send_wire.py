"""The send loop's own DATA bytes (`transports.wire_data`) are aiosmtplib's, byte for byte."""

from __future__ import annotations

from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from hypothesis import given
from hypothesis import strategies as st

from syndicate.send.transports import wire_data


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

"""Tokens: sign and verify confirm and unsubscribe tokens. Pure: the secret and clock come in.

A token is url-safe base64 (no padding) of a 14-byte payload and a 16-byte
HMAC-SHA256 tag over the purpose and the payload. The payload holds a version,
the purpose code, the subscriber id and the issue time; never the address.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
from datetime import UTC, datetime, timedelta

from syndicate.errors import TokenError

PURPOSES = ("confirm", "unsubscribe")
_VERSION = 1
_PAYLOAD = struct.Struct(">BBQI")  # version, purpose code, subscriber id, issued (unix s)
_TAG_BYTES = 16
_TOKEN_BYTES = _PAYLOAD.size + _TAG_BYTES
# A token issued this far in the future still passes: clocks of two hosts drift.
_CLOCK_SKEW = timedelta(minutes=5)


def _purpose_code(purpose: str) -> int:
    try:
        return PURPOSES.index(purpose) + 1
    except ValueError:
        raise ValueError(f"unknown token purpose {purpose!r}") from None


def _tag(secret: bytes, payload: bytes) -> bytes:
    # The domain prefix keeps these tags apart from any other HMAC made with the same secret.
    return hmac.new(secret, b"syndicate-token\x00" + payload, hashlib.sha256).digest()[:_TAG_BYTES]


def make_token(secret: bytes, *, purpose: str, subscriber_id: int, issued_at: datetime) -> str:
    """Return a signed, url-safe token for `purpose` ('confirm' or 'unsubscribe')."""
    if not secret:
        raise ValueError("an empty secret cannot sign tokens")
    if issued_at.tzinfo is None:
        raise ValueError("issued_at must be timezone-aware")
    payload = _PAYLOAD.pack(
        _VERSION, _purpose_code(purpose), subscriber_id, int(issued_at.timestamp())
    )
    raw = payload + _tag(secret, payload)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def verify_token(
    secret: bytes,
    token: str,
    *,
    purpose: str,
    now: datetime,
    max_age: timedelta | None = None,
) -> int:
    """Return the subscriber id a valid token was made for.

    Raises TokenError when the token is malformed, altered, made for another
    purpose, or older than `max_age` (None: never expires). The tag is
    compared in constant time.
    """
    code = _purpose_code(purpose)
    text = token.strip()
    if not text or len(text) > 64 or not text.isascii():
        raise TokenError(f"{purpose} token: the token is malformed. Use the link from the email.")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise TokenError(
            f"{purpose} token: the token is malformed. Use the link from the email."
        ) from None
    # urlsafe_b64decode skips stray characters; only the canonical spelling is accepted,
    # so one token has exactly one valid form.
    canonical = base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
    if len(raw) != _TOKEN_BYTES or canonical != text:
        raise TokenError(f"{purpose} token: the token is malformed. Use the link from the email.")
    payload, tag = raw[: _PAYLOAD.size], raw[_PAYLOAD.size :]
    if not hmac.compare_digest(tag, _tag(secret, payload)):
        raise TokenError(
            f"{purpose} token: the signature does not match (altered, or signed with "
            "another secret). Use the link from the email."
        )
    version, token_code, subscriber_id, issued = _PAYLOAD.unpack(payload)
    if version != _VERSION or token_code != code:
        raise TokenError(f"{purpose} token: the token was made for another purpose.")
    issued_at = datetime.fromtimestamp(issued, tz=UTC)
    if issued_at > now + _CLOCK_SKEW:
        raise TokenError(f"{purpose} token: the token is dated in the future.")
    if max_age is not None and now - issued_at > max_age:
        raise TokenError(
            f"{purpose} token: the token has expired (issued {issued_at:%Y-%m-%d %H:%M} UTC).",
            hint="Ask for a new one.",
        )
    return int(subscriber_id)

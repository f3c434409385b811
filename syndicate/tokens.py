"""Tokens: sign and verify confirm, unsubscribe and return-path tokens. Pure: no I/O.

A token is url-safe base64 (no padding) of a 30-byte payload and a 16-byte
HMAC-SHA256 tag over the purpose and the payload. The payload holds a version,
the purpose code, the subscriber id, the issue time and the subscriber's
token nonce; never the address. The nonce is random per subscriber and dies
with them (`erase`), so a saved link can act on nobody else, even on a
database where an id was used twice.

Return-path tokens (`make_return_token`) go into the local part of a VERP
envelope sender, `bounces+<token>@domain`, so they are lower-case base32
(some MTAs lower-case local parts) and short: a kind byte (1 a digest, 2 a
confirmation mail), the subscriber id and the digest day (a confirmation's:
the day it was sent), then a 10-byte tag over those and the subscriber's
nonce. The nonce is not carried: the reader looks the subscriber up and
checks the tag with theirs, so a token dies with its subscriber too.

Version 1 tokens (no nonce, 14-byte payload) are still read: they sit in mails
sent before nonces existed. They count only for a subscriber stored at or before
their issue time, so a link made for an erased subscriber never acts on a later
one who got the same id.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from syndicate.errors import ClockError, ExpiredTokenError, StaleTokenError, TokenError
from syndicate.model import Subscriber

PURPOSES = ("confirm", "unsubscribe")
NONCE_BYTES = 16
_VERSION = 2
_LEGACY_VERSION = 1
# version, purpose code, subscriber id, issued (unix s), the subscriber's token nonce
_PAYLOAD = struct.Struct(f">BBQI{NONCE_BYTES}s")
_LEGACY_PAYLOAD = struct.Struct(">BBQI")  # version 1: no nonce
_TAG_BYTES = 16
_TOKEN_BYTES = _PAYLOAD.size + _TAG_BYTES
_LEGACY_TOKEN_BYTES = _LEGACY_PAYLOAD.size + _TAG_BYTES
_MAX_TEXT = 64  # a version 2 token is 62 characters
# A run of a token that SpamAssassin's __BITCOIN_ID (72_active.cf) takes for a Bitcoin
# address where the token stands in a mail's text: a word (in a url-safe base64 token, one
# that opens the token or follows a "-") of "1" or "3" and 29-34 base58 characters, or of
# "bc1" and 30-90 bech32 ones, that ends the token or a "-".
_BITCOIN_LOOKALIKE = re.compile(
    rb"(?:^|(?<=-))(?:[13][1-9A-HJ-NP-Za-km-z]{29,34}|bc1[ac-hj-np-z02-9]{30,90})(?=-|$)"
)
_LOOKALIKE_TRIES = 16  # each a fresh token: one in 4,400 looks alike, 16 in a row never do
# A version 1 token issued this far in the future still passes: clocks of two hosts drift.
_CLOCK_SKEW = timedelta(minutes=5)
# The times a token can carry: an unsigned 32-bit count of seconds from 1970, less the
# tries above, which may date it a few seconds later (the last: 2106-02-07 06:27:59 UTC).
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LAST_TOKEN_TIME = datetime.fromtimestamp(2**32 - 1 - _LOOKALIKE_TRIES, UTC)


@dataclass(frozen=True, slots=True)
class TokenClaim:
    """What a token with a good signature says: whom it was made for, and when."""

    subscriber_id: int
    issued_at: datetime
    nonce: bytes | None  # None: a version 1 token, made before nonces


def _purpose_code(purpose: str) -> int:
    try:
        return PURPOSES.index(purpose) + 1
    except ValueError:
        raise ValueError(f"unknown token purpose {purpose!r}") from None


def _tag(secret: bytes, payload: bytes) -> bytes:
    # The domain prefix keeps these tags apart from any other HMAC made with the same secret.
    keyed = _keyed(secret).copy()
    keyed.update(payload)
    return keyed.digest()[:_TAG_BYTES]


@functools.lru_cache(maxsize=8)
def _keyed(secret: bytes) -> hmac.HMAC:
    # Keyed once per secret (the send loop signs a token per message); the same tag as
    # hmac.new(secret, b"syndicate-token\x00" + payload, sha256).
    return hmac.new(secret, b"syndicate-token\x00", hashlib.sha256)


def make_token(
    secret: bytes, *, purpose: str, subscriber_id: int, nonce: bytes, issued_at: datetime
) -> str:
    """Return a signed, url-safe token for `purpose` ('confirm' or 'unsubscribe').

    `nonce` is the subscriber's token nonce (NONCE_BYTES random bytes stored with them).
    Raises ClockError when `issued_at` is before 1970 or after LAST_TOKEN_TIME: only a
    clock far off dates a mail there.
    """
    if not secret:
        raise ValueError("an empty secret cannot sign tokens")
    if issued_at.tzinfo is None:
        raise ValueError("issued_at must be timezone-aware")
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"a token nonce has {NONCE_BYTES} bytes, not {len(nonce)}")
    if not _EPOCH <= issued_at <= LAST_TOKEN_TIME:
        raise ClockError(
            f"token: the time {issued_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC is outside "
            f"1970-01-01..{LAST_TOKEN_TIME:%Y-%m-%d %H:%M} UTC, the times a token can "
            "carry: this machine's clock is wrong. Set it (NTP)."
        )
    issued = int(issued_at.timestamp())
    # About one token in 4,400 holds a run that spam filters read as a Bitcoin address
    # (SpamAssassin's PDS_BTC_ID, 1 point), and its message is scored as if it asked for a
    # ransom. Dated a second later it is another token: the first of those without one.
    for later in range(_LOOKALIKE_TRIES):
        payload = _PAYLOAD.pack(
            _VERSION, _purpose_code(purpose), subscriber_id, issued + later, nonce
        )
        token = base64.urlsafe_b64encode(payload + _tag(secret, payload)).rstrip(b"=")
        if _BITCOIN_LOOKALIKE.search(token) is None:
            break
    return token.decode("ascii")


def read_token(
    secret: bytes,
    token: str,
    *,
    purpose: str,
    now: datetime,
    max_age: timedelta | None = None,
) -> TokenClaim:
    """Return what a token with a good signature claims, without asking who owns it.

    Raises TokenError when the token is malformed, altered or made for another
    purpose, and ExpiredTokenError (a TokenError) when it is older than `max_age`
    (None: never expires). The tag is
    compared in constant time. Only `verify_token` says whether the
    subscriber it names is still the one it was made for.
    """
    code = _purpose_code(purpose)
    malformed = f"{purpose} token: the token is malformed."
    text = token.strip()
    if not text or len(text) > _MAX_TEXT or not text.isascii():
        raise TokenError(malformed)
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise TokenError(malformed) from None
    # urlsafe_b64decode skips stray characters; only the canonical spelling is accepted,
    # so one token has exactly one valid form.
    canonical = base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
    if len(raw) not in (_TOKEN_BYTES, _LEGACY_TOKEN_BYTES) or canonical != text:
        raise TokenError(malformed)
    payload, tag = raw[:-_TAG_BYTES], raw[-_TAG_BYTES:]
    if not hmac.compare_digest(tag, _tag(secret, payload)):
        raise TokenError(
            f"{purpose} token: the signature does not match (altered, or signed with "
            "another secret)."
        )
    nonce: bytes | None
    if len(payload) == _PAYLOAD.size:
        version, token_code, subscriber_id, issued, nonce = _PAYLOAD.unpack(payload)
        expected = _VERSION
    else:
        version, token_code, subscriber_id, issued = _LEGACY_PAYLOAD.unpack(payload)
        nonce, expected = None, _LEGACY_VERSION
    if version != expected or token_code != code:
        raise TokenError(f"{purpose} token: the token was made for another purpose.")
    issued_at = datetime.fromtimestamp(issued, tz=UTC)
    # A future date (the clock that made the token ran ahead, or this one was set back since)
    # is refused only where it matters: a version 1 token (its owner is found by time) past
    # a drift, any token dated further ahead than it may live. A link mailed by a machine
    # whose clock ran an hour ahead must work at once: its reader cannot wait for the clocks.
    if (nonce is None and issued_at > now + _CLOCK_SKEW) or (
        max_age is not None and issued_at - now > max_age
    ):
        raise TokenError(f"{purpose} token: the token is dated in the future.")
    if max_age is not None and now - issued_at > max_age:
        raise ExpiredTokenError(
            f"{purpose} token: the token has expired (issued {issued_at:%Y-%m-%d %H:%M} UTC).",
            hint="Ask for a new one.",
        )
    return TokenClaim(int(subscriber_id), issued_at, nonce)


_TOKEN_TEXT = -(-_TOKEN_BYTES * 4 // 3)  # a version 2 token's characters: 62
_LEGACY_TOKEN_TEXT = -(-_LEGACY_TOKEN_BYTES * 4 // 3)  # version 1: 40
_TOKEN_CHARACTERS = re.compile(r"[A-Za-z0-9_-]+")


def looks_cut(token: str) -> bool:
    """Tell whether a token `read_token` refused looks like the start of one: url-safe
    base64 characters only, fewer than a token has (a link a mail client's line wrap or
    a reader's copy cut short)."""
    text = token.strip()
    if _TOKEN_CHARACTERS.fullmatch(text) is None or len(text) >= _TOKEN_TEXT:
        return False
    if len(text) != _LEGACY_TOKEN_TEXT:
        return True
    # As long as a version 1 token (where a line wrap cuts every link of a site whose URL
    # before the token leaves 40 characters): the start of a version 2 token if its first
    # byte says so, else an altered version 1 token.
    return base64.urlsafe_b64decode(text)[0] == _VERSION


def is_owner(claim: TokenClaim, subscriber: Subscriber) -> bool:
    """Tell whether `subscriber` is the one the token was made for.

    Version 2: the nonces match (compared in constant time). Version 1 (no
    nonce): the subscriber was stored at or before the token's issue time; a
    later subscriber with a reused id was not.
    """
    if subscriber.id != claim.subscriber_id:
        return False
    if claim.nonce is None:
        return subscriber.created_at <= claim.issued_at
    return hmac.compare_digest(claim.nonce, subscriber.token_nonce)


def verify_token(
    secret: bytes,
    token: str,
    *,
    purpose: str,
    now: datetime,
    find: Callable[[int], Subscriber | None],
    max_age: timedelta | None = None,
) -> Subscriber:
    """Return the subscriber a valid token was made for; `find` looks a subscriber up by id.

    Raises TokenError as `read_token` does, and StaleTokenError (a TokenError)
    when the signature is good but the subscriber it was made for is gone
    (erased, or another database): nothing may be done with such a token.
    """
    claim = read_token(secret, token, purpose=purpose, now=now, max_age=max_age)
    found = find(claim.subscriber_id)
    if found is None or not is_owner(claim, found):
        raise StaleTokenError(
            f"{purpose} token: the subscriber it was made for no longer exists (erased).",
            hint="Nothing was changed.",
        )
    return found


_RETURN_VERSION = 1  # a digest's
_CONFIRM_RETURN_VERSION = 2  # a confirmation mail's: its bounce counts toward no digest
# kind (version), subscriber id, digest day (days since RETURN_EPOCH)
_RETURN_PAYLOAD = struct.Struct(">BQH")
_RETURN_TAG_BYTES = 10  # 80 bits: a forged bounce must guess it, and gets one try per mail
# The first day a return path can name; a digest's day is never before it (send.digests).
RETURN_EPOCH = date(2000, 1, 1)
# The last: the day is an unsigned 16-bit count of days from RETURN_EPOCH (2179-06-06).
RETURN_LAST = RETURN_EPOCH + timedelta(days=2**16 - 1)
_RETURN_BYTES = _RETURN_PAYLOAD.size + _RETURN_TAG_BYTES
RETURN_TOKEN_LENGTH = -(-_RETURN_BYTES * 8 // 5)  # base32 characters, no padding: 34
_BASE32 = frozenset("abcdefghijklmnopqrstuvwxyz234567")
_MAX_ID = 2**63 - 1  # the largest id SQLite and PostgreSQL (bigint) can store


def _return_tag(secret: bytes, payload: bytes, nonce: bytes) -> bytes:
    message = b"syndicate-return\x00" + payload + nonce
    return hmac.new(secret, message, hashlib.sha256).digest()[:_RETURN_TAG_BYTES]


def _b32(raw: bytes) -> str:
    # Lower-case base32 without padding: the return-path token's one spelling.
    return base64.b32encode(raw).decode("ascii").rstrip("=").lower()


def make_return_token(
    secret: bytes, *, subscriber_id: int, nonce: bytes, day: date, confirmation: bool = False
) -> str:
    """Return the lower-case base32 token naming a subscriber and a digest day, for VERP.

    With `confirmation`, the token of a confirmation mail sent on `day` instead. Raises
    ClockError for a day outside RETURN_EPOCH..RETURN_LAST: only a clock never set (1970)
    or far off dates a mail there.
    """
    if not secret:
        raise ValueError("an empty secret cannot sign tokens")
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"a token nonce has {NONCE_BYTES} bytes, not {len(nonce)}")
    if not RETURN_EPOCH <= day <= RETURN_LAST:
        raise ClockError(
            f"return-path token: the day {day.isoformat()} is outside "
            f"{RETURN_EPOCH.isoformat()}..{RETURN_LAST.isoformat()}, the days a return path "
            "can name: this machine's clock is wrong. Set it (NTP)."
        )
    version = _CONFIRM_RETURN_VERSION if confirmation else _RETURN_VERSION
    payload = _RETURN_PAYLOAD.pack(version, subscriber_id, (day - RETURN_EPOCH).days)
    return _b32(payload + _return_tag(secret, payload, nonce))


@dataclass(frozen=True, slots=True)
class ReturnClaim:
    """What a verified return-path token names: the subscriber and the digest day (for a
    confirmation mail's token, the day it was sent)."""

    subscriber: Subscriber
    day: date
    confirmation: bool = False  # a confirmation mail's token, not a digest's


def verify_return_token(
    secret: bytes, token: str, *, find: Callable[[int], Subscriber | None]
) -> ReturnClaim:
    """Return the subscriber and digest day a return-path token was made for.

    Case does not matter. Raises TokenError when the token is malformed or its
    tag does not match the subscriber it names (forged, altered, another
    secret), and StaleTokenError when that subscriber is gone.
    """
    text = token.strip().lower()
    if len(text) != RETURN_TOKEN_LENGTH or not set(text) <= _BASE32:
        raise TokenError("return-path token: the token is malformed.")
    padded = text.upper() + "=" * (-len(text) % 8)
    try:
        raw = base64.b32decode(padded)
    except (binascii.Error, ValueError):
        raise TokenError("return-path token: the token is malformed.") from None
    if len(raw) != _RETURN_BYTES or _b32(raw) != text:
        raise TokenError("return-path token: the token is malformed.")
    payload, tag = raw[: _RETURN_PAYLOAD.size], raw[_RETURN_PAYLOAD.size :]
    version, subscriber_id, days = _RETURN_PAYLOAD.unpack(payload)
    if version not in (_RETURN_VERSION, _CONFIRM_RETURN_VERSION):
        raise TokenError("return-path token: the token has an unknown version.")
    if subscriber_id > _MAX_ID:  # looked up before its tag is checked: no id is that big
        raise TokenError("return-path token: the token is malformed.")
    found = find(int(subscriber_id))
    if found is None:
        raise StaleTokenError(
            "return-path token: the subscriber it was made for no longer exists (erased)."
        )
    if not hmac.compare_digest(tag, _return_tag(secret, payload, found.token_nonce)):
        raise TokenError(
            "return-path token: the signature does not match (forged, altered, or signed "
            "with another secret)."
        )
    return ReturnClaim(
        found, RETURN_EPOCH + timedelta(days=int(days)), version == _CONFIRM_RETURN_VERSION
    )

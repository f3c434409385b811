"""Web: the guards in front of the pages: security headers, body limit, rate limit, CSRF."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import urlsplit

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Request bodies larger than this get 413: a sign-up form is well under 1 KiB.
MAX_BODY_BYTES = 16 * 1024
# How long a sign-up form's anti-forgery token stays valid, and the clock skew allowed.
FORM_TOKEN_HOURS = 12
_FORM_TOKEN_SKEW = 300
# Rate-limiter memory bound: the least recently seen addresses are forgotten first.
_RATE_LIMIT_CLIENTS = 50_000

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    # Confirm and unsubscribe URLs carry tokens: no Referer to other sites. Not
    # "no-referrer": browsers then send `Origin: null`, which defeats the Origin check.
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


class RateLimiter:
    """A token bucket per client address: `per_minute` requests, refilled evenly."""

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, client: str) -> tuple[bool, int]:
        """Take one request from `client`'s bucket: (allowed, seconds to wait if not)."""
        if self.per_minute <= 0:
            return True, 0
        now = self._clock()
        rate = self.per_minute / 60.0
        tokens_left, last = self._buckets.pop(client, (float(self.per_minute), now))
        tokens_left = min(float(self.per_minute), tokens_left + (now - last) * rate)
        allowed = tokens_left >= 1.0
        if allowed:
            tokens_left -= 1.0
        self._buckets[client] = (tokens_left, now)
        while len(self._buckets) > _RATE_LIMIT_CLIENTS:
            self._buckets.popitem(last=False)
        return allowed, 0 if allowed else math.ceil((1.0 - tokens_left) / rate)


def rate_limit_key(client: str) -> str:
    """The rate limiter's key for a client address: the address, or its /64 for IPv6.

    One IPv6 host usually holds a whole /64 (SLAAC, privacy addresses), so a per-address
    limit would give it 2**64 allowances. An IPv4-mapped address counts as the IPv4 one.
    """
    try:
        address = ipaddress.ip_address(client.split("%", 1)[0])
    except ValueError:
        return client
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def make_form_token(secret: bytes, *, now: datetime) -> str:
    """Sign a form token: the issue time and an HMAC of it (anti-forgery, no cookie)."""
    stamp = str(int(now.timestamp()))
    mac = hmac.new(secret, b"syndicate-form:" + stamp.encode(), hashlib.sha256).hexdigest()
    return f"{stamp}.{mac[:32]}"


def check_form_token(secret: bytes, token: str, *, now: datetime) -> bool:
    """True when `token` was made by make_form_token with `secret` and is still fresh."""
    stamp, _, mac = token.partition(".")
    if not stamp.isdigit() or len(stamp) > 12 or len(mac) != 32:
        return False
    expected = make_form_token(secret, now=datetime.fromtimestamp(int(stamp), UTC))
    if not hmac.compare_digest(expected.encode(), token.encode()):
        return False
    age = now.timestamp() - int(stamp)
    return -_FORM_TOKEN_SKEW <= age <= FORM_TOKEN_HOURS * 3600


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


# --- Middleware -------------------------------------------------------------------------


class SecurityHeaders:
    """Adds CSP, nosniff, Referrer-Policy and framing rules to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *_SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyLimit:
    """Refuses request bodies over `limit` bytes with 413, declared or streamed.

    The error is raised from `receive`, inside the endpoint, so the app's own
    error page answers it.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = 0
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = int(value) if value.isdigit() else self.limit + 1
        received = 0

        async def receive_limited() -> Message:
            nonlocal received
            if declared > self.limit:
                raise HTTPException(413)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise HTTPException(413)
            return message

        await self.app(scope, receive_limited, send)

"""Web: the guards in front of the pages: security headers, body limit, rate limit, CSRF."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, urlsplit

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from syndicate.i18n import LANGUAGES

# Request bodies larger than this get 413: a sign-up form is well under 1 KiB.
MAX_BODY_BYTES = 16 * 1024
# How long a sign-up form's anti-forgery token stays valid, and the clock skew allowed.
FORM_TOKEN_HOURS = 12
_FORM_TOKEN_SKEW = 300
# The cookie a form token is bound to (a double submit): a random value the token signs, so
# a token is good only from the browser (or client) that fetched the form. HttpOnly,
# SameSite=Strict (never sent with a request another site, a sandboxed frame or a data:
# URL makes), Secure under an https site.base_url, Path the form's own.
FORM_COOKIE = "syndicate_form"
_FORM_COOKIE_VALUE = re.compile(r"[A-Za-z0-9_-]{22}")

# Characters a browser sends raw in a URL path, which a cookie's Path must hold raw too (RFC
# 6265 compares the two as strings): the rest of printable ASCII, and non-ASCII text, every
# browser percent-encodes (WHATWG URL's path percent-encode set). '%' is kept as written.
_PATH_RAW = "/%!$&'()*+,-.:=@[]_~"
# Characters on which they differ ('|' and '^': Chromium encodes them, the URL standard and
# Firefox do not), and ';', which would end the Path attribute: the Path stops at the folder
# before the first of them, and so still covers the form.
_PATH_CUT = re.compile(r"[;|^]")

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


async def read_form(request: Request) -> FormData:
    """The request's form: no files, a few fields, no part over the body limit."""
    return await request.form(max_files=0, max_fields=10, max_part_size=MAX_BODY_BYTES)


# A link's token followed by characters no token has: the punctuation of the sentence the
# link was quoted in ("... open <link>." or "(<link>)"), which mail clients, chat apps and
# readers copying by hand carry into the URL.
_TOKEN_THEN_PUNCTUATION = re.compile(r"\s*([A-Za-z0-9_-]+)[^A-Za-z0-9_-]+")


async def link_token(request: Request) -> str:
    """The token of a confirm or unsubscribe link: in the URL, else (on POST) in the form.

    Characters after the token that no token has (a full stop, a closing bracket or quote,
    spaces) are dropped, so a link quoted in a sentence still works; anything else is
    returned as it came, for the token check to refuse.
    A POST's body is read even when the token is in the URL, so that the body limit (413)
    holds here as everywhere; a one-click unsubscribe's body is a few bytes.
    """
    token = request.query_params.get("token", "")
    if request.method == "POST":
        await request.body()
        if not token:
            token = str((await read_form(request)).get("token") or "")
    quoted = _TOKEN_THEN_PUNCTUATION.fullmatch(token)
    return quoted.group(1) if quoted else token


# A link's language (`&lang=`, the end of a confirm link) followed by the punctuation of a
# sentence it was quoted in: since the token is no longer last, that lands on the language.
_LANGUAGE_THEN_PUNCTUATION = re.compile(r"\s*([a-z]+)[^A-Za-z0-9_-]*")


def link_language(request: Request) -> str | None:
    """The language a link's `lang` names, less the punctuation of a sentence the link was
    quoted in (as `link_token` drops it after a token); None when it names none."""
    quoted = _LANGUAGE_THEN_PUNCTUATION.fullmatch(request.query_params.get("lang", ""))
    return quoted.group(1) if quoted and quoted.group(1) in LANGUAGES else None


def with_link_language(url: str, lang: str | None) -> str:
    """`url` (Service.url's, which leaves out the site's language) with the language a link
    named (`link_language`), when it named one: a page's button keeps it for the next page."""
    if lang is None or "lang=" in url.partition("?")[2]:
        return url
    return f"{url}&lang={lang}"


# The sign-up rate limit's window: `subscribe.rate_limit` requests per minute.
RATE_WINDOW = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class RateWindow:
    """The rate limit's window `now` falls in: its start, the one before, seconds into it."""

    start: datetime
    previous: datetime
    elapsed: float

    @classmethod
    def at(cls, now: datetime) -> RateWindow:
        seconds = RATE_WINDOW.total_seconds()
        stamp = now.timestamp()
        start = datetime.fromtimestamp(stamp - stamp % seconds, UTC)
        return cls(start=start, previous=start - RATE_WINDOW, elapsed=stamp % seconds)


def rate_decision(
    per_minute: int, *, previous: int, current: int, elapsed: float
) -> tuple[bool, int]:
    """(allowed, seconds to wait if not) for a network's counts, this request included.

    A sliding window: the previous minute's count weighs what is left of it, so a burst
    across the turn of a minute is no double allowance. Refused requests count too: a
    client that keeps trying stays refused until it slows down.
    """
    window = RATE_WINDOW.total_seconds()
    if previous * (1 - elapsed / window) + current <= per_minute:
        return True, 0
    # When one more request would be allowed, if none came meanwhile.
    if current + 1 <= per_minute and previous > 0:
        wait = window * (1 - (per_minute - current - 1) / previous) - elapsed
        if wait < window - elapsed:
            return False, _whole_seconds(wait)
    into_next = window * (1 - (per_minute - 1) / current) if current > per_minute - 1 else 0.0
    return False, _whole_seconds(window - elapsed + into_next)


def _whole_seconds(seconds: float) -> int:
    # Rounded up (a retry a moment early is refused), but not over float noise: 21.0000001 is 21.
    return max(1, math.ceil(round(seconds, 6)))


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


def form_binding(request: Request) -> str:
    """The value of the request's form cookie, or "" when it has none (or a malformed one)."""
    value = request.cookies.get(FORM_COOKIE, "")
    return value if _FORM_COOKIE_VALUE.fullmatch(value) else ""


def form_cookie_path(base_path: str) -> str:
    """The form cookie's Path: the form's path (`base_path` + "subscribe") as browsers ask
    for it, so they send the cookie back with the form's POST.

    Non-ASCII text and what browsers percent-encode is encoded as they do (a header carries
    latin-1 only); `[`, `]` and the like stay as browsers send them. From a ';', '|' or '^'
    on, which no Path can match in every browser, the Path is the folder before it.
    """
    path = f"{base_path}subscribe".replace("\\", "/")  # browsers read a backslash as '/'
    cut = _PATH_CUT.search(path)
    if cut is not None:
        path = path[: path.rfind("/", 0, cut.start()) + 1]
    return quote(path, safe=_PATH_RAW)


def new_form_binding() -> str:
    """A new random value for the form cookie (128 bits)."""
    return secrets.token_urlsafe(16)


def _form_mac(secret: bytes, stamp: str, binding: str) -> str:
    message = b"syndicate-form:" + stamp.encode() + b":" + binding.encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()[:32]


def make_form_token(secret: bytes, *, binding: str, now: datetime) -> str:
    """Sign a form token: the issue time and an HMAC of it and the form cookie's value."""
    stamp = str(int(now.timestamp()))
    return f"{stamp}.{_form_mac(secret, stamp, binding)}"


def check_form_token(secret: bytes, token: str, *, binding: str, now: datetime) -> bool:
    """True when `token` was made by make_form_token with `secret` for the cookie value
    `binding` (the request's own, form_binding) and is still fresh."""
    if not _FORM_COOKIE_VALUE.fullmatch(binding):
        return False
    stamp, _, mac = token.partition(".")
    # ASCII digits: "²" is a digit to str.isdigit, not to int. The stamp is signed as it
    # stands, never made a datetime first (one past year 9999 raised ValueError).
    if not (stamp.isascii() and stamp.isdigit()) or len(stamp) > 12 or len(mac) != 32:
        return False
    if not hmac.compare_digest(_form_mac(secret, stamp, binding).encode(), mac.encode()):
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

"""Every public URL, from base_url: article pages, feeds, unsubscribe and confirm links.

Pure. `base_url` ends in '/' (config.base_url makes it so); the feed file names live
here once, so the build that writes the feeds and every link to them agree.
"""

from __future__ import annotations

import functools
from datetime import date
from typing import Literal
from urllib.parse import quote, urlsplit

from syndicate.errors import ConfigError

FeedKind = Literal["rss", "atom", "json"]

# The feed files in the output folder, and their media types, by kind.
FEED_FILES: dict[str, str] = {"rss": "rss.xml", "atom": "atom.xml", "json": "feed.json"}
# The "view in browser" pages of the digests, under the output folder.
DIGESTS_FOLDER = "digests"
# Stands in for a token in previews: no real token is ever made for them.
PREVIEW_TOKEN = "PREVIEW-SAMPLE-TOKEN"  # noqa: S105
FEED_TYPES: dict[str, str] = {
    "rss": "application/rss+xml",
    "atom": "application/atom+xml",
    "json": "application/feed+json",
}


def article_path(slug: str) -> str:
    """The output path of an article page, relative to the output folder."""
    return f"articles/{slug}.html"


def page_slug(path: str) -> str | None:
    """The slug of an article page's `article_path`, or None when `path` is not one."""
    if path.startswith("articles/") and path.endswith(".html"):
        return path.removeprefix("articles/").removesuffix(".html") or None
    return None


def article_url(base_url: str, slug: str) -> str:
    """The absolute URL of an article page."""
    if not base_url.endswith("/"):
        base_url += "/"
    return base_url + article_path(slug)


def digest_page_path(day: date, lang: str | None = None) -> str:
    """The output path of a day's "view in browser" digest page, relative to the output folder:
    `digests/<day>.html` in the site's language, `digests/<day>.<lang>.html` in another."""
    suffix = f".{lang}" if lang else ""
    return f"{DIGESTS_FOLDER}/{day.isoformat()}{suffix}.html"


def digest_view_url(base_url: str, day: date, lang: str | None = None) -> str:
    """The public URL of a day's "view in browser" digest page (see `digest_page_path`)."""
    return base_url + digest_page_path(day, lang)


def feed_url(base_url: str, kind: FeedKind) -> str:
    """The absolute URL of the feed of `kind`."""
    return base_url + FEED_FILES[kind]


def ascii_host(host: str) -> str:
    """Return `host` as ASCII (an internationalised name in its xn-- form)."""
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        raise ConfigError(
            f"config key site.base_url has a host name {host!r} that is not a valid domain name.",
            key="site.base_url",
            hint="Give the host in ASCII (its xn-- form), like 'https://xn--bo-mia.vn/'.",
        ) from None


@functools.lru_cache(maxsize=16)  # per message in the send loop: one base_url a run
def ascii_base_url(base_url: str) -> str:
    """base_url as ASCII URL characters: IDN host in xn-- form, the rest percent-encoded.

    The result goes verbatim into headers and both message parts, so it may hold
    only characters that neither a header nor HTML escaping would change.
    """
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else ascii_host(host)
    if parts.port is not None:
        netloc += f":{parts.port}"
    path = quote(parts.path, safe="/:@!$()*+,;=~%")
    return f"{parts.scheme}://{netloc}{path}"


def _token_url(base_url: str, endpoint: str, token: str) -> str:
    return f"{base_url}{endpoint}?token={token}"


def link_language(lang: str) -> str:
    """The end of a personal link (`&lang=`, after its token) that names the language of the
    mail it is in: its pages speak that language (web.guard.link_language reads it)."""
    return f"&lang={lang}"


def unsubscribe_url(base_url: str, token: str) -> str:
    """The one-click unsubscribe URL served by the subscription service, up to its token.

    Always ASCII URL characters (an internationalised host in its xn-- form), so
    it can go into the List-Unsubscribe header as it is. A digest's message adds
    `link_language` after it (mail.build_digest_template), the same for every recipient
    of one language, so the per-recipient part stays this.
    """
    return _token_url(ascii_base_url(base_url), "unsubscribe", token)


def unsubscribe_page_url(base_url: str, lang: str) -> str:
    """The unsubscribe page that asks for the address, for pages that carry no personal token,
    in `lang`, the language of the page that links to it (not the browser's)."""
    return f"{base_url}unsubscribe?lang={lang}"


def subscribe_page_url(base_url: str, lang: str) -> str:
    """The sign-up form in `lang`, for a page someone may have been sent (a digest's web copy)."""
    return f"{base_url}subscribe?lang={lang}"


def preview_unsubscribe_url(base_url: str) -> str:
    """A clearly fake unsubscribe link for previews (`base_url` as given, not made ASCII)."""
    return _token_url(base_url, "unsubscribe", PREVIEW_TOKEN)


def confirm_url(base_url: str, token: str, *, lang: str) -> str:
    """The double opt-in confirmation URL served by the subscription service, its pages in
    `lang`, the language the reader chose: after the token, so that a link a line wrap cut
    keeps the whole token longer; an expired link's page needs it, its sign-up may be gone."""
    return _token_url(base_url, "confirm", token) + link_language(lang)

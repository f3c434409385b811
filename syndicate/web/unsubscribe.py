"""Web: the unsubscribe endpoint (the page, the form and RFC 8058 one-click POSTs)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from syndicate import i18n, tokens
from syndicate.errors import SubscriberError, TokenError
from syndicate.model import Subscriber, SubscriptionStatus
from syndicate.web.guard import link_language, link_token, with_link_language

if TYPE_CHECKING:
    from syndicate.web.pages import Service

log = logging.getLogger(__name__)

_STRINGS = i18n.STRINGS["web"]


async def unsubscribe(service: Service, request: Request) -> Response:
    """Ask on GET (link scanners follow GETs); unsubscribe on POST, one-click or the form."""
    token = await link_token(request)
    # The language of the mail whose link this is (`&lang=`, after the token): its pages
    # speak it, whatever the browser's (an unknown one is ignored).
    link_lang = link_language(request)
    lang = link_lang or service.language(request)
    strings = _STRINGS[lang]
    if not token and request.method != "POST":
        # The generic link of the "view in browser" page: explain, change nothing.
        return service.page(
            "unsubscribe.html.j2", lang, title=strings["how_unsubscribe_title"], state="how"
        )
    try:
        # The signature first: a bad link is answered without asking the store.
        tokens.read_token(service.secret, token, purpose="unsubscribe", now=service.clock())
    except TokenError:
        # The start of a link (a line wrap cut it): say to open the whole of it.
        cut = tokens.looks_cut(token)
        return service.page(
            "unsubscribe.html.j2",
            lang,
            title=strings["cut_unsubscribe_title" if cut else "bad_unsubscribe_title"],
            status_code=400,
            state="cut" if cut else "invalid",
        )
    # The subscriber the link was made for (None when erased since): the page speaks the
    # mail's language, else theirs, not the browser's.
    owner: Subscriber | None = None
    stale: TokenError | None = None
    try:
        owner = await service.call_store(
            tokens.verify_token,
            service.secret,
            token,
            purpose="unsubscribe",
            now=service.clock(),
            find=service.store.find,
        )
    except TokenError as exc:
        stale = exc
    lang = link_lang or service.language(request, owner)
    strings = _STRINGS[lang]
    if request.method != "POST":
        if owner is not None and owner.status is SubscriptionStatus.UNSUBSCRIBED:
            # An old digest's link clicked again: they are off the list already.
            return service.page(
                "unsubscribe.html.j2", lang, title=strings["unsubscribed_title"], state="done"
            )
        # Link scanners follow GETs: show the button, change nothing.
        return service.page(
            "unsubscribe.html.j2",
            lang,
            title=strings["unsubscribe_title"],
            state="ask",
            form_action=with_link_language(
                service.url("unsubscribe", lang, token=token), link_lang
            ),
        )
    # The subscriber the link was made for is erased: off the list already, which is
    # what they asked for. Whoever holds their id now (a database from before ids were
    # kept unique) is left alone.
    if owner is None:
        log.info("unsubscribe: %s", stale)
    else:
        try:
            await service.call_store(service.store.unsubscribe, owner.id, now=service.clock())
        except SubscriberError as exc:
            log.info("unsubscribe: %s", exc)
    return service.page(
        "unsubscribe.html.j2", lang, title=strings["unsubscribed_title"], state="done"
    )

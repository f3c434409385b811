"""Web: the confirm endpoint (double opt-in links): a button on GET, the confirmation on POST."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from syndicate import i18n, tokens
from syndicate.errors import ExpiredTokenError, TokenError
from syndicate.model import Subscriber, SubscriptionStatus
from syndicate.web.guard import link_language, link_token, with_link_language

if TYPE_CHECKING:
    from syndicate.web.pages import Service

log = logging.getLogger(__name__)

_STRINGS = i18n.STRINGS["web"]


async def confirm(service: Service, request: Request) -> Response:
    """Ask on GET; confirm on POST the pending subscriber a valid, unexpired link was made for.

    Mail gateways' link scanners (Safe Links and the like) fetch every link in a mail, so
    a GET that confirmed would confirm addresses their owners never saw. The GET only
    checks the link and shows one button, which POSTs back the same token.
    """
    token = await link_token(request)
    # The language of the mail whose link this is: confirming chooses it (the address may
    # have been signed up again since, by anyone, in the other).
    link_lang = link_language(request)
    max_age = timedelta(hours=service.settings.subscribe.confirm_hours)
    now = service.clock()
    subscriber: Subscriber | None
    owner: Subscriber | None = None  # whom an expired link was made for, if still stored
    expired = False
    try:
        # The lookup runs on the reading thread (it only reads, so it never waits
        # behind a sign-up that waits for the write lock): the token must name the
        # very subscriber it was made for (their nonce), not whoever holds the id now.
        subscriber = await _verify(service, token, now=now, max_age=max_age)
    except ExpiredTokenError:
        # Past its hours the sign-up has lapsed (`send` deletes it): say so, so the reader
        # knows that signing up again is all it takes; unless it was confirmed in time (an
        # old mail's link clicked again): that page says so, and nothing changes.
        owner = await _owner(service, token, now=now)
        confirmed = owner is not None and owner.status is SubscriptionStatus.CONFIRMED
        subscriber = owner if confirmed else None
        expired = not confirmed
    except TokenError:
        subscriber = None
        if tokens.looks_cut(token):
            # Cut short by a line wrap: the reader's link is good, the whole of it is
            # needed; signing up again (what the "cannot be used" page says) is not.
            lang = link_lang or service.language(request)
            return service.page(
                "confirm.html.j2",
                lang,
                title=_STRINGS[lang]["cut_confirm_title"],
                status_code=400,
                state="cut",
            )
    # The page speaks the language of the subscriber the link was made for, not the
    # browser's (`?lang=` still wins); an expired link's too, while they are stored.
    lang = link_lang or service.language(request, subscriber or owner)
    strings = _STRINGS[lang]
    if expired:
        return service.page(
            "confirm.html.j2",
            lang,
            title=strings["expired_confirm_title"],
            status_code=400,
            state="expired",
            expired_body=strings["expired_confirm_body"].format(
                hours=service.settings.subscribe.confirm_hours
            ),
        )
    # An old link must not bring back someone who left or bounced since.
    if subscriber is None or subscriber.status not in (
        SubscriptionStatus.PENDING,
        SubscriptionStatus.CONFIRMED,
    ):
        return service.page(
            "confirm.html.j2",
            lang,
            title=strings["bad_confirm_title"],
            status_code=400,
            state="invalid",
        )
    if request.method != "POST" and subscriber.status is SubscriptionStatus.PENDING:
        # Link scanners follow GETs: show the button, change nothing.
        return service.page(
            "confirm.html.j2",
            lang,
            title=strings["confirm_ask_title"],
            state="ask",
            form_action=with_link_language(service.url("confirm", lang, token=token), link_lang),
        )
    if subscriber.status is SubscriptionStatus.PENDING:
        await service.call_store(service.store.confirm, subscriber.id, now=now, language=link_lang)
    return service.page("confirm.html.j2", lang, title=strings["confirmed_title"], state="done")


async def _verify(
    service: Service, token: str, *, now: datetime, max_age: timedelta | None
) -> Subscriber:
    """The subscriber a confirm `token` names; TokenError (ExpiredTokenError past
    `max_age`) when it is not good."""
    return await service.call_reader(
        tokens.verify_token,
        service.secret,
        token,
        purpose="confirm",
        now=now,
        max_age=max_age,
        find=service.store.find,
    )


async def _owner(service: Service, token: str, *, now: datetime) -> Subscriber | None:
    """The subscriber an expired confirm `token` was made for, if still stored, else None."""
    try:
        return await _verify(service, token, now=now, max_age=None)
    except TokenError:
        return None

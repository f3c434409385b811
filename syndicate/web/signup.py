"""Web: the sign-up endpoint (stored before the answer); its confirmation mail is sent after."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response

from syndicate import i18n, mail, tokens, urls
from syndicate.errors import SubscriberError, SyndicateError
from syndicate.i18n import LANGUAGES
from syndicate.model import Subscriber
from syndicate.send import TransientSendError
from syndicate.store import subscribers as store_subscribers
from syndicate.web.confirmation import build_confirmation
from syndicate.web.guard import (
    RateWindow,
    check_form_token,
    form_binding,
    origin_of,
    rate_decision,
    rate_limit_key,
    read_form,
)

if TYPE_CHECKING:
    from syndicate.web.pages import Service

log = logging.getLogger(__name__)

_STRINGS = i18n.STRINGS["web"]


async def subscribe(service: Service, request: Request) -> Response:
    """The form on GET; on POST the same "check your inbox" page for every address.

    The sign-up is stored before the answer; the confirmation mail runs after it
    (SignupWorker).
    """
    lang = service.language(request)
    if request.method != "POST":
        return service.form_page(request, lang)
    per_minute = service.settings.subscribe.rate_limit
    if per_minute > 0:
        client = request.client.host if request.client else "unknown"
        now = service.clock()
        # Counted in the store, so every `serve` sharing it counts together. A busy store
        # raises StoreBusyError here, answered 503 with Retry-After like the sign-up's own.
        previous, current = await service.call_store(
            service.store.count_signup, rate_limit_key(client), now=now
        )
        allowed, wait = rate_decision(
            per_minute, previous=previous, current=current, elapsed=RateWindow.at(now).elapsed
        )
        if not allowed:
            return service.error_page(request, 429, headers={"retry-after": str(wait)})
    form = await read_form(request)
    email = str(form.get("email") or "").strip()
    language = str(form.get("language") or "")
    language = language if language in LANGUAGES else lang
    if not _trusted_post(service, request, str(form.get("form_token") or "")):
        return service.error_page(request, 403)
    try:
        address = store_subscribers.normalize_email(email)
    except SubscriberError:
        return service.form_page(
            request,
            lang,
            email=email,
            language=language,
            error=_STRINGS[lang]["invalid_email"],
            status_code=400,
        )
    # Stored before the answer, so a sign-up is never lost after a 200: a database
    # busy past its timeout raises StoreBusyError, answered 503 with Retry-After. The
    # store does the same two reads and one write for every state, so the wait tells
    # none; only the confirmation mail depends on it, and it goes after the response,
    # off this loop (the sign-ups' thread owns the mailer).
    now = service.clock()
    background: BackgroundTask | None = None
    try:
        subscriber, should_send = await service.call_store(
            service.store.sign_up, address, language=language, now=now
        )
    except SubscriberError as exc:
        # A refusal past the address check answers like any other sign-up, so the
        # page does not tell who is on the list.
        log.info("subscribe: sign-up not stored: %s", exc)
    else:
        background = BackgroundTask(_queue_confirmation, service, subscriber, should_send, now)
    strings = _STRINGS[lang]
    return service.page(
        "subscribe.html.j2",
        lang,
        title=strings["sent_title"],
        state="sent",
        sent_body=strings["sent_body"].format(
            email=address, hours=service.settings.subscribe.confirm_hours
        ),
        background=background,
    )


def _trusted_post(service: Service, request: Request, form_token: str) -> bool:
    """Anti-forgery: a same-site Origin, or (no Origin, or `null`) a valid signed form token
    made for this request's form cookie: a token fetched elsewhere (a page on another site,
    a sandboxed frame, a data: URL) comes without it, as SameSite=Strict keeps it home."""
    origin = request.headers.get("origin")
    if origin and origin != "null":
        host = request.headers.get("host", "")
        trusted = {origin_of(service.base_url), f"{request.url.scheme}://{host}".lower()}
        return origin.lower() in trusted
    return bool(form_token) and check_form_token(
        service.secret, form_token, binding=form_binding(request), now=service.clock()
    )


async def _queue_confirmation(
    service: Service, subscriber: Subscriber, should_send: bool, now: datetime
) -> None:
    service.signups.submit(_send_confirmation(service, subscriber, now, send=should_send))


async def _send_confirmation(
    service: Service, subscriber: Subscriber, now: datetime, *, send: bool
) -> None:
    """Make the confirmation mail of a sign-up, and send it when `send`.

    Made for every sign-up, sent or not: the sign-ups' thread shares the interpreter
    lock with the loop serving the requests, so rendering and signing a mail for some
    states only made the requests right after a sign-up slower when the address was not
    on the list (about 5 ms over three requests), which told who is.
    """
    try:
        # A clock far off (never set, or past 2106) signs no token: ClockError, one line.
        token = tokens.make_token(
            service.secret,
            purpose="confirm",
            subscriber_id=subscriber.id,
            nonce=subscriber.token_nonce,
            issued_at=now,
        )
        # The link says the mail's language: the one its reader chose, whatever sign-up of
        # the address (anyone may send the form) came after it (web.confirm).
        confirm_url = urls.confirm_url(service.base_url, token, lang=subscriber.language)
        sender = mail.confirmation_return_path(
            info=service.mail_info,
            secret=service.secret,
            subscriber_id=subscriber.id,
            nonce=subscriber.token_nonce,
            day=now.astimezone(UTC).date(),
        )
        message = build_confirmation(
            service.settings,
            subscriber=subscriber,
            confirm_url=confirm_url,
            now=now,
            dkim=service.dkim,
        )
        if not send:
            return
        try:
            await service.mailer.send(sender, [subscriber.email], message)
        except TransientSendError as exc:
            # One retry on a fresh connection: a pooled one may have been dropped by
            # the server while idle, and the sign-up page already said a mail is coming.
            log.info("subscribe: confirmation to subscriber %s: %s; retrying", subscriber.id, exc)
            await service.mailer.send(sender, [subscriber.email], message)
    except (SyndicateError, OSError) as exc:
        log.warning("subscribe: confirmation to subscriber %s failed: %s", subscriber.id, exc)

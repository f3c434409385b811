"""Web: the sign-up endpoint and the sign-up's work after the answer (store, confirmation mail)."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import TYPE_CHECKING

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response

from syndicate import digest, i18n, mail, tokens, urls
from syndicate.config import Settings
from syndicate.errors import StoreBusyError, StoreError, SubscriberError, SyndicateError
from syndicate.i18n import LANGUAGES
from syndicate.mail import DkimKey
from syndicate.model import Subscriber
from syndicate.send import TransientSendError
from syndicate.store import subscribers as store_subscribers
from syndicate.web.guard import MAX_BODY_BYTES, check_form_token, origin_of, rate_limit_key

if TYPE_CHECKING:
    from syndicate.web.pages import Service

log = logging.getLogger(__name__)

_STRINGS = i18n.STRINGS["web"]

# Waits before a sign-up that met a busy database is stored again (after the answer, so
# they hold up nobody's page); the last try's failure is logged and the sign-up dropped.
_BUSY_RETRY_SECONDS = (1, 2, 4)


async def subscribe(service: Service, request: Request) -> Response:
    """The form on GET; on POST the same "check your inbox" page for every address.

    Storing the sign-up and the confirmation mail run after the answer (SignupWorker).
    """
    lang = service.language(request)
    if request.method != "POST":
        return service.form_page(lang)
    client = request.client.host if request.client else "unknown"
    allowed, wait = service.limiter.allow(rate_limit_key(client))
    if not allowed:
        return service.error_page(request, 429, headers={"retry-after": str(wait)})
    form = await request.form(max_files=0, max_fields=10, max_part_size=MAX_BODY_BYTES)
    email = str(form.get("email") or "").strip()
    language = str(form.get("language") or "")
    language = language if language in LANGUAGES else lang
    if not _trusted_post(service, request, str(form.get("form_token") or "")):
        return service.error_page(request, 403)
    try:
        address = store_subscribers.normalize_email(email)
    except SubscriberError:
        return service.form_page(
            lang,
            email=email,
            language=language,
            error=_STRINGS[lang]["invalid_email"],
            status_code=400,
        )
    # Everything from here on depends on the address's state: it runs after the
    # response, off this loop, so no response or next request's timing tells it.
    background = BackgroundTask(_queue_sign_up, service, address, language, service.clock())
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
    """Anti-forgery: a same-site Origin, or (no Origin) a valid signed form token."""
    origin = request.headers.get("origin")
    if origin and origin != "null":
        host = request.headers.get("host", "")
        trusted = {origin_of(service.base_url), f"{request.url.scheme}://{host}".lower()}
        return origin.lower() in trusted
    return bool(form_token) and check_form_token(service.secret, form_token, now=service.clock())


async def _queue_sign_up(service: Service, address: str, language: str, now: datetime) -> None:
    service.signups.submit(_sign_up(service, address, language, now))


async def _sign_up(service: Service, address: str, language: str, now: datetime) -> None:
    """Store the sign-up and send a confirmation if due (on the sign-ups' loop).

    A busy database (another command kept the write lock past the busy timeout) is
    tried again a few times, later: the page already promised the mail.
    """
    try:
        subscriber, should_send = await _store_sign_up(service, address, language, now)
    except SubscriberError as exc:
        # Refusals past the address check (an erased address, for one) answered
        # like any other sign-up, so the page did not tell who is on the list.
        log.info("subscribe: sign-up not stored: %s", exc)
        return
    except StoreError as exc:
        log.error("subscribe: sign-up not stored: %s", exc)
        return
    if should_send:
        await _send_confirmation(service, subscriber, now)


async def _store_sign_up(
    service: Service, address: str, language: str, now: datetime
) -> tuple[Subscriber, bool]:
    for delay in _BUSY_RETRY_SECONDS:
        try:
            return await service.call_store(
                service.store.sign_up, address, language=language, now=now
            )
        except StoreBusyError as exc:
            log.warning("subscribe: %s Storing the sign-up again in %s s.", exc, delay)
        await asyncio.sleep(delay)
    return await service.call_store(service.store.sign_up, address, language=language, now=now)


async def _send_confirmation(service: Service, subscriber: Subscriber, now: datetime) -> None:
    token = tokens.make_token(
        service.secret,
        purpose="confirm",
        subscriber_id=subscriber.id,
        nonce=subscriber.token_nonce,
        issued_at=now,
    )
    confirm_url = urls.confirm_url(service.base_url, token)
    try:
        sender = mail.envelope_sender(service.settings)
        message = build_confirmation(
            service.settings,
            subscriber=subscriber,
            confirm_url=confirm_url,
            now=now,
            dkim=service.dkim,
        )
        try:
            await service.mailer.send(sender, [subscriber.email], message)
        except TransientSendError as exc:
            # One retry on a fresh connection: a pooled one may have been dropped by
            # the server while idle, and the sign-up page already said a mail is coming.
            log.info("subscribe: confirmation to subscriber %s: %s; retrying", subscriber.id, exc)
            await service.mailer.send(sender, [subscriber.email], message)
    except (SyndicateError, OSError) as exc:
        log.warning("subscribe: confirmation to subscriber %s failed: %s", subscriber.id, exc)


def build_confirmation(
    settings: Settings,
    *,
    subscriber: Subscriber,
    confirm_url: str,
    now: datetime,
    dkim: DkimKey | None = None,
) -> bytes:
    """Render the confirmation mail for `subscriber` in their language; return its bytes."""
    rendered = digest.render_confirmation(
        lang=subscriber.language,
        info=digest.DigestInfo.from_settings(settings),
        confirm_url=confirm_url,
        now=now,
    )
    return mail.build_confirmation_message(
        rendered, settings=settings, to=subscriber.email, now=now, dkim=dkim
    )

"""Web edge: `syndicate serve`'s ASGI app (Starlette).

Serves the output folder (feeds, pages, digests) with validators and caching
headers, and the subscription service: sign-up with double opt-in, confirm,
and one-click unsubscribe (RFC 8058). The store and the mailer come in through
protocols (`SubscriptionStore`, `send.Mailer`), so tests pass real alternatives.
Modules: `static` (the output folder), `guard` (headers, limits, CSRF), `pages`
(the endpoints), `seams` (the protocols and the SQLite store).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from syndicate.config import Settings
from syndicate.errors import (
    StoreAccessError,
    StoreBusyError,
    StoreFullError,
    StoreUnavailableError,
)
from syndicate.send import Mailer
from syndicate.web.confirmation import build_confirmation
from syndicate.web.guard import (
    CONTENT_SECURITY_POLICY,
    MAX_BODY_BYTES,
    BodyLimit,
    SecurityHeaders,
    check_form_token,
    make_form_token,
)
from syndicate.web.pages import Service, negotiate_language
from syndicate.web.protocol import BODY_TIMEOUT, HEADER_TIMEOUT, make_http_protocol
from syndicate.web.seams import Clock, DatabaseStore, SubscriptionStore, utc_now

log = logging.getLogger(__name__)

__all__ = [
    "BODY_TIMEOUT",
    "CONTENT_SECURITY_POLICY",
    "HEADER_TIMEOUT",
    "MAX_BODY_BYTES",
    "RETRY_AFTER",
    "Clock",
    "DatabaseStore",
    "SubscriptionStore",
    "build_confirmation",
    "check_form_token",
    "create_app",
    "make_form_token",
    "make_http_protocol",
    "negotiate_language",
]


# Seconds a client is asked to wait after a 503 (the database busy or out of reach, or the
# disk full).
RETRY_AFTER = 5


def create_app(
    settings: Settings,
    store: SubscriptionStore,
    mailer: Mailer,
    *,
    clock: Clock = utc_now,
) -> Starlette:
    """Build the ASGI app serving `settings.paths.output` and the subscription pages.

    The mailer is used on the sign-ups' thread (an event loop of its own) and closed there
    when the app shuts down; the store belongs to the caller. Store calls run on threads
    of their own (writes on one, reads on another), so `store` must be usable from threads
    other than the caller's (`open_database(..., any_thread=True)`). A busy database
    (another command kept the write lock past `store.busy_timeout`), a database server out
    of reach or a full disk answers 503 with Retry-After, in the usual error shape.
    """
    service = Service(settings, store, mailer, clock)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            await service.start()
            yield
        finally:
            try:
                await service.stop()  # closes the mailer on the sign-ups' thread
            finally:
                service.close()

    async def http_error(request: Request, exc: Exception) -> Response:
        status_code = exc.status_code if isinstance(exc, HTTPException) else 500
        headers = exc.headers if isinstance(exc, HTTPException) else None
        return service.error_page(request, status_code, headers=headers)

    async def store_unavailable(request: Request, exc: Exception) -> Response:
        # Not the app's fault and not for long: the client may try again (RFC 9110 15.6.4).
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        return service.error_page(request, 503, headers={"retry-after": str(RETRY_AFTER)})

    async def client_gone(request: Request, exc: Exception) -> Response:
        # The client closed the connection (or a deadline did) before its body was in:
        # nobody is left to answer, and it is no bug of ours, so one line, no traceback.
        client = f"{request.client.host}:{request.client.port}" if request.client else "a client"
        log.info(
            "serve: %s %s: %s disconnected before sending the whole request body",
            request.method,
            request.url.path,
            client,
        )
        return Response(status_code=400)

    async def server_error(request: Request, exc: Exception) -> Response:
        # Starlette re-raises the exception after this page is sent, so uvicorn logs it.
        return service.error_page(request, 500)

    routes = [
        Route("/healthz", service.healthz, methods=["GET"]),
        Route("/subscribe", service.subscribe, methods=["GET", "POST"]),
        Route("/confirm", service.confirm, methods=["GET", "POST"]),
        Route("/unsubscribe", service.unsubscribe, methods=["GET", "POST"]),
        Route("/{path:path}", service.static, methods=["GET"]),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(SecurityHeaders), Middleware(BodyLimit, limit=MAX_BODY_BYTES)],
        exception_handlers={
            HTTPException: http_error,
            StoreBusyError: store_unavailable,
            StoreFullError: store_unavailable,
            StoreUnavailableError: store_unavailable,
            # A login the server refuses after start (a role locked, a password changed):
            # the operator's to fix, one line in the log; the client may try again later.
            StoreAccessError: store_unavailable,
            ClientDisconnect: client_gone,
            Exception: server_error,
        },
        lifespan=lifespan,
    )

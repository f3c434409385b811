"""Web: the service's endpoints and pages (sign-up, confirm, unsubscribe, errors, healthz)."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import ParamSpec, TypeVar
from urllib.parse import urlencode, urlsplit

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from syndicate import digest, i18n, mail, tokens, urls
from syndicate.config import Settings, base_url, make_environment, site_templates_dir
from syndicate.errors import StoreBusyError, StoreError, SubscriberError, SyndicateError, TokenError
from syndicate.i18n import LANGUAGES
from syndicate.mail import DkimKey
from syndicate.model import Subscriber, SubscriptionStatus
from syndicate.send import Mailer, TransientSendError, read_dkim_key
from syndicate.store import subscribers as store_subscribers
from syndicate.web.guard import (
    MAX_BODY_BYTES,
    RateLimiter,
    check_form_token,
    make_form_token,
    origin_of,
    rate_limit_key,
)
from syndicate.web.seams import Clock, SubscriptionStore
from syndicate.web.signups import SignupWorker
from syndicate.web.static import LargeFile, OutputFolder, not_modified, safe_relative

log = logging.getLogger(__name__)

_STRINGS = i18n.STRINGS["web"]


def negotiate_language(query: str | None, accept_language: str | None, default: str) -> str:
    """Pick the page language: `?lang=`, then Accept-Language (q-values), then `default`."""
    if query in LANGUAGES:
        return query
    best, best_q = default if default in LANGUAGES else "vi", 0.0
    for position, item in enumerate((accept_language or "").split(",")):
        tag, _, params = item.strip().partition(";")
        primary = tag.strip().lower().split("-")[0]
        if primary not in LANGUAGES:
            continue
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        # Earlier entries win ties, as the header lists preferences in order.
        if q > best_q or (q == best_q and q > 0 and position == 0):
            best, best_q = primary, q
    return best


# --- The endpoints ----------------------------------------------------------------------


# Waits before a sign-up that met a busy database is stored again (after the answer, so
# they hold up nobody's page); the last try's failure is logged and the sign-up dropped.
_BUSY_RETRY_SECONDS = (1, 2, 4)

_P = ParamSpec("_P")
_T = TypeVar("_T")


class Service:
    """The endpoints, sharing settings, store, mailer, clock and templates.

    Store calls that write run on one thread of their own, one at a time: a call that
    waits for the database (`syndicate send` holding its write lock, for up to the busy
    timeout) holds up only the requests that write, never the event loop serving the
    pages. Reads (`find`, `check`) run on another thread, so they never queue behind it.
    A sign-up's state-dependent work (storing it, the confirmation mail) runs after the
    response on the `SignupWorker`'s thread, which owns the mailer.
    """

    def __init__(
        self, settings: Settings, store: SubscriptionStore, mailer: Mailer, clock: Clock
    ) -> None:
        self.settings = settings
        self.store = store
        self.mailer = mailer
        self.signups = SignupWorker(mailer)
        self.clock = clock
        self.base_url = base_url(settings)
        self.base_path = urlsplit(self.base_url).path or "/"
        self.output = OutputFolder(settings.paths.output)
        self.limiter = RateLimiter(settings.subscribe.rate_limit)
        self.templates = make_environment(site_templates_dir())
        # The page chrome's strings (site.py) with the service's own on top.
        self.strings = {
            lang: {**i18n.STRINGS["pages"][lang], **_STRINGS[lang]} for lang in LANGUAGES
        }
        self._secret: bytes | None = None
        self.dkim = read_dkim_key(settings)
        self._store_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="syndicate-store")
        self._reader_thread = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="syndicate-store-read"
        )

    async def call_store(
        self, function: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """Run a store operation on the store's thread and wait for it without blocking."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._store_thread, functools.partial(function, *args, **kwargs)
        )

    async def call_reader(
        self, function: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """Run a store read (`find`, `check`) on the reading thread and wait for it."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._reader_thread, functools.partial(function, *args, **kwargs)
        )

    async def start(self) -> None:
        """Read the signing secret (at startup, on the store's thread); start the sign-ups'."""
        self._secret = await self.call_store(self.store.read_secret)
        self.signups.start()

    async def stop(self) -> None:
        """Finish the sign-ups in progress (bounded) and close the mailer, off the loop."""
        await asyncio.to_thread(self.signups.stop)

    def close(self) -> None:
        """Finish the store calls in progress, if any, and stop the store's threads."""
        try:
            self._store_thread.shutdown(wait=True)
        finally:
            self._reader_thread.shutdown(wait=True)

    @property
    def secret(self) -> bytes:
        if self._secret is None:  # an app whose startup did not run: read it once now
            self._secret = self._store_thread.submit(self.store.read_secret).result()
        return self._secret

    # Pages -------------------------------------------------------------------------

    def language(self, request: Request, subscriber: Subscriber | None = None) -> str:
        """`?lang=`, else the language of the token's subscriber, else the browser's."""
        query = request.query_params.get("lang")
        if subscriber is not None and query not in LANGUAGES and subscriber.language in LANGUAGES:
            return subscriber.language
        return negotiate_language(
            query, request.headers.get("accept-language"), self.settings.site.language
        )

    def url(self, name: str, lang: str, **params: str) -> str:
        """A path-absolute URL under base_url; `?lang=` is kept when not the site language."""
        query = dict(params)
        if lang != self.settings.site.language:
            query["lang"] = lang
        suffix = "?" + urlencode(query) if query else ""
        return f"{self.base_path}{name}{suffix}"

    def page(
        self,
        template: str,
        lang: str,
        *,
        title: str,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        background: BackgroundTask | None = None,
        **context: object,
    ) -> Response:
        html = self.templates.get_template(template).render(
            lang=lang,
            t=self.strings[lang],
            site=self.settings.site,
            root=self.base_path,
            page_title=title,
            **context,
        )
        all_headers = {"cache-control": "no-store", "vary": "Accept-Language"}
        all_headers.update(headers or {})
        return Response(
            html,
            status_code=status_code,
            headers=all_headers,
            media_type="text/html; charset=utf-8",
            background=background,
        )

    def error_page(
        self, request: Request, status_code: int, *, headers: Mapping[str, str] | None = None
    ) -> Response:
        """The one error shape: JSON for /healthz, an HTML page for everything else."""
        lang = self.language(request)
        strings = _STRINGS[lang]
        message = strings.get(f"error_{status_code}", strings["error_400"])
        title = strings.get(f"error_{status_code}_title", f"{strings['error']} {status_code}")
        if request.url.path.startswith("/healthz"):
            return JSONResponse(
                {
                    "error": {
                        "status": status_code,
                        "message": _STRINGS["en"].get(
                            f"error_{status_code}", "The request is not valid."
                        ),
                    }
                },
                status_code=status_code,
                headers={"cache-control": "no-store", **(headers or {})},
            )
        return self.page(
            "error.html.j2",
            lang,
            title=title,
            status_code=status_code,
            headers=headers,
            status=status_code,
            message=message,
        )

    def form_page(
        self,
        lang: str,
        *,
        email: str = "",
        language: str = "",
        error: str = "",
        status_code: int = 200,
    ) -> Response:
        strings = _STRINGS[lang]
        return self.page(
            "subscribe.html.j2",
            lang,
            title=strings["subscribe_title"],
            status_code=status_code,
            state="form",
            form_token=make_form_token(self.secret, now=self.clock()),
            form_email=email,
            form_language=language or lang,
            form_error=error,
        )

    # Endpoints ---------------------------------------------------------------------

    async def static(self, request: Request) -> Response:
        relative = safe_relative(request.path_params.get("path", ""))
        found = self.output.lookup(relative) if relative is not None else None
        if found is None and relative == "favicon.ico":
            # Browsers ask for it on every site; "no icon" is not an error worth a 404 page.
            return Response(status_code=204, headers={"cache-control": "public, max-age=86400"})
        if found is None:
            return self.error_page(request, 404)
        if not_modified(request, found.etag, found.modified):
            headers = {k: v for k, v in found.headers.items() if k != "content-type"}
            return Response(status_code=304, headers=headers)
        if isinstance(found, LargeFile):
            return FileResponse(
                found.path,
                headers=found.headers,
                media_type=found.headers["content-type"],
                stat_result=found.stat,
            )
        return Response(found.body, headers=found.headers)

    async def healthz(self, request: Request) -> Response:
        checks: dict[str, str] = {}
        healthy = True
        try:
            await self.call_reader(self.store.check)
            checks["database"] = "ok"
        except StoreError as exc:
            log.error("healthz: %s", exc)
            checks["database"] = "unavailable"
            healthy = False
        index = self.settings.paths.output / "index.html"
        if index.is_file():
            checks["output"] = "ok"
        else:
            checks["output"] = "index.html missing; run syndicate build"
            healthy = False
        body: dict[str, object] = {
            "status": "ok" if healthy else "error",
            "checks": checks,
        }
        if not healthy:
            body["error"] = {"status": 503, "message": "a check failed; see checks"}
        return JSONResponse(
            body, status_code=200 if healthy else 503, headers={"cache-control": "no-store"}
        )

    async def subscribe(self, request: Request) -> Response:
        lang = self.language(request)
        if request.method != "POST":
            return self.form_page(lang)
        client = request.client.host if request.client else "unknown"
        allowed, wait = self.limiter.allow(rate_limit_key(client))
        if not allowed:
            return self.error_page(request, 429, headers={"retry-after": str(wait)})
        form = await request.form(max_files=0, max_fields=10, max_part_size=MAX_BODY_BYTES)
        email = str(form.get("email") or "").strip()
        language = str(form.get("language") or "")
        language = language if language in LANGUAGES else lang
        if not self._trusted_post(request, str(form.get("form_token") or "")):
            return self.error_page(request, 403)
        try:
            address = store_subscribers.normalize_email(email)
        except SubscriberError:
            return self.form_page(
                lang,
                email=email,
                language=language,
                error=_STRINGS[lang]["invalid_email"],
                status_code=400,
            )
        # Everything from here on depends on the address's state: it runs after the
        # response, off this loop, so no response or next request's timing tells it.
        background = BackgroundTask(self._queue_sign_up, address, language, self.clock())
        strings = _STRINGS[lang]
        return self.page(
            "subscribe.html.j2",
            lang,
            title=strings["sent_title"],
            state="sent",
            sent_body=strings["sent_body"].format(
                email=address, hours=self.settings.subscribe.confirm_hours
            ),
            background=background,
        )

    def _trusted_post(self, request: Request, form_token: str) -> bool:
        """Anti-forgery: a same-site Origin, or (no Origin) a valid signed form token."""
        origin = request.headers.get("origin")
        if origin and origin != "null":
            host = request.headers.get("host", "")
            trusted = {origin_of(self.base_url), f"{request.url.scheme}://{host}".lower()}
            return origin.lower() in trusted
        return bool(form_token) and check_form_token(self.secret, form_token, now=self.clock())

    async def _queue_sign_up(self, address: str, language: str, now: datetime) -> None:
        self.signups.submit(self._sign_up(address, language, now))

    async def _sign_up(self, address: str, language: str, now: datetime) -> None:
        """Store the sign-up and send a confirmation if due (on the sign-ups' loop).

        A busy database (another command kept the write lock past the busy timeout) is
        tried again a few times, later: the page already promised the mail.
        """
        try:
            subscriber, should_send = await self._store_sign_up(address, language, now)
        except SubscriberError as exc:
            # Refusals past the address check (an erased address, for one) answered
            # like any other sign-up, so the page did not tell who is on the list.
            log.info("subscribe: sign-up not stored: %s", exc)
            return
        except StoreError as exc:
            log.error("subscribe: sign-up not stored: %s", exc)
            return
        if should_send:
            await self._send_confirmation(subscriber, now)

    async def _store_sign_up(
        self, address: str, language: str, now: datetime
    ) -> tuple[Subscriber, bool]:
        for delay in _BUSY_RETRY_SECONDS:
            try:
                return await self.call_store(
                    self.store.sign_up, address, language=language, now=now
                )
            except StoreBusyError as exc:
                log.warning("subscribe: %s Storing the sign-up again in %s s.", exc, delay)
            await asyncio.sleep(delay)
        return await self.call_store(self.store.sign_up, address, language=language, now=now)

    async def _send_confirmation(self, subscriber: Subscriber, now: datetime) -> None:
        token = tokens.make_token(
            self.secret,
            purpose="confirm",
            subscriber_id=subscriber.id,
            nonce=subscriber.token_nonce,
            issued_at=now,
        )
        confirm_url = urls.confirm_url(self.base_url, token)
        try:
            sender = mail.envelope_sender(self.settings)
            message = build_confirmation(
                self.settings,
                subscriber=subscriber,
                confirm_url=confirm_url,
                now=now,
                dkim=self.dkim,
            )
            try:
                await self.mailer.send(sender, [subscriber.email], message)
            except TransientSendError as exc:
                # One retry on a fresh connection: a pooled one may have been dropped by
                # the server while idle, and the sign-up page already said a mail is coming.
                log.info(
                    "subscribe: confirmation to subscriber %s: %s; retrying", subscriber.id, exc
                )
                await self.mailer.send(sender, [subscriber.email], message)
        except (SyndicateError, OSError) as exc:
            log.warning("subscribe: confirmation to subscriber %s failed: %s", subscriber.id, exc)

    async def confirm(self, request: Request) -> Response:
        max_age = timedelta(hours=self.settings.subscribe.confirm_hours)
        now = self.clock()
        subscriber: Subscriber | None
        try:
            # The lookup runs on the reading thread (it only reads, so it never waits
            # behind a sign-up that waits for the write lock): the token must name the
            # very subscriber it was made for (their nonce), not whoever holds the id now.
            subscriber = await self.call_reader(
                tokens.verify_token,
                self.secret,
                request.query_params.get("token", ""),
                purpose="confirm",
                now=now,
                max_age=max_age,
                find=self.store.find,
            )
        except TokenError:
            subscriber = None
        # The page speaks the language of the subscriber the link was made for, not the
        # browser's (`?lang=` still wins).
        lang = self.language(request, subscriber)
        strings = _STRINGS[lang]
        # An old link must not bring back someone who left or bounced since.
        if subscriber is None or subscriber.status not in (
            SubscriptionStatus.PENDING,
            SubscriptionStatus.CONFIRMED,
        ):
            return self.page(
                "confirm.html.j2",
                lang,
                title=strings["bad_confirm_title"],
                status_code=400,
                ok=False,
            )
        if subscriber.status is SubscriptionStatus.PENDING:
            await self.call_store(self.store.confirm, subscriber.id, now=now)
        return self.page("confirm.html.j2", lang, title=strings["confirmed_title"], ok=True)

    async def unsubscribe(self, request: Request) -> Response:
        lang = self.language(request)
        strings = _STRINGS[lang]
        token = request.query_params.get("token", "")
        if request.method == "POST":
            # Read the body even when the token is in the URL, so that the body limit
            # (413) holds here as everywhere; a one-click body is a few bytes.
            await request.body()
            if not token:
                form = await request.form(max_files=0, max_fields=10, max_part_size=MAX_BODY_BYTES)
                token = str(form.get("token") or "")
        if not token and request.method != "POST":
            # The generic link of the "view in browser" page: explain, change nothing.
            return self.page(
                "unsubscribe.html.j2", lang, title=strings["how_unsubscribe_title"], state="how"
            )
        try:
            # The signature first: a bad link is answered without asking the store.
            tokens.read_token(self.secret, token, purpose="unsubscribe", now=self.clock())
        except TokenError:
            return self.page(
                "unsubscribe.html.j2",
                lang,
                title=strings["bad_unsubscribe_title"],
                status_code=400,
                state="invalid",
            )
        # The subscriber the link was made for (None when erased since): the page speaks
        # their language, not the browser's (`?lang=` still wins).
        owner: Subscriber | None = None
        stale: TokenError | None = None
        try:
            owner = await self.call_store(
                tokens.verify_token,
                self.secret,
                token,
                purpose="unsubscribe",
                now=self.clock(),
                find=self.store.find,
            )
        except TokenError as exc:
            stale = exc
        lang = self.language(request, owner)
        strings = _STRINGS[lang]
        if request.method != "POST":
            # Link scanners follow GETs: show the button, change nothing.
            return self.page(
                "unsubscribe.html.j2",
                lang,
                title=strings["unsubscribe_title"],
                state="ask",
                form_action=self.url("unsubscribe", lang, token=token),
            )
        # The subscriber the link was made for is erased: off the list already, which is
        # what they asked for. Whoever holds their id now (a database from before ids were
        # kept unique) is left alone.
        if owner is None:
            log.info("unsubscribe: %s", stale)
        else:
            try:
                await self.call_store(self.store.unsubscribe, owner.id, now=self.clock())
            except SubscriberError as exc:
                log.info("unsubscribe: %s", exc)
        return self.page(
            "unsubscribe.html.j2", lang, title=strings["unsubscribed_title"], state="done"
        )


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

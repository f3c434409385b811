"""Web: the service (store threads, pages, the error page) and its static and healthz endpoints.

The sign-up, confirm and unsubscribe endpoints live in web/signup.py, web/confirm.py and
web/unsubscribe.py.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar
from urllib.parse import urlencode, urlsplit

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from syndicate import i18n
from syndicate.config import (
    Settings,
    base_url,
    describe_site,
    make_environment,
    site_templates_dir,
)
from syndicate.errors import StoreError
from syndicate.i18n import LANGUAGES
from syndicate.mail import MailInfo
from syndicate.model import Subscriber
from syndicate.send import Mailer, read_dkim_key
from syndicate.site import render_chrome
from syndicate.web.confirm import confirm
from syndicate.web.guard import (
    FORM_COOKIE,
    FORM_TOKEN_HOURS,
    form_binding,
    form_cookie_path,
    make_form_token,
    new_form_binding,
)
from syndicate.web.seams import Clock, SubscriptionStore
from syndicate.web.signup import subscribe
from syndicate.web.signups import SignupWorker
from syndicate.web.static import LargeFile, OutputFolder, not_modified, safe_relative
from syndicate.web.unsubscribe import unsubscribe

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


_P = ParamSpec("_P")
_T = TypeVar("_T")


class Service:
    """The endpoints, sharing settings, store, mailer, clock and templates.

    Store calls that write run on one thread of their own, one at a time: a call that
    waits for the database (`syndicate send` holding its write lock, for up to the busy
    timeout) holds up only the requests that write, never the event loop serving the
    pages. Reads (`find`, `check`) run on another thread, so they never queue behind it.
    A sign-up is stored before the answer; its state-dependent work (the confirmation
    mail) runs after the response on the `SignupWorker`'s thread, which owns the mailer.
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
        self.mail_info = MailInfo.from_settings(settings)
        self.base_path = urlsplit(self.base_url).path or "/"
        self.output = OutputFolder(settings.paths.output)
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
        description, description_lang = describe_site(self.settings.site, lang)
        shared = {
            "lang": lang,
            "t": self.strings[lang],
            "site": self.settings.site,
            "root": self.base_path,
            "description": description,
            "description_lang": description_lang,
        }
        html = self.templates.get_template(template).render(
            **shared,
            chrome=render_chrome(self.templates, shared),
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
        request: Request,
        lang: str,
        *,
        email: str = "",
        language: str = "",
        error: str = "",
        status_code: int = 200,
    ) -> Response:
        """The sign-up form, its token bound to the browser's form cookie (set or kept).

        A browser that has a cookie keeps its value (the form in another tab stays good);
        each answer renews it for FORM_TOKEN_HOURS, as long as a token lives.
        """
        strings = _STRINGS[lang]
        binding = form_binding(request) or new_form_binding()
        # A refused address: the title, which a screen reader reads first, says so.
        title = strings["subscribe_title"]
        response = self.page(
            "subscribe.html.j2",
            lang,
            title=f"{strings['error']}: {title}" if error else title,
            status_code=status_code,
            state="form",
            form_token=make_form_token(self.secret, binding=binding, now=self.clock()),
            form_email=email,
            form_language=language or lang,
            form_error=error,
        )
        response.set_cookie(
            FORM_COOKIE,
            binding,
            max_age=FORM_TOKEN_HOURS * 3600,
            path=form_cookie_path(self.base_path),
            secure=self.base_url.lower().startswith("https:"),
            httponly=True,
            samesite="strict",
        )
        return response

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
        return await subscribe(self, request)

    async def confirm(self, request: Request) -> Response:
        return await confirm(self, request)

    async def unsubscribe(self, request: Request) -> Response:
        return await unsubscribe(self, request)

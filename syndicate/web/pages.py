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

import jinja2
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from syndicate import digest, mail, site, tokens
from syndicate.config import Settings, base_url, site_templates_dir
from syndicate.errors import StoreError, SubscriberError, SyndicateError, TokenError
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

LANGUAGES = ("vi", "en")

_STRINGS: dict[str, dict[str, str]] = {
    "vi": {
        "subscribe_title": "Đăng ký nhận bản tin",
        "subscribe_intro": (
            "Mỗi sáng một email với những tin mới nhất. "
            "Bạn có thể hủy đăng ký bất cứ lúc nào chỉ với một cú bấm."
        ),
        "invalid_email": "Địa chỉ email này không hợp lệ. Hãy kiểm tra và nhập lại.",
        "sent_title": "Hãy kiểm tra hộp thư của bạn",
        "sent_body": (
            "Chúng tôi đã nhận yêu cầu đăng ký cho {email}. Nếu địa chỉ này cần xác nhận, "
            "một email có liên kết xác nhận sẽ đến trong vài phút; "
            "liên kết có hiệu lực trong {hours} giờ."
        ),
        "sent_hint": "Không thấy email? Hãy xem trong thư mục thư rác hoặc quảng cáo.",
        "confirmed_title": "Đăng ký đã được xác nhận",
        "confirmed_body": "Cảm ơn bạn! Từ sáng mai, bản tin sẽ đến hộp thư của bạn.",
        "bad_confirm_title": "Liên kết xác nhận không dùng được",
        "bad_confirm_body": (
            "Liên kết này đã hết hạn, bị thay đổi hoặc không còn hiệu lực. "
            "Hãy đăng ký lại để nhận một liên kết mới."
        ),
        "unsubscribe_title": "Hủy đăng ký",
        "unsubscribe_body": "Bấm nút dưới đây để ngừng nhận bản tin qua email.",
        "unsubscribe_button": "Hủy đăng ký",
        "unsubscribed_title": "Bạn đã hủy đăng ký",
        "unsubscribed_body": (
            "Bạn sẽ không nhận bản tin nữa. Nếu đổi ý, bạn có thể đăng ký lại bất cứ lúc nào."
        ),
        "subscribe_again": "Đăng ký lại",
        "how_unsubscribe_title": "Cách hủy đăng ký",
        "how_unsubscribe_body": (
            "Mỗi bản tin có một liên kết hủy đăng ký riêng ở cuối thư. "
            "Hãy bấm liên kết đó trong email bạn nhận được: chỉ cần một cú bấm."
        ),
        "bad_unsubscribe_title": "Liên kết hủy đăng ký không hợp lệ",
        "bad_unsubscribe_body": (
            "Liên kết này bị thiếu hoặc bị thay đổi. Hãy dùng đúng liên kết "
            "ở cuối một bản tin bạn đã nhận."
        ),
        "error": "Lỗi",
        "error_400": "Yêu cầu không hợp lệ.",
        "error_403_title": "Biểu mẫu đã hết hạn",
        "error_403": (
            "Biểu mẫu này đã hết hạn hoặc được gửi từ một trang khác. "
            "Hãy tải lại trang đăng ký và thử lại."
        ),
        "error_404_title": "Không tìm thấy trang",
        "error_404": "Trang bạn tìm không có ở đây.",
        "error_405_title": "Phương thức không được hỗ trợ",
        "error_405": "Địa chỉ này không nhận loại yêu cầu đó.",
        "error_413_title": "Yêu cầu quá lớn",
        "error_413": "Dữ liệu gửi lên quá lớn.",
        "error_429_title": "Quá nhiều yêu cầu",
        "error_429": "Bạn đã gửi quá nhiều yêu cầu. Hãy thử lại sau một phút.",
        "error_500_title": "Lỗi máy chủ",
        "error_500": "Đã có lỗi ở phía chúng tôi. Hãy thử lại sau ít phút.",
        "error_503_title": "Hệ thống đang bận",
        "error_503": "Hệ thống đang bận trong giây lát. Hãy thử lại sau ít giây.",
    },
    "en": {
        "subscribe_title": "Subscribe to the newsletter",
        "subscribe_intro": (
            "One email every morning with the latest news. "
            "You can unsubscribe at any time with one click."
        ),
        "invalid_email": "This email address is not valid. Please check it and try again.",
        "sent_title": "Check your inbox",
        "sent_body": (
            "We have received a sign-up for {email}. If the address needs confirming, "
            "an email with a confirmation link will arrive within a few minutes; "
            "the link is valid for {hours} hours."
        ),
        "sent_hint": "No email? Look in your spam or promotions folder.",
        "confirmed_title": "Subscription confirmed",
        "confirmed_body": "Thank you! The newsletter will reach your inbox from tomorrow morning.",
        "bad_confirm_title": "This confirmation link cannot be used",
        "bad_confirm_body": (
            "The link has expired, was altered, or is no longer valid. "
            "Please sign up again to get a new link."
        ),
        "unsubscribe_title": "Unsubscribe",
        "unsubscribe_body": "Press the button below to stop receiving the newsletter by email.",
        "unsubscribe_button": "Unsubscribe",
        "unsubscribed_title": "You have unsubscribed",
        "unsubscribed_body": (
            "You will not receive the newsletter any more. "
            "If you change your mind, you can sign up again at any time."
        ),
        "subscribe_again": "Sign up again",
        "how_unsubscribe_title": "How to unsubscribe",
        "how_unsubscribe_body": (
            "Every newsletter carries its own unsubscribe link at the bottom. "
            "Follow that link in an email you received: one click is all it takes."
        ),
        "bad_unsubscribe_title": "This unsubscribe link is not valid",
        "bad_unsubscribe_body": (
            "The link is incomplete or was altered. Please use the link "
            "at the bottom of a newsletter you received."
        ),
        "error": "Error",
        "error_400": "The request is not valid.",
        "error_403_title": "This form has expired",
        "error_403": (
            "The form has expired or was sent from another site. "
            "Please reload the sign-up page and try again."
        ),
        "error_404_title": "Page not found",
        "error_404": "The page you are looking for is not here.",
        "error_405_title": "Method not allowed",
        "error_405": "This address does not accept that kind of request.",
        "error_413_title": "Request too large",
        "error_413": "The data sent is too large.",
        "error_429_title": "Too many requests",
        "error_429": "You have sent too many requests. Please try again in a minute.",
        "error_500_title": "Server error",
        "error_500": "Something went wrong on our side. Please try again in a few minutes.",
        "error_503_title": "Busy for a moment",
        "error_503": "We are busy for a moment. Please try again in a few seconds.",
    },
}


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
        self.base_path = urlsplit(self.base_url).path or "/"
        self.output = OutputFolder(settings.paths.output)
        self.limiter = RateLimiter(settings.subscribe.rate_limit)
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(site_templates_dir()),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        # The page chrome's strings (site.py) with the service's own on top.
        self.strings = {lang: {**site.STRINGS[lang], **_STRINGS[lang]} for lang in LANGUAGES}
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
        # Stored before the answer, so a sign-up is never lost after a 200: a database
        # busy past its timeout raises StoreBusyError, answered 503 with Retry-After. The
        # store does the same one read and one write for every state, so the wait tells
        # none; only the confirmation mail depends on it, and it goes after the response,
        # off this loop (the sign-ups' thread owns the mailer).
        now = self.clock()
        background: BackgroundTask | None = None
        try:
            subscriber, should_send = await self.call_store(
                self.store.sign_up, address, language=language, now=now
            )
        except SubscriberError as exc:
            # A refusal past the address check answers like any other sign-up, so the
            # page does not tell who is on the list.
            log.info("subscribe: sign-up not stored: %s", exc)
        else:
            background = BackgroundTask(self._queue_confirmation, subscriber, should_send, now)
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

    async def _queue_confirmation(
        self, subscriber: Subscriber, should_send: bool, now: datetime
    ) -> None:
        if should_send:
            self.signups.submit(self._send_confirmation(subscriber, now))

    async def _send_confirmation(self, subscriber: Subscriber, now: datetime) -> None:
        token = tokens.make_token(
            self.secret,
            purpose="confirm",
            subscriber_id=subscriber.id,
            nonce=subscriber.token_nonce,
            issued_at=now,
        )
        confirm_url = f"{self.base_url}confirm?token={token}"
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
        lang=subscriber.language, settings=settings, confirm_url=confirm_url, now=now
    )
    return mail.build_confirmation_message(
        rendered, settings=settings, to=subscriber.email, now=now, dkim=dkim
    )

"""The service's pages in headless Chromium (Debian's), driven by Playwright.

Fills in and submits the sign-up form, follows the confirmation link and presses its
button, presses the unsubscribe button, and screenshots pages at phone and desktop
widths. Any console error, page error, CSP violation or request leaving the server fails
the test.
"""

from __future__ import annotations

import http.client
import http.server
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from syndicate import tokens
from syndicate.config import Settings
from syndicate.model import SubscriptionStatus
from syndicate.store.meta import get_secret
from syndicate.store.subscribers import get_by_email
from syndicate.web.confirmation import ConfirmationInfo, render_confirmation
from tests.plugins.web import LiveServer, bind_loopback, build_site, open_settings_store

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WIDTHS = {"phone": 375, "desktop": 1280}

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="no Chromium at /usr/bin/chromium (apt install chromium)"
    ),
]

# Reported to the console, so a violation of the page's CSP fails the test.
_REPORT_CSP = """
document.addEventListener('securitypolicyviolation', (e) => {
  console.error('CSP violation: ' + e.violatedDirective + ' ' + e.blockedURI);
});
"""


class Browser:
    """One Chromium page that records everything that should not happen."""

    def __init__(self, context: Any, server: LiveServer) -> None:
        self.server = server
        self.problems: list[str] = []
        context.add_init_script(_REPORT_CSP)
        self.page = context.new_page()
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        self.page.on("request", self._request)
        self.page.on("response", self._response)

    def _console(self, message: Any) -> None:
        if message.type in ("error", "warning"):
            self.problems.append(f"console {message.type}: {message.text}")

    def _response(self, response: Any) -> None:
        if response.status >= 400:
            self.problems.append(f"HTTP {response.status}: {response.url}")

    def _request(self, request: Any) -> None:
        if not request.url.startswith(self.server.url):
            self.problems.append(f"request outside the site: {request.url}")

    def open(self, path: str) -> Any:
        response = self.page.goto(self.server.url + path)
        assert response is not None
        return response

    def screenshot_at_widths(self, path: str, name: str, folder: Path) -> list[Path]:
        shots = []
        for label, width in WIDTHS.items():
            self.page.set_viewport_size({"width": width, "height": 900})
            self.open(path)
            overflow = self.page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, f"{path} scrolls sideways at {width} px"
            shot = folder / f"{name}-{label}.png"
            self.page.screenshot(path=str(shot), full_page=True)
            shots.append(shot)
        return shots


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """One Chromium for the module (starting it is the slow part); each test gets a
    fresh context of its own (no cookies, storage or cache shared between tests)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def browser(
    chromium: Any, live_server: Callable[..., LiveServer], now: datetime
) -> Iterator[Browser]:
    server = live_server()
    build_site(server.settings, now)
    context = chromium.new_context(locale="vi-VN")
    try:
        driver = Browser(context, server)
        yield driver
    finally:
        context.close()
    assert driver.problems == []


def _status(server: LiveServer, address: str) -> SubscriptionStatus:
    with open_settings_store(server.settings) as db:
        found = get_by_email(db, address)
    assert found is not None
    return found.status


def test_sign_up_confirm_and_unsubscribe_in_a_real_browser(browser: Browser) -> None:
    server, page = browser.server, browser.page
    browser.open("subscribe")
    assert page.evaluate("document.documentElement.lang") == "vi"
    page.get_by_label("Địa chỉ email").focus()
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none", "the focused field shows no focus ring"
    page.get_by_label("Địa chỉ email").fill("trang@example.org")
    page.get_by_label("Ngôn ngữ của bản tin").select_option("en")
    with page.expect_request(lambda request: request.method == "POST") as posted:
        page.get_by_role("button", name="Đăng ký").click()
    page.wait_for_load_state()
    # Our Referrer-Policy must leave the browser's Origin header intact (the static
    # index's form, which has no token, relies on it).
    assert posted.value.all_headers().get("origin") == server.url.rstrip("/")
    assert page.get_by_role("heading", level=1).inner_text() == "Hãy kiểm tra hộp thư của bạn"
    assert "trang@example.org" in page.get_by_role("status").inner_text()

    [message] = server.mail.wait_for(1)
    body = message.get_body(("plain",))
    assert body is not None
    link = re.search(re.escape(server.url) + r"confirm\?token=[\w-]+", body.get_content())
    assert link
    page.goto(link.group(0))
    # The page speaks the language the reader chose for the newsletter, not the browser's.
    # Opening the link changes nothing (link scanners open every link): the button confirms.
    assert page.get_by_role("heading", level=1).inner_text() == "Confirm your subscription"
    assert _status(server, "trang@example.org") is SubscriptionStatus.PENDING
    with page.expect_request(lambda request: request.method == "POST") as confirmed:
        page.get_by_role("button", name="Confirm subscription").click()
    page.wait_for_load_state()
    assert confirmed.value.url.startswith(link.group(0))
    assert page.get_by_role("heading", level=1).inner_text() == "Subscription confirmed"
    assert _status(server, "trang@example.org") is SubscriptionStatus.CONFIRMED

    with open_settings_store(server.settings) as db:
        secret = get_secret(server.settings, db)
        found = get_by_email(db, "trang@example.org")
    assert found is not None
    token = tokens.make_token(
        secret,
        purpose="unsubscribe",
        subscriber_id=found.id,
        nonce=found.token_nonce,
        issued_at=server.clock(),
    )
    browser.open(f"unsubscribe?token={token}&lang=en")
    assert page.evaluate("document.documentElement.lang") == "en"
    assert _status(server, "trang@example.org") is SubscriptionStatus.CONFIRMED
    page.get_by_role("button", name="Unsubscribe").click()
    page.wait_for_load_state()
    assert page.get_by_role("heading", level=1).inner_text() == "You have unsubscribed"
    assert _status(server, "trang@example.org") is SubscriptionStatus.UNSUBSCRIBED
    # The one cookie is the sign-up form's, for the form alone: nothing else sets any.
    cookies = [(c["name"], c["path"]) for c in page.context.cookies()]
    assert cookies == [("syndicate_form", "/subscribe")]


def test_pages_at_phone_and_desktop_widths(browser: Browser, tmp_path: Path) -> None:
    output = browser.server.settings.paths.output
    digest_page = sorted((output / "digests").glob("*.html"))[0]
    shots: list[Path] = []
    for path, name in (
        ("", "index"),
        (f"digests/{digest_page.name}", "digest"),
        ("subscribe", "subscribe"),
        ("subscribe?lang=en", "subscribe-en"),
    ):
        shots += browser.screenshot_at_widths(path, name, tmp_path)
    for shot in shots:
        assert shot.stat().st_size > 5_000, f"{shot.name} looks empty"


def test_a_forwarded_digest_page_leads_to_the_form_in_its_language(browser: Browser) -> None:
    server, page = browser.server, browser.page
    output = server.settings.paths.output
    english = sorted((output / "digests").glob("*.en.html"))[0]
    browser.open(f"digests/{english.name}")  # the browser says vi-VN; the page is English
    page.get_by_role("link", name="Get this digest by email every day").click()
    page.wait_for_load_state()
    assert page.evaluate("document.documentElement.lang") == "en"
    page.get_by_label("Email address").fill("vy@example.org")
    page.get_by_role("button", name="Subscribe").click()
    page.wait_for_load_state()
    server.mail.wait_for(1)
    assert _status(server, "vy@example.org") is SubscriptionStatus.PENDING


def test_sign_up_from_the_form_on_the_static_index(browser: Browser) -> None:
    server, page = browser.server, browser.page
    index = (server.settings.paths.output / "index.html").read_text(encoding="utf-8")
    # The form on the static index is a feature: losing it fails, it never skips.
    assert 'class="signup"' in index, "the static index lost its sign-up form"
    browser.open("")
    page.get_by_label("Địa chỉ email").fill("uyen@example.org")
    page.get_by_role("button", name="Đăng ký").click()
    page.wait_for_load_state()
    # No form token on a static page: the browser's Origin header vouches for it.
    assert page.get_by_role("heading", level=1).inner_text() == "Hãy kiểm tra hộp thư của bạn"
    server.mail.wait_for(1)
    assert _status(server, "uyen@example.org") is SubscriptionStatus.PENDING


def test_the_form_cookie_is_kept_http_only_and_strict_by_the_browser(browser: Browser) -> None:
    server, page = browser.server, browser.page
    browser.open("subscribe")
    [cookie] = page.context.cookies()
    assert (cookie["name"], cookie["path"], cookie["httpOnly"], cookie["sameSite"]) == (
        "syndicate_form",
        "/subscribe",
        True,
        "Strict",
    )
    assert page.evaluate("document.cookie") == ""  # out of reach of scripts
    page.get_by_label("Địa chỉ email").fill("vy@example.org")
    with page.expect_request(lambda request: request.method == "POST") as posted:
        page.get_by_role("button", name="Đăng ký").click()
    page.wait_for_load_state()
    assert f"syndicate_form={cookie['value']}" in posted.value.all_headers().get("cookie", "")
    assert page.get_by_role("heading", level=1).inner_text() == "Hãy kiểm tra hộp thư của bạn"
    server.mail.wait_for(1)
    assert _status(server, "vy@example.org") is SubscriptionStatus.PENDING


def test_a_page_elsewhere_cannot_sign_up_its_visitor_with_a_token_its_author_fetched(
    browser: Browser,
) -> None:
    # A data: URL page (its requests say `Origin: null`, as a sandboxed frame's do) posts a
    # form token its author fetched: the visitor's browser, on the visitor's network,
    # signed someone up, past the author's own rate limit. The visitor has been to our
    # form too: its SameSite=Strict cookie stays home all the same.
    server, page = browser.server, browser.page
    with httpx.Client(base_url=server.url, timeout=10) as author:
        found = re.search(r'name="form_token" value="([^"]+)"', author.get("subscribe").text)
    assert found
    browser.open("subscribe")
    elsewhere = "data:text/html," + urllib.parse.quote(
        f'<form method="post" action="{server.url}subscribe">'
        '<input name="email" value="victim@example.org"><input name="language" value="vi">'
        f'<input name="form_token" value="{found.group(1)}"></form>'
        "<script>document.forms[0].submit()</script>"
    )
    with page.expect_response(lambda response: response.request.method == "POST") as posted:
        page.goto(elsewhere)
    request = posted.value.request
    assert request.all_headers().get("origin") == "null"
    assert "syndicate_form" not in request.all_headers().get("cookie", "")
    assert posted.value.status == 403
    assert server.signups.count == 0
    with open_settings_store(server.settings) as db:
        assert get_by_email(db, "victim@example.org") is None
    # What this test provoked on purpose: the page elsewhere and the refusal (once shown).
    assert page.get_by_role("heading", level=1).inner_text() == "Biểu mẫu đã hết hạn"
    expected = (
        f"request outside the site: {elsewhere}",
        f"HTTP 403: {server.url}subscribe",
        "console error: Failed to load resource: the server responded with a status of 403 "
        "(Forbidden)",
    )
    browser.problems = [problem for problem in browser.problems if problem not in expected]


@pytest.mark.parametrize("lang", ["vi", "en"])
def test_the_confirmation_mail_fits_a_phone(
    chromium: Any, settings: Settings, now: datetime, lang: str
) -> None:
    """The mail's written-out link is one unbreakable word (a token of 60-odd characters):
    it stretched the mail to about 560 px, so a phone scrolled it sideways. It wraps."""
    token = "AgEAAAAAAAAAA2sV5YfR4w8SmVviWgHWtkJPV0v2vWGJCgsLyBv3Niq09zbNzw"
    rendered = render_confirmation(
        lang=lang,
        info=ConfirmationInfo.from_settings(settings),
        confirm_url=f"https://tin.example.org/confirm?token={token}",
        now=now,
    )
    context = chromium.new_context(viewport={"width": 375, "height": 800})
    try:
        page = context.new_page()
        page.set_content(rendered.html)
        overflow = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
    finally:
        context.close()
    assert overflow <= 0, f"the confirmation mail scrolls sideways by {overflow} px at 375 px"


# The name's lines at the page's width: the tops of the boxes the name's own text takes
# (a Range over the text, wherever it sits in the page), one per line.
_NAME_LINES = """
(name) => {
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const tops = new Set();
  let found = false;
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const at = node.data.indexOf(name);
    if (at < 0) continue;
    found = true;
    const range = document.createRange();
    range.setStart(node, at);
    range.setEnd(node, at + name.length);
    for (const rect of range.getClientRects()) {
      if (rect.width > 0) tops.add(Math.round(rect.top));
    }
  }
  return found ? tops.size : -1;
}
"""


def _byline_pages(author: str, precision: str = "datetime") -> dict[str, str]:
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    from syndicate.config import site_templates_dir
    from syndicate.model import Article, Block, BlockKind, Precision
    from syndicate.site import IndexEntry, SiteInfo, SiteRenderer

    info = SiteInfo(
        title="Tin mới Quảng Trị",
        description="Tin tức mới nhất.",
        base_url="https://tin.example.org/",
        language="vi",
        timezone="Asia/Ho_Chi_Minh",
        page_size=20,
    )
    renderer = SiteRenderer(info, site_templates_dir())
    published = datetime(2024, 10, 31, 9, 15, tzinfo=ZoneInfo("Asia/Ho_Chi_Minh")).astimezone(UTC)
    article = Article(
        id="0" * 32,
        slug="hoi-thao",
        title="Hội thảo chuyển đổi số tại Đông Hà",
        title_derived=False,
        published=published,
        precision=Precision(precision),
        body=(Block(BlockKind.PARAGRAPH, "Sáng nay, hội thảo diễn ra tại TP. Đông Hà."),),
        author=author,
    )
    entry = IndexEntry(
        article.id, article.slug, article.title, published, article.precision, author
    )
    return {
        "article": renderer.render_article(article, slug=article.slug).decode("utf-8"),
        "index": renderer.render_index([entry], archive=None, archives=0).decode("utf-8"),
    }


@pytest.mark.parametrize("precision", ["datetime", "date"])
@pytest.mark.parametrize("page_name", ["article", "index"])
def test_a_byline_name_stays_on_one_line_at_phone_width(
    chromium: Any, page_name: str, precision: str
) -> None:
    """At 375 px the date and byline take two lines: the break fell inside the name
    ("Nguyễn Thị / Minh Khai"). A name that fits a line is kept whole; one longer than
    the line still wraps, and nothing scrolls sideways."""
    short = "Nguyễn Thị Minh Khai"
    long = "Nguyễn Thị Minh Khai, Trần Văn Thành và Lê Hoàng Phương Nam Ban Thời sự"
    context = chromium.new_context(viewport={"width": 375, "height": 800})
    try:
        page = context.new_page()
        for author, most in ((short, 1), (long, 3)):
            page.set_content(_byline_pages(author, precision)[page_name])
            lines = page.evaluate(_NAME_LINES, author)
            overflow = page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert 1 <= lines <= most, f"{author!r} takes {lines} lines at 375 px"
            assert overflow <= 0, f"{author!r} scrolls the page sideways by {overflow} px"
            if author == long:
                assert lines > 1  # it wraps rather than overflow
    finally:
        context.close()


@pytest.mark.parametrize("precision", ["datetime", "date"])
def test_a_byline_name_stays_on_one_line_in_the_digest_at_phone_width(
    chromium: Any, settings: Settings, now: datetime, precision: str
) -> None:
    """The digest's date and byline line, as a phone's mail client lays it out (375 px)."""
    from datetime import date

    from syndicate.digest import DigestInfo, render_digest
    from syndicate.model import Article, Block, BlockKind, DigestPlan, Precision

    short = "Nguyễn Văn Quang Minh"  # broke after "Quang" under a date and time
    long = "Nguyễn Thị Minh Khai, Trần Văn Thành và Lê Hoàng Phương Nam Ban Thời sự"
    context = chromium.new_context(viewport={"width": 375, "height": 800})
    try:
        page = context.new_page()
        for author, most in ((short, 1), (long, 3)):
            article = Article(
                id="1" * 32,
                slug="hoi-thao",
                title="Hội thảo chuyển đổi số tại Đông Hà",
                title_derived=False,
                published=now,
                precision=Precision(precision),
                body=(Block(BlockKind.PARAGRAPH, "Sáng nay, hội thảo diễn ra tại Đông Hà."),),
                author=author,
            )
            rendered = render_digest(
                DigestPlan(day=date(2024, 11, 1), articles=(article,)),
                lang="vi",
                info=DigestInfo.from_settings(settings),
                unsubscribe_url="https://tin.example.org/unsubscribe",
                now=now,
            )
            page.set_content(rendered.html)
            lines = page.evaluate(_NAME_LINES, author)
            overflow = page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert 1 <= lines <= most, f"{author!r} takes {lines} lines at 375 px"
            assert overflow <= 0, f"{author!r} scrolls the mail sideways by {overflow} px"
    finally:
        context.close()


class _PrefixProxy(http.server.BaseHTTPRequestHandler):
    """A reverse proxy as docs/operating.md has it: strips the base path's prefix (the
    request target as the browser sent it, byte for byte) and passes the rest on; it drops
    Origin, as some privacy add-ons and older browsers leave it out, so a sign-up rests on
    the form token and its cookie."""

    segments = 0  # of the base path
    upstream: tuple[str, int] = ("127.0.0.1", 0)
    targets: list[str]

    def _forward(self) -> None:
        self.targets.append(self.path)
        parts = self.path.split("/", self.segments + 1)
        if len(parts) < self.segments + 2:
            self.send_error(404)
            return
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("origin",)}
        upstream = http.client.HTTPConnection(*self.upstream, timeout=10)
        try:
            upstream.request(self.command, "/" + parts[-1], body, headers)
            answer = upstream.getresponse()
            data = answer.read()
            self.send_response(answer.status)
            for name, value in answer.getheaders():
                if name.lower() not in ("connection", "transfer-encoding", "content-length"):
                    self.send_header(name, value)
            self.send_header("content-length", str(len(data)))
            self.send_header("connection", "close")
            self.end_headers()
            self.wfile.write(data)
        finally:
            upstream.close()

    do_GET = do_POST = _forward

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.parametrize("base", ["/a[b]/", "/x|y^z/", "/tin/a;b/", "/b\u1ea3n;tin/"])
def test_the_form_cookie_comes_back_under_any_base_path_a_browser_can_use(
    chromium: Any, live_server: Callable[..., LiveServer], now: datetime, base: str
) -> None:
    # The cookie's Path was percent-encoded with ';[]|^' too ("/a%5Bb%5D/subscribe"), which
    # browsers send raw ("/a[b]/subscribe"): the cookie never came back, and every sign-up
    # without an Origin header was refused (403). A ';' cannot be in a Path at all.
    sock = bind_loopback()
    proxy_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = live_server(public_url=proxy_url + base)
    build_site(server.settings, now)
    upstream = urllib.parse.urlsplit(server.url)
    targets: list[str] = []
    handler = type(
        "Proxy",
        (_PrefixProxy,),
        {
            "segments": base.count("/") - 1,
            "upstream": (upstream.hostname, upstream.port),
            "targets": targets,
        },
    )
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler, bind_and_activate=False)
    proxy.socket.close()
    proxy.socket = sock
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    context = chromium.new_context(locale="vi-VN")
    try:
        page = context.new_page()
        page.goto(proxy_url + base + "subscribe")
        [cookie] = context.cookies()
        page.get_by_label("Địa chỉ email").fill("vy@example.org")
        with page.expect_request(lambda request: request.method == "POST") as posted:
            page.get_by_role("button", name="Đăng ký").click()
        page.wait_for_load_state()
        sent = posted.value.all_headers()
        assert "origin" in sent  # which the proxy drops
        assert f"syndicate_form={cookie['value']}" in sent.get("cookie", "")
        assert page.get_by_role("heading", level=1).inner_text() == "Hãy kiểm tra hộp thư của bạn"
    finally:
        context.close()
        proxy.shutdown()
        proxy.server_close()
    server.mail.wait_for(1)
    assert _status(server, "vy@example.org") is SubscriptionStatus.PENDING
    # The browser asked for the form as the cookie's Path says (no more than the form's
    # folder where a ';' is in the way).
    assert all(target.startswith(cookie["path"]) for target in targets if "subscribe" in target)


# --- A reader's stumbles (the subscriber's side, walked in the browser) ----------------


def _sign_up_in_browser(browser: Browser, address: str, *, newsletter: str) -> str:
    """Sign `address` up through the form (the browser's language), the newsletter in
    `newsletter`; return the confirmation link from the mail's plain-text part."""
    server, page = browser.server, browser.page
    browser.open("subscribe")
    page.locator("#signup-email").fill(address)
    page.locator("#signup-language").select_option(newsletter)
    page.locator("form.signup button").click()
    page.wait_for_load_state()
    [message] = server.mail.wait_for(1)
    body = message.get_body(("plain",))
    assert body is not None
    link = re.search(re.escape(server.url) + r"confirm\?token=[\w-]+", body.get_content())
    assert link, "the confirmation mail has no confirm link"
    return link.group(0)


def _expect_refusals(browser: Browser, *urls: str) -> None:
    """Drop what opening each of `urls` on purpose (a 4xx page) adds to the problems."""
    expected = {f"HTTP 400: {url}" for url in urls} | {
        "console error: Failed to load resource: the server responded with a status of 400 "
        "(Bad Request)"
    }
    browser.problems = [problem for problem in browser.problems if problem not in expected]


def test_an_expired_confirmation_link_speaks_the_language_the_reader_chose(
    browser: Browser,
) -> None:
    """A reader on a Vietnamese browser chose the newsletter in English: the link's page
    speaks English while the link is good, and spoke Vietnamese once it had expired."""
    server, page = browser.server, browser.page
    link = _sign_up_in_browser(browser, "mai@example.org", newsletter="en")
    server.clock.advance(hours=server.settings.subscribe.confirm_hours, seconds=1)
    response = page.goto(link)
    assert response is not None
    assert response.status == 400
    assert page.evaluate("document.documentElement.lang") == "en"
    assert page.get_by_role("heading", level=1).inner_text() == (
        "This confirmation link has expired"
    )
    # The way on, in the same language: the form in English, the newsletter in English.
    page.get_by_role("link", name="Subscribe to the newsletter").click()
    page.wait_for_load_state()
    assert page.evaluate("document.documentElement.lang") == "en"
    assert page.locator("#signup-language").input_value() == "en"
    _expect_refusals(browser, link)


@pytest.mark.parametrize("tail", [".", ")", ",", ">", "”", "%20."])
def test_a_link_with_the_sentences_punctuation_still_confirms_and_unsubscribes(
    browser: Browser, tail: str
) -> None:
    """A link pasted or quoted into a sentence ("... open http://.../confirm?token=X."),
    or between brackets, carries the punctuation after it into the URL: mail clients and
    chat apps make it part of the link. The page said the link "cannot be used"."""
    server, page = browser.server, browser.page
    link = _sign_up_in_browser(browser, "thu@example.org", newsletter="vi")
    browser.open(link.removeprefix(server.url) + tail)
    assert page.get_by_role("heading", level=1).inner_text() == "Xác nhận đăng ký"
    page.get_by_role("button", name="Xác nhận đăng ký").click()
    page.wait_for_load_state()
    assert page.get_by_role("heading", level=1).inner_text() == "Đăng ký đã được xác nhận"
    assert _status(server, "thu@example.org") is SubscriptionStatus.CONFIRMED
    with open_settings_store(server.settings) as db:
        secret = get_secret(server.settings, db)
        found = get_by_email(db, "thu@example.org")
    assert found is not None
    token = tokens.make_token(
        secret,
        purpose="unsubscribe",
        subscriber_id=found.id,
        nonce=found.token_nonce,
        issued_at=server.clock(),
    )
    browser.open(f"unsubscribe?token={token}{tail}")
    page.get_by_role("button", name="Hủy đăng ký").click()
    page.wait_for_load_state()
    assert page.get_by_role("heading", level=1).inner_text() == "Bạn đã hủy đăng ký"
    assert _status(server, "thu@example.org") is SubscriptionStatus.UNSUBSCRIBED


def test_a_confirmation_link_cut_by_a_line_wrap_says_to_open_the_whole_link(
    browser: Browser,
) -> None:
    """A mail client that wraps the plain-text part's long line makes only the first part
    a link (or a reader copies one line of two). The page said the link had expired or
    was altered, and to sign up again: the reader's link was fine, only cut."""
    server, page = browser.server, browser.page
    link = _sign_up_in_browser(browser, "khanh@example.org", newsletter="vi")
    cut = link[:-20]
    response = page.goto(cut)
    assert response is not None
    assert response.status == 400
    assert page.get_by_role("heading", level=1).inner_text() == (
        "Liên kết xác nhận bị thiếu một phần"
    )
    assert "trọn cả liên kết" in page.locator("main").inner_text()
    assert page.locator("button").count() == 0
    assert _status(server, "khanh@example.org") is SubscriptionStatus.PENDING
    # The whole link still works.
    browser.open(link.removeprefix(server.url))
    assert page.get_by_role("heading", level=1).inner_text() == "Xác nhận đăng ký"
    _expect_refusals(browser, cut)


def test_a_reader_who_comes_from_the_feed_finds_the_sign_up_from_the_article(
    browser: Browser,
) -> None:
    """A reader follows a feed item (or a shared link) to an article page: the sign-up
    form was only at the foot of the front page, with no way to it from the article's."""
    server, page = browser.server, browser.page
    rss = (server.settings.paths.output / "rss.xml").read_text(encoding="utf-8")
    first = re.search(r"<item>.*?<link>([^<]+)</link>", rss, re.DOTALL)
    assert first, "the feed has no item link"
    browser.open(first.group(1).removeprefix(server.url))
    follow = page.get_by_role("navigation", name="Theo dõi").get_by_role("link", name="Email")
    assert follow.count() == 1, "no way from the article to the sign-up form"
    follow.click()
    page.wait_for_load_state()
    assert page.evaluate("document.documentElement.lang") == "vi"
    page.get_by_label("Địa chỉ email").fill("phuong@example.org")
    page.get_by_role("button", name="Đăng ký").click()
    page.wait_for_load_state()
    assert page.get_by_role("heading", level=1).inner_text() == "Hãy kiểm tra hộp thư của bạn"
    server.mail.wait_for(1)
    assert _status(server, "phuong@example.org") is SubscriptionStatus.PENDING


def test_a_reader_of_english_finds_the_form_in_english_from_the_vietnamese_pages(
    browser: Browser,
) -> None:
    """The site is in Vietnamese, and its links to the form keep the page's language: a
    reader of English reached the Vietnamese form, with no way to the English one."""
    page = browser.page
    browser.open("")
    page.get_by_role("navigation", name="Theo dõi").get_by_role("link", name="Email").click()
    page.wait_for_load_state()
    assert page.evaluate("document.documentElement.lang") == "vi"
    english = page.get_by_role("link", name="English")
    assert english.count() == 1, "no way from the Vietnamese form to the English one"
    assert english.get_attribute("lang") == "en"
    assert english.get_attribute("hreflang") == "en"
    english.click()
    page.wait_for_load_state()
    assert page.evaluate("document.documentElement.lang") == "en"
    assert page.get_by_role("heading", level=1).inner_text() == "Subscribe to the newsletter"
    assert page.get_by_label("Newsletter language").input_value() == "en"
    # And back.
    vietnamese = page.get_by_role("link", name="Tiếng Việt")
    assert vietnamese.get_attribute("lang") == "vi"
    vietnamese.click()
    page.wait_for_load_state()
    assert page.get_by_role("heading", level=1).inner_text() == "Đăng ký nhận bản tin"


def test_a_refused_address_puts_the_reader_back_in_the_field_with_the_error(
    browser: Browser,
) -> None:
    """An address the browser lets through but the service refuses comes back with the
    error above the field: the focus was nowhere (a keyboard or screen-reader user had to
    find the field again) and the title, which a screen reader reads first, was the form's."""
    server, page = browser.server, browser.page
    browser.open("subscribe")
    page.get_by_label("Địa chỉ email").fill("lan@localhost")
    page.get_by_role("button", name="Đăng ký").click()
    page.wait_for_load_state()
    assert page.title().startswith("Lỗi: Đăng ký nhận bản tin")
    assert page.evaluate("document.activeElement.id") == "signup-email"
    field = page.get_by_label("Địa chỉ email")
    assert field.input_value() == "lan@localhost"
    assert field.get_attribute("aria-invalid") == "true"
    described = page.evaluate(
        "document.getElementById('signup-email').getAttribute('aria-describedby')"
        ".split(' ').map((id) => document.getElementById(id).textContent).join(' ')"
    )
    assert "Địa chỉ email này không hợp lệ" in described
    assert server.signups.count == 0
    expected = {
        f"HTTP 400: {server.url}subscribe?lang=vi",
        "console error: Failed to load resource: the server responded with a status of 400 "
        "(Bad Request)",
    }
    browser.problems = [problem for problem in browser.problems if problem not in expected]


def _skip_to_main(browser: Browser, url: str, label: str) -> None:
    """On `url`, the first Tab focuses the skip link (`label`), shown; Enter moves the focus
    to <main>, and the next Tab goes on from there, past the header."""
    page = browser.page
    response = page.goto(url)
    assert response is not None
    page.keyboard.press("Tab")
    focused = page.evaluate(
        "(() => { const a = document.activeElement; const box = a.getBoundingClientRect();"
        " return [a.className, a.textContent, a.getAttribute('href'), box.width > 20,"
        " box.height > 10]; })()"
    )
    assert focused == ["skip", label, "#main", True, True], url
    page.keyboard.press("Enter")
    page.wait_for_function("document.activeElement.tagName === 'MAIN'")
    assert page.evaluate("document.activeElement.id") == "main", url
    # Out of sight again, and the next Tab lands inside <main>, not on the site's name.
    hidden = page.evaluate("document.querySelector('a.skip').getBoundingClientRect().width")
    assert hidden <= 1, url
    page.keyboard.press("Tab")
    inside = page.evaluate("document.querySelector('main').contains(document.activeElement)")
    assert inside, url


def test_the_first_tab_on_every_page_skips_past_the_header_to_the_content(
    browser: Browser,
) -> None:
    """The first Tab landed on the site's name, then the feed links: a keyboard user went
    through the header on every page before reaching its own content."""
    server = browser.server
    output = server.settings.paths.output
    article = sorted((output / "articles").glob("*.html"))[0].name
    link = _sign_up_in_browser(browser, "khoa@example.org", newsletter="vi")
    pages = {
        "": "Chuyển đến nội dung chính",  # the static pages
        f"articles/{article}": "Chuyển đến nội dung chính",
        "subscribe": "Chuyển đến nội dung chính",  # the service's
        "subscribe?lang=en": "Skip to main content",
        link.removeprefix(server.url): "Chuyển đến nội dung chính",
        "unsubscribe?lang=en": "Skip to main content",
    }
    for path, label in pages.items():
        _skip_to_main(browser, server.url + path, label)


def test_the_first_tab_on_the_digest_page_skips_past_the_site_name_to_its_heading(
    browser: Browser,
) -> None:
    """The "view in browser" page had no skip link and no <main>, unlike every other page:
    the first Tab landed on the site's name."""
    server, page = browser.server, browser.page
    digests = server.settings.paths.output / "digests"
    vietnamese = sorted(p for p in digests.glob("*.html") if p.name.count(".") == 1)[0]
    english = sorted(digests.glob("*.en.html"))[0]
    for path, label in (
        (vietnamese, "Chuyển đến nội dung chính"),
        (english, "Skip to main content"),
    ):
        browser.open(f"digests/{path.name}")
        assert page.evaluate("document.querySelectorAll('main').length") == 1, path.name
        page.keyboard.press("Tab")
        focused = page.evaluate(
            "(() => { const a = document.activeElement; const box = a.getBoundingClientRect();"
            " return [a.className, a.textContent, box.width > 20, box.height > 10]; })()"
        )
        assert focused == ["skip", label, True, True], path.name
        page.keyboard.press("Enter")
        page.wait_for_function("document.activeElement.tagName === 'H1'")
        hidden = page.evaluate("document.querySelector('a.skip').getBoundingClientRect().width")
        assert hidden <= 1, path.name
        # The next Tab goes on from the heading, in <main>: the site's name is behind it.
        page.keyboard.press("Tab")
        after = page.evaluate(
            "[document.querySelector('main').contains(document.activeElement),"
            " document.activeElement.className]"
        )
        assert after == [True, ""], path.name
        # Every link but the skip link is in <main>.
        outside = page.evaluate(
            "[...document.querySelectorAll('a')].filter(a => !a.closest('main'))"
            ".map(a => a.className)"
        )
        assert outside == ["skip"], path.name

"""What syndicate publishes, checked by real validators (tests/plugins/published.py makes it).

- HTML: the Nu Html Checker (vnu.jar, one JVM for every page) over the static site,
  the pages `serve` renders and the mails' HTML parts.
- Atom: RFC 4287's RELAX NG schema (Appendix B, tests/data/schemas/), with lxml, and
  the two rules the RFC writes as Schematron beside it.
- RSS 2.0: the RSS Advisory Board's rules; JSON Feed 1.1: its spec's fields and types.
- Accessibility: axe-core in headless Chromium; no serious or critical violation.

The tools come from npm (vnu-jar, axe-core) and Debian (a Java runtime, Chromium);
`.ci/run` installs them and names them in VNU_JAR and AXE_CORE_JS. A test whose tool is
missing skips and says what to install (CONTRIBUTING.md).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import datetime
from email.utils import parsedate_to_datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from lxml import etree

from tests.plugins.published import Published, publish_all

SCHEMAS = Path(__file__).resolve().parent / "data" / "schemas"
ATOM = "{http://www.w3.org/2005/Atom}"
CONTENT_ENCODED = "{http://purl.org/rss/1.0/modules/content/}encoded"
CHROMIUM = Path("/usr/bin/chromium")

# What mail clients need that the HTML standard calls obsolete or unknown. Each entry is
# one message of the checker (a regular expression over its text) and why we keep it; the
# mails and the digest's web page (the same HTML) may show these and nothing else. An
# entry no mail needs any longer fails the test, so the list only shrinks.
MAIL_NEEDS = {
    # Outlook on Windows lays out with Word's engine, which ignores CSS widths, padding
    # and vertical alignment: the layout tables carry them as attributes too.
    r"^The “(align|border|cellpadding|cellspacing|valign|width)” attribute on the "
    r"“(table|td)” element is obsolete\.": "Outlook's layout tables",
    # Outlook shows the hidden preheader unless told `mso-hide: all`, its own property.
    r"^CSS: “mso-hide”: Property “mso-hide” doesn't exist\.$": "Outlook hides the preheader",
    # Apple Mail stops shrinking the text of a message that carries this meta name; the
    # switch is the bare name, written as Apple Mail looks for it, without a content.
    r"^Element “meta” is missing one or more of the following attributes: “content”, "
    r"“property”\.$": "Apple Mail's x-apple-disable-message-reformatting",
}


def _tool(variable: str, *, what: str) -> Path:
    """The file an environment variable names (set by .ci/run), or skip saying how to get it."""
    named = os.environ.get(variable, "")
    if not named or not Path(named).is_file():
        pytest.skip(f"{what} not found: set {variable} to it (see CONTRIBUTING.md, 'Validators')")
    return Path(named)


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Published]:
    """Everything published, in Vietnamese and English; the live servers stay up for axe."""
    with ExitStack() as stack:
        yield publish_all(stack, tmp_path_factory.mktemp("published"))


# C1 only and the serial collector: the run is short, so the JIT's second tier and a
# parallel collector cost more CPU than they save (5.6 s of CPU down to 2.5 s here). The
# checker's schema needs a deep stack.
JAVA_OPTIONS = ("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Xss16m")


@pytest.fixture(scope="module")
def vnu(published: Published) -> dict[str, list[dict[str, Any]]]:
    """The Nu Html Checker's messages for every HTML document, by file name: one JVM."""
    jar = _tool("VNU_JAR", what="the Nu Html Checker (npm package vnu-jar: vnu.jar)")
    java = shutil.which("java")
    if java is None:
        pytest.skip("no java: the Nu Html Checker needs Java (apt install default-jre-headless)")
    files = [*published.site, *published.web, *published.mail]
    done = subprocess.run(
        [java, *JAVA_OPTIONS, "-jar", str(jar), "--format", "json", *map(str, files)],
        capture_output=True,
        timeout=120,
        check=False,
    )
    report = json.loads(done.stderr)  # vnu writes its report on stderr; exit 1 on errors
    messages: dict[str, list[dict[str, Any]]] = {path.name: [] for path in files}
    for message in report["messages"]:
        name = Path(urlsplit(message.get("url", "")).path).name
        assert name in messages, f"vnu: {message}"
        messages[name].append(message)
    return messages


def _described(name: str, messages: list[dict[str, Any]]) -> list[str]:
    return [
        f"{name}:{m.get('lastLine', '?')}: {m['type']}/{m.get('subType', '')}: {m['message']}"
        for m in messages
    ]


@pytest.mark.slow(seconds=12)
def test_site_pages_are_valid_html(published: Published, vnu: dict[str, list[Any]]) -> None:
    pages = [path for path in published.site if not path.name.startswith(_DIGEST_PAGES)]
    assert len(pages) >= 4, "the build wrote too few pages to check"
    found = [line for path in pages for line in _described(path.name, vnu[path.name])]
    assert found == []


@pytest.mark.slow(seconds=12)
def test_served_pages_are_valid_html(published: Published, vnu: dict[str, list[Any]]) -> None:
    found = [line for path in published.web for line in _described(path.name, vnu[path.name])]
    assert found == []


_DIGEST_PAGES = ("vi-site-digests-", "en-site-digests-")


@pytest.mark.slow(seconds=12)
def test_mail_html_is_valid_but_for_what_mail_clients_need(
    published: Published, vnu: dict[str, list[Any]]
) -> None:
    # The digest's "view in browser" pages are the mail's HTML part (send/digests.py): one
    # per language on each site (<day>.html in its own, <day>.<lang>.html in the other).
    pages = [*published.mail, *(p for p in published.site if p.name.startswith(_DIGEST_PAGES))]
    assert len(pages) == 8, [p.name for p in pages]
    used: set[str] = set()
    found = []
    for path in pages:
        for message in vnu[path.name]:
            needs = [need for need in MAIL_NEEDS if re.search(need, message["message"])]
            used.update(needs)
            if not needs:
                found += _described(path.name, [message])
    assert found == []
    assert set(MAIL_NEEDS) - used == set(), "an allowed message no mail shows any longer"


# --- feeds -------------------------------------------------------------------------------


def _absolute(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


class _Links(HTMLParser):
    """The URLs an HTML fragment links to or loads (href, src)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value or "" for name, value in attrs if name in ("href", "src")]


def _relative_links(html: str) -> list[str]:
    links = _Links()
    links.feed(html)
    return [url for url in links.urls if not _absolute(url) and not url.startswith("mailto:")]


def test_atom_feeds_match_the_rfc_4287_schema(published: Published) -> None:
    schema = etree.RelaxNG(etree.parse(str(SCHEMAS / "atom.rng")))
    assert len(published.atom) == 2
    for path in published.atom:
        feed = etree.parse(str(path))
        assert schema.validate(feed), f"{path}: {schema.error_log}"
        # The RFC's Schematron rules, which RELAX NG does not check.
        root = feed.getroot()
        feed_author = root.find(f"{ATOM}author") is not None
        for entry in root.iter(f"{ATOM}entry"):
            where = f"{path}: entry {entry.findtext(f'{ATOM}id')}"
            assert feed_author or entry.find(f"{ATOM}author") is not None, where
            alternate = [
                link
                for link in entry.iter(f"{ATOM}link")
                if link.get("rel", "alternate") == "alternate"
            ]
            assert alternate or entry.find(f"{ATOM}content") is not None, where
            for link in [*entry.iter(f"{ATOM}link"), *root.findall(f"{ATOM}link")]:
                assert _absolute(link.get("href", "")), f"{where}: {link.get('href')}"
            for html in entry.iter(f"{ATOM}content", f"{ATOM}summary"):
                if html.get("type") == "html":
                    assert _relative_links(html.text or "") == [], where


# RFC 822 dates (section 5), with the four-digit year the RSS Advisory Board recommends.
RFC_822 = re.compile(
    r"^(?:(?P<day>Mon|Tue|Wed|Thu|Fri|Sat|Sun), )?\d{1,2} "
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d{2}:\d{2}(:\d{2})? "
    r"([+-]\d{4}|UT|GMT|[ECMP][SD]T|[A-IK-Z])$"
)
MARKUP = re.compile(r"<[A-Za-z/!?]|&[A-Za-z#][A-Za-z0-9]*;")


def _rss_date(text: str | None, where: str) -> datetime:
    assert text is not None, f"{where}: no date"
    matched = RFC_822.match(text)
    assert matched, f"{where}: not an RFC 822 date: {text!r}"
    when = parsedate_to_datetime(text)
    if matched["day"]:
        assert when.strftime("%a") == matched["day"], f"{where}: the wrong weekday in {text!r}"
    return when


def test_rss_feeds_follow_the_rss_advisory_board_rules(published: Published) -> None:
    assert len(published.rss) == 2
    for path in published.rss:
        root = etree.parse(str(path)).getroot()
        assert root.tag == "rss", path
        assert root.get("version") == "2.0", path
        [channel] = root.findall("channel")
        for required in ("title", "link", "description"):
            assert (channel.findtext(required) or "").strip(), f"{path}: channel {required}"
        assert _absolute(channel.findtext("link") or ""), path
        assert not MARKUP.search(channel.findtext("title") or ""), path
        language = channel.findtext("language")
        if language is not None:
            assert re.fullmatch(r"[a-z]{2,3}(-[A-Za-z0-9]{1,8})*", language), path
        for dated in ("pubDate", "lastBuildDate"):
            if channel.find(dated) is not None:
                _rss_date(channel.findtext(dated), f"{path}: channel {dated}")
        items = channel.findall("item")
        assert items, f"{path}: no items"
        guids = []
        for item in items:
            where = f"{path}: item {item.findtext('guid')}"
            title, description = item.findtext("title"), item.findtext("description")
            assert title or description, f"{where}: neither title nor description"
            assert not MARKUP.search(title or ""), f"{where}: markup in the title {title!r}"
            assert _absolute(item.findtext("link") or ""), where
            guid = item.find("guid")
            assert guid is not None, f"{where}: no guid"
            assert (guid.text or "").strip(), f"{where}: an empty guid"
            guids.append(guid.text)
            if guid.get("isPermaLink", "true") == "true":
                assert _absolute(guid.text or ""), f"{where}: a permalink guid not a URL"
            if item.find("pubDate") is not None:
                _rss_date(item.findtext("pubDate"), where)
            for html in (description, item.findtext(CONTENT_ENCODED)):
                assert _relative_links(html or "") == [], where
        assert len(set(guids)) == len(guids), f"{path}: a guid used twice"


def _rfc_3339(text: object, where: str) -> None:
    assert isinstance(text, str), where
    assert re.match(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$", text), (
        f"{where}: not RFC 3339: {text!r}"
    )


def _authors(value: object, where: str) -> None:
    assert isinstance(value, list), f"{where}: authors"
    assert value, f"{where}: no authors"
    for author in value:
        assert isinstance(author, dict), where
        assert {"name", "url", "avatar"} & author.keys(), f"{where}: an author with nothing"
        assert all(isinstance(author[key], str) for key in author), where


def test_json_feeds_follow_json_feed_1_1(published: Published) -> None:
    assert len(published.json) == 2
    for path in published.json:
        feed = json.loads(path.read_bytes())
        assert feed.get("version") == "https://jsonfeed.org/version/1.1", path
        assert isinstance(feed.get("title"), str), f"{path}: no title"
        assert feed["title"], path
        for key in ("home_page_url", "feed_url"):
            assert _absolute(feed[key]), f"{path}: {key}"
        for key in ("description", "language", "icon", "favicon", "next_url"):
            assert isinstance(feed.get(key, ""), str), f"{path}: {key}"
        if "authors" in feed:
            _authors(feed["authors"], f"{path}: feed")
        assert isinstance(feed.get("items"), list), f"{path}: no items"
        assert feed["items"], path
        ids = []
        for item in feed["items"]:
            where = f"{path}: item {item.get('id')}"
            assert isinstance(item.get("id"), str), f"{where}: no id"
            assert item["id"], f"{where}: an empty id"
            ids.append(item["id"])
            assert "content_html" in item or "content_text" in item, where
            for key in ("url", "title", "content_html", "content_text", "summary", "language"):
                assert isinstance(item.get(key, ""), str), f"{where}: {key}"
            assert _absolute(item["url"]), where
            assert not MARKUP.search(item.get("title", "")), where
            for key in ("date_published", "date_modified"):
                if key in item:
                    _rfc_3339(item[key], f"{where}: {key}")
            if "authors" in item:
                _authors(item["authors"], where)
            assert isinstance(item.get("tags", []), list), where
            assert _relative_links(item.get("content_html", "")) == [], where
        assert len(set(ids)) == len(ids), f"{path}: an id used twice"


# --- accessibility -----------------------------------------------------------------------


@pytest.mark.browser
@pytest.mark.slow(seconds=20)
@pytest.mark.skipif(not CHROMIUM.exists(), reason="no Chromium at /usr/bin/chromium")
def test_pages_have_no_serious_accessibility_violations(published: Published) -> None:
    """axe-core over every kind of page in both languages: the index, the digest page, two
    articles (one from the shared dump), and each page `serve` renders; in the light
    colour scheme, and the contrast again in the dark one. Pages that answer a POST are
    shown from their saved bytes, on the server's origin (for its styles)."""
    axe = _tool("AXE_CORE_JS", what="axe-core (npm package axe-core: axe.min.js)")
    sync_api = pytest.importorskip("playwright.sync_api")
    pages = [*_some_site_pages(published.site), *published.web]
    found = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            # axe is injected into each page; our pages' CSP would rightly refuse it.
            context = browser.new_context(bypass_csp=True)
            context.add_init_script(path=str(axe))
            page = context.new_page()
            for path in pages:
                url = published.urls[path.name]
                page.goto(url)
                if url.endswith("/"):  # answered a POST: show the saved page here
                    page.set_content(path.read_text(encoding="utf-8"))
                page.emulate_media(color_scheme="light")
                found += _serious(path.name, page.evaluate(AXE_RUN, {}))
                # The pages have dark colours of their own: their contrast too.
                page.emulate_media(color_scheme="dark")
                found += _serious(f"{path.name} (dark)", page.evaluate(AXE_RUN, AXE_CONTRAST))
        finally:
            browser.close()
    assert found == []


AXE_RUN = "(options) => axe.run(document, {resultTypes: ['violations'], ...options})"
AXE_CONTRAST = {"runOnly": ["color-contrast"]}
# What a page of the site has and the "view in browser" digest page had not: one <main>
# landmark holding the content, and a way past the repeated links (moderate, not serious).
AXE_LANDMARKS = {"runOnly": ["landmark-one-main", "region", "bypass", "skip-link"]}


@pytest.mark.browser
@pytest.mark.slow(seconds=10)
@pytest.mark.skipif(not CHROMIUM.exists(), reason="no Chromium at /usr/bin/chromium")
def test_the_digest_pages_have_a_main_landmark_and_a_skip_link(published: Published) -> None:
    """axe-core's landmark and bypass rules, every impact, over the digest's web pages in
    both languages on both sites (the mail's HTML part, which mail clients show inside
    their own page, has none on purpose)."""
    axe = _tool("AXE_CORE_JS", what="axe-core (npm package axe-core: axe.min.js)")
    sync_api = pytest.importorskip("playwright.sync_api")
    pages = [path for path in published.site if path.name.startswith(_DIGEST_PAGES)]
    assert len(pages) == 4, [path.name for path in pages]
    found = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            context = browser.new_context(bypass_csp=True)
            context.add_init_script(path=str(axe))
            page = context.new_page()
            for path in pages:
                page.goto(published.urls[path.name])
                result = page.evaluate(AXE_RUN, AXE_LANDMARKS)
                found += [
                    f"{path.name}: {v['impact']} {v['id']}: {v['help']}"
                    for v in result["violations"]
                ]
        finally:
            browser.close()
    assert found == []


def _serious(name: str, result: dict[str, Any]) -> list[str]:
    return [
        f"{name}: {v['impact']} {v['id']}: {v['help']} at "
        f"{[node['target'] for node in v['nodes']][:3]}"
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def _some_site_pages(site: list[Path]) -> list[Path]:
    """Per language: the index, the digest page and the first two articles by name."""
    chosen = []
    for lang in ("vi", "en"):
        mine = sorted(path for path in site if path.name.startswith(f"{lang}-site-"))
        articles = [path for path in mine if "-site-articles-" in path.name]
        chosen += [path for path in mine if "-articles-" not in path.name] + articles[:2]
    return chosen

"""Everything syndicate publishes, made once: the static site and feeds, the pages `serve`
renders, the digest and confirmation mails, in Vietnamese and in English.

`publish_all(folder)` builds two projects from the shipped seeds (and the shared sample
dump, where there is one), each with a live server (tests/plugins/web.py), walks a reader
through sign-up, confirmation and unsubscribing, asks for pages that fail, and sends a
test copy of the digest to the outbox. It returns the documents by kind, for the
validators of tests/test_validators.py.
"""

from __future__ import annotations

import dataclasses
import email
import email.policy
import re
import shutil
from contextlib import ExitStack
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import httpx

from syndicate import tokens
from syndicate.config import load_settings
from syndicate.send.daily import preview
from syndicate.store.meta import get_secret
from syndicate.store.subscribers import get_by_email
from tests.plugins.web import (
    CONFIRMATIONS,
    FIXED_NOW,
    ROOT,
    LiveServer,
    build_site,
    open_settings_store,
    start_live_server,
)

# The shared sample dump (tests/conftest.py's SHARED_SEEDS), beside the main checkout or
# beside the folder of worktrees; absent elsewhere, and then not published.
SHARED_SEEDS = [ROOT.parent / "shared" / "seeds", ROOT.parent.parent / "shared" / "seeds"]
LANGUAGES = ("vi", "en")
_FORM_TOKEN = re.compile(r'name="form_token" value="([^"]+)"')
_CONFIRM = re.compile(r"confirm\?token=[A-Za-z0-9_\-]+")


@dataclass
class Published:
    """Files by kind; each file's name says what it is (`vi-site-index.html`)."""

    site: list[Path] = field(default_factory=list)  # the static site `build` writes
    web: list[Path] = field(default_factory=list)  # pages `serve` renders
    mail: list[Path] = field(default_factory=list)  # HTML parts of mails
    atom: list[Path] = field(default_factory=list)
    rss: list[Path] = field(default_factory=list)
    json: list[Path] = field(default_factory=list)
    # page file name -> where it was served: its own URL, or (a page answering a POST)
    # the server's base URL, where a browser shows the saved page with the site's styles
    urls: dict[str, str] = field(default_factory=dict)


def _html_part(message: EmailMessage) -> str:
    part = message.get_body(("html",))
    assert part is not None, "a mail without an HTML part"
    return str(part.get_content())


def _fetch(client: httpx.Client, method: str, path: str, **options: object) -> httpx.Response:
    response = client.request(method, path, **options)  # type: ignore[arg-type]
    assert "text/html" in response.headers.get("content-type", ""), (method, path)
    return response


def _walk_the_web(server: LiveServer, lang: str, out: Path, found: Published) -> None:
    """Sign up, confirm, unsubscribe, and the error pages; save each page served."""
    pages: list[tuple[str, str, httpx.Response]] = []
    with httpx.Client(base_url=server.url, timeout=10) as client:
        form = _fetch(client, "GET", "subscribe", params={"lang": lang})
        pages.append(("subscribe", f"subscribe?lang={lang}", form))
        token = _FORM_TOKEN.search(form.text)
        assert token, "the sign-up page has no form token"
        data = {"email": f"{lang}@example.org", "language": lang, "form_token": token.group(1)}
        pages.append(("subscribed", "", _fetch(client, "POST", "subscribe", data=data)))
        bad = {**data, "email": "not an address"}
        pages.append(("subscribe-invalid", "", _fetch(client, "POST", "subscribe", data=bad)))
        [message] = server.mail.wait_for(1)
        html = _html_part(message)
        mail_file = out / f"{lang}-mail-confirmation.html"
        mail_file.write_text(html, encoding="utf-8")
        found.mail.append(mail_file)
        link = _CONFIRM.search(html)
        assert link, "the confirmation mail has no confirm link"
        pages.append(("confirm", link.group(0), _fetch(client, "GET", link.group(0))))
        pages.append(("confirmed", "", _fetch(client, "POST", link.group(0))))
        pages.append(("confirm-bad-token", "", _fetch(client, "GET", "confirm?token=x")))
        generic = f"unsubscribe?lang={lang}"
        pages.append(("unsubscribe", generic, _fetch(client, "GET", generic)))
        leave = f"unsubscribe?token={_unsubscribe_token(server, data['email'])}"
        pages.append(("unsubscribe-button", leave, _fetch(client, "GET", leave)))
        pages.append(("unsubscribed", "", _fetch(client, "POST", leave)))
        pages.append(("not-found", "", _fetch(client, "GET", "no-such-page.html")))
        pages.append(("forbidden", "", _fetch(client, "POST", "subscribe", data={"email": "x"})))
    for name, url, response in pages:
        path = out / f"{lang}-web-{name}.html"
        path.write_bytes(response.content)
        found.web.append(path)
        found.urls[path.name] = server.url + url


def _unsubscribe_token(server: LiveServer, address: str) -> str:
    """The token of the unsubscribe link a digest to `address` would carry."""
    with open_settings_store(server.settings) as db:
        secret = get_secret(server.settings, db)
        found = get_by_email(db, address)
    assert found is not None
    return tokens.make_token(
        secret,
        purpose="unsubscribe",
        subscriber_id=found.id,
        nonce=found.token_nonce,
        issued_at=server.clock(),
    )


def _publish_one(stack: ExitStack, work: Path, lang: str, out: Path, found: Published) -> None:
    (work / "seeds").mkdir(parents=True)
    settings = load_settings(None, {}, cwd=work)
    # English with small pages: the build writes archive pages too.
    size = settings.site.page_size if lang == "vi" else 4
    site = dataclasses.replace(settings.site, language=lang, page_size=size)
    unlimited = dataclasses.replace(settings.subscribe, rate_limit=1_000_000)
    server = start_live_server(stack, settings, FIXED_NOW, site=site, subscribe=unlimited)
    for folder in SHARED_SEEDS:
        if folder.is_dir():
            shutil.copytree(folder, server.settings.paths.seeds, dirs_exist_ok=True)
            break
    build_site(server.settings, FIXED_NOW)
    built = server.settings.paths.output
    for page in sorted(built.rglob("*.html")):
        name = "-".join(page.relative_to(built).parts)
        copy = out / f"{lang}-site-{name}"
        shutil.copyfile(page, copy)
        found.site.append(copy)
        found.urls[copy.name] = server.url + page.relative_to(built).as_posix()
    for feed, kind in (("atom.xml", found.atom), ("rss.xml", found.rss), ("feed.json", found.json)):
        for each in sorted(built.rglob(feed)):
            kind.append(each)
    _walk_the_web(server, lang, out, found)
    shown = preview(
        server.settings,
        open_db=lambda: stack.enter_context(open_settings_store(server.settings)),
        now=FIXED_NOW,
        to=f"reader-{lang}@example.org",
        dry_run=False,
    )
    assert shown is not None, "no digest to send from the shipped seeds"
    outbox = server.settings.paths.outbox
    [sent] = [each for each in outbox.rglob("*.eml") if CONFIRMATIONS not in each.parts]
    message = email.message_from_bytes(sent.read_bytes(), policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    digest = out / f"{lang}-mail-digest.html"
    digest.write_text(_html_part(message), encoding="utf-8")
    found.mail.append(digest)


def publish_all(stack: ExitStack, folder: Path) -> Published:
    """Publish both languages under `folder`; the servers run until `stack` closes."""
    out = folder / "documents"
    out.mkdir()
    found = Published()
    for lang in LANGUAGES:
        _publish_one(stack, folder / lang, lang, out, found)
    return found

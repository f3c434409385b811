"""Every link syndicate writes leads to a file the build wrote: pages, feeds and digests read
the page path the build stored, and an article without a page is linked to nothing."""

from __future__ import annotations

import html
import json
import re
import shutil
from datetime import datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import feedparser
import pytest
from click.testing import CliRunner

from syndicate.cli import AppContext, cli
from tests.conftest import FIXED_NOW

pytestmark = pytest.mark.usefixtures("store")

BASE = "https://news.example.org/"
# Served by `syndicate serve`, not files of the output folder.
WEB_ROUTES = {"subscribe", "confirm", "unsubscribe", "healthz"}
TITLE = "Khánh thành cầu mới"

# Two articles with the same title: the first built from extra/, the other from seeds/.
# Each advertises the other in its teasers.
EXTRA_DUMP = f"""{TITLE}
01/11/2024 08:00
LGO - Sáng nay 1/11, huyện Đông Lam khánh thành cầu Bến Đò bắc qua sông Hiếu sau một năm thi công.
Cầu Bến Đò dài 120 m, rộng 9 m, vốn đầu tư 45 tỷ đồng từ ngân sách huyện và xã hội hóa.
Người dân hai xã Đông Lam và Tây Lam không còn phải đi đò qua sông mỗi sáng.
LGO - Sáng nay 1/11, TP. Bến Lam khánh thành cầu Cửa Tùng nối hai phường ven biển...
"""
SEEDS_DUMP = f"""{TITLE}
01/11/2024 10:00
LGO - Sáng nay 1/11, TP. Bến Lam khánh thành cầu Cửa Tùng nối hai phường ven biển của thành phố.
Cầu Cửa Tùng dài 300 m với bốn làn xe, tổng vốn hơn 200 tỷ đồng từ ngân sách tỉnh.
Công trình giúp giảm ùn tắc trên quốc lộ ven biển vào giờ cao điểm.
LGO - Sáng nay 1/11, huyện Đông Lam khánh thành cầu Bến Đò bắc qua sông Hiếu...
"""
OTHER_DUMP = """Mở rộng chợ phiên Tân Lam
{day}/11/2024 07:30
LGO - Sáng {day}/11, xã Tân Lam khai trương khu chợ phiên mở rộng với hơn 80 gian hàng nông sản.
Khu chợ mới của xã Tân Lam có mái che, bãi đỗ xe và khu vệ sinh công cộng cho người dân.
"""


@pytest.fixture
def site(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (workdir / "extra").mkdir()
    (workdir / "syndicate.toml").write_text(f'[site]\nbase_url = "{BASE}"\n', encoding="utf-8")
    monkeypatch.chdir(workdir)
    for name in ("SYNDICATE_CONFIG", "SYNDICATE_SECRET", "SYNDICATE_SMTP_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    _at(monkeypatch, FIXED_NOW)
    return workdir


def _at(monkeypatch: pytest.MonkeyPatch, moment: datetime) -> None:
    monkeypatch.setattr(AppContext, "now", lambda self: moment.timestamp())


def _run(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, (args, result.stdout, result.stderr)
    return result.stdout


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("href", "src") and value:
                self.links.append(value)


def _html_links(text: str) -> list[str]:
    parser = _Links()
    parser.feed(text)
    return parser.links


def _dangling(output: Path, url: str) -> bool:
    """True when `url` is one of the site's and no file in the output folder answers it."""
    if not url.startswith(BASE):
        return False  # another site, mailto:, an anchor
    rel = urlsplit(url).path[len(urlsplit(BASE).path) :]
    if rel in WEB_ROUTES:
        return False
    if rel == "" or rel.endswith("/"):
        rel += "index.html"
    return not (output / rel).is_file()


def _feed_links(output: Path) -> list[str]:
    links: list[str] = []
    for name in ("rss.xml", "atom.xml"):
        parsed = feedparser.parse((output / name).read_bytes())
        assert not parsed.bozo, (name, parsed.get("bozo_exception"))
        links += [link.href for entry in parsed.entries for link in entry.links]
        links += [entry.link for entry in parsed.entries]
    data = json.loads((output / "feed.json").read_text(encoding="utf-8"))
    links += [data["home_page_url"], data["feed_url"]]
    links += [item["url"] for item in data["items"]]
    return links


def _parts(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(("plain",))
    page = message.get_body(("html",))
    assert text is not None
    assert page is not None
    return text.get_content(), page.get_content()


def _digest_items(text: str) -> list[tuple[str, str | None]]:
    """(lead, read-more URL or None) of each article in a digest's text part."""
    items = []
    blocks = text.replace("\r\n", "\n").split("-" * 72)[1:]
    for block in blocks:
        block = block.split("\n-- \n")[0]  # the last one runs into the footer
        if not re.match(r"\s*\d+\. ", block):
            continue  # the other news, the footer
        url = re.search(r"^[^\n:]+: (https?://\S+)$", block, re.M)
        # The lead is the paragraph after the title and date lines.
        lead = block.strip().split("\n\n")[1]
        items.append((lead, url.group(1) if url else None))
    return items


def _walk(output: Path, mails: list[EmailMessage], day_pages: list[str]) -> list[str]:
    """Every site link in every page and feed of the output folder, the digests' web pages
    named in `day_pages` and the digest mails that does not lead to a file: [] when all do."""
    bad = []
    for page in sorted(output.rglob("*.html")):
        rel = page.relative_to(output).as_posix()
        if rel.startswith("digests/") and rel not in day_pages:
            continue  # an earlier day's digest page: what was sent then
        for href in _html_links(page.read_text(encoding="utf-8")):
            url = urljoin(BASE + rel, href)
            if _dangling(output, url):
                bad.append(f"{rel}: {href}")
    bad += [f"feed: {url}" for url in _feed_links(output) if _dangling(output, url)]
    for message in mails:
        text, page = _parts(message)
        urls = re.findall(r"https?://\S+", text) + _html_links(page)
        bad += [f"mail {message['To']}: {url}" for url in urls if _dangling(output, url)]
        # Each article links to its own page, never to another with the same title.
        for lead, url in _digest_items(text):
            if url is None:
                continue
            shown = html.unescape((output / url[len(BASE) :]).read_text(encoding="utf-8"))
            if lead.rstrip("…").strip()[:60] not in shown:
                bad.append(f"mail {message['To']}: {url} is another article's page")
    return bad


def _mails(output_root: Path, day: str) -> list[EmailMessage]:
    folder = output_root / "outbox" / day
    return [
        message_from_bytes(p.read_bytes(), policy=policy.default)  # type: ignore[misc]
        for p in sorted(folder.glob("*.eml"))
    ]


def _sent_day(out: str) -> str:
    match = re.match(r"Digest (\d{4}-\d\d-\d\d): sent 1,", out)
    assert match, out
    return match.group(1)


def test_a_digest_links_each_article_to_its_own_page_after_builds_from_two_folders(
    site: Path,
) -> None:
    # The steps: a build from extra/, then the same title in seeds/, then send.
    (site / "extra" / "cau.txt").write_text(EXTRA_DUMP, encoding="utf-8")
    _run("build", "extra")
    (site / "seeds" / "cau.txt").write_text(SEEDS_DUMP, encoding="utf-8")
    _run("build")
    _run("subscribers", "add", "an@example.org")
    day = _sent_day(_run("send"))
    mails = _mails(site, day)
    assert len(mails) == 1
    assert _walk(site / "feeds", mails, [f"digests/{day}.html"]) == []
    text, _html = _parts(mails[0])
    items = _digest_items(text)
    # The extra/ article has no page (the seeds build took it down): it still appears,
    # unlinked; the seeds article links to its page.
    assert sorted(url or "" for _lead, url in items) == [
        "",
        f"{BASE}articles/khanh-thanh-cau-moi.html",
    ]


def _page_of(output: Path, phrase: str) -> str:
    [page] = [
        p.name for p in (output / "articles").iterdir() if phrase in p.read_text(encoding="utf-8")
    ]
    return page


def test_a_page_keeps_its_path_through_builds_of_other_folders(site: Path) -> None:
    output = site / "feeds"
    (site / "extra" / "cau.txt").write_text(EXTRA_DUMP, encoding="utf-8")
    (site / "seeds" / "cau.txt").write_text(SEEDS_DUMP, encoding="utf-8")
    _run("build", "extra")
    _run("build", "seeds", "extra")  # the extra/ article, seen first, keeps the plain slug
    assert _page_of(output, "Bến Đò bắc qua") == "khanh-thanh-cau-moi.html"
    suffixed = _page_of(output, "Cửa Tùng nối hai")
    assert suffixed.startswith("khanh-thanh-cau-moi-")
    _run("build")  # seeds/ alone: its article's page stays put, the other one goes
    assert sorted(p.name for p in (output / "articles").iterdir()) == [suffixed]
    _run("build", "extra", "seeds")
    assert _page_of(output, "Cửa Tùng nối hai") == suffixed
    assert _page_of(output, "Bến Đò bắc qua") == "khanh-thanh-cau-moi.html"


def test_every_link_resolves_after_builds_from_different_folders(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seeds, extra, output = site / "seeds", site / "extra", site / "feeds"
    _run("subscribers", "add", "an@example.org")
    (extra / "cau.txt").write_text(EXTRA_DUMP, encoding="utf-8")
    (extra / "cho.txt").write_text(OTHER_DUMP.format(day="01"), encoding="utf-8")
    (seeds / "cau.txt").write_text(SEEDS_DUMP, encoding="utf-8")
    steps = [
        lambda: _run("build", "extra"),
        lambda: _run("build"),
        lambda: _run("build", "extra", "seeds"),
        lambda: (seeds / "cau.txt").unlink(),  # a dump removed
        lambda: _run("build", "seeds", "extra"),
        lambda: shutil.copy(extra / "cau.txt", seeds / "cau-copy.txt"),  # the same, twice
        lambda: (seeds / "cau.txt").write_text(SEEDS_DUMP, encoding="utf-8"),  # re-added
        lambda: _run("build", "extra"),
    ]
    for number, step in enumerate(steps):
        step()
        if (output / "index.html").exists():
            assert _walk(output, [], []) == [], f"after step {number}"
        # A digest a day, sent after the step (its own build is of seeds/).
        _at(monkeypatch, FIXED_NOW + timedelta(days=number))
        (seeds / f"cho-{number}.txt").write_text(
            OTHER_DUMP.format(day=f"{number + 1:02}").replace("Tân Lam", f"Lam {number}"),
            encoding="utf-8",
        )
        day = _sent_day(_run("send"))
        mails = _mails(site, day)
        bad = _walk(output, mails, [f"digests/{day}.html"])
        assert bad == [], f"after step {number}"
        # Not vacuous: the day's new seeds/ article is linked to its page.
        assert [url for _lead, url in _digest_items(_parts(mails[0])[0]) if url], number

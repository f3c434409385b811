"""Build edge: dumps -> store -> feeds and pages, incremental and deterministic."""

from __future__ import annotations

import dataclasses
import html
import json
import logging
import multiprocessing
import os
import posixpath
import re
import subprocess
import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import feedparser
import pytest

from syndicate import i18n, load, publish
from syndicate.config import Settings, load_settings
from syndicate.errors import InputError, WorkerError
from syndicate.publish import BuildTuning, run_build, sync_articles
from syndicate.send.digests import preview_digest
from syndicate.store import Database
from syndicate.store.articles import get_article, iter_articles_newest_first
from tests.data.dumps.make_dumps import to_cp1258
from tests.plugins.postgres import ENV_STORE_URL, open_store

pytestmark = pytest.mark.usefixtures("store")

# Worker processes whatever the amount of work (where fork and a second core exist).
WORKERS = BuildTuning(parallel_min=1)
HOSTILE_TITLE = "<script>alert(1)</script> ]]> {{ 7*7 }} Tin nóng"

# Our own small dumps in the FORMAT.md layout: name -> (text, encoding).
DUMPS: dict[str, tuple[str, str]] = {
    "001.txt": (
        "Hội thảo khoa học tại Đông Hà\n31/10/2024 09:15\n"
        "QTO - Sáng nay, hội thảo diễn ra tại TP. Đông Hà.\n"
        "Đoạn thân bài thứ nhất có nội dung.\nQuang cảnh hội thảo - Ảnh: T.P\n"
        "Đoạn thân bài thứ hai.\nTrúc Phương\nQTO - Tin khác đang được quan tâm...\n",
        "utf-8",
    ),
    "002.txt": (
        "Khánh thành cầu mới\n30/10/2024 15:00\n"
        "QTO - Chiều nay, tỉnh khánh thành cây cầu mới nối hai huyện.\n"
        "Cây cầu dài 300 mét, rộng 12 mét.\nNHÓM PV\n",
        "cp1258",
    ),
    "003.txt": (
        f"{HOSTILE_TITLE}\n29/10/2024 08:00\n"
        "QTO - Nội dung có <b>thẻ</b> và ]]> cùng {{ 7*7 }} trong bài.\n"
        "Đoạn hai có {% raw %} và <script>alert(2)</script>.\n",
        "utf-16",
    ),
    "004.txt": (
        "{title}\n{publish}\n{head}\n"
        "Bài không có ngày tháng nào, chỉ có nội dung để đọc.\nĐoạn thứ hai của bài.\n",
        "utf-8-sig",
    ),
    # The same article as 001 under another name and encoding: a duplicate.
    "005-copy.txt": ("", "utf-16"),
    # Same title as 002, other body: a slug collision.
    "006.txt": (
        "Khánh thành cầu mới\n01/10/2024 07:30\n"
        "QTO - Sáng nay, một cây cầu khác cũng được khánh thành ở huyện miền núi.\n"
        "Cầu treo dài 80 mét.\n",
        "utf-8",
    ),
    "007-empty.txt": ("", "utf-8"),
}
DUMPS["005-copy.txt"] = (DUMPS["001.txt"][0], "utf-16")


def write_dumps(folder: Path, names: list[str] | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names or list(DUMPS):
        text, encoding = DUMPS[name]
        data = to_cp1258(text) if encoding == "cp1258" else text.encode(encoding)
        (folder / name).write_bytes(data)


@pytest.fixture
def db(settings: Settings):  # type: ignore[no-untyped-def]
    database = open_store(settings.paths.database)
    yield database
    database.close()


@pytest.fixture
def seeds(settings: Settings) -> Path:
    write_dumps(settings.paths.seeds)
    return settings.paths.seeds


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("href", "src") and value:
                self.hrefs.append(value)
            elif name == "id" and value:
                self.ids.add(value)


def _resolve(base_url: str, page: str, href: str) -> str:
    """The output-relative path a link points at (absolute URLs under base_url too)."""
    if href.startswith(base_url):
        rel = href[len(base_url) :]
    else:
        assert not urlsplit(href).scheme, f"{page}: external link {href}"
        rel = posixpath.normpath(posixpath.join(posixpath.dirname(page), href))
    return rel or "index.html"


def test_build_writes_feeds_pages_and_counts(
    settings: Settings, db: Database, seeds: Path, now: datetime
) -> None:
    summary = run_build(settings, db, now=now)
    assert (summary.articles, summary.duplicates, summary.skipped) == (5, 1, 1)
    assert summary.errors[0].path.endswith("007-empty.txt")
    out = _tree(settings.paths.output)
    assert {"rss.xml", "atom.xml", "feed.json", "index.html"} <= set(out)
    pages = sorted(p for p in out if p.startswith("articles/"))
    assert len(pages) == 5
    assert summary.written == len(out) == 9
    assert summary.unchanged == 0
    assert "articles/hoi-thao-khoa-hoc-tai-dong-ha.html" in pages
    # Slug collision: the earlier article keeps the plain slug.
    assert "articles/khanh-thanh-cau-moi.html" in pages
    other = [p for p in pages if re.fullmatch(r"articles/khanh-thanh-cau-moi-[0-9a-f]{6}\.html", p)]
    assert len(other) == 1
    plain = out["articles/khanh-thanh-cau-moi.html"].decode()
    assert "Cầu treo dài 80 mét." in plain  # 006 was published first (1 Oct)


def test_every_link_in_pages_and_feeds_resolves_to_a_written_file(
    settings: Settings, db: Database, seeds: Path, now: datetime
) -> None:
    settings = dataclasses.replace(settings, site=dataclasses.replace(settings.site, page_size=2))
    run_build(settings, db, now=now)
    out = _tree(settings.paths.output)
    assert {"page/1.html", "page/2.html"} <= set(out)
    base = settings.site.base_url
    checked = to_sign_up = skips = 0
    for name, data in out.items():
        if name.endswith(".html"):
            parser = _Links()
            parser.feed(data.decode("utf-8"))
            hrefs = [href for href in parser.hrefs if not href.startswith("#")]
            # A link within the page (the skip link to <main>) names an element it holds.
            for href in set(parser.hrefs) - set(hrefs):
                assert href[1:] in parser.ids, f"{name}: broken link {href}"
                skips += href == "#main"
        elif name.endswith(".xml"):
            parsed = feedparser.parse(data)
            assert parsed.bozo == 0
            hrefs = [link.href for e in parsed.entries for link in e.links]
            hrefs += [link.href for link in parsed.feed.links]
        else:
            feed = json.loads(data)
            hrefs = [feed["home_page_url"], feed["feed_url"]] + [i["url"] for i in feed["items"]]
        for href in hrefs:
            target = _resolve(base, name, href)
            if name.endswith(".html") and target == f"subscribe?lang={settings.site.language}":
                # The header's way to the sign-up form: a page of `serve`, not a file.
                to_sign_up += 1
                continue
            assert target in out, f"{name}: broken link {href}"
            checked += 1
    assert checked > 50
    assert to_sign_up == skips == sum(name.endswith(".html") for name in out)


def test_feeds_hold_every_article_newest_first_with_hostile_text_as_text(
    settings: Settings, db: Database, seeds: Path, now: datetime
) -> None:
    run_build(settings, db, now=now)
    output = settings.paths.output
    rss = feedparser.parse((output / "rss.xml").read_bytes())
    assert rss.bozo == 0
    titles = [e.title for e in rss.entries]
    # The undated one, first seen by this build (after every date), led the feed: it stands
    # after the dated ones of the newest article's day (31/10), above the days before.
    [undated] = [i for i, e in enumerate(rss.entries) if "published" not in e]
    assert undated == 1
    del titles[undated]
    assert titles[:3] == ["Hội thảo khoa học tại Đông Hà", "Khánh thành cầu mới", HOSTILE_TITLE]
    days = [e.published_parsed[:3] if "published" in e else None for e in rss.entries]
    assert all(day == (2024, 10, 31) for day in days[:undated])
    assert all(day is not None and day < (2024, 10, 31) for day in days[undated + 1 :])
    assert rss.feed.updated == "Thu, 31 Oct 2024 09:15:00 +0700"
    for name in ("rss.xml", "atom.xml", "feed.json", "index.html"):
        text = (output / name).read_text("utf-8")
        assert "<script>" not in text.replace('"title": "<script>', "")
        assert "49" not in text
    page = next((output / "articles").glob("script-alert*.html")).read_text("utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script" not in page


def test_same_input_gives_byte_identical_output(
    tmp_path: Path, now: datetime, new_store: Callable[[], str]
) -> None:
    trees = []
    for run in ("one", "two"):
        work = tmp_path / run
        work.mkdir()
        if trees:
            new_store()  # each project its own store
        settings = load_settings(None, {}, cwd=work)
        # Different file order on disk: written in reverse for the second run.
        names = list(DUMPS) if run == "one" else list(reversed(DUMPS))
        write_dumps(settings.paths.seeds, names)
        with open_store(settings.paths.database) as database:
            run_build(settings, database, now=now + timedelta(days=len(trees)))
        trees.append(_tree(settings.paths.output))
    assert trees[0] == trees[1]


def test_rebuild_with_nothing_changed_parses_and_writes_nothing(
    settings: Settings, db: Database, seeds: Path, now: datetime
) -> None:
    first = run_build(settings, db, now=now)
    assert (first.read, first.parsed) == (len(DUMPS), len(DUMPS))
    output = settings.paths.output
    stamps = {p: p.stat().st_mtime_ns for p in output.rglob("*") if p.is_file()}
    summary = run_build(settings, db, now=now + timedelta(hours=1))
    assert summary.parsed == 0
    assert summary.rendered == 0
    assert (summary.articles, summary.duplicates, summary.skipped) == (5, 1, 1)
    assert summary.written == 0
    assert summary.unchanged == len(stamps)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_new_wording_renders_the_feeds_and_pages_that_carry_it_again(
    settings: Settings,
    db: Database,
    now: datetime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A release that words a string otherwise (a credit's "Theo …") is seen by the next
    build: the feeds and pages were taken as fresh, kept the old words, and kept them until
    their article changed."""
    (settings.paths.seeds / "001.txt").write_text(
        "Khánh thành cầu mới\n31/10/2024 09:15\nQTO - Sáng nay, tỉnh khánh thành cây cầu.\n"
        "Cây cầu dài 300 mét, rộng 12 mét.\nTheo TTXVN\n",
        encoding="utf-8",
    )
    run_build(settings, db, now=now)
    output = settings.paths.output
    names = ["rss.xml", "atom.xml", "feed.json", "articles/khanh-thanh-cau-moi.html"]
    for name in names:
        assert "Theo TTXVN" in (output / name).read_text(encoding="utf-8"), name
    pages = i18n.STRINGS["pages"]
    monkeypatch.setitem(pages, "vi", {**pages["vi"], "credit": "Nguồn: {source}"})

    summary = run_build(settings, db, now=now)

    assert summary.written >= len(names)
    for name in names:
        text = (output / name).read_text(encoding="utf-8")
        assert "Nguồn: TTXVN" in text, name
        assert "Theo TTXVN" not in text, name


def test_touched_dump_is_matched_by_content_hash(
    settings: Settings, db: Database, seeds: Path, now: datetime
) -> None:
    for path in seeds.iterdir():  # older than the racy window: the cache vouches by stat
        os.utime(path, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    run_build(settings, db, now=now)
    target = seeds / "002.txt"
    os.utime(target, ns=(1_000_000_000, 1_000_000_000))
    summary = run_build(settings, db, now=now)
    assert (summary.read, summary.parsed) == (1, 0)  # read and hashed, not parsed
    assert summary.written == 0
    # What an older parser cached (a database from before a parser upgrade): all parsed again.
    with db.transaction():
        db.conn.execute("UPDATE dumps SET parser_version = parser_version - 1")
    again = run_build(settings, db, now=now)
    assert (again.read, again.parsed) == (len(DUMPS), len(DUMPS))
    assert again.written == 0


def test_changed_dump_rewrites_only_what_depends_on_it(
    settings: Settings, db: Database, seeds: Path, now: datetime
) -> None:
    run_build(settings, db, now=now)
    text, encoding = DUMPS["004.txt"]
    (seeds / "004.txt").write_bytes(
        text.replace("Đoạn thứ hai", "Đoạn thứ hai đã sửa").encode(encoding)
    )
    summary = run_build(settings, db, now=now)
    # The article's content id changed: its page has the same slug, new bytes; the
    # feeds carry it too. The index lists only titles and dates, so it is unchanged.
    assert summary.written == 4  # its page, rss.xml, atom.xml, feed.json
    assert summary.articles == 5


def test_duplicates_keep_the_first_path_and_first_seen_time(
    settings: Settings, db: Database, seeds: Path, now: datetime
) -> None:
    sync = sync_articles(settings, db, now=now)
    assert sync.duplicates == 1
    assert sync.new == 5
    first = next(
        a for a in iter_articles_newest_first(db) if a.title == "Hội thảo khoa học tại Đông Hà"
    )
    assert first.source.endswith("001.txt")
    row = db.conn.execute("SELECT first_seen_at FROM articles WHERE id = ?", (first.id,))
    assert row.fetchone()[0] == now.isoformat()
    # The winner goes away: the copy takes over and the record follows it,
    # while first_seen_at stays.
    (seeds / "001.txt").unlink()
    later = now + timedelta(days=1)
    again = sync_articles(settings, db, now=later)
    assert (again.duplicates, again.new) == (0, 0)
    article = get_article(db, first.id)
    assert article is not None
    assert article.source.endswith("005-copy.txt")
    row = db.conn.execute("SELECT first_seen_at FROM articles WHERE id = ?", (first.id,))
    assert row.fetchone()[0] == now.isoformat()


def test_skipped_dumps_log_one_warning_each_every_run(
    settings: Settings,
    db: Database,
    seeds: Path,
    now: datetime,
    caplog: pytest.LogCaptureFixture,
) -> None:
    (seeds / "008-binary.txt").write_bytes(bytes(range(256)) * 4)
    for _ in range(2):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="syndicate"):
            summary = run_build(settings, db, now=now)
        assert summary.skipped == 2
        warnings = [r.getMessage() for r in caplog.records if r.name == "syndicate.publish"]
        assert len(warnings) == 2
        assert warnings[0].startswith(f"{seeds / '007-empty.txt'}: ")
        assert warnings[1].startswith(f"{seeds / '008-binary.txt'}: ")
        assert [str(e) for e in summary.errors] == warnings


def test_a_new_article_leaves_the_older_archive_pages_as_they_were(
    settings: Settings, db: Database, seeds: Path, now: datetime
) -> None:
    """Archive pages are numbered from the oldest: news changes index.html and the newest
    archive page, not the pages behind them (their URLs keep their articles)."""
    settings = dataclasses.replace(settings, site=dataclasses.replace(settings.site, page_size=2))
    (seeds / "007-empty.txt").unlink()
    run_build(settings, db, now=now)  # 5 articles: index.html 2, page/1.html 2, page/2.html 1
    output = settings.paths.output
    before = {rel: (output / rel).stat().st_mtime_ns for rel in ("page/1.html", "page/2.html")}
    oldest = (output / "page/1.html").read_bytes()
    (seeds / "010.txt").write_text(
        "Tin mới nhất trong ngày\n01/11/2024 10:00\nQTO - Sáng nay có tin mới.\nĐoạn hai.\n",
        encoding="utf-8",
    )
    summary = run_build(settings, db, now=now)
    assert summary.articles == 6
    # Its page, the three feeds, index.html and page/2.html (now full); page/1.html as it was.
    assert summary.written == 6
    assert (output / "page/1.html").read_bytes() == oldest
    assert (output / "page/1.html").stat().st_mtime_ns == before["page/1.html"]
    assert (output / "page/2.html").stat().st_mtime_ns != before["page/2.html"]
    assert not (output / "page/3.html").exists()
    index = (output / "index.html").read_text(encoding="utf-8")
    assert "Tin mới nhất trong ngày" in index
    assert '<a href="page/2.html" rel="next">' in index


def test_pages_of_articles_that_disappeared_are_removed(
    settings: Settings, db: Database, seeds: Path, now: datetime
) -> None:
    settings = dataclasses.replace(settings, site=dataclasses.replace(settings.site, page_size=2))
    run_build(settings, db, now=now)
    output = settings.paths.output
    page = output / "articles/hoi-thao-khoa-hoc-tai-dong-ha.html"
    assert (output / "page/2.html").exists()
    (seeds / "001.txt").unlink()
    (seeds / "005-copy.txt").unlink()
    (seeds / "006.txt").unlink()
    unrelated = output / "articles" / "mine.html"
    unrelated.write_text("not written by syndicate")
    summary = run_build(settings, db, now=now)
    assert summary.articles == 3
    assert summary.removed == 3  # two article pages and page/2.html
    assert not page.exists()
    assert not (output / "page/2.html").exists()
    assert (output / "page/1.html").exists()
    assert unrelated.exists()  # only pages syndicate recorded are ever removed


def test_deleted_output_is_written_again(
    settings: Settings, db: Database, seeds: Path, now: datetime
) -> None:
    first = run_build(settings, db, now=now)
    (settings.paths.output / "index.html").unlink()
    next(iter((settings.paths.output / "articles").iterdir())).unlink()
    summary = run_build(settings, db, now=now)
    assert summary.written == 2
    assert summary.unchanged == first.written - 2


FEEDS = ("rss.xml", "atom.xml", "feed.json")


def test_feeds_are_rendered_only_when_their_inputs_change(
    settings: Settings, db: Database, seeds: Path, now: datetime
) -> None:
    first = run_build(settings, db, now=now)
    assert first.rendered == 5 + 1 + 3  # the article pages, index.html and the three feeds
    output = settings.paths.output
    before = {name: (output / name).read_bytes() for name in FEEDS}
    again = run_build(settings, db, now=now)
    assert (again.rendered, again.written) == (0, 0)  # nothing changed: not even rendered
    (output / "atom.xml").unlink()
    gone = run_build(settings, db, now=now)
    assert (gone.rendered, gone.written) == (1, 1)
    assert (output / "atom.xml").read_bytes() == before["atom.xml"]
    # Another site title: every feed says it.
    retitled = dataclasses.replace(settings, site=dataclasses.replace(settings.site, title="Khác"))
    run_build(retitled, db, now=now)
    for name in FEEDS:
        assert "Khác" in (output / name).read_text(encoding="utf-8"), name
    # A feed article's text changes: so do the feeds. Its copy 005 is now a story of its
    # own: two pages, index.html (one more entry) and the three feeds; nothing else.
    (seeds / "001.txt").write_text(
        DUMPS["001.txt"][0].replace("Đoạn thân bài thứ hai.", "Đoạn thân bài đã sửa."),
        encoding="utf-8",
    )
    edited = run_build(retitled, db, now=now)
    assert (edited.articles, edited.rendered) == (6, 2 + 1 + 3)
    for name in FEEDS:
        assert "Đoạn thân bài đã sửa." in (output / name).read_text(encoding="utf-8"), name
    # Feeds recorded as rendered by other code (a new syndicate, feedgen or lxml): rendered
    # again; the same bytes stay put.
    with db.transaction():
        db.conn.execute(
            "UPDATE pages SET fingerprint = 'older code' WHERE path IN (?, ?, ?)", FEEDS
        )
    stamps = {name: (output / name).stat().st_mtime_ns for name in FEEDS}
    recoded = run_build(retitled, db, now=now)
    assert (recoded.rendered, recoded.written) == (3, 0)
    assert {name: (output / name).stat().st_mtime_ns for name in FEEDS} == stamps


def test_edited_output_is_written_again(
    settings: Settings, db: Database, seeds: Path, now: datetime
) -> None:
    first = run_build(settings, db, now=now)
    output = settings.paths.output
    page = next(iter(sorted((output / "articles").iterdir())))
    original = page.read_bytes()
    untouched = {p: p.stat().st_mtime_ns for p in output.rglob("*.html") if p != page}
    page.write_bytes(original.replace(b"<h1>", b"<h1>EDITED "))  # a hand edit
    summary = run_build(settings, db, now=now)
    assert summary.written == 1
    assert summary.unchanged == first.written - 1
    assert page.read_bytes() == original
    assert {p: p.stat().st_mtime_ns for p in untouched} == untouched
    # Same size, new content, new time: still noticed.
    page.write_bytes(original.replace(b"<h1>", b"<h2>", 1))
    os.utime(page, ns=(1_000_000_000, 1_000_000_000))
    assert run_build(settings, db, now=now).written == 1
    assert page.read_bytes() == original
    assert run_build(settings, db, now=now).written == 0


def test_pages_recorded_without_a_stamp_are_stamped_by_the_next_build(
    settings: Settings, db: Database, seeds: Path, now: datetime
) -> None:
    """A database from before page stamps (migration 3): pages count as fresh while their
    file is there, and get a stamp, so a later edit is noticed."""
    run_build(settings, db, now=now)
    with db.transaction():
        db.conn.execute("UPDATE pages SET size = NULL, mtime_ns = NULL")
    assert run_build(settings, db, now=now).written == 0
    stamps = db.conn.execute("SELECT count(*) FROM pages WHERE size IS NULL").fetchone()
    assert stamps == (0,)
    page = settings.paths.output / "index.html"
    page.write_bytes(page.read_bytes() + b"<!-- edited -->")
    assert run_build(settings, db, now=now).written == 1


def test_explicit_paths_and_missing_path(
    settings: Settings, db: Database, seeds: Path, now: datetime
) -> None:
    summary = run_build(settings, db, now=now, paths=[seeds / "002.txt", seeds / "003.txt"])
    assert summary.articles == 2
    with pytest.raises(InputError, match="no such file or folder"):
        run_build(settings, db, now=now, paths=[seeds / "nope.txt"])


def test_progress_reports_every_dump(
    settings: Settings, db: Database, seeds: Path, now: datetime
) -> None:
    seen: list[tuple[int, int]] = []
    run_build(settings, db, now=now, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(n, len(DUMPS)) for n in range(1, len(DUMPS) + 1)]


def test_newest_first_iteration_crosses_batches(
    settings: Settings, db: Database, seeds: Path, now: datetime
) -> None:
    sync_articles(settings, db, now=now)
    whole = [a.id for a in iter_articles_newest_first(db)]
    assert [a.id for a in iter_articles_newest_first(db, batch=2)] == whole
    dates = [a.published for a in iter_articles_newest_first(db)]
    assert dates[-1] is None
    known = [d for d in dates if d is not None]
    assert known == sorted(known, reverse=True)


def test_empty_seeds_build_an_empty_site(settings: Settings, db: Database, now: datetime) -> None:
    summary = run_build(settings, db, now=now)
    assert summary.articles == 0
    rss = feedparser.parse((settings.paths.output / "rss.xml").read_bytes())
    assert rss.bozo == 0
    # No article at all: the Unix epoch (in the site's zone, then UTC+8), never the clock.
    assert rss.feed.updated == "Thu, 01 Jan 1970 08:00:00 +0800"
    assert "Chưa có bài viết nào." in (settings.paths.output / "index.html").read_text("utf-8")


def test_real_sample_builds_when_present(settings: Settings, db: Database, now: datetime) -> None:
    shared = Path(__file__).resolve().parent.parent.parent / "shared" / "seeds"
    if not shared.is_dir():
        pytest.skip("the shared sample is not here")
    summary = run_build(settings, db, now=now, paths=[shared])
    assert summary.skipped == 0
    assert summary.articles >= 1
    assert feedparser.parse((settings.paths.output / "atom.xml").read_bytes()).bozo == 0


def test_the_build_takes_its_time_from_the_clock_it_is_given(
    settings: Settings, db: Database, now: datetime
) -> None:
    """A build in 2030 (a clock passed in, not the machine's) stamps 2030: first sight of
    each article, and the feeds' updated time when no article has a date."""
    later = datetime(2030, 7, 1, 12, 30, tzinfo=UTC)
    write_dumps(settings.paths.seeds, ["004.txt"])  # undated: the feeds fall back to `now`
    run_build(settings, db, now=later)
    [(first_seen,)] = db.conn.execute("SELECT first_seen_at FROM articles").fetchall()
    assert datetime.fromisoformat(first_seen) == later
    atom = feedparser.parse((settings.paths.output / "atom.xml").read_bytes())
    assert atom.bozo == 0
    assert atom.feed.updated == later.astimezone(settings.site.tz).isoformat()
    rss = feedparser.parse((settings.paths.output / "rss.xml").read_bytes())
    assert rss.feed.updated_parsed[:5] == (2030, 7, 1, 12, 30)
    feed = json.loads((settings.paths.output / "feed.json").read_bytes())
    assert datetime.fromisoformat(feed["items"][0]["date_modified"]) == later


def test_settled_dumps_are_not_even_read_again(
    settings: Settings, db: Database, seeds: Path, now: datetime
) -> None:
    for path in seeds.iterdir():
        os.utime(path, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    run_build(settings, db, now=now)
    summary = run_build(settings, db, now=now)
    assert (summary.read, summary.parsed) == (0, 0)  # the stat signature vouched for all
    assert (summary.articles, summary.duplicates, summary.skipped, summary.written) == (5, 1, 1, 0)


def test_a_change_within_the_same_mtime_tick_is_caught(
    settings: Settings, db: Database, seeds: Path, now: datetime
) -> None:
    run_build(settings, db, now=now)  # the dumps were written just now: "racy"
    target = seeds / "004.txt"
    before = target.stat()
    text, encoding = DUMPS["004.txt"]
    changed = text.replace("Đoạn thứ hai", "Đoạn thứ ba ").encode(encoding)
    assert len(changed) == before.st_size
    target.write_bytes(changed)
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    summary = run_build(settings, db, now=now)
    assert summary.parsed == 1  # the others were read again (racy) but matched their hash
    assert summary.written == 4  # its page and the three feeds
    assert "Đoạn thứ ba" in (settings.paths.output / "feed.json").read_text(encoding="utf-8")


def test_signatures_are_taken_in_path_order_as_far_as_they_are_needed(
    settings: Settings, db: Database, seeds: Path, now: datetime
) -> None:
    """The workers start on the first dumps to read while the rest are still being signed."""
    found = sorted(load.find_dump_paths([seeds]))
    for path in found:  # older than the racy window: the cache vouches by signature
        os.utime(path, ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))
    run_build(settings, db, now=now)
    Path(found[2]).write_bytes(b"changed\n{publish}\n{head}\nText.\n")
    sync = publish.sync._Sync(settings, db, now=now)
    signer = publish.sync._Signer(sync, found, os.getcwd())
    signed: list[str] = []
    original = sync.signature
    sync.signature = lambda path, shown: (signed.append(path), original(path, shown))[1]  # type: ignore[method-assign]
    assert signer.count_todo(1) == 1  # the changed dump: the cached ones before it are not
    assert signed == found[:3]
    todo = signer.todo()
    assert next(todo)[0] == found[2]
    assert [item[0] for item in signer.items(2)] == found[:2]
    assert next(todo, None) is None  # the others are vouched for: signing runs to the end
    assert signed == found
    items = signer.items(len(found) + 5)  # each handed over once: the rest, not all again
    assert [(item[0], item[4]) for item in items] == [
        (path, path == found[2]) for path in found[2:]
    ]


def test_worker_processes_give_the_same_site_store_and_warnings(
    tmp_path: Path, now: datetime, caplog: pytest.LogCaptureFixture, new_store: Callable[[], str]
) -> None:
    """Large builds parse and render in forked workers: the result must not change."""
    dumps_dir = Path(__file__).resolve().parent / "data" / "dumps"
    results = []
    for run, threshold in (("single", 10**9), ("workers", 1)):
        tuning = BuildTuning(parallel_min=threshold)
        work = tmp_path / run
        work.mkdir()
        if results:
            new_store()  # each project its own store
        settings = load_settings(None, {}, cwd=work)
        write_dumps(settings.paths.seeds)
        for dump in sorted(dumps_dir.glob("*.txt")):
            (settings.paths.seeds / f"z-{dump.name}").write_bytes(dump.read_bytes())
        caplog.clear()
        with caplog.at_level(logging.WARNING), open_store(settings.paths.database) as database:
            summary = run_build(settings, database, now=now, tuning=tuning)
            rows = [
                (row[0], row[1].replace(str(work), ""), row[2], row[3])
                for row in database.conn.execute(
                    "SELECT id, record, slug, published_at FROM articles ORDER BY id"
                )
            ]
        warnings = sorted(r.getMessage().replace(str(work), "") for r in caplog.records)
        counts = (summary.articles, summary.duplicates, summary.skipped, summary.written)
        results.append((_tree(settings.paths.output), rows, warnings, counts))
    single, workers = results
    assert single[3][2] > 0, "the data set must include rejected dumps"
    assert workers[3] == single[3]
    assert workers[2] == single[2]
    assert workers[1] == single[1]
    assert workers[0] == single[0]


def test_worker_pages_are_moved_into_place_not_rendered_again(
    settings: Settings, db: Database, seeds: Path, now: datetime
) -> None:
    """Parse workers render each page under the article's own slug; only a page whose slug
    changed (the loser of the 002/006 collision) is rendered again after the sync."""
    summary = run_build(settings, db, now=now, tuning=WORKERS)
    output = settings.paths.output
    pages = sorted(p.name for p in (output / "articles").iterdir())
    assert len(pages) == summary.articles == 5
    # The loser's page, index.html and the three feeds; alone, all five pages would be.
    assert summary.rendered == 1 + 1 + 3
    assert not (output / ".staging").exists()
    assert not [p for p in output.rglob("*") if p.name.startswith(".")]
    # Records cross from the workers as UTF-8 bytes and are stored as JSON text.
    kinds = db.conn.execute(
        "SELECT DISTINCT typeof(record) FROM articles"
        if db.dialect == "sqlite"
        else "SELECT DISTINCT pg_typeof(record)::text FROM articles"
    ).fetchall()
    assert kinds == [("text",)]
    assert get_article(db, db.conn.execute("SELECT id FROM articles").fetchone()[0])
    # The stamps the workers took of the staged files are those of the pages in place.
    stamps = db.conn.execute("SELECT path, size, mtime_ns FROM pages").fetchall()
    assert len(stamps) > summary.articles
    for rel, size, mtime_ns in stamps:
        st = (output / rel).stat()
        assert (size, mtime_ns) == (st.st_size, st.st_mtime_ns), rel
    assert run_build(settings, db, now=now, tuning=WORKERS).written == 0


@pytest.mark.parametrize("list_after", [0, 256])
def test_a_worker_build_into_a_full_output_folder_keeps_the_same_pages(
    settings: Settings,
    seeds: Path,
    now: datetime,
    list_after: int,
    new_store: Callable[[], str],
) -> None:
    """The store is lost, the pages are not: staged pages equal to those in place are not
    moved over them (each target looked for, or its folder listed once)."""
    tuning = BuildTuning(parallel_min=1, list_after=list_after)
    with open_store(settings.paths.database) as first:
        run_build(settings, first, now=now, tuning=tuning)
    output = settings.paths.output
    before = {p: p.stat().st_mtime_ns for p in (output / "articles").iterdir()}
    if not new_store():  # on PostgreSQL a new, empty database; on SQLite the file goes
        settings.paths.database.unlink()
    with open_store(settings.paths.database) as second:
        summary = run_build(settings, second, now=now, tuning=tuning)
        stamps = second.conn.execute("SELECT path, size, mtime_ns FROM pages").fetchall()
    assert summary.written == 0
    assert {p: p.stat().st_mtime_ns for p in (output / "articles").iterdir()} == before
    for rel, size, mtime_ns in stamps:
        st = (output / rel).stat()
        assert (size, mtime_ns) == (st.st_size, st.st_mtime_ns), rel


def test_a_staging_folder_left_by_a_killed_build_is_removed(
    settings: Settings, db: Database, seeds: Path, now: datetime
) -> None:
    dead_pid = _exited_pid()
    root = settings.paths.output / ".staging"
    (root / str(dead_pid)).mkdir(parents=True)
    (root / str(dead_pid) / "0123.html").write_bytes(b"half a page")
    live = root / str(os.getppid())  # a running build of someone else's
    live.mkdir()
    (live / "4567.html").write_bytes(b"their page")
    run_build(settings, db, now=now)
    assert sorted(p.name for p in root.iterdir()) == [str(os.getppid())]
    assert (live / "4567.html").read_bytes() == b"their page"


def _exited_pid() -> int:
    """The pid of a child that has exited and been reaped (no process has it now)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_undated_articles_date_the_feed_by_first_sight_not_the_clock(
    settings: Settings, now: datetime
) -> None:
    write_dumps(settings.paths.seeds, ["004.txt"])  # the only article has no date
    with open_store(settings.paths.database) as database:
        run_build(settings, database, now=now)
        first = _tree(settings.paths.output)
        summary = run_build(settings, database, now=now + timedelta(days=3))
    assert summary.written == 0
    assert _tree(settings.paths.output) == first
    atom = feedparser.parse(first["atom.xml"])
    assert atom.bozo == 0
    assert atom.feed.updated == now.astimezone(settings.site.tz).isoformat()


def test_xml_noncharacters_in_a_dump_are_dropped_not_fatal(
    settings: Settings, db: Database, now: datetime
) -> None:
    settings.paths.seeds.mkdir(parents=True, exist_ok=True)
    (settings.paths.seeds / "x.txt").write_bytes(
        "Tiêu đề\uffff lạ\n31/10/2024 09:00\n{head}\n"
        "Đoạn dẫn \ufffe có ký tự lạ.\nĐoạn hai.\n".encode()
    )
    summary = run_build(settings, db, now=now)
    assert (summary.articles, summary.skipped) == (1, 0)
    rss = feedparser.parse((settings.paths.output / "rss.xml").read_bytes())
    assert rss.bozo == 0
    assert rss.entries[0].title == "Tiêu đề lạ"


def test_cached_parses_follow_timezone_and_size_limit_changes(
    tmp_path: Path, now: datetime, new_store: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    urls: dict[Path, str] = {}  # each project its own store

    def build_with(folder: Path, toml: str) -> dict[str, bytes]:
        if folder not in urls:
            urls[folder] = new_store() if urls else os.environ.get(ENV_STORE_URL, "")
        if urls[folder]:
            monkeypatch.setenv(ENV_STORE_URL, urls[folder])
        (folder / "syndicate.toml").write_text(toml, encoding="utf-8")
        settings = load_settings(folder / "syndicate.toml", {}, cwd=folder)
        with open_store(settings.paths.database) as database:
            run_build(settings, database, now=now)
        return _tree(settings.paths.output)

    cached = tmp_path / "cached"
    write_dumps(cached / "seeds")
    build_with(cached, "")
    tokyo = '[site]\ntimezone = "Asia/Tokyo"\n'
    fresh = tmp_path / "fresh"
    write_dumps(fresh / "seeds")
    assert build_with(cached, tokyo) == build_with(fresh, tokyo)
    small = tokyo + "[load]\nmax_bytes = 200\n"
    assert build_with(cached, small) == build_with(fresh, small)


def test_odd_files_are_reported_not_fatal(
    settings: Settings, db: Database, now: datetime, caplog: pytest.LogCaptureFixture
) -> None:
    seeds = settings.paths.seeds
    write_dumps(seeds, ["001.txt"])
    os.mkfifo(seeds / "pipe.txt")
    (seeds / "dangling.txt").symlink_to(seeds / "nowhere")
    bad_name = os.fsencode(seeds) + b"/bad\xff.txt"
    with open(bad_name, "wb") as handle:
        handle.write((seeds / "001.txt").read_bytes().replace(b"Trong", b"Ngoai"))
    (seeds / "two\nlines.txt").write_bytes(b"")  # a name that could fake a warning line
    with caplog.at_level(logging.WARNING):
        summary = run_build(settings, db, now=now)
        run_build(settings, db, now=now)  # and again: nothing odd was cached
    assert summary.articles == 1
    messages = sorted({r.getMessage() for r in caplog.records})
    assert any("bad\ufffd.txt: the file name is not valid UTF-8." in m for m in messages)
    assert any("dangling.txt: cannot be read" in m for m in messages)
    assert any("two\ufffdlines.txt: is empty." in m for m in messages)
    assert not any("\n" in m for m in messages)
    assert summary.skipped == 3  # the FIFO is not a *.txt file (is_file() is False)
    code = load.read_dumps([seeds / "pipe.txt"], max_bytes=1000, tz=settings.site.tz)
    [(_path, error)] = list(code)
    assert str(error).endswith(
        "pipe.txt: is not a regular file (a FIFO, socket or device). Give dump files only."
    )


def _kill_workers(done: int, _total: int) -> None:
    """A progress callback that kills the build's worker processes after the first dump,
    as the kernel's OOM killer would."""
    if done == 1:
        for child in multiprocessing.active_children():
            child.kill()
            child.join()


def test_a_worker_that_dies_stops_the_build_with_one_line_and_exit_1(
    settings: Settings, db: Database, seeds: Path, now: datetime
) -> None:
    with pytest.raises(WorkerError) as info:
        run_build(settings, db, now=now, tuning=WORKERS, progress=_kill_workers)
    assert info.value.exit_code == 1
    assert str(info.value).startswith("build: a worker process stopped unexpectedly (")
    # The store is left consistent: a normal build afterwards works.
    assert run_build(settings, db, now=now).articles > 0


# Article A's sidebar advertises B (stored by an earlier build) and C (a later one).
TEASER_B = (
    "Chiều nay 30/10, Ban Văn hóa - Xã hội HĐND tỉnh làm việc với Sở Lao động, Thương binh "
    "và Xã hội về nhiệm vụ năm 2024, kế hoạch năm"
)
TEASER_C = (
    "Sáng nay 30/10, tại TP. Đông Hà, Trường Chính trị Lê Duẩn có buổi làm việc với Trường "
    "Chính trị - Hành chính 2 tỉnh Savannakhet, Salavan (Lào) để"
)
DUMP_A = (
    "Hội thảo chuyển đổi số\n31/10/2024 09:15\n"
    "QTO - Sáng nay 31/10, tại TP. Đông Hà diễn ra hội thảo về chuyển đổi số.\n"
    "Đoạn thân bài của hội thảo.\n"
    f"QTO - {TEASER_B}...\n"
    "QTO - Hôm nay 21/11, Bộ Chỉ huy Bộ đội Biên phòng tỉnh tuần tra song…\n"
    f"QTO\u00a0- {TEASER_C.upper()}…\n"
)
DUMP_B = (
    "Giám sát nhiệm vụ lao động năm 2024\n30/10/2024 15:00\n"
    f"QTO - {TEASER_B} 2025 của ngành.\n"
    "Đoạn thân bài về buổi làm việc.\n"
)
DUMP_C = (
    "Hợp tác đào tạo cán bộ với Lào\n30/10/2024 08:00\n"
    f"QTO - {unicodedata.normalize('NFD', TEASER_C)} trao đổi kinh nghiệm đào tạo.\n"
    "Đoạn thân bài về hợp tác.\n"
)


def _page_links(output: Path, slug: str) -> dict[str, str]:
    """The "Other news" links of an article page: link text -> target path."""
    html = (output / "articles" / f"{slug}.html").read_text(encoding="utf-8")
    section = html.split('<section class="other-news">', 1)[1].split("</section>", 1)[0]
    found = re.findall(r'<a href="([^"]+)">([^<]+)</a>', section)
    return {text: posixpath.normpath(posixpath.join("articles", href)) for href, text in found}


def test_teasers_link_to_articles_stored_before_and_after_them(
    settings: Settings, db: Database, now: datetime
) -> None:
    seeds = settings.paths.seeds
    seeds.mkdir(parents=True, exist_ok=True)
    (seeds / "b.txt").write_text(DUMP_B, encoding="utf-8")
    run_build(settings, db, now=now)  # B is stored first
    (seeds / "a.txt").write_text(DUMP_A, encoding="utf-8")
    run_build(settings, db, now=now + timedelta(hours=1))
    output = settings.paths.output
    slug_a = "hoi-thao-chuyen-doi-so"
    assert _page_links(output, slug_a) == {
        "Giám sát nhiệm vụ lao động năm 2024": "articles/giam-sat-nhiem-vu-lao-dong-nam-2024.html"
    }
    page_a = (output / "articles" / f"{slug_a}.html").read_text(encoding="utf-8")
    assert "Trường Chính trị Lê Duẩn".upper() in page_a  # C is not stored yet: plain text
    assert "Hôm nay 21/11" not in page_a  # unlinked, and dated three weeks after A

    (seeds / "c.txt").write_text(DUMP_C, encoding="utf-8")
    summary = run_build(settings, db, now=now + timedelta(hours=2))
    # C's page, A's page (its teaser now leads to C), the index and the three feeds.
    assert summary.written == 6
    links = _page_links(output, slug_a)
    assert links == {
        # Linked teasers newest first: B (30/10 15:00) before C (30/10 08:00).
        "Giám sát nhiệm vụ lao động năm 2024": "articles/giam-sat-nhiem-vu-lao-dong-nam-2024.html",
        "Hợp tác đào tạo cán bộ với Lào": "articles/hop-tac-dao-tao-can-bo-voi-lao.html",
    }
    assert list(links) == ["Giám sát nhiệm vụ lao động năm 2024", "Hợp tác đào tạo cán bộ với Lào"]
    for target in links.values():
        assert (output / target).is_file()
    again = run_build(settings, db, now=now + timedelta(hours=3))
    assert again.written == 0

    # C's dump goes away: its page is removed, and A's teaser is plain text again.
    (seeds / "c.txt").unlink()
    run_build(settings, db, now=now + timedelta(hours=4))
    assert list(_page_links(output, slug_a)) == ["Giám sát nhiệm vụ lao động năm 2024"]


def test_the_index_places_an_undated_article_after_the_dated_ones_of_its_day(
    settings: Settings, db: Database, now: datetime
) -> None:
    """The index and the digest order alike: an undated article after the dated ones of
    the day it was first seen, above those of the day before. Placed where it was first
    seen, a story nobody could date led the index (editor23's brief)."""
    seeds = settings.paths.seeds
    seeds.mkdir(parents=True, exist_ok=True)
    (seeds / "b.txt").write_text(DUMP_B, encoding="utf-8")
    (seeds / "u.txt").write_text(
        "{title}\n{publish}\n{head}\nBài không ghi ngày, đến sau cùng.\nĐoạn hai.\n",
        encoding="utf-8",
    )
    # First seen after B's publish time (30/10 15:00 in Vietnam = 08:00 UTC), that day.
    run_build(settings, db, now=datetime(2024, 10, 30, 9, 0, tzinfo=UTC))
    index = (settings.paths.output / "index.html").read_text(encoding="utf-8")
    assert index.index("Giám sát nhiệm vụ lao động") < index.index("Bài không ghi ngày")
    # Another, first seen the next day, with no story dated that day yet: after B still
    # (an undated story never leads), above the one seen before it.
    (seeds / "v.txt").write_text(
        "{title}\n{publish}\n{head}\nBài thứ hai không ghi ngày.\nĐoạn hai.\n",
        encoding="utf-8",
    )
    run_build(settings, db, now=datetime(2024, 10, 31, 1, 0, tzinfo=UTC))
    index = (settings.paths.output / "index.html").read_text(encoding="utf-8")
    assert (
        index.index("Giám sát nhiệm vụ lao động")
        < index.index("Bài thứ hai không ghi ngày")
        < index.index("Bài không ghi ngày")
    )


# One story as two scrapes: without its header, then with it filled, in another encoding and
# with another "latest news" sidebar. FORMAT.md: the same article, keyed on its body.
STORY_BODY = (
    "QTO - Sáng nay 31/10, tại TP. Đông Hà, Ban Tuyên giáo Tỉnh ủy tổ chức hội thảo về chuyển "
    "đổi số trong các cơ quan đảng, mặt trận và các đoàn thể chính trị - xã hội của tỉnh.\n"
    "Quang cảnh hội thảo - Ảnh: T.P\n"
    "Các đại biểu thảo luận giải pháp cho thời gian tới.\n"
    "Trúc Phương\n"
)
STORY_BARE = (
    "{title}\n{publish}\n{head}\n" + STORY_BODY + "QTO - Hôm nay 30/10/2024, tin khác thứ nhất...\n"
)
STORY_FILLED = (
    "Hội thảo chuyển đổi số ở Đông Hà\nThứ năm, 31/10/2024, 09:15 (GMT+7)\n"
    "QTO - Tỉnh bàn cách đưa chuyển đổi số vào các cơ quan đảng và đoàn thể.\n"
    + STORY_BODY
    + "QTO - Tin khác hoàn toàn khác...\nQTO - Thêm một tin nữa…\n"
)


@pytest.mark.parametrize("filled_name", ["050-filled.txt", "200-filled.txt"])
def test_same_story_with_its_header_filled_is_one_article_merged_under_its_first_slug(
    settings: Settings, db: Database, now: datetime, filled_name: str
) -> None:
    seeds = settings.paths.seeds
    seeds.mkdir(parents=True, exist_ok=True)
    (seeds / "100-bare.txt").write_text(STORY_BARE, encoding="utf-8")
    first = run_build(settings, db, now=now)
    assert first.articles == 1
    [before] = iter_articles_newest_first(db)
    assert before.title_derived is True
    assert before.head is None
    assert before.title == (
        "Ban Tuyên giáo Tỉnh ủy tổ chức hội thảo về chuyển đổi số trong các cơ quan đảng…"
    )
    page = settings.paths.output / "articles" / f"{before.slug}.html"
    assert page.is_file()

    # The filled copy sorts before the bare one (it then owns the record) or after it.
    (seeds / filled_name).write_bytes(STORY_FILLED.encode("utf-16"))
    second = run_build(settings, db, now=now + timedelta(hours=1))
    assert (second.articles, second.duplicates, second.skipped) == (1, 1, 0)
    [after] = iter_articles_newest_first(db)
    assert after.id == before.id
    assert after.slug == before.slug  # a published URL never changes
    assert after.title == "Hội thảo chuyển đổi số ở Đông Hà"
    assert after.title_derived is False
    assert after.head == "Tỉnh bàn cách đưa chuyển đổi số vào các cơ quan đảng và đoàn thể."
    assert after.published is not None
    assert after.published.isoformat() == "2024-10-31T09:15:00+07:00"
    assert after.lead == before.lead
    pages = sorted(p.name for p in (settings.paths.output / "articles").iterdir())
    assert pages == [f"{before.slug}.html"]
    html = page.read_text(encoding="utf-8")
    assert "<h1>Hội thảo chuyển đổi số ở Đông Hà</h1>" in html
    assert '<p class="standfirst">Tỉnh bàn cách đưa chuyển đổi số' in html
    feed = feedparser.parse((settings.paths.output / "rss.xml").read_bytes())
    assert not feed.bozo
    [entry] = feed.entries
    assert entry.title == "Hội thảo chuyển đổi số ở Đông Hà"
    assert entry.summary == after.head
    assert entry.link.endswith(f"/articles/{before.slug}.html")

    # Nothing changed: the merged record stays, nothing is written.
    third = run_build(settings, db, now=now + timedelta(hours=2))
    assert third.written == 0
    assert list(iter_articles_newest_first(db)) == [after]


# Ties and undated articles (FORMAT.md: "when nothing is known, the date is unknown"): two
# stories at the same minute, one dated by its day alone, two with no date at all.
ORDER_DUMPS = {
    "a.txt": "Tin alpha về cầu\n31/10/2024 09:15\nQTO - Sáng nay, tin alpha.\nĐoạn hai alpha.\n",
    "b.txt": "Tin beta về đường\n31/10/2024 09:15\nQTO - Sáng nay, tin beta.\nĐoạn hai beta.\n",
    "c.txt": "Tin gamma về chợ\n31/10/2024\nQTO - Tin gamma cả ngày.\nĐoạn hai gamma.\n",
    "d.txt": "Tin delta về trường\n31/10/2024 06:00\nQTO - Tin delta sớm.\nĐoạn hai delta.\n",
    "u.txt": "Tin không ngày một\n{publish}\n{head}\nBài một không ghi ngày.\nĐoạn hai.\n",
    "v.txt": "Tin không ngày hai\n{publish}\n{head}\nBài hai không ghi ngày.\nĐoạn hai.\n",
}


def test_feeds_index_and_digest_order_ties_and_undated_articles_alike(
    settings: Settings, db: Database
) -> None:
    """One order (model.order_key): newest first; an undated article after the dated ones
    of the day it was first seen (it stood where it was first seen: above the story of
    06:00); on a tie a dated article first, then by id. The feeds used their own before."""
    seeds = settings.paths.seeds
    seeds.mkdir(parents=True, exist_ok=True)
    for name, text in ORDER_DUMPS.items():
        (seeds / name).write_text(text, encoding="utf-8")
    # Seen at 09:15 in Vietnam, on the day of the dated ones.
    now = datetime(2024, 10, 31, 2, 15, tzinfo=UTC)
    run_build(settings, db, now=now)
    output = settings.paths.output
    page = (output / "index.html").read_text("utf-8")
    index = [html.unescape(t) for t in re.findall(r'<h2><a href="[^"]*">([^<]*)</a>', page)]
    assert sorted(index) == sorted(t.split("\n")[0] for t in ORDER_DUMPS.values())
    rss = [e.title for e in feedparser.parse((output / "rss.xml").read_bytes()).entries]
    atom = [e.title for e in feedparser.parse((output / "atom.xml").read_bytes()).entries]
    items = json.loads((output / "feed.json").read_bytes())["items"]
    plan = preview_digest(settings, db, now=now)
    assert plan is not None
    digest = [a.title for a in plan.articles]
    assert rss == index
    assert atom == index
    assert [i["title"] for i in items] == index
    assert digest == index
    # The day-only story, first seen that morning, counts from then (model.dated_at): with
    # the two of 09:15, not below the one of 06:00; the undated ones after all of that day.
    assert index.index("Tin gamma về chợ") < index.index("Tin delta về trường")
    assert index[-3:] == ["Tin delta về trường", "Tin không ngày hai", "Tin không ngày một"] or (
        index[-3:] == ["Tin delta về trường", "Tin không ngày một", "Tin không ngày hai"]
    )


def test_index_entries_of_the_other_language_say_their_language(
    settings: Settings, db: Database, now: datetime
) -> None:
    """An English article on the Vietnamese site: its page says lang="en", and so must its
    index entry, or a screen reader reads its title with the Vietnamese voice."""
    seeds = settings.paths.seeds
    seeds.mkdir(parents=True, exist_ok=True)
    (seeds / "en.txt").write_text(
        "Quang Tri opens a new bridge\n31/10/2024 10:15\n{head}\n"
        "The province opened the bridge this morning, and the traffic is now flowing.\n"
        "It is the longest bridge in the area and it was built in two years.\n",
        encoding="utf-8",
    )
    (seeds / "vi.txt").write_text(DUMPS["001.txt"][0], encoding="utf-8")
    run_build(settings, db, now=now)
    output = settings.paths.output
    page = (output / "articles" / "quang-tri-opens-a-new-bridge.html").read_text("utf-8")
    assert '<article lang="en">' in page
    index = (output / "index.html").read_text("utf-8")
    entries = re.findall(r"<li([^>]*)>\s*<h2><a [^>]*>([^<]*)</a>", index)
    assert entries == [
        (' lang="en"', "Quang Tri opens a new bridge"),
        ("", "Hội thảo khoa học tại Đông Hà"),
    ]


# FORMAT.md captions: the dumps carry them, never the photos.
CAPTIONS_DUMP = (
    "Hội thảo về chuyển đổi số\n31/10/2024 09:15\n{head}\n"
    "QTO - Sáng nay, hội thảo về chuyển đổi số diễn ra tại TP. Đông Hà.\n"
    "Quang cảnh hội thảo - Ảnh: T.P\n"
    "Các đại biểu thảo luận giải pháp cho thời gian tới.\n"
    "ẢNH: NGỌC VĂN\n"
    "Gian hàng rau hữu cơ của Hợp tác xã Đồng Xanh luôn đông khách - Ảnh minh hoạ\n"
    "Ông Trịnh Văn Hòa thông tin tại buổi họp báo (Ảnh: Phương Anh)\n"
    "Đoạn cuối của bài viết.\n"
)


def test_a_caption_without_its_photo_is_a_note_of_what_the_photo_showed_or_nothing(
    settings: Settings, db: Database, now: datetime
) -> None:
    """A caption under no photo read as a floating line ("Quang cảnh hội thảo - Ảnh: T.P").
    The page and the feeds say what the source's photo showed, marked as such, without
    the credit of a photo not shown; a credit alone or a stock photo's caption goes."""
    seeds = settings.paths.seeds
    seeds.mkdir(parents=True, exist_ok=True)
    (seeds / "c.txt").write_text(CAPTIONS_DUMP, encoding="utf-8")
    run_build(settings, db, now=now)
    output = settings.paths.output
    page = (output / "articles" / "hoi-thao-ve-chuyen-doi-so.html").read_text("utf-8")
    atom = feedparser.parse((output / "atom.xml").read_bytes()).entries[0].content[0].value
    items = json.loads((output / "feed.json").read_bytes())["items"]
    for text in (page, atom, items[0]["content_html"]):
        notes = re.findall(r'<p class="photo-note">(?:<em>)?([^<]*)', text)
        assert [html.unescape(n) for n in notes] == [
            "Ảnh trong bài gốc: Quang cảnh hội thảo",
            "Ảnh trong bài gốc: Ông Trịnh Văn Hòa thông tin tại buổi họp báo",
        ]
        for gone in ("T.P", "NGỌC VĂN", "Gian hàng rau", "Phương Anh", 'class="caption"'):
            assert gone not in text
        assert "Các đại biểu thảo luận giải pháp cho thời gian tới." in text


def test_the_digest_orders_as_the_index_after_a_newer_dump_is_removed(
    settings: Settings, db: Database
) -> None:
    """The index and the feeds place an undated article by the newest story of the dumps
    on disk (model.newest_published); the digest took the newest of the whole store, a
    story whose dump was removed included: the undated story led the digest, not the index."""
    seeds = settings.paths.seeds
    seeds.mkdir(parents=True, exist_ok=True)
    gone = seeds / "gone.txt"
    gone.write_text(
        "Tin đã gỡ\n01/11/2024 10:00\nQTO - Bài này đã gỡ.\nKhông còn trên trang.\n",
        encoding="utf-8",
    )
    run_build(settings, db, now=datetime(2024, 11, 1, 4, 0, tzinfo=UTC))
    gone.unlink()
    (seeds / "b1.txt").write_text(
        "Tin về cầu\n31/10/2024 08:00\nQTO - Cầu mới thông xe.\nXe qua cầu từ sáng.\n",
        encoding="utf-8",
    )
    (seeds / "b2.txt").write_text(
        "Tin về chợ\n30/10/2024 10:00\nQTO - Chợ phiên họp lại.\nNgười bán về đông.\n",
        encoding="utf-8",
    )
    (seeds / "u.txt").write_text(
        "Tin không ngày\n{publish}\n{head}\nBài không ghi ngày.\nĐoạn hai.\n", encoding="utf-8"
    )
    now = datetime(2024, 11, 1, 5, 0, tzinfo=UTC)
    run_build(settings, db, now=now)
    page = (settings.paths.output / "index.html").read_text("utf-8")
    index = [html.unescape(t) for t in re.findall(r'<h2><a href="[^"]*">([^<]*)</a>', page)]
    feed = feedparser.parse((settings.paths.output / "rss.xml").read_bytes())
    assert [e.title for e in feed.entries] == index
    assert index == ["Tin về cầu", "Tin không ngày", "Tin về chợ"]
    wide = dataclasses.replace(
        settings, digest=dataclasses.replace(settings.digest, max_age_hours=24 * 30)
    )
    plan = preview_digest(wide, db, now=now)
    assert plan is not None
    assert [a.title for a in plan.articles] == index

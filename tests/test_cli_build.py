"""`syndicate build` through CliRunner, and once as a real subprocess."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from syndicate.cli import cli
from tests.plugins.postgres import ENV_STORE_URL, open_store, store_environ

pytestmark = pytest.mark.usefixtures("store")

GOOD = (
    "Hội thảo khoa học tại Đông Hà\n31/10/2024 09:15\n"
    "QTO - Sáng nay, hội thảo diễn ra tại TP. Đông Hà.\n"
    "Đoạn thân bài thứ nhất.\nQuang cảnh hội thảo - Ảnh: T.P\nTrúc Phương\n"
)
OTHER = (
    "Khánh thành cầu mới\n30/10/2024 15:00\n"
    "QTO - Chiều nay, tỉnh khánh thành cây cầu mới nối hai huyện.\n"
    "Cây cầu dài 300 mét.\n"
)
SUMMARY = re.compile(
    r"Built (?P<articles>\d+) articles? \((?P<dups>\d+) duplicates?, (?P<skipped>\d+) skipped\) "
    r"into (?P<out>\S+): (?P<written>\d+) files? written, (?P<unchanged>\d+) unchanged"
    r"(?:, (?P<removed>\d+) removed)? in \d+\.\d\d s\.\n"
)


@pytest.fixture
def project(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    seeds = workdir / "seeds"
    (seeds / "a.txt").write_text(GOOD, encoding="utf-8")
    (seeds / "b.txt").write_bytes(GOOD.encode("utf-16"))  # a duplicate of a.txt
    (seeds / "c.txt").write_text(OTHER, encoding="utf-8-sig")
    (seeds / "d.txt").write_bytes(b"")
    monkeypatch.chdir(workdir)
    monkeypatch.delenv("SYNDICATE_CONFIG", raising=False)
    return workdir


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_build_prints_one_summary_line_and_warns_per_skipped_dump(
    project: Path, store: str
) -> None:
    code, out, err = _run("build")
    assert code == 0
    match = SUMMARY.fullmatch(out)
    assert match, out
    assert match.group("articles", "dups", "skipped", "out") == ("2", "1", "1", "feeds/")
    assert match.group("written", "unchanged") == ("6", "0")
    assert out.startswith("Built 2 articles (1 duplicate, 1 skipped) into feeds/: 6 files written")
    lines = err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("warning: seeds/d.txt: ")
    assert "Reading dumps" not in err  # no progress bar when stderr is not a terminal
    assert (project / "feeds" / "index.html").is_file()
    assert (project / "syndicate.db").is_file() == (store == "sqlite")
    with open_store(project / "syndicate.db") as db:
        assert db.conn.execute("SELECT count(*) FROM articles").fetchone() == (2,)


def test_second_build_writes_nothing(project: Path) -> None:
    _run("build")
    code, out, _err = _run("build")
    assert code == 0
    match = SUMMARY.fullmatch(out)
    assert match, out
    assert match.group("written", "unchanged") == ("0", "6")


def test_strict_exits_1_when_a_dump_was_skipped(project: Path) -> None:
    code, out, err = _run("build", "--strict")
    assert code == 1
    assert SUMMARY.fullmatch(out)
    assert err.splitlines()[-1] == (
        "Error: 1 dump was skipped and --strict is set. "
        "Fix or remove them (see the warnings above)."
    )
    (project / "seeds" / "d.txt").unlink()
    code, _out, _err = _run("build", "--strict")
    assert code == 0


def test_quiet_prints_only_errors(project: Path) -> None:
    code, out, err = _run("-q", "build")
    assert (code, out, err) == (0, "", "")
    code, out, err = _run("-q", "build", "--strict")
    assert code == 1
    assert out == ""
    first, last = err.splitlines()
    assert first.startswith("error: seeds/d.txt: ")
    assert last == (
        "Error: 1 dump was skipped and --strict is set. Fix or remove them (listed above)."
    )


def test_paths_given_replace_the_seeds(project: Path) -> None:
    code, out, _err = _run("build", "seeds/c.txt")
    assert code == 0
    assert out.startswith("Built 1 article (0 duplicates, 0 skipped) into feeds/:")


def test_verbose_counts_a_dump_refused_unread_apart_from_the_cache(
    project: Path, store: str
) -> None:
    # On a first build, a link leading outside the dump folder (never read) was counted as
    # "taken from the cache": "5 dumps: 4 parsed, 1 taken from the cache", with no cache.
    (project / "seeds" / "e.txt").symlink_to("/etc/hostname")
    code, _out, err = _run("-v", "build")
    assert code == 0
    assert "\n5 dumps: 4 parsed, 0 taken from the cache, 1 refused unread; " in f"\n{err}"
    code, _out, err = _run("-v", "build")
    assert "\n5 dumps: 0 parsed, 4 taken from the cache, 1 refused unread; " in f"\n{err}"


def test_decomposed_vietnamese_in_the_config_is_published_as_nfc(project: Path) -> None:
    # An editor that saves decomposed text (macOS, some IMEs) gave site.title as
    # "Tie\u0302u": pages and feeds carried those bytes while the digest, and every article
    # text, are NFC: the same title in two byte forms, which search and matching treat as
    # different words.
    title, description = "Tin mới Đông Hà", "Tin tức tỉnh Quảng Trị"
    (project / "syndicate.toml").write_text(
        f'[site]\ntitle = "{unicodedata.normalize("NFD", title)}"\n'
        f'description = "{unicodedata.normalize("NFD", description)}"\n',
        encoding="utf-8",
    )
    assert _run("build")[0] == 0
    for name in ("index.html", "rss.xml", "atom.xml", "feed.json"):
        text = (project / "feeds" / name).read_text(encoding="utf-8")
        assert unicodedata.is_normalized("NFC", text), name
        assert title in text, name
    assert description in (project / "feeds" / "index.html").read_text(encoding="utf-8")


def test_missing_path_is_a_usage_error(project: Path) -> None:
    code, out, err = _run("build", "nope")
    assert code == 2
    assert out == ""
    assert err == (
        "Error: nope: no such file or folder. "
        "Give existing dump files or folders (the default is paths.seeds).\n"
    )
    assert not (project / "syndicate.db").exists()
    assert _untouched()


def test_output_folder_from_config(project: Path) -> None:
    (project / "syndicate.toml").write_text(
        '[paths]\noutput = "public"\n[site]\nbase_url = "https://news.example.org/"\n',
        encoding="utf-8",
    )
    code, out, _err = _run("build")
    assert code == 0
    assert " into public/: " in out
    rss = (project / "public" / "rss.xml").read_text("utf-8")
    assert "<link>https://news.example.org/</link>" in rss


@pytest.mark.slow
def test_build_as_a_real_subprocess(project: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "syndicate", "build", "--strict"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1
    assert SUMMARY.fullmatch(proc.stdout), proc.stdout
    assert proc.stderr.startswith("warning: seeds/d.txt: ")
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "command",
    [["build"], ["build", "seeds/"], ["digest"], ["send"], ["send", "--dry-run"]],
)
def test_a_command_without_its_seeds_folder_fails_and_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    """No feeds/, no syndicate.db, no lock file: a run that fails on its input leaves the
    folder as it found it, and a PostgreSQL store without tables (see `_untouched`)."""
    empty = tmp_path / "new-site"
    empty.mkdir()
    monkeypatch.chdir(empty)
    monkeypatch.delenv("SYNDICATE_CONFIG", raising=False)
    code, out, err = _run(*command)
    assert (code, out) == (2, "")
    if command == ["build", "seeds/"]:
        assert err == (
            "Error: seeds: no such file or folder. "
            "Give existing dump files or folders (the default is paths.seeds).\n"
        )
    else:  # no folder given: the command takes none (send, digest), or its default
        assert err == (
            f"Error: {empty / 'seeds'}: no such file or folder. "
            "Make that folder, or set paths.seeds to the folder the dumps are in.\n"
        )
    assert sorted(p.name for p in empty.iterdir()) == []
    assert _untouched()


@pytest.mark.parametrize(
    ("config", "command", "line"),
    [
        ("output = 'site.txt/out'", ["build"], "paths.output: {d}/site.txt/out: {d}/site.txt"),
        ("output = 'site.txt/out'", ["send"], "paths.output: {d}/site.txt/out: {d}/site.txt"),
        ("output = '/proc/nope/out'", ["build"], "paths.output: cannot make /proc/nope/out in"),
        ("outbox = '/proc/nope/outbox'", ["send"], "paths.outbox: cannot make /proc/nope/outbox"),
        ("outbox = 'site.txt'", ["send", "--dry-run"], "paths.outbox: {d}/site.txt is not a"),
        ("", ["digest", "--out", "/proc/nope/preview"], "--out: cannot make /proc/nope/preview"),
    ],
    ids=[
        "build, output under a file",
        "send, output under a file",
        "build, output in /proc",
        "send, outbox in /proc",
        "send --dry-run, outbox a file",
        "digest, --out in /proc",
    ],
)
def test_a_command_whose_output_folder_cannot_be_written_fails_and_creates_nothing(
    project: Path, config: str, command: list[str], line: str
) -> None:
    # The store (with every dump parsed into it) and the send lock were made, the feeds
    # built and the day's digest stored, before the first write into a folder that could
    # not be made: exit 2 all the same, with all of that left behind, and a line naming an
    # article's page or the digest's mail file instead of the setting.
    (project / "syndicate.toml").write_text(f"[paths]\n{config}\n", encoding="utf-8")
    (project / "site.txt").write_text("not a folder\n", encoding="utf-8")
    before = sorted(p.name for p in project.iterdir())
    code, out, err = _run(*command)
    assert (code, out) == (2, "")
    assert err.startswith("Error: --out: " if "--out" in command else "Error: config key "), err
    assert line.format(d=project) in err, err
    assert err.endswith(" Give a folder this user can write to (or one it can make).\n"), err
    assert sorted(p.name for p in project.iterdir()) == before
    assert _untouched()


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("command", [["build"], ["digest"], ["send"], ["send", "--dry-run"]])
def test_an_empty_dump_folder_after_a_build_is_refused_and_the_site_stays(
    project: Path, command: list[str]
) -> None:
    # An unmounted share or a wrong path: the build found no dump, removed every article
    # page, emptied the feeds and exited 0. Refused now; `build --allow-empty` empties it.
    assert _run("build")[0] == 0
    site = _tree(project / "feeds")
    assert any(name.startswith("articles/") for name in site)
    for dump in (project / "seeds").iterdir():
        dump.unlink()
    code, out, err = _run(*command)
    assert (code, out) == (2, "")
    assert err == (
        f"Error: {project / 'seeds'}: no dumps (*.txt) found, while earlier builds read 4; "
        "refusing to "
        "empty the site. Check the folder (an unmounted share, a wrong path?). To empty the "
        "site on purpose, run `syndicate build --allow-empty`.\n"
    )
    assert _tree(project / "feeds") == site
    code, out, _err = _run("build", "--allow-empty")
    assert code == 0
    assert out.startswith("Built 0 articles (0 duplicates, 0 skipped) into feeds/:")
    assert not any(n.startswith("articles/") for n in _tree(project / "feeds"))
    assert _run(*command)[0] == 0  # the store now knows no dump: nothing to refuse


def _untouched() -> bool:
    """Whether the test's PostgreSQL database (if any) is as the test got it: no tables.

    Such a run is on the summary line of PostgreSQL runs that never opened their store,
    on purpose.
    """
    url = store_environ().get(ENV_STORE_URL)
    if not url:
        return True
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()"
        ).fetchone() == (0,)


def test_a_stored_record_with_a_language_syndicate_does_not_write_is_cleaned_on_reading(
    project: Path,
) -> None:
    # A record another writer stored (an older or newer syndicate sharing the store, a hand
    # edit, a store copied from one): its language went into every page and feed as stored,
    # escaped but not one of LANGUAGES. It is told anew from the article's text, as the
    # parser tells it.
    assert _run("build")[0] == 0
    with open_store(project / "syndicate.db") as db, db.transaction() as conn:
        rows = conn.execute("SELECT id, record FROM articles ORDER BY id").fetchall()
        assert len(rows) == 2
        for article_id, record in rows:
            data = json.loads(record)
            assert data["language"] == "vi"
            data["language"] = 'en" x="<b>'
            conn.execute(
                "UPDATE articles SET record = ? WHERE id = ?", (json.dumps(data), article_id)
            )
    shutil.rmtree(project / "feeds")
    assert _run("build")[0] == 0
    pages = sorted((project / "feeds" / "articles").glob("*.html"))
    assert len(pages) == 2
    for page in pages:
        assert re.findall(r'<article lang="([^"]*)"', page.read_text(encoding="utf-8")) == ["vi"]
    atom = (project / "feeds" / "atom.xml").read_text(encoding="utf-8")
    assert re.findall(r'<entry xml:lang="([^"]*)"', atom) == ["vi", "vi"]
    feed = json.loads((project / "feeds" / "feed.json").read_text(encoding="utf-8"))
    assert [item["language"] for item in feed["items"]] == ["vi", "vi"]
    rss = (project / "feeds" / "rss.xml").read_text(encoding="utf-8")
    assert "x=" not in rss + atom


def test_an_english_site_without_a_title_is_not_named_in_vietnamese(project: Path) -> None:
    """site.language = "en" and no title or description: the pages, the feeds (and the
    mails, which take the same keys) read "News", not "Tin mới" and a Vietnamese line."""
    import feedparser

    (project / "syndicate.toml").write_text('[site]\nlanguage = "en"\n', encoding="utf-8")
    assert _run("build")[0] == 0
    index = (project / "feeds" / "index.html").read_text(encoding="utf-8")
    assert "<title>News</title>" in index
    assert "The latest news, gathered by syndicate." in index
    for name in ("rss.xml", "atom.xml"):
        feed = feedparser.parse((project / "feeds" / name).read_bytes()).feed
        assert (feed.title, feed.subtitle) == ("News", "The latest news, gathered by syndicate.")
    feed = json.loads((project / "feeds" / "feed.json").read_bytes())
    assert (feed["title"], feed["description"]) == (
        "News",
        "The latest news, gathered by syndicate.",
    )
    for page in (project / "feeds").rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        assert "Tin mới" not in text, page
        assert "Tin tức mới nhất" not in text, page
    # A title or description set in the file is the operator's, whatever the language.
    (project / "syndicate.toml").write_text(
        '[site]\nlanguage = "en"\ntitle = "Tin mới"\n', encoding="utf-8"
    )
    assert _run("build")[0] == 0
    index = (project / "feeds" / "index.html").read_text(encoding="utf-8")
    assert "<title>Tin mới</title>" in index
    assert "The latest news, gathered by syndicate." in index


def _feed_items(project: Path) -> dict[str, list[tuple[str, str, str, str]]]:
    """Each feed as a reader sees it: (id, link, title, content) of every item."""
    import feedparser

    found: dict[str, list[tuple[str, str, str, str]]] = {}
    for name in ("rss.xml", "atom.xml"):
        parsed = feedparser.parse((project / "feeds" / name).read_bytes())
        assert parsed.bozo == 0
        found[name] = [(e.id, e.link, e.title, e.content[0].value) for e in parsed.entries]
    feed = json.loads((project / "feeds" / "feed.json").read_bytes())
    found["feed.json"] = [(i["id"], i["url"], i["title"], i["content_html"]) for i in feed["items"]]
    return found


def test_a_corrected_story_stays_one_item_in_every_feed_reader(project: Path) -> None:
    """A feed item's id was its article's id, a hash of its text: a dump corrected at the
    same path (a fixed typo, in the title too), or read differently by a new parser
    version, came out as a second item in every reader, under a new page URL when its title
    changed. The story keeps its id and page; its content and updated time are the new."""
    import feedparser

    assert _run("build")[0] == 0
    before = _feed_items(project)
    (project / "seeds" / "c.txt").write_text(
        OTHER.replace("cầu mới", "cầu mới Sông Lam").replace("300 mét", "320 mét"),
        encoding="utf-8",
    )
    assert _run("build")[0] == 0
    after = _feed_items(project)
    for name, items in after.items():
        assert len(items) == 2, name
        (old,) = [item for item in before[name] if "300 mét" in item[3]]
        (new,) = [item for item in items if "320 mét" in item[3]]
        assert (new[0], new[1]) == (old[0], old[1]), name
        assert new[2] == "Khánh thành cầu mới Sông Lam"
    assert sorted((project / "feeds" / "articles").glob("*.html")) == [
        project / "feeds" / "articles" / "hoi-thao-khoa-hoc-tai-dong-ha.html",
        project / "feeds" / "articles" / "khanh-thanh-cau-moi.html",
    ]
    # Atom says when it changed; the other item is as it was.
    entries = feedparser.parse((project / "feeds" / "atom.xml").read_bytes()).entries
    changed = {e.title: (e.published_parsed, e.updated_parsed) for e in entries}
    published, updated = changed["Khánh thành cầu mới Sông Lam"]
    assert updated > published
    published, updated = changed["Hội thảo khoa học tại Đông Hà"]
    assert updated == published
    feed = json.loads((project / "feeds" / "feed.json").read_bytes())
    modified = {i["title"]: i["date_modified"] > i["date_published"] for i in feed["items"]}
    assert modified == {
        "Khánh thành cầu mới Sông Lam": True,
        "Hội thảo khoa học tại Đông Hà": False,
    }

    # Another story at the same path is a new item.
    (project / "seeds" / "c.txt").write_text(
        "Mở tuyến xe buýt mới\n01/11/2024 08:00\n{head}\nTuyến xe buýt số 9 chạy từ hôm nay.\n"
        "Giá vé 7.000 đồng.\n",
        encoding="utf-8",
    )
    assert _run("build")[0] == 0
    for name, items in _feed_items(project).items():
        ids = {item[0] for item in items}
        assert len(ids) == 2
        assert {item[0] for item in after[name]} - ids == {
            next(item[0] for item in after[name] if "320 mét" in item[3])
        }, name


def _as_an_older_parser_left(project: Path, name: str) -> None:
    """Make the store look as an older parser left it for dump `name`: another id for its
    article (and its page), and an older parser version."""
    with open_store(project / "syndicate.db") as db, db.transaction() as conn:
        (old,) = conn.execute(
            "SELECT article_id FROM dumps WHERE path LIKE ?", ("%" + name,)
        ).fetchone()
        conn.execute("UPDATE articles SET id = 'older-parser' WHERE id = ?", (old,))
        conn.execute(
            "UPDATE article_pages SET article_id = 'older-parser' WHERE article_id = ?", (old,)
        )
        conn.execute(
            "UPDATE dumps SET article_id = 'older-parser', parser_version = 0 WHERE article_id = ?",
            (old,),
        )


def test_a_story_read_again_by_a_new_parser_keeps_its_item_and_is_not_marked_updated(
    project: Path,
) -> None:
    """A new parser version that reads a dump into another article id, the dump itself
    unchanged: the same story, under its item id, and no correction to announce (readers
    that show updated items as new would show every story again after an upgrade)."""
    import feedparser

    from syndicate.feeds import item_id

    assert _run("build")[0] == 0
    _as_an_older_parser_left(project, "c.txt")
    assert _run("build")[0] == 0
    (entry,) = [
        e
        for e in feedparser.parse((project / "feeds" / "atom.xml").read_bytes()).entries
        if e.title == "Khánh thành cầu mới"
    ]
    assert entry.id == item_id("older-parser")
    assert entry.updated_parsed == entry.published_parsed
    item = next(
        i
        for i in json.loads((project / "feeds" / "feed.json").read_bytes())["items"]
        if i["title"] == "Khánh thành cầu mới"
    )
    assert item["date_modified"] == item["date_published"]


def test_an_undated_story_read_again_by_a_new_parser_under_a_new_title_keeps_its_item(
    project: Path,
) -> None:
    """An undated dump, its bytes unchanged, that a new parser reads into another id and
    another title (parser version 8 sets a headline: "… cầu mới." -> "… cầu mới"): neither
    its title nor its publish time matched the old article's, so it came out as a new story,
    under a new item id, the old one gone from every feed (review23). The same bytes are the
    same story."""
    from syndicate.feeds import item_id

    (project / "seeds" / "c.txt").write_text(
        "Khánh thành cầu mới.\n{publish}\n{head}\nCây cầu dài 300 mét.\n", encoding="utf-8"
    )
    assert _run("build")[0] == 0
    _as_an_older_parser_left(project, "c.txt")
    with open_store(project / "syndicate.db") as db, db.transaction() as conn:
        conn.execute("UPDATE articles SET title = title || '.' WHERE id = 'older-parser'")
    assert _run("build")[0] == 0
    for name, items in _feed_items(project).items():
        (item,) = [i for i in items if i[2] == "Khánh thành cầu mới"]
        assert item[0] == item_id("older-parser"), name
        assert item[1].endswith("articles/khanh-thanh-cau-moi.html"), name


@pytest.mark.parametrize("batch", [0, 1], ids=["one batch", "a batch a dump"])
def test_two_dumps_swapped_stay_two_items_each_with_its_own_id(
    project: Path, monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    """Two stories of the same minute whose dumps swap paths (a scraper numbering files
    in another order): each read again gave the other's article, and carry_over took it
    for a correction of the same story (same publish time), so both stories went out
    under one item id (readers show one of them) and one took the other's digest day."""
    from syndicate.publish import sync

    if batch:
        monkeypatch.setattr(sync, "_SYNC_BATCH", {"sqlite": batch, "postgresql": batch})
    bus = (
        "Mở tuyến xe buýt mới\n01/11/2024 08:00\nQTO - Tuyến xe buýt số 9 chạy từ hôm nay.\n"
        "Giá vé 7.000 đồng.\n"
    )
    market = (
        "Khai trương chợ đêm\n01/11/2024 08:00\nQTO - Chợ đêm Đông Hà mở cửa tối nay.\n"
        "Hơn 100 gian hàng.\n"
    )
    (project / "seeds" / "e.txt").write_text(bus, encoding="utf-8")
    (project / "seeds" / "f.txt").write_text(market, encoding="utf-8")
    assert _run("build")[0] == 0
    before = _feed_items(project)
    (project / "seeds" / "e.txt").write_text(market, encoding="utf-8")
    (project / "seeds" / "f.txt").write_text(bus, encoding="utf-8")
    assert _run("build")[0] == 0
    for name, items in _feed_items(project).items():
        assert len({item[0] for item in items}) == len(items) == 4, name
        assert {(item[0], item[1], item[2]) for item in items} == {
            (item[0], item[1], item[2]) for item in before[name]
        }, name


@pytest.mark.parametrize("edited", ["a.txt", "b.txt"])
@pytest.mark.parametrize("batch", [0, 1], ids=["one batch", "a batch a dump"])
def test_a_corrected_copy_of_a_story_leaves_the_other_copy_its_item_and_page(
    project: Path, monkeypatch: pytest.MonkeyPatch, edited: str, batch: int
) -> None:
    """a.txt and b.txt hold one story; one of them corrected: the copy left unchanged is
    still that story, under its item id and page URL. carry_over gave the corrected copy
    the story's first id and page, so both went out under one item id, and the unchanged
    copy's page moved to a new URL (its published link then showed the corrected text)."""
    from syndicate.publish import sync

    if batch:
        monkeypatch.setattr(sync, "_SYNC_BATCH", {"sqlite": batch, "postgresql": batch})
    assert _run("build")[0] == 0
    before = {
        name: {item[2]: item[:2] for item in items} for name, items in _feed_items(project).items()
    }
    (project / "seeds" / edited).write_text(
        GOOD.replace("Đoạn thân bài thứ nhất.", "Đoạn thân bài thứ hai."), encoding="utf-8"
    )
    assert _run("build")[0] == 0
    for name, items in _feed_items(project).items():
        assert len({item[0] for item in items}) == len(items) == 3, name
        assert len({item[1] for item in items}) == 3, name
        (kept,) = [item for item in items if "thứ nhất" in item[3]]
        assert kept[:2] == before[name][kept[2]], name


def test_a_story_in_two_dumps_read_again_by_a_new_parser_keeps_its_item_across_batches(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """a.txt and b.txt hold one story; a new parser reads both into another id, each in a
    batch of its own: the story keeps its item id (the first batch saw b.txt still giving
    the old id, the second that another dump already gave the new one)."""
    from syndicate.feeds import item_id
    from syndicate.publish import sync

    assert _run("build")[0] == 0
    _as_an_older_parser_left(project, "a.txt")
    monkeypatch.setattr(sync, "_SYNC_BATCH", {"sqlite": 1, "postgresql": 1})
    assert _run("build")[0] == 0
    for name, items in _feed_items(project).items():
        (item,) = [i for i in items if i[2] == "Hội thảo khoa học tại Đông Hà"]
        assert item[0] == item_id("older-parser"), name
        assert item[1].endswith("articles/hoi-thao-khoa-hoc-tai-dong-ha.html"), name


@pytest.mark.parametrize("edited", ["a.txt", "b.txt"])
@pytest.mark.parametrize("batch", [0, 1], ids=["one batch", "a batch a dump"])
def test_a_story_corrected_as_its_other_copy_is_removed_keeps_its_item_and_page(
    project: Path, monkeypatch: pytest.MonkeyPatch, edited: str, batch: int
) -> None:
    """a.txt and b.txt hold one story; in one run the scraper corrects one copy and removes
    the other. The story is given by one dump again, corrected: as for a story in one dump
    corrected, it keeps its item id and page URL (the copy gone still counted as giving the
    old article, so the corrected one came out as a new item under a new URL)."""
    from syndicate.publish import sync

    if batch:
        monkeypatch.setattr(sync, "_SYNC_BATCH", {"sqlite": batch, "postgresql": batch})
    assert _run("build")[0] == 0
    before = {
        name: {item[2]: item[:2] for item in items} for name, items in _feed_items(project).items()
    }
    other = "b.txt" if edited == "a.txt" else "a.txt"
    (project / "seeds" / edited).write_text(
        GOOD.replace("Đoạn thân bài thứ nhất.", "Đoạn thân bài thứ hai."), encoding="utf-8"
    )
    (project / "seeds" / other).unlink()
    assert _run("build")[0] == 0
    for name, items in _feed_items(project).items():
        assert len(items) == 2, name
        (corrected,) = [item for item in items if "thứ hai" in item[3]]
        assert corrected[:2] == before[name][corrected[2]], name

"""One bad dump is one bad dump: whatever a dump makes a later stage do (feeds, pages,
digest, mail), that dump is skipped with one warning and the rest goes on."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import feedparser
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from syndicate.cli import cli
from syndicate.config import Settings, load_settings
from syndicate.digest import DigestInfo, render_digest
from syndicate.errors import ConfigError
from syndicate.load import parse
from syndicate.mail import MailInfo, build_digest_template
from syndicate.model import DigestPlan
from syndicate.publish import PARALLEL_MIN, BuildTuning, run_build
from syndicate.store import Database
from syndicate.store.articles import get_article
from syndicate.store.digests import iter_candidates
from tests.plugins.postgres import open_store

pytestmark = pytest.mark.usefixtures("store")

GOOD = {
    "001.txt": (
        "Khánh thành cầu mới\n31/10/2024 09:15\n"
        "QTO - Sáng nay, tỉnh khánh thành cây cầu mới nối hai huyện.\n"
        "Cây cầu dài 300 mét, rộng 12 mét.\nTrúc Phương\n"
    ),
    "002.txt": (
        "Hội thảo chuyển đổi số\n30/10/2024 15:00\n"
        "QTO - Chiều nay, hội thảo về chuyển đổi số diễn ra tại TP. Đông Hà.\n"
        "Các đại biểu thảo luận về ứng dụng công nghệ.\n"
    ),
}
HEADER = "Tiêu đề bài lỗi\n29/10/2024 08:00\nQTO - Mở đầu bài lỗi.\n"


def huge_markup(path: Path) -> None:
    """2.6 MB of `<>`: under load.max_bytes, past lxml's 10 MB text node once escaped."""
    path.write_text(HEADER + "<>" * 1_300_000 + "\n", encoding="utf-8")


def million_lines(path: Path) -> None:
    """1,000,000 short lines."""
    path.write_text(HEADER + "".join(f"d{n}\n" for n in range(1_000_000)), encoding="utf-8")


@pytest.fixture
def project(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name, text in GOOD.items():
        (workdir / "seeds" / name).write_text(text, encoding="utf-8")
    monkeypatch.chdir(workdir)
    for name in ("SYNDICATE_CONFIG", "SYNDICATE_SECRET", "SYNDICATE_SMTP_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    return workdir


@pytest.fixture
def db(settings: Settings):  # type: ignore[no-untyped-def]
    database = open_store(settings.paths.database)
    yield database
    database.close()


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def _check_feeds(output: Path, titles: set[str]) -> None:
    for name in ("rss.xml", "atom.xml"):
        data = (output / name).read_bytes()
        parsed = feedparser.parse(data)
        assert not parsed.bozo, (name, parsed.get("bozo_exception"))
        assert {entry.title for entry in parsed.entries} == titles, name
    items = json.loads((output / "feed.json").read_bytes())["items"]
    assert {item["title"] for item in items} == titles


def _check_good_pages(output: Path) -> None:
    index = (output / "index.html").read_text(encoding="utf-8")
    for slug in ("khanh-thanh-cau-moi", "hoi-thao-chuyen-doi-so"):
        assert (output / "articles" / f"{slug}.html").is_file()
        assert f'href="articles/{slug}.html"' in index


GOOD_TITLES = {"Khánh thành cầu mới", "Hội thảo chuyển đổi số"}


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (huge_markup, "holds 2,600,056 characters of text, more than an article's 1,000,000."),
        (million_lines, "holds 7,888,945 characters of text, more than an article's 1,000,000."),
    ],
    ids=["huge-markup", "million-lines"],
)
def test_an_oversized_dump_is_skipped_and_the_build_and_send_go_on(
    project: Path, make, reason: str
) -> None:  # type: ignore[no-untyped-def]
    make(project / "seeds" / "003-bad.txt")
    code, out, err = _run("build")
    assert code == 0
    assert err == (
        f"warning: seeds/003-bad.txt: {reason} "
        "Split it into articles, or move it out of the dump folder.\n"
    )
    assert out.startswith("Built 2 articles (0 duplicates, 1 skipped) into feeds/")
    _check_good_pages(project / "feeds")
    _check_feeds(project / "feeds", GOOD_TITLES)

    assert _run("subscribers", "add", "an@example.org")[0] == 0
    code, out, _err = _run("send")
    assert code == 0, out
    assert out.startswith("Digest ")
    assert ": sent 1, failed 0" in out
    assert len(list((project / "outbox").rglob("*.eml"))) == 1


@pytest.mark.slow
def test_escaping_past_lxmls_text_node_limit_still_builds(
    project: Path, settings: Settings, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Under a limit that lets it through, the 2.6 MB dump of `<>` is an article like any
    # other: its page holds its escaped text whole (over 10 MB); its feed entries, their
    # opening and a link to that page (feeds.CONTENT_LIMIT).
    monkeypatch.setattr(parse, "TEXT_LIMIT", 3_000_000, raising=False)
    huge_markup(project / "seeds" / "003-big.txt")
    summary = run_build(settings, db, now=datetime(2024, 11, 1, tzinfo=UTC))
    assert (summary.articles, summary.skipped) == (3, 0)
    page = (project / "feeds" / "articles" / "tieu-de-bai-loi.html").read_bytes()
    assert page.count(b"&lt;&gt;") == 1_300_000
    _check_feeds(project / "feeds", {*GOOD_TITLES, "Tiêu đề bài lỗi"})
    for name in ("rss.xml", "atom.xml", "feed.json"):
        assert (project / "feeds" / name).stat().st_size < 1_000_000, name


def _damage(db: Database, article_id: str, **fields: object) -> None:
    """Change fields of a stored record (its record hash stays: the build's caches vouch)."""
    (record,) = db.conn.execute(
        "SELECT record FROM articles WHERE id = ?", (article_id,)
    ).fetchone()
    data = json.loads(record)
    data.update(fields)
    with db.transaction():
        db.conn.execute(
            "UPDATE articles SET record = ? WHERE id = ?", (json.dumps(data), article_id)
        )


def _id_of(db: Database, source: str) -> str:
    (article_id,) = db.conn.execute(
        "SELECT id FROM articles WHERE json_extract(record, '$.source') = ?"
        if db.dialect == "sqlite"
        else "SELECT id FROM articles WHERE record::json->>'source' = ?",
        (source,),
    ).fetchone()
    return str(article_id)


# A date that exists in UTC but not in the site's timezone (UTC+7): Python refuses it.
OUT_OF_RANGE = "9999-12-31T23:30:00+00:00"


@pytest.mark.parametrize("in_workers", [False, True], ids=["alone", "workers"])
def test_an_article_whose_page_cannot_be_rendered_is_left_out_of_the_site(
    project: Path,
    settings: Settings,
    db: Database,
    caplog: pytest.LogCaptureFixture,
    in_workers: bool,
) -> None:
    tuning = BuildTuning(parallel_min=1 if in_workers else PARALLEL_MIN)
    (project / "seeds" / "003.txt").write_text(HEADER + "Đoạn hai.\n", encoding="utf-8")
    now = datetime(2024, 11, 1, tzinfo=UTC)
    run_build(settings, db, now=now, tuning=tuning)
    bad = _id_of(db, "seeds/003.txt")
    _damage(db, bad, published=OUT_OF_RANGE)
    (project / "feeds" / "articles" / "tieu-de-bai-loi.html").unlink()  # render it again
    caplog.clear()

    summary = run_build(settings, db, now=now, tuning=tuning)

    assert (summary.articles, summary.skipped) == (2, 1)
    message = (
        "seeds/003.txt: its page cannot be rendered (OverflowError: date value out of range); "
        "the article is left out. Fix the dump or move it out of the dump folder; the rest "
        "was built."
    )
    assert [str(e) for e in summary.errors] == [message]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [message]
    _check_good_pages(project / "feeds")
    assert "tieu-de-bai-loi" not in (project / "feeds" / "index.html").read_text("utf-8")
    assert not (project / "feeds" / "articles" / "tieu-de-bai-loi.html").exists()
    _check_feeds(project / "feeds", GOOD_TITLES)

    # The digest goes out without it too.
    assert _run("subscribers", "add", "an@example.org")[0] == 0
    code, out, _err = _run("send")
    assert code == 0, out
    assert ": sent 1, failed 0" in out


# Sidebar lines advertising the good seeds (their heads, cut off as sites do).
TEASES_001 = "QTO - Sáng nay, tỉnh khánh thành cây cầu mới nối hai..."
TEASES_002 = "QTO - Chiều nay, hội thảo về chuyển đổi số diễn ra tại..."


def _other_news_links(output: Path, slug: str) -> list[str]:
    """The pages the "Other news" items of an article page link to."""
    html = (output / "articles" / f"{slug}.html").read_text(encoding="utf-8")
    section = html.split('<section class="other-news">', 1)[1].split("</section>", 1)[0]
    return re.findall(r'<a href="\.\./articles/([^"]+)\.html">', section)


def _break(db: Database, article_id: str) -> None:
    """Make an article's page fail to render, as a changed record would (new record hash)."""
    _damage(db, article_id, published=OUT_OF_RANGE)
    with db.transaction():
        db.conn.execute("UPDATE articles SET record_hash = 'changed' WHERE id = ?", (article_id,))


@pytest.mark.parametrize("in_workers", [False, True], ids=["alone", "workers"])
@pytest.mark.parametrize("mutual", [False, True], ids=["one-way", "mutual"])
def test_a_teaser_never_links_to_an_article_left_out_of_the_site(
    project: Path,
    settings: Settings,
    db: Database,
    in_workers: bool,
    mutual: bool,
) -> None:
    """One-way: a page links to 002, whose page fails. Mutual: 001 and 002 advertise each
    other, so both are link targets and rendered first; 001 is rendered again unlinked."""
    tuning = BuildTuning(parallel_min=1 if in_workers else PARALLEL_MIN)
    seeds = project / "seeds"
    if mutual:
        for name, teaser in (("001.txt", TEASES_002), ("002.txt", TEASES_001)):
            (seeds / name).write_text(GOOD[name] + teaser + "\n", encoding="utf-8")
        linking = "khanh-thanh-cau-moi"
    else:
        (seeds / "003.txt").write_text(
            HEADER + "Đoạn hai.\n" + TEASES_001 + "\n" + TEASES_002 + "\n", encoding="utf-8"
        )
        linking = "tieu-de-bai-loi"
    now = datetime(2024, 11, 1, tzinfo=UTC)
    run_build(settings, db, now=now, tuning=tuning)
    output = project / "feeds"
    assert "hoi-thao-chuyen-doi-so" in _other_news_links(output, linking)
    _break(db, _id_of(db, "seeds/002.txt"))

    summary = run_build(settings, db, now=now, tuning=tuning)

    assert [str(e).split(" (")[0] for e in summary.errors] == [
        "seeds/002.txt: its page cannot be rendered"
    ]
    assert not (output / "articles" / "hoi-thao-chuyen-doi-so.html").exists()
    expected = [] if mutual else ["khanh-thanh-cau-moi"]
    assert _other_news_links(output, linking) == expected
    page = (output / "articles" / f"{linking}.html").read_text(encoding="utf-8")
    # Unlinked text, without the words its site's cut left dangling ("diễn ra tại...").
    assert "Chiều nay, hội thảo về chuyển đổi số…" in page
    # The same outcome next time: nothing to write, and still no link to the missing page.
    again = run_build(settings, db, now=now)
    assert again.written == 0
    assert _other_news_links(output, linking) == expected


def test_an_article_that_cannot_go_in_a_feed_is_left_out_of_the_feeds(
    project: Path,
    settings: Settings,
    db: Database,
) -> None:
    (project / "seeds" / "003.txt").write_text(HEADER + "Đoạn hai.\n", encoding="utf-8")
    now = datetime(2024, 11, 1, tzinfo=UTC)
    run_build(settings, db, now=now)
    # A date the site's timezone cannot hold: the entry's dates cannot be written. (This
    # was a language with a control character, which lxml refuses, until a stored language
    # not in LANGUAGES was told anew on reading; every other text goes through one_line.)
    _damage(db, _id_of(db, "seeds/003.txt"), published=OUT_OF_RANGE)
    for name in ("rss.xml", "atom.xml", "feed.json"):
        (project / "feeds" / name).unlink()

    summary = run_build(settings, db, now=now)

    assert summary.skipped == 1
    [error] = summary.errors
    assert str(error).startswith(
        "seeds/003.txt: its feed entry cannot be rendered (OverflowError: date value out of range)"
    )
    _check_feeds(project / "feeds", GOOD_TITLES)
    # Its page was fine, and stays.
    assert (project / "feeds" / "articles" / "tieu-de-bai-loi.html").is_file()
    # Reported again next time, not taken as fresh.
    again = run_build(settings, db, now=now)
    assert [str(e) for e in again.errors] == [str(error)]


def test_the_feeds_keep_the_index_order_when_the_newest_article_is_left_out(
    project: Path,
    settings: Settings,
    db: Database,
) -> None:
    """An undated article stands after the dated ones of its day, or of the newest article's
    day when that is earlier: the index's newest, in the feeds too, even when the newest
    article's feed entry cannot be rendered and the feeds go without it."""
    seeds = project / "seeds"
    (seeds / "003.txt").write_text(
        "Tin mới nhất\n01/11/2024 08:00\nQTO - Tin của sáng nay.\nNgười dân đón mùa lúa mới.\n",
        encoding="utf-8",
    )
    (seeds / "004.txt").write_text(
        "Tin không ghi ngày\n\nQTO - Tin không rõ ngày đăng.\nTrường học mở cửa đón học sinh.\n",
        encoding="utf-8",
    )
    now = datetime(2024, 11, 1, 3, tzinfo=UTC)  # 10:00 in Đông Hà: all first seen on 1/11
    run_build(settings, db, now=now)
    feeds = project / "feeds"
    order = ["Tin mới nhất", "Tin không ghi ngày", "Khánh thành cầu mới", "Hội thảo chuyển đổi số"]
    assert [i["title"] for i in json.loads((feeds / "feed.json").read_bytes())["items"]] == order
    _damage(db, _id_of(db, "seeds/003.txt"), published=OUT_OF_RANGE)
    for name in ("rss.xml", "atom.xml", "feed.json"):
        (feeds / name).unlink()

    summary = run_build(settings, db, now=now)

    assert [str(e).split(" (")[0] for e in summary.errors] == [
        "seeds/003.txt: its feed entry cannot be rendered"
    ]
    items = json.loads((feeds / "feed.json").read_bytes())["items"]
    assert [item["title"] for item in items] == order[1:]
    for name in ("rss.xml", "atom.xml"):
        parsed = feedparser.parse((feeds / name).read_bytes())
        assert [entry.title for entry in parsed.entries] == order[1:], name


def test_an_article_the_digest_cannot_render_is_left_out_of_it(
    project: Path,
    settings: Settings,
    db: Database,
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = datetime(2024, 11, 1, tzinfo=UTC)
    run_build(settings, db, now=now)
    first = get_article(db, _id_of(db, "seeds/001.txt"))
    second = get_article(db, _id_of(db, "seeds/002.txt"))
    assert first is not None
    assert second is not None
    broken = dataclasses.replace(first, published=datetime.fromisoformat(OUT_OF_RANGE))
    plan = DigestPlan(day=now.date(), articles=(broken, second))
    rendered = render_digest(
        plan,
        lang="vi",
        info=DigestInfo.from_settings(settings),
        unsubscribe_url="https://x.example/u",
        now=now,
    )
    assert "Hội thảo chuyển đổi số" in rendered.text
    assert "Khánh thành cầu mới" not in rendered.text
    # The subject names the top story that went in, and counts no other.
    assert rendered.subject == "Tin mới: Hội thảo chuyển đổi số"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        "seeds/001.txt: cannot go in the digest (OverflowError: date value out of range); left out."
    ]


# --------------------------------------------------------------------------- links


def test_a_dump_linked_from_outside_the_dump_folder_is_skipped(
    project: Path, settings: Settings, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    outside = project / "private"
    outside.mkdir()
    (outside / "secret.txt").write_text(HEADER + "Đoạn hai.\n", encoding="utf-8")
    (project / "seeds" / "003-out.txt").symlink_to(outside / "secret.txt")
    (project / "seeds" / "sub").mkdir()
    (project / "seeds" / "sub" / "004-in.txt").symlink_to(project / "seeds" / "001.txt")

    summary = run_build(settings, db, now=datetime(2024, 11, 1, tzinfo=UTC))

    message = (
        f"seeds/003-out.txt: is a link to '{outside / 'secret.txt'}', outside the dump folder. "
        "Copy the file into the dump folder, or set load.follow_symlinks = true."
    )
    assert [str(e) for e in summary.errors] == [message]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [message]
    # The link inside the folder is read: it gives 001's article again.
    assert (summary.articles, summary.duplicates, summary.skipped) == (2, 1, 1)
    assert not (project / "feeds" / "articles" / "tieu-de-bai-loi.html").exists()


def test_follow_symlinks_reads_dumps_linked_from_anywhere(
    project: Path, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = project / "private"
    outside.mkdir()
    (outside / "secret.txt").write_text(HEADER + "Đoạn hai.\n", encoding="utf-8")
    (project / "seeds" / "003-out.txt").symlink_to(outside / "secret.txt")
    (project / "syndicate.toml").write_text("[load]\nfollow_symlinks = true\n", encoding="utf-8")
    settings = load_settings(project / "syndicate.toml", {}, cwd=project)
    assert settings.load.follow_symlinks is True

    summary = run_build(settings, db, now=datetime(2024, 11, 1, tzinfo=UTC))

    assert (summary.articles, summary.skipped) == (3, 0)
    assert (project / "feeds" / "articles" / "tieu-de-bai-loi.html").is_file()


def test_a_dump_named_on_its_own_is_read_wherever_its_link_leads(
    project: Path, settings: Settings, db: Database
) -> None:
    outside = project / "private"
    outside.mkdir()
    (outside / "secret.txt").write_text(HEADER + "Đoạn hai.\n", encoding="utf-8")
    (project / "seeds" / "003-out.txt").symlink_to(outside / "secret.txt")
    summary = run_build(
        settings,
        db,
        now=datetime(2024, 11, 1, tzinfo=UTC),
        paths=[project / "seeds" / "003-out.txt"],
    )
    assert (summary.articles, summary.skipped) == (1, 0)


def test_follow_symlinks_must_be_true_or_false(project: Path) -> None:
    (project / "syndicate.toml").write_text('[load]\nfollow_symlinks = "yes"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings(project / "syndicate.toml", {}, cwd=project)
    assert str(info.value) == (
        "config key load.follow_symlinks has value 'yes'; expected true or false."
    )


# --------------------------------------------------------------------------- leftovers


def _exited_pid() -> int:
    """The pid of a child that has exited and been reaped (no process has it now)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_temp_files_left_by_a_killed_build_are_removed_by_the_next(
    project: Path, settings: Settings, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    now = datetime(2024, 11, 1, tzinfo=UTC)
    run_build(settings, db, now=now)
    output = settings.paths.output
    # What a build killed mid-run leaves: its staging folder, and the temp files of
    # write_atomic (".<name>.<pid>.<n>.tmp") wherever it was writing.
    dead = _exited_pid()
    (output / ".staging" / str(dead) / "a").mkdir(parents=True)
    (output / ".staging" / str(dead) / "a" / "abc.html").write_bytes(b"staged")
    leftovers = [
        output / f".index.html.{dead}.0.tmp",
        output / f".rss.xml.{dead}.12.tmp",
        output / "articles" / f".khanh-thanh-cau-moi.html.{dead}.3.tmp",
        output / "page" / f".1.html.{dead}.4.tmp",
        output / "digests" / f".2024-11-01.html.{dead}.0.tmp",
    ]
    # What must stay: another running build's temp file, files that only look alike.
    live = os.getppid()
    kept = [
        output / f".atom.xml.{live}.0.tmp",
        output / ".htaccess",
        output / "articles" / "notes.1.2.tmp",
        output / "articles" / f".keep.{dead}.tmp",
        output / f"index.html.{dead}.0.tmp",
    ]
    for path in leftovers + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    before = {
        p: p.read_bytes()
        for p in output.rglob("*")
        if p.is_file() and p not in leftovers and ".staging" not in p.parts
    }
    caplog.set_level(logging.INFO, logger="syndicate.publish")

    summary = run_build(settings, db, now=now)

    assert summary.written == 0
    assert [p for p in leftovers if p.exists()] == []
    assert not (output / ".staging").exists()
    after = {p: p.read_bytes() for p in output.rglob("*") if p.is_file()}
    assert after == before
    assert f"{output}: removed 5 temp files left by a killed process" in caplog.messages


# --------------------------------------------------------------------------- random dumps

VI_LOWER = "aàảãáạăằẳẵắặâầẩẫấậbcdđeèẻẽéẹêềểễếệghiìỉĩíịklmnoòỏõóọôồổỗốộơờởỡớợ"
VI_LETTERS = VI_LOWER + "pqrstuùủũúụưừửữứựvxyỳỷỹýỵ"
VI_ALPHABET = VI_LETTERS + VI_LETTERS.upper() + "0123456789 .,;:!?-\u2013\u2014()\"'/…"
BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Text that has broken stages before, or might: markup, template syntax, CDATA ends,
# invisible, bidi and control characters, emoji sequences, datelines, placeholders.
HOSTILE = [
    "<script>alert(1)</script>",
    "]]>",
    "<![CDATA[x]]>",
    "{{ 7*7 }}",
    "{% raw %}",
    "&amp;&#0;&#x1;",
    "<>" * 50,
    "\x00\x01\x08\x0b\x0c\x1b\x7f\x85",
    "\u200b\u200c\u200d\u2060\ufeff\u00ad\ufffe\uffff",
    "\u202e\u202a\u2066\u2069\u200e\u200f",
    "👨\u200d👩\u200d👧 🏳\ufe0f\u200d🌈",
    "\r\n\r",
    "\u2028\u2029",
    "QTO - ",
    "(Dân trí) \u2013 ",
    "{title}",
    "{publish}",
    " - Ảnh: T.P",
    "31/02/2025 08:00",
    "Sáng nay 31/10",
    "Trúc Phương",
    "...",
    "\U0010ffff\ue000",
]

pieces = st.one_of(
    st.text(alphabet=VI_ALPHABET, max_size=80),
    st.sampled_from(HOSTILE),
    st.text(max_size=40),  # any code point, surrogates aside
    st.integers(1, 4_000).map(lambda n: "<>" * n),  # a long line
)
lines = st.lists(pieces, max_size=6).map("".join)
text_dumps = st.lists(lines, max_size=40).map("\n".join)
many_lines = st.integers(100, 3_000).map(lambda n: "Tiêu đề\n\n\n" + "dòng\nkhác\n" * n)
encoded = st.one_of(
    text_dumps.map(lambda t: t.encode("utf-8", "surrogatepass")),
    text_dumps.map(lambda t: t.encode("utf-16", "surrogatepass")),
    text_dumps.map(lambda t: t.encode("cp1258", "ignore")),
    many_lines.map(str.encode),
    st.binary(max_size=2_000),
)


MARKER = "https://news.example.org/unsubscribe/MARKER"


def _emptied(db: Database) -> Database:
    """`db` as a new project's store is: on SQLite a new file is that already; on
    PostgreSQL the test's one database is emptied (a new database an example costs more
    than the example)."""
    if db.dialect == "postgresql":
        tables = [
            name
            for (name,) in db.conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
                "AND tablename <> 'syndicate_schema' ORDER BY tablename"
            )
        ]
        with db.transaction():
            db.conn.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY")
    return db


@pytest.mark.slow(seconds=16)
@hyp_settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(encoded, min_size=1, max_size=3))
def test_random_dumps_never_stop_the_build_or_the_digest(dumps: list[bytes]) -> None:
    now = datetime(2024, 11, 1, tzinfo=UTC)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "seeds").mkdir()
        for name, text in GOOD.items():
            (root / "seeds" / name).write_text(text, encoding="utf-8")
        for number, data in enumerate(dumps):
            (root / "seeds" / f"x{number}.txt").write_bytes(data)
        settings = load_settings(None, {}, cwd=root)
        with _emptied(open_store(settings.paths.database)) as db:
            summary = run_build(settings, db, now=now)
            candidates = [article for article, _seen in iter_candidates(db)]

        # Every dump is an article, a duplicate or skipped with its reason; nothing else.
        assert summary.articles + summary.duplicates + summary.skipped == len(dumps) + 2
        assert len(summary.errors) == summary.skipped
        output = settings.paths.output
        pages = [p.read_text("utf-8") for p in (output / "articles").iterdir()]
        for lead in ("tỉnh khánh thành cây cầu mới", "hội thảo về chuyển đổi số"):
            assert any(lead in page for page in pages), lead
        for name in ("rss.xml", "atom.xml"):
            parsed = feedparser.parse((output / name).read_bytes())
            assert not parsed.bozo, (name, parsed.get("bozo_exception"))
        for page in [*pages, (output / "atom.xml").read_text("utf-8")]:
            assert BIDI.isdisjoint(page)
        assert len(json.loads((output / "feed.json").read_bytes())["items"]) == summary.articles

        plan = DigestPlan(day=now.date(), articles=tuple(candidates))
        for lang in ("vi", "en"):
            rendered = render_digest(
                plan,
                lang=lang,
                info=DigestInfo.from_settings(settings),
                unsubscribe_url=MARKER,
                now=now,
            )
            message = build_digest_template(
                rendered,
                info=MailInfo.from_settings(settings),
                digest_day=now.date(),
                marker=MARKER,
                now=now,
                message_key=None,
            )
            data = b"".join(message.chunks)
            assert max(len(line) for line in data.split(b"\r\n")) <= 998
            assert len(data) < 2_000_000


def test_a_dump_swapped_for_a_link_after_its_check_is_skipped(
    project: Path, settings: Settings, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    outside = project / "private"
    outside.mkdir()
    (outside / "secret.txt").write_text(HEADER + "Đoạn hai.\n", encoding="utf-8")
    second = sorted((project / "seeds").glob("*.txt"))[1]

    def swap(done: int, total: int) -> None:
        # Every dump of a batch is checked (lstat) before the first is read: once the first
        # is stored, the second has passed its check and is about to be opened.
        if done == 1:
            second.unlink()
            second.symlink_to(outside / "secret.txt")

    summary = run_build(settings, db, now=datetime(2024, 11, 1, tzinfo=UTC), progress=swap)

    message = (
        f"seeds/{second.name}: became a link to '{outside / 'secret.txt'}' after its link "
        "check; skipped. Build again; a link leading outside the dump folder is skipped "
        "unless load.follow_symlinks = true."
    )
    assert [str(e) for e in summary.errors] == [message]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [message]
    assert summary.skipped == 1
    assert not (project / "feeds" / "articles" / "tieu-de-bai-loi.html").exists()
    # Next run, the link is what it is: a link outside the folder, skipped as ever.
    again = run_build(settings, db, now=datetime(2024, 11, 1, tzinfo=UTC))
    assert [str(e) for e in again.errors] == [
        f"seeds/{second.name}: is a link to '{outside / 'secret.txt'}', outside the dump "
        "folder. Copy the file into the dump folder, or set load.follow_symlinks = true."
    ]


def test_a_worker_refuses_a_dump_swapped_after_its_link_check(
    project: Path, settings: Settings
) -> None:
    # The pin the link check made goes with the dump to the worker that opens it.
    from syndicate.load import DumpPin
    from syndicate.publish.pool import BuildPool

    outside = project / "private"
    outside.mkdir()
    (outside / "secret.txt").write_text(HEADER + "Đoạn hai.\n", encoding="utf-8")
    dump = sorted((project / "seeds").glob("*.txt"))[1]
    checked = os.lstat(dump)
    pin = DumpPin(checked.st_dev, checked.st_ino, link=False)
    dump.unlink()
    dump.symlink_to(outside / "secret.txt")
    shown = f"seeds/{dump.name}"
    with BuildPool(None, settings.paths.output, tuning=BuildTuning(parallel_min=1)) as pool:
        got = list(pool.reads({}, [(str(dump), str(dump), shown, pin)], settings))
        unpinned = list(pool.reads({}, [(str(dump), str(dump), shown, None)], settings))
    assert [str(g) for g in got] == [
        f"{shown}: became a link to '{outside / 'secret.txt'}' after its link check; skipped. "
        "Build again; a link leading outside the dump folder is skipped unless "
        "load.follow_symlinks = true."
    ]
    assert [type(g).__name__ for g in unpinned] == ["Read"]

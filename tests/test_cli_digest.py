"""Today's digest (send/digests.py) and the `syndicate digest` preview command."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from syndicate.cli import AppContext, cli
from syndicate.config import Settings
from syndicate.digest import DigestInfo, render_digest
from syndicate.model import Article, Block, BlockKind, Precision, Teaser
from syndicate.send.digests import digest_view_url, todays_digest, write_digest_page
from syndicate.store import Database
from syndicate.store.articles import upsert_article, write_page_paths
from tests.plugins.postgres import open_store

pytestmark = pytest.mark.usefixtures("store")

NOW = datetime(2024, 11, 1, 6, 0, tzinfo=UTC)  # 13:00 in Asia/Ho_Chi_Minh
DAY = date(2024, 11, 1)


def article(ident: str, published: datetime | None, *, slug: str | None = None) -> Article:
    return Article(
        id=ident,
        slug=slug or f"bai-{ident}",
        title=f"Bài {ident}",
        title_derived=False,
        published=published,
        precision=Precision.DATETIME if published else Precision.UNKNOWN,
        body=(Block(BlockKind.PARAGRAPH, f"Nội dung của bài {ident}."),),
    )


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = open_store(settings.paths.database)
    yield database
    database.close()


def store(db: Database, *articles: Article, now: datetime = NOW) -> None:
    with db.transaction():
        for item in articles:
            upsert_article(db, item, now=now)


def publish(db: Database, pages: dict[str, str]) -> None:
    """Record article pages as `build` does once it has written them."""
    with db.transaction():
        write_page_paths(db, pages)


def count_digests(db: Database) -> int:
    return int(db.conn.execute("SELECT count(*) FROM digests").fetchone()[0])


# --------------------------------------------------------------------------- flow


def test_digest_day_is_the_date_in_the_site_timezone(settings: Settings, db: Database) -> None:
    store(db, article("a", NOW - timedelta(hours=1)))
    late_utc = datetime(2024, 10, 31, 18, 30, tzinfo=UTC)  # 01:30 on 1 Nov in Hanoi
    plan = todays_digest(settings, db, now=late_utc, create=False)
    assert plan is not None
    assert plan.day == DAY


def test_preview_plan_changes_nothing(settings: Settings, db: Database) -> None:
    store(db, article("a", NOW - timedelta(hours=1)), article("b", NOW - timedelta(hours=2)))
    plan = todays_digest(settings, db, now=NOW, create=False)
    assert plan is not None
    assert [a.id for a in plan.articles] == ["a", "b"]
    assert count_digests(db) == 0
    marked = db.conn.execute("SELECT count(*) FROM articles WHERE digest_day IS NOT NULL")
    assert marked.fetchone()[0] == 0
    assert todays_digest(settings, db, now=NOW, create=False) == plan


def test_one_digest_a_day_then_only_new_articles(settings: Settings, db: Database) -> None:
    store(db, article("a", NOW - timedelta(hours=1)))
    first = todays_digest(settings, db, now=NOW, create=True)
    assert first is not None
    assert [a.id for a in first.articles] == ["a"]
    # A later run the same day gets the same digest, not a second one.
    store(db, article("b", NOW), now=NOW + timedelta(hours=2))
    again = todays_digest(settings, db, now=NOW + timedelta(hours=3), create=True)
    assert again == first
    assert todays_digest(settings, db, now=NOW + timedelta(hours=3), create=False) == first
    assert count_digests(db) == 1
    # The next day carries only what no digest has carried yet.
    tomorrow = todays_digest(settings, db, now=NOW + timedelta(days=1), create=True)
    assert tomorrow is not None
    assert tomorrow.day == DAY + timedelta(days=1)
    assert [a.id for a in tomorrow.articles] == ["b"]
    assert todays_digest(settings, db, now=NOW + timedelta(days=2), create=True) is None
    assert count_digests(db) == 2


def test_an_article_dated_in_the_future_does_not_stop_later_digests(
    settings: Settings, db: Database
) -> None:
    typo = article("typo", datetime(2042, 10, 31, 2, 0, tzinfo=UTC))  # a mistyped year
    store(db, typo, article("a", NOW - timedelta(hours=1)))
    first = todays_digest(settings, db, now=NOW, create=True)
    assert first is not None
    assert [a.id for a in first.articles] == ["typo", "a"]
    store(db, article("b", NOW + timedelta(hours=20)), now=NOW + timedelta(hours=20))
    tomorrow = todays_digest(settings, db, now=NOW + timedelta(days=1), create=True)
    assert tomorrow is not None
    assert [a.id for a in tomorrow.articles] == ["b"]


def test_first_run_over_an_archive_mails_only_the_latest_days(
    settings: Settings, db: Database
) -> None:
    archive = [article(f"old{i:03}", NOW - timedelta(days=3 + i)) for i in range(50)]
    recent = [article(f"new{i}", NOW - timedelta(hours=i * 10)) for i in range(4)]
    store(db, *archive, *recent, article("undated", None))
    plan = todays_digest(settings, db, now=NOW, create=True)
    assert plan is not None
    # The undated one after the dated ones of its day (1/11 in Vietnam: new0, new1).
    assert [a.id for a in plan.articles] == ["new0", "new1", "undated", "new2", "new3"]
    assert plan.more == 0


def test_max_articles_and_more(settings: Settings, db: Database) -> None:
    small = dataclasses.replace(
        settings, digest=dataclasses.replace(settings.digest, max_articles=2)
    )
    store(db, *(article(f"n{i}", NOW - timedelta(minutes=i)) for i in range(5)))
    plan = todays_digest(small, db, now=NOW, create=True)
    assert plan is not None
    assert [a.id for a in plan.articles] == ["n0", "n1"]
    assert plan.more == 3


def test_plan_links_the_pages_the_build_stored_and_no_other(
    settings: Settings, db: Database
) -> None:
    older = article("older", NOW - timedelta(hours=5), slug="cung-ten")
    newer = article("newer", NOW - timedelta(hours=1), slug="cung-ten")
    store(db, older, newer)
    # Built from another folder first: the newer one took the slug, and keeps it.
    publish(db, {"newer": "articles/cung-ten.html", "older": "articles/cung-ten-x.html"})
    plan = todays_digest(settings, db, now=NOW, create=False)
    assert plan is not None
    assert [a.id for a in plan.articles] == ["newer", "older"]
    assert plan.pages == {"newer": "articles/cung-ten.html", "older": "articles/cung-ten-x.html"}
    # A later build left the newer one without a page: it is not linked, nor given another.
    publish(db, {"older": "articles/cung-ten-x.html"})
    plan = todays_digest(settings, db, now=NOW, create=False)
    assert plan is not None
    assert plan.pages == {"older": "articles/cung-ten-x.html"}


def test_write_digest_page(settings: Settings, db: Database) -> None:
    store(db, article("a", NOW))
    publish(db, {"a": "articles/bai-a.html"})
    plan = todays_digest(settings, db, now=NOW, create=True)
    assert plan is not None
    path = write_digest_page(settings, plan, now=NOW)
    assert path == settings.paths.output / "digests" / "2024-11-01.html"
    html = path.read_text(encoding="utf-8")
    assert 'lang="vi"' in html
    # The page is Vietnamese: its unsubscribe link opens the Vietnamese page, whatever
    # the browser's language (a phone set to English asked for an English one).
    assert 'href="http://localhost:8000/unsubscribe?lang=vi"' in html
    assert "Bạn đang xem bản tin hằng ngày của" in html
    # Forwarded to someone not on the list: they can sign up, in the page's language.
    link = r'<a href="http://localhost:8000/subscribe\?lang={}"[^>]*>{}</a>'
    assert re.search(link.format("vi", "Nhận bản tin này qua email mỗi ngày"), html)
    english = (path.parent / "2024-11-01.en.html").read_text(encoding="utf-8")
    assert re.search(link.format("en", "Get this digest by email every day"), english)
    assert "http://localhost:8000/articles/bai-a.html" in html
    assert digest_view_url(settings, DAY) == "http://localhost:8000/digests/2024-11-01.html"


# --------------------------------------------------------------------------- command

DUMP_A = """Thông xe cầu Sông Lam
01/11/2024 09:15
LGO - Sáng nay 1/11, tỉnh Lam Giang thông xe cầu Sông Lam.
Cầu dài 680 m, rộng 21 m với bốn làn xe cơ giới và hai làn cho người đi bộ.
Hoài Nam
"""
DUMP_B = """Hội thảo chuyển đổi số <script>alert(1)</script>
31/10/2024 16:00
LGO - Chiều 31/10, hội thảo chuyển đổi số ngành y tế diễn ra tại TP. Bến Lam.
Hơn 200 đại biểu tham dự hội thảo.
"""


@pytest.fixture
def runner(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.chdir(workdir)
    monkeypatch.delenv("SYNDICATE_CONFIG", raising=False)
    monkeypatch.setattr(AppContext, "now", lambda self: NOW.timestamp())
    return CliRunner()


def write_seeds(workdir: Path) -> None:
    (workdir / "seeds" / "a.txt").write_text(DUMP_A, encoding="utf-8")
    (workdir / "seeds" / "b.txt").write_text(DUMP_B, encoding="utf-8")


def test_digest_command_writes_the_preview_and_changes_no_digest_state(
    runner: CliRunner, workdir: Path
) -> None:
    write_seeds(workdir)
    result = runner.invoke(cli, ["digest", "--out", "preview"])
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "Digest of 2024-11-01: 2 articles.\n"
        "Subject: Tin mới: Thông xe cầu Sông Lam và 1 tin khác\n"
        "preview/digest.html\n"
        "preview/digest.txt\n"
    )
    html = (workdir / "preview" / "digest.html").read_text(encoding="utf-8")
    text = (workdir / "preview" / "digest.txt").read_text(encoding="utf-8")
    assert "Thông xe cầu Sông Lam" in html
    assert "Thông xe cầu Sông Lam" in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "http://localhost:8000/unsubscribe?token=PREVIEW-SAMPLE-TOKEN" in html
    assert "http://localhost:8000/unsubscribe?token=PREVIEW-SAMPLE-TOKEN" in text
    assert "http://localhost:8000/digests/2024-11-01.html" in text
    with open_store(workdir / "syndicate.db") as db:
        assert count_digests(db) == 0
        # No digest state: no digest, delivery or secret, no article marked as mailed.
        for table in ("digests", "deliveries", "meta"):
            assert db.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0  # noqa: S608
        marked = db.conn.execute("SELECT count(*) FROM articles WHERE digest_day IS NOT NULL")
        assert marked.fetchone()[0] == 0
        # What it parsed is kept, as `build` keeps it: the next run parses nothing again.
        for table in ("articles", "dumps"):
            assert db.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 2  # noqa: S608
    # A second preview gives the same bytes.
    again = runner.invoke(cli, ["digest", "--out", "preview"])
    assert again.exit_code == 0
    assert (workdir / "preview" / "digest.html").read_text(encoding="utf-8") == html


def test_digest_command_in_english_to_the_default_folder(runner: CliRunner, workdir: Path) -> None:
    write_seeds(workdir)
    assert runner.invoke(cli, ["build"]).exit_code == 0  # the pages "Read more" links to
    result = runner.invoke(cli, ["digest", "--lang", "en"])
    assert result.exit_code == 0, result.output
    assert "digest-preview/digest.html\n" in result.stdout
    html = (workdir / "digest-preview" / "digest.html").read_text(encoding="utf-8")
    assert 'lang="en"' in html
    assert "Read more" in html


def test_digest_command_with_nothing_new(runner: CliRunner, workdir: Path) -> None:
    result = runner.invoke(cli, ["digest", "--out", "preview"])
    assert result.exit_code == 0
    assert result.stdout == "Nothing new for a digest.\n"
    assert not (workdir / "preview").exists()


def test_digest_command_refuses_an_unknown_language(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["digest", "--lang", "fr"])
    assert result.exit_code == 2
    assert "Invalid value for '--lang': 'fr' is not one of 'vi', 'en'." in result.stderr


DUMP_SAME_TITLE = """Thông xe cầu Sông Lam
01/11/2024 11:00
LGO - Trưa 1/11, hàng nghìn người dân đã đi qua cầu Sông Lam mới thông xe.
Nhiều người dừng lại chụp ảnh kỷ niệm trên cầu.
"""


def test_digest_links_point_at_the_pages_build_wrote(runner: CliRunner, workdir: Path) -> None:
    write_seeds(workdir)
    (workdir / "seeds" / "c.txt").write_text(DUMP_SAME_TITLE, encoding="utf-8")
    built = runner.invoke(cli, ["build"])
    assert built.exit_code == 0, built.output
    result = runner.invoke(cli, ["digest", "--out", "preview"])
    assert result.exit_code == 0, result.output
    html = (workdir / "preview" / "digest.html").read_text(encoding="utf-8")
    prefix = 'href="http://localhost:8000/articles/'
    pages = {part.split('"', 1)[0] for part in html.split(prefix)[1:]}
    assert len(pages) == 3
    assert "thong-xe-cau-song-lam.html" in pages  # the other one has a suffix
    for page in pages:
        assert (workdir / "feeds" / "articles" / page).is_file(), page


def test_an_article_whose_dump_was_removed_is_not_mailed(runner: CliRunner, workdir: Path) -> None:
    write_seeds(workdir)
    assert runner.invoke(cli, ["build"]).exit_code == 0
    (workdir / "seeds" / "b.txt").unlink()
    assert runner.invoke(cli, ["build"]).exit_code == 0
    result = runner.invoke(cli, ["digest", "--out", "preview"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Digest of 2024-11-01: 1 article.\n")
    html = (workdir / "preview" / "digest.html").read_text(encoding="utf-8")
    assert "Thông xe cầu Sông Lam" in html
    assert "chuyển đổi số" not in html


STALE_LINE = (
    "Warning: digest of 2024-11-12: its newest article is from 2024-11-01, 11 days before "
    "the digest's day. Check that the scraper still delivers new dumps.\n"
)


def test_digest_warns_on_stderr_even_under_quiet_when_the_news_is_old(
    runner: CliRunner, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_seeds(workdir)
    # The newest dump is of 1/11; eleven days later the scraper has probably stopped.
    later = NOW + timedelta(days=11)
    monkeypatch.setattr(AppContext, "now", lambda self: later.timestamp())
    result = runner.invoke(cli, ["-q", "digest", "--out", "preview"])
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", STALE_LINE)
    # On the day itself: no warning.
    monkeypatch.setattr(AppContext, "now", lambda self: NOW.timestamp())
    result = runner.invoke(cli, ["-q", "digest", "--out", "preview"])
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "")


def test_todays_digest_links_a_teaser_to_a_stored_article_outside_the_digest(
    settings: Settings, db: Database
) -> None:
    teaser = "Chiều nay 30/10, Sở Y tế kiểm tra an toàn thực phẩm tại các chợ trong tỉnh"
    old = dataclasses.replace(
        article("old", NOW - timedelta(days=5)),
        title="Kiểm tra an toàn thực phẩm",
        body=(Block(BlockKind.PARAGRAPH, teaser + " trước Tết."),),
    )
    store(db, old)
    # The old article is past digest.max_age_hours: stored, with a page, but not mailed.
    new = dataclasses.replace(
        article("new", NOW - timedelta(hours=1)), teasers=(Teaser("QTO", teaser + "..."),)
    )
    store(db, new)
    # Until a build gives the old article a page, the teaser is not linked.
    plan = todays_digest(settings, db, now=NOW, create=False)
    assert plan is not None
    assert plan.links == {}
    publish(db, {"old": "articles/bai-old.html", "new": "articles/bai-new.html"})
    plan = todays_digest(settings, db, now=NOW, create=False)
    assert plan is not None
    assert [a.id for a in plan.articles] == ["new"]
    [link] = plan.links.values()
    assert (link.id, link.path, link.title) == (
        "old",
        "articles/bai-old.html",
        "Kiểm tra an toàn thực phẩm",
    )
    rendered = render_digest(
        plan, lang="vi", info=DigestInfo.from_settings(settings), unsubscribe_url="u", now=NOW
    )
    assert '<a href="http://localhost:8000/articles/bai-old.html"' in rendered.html

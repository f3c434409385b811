"""Store: how articles are kept (JSON record plus body text), on a real SQLite file."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import unicodedata
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from syndicate.errors import StoreError
from syndicate.model import Article, Block, BlockKind, Precision, Teaser
from syndicate.store import Database
from syndicate.store.articles import (
    SYNC_CACHE_KIB,
    backfill_teasers,
    carry_over,
    decode_article,
    encode_record,
    get_article,
    iter_articles_newest_first,
    iter_summaries,
    read_page_paths,
    sync_cache,
    upsert_article,
    write_page_paths,
)
from syndicate.store.pg_schema import PG_MIGRATIONS
from syndicate.store.schema import MIGRATIONS
from tests.plugins.postgres import open_store

pytestmark = pytest.mark.usefixtures("store")

NOW = datetime(2024, 11, 1, 6, 0, tzinfo=UTC)


def _article(ident: str, *blocks: Block) -> Article:
    return Article(
        id=ident,
        slug=f"bai-{ident}",
        title=f"Bài {ident} <b>&</b>",
        title_derived=False,
        published=datetime(2024, 10, 31, 2, 15, tzinfo=UTC),
        precision=Precision.DATETIME,
        body=blocks,
        author="Trúc Phương",
        teasers=(Teaser("QTO", "Tin khác..."),),
        source="seeds/a.txt",
        dateline="QTO",
        head="Sapo: tin chính <i>ở</i> Đông Hà.",
    )


LOADER_LIKE = _article(
    "a1",
    Block(BlockKind.PARAGRAPH, 'Sáng nay, tại Đông Hà "trích dẫn" và \\ gạch.'),
    Block(BlockKind.CAPTION, "Quang cảnh - Ảnh: T.P"),
    Block(BlockKind.PARAGRAPH, ""),
    Block(BlockKind.PARAGRAPH, "Đoạn cuối {{ 7*7 }} </p>."),
)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = open_store(tmp_path / "x.db")
    yield database
    database.close()


@pytest.mark.parametrize(
    "article",
    [
        LOADER_LIKE,
        _article("empty"),  # no blocks at all
        _article("one-empty", Block(BlockKind.PARAGRAPH, "")),
        _article("broken", Block(BlockKind.PARAGRAPH, "hai\ndòng"), Block(BlockKind.CAPTION, "x")),
    ],
    ids=["loader-like", "no-blocks", "one-empty-block", "line-break-in-a-block"],
)
def test_articles_round_trip_through_the_store(db: Database, article: Article) -> None:
    record, body, _hash = encode_record(article)
    assert decode_article(record, None if body is None else body.decode()) == article
    with db.transaction():
        upsert_article(db, article, now=NOW)
    assert get_article(db, article.id) == article
    assert list(iter_articles_newest_first(db)) == [article]


@pytest.mark.sqlite_only
def test_the_body_is_plain_text_in_its_own_column(db: Database) -> None:
    with db.transaction():
        upsert_article(db, LOADER_LIKE, now=NOW)
    record, body, kinds = db.conn.execute(
        "SELECT record, body, typeof(body) FROM articles"
    ).fetchone()
    assert kinds == "text"
    assert body == "\n".join(b.text for b in LOADER_LIKE.body)
    assert json.loads(record)["body"] == "pcpp"
    # A block holding a line break keeps the blocks in the record instead.
    broken = _article("b", Block(BlockKind.PARAGRAPH, "hai\ndòng"))
    record_bytes, no_body, _hash = encode_record(broken)
    assert no_body is None
    assert json.loads(record_bytes)["body"] == [["paragraph", "hai\ndòng"]]


def test_the_hash_covers_the_body_text(db: Database) -> None:
    changed = _article("a1", Block(BlockKind.PARAGRAPH, "Một chữ khác."))
    assert encode_record(changed)[2] != encode_record(LOADER_LIKE)[2]
    caption = _article("a1", Block(BlockKind.CAPTION, "Một chữ khác."))
    assert encode_record(caption)[2] != encode_record(changed)[2]


@pytest.mark.sqlite_only
def test_a_database_from_before_the_body_column_is_migrated_and_read(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    for statement in MIGRATIONS[0]:
        conn.execute(statement)
    old_record = LOADER_LIKE.to_record()  # blocks inline, as migration 1 stored them
    conn.execute(
        "INSERT INTO articles (id, record, first_seen_at) VALUES (?, ?, ?)",
        (LOADER_LIKE.id, json.dumps(old_record, ensure_ascii=False), NOW.isoformat()),
    )
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    with open_store(path) as database:
        assert database.schema_version == len(MIGRATIONS)
        assert get_article(database, LOADER_LIKE.id) == LOADER_LIKE
        # An existing database keeps its page size; only new ones get 8 KiB pages.
        assert database.conn.execute("PRAGMA page_size").fetchone()[0] == 4096


@pytest.mark.sqlite_only
def test_a_new_database_has_8_kib_pages(tmp_path: Path) -> None:
    # A stored article (about 10 KiB) then takes two pages rather than three.
    with open_store(tmp_path / "new.db") as database:
        assert database.conn.execute("PRAGMA page_size").fetchone()[0] == 8192
        assert database.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_record_whose_body_is_missing_is_reported_as_damaged(db: Database) -> None:
    with db.transaction():
        upsert_article(db, LOADER_LIKE, now=NOW)
        db.conn.execute("UPDATE articles SET body = NULL")
    with pytest.raises(StoreError, match=r"article 'a1': the stored record is damaged"):
        get_article(db, "a1")


def test_a_parsed_body_gives_the_same_stored_form_as_encoding_it_again() -> None:
    from zoneinfo import ZoneInfo

    from syndicate.load import parse_dump_with_body

    dump = (
        "Hội thảo khoa học\n31/10/2024 09:15\nQTO - Sáng nay, hội thảo diễn ra.\n"
        "Đoạn hai.\nQuang cảnh - Ảnh: T.P\nTrúc Phương\n"
    ).encode()
    article, body = parse_dump_with_body(dump, source="a.txt", tz=ZoneInfo("Asia/Ho_Chi_Minh"))
    assert body == "\n".join(b.text for b in article.body).encode()
    assert encode_record(article, body) == encode_record(article)


def test_page_stamps_pack_size_and_time_losslessly() -> None:
    from syndicate.store.articles import page_stamp, stamp_parts

    for size, mtime_ns in [(0, 0), (15_321, 1_764_000_000_123_456_789), (2**40, 2**63 - 1)]:
        assert stamp_parts(page_stamp(size, mtime_ns)) == (size, mtime_ns)
    assert page_stamp(1, 2) != page_stamp(2, 1)


LONG_LEAD = "Sáng nay 30/10, tại TP. Đông Hà, Trường Chính trị Lê Duẩn có buổi làm việc với"


def _story(ident: str, lead: str, *teasers: str) -> Article:
    base = _article(ident, Block(BlockKind.PARAGRAPH, lead))
    return dataclasses.replace(base, teasers=tuple(Teaser("QTO", t) for t in teasers))


def _targets(db: Database) -> list[tuple[str, int, str | None]]:
    return db.conn.execute(
        "SELECT article_id, position, target_id FROM teasers ORDER BY article_id, position"
    ).fetchall()


def test_teasers_are_linked_in_either_order_and_to_the_smallest_matching_id(
    db: Database,
) -> None:
    teaser = LONG_LEAD[:60] + "..."
    with db.transaction():
        upsert_article(db, _story("a", "Bài A.", teaser, "Quá ngắn..."), now=NOW)
    assert _targets(db) == [("a", 0, None)]  # "Quá ngắn" is too short to match anything
    with db.transaction():
        upsert_article(db, _story("m", LONG_LEAD + " lãnh đạo tỉnh."), now=NOW)
    assert _targets(db) == [("a", 0, "m")]
    # A second match with a smaller id takes the link, as if it had come first.
    with db.transaction():
        upsert_article(db, _story("c", unicodedata.normalize("NFD", LONG_LEAD.upper())), now=NOW)
    assert _targets(db) == [("a", 0, "c")]
    # A teaser stored after its article is linked at once.
    with db.transaction():
        upsert_article(db, _story("z", "Bài Z.", teaser), now=NOW)
    assert _targets(db) == [("a", 0, "c"), ("z", 0, "c")]
    # C's lead changes: its teasers go to the next match.
    with db.transaction():
        upsert_article(db, _story("c", "Một bài khác hẳn."), now=NOW)
    assert _targets(db) == [("a", 0, "m"), ("z", 0, "m")]


@pytest.mark.sqlite_only
@pytest.mark.parametrize("version", [3, 4])
def test_a_database_from_before_the_teasers_table_is_indexed_once(
    tmp_path: Path, version: int
) -> None:
    """Migration 5 added the teasers table: a database at step 3 or 4 with articles."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    for step in MIGRATIONS[:version]:
        for statement in step:
            conn.execute(statement)
    for article in (_story("a", "Bài A.", LONG_LEAD[:50] + "…"), _story("b", LONG_LEAD)):
        record, body, record_hash = encode_record(article)
        conn.execute(
            "INSERT INTO articles (id, record, body, first_seen_at, record_hash)"
            " VALUES (?, ?, ?, ?, ?)",
            (
                article.id,
                record.decode(),
                body.decode() if body else None,
                NOW.isoformat(),
                record_hash,
            ),
        )
    conn.execute(f"PRAGMA user_version = {version}")
    conn.commit()
    conn.close()
    with open_store(path) as database:
        assert database.schema_version == len(MIGRATIONS)
        assert _targets(database) == []
        assert backfill_teasers(database) == 2
        assert _targets(database) == [("a", 0, "b")]
        assert backfill_teasers(database) == 0  # once only


def test_a_record_stored_before_heads_existed_reads_back_without_one() -> None:
    record = LOADER_LIKE.to_record()
    assert record["head"] == "Sapo: tin chính <i>ở</i> Đông Hà."
    assert Article.from_record(record) == LOADER_LIKE
    del record["head"]
    record["summary"] = "the old field"
    old = Article.from_record(record)
    assert old.head is None
    assert old.summary == old.lead


@pytest.mark.sqlite_only
def test_page_paths_recorded_in_the_articles_row_move_to_their_own_table(tmp_path: Path) -> None:
    # Migration 9: page paths left the wide articles row (updating it rewrote the body).
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    for step in MIGRATIONS[:8]:
        for statement in step:
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 8")
    conn.executemany(
        "INSERT INTO articles (id, record, first_seen_at, page_path) VALUES (?, '{}', ?, ?)",
        [("a", "2024-11-01T00:00:00Z", "articles/a.html"), ("b", "2024-11-01T00:00:00Z", None)],
    )
    conn.commit()
    conn.close()
    with open_store(path) as database:
        assert database.schema_version == len(MIGRATIONS)
        assert read_page_paths(database) == {"a": "articles/a.html"}
        with database.transaction():
            write_page_paths(database, {"b": "articles/b.html"})
        assert read_page_paths(database) == {"b": "articles/b.html"}
        left = database.conn.execute("SELECT count(*) FROM articles WHERE page_path IS NOT NULL")
        assert left.fetchone()[0] == 0


@pytest.mark.sqlite_only
def test_the_sync_cache_is_larger_while_a_build_stores_and_restored_after(db: Database) -> None:
    (before,) = db.conn.execute("PRAGMA cache_size").fetchone()
    assert before > -SYNC_CACHE_KIB  # smaller: SQLite's default
    with sync_cache(db):
        assert db.conn.execute("PRAGMA cache_size").fetchone()[0] == -SYNC_CACHE_KIB
        with db.transaction():
            upsert_article(db, LOADER_LIKE, now=NOW)
    assert db.conn.execute("PRAGMA cache_size").fetchone()[0] == before
    assert get_article(db, LOADER_LIKE.id) == LOADER_LIKE


def test_summaries_carry_the_language_the_record_holds_and_step_12_fills_it_in(
    db: Database,
) -> None:
    """The index is built from summaries: each says its article's language. Records stored
    before step 12 get theirs from the record; a damaged one gets none (the site's)."""
    english = dataclasses.replace(
        _article("en1", Block(BlockKind.PARAGRAPH, "The bridge opened this morning.")),
        language="en",
    )
    with db.transaction():
        upsert_article(db, LOADER_LIKE, now=NOW)
        upsert_article(db, english, now=NOW)
    assert {s.id: s.language for s in iter_summaries(db)} == {"a1": "vi", "en1": "en"}

    # As step 12 found them: no language column filled; a record another writer damaged, and
    # one in a language syndicate does not know.
    with db.transaction():
        db.conn.execute("UPDATE articles SET language = NULL")
        for ident, record in (
            ("bad", '{"title": "x", "language'),
            ("fr", '{"language": "fr"}'),
            # Written by another writer with compact or loose separators; a title that
            # holds the key's text (escaped) is no language.
            ("compact", '{"language":"en","title":"x"}'),
            ("loose", '{"title": "x", "language" :\t"en"}'),
            ("quoted", '{"title": "\\"language\\": \\"en\\""}'),
        ):
            db.conn.execute(
                "INSERT INTO articles (id, record, first_seen_at, record_hash)"
                " VALUES (?, ?, ?, '')",
                (ident, record, NOW.isoformat()),
            )
    step = PG_MIGRATIONS[12] if db.dialect == "postgresql" else MIGRATIONS[11]
    with db.transaction():
        for statement in step[1:]:  # the column exists: the backfill only
            db.conn.execute(statement)
    found = {s.id: s.language for s in iter_summaries(db)}
    assert found == {
        "a1": "vi",
        "en1": "en",
        "bad": None,
        "fr": None,
        "compact": "en",
        "loose": "en",
        "quoted": None,
    }


def _summaries(db: Database) -> dict[str, tuple[str, datetime | None]]:
    return {s.id: (s.story_id, s.revised_at) for s in iter_summaries(db)}


def test_a_story_keeps_its_first_id_through_every_correction_and_another_story_does_not(
    db: Database,
) -> None:
    """carry_over: each new text of a story goes by the id the story was first stored under
    (its feed id), and says when it replaced the old; another story at the same dump path
    (another title and publish time) is its own."""
    later = datetime(2024, 11, 2, 6, 0, tzinfo=UTC)
    first = LOADER_LIKE
    fixed = dataclasses.replace(first, id="a2", body=first.body[:1])
    again = dataclasses.replace(first, id="a3", title="Bài a1 đã sửa", body=first.body[:2])
    other = dataclasses.replace(
        first, id="b1", title="Tin khác", published=datetime(2024, 11, 2, tzinfo=UTC)
    )
    with db.transaction():
        upsert_article(db, first, now=NOW)
        write_page_paths(db, {"a1": "articles/bai-a1.html"})
    with db.transaction():
        upsert_article(db, fixed, now=later)
        carry_over(db, [("a1", "a2", True)], now=later)
    with db.transaction():
        upsert_article(db, again, now=later)  # another title, the same publish time
        upsert_article(db, other, now=later)
        carry_over(db, [("a2", "a3", True), ("a1", "b1", True)], now=later)
    assert _summaries(db) == {
        "a1": ("a1", None),
        "a2": ("a1", later),
        "a3": ("a1", later),
        "b1": ("b1", None),
    }
    # The page goes with the story: its URL stays.
    assert read_page_paths(db) == {
        "a1": "articles/bai-a1.html",
        "a2": "articles/bai-a1.html",
        "a3": "articles/bai-a1.html",
    }
    # A dump back at its first text: that article is the story's first again.
    with db.transaction():
        carry_over(db, [("a3", "a1", True)], now=later)
    assert _summaries(db)["a1"] == ("a1", later)
    # The same bytes read by a new parser: no revision, the story's last one kept.
    with db.transaction():
        upsert_article(db, dataclasses.replace(first, id="a4", body=()), now=NOW)
        upsert_article(db, dataclasses.replace(other, id="b2", body=()), now=NOW)
        carry_over(db, [("a1", "a4", False), ("b1", "b2", False)], now=NOW)
    assert _summaries(db)["a4"] == ("a1", later)
    assert _summaries(db)["b2"] == ("b1", None)


@pytest.mark.sqlite_only
def test_articles_stored_before_step_18_keep_their_own_ids_as_feed_ids(tmp_path: Path) -> None:
    # No reader may see an item twice after the upgrade: an article stored before is its
    # story's first text, its feed id the one it had.
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    for step in MIGRATIONS[:16]:
        for statement in step:
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 16")
    conn.execute(
        "INSERT INTO articles (id, record, first_seen_at) VALUES ('a', '{}', ?)",
        (NOW.isoformat(),),
    )
    conn.commit()
    conn.close()
    with open_store(path) as database:
        assert database.schema_version == len(MIGRATIONS)
        assert _summaries(database) == {"a": ("a", None)}

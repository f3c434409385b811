"""Store: the digests table and digest marks, on a real SQLite file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from syndicate.errors import StoreError
from syndicate.model import Article, Block, BlockKind, DigestPlan, Precision
from syndicate.store import Database
from syndicate.store.articles import upsert_article
from syndicate.store.digests import (
    create_digest,
    get_digest,
    iter_candidates,
    newest_published,
)
from tests.plugins.postgres import open_store

pytestmark = pytest.mark.usefixtures("store")

T0 = datetime(2024, 11, 1, 6, 0, tzinfo=UTC)
DAY = date(2024, 11, 1)


def article(ident: str, published: datetime | None) -> Article:
    return Article(
        id=ident,
        slug=f"bai-{ident}",
        title=f"Bài {ident}",
        title_derived=False,
        published=published,
        precision=Precision.DATETIME if published else Precision.UNKNOWN,
        body=(Block(BlockKind.PARAGRAPH, f"Nội dung bài {ident}."),),
    )


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = open_store(tmp_path / "x.db")
    yield database
    database.close()


def store(db: Database, *articles: Article, now: datetime = T0) -> None:
    with db.transaction():
        for item in articles:
            upsert_article(db, item, now=now)


def test_iter_candidates_streams_undigested_articles_in_id_order(db: Database) -> None:
    items = [article(f"id{i}", T0 - timedelta(hours=i)) for i in (3, 0, 4, 1, 2)]
    store(db, *items)
    found = list(iter_candidates(db, batch=2))
    assert [a.id for a, _ in found] == ["id0", "id1", "id2", "id3", "id4"]
    assert all(seen == T0 for _, seen in found)
    assert found[3][0] == items[0]  # the record round-trips to an equal Article


def test_iter_candidates_leaves_out_digested_articles(db: Database) -> None:
    store(db, article("a", T0), article("b", T0), article("c", None))
    create_digest(db, DigestPlan(day=DAY, articles=(article("b", T0),)), now=T0)
    assert [a.id for a, _ in iter_candidates(db, batch=1)] == ["a", "c"]


def test_newest_published_is_the_newest_dated_article_or_none(db: Database) -> None:
    assert newest_published(db) is None
    store(db, article("undated", None))
    assert newest_published(db) is None
    newest = datetime(2024, 10, 31, 23, 30, tzinfo=UTC)
    store(db, article("a", newest - timedelta(days=2)), article("b", newest))
    assert newest_published(db) == newest


def test_create_and_get_digest_round_trip(db: Database) -> None:
    items = (article("z", T0), article("a", T0 - timedelta(hours=1)), article("m", None))
    store(db, *items)
    plan = DigestPlan(day=DAY, articles=items, more=7)
    create_digest(db, plan, now=T0)
    assert get_digest(db, DAY) == plan
    assert get_digest(db, DAY + timedelta(days=1)) is None
    row = db.conn.execute("SELECT created_at, article_ids, more FROM digests").fetchone()
    assert row == ("2024-11-01T06:00:00+00:00", json.dumps(["z", "a", "m"]), 7)
    marks = db.conn.execute("SELECT id, digest_day FROM articles ORDER BY id").fetchall()
    assert marks == [("a", "2024-11-01"), ("m", "2024-11-01"), ("z", "2024-11-01")]


def test_a_second_digest_for_the_same_day_changes_nothing(db: Database) -> None:
    first, second = article("first", T0), article("second", T0)
    store(db, first, second)
    create_digest(db, DigestPlan(day=DAY, articles=(first,)), now=T0)
    create_digest(db, DigestPlan(day=DAY, articles=(second,), more=3), now=T0)
    assert get_digest(db, DAY) == DigestPlan(day=DAY, articles=(first,))
    assert [a.id for a, _ in iter_candidates(db)] == ["second"]


def test_an_article_keeps_the_day_of_its_first_digest(db: Database) -> None:
    item = article("a", T0)
    store(db, item)
    create_digest(db, DigestPlan(day=DAY, articles=(item,)), now=T0)
    later = DAY + timedelta(days=1)
    create_digest(db, DigestPlan(day=later, articles=(item,)), now=T0 + timedelta(days=1))
    day = db.conn.execute("SELECT digest_day FROM articles").fetchone()[0]
    assert day == "2024-11-01"


def test_create_digest_is_all_or_nothing(db: Database) -> None:
    item = article("a", T0)
    store(db, item)
    if db.dialect == "sqlite":
        db.conn.execute(
            "CREATE TRIGGER refuse BEFORE UPDATE OF digest_day ON articles "
            "BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
    else:
        db.conn.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql "
            "AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$"
        )
        db.conn.execute(
            "CREATE TRIGGER refuse BEFORE UPDATE OF digest_day ON articles "
            "FOR EACH ROW EXECUTE FUNCTION refuse()"
        )
    with pytest.raises(StoreError, match=r"cannot store the digest of 2024-11-01: refused\.$"):
        create_digest(db, DigestPlan(day=DAY, articles=(item,)), now=T0)
    assert db.conn.execute("SELECT count(*) FROM digests").fetchone()[0] == 0


def test_a_damaged_record_is_left_out_of_the_digest_with_one_warning(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    store(db, article("a", T0))
    store(db, article("b", T0))
    db.conn.execute("UPDATE articles SET record = '{\"id\": 1}' WHERE id = 'a'")
    assert [found.id for found, _seen in iter_candidates(db)] == ["b"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert warnings[0].endswith(
        f"{db.path}: article 'a': the stored article record is damaged: KeyError('body'). "
        "Run `syndicate build` to store the articles again."
    )
    create_digest(db, DigestPlan(day=DAY, articles=(article("a", T0), article("b", T0))), now=T0)
    plan = get_digest(db, DAY)
    assert plan is not None
    assert [found.id for found in plan.articles] == ["b"]


def test_a_digest_keeps_its_message_key_and_one_stored_without_has_none(db: Database) -> None:
    # Store step 14: the key its Message-IDs hold. A digest stored before (NULL) keeps the
    # IDs it was sent with, <DAY.ID@domain>, when a later run sends it on.
    later = DAY + timedelta(days=1)
    store(db, article("a", T0), article("b", T0))
    create_digest(db, DigestPlan(day=DAY, articles=(article("a", T0),)), now=T0)
    create_digest(
        db, DigestPlan(day=later, articles=(article("b", T0),)), now=T0, message_key="0a1b2c"
    )
    assert get_digest(db, DAY).message_key is None  # type: ignore[union-attr]
    assert get_digest(db, later).message_key == "0a1b2c"  # type: ignore[union-attr]

"""Store: the build cache (`dumps`), the `articles` table and the `pages` fingerprints.

Every statement for these tables lives here as a named constant. Functions take a
`Database` and return model objects or small tuples; callers open transactions.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

from syndicate.errors import StoreError
from syndicate.model import Article, BlockKind, Precision, make_article_id
from syndicate.store import DB_ERRORS, Database, store_error, teasers

# The same as json.dumps(..., ensure_ascii=False, sort_keys=True), built once.
_RECORD_ENCODER = json.JSONEncoder(ensure_ascii=False, sort_keys=True)

# Rows read per query when iterating: bounded memory however large the table grows.
_BATCH = 500

# Every cached dump with its stat signature and outcome (loaded once per build).
SELECT_DUMPS = """
    SELECT path, device, inode, size, mtime_ns, content_hash, parser_version, article_id, error
    FROM dumps
"""
# Record what a dump parsed to (or why it was rejected), keyed on its absolute path.
UPSERT_DUMP = """
    INSERT INTO dumps
        (path, device, inode, size, mtime_ns, content_hash, parser_version, article_id, error)
    VALUES (:path, :device, :inode, :size, :mtime_ns, :content_hash, :parser_version,
            :article_id, :error)
    ON CONFLICT (path) DO UPDATE SET
        device = excluded.device, inode = excluded.inode, size = excluded.size,
        mtime_ns = excluded.mtime_ns, content_hash = excluded.content_hash,
        parser_version = excluded.parser_version, article_id = excluded.article_id,
        error = excluded.error
"""
# Forget a dump whose file is gone.
DELETE_DUMP = "DELETE FROM dumps WHERE path = ?"

# Insert an article, or refresh its record; first_seen_at and digest_day are kept.
UPSERT_ARTICLE = """
    INSERT INTO articles
        (id, record, body, published_at, first_seen_at, slug, title, precision, author, source,
         record_hash, language, credit)
    VALUES (:id, CAST(:record AS TEXT), CAST(:body AS TEXT), :published_at, :first_seen_at,
            :slug, :title, :precision, :author, :source, :record_hash, :language, :credit)
    ON CONFLICT (id) DO UPDATE SET
        record = excluded.record, body = excluded.body, published_at = excluded.published_at,
        slug = excluded.slug, title = excluded.title, precision = excluded.precision,
        author = excluded.author, source = excluded.source,
        record_hash = excluded.record_hash, language = excluded.language,
        credit = excluded.credit
    WHERE articles.record_hash != excluded.record_hash OR articles.source != excluded.source
"""
# PostgreSQL's spelling: the record and body come as UTF-8 bytes (see `encode_record`).
_UPSERT_ARTICLE_PG = UPSERT_ARTICLE.replace(
    "CAST(:record AS TEXT), CAST(:body AS TEXT)",
    "convert_from(:record, 'UTF8'), convert_from(:body, 'UTF8')",
)
# Does an article exist already (to count new ones)?
SELECT_ARTICLE_EXISTS = "SELECT 1 FROM articles WHERE id = ?"
# Which dump each article's stored record came from, and the slug it was published under.
SELECT_ARTICLE_SOURCES = "SELECT id, source FROM articles"
SELECT_ARTICLE_SLUGS = "SELECT id, slug FROM articles"
# One full article.
SELECT_ARTICLE = "SELECT record, body FROM articles WHERE id = ?"
# The light columns of every article, for index pages and feed selection.
SELECT_SUMMARIES = """
    SELECT a.id, a.slug, a.title, a.published_at, a.precision, a.author, a.record_hash,
        a.first_seen_at, p.path, a.language, a.first_id, a.revised_at, a.credit
    FROM articles AS a LEFT JOIN article_pages AS p ON p.article_id = a.id
"""
# The articles that have a page, and where (only the build writes article_pages).
SELECT_PAGE_PATHS = "SELECT article_id, path FROM article_pages"
SELECT_PAGE_IDS = "SELECT article_id FROM article_pages"
# Record where an article's page is.
UPSERT_PAGE_PATH = """
    INSERT INTO article_pages (article_id, path) VALUES (?, ?)
    ON CONFLICT (article_id) DO UPDATE SET path = excluded.path
"""
# Record that an article has no page.
DELETE_PAGE_PATH = "DELETE FROM article_pages WHERE article_id = ?"
# Full articles newest first (undated last, then by id), one keyset batch at a time.
# published_at is always UTC ISO text, so text order is time order; NULL sorts as ''.
SELECT_ARTICLES_NEWEST_FIRST = """
    SELECT record, body, coalesce(published_at, '') AS k, id FROM articles
    WHERE coalesce(published_at, '') < :k OR (coalesce(published_at, '') = :k AND id > :id)
    ORDER BY k DESC, id
    LIMIT :limit
"""
SELECT_ARTICLES_NEWEST_FIRST_START = """
    SELECT record, body, coalesce(published_at, '') AS k, id FROM articles
    ORDER BY k DESC, id
    LIMIT :limit
"""

# Articles stored before the teasers table existed are indexed once (migration 5 sets it).
BACKFILL_KEY = "teasers_backfill"
SELECT_BACKFILL = "SELECT 1 FROM meta WHERE key = ?"
DELETE_BACKFILL = "DELETE FROM meta WHERE key = ?"
# Stored articles in id order, a batch after :id.
SELECT_RECORDS_AFTER = "SELECT id, record, body FROM articles WHERE id > ? ORDER BY id LIMIT ?"

# Page fingerprints (and how each file was left) from the last build.
SELECT_PAGES = "SELECT path, fingerprint, size, mtime_ns FROM pages"
UPSERT_PAGE = """
    INSERT INTO pages (path, fingerprint, size, mtime_ns) VALUES (?, ?, ?, ?)
    ON CONFLICT (path) DO UPDATE SET
        fingerprint = excluded.fingerprint, size = excluded.size, mtime_ns = excluded.mtime_ns
"""
DELETE_PAGE = "DELETE FROM pages WHERE path = ?"


@dataclass(frozen=True, slots=True)
class CachedDump:
    """What the cache knows about one dump file."""

    device: int
    inode: int
    size: int
    mtime_ns: int
    content_hash: str
    parser_version: int
    article_id: str | None
    error: str | None  # JSON {"reason", "line", "hint"} when the dump was rejected


@dataclass(frozen=True, slots=True)
class ArticleSummary:
    """The light part of an article: enough for index pages and feed selection."""

    id: str
    slug: str
    title: str
    published: datetime | None
    precision: Precision
    author: str | None
    record_hash: str
    first_seen_at: datetime
    page_path: str | None = None  # where the last build wrote its page; None: it has none
    language: str | None = None  # the record's (the parser's); None: not stored, the site's
    # The id its story was first stored under (None: this one), whose feed id it keeps, and
    # when this text replaced an earlier one of the story (None: never): carry_over.
    first_id: str | None = None
    revised_at: datetime | None = None
    credit: str | None = None  # the source it is credited to (Article.credit)

    @property
    def story_id(self) -> str:
        """The id the article's story goes by in the feeds (feeds.item_id): its first."""
        return self.first_id or self.id


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _utc_text(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def _wrap(what: str, db: Database, exc: Exception) -> StoreError:
    return store_error(db.path, f"cannot {what}", exc)


def read_dump_cache(db: Database) -> dict[str, CachedDump]:
    """Load the whole dump cache, keyed on absolute path (a few small fields per dump)."""
    try:
        rows = db.conn.execute(SELECT_DUMPS)
        return {
            row[0]: CachedDump(
                int(row[1]),
                int(row[2]),
                int(row[3]),
                int(row[4]),
                str(row[5]),
                int(row[6]),
                row[7],
                row[8],
            )
            for row in rows
        }
    except DB_ERRORS as exc:
        raise _wrap("read the dump cache", db, exc) from exc


def write_dumps(db: Database, entries: Iterable[tuple[str, CachedDump]]) -> None:
    """Record the outcome for each (path, entry) dump."""
    try:
        db.conn.executemany(
            UPSERT_DUMP,
            (
                {
                    "path": path,
                    "device": entry.device,
                    "inode": entry.inode,
                    "size": entry.size,
                    "mtime_ns": entry.mtime_ns,
                    "content_hash": entry.content_hash,
                    "parser_version": entry.parser_version,
                    "article_id": entry.article_id,
                    "error": entry.error,
                }
                for path, entry in entries
            ),
        )
    except DB_ERRORS as exc:
        raise _wrap("update the dump cache", db, exc) from exc


def delete_dumps(db: Database, paths: Iterable[str]) -> None:
    """Forget the given dumps."""
    try:
        db.conn.executemany(DELETE_DUMP, ((p,) for p in paths))
    except DB_ERRORS as exc:
        raise _wrap("update the dump cache", db, exc) from exc


# Block kinds as one letter each in a stored record whose texts are in the `body` column.
_KIND_LETTERS = {BlockKind.PARAGRAPH: "p", BlockKind.CAPTION: "c"}
_LETTER_KINDS = {letter: str(kind) for kind, letter in _KIND_LETTERS.items()}


def encode_record(
    article: Article, parsed_body: bytes | None = None
) -> tuple[bytes, bytes | None, str]:
    """The stored form of `article`: its JSON record and body text, as UTF-8, and their hash.

    The body's texts go in a column of their own, one per line, when none holds a line
    break (the loader's never do); else they stay in the record (body None). The hash
    covers the record and the body's digest (`make_article_id`, byline included).
    `parsed_body` is the body the loader returned with the article (`parse_dump_with_body`):
    its digest is the article's id, so it is neither encoded nor hashed again.
    """
    body = body_digest = None
    if parsed_body is not None:
        body, body_digest = parsed_body, article.id
    else:
        texts = [block.text for block in article.body]
        if not any("\n" in text for text in texts):
            body = "\n".join(texts).encode("utf-8")
            body_digest = make_article_id(body, article.author)
    record = article.to_record(
        body=None if body is None else "".join([_KIND_LETTERS[b.kind] for b in article.body])
    )
    data = _RECORD_ENCODER.encode(record).encode("utf-8")
    digest = hashlib.blake2b(data, digest_size=16)
    if body_digest is not None:
        digest.update(b"\0" + body_digest.encode())
    return data, body, digest.hexdigest()


def decode_article(record: str | bytes, body: str | None) -> Article:
    """The article stored as `record` (JSON) and `body`, as `encode_record` made them.

    Raises ValueError, KeyError or TypeError when they are damaged.
    """
    data = json.loads(record)
    kinds = data["body"]
    if isinstance(kinds, str):
        if body is None:
            raise ValueError("the record's body text is missing")
        texts = body.split("\n") if kinds else []
        data["body"] = [
            [_LETTER_KINDS[kind], text] for kind, text in zip(kinds, texts, strict=True)
        ]
    return Article.from_record(data)


class ArticleRow(NamedTuple):
    """An article as the `articles` table stores it (all but first_seen_at): small to
    pass between processes, and enough for `upsert_row`. The record is UTF-8 bytes: they
    cross a process boundary and reach SQLite (stored as TEXT) without being encoded again.
    A named tuple: it pickles several times faster than a dataclass (10,000 per build)."""

    id: str
    record: bytes
    body: bytes | None
    record_hash: str
    published_at: str | None  # UTC ISO text
    slug: str
    title: str
    precision: str
    author: str | None
    source: str
    language: str
    credit: str | None = None
    # text.story_key of its head and lead, and of each of its teasers (for store.teasers).
    story_keys: tuple[str, ...] = ()
    teaser_keys: tuple[str, ...] = ()


def article_row(article: Article, parsed_body: bytes | None = None) -> ArticleRow:
    """The stored form of `article` (`parsed_body`: see `encode_record`)."""
    record, body, record_hash = encode_record(article, parsed_body)
    return ArticleRow(
        id=article.id,
        record=record,
        body=body,
        record_hash=record_hash,
        published_at=_utc_text(article.published) if article.published else None,
        slug=article.slug,
        title=article.title,
        precision=str(article.precision),
        author=article.author,
        source=article.source,
        language=article.language,
        credit=article.credit,
        story_keys=teasers.story_keys(article),
        teaser_keys=teasers.teaser_keys(article),
    )


def upsert_article(
    db: Database, article: Article, *, now: datetime, existed: bool | None = None
) -> bool:
    """Store `article`; a new id gets first_seen_at = `now`. Returns True when it was new.

    `existed` may say whether the store already holds this id (a caller that loaded
    every id saves one query per article); None looks it up.
    """
    return upsert_row(db, article_row(article), now=now, existed=existed)


def upsert_row(
    db: Database, row: ArticleRow, *, now: datetime, existed: bool | None = None
) -> bool:
    """`upsert_article` for an article already in its stored form."""
    try:
        if existed is None:
            existed = db.conn.execute(SELECT_ARTICLE_EXISTS, (row.id,)).fetchone() is not None
    except DB_ERRORS as exc:
        raise _wrap(f"store article {row.id!r}", db, exc) from exc
    upsert_rows(db, [row], now=now)
    return not existed


def upsert_rows(db: Database, rows: Sequence[ArticleRow], *, now: datetime) -> None:
    """Store articles already in their stored form; new ids get first_seen_at = `now`.

    Their teasers are tied to the articles they advertise, and teasers stored earlier to them.
    """
    seen = _utc_text(now)
    try:
        db.conn.executemany(
            _UPSERT_ARTICLE_PG if db.dialect == "postgresql" else UPSERT_ARTICLE,
            (
                {
                    "id": row.id,
                    "record": row.record,
                    "body": row.body,
                    "published_at": row.published_at,
                    "first_seen_at": seen,
                    "slug": row.slug,
                    "title": row.title,
                    "precision": row.precision,
                    "author": row.author,
                    "source": row.source,
                    "record_hash": row.record_hash,
                    "language": row.language,
                    "credit": row.credit,
                }
                for row in rows
            ),
        )
    except DB_ERRORS as exc:
        raise _wrap("store the articles", db, exc) from exc
    teasers.index_keys(db, [(row.id, row.story_keys, row.teaser_keys) for row in rows])


# A dump's new article is the same story as its old one when it keeps the old one's title or
# publish time (a correction keeps one of them). A path that now holds another story (a
# scraper that reuses its file names, a folder link moved to another day's dumps) carries
# nothing over: that story would never be mailed, and readers would take it for the old.
# A dump whose bytes did not change (a new parser read it into another id) is the same
# story whatever it says: an undated one whose title the parser sets anew matches neither.
_SAME_STORY = """
    EXISTS (
        SELECT 1 FROM articles AS o, articles AS n
        WHERE o.id = :old AND n.id = :new
          AND (o.title = n.title OR o.published_at = n.published_at)
    )
"""
# The same story's new article takes its old one's digest day (when it has none), the earlier
# of the two first-seen times, and the id the story was first stored under (its feed id);
# when the dump's bytes changed (an edit, not a new parser reading the same bytes), it was
# revised now, else it keeps the old one's revision time. ISO UTC text of one width: text
# order is time order.
_CARRY_OVER = f"""
    UPDATE articles SET
        digest_day = coalesce(digest_day,
            (SELECT o.digest_day FROM articles AS o WHERE o.id = :old)),
        first_seen_at = coalesce(
            (SELECT o.first_seen_at FROM articles AS o
             WHERE o.id = :old AND o.first_seen_at < articles.first_seen_at),
            first_seen_at),
        first_id = CASE WHEN :shared = 1 THEN first_id ELSE nullif(
            (SELECT coalesce(o.first_id, o.id) FROM articles AS o WHERE o.id = :old), id) END,
        revised_at = CASE WHEN :shared = 1 THEN revised_at WHEN :edited = 1 THEN :now
            ELSE (SELECT o.revised_at FROM articles AS o WHERE o.id = :old) END
    WHERE id = :new AND (:edited = 0 OR {_SAME_STORY})
"""  # noqa: S608 - constant text, no value
# ... and its page: a published URL stays with the story (the build keeps an article's page
# path), even when the correction is in the title its slug came from.
_CARRY_OVER_PAGE = f"""
    INSERT INTO article_pages (article_id, path)
    SELECT :new, p.path FROM article_pages AS p
    WHERE p.article_id = :old AND :shared = 0 AND (:edited = 0 OR {_SAME_STORY})
    ON CONFLICT (article_id) DO NOTHING
"""  # noqa: S608 - constant text, no value


def carry_over(
    db: Database,
    pairs: Sequence[tuple[str, str, bool]],
    *,
    now: datetime,
    shared: Collection[str] = (),
) -> None:
    """For each (old id, new id, edited) of a dump read again: when the new article is the
    same story (by title or publish time; always when the dump was not `edited`), it keeps
    the old one's digest day, first-seen time, first id (the story's feed id) and page, and
    is revised at `now` when the dump was `edited` (its bytes changed), else keeps the old
    one's revision time (inside the caller's transaction). An old id in `shared` is still
    given by another dump (one copy of a story corrected): its feed id and page stay its
    own, only the digest day and first-seen time are carried."""
    params = [
        {
            "old": old,
            "new": new,
            "now": _utc_text(now),
            "edited": int(edited),
            "shared": int(old in shared),
        }
        for old, new, edited in pairs
        if old != new
    ]
    try:
        db.conn.executemany(
            _CARRY_OVER_PAGE,
            [
                {"old": p["old"], "new": p["new"], "shared": p["shared"], "edited": p["edited"]}
                for p in params
            ],
        )
        db.conn.executemany(_CARRY_OVER, params)
    except DB_ERRORS as exc:
        raise _wrap("store the articles", db, exc) from exc


def read_article_sources(db: Database) -> dict[str, str]:
    """Map every stored article id to the dump path its record was parsed from."""
    try:
        return {str(i): str(src) for i, src in db.conn.execute(SELECT_ARTICLE_SOURCES)}
    except DB_ERRORS as exc:
        raise _wrap("read the articles", db, exc) from exc


def read_article_slugs(db: Database) -> dict[str, str]:
    """Map every stored article id to its slug."""
    try:
        return {str(i): str(slug) for i, slug in db.conn.execute(SELECT_ARTICLE_SLUGS)}
    except DB_ERRORS as exc:
        raise _wrap("read the articles", db, exc) from exc


def get_article(db: Database, article_id: str) -> Article | None:
    """Load one article by id, or None when the store has no such article."""
    try:
        row = db.conn.execute(SELECT_ARTICLE, (article_id,)).fetchone()
    except DB_ERRORS as exc:
        raise _wrap("read the articles", db, exc) from exc
    if row is None:
        return None
    return _decoded(db, article_id, row[0], row[1])


def get_record(db: Database, article_id: str) -> tuple[str, str | None] | None:
    """The stored record and body of one article (for `decode_article`), or None."""
    try:
        row = db.conn.execute(SELECT_ARTICLE, (article_id,)).fetchone()
    except DB_ERRORS as exc:
        raise _wrap("read the articles", db, exc) from exc
    return None if row is None else (str(row[0]), row[1])


def _decoded(db: Database, article_id: str, record: str, body: str | None) -> Article:
    try:
        return decode_article(record, body)
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(
            f"{db.path}: article {article_id!r}: the stored record is damaged: {exc!r}.",
            hint="Run `syndicate build` to store the articles again.",
        ) from exc


def iter_summaries(db: Database) -> Iterator[ArticleSummary]:
    """Yield the light summary of every stored article (in no particular order)."""
    # Many articles share an author, and those one build stored their first-seen time (they
    # come one after the other): one object each, not one per article (a build holds every
    # summary). The authors' table holds the texts the summaries hold anyway.
    authors: dict[str, str] = {}
    seen_text, seen = "", _EPOCH
    try:
        cursor = db.conn.execute(SELECT_SUMMARIES)
        while rows := cursor.fetchmany(_BATCH):
            for row in rows:
                author = row[5]
                if row[7] != seen_text:
                    seen_text, seen = row[7], datetime.fromisoformat(row[7])
                yield ArticleSummary(
                    id=row[0],
                    slug=row[1],
                    title=row[2],
                    published=datetime.fromisoformat(row[3]) if row[3] else None,
                    precision=Precision(row[4]),
                    author=None if author is None else authors.setdefault(author, author),
                    record_hash=row[6],
                    first_seen_at=seen,
                    page_path=row[8],
                    language=row[9],
                    first_id=row[10],
                    revised_at=datetime.fromisoformat(row[11]) if row[11] else None,
                    credit=row[12],
                )
    except DB_ERRORS as exc:
        raise _wrap("read the articles", db, exc) from exc


def iter_articles_newest_first(db: Database, *, batch: int = _BATCH) -> Iterator[Article]:
    """Yield every stored article, newest publish date first, undated last, then by id.

    Reads in keyset batches, so memory stays bounded; a row changed during the
    iteration may or may not be seen.
    """
    key: dict[str, object] | None = None
    while True:
        try:
            if key is None:
                rows = db.conn.execute(
                    SELECT_ARTICLES_NEWEST_FIRST_START, {"limit": batch}
                ).fetchall()
            else:
                rows = db.conn.execute(SELECT_ARTICLES_NEWEST_FIRST, key).fetchall()
        except DB_ERRORS as exc:
            raise _wrap("read the articles", db, exc) from exc
        if not rows:
            return
        for record, body, _published, article_id in rows:
            yield _decoded(db, article_id, record, body)
        *_record, last_key, last_id = rows[-1]
        key = {"k": last_key, "id": last_id, "limit": batch}


# SQLite's page cache while a build stores its articles, in KiB (SQLite's default: 2 MB).
# Each article adds random keys (path order is no key order) to the stories and teasers
# indexes, 2.4 MB of index pages per 1,000 articles: with the default cache, nearly every
# insert reads its pages in anew (at 10,000 dumps, 20-30 us a dump of the main process).
SYNC_CACHE_KIB = 16_384


@contextmanager
def sync_cache(db: Database) -> Iterator[None]:
    """Give SQLite a larger page cache for the duration (nothing on PostgreSQL)."""
    if db.dialect != "sqlite":
        yield
        return
    try:
        (before,) = db.conn.execute("PRAGMA cache_size").fetchone()
        db.conn.execute(f"PRAGMA cache_size = {-SYNC_CACHE_KIB}")
    except DB_ERRORS as exc:
        raise _wrap("set the page cache", db, exc) from exc
    try:
        yield
    finally:
        with suppress(*DB_ERRORS):  # the connection is gone: so is its cache
            db.conn.execute(f"PRAGMA cache_size = {int(before)}")


def backfill_teasers(db: Database) -> int:
    """Index the teasers of articles stored before the teasers table existed, once.

    Returns how many articles it indexed (0 once done).
    """
    done = 0
    last = ""
    try:
        if db.conn.execute(SELECT_BACKFILL, (BACKFILL_KEY,)).fetchone() is None:
            return 0
        while True:
            with db.transaction() as conn:
                found = conn.execute(SELECT_RECORDS_AFTER, (last, _BATCH)).fetchall()
                if not found:
                    conn.execute(DELETE_BACKFILL, (BACKFILL_KEY,))
                    return done
                teasers.index_keys(db, [_keys(*row) for row in found])
            done += len(found)
            last = found[-1][0]
    except DB_ERRORS as exc:
        raise _wrap("index the stored teasers", db, exc) from exc


def _keys(article_id: str, record: str, body: str | None) -> teasers.Keys:
    try:
        article = decode_article(record, body)
    except (ValueError, KeyError, TypeError):  # damaged: no keys; a rebuild stores it again
        return article_id, (), ()
    return article_id, teasers.story_keys(article), teasers.teaser_keys(article)


def read_page_paths(db: Database) -> dict[str, str]:
    """Map every article that has a page to its page's path (relative to paths.output)."""
    try:
        return {str(i): str(path) for i, path in db.conn.execute(SELECT_PAGE_PATHS)}
    except DB_ERRORS as exc:
        raise _wrap("read the page paths", db, exc) from exc


def write_page_paths(db: Database, pages: Mapping[str, str]) -> None:
    """Record that the articles in `pages` (id -> path) have those pages, and no other one has.

    For the publish stage only, once it has written the pages: the one writer of page paths.
    The recorded paths are compared as they are read, not loaded whole beside `pages`.
    """
    changed: list[tuple[str, str]] = []
    gone: list[tuple[str]] = []
    recorded = 0  # articles of `pages` that have a path recorded
    try:
        cursor = db.conn.execute(SELECT_PAGE_PATHS)
        while rows := cursor.fetchmany(_BATCH):
            for i, old in rows:
                path = pages.get(i)
                if path is None:
                    gone.append((i,))
                    continue
                recorded += 1
                if path != old:
                    changed.append((i, path))
        if recorded < len(pages):  # some have none recorded yet
            known = {i for (i,) in db.conn.execute(SELECT_PAGE_IDS)}
            changed += ((i, path) for i, path in pages.items() if i not in known)
            del known
        changed.sort()
        gone.sort()
        db.conn.executemany(UPSERT_PAGE_PATH, changed)
        db.conn.executemany(DELETE_PAGE_PATH, gone)
    except DB_ERRORS as exc:
        raise _wrap("record the page paths", db, exc) from exc


# How a build left a page file: its size and modification time (ns).
# Packed in one int (size << 64 | mtime_ns): one object per page, not a tuple of two.
PageStamp = int


def page_stamp(size: int, mtime_ns: int) -> PageStamp:
    """The stamp of a file of `size` bytes last modified at `mtime_ns`."""
    return size << 64 | mtime_ns


def stamp_parts(stamp: PageStamp) -> tuple[int, int]:
    """(size, mtime_ns) of a stamp."""
    return stamp >> 64, stamp & (1 << 64) - 1


def read_page_fingerprints(db: Database) -> tuple[dict[str, str], dict[str, PageStamp]]:
    """Every page the last build recorded: its input fingerprint, and (when known) the size
    and modification time its file had then."""
    fingerprints: dict[str, str] = {}
    stamps: dict[str, PageStamp] = {}
    try:
        for path, fp, size, mtime_ns in db.conn.execute(SELECT_PAGES):
            fingerprints[str(path)] = str(fp)
            if size is not None and mtime_ns is not None:
                stamps[str(path)] = page_stamp(int(size), int(mtime_ns))
    except DB_ERRORS as exc:
        raise _wrap("read the page fingerprints", db, exc) from exc
    return fingerprints, stamps


def write_page_fingerprints(
    db: Database, pages: Iterable[tuple[str, str, int | None, int | None]]
) -> None:
    """Record (path, fingerprint, size, mtime_ns) for pages just written or confirmed."""
    try:
        db.conn.executemany(UPSERT_PAGE, pages)
    except DB_ERRORS as exc:
        raise _wrap("record the page fingerprints", db, exc) from exc


def delete_page_fingerprints(db: Database, paths: Iterable[str]) -> None:
    """Forget pages that were removed."""
    try:
        db.conn.executemany(DELETE_PAGE, ((p,) for p in paths))
    except DB_ERRORS as exc:
        raise _wrap("record the page fingerprints", db, exc) from exc

"""Store: the `stories` and `teasers` tables: which stored article each teaser advertises.

A teaser advertises an article when its story key (text.story_key) is a prefix of the
article's head or lead key. Links are kept up to date as articles are stored, in
either order: a teaser stored before its article is tied to it when the article arrives.
When several articles match, the smallest id wins, whatever the order they came in.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from syndicate.errors import StoreError
from syndicate.model import Article
from syndicate.store import DB_ERRORS, Database
from syndicate.text import STORY_PROBE_CHARS, story_key

# Forget an article's keys and teasers before storing them again.
DELETE_STORIES = "DELETE FROM stories WHERE article_id = ?"
DELETE_TEASERS = "DELETE FROM teasers WHERE article_id = ?"
# Store one head or lead key of an article.
INSERT_STORY = "INSERT INTO stories (key, article_id) VALUES (?, ?) ON CONFLICT DO NOTHING"
# Store one teaser of an article (its target is found by a RESOLVE_ statement).
INSERT_TEASER = "INSERT INTO teasers (article_id, position, key, probe) VALUES (?, ?, ?, ?)"
# Tie teasers to the article they advertise: the smallest id among the other articles with
# a key that starts with the teaser's key (a range on the stories index: U+10FFFF sorts
# after every character).
_RESOLVE = """
    UPDATE teasers SET target_id = (
        SELECT s.article_id FROM stories AS s
        WHERE s.key >= teasers.key AND s.key < teasers.key || char(1114111)
          AND s.article_id != teasers.article_id
        ORDER BY s.article_id LIMIT 1
    )
    WHERE {where}
"""
# ... the teasers of one article,
RESOLVE_OWN = _RESOLVE.format(where="article_id = ?")
# ... the teasers that advertised an article stored again (its keys may have changed),
RESOLVE_TARGETING = _RESOLVE.format(where="target_id = ?")
# ... the teasers a newly stored key may answer.
RESOLVE_PROBE = _RESOLVE.format(where="probe = ?")
# Every link, for page fingerprints: (article, teaser position, teaser key, target).
SELECT_LINKS = """
    SELECT article_id, position, key, target_id FROM teasers WHERE target_id IS NOT NULL
    ORDER BY article_id, position
"""
# The links of one article's teasers.
SELECT_ARTICLE_LINKS = """
    SELECT key, target_id FROM teasers WHERE article_id = ? AND target_id IS NOT NULL
    ORDER BY position
"""

# PostgreSQL: the same steps as above, each one statement for a whole batch of articles
# (arrays bound as parameters). Row by row, a build of 10,000 dumps sent about 120,000
# statements; a round trip's worth of work each, even pipelined.
_PG_DELETE_STORIES = "DELETE FROM stories WHERE article_id = ANY(CAST(:ids AS text[]))"
_PG_INSERT_STORIES = """
    INSERT INTO stories (key, article_id)
    SELECT * FROM unnest(CAST(:keys AS text[]), CAST(:ids AS text[]))
    ON CONFLICT DO NOTHING
"""
_PG_DELETE_TEASERS = "DELETE FROM teasers WHERE article_id = ANY(CAST(:ids AS text[]))"
_PG_INSERT_TEASERS = """
    INSERT INTO teasers (article_id, position, key, probe)
    SELECT * FROM unnest(
        CAST(:ids AS text[]), CAST(:positions AS bigint[]),
        CAST(:keys AS text[]), CAST(:probes AS text[])
    )
"""
# The smallest id is taken as min() over the key range, fenced by OFFSET 0: given
# `ORDER BY article_id LIMIT 1`, PostgreSQL walks the whole stories_article index for each
# teaser, stopping at the first key in range (6 ms a teaser at 20,000 keys, 50 s a build).
_PG_RESOLVE = """
    UPDATE teasers SET target_id = (
        SELECT min(m.article_id) FROM (
            SELECT s.article_id FROM stories AS s
            WHERE s.key >= teasers.key AND s.key < teasers.key || chr(1114111)
              AND s.article_id != teasers.article_id
            OFFSET 0
        ) AS m
    )
    WHERE {where}
"""
_PG_RESOLVE_OWN = _PG_RESOLVE.format(where="article_id = ANY(CAST(:ids AS text[]))")
_PG_RESOLVE_TARGETING = _PG_RESOLVE.format(where="target_id = ANY(CAST(:ids AS text[]))")
_PG_RESOLVE_PROBE = _PG_RESOLVE.format(where="probe = ANY(CAST(:probes AS text[]))")

# The stories table's size as of its last ANALYZE (-1: never counted).
_PG_KNOWN_STORIES = "SELECT reltuples FROM pg_class WHERE oid = CAST('stories' AS regclass)"

_BATCH = 500


def _wrap(what: str, db: Database, exc: Exception) -> StoreError:
    return StoreError(f"{db.path}: cannot {what}: {exc}.")


# An article's keys: (id, its head and lead keys, its teasers' keys).
Keys = tuple[str, tuple[str, ...], tuple[str, ...]]


def story_keys(article: Article) -> tuple[str, ...]:
    """The keys a teaser advertising `article` is matched against: its head's and lead's."""
    keys = [story_key(article.head)] if article.head else []
    lead = story_key(article.lead)
    if lead not in keys:
        keys.append(lead)
    return tuple(k for k in keys if k)


def teaser_keys(article: Article) -> tuple[str, ...]:
    """The keys of `article`'s teasers, in order."""
    return tuple(story_key(t.text) for t in article.teasers)


def index_keys(db: Database, items: Sequence[Keys]) -> None:
    """Store the (id, story keys, teaser keys) of articles just stored, and relink the
    teasers they touch (inside the caller's transaction)."""
    if not items:
        return
    ids = [(article_id,) for article_id, _keys, _teasers in items]
    probes = {
        (key[:STORY_PROBE_CHARS],)
        for _id, keys, _teasers in items
        for key in keys
        if len(key) >= STORY_PROBE_CHARS
    }
    if db.dialect == "postgresql":
        _index_keys_postgres(db, items, sorted(p for (p,) in probes))
        return
    try:
        conn = db.conn
        conn.executemany(DELETE_STORIES, ids)
        conn.executemany(INSERT_STORY, ((key, i) for i, keys, _teasers in items for key in keys))
        conn.executemany(DELETE_TEASERS, ids)
        conn.executemany(
            INSERT_TEASER,
            (
                (article_id, position, key, key[:STORY_PROBE_CHARS])
                for article_id, _keys, teasers in items
                for position, key in enumerate(teasers)
                if len(key) >= STORY_PROBE_CHARS
            ),
        )
        conn.executemany(RESOLVE_OWN, ids)
        conn.executemany(RESOLVE_TARGETING, ids)
        conn.executemany(RESOLVE_PROBE, sorted(probes))
    except DB_ERRORS as exc:
        raise _wrap("link the teasers", db, exc) from exc


def _index_keys_postgres(db: Database, items: Sequence[Keys], probes: list[str]) -> None:
    """`index_keys` on PostgreSQL: the same steps, one statement each for the batch."""
    ids = [article_id for article_id, _keys, _teasers in items]
    story_rows = [(key, i) for i, keys, _teasers in items for key in keys]
    teaser_rows = [
        (article_id, position, key, key[:STORY_PROBE_CHARS])
        for article_id, _keys, teasers in items
        for position, key in enumerate(teasers)
        if len(key) >= STORY_PROBE_CHARS
    ]
    try:
        conn = db.conn
        conn.execute(_PG_DELETE_STORIES, {"ids": ids})
        if story_rows:
            keys, owners = zip(*story_rows, strict=True)
            conn.execute(_PG_INSERT_STORIES, {"keys": list(keys), "ids": list(owners)})
        conn.execute(_PG_DELETE_TEASERS, {"ids": ids})
        if teaser_rows:
            owners, positions, keys, cut = zip(*teaser_rows, strict=True)
            conn.execute(
                _PG_INSERT_TEASERS,
                {
                    "ids": list(owners),
                    "positions": list(positions),
                    "keys": list(keys),
                    "probes": list(cut),
                },
            )
        # A new store's tables have no statistics yet, and with none PostgreSQL plans the
        # lookups below as scans of the whole table, per teaser (0.4 s a batch of 100 dumps
        # at 10,000). Counted once here, they stay good as the tables grow: the planner
        # scales them by the tables' size on disk.
        (known,) = conn.execute(_PG_KNOWN_STORIES).fetchone()
        if known < len(story_rows):
            conn.execute("ANALYZE stories, teasers")
        conn.execute(_PG_RESOLVE_OWN, {"ids": ids})
        conn.execute(_PG_RESOLVE_TARGETING, {"ids": ids})
        if probes:
            conn.execute(_PG_RESOLVE_PROBE, {"probes": probes})
    except DB_ERRORS as exc:
        raise _wrap("link the teasers", db, exc) from exc


def iter_links(db: Database) -> Iterator[tuple[str, int, str, str]]:
    """Every teaser tied to an article: (article id, position, teaser key, target id)."""
    try:
        cursor = db.conn.execute(SELECT_LINKS)
        while rows := cursor.fetchmany(_BATCH):
            yield from rows
    except DB_ERRORS as exc:
        raise _wrap("read the teaser links", db, exc) from exc


def article_links(db: Database, article_ids: Iterable[str]) -> dict[str, list[tuple[str, str]]]:
    """The links of the given articles' teasers: article id -> [(teaser key, target id)]."""
    found: dict[str, list[tuple[str, str]]] = {}
    try:
        for article_id in article_ids:
            rows = db.conn.execute(SELECT_ARTICLE_LINKS, (article_id,)).fetchall()
            found[article_id] = [(str(key), str(target)) for key, target in rows]
    except DB_ERRORS as exc:
        raise _wrap("read the teaser links", db, exc) from exc
    return found

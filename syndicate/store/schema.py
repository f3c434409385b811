"""Schema: forward migrations, applied in order; never edit a released step, append one."""

from __future__ import annotations

# Each step is a list of statements run in one transaction; PRAGMA user_version
# records how many steps a database has had.
MIGRATIONS: list[list[str]] = [
    # 1: build cache (dumps parsed before, keyed on file identity and contents)
    #    and the articles syndicate has seen.
    [
        """
        CREATE TABLE meta (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        )
        """,
        """
        CREATE TABLE dumps (
            path TEXT PRIMARY KEY,          -- absolute path of the dump file
            device INTEGER NOT NULL,
            inode INTEGER NOT NULL,
            size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            content_hash TEXT NOT NULL,     -- blake2b of the raw bytes
            parser_version INTEGER NOT NULL,
            article_id TEXT,                -- NULL when the dump was rejected
            error TEXT                      -- the rejection reason, else NULL
        )
        """,
        """
        CREATE TABLE articles (
            id TEXT PRIMARY KEY,            -- Article.id, the content hash
            record TEXT NOT NULL,           -- Article.to_record() as JSON
            published_at TEXT,              -- UTC ISO-8601, NULL when unknown
            first_seen_at TEXT NOT NULL     -- UTC ISO-8601
        )
        """,
        "CREATE INDEX articles_published ON articles (published_at)",
    ],
]

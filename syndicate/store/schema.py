"""Schema: forward migrations, applied in order; never edit a released step, append one."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

# A step's statement: SQL, or a function of the connection, for values only Python computes
# (it runs in the step's transaction, on either engine, and must work in batches).
Statement = str | Callable[[Any], None]

# Each step is a list of statements run in one transaction; PRAGMA user_version
# records how many steps a database has had. Times are UTC ISO-8601 text.
MIGRATIONS: list[Sequence[Statement]] = [
    # 1: the first schema.
    [
        # Small key/value facts: the generated signing secret, the erasure key.
        """
        CREATE TABLE meta (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        )
        """,
        # Build cache: dumps parsed before, keyed on file identity and contents.
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
        # Every article syndicate has seen, and the digest that carried it.
        """
        CREATE TABLE articles (
            id TEXT PRIMARY KEY,            -- Article.id, the content hash
            record TEXT NOT NULL,           -- Article.to_record() as JSON (see migration 2)
            published_at TEXT,              -- NULL when unknown
            first_seen_at TEXT NOT NULL,
            digest_day TEXT,                -- NULL until a digest includes it
            -- Light copies from the record, so index pages need no JSON parsing:
            slug TEXT NOT NULL DEFAULT '',
            title TEXT NOT NULL DEFAULT '',
            precision TEXT NOT NULL DEFAULT 'unknown',
            author TEXT,
            source TEXT NOT NULL DEFAULT '',     -- the dump the record was parsed from
            record_hash TEXT NOT NULL DEFAULT '' -- blake2b of `record`: page fingerprints
        )
        """,
        # Pages and feeds `syndicate build` wrote, with a fingerprint of their inputs,
        # so an unchanged page is neither rendered nor written again.
        """
        CREATE TABLE pages (
            path TEXT PRIMARY KEY,          -- relative to paths.output, '/'-separated
            fingerprint TEXT NOT NULL
        )
        """,
        "CREATE INDEX articles_published ON articles (published_at)",
        "CREATE INDEX articles_undigested ON articles (digest_day) WHERE digest_day IS NULL",
        # One digest a day (in the site's timezone).
        """
        CREATE TABLE digests (
            day TEXT PRIMARY KEY,           -- YYYY-MM-DD in site.timezone
            created_at TEXT NOT NULL,
            article_ids TEXT NOT NULL,      -- JSON list, digest order
            more INTEGER NOT NULL DEFAULT 0, -- articles left out past digest.max_articles
            -- Set once a later day's `send` found nobody still owed it, or gave it up
            -- (older than the catch-up window): later runs look at it no more.
            closed_at TEXT
        )
        """,
        """
        CREATE TABLE subscribers (
            id INTEGER PRIMARY KEY,
            email TEXT NOT NULL,
            email_key TEXT NOT NULL UNIQUE,  -- case-folded address: unique case-insensitively
            name TEXT,
            language TEXT NOT NULL DEFAULT 'vi' CHECK (language IN ('vi', 'en')),
            status TEXT NOT NULL
                CHECK (status IN ('pending', 'confirmed', 'unsubscribed', 'bounced')),
            bounce_count INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            confirmed_at TEXT,
            unsubscribed_at TEXT,
            bounced_at TEXT,
            confirm_sent_at TEXT             -- last confirmation mail, for the resend limit
        )
        """,
        "CREATE INDEX subscribers_status ON subscribers (status, id)",
        # Erased addresses: only a hash keyed with meta's erasure_key (never the signing
        # secret, which may be rotated) stays, so an import cannot bring them back.
        """
        CREATE TABLE suppressions (
            email_hash TEXT PRIMARY KEY,
            created_at TEXT NOT NULL
        )
        """,
        # The send ledger: one row per (digest, subscriber).
        """
        CREATE TABLE deliveries (
            id INTEGER PRIMARY KEY,
            digest_day TEXT NOT NULL REFERENCES digests (day),
            subscriber_id INTEGER NOT NULL REFERENCES subscribers (id) ON DELETE CASCADE,
            status TEXT NOT NULL CHECK (status IN ('sending', 'sent', 'failed')),
            attempts INTEGER NOT NULL DEFAULT 0,
            reply TEXT,                      -- the server's last reply on failure
            updated_at TEXT NOT NULL,
            UNIQUE (digest_day, subscriber_id)
        )
        """,
    ],
    # 2: article bodies in a column of their own, as plain text: storing an article no
    # longer JSON-escapes its whole text. In such a row the record's "body" holds the
    # blocks' kinds ("p" paragraph, "c" caption) and `body` their texts, one per line;
    # rows without `body` keep their blocks in the record as before.
    [
        "ALTER TABLE articles ADD COLUMN body TEXT",
    ],
    # 3: the size and modification time of each page as the build left it, so a page
    # edited by hand (or by anything else) is written again by the next build.
    [
        "ALTER TABLE pages ADD COLUMN size INTEGER",
        "ALTER TABLE pages ADD COLUMN mtime_ns INTEGER",
    ],
    # 4: subscriber ids are never used twice (AUTOINCREMENT: an erased subscriber's id is
    # not handed to the next sign-up), and each subscriber gets a random token nonce that
    # their confirm and unsubscribe tokens carry, so a saved link dies with its subscriber.
    # SQLite cannot add either to a table in place: the table is rebuilt, keeping every row
    # and id (deliveries point at them), with foreign keys off while the migration runs
    # (see store._migrate). Existing rows get their nonce from SQLite's randomblob().
    [
        """
        CREATE TABLE subscribers_new (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            email TEXT NOT NULL,
            email_key TEXT NOT NULL UNIQUE,  -- case-folded address: unique case-insensitively
            name TEXT,
            language TEXT NOT NULL DEFAULT 'vi' CHECK (language IN ('vi', 'en')),
            status TEXT NOT NULL
                CHECK (status IN ('pending', 'confirmed', 'unsubscribed', 'bounced')),
            bounce_count INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            confirmed_at TEXT,
            unsubscribed_at TEXT,
            bounced_at TEXT,
            confirm_sent_at TEXT,            -- last confirmation mail, for the resend limit
            token_nonce BLOB NOT NULL CHECK (length(token_nonce) = 16)  -- signed into tokens
        )
        """,
        """
        INSERT INTO subscribers_new (id, email, email_key, name, language, status, bounce_count,
            created_at, updated_at, confirmed_at, unsubscribed_at, bounced_at, confirm_sent_at,
            token_nonce)
        SELECT id, email, email_key, name, language, status, bounce_count, created_at,
            updated_at, confirmed_at, unsubscribed_at, bounced_at, confirm_sent_at, randomblob(16)
        FROM subscribers ORDER BY id
        """,
        "DROP TABLE subscribers",
        "ALTER TABLE subscribers_new RENAME TO subscribers",
        "CREATE INDEX subscribers_status ON subscribers (status, id)",
    ],
    # 5: which stored article each teaser advertises. `stories` holds the story keys
    # (text.story_key) of each article's head and lead; `teasers` each article's teasers
    # long enough to match, with their key, its first text.STORY_PROBE_CHARS characters (to
    # find the teasers a new article answers) and the article they advertise (NULL while the
    # store has none). Articles stored before this step are indexed by the next build (the
    # meta key says so).
    [
        """
        CREATE TABLE stories (
            key TEXT NOT NULL,
            article_id TEXT NOT NULL,
            PRIMARY KEY (key, article_id)
        ) WITHOUT ROWID
        """,
        "CREATE INDEX stories_article ON stories (article_id)",
        """
        CREATE TABLE teasers (
            article_id TEXT NOT NULL,       -- the article whose dump carries the teaser
            position INTEGER NOT NULL,      -- its place among that article's teasers
            key TEXT NOT NULL,
            probe TEXT NOT NULL,
            target_id TEXT,                 -- the article it advertises, when stored
            PRIMARY KEY (article_id, position)
        ) WITHOUT ROWID
        """,
        "CREATE INDEX teasers_probe ON teasers (probe)",
        "CREATE INDEX teasers_target ON teasers (target_id) WHERE target_id IS NOT NULL",
        """
        INSERT INTO meta (key, value) SELECT 'teasers_backfill', 'pending'
        WHERE EXISTS (SELECT 1 FROM articles)
        """,
    ],
]

# 6: bounces and complaints read from mail (`syndicate bounces`).
BOUNCES_MIGRATION: list[str] = [
    # Subscribers get the status 'complained' (a spam complaint): the CHECK list can only
    # change by rebuilding the table, as migration 4 did, keeping ids, AUTOINCREMENT and
    # token nonces. The sequence is carried over, so an erased highest id is not reused.
    """
    CREATE TABLE subscribers_new (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        email TEXT NOT NULL,
        email_key TEXT NOT NULL UNIQUE,  -- case-folded address: unique case-insensitively
        name TEXT,
        language TEXT NOT NULL DEFAULT 'vi' CHECK (language IN ('vi', 'en')),
        status TEXT NOT NULL CHECK (
            status IN ('pending', 'confirmed', 'unsubscribed', 'bounced', 'complained')),
        bounce_count INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        confirmed_at TEXT,
        unsubscribed_at TEXT,
        bounced_at TEXT,
        confirm_sent_at TEXT,            -- last confirmation mail, for the resend limit
        token_nonce BLOB NOT NULL CHECK (length(token_nonce) = 16),  -- signed into tokens
        complained_at TEXT               -- the last spam complaint
    )
    """,
    """
    INSERT INTO subscribers_new (id, email, email_key, name, language, status, bounce_count,
        created_at, updated_at, confirmed_at, unsubscribed_at, bounced_at, confirm_sent_at,
        token_nonce)
    SELECT id, email, email_key, name, language, status, bounce_count, created_at,
        updated_at, confirmed_at, unsubscribed_at, bounced_at, confirm_sent_at, token_nonce
    FROM subscribers ORDER BY id
    """,
    """
    UPDATE sqlite_sequence
    SET seq = max(seq, coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'subscribers'), 0))
    WHERE name = 'subscribers_new'
    """,
    "DROP TABLE subscribers",
    "ALTER TABLE subscribers_new RENAME TO subscribers",
    "CREATE INDEX subscribers_status ON subscribers (status, id)",
    # When each bounce and complaint read from mail happened, for `syndicate bounces`
    # (soft bounces count per digest) and the rates in `subscribers stats`.
    """
    CREATE TABLE mail_events (
        id INTEGER PRIMARY KEY,
        subscriber_id INTEGER NOT NULL REFERENCES subscribers (id) ON DELETE CASCADE,
        kind TEXT NOT NULL CHECK (kind IN ('hard', 'soft', 'complaint')),
        digest_day TEXT,                 -- the digest it was about; NULL when unknown
        detail TEXT,                     -- DSN status code or feedback type
        created_at TEXT NOT NULL
    )
    """,
    "CREATE INDEX mail_events_time ON mail_events (created_at, kind)",
    "CREATE INDEX mail_events_subscriber ON mail_events (subscriber_id, kind, digest_day)",
    # Bounce and complaint mails already applied (Message-ID, else a hash of the bytes), so
    # reading the same mail twice changes nothing.
    """
    CREATE TABLE mail_reports (
        key TEXT PRIMARY KEY,
        created_at TEXT NOT NULL
    )
    """,
]
MIGRATIONS.append(BOUNCES_MIGRATION)

# 7: the page each article has, as `syndicate build` left it (one writer: the publish stage,
# when it writes the pages). Digests, feeds and teaser links read it and never work a page
# out again. NULL when the article has no page: built from another folder, its dump gone, or
# left out of the site. Articles stored before this step get theirs at the next build.
PAGES_MIGRATION: list[str] = [
    # Relative to paths.output, '/'-separated: articles/<slug>.html.
    "ALTER TABLE articles ADD COLUMN page_path TEXT",
]
MIGRATIONS.append(PAGES_MIGRATION)

# 8: every sign-up writes the same one row, whatever the address's state (new, pending,
# confirmed, left), so storing it before the page answers costs the same for everyone;
# `signed_up_at` is that write's stamp for an address already on the list.
MIGRATIONS.append(["ALTER TABLE subscribers ADD COLUMN signed_up_at TEXT"])

# 9: page paths in a narrow table of their own. Updating `articles.page_path` rewrote each
# whole article row (record and body, about 10 KiB): a full build wrote every article twice.
# The column stays (SQLite keeps it) but is emptied and no longer read.
MIGRATIONS.append(
    [
        """
        CREATE TABLE article_pages (
            article_id TEXT PRIMARY KEY,    -- articles.id
            path TEXT NOT NULL              -- relative to paths.output: articles/<slug>.html
        ) WITHOUT ROWID
        """,
        """
        INSERT INTO article_pages (article_id, path)
        SELECT id, page_path FROM articles WHERE page_path IS NOT NULL
        """,
        "UPDATE articles SET page_path = NULL WHERE page_path IS NOT NULL",
    ]
)

# 10: limits that hold across every `syndicate serve` sharing the store.
# `confirm_mails`: the times (space-separated ISO-8601 UTC) of the confirmation mails sent
# to the address in the last 24 hours, at most subscribers.CONFIRM_MAILS_PER_DAY of them:
# repeated sign-ups of someone else's address must not mail it without end.
# `signup_counts`: sign-up requests per client network (IPv4 address, IPv6 /64) per
# minute, for the rate limit. Keyed by the window first, so the rows of past windows are
# swept with one range delete on the key; nothing else ever evicts a count.
MIGRATIONS.append(
    [
        "ALTER TABLE subscribers ADD COLUMN confirm_mails TEXT",
        """
        CREATE TABLE signup_counts (
            window_at TEXT NOT NULL,        -- the minute's start, ISO-8601 UTC
            network TEXT NOT NULL,          -- web.guard.rate_limit_key of the client
            count INTEGER NOT NULL,
            PRIMARY KEY (window_at, network)
        ) WITHOUT ROWID
        """,
    ]
)

# 11: the send ledger is a work queue. Each run enqueues a row per owed recipient ('sending',
# no lease), and each worker claims batches of rows by setting a lease: its id and an expiry
# (UTC ISO-8601 text with microseconds, compared as text). A worker sends only what it still
# holds; a dead worker's rows are taken by another once its lease has run out. The partial
# index holds only the rows not yet sent (the queue), keyed the way the claim looks them up.
MIGRATIONS.append(
    [
        "ALTER TABLE deliveries ADD COLUMN lease_owner TEXT",  # worker id: '<run>/<n>'
        "ALTER TABLE deliveries ADD COLUMN lease_until TEXT",  # NULL: not leased
        """
        CREATE INDEX deliveries_queue ON deliveries (digest_day, lease_until)
        WHERE status <> 'sent'
        """,
    ]
)

# 12: an article's language beside its record, where the index pages are built from: an
# entry of the other language says so (lang=""). Written by the build from the record's
# `language` (the parser's); records stored before get theirs from the record here. NULL
# (a record another writer left without one): the site's language.
MIGRATIONS.append(
    [
        "ALTER TABLE articles ADD COLUMN language TEXT",
        """
        UPDATE articles SET language = json_extract(record, '$.language')
        WHERE json_valid(record) AND json_extract(record, '$.language') IN ('vi', 'en')
        """,
    ]
)

# 13: whether a row's lease was taken over from a worker that held it and is gone (its lease
# ran out: killed, or stalled), set by each claim; the new holder charges that worker's
# attempt (ledger.charge_taken_over). Step 11's claims said so through updated_at, written
# with microseconds on a takeover (RETURNING cannot show the old row): a row claimed so and
# still leased is marked here.
MIGRATIONS.append(
    [
        """
        ALTER TABLE deliveries ADD COLUMN taken_over INTEGER NOT NULL DEFAULT 0
            CHECK (taken_over IN (0, 1))
        """,
        """
        UPDATE deliveries SET taken_over = 1
        WHERE status = 'sending' AND lease_until IS NOT NULL AND length(updated_at) = 32
        """,
    ]
)

# 14: a digest's own part of its Message-IDs, made at random when it is stored: a digest of
# the same day made again (`digest --retire`, then the day's own) gets new Message-IDs. NULL
# for the digests made before: they keep the form they were sent with,
# `<DAY.SUBSCRIBER-ID@domain>` (mail.build_digest_template).
MIGRATIONS.append(["ALTER TABLE digests ADD COLUMN message_key TEXT"])

# 15: whether a `sending` row with no expiry was parked (deferred past the retry window, kept
# from the other workers of its run: ledger._PARK), not left in doubt (its body sent, no
# reply: ledger._MARK_IN_DOUBT). Both wait for the next run; only the second may have been
# delivered, and only it counts as in flight (ledger.run_counts). Set by the park, cleared by
# the next claim. Rows parked before this step cannot be told apart: 0.
MIGRATIONS.append(
    [
        """
        ALTER TABLE deliveries ADD COLUMN parked INTEGER NOT NULL DEFAULT 0
            CHECK (parked IN (0, 1))
        """
    ]
)

# 16: the confirmation-mail cap counts per mailbox, not per address: `mailbox_key` is
# subscribers.mailbox_key of the address (no +tag; Gmail's dots dropped), so sign-ups of
# `an+1@`, `an+2@`, `a.n@`... share one allowance. Set by each sign-up and insert; NULL
# for rows stored before (each counts alone until its next sign-up). The index finds the
# mailbox's rows that were mailed within the window.
MIGRATIONS.append(
    [
        "ALTER TABLE subscribers ADD COLUMN mailbox_key TEXT",
        "CREATE INDEX subscribers_mailbox ON subscribers (mailbox_key, confirm_sent_at)",
    ]
)


def key_mailboxes(conn: Any) -> None:
    """17: give every row without one its mailbox key (see MAILBOX_KEYS_MIGRATION)."""
    # Imported here: store.subscribers imports the store package, which imports this module.
    from syndicate.store.subscribers import fill_mailbox_keys

    fill_mailbox_keys(conn)


# 17: every row gets its `mailbox_key`. Step 16 left it NULL on the rows stored before it,
# each keyed only at its next sign-up, so for up to a day the confirmation cap counted none of
# their mails: a mailbox mailed three times could be mailed three times more under other
# spellings. The key is store.subscribers.mailbox_key's (Python, the one writer), set in
# batches of rows in id order. The same function is PostgreSQL's step 17 (pg_schema.py).
MAILBOX_KEYS_MIGRATION: list[Statement] = [key_mailboxes]
MIGRATIONS.append(MAILBOX_KEYS_MIGRATION)

# 18: a story's feed id stays put when its text changes. An article's id is a hash of its
# text, so a dump corrected at the same path, or read differently by a new parser version,
# is another article; when it is the same story (store.articles.carry_over), `first_id` is
# the id the story was first stored under, whose feeds.item_id every feed item of the story
# keeps, and `revised_at` when this text replaced the earlier one (the feeds' updated time).
# NULL `first_id`: the article is its story's first text (every article stored before this
# step: their feed ids stay what they were); NULL `revised_at`: never revised. `credit` is the
# source a story is credited to ("Theo TTXVN"), beside its author, where the index pages are
# built from (from the record's `credit`, the parser's: written by the build, which reads
# every dump again for the parser version that tells credits from authors).
MIGRATIONS.append(
    [
        "ALTER TABLE articles ADD COLUMN first_id TEXT",
        "ALTER TABLE articles ADD COLUMN revised_at TEXT",
        "ALTER TABLE articles ADD COLUMN credit TEXT",
    ]
)

"""Store: subscribers, suppressions, the generated secret and the send ledger, on real SQLite."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import threading
import time
from contextlib import closing
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from syndicate.config import Settings
from syndicate.errors import SubscriberError
from syndicate.model import SubscriptionStatus
from syndicate.store import Database, ledger
from syndicate.store.bounces import ReportKind, apply_report
from syndicate.store.meta import get_erasure_key, get_secret
from syndicate.store.pg_schema import PG_FIRST_VERSION, PG_MIGRATIONS
from syndicate.store.schema import MIGRATIONS
from syndicate.store.subscribers import (
    add_subscriber,
    confirm,
    confirmed_languages,
    email_hash,
    erase,
    expire_sign_ups,
    get_by_email,
    get_by_id,
    is_suppressed,
    iter_subscribers,
    normalize_email,
    record_bounce,
    set_status,
    signup,
    stats,
    unsubscribe,
)
from tests.plugins.postgres import ENV_STORE_URL, open_store

pytestmark = pytest.mark.usefixtures("store")

CONFIRMED = SubscriptionStatus.CONFIRMED


@pytest.fixture
def db(tmp_path: Path):  # type: ignore[no-untyped-def]
    database = open_store(tmp_path / "syndicate.db")
    yield database
    database.close()


def test_normalize_email_lowercases_the_domain_only() -> None:
    assert normalize_email("  Ann.Le@Example.COM ") == "Ann.Le@example.com"


def test_normalize_email_gives_idn_domains_in_ascii() -> None:
    assert normalize_email("an@bücher.de") == "an@xn--bcher-kva.de"


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("", "email address is empty"),
        ("no-at-sign", "must have an @-sign"),
        ("an@", "something after the @-sign"),
        ("an@@example.org", "not valid"),
        ("ân@example.org", "not valid"),
        ("an@example.org\r\nBcc: x@y", "not valid"),
    ],
)
def test_normalize_email_refuses_bad_addresses_with_the_reason(bad: str, reason: str) -> None:
    with pytest.raises(SubscriberError, match=reason):
        normalize_email(bad)


def test_add_subscriber_stores_a_confirmed_subscriber(db: Database, now) -> None:  # type: ignore[no-untyped-def]
    added = add_subscriber(db, "an@example.org", name=" A\u0302\u0301n ", language="en", now=now)
    assert added.status is CONFIRMED
    assert added.confirmed_at == now
    assert added.name == "Ấn"  # NFC, trimmed
    assert get_by_id(db, added.id) == added
    assert get_by_email(db, "AN@EXAMPLE.ORG") == added


def test_a_name_is_kept_on_one_line(db: Database, now) -> None:  # type: ignore[no-untyped-def]
    added = add_subscriber(db, "an@example.org", name="Nguyễn\r\nVăn\tAn\u2028 ", now=now)
    assert added.name == "Nguyễn Văn An"


def test_addresses_are_unique_case_insensitively(db: Database, now) -> None:  # type: ignore[no-untyped-def]
    add_subscriber(db, "An@Example.org", now=now)
    with pytest.raises(SubscriberError, match="already stored"):
        add_subscriber(db, "an@example.org", now=now)
    assert get_by_email(db, "AN@example.org") is not None


def test_add_subscriber_refuses_an_unknown_language(db: Database, now) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SubscriberError, match="language 'fr' is not supported"):
        add_subscriber(db, "an@example.org", language="fr", now=now)


def test_erase_deletes_personal_data_and_keeps_a_keyed_hash(db: Database, now) -> None:  # type: ignore[no-untyped-def]
    added = add_subscriber(db, "an@example.org", name="An", now=now)
    assert get_erasure_key(db) is None  # made by the first erasure, not before
    assert erase(db, "AN@example.org", now=now) is True
    assert get_by_id(db, added.id) is None
    key = get_erasure_key(db)
    assert key is not None
    assert len(key) == 32
    rows = db.conn.execute("SELECT * FROM suppressions").fetchall()
    assert rows == [(email_hash(key, "an@example.org"), now.isoformat())]
    if db.dialect == "sqlite":  # no copy of the address anywhere in the file's contents
        dumped = "\n".join(db.conn.iterdump())
        assert "an@example.org" not in dumped.lower()
    assert is_suppressed(db, "An@Example.org")
    with pytest.raises(SubscriberError, match="was erased and cannot be added again"):
        add_subscriber(db, "an@example.org", now=now)
    assert erase(db, "an@example.org", now=now) is False
    assert get_erasure_key(db) == key


def test_ids_are_never_used_again_after_erasing_the_highest(db: Database, now) -> None:  # type: ignore[no-untyped-def]
    # A saved link names an id: the next sign-up must not inherit an erased subscriber's.
    first = add_subscriber(db, "an@example.org", now=now)
    last = add_subscriber(db, "binh@example.org", now=now)
    assert erase(db, "binh@example.org", now=now)
    added = add_subscriber(db, "chi@example.org", now=now)
    assert erase(db, "chi@example.org", now=now)
    signed_up, _ = signup(db, "dung@example.org", language="vi", now=now)
    assert (first.id, last.id, added.id, signed_up.id) == (1, 2, 3, 4)


def test_each_subscriber_gets_a_random_token_nonce_that_stays(db: Database, now) -> None:  # type: ignore[no-untyped-def]
    an = add_subscriber(db, "an@example.org", now=now)
    binh, _ = signup(db, "binh@example.org", language="vi", now=now)
    assert len(an.token_nonce) == len(binh.token_nonce) == 16
    assert an.token_nonce != binh.token_nonce
    assert "token_nonce" not in repr(an)
    left = unsubscribe(db, an.id, now=now)
    back, _ = signup(db, "an@example.org", language="en", now=now)
    assert left.token_nonce == back.token_nonce == an.token_nonce


@pytest.mark.sqlite_only
def test_a_version_3_database_keeps_its_subscribers_and_deliveries_through_migration_4(
    tmp_path: Path, now
) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "v3.db"
    conn = sqlite3.connect(path)
    for step in MIGRATIONS[:3]:
        for statement in step:
            conn.execute(statement)
    stamp = now.isoformat()
    for subscriber_id, address in ((1, "an@example.org"), (2, "binh@example.org"), (5, "em@x.org")):
        conn.execute(
            "INSERT INTO subscribers (id, email, email_key, status, created_at, updated_at) "
            "VALUES (?, ?, ?, 'confirmed', ?, ?)",
            (subscriber_id, address, address, stamp, stamp),
        )
    conn.execute(
        "INSERT INTO digests (day, created_at, article_ids) VALUES ('2024-11-01', ?, '[]')",
        (stamp,),
    )
    for subscriber_id in (2, 5):
        conn.execute(
            "INSERT INTO deliveries (digest_day, subscriber_id, status, attempts, updated_at) "
            "VALUES ('2024-11-01', ?, 'sent', 1, ?)",
            (subscriber_id, stamp),
        )
    conn.execute("PRAGMA user_version = 3")
    conn.commit()
    conn.close()
    with open_store(path) as migrated:
        assert migrated.schema_version == len(MIGRATIONS)
        kept = list(iter_subscribers(migrated))
        assert [(s.id, s.email) for s in kept] == [
            (1, "an@example.org"),
            (2, "binh@example.org"),
            (5, "em@x.org"),
        ]
        assert len({s.token_nonce for s in kept}) == 3
        assert all(len(s.token_nonce) == 16 for s in kept)
        assert ledger.day_counts(migrated, day=date(2024, 11, 1)) == {"sent": 2}
        assert migrated.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        # The highest id is erased (its delivery goes with it); the next one is new.
        assert erase(migrated, "em@x.org", now=now)
        assert ledger.day_counts(migrated, day=date(2024, 11, 1)) == {"sent": 1}
        assert add_subscriber(migrated, "giang@example.org", now=now).id == 6


def _store_from_before_every_row_was_keyed(path: Path, version: int, now: datetime) -> None:
    """A store at schema `version` (15: before mailbox_key; 16: the column, but set only by
    sign-ups since), its rows as that version's code stored them: no mailbox key. Three
    spellings of one mailbox were mailed today, two of a Gmail one, and many other
    subscribers fill it past one batch of the backfill."""
    insert = (
        "INSERT INTO subscribers (email, email_key, language, status, created_at, updated_at,"
        " confirm_sent_at, token_nonce, signed_up_at, confirm_mails)"
        " VALUES (?, ?, 'vi', 'pending', ?, ?, ?, ?, ?, ?)"
    )
    rows = []
    for minutes, address in (
        (180, "An@example.org"),
        (120, "an+1@example.org"),
        (60, "AN+news@example.org"),
        (50, "A.N+x@gmail.com"),
    ):
        stamp = (now - timedelta(minutes=minutes)).isoformat(timespec="seconds")
        key = address.casefold()
        rows.append((address, key, stamp, stamp, stamp, os.urandom(16), stamp, stamp))
    # Mailed before schema 10 kept the day's mails: only its last one's time.
    stamp = (now - timedelta(minutes=40)).isoformat(timespec="seconds")
    rows.append(("an@gmail.com", "an@gmail.com", stamp, stamp, stamp, os.urandom(16), None, None))
    stamp = (now - timedelta(days=30)).isoformat(timespec="seconds")
    for n in range(2500):
        address = f"u{n}+tag@example.org"
        rows.append((address, address, stamp, stamp, None, os.urandom(16), None, None))
    url = os.environ.get(ENV_STORE_URL)
    if url:
        with psycopg.connect(url, autocommit=True) as pg:
            for step in range(PG_FIRST_VERSION, version + 1):
                for statement in PG_MIGRATIONS[step]:
                    pg.execute(statement)
            pg.execute("UPDATE syndicate_schema SET version = %s", (version,))
            with pg.cursor() as cursor:
                cursor.executemany(insert.replace("?", "%s"), rows)
        return
    with closing(sqlite3.connect(path, isolation_level=None)) as lite:
        for step in MIGRATIONS[:version]:
            for statement in step:
                lite.execute(statement)
        lite.executemany(insert, rows)
        lite.execute(f"PRAGMA user_version = {version}")
    path.chmod(0o600)


@pytest.mark.parametrize("version", [15, 16])
def test_an_older_store_upgrades_with_every_row_keyed_so_the_cap_counts_its_mails(
    tmp_path: Path,
    now,  # type: ignore[no-untyped-def]
    version: int,
) -> None:
    # Rows stored before schema 16 had no mailbox key until their next sign-up, and the cap
    # counted none of their mails: for up to a day after the upgrade, a mailbox mailed three
    # times already could be mailed three times more under other spellings.
    path = tmp_path / "old.db"
    _store_from_before_every_row_was_keyed(path, version, now)
    with open_store(path) as db:
        assert db.schema_version == len(MIGRATIONS)
        # Three mails today to the mailbox of an@example.org: another spelling gets none.
        assert signup(db, "an+2@example.org", language="vi", now=now)[1] is False
        # Two at Gmail's an@gmail.com: a third spelling is mailed, a fourth is not.
        assert signup(db, "a.n@googlemail.com", language="vi", now=now)[1] is True
        assert signup(db, "an+y@gmail.com", language="vi", now=now)[1] is False
        unkeyed = "SELECT count(*) FROM subscribers WHERE mailbox_key IS NULL"
        assert db.conn.execute(unkeyed).fetchone()[0] == 0
        keys = dict(db.conn.execute("SELECT email, mailbox_key FROM subscribers").fetchall())
        assert keys["An@example.org"] == keys["an+1@example.org"] == "an@example.org"
        assert keys["AN+news@example.org"] == "an@example.org"
        assert keys["A.N+x@gmail.com"] == keys["an@gmail.com"] == "an@gmail.com"
        assert keys["u2499+tag@example.org"] == "u2499@example.org"


def test_erasures_do_not_depend_on_the_signing_secret(
    tmp_path: Path, settings: Settings, now
) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "s.db"
    with open_store(path) as db:
        signing = get_secret(settings, db)
        erase(db, "an@example.org", now=now)
        key = get_erasure_key(db)
        assert key is not None
        assert key != signing
        rows = db.conn.execute("SELECT email_hash FROM suppressions").fetchall()
        assert rows == [(email_hash(key, "an@example.org"),)]
        assert email_hash(signing, "an@example.org") != rows[0][0]
    rotated = dataclasses.replace(settings, env_secret="a-new-signing-secret")
    with open_store(path) as db:
        assert get_secret(rotated, db) == b"a-new-signing-secret"
        assert is_suppressed(db, "AN@example.org")
        with pytest.raises(SubscriberError, match="was erased"):
            add_subscriber(db, "an@example.org", now=now)
        assert get_erasure_key(db) == key


def test_is_suppressed_before_any_erasure_creates_no_key(db: Database) -> None:
    assert is_suppressed(db, "an@example.org") is False
    assert db.conn.execute("SELECT count(*) FROM meta").fetchone()[0] == 0


def test_signup_stores_pending_and_limits_resends(db: Database, now) -> None:  # type: ignore[no-untyped-def]
    sub, send = signup(db, "an@example.org", language="en", now=now)
    assert (sub.status, sub.language, send) == (SubscriptionStatus.PENDING, "en", True)
    _, send = signup(db, "an@example.org", language="en", now=now + timedelta(minutes=5))
    assert send is False
    _, send = signup(db, "an@example.org", language="en", now=now + timedelta(minutes=10))
    assert send is True
    confirmed = confirm(db, sub.id, now=now + timedelta(minutes=11))
    assert confirmed.status is CONFIRMED
    again, send = signup(db, "an@example.org", language="vi", now=now + timedelta(hours=1))
    assert (again.status, send) == (CONFIRMED, False)


def test_signup_after_unsubscribing_starts_over_as_pending(db: Database, now) -> None:  # type: ignore[no-untyped-def]
    added = add_subscriber(db, "an@example.org", now=now)
    unsubscribe(db, added.id, now=now)
    sub, send = signup(db, "an@example.org", language="en", now=now + timedelta(minutes=1))
    assert (sub.status, sub.language, send) == (SubscriptionStatus.PENDING, "en", True)


@pytest.mark.parametrize(
    "state",
    [
        "new",
        "pending-recent",
        "pending-due",
        "pending-capped",
        "new-mailbox-capped",
        "confirmed",
        "unsubscribed",
        "bounced",
    ],
)
@pytest.mark.sqlite_only
def test_every_sign_up_writes_exactly_one_row_whatever_the_address_state(
    db: Database,
    now,  # type: ignore[no-untyped-def]
    state: str,
) -> None:
    """The web app stores a sign-up before it answers: the write must not tell the state."""
    address = "an@example.org"
    if state == "pending-capped":  # three mails today already: this one mails nothing
        for minutes in (60, 40, 20):
            assert signup(db, address, language="vi", now=now - timedelta(minutes=minutes))[1]
    elif state == "new-mailbox-capped":  # three mails today to its mailbox's other spellings
        for minutes in (60, 40, 20):
            other = f"an+{minutes}@example.org"
            assert signup(db, other, language="vi", now=now - timedelta(minutes=minutes))[1]
    elif state.startswith("pending"):
        minutes = 1 if state == "pending-recent" else 11
        signup(db, address, language="vi", now=now - timedelta(minutes=minutes))
    elif state != "new":
        added = add_subscriber(db, address, now=now)
        if state != "confirmed":
            set_status(db, added.id, SubscriptionStatus(state), now=now)
    before = db.conn.total_changes
    signup(db, address, language="en", now=now)
    assert db.conn.total_changes - before == 1
    stamped = db.conn.execute(
        "SELECT signed_up_at FROM subscribers WHERE email = ?", (address,)
    ).fetchone()[0]
    assert stamped == now.isoformat(timespec="seconds")


@pytest.mark.parametrize(
    ("other", "same_mailbox"),
    [
        ("An@Example.org", True),
        ("an+news@example.org", True),
        ("an+@example.org", True),
        ("a.n@example.org", False),  # dots matter but at Gmail
        ("an-news@example.org", False),  # '-' is a delimiter only on some servers
        ("an@example.net", False),
        ("anh@example.org", False),
    ],
)
def test_the_confirmation_cap_counts_the_spellings_of_one_mailbox_together(
    db: Database,
    now,  # type: ignore[no-untyped-def]
    other: str,
    same_mailbox: bool,
) -> None:
    for minutes in (60, 40, 20):
        assert signup(db, "an@example.org", language="vi", now=now - timedelta(minutes=minutes))[1]
    assert signup(db, other, language="vi", now=now)[1] is not same_mailbox


def test_at_gmail_the_cap_ignores_dots_and_googlemail_is_gmail(db: Database, now) -> None:  # type: ignore[no-untyped-def]
    for minutes, address in (
        (60, "an.le@gmail.com"),
        (40, "anle+x@gmail.com"),
        (20, "a.nle@gmail.com"),
    ):
        assert signup(db, address, language="vi", now=now - timedelta(minutes=minutes))[1]
    assert signup(db, "A.n.L.e@googlemail.com", language="vi", now=now)[1] is False
    # A day after the first mail, the window has moved past it.
    assert signup(db, "anle@gmail.com", language="vi", now=now + timedelta(hours=23))[1] is True


def test_addresses_whose_local_part_starts_with_a_plus_are_mailboxes_of_their_own(
    db: Database,
    now,  # type: ignore[no-untyped-def]
) -> None:
    # "+1@example.org" and "+2@example.org" are two mailboxes (a '+' at the start delimits
    # no tag): their key was "@example.org", one allowance for every such address there.
    for minutes, address in (
        (60, "+1@example.org"),
        (40, "+2@example.org"),
        (20, "+3@example.org"),
    ):
        assert signup(db, address, language="vi", now=now - timedelta(minutes=minutes))[1]
    assert signup(db, "+4@example.org", language="vi", now=now)[1] is True
    for minutes in (1, 2):  # a tag after such a local part is a tag of that mailbox
        assert signup(db, f"+4+{minutes}@example.org", language="vi", now=now)[1] is True
    assert signup(db, "+4+3@example.org", language="vi", now=now)[1] is False


def test_lapsed_sign_ups_go_in_batches_of_short_transactions(db: Database, now) -> None:  # type: ignore[no-untyped-def]
    for n in range(7):
        signup(db, f"a{n}@example.org", language="vi", now=now - timedelta(hours=49))
    kept = signup(db, "b@example.org", language="vi", now=now - timedelta(hours=47))[0]
    signup(db, "a9@example.org", language="vi", now=now - timedelta(hours=49))
    commits = []
    transaction = db.transaction

    def counted(**options):  # type: ignore[no-untyped-def]
        commits.append(options)
        return transaction(**options)

    db.transaction = counted  # type: ignore[method-assign]
    assert expire_sign_ups(db, now=now, link_hours=48, batch=3) == (8, 0)
    del db.transaction
    # 3 + 3 + 2 deleted: the last batch short, so no fourth; then one (empty) of rows put back
    assert len(commits) == 4
    assert [s.id for s in iter_subscribers(db)] == [kept.id]
    assert expire_sign_ups(db, now=now, link_hours=48, batch=3) == (0, 0)


def test_an_imported_pending_subscriber_who_signs_up_through_the_form_keeps_the_row(
    db: Database,
    now,  # type: ignore[no-untyped-def]
) -> None:
    # expire_sign_ups keeps a row imported as pending; but the person's own sign-up through
    # the form stamped signed_up_at and left updated_at as stored, so 48 hours later the
    # imported row (its name, its import time) was deleted as a sign-up of the form's.
    imported = add_subscriber(
        db,
        "lan@example.org",
        name="Lan",
        status=SubscriptionStatus.PENDING,
        now=now - timedelta(days=30),
    )
    signup(db, "lan@example.org", language="vi", now=now - timedelta(hours=49))
    signup(db, "form@example.org", language="vi", now=now - timedelta(hours=49))
    assert expire_sign_ups(db, now=now, link_hours=48) == (1, 0)
    assert [(s.id, s.name) for s in iter_subscribers(db)] == [(imported.id, "Lan")]


def test_a_sign_up_of_the_moment_the_lapse_deletes_its_row_keeps_the_row(
    db: Database,
    now,  # type: ignore[no-untyped-def]
) -> None:
    # The lapse's DELETE re-checked only `id IN (subquery)` on a row another transaction had
    # changed meanwhile (PostgreSQL, READ COMMITTED: the subquery is not run again), so a
    # sign-up committed while the DELETE waited for its row lock lost its row: the reader
    # then clicked a link to a deleted subscriber. Here the sign-up holds the row until the
    # DELETE waits on it, then commits.
    url = os.environ.get(ENV_STORE_URL)
    if not url:
        pytest.skip("on SQLite the lapse and a sign-up take turns on the one write lock")
    row = signup(db, "lan@example.org", language="vi", now=now - timedelta(hours=49))[0]
    stamp = now.astimezone(UTC).isoformat(timespec="seconds")
    with psycopg.connect(url) as sign_up:  # the sign-up's transaction, left open
        sign_up.execute(
            "UPDATE subscribers SET signed_up_at = %s, confirm_sent_at = %s WHERE id = %s",
            (stamp, stamp, row.id),
        )
        lapsed: list[object] = []
        lapse = threading.Thread(
            target=lambda: lapsed.append(expire_sign_ups(db, now=now, link_hours=48))
        )
        lapse.start()
        try:
            deadline = time.monotonic() + 10
            while not sign_up.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()[
                0
            ]:
                assert time.monotonic() < deadline, "the lapse never waited on the row"
                time.sleep(0.01)
            sign_up.commit()
        finally:
            lapse.join(10)
    assert lapsed == [(0, 0)]
    assert get_by_id(db, row.id) is not None


_STAMPS = (
    "SELECT status, created_at, confirmed_at, unsubscribed_at, bounced_at, complained_at, "
    "bounce_count FROM subscribers WHERE email = ?"
)


def _leave(db: Database, subscriber_id: int, left: str, *, now: datetime) -> None:
    if left == "unsubscribed":
        unsubscribe(db, subscriber_id, now=now)
    elif left == "bounced":
        assert record_bounce(db, subscriber_id, limit=1, now=now)
    else:
        apply_report(
            db,
            key=f"report-{subscriber_id}",
            subscriber_id=subscriber_id,
            kind=ReportKind.COMPLAINT,
            day=None,
            detail="abuse",
            bounce_limit=3,
            now=now,
        )


@pytest.mark.parametrize("left", ["unsubscribed", "bounced", "complained"])
def test_a_leaver_who_signs_up_again_and_never_confirms_is_back_as_they_were_after_the_lapse(
    db: Database,
    now,  # type: ignore[no-untyped-def]
    left: str,
) -> None:
    # The form made them pending again; unconfirmed, they stayed pending for ever (the lapse
    # deletes only rows the form made) and what they were before was not kept.
    added = add_subscriber(db, "an@example.org", now=now - timedelta(days=30))
    _leave(db, added.id, left, now=now - timedelta(days=10))
    before = db.conn.execute(_STAMPS, ("an@example.org",)).fetchone()
    assert before[0] == left
    again, mailed = signup(db, "an@example.org", language="en", now=now - timedelta(hours=49))
    assert (again.status, mailed) == (SubscriptionStatus.PENDING, True)
    # Within its hours (and the cap's day) it waits.
    assert expire_sign_ups(db, now=now - timedelta(hours=1), link_hours=48) == (0, 0)
    assert get_by_id(db, added.id).status is SubscriptionStatus.PENDING  # type: ignore[union-attr]
    assert expire_sign_ups(db, now=now, link_hours=48) == (0, 1)
    assert db.conn.execute(_STAMPS, ("an@example.org",)).fetchone() == before
    assert expire_sign_ups(db, now=now, link_hours=48) == (0, 0)
    # A new sign-up through the form is a new one: pending, and mailed.
    assert signup(db, "an@example.org", language="vi", now=now)[1] is True


def test_an_address_imported_as_complained_is_back_as_complained_after_the_lapse(
    db: Database,
    now,  # type: ignore[no-untyped-def]
) -> None:
    # Stored as complained (an import), it had no complained_at, so nothing said what it
    # was once the form made it pending.
    added = add_subscriber(
        db, "an@example.org", status=SubscriptionStatus.COMPLAINED, now=now - timedelta(days=9)
    )
    signup(db, "an@example.org", language="vi", now=now - timedelta(days=3))
    assert expire_sign_ups(db, now=now, link_hours=48) == (0, 1)
    assert get_by_id(db, added.id).status is SubscriptionStatus.COMPLAINED  # type: ignore[union-attr]


def test_the_lapse_puts_back_the_status_a_rejoined_address_had_last(db: Database, now) -> None:  # type: ignore[no-untyped-def]
    # Bounced, back through the form and confirmed, then unsubscribed: the last thing it was
    # is unsubscribed, though it bounced once too.
    added = add_subscriber(db, "an@example.org", now=now - timedelta(days=90))
    _leave(db, added.id, "bounced", now=now - timedelta(days=60))
    signup(db, "an@example.org", language="vi", now=now - timedelta(days=59))
    confirm(db, added.id, now=now - timedelta(days=59))
    _leave(db, added.id, "unsubscribed", now=now - timedelta(days=20))
    signup(db, "an@example.org", language="vi", now=now - timedelta(days=3))
    assert expire_sign_ups(db, now=now, link_hours=48) == (0, 1)
    assert get_by_id(db, added.id).status is SubscriptionStatus.UNSUBSCRIBED  # type: ignore[union-attr]


def test_a_form_row_from_before_signed_up_at_lapses_after_a_repeat_sign_up(
    db: Database,
    now,  # type: ignore[no-untyped-def]
) -> None:
    # Rows the form made before schema step 8 have no signed_up_at (but, as every form row
    # then, a confirm_sent_at; an imported row has neither): a repeat sign-up stamped
    # updated_at, as for an imported row, so it never lapsed.
    old = signup(db, "old@example.org", language="vi", now=now - timedelta(days=9))[0]
    with db.transaction() as conn:
        conn.execute("UPDATE subscribers SET signed_up_at = NULL WHERE id = ?", (old.id,))
    # An imported row with a name (the form stores none) that the old form mailed keeps it.
    imported = add_subscriber(
        db, "lan@example.org", name="Lan", status=SubscriptionStatus.PENDING, now=old.created_at
    )
    with db.transaction() as conn:
        conn.execute(
            "UPDATE subscribers SET confirm_sent_at = updated_at WHERE id = ?", (imported.id,)
        )
    for address in ("old@example.org", "lan@example.org"):
        signup(db, address, language="vi", now=now - timedelta(hours=49))
    assert expire_sign_ups(db, now=now, link_hours=48) == (1, 0)
    assert [s.id for s in iter_subscribers(db)] == [imported.id]


def test_a_form_row_from_before_signed_up_at_lapses_without_signing_up_again(
    db: Database,
    now,  # type: ignore[no-untyped-def]
) -> None:
    # Only a repeat sign-up stamped signed_up_at on such a row: one that never came back
    # stayed pending for ever.
    old = signup(db, "old@example.org", language="vi", now=now - timedelta(days=9))[0]
    recent = signup(db, "recent@example.org", language="vi", now=now - timedelta(hours=2))[0]
    with db.transaction() as conn:
        conn.execute(
            "UPDATE subscribers SET signed_up_at = NULL WHERE id IN (?, ?)", (old.id, recent.id)
        )
    # Imported as pending: no mail (import sends none), or a name (the form stores none).
    kept = [
        add_subscriber(
            db, "lan@example.org", status=SubscriptionStatus.PENDING, now=old.created_at
        ),
        add_subscriber(
            db, "mai@example.org", name="Mai", status=SubscriptionStatus.PENDING, now=old.created_at
        ),
    ]
    with db.transaction() as conn:
        conn.execute(
            "UPDATE subscribers SET confirm_sent_at = updated_at WHERE id = ?", (kept[1].id,)
        )
    assert expire_sign_ups(db, now=now, link_hours=48) == (1, 0)
    assert [s.id for s in iter_subscribers(db)] == [recent.id, *(k.id for k in kept)]


def test_an_imported_row_mailed_by_the_form_before_signed_up_at_is_kept(
    db: Database,
    now,  # type: ignore[no-untyped-def]
) -> None:
    # Before signed_up_at was kept, a repeat sign-up of a pending row set its
    # confirm_sent_at alone (not updated_at): a row imported as pending, without a name,
    # whose person then used the form, looked like a form row that never came back, and
    # was deleted. A form row of then was mailed as it was stored: confirm_sent_at is its
    # created_at.
    imported = add_subscriber(
        db, "lan@example.org", status=SubscriptionStatus.PENDING, now=now - timedelta(days=20)
    )
    old = signup(db, "old@example.org", language="vi", now=now - timedelta(days=9))[0]
    with db.transaction() as conn:
        conn.execute("UPDATE subscribers SET signed_up_at = NULL WHERE id = ?", (old.id,))
        conn.execute(
            "UPDATE subscribers SET confirm_sent_at = ? WHERE id = ?",
            ((now - timedelta(days=9)).astimezone(UTC).isoformat(timespec="seconds"), imported.id),
        )
    assert expire_sign_ups(db, now=now, link_hours=48) == (1, 0)
    assert [s.id for s in iter_subscribers(db)] == [imported.id]


def _bounce_confirmation(db: Database, subscriber_id: int, *, now: datetime) -> None:
    """A hard bounce of the subscriber's confirmation mail, as `syndicate bounces` applies it."""
    assert apply_report(
        db,
        key=f"dsn-{subscriber_id}-{now.isoformat()}",
        subscriber_id=subscriber_id,
        kind=ReportKind.HARD,
        day=None,
        detail="5.1.1",
        bounce_limit=3,
        now=now,
        confirmation=True,
    )


def test_a_sign_up_whose_confirmation_bounced_goes_when_it_would_have_lapsed(
    db: Database,
    now,  # type: ignore[no-untyped-def]
) -> None:
    # The hard bounce of its confirmation mail made the sign-up `bounced`, and the lapse
    # deletes only pending rows: an address that never agreed to anything was kept for ever.
    signed_up = now - timedelta(hours=49)
    gone = signup(db, "khong-co@example.org", language="vi", now=signed_up)[0]
    twin = signup(db, "lan@example.org", language="vi", now=signed_up)[0]  # nothing bounced
    _bounce_confirmation(db, gone.id, now=signed_up + timedelta(minutes=5))
    assert get_by_id(db, gone.id).status is SubscriptionStatus.BOUNCED  # type: ignore[union-attr]
    # Not before a pending sign-up of the same moment goes: its link and the cap's day.
    assert expire_sign_ups(db, now=now - timedelta(hours=1), link_hours=48) == (0, 0)
    assert expire_sign_ups(db, now=now, link_hours=48) == (2, 0)
    assert get_by_id(db, gone.id) is None
    assert get_by_id(db, twin.id) is None
    # Its bounce goes with it (as a lapsed sign-up's records do); no hash is kept (a lapse
    # keeps none: only `erase` does), and the form may sign the address up again.
    assert db.conn.execute("SELECT count(*) FROM mail_events").fetchone()[0] == 0
    assert stats(db)["erased"] == 0
    assert signup(db, "khong-co@example.org", language="vi", now=now)[1] is True


def test_a_sign_up_whose_confirmations_bounced_twice_goes_at_its_last_lapse(
    db: Database,
    now,  # type: ignore[no-untyped-def]
) -> None:
    # Bounced, then back through the form (pending again, as one who left), then left
    # unconfirmed: the lapse put it back to `bounced`, for ever.
    first = now - timedelta(days=5)
    row = signup(db, "khong-co@example.org", language="vi", now=first)[0]
    _bounce_confirmation(db, row.id, now=first + timedelta(minutes=5))
    again = now - timedelta(hours=49)
    assert signup(db, "khong-co@example.org", language="en", now=again)[1] is True
    assert get_by_id(db, row.id).status is SubscriptionStatus.PENDING  # type: ignore[union-attr]
    assert expire_sign_ups(db, now=now - timedelta(hours=1), link_hours=48) == (0, 0)
    assert expire_sign_ups(db, now=now, link_hours=48) == (1, 0)
    assert get_by_id(db, row.id) is None
    # The same when the second confirmation bounced too.
    row = signup(db, "mai@example.org", language="vi", now=first)[0]
    _bounce_confirmation(db, row.id, now=first + timedelta(minutes=5))
    signup(db, "mai@example.org", language="vi", now=again)
    _bounce_confirmation(db, row.id, now=again + timedelta(minutes=5))
    assert get_by_id(db, row.id).status is SubscriptionStatus.BOUNCED  # type: ignore[union-attr]
    assert expire_sign_ups(db, now=now, link_hours=48) == (1, 0)
    assert list(iter_subscribers(db)) == []


def test_a_sign_up_whose_confirmation_bounced_in_its_second_goes_too(
    db: Database,
    now,  # type: ignore[no-untyped-def]
) -> None:
    # A bounce piped back from the mail server (`syndicate bounces -`) is recorded in the
    # second of the sign-up: stamped as an import's `bounced` is, it was kept for ever.
    signed_up = now - timedelta(hours=49)
    row = signup(db, "khong-co@example.org", language="vi", now=signed_up)[0]
    _bounce_confirmation(db, row.id, now=signed_up)
    assert get_by_id(db, row.id).status is SubscriptionStatus.BOUNCED  # type: ignore[union-attr]
    assert expire_sign_ups(db, now=now, link_hours=48) == (1, 0)
    assert list(iter_subscribers(db)) == []


def test_a_bounced_address_that_had_agreed_or_was_imported_keeps_its_row(
    db: Database,
    now,  # type: ignore[no-untyped-def]
) -> None:
    # Told apart from a sign-up that never agreed: one who confirmed and later bounced (a
    # digest refused, or a late bounce of a confirmation after confirming), one who left
    # first, and rows an import made (`bounced`, or `pending` then signed up through the
    # form) stay, as records that stop mail.
    long_ago = now - timedelta(days=30)
    confirmed = signup(db, "da-xac-nhan@example.org", language="vi", now=long_ago)[0]
    confirm(db, confirmed.id, now=long_ago + timedelta(minutes=1))
    assert record_bounce(db, confirmed.id, limit=1, now=long_ago + timedelta(days=1))
    left = signup(db, "da-roi@example.org", language="vi", now=long_ago)[0]
    confirm(db, left.id, now=long_ago + timedelta(minutes=1))
    unsubscribe(db, left.id, now=long_ago + timedelta(days=1))
    signup(db, "da-roi@example.org", language="vi", now=long_ago + timedelta(days=2))
    _bounce_confirmation(db, left.id, now=long_ago + timedelta(days=2, minutes=5))
    imported = add_subscriber(
        db, "nhap@example.org", status=SubscriptionStatus.BOUNCED, now=long_ago
    )
    signup(db, "nhap@example.org", language="vi", now=long_ago)  # the same second
    pending = add_subscriber(db, "cho@example.org", status=SubscriptionStatus.PENDING, now=long_ago)
    signup(db, "cho@example.org", language="vi", now=long_ago + timedelta(days=1))
    _bounce_confirmation(db, pending.id, now=long_ago + timedelta(days=1, minutes=5))
    assert expire_sign_ups(db, now=now, link_hours=48) == (0, 1)  # the import, put back
    kept = {s.email: s.status for s in iter_subscribers(db)}
    assert kept == {
        "da-xac-nhan@example.org": SubscriptionStatus.BOUNCED,
        "da-roi@example.org": SubscriptionStatus.BOUNCED,
        "nhap@example.org": SubscriptionStatus.BOUNCED,
        "cho@example.org": SubscriptionStatus.BOUNCED,
    }
    assert imported.id in {s.id for s in iter_subscribers(db)}


@pytest.mark.parametrize("left", ["unsubscribed", "bounced", "complained"])
def test_a_leaver_stored_without_its_stamp_is_back_as_it_was_after_the_lapse(
    db: Database,
    now,  # type: ignore[no-untyped-def]
    left: str,
) -> None:
    # Imported as complained before complained_at was written: signed up again and never
    # confirmed, no stamp said what it had been, so it stayed pending for ever.
    added = add_subscriber(
        db, "an@example.org", status=SubscriptionStatus(left), now=now - timedelta(days=9)
    )
    with db.transaction() as conn:
        conn.execute(
            f"UPDATE subscribers SET {left}_at = NULL WHERE id = ?",  # noqa: S608
            (added.id,),
        )
    signup(db, "an@example.org", language="vi", now=now - timedelta(days=3))
    assert expire_sign_ups(db, now=now, link_hours=48) == (0, 1)
    back = db.conn.execute(_STAMPS, ("an@example.org",)).fetchone()
    assert back[0] == left
    assert [stamp for stamp in back[3:6] if stamp] == [added.created_at.isoformat()]


def test_stale_confirm_link_does_not_resubscribe(db: Database, now) -> None:  # type: ignore[no-untyped-def]
    sub, _ = signup(db, "an@example.org", language="vi", now=now)
    unsubscribe(db, sub.id, now=now)
    assert confirm(db, sub.id, now=now).status is SubscriptionStatus.UNSUBSCRIBED


def test_unsubscribe_is_idempotent_and_keeps_the_first_time(db: Database, now) -> None:  # type: ignore[no-untyped-def]
    added = add_subscriber(db, "an@example.org", now=now)
    first = unsubscribe(db, added.id, now=now)
    second = unsubscribe(db, added.id, now=now + timedelta(days=1))
    assert first.unsubscribed_at == second.unsubscribed_at == now
    with pytest.raises(SubscriberError, match="subscriber 999 does not exist"):
        unsubscribe(db, 999, now=now)


def test_bounces_count_up_to_the_limit(db: Database, now) -> None:  # type: ignore[no-untyped-def]
    added = add_subscriber(db, "an@example.org", now=now)
    assert record_bounce(db, added.id, limit=2, now=now) is False
    assert record_bounce(db, added.id, limit=2, now=now) is True
    bounced = get_by_id(db, added.id)
    assert bounced is not None
    assert (bounced.status, bounced.bounce_count, bounced.bounced_at) == (
        SubscriptionStatus.BOUNCED,
        2,
        now,
    )
    assert set_status(db, added.id, CONFIRMED, now=now).bounce_count == 0


def test_iter_subscribers_pages_in_id_order(db: Database, now) -> None:  # type: ignore[no-untyped-def]
    for i in range(7):
        add_subscriber(db, f"u{i}@example.org", language="vi" if i % 2 else "en", now=now)
    unsubscribe(db, 3, now=now)
    assert [s.id for s in iter_subscribers(db, batch=2)] == list(range(1, 8))
    assert [s.id for s in iter_subscribers(db, status=CONFIRMED, batch=3)] == [1, 2, 4, 5, 6, 7]
    assert confirmed_languages(db) == ["en", "vi"]
    assert stats(db) == {
        "pending": 0,
        "confirmed": 6,
        "unsubscribed": 1,
        "bounced": 0,
        "complained": 0,
        "total": 7,
        "erased": 0,
    }


def test_secret_is_generated_once_and_kept(tmp_path: Path, settings: Settings) -> None:
    path = tmp_path / "s.db"
    with open_store(path) as first:
        secret = get_secret(settings, first)
        assert len(secret) == 32
        assert get_secret(settings, first) == secret
    with open_store(path) as again:
        assert get_secret(settings, again) == secret


def test_secret_from_the_environment_wins(tmp_path: Path, settings: Settings) -> None:
    configured = dataclasses.replace(settings, env_secret="from-env")
    with open_store(tmp_path / "s.db") as db:
        assert get_secret(configured, db) == b"from-env"
        assert db.conn.execute("SELECT count(*) FROM meta").fetchone()[0] == 0


def _digest(db: Database, day: date) -> None:
    with db.transaction() as conn:
        conn.execute(
            "INSERT INTO digests (day, created_at, article_ids) VALUES (?, ?, '[]')",
            (day.isoformat(), "2024-11-01T06:00:00+00:00"),
        )


def test_ledger_owes_the_digest_to_confirmed_subscribers_not_yet_sent(db: Database, now) -> None:  # type: ignore[no-untyped-def]
    day = date(2024, 11, 1)
    _digest(db, day)
    for i in range(6):
        add_subscriber(db, f"u{i}@example.org", now=now)
    unsubscribe(db, 6, now=now)
    owed = ledger.owed_page(db, day=day, after=0, limit=100, max_attempts=2)
    assert [r.subscriber_id for r in owed] == [1, 2, 3, 4, 5]
    ledger.mark_sending(db, day=day, subscriber_ids=[1, 2, 3, 4], now=now)
    ledger.mark_sent(db, day=day, subscriber_id=1, now=now)
    ledger.mark_failed(db, day=day, subscriber_id=2, reply="550 no", now=now)
    ledger.mark_failed(db, day=day, subscriber_id=3, reply="451 later", now=now)
    ledger.mark_sending(db, day=day, subscriber_ids=[3], now=now)
    ledger.mark_failed(db, day=day, subscriber_id=3, reply="451 later", now=now)
    # 1 sent; 3 out of attempts; 2 failed once; 4 left 'sending' by a crash; 5 never tried.
    owed = ledger.owed_page(db, day=day, after=0, limit=100, max_attempts=2)
    assert [(r.subscriber_id, r.attempts) for r in owed] == [(2, 1), (4, 0), (5, 0)]
    assert ledger.owed_page(db, day=day, after=2, limit=1, max_attempts=2)[0].subscriber_id == 4
    assert ledger.count_owed(db, day=day, max_attempts=2) == 3
    assert ledger.count_skipped(db, day=day, max_attempts=2) == 2
    assert ledger.day_counts(db, day=day) == {"sent": 1, "failed": 2, "sending": 1}
    assert ledger.get_delivery(db, day=day, subscriber_id=3) == ("failed", 2, "451 later")


def test_ledger_cutoff_leaves_out_subscribers_confirmed_after_it(db: Database, now) -> None:  # type: ignore[no-untyped-def]
    day = date(2024, 11, 1)
    _digest(db, day)
    for i in range(3):
        add_subscriber(db, f"u{i}@example.org", now=now + timedelta(hours=i))
    cutoff = now + timedelta(hours=1)  # u0 before, u1 at the same second, u2 after
    owed = ledger.owed_page(db, day=day, after=0, limit=10, max_attempts=2, confirmed_by=cutoff)
    assert [r.subscriber_id for r in owed] == [1, 2]
    assert ledger.count_owed(db, day=day, max_attempts=2, confirmed_by=cutoff) == 2
    assert ledger.count_owed(db, day=day, max_attempts=2) == 3
    ledger.mark_sending(db, day=day, subscriber_ids=[1, 3], now=now)
    ledger.mark_sent(db, day=day, subscriber_id=1, now=now)
    ledger.mark_sent(db, day=day, subscriber_id=3, now=now)
    assert ledger.count_skipped(db, day=day, max_attempts=2, confirmed_by=cutoff) == 1
    assert ledger.count_skipped(db, day=day, max_attempts=2) == 2
    # Confirming again (after leaving) moves confirmed_at past the cutoff too.
    unsubscribe(db, 2, now=now + timedelta(hours=3))
    set_status(db, 2, CONFIRMED, now=now + timedelta(hours=4))
    assert ledger.count_owed(db, day=day, max_attempts=2, confirmed_by=cutoff) == 0


def test_an_address_gets_at_most_three_confirmations_in_any_day(db: Database, now) -> None:  # type: ignore[no-untyped-def]
    """Signing up someone else's address every re-send window must not mail them forever."""
    sent = []
    for step in range(12):  # every 11 minutes for two hours: each one due
        _, send = signup(
            db, "an@example.org", language="vi", now=now + timedelta(minutes=11 * step)
        )
        sent.append(send)
    assert sent == [True, True, True] + [False] * 9
    # Rolling: the first mail leaves the window 24 h after it was sent, the next after that.
    assert signup(db, "an@example.org", language="vi", now=now + timedelta(hours=24))[1] is True
    later = now + timedelta(hours=24, minutes=10)
    assert signup(db, "an@example.org", language="vi", now=later)[1] is False
    later = now + timedelta(hours=24, minutes=11)
    assert signup(db, "an@example.org", language="vi", now=later)[1] is True


@pytest.mark.parametrize("status", ["unsubscribed", "bounced", "complained"])
def test_the_form_brings_a_left_address_back_to_pending_but_within_the_cap(
    db: Database,
    now,  # type: ignore[no-untyped-def]
    status: str,
) -> None:
    sub, _ = signup(db, "an@example.org", language="vi", now=now)
    sent = []
    for step in range(1, 5):
        set_status(db, sub.id, SubscriptionStatus(status), now=now)
        again, send = signup(db, "an@example.org", language="en", now=now + timedelta(minutes=step))
        assert again.status is SubscriptionStatus.PENDING  # today's rule: pending again
        sent.append(send)
    assert sent == [True, True, False, False]  # the first sign-up's mail counts too

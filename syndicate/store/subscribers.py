"""Store: subscribers and suppressions. The only code that runs SQL on these tables.

Addresses are checked with email-validator and kept in their normalised ASCII
form; `email_key` (case-folded) makes them unique case-insensitively. Erased
addresses leave only a hash in `suppressions`, keyed with the database's own
erasure key (meta), never with the signing secret: rotating that secret must
not let an erased address back in.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from syndicate.errors import StoreError, SubscriberError
from syndicate.i18n import LANGUAGES
from syndicate.model import Subscriber, SubscriptionStatus
from syndicate.store import DB_ERRORS, Database, store_error
from syndicate.store.meta import get_erasure_key
from syndicate.text import clean_line, nfc

_NAME_LIMIT = 200
_COLUMNS = (
    "id, email, name, language, status, created_at, confirmed_at, unsubscribed_at, "
    "bounced_at, bounce_count, token_nonce"
)
# Bytes of a subscriber's token nonce (tokens.NONCE_BYTES; the schema checks the length).
_NONCE_BYTES = 16
# Confirmation mails one mailbox gets at most in any CONFIRM_MAILS_WINDOW, whoever signs
# it up, however often and under however many spellings (mailbox_key): repeated sign-ups
# of someone else's address must not mail them without end (bounced and complained
# addresses brought back by the form included).
CONFIRM_MAILS_PER_DAY = 3
CONFIRM_MAILS_WINDOW = timedelta(hours=24)
# Rows keyed at a time by `fill_mailbox_keys` (schema step 17).
MAILBOX_KEY_BATCH = 1000
# Sign-ups deleted (or put back) at a time by `expire_sign_ups`, each batch one short transaction.
EXPIRE_BATCH = 500
# Past the link's hours, a little longer: a token may be dated up to 15 s after its sign-up
# (tokens.make_token), and its page must say "expired", not "cannot be used".
_EXPIRY_MARGIN = timedelta(minutes=1)
# Domains whose mailboxes ignore dots in the local part, and the domain each is one with.
_DOTLESS_DOMAINS = {"gmail.com": "gmail.com", "googlemail.com": "gmail.com"}

# One subscriber by its case-folded address.
_SELECT_BY_KEY = f"SELECT {_COLUMNS} FROM subscribers WHERE email_key = ?"  # noqa: S608
# One subscriber by id.
_SELECT_BY_ID = f"SELECT {_COLUMNS} FROM subscribers WHERE id = ?"  # noqa: S608
# A new subscriber; the time of the status it starts in is stamped with :now.
_INSERT = """
    INSERT INTO subscribers (email, email_key, name, language, status, created_at, updated_at,
                             confirmed_at, unsubscribed_at, bounced_at, confirm_sent_at,
                             token_nonce, signed_up_at, confirm_mails, mailbox_key,
                             complained_at)
    VALUES (:email, :key, :name, :language, :status, :now, :now,
            CASE WHEN :status = 'confirmed' THEN :now END,
            CASE WHEN :status = 'unsubscribed' THEN :now END,
            CASE WHEN :status = 'bounced' THEN :now END,
            :confirm_sent_at, :nonce, :signed_up_at, :confirm_sent_at, :mailbox,
            CASE WHEN :status = 'complained' THEN :now END)
    RETURNING id
"""
# Move to a status, stamping the matching *_at column.
_SET_STATUS = """
    UPDATE subscribers SET status = :status, updated_at = :now,
        confirmed_at = CASE WHEN :status = 'confirmed' THEN :now ELSE confirmed_at END,
        unsubscribed_at = CASE WHEN :status = 'unsubscribed' THEN :now ELSE unsubscribed_at END,
        bounced_at = CASE WHEN :status = 'bounced' THEN :now ELSE bounced_at END,
        bounce_count = CASE WHEN :status = 'confirmed' THEN 0 ELSE bounce_count END
    WHERE id = :id
"""
# The language a pending subscriber confirms in (the confirmation mail's).
_SET_LANGUAGE = "UPDATE subscribers SET language = :language WHERE id = :id"
# A repeat sign-up, the one write for every state (so its cost tells no state): stamp
# signed_up_at (and the mailbox key, for a row stored before it was kept); one who left is
# pending again in the chosen language, and a pending one takes the chosen language (the
# latest form says what the reader wants; a confirmed one keeps its own: only its reader
# changes it, and the form never tells who that is); when a confirmation goes out now (:send),
# confirm_sent_at = now and :mails (the day's mails, this one too). A row the form did not
# make is updated now, as one who left is: `expire_sign_ups` deletes only rows the form made
# that nothing else changed, and puts one who left back as it was, by the stamp of the
# status it left with: one stored without it (a row imported as `complained` before
# `complained_at` was written) gets it now, its last change's time, or it would stay pending
# for ever. Such a row has no
# signed_up_at, and no confirm_sent_at (`add` and `import` mail nothing) or a name (the form
# stores none); a row the form made before signed_up_at was kept (schema step 8) has none
# either, but its confirmation's confirm_sent_at and no name, and lapses as any other. A row
# the form made that only its confirmation mail's bounce changed (bounced, updated_at still
# created_at) keeps updated_at: it never agreed to anything, and lapses as a pending one.
_SIGN_UP_AGAIN = """
    UPDATE subscribers SET signed_up_at = :now, mailbox_key = :mailbox,
        status = CASE WHEN :rejoin THEN 'pending' ELSE status END,
        language = CASE WHEN :rejoin OR status = 'pending' THEN :language ELSE language END,
        unsubscribed_at = CASE WHEN :rejoin AND status = 'unsubscribed'
                               THEN coalesce(unsubscribed_at, updated_at)
                               ELSE unsubscribed_at END,
        bounced_at = CASE WHEN :rejoin AND status = 'bounced'
                          THEN coalesce(bounced_at, updated_at) ELSE bounced_at END,
        complained_at = CASE WHEN :rejoin AND status = 'complained'
                             THEN coalesce(complained_at, updated_at) ELSE complained_at END,
        updated_at = CASE
            WHEN :rejoin AND status = 'bounced' AND updated_at = created_at
                 AND confirmed_at IS NULL AND unsubscribed_at IS NULL
                 AND complained_at IS NULL
                 AND (signed_up_at IS NOT NULL
                      OR (name IS NULL AND confirm_sent_at = created_at)) THEN updated_at
            WHEN :rejoin OR (signed_up_at IS NULL AND (confirm_sent_at IS NULL
                                                       OR name IS NOT NULL)) THEN :now
            ELSE updated_at END,
        confirm_sent_at = CASE WHEN :send THEN :now ELSE confirm_sent_at END,
        confirm_mails = CASE WHEN :send THEN :mails ELSE confirm_mails END
    WHERE id = :id
"""
# One subscriber by its case-folded address, with when its last confirmations went out.
_SELECT_FOR_SIGN_UP = (
    f"SELECT {_COLUMNS}, confirm_sent_at, confirm_mails FROM subscribers "  # noqa: S608
    "WHERE email_key = ?"
)
# When the mailbox's other addresses were mailed their confirmations, for those mailed since
# :since (the cap's window): with the cap, a few rows, found through subscribers_mailbox.
_SELECT_MAILBOX_MAILS = """
    SELECT confirm_sent_at, confirm_mails FROM subscribers
    WHERE mailbox_key = :mailbox AND confirm_sent_at >= :since AND email_key <> :key
"""
# A batch of rows stored before mailbox_key was kept (schema 16), in id order from ?.
_SELECT_UNKEYED = (
    "SELECT id, email FROM subscribers WHERE mailbox_key IS NULL AND id > ? ORDER BY id LIMIT ?"
)
_SET_MAILBOX_KEY = "UPDATE subscribers SET mailbox_key = ? WHERE id = ?"
# Delete a batch of lapsed sign-ups, in id order from :last: rows signed up through the form
# (signed_up_at; or, made before it was kept, with no name and mailed as they were stored:
# confirm_sent_at = created_at) that never agreed to anything: pending, or bounced by their
# own confirmation mails (store/bounces.py), with no other status stamp and never updated
# since stored (an imported row the form touched keeps it, see _SIGN_UP_AGAIN; a hard bounce
# of a pending row, and the form bringing such a bounced row back, leave updated_at as it
# is; a bounce stamped the second the row was stored is taken for an import's `bounced`, kept
# as every import is, unless a confirmation mail's hard bounce was recorded: one piped back
# from the mail server lands in the second of the sign-up), whose last sign-up and mail are
# older than :before: the moment they would have gone had nothing bounced. A form of then
# that mailed a pending row again set confirm_sent_at alone: such a row may be one imported,
# and stays (as it did before signed_up_at) until its person signs up again.
_LAPSED_FORM_ROW = """
    status IN ('pending', 'bounced')
    AND coalesce(
        signed_up_at,
        CASE WHEN name IS NULL AND confirm_sent_at = created_at THEN confirm_sent_at END
    ) < :before
    AND (confirm_sent_at IS NULL OR confirm_sent_at < :before)
    AND confirmed_at IS NULL AND unsubscribed_at IS NULL AND complained_at IS NULL
    AND (bounced_at IS NULL OR bounced_at > created_at OR EXISTS (
        SELECT 1 FROM mail_events AS e
        WHERE e.subscriber_id = subscribers.id AND e.kind = 'hard' AND e.digest_day IS NULL
    ))
    AND updated_at = created_at
"""
# The outer WHERE repeats the test: PostgreSQL checks it again on a row that a sign-up of
# that moment changed while the DELETE waited for it (READ COMMITTED re-reads the row, not
# the subquery), so that sign-up keeps its row.
_EXPIRE_SIGN_UPS = f"""
    DELETE FROM subscribers WHERE {_LAPSED_FORM_ROW} AND id IN (
        SELECT id FROM subscribers WHERE {_LAPSED_FORM_ROW} AND id > :last
        ORDER BY id LIMIT :batch
    )
    RETURNING id
"""  # noqa: S608
# Put back a batch of lapsed sign-ups of addresses that had left, in id order from :last:
# pending rows with a leaving stamp (only the form makes such a row pending again: an
# import or `add` never does), whose last sign-up (or, for one from before signed_up_at
# was kept, its last change) and mail are older than :before. The status they had is the
# one whose stamp is the latest (its time, like every other stamp, stays as it was); on a
# tie the one that stops more mail. updated_at says when the lapse put it back. The outer
# WHERE repeats the sign-up's time: PostgreSQL checks it again on a row a sign-up of that
# moment changed (READ COMMITTED re-reads only the updated row, not the subquery).
_RESTORE_SIGN_UPS = """
    UPDATE subscribers SET updated_at = :now,
        status = CASE
            WHEN complained_at IS NOT NULL
                 AND complained_at >= coalesce(bounced_at, '')
                 AND complained_at >= coalesce(unsubscribed_at, '') THEN 'complained'
            WHEN bounced_at IS NOT NULL
                 AND bounced_at >= coalesce(unsubscribed_at, '') THEN 'bounced'
            ELSE 'unsubscribed' END
    WHERE status = 'pending' AND coalesce(signed_up_at, updated_at) < :before AND id IN (
        SELECT id FROM subscribers
        WHERE status = 'pending' AND id > :last
          AND coalesce(signed_up_at, updated_at) < :before
          AND (confirm_sent_at IS NULL OR confirm_sent_at < :before)
          AND (unsubscribed_at IS NOT NULL OR bounced_at IS NOT NULL
               OR complained_at IS NOT NULL)
        ORDER BY id LIMIT :batch
    )
    RETURNING id
"""
# A permanent refusal: count it, and bounce the subscriber at the limit.
_RECORD_BOUNCE = """
    UPDATE subscribers SET bounce_count = bounce_count + 1, updated_at = :now,
        status = CASE WHEN bounce_count + 1 >= :limit AND status = 'confirmed'
                      THEN 'bounced' ELSE status END,
        bounced_at = CASE WHEN bounce_count + 1 >= :limit AND status = 'confirmed'
                          THEN :now ELSE bounced_at END
    WHERE id = :id
    RETURNING status
"""
# Keyset pages of subscribers (all, or of one status), in id order.
_PAGE_ALL = f"SELECT {_COLUMNS} FROM subscribers WHERE id > ? ORDER BY id LIMIT ?"  # noqa: S608
_PAGE_STATUS = (
    f"SELECT {_COLUMNS} FROM subscribers WHERE status = ? AND id > ? "  # noqa: S608
    "ORDER BY id LIMIT ?"
)
# Erase: the row goes (its deliveries cascade), a hash keyed with the erasure key stays.
_DELETE_BY_KEY = "DELETE FROM subscribers WHERE email_key = ?"
_INSERT_SUPPRESSION = """
    INSERT INTO suppressions (email_hash, created_at) VALUES (?, ?)
    ON CONFLICT (email_hash) DO NOTHING
"""
_SELECT_SUPPRESSION = "SELECT 1 FROM suppressions WHERE email_hash = ?"
# Counts for `subscribers stats`.
_COUNT_BY_STATUS = "SELECT status, count(*) FROM subscribers GROUP BY status"
_COUNT_SUPPRESSIONS = "SELECT count(*) FROM suppressions"
# The languages the day's digest must be rendered in.
_CONFIRMED_LANGUAGES = (
    "SELECT DISTINCT language FROM subscribers WHERE status = 'confirmed' ORDER BY language"
)


def normalize_email(email: str) -> str:
    """Return the checked, normalised address (domain lower-cased, IDN as ASCII).

    Raises SubscriberError with the validator's reason. Addresses that need
    SMTPUTF8 (a non-ASCII local part) are refused: not every server takes them.
    """
    # Imported on first use: compiling its patterns costs about 25 ms, which a command
    # that checks no address (`subscribers list`, `send`) need not pay as it starts.
    from email_validator import EmailNotValidError, validate_email

    text = nfc(email.strip())
    if not text:
        raise SubscriberError("email address is empty. Give an address like 'an@example.org'.")
    try:
        result = validate_email(text, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise SubscriberError(
            f"email address {text!r} is not valid: {exc}", hint="Check it for typos."
        ) from None
    return str(result.ascii_email or result.normalized)


def email_key(email: str) -> str:
    """Return the uniqueness key of a normalised address (case-folded)."""
    return email.casefold()


def mailbox_key(email: str) -> str:
    """Return the key of the mailbox a normalised address reaches, for the confirmation cap.

    Case-folded, without a subaddress (RFC 5233: the `+tag` Gmail, Outlook.com, Fastmail
    and Postfix's usual recipient_delimiter deliver to the mailbox without it), and at
    Gmail without dots (which it ignores): `A.n+news@googlemail.com` is `an@gmail.com`.
    """
    local, _, domain = email_key(email).rpartition("@")
    tag = local.find("+", 1)  # a '+' opening the local part starts no tag: "+1@" is a mailbox
    if tag > 0:
        local = local[:tag]
    if domain in _DOTLESS_DOMAINS:
        local, domain = local.replace(".", ""), _DOTLESS_DOMAINS[domain]
    return f"{local}@{domain}"


def email_hash(key: bytes, email: str) -> str:
    """Return the hash kept for an erased address: HMAC-SHA256 of its email_key under `key`."""
    return hmac.new(
        key, b"syndicate-erased\x00" + email_key(email).encode("utf-8"), hashlib.sha256
    ).hexdigest()


def check_language(language: str) -> str:
    """Return `language` if it is one syndicate writes in, else raise SubscriberError."""
    if language not in LANGUAGES:
        raise SubscriberError(
            f"language {language!r} is not supported; expected one of 'vi', 'en'."
        )
    return language


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _to_subscriber(row: Any) -> Subscriber:
    return Subscriber(
        id=int(row[0]),
        email=str(row[1]),
        name=row[2],
        language=str(row[3]),
        status=SubscriptionStatus(row[4]),
        created_at=datetime.fromisoformat(row[5]),
        confirmed_at=_time(row[6]),
        unsubscribed_at=_time(row[7]),
        bounced_at=_time(row[8]),
        bounce_count=int(row[9]),
        token_nonce=bytes(row[10]),
    )


def _clean_name(name: str | None) -> str | None:
    if name is None:
        return None
    # One line: a name is printed in `list` (tab-separated) and may end up in headers.
    cleaned = " ".join(clean_line(name).split())[:_NAME_LIMIT].rstrip()
    return cleaned or None


def _fail(db: Database, exc: Exception) -> StoreError:
    return store_error(db.path, "subscriber query failed", exc)


def get_by_email(db: Database, email: str) -> Subscriber | None:
    """Return the subscriber with this address (any case), or None."""
    key = email_key(normalize_email(email))
    try:
        row = db.conn.execute(_SELECT_BY_KEY, (key,)).fetchone()
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc
    return _to_subscriber(row) if row else None


def get_by_id(db: Database, subscriber_id: int) -> Subscriber | None:
    """Return the subscriber with this id, or None."""
    try:
        row = db.conn.execute(_SELECT_BY_ID, (subscriber_id,)).fetchone()
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc
    return _to_subscriber(row) if row else None


def _require(db: Database, subscriber_id: int) -> Subscriber:
    found = get_by_id(db, subscriber_id)
    if found is None:
        raise SubscriberError(
            f"subscriber {subscriber_id} does not exist (erased, or never stored)."
        )
    return found


def is_suppressed(db: Database, email: str) -> bool:
    """Tell whether this address was erased (its hash is in `suppressions`)."""
    key = get_erasure_key(db)
    if key is None:  # no address was ever erased in this database
        return False
    try:
        row = db.conn.execute(_SELECT_SUPPRESSION, (email_hash(key, email),)).fetchone()
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc
    return row is not None


def add_subscriber(
    db: Database,
    email: str,
    *,
    name: str | None = None,
    language: str = "vi",
    status: SubscriptionStatus = SubscriptionStatus.CONFIRMED,
    now: datetime,
) -> Subscriber:
    """Store a new subscriber and return it.

    Raises SubscriberError for a bad address or language, an address already
    stored (any case), or an erased address.
    """
    address = normalize_email(email)
    check_language(language)
    if is_suppressed(db, address):
        raise SubscriberError(
            f"email address {address!r} was erased and cannot be added again.",
            hint="Only the person can subscribe again, through the sign-up form.",
        )
    stamp = _iso(now)
    params = {
        "email": address,
        "key": email_key(address),
        "name": _clean_name(name),
        "language": language,
        "status": str(status),
        "now": stamp,
        "confirm_sent_at": None,
        "nonce": secrets.token_bytes(_NONCE_BYTES),
        "signed_up_at": None,
        "mailbox": mailbox_key(address),
    }
    try:
        with db.transaction() as conn:
            existing = conn.execute(_SELECT_BY_KEY, (params["key"],)).fetchone()
            if existing is not None:
                raise SubscriberError(
                    f"email address {address!r} is already stored "
                    f"(status {existing[4]}, id {existing[0]})."
                )
            new_id = conn.execute(_INSERT, params).fetchone()[0]
            row = conn.execute(_SELECT_BY_ID, (new_id,)).fetchone()
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc
    return _to_subscriber(row)


def set_status(
    db: Database, subscriber_id: int, status: SubscriptionStatus, *, now: datetime
) -> Subscriber:
    """Move a subscriber to `status`, stamping the time; return the updated subscriber."""
    try:
        with db.transaction() as conn:
            _require(db, subscriber_id)
            conn.execute(
                _SET_STATUS, {"status": str(status), "now": _iso(now), "id": subscriber_id}
            )
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc
    return _require(db, subscriber_id)


def _recent_mails(
    sent_at: str | None, mails: str | None, *, now: datetime, window: timedelta
) -> list[str]:
    """The stamps of the confirmation mails sent within `window` before `now`."""
    # A row from before migration 10 has only its last mail's time.
    stamps = mails.split() if mails else ([sent_at] if sent_at else [])
    return [stamp for stamp in stamps if now - datetime.fromisoformat(stamp) < window]


def signup(
    db: Database,
    email: str,
    *,
    language: str,
    now: datetime,
    resend_after: timedelta = timedelta(minutes=10),
    max_mails: int = CONFIRM_MAILS_PER_DAY,
    mails_window: timedelta = CONFIRM_MAILS_WINDOW,
) -> tuple[Subscriber, bool]:
    """Record a sign-up; return the subscriber and whether to send a confirmation now.

    A new address is stored as pending. A pending one takes the language of the latest
    sign-up, and gets a new confirmation at most once per `resend_after`, or at once
    when that language is another. A confirmed one is left alone, its language too (no
    mail: the caller answers the same either way, so nobody learns who is subscribed).
    An unsubscribed, bounced or complained one becomes pending again and is sent a
    confirmation. Whatever the state, a mailbox (all the addresses with its
    `mailbox_key`) gets at most `max_mails` confirmations in any `mails_window` (a
    rolling window); past that a sign-up is stored but mails nothing. Every state costs
    two reads (the address, the mailbox's recent mails) and one write (an insert, or one
    update stamping `signed_up_at`), so the web app can store a sign-up before it
    answers without its timing telling the state. Raises SubscriberError for a bad
    address or language, StoreBusyError when the database stayed locked past the busy
    timeout.
    """
    address = normalize_email(email)
    check_language(language)
    key = email_key(address)
    mailbox = mailbox_key(address)
    stamp = _iso(now)
    try:
        with db.transaction() as conn:
            row = conn.execute(_SELECT_FOR_SIGN_UP, (key,)).fetchone()
            others = conn.execute(
                _SELECT_MAILBOX_MAILS,
                {"mailbox": mailbox, "since": _iso(now - mails_window), "key": key},
            ).fetchall()
            # The mails the mailbox got under its other spellings within the window.
            elsewhere = sum(
                len(_recent_mails(sent, mails, now=now, window=mails_window))
                for sent, mails in others
            )
            if row is None:
                send = elsewhere < max_mails
                inserted = conn.execute(
                    _INSERT,
                    {
                        "email": address,
                        "key": key,
                        "name": None,
                        "language": language,
                        "status": str(SubscriptionStatus.PENDING),
                        "now": stamp,
                        # No mail, no stamp: it would hold the mailbox's cap past its day.
                        "confirm_sent_at": stamp if send else None,
                        "nonce": secrets.token_bytes(_NONCE_BYTES),
                        "signed_up_at": stamp,
                        "mailbox": mailbox,
                    },
                )
                subscriber_id = int(inserted.fetchone()[0])
            else:
                subscriber_id = int(row[0])
                status = SubscriptionStatus(row[4])
                rejoin = status not in (SubscriptionStatus.CONFIRMED, SubscriptionStatus.PENDING)
                sent_at = _time(row[-2])
                recent = _recent_mails(row[-2], row[-1], now=now, window=mails_window)
                # A pending reader who chose the other language is mailed in it at once
                # (the mail before is in the language they no longer want); the cap holds.
                due = rejoin or (
                    status is SubscriptionStatus.PENDING
                    and (sent_at is None or now - sent_at >= resend_after or row[3] != language)
                )
                send = due and len(recent) + elsewhere < max_mails
                conn.execute(
                    _SIGN_UP_AGAIN,
                    {
                        "rejoin": rejoin,
                        "send": send,
                        "mails": " ".join([*recent, stamp]),
                        "language": language,
                        "now": stamp,
                        "mailbox": mailbox,
                        "id": subscriber_id,
                    },
                )
            found = conn.execute(_SELECT_BY_ID, (subscriber_id,)).fetchone()
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc
    return _to_subscriber(found), send


def fill_mailbox_keys(conn: Any, *, batch: int = MAILBOX_KEY_BATCH) -> int:
    """Give every row without a mailbox key its key; return how many (schema step 17).

    Runs on the migration's connection, inside its transaction, `batch` rows at a time in
    id order (memory stays flat, and on PostgreSQL each statement is short).
    """
    last, keyed = 0, 0
    while rows := conn.execute(_SELECT_UNKEYED, (last, batch)).fetchall():
        conn.executemany(_SET_MAILBOX_KEY, [(mailbox_key(str(r[1])), int(r[0])) for r in rows])
        keyed += len(rows)
        last = int(rows[-1][0])
    return keyed


class LapsedSignUps(NamedTuple):
    """What `expire_sign_ups` did: sign-ups deleted, and rows put back as they were."""

    deleted: int
    restored: int


def expire_sign_ups(
    db: Database, *, now: datetime, link_hours: int, batch: int = EXPIRE_BATCH
) -> LapsedSignUps:
    """End the sign-ups left unconfirmed past their confirm link; say how many.

    A sign-up lapses once its last sign-up and confirmation mail are older than the
    link's `link_hours` (subscribe.confirm_hours) and the confirmation cap's window
    (CONFIRM_MAILS_WINDOW: a row the cap still counts must stay, or the mailbox could be
    mailed again at once). A row the form made that never agreed to anything (pending, or
    bounced by its own confirmation mails, and nothing else) is deleted, at the moment it
    would have been had nothing bounced; a lapse keeps no hash of it (only `erase` does).
    An address back through the form after it unsubscribed, bounced or complained is put
    back to that status, its stamps as they were (its link expires all the same); it runs
    after the deletions, which take the rows that had bounced only by their confirmation
    mails. One imported as pending waits for its own confirmation. Suppressions
    (erased addresses) are never touched. Works in batches of `batch` rows, each its own
    transaction, so the write lock is held briefly whatever the count.
    """
    before = now - max(timedelta(hours=link_hours), CONFIRM_MAILS_WINDOW) - _EXPIRY_MARGIN
    return LapsedSignUps(
        _in_batches(db, _EXPIRE_SIGN_UPS, before=before, now=now, batch=batch),
        _in_batches(db, _RESTORE_SIGN_UPS, before=before, now=now, batch=batch),
    )


def _in_batches(db: Database, sql: str, *, before: datetime, now: datetime, batch: int) -> int:
    """Run `sql` (returning the ids it changed) a batch at a time; return how many rows."""
    params = {"before": _iso(before), "now": _iso(now), "last": 0, "batch": batch}
    changed = 0
    while True:
        try:
            with db.transaction() as conn:
                ids = [int(row[0]) for row in conn.execute(sql, params).fetchall()]
        except DB_ERRORS as exc:
            raise _fail(db, exc) from exc
        changed += len(ids)
        if len(ids) < batch:
            return changed
        params["last"] = max(ids)


def confirm(
    db: Database, subscriber_id: int, *, now: datetime, language: str | None = None
) -> Subscriber:
    """Confirm a pending subscriber; idempotent for a confirmed one.

    Subscribers who left (unsubscribed or bounced) after the link was sent are
    left as they are: a stale confirmation link must not sign them up again.
    `language`, the one of the confirmation mail whose link was followed, becomes the
    subscriber's (a later sign-up of the address, by anyone, may have changed it).
    Raises SubscriberError for an unknown id or language.
    """
    if language is not None:
        check_language(language)
    try:
        with db.transaction() as conn:
            current = _require(db, subscriber_id)
            if current.status is SubscriptionStatus.PENDING:
                if language is not None:
                    conn.execute(_SET_LANGUAGE, {"language": language, "id": subscriber_id})
                set_status(db, subscriber_id, SubscriptionStatus.CONFIRMED, now=now)
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc
    return _require(db, subscriber_id)


def unsubscribe(db: Database, subscriber_id: int, *, now: datetime) -> Subscriber:
    """Unsubscribe; idempotent (a second call keeps the first time). Unknown id: SubscriberError."""
    try:
        with db.transaction():
            current = _require(db, subscriber_id)
            if current.status is not SubscriptionStatus.UNSUBSCRIBED:
                set_status(db, subscriber_id, SubscriptionStatus.UNSUBSCRIBED, now=now)
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc
    return _require(db, subscriber_id)


def record_bounce(db: Database, subscriber_id: int, *, limit: int, now: datetime) -> bool:
    """Count one permanent refusal; return True when it made the subscriber bounced."""
    try:
        with db.transaction() as conn:
            before = conn.execute(_SELECT_BY_ID, (subscriber_id,)).fetchone()
            row = conn.execute(
                _RECORD_BOUNCE, {"limit": max(limit, 1), "now": _iso(now), "id": subscriber_id}
            ).fetchone()
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc
    return bool(before and row and before[4] != "bounced" and row[0] == "bounced")


def iter_subscribers(
    db: Database, *, status: SubscriptionStatus | None = None, batch: int = 1000
) -> Iterator[Subscriber]:
    """Yield subscribers in id order, reading `batch` rows at a time (never all at once)."""
    last = 0
    while True:
        try:
            if status is None:
                rows = db.conn.execute(_PAGE_ALL, (last, batch)).fetchall()
            else:
                rows = db.conn.execute(_PAGE_STATUS, (str(status), last, batch)).fetchall()
        except DB_ERRORS as exc:
            raise _fail(db, exc) from exc
        if not rows:
            return
        for row in rows:
            yield _to_subscriber(row)
        last = int(rows[-1][0])


def erase(db: Database, email: str, *, now: datetime) -> bool:
    """Delete the address's personal data and ledger rows, keeping only a keyed hash.

    Returns True when a subscriber row was deleted. The hash is stored even
    for an address that was never subscribed, so it can never be imported.
    It is keyed with the database's erasure key (generated on the first
    erasure), so it outlives any change of the signing secret.
    """
    address = normalize_email(email)
    try:
        # Zero the freed bytes, then fold the WAL back, so no copy of the row stays on disk.
        # (PostgreSQL reuses the dead row's space at its next vacuum.)
        if db.dialect == "sqlite":
            db.conn.execute("PRAGMA secure_delete = ON")
        with db.transaction() as conn:
            key = get_erasure_key(db, create=True)
            assert key is not None  # noqa: S101 - created above
            deleted = conn.execute(_DELETE_BY_KEY, (email_key(address),)).rowcount
            conn.execute(_INSERT_SUPPRESSION, (email_hash(key, address), _iso(now)))
        if db.dialect == "sqlite":
            db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc
    return bool(deleted > 0)


def stats(db: Database) -> dict[str, int]:
    """Return counts: one per status, 'total' and 'erased'."""
    try:
        counts = dict(db.conn.execute(_COUNT_BY_STATUS).fetchall())
        erased = int(db.conn.execute(_COUNT_SUPPRESSIONS).fetchone()[0])
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc
    result = {str(s): int(counts.get(str(s), 0)) for s in SubscriptionStatus}
    result["total"] = sum(result.values())
    result["erased"] = erased
    return result


def confirmed_languages(db: Database) -> list[str]:
    """Return the languages of confirmed subscribers, sorted."""
    try:
        return [str(row[0]) for row in db.conn.execute(_CONFIRMED_LANGUAGES)]
    except DB_ERRORS as exc:
        raise _fail(db, exc) from exc

"""Store: small key/value facts in the `meta` table: the signing secret, the erasure key."""

from __future__ import annotations

import secrets

from syndicate.config import Settings
from syndicate.errors import StoreError
from syndicate.store import DB_ERRORS, Database, store_error

SECRET_KEY = "secret"  # noqa: S105 - the meta key's name, not a secret
ERASURE_KEY = "erasure_key"
_KEY_BYTES = 32

# Read one fact.
_SELECT_VALUE = "SELECT value FROM meta WHERE key = ?"
# Store a fact unless a concurrent process stored it first (the first one wins).
_INSERT_VALUE = "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING"


def _read_key(
    db: Database, name: str, *, what: str, create: bool, damaged_hint: str
) -> bytes | None:
    """Return the random key stored under `name`; generate it first when `create` is set."""
    try:
        row = db.conn.execute(_SELECT_VALUE, (name,)).fetchone()
        if row is None and create:
            with db.transaction() as conn:
                conn.execute(_INSERT_VALUE, (name, secrets.token_bytes(_KEY_BYTES).hex()))
                row = conn.execute(_SELECT_VALUE, (name,)).fetchone()
    except DB_ERRORS as exc:
        raise store_error(db.path, f"cannot read or store the {what}", exc) from exc
    if row is None:
        return None
    try:
        return bytes.fromhex(str(row[0]))
    except ValueError:
        raise StoreError(f"{db.path}: the stored {what} is not hex.", hint=damaged_hint) from None


def get_secret(settings: Settings, db: Database) -> bytes:
    """Return the signing secret: SYNDICATE_SECRET or mail.secret, else the database's own.

    The database's secret is generated (secrets.token_bytes) on first use and
    kept in `meta`, so tokens stay valid across runs and between the CLI and
    the web service sharing the database.
    """
    if settings.secret:
        return settings.secret.encode("utf-8")
    key = _read_key(
        db,
        SECRET_KEY,
        what="signing secret",
        create=True,
        damaged_hint="Set SYNDICATE_SECRET, or delete the 'secret' row of the meta table "
        "(links already sent stop working).",
    )
    assert key is not None  # noqa: S101 - created above
    return key


def read_secret(settings: Settings, db: Database | None) -> bytes | None:
    """Return the signing secret if there is one yet: configured, else stored in `db`.

    Never makes one (for a command that only checks tokens): None when neither is set,
    and when there is no store (`db` None).
    """
    if settings.secret:
        return settings.secret.encode("utf-8")
    if db is None:
        return None
    return _read_key(
        db,
        SECRET_KEY,
        what="signing secret",
        create=False,
        damaged_hint="Set SYNDICATE_SECRET, or delete the 'secret' row of the meta table "
        "(links already sent stop working).",
    )


def get_erasure_key(db: Database, *, create: bool = False) -> bytes | None:
    """Return the key of the erased-address hashes; None when none exists and not `create`.

    Generated once (secrets.token_bytes) into `meta` by the first erasure and
    never derived from the signing secret, so rotating SYNDICATE_SECRET or
    mail.secret cannot let an erased address back in. Losing it (a new
    database) forgets the erasures.
    """
    return _read_key(
        db,
        ERASURE_KEY,
        what="erasure key",
        create=create,
        damaged_hint="Restore the database from a backup: without the key, erased addresses "
        "can no longer be recognised.",
    )

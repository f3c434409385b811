"""Store: small key/value facts in the `meta` table, such as the generated signing secret."""

from __future__ import annotations

import secrets
import sqlite3

from syndicate.config import Settings
from syndicate.errors import StoreError
from syndicate.store import Database

SECRET_KEY = "secret"  # noqa: S105 - the meta key's name, not a secret
_SECRET_BYTES = 32

# Read one fact.
_SELECT_VALUE = "SELECT value FROM meta WHERE key = ?"
# Store a fact unless a concurrent process stored it first (the first one wins).
_INSERT_VALUE = "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING"


def get_secret(settings: Settings, db: Database) -> bytes:
    """Return the signing secret: SYNDICATE_SECRET or mail.secret, else the database's own.

    The database's secret is generated (secrets.token_bytes) on first use and
    kept in `meta`, so tokens stay valid across runs and between the CLI and
    the web service sharing the database.
    """
    if settings.secret:
        return settings.secret.encode("utf-8")
    try:
        row = db.conn.execute(_SELECT_VALUE, (SECRET_KEY,)).fetchone()
        if row is None:
            with db.transaction() as conn:
                conn.execute(_INSERT_VALUE, (SECRET_KEY, secrets.token_bytes(_SECRET_BYTES).hex()))
                row = conn.execute(_SELECT_VALUE, (SECRET_KEY,)).fetchone()
    except sqlite3.Error as exc:
        raise StoreError(f"{db.path}: cannot read or store the signing secret: {exc}.") from exc
    try:
        return bytes.fromhex(str(row[0]))
    except ValueError:
        raise StoreError(
            f"{db.path}: the stored signing secret is not hex.",
            hint="Set SYNDICATE_SECRET, or delete the 'secret' row of the meta table "
            "(links already sent stop working).",
        ) from None

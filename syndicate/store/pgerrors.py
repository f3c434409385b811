"""PostgreSQL's failures as the store sees them, without psycopg.

Every psycopg error that leaves `store.postgres` (its connection's statements, cursors and
transactions, connecting, the asyncio connection and `LoopStatement` of the send queue) is
turned there into a `PgError`, psycopg's own as its `__cause__`. So `store.DB_ERRORS` can
name both engines' errors, and an `except` clause catch them, without importing psycopg: a
command on SQLite never loads it (about 70 ms of every start).
"""

from __future__ import annotations

# SQLSTATEs that mean "try again later": lock or statement timeout, deadlock,
# serialization failure, too many connections.
_BUSY_STATES = frozenset({"55P03", "57014", "40P01", "40001", "53300"})
# The server went away: shut down or restarting (57P0x), or the connection broke (08xxx);
# or it ended a write transaction whose client had sent nothing for store.reply_timeout
# (25P03: this client was the one stopped).
_GONE_STATES = frozenset({"57P01", "57P02", "57P03", "25P03"})
# Disk full, out of memory, too many files.
_FULL_STATES = frozenset({"53100", "53200", "53000"})


class PgError(Exception):
    """A statement, transaction or connection failed on PostgreSQL; its text is psycopg's.

    `sqlstate` is the server's code when it sent one; `broken` says the connection broke or
    was closed (psycopg's own error, with no SQLSTATE: a reply that never came, a server
    that went away mid-statement).
    """

    def __init__(self, message: str, *, sqlstate: str | None = None, broken: bool = False) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.broken = broken


class PgIntegrityError(PgError):
    """A UNIQUE, CHECK or foreign key constraint refused a row (SQLSTATE class 23)."""


# Why PostgreSQL said "try again later", as the busy line says it (a lock waited for past
# store.busy_timeout, 55P03, is the line's own words: another command is writing).
_BUSY_REASONS = {
    "57014": "a statement ran past its time limit",
    "40P01": "two syndicate processes waited on each other's rows; PostgreSQL stopped this one",
    "40001": "another syndicate process changed the same rows at the same moment",
    "53300": "the PostgreSQL server has no connection free (max_connections)",
}


def busy_reason(exc: BaseException) -> str | None:
    """What made a busy PostgreSQL error busy, in words, or None for a lock waited for."""
    return _BUSY_REASONS.get(getattr(exc, "sqlstate", None) or "")


def is_busy(exc: BaseException) -> bool:
    """True for a server that is there but busy: try again in a moment."""
    return getattr(exc, "sqlstate", None) in _BUSY_STATES


def is_gone(exc: BaseException) -> bool:
    """True for a server that went away (restart, shutdown, broken connection)."""
    state = getattr(exc, "sqlstate", None)
    if state is None:
        return bool(getattr(exc, "broken", False))
    return state in _GONE_STATES or state.startswith("08")


def is_full(exc: BaseException) -> bool:
    return getattr(exc, "sqlstate", None) in _FULL_STATES

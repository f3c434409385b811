"""Store: the database (schema, migrations, transactions). The only code that runs SQL.

The store is a SQLite file (the embedded default, `paths.database`) or a PostgreSQL
database (`store.url`, for several machines: see `store.postgres`); both run the same
statements with the same meaning. On SQLite: one connection per process, WAL mode,
short `BEGIN IMMEDIATE` transactions through `Database.transaction()` for writes, and
deferred read transactions through `Database.snapshot()` for reads (under WAL a reader
never waits for the writer, nor holds it up). Area modules (`articles`, `subscribers`,
`ledger`) hold the statements for their tables and take a `Database`; they turn engine
errors into ours through `store_error`, so a busy database, a full disk or an
unreachable server is a "try again later" (exit 75, HTTP 503), never a usage error.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sqlite3
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, overload

from syndicate.errors import (
    OutOfFilesError,
    StoreAccessError,
    StoreBusyError,
    StoreError,
    StoreFullError,
    StoreUnavailableError,
    StoreUpgradeError,
)
from syndicate.store.pg_schema import PG_FIRST_VERSION, PG_MIGRATIONS
from syndicate.store.pgerrors import (
    PgError,
    PgIntegrityError,
    busy_reason,
    is_busy,
    is_full,
    is_gone,
)
from syndicate.store.schema import MIGRATIONS

# Busy timeout: a concurrent writer (the web app beside `syndicate send`) waits this long
# (seconds; config key store.busy_timeout).
DEFAULT_BUSY_TIMEOUT = 10.0
# A PostgreSQL server that has sent nothing for this long while a statement waited for its
# reply is taken as gone (seconds; config key store.reply_timeout; 0 or None: no bound).
DEFAULT_REPLY_TIMEOUT = 120.0

# Primary result codes (the low byte of an extended code) that mean "try again later".
_BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
_FULL_CODES = frozenset({sqlite3.SQLITE_FULL})
# A write to a file this user may only read, or a -wal or -shm it may not open.
_DENIED_CODES = frozenset({sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM})

# The database holds every address and the signing secret: owner only. SQLite gives its
# -wal and -shm files the database file's mode, so creating the file first covers them.
_FILE_MODE = 0o600
_FOLDER_MODE = 0o700
_SIDE_FILES = ("", "-wal", "-shm")

# What to do when the SQLite file cannot be opened, or is no store; a command whose file
# comes from an option, not paths.database (`store copy`), says its own.
OPEN_HINT = "Check paths.database and the folder's permissions."
# A paths.database naming a folder, or a path under a file (not a folder).
FOLDER_HINT = (
    "Point paths.database at a file, such as syndicate.db in that folder; nothing was changed."
)
NO_FOLDER_HINT = (
    "Point paths.database at a file in a folder (or where one can be made); nothing was changed."
)
# How a hint names the PostgreSQL URL when the caller does not say where it came from;
# callers say: `store.url`, `SYNDICATE_STORE_URL`, or `store copy`'s `the --from URL`.
URL_NAME = "store.url (or SYNDICATE_STORE_URL)"
# How an unreachable server's hint ends: a command cron runs again; `store copy`, which
# nothing runs again, says its own.
NEXT_RUN = "; the next run tries again."
# The same, where the hint's last sentence says it (a server with no connection to spare).
NEXT_RUN_OR_REQUEST = " The next run (or request, in `serve`) tries again."
# A PostgreSQL database that is no syndicate store and cannot be made one (another
# program's tables in it); `store copy` names its --from or --to instead.
UNUSABLE_HINT = (
    "Point store.url at a new database, or check the role's privileges (docs/operating.md)."
)
NOT_A_STORE_HINT = "Point paths.database at a new file, or restore this one from a backup."

log = logging.getLogger(__name__)

# The errors a statement can raise, whichever engine runs it: area modules catch these
# and word them through `store_error`. PostgreSQL's are the store's own (`store.postgres`
# turns psycopg's into them), so naming them does not import psycopg: `store.postgres`
# (and psycopg) load only when a PostgreSQL store is opened.
DB_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, PgError)
# A UNIQUE, CHECK or foreign key constraint refused a row.
INTEGRITY_ERRORS: tuple[type[Exception], ...] = (sqlite3.IntegrityError, PgIntegrityError)


def store_error(path: Path | str, what: str, exc: Exception) -> StoreError:
    """The StoreError for a failed SQLite call: `{path}: {what}: {exc}.`.

    A busy database (another connection held the write lock past the busy
    timeout) gives StoreBusyError, a full disk StoreFullError: both exit 75.
    """
    if isinstance(exc, PgError):
        if is_full(exc):
            return StoreFullError(str(path))
        if is_gone(exc):
            return unreachable(str(path), exc)
        if is_busy(exc):
            return StoreBusyError(str(path), busy_reason(exc))
        if exc.sqlstate == INSUFFICIENT_PRIVILEGE:
            return not_permitted(f"{path}: {what}: {_first_line(exc)}.")
        return StoreError(f"{path}: {what}: {_first_line(exc)}.")
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    if primary in _BUSY_CODES:
        return StoreBusyError(str(path))
    if primary in _FULL_CODES or (primary == sqlite3.SQLITE_IOERR and _no_room(Path(path))):
        return StoreFullError(str(path))
    if primary in _DENIED_CODES:
        denied = _access_error(Path(path))
        if denied is not None:
            return denied
    return StoreError(f"{path}: {what}: {exc}.")


# SQLSTATE 42501: the role lacks a right on a table (the store made by another role, a
# `store copy` run as a superuser, say). A setup problem no retry fixes: exit 2, and in
# `serve` a 503 with one log line, as for a login the server refuses.
INSUFFICIENT_PRIVILEGE = "42501"


def not_permitted(message: str, *, making: bool = False) -> StoreAccessError:
    """The error for a statement the server refused for the role's rights (42501); `making`:
    while making the tables, in a schema the role may not create in (or not even use)."""
    if making:
        fix = (
            "may not make tables in schema public: have the database's owner GRANT USAGE, "
            "CREATE ON SCHEMA public TO it, or make the role the database's owner "
            "(docs/operating.md, Moving to PostgreSQL)."
        )
    elif "for sequence" in message:  # reading an id counter: a copy from a read-only role
        fix = (
            "may not read the tables' id counters: have the role that made the tables GRANT "
            "SELECT ON ALL SEQUENCES IN SCHEMA public TO it, or run as that role."
        )
    else:
        fix = (
            "may not do this: run syndicate as the role that made the tables (their owner), "
            "or have that role GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "
            "public TO it."
        )
    return StoreAccessError(
        message,
        hint="The role in store.url or SYNDICATE_STORE_URL (or the URL given to `store copy`) "
        f"{fix} Trying again will not help until this is fixed.",
    )


def unreachable(
    where: str, exc: BaseException, *, url_name: str = URL_NAME
) -> StoreUnavailableError:
    """The error for a database server that cannot be reached (exit 75); `url_name` says
    where its URL came from."""
    return StoreUnavailableError(
        f"{where}: cannot reach the database: {_first_line(exc)}.",
        hint=f"Check that the server runs and {url_name}{NEXT_RUN}",
    )


# libpq's words for a URL value it refuses before connecting (a port over 65535, an
# unknown sslmode, a word for a number): no retry fixes these.
_BAD_VALUE = re.compile(
    r'invalid (?:port number|integer value(?: "[^"]*")? for connection option "\w+"|\w+ value)'
)


# libpq's words for a connection service it cannot use (PGSERVICE, service= in the URL): a
# name no service file defines, a file that is missing or that it cannot read. No retry fixes
# these; none quotes a line of the file (which may hold a password).
_BAD_SERVICE = re.compile(
    r'definition of service "[^"\n]*" not found'
    r'|service file "[^"\n]*" not found'
    r'|syntax error in service file "[^"\n]*", line \d+'
    r'|line \d+ too long in service file "[^"\n]*"'
    r'|nested "service" specifications not supported in service file "[^"\n]*", line \d+'
)


def not_connected(
    where: str, url: str, exc: BaseException, *, url_name: str = URL_NAME
) -> StoreError:
    """The error for a connection to `url` that failed: StoreAccessError (exit 2) when the
    server refused the login (a wrong password, no such role or database, no right to
    connect: no retry fixes it), else the server is unreachable (exit 75). Its hint names
    the URL by `url_name`: where it came from (`store.url`, `the --to URL`)."""
    from syndicate.store import postgres  # loaded already: it raised `exc`

    service = _BAD_SERVICE.search(str(exc))
    if service is not None:  # libpq read no service file or definition: before connecting
        return StoreError(
            f"{where}: libpq cannot use the connection service: {service.group(0)}.",
            hint=f"Check the service's name (service= in {url_name}, or "
            "PGSERVICE) and its file (PGSERVICEFILE, else ~/.pg_service.conf); trying again "
            "will not help until then.",
        )
    bad = _BAD_VALUE.search(str(exc))
    if bad is not None:  # libpq refused a value of the URL before it tried to connect
        # The values libpq quotes may be a password read as one; the option's name is not.
        reason = re.sub(r'\s*"[^"]*"( for)', r"\1", bad.group(0)).replace('"', "")
        return StoreError(
            f"{where}: the URL has a value libpq refuses: {reason}.",
            hint=f"Fix {url_name}; trying again will not help until then.",
        )
    limit = postgres.connection_limit(exc)
    if limit is not None:
        return StoreUnavailableError(
            f"{where}: the server takes no more connections: {limit}.",
            hint="Close some of the connections to it, or raise its max_connections (or the "
            "role's CONNECTION LIMIT); `send --workers N` holds 3 per worker and 1 more."
            + NEXT_RUN_OR_REQUEST,
        )
    refused = postgres.refused_login(exc)
    if refused is None:
        return unreachable(where, exc, url_name=url_name)
    kind, reason = refused
    try:
        params = postgres.parse_url(url)
    except ValueError:
        params = {}
    # What libpq tried, from the URL, a service file, PGUSER and the like, or its defaults.
    tried = postgres.tried(exc)
    params.update(postgres.used_parameters(tried) if tried is not None else {})
    # libpq's defaults when nothing names them: PGUSER, else the system user; the user's name.
    user = params.get("user") or os.environ.get("PGUSER") or _system_user()
    dbname = params.get("dbname") or os.environ.get("PGDATABASE") or user
    hints = {
        "password": f"Check the password (in {url_name}, or in "
        f"PGPASSWORD or ~/.pgpass) against the role's on the server (ALTER ROLE {user} "
        "PASSWORD ...).",
        "role": f"Check the user in {url_name}, or create the role on "
        f"the server (CREATE ROLE {user} LOGIN PASSWORD ...).",
        "access": "Let this user in from this machine: a line for it in the server's "
        f"pg_hba.conf, and GRANT CONNECT ON DATABASE {dbname} TO {user}.",
        "ssl": "The URL asks for SSL (sslmode require, verify-ca or verify-full) and the "
        "server offers none: turn ssl on in the server's postgresql.conf, or give "
        f"{url_name} a lower sslmode.",
        "database": f"Check the database name in {url_name}, or "
        f"create it (createdb -O {user} {dbname}).",
    }
    hint = hints[kind]
    if reason.endswith("no password supplied"):  # libpq had none to give: nothing to check
        hint = _no_password_hint(params.get("passfile") or os.environ.get("PGPASSFILE"))
    return StoreAccessError(
        f"{where}: cannot log in as user {user!r} to database {dbname!r}: {reason}.",
        hint=f"{hint} Trying again will not help until this is fixed.",
    )


def _no_password_hint(passfile: str | None) -> str:
    """What to do when libpq found no password to give: name the password file when libpq
    skipped it for its mode (it reads none that its group or others may use)."""
    path = Path(passfile) if passfile else Path.home() / ".pgpass"
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except (OSError, RuntimeError):  # none there, or no home to look in
        mode = 0
    if mode & 0o077:
        return (
            f"libpq skipped the password file {path}: others may read it (mode {mode:04o}). "
            f"Run chmod 600 {path}."
        )
    return (
        "No password was given: put it in ~/.pgpass (or the file PGPASSFILE names) as "
        "host:port:database:user:password, mode 0600, or in PGPASSWORD."
    )


def _system_user() -> str:
    return user_name(os.geteuid())


def user_name(uid: int) -> str:
    """The login name of `uid`, else the number (a user the system does not list)."""
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0].rstrip(".") if text else type(exc).__name__


def _no_room(path: Path) -> bool:
    """Whether the file system holding `path` has no block left to give.

    SQLite reports a full disk met while making its -shm or -wal file as a plain
    "disk I/O error" (it keeps no errno): the free space tells the two apart.
    """
    try:
        return os.statvfs(path.parent).f_bavail == 0
    except OSError:
        return False


def _raise_if_try_later(path: Path | str, exc: Exception) -> None:
    """Raise StoreBusyError or StoreFullError for a busy database or a full disk."""
    error = store_error(path, "", exc)
    if isinstance(error, (StoreBusyError, StoreFullError, StoreUnavailableError)):
        raise error from exc


class _Discard(Exception):
    """Raised inside Database.scratch() to roll its transaction back."""


class Database:
    """An open, migrated syndicate database."""

    # Which engine runs the statements: "sqlite" or "postgresql". Area modules pick a
    # statement by it only where the two engines' SQL differs.
    dialect = "sqlite"
    # What opens a write transaction and a read snapshot.
    _begin_write: tuple[str, ...] = ("BEGIN IMMEDIATE",)
    _begin_rows: tuple[str, ...] = ("BEGIN IMMEDIATE",)  # transaction(rows_only=True)
    _begin_read: tuple[str, ...] = ("BEGIN DEFERRED",)

    def __init__(self, conn: Any, path: Path | str) -> None:
        # A sqlite3.Connection, or a postgres.PgConnection offering the same calls.
        self.conn: Any = conn
        # How messages name the store: the SQLite file, or `PostgreSQL at host:port/db`.
        self.path = path
        self._depth = 0
        self._reading = False

    @contextmanager
    def transaction(self, *, rows_only: bool = False) -> Iterator[Any]:
        """Run the block in one `BEGIN IMMEDIATE` transaction: all of it commits, or none.

        Nested use joins the outer transaction. Raises StoreBusyError (exit 75) when
        another connection keeps the write lock past the busy timeout. `rows_only` is for
        a block that writes only rows it has locked itself (the send queue's claim and
        marks): on PostgreSQL it does not take the store-wide write lock, so workers on
        many machines write side by side; on SQLite it changes nothing.
        """
        if self._reading:
            raise RuntimeError("a write transaction cannot start inside Database.snapshot()")
        if self._depth:
            self._depth += 1
            try:
                yield self.conn
            finally:
                self._depth -= 1
            return
        try:
            for statement in self._begin_rows if rows_only else self._begin_write:
                self.conn.execute(statement)
        except DB_ERRORS as exc:
            self._rollback()
            raise store_error(self.path, "cannot start a transaction", exc) from exc
        self._depth = 1
        try:
            yield self.conn
        except DB_ERRORS as exc:
            self._depth = 0
            self._rollback()
            _raise_if_try_later(self.path, exc)
            raise  # the area module's own handler words it
        except BaseException:
            self._depth = 0
            self._rollback()
            raise
        self._depth = 0
        try:
            self.conn.commit()
        except DB_ERRORS as exc:
            self._rollback()
            raise store_error(self.path, "cannot commit", exc) from exc

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction or snapshot of this Database is open."""
        return bool(self._depth or self._reading)

    @contextmanager
    def snapshot(self) -> Iterator[Any]:
        """Run the block in one deferred read transaction: every read sees the same state.

        Under WAL this takes no write lock: writers (`send`, sign-ups) go on while it is
        open, and it never waits for them. Inside a write transaction it joins that one.
        The block must not write (taking the write lock mid-transaction fails at once
        when another connection wrote since the snapshot began); writes go through
        `transaction()`.
        """
        if self._depth or self._reading:
            yield self.conn
            return
        try:
            for statement in self._begin_read:
                self.conn.execute(statement)
        except DB_ERRORS as exc:
            self._rollback()
            raise store_error(self.path, "cannot start reading", exc) from exc
        self._reading = True
        try:
            yield self.conn
        except DB_ERRORS as exc:
            _raise_if_try_later(self.path, exc)
            raise
        finally:
            self._reading = False
            self._rollback()  # nothing was written: ending it only lets the snapshot go

    def _rollback(self) -> None:
        try:
            self.conn.rollback()
        except DB_ERRORS:  # the transaction is gone already (SQLite rolled it back)
            pass

    @contextmanager
    def scratch(self) -> Iterator[Any]:
        """Run the block in one transaction that is always rolled back.

        It holds the write lock until it ends: the previews (`digest`, `send --dry-run`)
        no longer use it (`send.digests.preview_digest` reads in a `snapshot()` instead).
        """
        try:
            with self.transaction() as conn:
                yield conn
                raise _Discard
        except _Discard:
            pass

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        row = self.conn.execute("PRAGMA user_version").fetchone()
        return int(row[0])

    def _set_schema_version(self, version: int) -> None:
        self.conn.execute(f"PRAGMA user_version = {int(version)}")


class PgDatabase(Database):
    """An open, migrated syndicate store on PostgreSQL (see `store.postgres`)."""

    dialect = "postgresql"

    @property
    def schema_version(self) -> int:
        # PostgreSQL has no user_version: one row in a table of its own (step 9 makes it).
        if self.conn.execute("SELECT to_regclass('syndicate_schema')").fetchone()[0] is None:
            return 0
        row = self.conn.execute("SELECT version FROM syndicate_schema").fetchone()
        return int(row[0]) if row else 0

    def _set_schema_version(self, version: int) -> None:
        self.conn.execute("UPDATE syndicate_schema SET version = ?", (int(version),))

    def __init__(
        self,
        conn: Any,
        path: Path | str,
        *,
        url: str,
        busy_timeout: float,
        reply_timeout: float | None,
        url_name: str = URL_NAME,
    ) -> None:
        from syndicate.store import postgres  # loaded already: `conn` is its PgConnection

        super().__init__(conn, path)
        self._begin_write = postgres.begin_write(reply_timeout)
        self._begin_rows = postgres.begin_write(reply_timeout, rows_only=True)
        self._begin_read = postgres.BEGIN_READ
        # For connect_async.
        self._url, self._busy_timeout, self._reply_timeout = url, busy_timeout, reply_timeout
        self._url_name = url_name

    async def connect_async(self) -> Any:
        """A second connection to this (already migrated) store, a psycopg
        AsyncConnection whose errors are PgError, for statements run on an event loop
        (`ledger.PgQueue`).

        Raises StoreUnavailableError (exit 75) when the server cannot be reached,
        StoreAccessError (exit 2) when it refuses the login.
        """
        from syndicate.store import postgres

        try:
            return await postgres.connect_async(
                self._url, busy_timeout=self._busy_timeout, reply_timeout=self._reply_timeout
            )
        except PgError as exc:
            raise not_connected(str(self.path), self._url, exc, url_name=self._url_name) from exc


def open_database(
    path: Path,
    *,
    url: str = "",
    any_thread: bool = False,
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    read_only: bool = False,
    reply_timeout: float | None = DEFAULT_REPLY_TIMEOUT,
    url_name: str = URL_NAME,
) -> Database:
    """Open (creating if needed) and migrate the store: PostgreSQL at `url`, else `path`.

    `url` is `store.url` (a PostgreSQL URL) or empty for the SQLite file at `path`;
    `url_name` is how hints name it, where it came from (`SYNDICATE_STORE_URL`).

    Raises StoreError with the path when the file cannot be opened or is not
    a syndicate database, StoreBusyError when another connection held the write
    lock for longer than `busy_timeout` seconds (each statement waits that long).
    `any_thread` lets a thread other than this one use the connection (one thread
    at a time: the caller serialises its use). `read_only` refuses every write on
    this connection (`PRAGMA query_only`), for a reader beside the writer.
    On PostgreSQL a server that cannot be reached is StoreUnavailableError (exit 75),
    named by host, port and database, never by password; so is one that sends nothing for
    `reply_timeout` seconds while a statement waits for it (0 or None: no bound). A login
    the server refuses (password, role, database, pg_hba.conf) is StoreAccessError (exit 2).
    """
    if url:
        return _open_postgres(
            url,
            busy_timeout=busy_timeout,
            read_only=read_only,
            reply_timeout=reply_timeout,
            url_name=url_name,
        )
    try:
        _make_private_folder(path.parent)
        _create_private_file(path)
        found = {name for name in _SIDE_FILES if path.with_name(path.name + name).exists()}
        # isolation_level=None: we issue BEGIN ourselves, so transactions are explicit.
        conn = sqlite3.connect(
            path,
            isolation_level=None,
            timeout=busy_timeout,
            check_same_thread=not any_thread,
        )
    except (sqlite3.Error, OSError) as exc:
        denied = _not_a_file_error(path) or _access_error(path) or _out_of_files(path)
        if denied is not None:
            raise denied from exc
        raise StoreError(
            f"{path}: cannot open the database: {exc}.",
            hint=OPEN_HINT,
        ) from exc
    db = Database(conn, path)
    try:
        conn.execute(f"PRAGMA busy_timeout = {round(busy_timeout * 1000)}")
        # New databases only (an existing one keeps its size): a stored article, body
        # and record, is about 10 KiB, which 4 KiB pages split over three pages.
        conn.execute("PRAGMA page_size = 8192")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        _migrate(db)
        if read_only:
            conn.execute("PRAGMA query_only = ON")
        # Only now, when SQLite has read it as a syndicate store: a paths.database naming
        # a folder ("/tmp") or some other file is refused above with its mode left alone.
        _tighten_private_file(path, warn=found)
    except sqlite3.DatabaseError as exc:
        conn.close()
        _raise_if_try_later(path, exc)  # busy or full: the file itself is fine
        # Another user's, or this process out of files: the file itself is fine too.
        denied = _access_error(path) or _out_of_files(path)
        if denied is not None:
            raise denied from exc
        raise StoreError(
            f"{path}: not a usable syndicate database: {exc}.",
            hint=NOT_A_STORE_HINT,
        ) from exc
    except BaseException:
        conn.close()
        raise
    return db


def open_reader(
    path: Path,
    *,
    url: str = "",
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    reply_timeout: float | None = DEFAULT_REPLY_TIMEOUT,
    url_name: str = URL_NAME,
) -> Database | None:
    """Open the store to read only; None, making nothing, when there is no store yet.

    There is none yet when no file, or an empty one (a `touch`), is at `path` (SQLite), or
    when the PostgreSQL database at `url` holds no syndicate schema (no writing command has
    used it): a command that only reads leaves such a database as it found it, on either
    engine. A store of an
    older version is migrated first, as every command migrates it after an upgrade.
    Raises as `open_database` does.
    """
    if url:
        return _open_postgres(
            url,
            busy_timeout=busy_timeout,
            read_only=True,
            must_exist=True,
            reply_timeout=reply_timeout,
            url_name=url_name,
        )
    try:
        found = path.stat()
    except OSError:  # nothing there, as Path.exists() says
        return None
    if stat.S_ISREG(found.st_mode) and found.st_size == 0:
        return None  # SQLite would take it for a store of version 0, and migrate it
    return open_database(path, busy_timeout=busy_timeout, read_only=True)


def open_empty() -> Database:
    """An empty store in memory, migrated and read only: what reading a store not made
    yet sees (no subscribers, no articles), with the SQL of every other read."""
    db = Database(sqlite3.connect(":memory:", isolation_level=None), ":memory:")
    db.conn.execute("PRAGMA foreign_keys = ON")
    _migrate(db)
    db.conn.execute("PRAGMA query_only = ON")
    return db


@overload
def _open_postgres(
    url: str,
    *,
    busy_timeout: float,
    read_only: bool,
    reply_timeout: float | None,
    must_exist: Literal[False] = False,
    url_name: str = URL_NAME,
) -> Database: ...
@overload
def _open_postgres(
    url: str,
    *,
    busy_timeout: float,
    read_only: bool,
    reply_timeout: float | None,
    must_exist: bool,
    url_name: str = URL_NAME,
) -> Database | None: ...
def _open_postgres(
    url: str,
    *,
    busy_timeout: float,
    read_only: bool,
    reply_timeout: float | None,
    must_exist: bool = False,
    url_name: str = URL_NAME,
) -> Database | None:
    from syndicate.store import postgres  # psycopg loads here, on PostgreSQL only

    try:
        postgres.parse_url(url)
    except ValueError as exc:
        # Not libpq's own message: it quotes what it could not read, the password included.
        raise StoreError(
            f"PostgreSQL URL: libpq cannot read it: {exc}. The URL is not shown, as it may "
            "hold a password.",
            hint=f"Check {url_name}; in the password write '%' as %25, '/' as %2F, '@' as %40.",
        ) from None
    reply_timeout = reply_timeout or None  # 0: no bound
    try:
        conn = postgres.connect(url, busy_timeout=busy_timeout, reply_timeout=reply_timeout)
    except PgError as exc:
        where = postgres.where(url, postgres.tried(exc))
        raise not_connected(where, url, exc, url_name=url_name) from exc
    # Named as libpq connected: a service file or PGHOST may say what the URL does not.
    where = postgres.where(url, conn.raw.pgconn)
    db = PgDatabase(
        conn,
        where,
        url=url,
        busy_timeout=busy_timeout,
        reply_timeout=reply_timeout,
        url_name=url_name,
    )
    try:
        if must_exist and db.schema_version == 0:  # never used: no store yet, left alone
            conn.close()
            return None
        _migrate(db)
        if read_only:
            conn.execute("SET default_transaction_read_only = on")
    except PgError as exc:
        conn.close()
        _raise_if_try_later(where, exc)
        # 3F000: no schema on the search path the role may use (no USAGE on public).
        if exc.sqlstate in (INSUFFICIENT_PRIVILEGE, "3F000"):
            raise not_permitted(
                f"{where}: not a usable syndicate database: {_first_line(exc)}.",
                making=exc.sqlstate == "3F000" or "for schema" in str(exc),
            ) from exc
        raise StoreError(
            f"{where}: not a usable syndicate database: {_first_line(exc)}.",
            hint=UNUSABLE_HINT,
        ) from exc
    except BaseException:
        conn.close()
        raise
    return db


def _make_private_folder(folder: Path) -> None:
    """Create `folder` and any missing parents, each 0700; existing folders are left alone."""
    missing: list[Path] = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for made in reversed(missing):
        try:
            made.mkdir(mode=_FOLDER_MODE)
        except FileExistsError:  # made by a concurrent process meanwhile
            continue


def _not_a_file_error(path: Path) -> StoreError | None:
    """The error for a SQLite store path that names a folder, or lies under a file (a
    `paths.database` of "notes/syndicate.db" where notes is a file): no user may make the
    store there, so it is not a matter of who runs the command. None otherwise."""
    try:
        if path.is_dir():
            return StoreError(f"{path}: a folder, not a file.", hint=FOLDER_HINT)
        parent = path.parent
        while not parent.exists() and parent.parent != parent:
            parent = parent.parent
        if parent.is_dir():
            return None
    except OSError:  # cannot be looked at: the caller's own error says why
        return None
    return StoreError(f"{path}: {parent} is not a folder.", hint=NO_FOLDER_HINT)


def _access_error(path: Path) -> StoreError | None:
    """The error for a SQLite store this user may not use: on a read-only file system, the
    file (or its -wal or -shm) not readable and writable by it, or a folder it may not make
    the missing ones in (another user's store, say: a cron job run as the wrong user). None
    when it may, or when the file cannot be looked at (the caller's own error says why).

    A link is judged where it leads: SQLite makes the -wal and -shm files beside the file
    the link leads to (a data volume's), not in the link's folder."""
    try:
        real = Path(os.path.realpath(path))
        folder = real.parent
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return StoreError(
                f"{path}: the file system holding it is mounted read-only.",
                hint="Mount it read-write, or point paths.database at a disk this machine may "
                "write to; nothing was changed.",
            )
        names = [real.with_name(real.name + name) for name in _SIDE_FILES]
        denied = [n for n in names if n.exists() and not _may(n, os.R_OK | os.W_OK)]
        if denied:
            what = "read and write it" if denied[0] == real else f"read and write {denied[0]}"
            info = denied[0].stat()
        elif all(n.exists() for n in names) or _may(folder, os.W_OK | os.X_OK):
            return None
        else:
            made = "its -wal and -shm files" if real.exists() else "it"
            what, info = f"make {made} in {folder}", folder.stat()
    except (OSError, NotImplementedError):
        return None
    me, owner = user_name(os.geteuid()), user_name(info.st_uid)
    if real.exists():
        whose = "folder" if not denied else "store"
        hint = (
            f"Run syndicate as {owner}, whose {whose} it is, or give {me} what it needs: "
            f"{_narrowest_change(me, denied, names, folder)}; nothing was changed."
        )
    else:
        hint = f"Run syndicate as {owner}, or point paths.database at a folder {me} may write to."
    return StoreError(
        f"{path}: this user ({me}) may not {what} "
        f"(owner {owner}, mode {stat.S_IMODE(info.st_mode):04o}).",
        hint=hint,
    )


def _out_of_files(path: Path) -> OutOfFilesError | None:
    """The error for SQLite's "unable to open database file" when this process has (nearly)
    every file open that it may (`ulimit -n`): the -wal or -shm found no file left, and the
    store is fine. None when files are left (the caller's own error says why)."""
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if limit == resource.RLIM_INFINITY:
            return None
        in_use = len(os.listdir("/proc/self/fd"))
    except (ImportError, ValueError):
        return None
    except OSError as exc:  # no file left even to list them (EMFILE), or no /proc
        if exc.errno not in (errno.EMFILE, errno.ENFILE):
            return None
        in_use = limit
    # SQLite closed what it had opened of the store before it gave up: a few are free again.
    if in_use + len(_SIDE_FILES) < limit:
        return None
    return OutOfFilesError(
        f"{path}: cannot open the database: this process has {in_use} of the {limit} files "
        "it may open (ulimit -n) in use; the store is fine.",
        hint="Raise the limit (ulimit -n, or LimitNOFILE= in a systemd unit), then run the "
        "command again.",
    )


def _narrowest_change(me: str, denied: list[Path], names: list[Path], folder: Path) -> str:
    """The shell command that lets `me` use an existing SQLite store, and changes no more.

    `denied`: its files `me` may not read and write; `names`: the file, -wal and -shm. The
    folder is the problem only when a -wal or -shm is missing and `me` may not make it:
    then a folder holding nothing but the store is given too; any other (the project's
    folder, say, with the config beside the store) stays its owner's, and the missing files
    are made for `me` instead (SQLite then uses them as they are).
    """
    import shlex

    missing = [n for n in names if not n.exists()]
    if not missing or _may(folder, os.W_OK | os.X_OK):
        missing = []
    give = list(denied)
    made: list[Path] = []
    if missing:
        if set(os.listdir(folder)) <= {n.name for n in names}:
            give.append(folder)
        else:
            made = missing
            give += [n for n in made if n not in give]
    made_args = " ".join(shlex.quote(str(n)) for n in made)
    steps = [f"touch {made_args}", f"chmod 600 {made_args}"] if made else []
    steps.append(f"chown {shlex.quote(me)} " + " ".join(shlex.quote(str(n)) for n in give))
    return " && ".join(steps)


def _may(path: Path, mode: int) -> bool:
    return os.access(path, mode, effective_ids=True)


def _create_private_file(path: Path) -> None:
    """Create the database file 0600 if it is missing."""
    # A link to no file yet (a data volume's place for it): the file is made where it leads,
    # as SQLite, following it, would make it with its own mode (0644).
    made = Path(os.path.realpath(path)) if path.is_symlink() and not path.exists() else path
    try:
        os.close(os.open(made, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE))
    except FileExistsError:
        pass


def _tighten_private_file(path: Path, *, warn: set[str]) -> None:
    """Take "others" off the database file and its -wal and -shm.

    An existing file keeps its group bits (a group shared with `syndicate serve` running
    as another user is a choice); read or write access for everyone else never is, so it
    is removed, with a warning for each of `warn` (the names found before SQLite made the
    others from the file's mode). Only stat and chmod: opening and closing the file here
    would drop every POSIX lock this process's SQLite connections hold on it.
    """
    for name in _SIDE_FILES:
        side = path.with_name(path.name + name)
        if name and side.is_symlink():
            continue  # a planted -wal/-shm link must not make us chmod what it points to
        try:
            mode = stat.S_IMODE(side.stat().st_mode)
            if mode & 0o007:
                side.chmod(mode & ~0o007)
                if name not in warn:
                    continue
                log.warning(
                    "%s: was open to all users (mode %04o); now %04o. Run chmod 600 %s "
                    "unless another user of its group needs it.",
                    side,
                    mode,
                    mode & ~0o007,
                    side,
                )
        except FileNotFoundError:
            continue
        except OSError as exc:  # not ours to change (or read-only): say so, and go on
            log.warning("%s: open to all users, and cannot be tightened: %s.", side, exc)


def _migrate(db: Database) -> None:
    current = db.schema_version
    latest = len(MIGRATIONS)
    if current > latest:
        raise StoreError(
            f"{db.path}: schema version {current} is newer than this syndicate knows ({latest}).",
            hint="Upgrade syndicate before using this database.",
        )
    if current == latest:
        return
    if isinstance(db, PgDatabase):
        _migrate_postgres(db, current, latest)
        return
    # Foreign keys are off while steps run, as SQLite's own recipe for rebuilding a table
    # says: dropping the old copy of a table must not cascade into the rows that point at
    # it. The pragma is a no-op inside a transaction, so it is set around them, and each
    # step checks the keys itself before it commits.
    db.conn.execute("PRAGMA foreign_keys = OFF")
    try:
        for version in range(current + 1, latest + 1):
            with db.transaction() as conn:
                # Another process may have run this step while we waited for the lock.
                if db.schema_version >= version:
                    continue
                for statement in MIGRATIONS[version - 1]:
                    if callable(statement):
                        statement(conn)
                    else:
                        conn.execute(statement)
                broken = conn.execute("PRAGMA foreign_key_check").fetchone()
                if broken is not None:
                    raise StoreError(
                        f"{db.path}: migration {version} would leave a row of {broken[0]} "
                        f"pointing at a missing row of {broken[2]}; nothing was changed.",
                        hint="Restore the database from a backup, or report this.",
                    )
                db._set_schema_version(version)
    finally:
        db.conn.execute("PRAGMA foreign_keys = ON")


def _migrate_postgres(db: PgDatabase, current: int, latest: int) -> None:
    """Run the PostgreSQL twin of each missing step, one transaction each (DDL included).

    The write lock is held for the whole run at session level, taken before any of its
    transactions begins: a transaction that began before another process's migration
    committed may still look its new tables up in a stale catalog cache, even after
    waiting for the lock, and try to make them again.

    Bounded as every statement is: a lock another session holds (a psql session, a
    report, a backup reading a table a step alters) is waited for `store.busy_timeout`
    (lock_timeout), a step's reply `store.reply_timeout`, and the server itself stops a
    step at `store.reply_timeout` (statement_timeout): a step the client gave up on must
    not go on holding its table's lock. Either ends the command with StoreUpgradeError
    (exit 75), the step rolled back; a longer step wants a larger store.reply_timeout.
    """
    from syndicate.store import postgres

    limit = db.conn.raw.reply_timeout
    try:
        db.conn.execute_as_is(f"SET statement_timeout = {round(limit * 1000) if limit else 0}")
        db.conn.execute(postgres.LOCK_SESSION)
        try:
            _migrate_postgres_locked(db, db.schema_version, latest)
        finally:
            db.conn.execute(postgres.UNLOCK_SESSION)
        db.conn.execute_as_is("RESET statement_timeout")
    except (PgError, StoreError) as exc:
        # A transaction's statement fails as StoreBusyError (or StoreUnavailableError), the
        # server's error its cause.
        cause = exc if isinstance(exc, PgError) else exc.__cause__
        if not isinstance(cause, PgError):
            raise
        upgrade = f"{db.path}: the schema upgrade from version {current} to {latest}"
        if cause.sqlstate == "55P03":  # lock_not_available: lock_timeout
            raise StoreUpgradeError(
                f"{upgrade} waited {db._busy_timeout:g} s (store.busy_timeout) for a lock "
                "another session holds; the step it was on was rolled back.",
                hint="Run the command again once that session is done (pg_stat_activity "
                "shows it), or raise store.busy_timeout.",
            ) from exc
        if limit and (cause.sqlstate == "57014" or str(cause) == str(postgres.no_reply(limit))):
            raise StoreUpgradeError(  # statement_timeout, or no reply for reply_timeout
                f"{upgrade} did not finish within {limit:g} s (store.reply_timeout); the "
                "step it was on was rolled back.",
                hint="Run the command again, or raise store.reply_timeout (0: no bound) if "
                "a step needs longer.",
            ) from exc
        raise


def _migrate_postgres_locked(db: PgDatabase, current: int, latest: int) -> None:
    for version in range(max(current + 1, PG_FIRST_VERSION), latest + 1):
        if version not in PG_MIGRATIONS:
            raise StoreError(
                f"{db.path}: schema step {version} has no PostgreSQL version; nothing was changed.",
                hint="Report this: every step after 9 needs one (store/pg_schema.py).",
            )
        with db.transaction() as conn:
            if db.schema_version >= version:  # another process ran it while we waited
                continue
            for statement in PG_MIGRATIONS[version]:
                if callable(statement):
                    statement(conn)
                else:
                    conn.execute_as_is(statement)
            db._set_schema_version(version)

"""The PostgreSQL engine: a connection that runs the area modules' SQL unchanged.

The area modules write their statements once, in the SQL both engines run, with
SQLite's parameter styles (`?` and `:name`). `PgConnection` offers the part of
`sqlite3.Connection` they use (`execute`, `executemany`, `commit`, `rollback`) over a
psycopg 3 connection in autocommit mode, translating each statement's parameters to
psycopg's (`%s`, `%(name)s`) once and caching it.

Transactions keep SQLite's meaning (see `store.Database`): a write transaction takes
one transaction-scoped advisory lock, so writers run one at a time as under SQLite's
`BEGIN IMMEDIATE` and a read-then-write in one transaction cannot race another
writer; readers take a REPEATABLE READ snapshot and never wait. Waiting for the lock
ends after `store.busy_timeout` (`lock_timeout`), which is a busy store: exit 75. The
send queue's claim is the one writer that does not take the lock: it uses row locks
(`FOR UPDATE SKIP LOCKED`), so workers on many machines claim batches side by side.

A server that stops answering (a partition, a hung host, a stopped backend whose kernel
still acknowledges every packet, so TCP never notices) must not hang a command: each wait
for the server ends once it has sent nothing for `store.reply_timeout` seconds (`NoReply`,
a broken connection: exit 75), and connecting ends after at most 10 s.

psycopg is imported here only, and this module only when a PostgreSQL store is opened: each
psycopg error that leaves it (a statement, a fetch, a commit, connecting, the asyncio
connection, `LoopStatement`) is the store's own `pgerrors.PgError`, psycopg's as its cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import select
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import errors as pg_errors
from psycopg import generators, pq
from psycopg.abc import PQGen
from psycopg.conninfo import conninfo_to_dict
from psycopg.waiting import Ready

from syndicate.store.pgerrors import PgError, PgIntegrityError

# Key of the advisory lock every write transaction takes (any fixed 64-bit number:
# "syndicat" in ASCII).
WRITE_LOCK_KEY = 0x73796E6469636174 - (1 << 63)

# One round trip: every write transaction pays it, and each one costs a context switch.
BEGIN_WRITE = (f"BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK_KEY})",)
BEGIN_ROWS = ("BEGIN",)  # a transaction that writes only rows it locks itself


def begin_write(reply_timeout: float | None, *, rows_only: bool = False) -> tuple[str, ...]:
    """The statements that begin a write transaction (`rows_only`: one that takes no write
    lock), which the server ends when its client sends nothing for `reply_timeout` seconds
    (None: never).

    A client that stops inside one (a machine hung, or gone behind a firewall that drops
    its packets: the server's TCP keeps the session for some two hours) would otherwise
    hold the store's write lock, or its claimed rows, that long, and every other machine's
    writes be busy. Write transactions are short, and read none from the client between
    their statements, so only a stopped client is silent that long; the session is ended
    (`25P03`), its transaction rolled back. Read snapshots (`subscribers list | less`)
    are not bounded.
    """
    begin = BEGIN_ROWS[0] if rows_only else BEGIN_WRITE[0]
    if not reply_timeout:
        return (begin,)
    bound = f"SET LOCAL idle_in_transaction_session_timeout = {max(1, round(reply_timeout * 1000))}"
    first, _, rest = begin.partition("; ")
    return ("; ".join(part for part in (first, bound, rest) if part),)


BEGIN_READ = ("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",)
# The same lock held by a session across several transactions (the migrations).
LOCK_SESSION = f"SELECT pg_advisory_lock({WRITE_LOCK_KEY})"
UNLOCK_SESSION = f"SELECT pg_advisory_unlock({WRITE_LOCK_KEY})"

Params = Sequence[Any] | Mapping[str, Any]

# Whatever the URL or PGCLIENTENCODING says: under LATIN1, say, Vietnamese text could not be
# sent at all (a UnicodeEncodeError out of every statement that carried it).
CLIENT_ENCODING = "UTF8"

_TOKENS = re.compile(
    r"""
    (?P<escaped>(?<![\w$])[Ee]'(?:[^'\\]|\\.|'')*')  # E'..\'..': left alone
    | (?P<dollar>\$(?P<tag>(?:[A-Za-z_]\w*)?)\$.*?\$(?P=tag)\$)  # $$..$$, $x$..$x$: too
    | (?P<block>/\*.*?\*/)            # a block comment
    | (?P<literal>'(?:[^']|'')*')     # a string literal: left alone
    | (?P<ident>"(?:[^"]|"")*")       # a quoted identifier
    | (?P<comment>--[^\n]*)           # a comment
    | (?P<cast>::)                    # a PostgreSQL cast, not a parameter
    | (?P<char>\bchar\()              # SQLite's char(n) is PostgreSQL's chr(n)
    | :(?P<name>[A-Za-z_]\w*)         # a named parameter
    | (?P<question>\?)                # a positional parameter
    | (?P<percent>%)                  # psycopg's own marker: doubled
    """,
    re.VERBOSE | re.DOTALL,
)


def translate(sql: str) -> str:
    """SQLite's parameter styles in `sql` as psycopg's: `?` -> `%s`, `:x` -> `%(x)s`.

    Every `%` is doubled (psycopg's marker, which it looks for inside literals too, so
    statements always go with parameters, `()` when there are none). Outside literals,
    SQLite's `char(n)` becomes PostgreSQL's `chr(n)`, the one function the area modules
    use whose name differs.
    """

    def swap(match: re.Match[str]) -> str:
        if match.group("name"):
            return f"%({match.group('name')})s"
        if match.group("question"):
            return "%s"
        if match.group("percent"):
            return "%%"
        if match.group("char"):
            return "chr("
        # A literal, identifier or comment keeps its text; psycopg reads `%` everywhere.
        # (No statement of ours has an E'' string, $$ quoting or a block comment: they are
        # read whole all the same, so one added later keeps its `?`, `:x` and `char(`.)
        return match.group(0).replace("%", "%%")

    return _TOKENS.sub(swap, sql)


def positional(sql: str, names: Sequence[str]) -> str:
    """`sql`'s named parameters (`:x`) as PostgreSQL's own, numbered in the order of `names`
    (`:x` -> `$1`); for statements prepared on the server (`LoopStatement`)."""

    def swap(match: re.Match[str]) -> str:
        if match.group("name"):
            return f"${names.index(match.group('name')) + 1}"
        if match.group("question"):
            raise ValueError("positional() takes named parameters only")
        if match.group("char"):
            return "chr("
        return match.group(0)

    return _TOKENS.sub(swap, sql)


# PostgreSQL's text holds no NUL, which SQLite's does: a NUL in a value (a header of a stranger's
# bounce mail, a server's reply) failed the whole statement. It goes in as U+FFFD, the
# character that stands for what cannot be shown.
_NUL, NUL_STANDIN = "\x00", "\ufffd"


def _no_nul(value: Any) -> Any:
    return value.replace(_NUL, NUL_STANDIN) if isinstance(value, str) else value


def without_nul(params: Params) -> Params:
    """`params` with every NUL in its text values replaced (the same object when none has one)."""
    if isinstance(params, Mapping):
        if any(isinstance(v, str) and _NUL in v for v in params.values()):
            return {key: _no_nul(value) for key, value in params.items()}
        return params
    if any(isinstance(v, str) and _NUL in v for v in params):
        return [_no_nul(value) for value in params]
    return params


# Connecting waits at most this long (libpq's connect_timeout), or store.reply_timeout
# when that is shorter.
CONNECT_TIMEOUT = 10.0


class NoReply(psycopg.OperationalError):
    """The server sent nothing for `store.reply_timeout` seconds while a statement waited for
    its reply: taken as gone (`is_gone`); the connection is closed."""


def no_reply(limit: float) -> NoReply:
    return NoReply(f"the server sent nothing for {limit:g} s (store.reply_timeout)")


def to_pg_error(exc: Exception) -> PgError:
    """`exc` as the store's own error, with its text and SQLSTATE, `exc` as its cause.

    psycopg's own errors with no SQLSTATE (a closed or broken connection, NoReply) are
    `broken`: the server is gone (`pgerrors.is_gone`).
    """
    state = getattr(exc, "sqlstate", None)
    kind = PgIntegrityError if isinstance(exc, pg_errors.IntegrityError) else PgError
    broken = state is None and isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))
    error = kind(str(exc), sqlstate=state, broken=broken)
    error.__cause__ = exc
    return error


def _failure(exc: psycopg.Error, lost: NoReply | None) -> PgError:
    """`exc` as a PgError; on a connection closed for a reply that never came (`lost`), that
    NoReply's, so the statements tried on it afterwards (a clean-up in a `finally`) say why,
    not only that it is closed."""
    if lost is not None and isinstance(exc, psycopg.OperationalError):
        error = PgError(str(lost), broken=True)
        error.__cause__ = exc
        return error
    return to_pg_error(exc)


if TYPE_CHECKING:
    _CursorBase = psycopg.Cursor[Any]
    _AsyncCursorBase = psycopg.AsyncCursor[Any]
else:
    _CursorBase = _AsyncCursorBase = object


class _Translating(_CursorBase):
    """A psycopg cursor each of whose calls that runs a statement, reads a row or talks to
    the server raises PgError, never psycopg's own (rows are read lazily by a server-side
    cursor, and even a client-side one converts each row as it is fetched)."""

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().execute(*args, **kwargs)
        except psycopg.Error as exc:
            raise _failure(exc, getattr(self.connection, "lost", None)) from exc

    def executemany(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().executemany(*args, **kwargs)
        except psycopg.Error as exc:
            raise _failure(exc, getattr(self.connection, "lost", None)) from exc

    def fetchone(self) -> Any:
        try:
            return super().fetchone()
        except psycopg.Error as exc:
            raise to_pg_error(exc) from exc

    def fetchmany(self, size: int = 0) -> list[Any]:
        try:
            return super().fetchmany(size)
        except psycopg.Error as exc:
            raise to_pg_error(exc) from exc

    def fetchall(self) -> list[Any]:
        try:
            return super().fetchall()
        except psycopg.Error as exc:
            raise to_pg_error(exc) from exc

    def __next__(self) -> Any:
        try:
            return super().__next__()
        except psycopg.Error as exc:
            raise to_pg_error(exc) from exc

    def close(self) -> None:
        try:
            super().close()
        except psycopg.Error as exc:
            raise to_pg_error(exc) from exc

    @contextlib.contextmanager
    def copy(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        try:
            with super().copy(*args, **kwargs) as copy:
                yield copy
        except psycopg.Error as exc:
            raise _failure(exc, getattr(self.connection, "lost", None)) from exc


class _ClientCursor(_Translating, psycopg.ClientCursor[Any]):
    """The store's statements: parameters bound on the client (see `connect`)."""


class _Cursor(_Translating, psycopg.Cursor[Any]):
    """`PgConnection.executemany`'s: parameters bound on the server."""


class _ServerCursor(_Translating, psycopg.ServerCursor[Any]):
    """A named cursor, whose rows stay on the server until fetched (`store copy`)."""


class _AsyncTranslating(_AsyncCursorBase):
    """`_Translating` on asyncio (the send queue's claims)."""

    async def fetchone(self) -> Any:
        try:
            return await super().fetchone()
        except psycopg.Error as exc:
            raise to_pg_error(exc) from exc

    async def fetchmany(self, size: int = 0) -> list[Any]:
        try:
            return await super().fetchmany(size)
        except psycopg.Error as exc:
            raise to_pg_error(exc) from exc

    async def fetchall(self) -> list[Any]:
        try:
            return await super().fetchall()
        except psycopg.Error as exc:
            raise to_pg_error(exc) from exc

    async def __anext__(self) -> Any:
        try:
            return await super().__anext__()
        except psycopg.Error as exc:
            raise to_pg_error(exc) from exc


class _AsyncCursor(_AsyncTranslating, psycopg.AsyncCursor[Any]):
    """`connect_async`'s."""


_READ = int(Ready.R)


def _bounded(gen: PQGen[Any], limit: float) -> PQGen[Any]:
    """`gen`, a psycopg wait generator, failing with NoReply once the server has sent nothing
    for `limit` seconds.

    psycopg's wait functions resume their generator at least every 0.1 s (their `interval`),
    with nothing ready when the socket stayed quiet: the silence is measured there. Only bytes
    from the server end it: a socket that takes what we write proves only the kernel alive
    (a stopped backend's kernel keeps taking them until its buffers fill). So a reply that
    streams in (a big SELECT) is never cut, and a statement that runs for long before its
    reply must run for less than `limit`.
    """
    heard = time.monotonic()
    try:
        state = next(gen)
        while True:
            ready = yield state
            if ready & _READ:
                heard = time.monotonic()
            elif time.monotonic() - heard >= limit:
                gen.close()
                raise no_reply(limit)
            state = gen.send(ready)
    except StopIteration as done:
        return done.value


class BoundedConnection(psycopg.Connection[Any]):
    """A psycopg connection whose every wait for the server ends after `reply_timeout`
    seconds of silence (None: no bound) with NoReply, closing the connection: after a reply
    that never came, what it would next read is unknown. `lost` keeps that NoReply, so the
    statements tried on the closed connection afterwards (a clean-up in a `finally`) say
    why, not only that it is closed."""

    reply_timeout: float | None = None
    lost: NoReply | None = None

    def wait(self, gen: PQGen[Any], *args: Any, **kwargs: Any) -> Any:
        if self.reply_timeout is None:
            return super().wait(gen, *args, **kwargs)
        try:
            return super().wait(_bounded(gen, self.reply_timeout), *args, **kwargs)
        except NoReply as exc:
            self.lost = exc
            self.close()
            raise


class BoundedAsyncConnection(psycopg.AsyncConnection[Any]):
    """`BoundedConnection` on asyncio."""

    reply_timeout: float | None = None
    lost: NoReply | None = None

    async def wait(self, gen: PQGen[Any], *args: Any, **kwargs: Any) -> Any:
        if self.reply_timeout is None:
            return await super().wait(gen, *args, **kwargs)
        try:
            return await super().wait(_bounded(gen, self.reply_timeout), *args, **kwargs)
        except NoReply as exc:
            self.lost = exc
            await self.close()
            raise

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute(*args, **kwargs)
        except psycopg.Error as exc:
            raise _failure(exc, self.lost) from exc


def _connect_timeout(reply_timeout: float | None) -> int:
    """libpq's connect_timeout (whole seconds, 2 at least) for `reply_timeout`."""
    bound = CONNECT_TIMEOUT if reply_timeout is None else min(CONNECT_TIMEOUT, reply_timeout)
    return max(2, math.ceil(bound))


class PgConnection:
    """The part of sqlite3.Connection the area modules use, over psycopg."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.raw = conn
        self._sql: dict[str, str] = {}
        conn.server_cursor_factory = _ServerCursor

    def _translated(self, sql: str) -> str:
        found = self._sql.get(sql)
        if found is None:
            found = self._sql[sql] = translate(sql)
        return found

    def execute(self, sql: str, params: Params | None = None) -> psycopg.Cursor[Any]:
        try:
            return self.raw.execute(
                self._translated(sql), () if params is None else without_nul(params)
            )
        except psycopg.Error as exc:
            raise _failure(exc, getattr(self.raw, "lost", None)) from exc

    def execute_as_is(self, sql: str) -> None:
        """Run `sql` as written, with no parameters and nothing translated (the migrations'
        PostgreSQL DDL)."""
        try:
            self.raw.execute(sql)
        except psycopg.Error as exc:
            raise _failure(exc, getattr(self.raw, "lost", None)) from exc

    def executemany(self, sql: str, rows: Iterable[Params]) -> psycopg.Cursor[Any]:
        # Bound on the server: a batch's statements are the plain INSERTs and UPDATEs of the
        # build and the ledger, whose parameters take their columns' types; psycopg prepares
        # each once and pipelines the rows, where a client-bound batch is parsed row by row.
        try:
            cursor = _Cursor(self.raw)
            cursor.executemany(self._translated(sql), (without_nul(row) for row in rows))
        except psycopg.Error as exc:
            raise _failure(exc, getattr(self.raw, "lost", None)) from exc
        return cursor

    def commit(self) -> None:
        self.execute_as_is("COMMIT")

    def rollback(self) -> None:
        self.execute_as_is("ROLLBACK")

    def close(self) -> None:
        try:
            self.raw.close()
        except psycopg.Error as exc:
            raise to_pg_error(exc) from exc

    def settle(self) -> None:
        """Make the connection take statements again after an exception other than Ctrl-C
        (SIGTERM's) cut a wait for the server short: psycopg cancels the statement only for
        KeyboardInterrupt, and left running it refuses every next one ("another command is
        already in progress"). The statement is cancelled, its end read and its transaction
        rolled back. Waits as a statement does (store.reply_timeout); raises PgError."""
        raw = self.raw
        if raw.closed:
            return
        try:
            if raw.pgconn.transaction_status == pq.TransactionStatus.ACTIVE:
                raw.cancel_safe(timeout=CONNECT_TIMEOUT)
                for _ in range(3):  # its results; a COPY cut short is ended first
                    results = raw.wait(generators.fetch_many(raw.pgconn))
                    if not results or results[-1].status != pq.ExecStatus.COPY_IN:
                        break
                    raw.wait(generators.copy_end(raw.pgconn, b"cancelled"))
        except psycopg.Error as exc:
            raise _failure(exc, getattr(raw, "lost", None)) from exc
        if raw.pgconn.transaction_status != pq.TransactionStatus.IDLE:
            self.rollback()

    def is_dropped(self) -> bool:
        """Whether the server has ended this idle connection (a restart, a fail-over,
        pg_terminate_backend), found without a round trip.

        The server sends an idle connection nothing unless it ends it (a FATAL error,
        then the socket closes): anything to read while idle means the connection is
        gone, and its next statement would fail.
        """
        raw = self.raw
        if raw.closed or raw.broken:
            return True
        if raw.info.transaction_status is not psycopg.pq.TransactionStatus.IDLE:
            return False
        poller = select.poll()
        poller.register(raw.fileno(), select.POLLIN)
        return bool(poller.poll(0))


def redact(url: str) -> str:
    """`url` without its password, for every message that names the store."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


# libpq quotes what it could not read: a password's text, or the whole URL.
_QUOTED = re.compile(r':?\s*"[^"]*"')


def parse_url(url: str) -> dict[str, str]:
    """The connection parameters of `url` as libpq reads them.

    Raises ValueError whose text never quotes `url` (it may hold a password): libpq's own
    messages quote the part they could not read. A password with an unencoded `/` would
    end the URL's host part early, and then be read as a port or dbname and quoted as
    one; an `@` in the path says so, and is refused too. So is a second `@` before the
    host: libpq would read what follows the first as the host.
    """
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error as exc:
        lines = str(exc).strip().splitlines()
        reason = _QUOTED.sub("", lines[0] if lines else "").strip().rstrip(".")
        raise ValueError(reason or "libpq cannot read it") from None
    # As libpq reads a URL: the host part ends at the first '/' or '?', the path at '?'.
    rest = url.partition("://")[2]
    authority = re.split(r"[/?]", rest, maxsplit=1)[0]
    if "@" in rest[len(authority) :].partition("?")[0]:
        raise ValueError(
            "an '@' comes after its host part: a '/' in the password must be percent-encoded (%2F)"
        )
    if authority.count("@") > 1:
        # libpq ends the user and password at the first '@': the rest of the password would
        # be read as the host, looked up, and named in every message.
        raise ValueError(
            "its host part holds an '@': an '@' in the user or password must be "
            "percent-encoded (%40)"
        )
    ports = str(params.get("port") or "")
    if ports and not all(port.strip().isdigit() for port in ports.split(",")):
        # libpq would quote it when connecting: a password, when the host was left out.
        raise ValueError("its port is not a number")
    return {key: str(value) for key, value in params.items()}


def where(url: str, used: Any = None) -> str:
    """How messages name a PostgreSQL store: `PostgreSQL at host:port/dbname`.

    Built from what libpq reads (a `host=` parameter, several hosts), never the password.
    `used`: the libpq connection (`PgConnection.raw.pgconn`, or `tried(error)` of one that
    failed), whose host, port and database fill in what the URL leaves to libpq (a service
    file, PGHOST and the like); a URL naming several hosts keeps its own list.
    """
    try:
        params = parse_url(url)
    except ValueError:
        return "PostgreSQL"
    if used is not None and "," not in params.get("host", ""):
        params.update(used_parameters(used))
    hosts = params.get("host", "")
    service = params.get("service") or os.environ.get("PGSERVICE")  # as libpq reads it
    if not hosts and service:
        return f"PostgreSQL service {service!r}"
    hosts = hosts or "localhost"
    ports = params.get("port", "")
    if ports and hosts.count(",") == ports.count(","):
        pairs = zip(hosts.split(","), ports.split(","), strict=True)
        hosts = ",".join(f"{host}:{port}" for host, port in pairs)
    elif ports:
        hosts = f"{hosts}:{ports}"
    dbname = params.get("dbname", "")
    return f"PostgreSQL at {hosts}{'/' + dbname if dbname else ''}"


def tried(exc: BaseException) -> Any:
    """The libpq connection of a connection attempt that failed with `exc` (a PgError, or
    psycopg's own), holding the parameters libpq used; None when there is none."""
    for error in (exc, exc.__cause__):
        found = getattr(error, "pgconn", None)
        if found is not None:
            return found
    return None


def used_parameters(pgconn: Any) -> dict[str, str]:
    """The host, port, dbname and user a libpq connection used (or tried), as libpq took
    them from the URL, a service file, its environment variables and its defaults; the
    ones it does not know are left out."""
    found: dict[str, str] = {}
    try:
        if not pgconn.host:  # libpq stopped before it chose a server: it used nothing yet
            return found
    except psycopg.Error:
        return found
    for key, attribute in (("host", "host"), ("port", "port"), ("dbname", "db"), ("user", "user")):
        try:
            value = getattr(pgconn, attribute)
        except psycopg.Error:  # a connection closed meanwhile: nothing to read
            continue
        if value:
            found[key] = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return found


def connect(url: str, *, busy_timeout: float, reply_timeout: float | None) -> PgConnection:
    """Open an autocommit connection to `url`; raises PgError when it cannot.

    Each wait for the server ends after `reply_timeout` seconds of silence (None: never)."""
    # Parameters are bound on the client, as SQLite binds them: a literal takes the type its
    # place asks for (`:cutoff IS NULL`, `CASE WHEN :flag`), which server-side binding of
    # untyped parameters cannot do.
    try:
        conn = BoundedConnection.connect(
            url,
            autocommit=True,
            connect_timeout=_connect_timeout(reply_timeout),
            cursor_factory=_ClientCursor,
            client_encoding=CLIENT_ENCODING,
        )
    except psycopg.Error as exc:
        raise to_pg_error(exc) from exc
    conn.reply_timeout = reply_timeout
    pg = PgConnection(conn)
    try:
        pg.execute_as_is(_lock_timeout(busy_timeout))
    except BaseException:
        conn.close()
        raise
    return pg


def _lock_timeout(busy_timeout: float) -> str:
    """The statement that makes a connection wait `busy_timeout` seconds for a lock (at
    least 1 ms: 0 would mean for ever)."""
    return f"SET lock_timeout = {max(1, round(busy_timeout * 1000))}"


async def connect_async(
    url: str, *, busy_timeout: float, reply_timeout: float | None
) -> BoundedAsyncConnection:
    """An autocommit asyncio connection to `url` (the send queue's sent marks and claims);
    raises PgError when it cannot, as do its `execute` and its cursors' fetches. Its
    statements use psycopg's own parameter style; each wait for the server ends after
    `reply_timeout` seconds of silence (None: never)."""
    try:
        conn = await BoundedAsyncConnection.connect(
            url,
            autocommit=True,
            connect_timeout=_connect_timeout(reply_timeout),
            client_encoding=CLIENT_ENCODING,
            cursor_factory=_AsyncCursor,
        )
    except psycopg.Error as exc:
        raise to_pg_error(exc) from exc
    conn.reply_timeout = reply_timeout
    try:
        await conn.execute(_lock_timeout(busy_timeout))
    except BaseException:
        await conn.close()
        raise
    return conn


# A refused login, by the server's or libpq's words: libpq reports a failed connection with
# no SQLSTATE, only the text (the server's FATAL line, in English unless its lc_messages says
# otherwise: another language's text stays "cannot reach", exit 75). Each names a setup
# problem that no retry fixes; the kind picks the hint.
_REFUSED = (
    ("password", re.compile(r"password authentication failed for user")),  # 28P01
    ("password", re.compile(r"fe_sendauth: no password supplied")),  # libpq: none to give
    # 28000: the methods pg_hba.conf may name that decide on this machine alone. One that
    # asks another server (LDAP, RADIUS, PAM's backend, ident, GSSAPI's KDC) fails with the
    # same words when that server is down or slow: not matched, exit 75, tried again.
    ("access", re.compile(r"(?:Peer|certificate|BSD) authentication failed for user")),
    ("role", re.compile(r'role "[^"]*" (?:does not exist|is not permitted to log in)')),
    ("access", re.compile(r"no pg_hba\.conf entry for|pg_hba\.conf rejects connection")),
    ("access", re.compile(r"permission denied for database")),  # 42501 at connect
    ("ssl", re.compile(r"server does not support SSL, but SSL was required")),
    ("database", re.compile(r'database "[^"]*" does not exist')),  # 3D000
)


def refused_login(exc: BaseException) -> tuple[str, str] | None:
    """For a failed connection the server refused to log in (no retry fixes it): its kind
    ("password", "role", "access", "ssl" or "database") and the reason, as the server worded it.
    None for a server down, starting, busy or unreachable."""
    for line in str(exc).splitlines():
        for kind, pattern in _REFUSED:
            found = pattern.search(line)
            if found is not None:
                fatal = line.find("FATAL:")
                reason = line[fatal + len("FATAL:") :] if fatal >= 0 else line[found.start() :]
                return kind, reason.strip().rstrip(".")
    return None


# A server (or role, or database) that takes no more connections, by the server's words
# (53300, sent with no SQLSTATE at connect): busy, not broken; the hint names the limit.
_NO_SLOT = re.compile(
    r"sorry, too many clients already|too many connections for (?:role|database) \"[^\"]*\""
    r"|remaining connection slots are reserved[^\n]*"
)


def connection_limit(exc: BaseException) -> str | None:
    """For a connection refused because the server's max_connections (or a role's or
    database's CONNECTION LIMIT) is reached: the server's words for it; else None."""
    found = _NO_SLOT.search(str(exc))
    return found.group(0).rstrip(".") if found is not None else None


class LoopStatement:
    """One statement prepared on the server and run on an asyncio connection's libpq
    connection directly: `start` writes it to the server before it returns, and the future
    it returns is done by the socket's reader callback, in the loop turn the reply arrives.

    psycopg's `execute` is a coroutine: a task has to start it (a turn of the loop), and
    its wait for the reply ends in a future whose task resumes a turn later; on a busy send
    loop each turn is a fraction of a millisecond that a waiting sender stands idle (the
    `sent` marks: `ledger.PgQueue`). One statement at a time, on a connection used for
    nothing else once prepared. Parameters go in PostgreSQL's text form; a failure is a
    PgError (psycopg's own error for its SQLSTATE, or for the broken connection, as its
    cause), passed through `failure`. On a `BoundedAsyncConnection` a statement the server
    has not answered within its `reply_timeout` fails with NoReply's, and the connection is
    closed.

    A caller that gives up on its future (cancels it) does not stop the statement, which
    may still commit: its reply is read and dropped, and a statement started meanwhile
    goes out once that reply has come (libpq takes one at a time).
    """

    def __init__(
        self,
        conn: psycopg.AsyncConnection[Any],
        name: str,
        failure: Callable[[Exception], Exception],
    ) -> None:
        self.conn, self.name, self.failure = conn, name.encode("ascii"), failure
        self.pgconn = conn.pgconn
        self.pgconn.nonblocking = 1  # a write the socket cannot take waits for the writer
        self.fd = self.pgconn.socket
        self.loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] | None = None
        self.error: Exception | None = None
        self.reply_timeout: float | None = getattr(conn, "reply_timeout", None)
        self.timer: asyncio.TimerHandle | None = None
        self.lost: NoReply | None = None  # why the connection was closed: every later start says it
        # Started while a cancelled statement's reply was still due: sent once it has come.
        self.queued: tuple[list[bytes], asyncio.Future[None]] | None = None

    @classmethod
    async def prepare(
        cls,
        conn: psycopg.AsyncConnection[Any],
        name: str,
        sql: str,
        types: Sequence[str],
        failure: Callable[[Exception], Exception],
        *,
        plan_once: bool = False,
    ) -> LoopStatement:
        """`sql` with PostgreSQL's own parameters ($1...), of `types` ("text", "bigint[]").

        `plan_once`: the statement's one generic plan serves every run (the connection's
        `plan_cache_mode`, PostgreSQL 12 and later), for a statement whose best plan does
        not depend on its values. Raises PgError when it cannot (the connection broke
        meanwhile, say)."""
        try:
            if plan_once and conn.info.server_version >= 120000:
                await conn.execute("SET plan_cache_mode = force_generic_plan")
            await conn.execute(f"PREPARE {name} ({', '.join(types)}) AS {sql}")
            return cls(conn, name, failure)  # reads libpq's socket: a closed one raises
        except psycopg.Error as exc:
            raise to_pg_error(exc) from exc

    @property
    def running(self) -> bool:
        return self.done is not None

    def start(self, params: Sequence[bytes]) -> asyncio.Future[None]:
        """Run the statement with `params`; the future is done once the server has answered."""
        done = self.loop.create_future()
        if self.done is not None:
            given_up = self.done.cancelled() and (self.queued is None or self.queued[1].done())
            if not given_up:
                raise RuntimeError("LoopStatement runs one statement at a time")
            self.queued = (list(params), done)
            return done
        self._send(list(params), done)
        return done

    def _send(self, params: list[bytes], done: asyncio.Future[None]) -> None:
        if self.lost is not None:
            done.set_exception(self.failure(to_pg_error(self.lost)))
            return
        try:
            self.pgconn.send_query_prepared(self.name, list(params))
            unsent = self.pgconn.flush()
            # libpq's socket now (it raises once libpq has closed it): never a descriptor
            # it closed, which the next socket opened may have been given.
            self.fd = self.pgconn.socket
        except psycopg.Error as exc:  # the connection broke
            done.set_exception(self.failure(to_pg_error(exc)))
            return
        self.done, self.error = done, None
        self.loop.add_reader(self.fd, self._readable)
        if unsent:
            self.loop.add_writer(self.fd, self._writable)
        if self.reply_timeout is not None:
            # One statement of a few rows: its whole round trip, not only a silence, is
            # bounded (one timer a statement, where a silence would want one a read).
            self.timer = self.loop.call_later(self.reply_timeout, self._silent)

    def close(self) -> None:
        """Stop listening; a statement still running fails (its connection is being closed)."""
        closed = psycopg.OperationalError("the connection was closed")
        queued, self.queued = self.queued, None
        if queued is not None and not queued[1].done():
            queued[1].set_exception(self.failure(to_pg_error(closed)))
        if self.done is not None:
            self._finish(closed)

    def _writable(self) -> None:
        if self.done is None:  # queued in the loop turn the statement ended
            return
        try:
            if self.pgconn.flush() == 0:
                self.loop.remove_writer(self.fd)
        except psycopg.Error as exc:
            self._finish(exc)

    def _readable(self) -> None:
        if self.done is None:
            return
        pgconn = self.pgconn
        try:
            pgconn.consume_input()
            while not pgconn.is_busy():
                result = pgconn.get_result()
                if result is None:  # the statement's last result came
                    self._finish(self.error)
                    return
                if result.status != pq.ExecStatus.COMMAND_OK and self.error is None:
                    # psycopg's own exception for the result: its class says the SQLSTATE
                    # (`is_busy`, `is_gone` and `is_full` read it), its text has no "ERROR:".
                    self.error = pg_errors.error_from_result(result, self.conn.info.encoding)
        except psycopg.Error as exc:  # the connection broke
            self._finish(exc)

    def _silent(self) -> None:
        """The server has not answered in `reply_timeout`: the statement fails, the
        connection is closed (what it would read next is unknown)."""
        self.timer = None
        self.lost = no_reply(self.reply_timeout or 0)
        self._finish(self.lost)
        self.pgconn.finish()

    def _finish(self, error: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        done, self.done = self.done, None
        # A connection that broke had its socket closed by libpq, in the call that found it
        # broken (consume_input, flush). With the reader and the writer both registered the
        # loop's epoll then fails to change the closed descriptor (EBADF): the selector has
        # forgotten it all the same, and the future must still be finished.
        for remove in (self.loop.remove_reader, self.loop.remove_writer):
            with contextlib.suppress(OSError):
                remove(self.fd)
        if done is not None and not done.done():
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(self.failure(to_pg_error(error)))
        queued, self.queued = self.queued, None
        if queued is not None and not queued[1].done():
            self._send(*queued)

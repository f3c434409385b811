"""Store: copy a whole store into an empty one, SQLite or PostgreSQL on either side.

`copy_store` reads the source in one snapshot and writes the target in one write
transaction: the target gets every row or none. Tables and their columns come from the
schema itself (the catalog of each engine), so a table added by a later migration is
copied without a change here; both stores are at the same schema version (opened through
`open_database`), and the schema version itself is the target's own. Rows stream in
batches, so memory stays flat however long the list. Ids are kept, and each id sequence
of the target is set past the source's (PostgreSQL identity sequences; SQLite's
`sqlite_sequence` for AUTOINCREMENT tables), so no id is ever handed out twice.

`copy_to_new_file` makes a new SQLite store: it is built under a temporary name in the
target's folder and appears at its path only once complete, so a copy that fails (or is
stopped) leaves no file behind; what a killed one left there, the next one removes.
`copy_to_new_database` drops again the tables a failed copy's migration made in a new
PostgreSQL database. `copy_into` picks one for `store copy`.
"""

from __future__ import annotations

import copy
import errno
import fcntl
import logging
import os
import re
import signal
import stat
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from syndicate.errors import StoreError
from syndicate.store import (
    DB_ERRORS,
    DEFAULT_BUSY_TIMEOUT,
    DEFAULT_REPLY_TIMEOUT,
    NO_FOLDER_HINT,
    URL_NAME,
    Database,
    open_database,
    open_empty,
    open_reader,
    store_error,
)

log = logging.getLogger(__name__)

# Rows read and written at a time.
BATCH = 2000

# PostgreSQL's record of the schema version (SQLite keeps it in PRAGMA user_version):
# the target has its own.
_PG_VERSION_TABLE = "syndicate_schema"

# --- the catalog, per engine ---

# SQLite: the tables (its own `sqlite_*` ones left out), with their CREATE statement.
_SQLITE_TABLES = (
    "SELECT name, sql FROM sqlite_master WHERE type = 'table' "
    "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name"
)
# SQLite: a table's columns in order, and each one's place in the primary key (0: none).
_SQLITE_COLUMNS = "SELECT name, type, pk FROM pragma_table_info(?) ORDER BY cid"
# SQLite: the tables a table's foreign keys point at.
_SQLITE_PARENTS = 'SELECT DISTINCT "table" FROM pragma_foreign_key_list(?)'
# SQLite: the highest id an AUTOINCREMENT table ever handed out.
_SQLITE_SEQUENCE = "SELECT seq FROM sqlite_sequence WHERE name = ?"
_SQLITE_RAISE_SEQUENCE = "UPDATE sqlite_sequence SET seq = ? WHERE name = ? AND seq < ?"
_SQLITE_ADD_SEQUENCE = (
    "INSERT INTO sqlite_sequence (name, seq) SELECT ?, ? "
    "WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = ?)"
)

# PostgreSQL: the tables of the store's schema.
_PG_TABLES = (
    "SELECT table_name FROM information_schema.tables "
    "WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY table_name"
)
# PostgreSQL: a table's columns in order, and whether each is an identity column.
_PG_COLUMNS = (
    "SELECT column_name, is_identity FROM information_schema.columns "
    "WHERE table_schema = current_schema() AND table_name = ? ORDER BY ordinal_position"
)
# PostgreSQL: a table's primary key columns, in key order.
_PG_KEY = (
    "SELECT a.attname FROM pg_index i "
    "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) "
    "WHERE i.indrelid = to_regclass(?) AND i.indisprimary "
    "ORDER BY array_position(i.indkey::int2[], a.attnum)"
)
# PostgreSQL: the tables a table's foreign keys point at.
_PG_PARENTS = (
    "SELECT DISTINCT p.relname FROM pg_constraint c JOIN pg_class p ON p.oid = c.confrelid "
    "WHERE c.conrelid = to_regclass(?) AND c.contype = 'f'"
)
# PostgreSQL: the last value an identity sequence handed out (NULL: none yet).
_PG_SEQUENCE = "SELECT pg_sequence_last_value(pg_get_serial_sequence(?, ?)::regclass)"
# PostgreSQL: the next value of an identity sequence comes after `value`.
_PG_SET_SEQUENCE = "SELECT setval(pg_get_serial_sequence(?, ?), ?)"


@dataclass(frozen=True, slots=True)
class _Table:
    name: str
    columns: tuple[str, ...]
    key: tuple[str, ...]  # the primary key's columns
    parents: frozenset[str]  # tables its foreign keys point at
    counter: str | None  # the column a sequence numbers (identity, AUTOINCREMENT)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _read_tables(db: Database) -> dict[str, _Table]:
    """The store's tables as its catalog describes them (the schema version's left out)."""
    conn = db.conn
    tables: dict[str, _Table] = {}
    if db.dialect == "postgresql":
        for (name,) in conn.execute(_PG_TABLES).fetchall():
            if name == _PG_VERSION_TABLE:
                continue
            rows = conn.execute(_PG_COLUMNS, (name,)).fetchall()
            key = tuple(r[0] for r in conn.execute(_PG_KEY, (_quote(name),)).fetchall())
            parents = {r[0] for r in conn.execute(_PG_PARENTS, (_quote(name),)).fetchall()}
            identity = [r[0] for r in rows if r[1] == "YES"]
            tables[name] = _Table(
                name,
                tuple(r[0] for r in rows),
                key,
                frozenset(parents - {name}),
                identity[0] if identity else None,
            )
        return tables
    for name, sql in conn.execute(_SQLITE_TABLES).fetchall():
        rows = conn.execute(_SQLITE_COLUMNS, (name,)).fetchall()
        key = tuple(r[0] for r in sorted((r for r in rows if r[2]), key=lambda r: r[2]))
        parents = {r[0] for r in conn.execute(_SQLITE_PARENTS, (name,)).fetchall()}
        counter = None
        if "AUTOINCREMENT" in (sql or "").upper() and len(key) == 1:
            counter = key[0]
        tables[name] = _Table(
            name, tuple(r[0] for r in rows), key, frozenset(parents - {name}), counter
        )
    return tables


def _in_key_order(tables: dict[str, _Table]) -> list[_Table]:
    """The tables with each one after those its foreign keys point at (then by name)."""
    ordered: list[_Table] = []
    done: set[str] = set()
    waiting = sorted(tables)
    while waiting:
        ready = [
            n for n in waiting if tables[n].parents <= done | (tables[n].parents - set(tables))
        ]
        if not ready:  # a cycle of foreign keys: no order inserts it (none in our schema)
            raise StoreError(f"store copy: the foreign keys of {', '.join(waiting)} form a cycle.")
        for name in ready:
            ordered.append(tables[name])
            done.add(name)
        waiting = [n for n in waiting if n not in done]
    return ordered


def _check_same_schema(
    source: Database, target: Database, src: dict[str, _Table], dst: dict[str, _Table]
) -> None:
    for name in sorted(set(src) | set(dst)):
        if name not in dst or name not in src:
            having, lacking = (source, target) if name in src else (target, source)
            raise StoreError(
                f"{lacking.path}: has no table {name!r}, which {having.path} has; "
                "nothing was copied.",
                hint="Both stores must be syndicate stores of the same schema version.",
            )
        if set(src[name].columns) != set(dst[name].columns):
            raise StoreError(
                f"{target.path}: table {name!r} has columns {', '.join(dst[name].columns)}, "
                f"but {source.path} has {', '.join(src[name].columns)}; nothing was copied.",
                hint="Both stores must be syndicate stores of the same schema version.",
            )


def _refuse_rows(target: Database, tables: Sequence[_Table]) -> None:
    for table in tables:
        probe = f"SELECT 1 FROM {_quote(table.name)} LIMIT 1"  # noqa: S608 - catalog names
        if target.conn.execute(probe).fetchone():
            raise StoreError(
                f"{target.path}: table {table.name} is not empty; nothing was copied.",
                hint="Copy into a new, empty store (a new SQLite file or an empty "
                "PostgreSQL database).",
            )


@contextmanager
def _reading(source: Database, what: str) -> Iterator[None]:
    """Word a failed read of the source as the source's (StoreError), not the target's."""
    try:
        yield
    except DB_ERRORS as exc:
        raise store_error(source.path, what, exc) from exc


def _read_rows(db: Database, table: _Table) -> Iterator[Sequence[Sequence[Any]]]:
    """The table's rows in batches, in primary key order, never all at once.

    A failed read is worded as the source's (StoreError), not the target's.
    """
    try:
        yield from _fetch_rows(db, table)
    except DB_ERRORS as exc:
        raise store_error(db.path, f"cannot read table {table.name} to copy it", exc) from exc


def _fetch_rows(db: Database, table: _Table) -> Iterator[Sequence[Sequence[Any]]]:
    columns = ", ".join(map(_quote, table.columns))
    order = f" ORDER BY {', '.join(map(_quote, table.key))}" if table.key else ""
    sql = f"SELECT {columns} FROM {_quote(table.name)}{order}"  # noqa: S608 - catalog names
    if db.dialect == "postgresql":
        # A server-side cursor: psycopg's ordinary one would fetch the whole table.
        cursor = db.conn.raw.cursor(name=f"syndicate_copy_{table.name}")
        try:
            cursor.execute(sql)
            while batch := cursor.fetchmany(BATCH):
                yield batch
        finally:
            cursor.close()
        return
    cursor = db.conn.execute(sql)  # sqlite3 steps through the rows as they are fetched
    while batch := cursor.fetchmany(BATCH):
        yield batch


def _write_rows(
    db: Database, name: str, names: Sequence[str], batches: Iterator[Sequence[Sequence[Any]]]
) -> int:
    """Insert the rows (values in the order of `names`); how many there were."""
    columns = ", ".join(map(_quote, names))
    count = 0
    if db.dialect == "postgresql":
        # COPY: an order of magnitude faster than INSERTs for a big list.
        from syndicate.store.postgres import without_nul  # loaded: the target is open

        cursor = db.conn.raw.cursor()
        with cursor.copy(f"COPY {_quote(name)} ({columns}) FROM STDIN") as copy:
            for batch in batches:
                for row in batch:
                    copy.write_row(without_nul(row))  # a NUL SQLite kept: PostgreSQL has none
                count += len(batch)
        return count
    marks = ", ".join("?" for _ in names)
    insert = f"INSERT INTO {_quote(name)} ({columns}) VALUES ({marks})"  # noqa: S608
    for batch in batches:
        db.conn.executemany(insert, batch)
        count += len(batch)
    return count


def _high_water(db: Database, table: _Table, column: str) -> int:
    """The highest id `column` of the table holds or its sequence ever handed out."""
    conn = db.conn
    top = f"SELECT max({_quote(column)}) FROM {_quote(table.name)}"  # noqa: S608
    row = conn.execute(top).fetchone()
    high = int(row[0] or 0)
    if db.dialect == "postgresql":
        if table.counter == column:
            seq = conn.execute(_PG_SEQUENCE, (_quote(table.name), column)).fetchone()
            high = max(high, int(seq[0] or 0))
    elif table.counter == column:
        seq = conn.execute(_SQLITE_SEQUENCE, (table.name,)).fetchone()
        high = max(high, int(seq[0] or 0) if seq else 0)
    return high


def _carry_sequence(target: Database, table: _Table, high: int) -> None:
    """Make the target's next id for `table` come after `high`."""
    if table.counter is None or high <= 0:
        return
    if target.dialect == "postgresql":
        target.conn.execute(_PG_SET_SEQUENCE, (_quote(table.name), table.counter, high))
        return
    target.conn.execute(_SQLITE_RAISE_SEQUENCE, (high, table.name, high))
    target.conn.execute(_SQLITE_ADD_SEQUENCE, (table.name, high, table.name))


def copy_store(source: Database, target: Database) -> dict[str, int]:
    """Copy every row of `source` into the empty store `target`; rows copied, per table.

    Both stores are open and migrated (same schema version). The target must hold no
    row in any table: else StoreError naming the table, and nothing is written. The
    source is read in one snapshot and the target written in one transaction, so a
    failure (a refused row, a broken connection, Ctrl-C) leaves the target empty.
    Tables go in foreign key order, columns by name; ids are kept, and the target's
    id sequences continue past the source's (an id erased at the source is not
    handed out again). Raises StoreError for what the target refuses.
    """
    copied: dict[str, int] = {}
    try:
        with source.snapshot(), target.transaction():
            with _reading(source, "cannot read the store to copy"):
                src = _read_tables(source)
            dst = _read_tables(target)
            _check_same_schema(source, target, src, dst)
            tables = _in_key_order(dst)
            _refuse_rows(target, tables)
            for table in tables:
                log.info("copying %s", table.name)
                # By name: each engine may list a table's columns in its own order.
                columns = src[table.name].columns
                rows = _read_rows(source, src[table.name])
                copied[table.name] = _write_rows(target, table.name, columns, rows)
            for table in tables:
                if table.counter is not None:
                    with _reading(source, f"cannot read the id counter of {table.name}"):
                        high = _high_water(source, src[table.name], table.counter)
                    _carry_sequence(target, table, high)
    except DB_ERRORS as exc:
        raise store_error(target.path, "cannot copy the store", exc) from exc
    return copied


# What leaves the tables of a failed copy into a new PostgreSQL database where they are.
_KEPT: tuple[type[Exception], ...] = (*DB_ERRORS, StoreError)
# The files SQLite may keep beside a database file (WAL mode, or a rollback journal).
_SIDE_FILES = ("-wal", "-shm", "-journal")
# The new store's folders, when missing: owner only, as the store makes them.
_FOLDER_MODE = 0o700
# Errors of link(2) that mean "this file system has no hard links" (vfat, some FUSE).
_NO_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK})


# The temporary name of a new SQLite store being built (mkstemp's: ".NAME.XXXXXXXX.copy").
_TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.copy")
# How a SQLite database file starts; a temporary file SQLite has not written to yet is empty.
_SQLITE_HEADER = b"SQLite format 3\x00"


def _make_temporary(path: Path) -> tuple[int, Path]:
    """Make the temporary file (0600) the store for `path` is built in, and lock it (flock)
    for as long as the descriptor returned is open: the copy holds it for its whole life,
    and `_sweep` removes only a file whose lock it can take (its copy is gone)."""
    while True:
        try:
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".copy", dir=path.parent)
        except OSError as exc:
            raise StoreError(
                f"{path}: cannot make the new store: {exc.strerror or exc}; nothing was copied.",
                hint="Check the folder's permissions and free space.",
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # held by a sweep, which removes it: make another
            os.close(fd)
            continue
        except OSError:
            # No locks here (ENOLCK: NFS without its lock daemon): copy as before, unlocked.
            # Every try would fail alike (a loop making files for ever), and a sweep here
            # cannot lock, so removes, nothing either.
            return fd, Path(name)
        try:
            # A sweep may have taken the new, empty file before the lock did: make another.
            if os.path.samestat(os.fstat(fd), os.lstat(name)):
                return fd, Path(name)
        except FileNotFoundError:  # removed already
            pass
        os.close(fd)


def _sweep(folder: Path) -> None:
    """Remove the temporary files (and their -wal, -shm, -journal) that copies into `folder`
    which were killed (SIGKILL, a crash, a power cut) left behind: 0600, but every row of
    a store. Never one a live copy holds: only a file whose flock this process can take,
    taken before the file goes. Only a regular file of ours, empty or a SQLite database."""
    try:
        names = sorted(e.name for e in os.scandir(folder) if _TEMPORARY.fullmatch(e.name))
    except OSError:
        return
    for name in names:
        found = folder / name
        try:
            fd = os.open(found, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                continue
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if not os.path.samestat(st, os.lstat(found)):
                continue  # another sweep removed it meanwhile
            if os.pread(fd, len(_SQLITE_HEADER), 0) not in (b"", _SQLITE_HEADER):
                continue
            _remove(found)
            log.warning(
                "%s: removed the unfinished store a `store copy` that was stopped left behind.",
                found,
            )
        except OSError:  # locked: a live copy's; or gone
            continue
        finally:
            os.close(fd)


def copy_to_new_file(
    source: Database,
    path: Path,
    *,
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    on_complete: Callable[[], None] | None = None,
) -> dict[str, int]:
    """Copy every row of `source` into a new SQLite store at `path`; rows copied, per table.

    The store is built under a temporary name in `path`'s folder (0600, as the store makes
    its files), closed in rollback-journal mode (no -wal file to carry: the next opening
    turns WAL on again) and linked to `path` only then. So `path` appears complete or not
    at all: on any failure, or SIGINT / SIGTERM turned into an exception, the temporary
    file, its -wal and -shm, and any folder made for it are removed, and the folder is as
    it was. A file that appears at `path` meanwhile is never overwritten (link(2) refuses
    an existing name): StoreError, and nothing was copied. Raises as `copy_store` does.

    `on_complete` is called once the store has its name, with SIGINT and SIGTERM still
    held back: a signal that came while it was put in place is delivered after it returns,
    to the handlers it set (the caller's say that the copy is complete, not that nothing
    was copied).

    The temporary file is locked (flock) while the copy lives, so one that SIGKILL (or a
    crash) stopped leaves a file no process holds: the next copy into the folder removes
    it first (`_sweep`), and never the file of a copy still running.
    """
    _check_folder(path)
    made = _make_folders(path.parent)
    _sweep(path.parent)
    temporary: Path | None = None
    locked = -1
    try:
        # mkstemp makes it 0600, owner only. Kept open (the lock) until the copy ends:
        # closing it early would also drop SQLite's own (POSIX) locks on the file.
        locked, temporary = _make_temporary(path)
        try:
            target = open_database(temporary, busy_timeout=busy_timeout)
        except StoreError as exc:
            raise _renamed(exc, temporary, path) from exc
        with target:
            target.path = path  # messages name the store the user asked for
            counts = copy_store(source, target)
            _leave_wal(target)
        with _signals_held():
            _publish(temporary, path)
            temporary = None
            if on_complete is not None:
                on_complete()
    except BaseException:
        with _signals_held():
            if temporary is not None:
                _remove(temporary)
            for folder in reversed(made):
                _remove_folder(folder)
        raise
    finally:
        if locked >= 0:
            os.close(locked)
    return counts


def copy_into(
    source: Database,
    *,
    url: str,
    path: Path,
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    reply_timeout: float | None = DEFAULT_REPLY_TIMEOUT,
    on_complete: Callable[[], None] | None = None,
    url_name: str = URL_NAME,
) -> tuple[dict[str, int], str]:
    """Copy `source` into the store at `url` (PostgreSQL) or `path` (SQLite), opened with
    these timeouts; rows copied per table, and the target's name. `on_complete` as
    `copy_to_new_file` (a new SQLite file only); `url_name` is how hints name the URL.

    A new SQLite file goes through `copy_to_new_file`, a PostgreSQL database with no store
    yet through `copy_to_new_database`, any other store through `copy_store`: whichever
    it is, a failure leaves it as it was.
    """
    if not url and os.path.islink(path) and not path.exists():
        # A link to no file yet: the new store is made where it leads, as a new file is
        # (SQLite, following it, made the file with its own mode and filled it in place).
        path = Path(os.path.realpath(path))
    if not url and not os.path.lexists(path):
        counts = copy_to_new_file(source, path, busy_timeout=busy_timeout, on_complete=on_complete)
        return counts, str(path)
    new = False
    if url:
        found = open_reader(
            path,
            url=url,
            busy_timeout=busy_timeout,
            reply_timeout=reply_timeout,
            url_name=url_name,
        )
        if found is not None:
            found.close()
        new = found is None
    with open_database(
        path, url=url, busy_timeout=busy_timeout, reply_timeout=reply_timeout, url_name=url_name
    ) as target:
        if new:
            return copy_to_new_database(source, target), str(target.path)
        return copy_store(source, target), str(target.path)


def copy_to_new_database(source: Database, target: Database) -> dict[str, int]:
    """`copy_store` into a PostgreSQL database that held no syndicate store before `target`
    was opened (and so migrated) for this copy; rows copied, per table.

    The rows go in one transaction; on any failure (or SIGINT / SIGTERM turned into an
    exception) the tables the migration made are dropped again, if they are still empty
    and the connection still answers, so the database is left as it was. Raises as
    `copy_store` does.
    """
    try:
        return copy_store(source, target)
    except BaseException:
        with _signals_held():
            _drop_empty_store(target)
        raise


def _drop_empty_store(db: Database) -> None:
    """Drop every table of the store at `db` (schema version included) if none holds a
    row; leave it as it is otherwise, or when the server cannot be reached. Only the
    store's own tables: another application's in the same schema are never touched."""
    with open_empty() as empty:
        ours = set(_read_tables(empty))
    try:
        db.conn.settle()  # a statement SIGTERM cut short: cancelled, its transaction ended
        with db.transaction() as conn:
            tables = [_quote(t) for t in sorted(ours & set(_read_tables(db)))]
            if not tables:
                return
            conn.execute(f"LOCK TABLE {', '.join(tables)} IN ACCESS EXCLUSIVE MODE")
            for table in tables:
                if conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone():  # noqa: S608
                    log.warning("%s: not empty after a failed copy; its tables are kept", db.path)
                    return
            conn.execute(f"DROP TABLE {', '.join([*tables, _quote(_PG_VERSION_TABLE)])}")
    except _KEPT as exc:
        log.info("%s: the empty tables of the failed copy are kept: %s", db.path, exc)


def _leave_wal(db: Database) -> None:
    """Checkpoint the WAL into the database file and go back to a rollback journal, so the
    file holds everything and SQLite removes its -wal file (the next opening turns WAL on)."""
    try:
        mode = db.conn.execute("PRAGMA journal_mode = DELETE").fetchone()[0]
    except DB_ERRORS as exc:
        raise store_error(db.path, "cannot finish the new store", exc) from exc
    if str(mode).lower() != "delete":
        raise StoreError(
            f"{db.path}: cannot finish the new store: SQLite kept journal mode {mode!r}; "
            "nothing was copied."
        )


def _check_folder(path: Path) -> None:
    """Raise StoreError when the nearest existing folder above `path` is a file: no folder
    can be made there, whatever the permissions (mkstemp and mkdir say only ENOTDIR)."""
    above = path.parent
    try:
        while not os.path.lexists(above) and above.parent != above:
            above = above.parent
        if above.is_dir():
            return
    except OSError:  # cannot be looked at: making the folder or file says why
        return
    kind = "a file, not a folder" if above.is_file() else "not a folder"
    raise StoreError(f"{path}: {above} is {kind}; nothing was copied.", hint=NO_FOLDER_HINT)


def _make_folders(folder: Path) -> list[Path]:
    """Make `folder` and its missing parents (0700); the folders made, outermost first."""
    missing: list[Path] = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    made: list[Path] = []
    for each in reversed(missing):
        try:
            each.mkdir(mode=_FOLDER_MODE)
        except FileExistsError:  # made by another process meanwhile: not ours to remove
            continue
        except OSError as exc:
            for folder in reversed(made):
                _remove_folder(folder)
            raise StoreError(
                f"{each}: cannot make the folder: {exc.strerror or exc}; nothing was copied.",
                hint="Check the parent folder's permissions.",
            ) from exc
        made.append(each)
    return made


def _publish(temporary: Path, path: Path) -> None:
    """Give the complete store at `temporary` its name `path`, never replacing a file."""
    for side in _SIDE_FILES:  # the store was closed: SQLite removed these
        if os.path.lexists(f"{temporary}{side}"):
            raise StoreError(
                f"{path}: SQLite left {temporary.name}{side} behind; nothing was copied."
            )
    try:
        fd = os.open(temporary, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temporary, path)
        except OSError as exc:
            if exc.errno not in _NO_LINKS:
                raise
            # No hard links on this file system: take the name first (O_EXCL), then put the
            # store over our own empty file.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            os.replace(temporary, path)
        else:
            os.unlink(temporary)
    except FileExistsError as exc:
        raise StoreError(
            f"{path}: a file appeared there while the copy ran; it is left as it is and "
            "nothing was copied.",
            hint="Copy again into a new path (or remove that file if it is not wanted).",
        ) from exc
    except OSError as exc:
        raise StoreError(
            f"{path}: cannot put the new store in place: {exc.strerror or exc}; nothing was "
            "copied.",
            hint="Check the folder's permissions and free space.",
        ) from exc
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a folder; the file itself was synced
    finally:
        os.close(fd)


def _remove(temporary: Path) -> None:
    for side in ("", *_SIDE_FILES):
        try:
            os.unlink(f"{temporary}{side}")
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("%s%s: cannot remove this unfinished copy: %s", temporary, side, exc)


def _remove_folder(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # not empty: something else was put there meanwhile
        pass


def _renamed(exc: StoreError, temporary: Path, path: Path) -> StoreError:
    """`exc` naming `path` where it names the temporary file (same class, same exit code)."""
    named = copy.copy(exc)
    named.message = exc.message.replace(str(temporary), str(path))
    named.args = (named.message,)
    return named


@contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back for the block (a cleanup must not be cut in half);
    one that came meanwhile is delivered after it."""
    held = {signal.SIGINT, signal.SIGTERM}
    before = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)

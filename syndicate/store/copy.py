"""Store: copy a whole store into an empty one, SQLite or PostgreSQL on either side.

`copy_store` reads the source in one snapshot and writes the target in one write
transaction: the target gets every row or none. Tables and their columns come from the
schema itself (the catalog of each engine), so a table added by a later migration is
copied without a change here; both stores are at the same schema version (opened through
`open_database`), and the schema version itself is the target's own. Rows stream in
batches, so memory stays flat however long the list. Ids are kept, and each id sequence
of the target is set past the source's (PostgreSQL identity sequences; SQLite's
`sqlite_sequence` for AUTOINCREMENT tables), so no id is ever handed out twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from syndicate.errors import StoreError
from syndicate.store import DB_ERRORS, Database, store_error

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
                    high = _high_water(source, src[table.name], table.counter)
                    _carry_sequence(target, table, high)
    except DB_ERRORS as exc:
        raise store_error(target.path, "cannot copy the store", exc) from exc
    return copied

"""The write transaction: the one way rows get into a store, and where a new or older store is brought to the
current schema version.

DuckDB allows one writing process per file, and even a read-only open fails while a writer holds it; both
cases become a ``StoreError`` that says who holds the file and what to do instead (``schema.connect``).
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import duckdb
import pyarrow as pa

from schema.connect import open_file, store_version
from schema.errors import StoreError
from schema.layout import SCHEMA_VERSION
from schema.migrations import upgrade


@contextmanager
def writer(
    path: str | os.PathLike[str], con: duckdb.DuckDBPyConnection | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A write connection inside one transaction: committed on success, rolled back on any error.

    A new file gets the schema, and an older store its upgrade (``schema.migrations``), inside the same
    transaction, so a failed write leaves the file as it was; a file this call creates is removed again.

    ``con``: an open read-write connection to ``path`` owned by this process (``lensdb serve``); the
    transaction then runs on a cursor of it, so readers of the same connection keep answering from the last
    committed snapshot, and neither the connection nor the file is closed or removed afterwards.
    """
    if con is not None:
        cur = con.cursor()
        with _transaction(cur, Path(path), existed=_has_schema(cur)) as tx:
            yield tx
        return
    p = Path(path)
    existed = p.exists()
    if not existed and not p.parent.exists():
        raise StoreError(f"cannot create {p}: folder {p.parent} does not exist.")
    ok = False
    try:
        with _transaction(open_file(p, read_only=False), p, existed) as opened:
            yield opened
        ok = True
    finally:
        if not ok and not existed:
            for leftover in (p, p.with_name(p.name + ".wal")):
                leftover.unlink(missing_ok=True)


def _has_schema(con: duckdb.DuckDBPyConnection) -> bool:
    return con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'lensdb_meta'").fetchone()[0] > 0  # type: ignore[index]


@contextmanager
def _transaction(con: duckdb.DuckDBPyConnection, p: Path, existed: bool) -> Iterator[duckdb.DuckDBPyConnection]:
    """Run the body in one transaction on ``con``, after creating or upgrading the schema in it; close ``con``."""
    ok = False
    try:
        found = store_version(con, p) if existed else None
        if found is not None and found > SCHEMA_VERSION:
            raise StoreError(f"{p} was written by a newer lensdb (schema version {found}; this lensdb writes "
                             f"{SCHEMA_VERSION}); install that version to write to it.")
        con.execute("BEGIN TRANSACTION")
        if found != SCHEMA_VERSION:
            upgrade(con, found)
        yield con
        con.execute("COMMIT")
        ok = True
    finally:
        if not ok:
            with suppress(duckdb.Error):
                con.execute("ROLLBACK")
        con.close()


def upgrade_store(path: str | os.PathLike[str]) -> tuple[int, int]:
    """Upgrade the store at ``path`` to the current schema version in one transaction; (before, after)."""
    p = Path(path)
    if not p.exists():
        raise StoreError(f"no lensdb store at {p}; create one with `lensdb index CHECKPOINT --db {p}`.")
    con = open_file(p, read_only=True)
    try:
        before = store_version(con, p)
    finally:
        con.close()
    with writer(p):
        pass  # the writer upgrades what it opens
    return before, SCHEMA_VERSION


def append_arrow(con: duckdb.DuckDBPyConnection, table: str, rows: pa.Table, order_by: str = "") -> None:
    """Copy an Arrow table into ``table`` with one ``INSERT … SELECT`` (columns matched by name)."""
    cols = ", ".join(f'"{c}"' for c in rows.column_names)
    con.register("_lensdb_rows", rows)
    try:
        order = f" ORDER BY {order_by}" if order_by else ""
        con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _lensdb_rows{order}")
    finally:
        con.unregister("_lensdb_rows")


def next_id(con: duckdb.DuckDBPyConnection, table: str, column: str) -> int:
    """The next free id of ``table.column``; safe because the caller is the file's only writer."""
    (value,) = con.execute(f"SELECT coalesce(max({column}), 0) + 1 FROM {table}").fetchone()  # type: ignore[misc]
    return int(value)

"""Opening, creating and bulk-writing the DuckDB file. The only module that issues DDL.

DuckDB allows one writing process per file, and even a read-only open fails while a writer holds it; both
cases become a ``StoreError`` that says who holds the file and what to do instead.
"""

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import duckdb
import pyarrow as pa
from duckdb_engine import Dialect
from sqlalchemy.schema import CreateIndex, CreateTable

from schema.errors import StoreError
from schema.tables import SCHEMA_VERSION, metadata
from schema.views import VIEWS

_DIALECT = Dialect()


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def schema_ddl() -> list[str]:
    """Every statement that creates the schema (tables, comments, views), in order; idempotent."""
    stmts: list[str] = []
    for table in metadata.sorted_tables:
        stmts.append(str(CreateTable(table, if_not_exists=True).compile(dialect=_DIALECT)).strip())
        for index in sorted(table.indexes, key=lambda i: str(i.name)):
            stmts.append(str(CreateIndex(index, if_not_exists=True).compile(dialect=_DIALECT)).strip())
        if table.comment:
            stmts.append(f"COMMENT ON TABLE {table.name} IS {_quote(table.comment)}")
        for col in table.columns:
            if col.comment:
                stmts.append(f'COMMENT ON COLUMN {table.name}."{col.name}" IS {_quote(col.comment)}')
    for view in VIEWS:
        stmts.append(f"CREATE OR REPLACE VIEW {view.name} AS {view.sql.strip()}")
        stmts.append(f"COMMENT ON VIEW {view.name} IS {_quote(view.doc)}")
    return stmts


def _open(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    try:
        return duckdb.connect(str(path), read_only=read_only)
    except duckdb.IOException as err:
        if "lock" in str(err).lower():
            raise StoreError(
                f"{path} is in use by another process that is writing to it (DuckDB allows one writer per "
                "file, and no reader while it writes). Wait for that index run to finish, or, if `lensdb "
                "serve` owns this file, send your request to the service instead."
            ) from None
        raise StoreError(f"cannot open {path}: {err}") from None
    except duckdb.Error as err:
        raise StoreError(f"{path} is not a DuckDB database lensdb can open: {err}") from None


def _check_version(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    # one statement: it runs on every open, and a cold open pays for each one
    try:
        row = con.execute("SELECT value FROM lensdb_meta WHERE key = 'schema_version'").fetchone()
    except duckdb.CatalogException:
        raise StoreError(f"{path} is a DuckDB file but not a lensdb store (no lensdb_meta table).") from None
    if row is None or int(row[0]) != SCHEMA_VERSION:
        found = row[0] if row else "none"
        raise StoreError(
            f"{path} has schema version {found}, this lensdb reads version {SCHEMA_VERSION}; "
            "re-index into a new file with this version of lensdb."
        )


def open_reader(path: str | os.PathLike[str]) -> duckdb.DuckDBPyConnection:
    """A read-only connection to an existing store."""
    p = Path(path)
    if not p.exists():
        raise StoreError(f"no lensdb store at {p}; create one with `lensdb index CHECKPOINT --db {p}`.")
    con = _open(p, read_only=True)
    try:
        _check_version(con, p)
    except StoreError:
        con.close()
        raise
    return con


@contextmanager
def writer(
    path: str | os.PathLike[str], con: duckdb.DuckDBPyConnection | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A write connection inside one transaction: committed on success, rolled back on any error.

    A file this call creates is removed again if the transaction fails, so a failed first run leaves no
    file behind. The schema is created inside the same transaction.

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
        with _transaction(_open(p, read_only=False), p, existed) as opened:
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
    """Run the body in one transaction on ``con`` (creating the schema first if ``not existed``); close ``con``."""
    ok = False
    try:
        if existed:
            _check_version(con, p)
        con.execute("BEGIN TRANSACTION")
        if not existed or _missing_objects(con):
            # A new file, or one written before the newest tables and views (they are all IF NOT EXISTS /
            # OR REPLACE): created inside this transaction, so a failed write leaves the file as it was.
            for stmt in schema_ddl():
                con.execute(stmt)
            fill_token_forms(con)
            fill_vector_lists(con)
            record_tables(con)
        if not existed:
            con.execute(
                "INSERT INTO lensdb_meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)]
            )
        yield con
        con.execute("COMMIT")
        ok = True
    finally:
        if not ok:
            with suppress(duckdb.Error):
                con.execute("ROLLBACK")
        con.close()


def _missing_objects(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether a declared table, index or view is absent (a store from an older lensdb with the same version)."""
    have = {r[0] for r in con.execute(
        "SELECT table_name FROM duckdb_tables() UNION ALL SELECT view_name FROM duckdb_views() "
        "UNION ALL SELECT index_name FROM duckdb_indexes()").fetchall()}
    want = ({t.name for t in metadata.sorted_tables} | {v.name for v in VIEWS}
            | {str(i.name) for t in metadata.sorted_tables for i in t.indexes})
    return not want <= have


def record_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Note in ``lensdb_meta`` ('tables') that every declared table exists, right after the DDL made it so:
    readers learn which tables a store has from the row they read anyway, where ``duckdb_tables()`` would cost
    a cold open ~3 ms."""
    con.execute("INSERT OR REPLACE INTO lensdb_meta VALUES ('tables', ?)",
                [",".join(sorted(t.name for t in metadata.sorted_tables))])


def fill_token_forms(con: duckdb.DuckDBPyConnection, vocab_id: int | None = None) -> None:
    """Add to ``token_forms`` the forms of one vocabulary's tokens, or of every vocabulary that has none there
    (a store written before the table existed), sorted by form."""
    where, params = ("vocab_id = ?", [vocab_id]) if vocab_id is not None else (
        "vocab_id NOT IN (SELECT vocab_id FROM token_forms)", [])
    forms = " UNION ".join(f"SELECT {col} AS form, vocab_id, token_id, token, display FROM tokens WHERE {where}"
                           for col in ("word", "token", "display"))
    con.execute(f"INSERT INTO token_forms {forms} ORDER BY form, vocab_id, token_id", params * 3)


def fill_vector_lists(con: duckdb.DuckDBPyConnection, batch: int = 100_000) -> None:
    """Add to ``vector_lists`` every vector with token rows beyond the last listed one (a store written before
    the table existed), in vector_id order. Paid once, by the writer that upgrades; ``batch`` vectors at a
    time, as ordered list aggregates over a whole large store would not fit in memory."""
    lo, hi = con.execute("SELECT min(vector_id), max(vector_id) FROM vector_tokens "
                         "WHERE vector_id > (SELECT coalesce(max(vector_id), -1) FROM vector_lists)").fetchone()  # type: ignore[misc]
    if lo is None:
        return
    for start in range(lo, hi + 1, batch):
        con.execute("""INSERT INTO vector_lists
SELECT vector_id,
       list(token_id ORDER BY rank) FILTER (WHERE side = 'top'), list(score ORDER BY rank) FILTER (WHERE side = 'top'),
       list(token_id ORDER BY rank) FILTER (WHERE side = 'bottom'),
       list(score ORDER BY rank) FILTER (WHERE side = 'bottom')
FROM vector_tokens WHERE vector_id BETWEEN ? AND ?
GROUP BY vector_id ORDER BY vector_id""", [start, start + batch - 1])


SORTED_BY_TOKEN = ("vector_tokens", "head_pairs")


def optimize(path: str | os.PathLike[str]) -> dict[str, int]:
    """Rewrite the store into a fresh file with each token-sorted table as one sorted run, then swap it in.

    Every index run appends its own sorted run, so after N runs a token lookup reads N row groups per table;
    one run makes it one (100 M rows over 27 runs: first-touch lookups ~7 ms → ~4 ms, cold ~140 ms → ~50 ms;
    bench/query_scale.py).
    A fresh file also drops the blocks earlier runs freed: it is smaller, and a cold open reads no free list
    (~8 ms less per open there). The store stays locked (read-only attach) until the new file has replaced it,
    so no writer can slip in between; an error or interrupt before the swap leaves the store as it was.
    """
    p = Path(path)
    if not p.exists():
        raise StoreError(f"no lensdb store at {p}; create one with `lensdb index CHECKPOINT --db {p}`.")
    fresh = p.with_name(p.name + ".optimizing")
    spill = p.with_name(p.name + ".optimizing.tmp")
    for leftover in (fresh, fresh.with_name(fresh.name + ".wal")):
        leftover.unlink(missing_ok=True)
    if p.with_name(p.name + ".wal").exists():
        with writer(p):
            pass  # closing a writer checkpoints the log into the file: nothing may stay behind in a .wal
    con = duckdb.connect(config={"temp_directory": str(spill)})
    swapped = False
    try:
        try:
            con.execute(f"ATTACH {_quote(str(p))} AS src (READ_ONLY)")
        except duckdb.Error as err:
            if "lock" in str(err).lower() or "already attached" in str(err):
                raise StoreError(f"{p} is in use by another process (or open elsewhere in this one); stop it, "
                                 "or the service that owns the file, before optimizing.") from None
            raise StoreError(f"cannot open {p}: {err}") from None
        con.execute("USE src")
        _check_version(con, p)
        have = {r[0] for r in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = 'src'").fetchall()}
        con.execute(f"ATTACH {_quote(str(fresh))} AS fresh")
        con.execute("USE fresh")
        for stmt in schema_ddl():
            con.execute(stmt)
        rows = {}
        for table in metadata.sorted_tables:
            if table.name in have:
                order = (" ORDER BY token_id, vector_id" if table.name in SORTED_BY_TOKEN
                         else " ORDER BY vector_id" if table.name == "vector_lists" else "")
                con.execute(f"INSERT INTO fresh.main.{table.name} BY NAME SELECT * FROM src.main.{table.name}{order}")
                if table.name in SORTED_BY_TOKEN:
                    (rows[table.name],) = con.execute(f"SELECT count(*) FROM {table.name}").fetchone()  # type: ignore[misc]
        if "token_forms" not in have:
            fill_token_forms(con)
        if "vector_lists" not in have:
            fill_vector_lists(con)
        record_tables(con)
        con.execute("USE memory")
        con.execute("DETACH fresh")
        os.replace(fresh, p)
        swapped = True
        return rows
    finally:
        con.close()
        if not swapped:
            fresh.unlink(missing_ok=True)
        fresh.with_name(fresh.name + ".wal").unlink(missing_ok=True)
        shutil.rmtree(spill, ignore_errors=True)


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

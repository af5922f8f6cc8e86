"""Every write to a store goes through here: a ``Store`` (a file and how this process writes it) hands out write
transactions one at a time, and rows go in by column name with ids from ``schema.ids``.

- ``session(path)``: this process's write lock on the file, held for the whole body (an index run's attempt log,
  its one transaction and its failure record), so no other writer can slip in between and no one's rows can be
  lost. A new store is built in a private file next to it and put in place with ``os.link`` (which never
  replaces a file) only when the body succeeded: a failed first run leaves no file, and never removes a file
  another process created meanwhile (``StoreAppeared``; ``with_store`` then runs the body again on that store).
- ``Store(path, con, gate)``: the service's one read-write connection; each transaction runs on a cursor of it
  after taking its turn at ``gate`` (the service's write queue), while readers keep reading committed snapshots.
- ``writer(path)``: one transaction, for the small writes that need nothing more.

DuckDB allows one writing process per file, and even a read-only open fails while a writer holds it; both
cases become a ``StoreError`` that says who holds the file and what to do instead (``schema.connect``).
"""

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pyarrow as pa

from schema.connect import open_file, quote, store_version
from schema.errors import StoreError
from schema.ids import COUNTERS, next_id
from schema.layout import SCHEMA_VERSION
from schema.migrations import upgrade
from schema.tables import metadata

T = TypeVar("T")


class StoreAppeared(StoreError):
    """Another process created the store while this one was building it in its own file."""


class Store:
    """One store file and this process's way of writing it: transactions one at a time, each committed whole or
    rolled back. ``con``: a read-write connection this process holds for as long as it writes (the lock);
    ``gate``: where a transaction waits for its turn (the service's write queue); ``creating``: the connection is
    to a private new file that ``session`` puts in place at the end; ``readers``: other cursors of ``con`` read
    while it writes (the service's requests), so rows already in the store are not rewritten under them
    (``schema.runs.compact_store``)."""

    def __init__(self, path: Path, con: duckdb.DuckDBPyConnection,
                 gate: Callable[[], AbstractContextManager[Any]] | None = None, creating: bool = False,
                 readers: bool = False) -> None:
        self.path = path
        self.con = con
        self.gate = gate or contextlib.nullcontext
        self.creating = creating
        self.readers = readers

    @contextmanager
    def transaction(self, into_file: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A write transaction on a cursor of the store's connection, after this store's turn comes: committed on
        success, rolled back on any error. A new file gets the schema, an older store its upgrade, inside it.
        ``into_file``: a large transaction (an index run), committed straight into the file (``commit_into_file``)."""
        with self.gate():
            cur = self.con.cursor()
            with _transaction(cur, self.path, existed=_has_schema(cur), into_file=into_file) as tx:
                yield tx


@contextmanager
def session(path: str | os.PathLike[str]) -> Iterator[Store]:
    """Hold the write lock on ``path`` for the whole body (see the module docstring); a new store is built in a
    private file and linked into place when the body succeeded."""
    p = Path(path)
    if p.exists():
        con = open_file(p, read_only=False)
        try:
            yield Store(p, con)
        finally:
            con.close()
        return
    if not p.parent.exists():
        raise StoreError(f"cannot create {p}: folder {p.parent} does not exist.")
    _sweep(p)
    fresh = p.with_name(f".{p.name}.{os.getpid()}-{secrets.token_hex(4)}.new")
    con = open_file(fresh, read_only=False)
    try:
        store = Store(p, con, creating=True)
        with store.transaction():
            pass  # the schema, so the file is a store whatever the body does
        yield store
        con.close()  # checkpoints the log into the file
        if Path(f"{fresh}.wal").exists():
            raise StoreError(f"could not finish writing the new store {p} (its log was not checkpointed); "
                             "nothing was put in place.")
        try:
            os.link(fresh, p)  # never replaces: a store another process created meanwhile stays as it is
        except FileExistsError:
            raise StoreAppeared(f"another process created {p} while this one was building it; nothing of this "
                                "run is in it yet.") from None
    finally:
        con.close()
        for leftover in (fresh, Path(f"{fresh}.wal")):
            leftover.unlink(missing_ok=True)


def _sweep(p: Path) -> None:
    """Remove the private files of first runs into ``p`` whose process is gone (killed before they finished)."""
    for leftover in p.parent.glob(f".{p.name}.*-*.new*"):
        pid = leftover.name[len(p.name) + 2:].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            leftover.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def with_store(db: "str | os.PathLike[str] | Store", body: Callable[[Store], T]) -> T:
    """Run ``body`` with the store's writer: the ``Store`` given (the service's), or a ``session`` on the file. If
    another process created the store while the body built it, the body runs again, once, on that store."""
    if isinstance(db, Store):
        return body(db)
    try:
        with session(db) as store:
            return body(store)
    except StoreAppeared:
        with session(db) as store:
            return body(store)


@contextmanager
def writer(
    path: str | os.PathLike[str], con: duckdb.DuckDBPyConnection | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """One write transaction: committed on success, rolled back on any error (a store this call creates is put in
    place only on success). ``con``: an open read-write connection to ``path`` owned by this process; the
    transaction then runs on a cursor of it and neither the connection nor the file is closed afterwards."""
    if con is not None:
        with Store(Path(path), con).transaction() as tx:
            yield tx
        return
    with session(path) as store, store.transaction() as tx:
        yield tx


def _has_schema(con: duckdb.DuckDBPyConnection) -> bool:
    return con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'lensdb_meta'").fetchone()[0] > 0  # type: ignore[index]


@contextmanager
def _transaction(con: duckdb.DuckDBPyConnection, p: Path, existed: bool,
                 into_file: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
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
        if into_file:
            commit_into_file(con)
        else:
            con.execute("COMMIT")
        ok = True
    finally:
        if not ok:
            with suppress(duckdb.Error):
                con.execute("ROLLBACK")
        con.close()


@contextmanager
def instance_settings(con: duckdb.DuckDBPyConnection, **values: object) -> Iterator[bool]:
    """Set DuckDB settings of ``con``'s instance for the body, then put back what they were; yields whether they
    were set. DuckDB's settings are database-wide, so each caller holds them no longer than it must; an instance
    whose configuration is locked (the service's hardened instance, whose settings are the operator's) is left as
    it is."""
    locked = con.execute("SELECT current_setting('lock_configuration')").fetchone()
    if locked is not None and str(locked[0]).lower() == "true":
        yield False
        return
    before = {name: con.execute(f"SELECT current_setting({quote(name)})").fetchone()[0]  # type: ignore[index]
              for name in values}
    for name, value in values.items():
        con.execute(f"SET {name} = {quote(str(value))}")
    try:
        yield True
    finally:
        for name, value in before.items():
            con.execute(f"SET {name} = {quote(str(value))}")


def commit_into_file(con: duckdb.DuckDBPyConnection) -> None:
    """Commit the open transaction on ``con`` by checkpointing it into the file, not through the write-ahead log.

    DuckDB logs a commit's rows that no full row group took into the file early (an index run's basis rows and
    stored vectors: 150 MB on a GPT-2-small-shaped run) and writes them again at the next checkpoint. A commit
    checkpoints instead when the log would pass ``checkpoint_threshold``, but its estimate leaves out list
    contents, so a threshold of 0 for this one commit makes it; every row is then written once (GPT-2-small
    shape, 4 layers: 1.0–1.4 s less per run). The setting is database-wide: it is restored at once, and an
    instance whose configuration is locked (the service's) commits as usual. Where another transaction is open
    DuckDB cannot checkpoint and logs the commit as before."""
    with instance_settings(con, checkpoint_threshold="0B"):
        con.execute("COMMIT")


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


def append_arrow(con: duckdb.DuckDBPyConnection, table: str, rows: pa.Table) -> None:
    """Copy an Arrow table into ``table`` (columns matched by name; a table column the rows lack gets NULL).

    Through a relation (``from_arrow`` … ``insert_into``), not ``register`` + ``INSERT … SELECT``: a registered
    Arrow table stays referenced by the open transaction until it ends, so a run's every appended batch (token
    runs, stored vectors, basis rows) stayed resident until commit (issue 19: ~470 MiB on a Llama-shaped run)."""
    columns = con.table(table).columns
    unknown = sorted(set(rows.column_names) - set(columns))
    if unknown:
        raise TypeError(f"append into {table}: no column {', '.join(unknown)}")
    ordered = ", ".join(f'"{c}"' if c in rows.column_names else "NULL" for c in columns)
    con.from_arrow(rows).project(ordered).insert_into(table)


_COLUMNS = {t.name: t.columns for t in metadata.sorted_tables}


def insert(con: duckdb.DuckDBPyConnection, table: str, **values: object) -> None:
    """One row into ``table`` by column name. A name that is not a declared column, or a required column left
    out, is an error here rather than a row shifted into the wrong columns."""
    columns = _COLUMNS[table]
    unknown = sorted(set(values) - set(columns.keys()))
    missing = sorted(c.name for c in columns if not c.nullable and c.server_default is None and c.name not in values)
    if unknown or missing:
        problems = ([f"no column {', '.join(unknown)}"] if unknown else []) + (
            [f"missing {', '.join(missing)}"] if missing else [])
        raise TypeError(f"insert into {table}: {'; '.join(problems)}")
    names = ", ".join(f'"{c}"' for c in values)
    con.execute(f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * len(values))})", list(values.values()))


def insert_new(con: duckdb.DuckDBPyConnection, table: str, **values: object) -> int:
    """One row into a table whose ids come from ``id_counters``, with a fresh id; returns the id."""
    new_id = next_id(con, table)
    insert(con, table, **{COUNTERS[table]: new_id, **values})
    return new_id

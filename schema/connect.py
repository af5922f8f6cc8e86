"""Opening a store: one place that turns DuckDB's lock and format errors into a ``StoreError`` that says who
holds the file and what to do, and that checks the schema version.

Read side only: duckdb and the standard library, so ``queries`` and the read commands stay light.
"""

import os
from pathlib import Path

import duckdb

from schema.errors import StoreError
from schema.layout import SCHEMA_VERSION


def quote(text: str) -> str:
    """``text`` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def server_note(path: str | os.PathLike[str]) -> Path:
    """Where a running `lensdb serve` notes its URL, next to the file it owns (``lens.duckdb.server``)."""
    return Path(f"{path}.server")


def noted_service(path: str | os.PathLike[str]) -> tuple[str, str] | None:
    """(URL, instance) a service noted for the store at ``path``, if there is a note (it may be stale: the service
    that answers at the URL must name the same instance in ``/health``)."""
    try:
        lines = server_note(path).read_text().split()
    except OSError:
        return None
    return (lines[0], lines[1] if len(lines) > 1 else "") if lines else None


def noted_url(path: str | os.PathLike[str]) -> str | None:
    """The URL a service noted for the store at ``path``, if there is a note (it may be stale)."""
    noted = noted_service(path)
    return noted[0] if noted else None


def open_error(path: Path, err: duckdb.Error) -> StoreError:
    """DuckDB's refusal to open ``path`` as a ``StoreError`` that says who holds the file and what to do."""
    if isinstance(err, duckdb.IOException) and "lock" in str(err).lower():
        url = noted_url(path)
        via = (f"`lensdb serve` noted that it owns it at {url}: lensdb's read commands then read through the "
               f"service by themselves, and Python can too with queries.connect({url!r})." if url else
               "If `lensdb serve` owns this file, send your request to the service instead.")
        return StoreError(
            f"{path} is in use by another process that is writing to it (DuckDB allows one writer per "
            f"file, and no reader while it writes). Wait for that index run to finish. {via}"
        )
    if "already attached" in str(err):
        return StoreError(f"{path} is in use in this process by a reader (queries.connect): close it before "
                          "writing to the file.")
    if isinstance(err, duckdb.IOException):
        return StoreError(f"cannot open {path}: {err}")
    return StoreError(f"{path} is not a DuckDB database lensdb can open: {err}")


def open_file(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    """A connection to ``path``; a held lock or a file that is not a DuckDB database becomes a ``StoreError``."""
    try:
        return duckdb.connect(str(path), read_only=read_only)
    except duckdb.Error as err:
        raise open_error(path, err) from None


def store_version(con: duckdb.DuckDBPyConnection, path: Path) -> int:
    """The schema version recorded in the store (one statement: every open pays for it)."""
    try:
        row = con.execute("SELECT value FROM lensdb_meta WHERE key = 'schema_version'").fetchone()
    except duckdb.CatalogException:
        raise StoreError(f"{path} is a DuckDB file but not a lensdb store (no lensdb_meta table).") from None
    if row is None or not str(row[0]).isdigit():
        raise StoreError(f"{path} records no schema version lensdb understands ({row[0] if row else 'none'}).")
    return int(row[0])


def check_version(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Refuse a store of another schema version, saying how to upgrade an older one."""
    found = store_version(con, path)
    if found < SCHEMA_VERSION:
        raise StoreError(
            f"{path} was written by an older lensdb (schema version {found}; this lensdb reads {SCHEMA_VERSION}). "
            f"Upgrade it in place, in one transaction: lensdb upgrade --db {path} (any write, such as an index "
            "run, upgrades it too)."
        )
    if found > SCHEMA_VERSION:
        raise StoreError(
            f"{path} was written by a newer lensdb (schema version {found}; this lensdb reads {SCHEMA_VERSION}); "
            "install that version to read it."
        )


def open_reader(path: str | os.PathLike[str]) -> duckdb.DuckDBPyConnection:
    """A read-only connection to an existing store of the current schema version."""
    p = Path(path)
    if not p.exists():
        raise StoreError(f"no lensdb store at {p}; create one with `lensdb index CHECKPOINT --db {p}`.")
    con = open_file(p, read_only=True)
    try:
        check_version(con, p)
    except StoreError:
        con.close()
        raise
    return con

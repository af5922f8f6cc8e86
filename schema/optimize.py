"""``lensdb optimize``: rewrite a store into a fresh file with each token-sorted table as one sorted run."""

import os
import shutil
from pathlib import Path

import duckdb

from schema.connect import check_version, quote
from schema.ddl import schema_ddl, view_column_comments
from schema.errors import StoreError
from schema.layout import SCHEMA_VERSION, SORTED_BY_TOKEN
from schema.runs import record_runs
from schema.tables import metadata
from schema.writer import writer


def optimize(path: str | os.PathLike[str]) -> dict[str, int]:
    """Rewrite the store into a fresh file with each token-sorted table as one sorted run, then swap it in.

    Every index run appends its own sorted runs and the writer merges the newest (``schema.runs``: about
    log2 of the store's vectors of them, more where the service indexed), so a token lookup reads a few row
    groups per table; one run makes it one (100 M rows over 27 runs, before the writer merged: first-touch
    lookups ~7 ms → ~4 ms, cold ~140 ms → ~50 ms; bench/query_scale.py).
    A fresh file also drops the blocks earlier runs freed: it is smaller, and a cold open reads no free list
    (~8 ms less per open there). The store stays locked (read-only attach) until the new file has replaced it,
    so no writer can slip in between; an error or interrupt before the swap leaves the store as it was.
    An older store is upgraded first (``schema.migrations``).
    """
    p = Path(path)
    if not p.exists():
        raise StoreError(f"no lensdb store at {p}; create one with `lensdb index CHECKPOINT --db {p}`.")
    fresh = p.with_name(p.name + ".optimizing")
    spill = p.with_name(p.name + ".optimizing.tmp")
    for leftover in (fresh, fresh.with_name(fresh.name + ".wal")):
        leftover.unlink(missing_ok=True)
    with writer(p):
        # closing a writer checkpoints the log into the file (nothing may stay behind in a .wal) and upgrades
        # an older store, so the copy below is of the current schema
        pass
    con = duckdb.connect(config={"temp_directory": str(spill)})
    swapped = False
    try:
        try:
            con.execute(f"ATTACH {quote(str(p))} AS src (READ_ONLY)")
        except duckdb.Error as err:
            if "lock" in str(err).lower() or "already attached" in str(err):
                raise StoreError(f"{p} is in use by another process (or open elsewhere in this one); stop it, "
                                 "or the service that owns the file, before optimizing.") from None
            raise StoreError(f"cannot open {p}: {err}") from None
        con.execute("USE src")
        check_version(con, p)
        con.execute(f"ATTACH {quote(str(fresh))} AS fresh")
        con.execute("USE fresh")
        for stmt in schema_ddl():
            con.execute(stmt)
        for stmt in view_column_comments(con):
            con.execute(stmt)
        rows = {}
        for table in metadata.sorted_tables:
            order = (" ORDER BY token_id, vector_id" if table.name in SORTED_BY_TOKEN
                     else " ORDER BY vector_id" if table.name == "vector_lists" else "")
            con.execute(f"INSERT INTO fresh.main.{table.name} BY NAME SELECT * FROM src.main.{table.name}{order}")
            if table.name in SORTED_BY_TOKEN:
                (rows[table.name],) = con.execute(f"SELECT count(*) FROM {table.name}").fetchone()  # type: ignore[misc]
        record_runs(con, [0])  # every token table is one sorted run now (``schema.runs``)
        assert con.execute("SELECT value FROM lensdb_meta WHERE key = 'schema_version'").fetchone() == (
            str(SCHEMA_VERSION),)
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

"""Deletes derived from the declared references (``schema.tables``): removing a row removes every row that names
it (CASCADE) or clears the name (SET NULL), through every table, so a new table that names a checkpoint goes
with it without anyone listing it here. ``lensdb index --replace`` and ``lensdb forget`` (``forget``) both use
``delete_rows``; ``lensdb check`` looks for orphans along the same references.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import duckdb

from schema.errors import NotFound, StoreError
from schema.tables import metadata
from schema.writer import Store, with_store


@dataclass(frozen=True)
class Reference:
    table: str  # the table holding the reference
    column: str
    target: str  # the table it names
    target_column: str
    on_delete: str  # CASCADE or SET NULL (RESTRICT: the named row may not be deleted while named)


REFERENCES: tuple[Reference, ...] = tuple(sorted(
    (Reference(t.name, fk.parent.name, fk.column.table.name, fk.column.name, (fk.ondelete or "CASCADE").upper())
     for t in metadata.sorted_tables for fk in t.foreign_keys), key=lambda r: (r.target, r.table, r.column)))


class Restricted(Exception):
    """A row to delete is still named by a RESTRICT reference (a vocabulary some model uses)."""


def delete_statements(table: str, where: str) -> list[tuple[str, str]]:
    """The statements that delete the rows of ``table`` matching ``where`` (a predicate over its columns, with
    ``?`` parameters) and everything that depends on them: ``(table, sql)`` pairs, dependents first, each taking
    the predicate's parameters once."""
    out: list[tuple[str, str]] = []
    for ref in REFERENCES:
        if ref.target != table:
            continue
        named = f"{ref.column} IN (SELECT {ref.target_column} FROM {table} WHERE {where})"
        if ref.on_delete == "SET NULL":  # (rows about to be deleted too may be cleared first: harmless)
            out.append((ref.table, f"UPDATE {ref.table} SET {ref.column} = NULL WHERE {named}"))
        elif ref.on_delete == "RESTRICT":
            out.append((ref.table, f"SELECT count(*) FROM {ref.table} WHERE {named}"))
        else:
            assert ref.table != table, f"{table}.{ref.column}: a table cannot cascade into itself"
            out += delete_statements(ref.table, named)
    out.append((table, f"DELETE FROM {table} WHERE {where}"))
    return out


def delete_rows(con: duckdb.DuckDBPyConnection, table: str, where: str, params: list | None = None) -> dict[str, int]:
    """Delete the rows of ``table`` matching ``where`` and every row that names them, inside the caller's
    transaction; rows deleted per table (references cleared by SET NULL are not counted). A RESTRICT reference
    that still names one of the rows raises ``Restricted`` before anything is deleted."""
    stmts = delete_statements(table, where)
    for target, sql in stmts:
        if sql.startswith("SELECT"):
            (n,) = con.execute(sql, params or []).fetchone()  # type: ignore[misc]
            if n:
                raise Restricted(f"{n} rows of {target} still name the rows of {table} to delete")
    counts: dict[str, int] = {}
    for target, sql in stmts:
        if sql.startswith("SELECT"):
            continue
        (n,) = con.execute(sql, params or []).fetchone()  # type: ignore[misc]
        if sql.startswith("DELETE"):
            counts[target] = counts.get(target, 0) + int(n)
    return counts


@dataclass
class Forgotten:
    """What ``forget`` removed: rows deleted per table."""

    model: str
    checkpoint: str | None
    rows: dict[str, int]
    message: str


def forget(db: "str | os.PathLike[str] | Store", model: str, checkpoint: str | None = None) -> Forgotten:
    """Remove a model (or one checkpoint of it) and everything made from it, along the declared references, in
    one transaction; vocabularies no model uses any more go too. ``db``: a store file or the service's Store."""
    if not isinstance(db, Store) and not Path(db).exists():
        raise StoreError(f"no lensdb store at {db}.")

    def body(store: Store) -> Forgotten:
        with store.transaction() as tx:
            found = tx.execute("SELECT model_id FROM models WHERE name = ?", [model]).fetchone()
            if found is None:
                names = [r[0] for r in tx.execute("SELECT name FROM models ORDER BY name").fetchall()]
                raise NotFound(f"no model {model!r} in {store.path}; models: {', '.join(names) or 'none yet'}.")
            if checkpoint is None:
                counts = delete_rows(tx, "models", "model_id = ?", [found[0]])
            else:
                ckpt = tx.execute("SELECT checkpoint_id FROM checkpoints WHERE model_id = ? AND label = ?",
                                  [found[0], checkpoint]).fetchone()
                if ckpt is None:
                    labels = [r[0] for r in tx.execute("SELECT label FROM checkpoints WHERE model_id = ? ORDER BY "
                                                       "label", [found[0]]).fetchall()]
                    raise NotFound(f"model {model!r} has no checkpoint {checkpoint!r}; it has: "
                                   f"{', '.join(labels) or 'none'}.")
                counts = delete_rows(tx, "checkpoints", "checkpoint_id = ?", [ckpt[0]])
            unused = delete_rows(tx, "vocabularies", "vocab_id NOT IN (SELECT vocab_id FROM models)")
            watched = tx.execute("SELECT 1 FROM sources WHERE name = ?", [model]).fetchone() is not None
        rows = {t: n for t, n in {**counts, **{t: counts.get(t, 0) + n for t, n in unused.items()}}.items() if n}
        what = f"model {model}" if checkpoint is None else f"checkpoint {model}/{checkpoint}"
        shown = ", ".join(f"{n} {t}" for t, n in rows.items())
        note = (f"; {model} is still registered, so `lensdb watch` would index its checkpoints again "
                "(the sources table)") if watched and checkpoint is None else ""
        return Forgotten(model, checkpoint, rows, f"forgot {what}: {shown or 'nothing else'}{note}")

    return with_store(db, body)

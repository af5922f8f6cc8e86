"""Ordered upgrades of older stores to the current schema version, applied by the writer when it opens one.

A store records its version in ``lensdb_meta``. Readers accept only the current version (``schema.connect``);
the writer upgrades an older store in place inside the transaction it opened anyway, so an upgrade that fails
leaves the file as it was. ``upgrade`` runs in this order:

1. every declared table that is missing is created in its current shape (``CREATE TABLE IF NOT EXISTS``);
2. each migration newer than the store, oldest first: changes to tables that existed before it (new columns
   with ``ADD COLUMN IF NOT EXISTS``, since step 1 may already have created a table in its newest shape) and
   the rows derived tables need; rows are inserted by column name, as later versions may add columns;
3. every table and column comment is (re)written, every view is recreated, and the new version recorded.

To change the schema: raise ``schema.layout.SCHEMA_VERSION``, append a ``Migration`` for it here, and add a
store file written by the previous release to ``tests/fixtures`` if its shape is new.
"""

from collections.abc import Callable
from dataclasses import dataclass

import duckdb

from schema.ddl import comment_ddl, table_ddl, view_column_comments, view_ddl
from schema.ids import start_counters
from schema.layout import SCHEMA_VERSION


def fill_token_forms(con: duckdb.DuckDBPyConnection, vocab_id: int | None = None) -> None:
    """Add to ``token_forms`` the forms of one vocabulary's tokens, or of every vocabulary that has none there,
    sorted by form (a typed word is then one equality that reads one row group)."""
    where, params = ("vocab_id = ?", [vocab_id]) if vocab_id is not None else (
        "vocab_id NOT IN (SELECT vocab_id FROM token_forms)", [])
    forms = " UNION ".join(f"SELECT {col} AS form, vocab_id, token_id, token, display FROM tokens WHERE {where}"
                           for col in ("word", "token", "display"))
    con.execute(f"INSERT INTO token_forms BY NAME {forms} ORDER BY form, vocab_id, token_id", params * 3)


def fill_vector_lists(con: duckdb.DuckDBPyConnection, batch: int = 100_000) -> None:
    """Add to ``vector_lists`` every vector with token rows beyond the last listed one, in vector_id order,
    ``batch`` vectors at a time: one ordered list aggregate over a whole large store does not fit in memory."""
    lo, hi = con.execute("SELECT min(vector_id), max(vector_id) FROM vector_tokens "
                         "WHERE vector_id > (SELECT coalesce(max(vector_id), -1) FROM vector_lists)").fetchone()  # type: ignore[misc]
    if lo is None:
        return
    for start in range(lo, hi + 1, batch):
        con.execute("""INSERT INTO vector_lists BY NAME
SELECT vector_id,
       list(token_id ORDER BY rank) FILTER (WHERE side = 'top') AS top_token_ids,
       list(score ORDER BY rank) FILTER (WHERE side = 'top') AS top_scores,
       list(token_id ORDER BY rank) FILTER (WHERE side = 'bottom') AS bottom_token_ids,
       list(score ORDER BY rank) FILTER (WHERE side = 'bottom') AS bottom_scores
FROM vector_tokens WHERE vector_id BETWEEN ? AND ?
GROUP BY vector_id ORDER BY vector_id""", [start, start + batch - 1])


def _to_v2(con: duckdb.DuckDBPyConnection) -> None:
    """Version 1 stores grew tables without a version change; some lack the rows readers of version 2 rely on:
    typed forms of each vocabulary, each vector's token lists, and the vector-id block of every unit (a
    checkpoint indexed before ``vector_units`` existed has none; a run writes each unit's ids contiguously)."""
    fill_token_forms(con)
    fill_vector_lists(con)
    con.execute("""INSERT INTO vector_units
    (checkpoint_id, component, layer, head, first_vector_id, last_vector_id, first_index)
SELECT checkpoint_id, component, layer, head, min(vector_id), max(vector_id), min(idx) FROM vectors
WHERE checkpoint_id NOT IN (SELECT checkpoint_id FROM vector_units)
GROUP BY checkpoint_id, component, layer, head ORDER BY min(vector_id)""")
    # version 1 listed its tables here so readers could probe for them; every table exists from version 2 on
    con.execute("DELETE FROM lensdb_meta WHERE key = 'tables'")


def _to_v3(con: duckdb.DuckDBPyConnection) -> None:
    """Mixture-of-experts models: vectors and their unit blocks gain an ``expert`` coordinate (NULL for every
    vector indexed before, none of which belongs to an expert)."""
    # the columns are added with every step's (``Migration.columns``): nothing else changes


def _to_v4(con: duckdb.DuckDBPyConnection) -> None:
    """Alignment runs record the statistic that compared their layers; runs before it took each vector's best
    *signed* correlation (the paper's mean |correlation| and a sign-aware best are the choices now).
    Rows written before stay as they were: folded index runs of version 1 are named by ``lensdb check``."""
    # DuckDB adds no NOT NULL column to a table with rows, nor sets one in a transaction that updated it: old
    # runs get the default, which is then dropped (lensdb always writes the statistic)
    con.execute("ALTER TABLE alignment_runs ADD COLUMN IF NOT EXISTS statistic VARCHAR DEFAULT 'best_signed'")
    con.execute("ALTER TABLE alignment_runs ALTER COLUMN statistic DROP DEFAULT")


# Components as the adapters of version 6 declare them (tests/test_roles.py checks this against the adapters):
# the reading ones, and the head maps whose rows are token pairs; every other component writes.
READING_COMPONENTS = ("ff_key", "ff_gate", "attn_q", "attn_k", "attn_v", "ff_router", "ff_shared_key",
                      "ff_shared_gate", "ff_shared_router", "attn_ov_svd_in", "attn_qk_svd_q", "attn_qk_svd_k")
PAIR_COMPONENTS = ("attn_ov_pair", "attn_qk_pair")


def _to_v6(con: duckdb.DuckDBPyConnection) -> None:
    """Unit blocks carry their component's role (writes, reads, pairs), so a search can default to the vectors
    that write into the stream; units indexed before get it from their component name."""
    reads = ", ".join(f"'{c}'" for c in READING_COMPONENTS)
    pairs = ", ".join(f"'{c}'" for c in PAIR_COMPONENTS)
    con.execute(f"""UPDATE vector_units SET role = CASE WHEN component IN ({pairs}) THEN 'pairs'
    WHEN component IN ({reads}) THEN 'reads' ELSE 'writes' END WHERE role IS NULL""")


def _to_v7(con: duckdb.DuckDBPyConnection) -> None:
    """Dictionaries (SAEs, transcoders, direction sets): vectors and their unit blocks name the dictionary they
    belong to (NULL for every vector indexed before: a model's own); the dictionary tables are created empty."""
    # the columns are added with every step's (``Migration.columns``); the dictionary tables by ``upgrade``


def _to_v8(con: duckdb.DuckDBPyConnection) -> None:
    """Exact search: every vector gains the z-score of its k-th stored token per side, filled in from the stored
    lists (rows written before stay exact for every answer these bounds certify); vector_values, basis_rows and
    value_blocks are created empty (the runs before stored no vectors)."""
    # the k-th z-score as stored in vector_tokens: the same float32 z the run wrote for that row
    con.execute("""UPDATE vectors SET top_zk = b.top_zk, bottom_zk = b.bottom_zk FROM (
    SELECT vector_id, max(zscore) FILTER (WHERE side = 'top' AND rank = k) AS top_zk,
           max(zscore) FILTER (WHERE side = 'bottom' AND rank = k) AS bottom_zk
    FROM (SELECT vector_id, side, rank, zscore, max(rank) OVER (PARTITION BY vector_id, side) AS k
          FROM (SELECT vector_id, side, rank, zscore FROM vector_tokens
                UNION ALL SELECT vector_id, side, rank, zscore FROM head_pairs))
    GROUP BY vector_id) b WHERE vectors.vector_id = b.vector_id""")


@dataclass(frozen=True)
class Migration:
    version: int  # the version a store has after this step
    doc: str
    apply: Callable[[duckdb.DuckDBPyConnection], None]
    # (table, column, type) added before any step's ``apply`` runs: DuckDB refuses to commit a transaction that
    # altered a table after updating it, and a later step may add a column to a table an earlier one updated
    columns: tuple[tuple[str, str, str], ...] = ()


MIGRATIONS: tuple[Migration, ...] = (
    Migration(2, "every table present; token forms, vector lists and unit blocks filled in", _to_v2),
    Migration(3, "vectors and vector_units: an expert column for mixture-of-experts models", _to_v3,
              columns=(("vectors", "expert", "INTEGER"), ("vector_units", "expert", "INTEGER"))),
    Migration(4, "alignment runs record their layer statistic (old runs: best_signed)", _to_v4),
    Migration(5, "ids from id_counters (never reused), started at the highest id each table holds; the "
              "foreign_keys view", start_counters),
    Migration(6, "vector_units: each unit's role (writes, reads or pairs), filled from the component name", _to_v6,
              columns=(("vector_units", "role", "VARCHAR"),)),
    Migration(7, "dictionaries: SAE latents, transcoders and direction sets; vectors and vector_units name their "
              "dictionary", _to_v7,
              columns=(("vectors", "dictionary_id", "INTEGER"), ("vector_units", "dictionary_id", "INTEGER"),
                       ("alignment_runs", "dictionary_a", "INTEGER"), ("alignment_runs", "dictionary_b", "INTEGER"))),
    Migration(8, "exact search: vectors.top_zk/bottom_zk from the stored lists; vector_values, basis_rows, "
              "value_blocks", _to_v8, columns=(("vectors", "top_zk", "REAL"), ("vectors", "bottom_zk", "REAL"))),
)
assert MIGRATIONS[-1].version == SCHEMA_VERSION, "a schema version without its migration"


def upgrade(con: duckdb.DuckDBPyConnection, found: int | None) -> None:
    """Bring the store on ``con`` from version ``found`` (None: a new, empty file) to the current version, inside
    the caller's transaction."""
    for stmt in table_ddl(comments=False):
        con.execute(stmt)
    if found is None:
        start_counters(con)
    else:
        pending = [step for step in MIGRATIONS if step.version > found]
        for step in pending:
            for table, column, kind in step.columns:
                con.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {kind}")
        for step in pending:
            step.apply(con)
    for stmt in comment_ddl() + view_ddl():
        con.execute(stmt)
    for stmt in view_column_comments(con):
        con.execute(stmt)
    con.execute("INSERT OR REPLACE INTO lensdb_meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])

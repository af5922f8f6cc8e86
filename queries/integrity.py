"""`lensdb check`: the store's invariants as SQL values, each answering with one line per problem found.

Every check is a ``(name, sql)`` whose rows are readable descriptions of what is wrong (at most ``LIMIT`` rows
each); an empty answer means the invariant holds. ``check_store`` runs them on a read-only connection, in one
snapshot when it is given one (the service's readers are).

Bounded in memory and time: the token rows (``vector_tokens``, ``head_pairs`` and the lists of ``vector_lists``,
the three big tables) are read in ONE pass that keeps a few numbers per vector (counts, rank sums, token id
range, an order-free checksum of the rows against the lists, which are hashed in place), never the rows
themselves, so what it holds grows with the number of vectors, not of token rows, and DuckDB can spill it under
the connection's memory limit.
Everything else reads the small tables or one column of a big one. Orphans are looked for along every
reference the store declares (the ``foreign_keys`` view, from ``schema.tables``), so a new table is checked
without being listed here.
"""

import duckdb
from pydantic import BaseModel

LIMIT = 50

_CKPT = "'checkpoint ' || c.checkpoint_id || ' (' || coalesce(m.name, '?') || '/' || c.label || ')'"
_VEC = ("'vector ' || v.vector_id || ' (' || m.name || '/' || c.label || ' ' || v.component || ' layer ' "
        "|| v.layer || coalesce(' head ' || v.head, '') || ' index ' || v.idx || ')'")

# Head maps: one vector per head and map whose rows are token pairs in head_pairs (not token lists).
_PAIR_COMPONENTS = "('attn_ov_pair', 'attn_qk_pair')"

# One pass over every token row, a few numbers per vector (kind 1: vector_tokens, 2: head_pairs), beside each
# vector's lists in vector_lists, which must hold exactly its rows of kind 1: the same count, and the same sum of
# row hashes (side, rank, token, score: a row moved, changed or missing changes it).
_LIST_HASH = ("list_sum(list_transform(range(1, len({ids}) + 1), "
              "i -> hash('{side}', i::SMALLINT, {ids}[i], {scores}[i])::HUGEINT))")
PER_VECTOR = f"""
CREATE TEMP TABLE check_per_vector AS
WITH sides AS (
    SELECT vector_id, side, 1 AS kind, count(*) AS n, sum(rank) AS s, sum(rank::BIGINT * rank) AS sq,
           max(rank) AS mx, min(token_id) AS lo, max(token_id) AS hi,
           sum(hash(side, rank, token_id, score)::HUGEINT) AS h
    FROM vector_tokens GROUP BY vector_id, side
    UNION ALL
    SELECT vector_id, side, 2, count(*), sum(rank), sum(rank::BIGINT * rank), max(rank),
           least(min(token_id), min(source_token_id)), greatest(max(token_id), max(source_token_id)), 0
    FROM head_pairs GROUP BY vector_id, side
), per AS (
    SELECT vector_id,
           coalesce(sum(n) FILTER (WHERE side = 'top'), 0) AS n_top,
           coalesce(sum(n) FILTER (WHERE side = 'bottom'), 0) AS n_bottom,
           coalesce(sum(n) FILTER (WHERE side NOT IN ('top', 'bottom')), 0) AS n_other,
           sum(s) FILTER (WHERE side = 'top') AS sum_top, sum(sq) FILTER (WHERE side = 'top') AS sq_top,
           max(mx) FILTER (WHERE side = 'top') AS max_top,
           sum(s) FILTER (WHERE side = 'bottom') AS sum_bottom, sum(sq) FILTER (WHERE side = 'bottom') AS sq_bottom,
           max(mx) FILTER (WHERE side = 'bottom') AS max_bottom,
           min(lo) AS min_token, max(hi) AS max_token,
           coalesce(sum(n) FILTER (WHERE kind = 1), 0) AS n_rows,
           coalesce(sum(n) FILTER (WHERE kind = 2), 0) AS n_pairs,
           coalesce(sum(h) FILTER (WHERE kind = 1), 0) AS h_rows
    FROM sides GROUP BY vector_id
), listed AS (
    SELECT vector_id, len(top_token_ids) + len(bottom_token_ids) AS n_listed,
           coalesce({_LIST_HASH.format(ids="top_token_ids", scores="top_scores", side="top")}, 0)
           + coalesce({_LIST_HASH.format(ids="bottom_token_ids", scores="bottom_scores", side="bottom")}, 0)
           AS h_listed
    FROM vector_lists
)
SELECT * FROM per FULL JOIN listed USING (vector_id)
"""

# Each vector with what it should have: k rows a side, k = min(top_k, vocabulary) (pairs: min(top_k, tokens²)).
_EXPECTED = f"""
SELECT v.*, p.*, c.label, m.name, voc.size AS vocab_size,
       CASE WHEN v.component IN {_PAIR_COMPONENTS}
            THEN least(r.top_k, coalesce(json_extract(r.basis_flags, '$.head_maps.pair_tokens')::BIGINT,
                                         voc.size) ** 2)
            ELSE least(r.top_k, voc.size) END AS k
FROM vectors v JOIN checkpoints c USING (checkpoint_id) JOIN models m USING (model_id)
JOIN vocabularies voc ON voc.vocab_id = m.vocab_id JOIN index_runs r ON r.checkpoint_id = v.checkpoint_id
LEFT JOIN check_per_vector p ON p.vector_id = v.vector_id
"""

CHECKS: list[tuple[str, str]] = [
    ("complete run record", f"""
SELECT {_CKPT} || ' has no complete index run record'
FROM checkpoints c LEFT JOIN models m USING (model_id)
WHERE NOT EXISTS (SELECT 1 FROM index_runs r WHERE r.checkpoint_id = c.checkpoint_id AND r.status = 'complete')
UNION ALL
SELECT {_CKPT} || ' has ' || count(*) || ' index run records, expected one'
FROM index_runs r JOIN checkpoints c USING (checkpoint_id) LEFT JOIN models m USING (model_id)
GROUP BY c.checkpoint_id, m.name, c.label HAVING count(*) > 1"""),
    ("row counts", f"""
WITH per AS (SELECT v.checkpoint_id, count(*) AS n, sum(coalesce(p.n_top + p.n_bottom + p.n_other, 0)) AS rows
             FROM vectors v LEFT JOIN check_per_vector p USING (vector_id) GROUP BY v.checkpoint_id)
SELECT {_CKPT} || ': its run records ' || r.n_vectors || ' vectors but the store holds ' || coalesce(per.n, 0)
FROM index_runs r JOIN checkpoints c USING (checkpoint_id) LEFT JOIN models m USING (model_id)
LEFT JOIN per USING (checkpoint_id) WHERE r.n_vectors <> coalesce(per.n, 0)
UNION ALL
SELECT {_CKPT} || ': its run records ' || r.n_projections || ' token rows but the store holds '
       || coalesce(per.rows, 0)
FROM index_runs r JOIN checkpoints c USING (checkpoint_id) LEFT JOIN models m USING (model_id)
LEFT JOIN per USING (checkpoint_id) WHERE r.n_projections <> coalesce(per.rows, 0)"""),
    ("2k token rows per vector", f"""
SELECT {_VEC.replace("m.name", "name").replace("c.label", "label")} || ' has ' || coalesce(n_top, 0) || ' top and '
       || coalesce(n_bottom, 0) || ' bottom token rows'
       || CASE WHEN coalesce(n_other, 0) > 0 THEN ' and ' || n_other || ' of no side' ELSE '' END
       || CASE WHEN n_top = k AND n_bottom = k THEN ' with repeated ranks' ELSE '' END
       || ', expected ' || k || ' of each with ranks 1 to ' || k
FROM ({_EXPECTED}) v
WHERE coalesce(n_top, 0) <> k OR coalesce(n_bottom, 0) <> k OR coalesce(n_other, 0) > 0
   OR max_top <> k OR max_bottom <> k OR sum_top <> k * (k + 1) // 2 OR sum_bottom <> k * (k + 1) // 2
   OR sq_top <> k * (k + 1) * (2 * k + 1) // 6 OR sq_bottom <> k * (k + 1) * (2 * k + 1) // 6"""),
    ("token ids within the vocabulary", f"""
SELECT {_VEC.replace("m.name", "name").replace("c.label", "label")} || ' holds token id '
       || CASE WHEN min_token < 0 THEN min_token ELSE max_token END
       || ' outside its vocabulary (0–' || (vocab_size - 1) || ')'
FROM ({_EXPECTED}) v WHERE min_token < 0 OR max_token >= vocab_size"""),
    ("token lists equal the token rows", f"""
SELECT {_VEC.replace("m.name", "name").replace("c.label", "label")}
       || CASE WHEN n_listed IS NULL THEN ' has token rows but no vector_lists row'
               WHEN coalesce(n_rows, 0) = 0 THEN ' has a vector_lists row but no token rows'
               ELSE ' has token lists that differ from its token rows' END
FROM ({_EXPECTED}) v
WHERE (coalesce(n_rows, 0) > 0 OR coalesce(n_listed, 0) > 0)
  AND (coalesce(n_rows, 0) <> coalesce(n_listed, 0) OR coalesce(h_rows, 0) <> coalesce(h_listed, 0))"""),
    ("unique vector ids", """
SELECT 'vector id ' || vector_id || ' is used by ' || count(*) || ' vectors' FROM vectors
GROUP BY vector_id HAVING count(*) > 1"""),
    ("unit blocks cover the vectors", """
WITH got AS (SELECT checkpoint_id, component, layer, coalesce(head, -1) AS h, min(vector_id) AS lo,
                    max(vector_id) AS hi, count(*) AS n, min(idx) AS first_index
             FROM vectors GROUP BY ALL),
     want AS (SELECT checkpoint_id, component, layer, coalesce(head, -1) AS h, min(first_vector_id) AS lo,
                     max(last_vector_id) AS hi, sum(last_vector_id - first_vector_id + 1) AS n,
                     min(first_index) AS first_index
              FROM vector_units GROUP BY ALL)
SELECT 'checkpoint ' || checkpoint_id || ' ' || component || ' layer ' || layer
       || CASE WHEN h >= 0 THEN ' head ' || h ELSE '' END
       || CASE WHEN want.n IS NULL THEN ': its vectors are in no vector_units block'
               WHEN got.n IS NULL THEN ': its vector_units block names no vectors'
               ELSE ': its vector_units blocks (ids ' || want.lo || '–' || want.hi || ') do not match its vectors (ids '
                    || got.lo || '–' || got.hi || ')' END
FROM got FULL JOIN want USING (checkpoint_id, component, layer, h)
WHERE got.n IS DISTINCT FROM want.n OR got.lo IS DISTINCT FROM want.lo OR got.hi IS DISTINCT FROM want.hi
   OR got.n <> got.hi - got.lo + 1 OR got.first_index IS DISTINCT FROM want.first_index"""),
    ("vocabulary sizes", """
SELECT 'vocabulary ' || voc.vocab_id || ' records ' || voc.size || ' tokens but the store holds ' || coalesce(t.n, 0)
FROM vocabularies voc LEFT JOIN (SELECT vocab_id, count(*) AS n FROM tokens GROUP BY vocab_id) t USING (vocab_id)
WHERE voc.size <> coalesce(t.n, 0)"""),
]

# Rows that name a row that is not there, along one declared reference (a row of the foreign_keys view).
ORPHANS = """
SELECT count(*) || ' {table} ' || CASE WHEN count(*) = 1 THEN 'row belongs' ELSE 'rows belong' END
       || ' to no {what} (e.g. {column} ' || min(x."{column}") || ')'
FROM {table} x ANTI JOIN {target} y ON x."{column}" = y."{target_column}"
WHERE x."{column}" IS NOT NULL HAVING count(*) > 0"""

# An id counter behind the ids its table holds would hand one out again.
COUNTER_BEHIND = """
SELECT 'id counter of {table} is at ' || (SELECT last_id FROM id_counters WHERE table_name = '{table}')
       || ' but the table holds {column} ' || max("{column}") || ': an id would be handed out twice'
FROM {table} HAVING max("{column}") > (SELECT last_id FROM id_counters WHERE table_name = '{table}')"""

NOTES = """SELECT 'attempt ' || attempt_id || ' to index ' || model || ' from ' || path || ' ' || status
       || CASE status WHEN 'running' THEN ' (or its process died; the next index run marks it interrupted)'
          ELSE '' END || ' at ' || strftime(coalesce(finished_at, started_at), '%Y-%m-%d %H:%M:%S')
       || ': nothing of it was committed' || coalesce(' (' || error || ')', '')
FROM run_attempts WHERE status IN ('running', 'failed', 'cancelled', 'interrupted') ORDER BY attempt_id"""

# Basis version 2 (issue 16) changed what folded runs store for post-LN models (a basis per layer: each unit
# carried through the LayerNorms on its path) and for every head map (no vocabulary centring on the reading side).
# Folded runs recorded before it (no basis_flags.version) of those kinds need re-indexing; pre-LN models without
# head maps store exactly what they stored before. POST_LN_V1: the post-LN families lensdb read at version 1.
POST_LN_V1 = ("bert", "distilbert")
_POST_LN = "(" + ", ".join(f"'{family}'" for family in POST_LN_V1) + ")"
OLD_BASIS = f"""SELECT 'checkpoint ' || c.checkpoint_id || ' (' || m.name || '/' || c.label || ') was indexed with '
       || 'folded basis version ' || coalesce(json_extract_string(r.basis_flags, '$.version'), '1') || ', which '
       || CASE WHEN m.family IN {_POST_LN} THEN 'read every layer of this post-LN model through one basis'
               ELSE 'centred the reading side of its head maps over the vocabulary' END
       || '; re-index it to get basis version 2: lensdb index ' || c.path || ' --replace'
FROM index_runs r JOIN checkpoints c USING (checkpoint_id) JOIN models m USING (model_id)
WHERE r.basis = 'folded' AND coalesce(TRY_CAST(json_extract_string(r.basis_flags, '$.version') AS INTEGER), 1) < 2
  AND (m.family IN {_POST_LN} OR json_extract(r.basis_flags, '$.head_maps') IS NOT NULL)
ORDER BY c.checkpoint_id"""

COUNTS = """SELECT (SELECT count(*) FROM checkpoints), (SELECT count(*) FROM vectors),
       (SELECT count(*) FROM vector_tokens), (SELECT count(*) FROM head_pairs)"""


class CheckReport(BaseModel):
    """What ``lensdb check`` found: problems (the store is damaged) and notes (attempts that did not commit,
    checkpoints indexed with an older folded basis that ``--replace`` would bring up to date)."""

    problems: list[str]
    notes: list[str]
    checkpoints: int
    vectors: int
    token_rows: int
    pair_rows: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def check_store(con: duckdb.DuckDBPyConnection) -> CheckReport:
    """Run every check on ``con`` (read-only is enough; a temp table holds the per-vector numbers)."""
    problems: list[str] = []
    con.execute(PER_VECTOR)
    try:
        for _, sql in CHECKS:
            problems += [r[0] for r in con.execute(f"SELECT * FROM ({sql}) LIMIT {LIMIT}").fetchall()]
    finally:
        con.execute("DROP TABLE check_per_vector")
    for table, column, target, target_column, _ in con.execute("SELECT * FROM foreign_keys ORDER BY ALL").fetchall():
        what = target_column.removesuffix("_id").replace("_", " ")
        problems += [r[0] for r in con.execute(ORPHANS.format(table=table, column=column, target=target,
                                                              target_column=target_column, what=what)).fetchall()]
    for table, column in con.execute("SELECT table_name, column_name FROM id_counters ORDER BY ALL").fetchall():
        problems += [r[0] for r in con.execute(COUNTER_BEHIND.format(table=table, column=column)).fetchall()]
    notes = [r[0] for r in con.execute(NOTES).fetchall()]
    notes += [r[0] for r in con.execute(OLD_BASIS).fetchall()]
    n_ckpt, n_vec, n_rows, n_pairs = con.execute(COUNTS).fetchone()  # type: ignore[misc]
    return CheckReport(problems=problems, notes=notes, checkpoints=n_ckpt, vectors=n_vec, token_rows=n_rows,
                       pair_rows=n_pairs)

"""`lensdb check`: the store's invariants as SQL values, each answering with one line per problem found.

Every check is a ``(name, sql)`` whose rows are readable descriptions of what is wrong (at most
``LIMIT`` rows each); an empty answer means the invariant holds. ``check_store`` runs them on a read-only
connection.
"""

import duckdb
from pydantic import BaseModel

LIMIT = 50

_CKPT = "'checkpoint ' || c.checkpoint_id || ' (' || coalesce(m.name, '?') || '/' || c.label || ')'"
_VEC = ("'vector ' || v.vector_id || ' (' || m.name || '/' || c.label || ' ' || v.component || ' layer ' "
        "|| v.layer || coalesce(' head ' || v.head, '') || ' index ' || v.idx || ')'")

# A vector's token rows: its top and bottom tokens, or for a head map (``attn_*_pair``) its top and bottom pairs.
_TOKEN_ROWS = ("(SELECT vector_id, side, rank, token_id FROM vector_tokens UNION ALL "
               "SELECT vector_id, side, rank, token_id FROM head_pairs)")

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
WITH vc AS (SELECT checkpoint_id, count(*) AS n FROM vectors GROUP BY checkpoint_id),
     pc AS (SELECT v.checkpoint_id, count(*) AS n FROM {_TOKEN_ROWS} p JOIN vectors v USING (vector_id)
            GROUP BY v.checkpoint_id)
SELECT {_CKPT} || ': its run records ' || r.n_vectors || ' vectors but the store holds ' || coalesce(vc.n, 0)
FROM index_runs r JOIN checkpoints c USING (checkpoint_id) LEFT JOIN models m USING (model_id)
LEFT JOIN vc USING (checkpoint_id) WHERE r.n_vectors <> coalesce(vc.n, 0)
UNION ALL
SELECT {_CKPT} || ': its run records ' || r.n_projections || ' token rows but the store holds ' || coalesce(pc.n, 0)
FROM index_runs r JOIN checkpoints c USING (checkpoint_id) LEFT JOIN models m USING (model_id)
LEFT JOIN pc USING (checkpoint_id) WHERE r.n_projections <> coalesce(pc.n, 0)"""),
    ("2k token rows per vector", f"""
WITH per AS (SELECT vector_id, count(*) FILTER (WHERE side = 'top') AS t, count(*) FILTER (WHERE side = 'bottom') AS b,
                    count(*) FILTER (WHERE side NOT IN ('top', 'bottom')) AS o, count(DISTINCT (side, rank)) AS d,
                    count(*) AS n
             FROM {_TOKEN_ROWS} GROUP BY vector_id)
SELECT {_VEC} || ' has ' || coalesce(per.t, 0) || ' top and ' || coalesce(per.b, 0) || ' bottom token rows'
       || CASE WHEN coalesce(per.o, 0) > 0 THEN ' and ' || per.o || ' of no side' ELSE '' END
       || CASE WHEN per.d < per.n THEN ' with repeated ranks' ELSE '' END
       || ', expected ' || least(r.top_k, voc.size) || ' of each'
FROM vectors v JOIN checkpoints c USING (checkpoint_id) JOIN models m USING (model_id)
JOIN vocabularies voc ON voc.vocab_id = m.vocab_id JOIN index_runs r ON r.checkpoint_id = v.checkpoint_id
LEFT JOIN per USING (vector_id)
WHERE coalesce(per.t, 0) <> least(r.top_k, voc.size) OR coalesce(per.b, 0) <> least(r.top_k, voc.size)
   OR coalesce(per.o, 0) > 0 OR per.d < per.n"""),
    ("token ids within the vocabulary", f"""
SELECT {_VEC} || ' holds token id ' || p.token_id || ' outside its vocabulary (0–' || (voc.size - 1) || ')'
FROM {_TOKEN_ROWS} p JOIN vectors v USING (vector_id) JOIN checkpoints c USING (checkpoint_id)
JOIN models m USING (model_id) JOIN vocabularies voc ON voc.vocab_id = m.vocab_id
WHERE p.token_id < 0 OR p.token_id >= voc.size"""),
    ("token lists equal the token rows", f"""
WITH per AS (SELECT vector_id,
                    list(token_id ORDER BY rank) FILTER (WHERE side = 'top') AS t,
                    list(score ORDER BY rank) FILTER (WHERE side = 'top') AS ts,
                    list(token_id ORDER BY rank) FILTER (WHERE side = 'bottom') AS b,
                    list(score ORDER BY rank) FILTER (WHERE side = 'bottom') AS bs
             FROM vector_tokens GROUP BY vector_id)
SELECT {_VEC} || CASE WHEN l.vector_id IS NULL THEN ' has token rows but no vector_lists row'
                      WHEN per.vector_id IS NULL THEN ' has a vector_lists row but no token rows'
                      ELSE ' has token lists that differ from its token rows' END
FROM per FULL JOIN vector_lists l USING (vector_id) JOIN vectors v USING (vector_id)
JOIN checkpoints c USING (checkpoint_id) JOIN models m USING (model_id)
WHERE l.vector_id IS NULL OR per.vector_id IS NULL OR per.t IS DISTINCT FROM l.top_token_ids
   OR per.ts IS DISTINCT FROM l.top_scores OR per.b IS DISTINCT FROM l.bottom_token_ids
   OR per.bs IS DISTINCT FROM l.bottom_scores"""),
    ("unique vector ids", """
SELECT 'vector id ' || vector_id || ' is used by ' || count(*) || ' vectors' FROM vectors
GROUP BY vector_id HAVING count(*) > 1"""),
    ("no orphans", """
SELECT count(*) || ' vector_tokens rows belong to no vector (e.g. vector id ' || min(vector_id) || ')'
FROM vector_tokens p WHERE NOT EXISTS (SELECT 1 FROM vectors v WHERE v.vector_id = p.vector_id) HAVING count(*) > 0
UNION ALL
SELECT count(*) || ' vectors belong to no checkpoint (e.g. checkpoint id ' || min(checkpoint_id) || ')'
FROM vectors v WHERE NOT EXISTS (SELECT 1 FROM checkpoints c WHERE c.checkpoint_id = v.checkpoint_id)
HAVING count(*) > 0
UNION ALL
SELECT 'index run ' || run_id || ' belongs to no checkpoint (checkpoint id ' || checkpoint_id || ')'
FROM index_runs r WHERE NOT EXISTS (SELECT 1 FROM checkpoints c WHERE c.checkpoint_id = r.checkpoint_id)
UNION ALL
SELECT 'checkpoint ' || checkpoint_id || ' (' || label || ') belongs to no model (model id ' || model_id || ')'
FROM checkpoints c WHERE NOT EXISTS (SELECT 1 FROM models m WHERE m.model_id = c.model_id)
UNION ALL
SELECT 'model ' || name || ' has no vocabulary (vocab id ' || vocab_id || ')'
FROM models m WHERE NOT EXISTS (SELECT 1 FROM vocabularies v WHERE v.vocab_id = m.vocab_id)
UNION ALL
SELECT 'vocabulary ' || voc.vocab_id || ' records ' || voc.size || ' tokens but the store holds '
       || (SELECT count(*) FROM tokens t WHERE t.vocab_id = voc.vocab_id)
FROM vocabularies voc WHERE voc.size <> (SELECT count(*) FROM tokens t WHERE t.vocab_id = voc.vocab_id)"""),
]

NOTES = """SELECT 'attempt ' || attempt_id || ' to index ' || model || ' from ' || path || ' ' || status
       || CASE status WHEN 'running' THEN ' (or its process died; the next index run marks it interrupted)'
          ELSE '' END || ' at ' || strftime(coalesce(finished_at, started_at), '%Y-%m-%d %H:%M:%S')
       || ': nothing of it was committed' || coalesce(' (' || error || ')', '')
FROM run_attempts WHERE status IN ('running', 'failed', 'interrupted') ORDER BY attempt_id"""

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
       (SELECT count(*) FROM vector_tokens)"""


class CheckReport(BaseModel):
    """What ``lensdb check`` found: problems (the store is damaged) and notes (attempts that did not commit,
    checkpoints indexed with an older folded basis that ``--replace`` would bring up to date)."""

    problems: list[str]
    notes: list[str]
    checkpoints: int
    vectors: int
    token_rows: int

    @property
    def ok(self) -> bool:
        return not self.problems


def check_store(con: duckdb.DuckDBPyConnection) -> CheckReport:
    """Run every check of ``CHECKS`` on ``con`` (read-only is enough)."""
    problems: list[str] = []
    for _, sql in CHECKS:
        problems += [r[0] for r in con.execute(f"SELECT * FROM ({sql}) LIMIT {LIMIT}").fetchall()]
    notes = [r[0] for r in con.execute(NOTES).fetchall()]
    notes += [r[0] for r in con.execute(OLD_BASIS).fetchall()]
    n_ckpt, n_vec, n_rows = con.execute(COUNTS).fetchone()  # type: ignore[misc]
    return CheckReport(problems=problems, notes=notes, checkpoints=n_ckpt, vectors=n_vec, token_rows=n_rows)

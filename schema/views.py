"""Documented SQL views: the surface users query from `lensdb sql`, the DuckDB CLI or any SQL client.

Each view is declared once here with its documentation; ``schema.store`` creates it and attaches the text as
a DuckDB comment, so ``SELECT * FROM duckdb_views()`` shows it in any client.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class View:
    name: str
    doc: str
    sql: str


LATEST_CHECKPOINTS = View(
    "latest_checkpoints",
    "The newest checkpoint of each model: highest step, then most recently indexed.",
    """
    SELECT * EXCLUDE (_order) FROM (
        SELECT c.*, row_number() OVER (
            PARTITION BY c.model_id ORDER BY c.step DESC NULLS LAST, c.indexed_at DESC, c.checkpoint_id DESC
        ) AS _order
        FROM checkpoints c
    ) WHERE _order = 1
    """,
)

VECTOR_INFO = View(
    "vector_info",
    "Every indexed vector with its model and checkpoint names: norm and the mean/std of its full "
    "vocabulary projection.",
    """
    SELECT m.name AS model, c.label AS checkpoint, c.step, v.component, v.layer, v.head, v.idx AS "index",
           v.norm, v.logit_mean, v.logit_std, v.vector_id, c.checkpoint_id, m.model_id
    FROM vectors v
    JOIN checkpoints c USING (checkpoint_id)
    JOIN models m USING (model_id)
    """,
)

PROJECTIONS = View(
    "projections",
    "One row per (vector, side, rank): which tokens each vector promotes (side='top') and suppresses "
    "(side='bottom'). score is the logit basis·vector, zscore compares across vectors and models. "
    "Filter on token_id (or token) first: the table is sorted by token_id.",
    """
    SELECT m.name AS model, c.label AS checkpoint, c.step, v.component, v.layer, v.head, v.idx AS "index",
           p.side, p.rank, p.token_id, t.display AS token, p.score, p.zscore,
           v.vector_id, c.checkpoint_id, m.model_id
    FROM vector_tokens p
    JOIN vectors v USING (vector_id)
    JOIN checkpoints c USING (checkpoint_id)
    JOIN models m USING (model_id)
    JOIN tokens t ON t.vocab_id = m.vocab_id AND t.token_id = p.token_id
    """,
)

MODEL_SUMMARY = View(
    "model_summary",
    "One row per model: architecture, sizes, how many checkpoints and vectors are indexed.",
    """
    SELECT m.name AS model, m.family, m.model_type, m.n_layers, m.d_model, m.d_ff, m.n_heads,
           voc.size AS vocab_size,
           (SELECT count(*) FROM checkpoints c WHERE c.model_id = m.model_id) AS checkpoints,
           (SELECT count(*) FROM vectors v JOIN checkpoints c USING (checkpoint_id)
             WHERE c.model_id = m.model_id) AS vectors
    FROM models m JOIN vocabularies voc USING (vocab_id)
    """,
)

VIEWS: tuple[View, ...] = (LATEST_CHECKPOINTS, VECTOR_INFO, PROJECTIONS, MODEL_SUMMARY)

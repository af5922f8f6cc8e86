"""Documented SQL views: the surface users query from `lensdb sql`, the DuckDB CLI or any SQL client.

Each view is declared once here with its documentation; ``schema.writer`` creates it and attaches the text as
a DuckDB comment, so ``SELECT * FROM duckdb_views()`` shows it in any client.
"""

from dataclasses import dataclass

from schema.connect import quote
from schema.tables import metadata


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
    "vocabulary projection; expert is the mixture-of-experts expert (NULL outside experts).",
    """
    SELECT m.name AS model, c.label AS checkpoint, c.step, v.component, v.layer, v.head, v.idx AS "index",
           v.norm, v.logit_mean, v.logit_std, v.vector_id, c.checkpoint_id, m.model_id, v.expert
    FROM vectors v
    JOIN checkpoints c USING (checkpoint_id)
    JOIN models m USING (model_id)
    """,
)

PROJECTIONS = View(
    "projections",
    "One row per (vector, side, rank): which tokens each vector promotes (side='top') and suppresses "
    "(side='bottom'). score is the logit basis·vector, zscore compares across vectors and models. "
    "Filter on token_id (or token) first: the table is sorted by token_id. expert: the mixture-of-experts "
    "expert of the vector (NULL outside experts).",
    """
    SELECT m.name AS model, c.label AS checkpoint, c.step, v.component, v.layer, v.head, v.idx AS "index",
           p.side, p.rank, p.token_id, t.display AS token, p.score, p.zscore,
           v.vector_id, c.checkpoint_id, m.model_id, v.expert
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

CHECKPOINT_STEPS = View(
    "checkpoint_steps",
    "Every step of every model, indexed or linked: checkpoint_id is the indexed checkpoint whose vectors "
    "answer for the step; linked_to names it (model/label) when the step's content was identical to an "
    "already indexed checkpoint and was linked instead of indexed (NULL otherwise).",
    """
    SELECT m.name AS model, c.label AS checkpoint, c.step, c.checkpoint_id, NULL::VARCHAR AS linked_to
    FROM checkpoints c JOIN models m USING (model_id)
    UNION ALL
    SELECT s.name AS model, a.label AS checkpoint, a.step, a.checkpoint_id, m.name || '/' || c.label AS linked_to
    FROM checkpoint_aliases a
    JOIN sources s ON s.source_id = a.source_id
    JOIN checkpoints c ON c.checkpoint_id = a.checkpoint_id
    JOIN models m ON m.model_id = c.model_id
    """,
)

VECTOR_DRIFT = View(
    "vector_drift",
    "Every vector at every step of its model (ordered by step, then label) compared with the same vector "
    "(component, layer, head, expert, index, and dictionary for latents) at the previous step: shared = how many "
    "top-k tokens both steps have, "
    "overlap = shared / k, jaccard = shared / |union|, norm_change = norm - previous norm. The first step "
    "has NULLs. Filter on model, component, layer and index.",
    """
    WITH s AS (
        SELECT cs.model, cs.checkpoint, cs.step, cs.linked_to, v.component, v.layer, v.head, v.idx, v.norm,
               v.vector_id, r.top_k, v.expert, d.name AS dictionary
        FROM checkpoint_steps cs
        JOIN vectors v ON v.checkpoint_id = cs.checkpoint_id
        JOIN index_runs r ON r.checkpoint_id = cs.checkpoint_id
        LEFT JOIN dictionaries d ON d.dictionary_id = v.dictionary_id
    ), w AS (
        SELECT *, lag(checkpoint) OVER win AS previous_checkpoint, lag(vector_id) OVER win AS previous_vector_id,
               lag(norm) OVER win AS previous_norm, lag(top_k) OVER win AS previous_top_k
        FROM s
        WINDOW win AS (PARTITION BY model, component, layer, head, expert, dictionary, idx
                       ORDER BY step NULLS LAST, checkpoint)
    ), x AS (
        SELECT w.*, CASE WHEN previous_vector_id IS NULL THEN NULL ELSE coalesce((
            SELECT len(list_intersect(a.top_token_ids, b.top_token_ids)) FROM vector_lists a, vector_lists b
            WHERE a.vector_id = w.vector_id AND b.vector_id = w.previous_vector_id), 0) END AS shared
        FROM w
    )
    SELECT model, checkpoint, step, linked_to, previous_checkpoint, component, layer, head, idx AS "index",
           norm, norm - previous_norm AS norm_change, shared,
           shared / least(top_k, previous_top_k) AS overlap,
           shared / (top_k + previous_top_k - shared) AS jaccard,
           vector_id, previous_vector_id, expert, dictionary
    FROM x
    """,
)

TRACE_LENS = View(
    "trace_lens",
    "Every trace's residual stream per position and layer through the logit lens: the input token, the top "
    "token at that layer, and the rank and logit of the position's final prediction (layer 0 = after the "
    "embedding).",
    """
    SELECT t.trace_id, m.name AS model, c.label AS checkpoint, t.prompt, s.position, s.layer,
           it.display AS input_token, top.display AS top_token, tt.score AS top_logit,
           pt.display AS prediction, s.pred_rank, s.pred_logit, s.norm, t.interventions
    FROM trace_states s
    JOIN traces t USING (trace_id)
    JOIN checkpoints c USING (checkpoint_id)
    JOIN models m USING (model_id)
    JOIN tokens it ON it.vocab_id = m.vocab_id AND it.token_id = s.token_id
    JOIN tokens pt ON pt.vocab_id = m.vocab_id AND pt.token_id = s.prediction_token_id
    LEFT JOIN trace_top_tokens tt ON tt.trace_id = s.trace_id AND tt.position = s.position AND tt.node = 'state'
         AND tt.layer = s.layer AND tt.rank = 1
    LEFT JOIN tokens top ON top.vocab_id = m.vocab_id AND top.token_id = tt.token_id
    """,
)

TRACE_SHARES = View(
    "trace_shares",
    "The Muppet decomposition with shares: each term's norm as a fraction of the summed norms of all terms at "
    "its position (norm_share), and its part of the final prediction's logit (logit_share = logit / sum of "
    "the terms' logits, which is the prediction's logit less any lm_head bias; through an encoder's masked-LM "
    "head, h·W_U[prediction] — the head's transform is not linear).",
    """
    SELECT x.trace_id, x.position, x.kind, x.layer, x.head, x.norm, x.logit,
           x.norm / sum(x.norm) OVER w AS norm_share,
           x.logit / nullif(sum(x.logit) OVER w, 0) AS logit_share
    FROM trace_terms x
    WINDOW w AS (PARTITION BY x.trace_id, x.position)
    """,
)

TRACE_NEURON_INFO = View(
    "trace_neuron_info",
    "Traced FF neurons with their model, the token they most promote in the index (rank 1 of their ff_value, "
    "where indexed) and their effect on the prediction.",
    """
    SELECT n.trace_id, n.position, n.layer, n.idx AS "index", n.side, n.rank, n.activation, n.value_norm,
           n.score, n.logit, n.pred_rank, n.vector_id, tok.display AS promotes
    FROM trace_neurons n
    JOIN traces t USING (trace_id)
    JOIN checkpoints c USING (checkpoint_id)
    JOIN models m USING (model_id)
    LEFT JOIN vector_lists l ON l.vector_id = n.vector_id
    LEFT JOIN tokens tok ON tok.vocab_id = m.vocab_id AND tok.token_id = l.top_token_ids[1]
    """,
)

HEAD_PAIR_PROJECTIONS = View(
    "head_pair_projections",
    "One row per (head map, side, rank) of checkpoints indexed with --head-maps: component attn_ov_pair "
    "(attending to source_token, the head writes token) or attn_qk_pair (a query at source_token attends to "
    "a key at token); zscore against all V² entries of the map.",
    """
    SELECT m.name AS model, c.label AS checkpoint, c.step, v.component, v.layer, v.head, p.side, p.rank,
           p.source_token_id, s.display AS source_token, p.token_id, t.display AS token, p.score, p.zscore,
           v.vector_id, c.checkpoint_id, m.model_id
    FROM head_pairs p
    JOIN vectors v USING (vector_id)
    JOIN checkpoints c USING (checkpoint_id)
    JOIN models m USING (model_id)
    JOIN tokens t ON t.vocab_id = m.vocab_id AND t.token_id = p.token_id
    JOIN tokens s ON s.vocab_id = m.vocab_id AND s.token_id = p.source_token_id
    """,
)

_ALIGNED = """
    FROM alignment_runs r
    JOIN checkpoints ca ON ca.checkpoint_id = r.checkpoint_a JOIN models ma ON ma.model_id = ca.model_id
    JOIN checkpoints cb ON cb.checkpoint_id = r.checkpoint_b JOIN models mb ON mb.model_id = cb.model_id
"""

ALIGNMENT_LAYERS = View(
    "alignment_layers",
    "Every alignment run's layer-similarity matrix with model and checkpoint names: score compares model A's "
    "vectors of layer_a with model B's of layer_b by the run's statistic (best: the mean of each A vector's "
    "best |vocabulary correlation|; paper: the mean |correlation| over all pairs); raw_score the same over raw "
    "parameters (NULL where the widths differ); matched marks the Hungarian pairs.",
    f"""
    SELECT r.alignment_id, ma.name AS model_a, ca.label AS checkpoint_a, mb.name AS model_b,
           cb.label AS checkpoint_b, r.component, r.statistic, s.layer_a, s.layer_b, s.score, s.raw_score,
           s.matched
    {_ALIGNED}
    JOIN layer_similarity s ON s.alignment_id = r.alignment_id
    """,
)

ALIGNMENT_MATCHES = View(
    "alignment_matches",
    "Every neuron (or head, see unit) of model A with its best match in the matched layer of model B (the "
    "largest |vocabulary correlation|): score is that correlation with its sign; raw_index_b / raw_score the "
    "best match over raw parameters.",
    f"""
    SELECT r.alignment_id, ma.name AS model_a, mb.name AS model_b, r.component, r.unit, n.layer_a, n.index_a,
           n.layer_b, n.index_b, n.score, n.raw_index_b, n.raw_score
    {_ALIGNED}
    JOIN neuron_matches n ON n.alignment_id = r.alignment_id
    """,
)

DICTIONARY_LATENTS = View(
    "dictionary_latents",
    "Every vector of every dictionary (SAE latents, transcoder latents, direction-set rows) with its model, "
    "checkpoint, dictionary, kind, the hook its side sits at, its label where the set gives one, and its "
    "statistics; join projections on vector_id for its tokens.",
    """
    SELECT m.name AS model, c.label AS checkpoint, d.name AS dictionary, d.kind, d.format,
           CASE WHEN v.component IN ('sae_enc', 'dir_read') THEN d.hook_in ELSE d.hook_out END AS hook,
           v.component, v.layer, v.idx, l.label, v.norm, v.logit_mean, v.logit_std, v.vector_id,
           d.dictionary_id, c.checkpoint_id
    FROM vectors v
    JOIN dictionaries d USING (dictionary_id)
    JOIN checkpoints c ON c.checkpoint_id = d.checkpoint_id
    JOIN models m USING (model_id)
    LEFT JOIN dictionary_labels l ON l.dictionary_id = d.dictionary_id AND l.idx = v.idx
    """,
)



def _foreign_keys() -> View:
    """The references declared in ``schema.tables``, as rows: readers (``lensdb check``) and SQL clients get them
    from the store without the declarations."""
    rows = sorted((t.name, fk.parent.name, fk.column.table.name, fk.column.name, fk.ondelete or "CASCADE")
                  for t in metadata.sorted_tables for fk in t.foreign_keys)
    values = ",\n           ".join("(" + ", ".join(quote(v) for v in row) + ")" for row in rows)
    return View(
        "foreign_keys",
        "Every reference between tables: table_name.column_name names a row of references_table."
        "references_column; on_delete says what deleting that row does (CASCADE: this row goes too, SET NULL: the "
        "reference is cleared). Declared in schema/tables.py and followed by every delete (lensdb index --replace, "
        "lensdb forget); lensdb check looks for rows that name nothing.",
        f"""
    SELECT * FROM (VALUES
           {values}
    ) AS r(table_name, column_name, references_table, references_column, on_delete)
    """,
    )


FOREIGN_KEYS = _foreign_keys()

VIEWS: tuple[View, ...] = (LATEST_CHECKPOINTS, VECTOR_INFO, PROJECTIONS, MODEL_SUMMARY, CHECKPOINT_STEPS,
                           VECTOR_DRIFT, TRACE_LENS, TRACE_SHARES, TRACE_NEURON_INFO, HEAD_PAIR_PROJECTIONS,
                           ALIGNMENT_LAYERS, ALIGNMENT_MATCHES, FOREIGN_KEYS,
                           DICTIONARY_LATENTS)

# ---- column comments ----------------------------------------------------------------------------------------
# Every view column gets a comment (``schema.ddl.view_column_comments``): its own line below where the view
# computes or renames it (``view.column`` for one view's own), else the comment of the same-named column of the
# first table the view reads it from.

VIEW_SOURCES: dict[str, tuple[str, ...]] = {
    "latest_checkpoints": ("checkpoints",),
    "vector_info": ("vectors", "checkpoints", "models"),
    "projections": ("vector_tokens", "vectors", "checkpoints", "models"),
    "model_summary": ("models", "vocabularies"),
    "checkpoint_steps": ("checkpoints", "checkpoint_aliases", "models"),
    "vector_drift": ("vectors", "checkpoints", "models"),
    "trace_lens": ("trace_states", "traces", "models"),
    "trace_shares": ("trace_terms", "traces"),
    "trace_neuron_info": ("trace_neurons", "traces", "models"),
    "head_pair_projections": ("head_pairs", "vectors", "checkpoints", "models"),
    "alignment_layers": ("layer_similarity", "alignment_runs"),
    "alignment_matches": ("neuron_matches", "alignment_runs"),
    "dictionary_latents": ("vectors", "dictionaries", "dictionary_labels", "checkpoints", "models"),
}

VIEW_COLUMNS: dict[str, str] = {
    "model": "model name (models.name)",
    "checkpoint": "checkpoint label (checkpoints.label)",
    "index": "index of the vector within its layer, e.g. the neuron number (vectors.idx)",
    "token": "readable text of the token (tokens.display)",
    "source_token": "readable text of the pair's source token: what the head attends to (OV) or the query (QK)",
    "model_a": "name of model A, whose layers are the rows",
    "model_b": "name of model B, whose layers are the columns",
    "checkpoints": "checkpoints of the model indexed",
    "vectors": "vectors indexed across its checkpoints",
    "linked_to": "label of the identical indexed checkpoint this step is linked to, NULL if indexed itself",
    "previous_checkpoint": "label of the previous step of the model, NULL at the first",
    "previous_vector_id": "the same vector's id at the previous step, NULL at the first",
    "norm_change": "norm minus the norm at the previous step",
    "shared": "top tokens shared with the previous step's top-k",
    "overlap": "shared / k",
    "jaccard": "shared / size of the union of the two top-k sets",
    "input_token": "the input token at this position",
    "top_token": "the stream's top token through the logit lens",
    "top_logit": "its logit",
    "prediction": "the final prediction at this position",
    "norm_share": "the term's norm as a fraction of the summed norms of all terms at its position",
    "logit_share": "the term's effect on the predicted logit as a fraction of the summed absolute effects",
    "model_summary.vocab_size": "tokens in the model's vocabulary (vocabularies.size)",
    "table_name": "the table that holds the reference",
    "column_name": "its column that names a row of references_table",
    "references_table": "the table referred to",
    "references_column": "the column of references_table the reference names",
    "on_delete": "what deleting the referred row does: CASCADE (this row goes too) or SET NULL",
    "dictionary": "name of the dictionary (SAE, transcoder or direction set) the vector belongs to (dictionaries.name)",
    "dictionary_latents.hook": "the hook point the vector's side sits at: hook_in for encoder/reading rows, hook_out "
                               "for decoder/writing rows",
    "promotes": "the token the neuron's ff_value most promotes in the index (rank 1), NULL if not indexed",
}

"""SQL as values: each function builds ``(sql, params)`` from typed arguments and never touches a
connection, so the statements are tested without a database and run by ``queries.api``."""


from schema.errors import LensdbError
from schema.layout import SORTED_BY_TOKEN

Sql = tuple[str, list]


def literal(value: object) -> str | None:
    """``value`` as a DuckDB literal, or None where only binding is safe (other types, NUL characters)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return double(value)  # as a bound parameter is: a DOUBLE (a bare literal would be a DECIMAL)
    if isinstance(value, str) and "\x00" not in value:
        return "'" + value.replace("'", "''") + "'"
    return None


def double(value: float) -> str:
    """A float as a DOUBLE literal, infinities and NaN included. A bare ``repr`` is not one: DuckDB reads
    ``1.8703306913375854`` as a DECIMAL, against which the REAL it was printed from compares greater (the decimal
    is the shortest that round-trips, not the binary value), and ``inf`` as a column name."""
    return f"'{float(value)!r}'::DOUBLE"


def inline(built: Sql) -> Sql:
    """The statement with its parameters written in as literals, where every one can be.

    DuckDB's Python binding tries ``import pandas`` twice for every statement executed with parameters; where
    pandas is not installed each try walks sys.path (~2 ms for a token lookup's four statements). The
    builders here put ``?`` only where a parameter goes, so substitution is exact.
    """
    sql, params = built
    parts = sql.split("?")
    rendered = [literal(p) for p in params]
    if len(parts) != len(params) + 1 or any(r is None for r in rendered):
        return built
    return "".join(part + (rendered[i] or "") if i < len(rendered) else part for i, part in enumerate(parts)), []

def checkpoint_filter(checkpoint: str | None, params: list) -> str:
    """``None``: each model's latest checkpoint; ``"all"``: every checkpoint; else that label (the SQL form of
    ``queries.filters.chooses``)."""
    if checkpoint is None:
        return "c.checkpoint_id IN (SELECT checkpoint_id FROM latest_checkpoints)"
    if checkpoint == "all":
        return "TRUE"
    params.append(checkpoint)
    return "c.label = ?"


def store_generation() -> Sql:
    """A cheap fingerprint that changes whenever a checkpoint or a dictionary is added, replaced or removed.

    Models and vocabularies are only ever created together with a checkpoint, and a replaced checkpoint (or
    dictionary) gets a new id, so the two tables alone tell.
    """
    return ("SELECT count(*), max(checkpoint_id), sum(checkpoint_id), (SELECT count(*) FROM dictionaries), "
            "(SELECT coalesce(sum(dictionary_id), 0) FROM dictionaries) FROM checkpoints", [])


def dictionary_names() -> Sql:
    """Every dictionary's id and name (the catalog labels latents with them)."""
    return "SELECT dictionary_id, name FROM dictionaries ORDER BY dictionary_id", []


def checkpoint_catalog() -> Sql:
    """Every checkpoint with its model, vocabulary (id and content hash) and whether it is its model's latest:
    one statement, as a cold open pays for each."""
    return (
        """SELECT c.checkpoint_id, m.name, m.vocab_id, c.label, c.step,
       c.checkpoint_id IN (SELECT checkpoint_id FROM latest_checkpoints), v.content_hash
FROM checkpoints c JOIN models m USING (model_id) JOIN vocabularies v USING (vocab_id) ORDER BY c.checkpoint_id""",
        [],
    )


def model_vocabularies() -> Sql:
    return "SELECT name, vocab_id FROM models ORDER BY name", []


def vocabulary(vocab_id: int) -> Sql:
    return "SELECT token_id, token, display, word FROM tokens WHERE vocab_id = ? ORDER BY token_id", [vocab_id]


def vector_units() -> Sql:
    """Each run writes one contiguous block of vector ids per (checkpoint, component, layer, head): their
    bounds let token lookups filter and label hits without joining the vectors table."""
    return ("SELECT checkpoint_id, component, layer, head, first_vector_id, last_vector_id, first_index, expert, "
            "role, dictionary_id FROM vector_units ORDER BY 5", [])


def all_words(vocab_ids: list[int]) -> Sql:
    """The three typed forms of every token of these vocabularies, for the in-memory index of ``Lens.warm``."""
    return (f"SELECT vocab_id, token_id, word, token, display FROM tokens "
            f"WHERE vocab_id IN ({', '.join('?' * len(vocab_ids))})", list(vocab_ids))


def hits_in_ranges(
    groups: list[tuple[list[tuple[int, int]], list[int]]], side: str, limit: int = 20, offset: int = 0,
) -> Sql:
    """Rows with one of the token ids on ``side`` whose vector id falls in one of the ranges, strongest first.

    ``groups`` pairs vector-id ranges (the wanted checkpoints' units) with the token ids of their vocabulary.
    The rows of each token id are fetched by an equality filter and materialised first: on the token-sorted
    table an equality lets DuckDB skip row groups by min/max, which IN lists and pushed-down Top-N filters
    defeat (100 M rows: ~2 ms against ~50 ms).
    """
    if side not in ("top", "bottom"):
        raise LensdbError(f"side must be 'top' or 'bottom', not {side!r}.")
    token_ids = sorted({t for _, ids in groups for t in ids})
    if not token_ids or not any(r for r, _ in groups):
        raise LensdbError("no tokens or vectors to look up.")
    one = ("SELECT vector_id, side, rank, token_id, score, zscore, NULL::INTEGER AS source_token_id "
           "FROM vector_tokens WHERE token_id = ? UNION ALL "
           "SELECT vector_id, side, rank, token_id, score, zscore, source_token_id FROM head_pairs WHERE token_id = ?")
    fetch = " UNION ALL ".join(one for _ in token_ids)
    params: list = [t for t in token_ids for _ in range(2)] + [side]
    ors = []
    for ranges, ids in groups:
        spans = " OR ".join("vector_id BETWEEN ? AND ?" for _ in ranges)
        ors.append(f"(({spans}) AND token_id IN ({', '.join('?' * len(ids))}))")
        params += [x for r in ranges for x in r] + list(ids)
    order = "DESC" if side == "top" else "ASC"
    params += [limit, offset]
    return (
        f"""WITH hits AS MATERIALIZED ({fetch})
SELECT vector_id, side, rank, token_id, score, zscore, source_token_id FROM hits
WHERE side = ? AND ({' OR '.join(ors)})
ORDER BY zscore {order}, vector_id LIMIT ? OFFSET ?""",
        params,
    )


def warm_scan(table: str) -> Sql:
    """Read every column of a token-sorted table once (``Lens.warm``), returning its row count."""
    if table not in SORTED_BY_TOKEN:
        raise LensdbError(f"no token table {table!r}.")
    pairs = ", max(source_token_id)" if table == "head_pairs" else ""
    return (f"SELECT count(*), max(vector_id), max(side), max(rank), max(token_id), max(score), max(zscore){pairs} "
            f"FROM {table}", [])


def _id_span(after: int | None, through: int | None) -> str:
    spans = ([f"vector_id > {int(after)}"] if after is not None else []) + \
        ([f"vector_id <= {int(through)}"] if through is not None else [])
    return f" WHERE {' AND '.join(spans)}" if spans else ""


def postings_scan(table: str, after: int | None = None) -> Sql:
    """The rows of a token-sorted table (of the vector ids past ``after``) in their stored order, as
    ``queries.postings`` holds them (side as a flag)."""
    if table not in SORTED_BY_TOKEN:
        raise LensdbError(f"no token table {table!r}.")
    source = ", source_token_id" if table == "head_pairs" else ""
    return (f"SELECT token_id, side = 'top', vector_id, rank, score, zscore{source} FROM {table}"
            f"{_id_span(after, None)}", [])


def table_rows(table: str, after: int | None = None, through: int | None = None) -> Sql:
    """How many rows a token-sorted table holds (of the vector ids past ``after``, up to ``through``)."""
    if table not in SORTED_BY_TOKEN:
        raise LensdbError(f"no token table {table!r}.")
    return f"SELECT count(*) FROM {table}{_id_span(after, through)}", []


def vector_bounds() -> Sql:
    """Every vector's k-th z-score per side: the bounds a certificate tests (``unvalued_beyond``)."""
    return "SELECT vector_id, top_zk, bottom_zk FROM vectors", []


def resolve_token(word: str, ignore_case: bool, vocab_ids: list[int] | None = None, word_only: bool = False) -> Sql:
    """Token ids whose lookup word, raw spelling or display text equals ``word``, per model: one sorted
    equality on ``token_forms``, or a scan of ``tokens`` comparing lower-cased forms (of the ``vocab_ids``
    given; ``word_only``: the lookup word alone)."""
    if ignore_case:
        forms = "lower(t.word)" if word_only else "lower(t.word), lower(t.token), lower(t.display)"
        params: list = [word]
        within = ""
        if vocab_ids is not None:
            within = f" AND t.vocab_id IN ({', '.join('?' * len(vocab_ids))})"
            params += list(vocab_ids)
        return (
            "SELECT m.name, m.vocab_id, t.token_id, t.token, t.display FROM tokens t JOIN models m USING (vocab_id) "
            f"WHERE lower(?) IN ({forms}){within} ORDER BY m.name, t.token_id",
            params,
        )
    return (
        "SELECT m.name, m.vocab_id, f.token_id, f.token, f.display FROM token_forms f JOIN models m USING (vocab_id) "
        "WHERE f.form = ? ORDER BY m.name, f.token_id",
        [word],
    )


def token_by_id(token_id: int) -> Sql:
    return (
        "SELECT m.name, m.vocab_id, t.token_id, t.token, t.display FROM tokens t JOIN models m USING (vocab_id) "
        "WHERE t.token_id = ? ORDER BY m.name",
        [token_id],
    )


def similar_words(word: str, limit: int = 5) -> Sql:
    return (
        "SELECT DISTINCT word FROM tokens WHERE word ILIKE ? ORDER BY length(word), word LIMIT ?",
        [word[:3] + "%", limit],
    )


def find_vector(model: str, component: str, layer: int, index: int, head: int | None, checkpoint: str | None,
                expert: int | None = None, dictionary: str | None = None) -> Sql:
    params: list = [model, component, layer, index]
    head_cond = _head(head, params, "v.head")
    expert_cond = _head(expert, params, "v.expert")
    ckpt = checkpoint_filter(checkpoint, params)
    dict_cond = "TRUE"
    if dictionary is not None:
        dict_cond = "d.name = ?"
        params.append(dictionary)
    return (
        f"""SELECT v.vector_id, m.name, c.label, v.component, v.layer, v.head, v.idx, v.norm, v.logit_mean,
       v.logit_std, r.basis, m.vocab_id, v.expert, d.name, l.label
FROM vectors v JOIN checkpoints c USING (checkpoint_id) JOIN models m USING (model_id)
JOIN index_runs r USING (checkpoint_id) LEFT JOIN dictionaries d ON d.dictionary_id = v.dictionary_id
LEFT JOIN dictionary_labels l ON l.dictionary_id = v.dictionary_id AND l.idx = v.idx
WHERE m.name = ? AND v.component = ? AND v.layer = ? AND v.idx = ? AND {head_cond} AND {expert_cond} AND {ckpt}
  AND {dict_cond} ORDER BY v.vector_id DESC""",
        params,
    )


def vector_by_id(vector_id: int) -> Sql:
    """What ``find_vector`` returns, for a vector whose id is known: a point lookup on vectors (sorted by id)."""
    return (
        """SELECT v.vector_id, m.name, c.label, v.component, v.layer, v.head, v.idx, v.norm, v.logit_mean,
       v.logit_std, r.basis, m.vocab_id, v.expert, d.name, l.label
FROM vectors v JOIN checkpoints c USING (checkpoint_id) JOIN models m USING (model_id)
JOIN index_runs r USING (checkpoint_id) LEFT JOIN dictionaries d ON d.dictionary_id = v.dictionary_id
LEFT JOIN dictionary_labels l ON l.dictionary_id = v.dictionary_id AND l.idx = v.idx
WHERE v.vector_id = ?""",
        [vector_id],
    )


def vector_tokens(vector_id: int, vocab_id: int) -> Sql:
    """A vector's top and bottom tokens from the token-sorted tables (a scan; vectors with lists are read from
    ``vector_lists``); for a head map (``*_pair``) its pairs, with their source tokens."""
    return (
        """SELECT p.side, p.rank, p.token_id, t.display, p.score, p.zscore, NULL, NULL FROM vector_tokens p
JOIN tokens t ON t.vocab_id = ? AND t.token_id = p.token_id
WHERE p.vector_id = ?
UNION ALL
SELECT p.side, p.rank, p.token_id, t.display, p.score, p.zscore, p.source_token_id, s.display FROM head_pairs p
JOIN tokens t ON t.vocab_id = ? AND t.token_id = p.token_id
JOIN tokens s ON s.vocab_id = ? AND s.token_id = p.source_token_id
WHERE p.vector_id = ?
ORDER BY 1 DESC, 2""",
        [vocab_id, vector_id, vocab_id, vocab_id, vector_id],
    )


def vector_lists(vector_ids: list[int]) -> Sql:
    """The ``vector_lists`` rows of these vectors with the statistics their z-scores come from (point lookups
    by vector id); none for a vector without lists (a head map's pairs)."""
    if not vector_ids:
        raise LensdbError("no vectors to look up.")
    return (
        f"""SELECT l.vector_id, l.top_token_ids, l.top_scores, l.bottom_token_ids, l.bottom_scores, v.logit_mean,
       v.logit_std
FROM vector_lists l JOIN vectors v USING (vector_id)
WHERE l.vector_id IN ({', '.join('?' * len(vector_ids))}) ORDER BY l.vector_id""",
        list(vector_ids),
    )


def token_displays(vocab_id: int, token_ids: list[int]) -> Sql:
    return (
        f"SELECT token_id, display FROM tokens WHERE vocab_id = ? AND token_id IN ({', '.join('?' * len(token_ids))})",
        [vocab_id, *token_ids],
    )


def head_factor_rows(checkpoint_id: int, kind: str) -> Sql:
    return (
        "SELECT layer, head, d_head, d_model, \"left\", \"right\" FROM head_factors "
        "WHERE checkpoint_id = ? AND kind = ? ORDER BY layer, head",
        [checkpoint_id, kind],
    )


def head_map_stats(checkpoint_id: int, component: str) -> Sql:
    return (
        "SELECT layer, head, logit_mean, logit_std FROM vectors WHERE checkpoint_id = ? AND component = ?",
        [checkpoint_id, component],
    )


def basis_data(checkpoint_id: int, role: str) -> Sql:
    return "SELECT vocab_size, d_model, data FROM bases WHERE checkpoint_id = ? AND role = ?", [checkpoint_id, role]


def head_map_checkpoints() -> Sql:
    return "SELECT DISTINCT checkpoint_id FROM head_factors ORDER BY 1", []


def vector_extent(model: str, component: str) -> Sql:
    """What exists for a model and component, to say what a missing vector could have been."""
    return (
        """SELECT min(v.layer), max(v.layer), min(v.idx), max(v.idx), count(DISTINCT v.head), min(v.expert),
       max(v.expert)
FROM vectors v JOIN checkpoints c USING (checkpoint_id) JOIN models m USING (model_id)
WHERE m.name = ? AND v.component = ?""",
        [model, component],
    )


def list_models() -> Sql:
    return (
        """SELECT m.name, m.family, m.model_type, m.n_layers, m.d_model, m.d_ff, m.n_heads, voc.size,
       c.label, c.step, c.content_hash, c.path, r.basis, r.top_k, r.n_vectors
FROM models m JOIN vocabularies voc USING (vocab_id)
LEFT JOIN checkpoints c USING (model_id) LEFT JOIN index_runs r USING (checkpoint_id)
ORDER BY m.name, c.step NULLS FIRST, c.indexed_at""",
        [],
    )


def model_components(model: str) -> Sql:
    return (
        "SELECT DISTINCT v.component FROM vectors v JOIN checkpoints c USING (checkpoint_id) "
        "JOIN models m USING (model_id) WHERE m.name = ? ORDER BY 1",
        [model],
    )


VECTOR_ORDERS = {"norm": "v.norm DESC, v.vector_id", "index": "v.component, v.layer, v.head NULLS FIRST, "
                 "v.expert NULLS FIRST, v.idx"}


def list_vectors(model: str, component: str | None, layer: int | None, head: int | None, checkpoint: str | None,
                 order: str, limit: int, offset: int) -> Sql:
    """One page of a model's vectors (latest checkpoint unless named), largest norm first or in index order,
    and the size of the whole list."""
    if order not in VECTOR_ORDERS:
        raise LensdbError(f"order must be one of {', '.join(VECTOR_ORDERS)}, not {order!r}.")
    params: list = [model]
    conds = ["m.name = ?", checkpoint_filter(checkpoint, params)]
    for col, value in (("v.component", component), ("v.layer", layer), ("v.head", head)):
        if value is not None:
            conds.append(f"{col} = ?")
            params.append(value)
    params += [limit, offset]
    return (
        f"""SELECT c.label, v.component, v.layer, v.head, v.expert, v.idx, v.norm, v.vector_id,
       count(*) OVER () AS total
FROM vectors v JOIN checkpoints c USING (checkpoint_id) JOIN models m USING (model_id)
WHERE {' AND '.join(conds)}
ORDER BY {VECTOR_ORDERS[order]} LIMIT ? OFFSET ?""",
        params,
    )


# ---- training runs: steps, drift, registered sources, watch cycles -----------------------------------------

_STEP_ORDER = "step NULLS LAST, checkpoint"


def _head(head: int | str | None, params: list, column: str = "head") -> str:
    if head is None:
        return f"{column} IS NULL"
    params.append(head)
    return f"{column} = ?"


def model_steps(model: str) -> Sql:
    """Every step of a model (indexed or linked) with the indexed checkpoint, its k and vocabulary."""
    return (
        """SELECT cs.checkpoint, cs.step, cs.linked_to, cs.checkpoint_id, r.top_k, m.vocab_id
FROM checkpoint_steps cs
JOIN index_runs r ON r.checkpoint_id = cs.checkpoint_id
JOIN checkpoints c ON c.checkpoint_id = cs.checkpoint_id
JOIN models m ON m.model_id = c.model_id
WHERE cs.model = ? ORDER BY cs.step NULLS LAST, cs.checkpoint""",
        [model],
    )


def vector_drift(model: str, component: str, layer: int, index: int, head: int | None,
                 expert: int | None = None, dictionary: str | None = None) -> Sql:
    """One vector at every step of its model, compared with the previous step (view ``vector_drift``); a latent
    by its dictionary's name (the same dictionary indexed against each checkpoint)."""
    params: list = [model, component, layer, index]
    head_cond = _head(head, params)
    expert_cond = _head(expert, params, "expert") + " AND " + _head(dictionary, params, "dictionary")
    return (
        f"""SELECT checkpoint, step, linked_to, previous_checkpoint, norm, norm_change, shared, overlap, jaccard,
       vector_id
FROM vector_drift WHERE model = ? AND component = ? AND layer = ? AND "index" = ? AND {head_cond} AND {expert_cond}
ORDER BY {_STEP_ORDER}""",
        params,
    )


def token_rank(model: str, component: str, layer: int, index: int, head: int | None, token_ids: list[int],
               side: str, expert: int | None = None) -> Sql:
    """Per step of ``model``: the best rank any of ``token_ids`` has on ``side`` of one vector (NULL: absent)."""
    if side not in ("top", "bottom"):
        raise LensdbError(f"side must be 'top' or 'bottom', not {side!r}.")
    if not token_ids:
        raise LensdbError("no tokens to look up.")
    params: list = [*token_ids, side, component, layer, index]
    head_cond = _head(head, params, "v.head")
    expert_cond = _head(expert, params, "v.expert")
    params.append(model)
    return (
        f"""WITH hits AS (
    SELECT p.vector_id, p.rank, p.score, p.zscore, p.token_id,
           row_number() OVER (PARTITION BY p.vector_id ORDER BY p.rank) AS n
    FROM vector_tokens p WHERE p.token_id IN ({', '.join('?' * len(token_ids))}) AND p.side = ?
)
SELECT cs.checkpoint, cs.step, cs.linked_to, h.rank, h.score, h.zscore, r.top_k, t.display
FROM checkpoint_steps cs
JOIN index_runs r ON r.checkpoint_id = cs.checkpoint_id
JOIN checkpoints c ON c.checkpoint_id = cs.checkpoint_id
JOIN models m ON m.model_id = c.model_id
JOIN vectors v ON v.checkpoint_id = cs.checkpoint_id AND v.component = ? AND v.layer = ? AND v.idx = ?
     AND {head_cond} AND {expert_cond}
LEFT JOIN hits h ON h.vector_id = v.vector_id AND h.n = 1
LEFT JOIN tokens t ON t.vocab_id = m.vocab_id AND t.token_id = h.token_id
WHERE cs.model = ?
ORDER BY cs.step NULLS LAST, cs.checkpoint""",
        params,
    )


def changed_most(from_id: int, to_id: int, from_k: int, to_k: int, vocab_id: int, component: str | None,
                 limit: int) -> Sql:
    """Vectors of two checkpoints paired by (component, layer, head, index), lowest top-k overlap first,
    ties broken by the largest change in norm."""
    comp = "" if component is None else "AND component = ?"
    comp_params = [] if component is None else [component]
    sql = f"""WITH a AS (SELECT vector_id, component, layer, head, idx, norm, expert FROM vectors
                WHERE checkpoint_id = ? {comp}),
b AS (SELECT vector_id, component, layer, head, idx, norm, expert FROM vectors WHERE checkpoint_id = ? {comp}),
pairs AS (
    SELECT a.component, a.layer, a.head, a.idx, a.vector_id AS a_id, b.vector_id AS b_id,
           a.norm AS norm_from, b.norm AS norm_to, a.expert
    FROM a JOIN b ON a.component = b.component AND a.layer = b.layer AND a.idx = b.idx
                 AND a.head IS NOT DISTINCT FROM b.head AND a.expert IS NOT DISTINCT FROM b.expert
),
ta AS (SELECT vector_id, token_id, rank FROM vector_tokens WHERE side = 'top'
       AND vector_id IN (SELECT a_id FROM pairs)),
tb AS (SELECT vector_id, token_id, rank FROM vector_tokens WHERE side = 'top'
       AND vector_id IN (SELECT b_id FROM pairs)),
sh AS (SELECT p.a_id, count(*) AS shared FROM pairs p
       JOIN ta ON ta.vector_id = p.a_id JOIN tb ON tb.vector_id = p.b_id AND tb.token_id = ta.token_id
       GROUP BY p.a_id),
scored AS (
    SELECT p.*, coalesce(sh.shared, 0) AS shared FROM pairs p LEFT JOIN sh ON sh.a_id = p.a_id
)
SELECT s.component, s.layer, s.head, s.idx, s.shared, s.shared / least(?, ?) AS overlap,
       s.shared / (? + ? - s.shared) AS jaccard, s.norm_from, s.norm_to, s.norm_to - s.norm_from AS norm_change,
       tf.display AS top_from, tt.display AS top_to, s.expert
FROM scored s
LEFT JOIN ta ON ta.vector_id = s.a_id AND ta.rank = 1
LEFT JOIN tokens tf ON tf.vocab_id = ? AND tf.token_id = ta.token_id
LEFT JOIN tb ON tb.vector_id = s.b_id AND tb.rank = 1
LEFT JOIN tokens tt ON tt.vocab_id = ? AND tt.token_id = tb.token_id
ORDER BY overlap, abs(s.norm_to - s.norm_from) DESC, s.component, s.layer, s.head NULLS FIRST,
         s.expert NULLS FIRST, s.idx
LIMIT ?"""
    params = [from_id, *comp_params, to_id, *comp_params, from_k, to_k, from_k, to_k, vocab_id, vocab_id, limit]
    return sql, params


def list_sources() -> Sql:
    return (
        """SELECT s.name, s.path, s.kind, s.top_k, s.basis, s.registered_at,
       (SELECT count(*) FROM checkpoints c JOIN models m USING (model_id) WHERE m.name = s.name) AS indexed,
       (SELECT count(*) FROM checkpoint_aliases a WHERE a.source_id = s.source_id) AS linked
FROM sources s ORDER BY s.name""",
        [],
    )


def list_watch_runs(limit: int, offset: int) -> Sql:
    return (
        """SELECT watch_id, started_at, finished_at, status, error, n_indexed, n_linked, n_skipped, n_failed,
       n_known FROM watch_runs ORDER BY watch_id DESC LIMIT ? OFFSET ?""",
        [limit, offset],
    )


def watch_items(watch_ids: list[int]) -> Sql:
    if not watch_ids:
        return "SELECT NULL WHERE FALSE", []
    return (
        f"""SELECT watch_id, source, path, label, step, action, reason FROM watch_items
WHERE watch_id IN ({', '.join('?' * len(watch_ids))}) ORDER BY watch_id, decided_at, label""",
        list(watch_ids),
    )


# ---- forward passes (issue 7) -------------------------------------------------------------------------------

def trace_checkpoint(model: str, checkpoint: str | None) -> Sql:
    """The checkpoint a trace runs: its id, label, folder and vocabulary (the latest unless named)."""
    params: list = [model]
    where = checkpoint_filter(checkpoint, params)
    return (f"""SELECT c.checkpoint_id, c.label, c.path, m.vocab_id FROM checkpoints c JOIN models m USING (model_id)
WHERE m.name = ? AND {where} ORDER BY c.checkpoint_id DESC LIMIT 1""", params)


def ff_value_blocks(checkpoint_id: int) -> Sql:
    """Per layer, the first vector id and index of a checkpoint's ff_value block (ids are contiguous)."""
    return ("""SELECT layer, min(vector_id), min(idx) FROM vectors WHERE checkpoint_id = ? AND component = 'ff_value'
GROUP BY layer""", [checkpoint_id])


def trace_meta(trace_id: int) -> Sql:
    return ("""SELECT t.trace_id, m.name, c.label, t.prompt, t.n_positions, t.position, t.prediction_token_id,
       t.prediction_logit, t.readout, t.interventions, t.boost_value, t.baseline_trace_id, t.error, t.stream_error,
       m.vocab_id, t.created_at, t.seconds
FROM traces t JOIN checkpoints c USING (checkpoint_id) JOIN models m USING (model_id) WHERE t.trace_id = ?""",
            [trace_id])


def trace_rows(table: str, trace_id: int, position: int) -> Sql:
    """All rows of one trace table at one position, in a stable order."""
    order = {"trace_states": "layer", "trace_heads": "layer, head", "trace_attention": "layer, head, rank",
             "trace_neurons": "layer, side DESC, rank", "trace_terms": "kind, layer, head",
             "trace_top_tokens": "node, layer, unit, rank"}
    if table not in order:
        raise LensdbError(f"{table!r} is not a trace table.")
    return f"SELECT * EXCLUDE (trace_id) FROM {table} WHERE trace_id = ? AND position = ? ORDER BY {order[table]}", [
        trace_id, position]


def trace_inputs(trace_id: int) -> Sql:
    """The input token id and final prediction of every position of a trace."""
    return ("SELECT position, token_id, prediction_token_id FROM trace_states WHERE trace_id = ? AND layer = 0 "
            "ORDER BY position", [trace_id])


def list_traces(limit: int, offset: int) -> Sql:
    return ("""SELECT t.trace_id, m.name, c.label, t.prompt, t.position, t.interventions, t.baseline_trace_id,
       t.created_at FROM traces t JOIN checkpoints c USING (checkpoint_id) JOIN models m USING (model_id)
ORDER BY t.trace_id DESC LIMIT ? OFFSET ?""", [limit, offset])

# ---- across models (issue 8) -------------------------------------------------------------------------------

def checkpoint_source(model: str, checkpoint: str | None) -> Sql:
    """Where one checkpoint of a model lives (latest unless named), with its vocabulary and index basis."""
    params: list = [model]
    where = checkpoint_filter(checkpoint, params)
    return (
        f"""SELECT c.checkpoint_id, c.label, c.path, m.vocab_id, voc.size
FROM checkpoints c JOIN models m USING (model_id) JOIN vocabularies voc USING (vocab_id)
WHERE m.name = ? AND {where} ORDER BY c.step DESC NULLS LAST, c.checkpoint_id DESC LIMIT 1""",
        params,
    )


def vocabulary_difference(vocab_a: int, vocab_b: int) -> Sql:
    """How many token ids two vocabularies spell differently (or only one of them has)."""
    return (
        """SELECT count(*) FROM (SELECT token_id, token FROM tokens WHERE vocab_id = ?) a
FULL JOIN (SELECT token_id, token FROM tokens WHERE vocab_id = ?) b USING (token_id)
WHERE a.token IS DISTINCT FROM b.token""",
        [vocab_a, vocab_b],
    )


_ALIGNMENT_COLUMNS = """r.alignment_id, ma.name, ca.label, mb.name, cb.label, r.component, r.unit, r.basis,
       r.statistic, r.vocab_size, r.raw_comparable, r.mean_matched, r.seconds, r.created_at, da.name, db.name
FROM alignment_runs r
JOIN checkpoints ca ON ca.checkpoint_id = r.checkpoint_a JOIN models ma ON ma.model_id = ca.model_id
JOIN checkpoints cb ON cb.checkpoint_id = r.checkpoint_b JOIN models mb ON mb.model_id = cb.model_id
LEFT JOIN dictionaries da ON da.dictionary_id = r.dictionary_a
LEFT JOIN dictionaries db ON db.dictionary_id = r.dictionary_b"""


def list_alignments(limit: int = 50, offset: int = 0) -> Sql:
    """Alignment runs, newest first."""
    return f"SELECT {_ALIGNMENT_COLUMNS} ORDER BY r.alignment_id DESC LIMIT ? OFFSET ?", [limit, offset]


def alignment_run(alignment_id: int) -> Sql:
    return f"SELECT {_ALIGNMENT_COLUMNS} WHERE r.alignment_id = ?", [alignment_id]


def alignment_layers(alignment_id: int) -> Sql:
    """The layer-similarity matrix of one run, row-major."""
    return (
        """SELECT layer_a, layer_b, score, raw_score, matched FROM layer_similarity WHERE alignment_id = ?
ORDER BY layer_a, layer_b""",
        [alignment_id],
    )


def alignment_matches(alignment_id: int, layer_a: int | None = None, limit: int | None = None) -> Sql:
    """Unit matches of one run, by layer and index of A."""
    params: list = [alignment_id]
    where = ""
    if layer_a is not None:
        where = " AND layer_a = ?"
        params.append(layer_a)
    cap = ""
    if limit is not None:
        cap = " LIMIT ?"
        params.append(limit)
    return (
        f"""SELECT layer_a, index_a, layer_b, index_b, score, raw_index_b, raw_score FROM neuron_matches
WHERE alignment_id = ?{where} ORDER BY layer_a, index_a{cap}""",
        params,
    )


def alignment_summary(alignment_id: int) -> Sql:
    """Per matched layer pair: how many units were compared, how many keep their index, mean scores."""
    return (
        """SELECT layer_a, layer_b, count(*), count(*) FILTER (WHERE index_a = index_b), avg(score),
       count(*) FILTER (WHERE raw_index_b = index_a), avg(raw_score)
FROM neuron_matches WHERE alignment_id = ? GROUP BY layer_a, layer_b ORDER BY layer_a""",
        [alignment_id],
    )


# ---- service listings ---------------------------------------------------------------------------------------

def index_runs(limit: int, offset: int) -> Sql:
    return (
        """SELECT r.run_id, m.name, c.label, r.status, r.started_at, r.finished_at, r.basis, r.top_k,
       r.n_vectors, r.n_projections, r.seconds
FROM index_runs r JOIN checkpoints c USING (checkpoint_id) JOIN models m USING (model_id)
ORDER BY r.run_id DESC LIMIT ? OFFSET ?""",
        [limit, offset],
    )


def count_runs() -> Sql:
    return "SELECT count(*) FROM index_runs", []


def component_counts(model: str) -> Sql:
    """Components of a model's latest checkpoint with how many layers, heads and vectors each has."""
    return (
        """SELECT component, count(DISTINCT layer), count(DISTINCT head), count(*) FROM vector_info
WHERE model = ? AND checkpoint_id IN (SELECT checkpoint_id FROM latest_checkpoints)
GROUP BY component ORDER BY component""",
        [model],
    )


# ---- exact search (queries.exact) ----------------------------------------------------------------------


def basis_roles(checkpoint_id: int) -> Sql:
    """The roles whose basis rows a checkpoint stores (those that read its stored vectors)."""
    return "SELECT DISTINCT role FROM basis_rows WHERE checkpoint_id = ?", [checkpoint_id]


def value_blocks() -> Sql:
    """Every block of vectors whose values are stored, with the basis role that reads them, where its vectors are
    still there (forgetting a dictionary removes its latents' units and values; the block rows name only the
    checkpoint, which stays)."""
    return ("""SELECT b.checkpoint_id, b.first_vector_id, b.last_vector_id, b.role FROM value_blocks b
WHERE EXISTS (SELECT 1 FROM vector_units u WHERE u.first_vector_id <= b.last_vector_id
              AND u.last_vector_id >= b.first_vector_id)
ORDER BY b.first_vector_id""", [])


def basis_rows_of(keys: list[tuple[int, str, int]]) -> Sql:
    """The basis rows of (checkpoint, role, token id) ``keys``: each by equality on all three, so the table is read
    at one place per row (an ``IN`` over tokens alone reads every checkpoint's rows: ~0.3 s on 27 models)."""
    if not keys:
        raise LensdbError("no tokens to look up.")
    one = 'SELECT checkpoint_id, role, token_id, "values" FROM basis_rows WHERE checkpoint_id = ? AND role = ? ' \
          "AND token_id = ?"
    return " UNION ALL ".join(one for _ in keys), [x for k in keys for x in k]


def certificate_scores(pieces: list[tuple[int, int, int, str]], token_ids: list[int], side: str,
                       bound: float | None, n: int) -> Sql:
    """The ``n`` strongest exact z-scores for ``token_ids`` among the vectors of ``pieces`` (first id, last id,
    checkpoint, basis role: ranges whose values are stored) whose k-th z-score on ``side`` beats ``bound`` (NULL
    bounds: unknown, scored too): the only vectors that can enter a token's top n beyond its stored hits
    (``queries.exact.certify``). One statement; only the winners reach Python. Rows: vector id, token id, score,
    z (as the index run computes it: float32 of a double quotient, 1 for a zero std), and how many (vector, token)
    pairs were scored. The dot product is taken in double precision, as ``exact`` does from memory, so both ways
    give the same float32 answer."""
    if side not in ("top", "bottom") or not pieces or not token_ids:
        raise LensdbError("a certificate needs a side, vector ranges and token ids.")
    col, beats, order = ("top_zk", ">", "DESC") if side == "top" else ("bottom_zk", "<", "ASC")
    beyond = f" AND ({col} IS NULL OR {col} {beats} {double(bound)})" if bound is not None else ""
    cands = " UNION ALL ".join(
        f"SELECT vector_id, logit_mean, logit_std, {int(c)} AS checkpoint_id, {literal(str(r))} AS role FROM vectors "
        f"WHERE vector_id BETWEEN {int(a)} AND {int(z)}{beyond}" for a, z, c, r in pieces)
    keys = ", ".join(sorted({f"({int(c)}, {literal(str(r))})" for _, _, c, r in pieces}))
    tokens = ", ".join(str(int(t)) for t in sorted(set(token_ids)))
    return (f"""WITH c AS ({cands}),
r AS (SELECT checkpoint_id, role, token_id, "values" AS row FROM basis_rows
      WHERE (checkpoint_id, role) IN ({keys}) AND token_id IN ({tokens})),
s AS (SELECT c.vector_id, r.token_id, list_dot_product(v."values"::DOUBLE[], r.row::DOUBLE[]) AS s,
             c.logit_mean, c.logit_std
      FROM c JOIN r USING (checkpoint_id, role) JOIN vector_values v ON v.vector_id = c.vector_id)
SELECT vector_id, token_id, s::FLOAT AS score,
       ((s - logit_mean::DOUBLE) / CASE WHEN logit_std > 0 THEN logit_std::DOUBLE ELSE 1.0 END)::FLOAT
         AS z, count(*) OVER () AS scored
FROM s ORDER BY z {order}, vector_id LIMIT {int(n)}""", [])


def unvalued_beyond(ranges: list[tuple[int, int]], side: str, bound: float | None) -> Sql:
    """How many vectors of ``ranges`` (ranges whose values are *not* stored) have a k-th z-score on ``side`` that
    beats ``bound``: vectors that could enter a token's top n but cannot be scored (the answer is then not exact)."""
    if side not in ("top", "bottom") or not ranges:
        raise LensdbError("a certificate needs a side and vector ranges.")
    col, beats = ("top_zk", ">") if side == "top" else ("bottom_zk", "<")
    spans = " OR ".join(f"vector_id BETWEEN {int(a)} AND {int(z)}" for a, z in ranges)
    beyond = f" AND ({col} IS NULL OR {col} {beats} {double(bound)})" if bound is not None else ""
    return f"SELECT count(*) FROM vectors WHERE ({spans}){beyond}", []


def basis_matrix(checkpoint_id: int, role: str) -> Sql:
    """Every basis row of a checkpoint's role (the caller orders them by token id)."""
    return (f'SELECT token_id, "values" FROM basis_rows WHERE checkpoint_id = {int(checkpoint_id)} '
            f"AND role = {literal(str(role))}", [])


def chunk_values(first: int, last: int) -> Sql:
    """The stored values of vector ids ``first…last`` (the caller orders them by id: a scan keeps no order)."""
    return f'SELECT vector_id, "values" FROM vector_values WHERE vector_id BETWEEN {int(first)} AND {int(last)}', []


def chunk_stats(first: int, last: int) -> Sql:
    """Per vector of ids ``first…last``: logit_mean, logit_std and the k-th z-score of each side (the bounds of
    the certificate), in no set order."""
    return (f"SELECT vector_id, logit_mean, logit_std, top_zk, bottom_zk FROM vectors "
            f"WHERE vector_id BETWEEN {int(first)} AND {int(last)}", [])

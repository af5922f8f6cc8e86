"""SQL as values: each function builds ``(sql, params)`` from typed arguments and never touches a
connection, so the statements are tested without a database and run by ``queries.api``."""

from schema.errors import LensdbError

Sql = tuple[str, list]

_HIT_COLUMNS = """m.name AS model, c.label AS checkpoint, v.component, v.layer, v.head, v.idx AS "index",
       p.side, p.rank, p.token_id, t.display AS token, p.score, p.zscore"""


def checkpoint_filter(checkpoint: str | None, params: list) -> str:
    """``None``: each model's latest checkpoint; ``"all"``: every checkpoint; else that label."""
    if checkpoint is None:
        return "c.checkpoint_id IN (SELECT checkpoint_id FROM latest_checkpoints)"
    if checkpoint == "all":
        return "TRUE"
    params.append(checkpoint)
    return "c.label = ?"


def resolve_token(word: str, ignore_case: bool) -> Sql:
    """Token ids whose lookup word, raw spelling or display text equals ``word``, per model."""
    cmp = "lower({col}) = lower(?)" if ignore_case else "{col} = ?"
    cond = " OR ".join(cmp.format(col=f"t.{col}") for col in ("word", "token", "display"))
    return (
        f"SELECT m.name, m.vocab_id, t.token_id, t.token, t.display FROM tokens t "
        f"JOIN models m USING (vocab_id) WHERE {cond} ORDER BY m.name, t.token_id",
        [word, word, word],
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


def token_hits(
    pairs: list[tuple[int, int]], side: str, *, model: str | None = None, checkpoint: str | None = None,
    component: str | None = None, layer: int | None = None, head: int | None = None,
    limit: int = 20, offset: int = 0,
) -> Sql:
    """Vectors with one of the (vocab_id, token_id) pairs on ``side``, strongest z-score first.

    The bare ``token_id IN (…)`` lets DuckDB skip row groups of the token-sorted table by min/max; the
    vocabulary check then keeps only ids from each model's own vocabulary.
    """
    if side not in ("top", "bottom"):
        raise LensdbError(f"side must be 'top' or 'bottom', not {side!r}.")
    if not pairs:
        raise LensdbError("no tokens to look up.")
    token_ids = sorted({t for _, t in pairs})
    params: list = [*token_ids, side]
    where = [
        f"p.token_id IN ({', '.join('?' * len(token_ids))})",
        "p.side = ?",
        "(" + " OR ".join("(m.vocab_id = ? AND p.token_id = ?)" for _ in pairs) + ")",
    ]
    for vocab_id, token_id in pairs:
        params += [vocab_id, token_id]
    where.append(checkpoint_filter(checkpoint, params))
    for column, value in (("m.name", model), ("v.component", component), ("v.layer", layer), ("v.head", head)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    order = "DESC" if side == "top" else "ASC"
    params += [limit, offset]
    sql = f"""SELECT {_HIT_COLUMNS}
FROM vector_tokens p
JOIN vectors v ON v.vector_id = p.vector_id
JOIN checkpoints c ON c.checkpoint_id = v.checkpoint_id
JOIN models m ON m.model_id = c.model_id
JOIN tokens t ON t.vocab_id = m.vocab_id AND t.token_id = p.token_id
WHERE {' AND '.join(where)}
ORDER BY p.zscore {order}, m.name, v.layer, v.idx
LIMIT ? OFFSET ?"""
    return sql, params


def find_vector(model: str, component: str, layer: int, index: int, head: int | None, checkpoint: str | None) -> Sql:
    params: list = [model, component, layer, index]
    head_cond = "v.head IS NULL" if head is None else "v.head = ?"
    if head is not None:
        params.append(head)
    ckpt = checkpoint_filter(checkpoint, params)
    return (
        f"""SELECT v.vector_id, m.name, c.label, v.component, v.layer, v.head, v.idx, v.norm, v.logit_mean,
       v.logit_std, r.basis, m.vocab_id
FROM vectors v JOIN checkpoints c USING (checkpoint_id) JOIN models m USING (model_id)
JOIN index_runs r USING (checkpoint_id)
WHERE m.name = ? AND v.component = ? AND v.layer = ? AND v.idx = ? AND {head_cond} AND {ckpt}""",
        params,
    )


def vector_tokens(vector_id: int, vocab_id: int) -> Sql:
    return (
        """SELECT p.side, p.rank, p.token_id, t.display, p.score, p.zscore FROM vector_tokens p
JOIN tokens t ON t.vocab_id = ? AND t.token_id = p.token_id
WHERE p.vector_id = ? ORDER BY p.side DESC, p.rank""",
        [vocab_id, vector_id],
    )


def vector_extent(model: str, component: str) -> Sql:
    """What exists for a model and component, to say what a missing vector could have been."""
    return (
        """SELECT min(v.layer), max(v.layer), min(v.idx), max(v.idx), count(DISTINCT v.head)
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

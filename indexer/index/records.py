"""Arrow batches for the store, built from projection results. No I/O: the store copies them in."""

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import torch

from indexer.math.projection import TopBottom
from indexer.math.token_maps import Pairs
from indexer.model.vocab import Vocabulary


def vector_batch(
    first_id: int, checkpoint_id: int, component: str, layer: int, head: int | None,
    first_index: int, norm: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, expert: int | None = None,
    dictionary_id: int | None = None,
    zk: tuple[np.ndarray, np.ndarray] | None = None,
) -> pa.Table:
    """``zk``: each vector's z-score of its k-th stored token on the top and bottom side (``kth_zscores``)."""
    n = int(norm.shape[0])
    return pa.table({
        "vector_id": pa.array(np.arange(first_id, first_id + n, dtype=np.int64)),
        "checkpoint_id": pa.array(np.full(n, checkpoint_id, dtype=np.int32)),
        "component": pa.array([component] * n, pa.string()),
        "layer": pa.array(np.full(n, layer, dtype=np.int32)),
        "head": pa.array([head] * n, pa.int32()),
        "idx": pa.array(np.arange(first_index, first_index + n, dtype=np.int32)),
        "norm": pa.array(norm.to(torch.float64).numpy()),
        "logit_mean": pa.array(mean.to(torch.float64).numpy()),
        "logit_std": pa.array(std.to(torch.float64).numpy()),
        "expert": pa.array([expert] * n, pa.int32()),
        "dictionary_id": pa.array([dictionary_id] * n, pa.int32()),
        "top_zk": pa.array(zk[0] if zk is not None else [None] * n, pa.float32()),
        "bottom_zk": pa.array(zk[1] if zk is not None else [None] * n, pa.float32()),
    })


def kth_zscores(zscores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """From the ``zscore`` column of ``token_columns`` (or ``pair_batch``) of vectors with k rows per side: the
    stored z-score of each vector's k-th token on the top side and on the bottom side, exactly as stored
    (float32). No token missing from a vector's top list has a higher z-score than its top one, none missing
    from its bottom list a lower one: the bound the exact search certifies its answers with (``queries.exact``)."""
    z = np.asarray(zscores).reshape(-1, 2, k)
    return z[:, 0, k - 1].copy(), z[:, 1, k - 1].copy()


def values_batch(first_id: int, values: torch.Tensor) -> pa.Table:
    """One row per vector with its float32 values as a list (``vector_values``)."""
    n, d = values.shape
    flat = pa.array(values.to(torch.float32).contiguous().reshape(-1).numpy())
    return pa.table({"vector_id": pa.array(np.arange(first_id, first_id + n, dtype=np.int64)),
                     "values": pa.ListArray.from_arrays(pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32)), flat)})


def basis_batch(checkpoint_id: int, role: str, matrix: torch.Tensor, start: int = 0) -> pa.Table:
    """Rows ``start…`` of a role's basis matrix, one row per token with its float32 values (``basis_rows``)."""
    n, d = matrix.shape
    flat = pa.array(matrix.to(torch.float32).contiguous().reshape(-1).numpy())
    return pa.table({"checkpoint_id": pa.array(np.full(n, checkpoint_id, dtype=np.int32)),
                     "role": pa.array([role] * n, pa.string()),
                     "token_id": pa.array(np.arange(start, start + n, dtype=np.int32)),
                     "values": pa.ListArray.from_arrays(pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32)), flat)})


_SIDES = pa.array(["top", "bottom"], pa.string())
TOKEN_ROW_BYTES = 23
"""Bytes of one sorted token row: vector_id 8, side 1, rank 2, token_id 4, score 4, z-score 4. A buffered row
holds only the last three (``token_values``, 12 B): the others follow from its place (``row_places``)."""


def _np(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor's values as numpy without a copy. The writer's arithmetic runs in numpy: one thread, no
    intra-op pool to contend with the GEMM for the same cores."""
    return t.detach().numpy()


def token_values(tb: TopBottom, mean: torch.Tensor, std: torch.Tensor) -> dict[str, np.ndarray]:
    """One chunk's token ids, scores and z-scores, in vector order: per vector its top k then its bottom k, rank 1
    = strongest."""
    scores = np.concatenate([_np(tb.top_scores), _np(tb.bottom_scores)], axis=1).astype(np.float32)
    # from the statistics as the vectors table stores them (FLOAT): every stored z-score then equals
    # (score - logit_mean) / logit_std recomputed from the stored columns (vector_lists relies on it)
    m = _np(mean).astype(np.float32).astype(np.float64)
    sd = _np(std).astype(np.float32).astype(np.float64)
    sd = np.where(sd > 0, sd, 1.0)
    z = (scores.astype(np.float64) - m[:, None]) / sd[:, None]
    return {
        "token_id": np.concatenate([_np(tb.top_ids), _np(tb.bottom_ids)], axis=1).reshape(-1).astype(np.int32),
        "score": scores.reshape(-1),
        "zscore": z.reshape(-1).astype(np.float32),
    }


def row_places(rows: np.ndarray, first_id: int, k: int) -> dict[str, np.ndarray]:
    """Vector id, side (0 top, 1 bottom) and rank of token rows from their places ``rows`` (int64) in consecutive
    vectors from ``first_id`` with 2k rows each, its top k then its bottom k (``token_values``' order). ``rows`` is
    overwritten, to spare a second array of its size (a caller that still needs it passes a copy)."""
    vector = rows // (2 * k)
    np.remainder(rows, 2 * k, out=rows)  # each row's place in its vector
    side = (rows >= k).astype(np.int8)
    np.remainder(rows, k, out=rows)
    vector += first_id
    return {"vector_id": vector, "side": side, "rank": (rows + 1).astype(np.int16)}


def token_columns(first_id: int, tb: TopBottom, mean: torch.Tensor, std: torch.Tensor) -> dict[str, np.ndarray]:
    """One chunk's token rows as numpy columns, in vector order (``token_values`` with their ``row_places``)."""
    k = int(tb.top_scores.shape[1])
    rows = np.arange(2 * k * int(tb.top_scores.shape[0]), dtype=np.int64)
    return {**row_places(rows, first_id, k), **token_values(tb, mean, std)}


def token_table(columns: dict[str, np.ndarray]) -> pa.Table:
    """Token rows as the Arrow table ``vector_tokens`` takes (``side`` dictionary-encoded: cheap to build)."""
    return pa.table({name: pa.DictionaryArray.from_arrays(pa.array(values), _SIDES) if name == "side" else values
                     for name, values in columns.items()})


def joined_columns(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Consecutive pieces of token rows as one array per column. ``parts`` is emptied as it is read, a column at a
    time, so the rows are held about once, not twice."""
    names = list(parts[0]) if parts else []
    joined = {name: np.concatenate([p.pop(name) for p in parts]) for name in names}
    parts.clear()
    return joined


ROW_GROUP_ROWS = 122_880
"""Rows of a DuckDB row group (its default ``row_group_size``, which lensdb leaves as it is)."""

TOKEN_SLICE_ROWS = 8 * ROW_GROUP_ROWS
"""Rows of a sorted run built at a time (``sorted_token_slices``): DuckDB's insert of a slice runs on one core while
the next slice is gathered on the other, and a run is never held whole in its sorted form (23 B a row). A whole
number of row groups: an insert that ends inside one leaves it part-filled, and the next insert starts another."""


def sorted_token_slices(parts: list[dict[str, np.ndarray]], first_id: int, k: int,
                        rows: int | None = None) -> Iterator[pa.Table]:
    """A run's ``token_values`` (consecutive vectors from ``first_id``, k rows a side, in pieces) as tables of token
    rows sorted by (token_id, vector_id), ``rows`` at a time: appended in turn they are one sorted run, every row
    group of which spans a narrow range of token ids, so lookups skip the rest. A stable sort by token id alone
    (torch's radix sort, linear in the rows) keeps each token's rows in vector order, and each row's vector id,
    side and rank follow from its place before the sort (``row_places``).

    ``parts`` is emptied as it is joined (``joined_columns``); what is held is the run once (12 B a row), its order
    (8 B) and the slice being built (with the one before it, while the writer inserts that), where the whole sorted
    run (23 B a row) was held before it was appended.
    ``rows``: default ``TOKEN_SLICE_ROWS``."""
    rows = rows or TOKEN_SLICE_ROWS
    joined = joined_columns(parts)
    if not joined:
        return
    order = torch.sort(torch.from_numpy(joined["token_id"]), stable=True).indices.numpy()
    for start in range(0, len(order), rows):
        part = order[start : start + rows]
        values = {name: column[part] for name, column in joined.items()}
        yield token_table({**row_places(part.copy(), first_id, k), **values})


def projection_batch(first_id: int, tb: TopBottom, mean: torch.Tensor, std: torch.Tensor) -> pa.Table:
    """One chunk's token rows in vector order, one row per (vector, side, rank)."""
    return token_table(token_columns(first_id, tb, mean, std))


def list_batch(first_id: int, tb: TopBottom) -> pa.Table:
    """One row per vector with its top and bottom tokens and scores as lists (strongest first on each side)."""
    n, k = tb.top_scores.shape
    offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32))

    def lists(values: torch.Tensor, dtype: torch.dtype) -> pa.ListArray:
        return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1).to(dtype).numpy()))

    return pa.table({
        "vector_id": pa.array(np.arange(first_id, first_id + n, dtype=np.int64)),
        "top_token_ids": lists(tb.top_ids, torch.int32), "top_scores": lists(tb.top_scores, torch.float32),
        "bottom_token_ids": lists(tb.bottom_ids, torch.int32), "bottom_scores": lists(tb.bottom_scores, torch.float32),
    })


def pair_batch(vector_id: int, p: Pairs) -> pa.Table:
    """One row per (side, rank) of a head map's pairs."""
    k = int(p.top_scores.shape[0])
    scores = torch.cat([p.top_scores, p.bottom_scores]).to(torch.float64)
    sd = p.std if p.std > 0 else 1.0
    side = np.repeat(np.array([0, 1], dtype=np.int8), k)
    return pa.table({
        "vector_id": np.full(2 * k, vector_id, dtype=np.int64),
        "side": pa.DictionaryArray.from_arrays(pa.array(side), _SIDES),
        "rank": np.tile(np.arange(1, k + 1, dtype=np.int16), 2),
        "source_token_id": torch.cat([p.top_src, p.bottom_src]).to(torch.int32).numpy(),
        "token_id": torch.cat([p.top_dst, p.bottom_dst]).to(torch.int32).numpy(),
        "score": scores.to(torch.float32).numpy(),
        "zscore": ((scores - p.mean) / sd).to(torch.float32).numpy(),
    })


def token_batch(vocab_id: int, vocab: Vocabulary) -> pa.Table:
    return pa.table({
        "vocab_id": pa.array(np.full(vocab.size, vocab_id, dtype=np.int32)),
        "token_id": pa.array(np.arange(vocab.size, dtype=np.int32)),
        "token": pa.array(vocab.tokens, pa.string()),
        "display": pa.array(vocab.display, pa.string()),
        "word": pa.array(vocab.words, pa.string()),
    })

"""Rows of attention heads' V×V maps, computed exactly at query time from what ``--head-maps`` stored: the
two bases and each head's reading and writing rows (small next to V²).

A head's map is ``source · left_hᵀ · right_h · targetᵀ`` (``indexer.math.token_maps``); one row of it, for one
source token, costs two small products per head and one ``[H, d] × [d, V]`` product. numpy is imported where
the rows are computed, so the other read commands never load it. Factors are loaded once per store file,
checkpoint and map kind, and kept in memory.
"""

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class HeadTables:
    """One checkpoint's factors of one map kind: ``left``/``right`` ``[H, r, d]`` with (layer, head) per row,
    each map's mean and std over all V² entries, and the bases rows are read from and written to."""

    heads: list[tuple[int, int]]
    left: "np.ndarray"
    right: "np.ndarray"
    mean: "np.ndarray"
    std: "np.ndarray"
    source: "np.ndarray"
    target: "np.ndarray"


def matrix(data: bytes, rows: int, cols: int) -> "np.ndarray":
    """A stored float32 matrix (row-major bytes) as an array."""
    import numpy as np

    return np.frombuffer(data, dtype=np.float32).reshape(rows, cols)


def head_tables(factors: list[tuple], stats: dict[tuple[int, int], tuple[float, float | None]],
                bases: dict[str, tuple[int, int, bytes]], kind: str) -> HeadTables:
    """Build the tables from stored rows: ``factors`` (layer, head, d_head, d_model, left, right) ordered by
    layer and head, ``stats`` (layer, head) → (mean, std) of each map, ``bases`` role → (rows, cols, data)."""
    import numpy as np

    heads = [(r[0], r[1]) for r in factors]
    left = np.stack([matrix(r[4], r[2], r[3]) for r in factors])
    right = np.stack([matrix(r[5], r[2], r[3]) for r in factors])
    mean = np.array([stats[h][0] for h in heads], dtype=np.float64)
    std = np.array([stats[h][1] or 1.0 for h in heads], dtype=np.float64)
    reads, writes = (matrix(bases[role][2], bases[role][0], bases[role][1]) for role in ("reads", "writes"))
    return HeadTables(heads, left, right, mean, std, reads, writes if kind == "ov" else reads)


def map_rows(query: "np.ndarray", left: "np.ndarray", right: "np.ndarray", target: "np.ndarray") -> "np.ndarray":
    """One row of each head's map for one source token: ``[H, V]`` scores. ``query`` is the source token's
    basis row ``[d]``; ``left``/``right`` each head's reading and writing rows ``[H, r, d]``; ``target`` the
    basis the row is read through ``[V, d]``."""
    import numpy as np

    mid = np.einsum("hrd,d->hr", left, query)
    out = np.einsum("hr,hrd->hd", mid, right)
    return out @ target.T


def best_targets(t: HeadTables, token_id: int, per_head: int) -> tuple["np.ndarray", "np.ndarray", "np.ndarray"]:
    """Each head's ``per_head`` strongest targets for ``token_id``: (target ids, scores, z-scores), ``[H, k]``
    each, strongest first."""
    import numpy as np

    scores = map_rows(t.source[token_id], t.left, t.right, t.target)
    k = min(per_head, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    ids = np.take_along_axis(part, order, axis=1)
    best = np.take_along_axis(scores, ids, axis=1)
    z = (best.astype(np.float64) - t.mean[:, None]) / t.std[:, None]
    return ids, best, z


_CACHE: dict[tuple[Any, ...], HeadTables] = {}
_LOCK = threading.Lock()


def cached(key: tuple[Any, ...], load: Callable[[], HeadTables]) -> HeadTables:
    """The tables for ``key`` (store file, checkpoint, kind), loaded once per process."""
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
    tables = load()
    with _LOCK:
        _CACHE[key] = tables
    return tables

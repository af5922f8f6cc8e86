"""Rows of attention heads' V×V maps, computed exactly at query time from what ``--head-maps`` stored: the
two bases and each head's reading and writing rows (small next to V²). Factors are loaded once per store
file and checkpoint and kept in memory; the math is ``indexer.heads.head_rows``."""

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from indexer.headmaps import from_blob
from indexer.heads import head_rows
from queries import sql as q
from queries.catalog import CheckpointRef
from queries.rows import HeadRow, TokenScore

if TYPE_CHECKING:
    from queries.api import Lens


@dataclass(frozen=True)
class HeadTables:
    """One checkpoint's map factors: ``left``/``right`` ``[H, r, d]`` with (layer, head) per row."""

    heads: list[tuple[int, int]]
    left: torch.Tensor
    right: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    source: torch.Tensor
    target: torch.Tensor


_CACHE: dict[tuple[str, int, str], HeadTables] = {}
_LOCK = threading.Lock()


def _load(lens: "Lens", checkpoint_id: int, kind: str) -> HeadTables:
    key = (str(lens.path.resolve()), checkpoint_id, kind)
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
    rows = lens._rows(q.head_factor_rows(checkpoint_id, kind))
    heads = [(r[0], r[1]) for r in rows]
    left = torch.stack([from_blob(r[4], r[2], r[3]) for r in rows])
    right = torch.stack([from_blob(r[5], r[2], r[3]) for r in rows])
    stats = {(r[0], r[1]): (r[2], r[3]) for r in lens._rows(q.head_map_stats(checkpoint_id, f"attn_{kind}_pair"))}
    mean = torch.tensor([stats[h][0] for h in heads], dtype=torch.float64)
    std = torch.tensor([stats[h][1] or 1.0 for h in heads], dtype=torch.float64)
    bases = {}
    for role in ("reads", "writes"):
        n, d, data = lens._rows(q.basis_data(checkpoint_id, role))[0]
        bases[role] = from_blob(data, n, d)
    target = bases["writes"] if kind == "ov" else bases["reads"]
    tables = HeadTables(heads, left, right, mean, std, bases["reads"], target)
    with _LOCK:
        _CACHE[key] = tables
    return tables


def head_rows_for(lens: "Lens", ref: CheckpointRef, token_id: int, token: str, kind: str,
                  per_head: int) -> list[HeadRow]:
    """Every head of one checkpoint: its row for ``token_id``, best ``per_head`` targets each."""
    t = _load(lens, ref.checkpoint_id, kind)
    scores = head_rows(t.source[token_id], t.left, t.right, t.target)
    best, ids = scores.topk(min(per_head, scores.shape[1]), dim=1)
    z = (best.double() - t.mean[:, None]) / t.std[:, None]
    wanted = sorted({int(i) for i in ids.reshape(-1)})
    names = dict(lens._rows(q.token_displays(ref.vocab_id, wanted)))
    out = []
    for row, (layer, head) in enumerate(t.heads):
        targets = [TokenScore(rank=j + 1, token_id=int(ids[row, j]), token=names[int(ids[row, j])],
                              score=float(best[row, j]), zscore=float(z[row, j])) for j in range(ids.shape[1])]
        out.append(HeadRow(model=ref.model, checkpoint=ref.label, layer=layer, head=head, kind=kind,
                           source_token_id=token_id, source_token=token, best_zscore=float(z[row, 0]),
                           targets=targets))
    return out

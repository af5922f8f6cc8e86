"""Attention heads as V×V token maps (Dar et al.), exactly and without the V×V matrix. Pure: tensors in,
tensors out.

A head's map is ``left @ right.T`` with ``left, right`` of shape ``[V, r]`` (r = d_head):
- OV: ``left = E_read @ W_V^hᵀ`` and ``right = U_write @ W_O^hᵀ`` — "attending to token a, the head writes b";
- QK: ``left = E_read @ W_Q^hᵀ`` and ``right = E_read @ W_K^hᵀ`` — "a query at a attends to a key at b".

``top_pairs`` finds the k largest and k smallest of its V² entries in row tiles. Within a tile the k largest
entries lie in at most k rows, and those rows are among the k with the largest row maxima, so only k rows
of each tile are searched; the tile's GEMM and one max/min pass are all the rest costs.
"""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Pairs:
    """The k strongest and weakest (source, target) entries of one head's map, with exact map statistics."""

    top_scores: torch.Tensor
    top_src: torch.Tensor
    top_dst: torch.Tensor
    bottom_scores: torch.Tensor
    bottom_src: torch.Tensor
    bottom_dst: torch.Tensor
    mean: float
    std: float
    norm: float


def map_stats(left: torch.Tensor, right: torch.Tensor) -> tuple[float, float, float]:
    """Mean, std and Frobenius norm of ``left @ right.T`` over all V_l × V_r entries, from r×r sums."""
    l64, r64 = left.to(torch.float64), right.to(torch.float64)
    n = left.shape[0] * right.shape[0]
    mean = float(l64.sum(0) @ r64.sum(0)) / n
    sq = float(((l64.T @ l64) * (r64.T @ r64)).sum())
    return mean, max(sq / n - mean * mean, 0.0) ** 0.5, sq**0.5


def _tile_best(block: torch.Tensor, extreme: torch.Tensor, k: int, largest: bool,
               bar: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The k best entries of a [t, V] block given its row maxima (or minima): scores, rows, columns.

    ``bar`` is the running k-th best score: only rows whose extreme beats it can contribute, and after the
    first tiles that is a handful of rows, so the search costs little beside the GEMM.
    """
    n = min(k, block.shape[0])
    if bar is not None:
        beats = extreme > bar if largest else extreme < bar
        if int(beats.sum()) == 0:
            empty = block.new_empty(0)
            return empty, empty.long(), empty.long()
        n = min(n, int(beats.sum()))
    rows = extreme.topk(n, largest=largest).indices
    cand = block[rows]
    scores, flat = cand.reshape(-1).topk(min(k, cand.numel()), largest=largest)
    return scores, rows[flat // block.shape[1]], flat % block.shape[1]


def _merge(a: tuple[torch.Tensor, ...] | None, b: tuple[torch.Tensor, ...], k: int,
           largest: bool) -> tuple[torch.Tensor, ...]:
    if a is None:
        return b
    scores = torch.cat([a[0], b[0]])
    best = scores.topk(min(k, scores.numel()), largest=largest).indices
    return scores[best], torch.cat([a[1], b[1]])[best], torch.cat([a[2], b[2]])[best]


def _bar(run: tuple[torch.Tensor, ...] | None, k: int, largest: bool) -> torch.Tensor | None:
    """The running k-th best score, once k entries are held."""
    if run is None or run[0].numel() < k:
        return None
    return run[0].min() if largest else run[0].max()


def top_pairs(left: torch.Tensor, right: torch.Tensor, k: int, tile_rows: int = 256) -> Pairs:
    """Exact top-k and bottom-k entries of ``left @ right.T``, tiled over rows of ``left``."""
    top: tuple[torch.Tensor, ...] | None = None
    bottom: tuple[torch.Tensor, ...] | None = None
    rt = right.T.contiguous()
    for start in range(0, left.shape[0], tile_rows):
        block = left[start : start + tile_rows] @ rt
        s, r, c = _tile_best(block, block.amax(dim=1), k, True, _bar(top, k, True))
        top = _merge(top, (s, r + start, c), k, True)
        s, r, c = _tile_best(block, block.amin(dim=1), k, False, _bar(bottom, k, False))
        bottom = _merge(bottom, (s, r + start, c), k, False)
    assert top is not None and bottom is not None
    order_t = top[0].argsort(descending=True)
    order_b = bottom[0].argsort()
    mean, std, norm = map_stats(left, right)
    return Pairs(top[0][order_t], top[1][order_t], top[2][order_t], bottom[0][order_b], bottom[1][order_b],
                 bottom[2][order_b], mean, std, norm)


def head_rows(query: torch.Tensor, left_w: torch.Tensor, right_w: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """One row of each head's map for one source token: ``[H, V]`` scores.

    ``query`` is the source token's basis row ``[d]``; ``left_w``/``right_w`` are each head's reading and
    writing rows ``[H, r, d]``; ``target`` is the basis the row is read through ``[V, d]``.
    """
    mid = torch.einsum("hrd,d->hr", left_w, query)
    out = torch.einsum("hr,hrd->hd", mid, right_w)
    return out @ target.T


def svd_directions(left_w: torch.Tensor, right_w: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
    """Top ``n`` singular directions of W = left_wᵀ @ right_w (d × d, rank ≤ r) without forming W.

    Returns (singular values [n], input directions [n, d], output directions [n, d]): W maps input
    direction i to σ_i times output direction i.
    """
    ql, rl = torch.linalg.qr(left_w.T.to(torch.float64))
    qr_, rr = torch.linalg.qr(right_w.T.to(torch.float64))
    u, s, vh = torch.linalg.svd(rl @ rr.T)
    n = min(n, s.shape[0])
    return s[:n].float(), (ql @ u[:, :n]).T.float(), (qr_ @ vh[:n].T).T.float()

"""Attention heads at index time (``--head-maps``): for every head, the exact top and bottom token pairs
of its OV and QK maps, its top singular directions as searchable vectors, and the small factors that let
any single row of a map be computed exactly at query time.

What is stored per checkpoint:
- ``attn_ov_pair`` / ``attn_qk_pair``: one vector per head (norm = the map's Frobenius norm, mean/std over
  all V² entries, exact) whose pairs go to ``head_pairs``;
- ``attn_ov_svd`` (writes), ``attn_ov_svd_in``, ``attn_qk_svd_q``, ``attn_qk_svd_k`` (read): the top singular
  directions of W_OV = W_Vᵀ W_O and W_QK = W_Qᵀ W_K, scaled by σ, projected like any other vector;
- ``head_factors`` (each head's reading and writing rows) and ``bases`` (the two projection bases), so
  ``queries`` answers "what does head L.H write when it attends to X" without the checkpoint.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from indexer.adapters import Adapter
from indexer.basis import Basis, BasisMode, fold_reader
from indexer.heads import Pairs, svd_directions, top_pairs
from indexer.vocab import Vocabulary
from schema.errors import LensdbError

NEEDS = ("attn_q", "attn_k", "attn_v", "attn_o")
PAIRS = {"ov": "attn_ov_pair", "qk": "attn_qk_pair"}
SVD = {"ov": ("attn_ov_svd_in", "attn_ov_svd"), "qk": ("attn_qk_svd_q", "attn_qk_svd_k")}
COMPONENTS = (*PAIRS.values(), *SVD["ov"], *SVD["qk"])


@dataclass(frozen=True)
class HeadFactors:
    """One head's maps as reading rows (``left``) and writing or key rows (``right``), each ``[d_head, d]``."""

    layer: int
    head: int
    ov_left: torch.Tensor
    ov_right: torch.Tensor
    qk_left: torch.Tensor
    qk_right: torch.Tensor


def check_supported(adapter: Adapter) -> None:
    have = {s.name for s in adapter.available()}
    if not set(NEEDS) <= have:
        raise LensdbError(f"--head-maps needs attention components ({', '.join(NEEDS)}); the {adapter.family} "
                          "adapter does not provide them.")


def layer_factors(adapter: Adapter, layer: int, mode: BasisMode) -> list[HeadFactors]:
    """Every head of a layer; readers have their input norm folded in, K/V follow grouped-query sharing."""
    q, k, v, o = (adapter.component(name, layer) for name in NEEDS)
    group = max(1, len(q) // max(1, len(k)))
    out = []
    for h, (qh, oh) in enumerate(zip(q, o, strict=True)):
        kh, vh = k[h // group], v[h // group]
        out.append(HeadFactors(layer, h, fold_reader(vh.vectors, vh.norm, mode), oh.vectors,
                               fold_reader(qh.vectors, qh.norm, mode), fold_reader(kh.vectors, kh.norm, mode)))
    return out


def allowed_tokens(vocab: Vocabulary, rule: str) -> torch.Tensor | None:
    """Token ids pairs may use (the paper filters to readable tokens): all, ascii, alnum, or a file of tokens."""
    if rule == "all":
        return None
    if rule == "ascii":
        keep = [i for i, d in enumerate(vocab.display) if d.isascii() and d.strip() and d.isprintable()]
    elif rule == "alnum":
        keep = [i for i, w in enumerate(vocab.words) if w.isalnum()]
    else:
        path = Path(rule)
        if not path.is_file():
            raise LensdbError(f"--pair-vocab {rule!r}: use all, ascii, alnum, or a file with one token per line.")
        wanted = {line.strip() for line in path.read_text().splitlines() if line.strip()}
        keep = [i for i, (t, w) in enumerate(zip(vocab.tokens, vocab.words, strict=True)) if t in wanted or w in wanted]
    if not keep:
        raise LensdbError(f"--pair-vocab {rule!r} leaves no token of this vocabulary.")
    return torch.tensor(keep, dtype=torch.long)


def head_pairs(factors: HeadFactors, write: Basis, read: Basis, k: int,
               allowed: torch.Tensor | None) -> Iterator[tuple[str, Pairs]]:
    """The OV and QK pairs of one head, with token ids of the full vocabulary."""
    dev = read.matrix.device
    rows_r = read.matrix if allowed is None else read.matrix[allowed.to(dev)]
    rows_w = write.matrix if allowed is None else write.matrix[allowed.to(dev)]
    for kind, left, right in (
        ("ov", rows_r @ factors.ov_left.to(dev).T, rows_w @ factors.ov_right.to(dev).T),
        ("qk", rows_r @ factors.qk_left.to(dev).T, rows_r @ factors.qk_right.to(dev).T),
    ):
        p = top_pairs(left, right, k, tile_rows=8192 if dev.type == "cuda" else 512)
        if allowed is not None:
            ids = allowed.to(dev)
            p = Pairs(p.top_scores, ids[p.top_src], ids[p.top_dst], p.bottom_scores, ids[p.bottom_src],
                      ids[p.bottom_dst], p.mean, p.std, p.norm)
        yield PAIRS[kind], p


def svd_vectors(factors: HeadFactors, n: int) -> Iterator[tuple[str, str, torch.Tensor]]:
    """(component, role, σ-scaled directions) for both maps of one head."""
    s, inp, out = svd_directions(factors.ov_left, factors.ov_right, n)
    yield SVD["ov"][0], "reads", inp * s[:, None]
    yield SVD["ov"][1], "writes", out * s[:, None]
    s, q_side, k_side = svd_directions(factors.qk_left, factors.qk_right, n)
    yield SVD["qk"][0], "reads", q_side * s[:, None]
    yield SVD["qk"][1], "reads", k_side * s[:, None]


def _blob(t: torch.Tensor) -> bytes:
    return t.detach().to(torch.float32).cpu().contiguous().numpy().tobytes()


def factor_rows(checkpoint_id: int, factors: list[HeadFactors]) -> pa.Table:
    rows: dict[str, list] = {c: [] for c in ("checkpoint_id", "layer", "head", "kind", "d_head", "d_model", "left",
                                             "right")}
    for f in factors:
        for kind, left, right in (("ov", f.ov_left, f.ov_right), ("qk", f.qk_left, f.qk_right)):
            for col, val in zip(rows, (checkpoint_id, f.layer, f.head, kind, left.shape[0], left.shape[1],
                                       _blob(left), _blob(right)), strict=True):
                rows[col].append(val)
    return pa.table({c: pa.array(v, pa.binary() if c in ("left", "right") else None) for c, v in rows.items()})


def basis_row(checkpoint_id: int, role: str, basis: Basis) -> pa.Table:
    m = basis.matrix
    return pa.table({"checkpoint_id": [checkpoint_id], "role": [role], "vocab_size": [int(m.shape[0])],
                     "d_model": [int(m.shape[1])], "data": pa.array([_blob(m)], pa.binary())})


def from_blob(data: bytes, rows: int, cols: int) -> torch.Tensor:
    """A stored float32 matrix back as a tensor (no copy beyond the bytes DuckDB returned)."""
    return torch.from_numpy(np.frombuffer(data, dtype=np.float32).reshape(rows, cols).copy())

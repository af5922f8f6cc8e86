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

Bases (folded mode): the writing side is W_U as TransformerLens processes it (final norm's gain folded in,
centred across d and across the vocabulary); no reading side is centred across the vocabulary, because a
bilinear map's reading-side centring, (e_a − μ)·M·e_bᵀ, shifts each target b by its own −μ·M·e_bᵀ and changes
which keys a query attends to and which tokens a source writes. Each head's factors carry the norms on its
path (``indexer.math.carry``): the readers every norm between the embedding and the head's input, W_O every
norm between the head's write and the final norm (post-LN encoders; nothing in pre-LN models), so the two
stored bases serve every layer.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import torch
from tqdm import tqdm

from indexer.index.compute import Compute
from indexer.index.projector import Projector
from indexer.index.unit_writer import UnitWriter
from indexer.math.basis import Basis, BasisMode, fold_reader, read_basis, write_basis
from indexer.math.carry import path_map
from indexer.math.token_maps import Pairs, svd_directions, top_pairs
from indexer.model.adapters import Adapter
from indexer.model.checkpoint import MAX_JSON, read_regular
from indexer.model.vocab import Vocabulary
from schema.errors import LensdbError
from schema.writer import append_arrow

NEEDS = ("attn_q", "attn_k", "attn_v", "attn_o")
PAIRS = {"ov": "attn_ov_pair", "qk": "attn_qk_pair"}
SVD = {"ov": ("attn_ov_svd_in", "attn_ov_svd"), "qk": ("attn_qk_svd_q", "attn_qk_svd_k")}
COMPONENTS = (*PAIRS.values(), *SVD["ov"], *SVD["qk"])
SVD_ROLES = {SVD["ov"][0]: "reads", SVD["ov"][1]: "writes", SVD["qk"][0]: "reads", SVD["qk"][1]: "reads"}
"""The singular directions' roles: the OV map's output side writes into the stream, its input and QK's sides read."""


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
    """Every head of a layer; readers have their input norm folded in, K/V follow grouped-query sharing, and
    (folded) each side is carried through the norms on its path."""
    q, k, v, o = (adapter.component(name, layer) for name in NEEDS)
    group = max(1, len(q) // max(1, len(k)))
    d = adapter.dims.d_model
    reads = path_map(adapter.path_norms("reads", layer, "attn"), "reads", d) if mode == "folded" else None
    writes = path_map(adapter.path_norms("writes", layer, "attn"), "writes", d) if mode == "folded" else None

    def carried(rows: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
        return rows if m is None else rows.to(torch.float32) @ m

    out = []
    for h, (qh, oh) in enumerate(zip(q, o, strict=True)):
        kh, vh = k[h // group], v[h // group]
        out.append(HeadFactors(layer, h, carried(fold_reader(vh.vectors, vh.norm, mode), reads),
                               carried(oh.vectors, writes), carried(fold_reader(qh.vectors, qh.norm, mode), reads),
                               carried(fold_reader(kh.vectors, kh.norm, mode), reads)))
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
        try:  # a regular file only; its contents are never quoted back (they may be anything)
            text = read_regular(path, MAX_JSON).decode("utf-8")
        except UnicodeDecodeError as err:
            raise LensdbError(f"--pair-vocab {rule}: not UTF-8 text (at byte {err.start}); give one token per "
                              "line.") from None
        wanted = {line.strip() for line in text.splitlines() if line.strip()}
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
    yield SVD["ov"][0], SVD_ROLES[SVD["ov"][0]], inp * s[:, None]
    yield SVD["ov"][1], SVD_ROLES[SVD["ov"][1]], out * s[:, None]
    s, q_side, k_side = svd_directions(factors.qk_left, factors.qk_right, n)
    yield SVD["qk"][0], SVD_ROLES[SVD["qk"][0]], q_side * s[:, None]
    yield SVD["qk"][1], SVD_ROLES[SVD["qk"][1]], k_side * s[:, None]


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



def _cpu_pairs(p: Pairs) -> Pairs:
    return Pairs(p.top_scores.float().cpu(), p.top_src.cpu(), p.top_dst.cpu(), p.bottom_scores.float().cpu(),
                 p.bottom_src.cpu(), p.bottom_dst.cpu(), p.mean, p.std, p.norm)


def index_heads(out: UnitWriter, projector: Projector, adapter: Adapter, vocab: Vocabulary, mode: BasisMode,
                read_with: str, top_k: int, pair_vocab: str, svd: int, compute: Compute, progress: bool) -> dict:
    """The head-map phase of a run: both bases at once, one layer of heads at a time; returns its flags."""
    fast = torch.bfloat16 if compute.precision == "bf16" else None
    write = write_basis(adapter.unembedding(), adapter.final_norm(), mode).to(compute.device, fast)
    reader = adapter.embedding() if read_with == "embedding" else adapter.unembedding()
    read = read_basis(reader, read_with, mode, centre_vocab=False).to(compute.device, fast)
    allowed = allowed_tokens(vocab, pair_vocab)
    factors_all = []
    for layer in tqdm(range(adapter.dims.n_layers), disable=not progress, desc="head maps", leave=False):
        for f in layer_factors(adapter, layer, mode):
            for name, p in head_pairs(f, write, read, top_k, allowed):
                out.pairs(name, layer, f.head, _cpu_pairs(p))
            for name, role, vecs in svd_vectors(f, svd):
                out.write(projector.stream(name, layer, f.head, vecs, write if role == "writes" else read))
            factors_all.append(f)
    out.drain_pending()
    append_arrow(out.con, "head_factors", factor_rows(out.checkpoint_id, factors_all))
    for role, basis in (("writes", write), ("reads", read)):
        append_arrow(out.con, "bases", basis_row(out.checkpoint_id, role, basis))
    return {"pair_vocab": pair_vocab, "pair_tokens": vocab.size if allowed is None else int(allowed.numel()),
            "svd": svd, "write": write.flags, "read": read.flags}

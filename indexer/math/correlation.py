"""Comparing two models in embedding space (Dar et al., section 5). Pure functions: tensors in, tensors out.

A vector ``a`` of model A and ``b`` of model B are compared by the Pearson correlation, over the shared
vocabulary, of their projections ``E_A a`` and ``E_B b`` (``E``: ``[vocab, d]``). Every term of it is a
d×d kernel or a column sum, so no vocabulary-long vector is ever built:

    mean(E a)        = a · μ_A                 μ_A = column means of E_A
    E[(E_A a)(E_B b)] = a · K_AB · b           K_AB = E_Aᵀ E_B / V
    var(E a)         = a · K_AA · a − (a · μ_A)²

The same correlation over raw parameter coordinates is the baseline; it only means something where both
models have the same width (and even then only if they share a residual basis, which separately trained
models do not).

Two layers are compared by one of two statistics over their vectors' correlation matrix: ``paper`` — the mean
|correlation| over all pairs, as Dar et al.'s code (``parameter-alignment.ipynb``) aggregates it; ``best`` —
the mean over A's vectors of their best |correlation| among B's. Both ignore the sign: a vector and its
negation promote and suppress the same tokens. Unit matches are sign-aware best matches (largest |correlation|,
stored with its sign).
"""

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment


@dataclass(frozen=True)
class Kernels:
    """d×d sums that give exact vocabulary correlations between A's and B's projections."""

    mean_a: torch.Tensor  # [d_a]
    mean_b: torch.Tensor  # [d_b]
    gram_a: torch.Tensor  # [d_a, d_a]
    gram_b: torch.Tensor  # [d_b, d_b]
    cross: torch.Tensor  # [d_a, d_b]


def kernels(basis_a: torch.Tensor, basis_b: torch.Tensor, block: int = 4096) -> Kernels:
    """Float64 kernels of two ``[vocab, d]`` bases over the same token ids, summed over row blocks."""
    if basis_a.shape[0] != basis_b.shape[0]:
        raise ValueError(f"bases cover {basis_a.shape[0]} and {basis_b.shape[0]} tokens; they must match.")
    da, db, n = basis_a.shape[1], basis_b.shape[1], basis_a.shape[0]
    f64 = torch.float64
    sa, sb = torch.zeros(da, dtype=f64), torch.zeros(db, dtype=f64)
    gaa, gbb, gab = torch.zeros(da, da, dtype=f64), torch.zeros(db, db, dtype=f64), torch.zeros(da, db, dtype=f64)
    for start in range(0, n, block):
        a = basis_a[start : start + block].to(f64)
        b = basis_b[start : start + block].to(f64)
        sa += a.sum(0)
        sb += b.sum(0)
        gaa.addmm_(a.T, a)
        gbb.addmm_(b.T, b)
        gab.addmm_(a.T, b)
    return Kernels(sa / n, sb / n, gaa / n, gbb / n, gab / n)


def _std(x: torch.Tensor, mean: torch.Tensor, gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    m = x @ mean
    var = ((x @ gram) * x).sum(1) - m * m
    return m, var.clamp_min(1e-30).sqrt()


@dataclass(frozen=True)
class Prepared:
    """One side's vectors with the terms that do not depend on the other side."""

    vectors: torch.Tensor  # float32 [n, d]
    mean: torch.Tensor  # float64 [n]: mean of each projection over the vocabulary
    std: torch.Tensor  # float64 [n]
    left: torch.Tensor | None = None  # float32 [n, d_b]: vectors @ K_AB (A's side only)


def prepare_a(a: torch.Tensor, k: Kernels) -> Prepared:
    a64 = a.to(torch.float64)
    m, s = _std(a64, k.mean_a, k.gram_a)
    return Prepared(a.float(), m, s, (a64 @ k.cross).float())


def prepare_b(b: torch.Tensor, k: Kernels) -> Prepared:
    m, s = _std(b.to(torch.float64), k.mean_b, k.gram_b)
    return Prepared(b.float(), m, s)


def prepared_corr(a: Prepared, b: Prepared) -> torch.Tensor:
    """``embedded_corr`` from prepared sides: one float32 ``[n_a, d] @ [d, n_b]`` product per pair."""
    assert a.left is not None
    cov = a.left @ b.vectors.T - torch.outer(a.mean, b.mean).float()
    return (cov / torch.outer(a.std, b.std).float()).clamp(-1.0, 1.0)


def embedded_corr(a: torch.Tensor, b: torch.Tensor, k: Kernels) -> torch.Tensor:
    """``[n_a, n_b]`` Pearson correlations over the vocabulary between ``E_A a_i`` and ``E_B b_j``.

    The means, variances and ``a · K_AB`` are float64; the big product runs in float32 (exact to ~1e-6).
    """
    return prepared_corr(prepare_a(a, k), prepare_b(b, k))


def raw_corr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor | None:
    """``[n_a, n_b]`` Pearson correlations over raw coordinates; ``None`` where the widths differ."""
    if a.shape[1] != b.shape[1]:
        return None
    ca = a.float() - a.float().mean(1, keepdim=True)
    cb = b.float() - b.float().mean(1, keepdim=True)
    ca = ca / ca.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cb = cb / cb.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return ca @ cb.T


Statistic = Literal["best", "paper"]
StitchMap = Literal["paper", "pinv"]


def best_match(corr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For every row (a unit of A): the column (unit of B) with the largest |correlation|, and that correlation
    with its sign (a negated copy is a match too)."""
    index = corr.abs().argmax(dim=1)
    return index, corr.gather(1, index[:, None])[:, 0]


def unit_similarity(corr: torch.Tensor, statistic: Statistic = "best") -> float:
    """How alike two groups of vectors are: ``best``, the mean over A's vectors of their best |correlation| in B;
    ``paper``, the mean |correlation| over all pairs (Dar et al.)."""
    if statistic == "paper":
        return float(corr.abs().mean())
    return float(corr.abs().max(dim=1).values.mean())


def hungarian(similarity: torch.Tensor) -> list[tuple[int, int]]:
    """The one-to-one pairing of rows and columns with the largest total similarity (rows sorted)."""
    rows, cols = linear_sum_assignment(np.asarray(similarity.double()), maximize=True)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True)]


def groups_corr(a: list[torch.Tensor], b: list[torch.Tensor], k: Kernels | None,
                statistic: Statistic = "best") -> torch.Tensor:
    """Similarity of every group of A to every group of B (``k=None``: raw coordinates) by ``statistic``.

    A group is the vectors of one unit: a layer's FF neurons, or one head's rows.
    """
    out = torch.zeros(len(a), len(b), dtype=torch.float64)
    pa = [prepare_a(g, k) for g in a] if k is not None else []
    pb = [prepare_b(g, k) for g in b] if k is not None else []
    for i, ga in enumerate(a):
        for j, gb in enumerate(b):
            corr = prepared_corr(pa[i], pb[j]) if k is not None else raw_corr(ga, gb)
            assert corr is not None
            out[i, j] = unit_similarity(corr, statistic)
    return out


def translation(embedding_b: torch.Tensor, embedding_a: torch.Tensor, method: StitchMap = "pinv") -> torch.Tensor:
    """``[d_b, d_a]`` map ``M`` of B's residual stream into A's through the shared vocabulary (``h_A = h_B M``).

    - ``paper``: ``E_Bᵀ (E_Aᵀ)⁺``, the map of Dar et al.'s code (``model-stitching.ipynb``): B's state is read
      into the vocabulary with B's embedding and read back with A's, the least-squares ``M`` with
      ``M E_Aᵀ ≈ E_Bᵀ`` — every state keeps its vocabulary scores (h_B E_Bᵀ ≈ h_B M E_Aᵀ).
    - ``pinv``: ``E_B⁺ E_A``, the least-squares ``M`` with ``E_B M ≈ E_A`` — every token's embedding in B is
      carried to its embedding in A.

    The two agree when the embeddings differ by an orthogonal change of basis (E_A = E_B Q); under a general
    invertible G (E_A = E_B G), ``pinv`` gives G — what a stream built from written embeddings needs, as its
    states change basis with them — and ``paper`` gives G⁻ᵀ, what keeps a read through E unchanged.
    """
    e_a, e_b = embedding_a.double(), embedding_b.double()
    if method == "paper":
        return (torch.linalg.pinv(e_a) @ e_b).T  # = E_Bᵀ (E_Aᵀ)⁺, as (E_Aᵀ)⁺ = (E_A⁺)ᵀ
    return torch.linalg.pinv(e_b) @ e_a

"""Projection bases and the folding of norms into vectors. Pure functions: tensors in, tensors out.

``folded`` (default) does what TransformerLens does to read a model's own logits: the final norm's gain is
folded into W_U, rows are centred across d_model where that norm is a LayerNorm (it subtracts the mean of
the vector it normalises), and W_U is centred across the vocabulary (softmax ignores a constant shift, but a
per-token offset would otherwise change which vectors rank first for a token). Reading vectors get their own
input norm's gain folded in instead. ``raw`` is the plain matrix, as Dar et al. use it.
"""

from dataclasses import dataclass, field, replace
from typing import Literal

import torch

from indexer.model.adapters.base import Norm

BasisMode = Literal["folded", "raw"]


@dataclass(frozen=True)
class Basis:
    """A ``[vocab, d]`` projection matrix with what is needed for the stats of ``matrix @ v``: the mean row
    and the rows' covariance (d×d), so a vector's logit mean and std over the vocabulary cost O(d²)."""

    matrix: torch.Tensor
    flags: dict[str, object]
    col_mean: torch.Tensor = field(repr=False)
    cov: torch.Tensor = field(repr=False)

    fast: torch.Tensor | None = field(default=None, repr=False)

    @property
    def vocab_size(self) -> int:
        return int(self.matrix.shape[0])

    def to(self, device: torch.device, fast_dtype: torch.dtype | None = None) -> "Basis":
        """This basis on ``device``, with a ``fast`` low-precision copy of the matrix when asked for."""
        matrix = self.matrix.to(device)
        fast = None if fast_dtype is None else matrix.to(fast_dtype)
        return replace(self, matrix=matrix, col_mean=self.col_mean.to(device), cov=self.cov.to(device), fast=fast)


def _basis(matrix: torch.Tensor, flags: dict[str, object], block: int = 4096) -> Basis:
    """Column means (float64) and the covariance of the rows, over row blocks: never a float64 copy of the whole
    matrix (1 GB for a 32000 × 4096 vocabulary). The rows are centred before their products, so no large mean
    cancels later; each block's product runs in float32 (half the time of float64, 2·V·d² FLOPs in all) and the
    blocks are summed in float64."""
    n = matrix.shape[0]
    total = torch.zeros(matrix.shape[1], dtype=torch.float64, device=matrix.device)
    for start in range(0, n, block):
        total += matrix[start : start + block].sum(dim=0, dtype=torch.float64)
    mean = total / n
    mean32 = mean.to(torch.float32)
    cov = torch.zeros(matrix.shape[1], matrix.shape[1], dtype=torch.float64, device=matrix.device)
    for start in range(0, n, block):
        rows = matrix[start : start + block].to(torch.float32) - mean32
        cov += (rows.T @ rows).to(torch.float64)
    return Basis(matrix=matrix.contiguous(), flags=flags, col_mean=mean, cov=(cov / n).to(torch.float32))


def centre_rows(matrix: torch.Tensor) -> torch.Tensor:
    """Subtract each row's mean across d: what a LayerNorm does to the vector it normalises."""
    return matrix - matrix.mean(dim=1, keepdim=True)


def folded_unembedding(unembedding: torch.Tensor, final_norm: Norm | None) -> torch.Tensor:
    """W_U with the final norm's gain folded in, centred across d (LayerNorm) and across the vocabulary: the
    matrix of the folded write basis, without its statistics (traces read vectors through it)."""
    # one new [vocab, d] matrix, centred in place: the input is left as it was
    m = unembedding * final_norm.weight if final_norm is not None else unembedding.clone()
    if final_norm is not None and final_norm.kind == "layernorm":
        m.sub_(m.mean(dim=1, keepdim=True))
    m.sub_(m.mean(dim=0, keepdim=True))
    return m


def write_basis(unembedding: torch.Tensor, final_norm: Norm | None, mode: BasisMode) -> Basis:
    """The basis that reads what a vector writes into the stream as output logits."""
    if mode == "raw":
        return _basis(unembedding, {"matrix": "unembedding", "final_norm_gain": False, "centre_d": False,
                                    "centre_vocab": False})
    m = folded_unembedding(unembedding, final_norm)
    layernorm = final_norm is not None and final_norm.kind == "layernorm"
    return _basis(m, {"matrix": "unembedding", "final_norm_gain": final_norm is not None,
                      "centre_d": layernorm, "centre_vocab": True})


def read_basis(matrix: torch.Tensor, matrix_name: str, mode: BasisMode) -> Basis:
    """The basis that reads what a vector reads from the stream, as token directions."""
    if mode == "raw":
        return _basis(matrix, {"matrix": matrix_name, "reader_norm_gain": False, "centre_vocab": False})
    return _basis(matrix - matrix.mean(dim=0, keepdim=True),
                  {"matrix": matrix_name, "reader_norm_gain": True, "centre_vocab": True})


def fold_reader(vectors: torch.Tensor, norm: Norm | None, mode: BasisMode) -> torch.Tensor:
    """A reading vector as it acts on the un-normalised stream: gain folded in, centred for LayerNorm."""
    if mode == "raw" or norm is None:
        return vectors
    folded = vectors * norm.weight
    return centre_rows(folded) if norm.kind == "layernorm" else folded


def logit_stats(vectors: torch.Tensor, basis: Basis) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std over the vocabulary of ``basis.matrix @ v`` per row, from d×d sums alone (float64 mean;
    the variance vᵀ·cov·v in float32, as exact as the float32 logits it describes)."""
    v = vectors.to(torch.float32)
    mean = vectors.to(torch.float64) @ basis.col_mean
    var = ((v @ basis.cov) * v).sum(dim=1).to(torch.float64)
    return mean, var.clamp_min(0.0).sqrt()

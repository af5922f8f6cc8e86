"""Projection bases and the folding of norms into vectors. Pure functions: tensors in, tensors out.

``folded`` (default) does what TransformerLens does to read a model's own logits: the final norm's gain is
folded into W_U, rows are centred across d_model where that norm is a LayerNorm (it subtracts the mean of
the vector it normalises), and W_U is centred across the vocabulary (softmax ignores a constant shift; for one
vector the centring is a per-vector offset and changes neither its ranking nor its z-scores). Reading vectors
get their own input norm's gain folded in. Where further norms lie on a vector's path (post-LN encoders: every
LayerNorm sits on the stream), a unit's basis carries its vectors through their linear parts first
(``Basis.carry``, ``indexer.math.carry``): writers through every norm between their write and the final norm,
readers through every norm between the embedding and their read. ``raw`` is the plain matrix, as Dar et al.
use it.
"""

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Literal

import torch

from indexer.model.adapters.base import Norm

BasisMode = Literal["folded", "raw"]

BASIS_VERSION = 2
"""Recorded as ``basis_flags.version`` of every run. 1 (no version recorded): one folded write basis for every
layer, read bases centred over the vocabulary in head maps. 2: units carried through the norms on their path
(changes folded runs of post-LN models), head maps read without vocabulary centring (changes every folded
``--head-maps`` run)."""
CARRY_RULE = {"writes": "every norm on the stream between the write and the final norm",
              "reads": "every norm on the stream between the embedding and the read"}


@dataclass(frozen=True)
class Basis:
    """A ``[vocab, d]`` projection matrix with what is needed for the stats of ``matrix @ v``: the mean row
    and the rows' covariance (d×d), so a vector's logit mean and std over the vocabulary cost O(d²)."""

    matrix: torch.Tensor
    flags: dict[str, object]
    col_mean: torch.Tensor = field(repr=False)

    fast: torch.Tensor | None = field(default=None, repr=False)
    carry: torch.Tensor | None = field(default=None, repr=False)
    """``[d, d]``: vectors are carried as ``v @ carry`` before they meet ``matrix`` (the norms on a unit's path,
    ``indexer.math.carry.path_map``); ``None`` where no norm lies between them. One ``[V, d]`` matrix per role
    serves every layer: a unit's basis differs only by this small map."""
    _cached: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

    @property
    def cov(self) -> torch.Tensor:
        """The rows' covariance (d×d, float32), computed on first use and kept: 2·V·d² FLOPs (1.07 TFLOP, ten
        seconds here, for a Llama-2 basis) and d² floats that a CPU run, which takes its logit stats from the
        logits themselves (``topk_bottomk(stats=True)``), never needs."""
        if "cov" not in self._cached:
            self._cached["cov"] = _covariance(self.matrix, self.col_mean)
        return self._cached["cov"]

    @property
    def vocab_size(self) -> int:
        return int(self.matrix.shape[0])

    def to(self, device: torch.device, fast_dtype: torch.dtype | None = None) -> "Basis":
        """This basis on ``device``, with a ``fast`` low-precision copy of the matrix when asked for."""
        matrix = self.matrix.to(device)
        fast = None if fast_dtype is None else matrix.to(fast_dtype)
        carry = None if self.carry is None else self.carry.to(device)
        return replace(self, matrix=matrix, col_mean=self.col_mean.to(device), fast=fast, carry=carry,
                       _cached={name: t.to(device) for name, t in self._cached.items()})

    def at(self, carry: torch.Tensor | None) -> "Basis":
        """The same matrix read after ``carry`` (a unit's path map): no copy of the matrix."""
        return replace(self, carry=None if carry is None else carry.to(self.matrix.device))

    def prepare(self, vectors: torch.Tensor) -> torch.Tensor:
        """Vectors as they meet the matrix: carried through the path's norms (float32), or as they are."""
        return vectors if self.carry is None else vectors.to(torch.float32) @ self.carry

    def dense(self) -> torch.Tensor:
        """The ``[V, d]`` matrix this basis reads vectors with, carry included (tests and small models only)."""
        return self.matrix if self.carry is None else self.matrix @ self.carry.T


def _basis(matrix: torch.Tensor, flags: dict[str, object], block: int = 1024) -> Basis:
    """The basis of ``matrix`` with its column means, summed in float64 over row blocks (never a float64 copy
    of the whole matrix: 1 GB for a 32000 × 4096 vocabulary); the covariance waits until it is asked for."""
    total = torch.zeros(matrix.shape[1], dtype=torch.float64, device=matrix.device)
    for start in range(0, matrix.shape[0], block):
        total += matrix[start : start + block].sum(dim=0, dtype=torch.float64)
    return Basis(matrix=matrix.contiguous(), flags=flags, col_mean=total / matrix.shape[0])


def _covariance(matrix: torch.Tensor, mean: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """The covariance of the rows over row blocks. The rows are centred before their products, so no large mean
    cancels later; each block's product runs in float32 (half the time of float64, 2·V·d² FLOPs in all) and the
    blocks are summed in float64. Memory beside the matrix: the float64 sum (d² · 8 B, 128 MiB at d = 4096), one
    block's float32 product (d² · 4 B) and the float32 result; never a float64 copy of a product or of the sum."""
    n, d = matrix.shape
    mean32 = mean.to(torch.float32)
    cov = torch.zeros(d, d, dtype=torch.float64, device=matrix.device)
    for start in range(0, n, block):
        rows = matrix[start : start + block].to(torch.float32) - mean32
        product = rows.T @ rows
        for i in range(0, d, 256):  # into the float64 sum a slab at a time: no float64 copy of the product
            cov[i : i + 256] += product[i : i + 256].to(torch.float64)
        del rows, product
    return cov.div_(n).to(torch.float32)


def centre_rows(matrix: torch.Tensor) -> torch.Tensor:
    """Subtract each row's mean across d: what a LayerNorm does to the vector it normalises."""
    return matrix - matrix.mean(dim=1, keepdim=True)


ROW_BLOCK = 1024
"""Rows of W_U (or W_E) read, converted and folded at a time: 1024 × 4096 × 4 B = 16 MiB for a Llama-sized d."""


def row_blocks(matrix: torch.Tensor, rows: int = ROW_BLOCK) -> Iterator[torch.Tensor]:
    """A matrix as consecutive row blocks (views, no copies): the form ``write_basis_rows`` takes."""
    for start in range(0, matrix.shape[0], rows):
        yield matrix[start : start + rows]


def _folded(blocks: Iterable[torch.Tensor], shape: tuple[int, int],
            fold: Callable[[torch.Tensor], torch.Tensor] | None) -> Iterator[tuple[int, torch.Tensor]]:
    """(first row, float32 rows) of consecutive row blocks, each folded as it arrives, checked to tile ``shape``."""
    start = 0
    for block in blocks:
        rows = block.to(torch.float32)
        if fold is not None:
            rows = fold(rows)
        stop = start + rows.shape[0]
        if stop > shape[0] or rows.shape[1:] != shape[1:]:
            raise ValueError(f"row blocks do not fit a {list(shape)} matrix (rows {start}:{stop}, a block of "
                             f"{list(rows.shape)})")
        yield start, rows
        start = stop
    if start != shape[0]:
        raise ValueError(f"row blocks hold {start} rows, not the {shape[0]} of the matrix")


def _assemble(blocks: Iterable[torch.Tensor], shape: tuple[int, int],
              fold: Callable[[torch.Tensor], torch.Tensor] | None, centre_vocab: bool) -> torch.Tensor:
    """The ``[V, d]`` float32 matrix from consecutive row blocks, each folded as it arrives, then centred over
    the vocabulary in place (the column mean summed in float64). Holds the result and one block, never a second
    vocabulary-sized matrix: a checkpoint's bf16 W_U is never converted or folded whole."""
    out = torch.empty(shape, dtype=torch.float32)
    total = torch.zeros(shape[1], dtype=torch.float64)
    for start, rows in _folded(blocks, shape, fold):
        out[start : start + rows.shape[0]] = rows
        if centre_vocab:
            total += rows.sum(dim=0, dtype=torch.float64)
    if centre_vocab:
        mean = (total / shape[0]).to(torch.float32)
        for part in row_blocks(out):
            part.sub_(mean)
    return out


def _streamed(blocks: Callable[[], Iterable[torch.Tensor]], shape: tuple[int, int],
              fold: Callable[[torch.Tensor], torch.Tensor] | None, centre_vocab: bool
              ) -> Iterator[tuple[int, torch.Tensor]]:
    """The rows of ``_assemble(blocks(), …)``, bit for bit, block by block, without the matrix: a first pass over
    ``blocks()`` sums the folded rows (the same float64 total), a second folds each block again and subtracts
    the same float32 mean (an elementwise subtraction gives the same bits in place or not). Memory: one block."""
    mean: torch.Tensor | None = None
    if centre_vocab:
        total = torch.zeros(shape[1], dtype=torch.float64)
        for _, rows in _folded(blocks(), shape, fold):
            total += rows.sum(dim=0, dtype=torch.float64)
        mean = (total / shape[0]).to(torch.float32)
    for start, rows in _folded(blocks(), shape, fold):
        yield start, rows if mean is None else rows - mean


def folded_unembedding(unembedding: torch.Tensor, final_norm: Norm | None) -> torch.Tensor:
    """W_U with the final norm's gain folded in, centred across d (LayerNorm) and across the vocabulary: the
    matrix of the folded write basis, without its statistics (traces read vectors through it)."""
    # one new [vocab, d] matrix, centred in place: the input is left as it was
    m = unembedding * final_norm.weight if final_norm is not None else unembedding.clone()
    if final_norm is not None and final_norm.kind == "layernorm":
        m.sub_(m.mean(dim=1, keepdim=True))
    m.sub_(m.mean(dim=0, keepdim=True))
    return m


def _final_fold(final_norm: Norm | None) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """What the final norm does to each row of W_U: its gain, then (LayerNorm) the centring across d."""
    if final_norm is None:
        return None
    gain, layernorm = final_norm.weight.to(torch.float32), final_norm.kind == "layernorm"

    def fold(rows: torch.Tensor) -> torch.Tensor:
        rows = rows * gain
        return rows.sub_(rows.mean(dim=1, keepdim=True)) if layernorm else rows

    return fold


def write_basis_blocks(blocks: Callable[[], Iterable[torch.Tensor]], shape: tuple[int, int],
                       final_norm: Norm | None, mode: BasisMode) -> Iterator[tuple[int, torch.Tensor]]:
    """(first row, rows) of ``write_basis_rows(blocks(), …).matrix``, bit for bit, one block at a time: the rows a
    run stores beside its vectors (``basis_rows``) without a second ``[V, d]`` matrix. ``blocks`` is called once
    per pass over W_U (two in folded mode, for the mean over the vocabulary)."""
    if mode == "raw":
        return _streamed(blocks, shape, None, centre_vocab=False)
    return _streamed(blocks, shape, _final_fold(final_norm), centre_vocab=True)


def read_basis_blocks(blocks: Callable[[], Iterable[torch.Tensor]], shape: tuple[int, int],
                      mode: BasisMode) -> Iterator[tuple[int, torch.Tensor]]:
    """(first row, rows) of ``read_basis_rows(blocks(), …).matrix``, bit for bit, one block at a time."""
    return _streamed(blocks, shape, None, centre_vocab=mode != "raw")


def write_basis(unembedding: torch.Tensor, final_norm: Norm | None, mode: BasisMode) -> Basis:
    """The basis that reads what a vector writes into the stream as output logits."""
    if mode == "raw":
        return _basis(unembedding, _WRITE_RAW)
    return write_basis_rows(row_blocks(unembedding), (unembedding.shape[0], unembedding.shape[1]), final_norm, mode)


_WRITE_RAW: dict[str, object] = {"matrix": "unembedding", "final_norm_gain": False, "centre_d": False,
                                 "centre_vocab": False}


def write_basis_rows(blocks: Iterable[torch.Tensor], shape: tuple[int, int], final_norm: Norm | None,
                     mode: BasisMode) -> Basis:
    """``write_basis`` from W_U's rows block by block (``Adapter.unembedding_blocks``): peak memory is the basis
    and one block, whatever the checkpoint's dtype."""
    if mode == "raw":
        return _basis(_assemble(blocks, shape, None, centre_vocab=False), _WRITE_RAW)
    layernorm = final_norm is not None and final_norm.kind == "layernorm"
    return _basis(_assemble(blocks, shape, _final_fold(final_norm), centre_vocab=True),
                  {"matrix": "unembedding", "final_norm_gain": final_norm is not None, "centre_d": layernorm,
                   "centre_vocab": True, "carry": CARRY_RULE["writes"]})


def read_basis(matrix: torch.Tensor, matrix_name: str, mode: BasisMode, centre_vocab: bool = True) -> Basis:
    """The basis that reads what a vector reads from the stream, as token directions.

    ``centre_vocab=False`` for head maps: a bilinear map's reading side must not be centred over the vocabulary
    ((e_a − μ)·M·e_b shifts each target b by its own −μ·M·e_b), as TransformerLens leaves W_E uncentred there."""
    if mode == "raw" or not centre_vocab:
        return _basis(matrix, _read_flags(matrix_name, mode, centre_vocab))
    return read_basis_rows(row_blocks(matrix), (matrix.shape[0], matrix.shape[1]), matrix_name, mode)


def _read_flags(matrix_name: str, mode: BasisMode, centre_vocab: bool) -> dict[str, object]:
    if mode == "raw":
        return {"matrix": matrix_name, "reader_norm_gain": False, "centre_vocab": False}
    return {"matrix": matrix_name, "reader_norm_gain": True, "centre_vocab": centre_vocab,
            "carry": CARRY_RULE["reads"]}


def read_basis_rows(blocks: Iterable[torch.Tensor], shape: tuple[int, int], matrix_name: str,
                    mode: BasisMode) -> Basis:
    """``read_basis`` (centred over the vocabulary in folded mode) from the matrix's rows block by block."""
    centre = mode != "raw"
    return _basis(_assemble(blocks, shape, None, centre_vocab=centre), _read_flags(matrix_name, mode, centre))


def fold_reader(vectors: torch.Tensor, norm: Norm | None, mode: BasisMode) -> torch.Tensor:
    """A reading vector as it acts on the un-normalised stream: gain folded in, centred for LayerNorm."""
    if mode == "raw" or norm is None:
        return vectors
    folded = vectors * norm.weight
    return centre_rows(folded) if norm.kind == "layernorm" else folded


def logit_stats(vectors: torch.Tensor, basis: Basis) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std over the vocabulary of ``basis.matrix @ v`` per row, from d×d sums alone (float64 mean;
    the variance vᵀ·cov·v in float32, as exact as the float32 logits it describes). ``vectors`` are as they meet
    the matrix (``Basis.prepare``)."""
    v = vectors.to(torch.float32)
    mean = vectors.to(torch.float64) @ basis.col_mean
    var = ((v @ basis.cov) * v).sum(dim=1).to(torch.float64)
    return mean, var.clamp_min(0.0).sqrt()

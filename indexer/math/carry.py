"""Carrying vectors through normalisations: the one implementation that the projection bases (index runs, head
maps, alignment) and the Muppet decomposition (traces) share. Pure functions: tensors in, tensors out.

A normalisation is linear *given its own scale*: LayerNorm(s) = g ⊙ (s − mean s) / σ(s) + β and
RMSNorm(s) = g ⊙ s / rms(s). Its linear part L = diag(g)·P/σ (P = I − 11ᵀ/d centres; RMSNorm has no P) is what a
vector added to the stream before the norm becomes after it; σ is one positive number per position, so it
changes no ranking of tokens and the bases leave it out, while a trace, which knows it, divides by it.

A vector *written* into the stream passes every norm between the write and the readout: it reaches the output
as C·v with C = L_K ⋯ L_1. A vector *reading* the stream meets a token's embedding after every norm between the
embedding and the read, C = L_n ⋯ L_1, so it reads e_t · Cᵀk: its carried form is Cᵀk. Row vectors carry as
``v @ T`` (writers) and ``k @ Tᵀ`` (readers) with ``T = carry(I)``, so both directions come from ``carry``.
"""

from collections.abc import Sequence
from typing import Literal, Protocol

import torch


class NormLike(Protocol):
    """What carrying needs of a norm: its kind and gain (and, where a forward pass measured it, ``inv_scale``)."""

    @property
    def kind(self) -> Literal["layernorm", "rmsnorm"]: ...

    @property
    def weight(self) -> torch.Tensor: ...


def norm_linear(values: torch.Tensor, kind: str, weight: torch.Tensor, inv_scale: torch.Tensor | None = None,
                centre: bool = True) -> torch.Tensor:
    """One norm's linear part applied to row vectors ``[..., d]``: centred across d (LayerNorm), times 1/σ per
    position where ``inv_scale`` ``[...]`` is given, times the gain.

    ``centre=False`` leaves the centring out: Mickus et al. write each term of a decomposition as g ⊙ t / σ
    and give the mean the norm subtracts to the correction term (``indexer.math.decompose``)."""
    if kind == "layernorm" and centre:
        values = values - values.mean(dim=-1, keepdim=True)
    if inv_scale is not None:
        values = values * inv_scale[..., None]
    return values * weight


def carry(values: torch.Tensor, norms: Sequence[NormLike], centre: bool = True) -> torch.Tensor:
    """Row vectors ``[..., d]`` carried through the linear part of each norm of ``norms``, in order."""
    for norm in norms:
        values = norm_linear(values, norm.kind, norm.weight, getattr(norm, "inv_scale", None), centre)
    return values


def path_map(norms: Sequence[NormLike], role: Literal["writes", "reads"], d: int,
             device: torch.device | None = None) -> torch.Tensor | None:
    """The ``[d, d]`` map ``M`` that carries a unit's vectors as ``vectors @ M``, or ``None`` when no norm lies
    on its path: ``T = carry(I)`` for writers (what they become at the readout), ``Tᵀ`` for readers (the reader
    as it meets the embedding's tokens). Built in float32 from the gains alone: a few d² operations per norm."""
    if not norms:
        return None
    eye = torch.eye(d, dtype=torch.float32, device=device)
    t = carry(eye, [_Gain(n, device) for n in norms])
    return t if role == "writes" else t.T.contiguous()


class _Gain:
    """A norm's kind and gain as float32 on ``device`` (checkpoints may store gains in bf16)."""

    def __init__(self, norm: NormLike, device: torch.device | None) -> None:
        self.kind = norm.kind
        self.weight = norm.weight.to(device=device, dtype=torch.float32)

"""The Muppet decomposition (Mickus et al., 2022): a final hidden state written as a sum of the input, each
attention head, each FF layer and a correction. Pure functions: captured activations and weights in, terms out.

Every normalisation is exactly linear *given its own scale*: LayerNorm(s) = g ⊙ (s − mean s) / σ(s) + β with
σ(s) = sqrt(var(s) + eps) taken from the stream that actually reached it, and RMSNorm(s) = g ⊙ s / rms(s). As in
the authors' code (bert-splat, ``linear_structure.py``), a stream that is a sum of terms Σ t_c comes out as
Σ g ⊙ t_c / σ plus the correction β − g ⊙ mean(s) / σ: each term is carried through the norm's gain and scale
(``indexer.math.carry`` with ``centre=False``), and what the norm subtracts and adds joins the correction.
Pre-LN decoders pass only the final norm before the unembedding; post-LN encoders (BERT) pass every block's
LayerNorms, applied in order to every term so far.

Terms, as the paper defines them:
- ``embedding``: the input (token + position (+ token type) embeddings, as the model adds them);
- ``head`` (layer, head): Σ_j a_ij · (x_j W_V^h) W_O^h, the head's output from the *unbiased* value projection;
- ``ff`` (layer): Σ_i a_i · v_i without the output bias (the GELU/SiLU sits inside a_i, so there is no remainder);
- the correction, kept per layer: ``bias`` (layer): the attention output bias b_O, each head's value bias as it
  is written, b_V^h W_O^h (attention weights sum to one, so it is the same at every position), and the FF
  output bias; ``norm`` (layer; NULL for the embedding and final norms): each LayerNorm's β − g ⊙ mean / σ.

``Decomposition.carry`` is different on purpose: it carries a vector through each later norm's whole linear
part (centring included, with the measured σ): what that vector changes in the final state, the same map the
index bases use.
"""

from dataclasses import dataclass, field
from typing import Literal

import torch

from indexer.math.carry import carry, norm_linear

NormKind = Literal["layernorm", "rmsnorm"]
TermKind = Literal["embedding", "head", "ff", "bias", "norm"]


@dataclass(frozen=True)
class NormApplied:
    """One normalisation as it acted on each position: kind, gain, bias, and 1/σ per position."""

    kind: NormKind
    weight: torch.Tensor
    bias: torch.Tensor | None
    inv_scale: torch.Tensor  # [..., positions]
    eps: float = 1e-5

    def linear(self, values: torch.Tensor, centre: bool = True) -> torch.Tensor:
        """The norm's linear part applied to terms ``[..., positions, d]`` (no bias; ``centre=False``: gain and
        scale only, the paper's carry of a term)."""
        return norm_linear(values, self.kind, self.weight, self.inv_scale, centre)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x)
        return out if self.bias is None else out + self.bias


def applied_norm(x: torch.Tensor, kind: NormKind, weight: torch.Tensor, bias: torch.Tensor | None,
                 eps: float) -> NormApplied:
    """How a norm acted on its input ``x`` ``[..., positions, d]``: its per-position scale from ``x`` itself."""
    var = x.var(dim=-1, unbiased=False) if kind == "layernorm" else x.pow(2).mean(dim=-1)
    return NormApplied(kind, weight, bias, torch.rsqrt(var + eps), eps)


@dataclass(frozen=True)
class Term:
    kind: TermKind
    layer: int | None = None
    head: int | None = None

    @property
    def label(self) -> str:
        if self.kind == "head":
            return f"L{self.layer}.H{self.head}"
        if self.kind == "ff":
            return f"FF{self.layer}"
        if self.kind == "bias":
            return f"bias{self.layer}"
        if self.kind == "norm":
            return "norm" if self.layer is None else f"norm{self.layer}"
        return "embedding"


@dataclass
class LayerCapture:
    """What one block computed, at every position: ``z`` is the input of the attention output projection
    ``[P, n_heads·d_head]``, ``act`` the input of the FF output projection ``[P, d_ff]``; ``value_bias`` per head
    the value bias inside its z (``[d_head]``; None where there is none or the head was zeroed); ``ff_norm`` /
    ``out_norm`` the post-LN norms the stream passes (None in pre-LN models)."""

    z: torch.Tensor
    act: torch.Tensor
    w_o: list[torch.Tensor]  # per head [d_head, d]
    values: torch.Tensor  # [d_ff, d]
    attn_bias: torch.Tensor | None = None
    ff_bias: torch.Tensor | None = None
    value_bias: list[torch.Tensor | None] | None = None
    ff_norm: NormApplied | None = None
    out_norm: NormApplied | None = None
    attn_check: torch.Tensor | None = None  # input the post-attention norm saw, to check the running sum
    out_check: torch.Tensor | None = None


@dataclass
class Decomposition:
    """The final hidden state as ``terms.sum(0)`` (``[n_terms, P, d]``), the stream after the embedding and
    after each block (``states[l]``, ``[L + 1, P, d]``), and how far the sum is from the model's own state."""

    keys: list[Term]
    terms: torch.Tensor
    states: torch.Tensor
    error: float
    stream_error: float
    norms_after: list[list[NormApplied]] = field(default_factory=list)  # per (layer, 'attn'|'ff') stage

    def carry(self, vectors: torch.Tensor, layer: int, stage: Literal["attn", "ff"]) -> torch.Tensor:
        """Vectors ``[..., P, d]`` written into the stream by block ``layer``'s ``stage``, as they appear in the
        final hidden state: passed through the linear part of every later norm."""
        return carry(vectors, self.norms_after[2 * layer + (stage == "ff")])


def decompose(embedding: torch.Tensor, layers: list[LayerCapture], final: NormApplied | None,
              final_in: torch.Tensor | None, final_out: torch.Tensor,
              embed_norm: NormApplied | None = None) -> Decomposition:
    """Decompose ``final_out`` ``[P, d]`` into terms. Pre-LN: ``final`` is the final norm and ``final_in`` the
    stream it read. Post-LN: ``embed_norm`` is the embedding LayerNorm and each layer carries its two norms (the
    last block's output norm is the final one; pass ``final=None``)."""
    keys: list[Term] = [Term("embedding")]
    rows: list[torch.Tensor] = [embedding]
    stages: list[tuple[int, NormApplied]] = []  # (stage index after which the norm applies, norm)
    stream_error = 0.0
    states: list[torch.Tensor] = []

    def norm_all(norm: NormApplied, check: torch.Tensor | None, stage: int, layer: int | None) -> None:
        nonlocal rows, stream_error
        stream = torch.stack(rows).sum(0)
        if check is not None:
            stream_error = max(stream_error, float((stream - check).abs().max()))
        rows = [norm.linear(r, centre=False) for r in rows]
        stages.append((stage, norm))
        correction = torch.zeros_like(rows[0])
        if norm.kind == "layernorm":  # what the norm subtracts: g ⊙ mean(s) / σ, per position
            correction -= (stream.mean(dim=-1) * norm.inv_scale)[..., None] * norm.weight
        if norm.bias is not None:
            correction += norm.bias
        if norm.kind == "layernorm" or norm.bias is not None:
            keys.append(Term("norm", layer))
            rows.append(correction)

    if embed_norm is not None:
        norm_all(embed_norm, embedding, -1, None)
    states.append(torch.stack(rows).sum(0))
    for i, cap in enumerate(layers):
        dh = cap.w_o[0].shape[0]
        bias = _sum_bias(cap.attn_bias, None)
        for h, w in enumerate(cap.w_o):
            z = cap.z[:, h * dh:(h + 1) * dh]
            b_v = cap.value_bias[h] if cap.value_bias is not None else None
            keys.append(Term("head", i, h))
            rows.append(z @ w if b_v is None else (z - b_v) @ w)
            if b_v is not None:  # the value bias as the head writes it: the same at every position
                bias = _sum_bias(bias, b_v @ w)
        if cap.ff_norm is not None:
            if bias is not None:
                keys.append(Term("bias", i))
                rows.append(bias.expand_as(rows[0]).clone())
                bias = None
            norm_all(cap.ff_norm, cap.attn_check, 2 * i, i)
        keys.append(Term("ff", i))
        rows.append(cap.act @ cap.values)
        bias = _sum_bias(bias, cap.ff_bias)
        if bias is not None:
            keys.append(Term("bias", i))
            rows.append(bias.expand_as(rows[0]).clone())
        if cap.out_norm is not None:
            norm_all(cap.out_norm, cap.out_check, 2 * i + 1, i if i < len(layers) - 1 else None)
        states.append(torch.stack(rows).sum(0))
    if final is not None:
        norm_all(final, final_in, 2 * len(layers), None)
    terms = _merge(keys, rows)
    error = float((terms[1].sum(0) - final_out).abs().max())
    n_stages = 2 * len(layers)
    after = [[n for s, n in stages if s >= k] for k in range(n_stages)]
    return Decomposition(keys=terms[0], terms=terms[1], states=torch.stack(states), error=error,
                         stream_error=stream_error, norms_after=after)


def _sum_bias(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if a is None:
        return b
    return a if b is None else a + b


def _merge(keys: list[Term], rows: list[torch.Tensor]) -> tuple[list[Term], torch.Tensor]:
    """One row per key (a layer's attention and FF biases are one ``bias`` term), in first-seen order."""
    merged: dict[Term, torch.Tensor] = {}
    for k, r in zip(keys, rows, strict=True):
        merged[k] = merged[k] + r if k in merged else r
    return list(merged), torch.stack(list(merged.values()))

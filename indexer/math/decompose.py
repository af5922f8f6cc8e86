"""The Muppet decomposition (Mickus et al., 2022): a final hidden state written as a sum of the input, each
attention head, each FF layer and a correction. Pure functions: captured activations and weights in, terms out.

Every normalisation is exactly linear *given its own scale*: LayerNorm(s) = g ⊙ (s − mean s) / σ(s) + β with
σ(s) = sqrt(var(s) + eps) taken from the stream that actually reached it, and RMSNorm(s) = g ⊙ s / rms(s). So a
stream that is a sum of terms Σ t_c comes out as Σ g ⊙ centre(t_c) / σ plus β: each term is carried through the
norm's linear part and the norm's bias joins the correction. Pre-LN decoders pass only the final norm before
the unembedding; post-LN encoders (BERT) pass every block's LayerNorms, applied in order to every term so far.

Terms: ``embedding`` (token + position embeddings, as the model adds them), ``head`` (layer, head):
z_h · W_O[h] (the value bias flows through the pattern and stays inside its head, whose rows sum to 1),
``ff`` (layer): Σ_i a_i · v_i, and the correction: ``bias`` (layer: the attention and FF output biases) and
``norm_bias`` (the β of each LayerNorm; layer NULL for the embedding and final norms). The GELU/SiLU
nonlinearities sit inside the FF term (a_i is the measured activation), so there is no remainder.
"""

from dataclasses import dataclass, field
from typing import Literal

import torch

NormKind = Literal["layernorm", "rmsnorm"]
TermKind = Literal["embedding", "head", "ff", "bias", "norm_bias"]


@dataclass(frozen=True)
class NormApplied:
    """One normalisation as it acted on each position: kind, gain, bias, and 1/σ per position."""

    kind: NormKind
    weight: torch.Tensor
    bias: torch.Tensor | None
    inv_scale: torch.Tensor  # [..., positions]
    eps: float = 1e-5

    def linear(self, values: torch.Tensor) -> torch.Tensor:
        """The norm's linear part applied to terms ``[..., positions, d]`` (no bias)."""
        if self.kind == "layernorm":
            values = values - values.mean(dim=-1, keepdim=True)
        return values * self.inv_scale[..., None] * self.weight

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
        if self.kind == "norm_bias":
            return "norm β" if self.layer is None else f"norm β{self.layer}"
        return "embedding"


@dataclass
class LayerCapture:
    """What one block computed, at every position: ``z`` is the input of the attention output projection
    ``[P, n_heads·d_head]``, ``act`` the input of the FF output projection ``[P, d_ff]``; ``ff_norm`` /
    ``out_norm`` the post-LN norms the stream passes (None in pre-LN models)."""

    z: torch.Tensor
    act: torch.Tensor
    w_o: list[torch.Tensor]  # per head [d_head, d]
    values: torch.Tensor  # [d_ff, d]
    attn_bias: torch.Tensor | None = None
    ff_bias: torch.Tensor | None = None
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
        for norm in self.norms_after[2 * layer + (stage == "ff")]:
            vectors = norm.linear(vectors)
        return vectors


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
        if check is not None:
            stream_error = max(stream_error, float((torch.stack(rows).sum(0) - check).abs().max()))
        rows = [norm.linear(r) for r in rows]
        stages.append((stage, norm))
        if norm.bias is not None:
            keys.append(Term("norm_bias", layer))
            rows.append(norm.bias.expand_as(rows[0]).clone())

    if embed_norm is not None:
        norm_all(embed_norm, embedding, -1, None)
    states.append(torch.stack(rows).sum(0))
    for i, cap in enumerate(layers):
        dh = cap.w_o[0].shape[0]
        for h, w in enumerate(cap.w_o):
            keys.append(Term("head", i, h))
            rows.append(cap.z[:, h * dh:(h + 1) * dh] @ w)
        bias = _sum_bias(cap.attn_bias, None)
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

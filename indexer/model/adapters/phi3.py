"""Phi-3: a Llama-shaped decoder with fused projections. ``qkv_proj`` stacks W_Q, W_K and W_V as
``[q (n_heads·d_head) | k (n_kv·d_head) | v (n_kv·d_head)]`` rows; ``gate_up_proj`` stacks the gate rows, then
the up rows (the MLP computes ``up · act(gate)``)."""

import torch

from indexer.model.adapters.base import Dims
from indexer.model.adapters.llama import gated_dims
from indexer.model.adapters.standard import ALL_GATED, Layout, StandardAdapter


class Phi3Adapter(StandardAdapter):
    family = "phi3"
    notes = 'fused qkv_proj [q | k | v] and gate_up_proj [gate | up], RMSNorm, GQA'
    model_types = ("phi3",)
    components = ALL_GATED
    prefixes = ("model.", "")
    layout = Layout(
        block="{p}layers.{i}",
        embed="{p}embed_tokens", unembed=("lm_head",), final_norm="{p}norm", norm_kind="rmsnorm",
        attn_norm="{p}layers.{i}.input_layernorm", ff_norm="{p}layers.{i}.post_attention_layernorm",
        qkv="{p}layers.{i}.self_attn.qkv_proj", attn_out="{p}layers.{i}.self_attn.o_proj",
        ff_in="{p}layers.{i}.mlp.gate_up_proj", ff_gate="{p}layers.{i}.mlp.gate_up_proj",
        ff_out="{p}layers.{i}.mlp.down_proj",
    )

    def _dims(self) -> Dims:
        return gated_dims(self.ckpt)

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = super().expected_shapes()
        d, f = self.dims.d_model, self.dims.d_ff
        for layer in range(self.dims.n_layers):
            shapes[self._w("ff_in", layer)] = (2 * f, d)
        return shapes

    def qkv_shapes(self) -> dict[str, tuple[int, ...]]:
        rows = (self.dims.n_heads + 2 * self.dims.kv_heads) * self.dims.head_size
        return {self._w("qkv", i): (rows, self.dims.d_model) for i in range(self.dims.n_layers)}

    def split_fused(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q_rows, kv_rows = self.dims.n_heads * self.dims.head_size, self.dims.kv_heads * self.dims.head_size
        q, k, v = rows.split([q_rows, kv_rows, kv_rows])
        return q.contiguous(), k.contiguous(), v.contiguous()

    def reading_rows(self, key: str, layer: int) -> torch.Tensor:
        rows = super().reading_rows(key, layer)
        if key in ("ff_in", "ff_gate"):
            gate, up = rows.chunk(2, dim=0)
            return (gate if key == "ff_gate" else up).contiguous()
        return rows

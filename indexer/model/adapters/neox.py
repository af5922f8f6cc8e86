"""GPT-NeoX (Pythia): parallel attention and MLP with separate pre-LayerNorms, rotary, fused
``query_key_value`` laid out per head as ``[q_h | k_h | v_h]``, and an untied ``embed_out``."""

import torch

from indexer.model.adapters.base import Dims, config_int
from indexer.model.adapters.standard import ALL_PLAIN, Layout, StandardAdapter


class GPTNeoXAdapter(StandardAdapter):
    family = "gpt_neox"
    notes = 'parallel, two pre-norms, fused query_key_value per head, untied embed_out'
    model_types = ("gpt_neox",)
    components = ALL_PLAIN
    prefixes = ("gpt_neox.", "")
    layout = Layout(
        block="{p}layers.{i}",
        embed="{p}embed_in", unembed=("embed_out", "lm_head"), final_norm="{p}final_layer_norm",
        norm_kind="layernorm", attn_norm="{p}layers.{i}.input_layernorm",
        ff_norm="{p}layers.{i}.post_attention_layernorm",
        qkv="{p}layers.{i}.attention.query_key_value", attn_out="{p}layers.{i}.attention.dense",
        ff_in="{p}layers.{i}.mlp.dense_h_to_4h", ff_out="{p}layers.{i}.mlp.dense_4h_to_h",
    )

    def _dims(self) -> Dims:
        return Dims(
            n_layers=config_int(self.ckpt, "num_hidden_layers"),
            d_model=config_int(self.ckpt, "hidden_size"),
            d_ff=config_int(self.ckpt, "intermediate_size"),
            n_heads=config_int(self.ckpt, "num_attention_heads"),
            vocab_size=config_int(self.ckpt, "vocab_size"),
        )

    def qkv_shapes(self) -> dict[str, tuple[int, ...]]:
        d = self.dims.d_model
        return {self._w("qkv", i): (3 * d, d) for i in range(self.dims.n_layers)}

    def split_fused(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n, dh = self.dims.n_heads, self.dims.head_size
        fused = rows.reshape(n, 3, dh, -1)  # per head: q rows, k rows, v rows
        q, k, v = (fused[:, j].reshape(n * dh, -1).contiguous() for j in range(3))
        return q, k, v

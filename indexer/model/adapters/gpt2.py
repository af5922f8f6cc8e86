"""GPT-2 family: pre-LayerNorm decoder, Conv1D weights stored ``[in, out]``, fused ``c_attn``, tied
embedding."""

import torch

from indexer.model.adapters.base import Dims, config_int
from indexer.model.adapters.standard import ALL_PLAIN, Layout, StandardAdapter


class GPT2Adapter(StandardAdapter):
    family = "gpt2"
    notes = 'Conv1D [in, out], fused c_attn, tied'
    model_types = ("gpt2",)
    components = ALL_PLAIN
    prefixes = ("", "transformer.")
    layout = Layout(
        block="{p}h.{i}",
        embed="{p}wte", unembed=("lm_head",), final_norm="{p}ln_f", norm_kind="layernorm",
        attn_norm="{p}h.{i}.ln_1", ff_norm="{p}h.{i}.ln_2", qkv="{p}h.{i}.attn.c_attn",
        attn_out="{p}h.{i}.attn.c_proj", ff_in="{p}h.{i}.mlp.c_fc", ff_out="{p}h.{i}.mlp.c_proj", conv1d=True,
    )

    def _dims(self) -> Dims:
        d = config_int(self.ckpt, "n_embd", "hidden_size")
        return Dims(
            n_layers=config_int(self.ckpt, "n_layer", "num_hidden_layers"),
            d_model=d,
            d_ff=config_int(self.ckpt, "n_inner", default=4 * d),
            n_heads=config_int(self.ckpt, "n_head", "num_attention_heads"),
            vocab_size=config_int(self.ckpt, "vocab_size"),
        )

    def qkv_shapes(self) -> dict[str, tuple[int, ...]]:
        d = self.dims.d_model
        return {self._w("qkv", i): (d, 3 * d) for i in range(self.dims.n_layers)}

    def split_fused(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = rows.chunk(3, dim=0)  # c_attn's outputs are [q | k | v]
        return q, k, v

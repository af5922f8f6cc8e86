"""OLMo and OLMo-2 (AI2).

OLMo: a Llama-shaped decoder (gated MLP, separate q/k/v) whose LayerNorms have no parameters at all (gains of
one, no bias); ``clip_qkv`` clamps the projections' outputs, which leaves the rows they read unchanged.

OLMo-2: no input norms: attention and MLP read the raw stream, and RMSNorms sit on each branch's *output*
(``post_attention_layernorm``, ``post_feedforward_layernorm``; their gains are folded into ``attn_o`` and
``ff_value``). QK-norm over the whole query / key width acts after the projections (rows unchanged)."""

from dataclasses import replace

from indexer.model.adapters.base import Dims
from indexer.model.adapters.llama import LLAMA_LAYOUT, gated_dims
from indexer.model.adapters.standard import ALL_GATED, StandardAdapter


class OlmoAdapter(StandardAdapter):
    family = "olmo"
    notes = 'LayerNorm without parameters (gains of one), gated MLP; clip_qkv acts after the projections'
    model_types = ("olmo",)
    components = ALL_GATED
    prefixes = ("model.", "")
    layout = replace(LLAMA_LAYOUT, norm_kind="layernorm", norm_weights=False)

    def _dims(self) -> Dims:
        return gated_dims(self.ckpt)


class Olmo2Adapter(OlmoAdapter):
    family = "olmo2"
    notes = "no input norms (readers read the raw stream), RMSNorm on each branch's output folded into writers, QK-norm"
    model_types = ("olmo2",)
    layout = replace(LLAMA_LAYOUT, attn_norm=None, ff_norm=None,
                     attn_out_norm="{p}layers.{i}.post_attention_layernorm",
                     ff_out_norm="{p}layers.{i}.post_feedforward_layernorm")

"""Llama family (Llama, Mistral, Qwen2, …): RMSNorm pre-norms, gated MLP, grouped-query attention, rotary,
usually an untied ``lm_head``. K/V heads are numbered by key/value head (fewer than query heads under GQA)."""

from indexer.model.adapters.base import Dims, config_int
from indexer.model.adapters.standard import ALL_GATED, Layout, StandardAdapter


class LlamaAdapter(StandardAdapter):
    family = "llama"
    model_types = ("llama", "mistral", "qwen2")
    components = ALL_GATED
    prefixes = ("model.", "")
    layout = Layout(
        block="{p}layers.{i}",
        embed="{p}embed_tokens", unembed=("lm_head",), final_norm="{p}norm", norm_kind="rmsnorm",
        attn_norm="{p}layers.{i}.input_layernorm", ff_norm="{p}layers.{i}.post_attention_layernorm",
        q="{p}layers.{i}.self_attn.q_proj", k="{p}layers.{i}.self_attn.k_proj",
        v="{p}layers.{i}.self_attn.v_proj",
        attn_out="{p}layers.{i}.self_attn.o_proj", ff_in="{p}layers.{i}.mlp.up_proj",
        ff_gate="{p}layers.{i}.mlp.gate_proj", ff_out="{p}layers.{i}.mlp.down_proj",
    )

    def _dims(self) -> Dims:
        d = config_int(self.ckpt, "hidden_size")
        n_heads = config_int(self.ckpt, "num_attention_heads")
        return Dims(
            n_layers=config_int(self.ckpt, "num_hidden_layers"),
            d_model=d,
            d_ff=config_int(self.ckpt, "intermediate_size"),
            n_heads=n_heads,
            vocab_size=config_int(self.ckpt, "vocab_size"),
            n_kv_heads=config_int(self.ckpt, "num_key_value_heads", default=n_heads),
            d_head=config_int(self.ckpt, "head_dim", default=d // n_heads),
        )

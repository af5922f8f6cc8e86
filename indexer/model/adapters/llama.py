"""Llama family (Llama, Llama-3, Mistral, Qwen2, Qwen3, …): RMSNorm pre-norms, gated MLP, grouped-query
attention, rotary, usually an untied ``lm_head``. K/V heads are numbered by key/value head (fewer than query heads
under GQA). Qwen3's QK-norm (``q_norm``/``k_norm``, per head) acts on the projections' outputs, so the rows of
W_Q and W_K are still what the queries and keys read; its gains are not folded into them."""

from indexer.model.adapters.base import Dims, config_int
from indexer.model.adapters.standard import ALL_GATED, Layout, StandardAdapter
from indexer.model.checkpoint import Checkpoint


def gated_dims(ckpt: Checkpoint, d_ff_key: str = "intermediate_size") -> Dims:
    """Sizes of a Llama-shaped config: explicit ``head_dim`` where given (Gemma, Qwen3), GQA's K/V heads."""
    d = config_int(ckpt, "hidden_size")
    n_heads = config_int(ckpt, "num_attention_heads")
    return Dims(
        n_layers=config_int(ckpt, "num_hidden_layers"),
        d_model=d,
        d_ff=config_int(ckpt, d_ff_key),
        n_heads=n_heads,
        vocab_size=config_int(ckpt, "vocab_size"),
        n_kv_heads=config_int(ckpt, "num_key_value_heads", default=n_heads),
        d_head=config_int(ckpt, "head_dim", default=d // n_heads),
    )


LLAMA_LAYOUT = Layout(
    block="{p}layers.{i}",
    embed="{p}embed_tokens", unembed=("lm_head",), final_norm="{p}norm", norm_kind="rmsnorm",
    attn_norm="{p}layers.{i}.input_layernorm", ff_norm="{p}layers.{i}.post_attention_layernorm",
    q="{p}layers.{i}.self_attn.q_proj", k="{p}layers.{i}.self_attn.k_proj",
    v="{p}layers.{i}.self_attn.v_proj",
    attn_out="{p}layers.{i}.self_attn.o_proj", ff_in="{p}layers.{i}.mlp.up_proj",
    ff_gate="{p}layers.{i}.mlp.gate_proj", ff_out="{p}layers.{i}.mlp.down_proj",
)


class LlamaAdapter(StandardAdapter):
    family = "llama"
    notes = ('RMSNorm, gated MLP, GQA, untied lm_head (Llama-3: large vocabularies); Qwen3 QK-norm acts after the '
             'projections; Qwen2 q/k/v biases ignored (readers)')
    model_types = ("llama", "mistral", "qwen2", "qwen3")
    components = ALL_GATED
    prefixes = ("model.", "")
    layout = LLAMA_LAYOUT

    def _dims(self) -> Dims:
        return gated_dims(self.ckpt)

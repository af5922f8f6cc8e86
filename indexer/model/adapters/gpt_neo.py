"""GPT-Neo: a pre-LayerNorm GPT-2 with nn.Linear weights, separate q/k/v (no biases), local/global layers."""

from indexer.model.adapters.base import Dims, config_int
from indexer.model.adapters.standard import ALL_PLAIN, Layout, StandardAdapter


class GPTNeoAdapter(StandardAdapter):
    family = "gpt_neo"
    notes = 'separate q/k/v without biases, local/global layers, tied'
    model_types = ("gpt_neo",)
    components = ALL_PLAIN
    prefixes = ("transformer.", "")
    layout = Layout(
        block="{p}h.{i}",
        embed="{p}wte", unembed=("lm_head",), final_norm="{p}ln_f", norm_kind="layernorm",
        attn_norm="{p}h.{i}.ln_1", ff_norm="{p}h.{i}.ln_2",
        q="{p}h.{i}.attn.attention.q_proj", k="{p}h.{i}.attn.attention.k_proj",
        v="{p}h.{i}.attn.attention.v_proj", attn_out="{p}h.{i}.attn.attention.out_proj",
        ff_in="{p}h.{i}.mlp.c_fc", ff_out="{p}h.{i}.mlp.c_proj",
    )

    def _dims(self) -> Dims:
        d = config_int(self.ckpt, "hidden_size")
        return Dims(
            n_layers=config_int(self.ckpt, "num_layers"),
            d_model=d,
            d_ff=config_int(self.ckpt, "intermediate_size", default=4 * d),
            n_heads=config_int(self.ckpt, "num_heads"),
            vocab_size=config_int(self.ckpt, "vocab_size"),
        )

"""GPT-J: parallel attention and MLP reading one shared ``ln_1``, rotary, no attention biases, an untied
``lm_head`` with a bias (a per-token constant, which the folded basis's vocabulary centring ignores)."""

from indexer.model.adapters.base import Dims, config_int
from indexer.model.adapters.standard import ALL_PLAIN, Layout, StandardAdapter


class GPTJAdapter(StandardAdapter):
    family = "gptj"
    notes = 'parallel attention + MLP reading one ln_1, rotary, untied lm_head with a bias'
    model_types = ("gptj",)
    components = ALL_PLAIN
    prefixes = ("transformer.", "")
    layout = Layout(
        block="{p}h.{i}",
        embed="{p}wte", unembed=("lm_head",), final_norm="{p}ln_f", norm_kind="layernorm",
        attn_norm="{p}h.{i}.ln_1", ff_norm="{p}h.{i}.ln_1",
        q="{p}h.{i}.attn.q_proj", k="{p}h.{i}.attn.k_proj", v="{p}h.{i}.attn.v_proj",
        attn_out="{p}h.{i}.attn.out_proj", ff_in="{p}h.{i}.mlp.fc_in", ff_out="{p}h.{i}.mlp.fc_out",
    )

    def _dims(self) -> Dims:
        d = config_int(self.ckpt, "n_embd")
        return Dims(
            n_layers=config_int(self.ckpt, "n_layer"),
            d_model=d,
            d_ff=config_int(self.ckpt, "n_inner", default=4 * d),
            n_heads=config_int(self.ckpt, "n_head"),
            vocab_size=config_int(self.ckpt, "vocab_size"),
        )

"""OPT: pre-LayerNorm decoder (``do_layer_norm_before``), learned positions, tied ``lm_head``.

OPT-350m projects embeddings in and out of a smaller space (``word_embed_proj_dim != hidden_size``,
``project_in/out``) and is post-LN: both are refused with a clear error rather than read wrongly.
"""

from indexer.errors import UnsupportedArchitecture
from indexer.model.adapters.base import Dims, config_int
from indexer.model.adapters.standard import ALL_PLAIN, Layout, StandardAdapter


class OPTAdapter(StandardAdapter):
    family = "opt"
    notes = 'pre-LN, tied; project_in/out and post-LN OPT (opt-350m) refused'
    model_types = ("opt",)
    components = ALL_PLAIN
    prefixes = ("model.decoder.", "decoder.", "")
    layout = Layout(
        block="{p}layers.{i}",
        embed="{p}embed_tokens", unembed=("lm_head",), final_norm="{p}final_layer_norm",
        norm_kind="layernorm",
        attn_norm="{p}layers.{i}.self_attn_layer_norm", ff_norm="{p}layers.{i}.final_layer_norm",
        q="{p}layers.{i}.self_attn.q_proj", k="{p}layers.{i}.self_attn.k_proj",
        v="{p}layers.{i}.self_attn.v_proj",
        attn_out="{p}layers.{i}.self_attn.out_proj", ff_in="{p}layers.{i}.fc1", ff_out="{p}layers.{i}.fc2",
    )

    def _dims(self) -> Dims:
        d = config_int(self.ckpt, "hidden_size")
        cfg = self.ckpt.config
        proj = config_int(self.ckpt, "word_embed_proj_dim", default=d)
        if proj != d:
            raise UnsupportedArchitecture(
                f"{self.ckpt.path}: OPT with word_embed_proj_dim={proj} != hidden_size={d} (project_in/out, "
                "as in opt-350m) is not supported: its embeddings live in another space than the stream."
            )
        if not cfg.get("do_layer_norm_before", True) or cfg.get("_remove_final_layer_norm", False):
            raise UnsupportedArchitecture(
                f"{self.ckpt.path}: post-LayerNorm OPT (do_layer_norm_before=false, as in opt-350m) "
                "is not supported."
            )
        return Dims(
            n_layers=config_int(self.ckpt, "num_hidden_layers"),
            d_model=d,
            d_ff=config_int(self.ckpt, "ffn_dim"),
            n_heads=config_int(self.ckpt, "num_attention_heads"),
            vocab_size=config_int(self.ckpt, "vocab_size"),
        )

"""DistilBERT: a post-LayerNorm BERT with its own names; the MLM projector is tied to the word embedding."""

from indexer.model.adapters.base import Dims, config_int
from indexer.model.adapters.standard import ALL_PLAIN, Layout, StandardAdapter


class DistilBertAdapter(StandardAdapter):
    family = "distilbert"
    notes = 'post-LN encoder, tied vocab_projector'
    model_types = ("distilbert",)
    components = ALL_PLAIN
    encoder = True
    prefixes = ("", "distilbert.")
    layout = Layout(
        block="{p}transformer.layer.{i}",
        embed="{p}embeddings.word_embeddings", unembed=("vocab_projector",),
        final_norm="{p}transformer.layer.{i}.output_layer_norm", norm_kind="layernorm", attn_norm=None,
        ff_norm=None, q="{p}transformer.layer.{i}.attention.q_lin",
        k="{p}transformer.layer.{i}.attention.k_lin",
        v="{p}transformer.layer.{i}.attention.v_lin", attn_out="{p}transformer.layer.{i}.attention.out_lin",
        ff_in="{p}transformer.layer.{i}.ffn.lin1", ff_out="{p}transformer.layer.{i}.ffn.lin2",
        attn_source=("{p}embeddings.LayerNorm", "{p}transformer.layer.{j}.output_layer_norm"),
        ff_source="{p}transformer.layer.{i}.sa_layer_norm",
        mlm_head=(("vocab_transform.weight", ("vocab_transform", "activation", "vocab_layer_norm",
                                              "vocab_projector")),),
    )

    def _dims(self) -> Dims:
        return Dims(
            n_layers=config_int(self.ckpt, "n_layers"),
            d_model=config_int(self.ckpt, "dim"),
            d_ff=config_int(self.ckpt, "hidden_dim"),
            n_heads=config_int(self.ckpt, "n_heads"),
            vocab_size=config_int(self.ckpt, "vocab_size"),
        )

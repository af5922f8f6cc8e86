"""BERT family (BERT, RoBERTa, MiniLM, XLM-R): post-LayerNorm encoder, nn.Linear weights ``[out, in]``.

Post-LN means each block's output LayerNorm sits on the stream itself; readers read its output directly, so
there is no separate input-norm gain to fold into them. The last block's output LayerNorm is the last
normalisation before the (tied) output embedding, and plays the part of the final norm. Every earlier
LayerNorm sits on the stream too, so a vector is carried through the ones on its path (``stream_norms``). A
masked-LM checkpoint's own head (dense, GELU, LayerNorm, decoder and bias) reads a trace's prediction.
"""

from indexer.model.adapters.base import Dims, config_int
from indexer.model.adapters.standard import ALL_PLAIN, Layout, StandardAdapter


class BertAdapter(StandardAdapter):
    family = "bert"
    notes = 'post-LN encoder, tied'
    model_types = ("bert", "roberta", "xlm-roberta", "camembert")
    components = ALL_PLAIN
    encoder = True
    prefixes = ("", "bert.", "roberta.", "model.")
    layout = Layout(
        block="{p}encoder.layer.{i}",
        embed="{p}embeddings.word_embeddings", unembed=("cls.predictions.decoder", "lm_head.decoder"),
        final_norm="{p}encoder.layer.{i}.output.LayerNorm", norm_kind="layernorm",
        attn_norm=None, ff_norm=None,
        q="{p}encoder.layer.{i}.attention.self.query", k="{p}encoder.layer.{i}.attention.self.key",
        v="{p}encoder.layer.{i}.attention.self.value", attn_out="{p}encoder.layer.{i}.attention.output.dense",
        ff_in="{p}encoder.layer.{i}.intermediate.dense", ff_out="{p}encoder.layer.{i}.output.dense",
        attn_source=("{p}embeddings.LayerNorm", "{p}encoder.layer.{j}.output.LayerNorm"),
        ff_source="{p}encoder.layer.{i}.attention.output.LayerNorm",
        mlm_head=(("cls.predictions.transform.dense.weight", ("cls.predictions",)),  # BertForMaskedLM
                  ("lm_head.dense.weight", ("lm_head",))),  # RobertaForMaskedLM (dense, GELU, LayerNorm, decoder)
    )

    def _dims(self) -> Dims:
        return Dims(
            n_layers=config_int(self.ckpt, "num_hidden_layers"),
            d_model=config_int(self.ckpt, "hidden_size"),
            d_ff=config_int(self.ckpt, "intermediate_size"),
            n_heads=config_int(self.ckpt, "num_attention_heads"),
            vocab_size=config_int(self.ckpt, "vocab_size"),
        )

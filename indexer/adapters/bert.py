"""BERT family (BERT, RoBERTa, MiniLM, XLM-R): post-LayerNorm encoder, nn.Linear weights ``[out, in]``.

Post-LN means each block's output LayerNorm sits on the stream itself; the keys read its output directly,
so there is no separate input-norm gain to fold into them. The last block's output LayerNorm is the last
normalisation before the (tied) output embedding, and plays the part of the final norm.
"""

import torch

from indexer.adapters.base import Adapter, Component, ComponentSpec, Dims, Norm, config_int, find_prefix
from indexer.checkpoint import Checkpoint

FF_KEY = ComponentSpec("ff_key", "reads", "row i of intermediate.dense: what neuron i reads")
FF_VALUE = ComponentSpec("ff_value", "writes", "column i of output.dense: what neuron i writes")


class BertAdapter(Adapter):
    family = "bert"
    model_types = ("bert", "roberta", "xlm-roberta", "camembert")
    components = (FF_KEY, FF_VALUE)

    def __init__(self, ckpt: Checkpoint) -> None:
        self.p = find_prefix(
            ckpt, "embeddings.word_embeddings.weight", ("", "bert.", "roberta.", "model.")
        )
        super().__init__(ckpt)

    def _dims(self) -> Dims:
        return Dims(
            n_layers=config_int(self.ckpt, "num_hidden_layers"),
            d_model=config_int(self.ckpt, "hidden_size"),
            d_ff=config_int(self.ckpt, "intermediate_size"),
            n_heads=config_int(self.ckpt, "num_attention_heads"),
            vocab_size=config_int(self.ckpt, "vocab_size"),
        )

    def _layer(self, layer: int, rest: str) -> str:
        return f"{self.p}encoder.layer.{layer}.{rest}"

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        d, f, v = self.dims.d_model, self.dims.d_ff, self.dims.vocab_size
        shapes: dict[str, tuple[int, ...]] = {f"{self.p}embeddings.word_embeddings.weight": (v, d)}
        for layer in range(self.dims.n_layers):
            shapes[self._layer(layer, "intermediate.dense.weight")] = (f, d)
            shapes[self._layer(layer, "output.dense.weight")] = (d, f)
            shapes[self._layer(layer, "output.LayerNorm.weight")] = (d,)
        return shapes

    def embedding(self) -> torch.Tensor:
        return self.ckpt.tensor(f"{self.p}embeddings.word_embeddings.weight")

    def unembedding(self) -> torch.Tensor:
        for name in ("cls.predictions.decoder.weight", "lm_head.decoder.weight"):
            if self.ckpt.has(name) and self.ckpt.shape(name) == (self.dims.vocab_size, self.dims.d_model):
                return self.ckpt.tensor(name)
        return self.embedding()

    def final_norm(self) -> Norm:
        last = self.dims.n_layers - 1
        return Norm("layernorm", self.ckpt.tensor(self._layer(last, "output.LayerNorm.weight")))

    def component(self, name: str, layer: int) -> list[Component]:
        spec = self.spec(name)
        if spec is FF_KEY:
            keys = self.ckpt.tensor(self._layer(layer, "intermediate.dense.weight"))
            return [Component(name, layer, None, spec.role, keys)]
        values = self.ckpt.tensor(self._layer(layer, "output.dense.weight")).T.contiguous()
        return [Component(name, layer, None, spec.role, values)]

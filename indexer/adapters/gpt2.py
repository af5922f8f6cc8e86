"""GPT-2 family: pre-LayerNorm decoder, Conv1D weights stored ``[in, out]``, embedding tied to the output."""

import torch

from indexer.adapters.base import Adapter, Component, ComponentSpec, Dims, Norm, config_int, find_prefix
from indexer.checkpoint import Checkpoint

FF_KEY = ComponentSpec("ff_key", "reads", "column i of mlp.c_fc: what neuron i reads (after ln_2)")
FF_VALUE = ComponentSpec("ff_value", "writes", "row i of mlp.c_proj: what neuron i writes")


class GPT2Adapter(Adapter):
    family = "gpt2"
    model_types = ("gpt2",)
    components = (FF_KEY, FF_VALUE)

    def __init__(self, ckpt: Checkpoint) -> None:
        self.p = find_prefix(ckpt, "wte.weight", ("", "transformer."))
        super().__init__(ckpt)

    def _dims(self) -> Dims:
        d = config_int(self.ckpt, "n_embd", "hidden_size")
        return Dims(
            n_layers=config_int(self.ckpt, "n_layer", "num_hidden_layers"),
            d_model=d,
            d_ff=config_int(self.ckpt, "n_inner", default=4 * d),
            n_heads=config_int(self.ckpt, "n_head", "num_attention_heads"),
            vocab_size=config_int(self.ckpt, "vocab_size"),
        )

    def _h(self, layer: int, rest: str) -> str:
        return f"{self.p}h.{layer}.{rest}"

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        d, f, v = self.dims.d_model, self.dims.d_ff, self.dims.vocab_size
        shapes: dict[str, tuple[int, ...]] = {f"{self.p}wte.weight": (v, d), f"{self.p}ln_f.weight": (d,)}
        for layer in range(self.dims.n_layers):
            shapes[self._h(layer, "ln_2.weight")] = (d,)
            shapes[self._h(layer, "mlp.c_fc.weight")] = (d, f)
            shapes[self._h(layer, "mlp.c_proj.weight")] = (f, d)
        return shapes

    def embedding(self) -> torch.Tensor:
        return self.ckpt.tensor(f"{self.p}wte.weight")

    def unembedding(self) -> torch.Tensor:
        if self.ckpt.has("lm_head.weight"):
            return self.ckpt.tensor("lm_head.weight")
        return self.embedding()

    def final_norm(self) -> Norm:
        return Norm("layernorm", self.ckpt.tensor(f"{self.p}ln_f.weight"))

    def component(self, name: str, layer: int) -> list[Component]:
        spec = self.spec(name)
        if spec is FF_KEY:
            keys = self.ckpt.tensor(self._h(layer, "mlp.c_fc.weight")).T.contiguous()
            ln2 = Norm("layernorm", self.ckpt.tensor(self._h(layer, "ln_2.weight")))
            return [Component(name, layer, None, spec.role, keys, ln2)]
        values = self.ckpt.tensor(self._h(layer, "mlp.c_proj.weight"))
        return [Component(name, layer, None, spec.role, values)]

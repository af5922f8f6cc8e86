"""StableLM (Stability AI): a Llama-shaped decoder with LayerNorms (gain and bias), optional q/k/v biases,
partial rotary and optional per-head QK LayerNorm after the projections (rows unchanged). With
``use_parallel_residual`` attention and MLP both read ``input_layernorm``; otherwise the MLP reads
``post_attention_layernorm``."""

from dataclasses import replace

from indexer.model.adapters.base import Dims
from indexer.model.adapters.llama import LLAMA_LAYOUT, gated_dims
from indexer.model.adapters.standard import ALL_GATED, Layout, StandardAdapter
from indexer.model.checkpoint import Checkpoint

_SEQUENTIAL = replace(LLAMA_LAYOUT, norm_kind="layernorm")
_PARALLEL = replace(_SEQUENTIAL, ff_norm="{p}layers.{i}.input_layernorm")


class StableLmAdapter(StandardAdapter):
    family = "stablelm"
    notes = 'LayerNorm, gated MLP, optional q/k/v biases and per-head QK LayerNorm, parallel or sequential residual'
    model_types = ("stablelm",)
    components = ALL_GATED
    prefixes = ("model.", "")
    layout: Layout = _SEQUENTIAL  # type: ignore[misc]

    def __init__(self, ckpt: Checkpoint) -> None:
        self.layout = _PARALLEL if ckpt.config.get("use_parallel_residual") else _SEQUENTIAL
        super().__init__(ckpt)

    def _dims(self) -> Dims:
        return gated_dims(self.ckpt)

"""Qwen-MoE and OLMoE: Llama-shaped decoders whose MLPs are routed experts (softmax over experts, top-k,
renormalised where ``norm_topk_prob``), one ``mlp.experts.{e}`` module per expert on disk.

- Qwen2-MoE adds an always-on shared expert (``shared_expert``) whose output is scaled by
  ``sigmoid(shared_expert_gate · x)``; some layers may be dense (``mlp_only_layers``, ``decoder_sparse_step``).
- Qwen3-MoE has no shared expert and adds per-head QK-norm (after the projections: rows unchanged).
- OLMoE: QK-norm over the whole query / key width, otherwise as Qwen3-MoE.
"""

from typing import ClassVar

from indexer.model.adapters.llama import LLAMA_LAYOUT
from indexer.model.adapters.moe import ROUTED, Experts, MoEAdapter

_MLP = "{p}layers.{i}.mlp"
QWEN_EXPERTS = Experts(
    router=f"{_MLP}.gate", gate=f"{_MLP}.experts.{{e}}.gate_proj", up=f"{_MLP}.experts.{{e}}.up_proj",
    down=f"{_MLP}.experts.{{e}}.down_proj", fused_gate_up=f"{_MLP}.experts.gate_up_proj",
    fused_down=f"{_MLP}.experts.down_proj", block_module=_MLP, router_module=f"{_MLP}.gate",
    shared_gate=f"{_MLP}.shared_expert.gate_proj", shared_up=f"{_MLP}.shared_expert.up_proj",
    shared_down=f"{_MLP}.shared_expert.down_proj", shared_router=f"{_MLP}.shared_expert_gate",
    stacked_gate=f"{_MLP}.experts.gate_proj", stacked_up=f"{_MLP}.experts.up_proj",
    stacked_down=f"{_MLP}.experts.down_proj",
)


class QwenMoeAdapter(MoEAdapter):
    family = "qwen_moe"
    notes = ("mixture of experts: experts with their expert, ff_router; Qwen2-MoE's shared expert (ff_shared_*) "
             'and dense layers; Qwen3-MoE QK-norm')
    model_types: ClassVar[tuple[str, ...]] = ("qwen2_moe", "qwen3_moe")
    prefixes = ("model.", "")
    layout = LLAMA_LAYOUT
    variants = (QWEN_EXPERTS,)


class OlmoeAdapter(QwenMoeAdapter):
    family = "olmoe"
    components = ROUTED
    notes = "mixture of experts (softmax, top-k): experts with their expert, ff_router; QK-norm over the full width"
    model_types = ("olmoe",)

"""Mixtral (Mistral AI): a Mistral decoder whose MLPs are 8 routed experts (softmax over experts, top-2,
renormalised). On disk (and as transformers 5 saves it) the sparse MLP is ``block_sparse_moe`` with per-expert
``w1`` (gate), ``w3`` (up) and ``w2`` (down); transformers 5 loads it as ``mlp`` with fused 3-D experts, which
is also read."""

from indexer.model.adapters.llama import LLAMA_LAYOUT
from indexer.model.adapters.moe import ROUTED, Experts, MoEAdapter

_FUSED = dict(fused_gate_up="{p}layers.{i}.mlp.experts.gate_up_proj", fused_down="{p}layers.{i}.mlp.experts.down_proj",
              block_module="{p}layers.{i}.mlp", router_module="{p}layers.{i}.mlp.gate")


class MixtralAdapter(MoEAdapter):
    family = "mixtral"
    notes = ("mixture of experts (softmax, top-k, renormalised): each expert's ff_key/ff_gate/ff_value with its "
             'expert, ff_router rows; block_sparse_moe per expert, fused or stacked 3-D')
    model_types = ("mixtral",)
    components = ROUTED
    prefixes = ("model.", "")
    layout = LLAMA_LAYOUT
    variants = (
        Experts(router="{p}layers.{i}.block_sparse_moe.gate", gate="{p}layers.{i}.block_sparse_moe.experts.{e}.w1",
                up="{p}layers.{i}.block_sparse_moe.experts.{e}.w3",
                down="{p}layers.{i}.block_sparse_moe.experts.{e}.w2", **_FUSED,
                stacked_gate="{p}layers.{i}.block_sparse_moe.experts.w1",
                stacked_up="{p}layers.{i}.block_sparse_moe.experts.w3",
                stacked_down="{p}layers.{i}.block_sparse_moe.experts.w2"),
        Experts(router="{p}layers.{i}.mlp.gate", gate="{p}layers.{i}.mlp.experts.{e}.w1",
                up="{p}layers.{i}.mlp.experts.{e}.w3", down="{p}layers.{i}.mlp.experts.{e}.w2", **_FUSED),
    )

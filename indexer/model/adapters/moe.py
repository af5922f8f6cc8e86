"""Mixture-of-experts MLPs, shared by every sparse family: a router and, per expert, a gated MLP of its own.

``Experts`` names a family's sparse-MLP tensors as templates over ``{p}``, ``{i}`` (layer) and ``{e}`` (expert).
Experts are stored in one of three ways, all read: one module per expert (``…experts.{e}.gate_proj``, what
transformers 5 still writes with ``save_pretrained`` and what the hub holds); fused 3-D tensors
(``…experts.gate_up_proj`` ``[E, 2·F, d]`` and ``…experts.down_proj`` ``[E, d, F]``, how transformers 5 holds
them in memory); or stacked 3-D tensors per projection (``…experts.gate_proj.weight`` ``[E, F, d]``, as llama.cpp
GGUF files store them). 3-D tensors are read one expert at a time. Layers without a router are dense (Qwen-MoE's
``mlp_only_layers``, ``decoder_sparse_step``) and read as in the dense family.

Canonical components: ``ff_key`` / ``ff_gate`` / ``ff_value`` of a sparse layer come as one part per expert,
with the ``expert`` coordinate and ``index`` = the neuron within that expert; ``ff_router`` holds the router's
rows (reads; ``index`` = the expert it scores); ``ff_shared_key`` / ``_gate`` / ``_value`` are an always-on
shared expert (Qwen2-MoE, DeepSeek-style) and ``ff_shared_router`` the row that gates it.
"""

from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from indexer.errors import CheckpointError
from indexer.model.adapters.base import Component, ComponentSpec, Dims, config_int, find_prefix
from indexer.model.adapters.llama import gated_dims
from indexer.model.adapters.standard import (
    ATTN_K,
    ATTN_O,
    ATTN_OUT_BIAS,
    ATTN_Q,
    ATTN_V,
    EMBEDDING,
    FF_GATE,
    FF_KEY,
    FF_OUT_BIAS,
    FF_VALUE,
    StandardAdapter,
)
from indexer.model.checkpoint import Checkpoint

FF_ROUTER = ComponentSpec("ff_router", "reads", "row e of the MoE router: what sends a token to expert e "
                          "(index = expert)")
FF_SHARED_KEY = ComponentSpec("ff_shared_key", "reads", "row i of the shared expert's up projection")
FF_SHARED_GATE = ComponentSpec("ff_shared_gate", "reads", "row i of the shared expert's gate projection")
FF_SHARED_VALUE = ComponentSpec("ff_shared_value", "writes", "what neuron i of the always-on shared expert "
                                "writes")
FF_SHARED_ROUTER = ComponentSpec("ff_shared_router", "reads", "the row whose sigmoid scales the shared "
                                 "expert's output (1 per layer)")
SHARED = {FF_SHARED_KEY.name: "up", FF_SHARED_GATE.name: "gate", FF_SHARED_VALUE.name: "down"}
ROUTED = (EMBEDDING, ATTN_Q, ATTN_K, ATTN_V, ATTN_O, ATTN_OUT_BIAS, FF_KEY, FF_GATE, FF_VALUE, FF_OUT_BIAS, FF_ROUTER)
ALL_MOE = (*ROUTED, FF_SHARED_KEY, FF_SHARED_GATE, FF_SHARED_VALUE, FF_SHARED_ROUTER)


@dataclass(frozen=True)
class Experts:
    """Tensor paths of a sparse MLP (``{p}``, ``{i}``, ``{e}``) and the modules that compute it once loaded."""

    router: str  # module paths, each tensor its ``.weight``; ``fused_*`` name parameters
    gate: str
    up: str
    down: str
    fused_gate_up: str
    fused_down: str
    block_module: str  # the whole sparse MLP as transformers 5 loads it (hooked by the conformance tests)
    router_module: str
    shared_gate: str | None = None
    shared_up: str | None = None
    shared_down: str | None = None
    shared_router: str | None = None
    stacked_gate: str | None = None  # modules whose weight is [E, F, d] (gate, up) or [E, d, F] (down)
    stacked_up: str | None = None
    stacked_down: str | None = None


class MoEAdapter(StandardAdapter):
    """A ``StandardAdapter`` whose MLPs are sparse where a router exists. ``variants``: the family's ways of naming
    its sparse MLP on disk (the first whose router the checkpoint holds is read)."""

    variants: ClassVar[tuple[Experts, ...]]
    components: ClassVar[tuple[ComponentSpec, ...]] = ALL_MOE
    expert_count_keys: ClassVar[tuple[str, ...]] = ("num_experts", "num_local_experts", "n_routed_experts")
    expert_size_keys: ClassVar[tuple[str, ...]] = ("moe_intermediate_size", "intermediate_size")

    def __init__(self, ckpt: Checkpoint) -> None:
        self._storage: str | None = None
        p = find_prefix(ckpt, self.layout.embed.format(p="") + ".weight", self.prefixes)
        n_layers = ckpt.config.get("num_hidden_layers")
        layers = range(n_layers if isinstance(n_layers, int) and 0 < n_layers < 100_000 else 0)
        self.experts = next((v for v in self.variants
                             if any(ckpt.has(v.router.format(p=p, i=i) + ".weight") for i in layers)), self.variants[0])
        super().__init__(ckpt)

    def _dims(self) -> Dims:
        dims = gated_dims(self.ckpt)
        return replace(dims, d_ff=config_int(self.ckpt, *self.expert_size_keys),
                       n_experts=config_int(self.ckpt, *self.expert_count_keys))

    def _t(self, template: str, layer: int, expert: int | None = None, weight: bool = True) -> str:
        """The tensor a template names: a module's ``.weight``, or (``weight=False``) a fused parameter as it is."""
        return template.format(p=self.p, i=layer, e=expert) + (".weight" if weight else "")

    def sparse(self, layer: int) -> bool:
        """Whether ``layer``'s MLP is a mixture of experts (it has a router)."""
        return self.ckpt.has(self._t(self.experts.router, layer))

    def storage(self) -> str:
        """How experts are stored: ``modules`` (one per expert), ``fused`` (gate|up in one 3-D tensor) or
        ``stacked`` (one 3-D tensor per projection)."""
        if self._storage is None:
            ex = self.experts
            first = next((i for i in range(self.dims.n_layers) if self.sparse(i)), 0)
            if ex.stacked_gate and not self.ckpt.has(self._t(ex.gate, first, 0)) and \
                    self.ckpt.has(self._t(ex.stacked_gate, first)):
                self._storage = "stacked"
            elif not self.ckpt.has(self._t(ex.gate, first, 0)) and \
                    self.ckpt.has(self._t(ex.fused_gate_up, first, weight=False)):
                self._storage = "fused"
            else:
                self._storage = "modules"
        return self._storage

    def fused(self) -> bool:
        return self.storage() == "fused"

    def module_path(self, key: str, layer: int = 0) -> str | None:
        if key in ("ff_in", "ff_gate", "ff_out") and self.sparse(layer):
            return None  # a sparse layer has no single MLP module: see moe_block / router
        if key in ("moe_block", "router"):
            template = self.experts.block_module if key == "moe_block" else self.experts.router_module
            return template.format(p=self.p, i=layer) if self.sparse(layer) else None
        return super().module_path(key, layer)

    def available(self) -> tuple[ComponentSpec, ...]:
        ex = self.experts
        shared = ex.shared_down is not None and any(self.ckpt.has(self._t(ex.shared_down, i))
                                                     for i in range(self.dims.n_layers))
        gated = ex.shared_router is not None and any(self.ckpt.has(self._t(ex.shared_router, i))
                                                     for i in range(self.dims.n_layers))
        return tuple(s for s in super().available()
                     if (s.name not in SHARED or shared) and (s is not FF_SHARED_ROUTER or gated))

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = super().expected_shapes()
        d, f, n = self.dims.d_model, self.dims.d_ff, self.dims.n_experts
        ex = self.experts
        for i in range(self.dims.n_layers):
            if not self.sparse(i):
                dense = self.dense_size()
                shapes.update({self._w("ff_in", i): (dense, d), self._w("ff_gate", i): (dense, d),
                               self._w("ff_out", i): (d, dense)})
                continue
            shapes[self._t(ex.router, i)] = (n, d)
            if self.fused():
                shapes[self._t(ex.fused_gate_up, i, weight=False)] = (n, 2 * f, d)
                shapes[self._t(ex.fused_down, i, weight=False)] = (n, d, f)
            elif self.storage() == "stacked":
                shapes.update({self._t(ex.stacked_gate, i): (n, f, d), self._t(ex.stacked_up, i): (n, f, d),  # type: ignore[arg-type]
                               self._t(ex.stacked_down, i): (n, d, f)})  # type: ignore[arg-type]
            else:
                for e in range(n):
                    shapes.update({self._t(ex.gate, i, e): (f, d), self._t(ex.up, i, e): (f, d),
                                   self._t(ex.down, i, e): (d, f)})
        return shapes

    def dense_size(self) -> int:
        """Neurons of a dense layer's MLP (Qwen-MoE's ``intermediate_size`` beside its smaller experts)."""
        value = self.ckpt.config.get("intermediate_size")
        return value if isinstance(value, int) and value > 0 else self.dims.d_ff

    def validate(self) -> None:
        if not any(self.sparse(i) for i in range(self.dims.n_layers)):
            raise CheckpointError(f"{self.ckpt.path}: no layer has a mixture-of-experts router "
                                  f"({self._t(self.experts.router, 0)!r}); the weights do not match a "
                                  f"{self.ckpt.model_type} model.")
        super().validate()

    # -- rows ----------------------------------------------------------------------------------------------
    def expert_rows(self, part: str, layer: int, expert: int) -> torch.Tensor:
        """Rows of one expert in residual coordinates: ``gate`` / ``up`` rows read, ``down`` rows write."""
        ex = self.experts
        if self.storage() == "stacked":
            weight = self._t(getattr(ex, f"stacked_{part}"), layer)
            return self.ckpt.transposed(weight, expert) if part == "down" else self.ckpt.tensor(weight, expert)
        if self.fused():
            if part == "down":
                return self.ckpt.transposed(self._t(ex.fused_down, layer, weight=False), expert)
            gate, up = self.ckpt.tensor(self._t(ex.fused_gate_up, layer, weight=False), expert).chunk(2, dim=0)
            return (gate if part == "gate" else up).contiguous()
        weight = self._t(getattr(ex, part), layer, expert)
        return self.ckpt.transposed(weight) if part == "down" else self.ckpt.tensor(weight)

    def component(self, name: str, layer: int) -> list[Component]:
        spec = self.spec(name)
        ex = self.experts
        norm = self._norm("ff_norm", layer)
        if name in SHARED:
            template = getattr(ex, f"shared_{SHARED[name]}")
            if template is None or not self.ckpt.has(self._t(template, layer)):
                return []
            weight = self._t(template, layer)
            rows = self.ckpt.transposed(weight) if spec.role == "writes" else self.ckpt.tensor(weight)
            return [Component(name, layer, None, spec.role, rows, None if spec.role == "writes" else norm)]
        if spec is FF_SHARED_ROUTER:
            if ex.shared_router is None or not self.ckpt.has(self._t(ex.shared_router, layer)):
                return []
            return [Component(name, layer, None, spec.role, self.ckpt.tensor(self._t(ex.shared_router, layer)),
                              norm)]
        if spec is FF_ROUTER:
            if not self.sparse(layer):
                return []
            return [Component(name, layer, None, spec.role, self.ckpt.tensor(self._t(ex.router, layer)), norm)]
        if spec in (FF_KEY, FF_GATE, FF_VALUE) and self.sparse(layer):
            part = {FF_KEY.name: "up", FF_GATE.name: "gate", FF_VALUE.name: "down"}[name]
            return [Component(name, layer, None, spec.role, self.expert_rows(part, layer, e),
                              None if spec.role == "writes" else norm, expert=e)
                    for e in range(self.dims.n_experts)]
        if spec is FF_OUT_BIAS and self.sparse(layer):
            return []
        return super().component(name, layer)

    def trace_problem(self) -> str | None:
        return (f"{self.family} is a mixture of experts: the trace's hooks and decomposition follow one MLP per "
                "block, not routed experts")

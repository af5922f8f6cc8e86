"""The logic every family shares, driven by a table of module paths that each family module declares.

A family module names its modules once (``Layout``), as templates over the checkpoint prefix ``{p}`` and the
layer ``{i}``; tensor names are those paths plus ``.weight`` / ``.bias``. ``StandardAdapter`` turns them into
canonical components: rows in residual coordinates, one block of rows per attention head.

The same paths name the modules of the loaded Hugging Face model, so the conformance tests hook the modules
an adapter claims to read (``module_path``) without knowing any family's names themselves.
"""

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch

from indexer.errors import CheckpointError
from indexer.model.adapters.base import Adapter, Component, ComponentSpec, Norm, find_prefix, head_blocks, site
from indexer.model.checkpoint import Checkpoint

FF_KEY = ComponentSpec("ff_key", "reads", "row i of the MLP input projection: what neuron i reads", stage="ff")
FF_GATE = ComponentSpec("ff_gate", "reads", "row i of the MLP gate projection: what gates neuron i", stage="ff")
FF_VALUE = ComponentSpec("ff_value", "writes", "row i of the MLP output projection: what neuron i writes",
                         stage="ff")
FF_OUT_BIAS = ComponentSpec("ff_out_bias", "writes", "the MLP output bias, where present (1 per layer)", stage="ff")
ATTN_Q = ComponentSpec("attn_q", "reads", "rows of W_Q for head h: what the head's queries read", stage="attn")
ATTN_K = ComponentSpec("attn_k", "reads", "rows of W_K for head h; under GQA h is the key/value head",
                       stage="attn")
ATTN_V = ComponentSpec("attn_v", "reads", "rows of W_V for head h; under GQA h is the key/value head",
                       stage="attn")
ATTN_O = ComponentSpec("attn_o", "writes", "the d_head rows of W_O belonging to head h: what it writes",
                       stage="attn")
ATTN_OUT_BIAS = ComponentSpec("attn_out_bias", "writes", "the attention output bias, if any (1 per layer)",
                              stage="attn")
EMBEDDING = ComponentSpec(
    "embedding", "writes", "row t of the input embedding, read through the unembedding (model-level: "
    "stored once as layer 0, idx = token id; only when asked for)", per_layer=False, default=False,
    stage="embed")

BIASES = {FF_OUT_BIAS.name: "ff_out", ATTN_OUT_BIAS.name: "attn_out"}


@dataclass(frozen=True)
class Layout:
    """Module paths of one family, templates over ``{p}`` (prefix), ``{i}`` (layer) and ``{j}`` (layer - 1).

    ``attn_norm`` / ``ff_norm`` are the pre-norms folded into the readers. For post-norm encoders they are
    ``None`` (the stream itself is normalised) and ``attn_source`` / ``ff_source`` name the norm whose output
    the block reads, for the tests. ``conv1d``: weights stored ``[in, out]`` (GPT-2) instead of ``[out, in]``.
    ``block``: the whole transformer block of layer ``{i}`` (stitching swaps the stream entering it).
    ``classifier``: where a sequence-classification head may sit (no prefix: heads sit beside the body).

    Norms: ``norm_offset`` is added to every stored gain (Gemma's RMSNorm scales by ``1 + w``);
    ``norm_weights=False`` marks norms without parameters (OLMo's LayerNorm), read as gains of one.
    ``attn_out_norm`` / ``ff_out_norm`` name norms applied to a branch's *output* before it joins the stream
    (Gemma-2/3, OLMo-2): their gain is folded into the branch's writing vectors, since what reaches the stream
    is ``gain ⊙ (Σ a_i v_i) / rms``, a positive scalar per position times ``Σ a_i (gain ⊙ v_i)``.
    ``mlm_head``: encoders' masked-LM heads, each as (a tensor that only that head has, the modules that turn
    the last hidden state into logits, in order); the first whose tensor the checkpoint holds is its head.
    """

    embed: str
    unembed: tuple[str, ...]
    final_norm: str
    norm_kind: Literal["layernorm", "rmsnorm"]
    attn_norm: str | None
    ff_norm: str | None
    attn_out: str
    ff_in: str
    ff_out: str
    q: str | None = None
    k: str | None = None
    v: str | None = None
    qkv: str | None = None
    ff_gate: str | None = None
    attn_source: tuple[str, str] | None = None
    ff_source: str | None = None
    conv1d: bool = False
    extra: dict[str, str] = field(default_factory=dict)
    block: str | None = None
    classifier: tuple[str, ...] = ("score", "classifier", "classifier.out_proj")
    norm_offset: float = 0.0
    norm_weights: bool = True
    attn_out_norm: str | None = None
    ff_out_norm: str | None = None
    mlm_head: tuple[tuple[str, tuple[str, ...]], ...] = ()


class StandardAdapter(Adapter):
    """Canonical components from a ``Layout``; families override only what their storage does differently."""

    layout: ClassVar[Layout]
    prefixes: ClassVar[tuple[str, ...]] = ("",)

    def __init__(self, ckpt: Checkpoint) -> None:
        self.p = find_prefix(ckpt, self.layout.embed.format(p="") + ".weight", self.prefixes)
        self._stream_norms: list[tuple[int, Norm]] | None = None
        super().__init__(ckpt)

    # -- names -------------------------------------------------------------------------------------------
    def module_path(self, key: str, layer: int = 0) -> str | None:
        """The module path for ``key`` (a Layout field) in ``layer``, with the prefix filled in."""
        lay = self.layout
        template: str | None
        if key == "attn_source" and lay.attn_source is not None:
            template = lay.attn_source[0] if layer == 0 else lay.attn_source[1]
        else:
            template = getattr(lay, key, None)
        if template is None:
            return None
        if key == "final_norm":
            layer = self.dims.n_layers - 1
        return template.format(p=self.p, i=layer, j=layer - 1)

    def post_norm(self) -> bool:
        """Post-LN encoders read the normalised stream (``attn_source``); a block with no input norm at all
        (OLMo-2) reads the raw stream, which is not post-LN."""
        return self.layout.attn_norm is None and self.layout.attn_source is not None

    def branch_norms(self) -> bool:
        return self.layout.attn_out_norm is not None or self.layout.ff_out_norm is not None

    @property
    def norm_offset(self) -> float:
        return self.layout.norm_offset

    def stream_norms(self) -> list[tuple[int, Norm]]:
        """Post-LN: the embedding LayerNorm (site 0), then per block its attention LayerNorm (``ff_source``)
        and its output LayerNorm (``attn_source`` of the next block); the last block's is the final norm."""
        if not self.post_norm():
            return []
        if self._stream_norms is None:
            kind = self.layout.norm_kind
            found = [(0, Norm(kind, self.ckpt.tensor(self._w("attn_source", 0))))]
            for i in range(self.dims.n_layers):
                found.append((site(i, "attn"), Norm(kind, self.ckpt.tensor(self._w("ff_source", i)))))
                if i < self.dims.n_layers - 1:
                    found.append((site(i, "ff"), Norm(kind, self.ckpt.tensor(self._w("attn_source", i + 1)))))
            self._stream_norms = found
        return self._stream_norms

    def split_fused(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Q, K and V rows of a fused q|k|v projection's ``[rows, n]`` outputs (weights, or a bias as one column);
        families with a fused projection override it."""
        raise CheckpointError(f"{self.family}: no layout for a fused q/k/v projection.")

    def value_bias(self, layer: int) -> torch.Tensor | None:
        key = "v" if self.layout.v is not None else "qkv"
        name = self._bias(key, layer)
        if name is None:
            return None
        bias = self.ckpt.tensor(name)
        return bias if key == "v" else self.split_fused(bias[:, None])[2][:, 0].contiguous()

    def mlm_head(self) -> tuple[str, ...] | None:
        for probe, modules in self.layout.mlm_head:
            if self.ckpt.has(probe):
                return modules
        return None

    def _w(self, key: str, layer: int = 0) -> str:
        path = self.module_path(key, layer)
        assert path is not None, key
        return path + ".weight"

    def _bias(self, key: str, layer: int) -> str | None:
        path = self.module_path(key, layer)
        name = f"{path}.bias"
        return name if path is not None and self.ckpt.has(name) else None

    # -- storage → rows ------------------------------------------------------------------------------------
    def reading_rows(self, key: str, layer: int) -> torch.Tensor:
        """``[out, in]`` rows of a projection that reads the stream."""
        name = self._w(key, layer)
        return self.ckpt.transposed(name) if self.layout.conv1d else self.ckpt.tensor(name)

    def writing_rows(self, key: str, layer: int) -> torch.Tensor:
        """``[in, out]`` rows of a projection that writes the stream: row i is what input unit i writes, with the
        gain of a norm on the branch's output folded in (``Layout.attn_out_norm`` / ``ff_out_norm``)."""
        name = self._w(key, layer)
        rows = self.ckpt.tensor(name) if self.layout.conv1d else self.ckpt.transposed(name)
        return self.branch_gain(key, layer, rows)

    def branch_gain(self, key: str, layer: int, rows: torch.Tensor) -> torch.Tensor:
        """``rows`` times the gain of the norm on the output of the branch ``key`` belongs to, if any."""
        norm = self._norm("attn_out_norm" if key == "attn_out" else "ff_out_norm", layer)
        return rows if norm is None else rows * norm.weight

    def qkv_rows(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """W_Q ``[n_heads*d_head, d]``, W_K and W_V ``[n_kv_heads*d_head, d]``, head-major; a fused projection is
        split by the family's ``split_fused`` (the same split its bias gets)."""
        if self.layout.qkv is not None:
            return self.split_fused(self.reading_rows("qkv", layer))
        return self.reading_rows("q", layer), self.reading_rows("k", layer), self.reading_rows("v", layer)

    def qkv_shapes(self) -> dict[str, tuple[int, ...]]:
        d, dh = self.dims.d_model, self.dims.head_size
        q, kv = self.dims.n_heads * dh, self.dims.kv_heads * dh
        shapes: dict[str, tuple[int, ...]] = {}
        for layer in range(self.dims.n_layers):
            for key, out in (("q", q), ("k", kv), ("v", kv)):
                shapes[self._w(key, layer)] = (out, d) if not self.layout.conv1d else (d, out)
        return shapes

    # -- Adapter -----------------------------------------------------------------------------------------
    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        d, f, v = self.dims.d_model, self.dims.d_ff, self.dims.vocab_size
        hd = self.dims.n_heads * self.dims.head_size

        def lin(out: int, inp: int) -> tuple[int, int]:
            return (inp, out) if self.layout.conv1d else (out, inp)

        shapes = {self._w("embed"): (v, d), self._w("final_norm"): (d,)}
        shapes.update(self.qkv_shapes())
        for layer in range(self.dims.n_layers):
            shapes[self._w("attn_out", layer)] = lin(d, hd)
            if self.module_path("ff_out", layer) is not None:  # None: a sparse (mixture-of-experts) layer
                shapes[self._w("ff_in", layer)] = lin(f, d)
                shapes[self._w("ff_out", layer)] = lin(d, f)
                if self.layout.ff_gate:
                    shapes[self._w("ff_gate", layer)] = lin(f, d)
            for norm in ("attn_norm", "ff_norm", "attn_out_norm", "ff_out_norm"):
                if getattr(self.layout, norm) and self.layout.norm_weights:
                    shapes[self._w(norm, layer)] = (d,)
        if not self.layout.norm_weights:
            del shapes[self._w("final_norm")]
        return shapes

    def embedding(self) -> torch.Tensor:
        return self.ckpt.tensor(self._w("embed"))

    def basis_tensors(self) -> set[str]:
        names = {self._w("embed"), self._w("final_norm")}
        names |= {t.format(p=self.p) + ".weight" for t in self.layout.unembed}
        return {n for n in names if self.ckpt.has(n)}

    def unembedding(self) -> torch.Tensor:
        return self.ckpt.tensor(self._unembedding_name())

    def _unembedding_name(self) -> str:
        want = (self.dims.vocab_size, self.dims.d_model)
        for template in self.layout.unembed:
            name = template.format(p=self.p) + ".weight"
            if self.ckpt.has(name) and self.ckpt.shape(name) == want:
                return name
        return self._w("embed")  # tied: the checkpoint stores the matrix once

    def unembedding_blocks(self, rows: int) -> Iterator[torch.Tensor]:
        return self.ckpt.row_blocks(self._unembedding_name(), rows)

    def embedding_blocks(self, rows: int) -> Iterator[torch.Tensor]:
        return self.ckpt.row_blocks(self._w("embed"), rows)

    def _norm(self, key: str, layer: int) -> Norm | None:
        if self.module_path(key, layer) is None:
            return None
        if not self.layout.norm_weights:
            return Norm(self.layout.norm_kind, torch.ones(self.dims.d_model))
        weight = self.ckpt.tensor(self._w(key, layer))
        return Norm(self.layout.norm_kind, weight + self.layout.norm_offset if self.layout.norm_offset else weight)

    def final_norm(self) -> Norm | None:
        return self._norm("final_norm", 0)

    def classifier(self) -> torch.Tensor | None:
        """The sequence-classification head as ``[n_labels, d_model]`` rows, if the checkpoint has one."""
        for name in self.layout.classifier:
            weight = name + ".weight"
            if self.ckpt.has(weight) and len(shape := self.ckpt.shape(weight)) == 2 and shape[1] == self.dims.d_model:
                return self.ckpt.tensor(weight)
        return None

    def available(self) -> tuple[ComponentSpec, ...]:
        return tuple(
            s for s in self.components
            if s.name not in BIASES or any(self._bias(BIASES[s.name], i) for i in range(self.dims.n_layers))
        )

    def component(self, name: str, layer: int) -> list[Component]:
        spec = self.spec(name)
        if spec is EMBEDDING:
            return [Component(name, 0, None, spec.role, self.embedding())]
        if spec in (FF_KEY, FF_GATE):
            rows = self.reading_rows("ff_in" if spec is FF_KEY else "ff_gate", layer)
            return [Component(name, layer, None, spec.role, rows, self._norm("ff_norm", layer))]
        if spec is FF_VALUE:
            return [Component(name, layer, None, spec.role, self.writing_rows("ff_out", layer))]
        if spec.name in BIASES:
            bias = self._bias(BIASES[spec.name], layer)
            if bias is None:
                return []
            return [Component(name, layer, None, spec.role,
                              self.branch_gain(BIASES[spec.name], layer, self.ckpt.tensor(bias)[None, :]))]
        if spec is ATTN_O:
            blocks = head_blocks(self.writing_rows("attn_out", layer), self.dims.n_heads)
            return [Component(name, layer, h, spec.role, b) for h, b in enumerate(blocks)]
        if spec in (ATTN_Q, ATTN_K, ATTN_V):
            rows = self.qkv_rows(layer)[(ATTN_Q, ATTN_K, ATTN_V).index(spec)]
            n = self.dims.n_heads if spec is ATTN_Q else self.dims.kv_heads
            norm = self._norm("attn_norm", layer)
            return [Component(name, layer, h, spec.role, b, norm) for h, b in enumerate(head_blocks(rows, n))]
        raise CheckpointError(f"{self.family}: component {name!r} is declared but not implemented.")


ALL_PLAIN = (EMBEDDING, ATTN_Q, ATTN_K, ATTN_V, ATTN_O, ATTN_OUT_BIAS, FF_KEY, FF_VALUE, FF_OUT_BIAS)
ALL_GATED = (EMBEDDING, ATTN_Q, ATTN_K, ATTN_V, ATTN_O, ATTN_OUT_BIAS, FF_KEY, FF_GATE, FF_VALUE, FF_OUT_BIAS)

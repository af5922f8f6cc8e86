"""The adapter interface: one small class per architecture family maps checkpoint tensors to canonical
components. Nothing outside ``indexer/adapters`` knows a checkpoint's tensor names.

Canonical form: every component is a matrix of row vectors in residual-stream coordinates (shape
``[n, d_model]``), whatever the checkpoint's storage layout (GPT-2 Conv1D is ``[in, out]``, nn.Linear is
``[out, in]``). A component either *writes* into the stream (read through the unembedding, with the final
norm folded in) or *reads* from it (read through the reading basis, with its own input norm folded in).
"""

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from indexer.errors import CheckpointError
from indexer.model.checkpoint import Checkpoint

Role = Literal["writes", "reads"]
Stage = Literal["embed", "attn", "ff"]
"""Where on the residual stream a component writes or reads: the embedding, a block's attention or its MLP."""


def site(layer: int, stage: Stage) -> int:
    """The stream's sites in the order a token passes them: the embedding is 0, block ``l``'s attention
    ``1 + 2l`` and its MLP ``2 + 2l``. A norm on the stream at site ``s`` normalises what was written up to ``s``."""
    return 0 if stage == "embed" else 1 + 2 * layer + (stage == "ff")


@dataclass(frozen=True)
class Norm:
    """A normalisation the stream passes through: LayerNorm centres then scales, RMSNorm only scales."""

    kind: Literal["layernorm", "rmsnorm"]
    weight: torch.Tensor


@dataclass(frozen=True)
class Component:
    """One kind of vector in one layer (and head), as rows in residual coordinates."""

    name: str
    layer: int
    head: int | None
    role: Role
    vectors: torch.Tensor
    norm: Norm | None = None
    expert: int | None = None


@dataclass(frozen=True)
class ComponentSpec:
    """What a component is, before any tensor is read: used to plan and validate a run.

    ``per_layer=False`` marks a model-level component (the token embedding): it has one unit, stored as
    layer 0, and the plan visits it once rather than once per layer. ``default=False``: indexed only when
    asked for by name.
    """

    name: str
    role: Role
    doc: str
    per_layer: bool = True
    default: bool = True
    stage: Stage | None = None  # where it writes or reads; needed where norms sit on the stream (post-LN)


@dataclass(frozen=True)
class Dims:
    n_layers: int
    d_model: int
    d_ff: int
    n_heads: int
    vocab_size: int
    n_kv_heads: int = 0
    d_head: int = 0
    n_experts: int = 0

    @property
    def kv_heads(self) -> int:
        """Key/value heads: fewer than ``n_heads`` under grouped-query attention."""
        return self.n_kv_heads or self.n_heads

    @property
    def head_size(self) -> int:
        return self.d_head or self.d_model // self.n_heads


class Adapter(ABC):
    """Maps one checkpoint of a family to canonical components. Subclasses hold all naming knowledge."""

    family: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    components: ClassVar[tuple[ComponentSpec, ...]]
    notes: ClassVar[str] = ""
    """One line for `lensdb architectures`: how the family stores what it stores, and what is refused."""
    encoder: ClassVar[bool] = False
    """True for masked-LM encoders (BERT): a trace reads their prediction through the tied embedding at the
    chosen position instead of a causal LM head."""

    def __init__(self, ckpt: Checkpoint) -> None:
        self.ckpt = ckpt
        self.dims = self._dims()
        check_dims(self.dims, ckpt)
        self.validate()

    @abstractmethod
    def _dims(self) -> Dims: ...

    @abstractmethod
    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor this adapter reads, with the shape the config implies."""

    @abstractmethod
    def unembedding(self) -> torch.Tensor:
        """W_U as ``[vocab, d_model]`` rows: what the model's output logits are computed with."""

    @abstractmethod
    def embedding(self) -> torch.Tensor:
        """W_E as ``[vocab, d_model]`` rows."""

    def unembedding_blocks(self, rows: int) -> Iterator[torch.Tensor]:
        """W_U as consecutive float32 row blocks (``indexer.math.basis.write_basis_rows``); families that can
        read a slice of the file override this so the whole matrix is never held in the checkpoint's dtype."""
        u = self.unembedding()
        for start in range(0, u.shape[0], rows):
            yield u[start : start + rows]

    def embedding_blocks(self, rows: int) -> Iterator[torch.Tensor]:
        """W_E as consecutive float32 row blocks."""
        e = self.embedding()
        for start in range(0, e.shape[0], rows):
            yield e[start : start + rows]

    @abstractmethod
    def final_norm(self) -> Norm | None:
        """The last normalisation the stream passes through before the unembedding, if any."""

    @abstractmethod
    def component(self, name: str, layer: int) -> list[Component]:
        """Read one component of one layer (one entry per head for per-head components)."""

    def basis_tensors(self) -> set[str]:
        """Names of the tensors the projection bases are built from (embedding, unembedding, final norm)."""
        return set()

    def classifier(self) -> torch.Tensor | None:
        """The sequence-classification head as ``[n_labels, d_model]`` rows, if the checkpoint has one."""
        return None

    def module_path(self, key: str, layer: int = 0) -> str | None:
        """The Hugging Face module that computes ``key`` (``ff_out``, ``attn_out``, ``q``…, ``block``) in
        ``layer``, so tests and stitching can hook it; ``None`` where the family has no such module."""
        return None

    def post_norm(self) -> bool:
        """Whether each block's LayerNorms sit on the stream itself (post-LN, BERT) rather than before the
        attention and MLP (pre-LN decoders). The forward-pass decomposition follows the stream accordingly."""
        return False

    def branch_norms(self) -> bool:
        """Whether blocks normalise their attention or MLP output before adding it to the stream (Gemma-2)."""
        return False

    @property
    def norm_offset(self) -> float:
        """Added to a stored norm gain to get the scale it applies (1 for Gemma's ``1 + w``; else 0)."""
        return 0.0

    def trace_problem(self) -> str | None:
        """Why a forward-pass trace cannot decompose this model's stream, or None when it can."""
        if self.branch_norms():
            return (f"{self.family} blocks normalise their attention and MLP outputs before adding them to the "
                    "stream, which the trace's decomposition into additive terms does not model yet")
        return None

    def stream_norms(self) -> list[tuple[int, Norm]]:
        """The norms that sit on the residual stream itself before the final norm, in order, each with the
        ``site`` after whose write it applies. Pre-LN models have none (their norms sit on the branches and
        before the unembedding); post-LN encoders have the embedding LayerNorm and every block's two LayerNorms
        but the last (the final norm)."""
        return []

    def path_norms(self, role: Role, layer: int, stage: Stage) -> list[Norm]:
        """The stream norms on a vector's direct path, in the order it meets them: for a writer at (layer,
        stage) every one after its write up to the final norm (folded into the write basis); for a reader,
        every one between the embedding and the stream it reads (the stream entering its stage)."""
        here = site(layer, stage)
        norms = self.stream_norms()
        if role == "writes":
            return [n for s, n in norms if s >= here]
        return [n for s, n in norms if s < here]

    def component_path(self, name: str, layer: int) -> list[Norm]:
        """``path_norms`` for one component of one layer (model-level components sit at the embedding)."""
        spec = self.spec(name)
        norms = self.stream_norms()
        if not norms:
            return []
        stage = spec.stage if spec.per_layer else "embed"
        if stage is None:
            raise CheckpointError(f"{self.family}: component {name!r} declares no stage; a post-LN model needs "
                                  "one to carry it through the norms on the stream.")
        return self.path_norms(spec.role, layer, stage)

    def value_bias(self, layer: int) -> torch.Tensor | None:
        """The value projection's bias ``[n_kv_heads · d_head]`` (head-major), if the checkpoint has one: the
        decomposition moves its part of each head's output into the correction term, as Mickus et al. do."""
        return None

    def mlm_head(self) -> tuple[str, ...] | None:
        """For encoders: the modules, in order, that turn the last hidden state into the checkpoint's own
        masked-LM logits (transform and decoder with its bias), or ``None`` where the checkpoint has no LM head
        (a sentence-embedding model such as all-MiniLM-L6-v2)."""
        return None

    def available(self) -> tuple[ComponentSpec, ...]:
        """The components this checkpoint has (a family's optional biases may be absent)."""
        return self.components

    def layers(self, name: str) -> range:
        """The layers a component's units are stored under: every layer, or layer 0 for model-level ones."""
        return range(self.dims.n_layers) if self.spec(name).per_layer else range(1)

    def spec(self, name: str) -> ComponentSpec:
        for spec in self.components:
            if spec.name == name:
                return spec
        known = ", ".join(s.name for s in self.components)
        raise CheckpointError(f"{self.family} models have no component {name!r}; known: {known}.")

    def validate(self) -> None:
        """Check every tensor the adapter will read exists with the shape the config implies."""
        for name, want in self.expected_shapes().items():
            if not self.ckpt.has(name):
                raise CheckpointError(
                    f"{self.ckpt.path}: tensor {name!r} is missing; the weights do not match a "
                    f"{self.ckpt.model_type} model with this config.json."
                )
            got = self.ckpt.shape(name)
            if got != want:
                raise CheckpointError(
                    f"{self.ckpt.path}: tensor {name!r} has shape {list(got)} but config.json implies "
                    f"{list(want)}; the config does not match the weights."
                )


def check_dims(dims: Dims, ckpt: Checkpoint) -> None:
    """Refuse config sizes the tensors present cannot have, before anything is built from them: a layer count
    above the number of tensors, a width, FF size or vocabulary that no tensor has as a dimension, more heads
    than coordinates. A config.json claiming 10⁹ layers fails here at once instead of growing memory."""
    where = ckpt.path / "config.json"
    sizes = {x for shape in ckpt.shapes.values() for x in shape}
    if dims.n_layers > len(ckpt.shapes):
        raise CheckpointError(f"{where}: says {dims.n_layers} layers but the weights hold only "
                              f"{len(ckpt.shapes)} tensors; the config does not match the weights.")
    for name in ("d_model", "d_ff", "vocab_size"):
        value = getattr(dims, name)
        if value not in sizes:
            raise CheckpointError(f"{where}: {name} {value} is no dimension of any tensor in the weights; the "
                                  "config does not match the weights.")
    if dims.n_heads > dims.d_model or dims.kv_heads > dims.n_heads or dims.head_size > max(sizes):
        raise CheckpointError(f"{where}: {dims.n_heads} heads ({dims.kv_heads} key/value heads, {dims.head_size} "
                              f"wide) do not fit a {dims.d_model}-wide model.")


def config_int(ckpt: Checkpoint, *keys: str, default: int | None = None) -> int:
    """The first of ``keys`` present in config.json, as an int; a clear error if none is."""
    for key in keys:
        value = ckpt.config.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CheckpointError(f"{ckpt.path / 'config.json'}: {key} must be a positive integer, "
                                      f"not {value!r}.")
            return value
    if default is not None:
        return default
    raise CheckpointError(f"{ckpt.path / 'config.json'}: needs one of {', '.join(keys)}.")


def find_prefix(ckpt: Checkpoint, probe: str, prefixes: tuple[str, ...]) -> str:
    """Which of ``prefixes`` the checkpoint's tensor names carry (``transformer.``, ``bert.``…)."""
    for prefix in prefixes:
        if ckpt.has(prefix + probe):
            return prefix
    raise CheckpointError(
        f"{ckpt.path}: no tensor named {probe!r} (with any of the prefixes {list(prefixes)}); the weights do "
        f"not look like a {ckpt.model_type} model."
    )


def head_blocks(rows: torch.Tensor, n_heads: int) -> list[torch.Tensor]:
    """Split ``[n_heads * d_head, d]`` rows into one ``[d_head, d]`` block per head (head-major layout)."""
    if rows.shape[0] % n_heads:
        raise CheckpointError(f"{rows.shape[0]} rows do not split into {n_heads} heads.")
    return [block.contiguous() for block in rows.chunk(n_heads, dim=0)]


Reader = Callable[[Checkpoint], Adapter]

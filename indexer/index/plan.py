"""Which units (component × layer) a run projects, in what order, through which basis.

One ``[V, d]`` basis per role is built at a time; a unit's basis is that matrix read after the unit's path map
(``unit_basis``: the norms between its vectors and the readout, a ``[d, d]`` map), so a per-layer basis costs no
extra vocabulary-sized copy. Local and Ray executors both go through ``unit_basis``."""

import functools
from collections.abc import Iterable, Iterator

import torch

from indexer.index.compute import Compute
from indexer.index.projector import Part
from indexer.math.basis import (
    ROW_BLOCK,
    Basis,
    BasisMode,
    fold_reader,
    read_basis_blocks,
    read_basis_rows,
    write_basis_blocks,
    write_basis_rows,
)
from indexer.math.carry import path_map
from indexer.model.adapters import Adapter
from indexer.model.adapters.base import Component, Role, Stage

Unit = tuple[str, int]  # (component, layer)


def plan_units(adapter: Adapter, components: list[str] | None) -> list[Unit]:
    """(component, layer) units, writing components first so one basis is held at a time.

    Model-level components (the embedding) are one unit, under layer 0. By default every component this
    checkpoint has is planned (a family's optional biases may be absent) except those marked opt-in: the
    embedding costs vocab² · d and, in a tied model, trivially promotes its own token first.
    """
    names = components or [s.name for s in adapter.available() if s.default]
    specs = [adapter.spec(n) for n in names]
    ordered = [s for s in specs if s.role == "writes"] + [s for s in specs if s.role == "reads"]
    return [(s.name, layer) for s in ordered for layer in adapter.layers(s.name)]


def role_basis(adapter: Adapter, role: str, mode: BasisMode, compute: Compute,
               reader: str = "unembedding") -> Basis:
    """The basis a role's vectors are projected on, on the compute device."""
    # W_U (W_E) is read, converted and folded ROW_BLOCK rows at a time: the basis and one block in memory
    shape = (adapter.dims.vocab_size, adapter.dims.d_model)
    if role == "writes":
        basis = write_basis_rows(adapter.unembedding_blocks(ROW_BLOCK), shape, adapter.final_norm(), mode)
    else:
        blocks = adapter.embedding_blocks(ROW_BLOCK) if reader == "embedding" else adapter.unembedding_blocks(ROW_BLOCK)
        basis = read_basis_rows(blocks, shape, reader, mode)
    return basis.to(compute.device, torch.bfloat16 if compute.precision == "bf16" else None)


def role_rows(adapter: Adapter, role: str, mode: BasisMode, reader: str = "unembedding"
              ) -> Iterator[tuple[int, torch.Tensor]]:
    """(first token, rows) of ``role_basis``'s ``[V, d]`` matrix, bit for bit, ``ROW_BLOCK`` rows at a time (on the
    CPU, without its statistics): the rows stored with a run's vectors (``basis_rows``), so that a stored vector ·
    a stored row is the score the run computed. W_U (W_E) is read from the checkpoint again, in blocks, rather than
    held: the run never holds a second vocabulary-sized matrix for them."""
    shape = (adapter.dims.vocab_size, adapter.dims.d_model)
    if role == "writes":
        return write_basis_blocks(lambda: adapter.unembedding_blocks(ROW_BLOCK), shape, adapter.final_norm(), mode)
    if reader == "embedding":
        return read_basis_blocks(lambda: adapter.embedding_blocks(ROW_BLOCK), shape, mode)
    return read_basis_blocks(lambda: adapter.unembedding_blocks(ROW_BLOCK), shape, mode)


def site_basis(adapter: Adapter, role_basis: Basis, role: Role, layer: int, stage: Stage,
               mode: BasisMode) -> Basis:
    """The basis for vectors that write into (or read from) the stream at ``(layer, stage)``: the role's basis
    after the map of the norms on that site's path (raw: the role's basis). Anything placed at a site — a
    component, an SAE latent at a hook point — is read by the same rule as the site's own writers or readers."""
    if mode == "raw":
        return role_basis
    norms = adapter.path_norms(role, layer, stage)
    return role_basis.at(path_map(norms, role, adapter.dims.d_model, role_basis.matrix.device))


def unit_basis(adapter: Adapter, role_basis: Basis, name: str, layer: int, mode: BasisMode) -> Basis:
    """The basis one unit is projected on: its role's basis after the unit's path map (raw: the role's basis)."""
    if mode == "raw":
        return role_basis
    role: Role = adapter.spec(name).role
    norms = adapter.component_path(name, layer)
    return role_basis.at(path_map(norms, role, adapter.dims.d_model, role_basis.matrix.device))


def unit_vectors(part: Component, mode: BasisMode) -> torch.Tensor:
    """A part's vectors as projected: reading vectors get their input norm folded in."""
    return fold_reader(part.vectors, part.norm, mode) if part.role == "reads" else part.vectors


def unit_parts(parts: Iterable[Component], mode: BasisMode) -> Iterator[Part]:
    """A unit's parts as ``Projector.stream_parts`` takes them, each one's vectors made when it is projected."""
    for p in parts:
        yield Part(p.name, p.layer, p.head, p.expert, int(p.vectors.shape[0]), functools.partial(unit_vectors, p, mode))


def units_with_bases(adapter: Adapter, plan: list[Unit], mode: BasisMode, compute: Compute,
                     reader: str = "unembedding") -> Iterator[tuple[str, int, Basis, list[Component]]]:
    """Yield each unit with its basis, building one basis at a time (writers first, then readers)."""
    basis: Basis | None = None
    role: str | None = None
    for name, layer in plan:
        spec = adapter.spec(name)
        if spec.role != role:
            basis = None  # free the previous basis before building the next
            role = spec.role
            basis = role_basis(adapter, role, mode, compute, reader)
        assert basis is not None
        yield name, layer, unit_basis(adapter, basis, name, layer, mode), adapter.component(name, layer)

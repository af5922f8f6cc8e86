"""Which units (component × layer) a run projects, in what order, through which basis."""

from collections.abc import Iterator

import torch

from indexer.index.compute import Compute
from indexer.math.basis import Basis, BasisMode, fold_reader, read_basis, write_basis
from indexer.model.adapters import Adapter
from indexer.model.adapters.base import Component

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
    if role == "writes":
        basis = write_basis(adapter.unembedding(), adapter.final_norm(), mode)
    else:
        matrix = adapter.embedding() if reader == "embedding" else adapter.unembedding()
        basis = read_basis(matrix, reader, mode)
    return basis.to(compute.device, torch.bfloat16 if compute.precision == "bf16" else None)


def unit_vectors(part: Component, mode: BasisMode) -> torch.Tensor:
    """A part's vectors as projected: reading vectors get their input norm folded in."""
    return fold_reader(part.vectors, part.norm, mode) if part.role == "reads" else part.vectors


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
        yield name, layer, basis, adapter.component(name, layer)

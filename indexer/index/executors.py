"""Where a run's units are projected, behind one interface: ``units(plan)`` yields each unit in plan order with
its basis flags and its projected parts, whoever computed them. The run's writer takes them in that order, so
vector ids do not depend on the executor.

- ``LocalExecutor``: in this process, one basis at a time, each part's chunks computed as the writer takes them;
- ``indexer.index.ray_pool.RayExecutor``: a pool of Ray actors (Ray is imported only when asked for).
"""

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

from indexer.index.compute import Compute
from indexer.index.options import IndexOptions
from indexer.index.plan import Unit, unit_parts, units_with_bases
from indexer.index.projector import Projected, Projector
from indexer.model.adapters import Adapter
from schema.errors import LensdbError

ProjectedUnit = tuple[str, int, dict[str, object], Iterable[Projected]]  # component, layer, basis flags, parts


class Executor(Protocol):
    flags: dict[str, object]  # where the units were computed, recorded in the run's basis_flags

    def units(self, plan: list[Unit]) -> Iterator[ProjectedUnit]: ...


class LocalExecutor:
    def __init__(self, adapter: Adapter, opts: IndexOptions, projector: Projector, compute: Compute) -> None:
        self.adapter, self.opts, self.projector, self.compute = adapter, opts, projector, compute
        self.flags: dict[str, object] = {"executor": "local"}

    def units(self, plan: list[Unit]) -> Iterator[ProjectedUnit]:
        mode = self.opts.basis
        for name, layer, basis, parts in units_with_bases(self.adapter, plan, mode, self.compute,
                                                          self.opts.read_basis):
            if self.opts.lora == "delta":  # a LoRA's update alone: matrices it does not adapt read as zeros
                parts = [p for p in parts if bool(p.vectors.any())]
            role = self.adapter.spec(name).role if self.opts.vectors else None
            yield name, layer, basis.flags, self.projector.stream_parts(unit_parts(parts, mode), basis, role)
            del parts  # before the next unit is read: one layer's vectors in memory, not two


def check_executor(opts: IndexOptions) -> None:
    """Refuse executor options that cannot work, before the store is touched."""
    if opts.executor == "ray":
        from indexer.index.ray_pool import import_ray

        import_ray()
    elif opts.address is not None or opts.ray_workers is not None:
        raise LensdbError("--address and --ray-workers go with --executor ray.")


def executor_for(opts: IndexOptions, checkpoint: Path, adapter: Adapter, projector: Projector,
                 compute: Compute) -> Executor:
    if opts.executor == "ray":
        from indexer.index.ray_pool import RayExecutor

        return RayExecutor(checkpoint, opts, projector.budget)
    return LocalExecutor(adapter, opts, projector, compute)

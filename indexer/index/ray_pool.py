"""The Ray executor: index units (component × layer) computed by a pool of Ray actors, written here.

Each actor opens the checkpoint itself (the path must be readable on every node: a shared filesystem),
builds the basis of the role it is working on once, projects the units it is sent and returns CPU chunks
(``projector.Projected``). The driver hands them to the single writer in plan order, whatever order they finish
in, so vector ids are the same as a local run's. Ray is imported only here and only when asked for.
"""

import os
import socket
from collections import deque
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from indexer.index.compute import DeviceChoice, Precision, resolve_compute
from indexer.index.executors import ProjectedUnit
from indexer.index.options import VERSION, IndexOptions
from indexer.index.plan import Unit, role_basis, unit_basis, unit_parts
from indexer.index.projector import Projected, Projector
from indexer.math.basis import BasisMode
from indexer.model.adapters import adapter_for
from indexer.model.checkpoint import open_checkpoint
from schema.errors import LensdbError

_ROOT = str(Path(__file__).resolve().parents[1])


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise LensdbError("--executor ray needs Ray, which is not installed: pip install 'lensdb[ray]'.") from None
    return ray


class UnitWorker:
    """One actor: the checkpoint opened once, the current role's basis cached, units projected on demand."""

    def __init__(self, checkpoint: str, mode: BasisMode, reader: str, top_k: int, budget: int, device: DeviceChoice,
                 precision: Precision, threads: int, vectors: bool = True) -> None:
        self.checkpoint, self.mode, self.reader, self.vectors = checkpoint, mode, reader, vectors
        self.top_k, self.budget, self.device, self.precision, self.threads = top_k, budget, device, precision, threads
        self.adapter: Any = None
        self.basis: tuple[str, Any] | None = None

    def open(self) -> dict[str, object]:
        """Open the checkpoint (a separate call, so its error reaches the driver as an ordinary one)."""
        torch.set_num_threads(self.threads)
        checkpoint = self.checkpoint
        try:
            self.adapter = adapter_for(open_checkpoint(checkpoint))
        except Exception as err:
            raise LensdbError(f"Ray worker on {socket.gethostname()} cannot open the checkpoint {checkpoint}: "
                              f"{err} (the path must be readable by every Ray worker, e.g. a shared "
                              "filesystem)") from None
        self.compute = resolve_compute(self.device, self.precision)
        self.projector = Projector(self.top_k, self.budget, self.compute)
        return {"host": socket.gethostname(), "version": VERSION, "device": self.compute.device.type}

    def run(self, name: str, layer: int) -> tuple[dict[str, object], list[Projected]]:
        """One unit: the basis flags of its role and each part (head) projected."""
        mode = self.mode
        role = self.adapter.spec(name).role
        if self.basis is None or self.basis[0] != role:
            self.basis = None  # one basis held at a time, as in a local run
            self.basis = (role, role_basis(self.adapter, role, mode, self.compute, self.reader))
        basis = unit_basis(self.adapter, self.basis[1], name, layer, mode)
        parts = self.projector.stream_parts(unit_parts(self.adapter.component(name, layer), mode), basis,
                                            role if self.vectors else None)
        return basis.flags, [replace(p, chunks=list(p.chunks)) for p in parts]  # chunks computed here, then sent


def connect(address: str | None) -> Any:
    """Attach to a running Ray (``address``: ``auto``, ``host:port`` or ``ray://host:10001``) or, with
    ``None``, start a local instance; a process that already called ``ray.init`` keeps its connection."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if address is None:
        # a local instance runs this checkout's code, whichever lensdb the interpreter would import
        kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": os.pathsep.join(
            p for p in (_ROOT, os.environ.get("PYTHONPATH")) if p)}}
    try:
        ray.init(address=address, **kwargs)
    except Exception as err:
        where = address or "a new local instance"
        raise LensdbError(f"cannot connect to Ray at {where}: {type(err).__name__}: {err}") from None
    return ray


def _failure(ray: Any, err: BaseException, what: str) -> LensdbError:
    cause = getattr(err, "cause", None)
    if isinstance(err, ray.exceptions.RayTaskError) and cause is not None:
        err = cause
    reason = str(err) if isinstance(err, LensdbError) else f"{type(err).__name__}: {err}"
    return LensdbError(f"{what} failed on a Ray worker: {reason.strip()}")


class RayExecutor:
    """Units projected by a pool of Ray actors; ``flags`` gains the address, the workers and their devices."""

    def __init__(self, checkpoint: Path, opts: IndexOptions, budget: int) -> None:
        self.checkpoint, self.opts, self.budget = checkpoint, opts, budget
        self.flags: dict[str, object] = {}

    def units(self, plan: list[Unit]) -> Iterator[ProjectedUnit]:
        return remote_units(self.checkpoint, plan, self.opts, self.budget, self.flags)


def remote_units(checkpoint: Path, plan: list[Unit], opts: IndexOptions, budget: int,
                 flags: dict[str, object]) -> Iterator[ProjectedUnit]:
    """Yield each unit of ``plan`` with its basis flags and projected parts, in plan order.

    ``flags`` gains the executor, the address, the number of workers and their devices.
    """
    ray = connect(opts.address)
    n = opts.ray_workers or max(1, int(ray.available_resources().get("CPU", 1)))
    actor = ray.remote(num_cpus=1)(UnitWorker)
    workers = [actor.remote(str(checkpoint), opts.basis, opts.read_basis, opts.top_k, budget, opts.device,
                            opts.precision, 1, opts.vectors) for _ in range(n)]
    try:
        try:
            infos = ray.get([w.open.remote() for w in workers])
        except ray.exceptions.RayError as err:
            raise _failure(ray, err, "opening the checkpoint") from None
        if any(i["version"] != VERSION for i in infos):
            raise LensdbError(f"Ray workers run lensdb {sorted({i['version'] for i in infos})}, this process "
                              f"{VERSION}; install the same version on every node.")
        devices = sorted({str(i["device"]) for i in infos})
        flags.update({"executor": "ray", "address": opts.address, "workers": n, "worker_devices": devices})
        if len(devices) == 1:  # the projections were computed there, not on this process's device
            flags["device"] = devices[0]
        # round-robin, at most two units per worker in flight; results are taken in plan order
        pending: deque[tuple[str, int, Any]] = deque()
        todo = iter(enumerate(plan))
        for i, (name, layer) in todo:
            pending.append((name, layer, workers[i % n].run.remote(name, layer)))
            if len(pending) >= 2 * n:
                break
        while pending:
            name, layer, ref = pending.popleft()
            try:
                basis_flags, parts = ray.get(ref)
            except ray.exceptions.RayError as err:
                raise _failure(ray, err, f"unit {name} layer {layer}") from None
            nxt = next(todo, None)
            if nxt is not None:
                i, (nname, nlayer) = nxt
                pending.append((nname, nlayer, workers[i % n].run.remote(nname, nlayer)))
            yield name, layer, basis_flags, parts
    finally:
        for w in workers:
            ray.kill(w)

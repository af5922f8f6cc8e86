"""The compute step of a run: vectors and a basis in, CPU chunks of top-k tokens and statistics out.

It never touches the store, so it runs in the writer's process (local executor) or in a Ray worker.
"""

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch

from indexer.index.compute import Compute
from indexer.index.faults import pause_point
from indexer.math.basis import Basis, logit_stats
from indexer.math.projection import TopBottom, chunk_rows, chunks, topk_bottomk, workspace_size


@dataclass(frozen=True)
class Chunk:
    """One chunk of a unit's projection, on the CPU: what the writer needs to store its rows."""

    first_index: int
    tb: TopBottom
    mean: torch.Tensor
    std: torch.Tensor
    norm: torch.Tensor
    values: torch.Tensor | None = None
    """float32 ``[n, d]``: the vectors as they met the basis matrix (carried, reader-folded), kept where the part
    stores its vectors (``Projected.role``): a stored basis row · a stored value is the score computed here."""


@dataclass(frozen=True)
class Projected:
    """One component part (a layer, or a head of it) projected: its chunks in order. No vector ids yet.

    ``chunks`` is a list when the part comes back from another process, and a lazy iterator in this one, so
    the writer appends one chunk while the next is computed.
    """

    name: str
    layer: int
    head: int | None
    n: int
    chunks: Iterable[Chunk]
    expert: int | None = None
    role: str | None = None
    """The role whose basis rows read the stored vectors (``writes``/``reads``); None: vectors not stored."""


@dataclass(frozen=True)
class Part:
    """A part to project, its vectors made only when it is projected (a reading part's are a folded copy)."""

    name: str
    layer: int
    head: int | None
    expert: int | None
    n: int
    vectors: Callable[[], torch.Tensor]


def _rows(c: Chunk, a: int, b: int) -> Chunk:
    """Rows ``[a, b)`` of chunk ``c``, as the chunk of a part starting at row ``a``."""
    tb = TopBottom(c.tb.top_scores[a:b], c.tb.top_ids[a:b], c.tb.bottom_scores[a:b], c.tb.bottom_ids[a:b])
    return Chunk(0, tb, c.mean[a:b], c.std[a:b], c.norm[a:b], None if c.values is None else c.values[a:b])


def to_cpu(tb: TopBottom) -> TopBottom:
    return TopBottom(tb.top_scores.float().cpu(), tb.top_ids.cpu(), tb.bottom_scores.float().cpu(),
                     tb.bottom_ids.cpu())


class Projector:
    """Projects vectors on a basis chunk by chunk; owns one logits workspace for the whole run."""

    def __init__(self, top_k: int, budget: int, compute: Compute) -> None:
        self.top_k = top_k
        self.budget = budget
        self.compute = compute
        self._ws: torch.Tensor | None = None

    def _workspace(self, basis: Basis, rows: int) -> torch.Tensor:
        """One logits buffer for the whole run, on the CPU with room for the set extremes (reallocated only if a
        basis needs a bigger or other one)."""
        fast = basis.fast if basis.fast is not None else basis.matrix
        need = workspace_size(rows, basis.vocab_size, fast.device)
        ws = self._ws
        if ws is None or ws.numel() < need or ws.dtype != fast.dtype or ws.device != fast.device:
            ws = self._ws = torch.empty(need, dtype=fast.dtype, device=fast.device)
        return ws

    def chunks(self, vectors: torch.Tensor, basis: Basis, keep: bool = False) -> Iterator[Chunk]:
        """Project ``vectors`` chunk by chunk (lazily, so the writer can append one while the next computes);
        ``keep``: each chunk carries its vectors as they met the basis (``Chunk.values``)."""
        size = chunk_rows(basis.vocab_size, self.budget)
        ws = self._workspace(basis, min(size, vectors.shape[0]))
        for part in chunks(vectors.shape[0], size):
            raw = vectors[part].to(self.compute.device)
            v = basis.prepare(raw)  # carried through the norms on the unit's path, where there are any
            if self.compute.exact:
                tb = topk_bottomk(v, basis.matrix, self.top_k, workspace=ws, stats=True)
            else:  # stats from low-precision logits would be low-precision: from the exact basis instead
                fast = basis.fast if basis.fast is not None else basis.matrix
                tb = topk_bottomk(v, fast, self.top_k, exact_basis=basis.matrix, workspace=ws)
            mean, std = (tb.mean, tb.std) if tb.mean is not None and tb.std is not None else logit_stats(v, basis)
            norm = raw.to(torch.float64).norm(dim=1)  # the vector's own norm, as the checkpoint holds it
            pause_point("projection")
            # a copy: a view would keep the whole layer alive for as long as the writer buffers the chunk
            values = v.to("cpu", torch.float32, copy=True) if keep else None
            yield Chunk(part.start, to_cpu(tb), mean.cpu(), std.cpu(), norm.cpu(), values)

    def stream(self, name: str, layer: int, head: int | None, vectors: torch.Tensor, basis: Basis,
               expert: int | None = None, role: str | None = None) -> Projected:
        """A part whose chunks are computed as the writer takes them; ``role``: store its vectors, read by that
        role's basis rows."""
        return Projected(name, layer, head, int(vectors.shape[0]), self.chunks(vectors, basis, role is not None),
                         expert, role)

    def stream_parts(self, parts: Iterable[Part], basis: Basis, role: str | None = None) -> Iterator[Projected]:
        """Parts that share ``basis`` (a layer's heads, experts), in order: consecutive small parts are stacked into
        one chunk and projected by one GEMM, then handed out part by part (their vector ids unchanged).

        A head has d_head vectors (32 in MiniLM): alone, its GEMM read the whole ``[V, d]`` basis for 32 rows and
        ran at under half the GEMM peak (a default MiniLM index spent 5.1 of its 9.6 GEMM seconds on heads). A
        stack never exceeds one chunk's rows, so it holds no more vectors than a chunk does."""
        size = chunk_rows(basis.vocab_size, self.budget)
        group: list[Part] = []
        for part in parts:
            if group and sum(p.n for p in group) + part.n > size:
                yield from self._stacked(group, basis, role)
                group = []
            group.append(part)
        if group:
            yield from self._stacked(group, basis, role)

    def _stacked(self, group: list[Part], basis: Basis, role: str | None) -> Iterator[Projected]:
        if len(group) == 1:
            p = group[0]
            yield self.stream(p.name, p.layer, p.head, p.vectors(), basis, p.expert, role)
            return
        stacked = list(self.chunks(torch.cat([p.vectors() for p in group]), basis, role is not None))  # one chunk
        start = 0
        for p in group:
            pieces = [_rows(stacked[0], start, start + p.n)] if p.n else []
            yield Projected(p.name, p.layer, p.head, p.n, pieces, p.expert, role)
            start += p.n

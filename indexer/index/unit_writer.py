"""The write step of a run: projected units in, rows appended to the store inside the run's transaction."""

import functools
import threading
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor

import duckdb
import pyarrow as pa
import torch

from indexer.index.faults import pause_point
from indexer.index.projector import Chunk, Projected
from indexer.index.records import (
    basis_batch,
    kth_zscores,
    list_batch,
    pair_batch,
    projection_batch,
    values_batch,
    vector_batch,
)
from indexer.math.token_maps import Pairs
from schema.errors import Cancelled
from schema.ids import peek_id, taken_through
from schema.writer import append_arrow


class UnitWriter:
    """Writes projected units: assigns vector ids in the order it is given units (from the store's counter,
    recorded as taken in ``finish``), and appends their rows from one background thread.

    The DuckDB appends (and the Arrow batches behind them) overlap with the next chunk's GEMM; at most two
    chunks wait at a time, so memory stays at one chunk of logits plus two chunks of top-k rows.
    ``cancel``: when set, the next unit written raises ``Cancelled`` (the run's transaction then rolls back).
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, checkpoint_id: int,
                 cancel: threading.Event | None = None) -> None:
        self.con = con
        self.checkpoint_id = checkpoint_id
        self.cancel = cancel
        self.next_vector = peek_id(con, "vectors")
        self.units: list[tuple] = []
        self.value_blocks: list[tuple] = []  # (first id, last id, role) of parts whose vectors are stored
        self.n_vectors = 0
        self.n_projections = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lensdb-append")
        self._pending: deque[Future[None]] = deque()
        con.execute("CREATE TEMP TABLE staged_tokens AS SELECT * FROM vector_tokens LIMIT 0")
        con.execute("CREATE TEMP TABLE staged_pairs AS SELECT * FROM head_pairs LIMIT 0")

    def stop_if_cancelled(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("the index run was cancelled; nothing of it was written.")

    def write(self, p: Projected) -> None:
        """Write one projected part; its vectors get one contiguous block of ids, recorded in ``vector_units``."""
        self.stop_if_cancelled()
        if p.n:
            self.units.append((self.checkpoint_id, p.name, p.layer, p.head, self.next_vector,
                               self.next_vector + p.n - 1, 0, p.expert))
        if p.n and p.role is not None:
            self.value_blocks.append((self.next_vector, self.next_vector + p.n - 1, p.role))
        self._write_chunks(p.name, p.layer, p.head, p.chunks, p.expert, p.role is not None)

    def _write_chunks(self, name: str, layer: int, head: int | None, parts: Iterable[Chunk],
                      expert: int | None = None, keep: bool = False) -> None:
        for c in parts:
            first = self.next_vector
            self.next_vector += int(c.norm.shape[0])
            rows = projection_batch(first, c.tb, c.mean, c.std)
            vecs = vector_batch(first, self.checkpoint_id, name, layer, head, c.first_index, c.norm, c.mean, c.std,
                                expert, kth_zscores(rows, int(c.tb.top_scores.shape[1])))
            values = values_batch(first, c.values) if keep and c.values is not None else None
            self._submit(functools.partial(self._append, vecs, rows, lists=list_batch(first, c.tb), values=values))

    def basis_rows(self, role: str, matrix: torch.Tensor, block: int = 8192) -> None:
        """The rows of a role's basis matrix that read this run's stored vectors, in token order."""
        for start in range(0, int(matrix.shape[0]), block):
            self._submit(functools.partial(append_arrow, self.con, "basis_rows",
                                           basis_batch(self.checkpoint_id, role, matrix[start:start + block], start)))

    def pairs(self, name: str, layer: int, head: int, p: Pairs) -> None:
        """One head map: a vector row carrying the map's statistics, and its pairs staged for head_pairs."""
        self.stop_if_cancelled()
        vid = self.next_vector
        self.next_vector += 1
        self.units.append((self.checkpoint_id, name, layer, head, vid, vid, 0, None))
        one = torch.ones(1, dtype=torch.float64)
        rows = pair_batch(vid, p)
        vecs = vector_batch(vid, self.checkpoint_id, name, layer, head, 0, one * p.norm, one * p.mean, one * p.std,
                            zk=kth_zscores(rows, int(p.top_scores.shape[0])))
        self._submit(functools.partial(self._append, vecs, rows, "staged_pairs"))

    def _append(self, vecs: pa.Table, rows: pa.Table, staged: str = "staged_tokens",
                lists: pa.Table | None = None, values: pa.Table | None = None) -> None:
        append_arrow(self.con, "vectors", vecs)
        append_arrow(self.con, staged, rows)
        if lists is not None:  # ids ascend across appends, so vector_lists stays sorted by vector_id
            append_arrow(self.con, "vector_lists", lists)
        if values is not None:  # likewise vector_values
            append_arrow(self.con, "vector_values", values)
        self.n_vectors += vecs.num_rows
        self.n_projections += rows.num_rows
        pause_point("write")

    def _submit(self, job: Callable[[], None]) -> None:
        while len(self._pending) >= 2:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(job))

    def drain_pending(self) -> None:
        """Wait for the appends in flight (the connection is then free for this thread)."""
        while self._pending:
            self._pending.popleft().result()

    def drain(self) -> None:
        """Wait for every append; re-raises the first error. Must run before the transaction ends."""
        try:
            self.drain_pending()
        finally:
            for fut in self._pending:
                fut.cancel()
            self._pool.shutdown(wait=True)

    def finish(self) -> None:
        """Move staged rows into vector_tokens sorted by token_id, so token lookups skip row groups."""
        self.drain()
        self.stop_if_cancelled()
        self.con.execute("INSERT INTO vector_tokens BY NAME SELECT * FROM staged_tokens ORDER BY token_id, vector_id")
        self.con.execute("INSERT INTO head_pairs BY NAME SELECT * FROM staged_pairs ORDER BY token_id, vector_id")
        taken_through(self.con, "vectors", self.next_vector - 1)
        if self.units:
            cols = ["checkpoint_id", "component", "layer", "head", "first_vector_id", "last_vector_id", "first_index",
                    "expert"]
            append_arrow(self.con, "vector_units", pa.table(
                {c: pa.array([u[i] for u in self.units], pa.string() if c == "component" else pa.int64())
                 for i, c in enumerate(cols)}))
        if self.value_blocks:
            append_arrow(self.con, "value_blocks", pa.table({
                "checkpoint_id": pa.array([self.checkpoint_id] * len(self.value_blocks), pa.int32()),
                "first_vector_id": pa.array([b[0] for b in self.value_blocks], pa.int64()),
                "last_vector_id": pa.array([b[1] for b in self.value_blocks], pa.int64()),
                "role": pa.array([b[2] for b in self.value_blocks], pa.string())}))
        self.con.execute("DROP TABLE staged_tokens")
        self.con.execute("DROP TABLE staged_pairs")

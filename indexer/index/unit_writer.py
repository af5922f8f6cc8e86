"""The write step of a run: projected units in, rows appended to the store inside the run's transaction.

Token rows are not staged and sorted again at commit: the writer buffers them as numpy columns up to a run of
``run_rows`` rows, sorts that run by token id (a stable radix sort, linear in its rows) and appends it to
``vector_tokens`` in sorted slices, one gathered while the one before is inserted, beside the run's ``vectors`` and
``vector_lists`` rows. A checkpoint that fits one run (every checkpoint up to ``run_rows`` token rows) is stored
exactly as before, one run sorted by (token_id, vector_id); a larger one as several such runs, each of whose row
groups spans a narrow range of token ids, so a lookup reads about one row group per run. Memory: one run of
buffered rows (12 B each: a row's token, score and z-score; its vector id, side and rank follow from its place) and
the run being appended (those 12 B, its order, 8 B, and two sorted slices: one inserted, the next gathered),
whatever the size of the model.
"""

import functools
import threading
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor

import duckdb
import numpy as np
import pyarrow as pa
import torch

from indexer.index.faults import pause_point
from indexer.index.projector import Chunk, Projected
from indexer.index.records import (
    TOKEN_ROW_BYTES,
    basis_batch,
    joined_columns,
    kth_zscores,
    list_batch,
    pair_batch,
    sorted_token_slices,
    token_values,
    values_batch,
    vector_batch,
)
from indexer.math.token_maps import Pairs
from schema.errors import Cancelled
from schema.ids import peek_id, taken_through
from schema.runs import note_runs
from schema.writer import append_arrow


def run_rows(chunk_bytes: int) -> int:
    """Token rows buffered per sorted run: four chunks' worth of bytes as the sort held them before session 12 (a
    sorted row, its gathered copy and its order; 64 MiB chunks on the CPU: ~5 M rows, MiniLM's whole index in one
    run; 1 GiB chunks on a GPU: ~80 M rows). Kept at that length, so runs and lookups are as they were: a run now
    costs 12 B a row while buffered and 20 B a row (and two sorted slices) while it is appended."""
    return max(1, 4 * chunk_bytes // (2 * TOKEN_ROW_BYTES + 8))


RUN_ROWS = run_rows(64 << 20)


TOKEN_BLOCK_ROWS = 1 << 20
"""Token rows a buffered run keeps in one block per column. A chunk's columns (~50 k rows) are mostly below glibc's
mmap threshold, so a run held chunk by chunk sat in the heap, which cannot give back memory freed below its top:
a 5 M-row run of a Llama-shaped index held ~130 MiB of heap until the run was sorted, and the sort's copies came
on top. Joined every ``TOKEN_BLOCK_ROWS`` rows, the chunks' pieces are reused by the next chunks and the blocks are
mappings of their own, each returned to the system as the sort consumes it."""

VALUE_BYTES = 4 << 20
"""Bytes of stored vectors (``vector_values``) buffered before they are appended: they go in their own batches, in
vector-id order, not with the token run, whose rows are ~40× smaller per vector (a run of Llama-sized vectors would
otherwise hold every vector of the run in float32). One batch is buffered while the one before is appended; 4 MiB
rather than 16 (with DuckDB's 32 MiB ``memory_limit``, ``indexer.index.memory``) took 36 MiB off a Llama-shaped run's
peak, in the same time."""


class _Run:
    """Rows of consecutive chunks waiting to be appended: token columns (sorted and appended together, as one
    run), and the vector rows and vector lists, which need no sort and may go ahead (``take_vectors``)."""

    def __init__(self) -> None:
        self.vectors: list[pa.Table] = []
        self.tokens: list[dict[str, np.ndarray]] = []  # blocks of TOKEN_BLOCK_ROWS rows, then the latest chunks
        self.lists: list[pa.Table] = []
        self.rows = 0
        self.vector_bytes = 0
        self.first_id = 0  # the run's vectors are consecutive from here, with k token rows a side
        self.k = 0
        self._blocks = 0
        self._loose_rows = 0

    def takes(self, first_id: int, k: int) -> bool:
        """Whether a chunk of vectors from ``first_id`` with k rows a side continues this run (an empty run takes
        any): its token rows keep only their values, their places give the rest (``records.row_places``)."""
        return not self.tokens or (k == self.k and first_id == self.first_id + self.rows // (2 * k))

    def add(self, vectors: pa.Table, tokens: dict[str, np.ndarray], lists: pa.Table, first_id: int, k: int) -> None:
        """One chunk's rows; its ``tokens`` are ``records.token_values`` of vectors from ``first_id`` (``takes``)."""
        if not self.tokens:
            self.first_id, self.k = first_id, k
        self.vectors.append(vectors)
        self.tokens.append(tokens)
        self.lists.append(lists)
        n = len(tokens["token_id"])
        self.rows += n
        self._loose_rows += n
        if self._loose_rows >= TOKEN_BLOCK_ROWS:  # the chunks since the last block become one
            self.tokens[self._blocks :] = [joined_columns(self.tokens[self._blocks :])]
            self._blocks += 1
            self._loose_rows = 0
        self.vector_bytes += vectors.nbytes + lists.nbytes

    def take_vectors(self) -> tuple[list[pa.Table], list[pa.Table]]:
        """The buffered vector rows and lists, handed over and forgotten here."""
        vectors, lists, self.vectors, self.lists, self.vector_bytes = self.vectors, self.lists, [], [], 0
        return vectors, lists


class UnitWriter:
    """Writes projected units: assigns vector ids in the order it is given units (from the store's counter,
    recorded as taken in ``finish``), and appends their rows from one background thread.

    The DuckDB appends (and the sort and Arrow batches behind them) overlap with the next chunks' GEMM; one run
    is appended while the next is buffered, so memory stays at one chunk of logits plus two runs of token rows.
    ``cancel``: when set, the next unit written raises ``Cancelled`` (the run's transaction then rolls back).
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, checkpoint_id: int,
                 cancel: threading.Event | None = None, run_rows: int = RUN_ROWS,
                 role_of: Callable[[str], str] = lambda name: "writes", *, dictionary_id: int | None = None) -> None:
        """``role_of``: a component's role as its adapter declares it (writes or reads), kept with each unit;
        ``run_rows``: token rows buffered into one sorted run before it is appended; ``dictionary_id``: a
        dictionary's run, whose every vector and unit names it."""
        self.con = con
        self.checkpoint_id = checkpoint_id
        self.cancel = cancel
        self.run_rows = max(1, run_rows)
        self.role_of = role_of
        self.dictionary_id = dictionary_id
        self.next_vector = peek_id(con, "vectors")
        self.first_vector = self.next_vector
        self.run_starts: list[int] = []  # the first vector id of each sorted run appended (``schema.runs``)
        self.units: list[tuple] = []
        self.value_blocks: list[tuple] = []  # (first id, last id, role) of parts whose vectors are stored
        self.n_vectors = 0
        self.n_projections = 0
        self.n_runs = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lensdb-append")
        self._gather = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lensdb-gather")  # a run's sorted slices
        self._pending: deque[Future[None]] = deque()
        self._run: _Run = _Run()
        self._values: list[pa.Table] = []
        self._value_bytes = 0
        con.execute("CREATE TEMP TABLE staged_pairs AS SELECT * FROM head_pairs LIMIT 0")

    def stop_if_cancelled(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("the index run was cancelled; nothing of it was written.")

    def write(self, p: Projected) -> None:
        """Write one projected part; its vectors get one contiguous block of ids, recorded in ``vector_units``."""
        self.stop_if_cancelled()
        if p.n:
            self.units.append((self.checkpoint_id, p.name, p.layer, p.head, self.next_vector,
                               self.next_vector + p.n - 1, 0, p.expert, self.role_of(p.name), self.dictionary_id))
        if p.n and p.role is not None:
            self.value_blocks.append((self.next_vector, self.next_vector + p.n - 1, p.role))
        self._write_chunks(p.name, p.layer, p.head, p.chunks, p.expert, p.role is not None)

    def _write_chunks(self, name: str, layer: int, head: int | None, parts: Iterable[Chunk],
                      expert: int | None = None, keep: bool = False) -> None:
        for c in parts:
            first, k = self.next_vector, int(c.tb.top_scores.shape[1])
            self.next_vector += int(c.norm.shape[0])
            if not self._run.takes(first, k):
                self.flush()
            tokens = token_values(c.tb, c.mean, c.std)
            self._run.add(vector_batch(first, self.checkpoint_id, name, layer, head, c.first_index, c.norm, c.mean,
                                       c.std, expert, self.dictionary_id, kth_zscores(tokens["zscore"], k)),
                          tokens, list_batch(first, c.tb), first, k)
            if keep and c.values is not None:
                self._values.append(values_batch(first, c.values))
                self._value_bytes += self._values[-1].nbytes
                if self._value_bytes >= VALUE_BYTES:
                    self._flush_values()
            if self._run.rows >= self.run_rows:
                self.flush()
            elif self._run.vector_bytes >= VALUE_BYTES:  # appended while later chunks are built, not with the run
                self._submit(functools.partial(self._append_vectors, *self._run.take_vectors()))

    def flush(self) -> None:
        """Hand the buffered run to the append thread: sorted by token there, appended as one run; then the
        buffered stored vectors."""
        run, self._run = self._run, _Run()
        if run.tokens:
            self._submit(functools.partial(self._append_run, run))
        self._flush_values()

    def _flush_values(self) -> None:
        """Hand the buffered stored vectors to the append thread (ids ascend, so vector_values stays sorted)."""
        values, self._values, self._value_bytes = self._values, [], 0
        if values:
            self._submit(functools.partial(append_arrow, self.con, "vector_values", pa.concat_tables(values)))

    def basis_rows(self, role: str, blocks: Iterable[tuple[int, torch.Tensor]]) -> None:
        """The rows of a role's basis matrix that read this run's stored vectors, as (first token, rows) blocks in
        token order (``indexer.index.plan.role_rows``): blocks gathered into batches of about ``VALUE_BYTES``, one
        built while the one before is appended (an insert of 1024 rows of d = 768 cost ~20% more per row)."""
        self.flush()
        batch: list[pa.Table] = []
        for start, rows in blocks:
            batch.append(basis_batch(self.checkpoint_id, role, rows, start))
            if sum(b.nbytes for b in batch) >= VALUE_BYTES:
                self._submit(functools.partial(append_arrow, self.con, "basis_rows", pa.concat_tables(batch)))
                batch = []
        if batch:
            self._submit(functools.partial(append_arrow, self.con, "basis_rows", pa.concat_tables(batch)))

    def pairs(self, name: str, layer: int, head: int, p: Pairs) -> None:
        """One head map: a vector row carrying the map's statistics, and its pairs staged for head_pairs."""
        self.stop_if_cancelled()
        vid = self.next_vector
        self.next_vector += 1
        self.units.append((self.checkpoint_id, name, layer, head, vid, vid, 0, None, "pairs", None))
        one = torch.ones(1, dtype=torch.float64)
        rows = pair_batch(vid, p)
        vecs = vector_batch(vid, self.checkpoint_id, name, layer, head, 0, one * p.norm, one * p.mean, one * p.std,
                            zk=kth_zscores(rows.column("zscore").to_numpy(), int(p.top_scores.shape[0])))
        self.flush()  # the buffered vectors come first: vector rows stay in id order
        self._submit(functools.partial(self._append_pairs, vecs, rows))

    def _append_pairs(self, vecs: pa.Table, rows: pa.Table) -> None:
        append_arrow(self.con, "vectors", vecs)
        append_arrow(self.con, "staged_pairs", rows)
        self.n_vectors += vecs.num_rows
        self.n_projections += rows.num_rows
        pause_point("write")

    def _append_vectors(self, vectors: list[pa.Table], lists: list[pa.Table]) -> None:
        if vectors:
            append_arrow(self.con, "vectors", pa.concat_tables(vectors))
            # ids ascend from batch to batch, so vector_lists stays sorted by vector_id
            append_arrow(self.con, "vector_lists", pa.concat_tables(lists))
            self.n_vectors += sum(v.num_rows for v in vectors)

    def _append_run(self, run: "_Run") -> None:
        """Sort the run and append it slice by slice: each slice is gathered on a second thread while the one before
        is inserted (DuckDB's insert of a slice runs on one core), and the run's join and sort while its buffered
        vector rows are appended."""
        self.run_starts.append(run.first_id)
        slices = sorted_token_slices(run.tokens, run.first_id, run.k)  # empties run.tokens: ``run`` pins nothing
        following = self._gather.submit(next, slices, None)
        self._append_vectors(*run.take_vectors())
        while (tokens := following.result()) is not None:
            following = self._gather.submit(next, slices, None)
            append_arrow(self.con, "vector_tokens", tokens)
            self.n_projections += tokens.num_rows
            del tokens  # freed before the next slice is waited for
        self.n_runs += 1
        pause_point("write")

    def _submit(self, job: Callable[[], None]) -> None:
        while self._pending:  # one append in flight: two runs in memory at most
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(job))

    def wait(self) -> None:
        """Wait for the appends in flight; what is buffered stays buffered."""
        while self._pending:
            self._pending.popleft().result()

    def drain_pending(self) -> None:
        """Append what is buffered and wait for the appends in flight (the connection is then free for this
        thread)."""
        self.flush()
        self.wait()

    def drain(self) -> None:
        """Wait for every append; re-raises the first error. Must run before the transaction ends."""
        try:
            self.drain_pending()
        finally:
            for fut in self._pending:
                fut.cancel()
            self._pool.shutdown(wait=True)
            self._gather.shutdown(wait=True)

    def finish(self) -> None:
        """Append the last run, then the staged head-map pairs sorted by token_id (token lookups skip row groups)."""
        self.flush()
        self.drain()
        self.stop_if_cancelled()
        self.con.execute("INSERT INTO head_pairs BY NAME SELECT * FROM staged_pairs ORDER BY token_id, vector_id")
        if self.next_vector > self.first_vector:  # the head pairs lie in the first run's vector ids
            note_runs(self.con, sorted({self.first_vector, *self.run_starts}))
        taken_through(self.con, "vectors", self.next_vector - 1)
        if self.units:
            cols = ["checkpoint_id", "component", "layer", "head", "first_vector_id", "last_vector_id", "first_index",
                    "expert", "role", "dictionary_id"]
            append_arrow(self.con, "vector_units", pa.table(
                {c: pa.array([u[i] for u in self.units], pa.string() if c in ("component", "role") else pa.int64())
                 for i, c in enumerate(cols)}))
        if self.value_blocks:
            append_arrow(self.con, "value_blocks", pa.table({
                "checkpoint_id": pa.array([self.checkpoint_id] * len(self.value_blocks), pa.int32()),
                "first_vector_id": pa.array([b[0] for b in self.value_blocks], pa.int64()),
                "last_vector_id": pa.array([b[1] for b in self.value_blocks], pa.int64()),
                "role": pa.array([b[2] for b in self.value_blocks], pa.string())}))
        self.con.execute("DROP TABLE staged_pairs")

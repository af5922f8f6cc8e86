"""One index run: checkpoint → adapter → vectors → projection → Arrow → store, in one transaction.

Everything that can be checked from headers (folder, config, tensor names and shapes, tokenizer) is checked
before the database is opened. The run then writes inside a single transaction: an error or an interrupt
anywhere leaves the file exactly as it was (a file the run created is removed).
"""

import functools
import json
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

import duckdb
import pyarrow as pa
import torch
from pydantic import BaseModel, Field
from tqdm import tqdm

from indexer import headmaps
from indexer.adapters import Adapter, adapter_for
from indexer.adapters.base import Component
from indexer.basis import Basis, BasisMode, fold_reader, logit_stats, read_basis, write_basis
from indexer.checkpoint import Checkpoint, open_checkpoint
from indexer.compute import Compute, DeviceChoice, Precision, matmul_mode, resolve_compute
from indexer.errors import CheckpointError
from indexer.faults import pause_point
from indexer.heads import Pairs
from indexer.projection import TopBottom, chunk_rows, chunks, topk_bottomk
from indexer.records import list_batch, pair_batch, projection_batch, token_batch, vector_batch
from indexer.vocab import Vocabulary, load_vocabulary
from schema.errors import LensdbError
from schema.store import append_arrow, fill_token_forms, next_id, writer

VERSION = "0.1.0"
_STEP = re.compile(r"(?:checkpoint|step|global_step)[-_]?(\d+)$")


class IndexOptions(BaseModel):
    name: str | None = Field(None, description="model name; default: the folder name")
    top_k: int = Field(50, ge=1, le=1000, description="tokens kept per vector and side")
    basis: BasisMode = Field("folded", description="folded (TransformerLens-style) or raw")
    components: list[str] | None = Field(None, description="components to index; default: all")
    replace: bool = Field(False, description="re-index a checkpoint that is already in the store")
    chunk_mb: int | None = Field(None, ge=1, description="memory for one chunk of logits, in MiB "
                                 "(default 64 on the CPU, 1024 on CUDA)")
    device: DeviceChoice = Field("auto", description="cpu, cuda, or auto (CUDA when present)")
    precision: Precision = Field("fp32", description="fp32 (exact), or tf32/bf16 candidates rescored in fp32 (CUDA)")
    label: str | None = Field(None, description="checkpoint label; default: the folder name")
    step: int | None = Field(None, ge=0, description="training step; default: from the folder name or "
                             "trainer_state.json")
    head_maps: bool = Field(False, description="index attention heads as token maps: exact top OV/QK pairs, "
                            "SVD directions, and factors for row queries (needs attention components)")
    pair_vocab: str = Field("all", description="tokens head-map pairs may use: all, ascii, alnum, or a file")
    svd: int = Field(4, ge=1, le=64, description="singular directions kept per head map (with head_maps)")
    read_basis: Literal["unembedding", "embedding"] = Field(
        "unembedding", description="matrix that reads what reading vectors read: the unembedding or the "
        "input embedding (they differ in untied models such as Pythia and Llama)")
    executor: Literal["local", "ray"] = Field("local", description="where units are projected: in this process "
                                              "(local) or by a pool of Ray actors (ray); rows are written here")
    address: str | None = Field(None, description="Ray address with executor ray: auto, host:port or "
                                "ray://host:10001; default: start a local instance")
    ray_workers: int | None = Field(None, ge=1, description="Ray actors with executor ray; default: one per CPU "
                                    "of the cluster")


class IndexResult(BaseModel):
    status: Literal["indexed", "unchanged"]
    model: str
    checkpoint: str
    content_hash: str
    n_vectors: int
    n_projections: int
    seconds: float
    message: str


def checkpoint_step(ckpt: Checkpoint) -> int | None:
    """Training step from the folder name (``checkpoint-500``) or ``trainer_state.json``."""
    return folder_step(ckpt.path)


def name_step(name: str) -> int | None:
    """The step a folder or revision name carries: ``checkpoint-500``, ``step1000``, ``global_step20``."""
    m = _STEP.search(name)
    return int(m.group(1)) if m else None


def folder_step(folder: Path) -> int | None:
    """Training step of a checkpoint folder from its name or its ``trainer_state.json``."""
    step = name_step(folder.name)
    if step is not None:
        return step
    state = folder / "trainer_state.json"
    if state.exists():
        try:
            return int(json.loads(state.read_text())["global_step"])
        except (ValueError, KeyError, TypeError):
            return None
    return None


def default_name(ckpt: Checkpoint) -> str:
    folder = ckpt.path.parent if _STEP.search(ckpt.path.name) else ckpt.path
    return folder.name.lower()


def _plan(adapter: Adapter, components: list[str] | None) -> list[tuple[str, int]]:
    """(component, layer) units, writing components first so one basis is held at a time.

    Model-level components (the embedding) are one unit, under layer 0. By default every component this
    checkpoint has is planned (a family's optional biases may be absent) except those marked opt-in: the
    embedding costs vocab² · d and, in a tied model, trivially promotes its own token first.
    """
    names = components or [s.name for s in adapter.available() if s.default]
    specs = [adapter.spec(n) for n in names]
    ordered = [s for s in specs if s.role == "writes"] + [s for s in specs if s.role == "reads"]
    return [(s.name, layer) for s in ordered for layer in adapter.layers(s.name)]


@dataclass(frozen=True)
class Chunk:
    """One chunk of a unit's projection, on the CPU: what the writer needs to store its rows."""

    first_index: int
    tb: TopBottom
    mean: torch.Tensor
    std: torch.Tensor
    norm: torch.Tensor


@dataclass(frozen=True)
class Projected:
    """One component part (a layer, or a head of it) projected: its chunks in order. No vector ids yet."""

    name: str
    layer: int
    head: int | None
    n: int
    chunks: list[Chunk]


class Projector:
    """The compute step: vectors and a basis in, CPU chunks out. Owns one logits workspace for the run.

    It never touches the store, so it runs in the writer's process (local executor) or in a Ray worker.
    """

    def __init__(self, top_k: int, budget: int, compute: Compute) -> None:
        self.top_k = top_k
        self.budget = budget
        self.compute = compute
        self._ws: torch.Tensor | None = None

    def _workspace(self, basis: Basis, rows: int) -> torch.Tensor:
        """One logits buffer for the whole run (reallocated only if a basis needs a bigger or other one)."""
        fast = basis.fast if basis.fast is not None else basis.matrix
        need = rows * basis.vocab_size
        ws = self._ws
        if ws is None or ws.numel() < need or ws.dtype != fast.dtype or ws.device != fast.device:
            ws = self._ws = torch.empty(need, dtype=fast.dtype, device=fast.device)
        return ws

    def chunks(self, vectors: torch.Tensor, basis: Basis) -> Iterator[Chunk]:
        """Project ``vectors`` chunk by chunk (lazily, so the writer can append one while the next computes)."""
        size = chunk_rows(basis.vocab_size, self.budget)
        ws = self._workspace(basis, min(size, vectors.shape[0]))
        for part in chunks(vectors.shape[0], size):
            v = vectors[part].to(self.compute.device)
            if self.compute.exact:
                tb = topk_bottomk(v, basis.matrix, self.top_k, workspace=ws)
            else:
                fast = basis.fast if basis.fast is not None else basis.matrix
                tb = topk_bottomk(v, fast, self.top_k, exact_basis=basis.matrix, workspace=ws)
            mean, std = logit_stats(v, basis)
            norm = v.to(torch.float64).norm(dim=1)
            pause_point("projection")
            yield Chunk(part.start, _cpu(tb), mean.cpu(), std.cpu(), norm.cpu())

    def project(self, name: str, layer: int, head: int | None, vectors: torch.Tensor, basis: Basis) -> Projected:
        """A whole part at once (what a remote worker returns)."""
        return Projected(name, layer, head, int(vectors.shape[0]), list(self.chunks(vectors, basis)))


class _Writer:
    """Writes projected units: assigns vector ids in the order it is given units, and appends their rows
    from one background thread.

    The DuckDB appends (and the Arrow batches behind them) overlap with the next chunk's GEMM; at most two
    chunks wait at a time, so memory stays at one chunk of logits plus two chunks of top-k rows.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, checkpoint_id: int, top_k: int, budget: int,
                 compute: Compute) -> None:
        self.con = con
        self.checkpoint_id = checkpoint_id
        self.projector = Projector(top_k, budget, compute)
        self.next_vector = next_id(con, "vectors", "vector_id")
        self.units: list[tuple] = []
        self.n_vectors = 0
        self.n_projections = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lensdb-append")
        self._pending: deque[Future[None]] = deque()
        con.execute("CREATE TEMP TABLE staged_tokens AS SELECT * FROM vector_tokens LIMIT 0")
        con.execute("CREATE TEMP TABLE staged_pairs AS SELECT * FROM head_pairs LIMIT 0")

    def project(self, name: str, layer: int, head: int | None, vectors: torch.Tensor, basis: Basis) -> None:
        """Project one unit here and write it."""
        self.write(name, layer, head, int(vectors.shape[0]), self.projector.chunks(vectors, basis))

    def write(self, name: str, layer: int, head: int | None, n: int, parts: Iterable[Chunk]) -> None:
        """Write one projected unit; its vectors get one contiguous block of ids, recorded in ``vector_units``."""
        if n:
            self.units.append((self.checkpoint_id, name, layer, head, self.next_vector, self.next_vector + n - 1, 0))
        for c in parts:
            first = self.next_vector
            self.next_vector += int(c.norm.shape[0])
            vecs = vector_batch(first, self.checkpoint_id, name, layer, head, c.first_index, c.norm, c.mean, c.std)
            rows = projection_batch(first, c.tb, c.mean, c.std)
            self._submit(functools.partial(self._append, vecs, rows, lists=list_batch(first, c.tb)))

    def write_projected(self, p: Projected) -> None:
        self.write(p.name, p.layer, p.head, p.n, p.chunks)

    def pairs(self, name: str, layer: int, head: int, p: Pairs) -> None:
        """One head map: a vector row carrying the map's statistics, and its pairs staged for head_pairs."""
        vid = self.next_vector
        self.next_vector += 1
        self.units.append((self.checkpoint_id, name, layer, head, vid, vid, 0))
        one = torch.ones(1, dtype=torch.float64)
        vecs = vector_batch(vid, self.checkpoint_id, name, layer, head, 0, one * p.norm, one * p.mean, one * p.std)
        self._submit(functools.partial(self._append, vecs, pair_batch(vid, p), "staged_pairs"))

    def _append(self, vecs: pa.Table, rows: pa.Table, staged: str = "staged_tokens",
                lists: pa.Table | None = None) -> None:
        append_arrow(self.con, "vectors", vecs)
        append_arrow(self.con, staged, rows)
        if lists is not None:  # ids ascend across appends, so vector_lists stays sorted by vector_id
            append_arrow(self.con, "vector_lists", lists)
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
            while self._pending:
                self._pending.popleft().result()
        finally:
            for fut in self._pending:
                fut.cancel()
            self._pool.shutdown(wait=True)

    def finish(self) -> None:
        """Move staged rows into vector_tokens sorted by token_id, so token lookups skip row groups."""
        self.drain()
        self.con.execute("INSERT INTO vector_tokens SELECT * FROM staged_tokens ORDER BY token_id, vector_id")
        self.con.execute("INSERT INTO head_pairs SELECT * FROM staged_pairs ORDER BY token_id, vector_id")
        if self.units:
            cols = ["checkpoint_id", "component", "layer", "head", "first_vector_id", "last_vector_id", "first_index"]
            append_arrow(self.con, "vector_units", pa.table(
                {c: pa.array([u[i] for u in self.units], pa.string() if c == "component" else pa.int64())
                 for i, c in enumerate(cols)}))
        self.con.execute("DROP TABLE staged_tokens")
        self.con.execute("DROP TABLE staged_pairs")


def _cpu(tb: TopBottom) -> TopBottom:
    return TopBottom(tb.top_scores.float().cpu(), tb.top_ids.cpu(), tb.bottom_scores.float().cpu(),
                     tb.bottom_ids.cpu())


def _vocab_id(con: duckdb.DuckDBPyConnection, vocab: Vocabulary) -> int:
    h = vocab.content_hash()
    row = con.execute("SELECT vocab_id FROM vocabularies WHERE content_hash = ?", [h]).fetchone()
    if row:
        return int(row[0])
    vocab_id = next_id(con, "vocabularies", "vocab_id")
    con.execute("INSERT INTO vocabularies VALUES (?, ?, ?, ?)", [vocab_id, h, vocab.size, vocab.kind])
    append_arrow(con, "tokens", token_batch(vocab_id, vocab))
    fill_token_forms(con, vocab_id)
    return vocab_id


def _model_id(con: duckdb.DuckDBPyConnection, name: str, adapter: Adapter, vocab_id: int) -> int:
    d = adapter.dims
    row = con.execute(
        "SELECT model_id, family, vocab_id, d_model, n_layers, d_ff FROM models WHERE name = ?", [name]
    ).fetchone()
    if row:
        if (row[1], row[2], row[3], row[4], row[5]) != (adapter.family, vocab_id, d.d_model, d.n_layers, d.d_ff):
            raise LensdbError(
                f"model {name!r} is already in the store with a different architecture or vocabulary; "
                "its checkpoints must share both. Pass another --name."
            )
        return int(row[0])
    model_id = next_id(con, "models", "model_id")
    con.execute(
        "INSERT INTO models VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [model_id, name, adapter.family, adapter.ckpt.model_type, vocab_id, d.d_model, d.n_layers, d.d_ff,
         d.n_heads],
    )
    return model_id


def _delete_checkpoint(con: duckdb.DuckDBPyConnection, checkpoint_id: int) -> None:
    con.execute(
        "DELETE FROM vector_tokens WHERE vector_id IN (SELECT vector_id FROM vectors WHERE checkpoint_id = ?)",
        [checkpoint_id],
    )
    for table in ("head_pairs", "vector_lists"):
        con.execute(
            f"DELETE FROM {table} WHERE vector_id IN (SELECT vector_id FROM vectors WHERE checkpoint_id = ?)",
            [checkpoint_id],
        )
    for table in ("vectors", "vector_units", "head_factors", "bases", "index_runs", "checkpoints"):
        con.execute(f"DELETE FROM {table} WHERE checkpoint_id = ?", [checkpoint_id])


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


def _units(adapter: Adapter, plan: list[tuple[str, int]], mode: BasisMode,
           compute: Compute, reader: str = "unembedding") -> Iterator[tuple[str, int, Basis, list[Component]]]:
    """Yield each unit with its basis, building one basis at a time (writers first, then readers)."""
    basis: Basis | None = None
    role: str | None = None
    for name, layer in plan:
        spec = adapter.spec(name)
        if spec.role != role:
            basis = None
            role = spec.role
            basis = role_basis(adapter, role, mode, compute, reader)
        assert basis is not None
        yield name, layer, basis, adapter.component(name, layer)


def _index_heads(out: _Writer, adapter: Adapter, vocab: Vocabulary, opts: IndexOptions, compute: Compute,
                 progress: bool) -> dict:
    """The head-map phase (see ``indexer.headmaps``): both bases at once, one layer of heads at a time."""
    mode = opts.basis
    fast = torch.bfloat16 if compute.precision == "bf16" else None
    write = write_basis(adapter.unembedding(), adapter.final_norm(), mode).to(compute.device, fast)
    reader = adapter.embedding() if opts.read_basis == "embedding" else adapter.unembedding()
    read = read_basis(reader, opts.read_basis, mode).to(compute.device, fast)
    allowed = headmaps.allowed_tokens(vocab, opts.pair_vocab)
    factors_all = []
    for layer in tqdm(range(adapter.dims.n_layers), disable=not progress, desc="head maps", leave=False):
        for f in headmaps.layer_factors(adapter, layer, mode):
            for name, p in headmaps.head_pairs(f, write, read, opts.top_k, allowed):
                out.pairs(name, layer, f.head, _cpu_pairs(p))
            for name, role, vecs in headmaps.svd_vectors(f, opts.svd):
                out.project(name, layer, f.head, vecs, write if role == "writes" else read)
            factors_all.append(f)
    out.drain_pending()
    append_arrow(out.con, "head_factors", headmaps.factor_rows(out.checkpoint_id, factors_all))
    for role, basis in (("writes", write), ("reads", read)):
        append_arrow(out.con, "bases", headmaps.basis_row(out.checkpoint_id, role, basis))
    return {"pair_vocab": opts.pair_vocab, "pair_tokens": vocab.size if allowed is None else int(allowed.numel()),
            "svd": opts.svd, "write": write.flags, "read": read.flags}


def _cpu_pairs(p: Pairs) -> Pairs:
    return Pairs(p.top_scores.float().cpu(), p.top_src.cpu(), p.top_dst.cpu(), p.bottom_scores.float().cpu(),
                 p.bottom_src.cpu(), p.bottom_dst.cpu(), p.mean, p.std, p.norm)


def index_checkpoint(
    db_path: str | Path, checkpoint_path: str | Path, options: IndexOptions | None = None, progress: bool = False,
    con: duckdb.DuckDBPyConnection | None = None,
) -> IndexResult:
    """Index one checkpoint into the store at ``db_path`` (created if missing).

    ``con``: the process's own open connection to ``db_path`` (``lensdb serve``), written through a cursor.
    """
    opts = options or IndexOptions()
    started = time.perf_counter()
    started_at = datetime.now()
    compute = resolve_compute(opts.device, opts.precision)
    ckpt = open_checkpoint(checkpoint_path)
    adapter = adapter_for(ckpt)
    plan = _plan(adapter, opts.components)
    vocab = load_vocabulary(ckpt.path, adapter.dims.vocab_size)
    if opts.executor == "ray":
        from indexer.ray_executor import _ray

        _ray()  # a missing Ray fails here, before the store is touched
    elif opts.address is not None or opts.ray_workers is not None:
        raise LensdbError("--address and --ray-workers go with --executor ray.")
    if opts.head_maps:
        headmaps.check_supported(adapter)
        headmaps.allowed_tokens(vocab, opts.pair_vocab)
    name = opts.name or default_name(ckpt)
    if not name.strip():
        raise LensdbError("model name is empty; pass --name NAME.")
    content_hash = ckpt.content_hash()
    created = con is None and not Path(db_path).exists()

    # The attempt is logged in its own small transaction, so a run that fails or dies leaves a trace while
    # its rows (one transaction below) leave none.
    with writer(db_path, con) as tx:
        mark_interrupted(tx)
        found = _find(tx, content_hash)
        if found and not opts.replace:
            return _unchanged(found, content_hash, started)
        attempt_id = next_id(tx, "run_attempts", "attempt_id")
        tx.execute("INSERT INTO run_attempts VALUES (?, ?, ?, ?, 'running', ?, NULL, NULL, NULL)",
                   [attempt_id, content_hash, str(ckpt.path), name, started_at])
    try:
        return _index(db_path, con, ckpt, adapter, plan, vocab, name, content_hash, opts, compute, progress,
                      started, started_at, attempt_id)
    except BaseException as err:
        _record_failure(db_path, con, attempt_id, err, created)
        raise


def _find(con: duckdb.DuckDBPyConnection, content_hash: str) -> tuple | None:
    return con.execute(
        "SELECT c.checkpoint_id, c.label, m.name, r.basis, r.top_k FROM checkpoints c "
        "JOIN models m USING (model_id) JOIN index_runs r USING (checkpoint_id) WHERE c.content_hash = ?",
        [content_hash],
    ).fetchone()


def _unchanged(found: tuple, content_hash: str, started: float) -> IndexResult:
    return IndexResult(
        status="unchanged", model=found[2], checkpoint=found[1], content_hash=content_hash,
        n_vectors=0, n_projections=0, seconds=time.perf_counter() - started,
        message=f"already indexed as {found[2]}/{found[1]} (basis {found[3]}, top-k {found[4]}); "
        "nothing to do. Pass --replace to index it again with the options given.",
    )


def mark_interrupted(con: duckdb.DuckDBPyConnection) -> None:
    """Attempts still 'running' when a writer starts belong to a process that died: mark them interrupted.

    Safe because the caller is the file's only writer and runs one index at a time.
    """
    con.execute("UPDATE run_attempts SET status = 'interrupted', finished_at = ?, error = 'the process ended "
                "before the run committed; nothing of it was written' WHERE status = 'running'", [datetime.now()])


def _record_failure(db_path: str | Path, con: duckdb.DuckDBPyConnection | None, attempt_id: int,
                    err: BaseException, created: bool) -> None:
    """Note why an attempt failed, in its own transaction; a file this run created is removed instead."""
    if created:
        for leftover in (Path(db_path), Path(f"{db_path}.wal")):
            leftover.unlink(missing_ok=True)
        return
    status = "failed" if isinstance(err, Exception) else "interrupted"
    reason = str(err) if isinstance(err, LensdbError) else f"{type(err).__name__}: {err}"
    try:
        with writer(db_path, con) as tx:
            tx.execute("UPDATE run_attempts SET status = ?, finished_at = ?, error = ? WHERE attempt_id = ?",
                       [status, datetime.now(), reason[:2000], attempt_id])
    except (LensdbError, duckdb.Error):
        pass  # the original error matters more; the next writer marks the attempt interrupted


def _index(db_path: str | Path, con: duckdb.DuckDBPyConnection | None, ckpt: Checkpoint, adapter: Adapter,
           plan: list[tuple[str, int]], vocab: Vocabulary, name: str, content_hash: str, opts: IndexOptions,
           compute: Compute, progress: bool, started: float, started_at: datetime, attempt_id: int) -> IndexResult:
    """The run's one transaction: every row of the checkpoint and its run record, or nothing."""
    with writer(db_path, con) as con:
        found = _find(con, content_hash)
        if found and not opts.replace:  # another writer indexed it between the two transactions
            con.execute("DELETE FROM run_attempts WHERE attempt_id = ?", [attempt_id])
            return _unchanged(found, content_hash, started)
        if found:
            _delete_checkpoint(con, int(found[0]))
        vocab_id = _vocab_id(con, vocab)
        model_id = _model_id(con, name, adapter, vocab_id)
        label = opts.label or ckpt.path.name
        taken = con.execute("SELECT 1 FROM checkpoints WHERE model_id = ? AND label = ?", [model_id, label]).fetchone()
        if taken:
            label = f"{label}@{content_hash[:8]}"
        checkpoint_id = next_id(con, "checkpoints", "checkpoint_id")
        con.execute(
            "INSERT INTO checkpoints VALUES (?, ?, ?, ?, ?, ?, ?)",
            [checkpoint_id, model_id, label, content_hash, str(ckpt.path),
             opts.step if opts.step is not None else checkpoint_step(ckpt), datetime.now()],
        )
        chunk_mb = opts.chunk_mb or (1024 if compute.device.type == "cuda" else 64)
        out = _Writer(con, checkpoint_id, opts.top_k, chunk_mb << 20, compute)
        flags: dict[str, dict] = {"compute": compute.flags()}
        bar = tqdm(total=len(plan), disable=not progress, unit="unit", desc=name, leave=False)
        try:
            with matmul_mode(compute):
                if opts.executor == "ray":
                    from indexer.ray_executor import remote_units

                    for comp_name, layer, basis_flags, projected in remote_units(
                            ckpt.path, plan, opts, chunk_mb << 20, flags["compute"]):
                        bar.set_postfix_str(f"layer {layer} {comp_name}")
                        flags[adapter.spec(comp_name).role] = basis_flags
                        for p in projected:
                            out.write_projected(p)
                        bar.update(1)
                else:
                    flags["compute"]["executor"] = "local"
                    for comp_name, layer, basis, parts in _units(adapter, plan, opts.basis, compute, opts.read_basis):
                        bar.set_postfix_str(f"layer {layer} {comp_name}")
                        flags[adapter.spec(comp_name).role] = basis.flags
                        for part in parts:
                            out.project(part.name, part.layer, part.head, unit_vectors(part, opts.basis), basis)
                        bar.update(1)
                if opts.head_maps:
                    flags["head_maps"] = _index_heads(out, adapter, vocab, opts, compute, progress)
            out.finish()
        finally:
            out.drain()
            bar.close()
        run_id = next_id(con, "index_runs", "run_id")
        seconds = time.perf_counter() - started
        con.execute(
            "INSERT INTO index_runs VALUES (?, ?, 'complete', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [run_id, checkpoint_id, started_at, datetime.now(), opts.basis, json.dumps(flags), opts.top_k,
             json.dumps(sorted({u[0] for u in plan} | (set(headmaps.COMPONENTS) if opts.head_maps else set()))),
             out.n_vectors, out.n_projections, seconds, VERSION],
        )
        con.execute("UPDATE run_attempts SET status = 'complete', finished_at = ?, checkpoint_id = ? "
                    "WHERE attempt_id = ?", [datetime.now(), checkpoint_id, attempt_id])
        pause_point("commit")
    return IndexResult(
        status="indexed", model=name, checkpoint=label, content_hash=content_hash, n_vectors=out.n_vectors,
        n_projections=out.n_projections, seconds=seconds,
        message=f"indexed {name}/{label}: {out.n_vectors} vectors, {out.n_projections} token rows "
        f"in {seconds:.1f}s",
    )


__all__ = ["CheckpointError", "IndexOptions", "IndexResult", "index_checkpoint"]

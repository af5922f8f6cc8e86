"""One index run: checkpoint → adapter → vectors → projection → Arrow → store, in one transaction.

Everything that can be checked from headers (folder, config, tensor names and shapes, tokenizer) is checked
before the database is opened. The run then writes inside a single transaction, holding the store's writer for
the whole run (``schema.writer.with_store``): an error, an interrupt or a cancel anywhere leaves the file
exactly as it was apart from the attempt's log row (a store the run created is never put in place).
"""

import json
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from tqdm import tqdm

from indexer.index import catalog_writes as cw
from indexer.index import head_maps
from indexer.index.compute import Compute, matmul_mode, resolve_compute
from indexer.index.executors import check_executor, executor_for
from indexer.index.faults import pause_point
from indexer.index.memory import bound_heap_growth, checkpoint_quietly, duckdb_spills
from indexer.index.options import VERSION, DictionaryResult, IndexOptions, IndexResult
from indexer.index.plan import Unit, plan_units, role_rows
from indexer.index.projector import Projector
from indexer.index.unit_writer import UnitWriter, run_rows
from indexer.math.basis import BASIS_VERSION
from indexer.model.adapters import Adapter, adapter_for
from indexer.model.checkpoint import Checkpoint
from indexer.model.sources import Source, open_source
from indexer.model.vocab import Vocabulary
from schema.deletes import delete_rows
from schema.errors import LensdbError
from schema.runs import merge_said
from schema.writer import Store, insert_new, with_store

R = TypeVar("R", IndexResult, DictionaryResult)


def index_checkpoint(
    db: str | Path | Store, checkpoint_path: str | Path, options: IndexOptions | None = None, progress: bool = False,
    cancel: threading.Event | None = None,
) -> IndexResult:
    """Index one checkpoint into the store at ``db`` (created if missing), or through the ``Store`` given (the
    service's, whose write queue the run's transactions wait in).

    ``cancel``: when set, the run stops at the next projected unit and nothing of it is written.
    """
    opts = options or IndexOptions()
    bound_heap_growth()  # resident memory = what the run holds (indexer.index.memory)
    started = time.perf_counter()
    started_at = datetime.now()
    compute = resolve_compute(opts.device, opts.precision)
    source = open_source(checkpoint_path, opts.revision, opts.base, opts.lora)
    ckpt = source.ckpt
    adapter = adapter_for(ckpt)
    plan = plan_units(adapter, opts.components)
    if source.flags.get("lora") == "delta":  # the update of weight matrices only: no biases, no embedding
        plan = [u for u in plan if not u[0].endswith("_bias") and u[0] != "embedding"]
    vocab = source.vocabulary(adapter.dims.vocab_size)
    check_executor(opts)  # a missing Ray fails here, before the store is touched
    if opts.executor == "ray" and not source.plain:
        raise LensdbError(f"--executor ray reopens the checkpoint on each worker from a folder; "
                          f"{ckpt.path} is read as {source.flags.get('format', 'a LoRA adapter')}. Use the local "
                          "executor.")
    if opts.head_maps:
        head_maps.check_supported(adapter)
        head_maps.allowed_tokens(vocab, opts.pair_vocab)
    name = opts.name or source.name
    if not name.strip():
        raise LensdbError("model name is empty; pass --name NAME.")
    content_hash, legacy_hash = ckpt.content_hashes()

    def run(store: Store) -> IndexResult:
        # The attempt is logged in its own small transaction, so a run that fails or dies leaves a trace while
        # its rows (one transaction below) leave none.
        with store.transaction() as tx:
            cw.mark_interrupted(tx)
            found = cw.find_checkpoint(tx, content_hash, legacy_hash, vocab)
            if found and not opts.replace:
                return cw.unchanged(found, content_hash, started)
            attempt_id = cw.log_attempt(tx, content_hash, ckpt.path, name, started_at)
        try:
            with duckdb_spills(store.con):
                result = _index(store, source, adapter, plan, vocab, name, content_hash, opts, compute, progress,
                                started, started_at, attempt_id, cancel)
        except BaseException as err:
            cw.record_failure(store, attempt_id, err)
            raise
        if result.status == "indexed":
            result = merge_runs(store, result)
        if store.creating:  # what the commits left in a new file's log (none, unless they could not checkpoint:
            # commit_into_file) goes into it here, under the limit, rather than at close
            with duckdb_spills(store.con):
                checkpoint_quietly(store.con)
        return result

    return with_store(db, run)


def _index(store: Store, source: Source, adapter: Adapter, plan: list[Unit], vocab: Vocabulary, name: str,
           content_hash: str, opts: IndexOptions, compute: Compute, progress: bool, started: float,
           started_at: datetime, attempt_id: int, cancel: threading.Event | None) -> IndexResult:
    """The run's one transaction: every row of the checkpoint and its run record, or nothing."""
    ckpt: Checkpoint = source.ckpt
    with store.transaction(into_file=True) as con:
        found = cw.find_checkpoint(con, content_hash)
        if found and not opts.replace:  # another writer indexed it between the two transactions
            con.execute("DELETE FROM run_attempts WHERE attempt_id = ?", [attempt_id])
            return cw.unchanged(found, content_hash, started)
        removed = delete_rows(con, "checkpoints", "checkpoint_id = ?", [int(found[0])]) if found else {}
        model_id = cw.model_id(con, name, adapter, cw.vocab_id(con, vocab))
        label = opts.label or source.label
        taken = con.execute("SELECT 1 FROM checkpoints WHERE model_id = ? AND label = ?", [model_id, label]).fetchone()
        if taken:
            label = f"{label}@{content_hash[:8]}"
        checkpoint_id = insert_new(
            con, "checkpoints", model_id=model_id, label=label, content_hash=content_hash, path=str(ckpt.path),
            step=opts.step if opts.step is not None else source.step, indexed_at=datetime.now())
        chunk_mb = opts.chunk_mb or (1024 if compute.device.type == "cuda" else 64)
        projector = Projector(opts.top_k, chunk_mb << 20, compute)
        executor = executor_for(opts, ckpt.path, adapter, projector, compute)
        out = UnitWriter(con, checkpoint_id, cancel, run_rows(chunk_mb << 20),
                         role_of=lambda comp: head_maps.SVD_ROLES.get(comp) or adapter.spec(comp).role)
        compute_flags = compute.flags()
        flags: dict[str, object] = {"version": BASIS_VERSION, "compute": compute_flags,
                                    **({"source": source.flags} if source.flags else {})}
        bar = tqdm(total=len(plan), disable=not progress, unit="unit", desc=name, leave=False)
        try:
            with matmul_mode(compute):
                for comp_name, layer, basis_flags, parts in executor.units(plan):
                    bar.set_postfix_str(f"layer {layer} {comp_name}")
                    flags[adapter.spec(comp_name).role] = basis_flags
                    for part in parts:
                        out.write(part)
                    bar.update(1)
                compute_flags.update(executor.flags)
                for role in sorted({b[2] for b in out.value_blocks}):  # the rows that read the stored vectors
                    out.basis_rows(role, role_rows(adapter, role, opts.basis, opts.read_basis))
                if opts.head_maps:
                    flags["head_maps"] = head_maps.index_heads(
                        out, projector, adapter, vocab, opts.basis, opts.read_basis, opts.top_k, opts.pair_vocab,
                        opts.svd, compute, progress)
            out.finish()
        finally:
            out.drain()
            bar.close()
        seconds = time.perf_counter() - started
        components = sorted({u[0] for u in plan} | (set(head_maps.COMPONENTS) if opts.head_maps else set()))
        insert_new(con, "index_runs", checkpoint_id=checkpoint_id, status="complete", started_at=started_at,
                   finished_at=datetime.now(), basis=opts.basis, basis_flags=json.dumps(flags), top_k=opts.top_k,
                   components=json.dumps(components), n_vectors=out.n_vectors, n_projections=out.n_projections,
                   seconds=seconds, lensdb_version=VERSION)
        con.execute("UPDATE run_attempts SET status = 'complete', finished_at = ?, checkpoint_id = ? "
                    "WHERE attempt_id = ?", [datetime.now(), checkpoint_id, attempt_id])
        pause_point("commit")
    gone = {t: n for t, n in removed.items() if n and t in cw.SAID_ON_REPLACE}
    also = ("; replacing it removed " + ", ".join(f"{n} {cw.SAID_ON_REPLACE[t]}" for t, n in gone.items())
            + " made from the old rows") if gone else ""
    return IndexResult(
        status="indexed", model=name, checkpoint=label, content_hash=content_hash, n_vectors=out.n_vectors,
        n_projections=out.n_projections, seconds=seconds,
        message=f"indexed {name}/{label}: {out.n_vectors} vectors, {out.n_projections} token rows "
        f"in {seconds:.1f}s{also}",
    )


def merge_runs(store: Store, result: R) -> R:
    """After a run committed: merge the newest sorted runs of token rows (``schema.runs``), under the run's
    memory limit, and say what happened in the run's message. The run's rows are in whatever happens here."""
    with duckdb_spills(store.con):
        _, said = merge_said(store)
    return result.model_copy(update={"message": f"{result.message}; {said}"}) if said else result

"""Indexing a dictionary (an SAE, a transcoder, any direction set) against a model already in the store.

Its rows are read through that model's bases at the dictionary's hook points, by the rule of the stream site
each hook sits at (``plan.site_basis``, ``indexer.model.hooks``): decoder rows as writers, encoder rows as
readers, with the basis mode, reading matrix and top-k the checkpoint itself was indexed with, so latents,
neurons and heads of one model are scored alike and their z-scores compare. The vectors go through the same
projector and ``UnitWriter`` as a checkpoint's, under the checkpoint they were read with, each tagged with its
dictionary (``vectors.dictionary_id``); a dictionary is one row of ``dictionaries``, and deleting it (``--replace``,
``lensdb forget``, or its checkpoint going) removes its vectors along the declared references.

Every check that needs no write runs first: the files' headers, the hook points on the model, the widths, every
value finite. The run then writes in one transaction: an error or an interrupt leaves the store as it was apart
from the attempt's ``run_attempts`` row.
"""

import json
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import torch
from tqdm import tqdm

from indexer.index import catalog_writes as cw
from indexer.index.compute import matmul_mode, resolve_compute
from indexer.index.faults import pause_point
from indexer.index.options import DictionaryOptions, DictionaryResult
from indexer.index.plan import role_basis, site_basis
from indexer.index.projector import Projector
from indexer.index.run import merge_runs
from indexer.index.unit_writer import UnitWriter
from indexer.math.basis import BASIS_VERSION, BasisMode, fold_reader
from indexer.model.adapters import Adapter, adapter_for
from indexer.model.adapters.base import ComponentSpec, Role
from indexer.model.dictionary import Dictionary, DictionaryError, read_dictionary
from indexer.model.hooks import HookSite, resolve_hook
from indexer.model.sources import open_source
from queries import sql as q
from schema.deletes import delete_rows
from schema.errors import NotFound, StoreError
from schema.ids import next_id
from schema.writer import Store, append_arrow, insert, with_store

COMPONENTS: tuple[ComponentSpec, ...] = (
    ComponentSpec("sae_dec", "writes", "decoder row i of an SAE or transcoder: what latent i writes at its output "
                  "hook (index = latent id)"),
    ComponentSpec("sae_enc", "reads", "encoder row i of an SAE or transcoder: what latent i reads at its input hook "
                  "(index = latent id)"),
    ComponentSpec("dir_write", "writes", "row i of a direction set that writes into the stream (a steering vector)"),
    ComponentSpec("dir_read", "reads", "row i of a direction set that reads the stream (a probe, a concept "
                  "direction)"),
)
"""The components a dictionary's vectors are stored under, with their roles, declared as the adapters declare
theirs. ``layer`` is the hook's block; the dictionary is named by ``vectors.dictionary_id``."""
ROLES = {c.name: c.role for c in COMPONENTS}


def component_for(d: Dictionary, role: Role) -> str:
    if d.kind == "directions":
        return "dir_write" if role == "writes" else "dir_read"
    return "sae_dec" if role == "writes" else "sae_enc"


@dataclass
class Part:
    """One side of a dictionary, ready to project: its rows in stream coordinates and where they are read."""

    component: str
    role: Role
    site: HookSite
    vectors: torch.Tensor


@dataclass(frozen=True)
class Target:
    """The checkpoint a dictionary is read with, as the store records it."""

    checkpoint_id: int
    label: str
    path: str
    vocab_size: int
    basis: BasisMode
    reader: str
    top_k: int
    lora_delta: bool


def _target(con, model: str, checkpoint: str | None) -> Target:  # type: ignore[no-untyped-def]
    found = con.execute(*q.checkpoint_source(model, checkpoint)).fetchone()
    if found is None:
        names = [r[0] for r in con.execute("SELECT name FROM models ORDER BY name").fetchall()]
        if model not in names:
            raise NotFound(f"no model {model!r} in the store; index its checkpoint first (models: "
                           f"{', '.join(names) or 'none yet'}).")
        raise NotFound(f"model {model!r} has no checkpoint {checkpoint!r}.")
    checkpoint_id, label, path, _, size = found
    run = con.execute("SELECT basis, basis_flags, top_k FROM index_runs WHERE checkpoint_id = ? "
                      "ORDER BY run_id DESC LIMIT 1", [checkpoint_id]).fetchone()
    flags = json.loads(run[1]) if run and run[1] else {}
    reads: dict = flags["reads"] if isinstance(flags.get("reads"), dict) else {}
    source: dict = flags["source"] if isinstance(flags.get("source"), dict) else {}
    return Target(int(checkpoint_id), str(label), str(path), int(size), run[0] if run else "folded",
                  str(reads.get("matrix", "unembedding")), int(run[2]) if run else 50, source.get("lora") == "delta")


def _input_norm(adapter: Adapter, site: HookSite):  # type: ignore[no-untyped-def]
    """The input norm of the sublayer at ``site`` (what its own readers fold in), or None."""
    for spec in adapter.available():
        if spec.role == "reads" and spec.stage == site.stage and spec.per_layer:
            parts = adapter.component(spec.name, site.layer)
            return parts[0].norm if parts else None
    return None


def _to_stream(adapter: Adapter, site: HookSite, rows: torch.Tensor, role: Role) -> torch.Tensor:
    """Rows in the hook's own coordinates carried into the stream: z through W_O, MLP activations through the
    MLP's values (decoder rows only); stream rows as they are."""
    if site.space == "stream":
        return rows
    if role == "reads":
        raise DictionaryError(f"hook {site.hook}: encoder rows read a sublayer's inner activations, not one stream "
                              "direction; only the decoder of such a dictionary can be read in embedding space.")
    name = "attn_o" if site.space == "z" else "ff_value"
    parts = adapter.component(name, site.layer)
    if site.space == "mlp" and len(parts) != 1:
        raise DictionaryError(f"hook {site.hook}: the MLP of a mixture-of-experts layer has no single activation "
                              "space to carry rows from.")
    writers = torch.cat([p.vectors for p in parts])
    return rows @ writers


def prepare(adapter: Adapter, d: Dictionary, mode: BasisMode) -> list[Part]:
    """Every side of ``d`` as stream rows, checked against the model (hooks, widths, finite values)."""
    parts = []
    for role, hook, width, load in (("writes", d.hook_out, d.d_out, d.decoder), ("reads", d.hook_in, d.d_in,
                                                                                    d.encoder)):
        if hook is None:
            continue
        site = resolve_hook(adapter, hook)
        if width != site.width:
            raise DictionaryError(f"{d.path}: its {'decoder' if role == 'writes' else 'encoder'} rows are {width} "
                                  f"wide but hook {hook} of this model is {site.width} wide; the dictionary belongs "
                                  "to another model or hook.")
        if site.space != "stream" and role == "reads":
            continue  # encoders of inner activations read no single stream direction (recorded in the flags)
        rows = load()
        assert rows is not None
        rows = _to_stream(adapter, site, rows, role)  # type: ignore[arg-type]
        if role == "reads" and site.normalized:
            rows = fold_reader(rows, _input_norm(adapter, site), mode)
        parts.append(Part(component_for(d, role), role, site, rows))  # type: ignore[arg-type]
    if not parts:
        raise DictionaryError(f"{d.path}: nothing of it can be read in embedding space.")
    return parts


def index_dictionary(db: str | Path | Store, path: str | Path, options: DictionaryOptions, progress: bool = False,
                     cancel: threading.Event | None = None) -> DictionaryResult:
    """Index the dictionary at ``path`` against ``options.model`` in the store at ``db`` (which must exist)."""
    opts = options
    started, started_at = time.perf_counter(), datetime.now()
    d = read_dictionary(path, opts.hook)
    name = opts.name or d.default_name
    if not name.strip():
        raise DictionaryError("dictionary name is empty; pass --name NAME.")
    if not isinstance(db, Store) and not Path(db).exists():
        raise StoreError(f"no lensdb store at {db}; index the model {opts.model!r} into it first.")
    compute = resolve_compute(opts.device, opts.precision)
    content_hash = d.content_hash()

    def run(store: Store) -> DictionaryResult:
        with store.transaction() as tx:
            target = _target(tx, opts.model, opts.checkpoint)
            found = tx.execute("SELECT dictionary_id, name, content_hash FROM dictionaries WHERE checkpoint_id = ? "
                               "AND (content_hash = ? OR name = ?) ORDER BY content_hash = ? DESC",
                               [target.checkpoint_id, content_hash, name, content_hash]).fetchall()
        same = [r for r in found if r[2] == content_hash]
        if same and not opts.replace:
            return DictionaryResult(
                status="unchanged", model=opts.model, checkpoint=target.label, dictionary=same[0][1],
                content_hash=content_hash, n_latents=d.n, n_vectors=0, n_projections=0,
                seconds=time.perf_counter() - started,
                message=f"already indexed as {same[0][1]} on {opts.model}/{target.label}; nothing to do. Pass "
                "--replace to index it again.")
        if found and not same and not opts.replace:
            raise DictionaryError(f"{opts.model}/{target.label} already has a dictionary named {name!r} with other "
                                  "content; pass --name to keep both or --replace to replace it.")
        if target.lora_delta:
            raise DictionaryError(f"{opts.model}/{target.label} was indexed as a LoRA delta; dictionaries are read "
                                  "with a model's own weights.")
        source = open_source(target.path)
        adapter = adapter_for(source.ckpt)
        if adapter.dims.vocab_size != target.vocab_size:
            raise DictionaryError(f"{target.path} no longer holds the checkpoint {opts.model}/{target.label} was "
                                  "indexed from (its vocabulary differs); re-index the model.")
        parts = prepare(adapter, d, target.basis)  # every check before anything is written
        with store.transaction() as tx:
            cw.mark_interrupted(tx)
            attempt_id = cw.log_attempt(tx, content_hash, d.path, opts.model, started_at)
        try:
            result = _write(store, d, parts, adapter, target, name, content_hash, [r[0] for r in found], opts,
                            compute, progress, started, attempt_id, cancel)
        except BaseException as err:
            cw.record_failure(store, attempt_id, err)
            raise
        return merge_runs(store, result)

    return with_store(db, run)


def _write(store: Store, d: Dictionary, parts: list[Part], adapter: Adapter, target: Target, name: str,
           content_hash: str, old: list[int], opts: DictionaryOptions, compute, progress: bool,  # type: ignore[no-untyped-def]
           started: float, attempt_id: int, cancel: threading.Event | None) -> DictionaryResult:
    """The run's one transaction: the dictionary's row, its vectors and labels, or nothing."""
    chunk_mb = opts.chunk_mb or (1024 if compute.device.type == "cuda" else 64)
    projector = Projector(target.top_k, chunk_mb << 20, compute)
    with store.transaction(into_file=True) as con:
        for dictionary_id in old:
            delete_rows(con, "dictionaries", "dictionary_id = ?", [dictionary_id])
        sites = {p.role: {"hook": p.site.hook, "layer": p.site.layer, "site_layer": p.site.site_layer,
                          "stage": p.site.stage, "normalized": p.site.normalized, "space": p.site.space}
                 for p in parts}
        flags = {"version": BASIS_VERSION, "compute": compute.flags(), "sites": sites, "format": d.config}
        dictionary_id = next_id(con, "dictionaries")  # its row goes in last, with the counts
        out = UnitWriter(con, target.checkpoint_id, cancel, role_of=ROLES.__getitem__, dictionary_id=dictionary_id)
        # latents are stored like the model's own vectors where its run stored the basis rows that read them
        # (not with --no-vectors): exact answers then reach past their top-k lists too
        stored = {r[0] for r in con.execute(*q.basis_roles(target.checkpoint_id)).fetchall()}
        bar = tqdm(total=len(parts), disable=not progress, unit="side", desc=name, leave=False)
        roles: dict[str, object] = {}
        try:
            with matmul_mode(compute):
                for part in parts:  # one [V, d] basis at a time: each side's role
                    basis = role_basis(adapter, part.role, target.basis, compute, target.reader)
                    roles[part.role] = basis.flags
                    at = site_basis(adapter, basis, part.role, part.site.site_layer, part.site.stage, target.basis)
                    bar.set_postfix_str(f"{part.component} at {part.site.hook}")
                    out.write(projector.stream(part.component, part.site.layer, None, part.vectors, at,
                                               role=part.role if part.role in stored else None))
                    bar.update(1)
            out.finish()
        finally:
            out.drain()
            bar.close()
        if d.labels:
            append_arrow(con, "dictionary_labels", pa.table({
                "dictionary_id": pa.array([dictionary_id] * len(d.labels), pa.int32()),
                "idx": pa.array(range(len(d.labels)), pa.int32()), "label": pa.array(d.labels, pa.string())}))
        seconds = time.perf_counter() - started
        insert(con, "dictionaries", dictionary_id=dictionary_id, checkpoint_id=target.checkpoint_id, name=name,
               format=d.format, architecture=d.architecture, kind=d.kind, hook_in=d.hook_in, hook_out=d.hook_out,
               layer=parts[0].site.layer, n_latents=d.n, d_in=d.d_in, d_out=d.d_out, content_hash=content_hash,
               path=str(d.path), source_model=d.model_name, basis=target.basis, top_k=target.top_k,
               n_vectors=out.n_vectors, n_projections=out.n_projections,
               flags=json.dumps({**flags, "bases": roles}), indexed_at=datetime.now(), seconds=seconds)
        con.execute("UPDATE run_attempts SET status = 'complete', finished_at = ?, checkpoint_id = ? "
                    "WHERE attempt_id = ?", [datetime.now(), target.checkpoint_id, attempt_id])
        pause_point("commit")
    return DictionaryResult(
        status="indexed", model=opts.model, checkpoint=target.label, dictionary=name, content_hash=content_hash,
        n_latents=d.n, n_vectors=out.n_vectors, n_projections=out.n_projections, seconds=seconds,
        message=f"indexed dictionary {name} ({d.format} {d.architecture}, {d.n} latents) on {opts.model}/"
        f"{target.label}: {out.n_vectors} vectors, {out.n_projections} token rows in {seconds:.1f}s")

"""Align two indexed models that share a vocabulary: read both checkpoints through their adapters, compare
every layer pair in embedding space (``indexer.math.correlation``), match layers (Hungarian) and units (best match),
and store the run in one transaction.
"""

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import torch
from pydantic import BaseModel

from indexer.math import correlation as al
from indexer.math.basis import BasisMode, fold_reader, read_basis, write_basis
from indexer.math.carry import path_map
from indexer.model.adapters import Adapter, adapter_for
from indexer.model.sources import open_source
from queries import sql as q
from schema.errors import LensdbError, NotFound
from schema.ids import next_id
from schema.writer import Store, append_arrow, with_store


class AlignOutcome(BaseModel):
    alignment_id: int
    message: str


@dataclass(frozen=True)
class AlignedCheckpoint:
    """One side of an alignment: a checkpoint of a model in the store, with where its weights are."""

    model: str
    checkpoint_id: int
    label: str
    path: str
    vocab_id: int
    vocab_size: int


@dataclass(frozen=True)
class ComponentVectors:
    """One model's vectors of one component, grouped per layer (and per head)."""

    layers: list[torch.Tensor]  # [n_vectors, d] per layer
    units: list[list[torch.Tensor]]  # per layer: one group per unit (one row per neuron, or one head's rows)
    basis: torch.Tensor  # [vocab, d]


def _aligned_checkpoint(con: duckdb.DuckDBPyConnection, model: str, checkpoint: str | None) -> AlignedCheckpoint:
    sql, params = q.checkpoint_source(model, checkpoint)
    row = con.execute(sql, params).fetchone()
    if row is None:
        names = [r[0] for r in con.execute(*q.model_vocabularies()).fetchall()]
        what = f"checkpoint {checkpoint!r} of model {model!r}" if checkpoint else f"model {model!r}"
        raise NotFound(f"no {what} in the store; indexed models: {', '.join(names) or 'none yet'}.")
    return AlignedCheckpoint(model, int(row[0]), row[1], row[2], int(row[3]), int(row[4]))


def check_vocabularies(con: duckdb.DuckDBPyConnection, a: AlignedCheckpoint, b: AlignedCheckpoint) -> None:
    """Alignment compares projections token by token: the two token lists must be the same."""
    if a.vocab_id == b.vocab_id:
        return
    (differ,) = con.execute(*q.vocabulary_difference(a.vocab_id, b.vocab_id)).fetchone()  # type: ignore[misc]
    raise LensdbError(
        f"models {a.model!r} ({a.vocab_size} tokens) and {b.model!r} ({b.vocab_size} tokens) have different "
        f"vocabularies: {differ} token ids differ; alignment and stitching need one shared vocabulary."
    )


def component_vectors(adapter: Adapter, component: str, mode: BasisMode) -> ComponentVectors:
    """Every vector of ``component`` in canonical rows, with the basis that reads them (see ``indexer.math.basis``).
    Folded: each layer's vectors carried through the norms on their path, as an index run projects them, so one
    basis matrix serves every layer."""
    spec = adapter.spec(component)
    if not spec.per_layer:
        raise LensdbError(f"{component!r} is model-level; align a per-layer component such as ff_value.")
    if spec.role == "writes":
        basis = write_basis(adapter.unembedding(), adapter.final_norm(), mode).matrix
    else:
        basis = read_basis(adapter.unembedding(), "unembedding", mode).matrix
    layers, units = [], []
    for layer in adapter.layers(component):
        parts = adapter.component(component, layer)
        if not parts:
            raise LensdbError(f"{adapter.ckpt.path} has no {component} in layer {layer}.")
        rows = [fold_reader(p.vectors, p.norm, mode) if p.role == "reads" else p.vectors for p in parts]
        if mode == "folded":
            carry = path_map(adapter.component_path(component, layer), spec.role, adapter.dims.d_model)
            rows = rows if carry is None else [r.to(torch.float32) @ carry for r in rows]
        layers.append(torch.cat(rows))
        per_head = parts[0].head is not None
        units.append(rows if per_head else list(layers[-1].split(1)))
    return ComponentVectors(layers, units, basis)


def align_models(db: str | Path | Store, model_a: str, model_b: str, component: str = "ff_value",
                 checkpoint_a: str | None = None, checkpoint_b: str | None = None, basis: BasisMode = "raw",
                 statistic: al.Statistic = "best") -> AlignOutcome:
    """Align model B to model A on ``component`` and store the run (in the store at ``db``, or through the
    service's ``Store``); read it back with ``Lens.alignment``.
    ``statistic``: how two layers compare (``indexer.math.correlation``): ``best`` or ``paper``."""
    return with_store(db, lambda store: _align(store, model_a, model_b, component, checkpoint_a, checkpoint_b,
                                               basis, statistic))


def _align(store: Store, model_a: str, model_b: str, component: str, checkpoint_a: str | None,
           checkpoint_b: str | None, basis: BasisMode, statistic: al.Statistic) -> AlignOutcome:
    started = time.perf_counter()
    with store.transaction() as w:
        a, b = _aligned_checkpoint(w, model_a, checkpoint_a), _aligned_checkpoint(w, model_b, checkpoint_b)
        check_vocabularies(w, a, b)
        # a GGUF file, a quantized or LoRA checkpoint reopens as it was read (a LoRA as merged over its recorded base)
        ad_a, ad_b = adapter_for(open_source(a.path).ckpt), adapter_for(open_source(b.path).ckpt)
        for ad in (ad_a, ad_b):
            if component not in {s.name for s in ad.available()}:
                known = ", ".join(s.name for s in ad.available())
                raise LensdbError(f"{ad.ckpt.path} ({ad.family}) has no component {component!r}; known: {known}.")
        sa, sb = component_vectors(ad_a, component, basis), component_vectors(ad_b, component, basis)
        result = compare(sa, sb, statistic)
        alignment_id = next_id(w, "alignment_runs")
        unit = "head" if len(sa.units[0]) != sa.layers[0].shape[0] else "neuron"
        mean_matched = sum(result.similarity[i, j].item() for i, j in result.pairs) / len(result.pairs)
        seconds = time.perf_counter() - started
        append_arrow(w, "alignment_runs", pa.table({
            "alignment_id": [alignment_id], "checkpoint_a": [a.checkpoint_id], "checkpoint_b": [b.checkpoint_id],
            "component": [component], "unit": [unit], "basis": [basis], "statistic": [statistic],
            "vocab_size": [int(sa.basis.shape[0])],
            "raw_comparable": [result.raw_similarity is not None], "mean_matched": [mean_matched],
            "seconds": [seconds], "created_at": [datetime.now()]}))
        append_arrow(w, "layer_similarity", result.layer_rows(alignment_id))
        append_arrow(w, "neuron_matches", result.match_rows(alignment_id))
    order = ", ".join(f"{i}→{j}" for i, j in result.pairs)
    raw = ("raw-parameter baseline stored alongside" if result.raw_similarity is not None
           else f"no raw-parameter baseline: widths differ ({sa.layers[0].shape[1]} vs {sb.layers[0].shape[1]})")
    return AlignOutcome(alignment_id=alignment_id, message=(
        f"alignment {alignment_id}: {a.model}/{a.label} ↔ {b.model}/{b.label} on {component}: layers {order}; "
        f"mean matched similarity ({statistic}) {mean_matched:.3f}; {raw}; {seconds:.1f}s"))


@dataclass
class Comparison:
    similarity: torch.Tensor  # [layers_a, layers_b]
    raw_similarity: torch.Tensor | None
    pairs: list[tuple[int, int]]
    matches: list[tuple[int, int, int, int, float, int | None, float | None]]

    def layer_rows(self, alignment_id: int) -> pa.Table:
        la, lb = self.similarity.shape
        matched = set(self.pairs)
        cells = [(i, j) for i in range(la) for j in range(lb)]
        raw = self.raw_similarity
        return pa.table({
            "alignment_id": [alignment_id] * len(cells), "layer_a": [i for i, _ in cells],
            "layer_b": [j for _, j in cells], "score": [float(self.similarity[i, j]) for i, j in cells],
            "raw_score": pa.array([None if raw is None else float(raw[i, j]) for i, j in cells], pa.float64()),
            "matched": [(i, j) in matched for i, j in cells]})

    def match_rows(self, alignment_id: int) -> pa.Table:
        cols = list(zip(*self.matches, strict=True))
        return pa.table({
            "alignment_id": [alignment_id] * len(self.matches), "layer_a": cols[0], "index_a": cols[1],
            "layer_b": cols[2], "index_b": cols[3], "score": cols[4],
            "raw_index_b": pa.array(cols[5], pa.int32()), "raw_score": pa.array(cols[6], pa.float64())})


def compare(a: ComponentVectors, b: ComponentVectors, statistic: al.Statistic = "best") -> Comparison:
    """Layer similarity by ``statistic`` (embedding space and raw), Hungarian layer pairs, the sign-aware best
    match for every unit of A."""
    k = al.kernels(a.basis, b.basis)
    sim = al.groups_corr(a.layers, b.layers, k, statistic)
    raw_ok = a.layers[0].shape[1] == b.layers[0].shape[1]
    raw = al.groups_corr(a.layers, b.layers, None, statistic) if raw_ok else None
    pairs = al.hungarian(sim)
    matches: list[tuple[int, int, int, int, float, int | None, float | None]] = []
    for i, j in pairs:
        ua, ub = a.units[i], b.units[j]
        per_neuron = all(u.shape[0] == 1 for u in ua)
        if per_neuron:
            corr = al.embedded_corr(a.layers[i], b.layers[j], k)
            raw_corr = al.raw_corr(a.layers[i], b.layers[j]) if raw_ok else None
        else:
            corr = al.groups_corr(ua, ub, k, statistic)
            raw_corr = al.groups_corr(ua, ub, None, statistic) if raw_ok else None
        idx, score = al.best_match(corr)
        ridx, rscore = al.best_match(raw_corr) if raw_corr is not None else (None, None)
        for n in range(len(ua)):
            matches.append((i, n, j, int(idx[n]), float(score[n]),
                            None if ridx is None else int(ridx[n]), None if rscore is None else float(rscore[n])))
    return Comparison(sim, raw, pairs, matches)

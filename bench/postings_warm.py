"""Warming the token postings (``queries.postings``) on the 100 M-row lookup store: a full ``Lens.warm``, then the
warm after one more GPT-2-small-shaped checkpoint (3.7 M token rows) is written beside it through the same
writable connection, as ``lensdb serve`` indexes and re-warms (no merge while serving). The second warm reads
only the new checkpoint's rows; both are timed, with the postings' size, and the grown postings are checked
against the store's row counts and a lookup's SQL answer. Works on a copy of the store ``bench/query_scale.py``
kept (``--keep``), which it leaves as it was.

    .venv/bin/python bench/postings_warm.py [--db /tmp/lensdb-scale.duckdb]
"""

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402

from bench.query_scale import add_model  # noqa: E402
from queries import exact, postings  # noqa: E402
from queries import sql as q  # noqa: E402
from queries.lens import Lens  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", default="/tmp/lensdb-scale.duckdb", help="the store bench/query_scale.py --keep left")
    args = ap.parse_args()
    db = Path(args.db)
    if not db.exists():
        sys.exit(f"no store at {db}: run `.venv/bin/python bench/query_scale.py --keep` first.")
    copy = db.with_name(db.stem + "-warm.duckdb")
    shutil.copy(db, copy)
    try:
        con = duckdb.connect(str(copy))
        lens = Lens(con.cursor(), copy)
        t = time.perf_counter()
        full = lens.warm()
        full_s = time.perf_counter() - t
        (m,) = con.execute("SELECT max(checkpoint_id) + 1 FROM checkpoints").fetchone()  # type: ignore[misc]
        t = time.perf_counter()
        con.execute("BEGIN TRANSACTION")
        add_model(con, m)
        con.execute("COMMIT")
        add_s = time.perf_counter() - t
        t = time.perf_counter()
        grown = lens.warm()
        grown_s = time.perf_counter() - t
        cat = lens._catalog()
        held = postings.held(cat, copy)
        assert held is not None, "the grown postings are not held"
        counts = {table: con.execute(*q.table_rows(table)).fetchone()[0] for table in q.SORTED_BY_TOKEN}  # type: ignore[index]
        assert held.counts == counts, (held.counts, counts)
        answer = lens.promoters("t123", limit=50)
        exact.CACHE.clear()  # the same question through SQL
        assert lens.promoters("t123", limit=50) == answer
        print(f"| figure | value |\n|---|---|\n| full warm ({full.rows / 1e6:.1f} M rows) | {full_s:.1f} s, "
              f"{full.postings_mb:.0f} MB of postings |\n| one more checkpoint written (3.7 M rows) | {add_s:.1f} s |\n"
              f"| warm after it ({len(held.tables)} parts) | {grown_s:.2f} s, {grown.postings_mb:.0f} MB |\n"
              f"| incremental / full | {grown_s / full_s:.3f} |")
        con.close()
    finally:
        copy.unlink(missing_ok=True)
        Path(str(copy) + ".wal").unlink(missing_ok=True)


if __name__ == "__main__":
    main()

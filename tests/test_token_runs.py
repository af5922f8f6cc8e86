"""The sorted runs of the token tables stay few (``schema.runs``): the merge policy on sizes, ``compact`` on a
real file (the rows unchanged, the newest runs one sorted run, the old row groups gone), and index runs that
merge after they commit."""

import json
import math
import random
from pathlib import Path

import duckdb
import pytest

from indexer import IndexOptions, index_checkpoint
from schema.optimize import optimize
from schema.runs import compact, compact_store, merge_from, run_sizes, run_starts
from schema.writer import session, writer
from tests.test_writer_runs import _write
from tests.tinymodels import save_gpt2

DESCENTS = """SELECT 1 + count(*) FILTER (WHERE token_id < t0 OR (token_id = t0 AND vector_id < v0))
FROM (SELECT token_id, vector_id, lag(token_id) OVER w AS t0, lag(vector_id) OVER w AS v0
      FROM {table} WINDOW w AS (ORDER BY rowid))"""


def physical_runs(con: duckdb.DuckDBPyConnection, table: str = "vector_tokens") -> int:
    """Runs of ascending (token_id, vector_id) in the table's physical order: what a lookup reads one row group of."""
    return int(con.execute(DESCENTS.format(table=table)).fetchone()[0])  # type: ignore[index]


def content(con: duckdb.DuckDBPyConnection, table: str = "vector_tokens") -> list[tuple]:
    return con.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall()


@pytest.mark.parametrize(("sizes", "first"), [
    ([], None), ([5], None), ([10, 3], None), ([10, 6, 3], None),
    ([3, 3], 0), ([4, 3], None), ([10, 4, 4], 1), ([10, 6, 4], 0), ([100, 10, 6, 4], 1), ([1, 50], 0),
    ([16, 5, 2, 1, 1], 2), ([16, 7, 3, 1], None), ([8, 5, 2, 1, 1], 0),
])
def test_merge_from_takes_the_oldest_run_no_larger_than_all_after_it(sizes: list[int], first: int | None) -> None:
    assert merge_from(sizes) == first


@pytest.mark.parametrize(("starts", "blocks", "sizes"), [
    ([0, 10, 20], [(0, 4), (5, 14), (20, 29)], [10, 5, 10]),
    ([0, 10], [(3, 3), (40, 41)], [1, 2]),
    ([5], [(5, 9)], [5]),
    ([0, 10, 20], [(0, 9), (20, 20)], [10, 0, 1]),  # run 2's checkpoint was deleted
])
def test_run_sizes_count_the_vectors_of_each_run(starts: list[int], blocks: list[tuple[int, int]],
                                                 sizes: list[int]) -> None:
    assert run_sizes(starts, blocks) == sizes


def test_runs_stay_logarithmic_and_rows_are_rewritten_logarithmically_often() -> None:
    """Runs of random sizes appended one at a time, each followed by one merge: every run larger than all later
    runs together, at most log2(total / smallest) + 1 of them, no row rewritten more often than that."""
    rnd = random.Random(7)
    runs: list[list[int]] = []  # each run: the sizes of the appended runs it holds
    rewrites = 0
    for _ in range(300):
        runs.append([rnd.choice([1, 1, 2, 3, 8, 50])])
        first = merge_from([sum(r) for r in runs])
        if first is not None:
            merged = [n for r in runs[first:] for n in r]
            rewrites += sum(merged)
            runs[first:] = [merged]
        sizes = [sum(r) for r in runs]
        assert all(sizes[i] > sum(sizes[i + 1:]) for i in range(len(sizes) - 1)), sizes
        assert len(sizes) <= math.log2(sum(sizes)) + 1
    total = sum(sizes)
    assert rewrites <= total * (math.log2(total) + 1)


def test_compact_merges_the_writers_runs_into_one_sorted_run_with_the_same_rows(tmp_path: Path) -> None:
    db = tmp_path / "lens.duckdb"
    assert _write(db, run_rows=100) == 7  # seven sorted runs, one checkpoint
    con = duckdb.connect(str(db))
    assert len(run_starts(con)) == 7 and physical_runs(con) == 7
    before = content(con)
    con.close()
    with session(db) as store:
        merged = compact_store(store)
    assert merged is not None and (merged.runs_before, merged.runs_after, merged.rows) == (7, 1, len(before))
    con = duckdb.connect(str(db), read_only=True)
    assert content(con) == before
    assert physical_runs(con) == 1 and run_starts(con) == [merged.first_vector_id] == [1]
    con.close()
    with session(db) as store:
        assert compact_store(store) is None  # one run: nothing to merge


def test_compact_rewrites_only_the_newest_runs_and_the_old_row_groups_go(tmp_path: Path) -> None:
    """A big old run stays where it is; the new ones merge behind it, and the row groups of the deleted copies
    leave the file at the commit's checkpoint (a lookup would otherwise scan them)."""
    db = tmp_path / "lens.duckdb"
    with writer(db) as con:
        con.execute("INSERT INTO vectors (vector_id, checkpoint_id, component, layer, idx, norm, logit_mean, "
                    "logit_std) SELECT i, 1, 'ff_value', 0, i, 1, 0, 1 FROM range(60000) r(i)")
        for first, n in ((0, 40000), (40000, 10000), (50000, 10000)):
            con.execute("INSERT INTO vector_units (checkpoint_id, component, layer, first_vector_id, last_vector_id, "
                        "first_index, role) VALUES (1, 'ff_value', 0, ?, ?, ?, 'writes')",
                        [first, first + n - 1, first])
            con.execute("INSERT INTO vector_tokens SELECT ? + i // 10, 'top', i % 10 + 1, (hash(i) % 5000)::INTEGER, "
                        "1, 1 FROM range(?) r(i) ORDER BY 4, 1", [first, n * 10])
        con.execute("INSERT INTO lensdb_meta VALUES ('token_runs', '[0, 40000, 50000]')")
    con = duckdb.connect(str(db))
    old_groups = con.execute("SELECT count(DISTINCT row_group_id) FROM pragma_storage_info('vector_tokens')").fetchone()
    first_old = con.execute("SELECT token_id, vector_id FROM vector_tokens WHERE rowid < 5 ORDER BY rowid").fetchall()
    before = content(con)
    con.close()
    with session(db) as store:
        merged = compact_store(store)
    assert merged is not None and (merged.runs_before, merged.runs_after, merged.first_vector_id) == (3, 2, 40000)
    assert merged.rows == 200000
    con = duckdb.connect(str(db), read_only=True)
    assert content(con) == before and physical_runs(con) == 2
    assert con.execute("SELECT token_id, vector_id FROM vector_tokens WHERE rowid < 5 ORDER BY rowid").fetchall() \
        == first_old  # the old run was not rewritten
    groups = con.execute("SELECT count(DISTINCT row_group_id) FROM pragma_storage_info('vector_tokens')").fetchone()
    assert groups == old_groups  # 600k rows: the deleted copies' row groups were dropped, not kept beside the new
    assert json.loads(con.execute("SELECT value FROM lensdb_meta WHERE key = 'token_runs'").fetchone()[0]) \
        == [0, 40000]
    con.close()


def test_index_runs_merge_after_they_commit_and_optimize_leaves_one_run(tmp_path: Path) -> None:
    """Three models with head maps (both token tables; each head's rows are a short run of their own): after each
    run the runs on file are the recorded ones, each larger than all later ones together. Lookups answer the same
    before and after ``lensdb optimize``, which leaves one run."""
    import queries

    db = tmp_path / "lens.duckdb"
    a, b = save_gpt2(tmp_path / "a", seed=1), save_gpt2(tmp_path / "b", seed=2)
    c = save_gpt2(tmp_path / "c", seed=3, n_embd=16)  # half the FF neurons
    results = []
    for tiny, name, runs in ((a, "a", 2), (b, "b", 1), (c, "c", 3)):  # model, heads; both models; + c, heads
        results.append(index_checkpoint(db, tiny.path, IndexOptions(name=name, head_maps=True, top_k=5)))
        assert "sorted runs of token rows into one" in results[-1].message  # its heads' short runs, at least
        con = duckdb.connect(str(db), read_only=True)
        starts = run_starts(con)
        assert physical_runs(con) == physical_runs(con, "head_pairs") == len(starts) == runs, name
        sizes = run_sizes(starts, con.execute("SELECT first_vector_id, last_vector_id FROM vector_units").fetchall())
        assert all(sizes[i] > sum(sizes[i + 1:]) for i in range(len(sizes) - 1)), sizes
        con.close()
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT (SELECT count(*) FROM vector_tokens) + (SELECT count(*) FROM head_pairs)").fetchone() \
        == (sum(r.n_projections for r in results),)  # every row of the three runs, once
    con.close()
    with queries.connect(db) as lens:
        asked = [(h.model, h.component, h.layer, h.index, h.zscore) for h in lens.promoters("paris", limit=30)]
    optimize(db)
    con = duckdb.connect(str(db), read_only=True)
    assert run_starts(con) == [0] and physical_runs(con) == 1 and physical_runs(con, "head_pairs") == 1
    con.close()
    with queries.connect(db) as lens:
        assert [(h.model, h.component, h.layer, h.index, h.zscore) for h in lens.promoters("paris", limit=30)] == asked
    with writer(db) as con:
        assert compact(con) is None


def test_a_replaced_checkpoints_empty_run_is_forgotten(tmp_path: Path) -> None:
    db = tmp_path / "lens.duckdb"
    a = save_gpt2(tmp_path / "a", seed=1, n_layer=3)
    b = save_gpt2(tmp_path / "b", seed=2, n_embd=16)
    index_checkpoint(db, a.path, IndexOptions(name="a", top_k=5))
    index_checkpoint(db, b.path, IndexOptions(name="b", top_k=5))
    con = duckdb.connect(str(db), read_only=True)
    starts = run_starts(con)
    con.close()
    assert len(starts) == 2  # three layers, then two of half the width: no merge
    index_checkpoint(db, a.path, IndexOptions(name="a", top_k=5, replace=True))  # a's old rows go; new ids
    con = duckdb.connect(str(db), read_only=True)
    after = run_starts(con)
    assert starts[0] not in after and physical_runs(con) == len(after) == 1  # b's run and a's new one merged
    con.close()


def test_the_service_leaves_the_merge_to_a_writer_that_holds_the_file_alone(tmp_path: Path) -> None:
    """Its requests read beside its writes (``Store.readers``): two equal runs stay two, and the next run from
    Python, with the file to itself, merges all three."""
    from service.owner import StoreOwner
    from service.settings import Settings

    db = tmp_path / "lens.duckdb"
    a, b, c = (save_gpt2(tmp_path / n, seed=s) for n, s in (("a", 1), ("b", 2), ("c", 3)))
    index_checkpoint(db, a.path, IndexOptions(name="a", top_k=5))
    svc = StoreOwner(Settings(db=db, warm=False))
    try:
        served = index_checkpoint(svc.store, b.path, IndexOptions(name="b", top_k=5))
        assert "merged" not in served.message
        with svc.store.transaction() as con:
            assert len(run_starts(con)) == physical_runs(con) == 2
    finally:
        svc.close()
    assert "merged the newest 3 sorted runs" in index_checkpoint(db, c.path, IndexOptions(name="c", top_k=5)).message
    con = duckdb.connect(str(db), read_only=True)
    assert len(run_starts(con)) == physical_runs(con) == 1
    con.close()


def test_a_service_merges_the_runs_it_indexed_when_it_starts_again(tmp_path: Path) -> None:
    """Before its first request, nothing reads beside the merge: the runs indexed while it served merge then."""
    from service.owner import StoreOwner
    from service.settings import Settings

    db = tmp_path / "lens.duckdb"
    a, b = save_gpt2(tmp_path / "a", seed=1), save_gpt2(tmp_path / "b", seed=2)
    index_checkpoint(db, a.path, IndexOptions(name="a", top_k=5))
    svc = StoreOwner(Settings(db=db, warm=False))
    try:
        assert svc.merged is None
        index_checkpoint(svc.store, b.path, IndexOptions(name="b", top_k=5))
    finally:
        svc.close()
    again = StoreOwner(Settings(db=db, warm=False))
    try:
        assert again.merged is not None and (again.merged.runs_before, again.merged.runs_after) == (2, 1)
        with again.lens() as lens:
            assert {h.model for h in lens.promoters("paris", checkpoint="all", limit=1000)} == {"a", "b"}
    finally:
        again.close()
    con = duckdb.connect(str(db), read_only=True)
    assert len(run_starts(con)) == physical_runs(con) == 1
    con.close()


def test_a_garbled_record_of_runs_is_read_as_one_run_per_checkpoint(tmp_path: Path) -> None:
    """``token_runs`` edited by hand: the next run neither fails nor trusts it; the runs are counted per checkpoint
    (a merge of the newest rows is right whatever the record says), merged, and recorded again."""
    db = tmp_path / "lens.duckdb"
    a, b = save_gpt2(tmp_path / "a", seed=1), save_gpt2(tmp_path / "b", seed=2)
    index_checkpoint(db, a.path, IndexOptions(name="a", top_k=5))
    with writer(db) as con:
        con.execute("UPDATE lensdb_meta SET value = '[1, \"x\"' WHERE key = 'token_runs'")
    done = index_checkpoint(db, b.path, IndexOptions(name="b", top_k=5))
    assert "merged the newest 2 sorted runs of token rows into one" in done.message
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM checkpoints").fetchone() == (2,)
    assert run_starts(con) == [1] and physical_runs(con) == 1
    assert json.loads(con.execute("SELECT value FROM lensdb_meta WHERE key = 'token_runs'").fetchone()[0]) == [1]
    con.close()

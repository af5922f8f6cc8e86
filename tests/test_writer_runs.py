"""The unit writer's sorted runs: every row stored once, each run sorted by (token_id, vector_id), lookups and
vector pages unchanged by how many runs a checkpoint takes; W_U read in row blocks from the file."""

import threading
import time
from pathlib import Path

import duckdb
import pytest
import torch
from safetensors.torch import save_file

from indexer import IndexOptions, index_checkpoint
from indexer.errors import CheckpointError
from indexer.index import faults
from indexer.index.memory import DUCKDB_LIMIT, DUCKDB_THREADS
from indexer.index.projector import Chunk, Projected
from indexer.index.unit_writer import UnitWriter
from indexer.math.projection import TopBottom
from indexer.model.checkpoint import Checkpoint
from schema.writer import Store, writer
from tests.tinymodels import TinyModel


def _units(layers: int = 3, n: int = 40, k: int = 4, vocab: int = 97) -> list[tuple[int, list[Chunk]]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for layer in range(layers):
        chunks = []
        for start in range(0, n, 16):
            m = min(16, n - start)
            top = torch.rand(m, k, generator=g).sort(dim=1, descending=True).values + 1.0
            bottom = -torch.rand(m, k, generator=g).sort(dim=1, descending=True).values - 1.0
            tb = TopBottom(top, torch.randint(0, vocab, (m, k), generator=g), bottom,
                           torch.randint(0, vocab, (m, k), generator=g))
            chunks.append(Chunk(start, tb, torch.full((m,), 0.25, dtype=torch.float64),
                                torch.full((m,), 0.5, dtype=torch.float64), torch.ones(m, dtype=torch.float64)))
        out.append((layer, chunks))
    return out


def _write(db: Path, run_rows: int) -> int:
    with writer(db) as con:
        out = UnitWriter(con, 1, run_rows=run_rows)
        try:
            for layer, chunks in _units():
                out.write(Projected("ff_value", layer, None, sum(int(c.norm.shape[0]) for c in chunks), iter(chunks)))
            out.finish()
        finally:
            out.drain()
    return out.n_runs


def _expected() -> dict[tuple, tuple[float, float]]:
    rows, vid = {}, 1
    for _, chunks in _units():
        for c in chunks:
            for i in range(int(c.norm.shape[0])):
                for side, scores, ids in (("top", c.tb.top_scores, c.tb.top_ids),
                                          ("bottom", c.tb.bottom_scores, c.tb.bottom_ids)):
                    for r in range(scores.shape[1]):
                        z = (float(scores[i, r]) - 0.25) / 0.5
                        rows[(vid, side, r + 1, int(ids[i, r]))] = (float(scores[i, r]), z)
                vid += 1
    return rows


@pytest.mark.parametrize(("run_rows", "runs"), [(1, 9), (100, 7), (333, 3), (10**9, 1)])
@pytest.mark.parametrize("slice_rows", [None, 7])
def test_runs_hold_every_row_once_each_sorted_by_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_rows: int,
                                                       runs: int, slice_rows: int | None) -> None:
    """9 chunks of 128, 128 and 64 token rows per unit; a run closes at the first chunk that fills it. Appended in
    slices of 7 rows (each gathered while the one before is inserted), a run is stored as it is appended whole."""
    if slice_rows:
        monkeypatch.setattr("indexer.index.records.TOKEN_SLICE_ROWS", slice_rows)
    db = tmp_path / "lens.duckdb"
    assert _write(db, run_rows) == runs
    _assert_stored(db, runs)


def test_a_run_appended_in_slices_lies_in_the_row_groups_one_insert_makes(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A run is appended in slices of whole row groups: its 300 000 rows lie in the row groups they fill appended as
    one table (ROW_GROUP_ROWS is DuckDB's row group: the first two are full). A slice that ends inside a row group
    leaves it part-filled (the control: slices of 200 000 rows)."""
    from indexer.index.records import ROW_GROUP_ROWS, TOKEN_SLICE_ROWS

    assert TOKEN_SLICE_ROWS % ROW_GROUP_ROWS == 0  # the writer's own slices are whole row groups

    def groups(slice_rows: int) -> list[tuple[int, int]]:
        monkeypatch.setattr("indexer.index.records.TOKEN_SLICE_ROWS", slice_rows)
        db = tmp_path / f"{slice_rows}.duckdb"
        with writer(db) as con:
            out = UnitWriter(con, 1, run_rows=10**9)
            try:
                for layer, chunks in _units(layers=3, n=1000, k=50, vocab=50_000):
                    out.write(Projected("ff_value", layer, None, 1000, iter(chunks)))
                out.finish()
            finally:
                out.drain()
        with duckdb.connect(str(db), read_only=True) as con:
            return con.execute("SELECT row_group_id, min(count) FROM pragma_storage_info('vector_tokens') "
                               "WHERE column_name = 'token_id' GROUP BY ALL ORDER BY ALL").fetchall()

    whole = groups(10**9)
    assert len(whole) == 3  # 300 000 rows: two full row groups and a part
    assert groups(2 * ROW_GROUP_ROWS) == groups(ROW_GROUP_ROWS) == whole
    assert groups(200_000) == [(0, ROW_GROUP_ROWS), (1, 200_000 - ROW_GROUP_ROWS), (2, 100_000)]


@pytest.mark.parametrize(("run_rows", "runs"), [(333, 3), (10**9, 1)])
def test_a_buffered_run_is_held_in_blocks_not_chunk_by_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             run_rows: int, runs: int) -> None:
    """As a run fills, each TOKEN_BLOCK_ROWS of its chunks' rows become one block per column (a chunk's small arrays
    sat in the heap, which cannot give back memory freed below its top); the stored rows are the same."""
    monkeypatch.setattr("indexer.index.unit_writer.TOKEN_BLOCK_ROWS", 200)
    db, held = tmp_path / "lens.duckdb", []
    with writer(db) as con:
        out = UnitWriter(con, 1, run_rows=run_rows)
        try:
            for layer, chunks in _units():
                out.write(Projected("ff_value", layer, None, sum(int(c.norm.shape[0]) for c in chunks), iter(chunks)))
                held.append([len(t["token_id"]) for t in out._run.tokens])
            out.finish()
        finally:
            out.drain()
    assert out.n_runs == runs
    if runs == 1:  # chunks of 128, 128 and 64 rows per unit: a block at the chunk that reaches 200 loose rows
        assert held == [[256, 64], [256, 320, 64], [256, 320, 320, 64]]
    _assert_stored(db, runs)


def test_a_run_ends_where_its_rows_could_not_be_placed(tmp_path: Path) -> None:
    """A buffered row keeps only its token, score and z-score; its vector id, side and rank come from its place in
    the run, which holds only while every vector has 2k rows. A chunk with another k starts a new run, and every
    row is stored as it was projected."""
    units = [(0, _units(1, 40, 4)[0][1]), (1, _units(1, 24, 3)[0][1])]
    db = tmp_path / "lens.duckdb"
    with writer(db) as con:
        out = UnitWriter(con, 1, run_rows=10**9)
        try:
            for layer, chunks in units:
                out.write(Projected("ff_value", layer, None, sum(int(c.norm.shape[0]) for c in chunks), iter(chunks)))
            out.finish()
        finally:
            out.drain()
        stored = {r[:4]: r[4] for r in con.execute(
            "SELECT vector_id, side, rank, token_id, score FROM vector_tokens").fetchall()}
    expected, vid = {}, 1
    for _, chunks in units:
        for c in chunks:
            for i in range(int(c.norm.shape[0])):
                for side, scores, ids in (("top", c.tb.top_scores, c.tb.top_ids),
                                          ("bottom", c.tb.bottom_scores, c.tb.bottom_ids)):
                    for r in range(scores.shape[1]):
                        expected[(vid, side, r + 1, int(ids[i, r]))] = float(scores[i, r])
                vid += 1
    assert out.n_runs == 2
    assert stored.keys() == expected.keys()
    assert all(stored[key] == pytest.approx(value, rel=1e-6) for key, value in expected.items())


def _assert_stored(db: Path, runs: int) -> None:
    total = 3 * 40 * 8
    con = duckdb.connect(str(db), read_only=True)
    stored = con.execute("SELECT vector_id, side, rank, token_id, score, zscore FROM vector_tokens").fetchall()
    keys = [(r[3], r[0]) for r in stored]
    lists = [r[0] for r in con.execute("SELECT vector_id FROM vector_lists").fetchall()]
    vectors = [r[0] for r in con.execute("SELECT vector_id FROM vectors").fetchall()]
    con.close()
    expected = _expected()
    assert len(stored) == total and {r[:4] for r in stored} == set(expected)
    assert all(r[4:] == pytest.approx(expected[r[:4]], rel=1e-6) for r in stored)
    # stored in insertion order: one ascent of (token_id, vector_id) per run, a descent only where a run begins
    assert sum(1 for a, b in zip(keys, keys[1:], strict=False) if b < a) <= runs - 1
    assert lists == vectors == list(range(1, 3 * 40 + 1))


def test_row_blocks_read_a_bf16_tensor_as_float32_slices(tmp_path: Path) -> None:
    w = torch.randn(1000, 24).to(torch.bfloat16)
    save_file({"lm_head.weight": w}, str(tmp_path / "model.safetensors"))
    ckpt = Checkpoint(tmp_path, {}, [tmp_path / "model.safetensors"], {"lm_head.weight": (1000, 24)},
                      {"lm_head.weight": tmp_path / "model.safetensors"})
    blocks = list(ckpt.row_blocks("lm_head.weight", 300))
    assert [b.shape[0] for b in blocks] == [300, 300, 300, 100]
    assert all(b.dtype == torch.float32 for b in blocks)
    assert torch.equal(torch.cat(blocks), w.float()) and torch.equal(torch.cat(blocks), ckpt.tensor("lm_head.weight"))


def _one_file(tmp_path: Path, tensors: dict[str, torch.Tensor]) -> Checkpoint:
    save_file(tensors, str(tmp_path / "model.safetensors"))
    where = dict.fromkeys(tensors, tmp_path / "model.safetensors")
    return Checkpoint(tmp_path, {}, [tmp_path / "model.safetensors"], {k: tuple(v.shape) for k, v in tensors.items()},
                      where)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_a_layer_is_read_in_blocks_into_one_float32_matrix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           dtype: torch.dtype) -> None:
    """Checkpoint.tensor and .transposed fill one float32 result block by block (here 37 rows of 4 B × 64 at a
    time): the same values as converting the whole tensor, transposed where asked, one expert of a 3-D tensor."""
    monkeypatch.setattr("indexer.model.checkpoint.READ_BLOCK", 37 * 4 * 64)
    g = torch.Generator().manual_seed(3)
    w, experts = torch.randn(200, 64, generator=g).to(dtype), torch.randn(3, 100, 64, generator=g).to(dtype)
    ckpt = _one_file(tmp_path, {"w": w, "experts": experts, "norm": torch.ones(64, dtype=dtype)})
    assert torch.equal(ckpt.tensor("w"), w.float()) and ckpt.tensor("w").dtype == torch.float32
    t = ckpt.transposed("w")
    assert t.is_contiguous() and torch.equal(t, w.float().T)
    assert torch.equal(ckpt.tensor("experts", 1), experts[1].float())
    assert torch.equal(ckpt.transposed("experts", 2), experts[2].float().T)
    assert torch.equal(ckpt.tensor("norm"), torch.ones(64))


def test_a_non_finite_value_in_a_late_block_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("indexer.model.checkpoint.READ_BLOCK", 10 * 4 * 8)
    w = torch.zeros(100, 8)
    w[97, 3] = float("nan")
    ckpt = _one_file(tmp_path, {"w": w})
    for read in (ckpt.tensor, ckpt.transposed):
        with pytest.raises(CheckpointError, match="NaN or Inf"):
            read("w")


def test_stored_vectors_are_appended_in_batches_not_held_for_the_run(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """With one token run for the whole checkpoint, the stored vectors still go to vector_values as their bytes
    reach VALUE_BYTES (in id order), instead of waiting in memory for the run to close."""
    monkeypatch.setattr("indexer.index.unit_writer.VALUE_BYTES", 4096)
    d = 32
    with writer(tmp_path / "lens.duckdb") as con:
        out = UnitWriter(con, 1, run_rows=10**9)
        try:
            for layer, chunks in _units():
                kept = [Chunk(c.first_index, c.tb, c.mean, c.std, c.norm, torch.full((int(c.norm.shape[0]), d),
                                                                                      float(layer)))
                        for c in chunks]
                out.write(Projected("ff_value", layer, None, sum(int(c.norm.shape[0]) for c in kept), iter(kept),
                                    role="writes"))
            out.wait()
            assert out.n_runs == 0  # the token run is still open
            early = con.execute("SELECT count(*) FROM vector_values").fetchone()[0]  # type: ignore[index]
            assert early >= 3 * 40 - 4096 // (4 * d) - 16
            out.finish()
        finally:
            out.drain()
        ids = [r[0] for r in con.execute("SELECT vector_id FROM vector_values").fetchall()]
        firsts = [r[0] for r in con.execute('SELECT "values"[1] FROM vector_values').fetchall()]
    assert ids == list(range(1, 3 * 40 + 1)) and firsts == [float(i // 40) for i in range(120)]


def test_a_run_holds_duckdb_to_its_limit_and_restores_it(tiny_gpt2: TinyModel, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """While a run writes, the store's DuckDB instance spills beyond DUCKDB_LIMIT (the transaction's stored vectors
    and basis rows are not held in memory) and runs on DUCKDB_THREADS threads (its appends beside the GEMM); the
    instance's own limit and threads are back once the run is over."""
    db, marker = tmp_path / "lens.duckdb", tmp_path / "paused"
    con = duckdb.connect(str(db))
    con.execute("SET memory_limit = '3GiB'")
    con.execute("SET threads = 2")

    def setting(c: duckdb.DuckDBPyConnection) -> tuple[str, int]:
        return c.execute("SELECT current_setting('memory_limit'), current_setting('threads')").fetchone()  # type: ignore[return-value]

    before = setting(con)
    monkeypatch.setenv("LENSDB_TEST_PAUSE_AT", "commit")
    monkeypatch.setenv("LENSDB_TEST_PAUSE_MARKER", str(marker))
    monkeypatch.setenv("LENSDB_TEST_PAUSE_S", "1")
    monkeypatch.setattr(faults, "_reached", set())
    seen: list[str] = []

    def watch() -> None:
        while not marker.exists():
            time.sleep(0.01)
        seen.append(setting(con.cursor()))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        index_checkpoint(Store(db, con), tiny_gpt2.path, IndexOptions(name="g", top_k=3))
    finally:
        marker.touch()
        watcher.join()
    assert seen == [(f"{DUCKDB_LIMIT >> 20}.0 MiB", DUCKDB_THREADS)] and setting(con) == before == ("3.0 GiB", 2)
    con.close()


def test_basis_rows_go_in_batches_of_value_bytes_each_row_once_in_token_order(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of basis rows (1024 rows each from W_U) are gathered into inserts of about VALUE_BYTES, not one small
    insert per block, and every row lands once, in token order."""
    from indexer.index import unit_writer
    from indexer.index.records import basis_batch

    matrix = torch.arange(100 * 8, dtype=torch.float32).reshape(100, 8)
    monkeypatch.setattr(unit_writer, "VALUE_BYTES", 5 * basis_batch(1, "writes", matrix[:8]).nbytes)  # 5 blocks
    inserts: list[int] = []

    def counted(con: duckdb.DuckDBPyConnection, table: str, rows) -> None:  # type: ignore[no-untyped-def]
        if table == "basis_rows":
            inserts.append(rows.num_rows)
        unit_writer_append(con, table, rows)

    unit_writer_append = unit_writer.append_arrow
    monkeypatch.setattr(unit_writer, "append_arrow", counted)
    with writer(tmp_path / "lens.duckdb") as con:
        out = UnitWriter(con, 1)
        try:
            out.basis_rows("writes", ((s, matrix[s : s + 8]) for s in range(0, 100, 8)))
            out.finish()
        finally:
            out.drain()
        got = con.execute('SELECT token_id, "values" FROM basis_rows ORDER BY rowid').fetchall()
    assert inserts == [40, 40, 20]
    assert [t for t, _ in got] == list(range(100)) and [v for _, v in got] == matrix.tolist()


@pytest.mark.parametrize("locked", [False, True])
def test_a_run_commits_straight_into_the_file(tiny_gpt2: TinyModel, tmp_path: Path, locked: bool) -> None:
    """An index run's commit checkpoints its rows into the file instead of logging them first (they would be
    written twice), and the instance's checkpoint_threshold is back afterwards; an instance whose configuration
    is locked (the service's) commits through its log as before."""
    db, wal = tmp_path / "lens.duckdb", tmp_path / "lens.duckdb.wal"
    with writer(db):
        pass  # an existing store: nothing checkpoints the run's rows at close before the assertions
    con = duckdb.connect(str(db), config={"lock_configuration": "true"} if locked else {})
    threshold = con.execute("SELECT current_setting('checkpoint_threshold')").fetchall()  # all: no result left open
    index_checkpoint(Store(db, con), tiny_gpt2.path, IndexOptions(name="g", top_k=3))
    logged = wal.stat().st_size if wal.exists() else 0
    assert (logged > 100_000) if locked else logged == 0
    assert con.execute("SELECT current_setting('checkpoint_threshold')").fetchall() == threshold
    rows = con.execute("SELECT count(*) FROM vector_tokens").fetchone()
    con.close()
    with duckdb.connect(str(db), read_only=True) as again:
        assert again.execute("SELECT count(*) FROM vector_tokens").fetchone() == rows != (0,)


def test_a_run_is_sorted_and_appended_without_being_held_whole_once_sorted() -> None:
    """sorted_token_slices empties the buffered columns as it joins them and builds the sorted rows a slice at a
    time: consumed slice by slice, as the writer appends them, a run's sort holds at its peak less than the sorted
    run itself (numpy's allocations, as tracemalloc counts them: the buffered run, 12 B a row, its order, 8 B, and a
    slice). Building the sorted run whole held 1.35 times it (after session 12), and 3 times before (the chunks,
    their join and the sorted copy at once: ~350 MB for a 5 M-row run)."""
    import tracemalloc

    import numpy as np

    from indexer.index.records import sorted_token_slices, token_columns, token_values

    g = torch.Generator().manual_seed(0)
    k, n, chunks = 50, 400, 10
    parts, rows, first = [], [], 1
    for _ in range(chunks):
        top = torch.randn(n, k, generator=g).sort(dim=1, descending=True).values
        tb = TopBottom(top, torch.randint(0, 30000, (n, k), generator=g, dtype=torch.int64), -top,
                       torch.randint(0, 30000, (n, k), generator=g, dtype=torch.int64))
        stats = torch.zeros(n, dtype=torch.float64), torch.ones(n, dtype=torch.float64)
        parts.append(token_values(tb, *stats))
        rows.append(token_columns(first, tb, *stats))
        first += n
    expected = {name: np.concatenate([r[name] for r in rows]) for name in rows[0]}
    order = np.lexsort((expected["vector_id"], expected["token_id"]))
    run_bytes = sum(v.nbytes for v in expected.values())
    want = {name: values[order] for name, values in expected.items()}  # side: 0 top, 1 bottom
    tracemalloc.start()
    try:
        held = tracemalloc.get_traced_memory()[0]
        parts = [{name: v.copy() for name, v in p.items()} for p in parts]  # the run as buffered, counted from here
        start = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        at = 0
        for table in sorted_token_slices(parts, 1, k, rows=n * 2 * k):  # ten slices, each checked and dropped
            for name, values in want.items():
                column = table.column(name).combine_chunks()
                if name == "side":  # dictionary-encoded: its indices into ("top", "bottom")
                    assert column.dictionary.to_pylist() == ["top", "bottom"]
                    column = column.indices
                got = column.to_numpy()
                assert np.array_equal(got, values[at : at + table.num_rows]), name
            at += table.num_rows
            del table, column, got
        grew = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    assert parts == [] and at == len(order)
    peak = (start + grew - held) / run_bytes  # at its peak, as a multiple of the sorted run
    assert peak < 1.0, f"the sort held {peak:.2f} times the run"


def test_an_appended_batch_is_released_before_the_transaction_ends(tmp_path: Path) -> None:
    """append_arrow leaves nothing of its Arrow batch referenced by the open transaction: a run's stored vectors,
    basis rows and token runs are released as they are appended, not at commit (``register`` kept each one)."""
    import gc

    import pyarrow as pa

    from schema.writer import append_arrow

    n, d = 2000, 512
    with writer(tmp_path / "lens.duckdb") as con:
        floor = pa.total_allocated_bytes()
        for start in range(1, 3 * n, n):  # built in Arrow's own pool, so its bytes are counted there
            values = pa.concat_arrays([pa.array([[float(i)] * d for i in range(start, start + n // 2)],
                                                pa.list_(pa.float32())),
                                       pa.array([[0.5] * d] * (n - n // 2), pa.list_(pa.float32()))])
            batch = pa.table({"vector_id": pa.array(range(start, start + n), pa.int64()), "values": values})
            assert pa.total_allocated_bytes() - floor > n * d * 4
            append_arrow(con, "vector_values", batch)
            del batch, values
            gc.collect()
            assert pa.total_allocated_bytes() - floor < n * d  # freed with the append, before the commit
        stored = con.execute('SELECT count(*), sum("values"[1]) FROM vector_values').fetchone()
    assert stored == (3 * n, sum(sum(range(s, s + n // 2)) + 0.5 * (n - n // 2) for s in range(1, 3 * n, n)))


def test_append_arrow_matches_columns_by_name_and_refuses_unknown_ones(tmp_path: Path) -> None:
    import pyarrow as pa

    from schema.writer import append_arrow

    with writer(tmp_path / "lens.duckdb") as con:
        con.execute("CREATE TEMP TABLE t (a INTEGER, b VARCHAR, c DOUBLE)")
        append_arrow(con, "t", pa.table({"c": [1.5], "a": [7]}))
        with pytest.raises(TypeError, match="no column z"):
            append_arrow(con, "t", pa.table({"a": [1], "z": [2]}))
        assert con.execute("SELECT * FROM t").fetchall() == [(7, None, 1.5)]


def test_vector_rows_go_ahead_of_the_token_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Vector rows and vector lists need no sort: once VALUE_BYTES of them are buffered they are appended while
    later chunks are built, in id order, instead of waiting for the token run to close."""
    monkeypatch.setattr("indexer.index.unit_writer.VALUE_BYTES", 4096)
    with writer(tmp_path / "lens.duckdb") as con:
        out = UnitWriter(con, 1, run_rows=10**9)
        try:
            for layer, chunks in _units():
                out.write(Projected("ff_value", layer, None, sum(int(c.norm.shape[0]) for c in chunks), iter(chunks)))
            out.wait()
            assert out.n_runs == 0  # the token run is still open
            early = con.execute("SELECT count(*) FROM vectors").fetchone()[0]  # type: ignore[index]
            assert early > 0 and early == con.execute("SELECT count(*) FROM vector_lists").fetchone()[0]  # type: ignore[index]
            assert con.execute("SELECT count(*) FROM vector_tokens").fetchone()[0] == 0  # type: ignore[index]
            out.finish()
        finally:
            out.drain()
        ids = [r[0] for r in con.execute("SELECT vector_id FROM vectors").fetchall()]
        listed = [r[0] for r in con.execute("SELECT vector_id FROM vector_lists").fetchall()]
    assert ids == listed == list(range(1, 3 * 40 + 1)) and out.n_vectors == 120

"""Issue 17: one writer, a store that stays consistent.

Writes go in by column name with ids from counters that never hand an id out twice; deletes follow the declared
references (``--replace``, ``lensdb forget``); ``lensdb check`` finds orphans along every reference, is right after
``--head-maps``, and two ``lensdb index`` runs racing on a new store never lose what either committed.
Real DuckDB files, real processes; nothing of ours mocked.
"""

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from indexer import IndexOptions, index_checkpoint
from indexer.analyses.align import align_models
from indexer.analyses.trace import TraceOptions, trace_input
from schema.ddl import view_ddl
from schema.deletes import REFERENCES, delete_statements
from schema.ids import COUNTERS
from schema.tables import metadata
from schema.writer import insert, writer
from service.cli import main
from tests.service_fixtures import tiny_gpt2
from tests.tinymodels import save_gpt2

ROOT = Path(__file__).resolve().parents[1]


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def orphans(db: Path) -> dict[str, int]:
    """Rows that name a missing row, along every declared reference, counted with plain SQL (not ``check``)."""
    found = {}
    with duckdb.connect(str(db), read_only=True) as con:
        for r in REFERENCES:
            (n,) = con.execute(f'SELECT count(*) FROM {r.table} x WHERE x."{r.column}" IS NOT NULL AND NOT EXISTS '
                               f'(SELECT 1 FROM {r.target} y WHERE y."{r.target_column}" = x."{r.column}")').fetchone()
            if n:
                found[f"{r.table}.{r.column}"] = n
    return found


def rows(db: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql).fetchall()


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Two tiny GPT-2 checkpoints that share a vocabulary (so they align), and a store holding both."""
    root = tmp_path_factory.mktemp("two")
    a, b = save_gpt2(root / "a", seed=1).path, save_gpt2(root / "b", seed=2).path
    db = root / "lens.duckdb"
    index_checkpoint(db, a, IndexOptions(name="a", top_k=8, device="cpu"))
    index_checkpoint(db, b, IndexOptions(name="b", top_k=8, device="cpu"))
    return a, b, db


@pytest.fixture
def store(two_models: tuple[Path, Path, Path], tmp_path: Path) -> Path:
    db = tmp_path / "lens.duckdb"
    shutil.copy(two_models[2], db)
    return db


# ---- the writer API -----------------------------------------------------------------------------------------


def test_no_positional_insert_is_left_in_the_code() -> None:
    """Every INSERT names its columns (or goes BY NAME): a column added to a table cannot shift a row."""
    positional = re.compile(r"INSERT\s+(OR\s+\w+\s+)?INTO\s+[\w.]+\s+(VALUES|SELECT)", re.IGNORECASE)
    found = [f"{f.relative_to(ROOT)}: {m.group(0)}" for pkg in ("indexer", "schema", "queries", "service")
             for f in sorted((ROOT / pkg).rglob("*.py")) for m in positional.finditer(f.read_text())
             if "lensdb_meta VALUES" not in m.group(0)]  # (key, value): its shape is the schema version itself
    assert found == []


def test_inserts_go_by_name_into_a_table_whose_columns_moved(store: Path, two_models) -> None:
    """Rebuild traces with its columns in another order: a trace still lands in the right columns."""
    with writer(store) as con:
        cols = [r[0] for r in con.execute("SELECT column_name FROM duckdb_columns() WHERE table_name = 'traces' "
                                          "ORDER BY column_index").fetchall()]
        moved = ", ".join(f'"{c}"' for c in reversed(cols))
        con.execute(f"CREATE TABLE traces_moved AS SELECT {moved} FROM traces")
        con.execute("DROP TABLE traces")
        con.execute("ALTER TABLE traces_moved RENAME TO traces")
        for stmt in view_ddl():
            con.execute(stmt)
    result = trace_input(store, TraceOptions(model="a", prompt="paris london"))
    prompt, readout, checkpoint = rows(store, f"SELECT prompt, readout, checkpoint_id FROM traces "
                                              f"WHERE trace_id = {result.trace_id}")[0]
    assert (prompt, readout) == ("paris london", "lm_head")
    assert checkpoint == rows(store, "SELECT c.checkpoint_id FROM checkpoints c JOIN models m USING (model_id) "
                                     "WHERE m.name = 'a'")[0][0]
    with writer(store) as con, pytest.raises(TypeError, match="no column nope; missing"):
        insert(con, "sources", nope=1)


def test_every_id_column_is_counted_and_every_reference_is_declared() -> None:
    """A table's own id comes from a counter, and a column that holds another table's id declares the reference,
    or this names it: deletes and check follow the declarations, so nothing may be left out of them."""
    for t in metadata.sorted_tables:
        key = [c.name for c in t.primary_key.columns]
        if len(key) == 1 and key[0].endswith("_id"):
            assert COUNTERS.get(t.name) == key[0], f"{t.name}.{key[0]} takes no ids from id_counters"
    counted = set(COUNTERS.values())
    declared = {(r.table, r.column) for r in REFERENCES}
    for t in metadata.sorted_tables:
        for c in t.columns:
            if c.name in counted and COUNTERS.get(t.name) != c.name:
                assert (t.name, c.name) in declared, f"{t.name}.{c.name} holds ids of another table undeclared"


def test_deletes_reach_every_table_that_names_a_checkpoint() -> None:
    touched = {table for table, _ in delete_statements("checkpoints", "checkpoint_id = ?")}
    assert touched >= {"vectors", "vector_tokens", "vector_lists", "head_pairs", "vector_units", "head_factors",
                       "bases", "index_runs", "traces", "trace_states", "trace_neurons", "trace_top_tokens",
                       "alignment_runs", "layer_similarity", "neuron_matches", "checkpoint_aliases",
                       "run_attempts", "checkpoints"}


# ---- --replace, forget, ids ---------------------------------------------------------------------------------


def test_replace_after_traces_and_alignments_leaves_no_orphans_and_reuses_no_id(store: Path, two_models) -> None:
    a, b, _ = two_models
    align_models(store, "a", "b")
    trace_input(store, TraceOptions(model="b", prompt="paris london berlin", zero=["1.3"]))
    before_ids = rows(store, "SELECT max(checkpoint_id), max(vector_id) FROM vectors")[0]
    assert rows(store, "SELECT count(*) FROM trace_neurons WHERE vector_id IS NOT NULL")[0][0] > 0

    code, out, err = cli("index", str(b), "--db", str(store), "--name", "b", "--replace", "--top-k", "5", "--quiet")
    assert code == 0, err
    assert "replacing it removed 1 alignment runs, 2 traces made from the old rows" in out
    assert orphans(store) == {}
    assert rows(store, "SELECT count(*) FROM alignment_runs")[0][0] == 0
    assert rows(store, "SELECT count(*) FROM layer_similarity")[0][0] == 0
    assert rows(store, "SELECT count(*) FROM traces")[0][0] == 0
    # b was the newest checkpoint: its ids are not handed out again
    new_ckpt, first_vector = rows(store, "SELECT min(checkpoint_id), min(vector_id) FROM vectors v "
                                         "JOIN checkpoints c USING (checkpoint_id) JOIN models m USING (model_id) "
                                         "WHERE m.name = 'b'")[0]
    assert new_ckpt > before_ids[0] and first_vector > before_ids[1]
    code, out, _ = cli("check", "--db", str(store))
    assert code == 0 and out.startswith("ok: 2 checkpoints")
    # a trace made now links its neurons to the new vectors, and names them right
    t = trace_input(store, TraceOptions(model="b", prompt="paris london berlin"))
    wrong = rows(store, f"""SELECT count(*) FROM trace_neurons n JOIN vectors v USING (vector_id)
                            WHERE n.trace_id = {t.trace_id} AND (v.layer <> n.layer OR v.idx <> n.idx
                                                                  OR v.component <> 'ff_value')""")[0][0]
    assert wrong == 0


def test_forget_a_checkpoint_or_a_model_removes_everything_made_from_it(store: Path, two_models) -> None:
    align_models(store, "a", "b")
    trace_input(store, TraceOptions(model="a", prompt="paris london"))
    b_rows = rows(store, "SELECT v.layer, v.idx, p.side, p.rank, p.token_id, p.score FROM vector_tokens p "
                         "JOIN vectors v USING (vector_id) JOIN checkpoints USING (checkpoint_id) "
                         "JOIN models m USING (model_id) WHERE m.name = 'b' ORDER BY ALL")
    code, out, err = cli("forget", "a", "--checkpoint", "nope", "--db", str(store))
    assert code == 1 and "model 'a' has no checkpoint 'nope'; it has: a" in err
    code, out, err = cli("forget", "a", "--checkpoint", "a", "--db", str(store))
    assert code == 0, err
    assert "forgot checkpoint a/a:" in out and "1 alignment_runs" in out and "1 traces" in out
    assert orphans(store) == {}
    assert rows(store, "SELECT count(*) FROM checkpoints c JOIN models m USING (model_id) WHERE m.name = 'a'") == [(0,)]
    code, out, err = cli("forget", "a", "--db", str(store))
    assert code == 0 and "forgot model a:" in out, err
    assert rows(store, "SELECT name FROM models") == [("b",)]
    # the other model is as it was, and the store checks clean
    assert rows(store, "SELECT v.layer, v.idx, p.side, p.rank, p.token_id, p.score FROM vector_tokens p "
                       "JOIN vectors v USING (vector_id) JOIN checkpoints USING (checkpoint_id) "
                       "JOIN models m USING (model_id) WHERE m.name = 'b' ORDER BY ALL") == b_rows
    assert cli("check", "--db", str(store))[0] == 0
    code, out, err = cli("forget", "b", "--db", str(store), "--json")
    assert code == 0 and json.loads(out)["rows"]["vocabularies"] == 1  # no model uses it any more
    assert rows(store, "SELECT count(*) FROM tokens") == [(0,)] and orphans(store) == {}
    assert cli("forget", "zzz", "--db", str(store))[2].startswith("lensdb: error: no model 'zzz'")


# ---- lensdb check ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pair_vocab", ["all", "few"])
def test_check_is_clean_after_head_maps(tmp_path: Path, pair_vocab: str) -> None:
    tiny = save_gpt2(tmp_path / "heads", plant_heads=True)
    (tmp_path / "few.txt").write_text("king\nqueen\ndog\n")  # 3 tokens: 9 pairs a map, fewer than k = 20
    db = tmp_path / "lens.duckdb"
    vocab = "all" if pair_vocab == "all" else str(tmp_path / "few.txt")
    code, _, err = cli("index", str(tiny.path), "--db", str(db), "--head-maps", "--top-k", "20", "--pair-vocab",
                       vocab, "--quiet", "--device", "cpu")
    assert code == 0, err
    code, out, err = cli("check", "--db", str(db))
    assert code == 0, out + err
    pairs = rows(db, "SELECT count(*) FROM head_pairs")[0][0]
    assert out.startswith("ok: 1 checkpoints") and f"{pairs} head-map pairs" in out


def test_check_finds_orphans_along_every_reference(store: Path) -> None:
    align_models(store, "a", "b")
    with duckdb.connect(str(store)) as con:
        con.execute("DELETE FROM alignment_runs")  # its layer_similarity and neuron_matches rows stay behind
        con.execute("UPDATE id_counters SET last_id = 0 WHERE table_name = 'checkpoints'")
    code, out, _ = cli("check", "--db", str(store))
    assert code == 1
    assert re.search(r"\d+ layer_similarity rows belong to no alignment \(e\.g\. alignment_id 1\)", out), out
    assert "neuron_matches rows belong to no alignment" in out
    assert "id counter of checkpoints is at 0 but the table holds checkpoint_id 2" in out


# ---- two index runs racing on a new store -------------------------------------------------------------------

RACER = r"""
import contextlib, io, json, sys, time
from pathlib import Path
from service.cli import main
root, me, n, ckpt = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
out = []
for i in range(n):
    (root / f"ready-{i}-{me}").touch()
    while not all((root / f"ready-{i}-{w}").exists() for w in "ab"):
        time.sleep(0.0002)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["index", ckpt, "--db", str(root / f"store-{i}.duckdb"), "--name", "m" + me, "--top-k", "3",
                     "--component", "ff_value", "--quiet", "--device", "cpu"])
    out.append([code, err.getvalue()])
print(json.dumps(out))
"""


def test_two_index_runs_racing_on_a_new_store_lose_nothing(tmp_path: Path) -> None:
    """Two `lensdb index` processes start together on a store that does not exist yet, 24 times over: each
    either indexes its checkpoint, which is then in the store with its complete attempt, or fails saying the
    file is in use; nothing committed is ever lost, and every store checks clean."""
    n = 24
    ckpts = {w: str(tiny_gpt2(tmp_path / f"ckpt-{w}", n_embd=16, seed=s)) for w, s in (("a", 1), ("b", 2))}
    procs = {w: subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path), w, str(n), ckpts[w]], cwd=ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for w in "ab"}
    results = {}
    for w, p in procs.items():
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        results[w] = json.loads(out.strip().splitlines()[-1])
    both = 0
    for i in range(n):
        db = tmp_path / f"store-{i}.duckdb"
        assert db.exists(), f"trial {i}: no store at all ({results['a'][i]}, {results['b'][i]})"
        models = {r[0] for r in rows(db, "SELECT name FROM models")}
        attempts = dict(rows(db, "SELECT model, status FROM run_attempts WHERE status = 'complete'"))
        for w in "ab":
            code, err = results[w][i]
            if code == 0:
                assert f"m{w}" in models, f"trial {i}: m{w} said it indexed, but the store lost it"
                assert attempts.get(f"m{w}") == "complete", f"trial {i}: m{w}'s attempt row is gone"
            else:
                assert "in use by another process" in err, f"trial {i}: {err}"
        both += all(results[w][i][0] == 0 for w in "ab")
        assert cli("check", "--db", str(db))[0] == 0, f"trial {i}"
        assert not list(tmp_path.glob(f".store-{i}.duckdb.*")), "a private file was left behind"
    assert both > 0  # the loser of the race to create the file indexes into the winner's store


def test_a_first_run_killed_midway_leaves_no_store_and_its_private_file_is_swept(tmp_path: Path) -> None:
    ckpt = tiny_gpt2(tmp_path / "ckpt", n_embd=16, seed=3)
    db, marker = tmp_path / "lens.duckdb", tmp_path / "paused"
    env = {**os.environ, "LENSDB_TEST_PAUSE_AT": "write", "LENSDB_TEST_PAUSE_MARKER": str(marker)}
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "index", str(ckpt), "--db", str(db), "--quiet",
                             "--device", "cpu"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for _ in range(1200):
            if marker.exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert marker.exists(), proc.communicate()[0]
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    assert not db.exists()  # the run was building its store in a private file
    assert list(tmp_path.glob(".lens.duckdb.*.new*"))
    code, out, err = cli("index", str(ckpt), "--db", str(db), "--quiet", "--device", "cpu")
    assert code == 0, err
    assert not list(tmp_path.glob(".lens.duckdb.*.new*"))  # the dead run's file is gone
    assert cli("check", "--db", str(db))[0] == 0

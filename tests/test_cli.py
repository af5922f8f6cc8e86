"""The command line, called in-process: the outputs users and scripts read."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from service.cli import main
from tests.tinymodels import TinyModel

HIT_FIELDS = {"model", "checkpoint", "component", "layer", "head", "index", "side", "rank", "token_id", "token",
              "score", "zscore"}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_promoters_json_has_the_documented_fields(indexed_store: Path, tiny_gpt2: TinyModel,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    rows = json.loads(run(capsys, "promoters", "paris", "--db", str(indexed_store), "--json", "--limit", "5"))
    assert len(rows) == 5 and set(rows[0]) >= HIT_FIELDS
    per_head = {"attn_q", "attn_k", "attn_v", "attn_o"}
    assert all(r["side"] == "top" and (r["head"] is None) == (r["component"] not in per_head) for r in rows)
    assert [r["zscore"] for r in rows] == sorted((r["zscore"] for r in rows), reverse=True)
    gpt2 = [r for r in rows if r["model"] == "gpt2-tiny"]
    assert gpt2[0]["token"] == " paris" and gpt2[0]["token_id"] == tiny_gpt2.token_id("paris")


def test_suppressors_and_filters(indexed_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = json.loads(run(capsys, "suppressors", "london", "--db", str(indexed_store), "--json",
                          "--model", "gpt2-tiny", "--component", "ff_value", "--layer", "0", "--limit", "3"))
    assert rows[0]["index"] == 3 and rows[0]["rank"] == 1 and rows[0]["side"] == "bottom"
    assert all(r["layer"] == 0 and r["component"] == "ff_value" for r in rows)


def test_paging_with_offset(indexed_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = json.loads(run(capsys, "promoters", "paris", "--db", str(indexed_store), "--json", "--limit", "4"))
    second = json.loads(run(capsys, "promoters", "paris", "--db", str(indexed_store), "--json", "--limit", "2",
                            "--offset", "2"))
    assert second == first[2:4]


def test_token_ids_are_accepted(indexed_store: Path, tiny_gpt2: TinyModel, capsys: pytest.CaptureFixture[str]) -> None:
    tid = str(tiny_gpt2.token_id("paris"))
    rows = json.loads(run(capsys, "promoters", tid, "--id", "--model", "gpt2-tiny", "--db", str(indexed_store),
                          "--json", "--limit", "1"))
    assert rows[0]["token"] == " paris"


def test_vector_table_and_json(indexed_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = run(capsys, "vector", "gpt2-tiny", "ff_value", "1", "7", "--db", str(indexed_store), "--limit", "3")
    assert "promotes" in text and "' paris'" in text
    data = json.loads(run(capsys, "vector", "gpt2-tiny", "ff_value", "1", "7", "--db", str(indexed_store), "--json"))
    assert data["top"][0]["token"] == " paris" and len(data["top"]) == len(data["bottom"]) == 50
    assert data["norm"] > 0 and data["logit_std"] > 0 and data["basis"] == "folded"


def test_tokens_resolve_in_each_vocabulary(indexed_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = json.loads(run(capsys, "tokens", "paris", "--db", str(indexed_store), "--json"))
    assert {(r["model"], r["token"]) for r in rows} == {("gpt2-tiny", "Ġparis"), ("bert-tiny", "paris"),
                                                        ("bert-tiny", "##paris")}
    upper = json.loads(run(capsys, "tokens", "PARIS", "--db", str(indexed_store), "--json"))
    assert {r["token"] for r in upper} == {"Ġparis", "paris", "##paris"}


def test_models_and_sql(indexed_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = run(capsys, "models", "--db", str(indexed_store))
    assert "gpt2-tiny" in text and "bert-tiny" in text and "folded" in text
    rows = json.loads(run(capsys, "sql", "SELECT model, count(*) AS n FROM projections GROUP BY model ORDER BY model",
                          "--db", str(indexed_store), "--json"))
    # 2 layers × ((keys + values) × d_ff + (q, k, v, o) × d + 2 biases) vectors, 50 tokens a side
    assert rows == [{"model": "bert-tiny", "n": 2 * (2 * 64 + 4 * 32 + 2) * 100},
                    {"model": "gpt2-tiny", "n": 2 * (2 * 128 + 4 * 32 + 2) * 100}]


def test_sql_row_cap_says_truncated(indexed_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sql", "SELECT * FROM tokens", "--db", str(indexed_store), "--max-rows", "3"]) == 0
    out, err = capsys.readouterr()
    assert len(out.strip().splitlines()) == 2 + 3 and "truncated at 3 rows" in err


def test_sql_runaway_query_is_stopped(indexed_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["sql", "SELECT count(*) FROM range(100000000) a, range(100000000) b", "--db", str(indexed_store),
                 "--timeout", "0.5"])
    assert code == 1 and "ran longer than 0.5s" in capsys.readouterr().err


def test_index_prints_a_summary_and_then_a_no_op(tiny_bert: TinyModel, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "x.duckdb")
    assert "indexed bert/tiny-bert: 516 vectors" in run(capsys, "index", str(tiny_bert.path), "--db", db, "--name",
                                                        "bert", "--quiet")
    assert "already indexed as bert/tiny-bert" in run(capsys, "index", str(tiny_bert.path), "--db", db, "--quiet")


def test_architectures_lists_families(capsys: pytest.CaptureFixture[str]) -> None:
    text = run(capsys, "architectures")
    assert "gpt2" in text and "bert" in text and "ff_value" in text


def _snapshot(db: Path) -> dict[str, object]:
    """Every table's rows (in a canonical order) and every object's name and comment."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    tables = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() ORDER BY 1").fetchall()]
    out: dict[str, object] = {t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in tables}
    # where the token tables' sorted runs start (schema.runs) says how rows lie on disk, not what the store holds
    out["lensdb_meta"] = [r for r in out["lensdb_meta"] if r[0] != "token_runs"]  # type: ignore[attr-defined]
    out["objects"] = con.execute(
        "SELECT table_name, comment FROM duckdb_tables() UNION ALL "
        "SELECT view_name, comment FROM duckdb_views() WHERE NOT internal ORDER BY 1").fetchall()
    out["constraints"] = con.execute("SELECT table_name, constraint_type, constraint_column_names "
                                     "FROM duckdb_constraints() ORDER BY ALL").fetchall()
    con.close()
    return out


def test_optimize_rewrites_the_store_sorted_and_keeps_everything(
        store_copy: Path, tiny_gpt2: TinyModel, capsys: pytest.CaptureFixture[str]) -> None:
    import duckdb

    def answers() -> str:
        return run(capsys, "promoters", "paris", "--db", str(store_copy), "--json", "--limit", "50")

    before, snap = answers(), _snapshot(store_copy)
    assert "as one token-sorted run each" in run(capsys, "optimize", "--db", str(store_copy))
    assert answers() == before and _snapshot(store_copy) == snap
    assert sorted(p.name for p in store_copy.parent.iterdir()) == [store_copy.name]  # no temporary files left
    con = duckdb.connect(str(store_copy), read_only=True)
    ids = [r[0] for r in con.execute("SELECT token_id FROM vector_tokens").fetchall()]
    assert ids == sorted(ids)
    assert con.execute("SELECT value FROM lensdb_meta WHERE key = 'token_runs'").fetchone() == ("[0]",)
    con.close()
    assert "ok: 2 checkpoints" in run(capsys, "check", "--db", str(store_copy))
    # the optimized file takes further runs like any other
    from tests.tinymodels import save_gpt2

    again = save_gpt2(store_copy.parent.parent / "again", seed=7)
    run(capsys, "index", str(again.path), "--db", str(store_copy), "--name", "again", "--quiet")
    assert "again" in run(capsys, "models", "--db", str(store_copy))


def test_optimize_refuses_a_store_another_process_writes(store_copy: Path) -> None:
    from schema.errors import StoreError
    from schema.optimize import optimize

    snap = _snapshot(store_copy)
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
                               "print('holding', flush=True); time.sleep(60)", str(store_copy)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        with pytest.raises(StoreError, match="in use by another process"):
            optimize(store_copy)
    finally:
        holder.kill()
        holder.communicate()
    assert _snapshot(store_copy) == snap
    assert sorted(p.name for p in store_copy.parent.iterdir()) == [store_copy.name]
"""Schema versions: a store written by the previous release (tests/fixtures) is refused by readers with the
command that upgrades it, upgraded in place in one transaction by any writer, and then answers as before."""

import gzip
import json
import shutil
from pathlib import Path

import duckdb
import pytest

import queries
from queries.integrity import check_store
from schema.connect import open_reader
from schema.errors import StoreError
from schema.layout import SCHEMA_VERSION
from schema.migrations import MIGRATIONS
from schema.writer import writer
from service.cli import main

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def v1_store(tmp_path: Path) -> Path:
    db = tmp_path / "store_v1.duckdb"
    with gzip.open(FIXTURES / "store_v1.duckdb.gz") as src, db.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    return db


# Columns later versions added to tables the previous release had, with the value its rows get.
ADDED = {
    # version 3: no old vector is in an expert; version 6: none belongs to a dictionary
    "vectors": {"expert": None, "dictionary_id": None}, "vector_units": {"expert": None, "dictionary_id": None},
    # version 4: the layer statistic of each alignment; version 6: no old alignment compares dictionaries
    "alignment_runs": {"statistic": "best_signed", "dictionary_a": None, "dictionary_b": None},
}
# Columns later versions added whose values the upgrade derives from each row (checked by their own tests).
DERIVED = {"vector_units": ["role"]}  # version 6: each unit's role, from its component
# Version 8 (exact search): tables created empty, and each vector's k-th z-score per side filled in from its lists.
NEW_TABLES = {"vector_values", "basis_rows", "value_blocks"}
BACKFILLED = {"vectors": ["top_zk", "bottom_zk"]}


def _columns(db: Path) -> dict[str, list[str]]:
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute("SELECT table_name, column_name FROM duckdb_columns() ORDER BY table_name, "
                           "column_index").fetchall()
    found: dict[str, list[str]] = {}
    for table, column in rows:
        found.setdefault(table, []).append(column)
    return found


def _tables(db: Path, columns: dict[str, list[str]] | None = None) -> dict[str, list[tuple]]:
    """Every table's rows (``columns``: only those columns of each table)."""
    with duckdb.connect(str(db), read_only=True) as con:
        names = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() ORDER BY 1").fetchall()]
        cols = {n: ", ".join(f'"{c}"' for c in columns[n]) if columns and n in columns else "*" for n in names}
        return {n: con.execute(f"SELECT {cols[n]} FROM {n} ORDER BY ALL").fetchall() for n in names}


def _before_v3(answer: object) -> object:
    """An answer without the ``expert`` field version 3 added to hits and vectors (None for every old vector), nor
    the ``exact``/``exact_note`` fields version 6 added to hits (an old store has no stored vectors to score, so
    its hits are the stored ones, each saying whether the lists alone decide the answer)."""
    if isinstance(answer, list):
        return [_before_v3(a) for a in answer]
    if isinstance(answer, dict):
        assert answer.get("expert") is None
        return {k: _before_v3(v) for k, v in answer.items() if k not in ("expert", "exact", "exact_note")}
    return answer


def _without_new_fields(answer: object, old: object) -> object:
    """An answer without the fields later versions added (``dictionary``, ``label`` of version 7, None for everything
    the old release stored; ``exact``/``exact_note`` of version 8, the certificate's verdict on each answer)."""
    if isinstance(answer, list) and isinstance(old, list):
        return [_without_new_fields(a, o) for a, o in zip(answer, old, strict=False)] + answer[len(old):]
    if isinstance(answer, dict) and isinstance(old, dict):
        for key in set(answer) - set(old) - {"expert", "exact", "exact_note"}:  # exact: the certificate's verdict
            assert answer[key] is None, key
        return {k: _without_new_fields(v, old.get(k)) for k, v in answer.items() if k in old or k == "expert"}
    return answer


def _version(db: Path) -> str:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute("SELECT value FROM lensdb_meta WHERE key = 'schema_version'").fetchone()[0]  # type: ignore[index]


def test_the_migrations_end_at_the_version_this_lensdb_reads() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(2, SCHEMA_VERSION + 1))


def test_readers_refuse_an_older_store_naming_the_upgrade(v1_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(StoreError, match=f"schema version 1; this lensdb reads {SCHEMA_VERSION}.*lensdb upgrade"):
        queries.connect(v1_store)
    assert main(["promoters", "paris", "--db", str(v1_store)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"lensdb upgrade --db {v1_store}" in err
    assert _version(v1_store) == "1"  # reading changed nothing


def test_the_upgrade_keeps_every_row_and_answers_as_the_old_release_did(
        v1_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before, old_columns = _tables(v1_store), _columns(v1_store)
    assert main(["upgrade", "--db", str(v1_store)]) == 0
    assert f"from schema version 1 to {SCHEMA_VERSION}" in capsys.readouterr().out
    after = _tables(v1_store, old_columns)  # every row as it was, in the columns it had
    # version 5: ids from counters, never reused; 7: dictionaries (empty); 8: exact search (empty)
    assert set(after) == set(before) | {"id_counters", "dictionaries", "dictionary_labels"} | NEW_TABLES
    assert not any(after[t] for t in NEW_TABLES)
    new_columns = _columns(v1_store)
    for table, added in ADDED.items():
        assert sorted(c for c in new_columns[table] if c not in old_columns[table]) == sorted(
            [*added, *DERIVED.get(table, []), *BACKFILLED.get(table, [])])  # the columns the later versions added
        with duckdb.connect(str(v1_store), read_only=True) as con:
            got = con.execute(f"SELECT DISTINCT {', '.join(added)} FROM {table}").fetchall()
        assert got == [tuple(added.values())], table
    with duckdb.connect(str(v1_store), read_only=True) as con:  # z_k: the stored z of each list's last token
        wrong = con.execute("""SELECT count(*) FROM vectors v JOIN (SELECT vector_id, side, arg_max(zscore, rank) z
            FROM vector_tokens GROUP BY ALL) t USING (vector_id)
            WHERE (t.side = 'top' AND t.z IS DISTINCT FROM v.top_zk) OR (t.side = 'bottom' AND t.z IS DISTINCT FROM
            v.bottom_zk)""").fetchone()[0]  # type: ignore[index]
        assert wrong == 0 and con.execute("SELECT count(top_zk) FROM vectors").fetchone()[0] > 0  # type: ignore[index]
    with duckdb.connect(str(v1_store), read_only=True) as con:  # each counter starts at the highest id held
        for table, column, last in after["id_counters"]:
            assert last == con.execute(f"SELECT coalesce(max({column}), 0) FROM {table}").fetchone()[0], table
    assert {t for t, _, _ in after["id_counters"]} >= {"checkpoints", "vectors", "traces", "alignment_runs"}
    for table, rows in before.items():
        if table == "lensdb_meta":  # the version changes; version 1's list of tables is gone
            assert dict(after[table]) == {"schema_version": str(SCHEMA_VERSION)}
        else:
            assert after[table] == rows, table
    con = open_reader(v1_store)
    try:
        assert check_store(con).ok
    finally:
        con.close()

    old = json.loads((FIXTURES / "store_v1_answers.json").read_text())
    with queries.connect(v1_store) as lens:
        new = {
            "promoters_paris": [h.model_dump(mode="json") for h in lens.promoters("paris", checkpoint="all", limit=50)],
            "suppressors_paris": [h.model_dump(mode="json") for h in lens.suppressors("paris", limit=50)],
            "vector_tiny_ff_value_1_7": lens.vector("tiny", "ff_value", 1, 7).model_dump(mode="json"),
            "trace_2": lens.trace(2).model_dump(mode="json"),
            "alignment_1": lens.alignment(1).model_dump(mode="json"),
            "steps_copy": [s.model_dump(mode="json") for s in lens.steps("copy")],
            "models": [m.model_dump(mode="json") for m in lens.models()],
        }
        heads = [r.model_dump(mode="json") for r in lens.head_map("paris", kind="ov")]
    old["alignment_1"]["info"]["statistic"] = "best_signed"  # version 4 names the statistic of old runs
    # version 5: searches default to the units that write into the stream; the old release listed every unit
    roles = {c: r for c, r in duckdb.connect(str(v1_store), read_only=True).execute(
        "SELECT DISTINCT component, role FROM vector_units").fetchall()}
    for key in ("promoters_paris", "suppressors_paris"):
        old[key] = [h for h in old[key] if roles[h["component"]] == "writes"]
        new[key] = new[key][:len(old[key])]
        assert old[key], key
    for key, answer in new.items():
        assert _before_v3(_without_new_fields(answer, old[key])) == old[key], key
    # head-map rows are computed at query time (float32 products): the same heads and targets, scores to 1e-5
    assert [(r["layer"], r["head"], [t["token_id"] for t in r["targets"]]) for r in heads] == \
        [(r["layer"], r["head"], [t["token_id"] for t in r["targets"]]) for r in old["head_map_paris_ov"]]
    for got, want in zip(heads, old["head_map_paris_ov"], strict=True):
        assert [t["score"] for t in got["targets"]] == pytest.approx([t["score"] for t in want["targets"]], abs=1e-5)
    assert main(["upgrade", "--db", str(v1_store)]) == 0
    assert f"schema version {SCHEMA_VERSION} already" in capsys.readouterr().out


def test_an_upgrade_commits_with_the_write_that_caused_it_or_not_at_all(v1_store: Path) -> None:
    before = _tables(v1_store)
    with pytest.raises(RuntimeError, match="the write failed"), writer(v1_store) as con:
        con.execute("INSERT INTO lensdb_meta VALUES ('marker', 'x')")
        raise RuntimeError("the write failed")
    assert _tables(v1_store) == before and _version(v1_store) == "1"
    with writer(v1_store) as con:
        assert con.execute("SELECT count(*) FROM token_forms").fetchone() == (len(before["token_forms"]),)
    assert _version(v1_store) == str(SCHEMA_VERSION)


def test_a_store_from_a_newer_lensdb_is_refused_by_readers_and_writers(v1_store: Path) -> None:
    with duckdb.connect(str(v1_store)) as con:
        con.execute("UPDATE lensdb_meta SET value = '99' WHERE key = 'schema_version'")
    before = _tables(v1_store)
    with pytest.raises(StoreError, match="newer lensdb .*version 99"):
        queries.connect(v1_store)
    with pytest.raises(StoreError, match="newer lensdb .*version 99"), writer(v1_store):
        pass
    assert _tables(v1_store) == before


def test_the_service_upgrades_the_store_it_opens(v1_store: Path) -> None:
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    app = create_app(Settings(db=v1_store, warm=False))
    try:
        with TestClient(app, base_url="http://localhost") as client:  # a name the service answers to
            assert client.get("/promoters", params={"token": "paris", "limit": 1}).json()["items"]
    finally:
        app.state.owner.close()
    assert _version(v1_store) == str(SCHEMA_VERSION)


def test_the_upgrade_gives_every_old_unit_its_components_role(v1_store: Path) -> None:
    """Units written before roles existed get the role their component's adapter declares: readers (ff_key,
    attn_q, …) read, head-map pairs are pairs, everything else writes; so a default search finds writers."""
    from indexer.index.head_maps import PAIRS, SVD_ROLES
    from indexer.model.adapters import ADAPTERS

    assert main(["upgrade", "--db", str(v1_store)]) == 0
    declared = {s.name: s.role for adapter in ADAPTERS for s in adapter.components}
    declared |= SVD_ROLES | {name: "pairs" for name in PAIRS.values()}
    with duckdb.connect(str(v1_store), read_only=True) as con:
        got = con.execute("SELECT DISTINCT component, role FROM vector_units ORDER BY 1").fetchall()
    assert {"ff_key", "ff_value"} <= {c for c, _ in got}
    assert got == [(c, declared[c]) for c, _ in got]


def test_the_upgrades_list_of_reading_components_is_what_the_adapters_declare() -> None:
    from indexer.index.head_maps import PAIRS, SVD_ROLES
    from indexer.model.adapters import ADAPTERS
    from schema.migrations import PAIR_COMPONENTS, READING_COMPONENTS

    declared = {s.name: s.role for adapter in ADAPTERS for s in adapter.components} | SVD_ROLES
    assert sorted(READING_COMPONENTS) == sorted(c for c, role in declared.items() if role == "reads")
    assert sorted(PAIR_COMPONENTS) == sorted(PAIRS.values())

"""The token-lookup hot path: in-memory resolution after ``Lens.warm`` answers exactly what SQL answers, the
catalog's shortcuts (vector-id blocks) give the same hits, a served store warms, and stores written by lensdb
releases that lacked a table are upgraded to give the same answers."""

import contextlib
import shutil
from pathlib import Path

import duckdb
import pytest

import queries
from queries import sql as q
from queries.catalog import loaded_words
from queries.lens import rows_from_lists
from queries.resolve import exact_in_memory, id_in_memory
from schema.errors import StoreError
from schema.layout import SCHEMA_VERSION
from schema.migrations import fill_vector_lists
from schema.writer import upgrade_store, writer
from service.owner import StoreOwner
from service.settings import Settings


def _forms(db: Path) -> list[str]:
    """Every typed form of every token, plus near misses (case, spaces, unknown words)."""
    con = duckdb.connect(str(db), read_only=True)
    forms = sorted({f for row in con.execute("SELECT word, token, display FROM tokens").fetchall() for f in row})
    con.close()
    return forms + [f.upper() for f in forms[:200]] + [f" {f}" for f in forms[:50]] + ["", "zzz-not-a-token", "##"]


def test_warm_resolution_equals_sql_for_every_form_and_id(indexed_store: Path) -> None:
    with queries.connect(indexed_store) as lens:
        cat = lens._catalog()
        lens.warm()
        assert loaded_words(cat, lens.path) is not None
        for form in _forms(indexed_store):
            sql = lens._rows(q.resolve_token(form, ignore_case=False))
            assert exact_in_memory(cat, lens.path, form) == sql, form
        (largest,) = lens.con.execute("SELECT max(token_id) FROM tokens").fetchone()  # type: ignore[misc]
        for token_id in range(-2, largest + 3):
            assert id_in_memory(cat, lens.path, token_id) == lens._rows(q.token_by_id(token_id)), token_id


def _older_store(store: Path, tmp_path: Path, change: str) -> Path:
    """A copy of ``store`` as schema version 1 left it: ``change`` (SQL) undoes what that release lacked."""
    old = tmp_path / "old.duckdb"
    shutil.copy(store, old)
    con = duckdb.connect(str(old))
    con.execute(change)
    con.execute("UPDATE lensdb_meta SET value = '1' WHERE key = 'schema_version'")
    con.close()
    return old


def _refused_then_upgraded(old: Path) -> None:
    with pytest.raises(StoreError, match=f"older lensdb .*lensdb upgrade --db {old}"):
        queries.connect(old)
    assert upgrade_store(old) == (1, SCHEMA_VERSION)


def test_a_store_without_token_forms_is_upgraded_with_them(indexed_store: Path, tmp_path: Path) -> None:
    with duckdb.connect(str(indexed_store), read_only=True) as con:
        expected = con.execute("SELECT * FROM token_forms ORDER BY ALL").fetchall()
    old = _older_store(indexed_store, tmp_path, "DROP TABLE token_forms")
    words: list[str | int] = ["paris", "Paris", "Ġparis", "##s", 5]
    with queries.connect(indexed_store) as new:
        answers = [new.promoters(w, limit=30) for w in words]
    _refused_then_upgraded(old)
    with queries.connect(old) as lens:
        assert lens.con.execute("SELECT * FROM token_forms ORDER BY ALL").fetchall() == expected
        assert [lens.promoters(w, limit=30) for w in words] == answers


def test_warm_reports_what_it_loaded_and_lookups_agree(store_copy: Path) -> None:
    with queries.connect(store_copy) as lens:
        words: list[str | int] = ["paris", "Paris", 17, *[r[0] for r in lens.sql(
            "SELECT DISTINCT token FROM tokens WHERE token_id % 37 = 3 ORDER BY 1").rows]]
        cold = {str(w): lens.promoters(w, limit=50) + lens.suppressors(w, limit=50) for w in words}
        first = lens.warm()
        (n,) = lens.sql("SELECT count(*) FROM vector_tokens").rows[0]
        (pairs,) = lens.sql("SELECT count(*) FROM head_pairs").rows[0]
        assert (first.vocabularies, first.loaded_vocabularies, first.rows) == (2, 2, n + pairs)
        assert lens.warm().loaded_vocabularies == 0  # held: a second call only re-reads the tables
        assert {str(w): lens.promoters(w, limit=50) + lens.suppressors(w, limit=50) for w in words} == cold


def test_checkpoints_without_vector_units_get_them_from_the_upgrade(indexed_store: Path, tmp_path: Path) -> None:
    """A store indexed before vector_units existed: the upgrade rebuilds each unit's block from the vectors."""
    with duckdb.connect(str(indexed_store), read_only=True) as con:
        expected = con.execute("SELECT * FROM vector_units ORDER BY ALL").fetchall()
    legacy = _older_store(indexed_store, tmp_path, "DELETE FROM vector_units WHERE checkpoint_id = (SELECT "
                          "checkpoint_id FROM checkpoints JOIN models USING (model_id) WHERE name = 'gpt2-tiny')")
    _refused_then_upgraded(legacy)
    with queries.connect(indexed_store) as new, queries.connect(legacy) as old:
        assert old.con.execute("SELECT * FROM vector_units ORDER BY ALL").fetchall() == expected
        assert any(h.model == "gpt2-tiny" for h in old.promoters(5, limit=100))
        for word in ("paris", "Paris", 5, 77):
            assert old.promoters(word, limit=100) == new.promoters(word, limit=100)
            assert old.promoters(word, model="gpt2-tiny", layer=1, limit=100) == \
                new.promoters(word, model="gpt2-tiny", layer=1, limit=100)


@pytest.mark.parametrize("warm", [True, False])
def test_service_warms_at_start_when_asked(store_copy: Path, warm: bool) -> None:
    svc = StoreOwner(Settings(db=store_copy, warm=warm))
    try:
        if svc.warmer is not None:
            svc.warmer.join(60)
        with contextlib.contextmanager(svc.reader)() as lens:
            assert (loaded_words(lens._catalog(), lens.path) is not None) == warm
            assert lens.promoters("paris", limit=5)
    finally:
        svc.close()


def test_vector_lists_give_exactly_the_token_rows(indexed_store: Path) -> None:
    with queries.connect(indexed_store) as lens:
        vectors = lens.con.execute("SELECT v.vector_id, m.vocab_id FROM vectors v JOIN checkpoints USING "
                                   "(checkpoint_id) JOIN models m USING (model_id)").fetchall()
        assert len(vectors) > 1000
        for vid, vocab in vectors:
            rows = lens._rows(q.vector_tokens(vid, vocab))
            lists = lens._rows(q.vector_lists([vid]))
            if not rows:  # a head map's vector: its entries are pairs, in head_pairs
                assert not lists
                continue
            (row,) = lens._rows(q.vector_by_id(vid))
            mean, std = row[8], row[9]  # logit_mean, logit_std
            assert lists[0][5:] == (mean, std)
            display = {r[2]: r[3] for r in rows}
            assert rows_from_lists(lists[0][1:5], mean, std, display) == rows, vid
        # a drift page's top tokens: the same from the lists as from the token rows
        cat = lens._catalog()
        for name, vocab in cat.models.items():
            vids = [v for v, voc in vectors if voc == vocab][::7]
            tops = lens._top_tokens(cat, vocab, vids, 5)
            assert len(tops) > 50 and all(len(t) == 5 for t in tops.values()), name
            for vid, got in tops.items():
                want = [r for r in lens._rows(q.vector_tokens(vid, vocab)) if r[0] == "top" and r[1] <= 5]
                assert [(t.rank, t.token_id, t.token, t.score, t.zscore) for t in got] == [r[1:6] for r in want]


def test_a_store_without_vector_lists_is_upgraded_with_them(indexed_store: Path, tmp_path: Path) -> None:
    with duckdb.connect(str(indexed_store), read_only=True) as con:
        expected = con.execute("SELECT * FROM vector_lists ORDER BY ALL").fetchall()
    old = _older_store(indexed_store, tmp_path, "DROP TABLE vector_lists")
    cases = [("gpt2-tiny", "ff_value", 1, 7, None), ("bert-tiny", "attn_o", 0, 3, 2),
             ("gpt2-tiny", "ff_key", 0, 0, None)]
    with queries.connect(indexed_store) as new:
        answers = [new.vector(*c) for c in cases]
    _refused_then_upgraded(old)
    with queries.connect(old) as lens:
        assert lens.con.execute("SELECT * FROM vector_lists ORDER BY ALL").fetchall() == expected
        assert [lens.vector(*c) for c in cases] == answers


def test_vector_lists_fill_in_batches_from_the_last_listed_vector(indexed_store: Path, tmp_path: Path) -> None:
    store = tmp_path / "partial.duckdb"
    shutil.copy(indexed_store, store)
    with writer(store) as con:
        expected = con.execute("SELECT * FROM vector_lists ORDER BY ALL").fetchall()
        con.execute("DELETE FROM vector_lists WHERE vector_id > 321")
        fill_vector_lists(con, batch=13)
        assert con.execute("SELECT * FROM vector_lists ORDER BY ALL").fetchall() == expected


def test_a_vector_found_through_the_units_is_the_one_the_vectors_table_names(indexed_store: Path) -> None:
    with queries.connect(indexed_store) as lens:
        cat = lens._catalog()
        rows = lens.con.execute("SELECT m.name, v.component, v.layer, v.head, v.idx, c.checkpoint_id FROM vectors v "
                                "JOIN checkpoints c USING (checkpoint_id) JOIN models m USING (model_id)").fetchall()
        assert len(rows) > 1000
        for name, comp, layer, head, idx, ckpt in rows:
            vid = cat.vector_id(ckpt, comp, layer, head, idx)
            assert vid is not None
            assert lens._rows(q.vector_by_id(vid)) == lens._rows(q.find_vector(name, comp, layer, idx, head, None))
        assert cat.vector_id(rows[0][5], "ff_value", 0, None, 10**6) is None


def test_a_read_only_lens_reuses_its_catalog_and_a_new_opening_sees_a_changed_file(
        store_copy: Path, tmp_path: Path) -> None:
    """A store attached read-only cannot change under its instance, so the catalog is reused without asking the
    store (no statement on the lookup path); once every reader closed and a writer added a model, the next
    opening is another snapshot and sees it."""
    from indexer import IndexOptions, index_checkpoint
    from tests.tinymodels import save_gpt2

    with queries.connect(store_copy) as lens:
        first = lens._catalog()
        sent: list[str] = []

        class Recording:  # the cursor, with every statement sent through it noted
            def __getattr__(self, name: str) -> object:
                return getattr(real, name)

            def execute(self, sql: str, *args: object) -> duckdb.DuckDBPyConnection:
                sent.append(sql)
                return real.execute(sql, *args)

        real, lens.con = lens.con, Recording()  # type: ignore[assignment]
        assert lens._catalog() is first and sent == []
        assert lens.promoters("paris", limit=5) and not any("checkpoints" in s for s in sent)
        lens.con = real
        names = set(first.models)
    index_checkpoint(store_copy, save_gpt2(tmp_path / "more", seed=11).path, IndexOptions(name="more", top_k=5))
    with queries.connect(store_copy) as lens:
        assert set(lens._catalog().models) == names | {"more"}
        assert any(h.model == "more" for h in lens.promoters("paris", model="more", limit=5))

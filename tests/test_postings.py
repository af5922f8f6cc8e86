"""Token postings held in memory (``queries.postings``): after ``Lens.warm`` a token lookup and its certificate run
no statement, and answer exactly what the SQL path answers, however the token rows lie on disk (the writer's
sorted runs, several of them, or scattered), with head-map pairs, NULL and NaN bounds, within the value cache's
budget and never for a store that changed since."""

import random
import shutil
from pathlib import Path
from typing import Any

import duckdb
import pytest

import queries
from indexer import IndexOptions, index_checkpoint
from queries import exact, postings
from queries import sql as q
from schema.deletes import forget
from tests.tinymodels import save_bert, save_gpt2

LAYOUTS = {  # physical orders of the same rows: what the writer leaves, three sorted runs, no order at all
    "as indexed": None,
    "three runs": "vector_id % 3, token_id, vector_id",
    "scattered": "hash(vector_id, side, rank, token_id)",
}


@pytest.fixture(scope="module")
def paired_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny models indexed with head maps (so both token tables hold rows), k = 5."""
    root = tmp_path_factory.mktemp("postings")
    db = root / "lens.duckdb"
    index_checkpoint(db, save_gpt2(root / "gpt2").path, IndexOptions(name="gpt2-tiny", head_maps=True, top_k=5))
    index_checkpoint(db, save_bert(root / "bert").path, IndexOptions(name="bert-tiny", head_maps=True, top_k=5))
    return db


def _laid_out(store: Path, tmp_path: Path, order: str | None) -> Path:
    db = tmp_path / "laid.duckdb"
    shutil.copy(store, db)
    if order is not None:
        with duckdb.connect(str(db)) as con:
            for table in q.SORTED_BY_TOKEN:
                con.execute(f"CREATE TEMP TABLE held AS SELECT * FROM {table}")
                con.execute(f"DELETE FROM {table}")
                con.execute(f"INSERT INTO {table} SELECT * FROM held ORDER BY {order}")
                con.execute("DROP TABLE held")
    return db


class Counting:
    """A DuckDB connection that counts the statements sent through it (and through its cursors)."""

    def __init__(self, con: Any, sent: list[str]) -> None:
        self._con, self.sent = con, sent

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)

    def execute(self, sql: str, *args: Any) -> Any:
        self.sent.append(sql)
        return self._con.execute(sql, *args)

    def cursor(self) -> "Counting":
        return Counting(self._con.cursor(), self.sent)


def _agrees_with_sql(lens: queries.Lens, held: postings.Postings, rnd: random.Random) -> int:
    """Compare ``held.hits`` with the SQL path for tokens of every vocabulary (40 each, one id past each end
    among them), both sides, over every unit, the pair units and random subsets; returns the cases compared."""
    cat = lens._catalog()
    sizes = dict(lens.con.execute("SELECT vocab_id, count(*) FROM tokens GROUP BY ALL").fetchall())
    checked = 0
    for vocab in sorted({r.vocab_id for r in cat.checkpoints.values()}):
        units = [u for u in cat.units if cat.checkpoints[u.checkpoint_id].vocab_id == vocab]
        choices = [units, [u for u in units if u.role == "pairs"], rnd.sample(units, 5), rnd.sample(units, 1)]
        for token in [-1, 0, sizes[vocab] - 1, sizes[vocab], *rnd.sample(range(sizes[vocab]), 36)]:
            for units_of in choices:
                groups = [(sorted((u.first_id, u.last_id) for u in units_of),
                           sorted({token, rnd.randrange(sizes[vocab])}))]
                for side in ("top", "bottom"):
                    n = rnd.choice([1, 7, 1000])
                    assert held.hits(groups, side, n) == lens._rows(q.hits_in_ranges(groups, side, n, 0)), \
                        (token, side, n)
                    checked += 1
    return checked


@pytest.mark.parametrize("layout", LAYOUTS)
def test_postings_answer_what_sql_answers(paired_store: Path, tmp_path: Path, layout: str) -> None:
    db = _laid_out(paired_store, tmp_path, LAYOUTS[layout])
    exact.CACHE.clear()
    with queries.connect(db) as lens:
        held = postings.warm(lens.con, lens._catalog(), lens.path)
        assert held is not None and held.rows == sum(
            lens.con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in q.SORTED_BY_TOKEN)  # type: ignore[index]
        runs = [len(t.offsets) for t in held.tables]
        residues = [lens.con.execute(f"SELECT count(DISTINCT vector_id % 3) FROM {t}").fetchone()[0]  # type: ignore[index]
                    for t in q.SORTED_BY_TOKEN]
        assert runs == {"as indexed": [1, 1], "three runs": residues, "scattered": [1, 1]}[layout]  # scattered: sorted
        assert layout != "three runs" or runs[0] == 3
        assert _agrees_with_sql(lens, held, random.Random(7)) == 2 * 4 * 40 * 2


def test_a_warm_after_new_runs_reads_only_their_rows_and_after_a_forget_everything(
        paired_store: Path, tmp_path: Path) -> None:
    db = tmp_path / "grown.duckdb"
    shutil.copy(paired_store, db)
    exact.CACHE.clear()
    with queries.connect(db) as lens:
        first = postings.warm(lens.con, lens._catalog(), lens.path)
    assert first is not None
    parts = [id(t) for t in first.tables]
    del first  # only the value cache holds them now, as after a service's warm
    index_checkpoint(db, save_gpt2(tmp_path / "third", seed=3).path, IndexOptions(name="third", head_maps=True,
                                                                                  top_k=5))
    with queries.connect(db) as lens:
        grown = postings.warm(lens.con, lens._catalog(), lens.path)
        assert grown is not None and len(grown.tables) == 2 * len(parts)
        assert [id(t) for t in grown.tables[:len(parts)]] == parts  # held, not read again
        assert grown.counts == {t: lens.con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # type: ignore[index]
                                for t in q.SORTED_BY_TOKEN}
        assert "third" in {h.model for h in lens.promoters("paris", component="attn_ov_pair", limit=200)}
        _agrees_with_sql(lens, grown, random.Random(5))
    forget(db, "gpt2-tiny")
    with queries.connect(db) as lens:
        again = postings.warm(lens.con, lens._catalog(), lens.path)
        assert again is not None and not {id(t) for t in again.tables} & {id(t) for t in grown.tables}
        assert again.counts == {t: lens.con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # type: ignore[index]
                                for t in q.SORTED_BY_TOKEN}
        _agrees_with_sql(lens, again, random.Random(6))


def test_bounds_answer_what_sql_answers(paired_store: Path, tmp_path: Path) -> None:
    """Bounds as the certificate tests them: NULL (unknown) beats every bound, a NaN top beats every bound and a
    NaN bottom none (DuckDB orders NaN above every number), a bound equal to a vector's is not beaten."""
    db = tmp_path / "bounds.duckdb"
    shutil.copy(paired_store, db)
    with duckdb.connect(str(db)) as con:
        con.execute("UPDATE vectors SET top_zk = NULL WHERE vector_id % 97 = 5")
        con.execute("UPDATE vectors SET bottom_zk = NULL WHERE vector_id % 89 = 7")
        con.execute("UPDATE vectors SET top_zk = 'nan' WHERE vector_id % 83 = 3")
        con.execute("UPDATE vectors SET bottom_zk = 'nan' WHERE vector_id % 79 = 1")
    exact.CACHE.clear()
    rnd = random.Random(3)
    with queries.connect(db) as lens:
        held = postings.warm(lens.con, lens._catalog(), lens.path)
        assert held is not None
        zk = {v: (t, b) for v, t, b in lens.con.execute("SELECT vector_id, top_zk, bottom_zk FROM vectors").fetchall()}
        last = max(zk)
        values = [v for pair in zk.values() for v in pair if v is not None and v == v]  # a NaN bound: SQL's (certify)
        for _ in range(3000):
            ranges = []
            for _ in range(rnd.randint(1, 4)):
                a = rnd.randint(-3, last + 3)
                ranges.append((a, a + rnd.choice([0, 1, 5, 40, 2000])))
            side = rnd.choice(["top", "bottom"])
            inside = [zk[v][side == "bottom"] for a, z in ranges for v in range(a, z + 1) if v in zk]
            known = [x for x in inside if x is not None and x == x]
            tight = (max(known) if side == "top" else min(known)) if known else 0.0  # equal to the best: not beaten
            bound = rnd.choice([None, float("inf"), -float("inf"), 1e9, -1e9, rnd.choice(values), tight, tight,
                                rnd.choice(values) + rnd.choice([-1e-3, 1e-3])])
            sql = bool(lens.con.execute(*q.unvalued_beyond(ranges, side, bound)).fetchone()[0])  # type: ignore[index]
            assert held.bounds.any_beyond(ranges, side, bound) == sql, (ranges, side, bound)


def test_a_warm_lookup_runs_no_statement_and_answers_as_before(paired_store: Path, tmp_path: Path) -> None:
    db = _laid_out(paired_store, tmp_path, LAYOUTS["three runs"])
    exact.CACHE.clear()
    asks: list[tuple[str | int, dict]] = [  # words in a form some vocabulary has exactly, and token ids
        ("paris", {}), ("paris", {"limit": 50}), ("paris", {"model": "gpt2-tiny", "layer": 1}),
        (5, {"role": "all", "limit": 100}), ("paris", {"component": "attn_ov_pair", "limit": 30}),
        ("s", {"component": "attn_qk_pair", "limit": 30, "offset": 5}), (17, {"checkpoint": "all"}),
        ("##s", {"model": "bert-tiny", "component": "ff_key"}),
    ]
    with queries.connect(db) as lens:
        before = [(lens.promoters(w, **f), lens.suppressors(w, **f)) for w, f in asks]
        assert any(h.source_token is not None for pair in before for hits in pair for h in hits)
        info = lens.warm()
        assert info.postings_mb > 0 and info.rows == postings.held(lens._catalog(), lens.path).rows  # type: ignore[union-attr]
        sent: list[str] = []
        lens.con = Counting(lens.con, sent)  # type: ignore[assignment]
        after = [(lens.promoters(w, **f), lens.suppressors(w, **f)) for w, f in asks]
        assert sent == []
    assert after == before
    assert [[(h.model, h.exact) for h in hits] for pair in after for hits in pair] == \
        [[(h.model, h.exact) for h in hits] for pair in before for hits in pair]


def test_postings_stay_within_the_value_cache_budget(store_copy: Path) -> None:
    exact.CACHE.clear()
    budget = exact.CACHE.budget
    try:
        with queries.connect(store_copy) as lens:
            cold = lens.promoters("paris", limit=40)
            info = lens.warm(value_cache_mb=0)
            assert info.postings_mb == 0 and postings.held(lens._catalog(), lens.path) is None
            (n,) = lens.sql("SELECT (SELECT count(*) FROM vector_tokens) + (SELECT count(*) FROM head_pairs)").rows[0]
            assert info.rows == n  # the tables were still read into DuckDB's buffer pool
            assert lens.promoters("paris", limit=40) == cold
    finally:
        exact.CACHE.budget = budget


def test_a_changed_store_is_never_answered_from_old_postings(store_copy: Path, tmp_path: Path) -> None:
    """And the old postings do not count against the new ones' budget (room for the new ones only)."""
    exact.CACHE.clear()
    budget = exact.CACHE.budget
    try:
        with queries.connect(store_copy) as lens:
            lens.warm(value_cache_mb=0)
            exact.CACHE.budget = 1 << 40
            lens.warm()
            old = postings.held(lens._catalog(), lens.path)
            assert old is not None
            assert {h.model for h in lens.promoters(5, checkpoint="all", limit=1000)} == {"gpt2-tiny", "bert-tiny"}
        index_checkpoint(store_copy, save_gpt2(tmp_path / "third", seed=3).path, IndexOptions(name="third"))
        exact.CACHE.budget = int(old.nbytes * 1.6)  # the new postings are ~1.5 times the old ones
        with queries.connect(store_copy) as lens:
            assert postings.held(lens._catalog(), lens.path) is None
            assert "third" in {h.model for h in lens.promoters(5, checkpoint="all", limit=1000)}
            lens.warm()
            new = postings.held(lens._catalog(), lens.path)
            assert new is not None and old.nbytes + new.nbytes > exact.CACHE.budget >= new.nbytes
            assert "third" in {h.model for h in lens.promoters(5, checkpoint="all", limit=1000)}
    finally:
        exact.CACHE.budget = budget

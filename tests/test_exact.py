"""Exact search (issue 15): with --top-k 3, who promotes X must equal a brute-force ranking of every vector by its
exact z-score for X, computed here from the checkpoint (dense logits over the whole vocabulary, numpy statistics),
for several tokens, both sides, folded and raw bases, a pre-LN and a post-LN family; contrasts, sets and texts
likewise. And the SQL view of stored vectors reproduces every stored score."""

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch

import queries
from indexer import IndexOptions, index_checkpoint
from indexer.index.compute import resolve_compute
from indexer.index.plan import plan_units, role_basis, unit_basis, unit_vectors
from indexer.model.adapters import adapter_for
from indexer.model.checkpoint import open_checkpoint
from queries import exact
from tests.tinymodels import TinyModel

TOKENS = ["paris", "london", "king", "river", "seven"]
N = 12


def brute_logits(path: Path, mode: str) -> list[tuple[str, int, int | None, int, np.ndarray]]:
    """(component, layer, head, index, logits over the whole vocabulary) of every vector, from the checkpoint."""
    adapter = adapter_for(open_checkpoint(path))
    compute = resolve_compute("cpu")
    out = []
    for name, layer in plan_units(adapter, None):
        role = adapter.spec(name).role
        base = role_basis(adapter, role, mode, compute)  # type: ignore[arg-type]
        basis = unit_basis(adapter, base, name, layer, mode)  # type: ignore[arg-type]
        dense = basis.dense().to(torch.float64)
        for part in adapter.component(name, layer):
            logits = unit_vectors(part, mode).to(torch.float64) @ dense.T  # type: ignore[arg-type]
            for i, row in enumerate(logits.numpy()):
                out.append((name, layer, part.head, i, row))
    return out


def brute_z(every: list, direction: dict[int, float], side: str) -> list[tuple[tuple, float]]:
    """Every vector ranked by the exact z of a weighted token combination (numpy statistics over the vocabulary)."""
    ids = np.array(list(direction))
    w = np.array([direction[t] for t in ids])
    ranked = []
    for name, layer, head, i, row in every:
        score = row[ids] @ w
        std = row.std() if row.std() > 1e-12 else 1.0  # a zero vector: z 0, as the index stores it
        z = (score - w.sum() * row.mean()) / (std * np.sqrt((w ** 2).sum()))
        ranked.append(((name, layer, head, i), float(z)))
    ranked.sort(key=lambda r: -r[1] if side == "top" else r[1])
    return ranked


def same_ranking(hits: list, expected: list[tuple[tuple, float]]) -> None:
    got = [((h.component, h.layer, h.head, h.index), h.zscore) for h in hits]
    assert len(got) == len(expected)
    for (key, z), (want_key, want_z) in zip(got, expected, strict=True):
        assert z == pytest.approx(want_z, abs=2e-4), (key, want_key)
        # identical, or a tie at float32 precision
        assert key == want_key or abs(want_z - dict(expected).get(key, 1e9)) < 2e-4
    assert all(h.exact for h in hits)


def token_id(lens: queries.Lens, word: str) -> int:
    """The id of the token spelled ``word`` exactly (BERT also has '##paris'), else the word's only token."""
    matches = lens.tokens(word)
    spelled = [m for m in matches if m.token == word]
    assert len(spelled) == 1 or len(matches) == 1, matches
    return (spelled or matches)[0].token_id


@pytest.fixture(scope="module", params=["gpt2-folded", "gpt2-raw", "bert-folded", "bert-raw"])
def exact_store(request: pytest.FixtureRequest, tiny_gpt2: TinyModel, tiny_bert: TinyModel,
                tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    family, mode = request.param.split("-")
    model = tiny_gpt2 if family == "gpt2" else tiny_bert
    db = tmp_path_factory.mktemp("exact") / "lens.duckdb"
    index_checkpoint(db, model.path, IndexOptions(name=family, top_k=3, basis=mode))  # type: ignore[arg-type]
    return db, brute_logits(model.path, mode)


@pytest.mark.parametrize("held", [False, True], ids=["scored-by-duckdb", "scored-from-memory"])
@pytest.mark.parametrize("side", ["top", "bottom"])
def test_token_search_equals_brute_force(exact_store: tuple[Path, list], side: str, held: bool) -> None:
    """Both ways of scoring the certificate's candidates: one DuckDB statement (a fresh process) and numpy over
    the stored vectors held in memory (after warm)."""
    db, every = exact_store
    exact.CACHE.clear()
    with queries.connect(db) as lens:
        if held:
            assert lens.warm().values_mb > 0 and exact.CACHE.used > 0
        differs = 0
        for word in TOKENS:
            tid = token_id(lens, word)
            find = lens.promoters if side == "top" else lens.suppressors
            hits = find(tid, role="all", limit=N)
            assert (exact.CACHE.used > 0) == held  # the token search itself never fills the cache
            expected = brute_z(every, {tid: 1.0}, side)[:N]
            same_ranking(hits, expected)
            differs += any(h.rank is None for h in hits)  # found beyond the stored top-3 lists
            paged = find(tid, role="all", limit=4, offset=4)
            assert [(h.component, h.layer, h.index) for h in paged] == \
                [(h.component, h.layer, h.index) for h in hits[4:8]]
        assert differs, "with top-k 3 some answer must come from beyond the stored lists"


@pytest.mark.parametrize("side", ["top", "bottom"])
def test_contrast_set_and_text_equal_brute_force(exact_store: tuple[Path, list], side: str) -> None:
    db, every = exact_store
    with queries.connect(db) as lens:
        def weights(**words: float) -> dict[int, float]:
            """A word's weight shared among the token ids it resolves to (BPE: 'rome' and 'Ġrome')."""
            out: dict[int, float] = {}
            for word, w in words.items():
                ids = [m.token_id for m in lens.tokens(word)]
                for t in ids:
                    out[t] = out.get(t, 0.0) + w / len(ids)
            return out

        find = lens.promoters if side == "top" else lens.suppressors
        same_ranking(find("paris", minus="london", role="all", limit=N),
                     brute_z(every, weights(paris=1, london=-1), side)[:N])
        same_ranking(find(["paris", "berlin", "rome"], role="all", limit=N),
                     brute_z(every, weights(paris=1 / 3, berlin=1 / 3, rome=1 / 3), side)[:N])
        same_ranking(find(["paris", "berlin"], minus=["london", "rome"], role="all", limit=N),
                     brute_z(every, weights(paris=.5, berlin=.5, london=-.5, rome=-.5), side)[:N])
        same_ranking(find(text="paris london", role="all", limit=N),
                     brute_z(every, weights(paris=.5, london=.5), side)[:N])
        hit = find("paris", minus="london", role="all", limit=1)[0]
        assert hit.token == "paris − london" and hit.token_id is None and hit.rank is None


def test_a_fresh_process_answers_exactly_without_numpy(exact_store: tuple[Path, list]) -> None:
    """The command line's certificate is one DuckDB statement: exact, and no numpy loaded for it."""
    db, every = exact_store
    with queries.connect(db) as lens:
        tid = token_id(lens, "paris")
    probe = (f"import sys, json\nfrom service.cli import main\nrc = main(['promoters', '{tid}', '--id', "
             f"'--role', 'all', '--limit', '{N}', '--json', '--db', {str(db)!r}])\n"
             "print('NUMPY', 'numpy' in sys.modules, 'exit', rc)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=Path(__file__).parents[1], capture_output=True,
                          text=True, timeout=120)
    out, _, tail = done.stdout.rpartition("NUMPY ")
    assert tail.split() == ["False", "exit", "0"], done.stdout + done.stderr
    hits = json.loads(out)
    expected = brute_z(every, {tid: 1.0}, "top")[:N]
    assert [h["zscore"] for h in hits] == pytest.approx([z for _, z in expected], abs=2e-4)
    assert all(h["exact"] for h in hits)


def test_stored_values_reproduce_stored_scores(exact_store: tuple[Path, list]) -> None:
    db, _ = exact_store
    con = duckdb.connect(str(db), read_only=True)
    try:
        a, b, n = con.execute("""SELECT max(abs(t.score - list_dot_product(v."values", r."values"))),
          max(abs(t.score)), count(*) FROM vector_tokens t JOIN vector_values v USING (vector_id)
          JOIN value_blocks k ON t.vector_id BETWEEN k.first_vector_id AND k.last_vector_id
          JOIN basis_rows r ON r.checkpoint_id = k.checkpoint_id AND r.role = k.role AND r.token_id = t.token_id
          """).fetchone()  # type: ignore[misc]
        assert n == con.execute("SELECT count(*) FROM vector_tokens").fetchone()[0]  # type: ignore[index]
        assert a <= 1e-6 * b
    finally:
        con.close()


def test_stored_basis_rows_are_the_run_s_basis_bit_for_bit(exact_store: tuple[Path, list]) -> None:
    """basis_rows hold the matrix the run projected with, bit for bit (built again from W_U block by block at the
    end of the run, never as a second whole matrix): not a matrix folded another way that agrees to a few ulps."""
    db, _ = exact_store
    con = duckdb.connect(str(db), read_only=True)
    try:
        path, mode = con.execute("SELECT c.path, r.basis FROM checkpoints c JOIN index_runs r USING "
                                 "(checkpoint_id)").fetchone()  # type: ignore[misc]
        stored = {role: np.array([row[0] for row in con.execute(
            'SELECT "values" FROM basis_rows WHERE role = ? ORDER BY token_id', [role]).fetchall()], dtype=np.float32)
            for (role,) in con.execute("SELECT DISTINCT role FROM basis_rows").fetchall()}
    finally:
        con.close()
    adapter = adapter_for(open_checkpoint(path))
    assert set(stored) == {"writes", "reads"}
    for role, rows in stored.items():
        matrix = role_basis(adapter, role, mode, resolve_compute("cpu")).matrix.numpy()
        assert rows.shape == matrix.shape and np.array_equal(rows, matrix), role


def test_sql_users_can_score_a_direction(exact_store: tuple[Path, list]) -> None:
    db, _ = exact_store
    with queries.connect(db) as lens:
        pid = token_id(lens, "paris")
        best = lens.promoters(pid, role="all", limit=1)[0]
        res = lens.sql(f"""SELECT v.component, v.layer, v."idx", list_dot_product(x."values", r."values") AS score
FROM vector_values x JOIN vectors v USING (vector_id)
JOIN value_blocks k ON x.vector_id BETWEEN k.first_vector_id AND k.last_vector_id
JOIN basis_rows r ON r.checkpoint_id = k.checkpoint_id AND r.role = k.role AND r.token_id = {pid}
WHERE v.logit_std > 0 ORDER BY (score - v.logit_mean) / v.logit_std DESC LIMIT 1""")
        assert res.rows[0][:3] == [best.component, best.layer, best.index] or \
            tuple(res.rows[0][:3]) == (best.component, best.layer, best.index)


def test_without_stored_vectors_answers_say_why(tiny_gpt2: TinyModel, tmp_path: Path) -> None:
    db = tmp_path / "lens.duckdb"
    index_checkpoint(db, tiny_gpt2.path, IndexOptions(name="g", top_k=3, vectors=False))
    with queries.connect(db) as lens:
        hits = lens.promoters("paris", role="all", limit=200)  # more than the stored lists hold: they cannot decide
        assert hits and not any(h.exact for h in hits)
        assert "no stored values" in (hits[0].exact_note or "")
        with pytest.raises(queries.NotFound, match="no stored vectors"):
            lens.promoters("paris", minus="london")


def test_replace_and_forget_take_the_stored_values_with_them(tiny_gpt2: TinyModel, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """vector_values, basis_rows and value_blocks name their vectors and checkpoints: --replace and forget remove
    their rows with them, and check follows the same references."""
    from service.cli import main
    db = tmp_path / "lens.duckdb"

    def counts() -> dict[str, int]:
        with duckdb.connect(str(db), read_only=True) as con:
            return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # type: ignore[index]
                    for t in ("vectors", "vector_values", "basis_rows", "value_blocks")}

    def orphans() -> int:
        with duckdb.connect(str(db), read_only=True) as con:
            return con.execute("""SELECT (SELECT count(*) FROM vector_values WHERE vector_id NOT IN
                (SELECT vector_id FROM vectors)) + (SELECT count(*) FROM basis_rows WHERE checkpoint_id NOT IN
                (SELECT checkpoint_id FROM checkpoints)) + (SELECT count(*) FROM value_blocks WHERE checkpoint_id
                NOT IN (SELECT checkpoint_id FROM checkpoints))""").fetchone()[0]  # type: ignore[index]

    assert main(["index", str(tiny_gpt2.path), "--db", str(db), "--name", "g", "--top-k", "3", "--quiet"]) == 0
    once = counts()
    assert once["vector_values"] > 0 and once["basis_rows"] > 0 and once["value_blocks"] > 0
    assert main(["index", str(tiny_gpt2.path), "--db", str(db), "--name", "g", "--top-k", "3", "--quiet",
                 "--replace"]) == 0
    assert counts() == once and orphans() == 0  # the old run's values went with its vectors, nothing doubled
    assert main(["check", "--db", str(db)]) == 0
    capsys.readouterr()
    with duckdb.connect(str(db)) as con:  # an orphan value row (as a crash outside the writer could leave) is named
        con.execute("INSERT INTO vector_values SELECT vector_id + 1000000, \"values\" FROM vector_values LIMIT 1")
    assert main(["check", "--db", str(db)]) == 1
    assert "vector_values" in capsys.readouterr().out
    with duckdb.connect(str(db)) as con:
        con.execute("DELETE FROM vector_values WHERE vector_id >= 1000000")
    assert main(["forget", "g", "--db", str(db)]) == 0
    assert counts() == {"vectors": 0, "vector_values": 0, "basis_rows": 0, "value_blocks": 0} and orphans() == 0
    assert main(["check", "--db", str(db)]) == 0


def test_a_store_made_again_at_the_same_path_is_not_answered_from_held_values(tiny_gpt2: TinyModel,
                                                                              tmp_path: Path) -> None:
    """Two stores made one after the other at one path have the same catalog generation (one checkpoint, id 1):
    values held in memory for the first must not score the second."""
    db = tmp_path / "lens.duckdb"
    index_checkpoint(db, tiny_gpt2.path, IndexOptions(name="g", top_k=3, basis="folded"))
    with queries.connect(db) as lens:
        assert lens.warm().values_mb > 0
        tid = token_id(lens, "paris")
        lens.promoters(tid, role="all", limit=N)
    db.unlink()
    index_checkpoint(db, tiny_gpt2.path, IndexOptions(name="g", top_k=3, basis="raw"))
    with queries.connect(db) as lens:
        for side, find in (("top", lens.promoters), ("bottom", lens.suppressors)):
            same_ranking(find(tid, role="all", limit=N), brute_z(brute_logits(tiny_gpt2.path, "raw"), {tid: 1.0},
                                                                 side)[:N])
        same_ranking(lens.promoters(["paris", "london"], role="all", limit=1), same_ranking_first(lens, tiny_gpt2))


def same_ranking_first(lens: queries.Lens, model: TinyModel) -> list[tuple[tuple, float]]:
    """The brute-force best vector of the raw basis for the mean of paris and london (BPE ids sharing a word's
    weight)."""
    w: dict[int, float] = {}
    for word in ("paris", "london"):
        ids = [m.token_id for m in lens.tokens(word)]
        for t in ids:
            w[t] = w.get(t, 0.0) + 0.5 / len(ids)
    return brute_z(brute_logits(model.path, "raw"), w, "top")[:1]


def test_latents_are_stored_and_ranked_exactly_past_their_lists(tiny_gpt2: TinyModel, tmp_path: Path) -> None:
    """A dictionary indexed into a checkpoint with stored vectors stores its latents too: the stored values
    reproduce every stored score, and promoters among latents equals a ranking of every latent by its exact z
    (numpy over the stored values and basis rows), past the top-3 lists, in a fresh connection and a warm one."""
    from indexer.index.dictionary_run import index_dictionary
    from indexer.index.options import DictionaryOptions
    from tests import dictionary_files as files

    db = tmp_path / "lens.duckdb"
    index_checkpoint(db, tiny_gpt2.path, IndexOptions(name="g", top_k=3))
    g = torch.Generator().manual_seed(3)
    d = int(tiny_gpt2.state["transformer.wte.weight"].shape[1])
    enc, dec = torch.randn(40, d, generator=g), torch.randn(40, d, generator=g)
    folder = files.saelens(tmp_path / "sae", enc.T, dec, "blocks.1.hook_resid_post")
    index_dictionary(db, folder, DictionaryOptions(model="g", device="cpu", name="res1"))
    with duckdb.connect(str(db), read_only=True) as con:
        a, n = con.execute("""SELECT max(abs(t.score - list_dot_product(v."values", r."values"))), count(*)
          FROM vector_tokens t JOIN vector_values v USING (vector_id) JOIN vectors x USING (vector_id)
          JOIN value_blocks k ON t.vector_id BETWEEN k.first_vector_id AND k.last_vector_id
          JOIN basis_rows r ON r.checkpoint_id = k.checkpoint_id AND r.role = k.role AND r.token_id = t.token_id
          WHERE x.dictionary_id IS NOT NULL""").fetchone()  # type: ignore[misc]
        assert n == 2 * 40 * 3 * 2 and a < 1e-5  # both sides of encoder and decoder rows, top-3 each
        latents = con.execute("""SELECT x.component, x.idx, v."values", x.logit_mean, x.logit_std, k.role
          FROM vectors x JOIN vector_values v USING (vector_id)
          JOIN value_blocks k ON x.vector_id BETWEEN k.first_vector_id AND k.last_vector_id
          WHERE x.component = 'sae_dec'""").fetchall()
        role = latents[0][5]
        rows = dict(con.execute("SELECT token_id, \"values\" FROM basis_rows WHERE role = ?", [role]).fetchall())
    for warm in (False, True):
        exact.CACHE.clear()
        with queries.connect(db) as lens:
            if warm:
                lens.warm()
            for word in TOKENS:
                tid = token_id(lens, word)
                row = np.asarray(rows[tid], dtype=np.float64)
                ranked = sorted(((np.asarray(v, dtype=np.float64) @ row - m) / (s if s > 0 else 1.0), i)
                                for _, i, v, m, s, _ in latents)[::-1][:N]
                hits = lens.promoters(tid, component="sae_dec", dictionary="res1", limit=N)
                assert [h.index for h in hits] == [i for _, i in ranked]
                assert [h.zscore for h in hits] == pytest.approx([z for z, _ in ranked], abs=2e-4)
                assert all(h.exact for h in hits) and any(h.rank is None for h in hits)
    from service.cli import main
    assert main(["forget", "g", "--dictionary", "res1", "--db", str(db)]) == 0
    exact.CACHE.clear()
    with queries.connect(db) as lens:  # the latents' blocks are gone with them: warm and search as before
        assert lens.warm().values_mb > 0
        assert all(h.exact and h.dictionary is None for h in lens.promoters("paris", role="all", limit=N))

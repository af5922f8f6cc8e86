"""Indexing tiny real checkpoints: planted structure is found, rows equal a dense brute force, runs are
recorded, and a checkpoint's content is indexed once."""

from pathlib import Path

import duckdb
import pytest
import torch

import queries
from indexer import IndexOptions, index_checkpoint
from tests.tinymodels import TinyModel


def _naive_folded(unembed: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """The folded write basis written out by hand: gain, centre over d, centre over vocab."""
    b = unembed * gain
    b = b - b.mean(dim=1, keepdim=True)
    return b - b.mean(dim=0, keepdim=True)


def _stored(db: Path, model: str, component: str, layer: int) -> dict[int, dict[str, list]]:
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute(
        "SELECT \"index\", side, rank, token_id, score FROM projections WHERE model = ? AND component = ? "
        "AND layer = ? ORDER BY \"index\", side, rank", [model, component, layer]).fetchall()
    con.close()
    out: dict[int, dict[str, list]] = {}
    for index, side, _, token_id, score in rows:
        out.setdefault(index, {"top": [], "bottom": []})[side].append((token_id, score))
    return out


def _assert_matches_dense(stored: dict[int, dict[str, list]], dense: torch.Tensor, k: int) -> None:
    assert sorted(stored) == list(range(dense.shape[0]))
    for i, sides in stored.items():
        top_scores, top_ids = dense[i].topk(k)
        bot_scores, bot_ids = dense[i].topk(k, largest=False)
        assert [t for t, _ in sides["top"]] == top_ids.tolist()
        assert [t for t, _ in sides["bottom"]] == bot_ids.tolist()
        assert torch.allclose(torch.tensor([s for _, s in sides["top"]]), top_scores, atol=1e-5)
        assert torch.allclose(torch.tensor([s for _, s in sides["bottom"]]), bot_scores, atol=1e-5)


def test_gpt2_values_and_keys_equal_brute_force(indexed_store: Path, tiny_gpt2: TinyModel) -> None:
    s = tiny_gpt2.state
    wte = s["transformer.wte.weight"]
    values = s["transformer.h.1.mlp.c_proj.weight"]  # Conv1D: rows are what each neuron writes
    dense = values @ _naive_folded(wte, s["transformer.ln_f.weight"]).T
    _assert_matches_dense(_stored(indexed_store, "gpt2-tiny", "ff_value", 1), dense, 50)

    keys = s["transformer.h.0.mlp.c_fc.weight"].T * s["transformer.h.0.ln_2.weight"]
    keys = keys - keys.mean(dim=1, keepdim=True)
    dense = keys @ (wte - wte.mean(dim=0, keepdim=True)).T
    _assert_matches_dense(_stored(indexed_store, "gpt2-tiny", "ff_key", 0), dense, 50)


def test_bert_values_equal_brute_force(indexed_store: Path, tiny_bert: TinyModel) -> None:
    s = tiny_bert.state
    emb = s["embeddings.word_embeddings.weight"]
    values = s["encoder.layer.0.output.dense.weight"].T  # nn.Linear [out, in]: columns are values
    dense = values @ _naive_folded(emb, s["encoder.layer.1.output.LayerNorm.weight"]).T
    _assert_matches_dense(_stored(indexed_store, "bert-tiny", "ff_value", 0), dense, 50)


@pytest.mark.parametrize("model", ["gpt2-tiny", "bert-tiny"])
def test_planted_vectors_rank_their_token_first(
    indexed_store: Path, model: str, request: pytest.FixtureRequest
) -> None:
    tiny: TinyModel = request.getfixturevalue("tiny_gpt2" if model == "gpt2-tiny" else "tiny_bert")
    with queries.connect(indexed_store) as db:
        for (layer, neuron), tid in tiny.planted.promotes.items():
            v = db.vector(model, "ff_value", layer, neuron)
            assert v.top[0].token_id == tid
            hits = db.promoters(tid, model=model, component="ff_value")
            assert (hits[0].layer, hits[0].index, hits[0].rank) == (layer, neuron, 1)
        for (layer, neuron), tid in tiny.planted.suppresses.items():
            assert db.vector(model, "ff_value", layer, neuron).bottom[0].token_id == tid
            hits = db.suppressors(tid, model=model, component="ff_value")
            assert (hits[0].layer, hits[0].index, hits[0].rank) == (layer, neuron, 1)
        for (layer, neuron), tid in tiny.planted.reads.items():
            assert db.vector(model, "ff_key", layer, neuron).top[0].token_id == tid


def test_run_is_recorded_with_basis_and_counts(indexed_store: Path) -> None:
    con = duckdb.connect(str(indexed_store), read_only=True)
    rows = con.execute(
        "SELECT m.name, r.basis, r.basis_flags, r.top_k, r.n_vectors, r.n_projections, r.status, "
        "(SELECT count(*) FROM vectors v WHERE v.checkpoint_id = r.checkpoint_id) "
        "FROM index_runs r JOIN checkpoints USING (checkpoint_id) JOIN models m USING (model_id) ORDER BY 1"
    ).fetchall()
    con.close()
    by_name = {r[0]: r for r in rows}
    name, basis, flags, k, n_vec, n_proj, status, counted = by_name["gpt2-tiny"]
    assert (basis, k, status) == ("folded", 50, "complete")
    assert '"final_norm_gain": true' in flags and '"centre_vocab": true' in flags
    # every parameter but the opt-in embedding: 2 layers × ((keys + values) × d_ff + (q, k, v, o) × d + 2 biases)
    assert n_vec == counted == 2 * (2 * 128 + 4 * 32 + 2)
    assert n_proj == n_vec * 2 * 50


def test_projection_rows_are_sorted_by_token_id(indexed_store: Path) -> None:
    con = duckdb.connect(str(indexed_store), read_only=True)
    ids = [r[0] for r in con.execute("SELECT token_id FROM vector_tokens").fetchall()]
    con.close()
    # each checkpoint's run is appended sorted; two checkpoints → at most one descent
    descents = sum(1 for a, b in zip(ids, ids[1:], strict=False) if b < a)
    assert descents <= 1


def test_same_content_is_indexed_once(store_copy: Path, tiny_gpt2: TinyModel) -> None:
    again = index_checkpoint(store_copy, tiny_gpt2.path, IndexOptions(name="another-name"))
    assert again.status == "unchanged"
    assert "already indexed as gpt2-tiny" in again.message
    with queries.connect(store_copy) as db:
        assert [m.name for m in db.models()] == ["bert-tiny", "gpt2-tiny"]


def test_replace_reindexes_with_new_options(store_copy: Path, tiny_gpt2: TinyModel) -> None:
    result = index_checkpoint(store_copy, tiny_gpt2.path,
                              IndexOptions(name="gpt2-tiny", top_k=5, basis="raw", replace=True))
    assert result.status == "indexed" and result.n_projections == result.n_vectors * 2 * 5
    with queries.connect(store_copy) as db:
        (info,) = [m for m in db.models() if m.name == "gpt2-tiny"]
        assert [(c.basis, c.top_k) for c in info.checkpoints] == [("raw", 5)]
        v = db.vector("gpt2-tiny", "ff_value", 1, 7)
        assert v.basis == "raw" and len(v.top) == 5
        total = db.sql("SELECT count(*) FROM vector_tokens").rows[0][0]
        bert = db.sql("SELECT count(*) FROM projections WHERE model = 'bert-tiny'").rows[0][0]
    assert total == bert + result.n_projections  # the bert rows plus the new gpt2 rows, nothing stale


def test_components_option_indexes_only_those(tmp_path: Path, tiny_bert: TinyModel) -> None:
    r = index_checkpoint(tmp_path / "x.duckdb", tiny_bert.path, IndexOptions(components=["ff_value"], top_k=3))
    assert r.n_vectors == 2 * 64
    with queries.connect(tmp_path / "x.duckdb") as db:
        comps = db.sql("SELECT DISTINCT component FROM vectors").rows
    assert comps == [["ff_value"]]


def test_second_checkpoint_of_a_model_becomes_latest(tmp_path: Path) -> None:
    from tests.tinymodels import save_gpt2

    db_path = tmp_path / "lens.duckdb"
    first = save_gpt2(tmp_path / "run" / "checkpoint-100", seed=1)
    second = save_gpt2(tmp_path / "run" / "checkpoint-200", seed=2)
    index_checkpoint(db_path, first.path, IndexOptions(top_k=5))
    index_checkpoint(db_path, second.path, IndexOptions(top_k=5))
    with queries.connect(db_path) as db:
        (model,) = db.models()
        assert model.name == "run"
        assert [(c.label, c.step) for c in model.checkpoints] == [("checkpoint-100", 100), ("checkpoint-200", 200)]
        assert {h.checkpoint for h in db.promoters("paris", limit=50)} == {"checkpoint-200"}
        assert {h.checkpoint for h in db.promoters("paris", checkpoint="all", limit=500)} == {
            "checkpoint-100", "checkpoint-200"}
        assert db.vector("run", "ff_value", 1, 7, checkpoint="checkpoint-100").checkpoint == "checkpoint-100"

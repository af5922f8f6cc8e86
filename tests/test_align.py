"""Across models (issue 8): alignment in embedding space against planted permutations, the pure kernels
against brute force, vocabulary checks, the CLI, the service, and stitching tiny classifiers."""

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

import duckdb
import httpx
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, GPT2ForSequenceClassification, GPT2LMHeadModel

import queries
from indexer import IndexOptions, index_checkpoint
from indexer.analyses.align import align_models
from indexer.analyses.stitch import finetune_diff, stitch
from indexer.math import correlation as al
from schema.errors import LensdbError, StoreError
from service.app import create_app
from service.cli import main
from service.settings import Settings
from tests.tinymodels import WORDS, save_bert, save_gpt2, wordpiece_tokenizer
from tests.tinytasks import toy_task, train_classifier

N_LAYER = 4
STITCH_LAYERS = 4


# ---- pure kernels ------------------------------------------------------------------------------------------

def test_embedded_corr_equals_brute_force_pearson() -> None:
    g = torch.Generator().manual_seed(0)
    ea, eb = torch.randn(300, 16, generator=g), torch.randn(300, 24, generator=g)
    a, b = torch.randn(5, 16, generator=g), torch.randn(7, 24, generator=g)
    got = al.embedded_corr(a, b, al.kernels(ea, eb, block=64))
    pa_, pb_ = (a @ ea.T).double(), (b @ eb.T).double()
    pa_, pb_ = pa_ - pa_.mean(1, keepdim=True), pb_ - pb_.mean(1, keepdim=True)
    want = (pa_ / pa_.norm(dim=1, keepdim=True)) @ (pb_ / pb_.norm(dim=1, keepdim=True)).T
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=0)
    assert al.raw_corr(a, b) is None  # widths differ: no raw baseline


def test_embedded_corr_ignores_a_rotation_of_the_residual_basis_raw_does_not() -> None:
    g = torch.Generator().manual_seed(1)
    e, a = torch.randn(400, 12, generator=g), torch.randn(6, 12, generator=g)
    rot, _ = torch.linalg.qr(torch.randn(12, 12, generator=g))
    corr = al.embedded_corr(a, a @ rot, al.kernels(e, e @ rot))
    torch.testing.assert_close(corr.diagonal(), torch.ones(6), atol=1e-5, rtol=0)
    raw = al.raw_corr(a, a @ rot)
    assert raw is not None and raw.diagonal().mean() < 0.7


def test_hungarian_recovers_a_shuffled_order_where_greedy_would_not() -> None:
    order = [2, 0, 3, 1]
    sim = torch.full((4, 4), 0.1)
    for i, j in enumerate(order):
        sim[i, j] = 0.9
    sim[1, 2] = 0.95  # greedy row 1 would take column 2 from row 0
    assert al.hungarian(sim) == list(enumerate(order))


def test_the_two_stitching_maps_against_their_definitions() -> None:
    """pinv = E_B⁺ E_A carries B's token embeddings onto A's; paper = E_Bᵀ (E_Aᵀ)⁺ (Dar et al.'s code) keeps
    every state's vocabulary scores, h_B E_Bᵀ = (h_B M) E_Aᵀ; under an orthogonal change of basis they agree."""
    g = torch.Generator().manual_seed(2)
    ea = torch.randn(200, 8, generator=g)
    m = torch.randn(8, 8, generator=g)
    eb = ea @ torch.linalg.inv(m)  # B's embeddings are an invertible linear image of A's
    pinv, paper = al.translation(eb, ea, "pinv"), al.translation(eb, ea, "paper")
    torch.testing.assert_close((eb.double() @ pinv).float(), ea, atol=1e-4, rtol=0)
    torch.testing.assert_close(paper, eb.double().T @ torch.linalg.pinv(ea.double().T))  # the notebook's kernel
    h = torch.randn(5, 8, generator=g, dtype=torch.float64)  # any states of B
    torch.testing.assert_close(h @ paper @ ea.double().T, h @ eb.double().T, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(paper, pinv, atol=1e-3)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g))
    torch.testing.assert_close(al.translation(ea @ q, ea, "paper"), al.translation(ea @ q, ea, "pinv"), atol=1e-5,
                               rtol=1e-4)


def test_layer_statistics_and_sign_aware_matches() -> None:
    """paper: the mean |correlation| over all pairs; best: the mean of each row's best |correlation|; a unit's
    best match may be a negated copy, and keeps its sign."""
    corr = torch.tensor([[0.2, -0.9, 0.1], [0.5, 0.4, -0.3]])
    assert al.unit_similarity(corr, "paper") == pytest.approx(float(corr.abs().mean()))
    assert al.unit_similarity(corr, "best") == pytest.approx((0.9 + 0.5) / 2)
    index, score = al.best_match(corr)
    assert index.tolist() == [1, 0] and score.tolist() == pytest.approx([-0.9, 0.5])


def test_negated_units_are_matched_with_their_sign() -> None:
    """B's layers hold A's vectors permuted and half of them negated (they promote what A's suppress): the
    sign-aware best match finds every one, with correlation −1 for the negated, and both layer statistics
    see the negated copies; a signed best match would have missed them."""
    from indexer.analyses.align import ComponentVectors, compare

    g = torch.Generator().manual_seed(5)
    e = torch.randn(300, 16, generator=g)
    layers_a = [torch.randn(24, 16, generator=g) for _ in range(3)]
    perms = [torch.randperm(24, generator=g) for _ in range(3)]
    signs = torch.where(torch.arange(24) % 2 == 0, 1.0, -1.0)
    layers_b = [layers_a[i][perms[i]] * signs[:, None] for i in range(3)]
    units_a = [list(x.split(1)) for x in layers_a]
    units_b = [list(x.split(1)) for x in layers_b]
    for statistic in ("best", "paper"):
        result = compare(ComponentVectors(layers_a, units_a, e), ComponentVectors(layers_b, units_b, e),
                         statistic)
        assert result.pairs == [(0, 0), (1, 1), (2, 2)]
        for _, index_a, layer_b, index_b, score, _, _ in result.matches:
            n = int((perms[layer_b] == index_a).nonzero()[0])  # where A's vector sits in B
            assert index_b == n and score == pytest.approx(float(signs[n]), abs=1e-4)
    signed = al.embedded_corr(layers_a[0], layers_b[0], al.kernels(e, e)).max(dim=1).indices
    assert (signed != torch.argsort(perms[0])).any()  # the old signed maximum misses the negated copies


# ---- planted permutations ----------------------------------------------------------------------------------

@dataclass
class Planted:
    layer_order: list[int]  # B's layer j is A's layer layer_order[j]
    perms: list[torch.Tensor]  # B's neuron n of layer j is A's neuron perms[j][n]


def _permuted_copy(src: Path, dest: Path, seed: int, rotate: bool, noise: float = 0.01) -> Planted:
    """Model A with FF neurons permuted within each layer, layers shuffled, a little noise, and (``rotate``) the
    residual stream in another orthonormal basis: E and every stream-side weight turned by the same Q."""
    g = torch.Generator().manual_seed(seed)
    model = GPT2LMHeadModel.from_pretrained(src)
    blocks = model.transformer.h
    n_layer, d = len(blocks), model.config.n_embd
    order = torch.randperm(n_layer, generator=g).tolist()
    perms = []
    with torch.no_grad():
        for block in blocks:
            perm = torch.randperm(block.mlp.c_fc.weight.shape[1], generator=g)
            perms.append(perm)
            block.mlp.c_fc.weight.copy_(block.mlp.c_fc.weight[:, perm])  # Conv1D [in, out]: neurons are columns
            block.mlp.c_fc.bias.copy_(block.mlp.c_fc.bias[perm])
            block.mlp.c_proj.weight.copy_(block.mlp.c_proj.weight[perm])  # and rows of the output projection
        model.transformer.h = torch.nn.ModuleList([blocks[i] for i in order])
        if rotate:
            q, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
            model.transformer.wte.weight.copy_(model.transformer.wte.weight @ q)
            model.transformer.wpe.weight.copy_(model.transformer.wpe.weight @ q)
            for block in model.transformer.h:
                block.mlp.c_fc.weight.copy_(q.T @ block.mlp.c_fc.weight)
                block.mlp.c_proj.weight.copy_(block.mlp.c_proj.weight @ q)
                block.attn.c_attn.weight.copy_(q.T @ block.attn.c_attn.weight)
                block.attn.c_proj.weight.copy_(block.attn.c_proj.weight @ q)
        for p in model.parameters():
            p.add_(noise * p.std() * torch.randn(p.shape, generator=g))
    model.save_pretrained(dest)
    for file in src.iterdir():  # the same tokenizer files: the same vocabulary
        if not (dest / file.name).exists():
            (dest / file.name).write_bytes(file.read_bytes())
    return Planted(order, [perms[i] for i in order])


@pytest.fixture(scope="module")
def planted_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Planted]]:
    root = tmp_path_factory.mktemp("align")
    save_gpt2(root / "a", seed=0, n_layer=N_LAYER, n_embd=32)
    planted = {"perm": _permuted_copy(root / "a", root / "b", seed=1, rotate=False),
               "rot": _permuted_copy(root / "a", root / "c", seed=2, rotate=True)}
    db = root / "lens.duckdb"
    opts = {"components": ["ff_value", "ff_key"], "top_k": 5}
    index_checkpoint(db, root / "a", IndexOptions(name="a", **opts))
    index_checkpoint(db, root / "b", IndexOptions(name="perm", **opts))
    index_checkpoint(db, root / "c", IndexOptions(name="rot", **opts))
    return db, planted


def _recovered(db: Path, alignment_id: int, planted: Planted) -> tuple[float, float | None, list]:
    with queries.connect(db) as lens:
        result = lens.alignment(alignment_id)
    inverse = {a: j for j, a in enumerate(planted.layer_order)}  # A's layer → B's layer holding it
    assert [(p.layer_a, p.layer_b) for p in result.pairs] == sorted(inverse.items())
    where = {(j, int(a)): n for j in range(N_LAYER) for n, a in enumerate(planted.perms[j])}
    hits = sum(where[(m.layer_b, m.index_a)] == m.index_b for m in result.matches)
    raw = None
    if result.raw_similarity is not None:
        raw = sum(where[(m.layer_b, m.index_a)] == m.raw_index_b for m in result.matches) / len(result.matches)
    return hits / len(result.matches), raw, result.similarity


@pytest.mark.parametrize("component", ["ff_value", "ff_key"])
def test_alignment_recovers_planted_permutation_and_layer_order(planted_store, component: str) -> None:
    db, planted = planted_store
    out = align_models(db, "a", "perm", component=component)
    share, raw, sim = _recovered(db, out.alignment_id, planted["perm"])
    assert share >= 0.95, share
    assert raw is not None  # same residual basis: raw parameters find it too, and the run says so
    print(f"\n{component} permuted: embedding {share:.1%}, raw {raw:.1%}; {out.message}")


def test_alignment_survives_a_rotated_residual_basis_where_raw_fails(planted_store) -> None:
    db, planted = planted_store
    out = align_models(db, "a", "rot", component="ff_value")
    share, raw, _ = _recovered(db, out.alignment_id, planted["rot"])
    assert share >= 0.95, share
    assert raw is not None and raw < 0.5, raw
    print(f"\nff_value rotated+permuted: embedding {share:.1%}, raw {raw:.1%}")


def test_alignment_tables_and_views_answer_sql(planted_store) -> None:
    db, _ = planted_store
    out = align_models(db, "a", "perm", component="attn_o")
    with queries.connect(db) as lens:
        info = lens.alignment(out.alignment_id, matches=False).info
        assert info.unit == "head" and info.raw_comparable
        rows = lens.sql(f"SELECT count(*) FROM alignment_layers WHERE alignment_id = {out.alignment_id}").rows
        assert rows[0][0] == N_LAYER * N_LAYER
        heads = lens.sql(f"SELECT count(*) FROM alignment_matches WHERE alignment_id = {out.alignment_id}").rows
        assert heads[0][0] == N_LAYER * 4


def test_models_of_different_widths_align_without_a_raw_baseline(planted_store, tmp_path: Path, capsys) -> None:
    db, _ = planted_store
    copy = tmp_path / "lens.duckdb"
    copy.write_bytes(db.read_bytes())
    save_gpt2(tmp_path / "wide", seed=3, n_layer=2, n_embd=48)  # same tokenizer, other width and depth
    index_checkpoint(copy, tmp_path / "wide", IndexOptions(name="wide", components=["ff_value"], top_k=3))
    out = align_models(copy, "a", "wide")
    assert "no raw-parameter baseline: widths differ (32 vs 48)" in out.message
    with queries.connect(copy) as lens:
        run = lens.alignment(out.alignment_id)
    assert run.raw_similarity is None and not run.info.raw_comparable
    assert len(run.similarity) == N_LAYER and len(run.similarity[0]) == 2 and len(run.pairs) == 2
    assert all(m.raw_index_b is None for m in run.matches)
    assert main(["alignments", "--id", str(out.alignment_id), "--db", str(copy)]) == 0
    assert "raw-parameter baseline: none, the models' widths differ" in capsys.readouterr().out


def test_a_store_from_before_alignment_gains_the_tables_on_its_next_write(planted_store, tmp_path: Path) -> None:
    db, _ = planted_store
    copy = tmp_path / "lens.duckdb"
    copy.write_bytes(db.read_bytes())
    con = duckdb.connect(str(copy))
    for view in ("alignment_layers", "alignment_matches"):
        con.execute(f"DROP VIEW {view}")
    for table in ("alignment_runs", "layer_similarity", "neuron_matches"):
        con.execute(f"DROP TABLE {table}")
    con.execute("UPDATE lensdb_meta SET value = '1' WHERE key = 'schema_version'")  # as that release wrote it
    con.close()
    with pytest.raises(StoreError, match="older lensdb .*lensdb upgrade"):
        queries.connect(copy)
    out = align_models(copy, "a", "perm")
    with queries.connect(copy) as lens:
        assert [r.alignment_id for r in lens.alignments()] == [out.alignment_id]


def test_different_vocabularies_are_refused_with_the_count(planted_store, tmp_path: Path) -> None:
    db, _ = planted_store
    copy = tmp_path / "lens.duckdb"
    copy.write_bytes(db.read_bytes())
    save_bert(tmp_path / "bert")
    index_checkpoint(copy, tmp_path / "bert", IndexOptions(name="bert", components=["ff_value"], top_k=3))
    with pytest.raises(LensdbError, match=r"different vocabularies: \d+ token ids differ"):
        align_models(copy, "a", "bert")
    with pytest.raises(LensdbError, match="no model 'nope'"):
        align_models(copy, "a", "nope")


def test_cli_align_prints_matrix_and_writes_png(planted_store, tmp_path: Path, capsys) -> None:
    db, _ = planted_store
    png = tmp_path / "heat.png"
    assert main(["align", "a", "perm", "--db", str(db), "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "layer similarity" in out and "raw" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["align", "a", "perm", "--db", str(db), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["similarity"]) == N_LAYER
    assert main(["alignments", "--db", str(db)]) == 0
    assert main(["align", "a", "nope", "--db", str(db)]) == 1
    capsys.readouterr()
    assert main(["align", "a", "perm", "--db", str(db), "--similarity", "paper"]) == 0
    out = capsys.readouterr().out
    assert "layer similarity in embedding space (mean |vocabulary correlation| over all pairs, as Dar et al.)" in out
    with queries.connect(db) as lens:
        assert [r.statistic for r in lens.alignments(limit=2)] == ["paper", "best"]


def test_service_alignment_api_and_page(planted_store, tmp_path: Path) -> None:
    db, _ = planted_store
    copy = tmp_path / "lens.duckdb"
    copy.write_bytes(db.read_bytes())
    app = create_app(Settings(db=copy))
    try:
        asyncio.run(_service_checks(app))
    finally:
        app.state.owner.close()


async def _service_checks(app) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost") as client:
        made = await client.post("/align", json={"model_a": "a", "model_b": "perm", "component": "ff_value"})
        assert made.status_code == 200, made.text
        run = made.json()
        assert len(run["similarity"]) == N_LAYER and run["raw_similarity"] is not None
        listed = (await client.get("/alignments")).json()
        assert run["info"]["alignment_id"] in [r["alignment_id"] for r in listed]
        home = await client.get("/")
        assert f"/alignment/{run['info']['alignment_id']}" in home.text
        page = await client.get(f"/alignment/{run['info']['alignment_id']}")
        assert page.status_code == 200 and "<svg" in page.text
        bad = await client.post("/align", json={"model_a": "a", "model_b": "nope"})
        assert bad.status_code == 404
        paper = await client.post("/align", json={"model_a": "a", "model_b": "perm", "statistic": "paper"})
        assert paper.status_code == 200 and paper.json()["info"]["statistic"] == "paper"
        wrong = await client.post("/align", json={"model_a": "a", "model_b": "perm", "statistic": "max"})
        assert wrong.status_code == 422 and wrong.headers["content-type"].startswith("application/problem+json")


# ---- stitching and fine-tuning diffs on tiny classifiers trained here ------------------------------------

def bag_of_words(texts: list[str]) -> torch.Tensor:
    """Multi-hot targets: which of WORDS each sentence holds (B's stand-in for pretraining)."""
    return torch.tensor([[float(w in t.split()) for w in WORDS] for t in texts])


@pytest.fixture(scope="module")
def tiny_classifiers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A: a tiny BERT fine-tuned to spot 'paris'; pre: A before fine-tuning; B: a body "pretrained" from
    another seed to tell which words a sentence holds (a bag-of-words stand-in for masked-LM pretraining),
    its head dropped. A and B embed one token geometry (a shared random G) in different bases, as separately
    pretrained models of one vocabulary do."""
    root = tmp_path_factory.mktemp("stitch")
    tok = wordpiece_tokenizer()
    v, d = len(tok), 64
    geometry = torch.randn(v, d, generator=torch.Generator().manual_seed(100))
    paths = {}
    for name, seed in (("a", 0), ("b", 1)):
        torch.manual_seed(seed)
        labels = 2 if name == "a" else len(WORDS)
        cfg = BertConfig(vocab_size=v, hidden_size=d, num_hidden_layers=STITCH_LAYERS, num_attention_heads=4,
                         intermediate_size=128, max_position_embeddings=16, num_labels=labels, initializer_range=0.005,
                         problem_type="single_label_classification" if name == "a" else "multi_label_classification")
        model = BertForSequenceClassification(cfg)
        q, _ = torch.linalg.qr(torch.randn(d, d))
        with torch.no_grad():
            model.bert.embeddings.word_embeddings.weight.copy_(geometry @ q * 0.5)
        if name == "a":
            model.save_pretrained(root / "pre")
            tok.save_pretrained(root / "pre")
        texts, targets = toy_task(512, "paris", seed)
        train_classifier(model, tok, texts, targets if name == "a" else bag_of_words(texts), steps=60,
                         lr=2e-3 if name == "a" else 5e-4, seed=seed)
        out = root / name
        (model if name == "a" else model.bert).save_pretrained(out)
        tok.save_pretrained(out)
        paths[name] = out
    paths["pre"] = root / "pre"
    return paths


@pytest.mark.parametrize("method", ["pinv", "paper"])
def test_stitched_classifier_beats_chance(tiny_classifiers: dict[str, Path], method: str) -> None:
    texts, labels = toy_task(200, "paris", seed=7)
    report = stitch(tiny_classifiers["a"], tiny_classifiers["b"], texts, labels, method=method)
    assert report.map == method
    print(f"\nstitching ({method}): chance {report.chance:.2f}, A alone {report.accuracy_a:.2f}, "  # with -s
          + ", ".join(f"B keeps {r.b_layers} → A from {r.a_resumes_at}: {r.accuracy:.2f}" for r in report.rows))
    assert report.accuracy_a > 0.9
    assert [r.b_layers for r in report.rows] == list(range(STITCH_LAYERS + 1))
    assert report.rows[0].accuracy > report.chance + 0.2
    assert max(r.accuracy for r in report.rows[1:]) > report.chance + 0.1


def test_stitch_and_finetune_diff_from_the_cli(tiny_classifiers: dict[str, Path], tmp_path: Path, capsys) -> None:
    texts, labels = toy_task(40, "paris", seed=8)
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps({"text": t, "label": y}) for t, y in zip(texts, labels, strict=True)))
    assert main(["stitch", str(tiny_classifiers["a"]), str(tiny_classifiers["b"]), "--data", str(data),
                 "--layers", "0,2"]) == 0
    out = capsys.readouterr().out
    assert "a_resumes_at" in out and "map: E_B⁺ E_A" in out
    assert main(["stitch", str(tiny_classifiers["a"]), str(tiny_classifiers["b"]), "--data", str(data),
                 "--layers", "0", "--map", "paper"]) == 0
    assert "map: E_Bᵀ (E_Aᵀ)⁺, the paper's" in capsys.readouterr().out
    assert main(["finetune-diff", str(tiny_classifiers["pre"]), str(tiny_classifiers["a"]), "--json"]) == 0
    diff = json.loads(capsys.readouterr().out)
    assert len(diff["classifier"]) == 2 and diff["vectors"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x"}\n')
    assert main(["stitch", str(tiny_classifiers["a"]), str(tiny_classifiers["b"]), "--data", str(bad)]) == 1
    assert main(["stitch", str(tiny_classifiers["b"]), str(tiny_classifiers["a"]), "--data", str(data)]) == 1


def test_finetune_diff_points_the_paris_head_at_paris(tiny_classifiers: dict[str, Path]) -> None:
    diff = finetune_diff(tiny_classifiers["pre"], tiny_classifiers["a"], component="ff_value", k=5, top=10)
    rows = {c.label: c for c in diff.classifier}
    ranked = [w.token for w in rows[1].top] + [w.token for w in rows[0].bottom]
    print("\nhead row 1 promotes", [w.token for w in rows[1].top], "; row 0 suppresses",
          [w.token for w in rows[0].bottom])
    assert "paris" in ranked
    assert all(v.norm > 0 for v in diff.vectors) and len(diff.vectors) == 10


def test_stitch_refuses_different_vocabularies(tiny_classifiers: dict[str, Path], tiny_gpt2) -> None:
    with pytest.raises(LensdbError, match="different vocabularies: \\d+ token ids differ"):
        stitch(tiny_classifiers["a"], tiny_gpt2.path, ["paris"], [1])


def test_stitching_runs_on_a_decoder_without_a_padding_token(tiny_gpt2, tmp_path: Path) -> None:
    """GPT-2 classifies at the last real token, which it finds by the padding id the tokenizer lacks."""
    head = GPT2ForSequenceClassification.from_pretrained(tiny_gpt2.path, num_labels=2)
    head.save_pretrained(tmp_path / "head")
    tiny_gpt2.tokenizer.save_pretrained(tmp_path / "head")
    texts, labels = toy_task(8, "paris", seed=3)
    report = stitch(tmp_path / "head", tiny_gpt2.path, texts, labels, batch_size=4, b_layers=[0, 2])
    assert [r.b_layers for r in report.rows] == [0, 2] and all(0 <= r.accuracy <= 1 for r in report.rows)

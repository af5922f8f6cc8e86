"""Attention heads as token maps, end to end: a planted OV head and a planted QK head are found by the pair
index, by promoters, and by the row query; stored pairs and rows equal the dense V×V maps."""

from pathlib import Path

import pytest
import torch

import queries
from indexer import IndexOptions, index_checkpoint
from indexer.model.adapters import adapter_for
from indexer.model.checkpoint import open_checkpoint
from service.cli import main
from tests.tinymodels import OV_HEAD, QK_HEAD, TinyModel, save_gpt2


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[TinyModel, Path]:
    root = tmp_path_factory.mktemp("heads")
    tiny = save_gpt2(root / "heads-gpt2", plant_heads=True)
    db = root / "lens.duckdb"
    index_checkpoint(db, tiny.path, IndexOptions(name="heads", head_maps=True, top_k=20))
    return tiny, db


def _dense_maps(tiny: TinyModel, layer: int, head: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The V×V maps as TransformerLens would read them: the reading side E as it is (no vocabulary centring),
    readers with ln_1's gain folded in and centred across d, the writing side W_U with ln_f's gain folded in and
    centred across d and across the vocabulary. Pre-LN: no other norm lies on the path."""
    adapter = adapter_for(open_checkpoint(tiny.path))
    e = adapter.unembedding()  # tied
    final = adapter.final_norm()
    assert final is not None
    u = e * final.weight
    u = u - u.mean(dim=1, keepdim=True)
    u = u - u.mean(dim=0, keepdim=True)

    def fold(name: str) -> torch.Tensor:
        part = adapter.component(name, layer)[head]
        assert part.norm is not None
        rows = part.vectors * part.norm.weight
        return rows - rows.mean(dim=1, keepdim=True)

    o = adapter.component("attn_o", layer)[head].vectors
    return (e @ fold("attn_v").T) @ (u @ o.T).T, (e @ fold("attn_q").T) @ (e @ fold("attn_k").T).T


def test_planted_ov_head_is_found_three_ways(planted: tuple[TinyModel, Path]) -> None:
    tiny, db = planted
    king, queen = tiny.token_id("king"), tiny.token_id("queen")
    layer, head = OV_HEAD
    with queries.connect(db) as lens:
        pair = lens.vector("heads", "attn_ov_pair", layer, 0, head=head).top[0]
        assert (pair.source_token_id, pair.token_id) == (king, queen)
        hit = lens.promoters("queen", component="attn_ov_pair")[0]
        assert (hit.layer, hit.head, hit.source_token) == (layer, head, " king")
        row = lens.head_map("king", kind="ov")[0]
        assert (row.layer, row.head, row.targets[0].token) == (layer, head, " queen")


def test_planted_qk_head_is_found(planted: tuple[TinyModel, Path]) -> None:
    tiny, db = planted
    layer, head = QK_HEAD
    with queries.connect(db) as lens:
        pair = lens.vector("heads", "attn_qk_pair", layer, 0, head=head).top[0]
        assert (pair.source_token, pair.token) == (" dog", " cat")
        row = lens.head_map("dog", kind="qk")[0]
        assert (row.layer, row.head, row.targets[0].token) == (layer, head, " cat")


@pytest.mark.parametrize("layer, head", [(0, 0), OV_HEAD, QK_HEAD])
def test_stored_pairs_and_rows_equal_the_dense_maps(planted: tuple[TinyModel, Path], layer: int, head: int) -> None:
    tiny, db = planted
    ov, qk = _dense_maps(tiny, layer, head)
    with queries.connect(db) as lens:
        for kind, dense in (("ov", ov), ("qk", qk)):
            v = lens.vector("heads", f"attn_{kind}_pair", layer, 0, head=head)
            flat = dense.reshape(-1).topk(20)
            assert [(t.source_token_id, t.token_id) for t in v.top] == [
                (int(i) // dense.shape[1], int(i) % dense.shape[1]) for i in flat.indices]
            assert v.logit_mean == pytest.approx(dense.double().mean().item(), abs=1e-6)
            assert v.logit_std == pytest.approx(dense.double().std(unbiased=False).item(), rel=1e-4)
            source = tiny.token_id("king")
            rows = [r for r in lens.head_map(source, kind=kind, limit=100, per_head=5)
                    if (r.layer, r.head) == (layer, head)]
            assert [t.token_id for t in rows[0].targets] == dense[source].topk(5).indices.tolist()


def test_svd_directions_are_searchable(planted: tuple[TinyModel, Path]) -> None:
    tiny, db = planted
    layer, head = OV_HEAD
    with queries.connect(db) as lens:
        out_dir = lens.vector("heads", "attn_ov_svd", layer, 0, head=head)
        in_dir = lens.vector("heads", "attn_ov_svd_in", layer, 0, head=head)
    assert out_dir.top[0].token == " queen" or out_dir.bottom[0].token == " queen"
    assert in_dir.top[0].token == " king" or in_dir.bottom[0].token == " king"


def test_head_map_cli_and_errors(planted: tuple[TinyModel, Path], tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    _, db = planted
    assert main(["head-map", "king", "--db", str(db), "--limit", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "what each head writes when attending to ' king' (strongest heads first):"
    assert out[1].split()[:4] == ["model", "checkpoint", "layer", "head"]
    assert out[3].split()[2:4] == ["1", "2"] and "' queen'" in out[3]
    with pytest.raises(SystemExit) as usage:
        main(["head-map", "king", "--kind", "xy", "--db", str(db)])
    assert usage.value.code == 2 and "invalid choice: 'xy'" in capsys.readouterr().err
    plain = save_gpt2(tmp_path / "plain")
    index_checkpoint(tmp_path / "plain.duckdb", plain.path, IndexOptions(top_k=5))
    assert main(["head-map", "king", "--db", str(tmp_path / "plain.duckdb")]) == 1
    assert "--head-maps" in capsys.readouterr().err


def test_head_map_over_http(planted: tuple[TinyModel, Path], tmp_path: Path) -> None:
    import asyncio
    import shutil

    import httpx

    from service.app import create_app
    from service.settings import Settings

    db = tmp_path / "served.duckdb"
    shutil.copy(planted[1], db)
    app = create_app(Settings(db=db))

    async def go() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost") as client:
            return (await client.get("/head-map", params={"token": "king", "limit": 2}),
                    await client.get("/head-map", params={"token": "king", "kind": "zz"}))

    try:
        ok, bad = asyncio.run(go())
    finally:
        app.state.owner.close()
    assert ok.status_code == 200 and ok.json()[0]["targets"][0]["token"] == " queen"
    assert bad.status_code == 422 and bad.headers["content-type"].startswith("application/problem+json")


def test_head_pairs_view(planted: tuple[TinyModel, Path]) -> None:
    _, db = planted
    with queries.connect(db) as lens:
        rows = lens.sql("SELECT layer, head, source_token, token FROM head_pair_projections WHERE "
                        "component = 'attn_ov_pair' AND side = 'top' ORDER BY zscore DESC LIMIT 1").rows
    assert rows == [[1, 2, " king", " queen"]]


def test_post_ln_head_maps_equal_dense_maps_carried_through_every_layernorm(tmp_path: Path) -> None:
    """A tiny BERT with random gains and biases: each head's OV and QK maps, read with the reading side carried
    from the embedding to the head and W_O carried to the output (dense, from the model's own LayerNorms) and no
    vocabulary centring on any reading side, are what the store holds, pairs and rows."""
    from indexer.model.forward import load_model
    from tests.test_carry import _dense_path
    from tests.test_conformance import build

    path = tmp_path / "bert"
    build("bert", path)
    adapter = adapter_for(open_checkpoint(path))
    model = load_model(path, adapter)
    db = tmp_path / "lens.duckdb"
    index_checkpoint(db, path, IndexOptions(name="bert", head_maps=True, top_k=10, components=["ff_value"]))
    e = adapter.unembedding().double()  # tied
    with queries.connect(db) as lens:
        for layer, head in ((0, 1), (1, 3)):
            reads = e @ _dense_path(model, adapter, "reads", layer, "attn").T
            u = (e - e.mean(dim=0)) @ _dense_path(model, adapter, "writes", layer, "attn")  # to the final LN

            def rows(name: str, layer: int = layer, head: int = head) -> torch.Tensor:
                return adapter.component(name, layer)[head].vectors.double()

            ov = (reads @ rows("attn_v").T) @ (u @ rows("attn_o").T).T
            qk = (reads @ rows("attn_q").T) @ (reads @ rows("attn_k").T).T
            for kind, dense in (("ov", ov), ("qk", qk)):
                v = lens.vector("bert", f"attn_{kind}_pair", layer, 0, head=head)
                flat = dense.reshape(-1).topk(10)
                assert [(t.source_token_id, t.token_id) for t in v.top] == [
                    (int(i) // dense.shape[1], int(i) % dense.shape[1]) for i in flat.indices]
                assert v.logit_mean == pytest.approx(dense.mean().item(), abs=1e-6)
                source = 7
                row = [r for r in lens.head_map(source, kind=kind, limit=100, per_head=5)
                       if (r.layer, r.head) == (layer, head)][0]
                assert [t.token_id for t in row.targets] == dense[source].topk(5).indices.tolist()

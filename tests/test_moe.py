"""Mixture-of-experts models end to end: a value planted in one expert is found first by ``promoters`` with its
expert coordinate, filters and pages carry the coordinate, and experts stored as fused 3-D tensors read the
same vectors as one module per expert."""

from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file, save_file

import queries
from indexer.model.adapters import adapter_for
from indexer.model.checkpoint import open_checkpoint
from queries.integrity import check_store
from schema.connect import open_reader
from schema.errors import NotFound
from service.app import create_app
from service.cli import main
from service.settings import Settings
from tests.test_conformance import build
from tests.tinymodels import byte_bpe_tokenizer

PARIS = byte_bpe_tokenizer().convert_tokens_to_ids("Ġparis")
LONDON = byte_bpe_tokenizer().convert_tokens_to_ids("Ġlondon")


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen2-MoE: neuron 5 of expert 2 in layer 1 writes ' paris'; neuron 3 of the shared expert in
    layer 1 writes ' london'. Indexed into a store."""
    root = tmp_path_factory.mktemp("moe")
    model = build("qwen2_moe", root / "qmoe")
    w_u = model.get_output_embeddings().weight.detach()
    mlp = model.model.layers[1].mlp
    with torch.no_grad():
        mlp.experts.down_proj[2][:, 5] = w_u[PARIS] * 40.0  # in memory: [experts, d, F]; column 5 is neuron 5
        mlp.shared_expert.down_proj.weight[:, 3] = w_u[LONDON] * 40.0
    model.save_pretrained(root / "qmoe")
    db = root / "lens.duckdb"
    assert main(["index", str(root / "qmoe"), "--db", str(db), "--quiet", "--top-k", "5", "--name", "qwen2_moe"]) == 0
    return db


def test_a_value_planted_in_one_expert_is_found_first_with_its_expert(planted: Path) -> None:
    with queries.connect(planted) as lens:
        (hit,) = lens.promoters("paris", component="ff_value", limit=1)
        assert (hit.layer, hit.expert, hit.index, hit.rank) == (1, 2, 5, 1)
        (shared,) = lens.promoters("london", component="ff_shared_value", limit=1)
        assert (shared.layer, shared.expert, shared.index) == (1, None, 3)
        assert all(h.expert != 2 for h in lens.promoters("paris", component="ff_value", expert=1, limit=50))
        assert lens.vector("qwen2_moe", "ff_value", 1, 5, expert=2).top[0].token_id == PARIS
        assert lens.vector("qwen2_moe", "ff_value", 0, 5).expert is None  # layer 0 is dense
        with pytest.raises(NotFound, match="pass the expert"):
            lens.vector("qwen2_moe", "ff_value", 1, 5)
        counts = dict(lens.sql("SELECT component, count(DISTINCT expert) FROM vector_info GROUP BY 1").rows)
        routers = lens.sql("SELECT count(*) FROM vector_info WHERE component = 'ff_router'").rows[0][0]
    assert counts["ff_value"] == 4 and counts["attn_o"] == 0 and routers == 4  # one router row per expert
    con = open_reader(planted)
    try:
        assert check_store(con).ok
    finally:
        con.close()


def test_the_expert_coordinate_on_the_command_line_and_over_http(planted: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["promoters", "paris", "--component", "ff_value", "--expert", "2", "--limit", "1",
                 "--db", str(planted)]) == 0
    out = capsys.readouterr().out
    assert "expert" in out.splitlines()[0] and " 2 " in out.splitlines()[2]
    assert main(["vector", "qwen2_moe", "ff_value", "1", "5", "--expert", "2", "--db", str(planted)]) == 0
    assert "expert 2" in capsys.readouterr().out
    app = create_app(Settings(db=planted, warm=False))
    try:
        with TestClient(app, base_url="http://localhost") as client:  # a name the service answers to
            hits = client.get("/promoters", params={"token": "paris", "component": "ff_value", "expert": 2,
                                                    "limit": 1}).json()["items"]
            assert hits[0]["expert"] == 2 and hits[0]["index"] == 5
            assert client.get("/vectors/qwen2_moe/ff_value/1/5", params={"expert": 2}).json()["expert"] == 2
            page = client.get("/vector/qwen2_moe/ff_value/1/5", params={"expert": 2}).text
            assert "expert 2" in page
            assert "E2" in client.get("/search", params={"token": "paris"}).text
    finally:
        app.state.owner.close()


def test_fused_expert_tensors_read_the_same_vectors_as_one_module_per_expert(tmp_path: Path) -> None:
    """transformers 5 holds Mixtral's experts as ``mlp.experts.gate_up_proj`` [E, 2F, d] and ``down_proj``
    [E, d, F]; a checkpoint stored that way gives the same vectors, read one expert at a time."""
    build("mixtral", tmp_path / "split")
    (tmp_path / "fused").mkdir()
    for f in (tmp_path / "split").iterdir():
        if f.name != "model.safetensors":
            (tmp_path / "fused" / f.name).write_bytes(f.read_bytes())
    state = load_file(tmp_path / "split" / "model.safetensors")
    fused = {}
    for name, t in state.items():
        if ".block_sparse_moe.experts." in name:
            continue
        fused[name.replace("block_sparse_moe.gate", "mlp.gate")] = t
    for i in range(2):
        ex = [f"model.layers.{i}.block_sparse_moe.experts.{e}" for e in range(4)]
        fused[f"model.layers.{i}.mlp.experts.gate_up_proj"] = torch.stack(
            [torch.cat([state[f"{x}.w1.weight"], state[f"{x}.w3.weight"]]) for x in ex])
        fused[f"model.layers.{i}.mlp.experts.down_proj"] = torch.stack([state[f"{x}.w2.weight"] for x in ex])
    save_file(fused, tmp_path / "fused" / "model.safetensors", metadata={"format": "pt"})
    a, b = adapter_for(open_checkpoint(tmp_path / "split")), adapter_for(open_checkpoint(tmp_path / "fused"))
    assert not a.fused() and b.fused()  # type: ignore[attr-defined]
    for name in ("ff_key", "ff_gate", "ff_value", "ff_router"):
        for layer in range(2):
            for x, y in zip(a.component(name, layer), b.component(name, layer), strict=True):
                assert x.expert == y.expert
                torch.testing.assert_close(x.vectors, y.vectors, rtol=0, atol=0)


def test_a_trace_of_a_mixture_of_experts_model_is_refused_clearly(planted: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trace", "qwen2_moe", "paris london", "--db", str(planted)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "mixture of experts" in err


def test_an_experts_vector_over_training(planted: Path, tmp_path: Path) -> None:
    """A second checkpoint of the MoE model: drift, the training page and its links keep the expert."""
    import shutil

    db = tmp_path / "lens.duckdb"
    shutil.copy(planted, db)
    later = tmp_path / "qmoe-b"
    shutil.copytree(planted.parent / "qmoe", later)
    state = load_file(later / "model.safetensors")
    state["model.layers.1.mlp.experts.2.down_proj.weight"][:, 5] *= -1  # the planted neuron turns around
    save_file(state, later / "model.safetensors", metadata={"format": "pt"})
    assert main(["index", str(later), "--db", str(db), "--quiet", "--top-k", "5", "--name", "qwen2_moe"]) == 0
    with queries.connect(db) as lens:
        steps = lens.drift_vector("qwen2_moe", "ff_value", 1, 5, expert=2)
        assert [s.checkpoint for s in steps] == ["qmoe", "qmoe-b"] and steps[1].shared == 0
        assert lens.vector("qwen2_moe", "ff_value", 1, 5, expert=2).bottom[0].token_id == PARIS
    app = create_app(Settings(db=db, warm=False))
    try:
        with TestClient(app, base_url="http://localhost") as client:  # a name the service answers to
            page = client.get("/vector/qwen2_moe/ff_value/1/5", params={"expert": 2}).text
            assert "/training?expert=2" in page
            training = client.get("/vector/qwen2_moe/ff_value/1/5/training", params={"expert": 2}).text
            assert "expert 2" in training and "name=expert value='2'" in training and "expert=2" in training
    finally:
        app.state.owner.close()

"""Per-layer folded bases (basis version 2): a vector is read through the linear part of every norm on its
direct path. Checked against a dense carry written here from the model's own LayerNorm modules (found through
``module_path``) on a tiny BERT with random gains and biases, end to end through a store, and against the
decomposition's carry, which must be the same implementation."""

import json
from pathlib import Path

import duckdb
import pytest
import torch

import queries
from indexer import IndexOptions, index_checkpoint
from indexer.index.compute import Compute
from indexer.index.plan import role_basis, unit_basis, unit_vectors
from indexer.math.basis import BASIS_VERSION
from indexer.math.carry import carry, path_map
from indexer.model.adapters import Adapter, adapter_for
from indexer.model.adapters.base import Norm
from indexer.model.checkpoint import open_checkpoint
from indexer.model.forward import load_model, run_forward
from tests.test_conformance import build

CPU = Compute(torch.device("cpu"), "fp32")


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module, Adapter]:
    path = tmp_path_factory.mktemp("carry") / "bert"
    model = build("bert", path)  # LayerNorm gains and every bias random
    return path, model, adapter_for(open_checkpoint(path))


def _stream_layernorms(model: torch.nn.Module, adapter: Adapter) -> list[tuple[str, torch.nn.Module]]:
    """Every LayerNorm on the post-LN stream, in the order the stream passes them, with where it sits."""
    def mod(key: str, layer: int = 0) -> torch.nn.Module:
        return model.get_submodule(str(adapter.module_path(key, layer)))

    found = [("embed", mod("attn_source", 0))]
    for i in range(adapter.dims.n_layers):
        found.append((f"attn{i}", mod("ff_source", i)))
        found.append((f"ff{i}", mod("attn_source", i + 1) if i < adapter.dims.n_layers - 1 else mod("final_norm")))
    return found


def _dense(lns: list[torch.nn.Module], d: int) -> torch.Tensor:
    """C = L_K ⋯ L_1 with L = diag(g)(I − 11ᵀ/d), in float64."""
    c = torch.eye(d, dtype=torch.float64)
    centre = torch.eye(d, dtype=torch.float64) - 1.0 / d
    for ln in lns:
        c = torch.diag(ln.weight.detach().double()) @ centre @ c
    return c


def _dense_path(model: torch.nn.Module, adapter: Adapter, role: str, layer: int, stage: str) -> torch.Tensor:
    """The LayerNorms on a writer's path to the output (from its write on) or on a reader's path from the
    embedding (up to the stream it reads), as one dense matrix."""
    lns = _stream_layernorms(model, adapter)
    here = [i for i, (where, _) in enumerate(lns) if where == f"{stage}{layer}"][0]
    chosen = lns[here:] if role == "writes" else lns[:here]
    return _dense([ln for _, ln in chosen], adapter.dims.d_model)


WRITERS = [("ff_value", "ff"), ("attn_o", "attn"), ("ff_out_bias", "ff"), ("attn_out_bias", "attn")]
READERS = [("ff_key", "ff"), ("attn_q", "attn"), ("attn_k", "attn"), ("attn_v", "attn")]


@pytest.mark.parametrize(("name", "stage"), WRITERS + READERS)
@pytest.mark.parametrize("layer", [0, 1])
def test_unit_basis_equals_a_dense_carry_through_every_layernorm_on_the_path(
        bert: tuple[Path, torch.nn.Module, Adapter], name: str, stage: str, layer: int) -> None:
    _, model, adapter = bert
    role = adapter.spec(name).role
    w = adapter.unembedding().double()
    w_c = w - w.mean(dim=0)  # the folded bases centre over the vocabulary (a per-vector constant)
    c = _dense_path(model, adapter, role, layer, stage)
    want = w_c @ c if role == "writes" else w_c @ c.T  # writers: W·C v; readers: W·(Cᵀ k)
    got = unit_basis(adapter, role_basis(adapter, role, "folded", CPU), name, layer, "folded").dense()
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-4)


def test_the_old_single_folded_basis_is_not_the_carried_one(bert: tuple[Path, torch.nn.Module, Adapter]) -> None:
    """Only the last block's MLP writes straight into the final LayerNorm; every earlier unit is carried."""
    _, _, adapter = bert
    base = role_basis(adapter, "writes", "folded", CPU)
    assert unit_basis(adapter, base, "ff_value", 1, "folded").carry is None
    for name, layer in (("ff_value", 0), ("attn_o", 0), ("attn_o", 1)):
        carried = unit_basis(adapter, base, name, layer, "folded")
        assert carried.carry is not None and not torch.allclose(carried.dense(), base.matrix, atol=1e-3)
    assert unit_basis(adapter, base, "ff_value", 0, "raw") is base


def test_pre_ln_bases_carry_nothing(tiny_gpt2) -> None:
    """Pre-LN decoders keep the version-1 bases exactly: their norms sit on the branches, not on the stream."""
    adapter = adapter_for(open_checkpoint(tiny_gpt2.path))
    assert adapter.stream_norms() == []
    for role, name in (("writes", "ff_value"), ("reads", "attn_q")):
        base = role_basis(adapter, role, "folded", CPU)
        assert unit_basis(adapter, base, name, 0, "folded").carry is None


def test_path_map_carries_writers_forward_and_readers_back() -> None:
    """Properties: v @ T is the carried vector; (k @ Tᵀ)·e = k·(C e) for every e (a reader meets carried tokens)."""
    g = torch.Generator().manual_seed(0)
    d = 6
    norms = [Norm("layernorm", torch.rand(d, generator=g) + 0.5), Norm("rmsnorm", torch.rand(d, generator=g) + 0.5),
             Norm("layernorm", torch.rand(d, generator=g) + 0.5)]
    v, k, e = (torch.randn(4, d, generator=g) for _ in range(3))
    t_w, t_r = path_map(norms, "writes", d), path_map(norms, "reads", d)
    assert t_w is not None and t_r is not None
    torch.testing.assert_close(v @ t_w, carry(v, norms))
    torch.testing.assert_close((k @ t_r) @ e.T, k @ carry(e, norms).T)
    assert path_map([], "writes", d) is None


def test_the_index_stores_the_carried_projection(bert: tuple[Path, torch.nn.Module, Adapter],
                                                 tmp_path: Path) -> None:
    """End to end: a store's top tokens for layer-0 FF values are the dense carried projection's top tokens."""
    path, model, adapter = bert
    db = tmp_path / "lens.duckdb"
    index_checkpoint(db, path, IndexOptions(name="bert", top_k=5, components=["ff_value", "attn_q"]))
    w = adapter.unembedding().double()
    w_c = w - w.mean(dim=0)
    dense = {name: (w_c @ _dense_path(model, adapter, "writes", 0, "ff")) if name == "ff_value"
             else (w_c @ _dense_path(model, adapter, "reads", 0, "attn").T) for name in ("ff_value", "attn_q")}
    with queries.connect(db) as lens:
        for name, index, head in (("ff_value", 3, None), ("ff_value", 40, None), ("attn_q", 2, 1)):
            (part,) = [p for p in adapter.component(name, 0) if p.head == head]
            logits = dense[name] @ unit_vectors(part, "folded")[index].double()
            view = lens.vector("bert", name, 0, index, head=head)
            assert [t.token_id for t in view.top] == logits.topk(5).indices.tolist()
            assert view.logit_std == pytest.approx(float(logits.std(unbiased=False)), rel=1e-4)
            assert view.norm == pytest.approx(float(part.vectors[index].norm()), rel=1e-5)  # the vector's own
    with duckdb.connect(str(db), read_only=True) as con:
        flags = json.loads(con.execute("SELECT basis_flags FROM index_runs").fetchone()[0])  # type: ignore[index]
    assert flags["version"] == BASIS_VERSION == 2
    assert flags["writes"]["carry"].startswith("every norm") and flags["reads"]["carry"].startswith("every norm")


def test_the_trace_carries_with_the_same_implementation(bert: tuple[Path, torch.nn.Module, Adapter]) -> None:
    """Decomposition.carry (with each norm's measured 1/σ) ranks tokens as the unit's index basis does: per
    position it is the same linear map times a positive number."""
    path, _, adapter = bert
    fw = run_forward(load_model(path, adapter), adapter, torch.tensor([5, 9, 11, 7]))
    (part,) = adapter.component("ff_value", 0)
    v = part.vectors[:8]
    base = role_basis(adapter, "writes", "folded", CPU)
    unit = unit_basis(adapter, base, "ff_value", 0, "folded")
    w = adapter.unembedding()
    traced = fw.decomposition.carry(v[None].expand(4, -1, -1).transpose(0, 1), 0, "ff")  # [8, P, d]
    for p in range(4):
        got = traced[:, p] @ (w - w.mean(dim=0)).T
        want = unit.prepare(v) @ unit.matrix.T
        scale = got.norm(dim=1, keepdim=True) / want.norm(dim=1, keepdim=True)  # 1/σ products, positive
        torch.testing.assert_close(got, want * scale, rtol=1e-4, atol=1e-5)


def test_check_names_stores_indexed_with_the_old_basis(bert: tuple[Path, torch.nn.Module, Adapter], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A post-LN checkpoint indexed before basis version 2 (no basis_flags.version) is named, with the command
    that re-indexes it; the note goes once it is re-indexed. The store is not damaged: check still passes."""
    from service.cli import main

    path, _, _ = bert
    db = tmp_path / "lens.duckdb"
    index_checkpoint(db, path, IndexOptions(name="bert", top_k=3, components=["ff_value"]))
    assert main(["check", "--db", str(db)]) == 0
    assert "note:" not in capsys.readouterr().out
    with duckdb.connect(str(db)) as con:  # as version 1 recorded it
        con.execute("UPDATE index_runs SET basis_flags = "
                    "json_object('compute', json_extract(basis_flags, '$.compute'))")
    assert main(["check", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "(bert/bert) was indexed with folded basis version 1, which read every layer of this post-LN model " \
           f"through one basis; re-index it to get basis version 2: lensdb index {path} --replace" in out
    assert main(["index", str(path), "--db", str(db), "--replace", "--quiet", "--component", "ff_value"]) == 0
    assert main(["check", "--db", str(db)]) == 0
    assert "note:" not in capsys.readouterr().out


def test_check_names_head_maps_of_the_previous_release(tmp_path: Path) -> None:
    """The previous release's fixture store: its head-map checkpoint is named (reading side centred), the
    pre-LN checkpoint without head maps is not (version 2 stores the same rows for it)."""
    import gzip
    import shutil

    from queries.integrity import check_store
    from schema.connect import open_reader
    from schema.writer import upgrade_store

    db = tmp_path / "v1.duckdb"
    with gzip.open(Path(__file__).parent / "fixtures" / "store_v1.duckdb.gz") as src, db.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    upgrade_store(db)
    con = open_reader(db)
    try:
        report = check_store(con)
    finally:
        con.close()
    stale = [n for n in report.notes if "basis version" in n]
    assert report.ok and len(stale) == 1
    assert stale[0].startswith("checkpoint 1 (tiny/") and "centred the reading side of its head maps" in stale[0]


def test_a_site_is_read_by_the_rule_of_its_own_units(bert: tuple[Path, torch.nn.Module, Adapter]) -> None:
    """site_basis (what a vector placed at a hook point is read with) equals the basis of the components that
    write or read there."""
    from indexer.index.plan import site_basis

    _, _, adapter = bert
    for role, name, stage in (("writes", "ff_value", "ff"), ("writes", "attn_o", "attn"), ("reads", "ff_key", "ff"),
                              ("reads", "attn_q", "attn")):
        base = role_basis(adapter, role, "folded", CPU)
        for layer in range(adapter.dims.n_layers):
            torch.testing.assert_close(site_basis(adapter, base, role, layer, stage, "folded").dense(),
                                       unit_basis(adapter, base, name, layer, "folded").dense())

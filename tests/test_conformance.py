"""Conformance: for every supported architecture, the adapter's canonical vectors reproduce what the model
computes in a real forward pass.

Each architecture is a tiny random model built from its real transformers config (norm gains and biases
randomised so that a missed gain or bias shows), saved with safetensors and opened with lensdb's adapter.
Hooks on the modules the adapter says it reads (``module_path``) capture activations; the checks are:

* MLP output = Σ_i activation_i · ff_value_i (+ ff_out_bias), activation = input of the output projection;
* attention output = Σ_h z_h · attn_o[h] (+ attn_out_bias), z = input of the output projection;
* readers (ff_key, ff_gate, attn_q/k/v), with their input norm folded in, applied to the un-normalised stream
  and divided by the norm's scale, give the projections' outputs up to a constant per output (the bias);
* each head's z equals its attention pattern applied to attn_v of its key/value head (GQA mapping);
* the final logits equal the folded write basis applied to the final stream / σ, up to a constant per
  position (softmax) and per token (the final norm's bias, an lm_head bias).
"""

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import transformers as tf

import queries
from indexer.analyses.stitch import hooked_block
from indexer.errors import CheckpointError, UnsupportedArchitecture
from indexer.math.basis import fold_reader, write_basis
from indexer.model.adapters import Adapter, adapter_for, supported
from indexer.model.checkpoint import open_checkpoint
from service.cli import main
from tests.tinymodels import byte_bpe_tokenizer

D, N_LAYERS, N_HEADS, D_FF, SEQ = 32, 2, 4, 64, 8
IDS = {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}


def _configs(vocab: int) -> dict[str, tuple[type, object]]:
    common = {"vocab_size": vocab, **IDS}
    llama = {"hidden_size": D, "num_hidden_layers": N_LAYERS, "num_attention_heads": N_HEADS,
             "num_key_value_heads": 2, "intermediate_size": D_FF, "max_position_embeddings": 32, **common}
    return {
        "gpt2": (tf.GPT2LMHeadModel, tf.GPT2Config(n_positions=16, n_embd=D, n_layer=N_LAYERS, n_head=N_HEADS,
                                                   **common)),
        "gpt_neo": (tf.GPTNeoForCausalLM, tf.GPTNeoConfig(
            max_position_embeddings=16, hidden_size=D, num_layers=N_LAYERS, num_heads=N_HEADS,
            attention_types=[[["global", "local"], 1]], window_size=4, **common)),
        "gptj": (tf.GPTJForCausalLM, tf.GPTJConfig(n_positions=16, n_embd=D, n_layer=N_LAYERS, n_head=N_HEADS,
                                                   rotary_dim=4, **common)),
        "gpt_neox": (tf.GPTNeoXForCausalLM, tf.GPTNeoXConfig(
            hidden_size=D, num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS, intermediate_size=D_FF,
            max_position_embeddings=16, **common)),
        "opt": (tf.OPTForCausalLM, tf.OPTConfig(
            hidden_size=D, num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS, ffn_dim=D_FF,
            word_embed_proj_dim=D, max_position_embeddings=16, **common)),
        "llama": (tf.LlamaForCausalLM, tf.LlamaConfig(**llama)),
        "mistral": (tf.MistralForCausalLM, tf.MistralConfig(**llama)),
        "qwen2": (tf.Qwen2ForCausalLM, tf.Qwen2Config(**llama)),
        # head_dim 16 with d = 32 and 4 heads: the explicit head_dim, not d / n_heads, sizes the heads
        "qwen3": (tf.Qwen3ForCausalLM, tf.Qwen3Config(**llama, head_dim=16)),
        "gemma": (tf.GemmaForCausalLM, tf.GemmaConfig(**llama, head_dim=8)),
        "gemma2": (tf.Gemma2ForCausalLM, tf.Gemma2Config(**llama, head_dim=8, sliding_window=4)),
        "gemma3_text": (tf.Gemma3ForCausalLM, tf.Gemma3TextConfig(**llama, head_dim=8, sliding_window=4)),
        "phi3": (tf.Phi3ForCausalLM, tf.Phi3Config(**llama)),
        "olmo": (tf.OlmoForCausalLM, tf.OlmoConfig(**llama)),
        "olmo2": (tf.Olmo2ForCausalLM, tf.Olmo2Config(**llama)),
        "stablelm": (tf.StableLmForCausalLM, tf.StableLmConfig(**llama, use_qkv_bias=True, qk_layernorm=True)),
        "stablelm_parallel": (tf.StableLmForCausalLM, tf.StableLmConfig(**llama, use_parallel_residual=True)),
        # mixtures of experts: 4 experts, top 2; Qwen2-MoE with a shared expert and a dense first layer
        "mixtral": (tf.MixtralForCausalLM, tf.MixtralConfig(**llama, num_local_experts=4, num_experts_per_tok=2)),
        "qwen2_moe": (tf.Qwen2MoeForCausalLM, tf.Qwen2MoeConfig(
            **llama, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=24,
            mlp_only_layers=[0], norm_topk_prob=False)),
        "qwen3_moe": (tf.Qwen3MoeForCausalLM, tf.Qwen3MoeConfig(
            **llama, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, head_dim=8, norm_topk_prob=True)),
        "olmoe": (tf.OlmoeForCausalLM, tf.OlmoeConfig(**llama, num_experts=4, num_experts_per_tok=2)),
        "falcon": (tf.FalconForCausalLM, tf.FalconConfig(  # Falcon-7B: multi-query, parallel attention
            hidden_size=D, num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS, bias=True, **common)),
        "falcon_gqa": (tf.FalconForCausalLM, tf.FalconConfig(  # Falcon-40B: grouped K/V, ln_attn and ln_mlp
            hidden_size=D, num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS, new_decoder_architecture=True,
            num_kv_heads=2, **common)),
        "falcon_rw": (tf.FalconForCausalLM, tf.FalconConfig(  # Falcon-RW: per-head q|k|v, sequential
            hidden_size=D, num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS, multi_query=False,
            parallel_attn=False, bias=True, **common)),
        "bert": (tf.BertForMaskedLM, tf.BertConfig(
            hidden_size=D, num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS, intermediate_size=D_FF,
            max_position_embeddings=16, vocab_size=vocab, pad_token_id=0)),
        "roberta": (tf.RobertaForMaskedLM, tf.RobertaConfig(
            hidden_size=D, num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS, intermediate_size=D_FF,
            max_position_embeddings=24, vocab_size=vocab, pad_token_id=1)),
        "distilbert": (tf.DistilBertForMaskedLM, tf.DistilBertConfig(
            dim=D, n_layers=N_LAYERS, n_heads=N_HEADS, hidden_dim=D_FF, max_position_embeddings=16,
            vocab_size=vocab, pad_token_id=0)),
    }


ARCHS = list(_configs(8))
MOE = {"mixtral", "qwen2_moe", "qwen3_moe", "olmoe"}
GATED = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "olmo", "olmo2", "stablelm",
         "stablelm_parallel", *MOE}
KV_HEADS = {**{a: 2 for a in GATED}, "falcon": 1, "falcon_gqa": 2}  # key/value heads where fewer than N_HEADS
ENCODERS = ("bert", "roberta", "distilbert")


def model_type(arch: str) -> str:
    return arch.split("_")[0] if arch.startswith(("falcon", "stablelm")) else arch


def test_every_supported_model_type_is_covered() -> None:
    assert set(supported()) - {"xlm-roberta", "camembert"} == {model_type(a) for a in ARCHS}


def build(arch: str, path: Path, seed: int = 0) -> torch.nn.Module:
    """Save a tiny random ``arch`` model with a tokenizer; norm gains and all biases are randomised."""
    torch.manual_seed(seed)
    tokenizer = byte_bpe_tokenizer()
    cls, cfg = _configs(len(tokenizer))[arch]
    model = cls._from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(torch.rand_like(p) + 0.5 if name.endswith("weight") else torch.randn_like(p) * 0.2)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    assert (path / "model.safetensors").exists()
    return model


@dataclass
class Run:
    arch: str
    model: torch.nn.Module
    adapter: Adapter
    ins: dict[str, torch.Tensor]
    outs: dict[str, torch.Tensor]
    attentions: tuple[torch.Tensor, ...]
    logits: torch.Tensor

    def module(self, key: str, layer: int) -> torch.nn.Module:
        path = self.adapter.module_path(key, layer)
        assert path is not None
        return self.model.get_submodule(path)


@pytest.fixture(scope="module", params=ARCHS)
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Run:
    arch = request.param
    path = tmp_path_factory.mktemp("conf") / arch
    model = build(arch, path)
    adapter = adapter_for(open_checkpoint(path))
    ins: dict[str, torch.Tensor] = {}
    outs: dict[str, torch.Tensor] = {}
    handles = []
    keys = ["ff_out", "attn_out", "ff_in", "ff_gate", "q", "k", "v", "qkv", "attn_norm", "ff_norm",
            "attn_source", "ff_source", "attn_out_norm", "ff_out_norm", "moe_block", "router"]
    for layer in range(N_LAYERS):
        for key in keys:
            path_ = adapter.module_path(key, layer)
            if path_ is None:
                continue

            def hook(_m: torch.nn.Module, args: tuple, out: torch.Tensor, tag: str = f"{key}.{layer}"
                     ) -> None:
                out = out[0] if isinstance(out, tuple) else out  # flattened: [positions, features]
                ins[tag] = args[0].detach().reshape(-1, args[0].shape[-1]).clone()  # Falcon adds in place
                outs[tag] = out.detach().reshape(-1, out.shape[-1]).clone()

            handles.append(model.get_submodule(path_).register_forward_hook(hook))
    final: dict[str, torch.Tensor] = {}
    fmod = model.get_submodule(str(adapter.module_path("final_norm")))
    handles.append(fmod.register_forward_hook(lambda _m, a, o: final.update(x=a[0].detach(), y=o.detach())))
    # OPT flattens batch and sequence inside its layers; every capture is [positions, features]
    torch.manual_seed(1)
    ids = torch.randint(3, adapter.dims.vocab_size, (2, SEQ))
    with torch.no_grad():
        out = model(input_ids=ids, output_attentions=True)
    for h in handles:
        h.remove()
    ins["final"], outs["final"] = (final[k].reshape(-1, D) for k in "xy")
    w_u = model.get_output_embeddings().weight.detach()
    logits = out.logits if arch not in ENCODERS else final["y"] @ w_u.T
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:  # Gemma-2 soft-caps logits as cap · tanh(x / cap): undo it to compare the linear readout
        logits = cap * torch.atanh(logits / cap)
    return Run(arch, model, adapter, ins, outs, out.attentions, logits.detach().reshape(2 * SEQ, -1))


def _close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    scale = want.abs().max().clamp_min(1e-6)
    err = (got - want).abs().max() / scale
    assert err < 5e-4, f"{what}: relative error {err:.3g}"


def _centre(t: torch.Tensor, dim: int) -> torch.Tensor:
    return t - t.mean(dim=dim, keepdim=True)


def _scale(run: Run, key: str, layer: int, x: torch.Tensor) -> torch.Tensor:
    """The norm's 1/σ per position, computed from its input with its own eps."""
    module = run.module(key, layer)
    eps = getattr(module, "eps", None) or getattr(module, "variance_epsilon", None) or 1e-5
    final = run.adapter.final_norm()
    assert final is not None
    if final.kind == "layernorm":  # every norm of a model is of one kind
        var = x.var(dim=-1, unbiased=False, keepdim=True)
    else:
        var = x.pow(2).mean(dim=-1, keepdim=True)
    return 1.0 / torch.sqrt(var + eps)


def _reader_input(run: Run, which: str, layer: int) -> tuple[torch.Tensor, bool]:
    """What a reader of ``which`` ('attn'/'ff') is applied to: the un-normalised stream scaled by 1/σ when its
    norm is folded into it (pre-norm), the output of the norm that sits on the stream (post-norm), or the raw
    stream the projection itself reads (no input norm: OLMo-2)."""
    key = f"{which}_norm"
    if f"{key}.{layer}" in run.ins:
        x = run.ins[f"{key}.{layer}"]
        return x * _scale(run, key, layer, x), True
    if f"{which}_source.{layer}" in run.outs:
        return run.outs[f"{which}_source.{layer}"], False
    first = next(k for k in (("q", "qkv") if which == "attn" else ("ff_in",)) if f"{k}.{layer}" in run.ins)
    return run.ins[f"{first}.{layer}"], False


def _predict(run: Run, name: str, layer: int, which: str) -> list[torch.Tensor]:
    """Per head (or one entry), the reader's predicted outputs [positions, n_rows]."""
    x, folded = _reader_input(run, which, layer)
    preds = []
    for comp in run.adapter.component(name, layer):
        assert (comp.norm is not None) == folded, f"{name}: input norm present iff the block is pre-norm"
        vecs = fold_reader(comp.vectors, comp.norm, "folded")
        preds.append(x @ vecs.T)
    return preds


def _dense(run: Run, layer: int) -> None:
    if run.adapter.module_path("moe_block", layer) is not None:
        pytest.skip("a sparse layer: test_experts_and_router_rebuild_the_sparse_mlp")


@pytest.mark.parametrize("layer", range(N_LAYERS))
def test_ff_values_rebuild_the_mlp_output(run: Run, layer: int) -> None:
    _dense(run, layer)
    act, out = run.ins[f"ff_out.{layer}"], run.outs[f"ff_out.{layer}"]
    (values,) = run.adapter.component("ff_value", layer)
    pred = act @ values.vectors
    for bias in run.adapter.component("ff_out_bias", layer):
        pred = pred + bias.vectors[0]
    _close(*_after_branch_norm(run, "ff", layer, pred, out), f"{run.arch} ff_value layer {layer}")


def _after_branch_norm(run: Run, which: str, layer: int, pred: torch.Tensor, out: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Where a norm sits on the branch's output (Gemma-2, OLMo-2), the writing vectors carry its gain: the
    prediction divided by that norm's σ (from the projection's own output) is the normalised branch output."""
    key = f"{which}_out_norm"
    if f"{key}.{layer}" not in run.outs:
        return pred, out
    return pred * _scale(run, key, layer, out), run.outs[f"{key}.{layer}"]


@pytest.mark.parametrize("layer", range(N_LAYERS))
def test_attn_o_heads_rebuild_the_attention_output(run: Run, layer: int) -> None:
    z, out = run.ins[f"attn_out.{layer}"], run.outs[f"attn_out.{layer}"]
    heads = run.adapter.component("attn_o", layer)
    dh = run.adapter.dims.head_size
    assert [c.head for c in heads] == list(range(N_HEADS))
    pred = sum(z[..., c.head * dh:(c.head + 1) * dh] @ c.vectors for c in heads)
    for bias in run.adapter.component("attn_out_bias", layer):
        pred = pred + bias.vectors[0]
    _close(*_after_branch_norm(run, "attn", layer, pred, out), f"{run.arch} attn_o layer {layer}")


@pytest.mark.parametrize("layer", range(N_LAYERS))
def test_ff_readers_reproduce_the_mlp_input(run: Run, layer: int) -> None:
    _dense(run, layer)
    names = [("ff_key", "ff_in")] + ([("ff_gate", "ff_gate")] if run.arch in GATED else [])
    for name, key in names:
        (pred,) = _predict(run, name, layer, "ff")
        want = run.outs[f"{key}.{layer}"]
        if want.shape[1] != pred.shape[1]:  # a fused gate|up projection (Phi-3): each row is one of its outputs
            _each_row_is_an_output(pred, want, f"{run.arch} {name} layer {layer}")
            continue
        _close(_centre(pred, 0), _centre(want, 0), f"{run.arch} {name} layer {layer}")


def _each_row_is_an_output(pred: torch.Tensor, fused: torch.Tensor, what: str, all_used: bool = False) -> None:
    """Every predicted column equals (up to a constant) one column of a fused projection's output, each a
    different one (and, with ``all_used``, every output column is some row's)."""
    fused, rows = _centre(fused, 0), _centre(pred, 0)
    dist = torch.cdist(rows.T, fused.T, compute_mode="donot_use_mm_for_euclid_dist") / fused.norm(dim=0).max()
    best = dist.min(dim=1)
    assert best.values.max() < 1e-4, f"{what}: a row matches no output ({best.values.max():.3g})"
    assert len(set(best.indices.tolist())) == (fused.shape[1] if all_used else rows.shape[1]), what


@pytest.mark.parametrize("layer", range(N_LAYERS))
def test_experts_and_router_rebuild_the_sparse_mlp(run: Run, layer: int) -> None:
    """A sparse layer's output = Σ over the top-k experts of its routing weight · Σ_i act_i · ff_value[e]_i, with
    the routing weights from softmax(x · ff_router) (renormalised over the top k where the family does), plus
    sigmoid(x · ff_shared_router) · the shared expert where there is one; every reader has its norm folded."""
    if run.adapter.module_path("moe_block", layer) is None:
        pytest.skip("a dense layer (or a dense model)")
    from transformers.activations import ACT2FN

    cfg = run.model.config
    act = ACT2FN[cfg.hidden_act]
    (router,) = _predict(run, "ff_router", layer, "ff")
    _close(router, run.outs[f"router.{layer}"], f"{run.arch} ff_router layer {layer}")
    gates, keys = _predict(run, "ff_gate", layer, "ff"), _predict(run, "ff_key", layer, "ff")
    values = run.adapter.component("ff_value", layer)
    assert [v.expert for v in values] == list(range(4)) and all(v.head is None for v in values)
    weights, chosen = torch.softmax(router, dim=-1).topk(cfg.num_experts_per_tok, dim=-1)
    if getattr(cfg, "norm_topk_prob", True):  # Mixtral always renormalises
        weights = weights / weights.sum(dim=-1, keepdim=True)
    pred = torch.zeros_like(run.outs[f"moe_block.{layer}"])
    for e, value in enumerate(values):
        share = (weights * (chosen == e)).sum(dim=-1, keepdim=True)
        pred += share * ((act(gates[e]) * keys[e]) @ value.vectors)
    if "ff_shared_value" in {s.name for s in run.adapter.available()} and \
            run.adapter.component("ff_shared_value", layer):
        (sg,), (sk,) = _predict(run, "ff_shared_gate", layer, "ff"), _predict(run, "ff_shared_key", layer, "ff")
        (sv,), (sr,) = run.adapter.component("ff_shared_value", layer), _predict(run, "ff_shared_router", layer, "ff")
        pred += torch.sigmoid(sr) * ((act(sg) * sk) @ sv.vectors)
    _close(pred, run.outs[f"moe_block.{layer}"], f"{run.arch} experts layer {layer}")


@pytest.mark.parametrize("layer", range(N_LAYERS))
def test_qkv_readers_reproduce_the_projections(run: Run, layer: int) -> None:
    n_kv = run.adapter.dims.kv_heads
    assert n_kv == KV_HEADS.get(run.arch, N_HEADS)
    preds = {n: _predict(run, n, layer, "attn") for n in ("attn_q", "attn_k", "attn_v")}
    assert [len(preds[n]) for n in preds] == [N_HEADS, n_kv, n_kv]
    if f"qkv.{layer}" not in run.outs:
        for name, key in (("attn_q", "q"), ("attn_k", "k"), ("attn_v", "v")):
            _close(_centre(torch.cat(preds[name], -1), 0), _centre(run.outs[f"{key}.{layer}"], 0),
                   f"{run.arch} {name} layer {layer}")
        return
    # fused q|k|v (GPT-2, GPT-NeoX, Phi-3, Falcon): every adapter row is exactly one output column, all used once
    _each_row_is_an_output(torch.cat([p for n in preds for p in preds[n]], -1), run.outs[f"qkv.{layer}"],
                           f"{run.arch} qkv layer {layer}", all_used=True)


@pytest.mark.parametrize("layer", range(N_LAYERS))
def test_attn_v_through_the_pattern_gives_each_heads_z(run: Run, layer: int) -> None:
    """z_h = A_h · v_{kv(h)} + const: checks V's rows and, under GQA, which key/value head a head uses."""
    v_heads = _predict(run, "attn_v", layer, "attn")
    z = run.ins[f"attn_out.{layer}"].reshape(2, SEQ, -1)
    pattern = run.attentions[layer]  # [batch, heads, query, key]
    dh, group = run.adapter.dims.head_size, N_HEADS // len(v_heads)
    for h in range(N_HEADS):
        want = z[..., h * dh:(h + 1) * dh]
        got = pattern[:, h] @ v_heads[h // group].reshape(2, SEQ, -1)
        _close(_centre(got, 1), _centre(want, 1), f"{run.arch} attn_v head {h} layer {layer}")


@pytest.mark.parametrize("layer", range(N_LAYERS))
def test_value_bias_is_the_part_of_z_the_pattern_cannot_move(run: Run, layer: int) -> None:
    """z_h = A_h · (x W_V^hᵀ) + b_V^h exactly (attention rows sum to one): the value bias the decomposition moves
    into the correction, split from fused q|k|v projections (GPT-2, NeoX) as the weights are; none where the
    family has none."""
    key = "v" if f"v.{layer}" in run.ins else "qkv"
    x = run.ins[f"{key}.{layer}"]  # what the value projection reads
    bias = run.adapter.value_bias(layer)
    assert (bias is None) == (getattr(run.module(key, layer), "bias", None) is None), run.arch
    values = [c.vectors for c in run.adapter.component("attn_v", layer)]
    z = run.ins[f"attn_out.{layer}"].reshape(2, SEQ, -1)
    pattern = run.attentions[layer]
    dh, group = run.adapter.dims.head_size, N_HEADS // len(values)
    for h in range(N_HEADS):
        kv = h // group
        v = x @ values[kv].T
        if bias is not None:
            v = v + bias[kv * dh:(kv + 1) * dh]
        _close(pattern[:, h] @ v.reshape(2, SEQ, -1), z[..., h * dh:(h + 1) * dh], f"{run.arch} value bias head {h}")


def test_folded_write_basis_gives_the_final_logits(run: Run) -> None:
    basis = write_basis(run.adapter.unembedding(), run.adapter.final_norm(), "folded")
    x = run.ins["final"]
    pred = (x @ basis.matrix.T) * _scale(run, "final_norm", 0, x)
    for t in (pred, run.logits):
        assert t.shape == (2 * SEQ, run.adapter.dims.vocab_size)

    def centre2(t: torch.Tensor) -> torch.Tensor:  # per position (softmax) and per token (biases)
        return _centre(_centre(t, 1), 0)

    _close(centre2(pred), centre2(run.logits), f"{run.arch} final logits")


def test_embedding_is_one_model_level_unit(run: Run) -> None:
    (emb,) = run.adapter.component("embedding", 0)
    assert run.adapter.layers("embedding") == range(1)
    torch.testing.assert_close(emb.vectors, run.model.get_input_embeddings().weight.detach())


@pytest.mark.parametrize("arch", ARCHS)
def test_cli_indexes_every_architecture(arch: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    build(arch, tmp_path / arch)
    db = tmp_path / "lens.duckdb"
    assert main(["index", str(tmp_path / arch), "--db", str(db), "--quiet", "--top-k", "3"]) == 0
    assert main(["index", str(tmp_path / arch), "--db", str(tmp_path / "emb.duckdb"), "--quiet", "--top-k", "3",
                 "--component", "embedding"]) == 0
    with queries.connect(db) as lens:
        o = lens.vector(arch, "attn_o", 1, 0, head=N_HEADS - 1)
        assert len(o.top) == 3 and len(o.bottom) == 3
        assert len(lens.vector(arch, "attn_k", 0, 0, head=0).top) == 3
        comps = {r[0] for r in lens.sql("SELECT DISTINCT component FROM vectors").rows}
    assert {"attn_q", "attn_k", "attn_v", "attn_o", "ff_key", "ff_value"} <= comps
    assert "embedding" not in comps  # opt-in
    with queries.connect(tmp_path / "emb.duckdb") as lens:
        assert len(lens.vector(arch, "embedding", 0, 5).top) == 3
    assert ("ff_gate" in comps) == (arch in GATED)
    capsys.readouterr()


def test_planted_directions_in_an_untied_model(tmp_path: Path) -> None:
    """Pythia-style untied: a value planted along W_U[t] promotes t; a key planted along W_E[t] reads t
    under --read-basis embedding, and the run records which matrix read it."""
    path = tmp_path / "neox"
    model = build("gpt_neox", path)
    w_u = model.get_output_embeddings().weight.detach()
    w_e = model.get_input_embeddings().weight.detach()
    assert not torch.allclose(w_u, w_e)
    adapter = adapter_for(open_checkpoint(path))
    ff_out = model.get_submodule(str(adapter.module_path("ff_out", 1)))
    ff_in = model.get_submodule(str(adapter.module_path("ff_in", 0)))
    with torch.no_grad():
        ff_out.weight[:, 7] = w_u[42] * 40.0  # nn.Linear [out, in]: neuron 7 writes column 7
        ff_in.weight[5] = w_e[17] * 40.0
    model.save_pretrained(path, safe_serialization=True)
    db = tmp_path / "lens.duckdb"
    args = ["index", str(path), "--db", str(db), "--quiet", "--name", "neox", "--component", "ff_value",
            "--component", "ff_key", "--read-basis", "embedding"]
    assert main(args) == 0
    with queries.connect(db) as lens:
        assert lens.vector("neox", "ff_value", 1, 7).top[0].token_id == 42
        assert lens.vector("neox", "ff_key", 0, 5).top[0].token_id == 17
        flags = json.loads(lens.sql("SELECT basis_flags FROM index_runs").rows[0][0])
    assert flags["reads"]["matrix"] == "embedding" and flags["writes"]["matrix"] == "unembedding"


def _with_config(tmp_path: Path, arch: str, **changes: object) -> Path:
    path = tmp_path / arch
    build(arch, path)
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))
    return path


@pytest.mark.parametrize(("model_type", "nearest"), [("mistral3", "mistral"), ("gpt3", "gpt2"),
                                                     ("qwen3_next", "qwen3_moe"), ("neox", "gpt_neox")])
def test_unsupported_model_type_names_the_nearest(tmp_path: Path, model_type: str, nearest: str) -> None:
    path = _with_config(tmp_path, "llama", model_type=model_type)
    with pytest.raises(UnsupportedArchitecture, match=f"nearest supported one is '{nearest}'"):
        adapter_for(open_checkpoint(path))


def test_opt_with_project_in_out_is_refused_clearly(tmp_path: Path) -> None:
    path = _with_config(tmp_path, "opt", word_embed_proj_dim=16)
    with pytest.raises(UnsupportedArchitecture, match="word_embed_proj_dim=16 != hidden_size=32"):
        adapter_for(open_checkpoint(path))


def test_gqa_config_that_does_not_match_the_weights_is_caught(tmp_path: Path) -> None:
    path = _with_config(tmp_path, "llama", num_key_value_heads=4)
    with pytest.raises(CheckpointError, match="k_proj.weight' has shape"):
        adapter_for(open_checkpoint(path))


def test_architectures_lists_families_model_types_and_components(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["architectures"]) == 0
    out = capsys.readouterr().out
    for word in ("gpt_neox", "llama, mistral, qwen2, qwen3", "distilbert", "ff_gate", "attn_o", "embedding",
                 "key/value head", "gemma2, gemma3_text", "phi3", "olmo2", "falcon", "stablelm", "mixtral",
                 "qwen2_moe, qwen3_moe", "olmoe", "ff_router", "ff_shared_value", "FILE.gguf", "LoRA adapter folder",
                 "hub id", "GPTQ"):
        assert word in out, word


@pytest.mark.parametrize("layer", range(N_LAYERS + 1))
def test_block_hooks_see_and_swap_the_stream(run: Run, layer: int) -> None:
    """Stitching's hook on ``module_path("block", layer)``: it sees the stream entering that block (leaving the
    last one for ``layer == n``), a swap for an equal tensor changes nothing, and a swap for zeros does."""
    torch.manual_seed(1)
    ids = torch.randint(3, run.adapter.dims.vocab_size, (2, SEQ))
    seen: list[torch.Tensor] = []

    def output(swap) -> torch.Tensor:
        with torch.no_grad(), hooked_block(run.model, run.adapter, layer, swap):
            out = run.model(input_ids=ids)
        return out.logits if hasattr(out, "logits") else out.last_hidden_state

    def see(h: torch.Tensor) -> None:
        seen.append(h)

    base = output(see)
    assert seen and seen[0].shape[-1] == D
    torch.testing.assert_close(output(lambda h: h.clone()), base)
    assert not torch.allclose(output(torch.zeros_like), base)

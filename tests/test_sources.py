"""What `lensdb index` can be given besides a folder: hub ids resolved through the local Hugging Face cache only,
LoRA adapters over their base, GGUF files. Every refusal is one line and leaves the store as it was."""

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import torch

import queries
from service.cli import main
from tests.tinymodels import TinyModel, byte_bpe_tokenizer, save_gpt2


def _cache_entry(cache: Path, repo_id: str, tiny: TinyModel, refs: dict[str, str]) -> dict[str, str]:
    """Lay ``tiny``'s files out as huggingface_hub does: blobs by hash, snapshots/<sha>/ of symlinks, refs/."""
    folder = cache / ("models--" + repo_id.replace("/", "--"))
    shas = {}
    for ref, tag in refs.items():
        sha = hashlib.sha1(f"{repo_id}@{tag}".encode()).hexdigest()
        snap = folder / "snapshots" / sha
        snap.mkdir(parents=True)
        for f in tiny.path.iterdir():
            blob = folder / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            if not blob.exists():
                shutil.copy(f, blob)
            (snap / f.name).symlink_to(os.path.relpath(blob, snap))
        (folder / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (folder / "refs" / ref).write_text(sha)
        shas[ref] = sha
    return shas


@pytest.fixture
def hub_cache(tmp_path: Path, tiny_gpt2: TinyModel, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return _cache_entry(cache, "tiny-org/Tiny-GPT2", tiny_gpt2, {"main": "main", "step100": "s100"})


def test_a_hub_id_is_read_from_the_local_cache(hub_cache: dict[str, str], tmp_path: Path,
                                               tiny_gpt2: TinyModel, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "lens.duckdb"
    assert main(["index", "tiny-org/Tiny-GPT2", "--db", str(db), "--quiet", "--top-k", "5"]) == 0
    assert "indexed tiny-gpt2/main" in capsys.readouterr().out
    with queries.connect(db) as lens:
        (hit,) = lens.promoters("paris", component="ff_value", limit=1)
        assert (hit.model, hit.layer, hit.index) == ("tiny-gpt2", *next(iter(tiny_gpt2.planted.promotes)))
        flags = lens.sql("SELECT basis_flags::JSON->'source' FROM index_runs").rows[0][0]
    assert "tiny-org/Tiny-GPT2" in flags and hub_cache["main"] in flags


def test_a_cached_revision_and_its_step(hub_cache: dict[str, str], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "lens.duckdb"
    assert main(["index", "tiny-org/Tiny-GPT2", "--revision", "step100", "--db", str(db), "--quiet"]) == 0
    assert main(["index", "tiny-org/Tiny-GPT2", "--revision", hub_cache["main"][:10], "--db", str(db), "--quiet",
                 "--name", "other"]) == 0
    with queries.connect(db) as lens:
        steps = {(c.label, c.step) for m in lens.models() for c in m.checkpoints}
    # the two snapshots hold the same files: the second is the same content, already indexed
    assert steps == {("step100", 100)}
    assert "already indexed" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "says"), [
    (["not-cached/model"], "is not in the Hugging Face cache at .*hf download not-cached/model"),
    (["tiny-org/Tiny-GPT2", "--revision", "v9"], "revision 'v9' of 'tiny-org/Tiny-GPT2' is not in the Hugging Face "
     "cache .*cached revisions: main, step100.*hf download tiny-org/Tiny-GPT2 --revision v9"),
    (["./no/such/folder"], "no/such/folder: no such folder. Pass the folder .*or a Hugging Face model id"),
])
def test_what_is_not_cached_is_one_clear_line_and_no_store(hub_cache: dict[str, str], tmp_path: Path,
                                                           argv: list[str], says: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "lens.duckdb"
    assert main(["index", *argv, "--db", str(db)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    import re

    assert re.search(says, err), err
    assert not db.exists()


def test_revision_goes_with_a_hub_id(tiny_gpt2: TinyModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["index", str(tiny_gpt2.path), "--revision", "main", "--db", str(tmp_path / "x.duckdb")]) == 1
    assert "--revision goes with a Hugging Face model id" in capsys.readouterr().err


# ---- LoRA / PEFT adapters -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lora(tmp_path_factory: pytest.TempPathFactory) -> tuple[TinyModel, Path, int]:
    """A LoRA adapter (written with peft) on a tiny GPT-2 whose update makes FF value 1.11 promote ' queen'."""
    import torch
    import transformers as tf
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("lora")
    tiny = save_gpt2(root / "base")
    queen = tiny.token_id("queen")
    model = tf.AutoModelForCausalLM.from_pretrained(root / "base")
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["c_proj"], fan_in_fan_out=True,
                                                  init_lora_weights=False))
    layer = peft_model.base_model.model.transformer.h[1].mlp.c_proj
    wte = tiny.state["transformer.wte.weight"]
    with torch.no_grad():  # ΔW = (4 / 2) · B·A; Conv1D stores [in, out]: B·A is [out, in], neuron 11 is column 11
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.zero_()
        layer.lora_A["default"].weight[0, 11] = 1.0
        layer.lora_B["default"].weight[:, 0] = wte[queen] * 20.0
    peft_model.save_pretrained(root / "adapter")
    return tiny, root / "adapter", queen


def test_a_lora_adapter_indexes_merged_and_as_its_update(lora: tuple[TinyModel, Path, int], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    tiny, adapter, queen = lora
    db = tmp_path / "lens.duckdb"
    assert main(["index", str(tiny.path), "--db", str(db), "--quiet", "--name", "gpt"]) == 0
    # merged: a second checkpoint of the base model, so `lensdb changed` compares them
    assert main(["index", str(adapter), "--db", str(db), "--quiet", "--name", "gpt"]) == 0
    assert main(["index", str(adapter), "--lora", "delta", "--db", str(db), "--quiet"]) == 0
    capsys.readouterr()
    with queries.connect(db) as lens:
        top = lens.vector("gpt", "ff_value", 1, 11, checkpoint="adapter")
        assert top.top[0].token_id == queen
        assert lens.vector("gpt", "ff_value", 1, 11, checkpoint="base").top[0].token_id != queen
        changed = lens.changed_most("gpt", "base", "adapter", component="ff_value", limit=1)
        assert (changed[0].layer, changed[0].index) == (1, 11)
        # delta: only the matrices the update changes (the other c_proj factors are zero), each neuron its update
        rows = lens.sql("SELECT component, layer, count(*) FROM vector_info WHERE model = 'adapter-delta' "
                        "GROUP BY ALL").rows
        assert [tuple(r) for r in rows] == [("ff_value", 1, 128)]
        (hit,) = lens.promoters("queen", model="adapter-delta", limit=1)
        assert (hit.component, hit.layer, hit.index) == ("ff_value", 1, 11)
        flags = lens.sql("SELECT basis_flags::JSON->>'$.source.lora' FROM index_runs ORDER BY run_id").rows
    assert [f[0] for f in flags] == [None, "merged", "delta"]
    assert main(["changed", "gpt", "base", "adapter", "--component", "ff_value", "--limit", "1", "--db", str(db)]) == 0
    assert "queen" in capsys.readouterr().out


@pytest.mark.parametrize(("change", "says"), [
    ({"peft_type": "IA3"}, "a PEFT IA3 adapter; lensdb reads LoRA adapters only"),
    ({"use_dora": True}, "DoRA"),
    ({"base_model_name_or_path": "nobody/nothing"}, "not in the Hugging Face cache"),
])
def test_adapters_lensdb_cannot_read_are_refused_clearly(lora: tuple[TinyModel, Path, int], tmp_path: Path,
                                                         change: dict, says: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    import json

    _, adapter, _ = lora
    bad = tmp_path / "bad"
    shutil.copytree(adapter, bad)
    cfg = json.loads((bad / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({**cfg, **change}))
    db = tmp_path / "lens.duckdb"
    assert main(["index", str(bad), "--db", str(db)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err
    assert not db.exists()


def test_an_adapter_on_another_base_is_refused(lora: tuple[TinyModel, Path, int], tiny_bert: TinyModel,
                                               tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, adapter, _ = lora
    assert main(["index", str(adapter), "--base", str(tiny_bert.path), "--db", str(tmp_path / "x.duckdb")]) == 1
    assert "pass its base model with --base" in capsys.readouterr().err


# ---- GGUF --------------------------------------------------------------------------------------------------------

def write_gguf(folder: Path, out: Path, arch: str, quantize: tuple[str, ...] = ()) -> None:
    """Convert a saved tiny checkpoint to GGUF as llama.cpp's converter does: names through the gguf package's
    map, experts stacked per projection, W_Q / W_K rows permuted for ``llama``, tensors whose name contains one of
    ``quantize`` stored as Q8_0, the vocabulary in the tokenizer metadata."""
    import json

    import gguf
    import numpy as np
    from safetensors.torch import load_file
    from tokenizers import Tokenizer

    cfg = json.loads((folder / "config.json").read_text())
    state = {k: v.float() for k, v in load_file(folder / "model.safetensors").items()}
    n, heads, kv = cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    experts = cfg.get("num_experts") or cfg.get("num_local_experts") or 0
    for i in range(n):
        for part in ("gate_proj", "up_proj", "down_proj"):
            per = [f"model.layers.{i}.mlp.experts.{e}.{part}.weight" for e in range(experts)]
            if per and per[0] in state:
                state[f"model.layers.{i}.mlp.experts.{part}.weight"] = torch.stack([state.pop(p) for p in per])
    model_arch = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == arch)
    tmap = gguf.get_tensor_name_map(model_arch, n)
    w = gguf.GGUFWriter(str(out), arch)
    w.add_block_count(n)
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    if experts:
        w.add_expert_count(experts)
        w.add_expert_used_count(cfg["num_experts_per_tok"])
        w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if quantize else gguf.LlamaFileType.ALL_F32)
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    w.add_tokenizer_model("gpt2")
    w.add_token_list([tok.id_to_token(i) for i in range(tok.get_vocab_size())])
    for name, t in state.items():
        kind_name = tmap.get_type_and_name(name, try_suffixes=(".weight", ".bias"))
        assert kind_name is not None, name
        kind, gname = kind_name
        if arch == "llama" and kind in (gguf.MODEL_TENSOR.ATTN_Q, gguf.MODEL_TENSOR.ATTN_K):
            h = heads if kind == gguf.MODEL_TENSOR.ATTN_Q else kv
            t = t.reshape(h, 2, t.shape[0] // h // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)
        data = t.numpy().astype(np.float32)
        if any(q in name for q in quantize):
            w.add_tensor(gname, gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0),
                         raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(gname, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_a_gguf_file_reads_as_its_checkpoint_and_indexes_with_its_quantization(tmp_path: Path,
                                                                               capsys: pytest.CaptureFixture[str]
                                                                               ) -> None:
    from indexer.model.adapters import adapter_for
    from indexer.model.checkpoint import open_checkpoint
    from indexer.model.sources import open_source
    from tests.test_conformance import build

    model = build("llama", tmp_path / "llama")
    paris = byte_bpe_tokenizer().convert_tokens_to_ids("Ġparis")
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[:, 6] = model.lm_head.weight[paris] * 40.0
    model.save_pretrained(tmp_path / "llama")
    write_gguf(tmp_path / "llama", tmp_path / "Tiny-Llama.Q8_0.gguf", "llama", quantize=("mlp.",))
    hf = adapter_for(open_checkpoint(tmp_path / "llama"))
    gg = adapter_for(open_source(tmp_path / "Tiny-Llama.Q8_0.gguf").ckpt)
    assert gg.family == "llama" and gg.dims == hf.dims
    for name in ("attn_q", "attn_k", "attn_v", "attn_o", "embedding"):  # stored F32: exact, rows un-permuted
        for a, b in zip(hf.component(name, 1), gg.component(name, 1), strict=True):
            torch.testing.assert_close(a.vectors, b.vectors, rtol=0, atol=0)
    (a,), (b,) = hf.component("ff_value", 1), gg.component("ff_value", 1)  # Q8_0: within its rounding
    assert (a.vectors - b.vectors).abs().max() / a.vectors.abs().max() < 1e-2
    db = tmp_path / "lens.duckdb"
    assert main(["index", str(tmp_path / "Tiny-Llama.Q8_0.gguf"), "--db", str(db), "--quiet"]) == 0
    assert "indexed tiny-llama.q8_0/Tiny-Llama.Q8_0.gguf" in capsys.readouterr().out
    with queries.connect(db) as lens:
        (hit,) = lens.promoters("paris", component="ff_value", limit=1)
        assert (hit.layer, hit.index, hit.token) == (1, 6, " paris")
        source = lens.sql("SELECT basis_flags::JSON->'source' FROM index_runs").rows[0][0]
    assert '"format":"gguf"' in source.replace(" ", "") and '"quantization":"Q8_0"' in source.replace(" ", "")


def test_a_mixture_of_experts_gguf_stacks_its_experts(tmp_path: Path) -> None:
    from indexer.model.adapters import adapter_for
    from indexer.model.checkpoint import open_checkpoint
    from indexer.model.sources import open_source
    from tests.test_conformance import build

    build("qwen3_moe", tmp_path / "moe")
    write_gguf(tmp_path / "moe", tmp_path / "moe.gguf", "qwen3moe")
    hf = adapter_for(open_checkpoint(tmp_path / "moe"))
    gg = adapter_for(open_source(tmp_path / "moe.gguf").ckpt)
    assert gg.storage() == "stacked" and hf.storage() == "modules"  # type: ignore[attr-defined]
    for name in ("ff_key", "ff_gate", "ff_value", "ff_router", "attn_q", "attn_k"):
        for layer in range(2):
            for a, b in zip(hf.component(name, layer), gg.component(name, layer), strict=True):
                assert a.expert == b.expert
                torch.testing.assert_close(a.vectors, b.vectors, rtol=0, atol=0)


def test_gguf_files_lensdb_cannot_read_are_refused_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    import gguf

    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    w = gguf.GGUFWriter(str(tmp_path / "other.gguf"), "mamba")
    w.add_block_count(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    for name, says in (("junk.gguf", "not a readable GGUF file"), ("other.gguf", "GGUF architecture 'mamba' is not "
                                                                                 "supported; lensdb reads GGUF files "
                                                                                 "of llama, qwen2")):
        assert main(["index", str(tmp_path / name), "--db", str(tmp_path / "x.duckdb")]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and says in err, err
    assert not (tmp_path / "x.duckdb").exists()


# ---- quantized safetensors ---------------------------------------------------------------------------------------

def _int32(words: torch.Tensor) -> torch.Tensor:
    return ((words + 2**31) % 2**32 - 2**31).to(torch.int32)


def _pack(values: torch.Tensor, dim: int, order: tuple[int, ...] = tuple(range(8))) -> torch.Tensor:
    """4-bit values packed 8 to an int32 along ``dim``: nibble k holds the value at position order[k] of its 8."""
    v = values.to(torch.int64).movedim(dim, -1)
    v = v.reshape(*v.shape[:-1], -1, 8)[..., list(order)]
    words = (v << (4 * torch.arange(8))).sum(-1)
    return _int32(words.movedim(-1, dim)).contiguous()


def _quantize_folder(src: Path, dst: Path, method: str) -> dict[str, torch.Tensor]:
    """Quantize every block projection of a saved tiny checkpoint by hand in ``method``'s layout on disk; the
    float weights those quantized tensors stand for, by module."""
    import json

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    state = load_file(dst / "model.safetensors")
    group, expected = 16, {}
    gen = torch.Generator().manual_seed(0)
    for name in [n for n in state if n.endswith("_proj.weight")]:
        module, w = name.removesuffix(".weight"), state.pop(name).float()
        out, inp = w.shape
        if method == "bitsandbytes":
            scb = w.abs().amax(dim=1)
            q = torch.round(w / scb[:, None] * 127).to(torch.int8)
            state |= {f"{module}.weight": q, f"{module}.SCB": scb}
            expected[module] = q.float() * scb[:, None] / 127
            continue
        # groups of input rows: consecutive for AWQ, an arbitrary (act-order) assignment for GPTQ
        g_idx = torch.arange(inp) // group if method == "awq" else torch.randperm(inp, generator=gen) // group
        scales, zeros = torch.zeros(inp // group, out), torch.zeros(inp // group, out, dtype=torch.int64)
        q = torch.zeros(inp, out, dtype=torch.int64)
        for g in range(inp // group):
            rows = w.T[g_idx == g]  # [group, out]
            lo, hi = rows.min(dim=0).values.clamp(max=0), rows.max(dim=0).values.clamp(min=0)
            scales[g] = ((hi - lo) / 15).clamp_min(1e-8)
            # GPTQ's original format stores zero - 1 in 4 bits: a zero of 0 cannot be stored (hence gptq_v2)
            zeros[g] = torch.round(-lo / scales[g]).clamp(1 if method == "gptq" else 0, 15).long()
            q[g_idx == g] = torch.clamp(torch.round(rows / scales[g]) + zeros[g], 0, 15).long()
        expected[module] = (scales[g_idx] * (q - zeros[g_idx]).float()).T
        if method == "gptq":  # qweight packed along the input axis, zeros (less one) along the output axis
            state |= {f"{module}.qweight": _pack(q, 0), f"{module}.qzeros": _pack(zeros - 1, 1),
                      f"{module}.scales": scales.half(), f"{module}.g_idx": g_idx.to(torch.int32)}
        else:
            state |= {f"{module}.qweight": _pack(q, 1, (0, 2, 4, 6, 1, 3, 5, 7)),
                      f"{module}.qzeros": _pack(zeros, 1, (0, 2, 4, 6, 1, 3, 5, 7)), f"{module}.scales": scales.half()}
        expected[module] = (scales.half().float()[g_idx] * (q - zeros[g_idx]).float()).T
    save_file(state, dst / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((dst / "config.json").read_text())
    cfg["quantization_config"] = {"bitsandbytes": {"quant_method": "bitsandbytes", "load_in_8bit": True},
                                  "gptq": {"quant_method": "gptq", "bits": 4, "group_size": group, "desc_act": True,
                                           "sym": False, "checkpoint_format": "gptq"},
                                  "awq": {"quant_method": "awq", "bits": 4, "group_size": group, "version": "gemm",
                                          "zero_point": True}}[method]
    (dst / "config.json").write_text(json.dumps(cfg))
    return expected


@pytest.mark.parametrize("method", ["bitsandbytes", "gptq", "awq"])
def test_quantized_safetensors_dequantize_per_tensor(tmp_path: Path, method: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from indexer.model.adapters import adapter_for
    from indexer.model.checkpoint import open_checkpoint
    from indexer.model.sources import open_source
    from tests.test_conformance import build

    model = build("llama", tmp_path / "llama")
    paris = byte_bpe_tokenizer().convert_tokens_to_ids("Ġparis")
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[:, 6] = model.lm_head.weight[paris] * 40.0
    model.save_pretrained(tmp_path / "llama")
    expected = _quantize_folder(tmp_path / "llama", tmp_path / "quant", method)
    ckpt = open_source(tmp_path / "quant").ckpt
    for module, w in expected.items():
        torch.testing.assert_close(ckpt.tensor(module + ".weight"), w, rtol=1e-5, atol=1e-6)
    full, quant = adapter_for(open_checkpoint(tmp_path / "llama")), adapter_for(ckpt)
    for name in ("attn_q", "attn_k", "ff_key", "ff_value"):
        for a, b in zip(full.component(name, 1), quant.component(name, 1), strict=True):
            assert (a.vectors - b.vectors).abs().max() / a.vectors.abs().max() < 0.1, name  # 4-bit rounding
    db = tmp_path / "lens.duckdb"
    assert main(["index", str(tmp_path / "quant"), "--db", str(db), "--quiet"]) == 0
    with queries.connect(db) as lens:
        (hit,) = lens.promoters("paris", component="ff_value", limit=1)
        assert (hit.layer, hit.index) == (1, 6)
        assert method in lens.sql("SELECT basis_flags FROM index_runs").rows[0][0]
    capsys.readouterr()


@pytest.mark.parametrize(("config", "says"), [
    ({"quant_method": "bitsandbytes", "load_in_4bit": True}, "bitsandbytes 4-bit"),
    ({"quant_method": "awq", "bits": 4, "version": "gemv"}, "AWQ gemv with 4 bits"),
    ({"quant_method": "fp8"}, "quantization method 'fp8' is not supported"),
    ({"quant_method": "gptq", "bits": 4}, "config.json says gptq but no tensor ends in .qweight"),
])
def test_quantized_formats_lensdb_cannot_read_are_named(tmp_path: Path, config: dict, says: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from tests.test_conformance import build

    build("llama", tmp_path / "q")
    cfg = json.loads((tmp_path / "q" / "config.json").read_text())
    (tmp_path / "q" / "config.json").write_text(json.dumps({**cfg, "quantization_config": config}))
    capsys.readouterr()
    assert main(["index", str(tmp_path / "q"), "--db", str(tmp_path / "x.duckdb")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err, err
    assert not (tmp_path / "x.duckdb").exists()

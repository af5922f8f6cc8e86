"""Peak memory of indexing a large Llama-shaped checkpoint, next to the sizes that should bound it.

Writes a synthetic checkpoint (random bf16 weights, one safetensors shard per layer, real Llama tensor names
and config) and indexes some of its components in a subprocess, then reports the child's peak RSS beside
the model size, the basis (fp32 [vocab, d]), the largest one-layer component (fp32) and one chunk of
logits. A second subprocess that only imports lensdb gives the floor (torch, transformers, duckdb).

    .venv/bin/python bench/index_memory.py                      # d=4096, d_ff=11008, 2 layers, vocab 32000
    .venv/bin/python bench/index_memory.py --layers 4 --component ff_value --component attn_o
    .venv/bin/python bench/index_memory.py --shape gpt2-medium   # fp32 GPT-2 names, d=1024, d_ff=4096, V=50257

The bound (README "Performance"): peak RSS ≤ import floor + basis (fp32 [V, d]) + the largest one-layer component
(fp32) + one chunk of logits; printed as peak / bound beside its target (≤ 1).
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20


def _tokenizer(path: Path) -> None:
    """A small word-level tokenizer: rows past it are named ``<id:N>`` by lensdb."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(256)} | {"[UNK]": 256}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(path)


def write_checkpoint(path: Path, d: int, d_ff: int, n_layers: int, vocab: int, n_heads: int, n_kv: int) -> int:
    """Write the checkpoint shard by shard (one tensor set in memory at a time); returns bytes on disk."""
    path.mkdir(parents=True, exist_ok=True)
    dh = d // n_heads
    gen = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * 0.02).to(torch.bfloat16)

    shards: list[tuple[str, dict[str, torch.Tensor]]] = [("model-embed.safetensors", {
        "model.embed_tokens.weight": rand(vocab, d)})]
    for i in range(n_layers):
        p = f"model.layers.{i}."
        shards.append((f"model-layer{i}.safetensors", {
            p + "input_layernorm.weight": torch.ones(d, dtype=torch.bfloat16),
            p + "post_attention_layernorm.weight": torch.ones(d, dtype=torch.bfloat16),
            p + "self_attn.q_proj.weight": rand(n_heads * dh, d),
            p + "self_attn.k_proj.weight": rand(n_kv * dh, d),
            p + "self_attn.v_proj.weight": rand(n_kv * dh, d),
            p + "self_attn.o_proj.weight": rand(d, n_heads * dh),
            p + "mlp.gate_proj.weight": rand(d_ff, d),
            p + "mlp.up_proj.weight": rand(d_ff, d),
            p + "mlp.down_proj.weight": rand(d, d_ff),
        }))
    shards.append(("model-head.safetensors", {"model.norm.weight": torch.ones(d, dtype=torch.bfloat16),
                                              "lm_head.weight": rand(vocab, d)}))
    weight_map: dict[str, str] = {}
    for shard_name, tensors in shards:
        save_file(tensors, str(path / shard_name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, shard_name))
        del tensors
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (path / "config.json").write_text(json.dumps({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": d, "intermediate_size": d_ff,
        "num_hidden_layers": n_layers, "num_attention_heads": n_heads, "num_key_value_heads": n_kv,
        "vocab_size": vocab, "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "torch_dtype": "bfloat16"}))
    _tokenizer(path)
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


CHILD = """
import sys, time
from indexer import IndexOptions, index_checkpoint
if sys.argv[1] != "--floor":
    t = time.perf_counter()
    r = index_checkpoint(sys.argv[1], sys.argv[2], IndexOptions(components=sys.argv[4:], top_k=int(sys.argv[3]),
                                                                 chunk_mb=64))
    print(r.message, flush=True)
"""


def peak_rss_of(args: list[str]) -> tuple[float, float]:
    """Run the child, return (its peak RSS in MiB, seconds). Each measurement is a fresh process tree."""
    code = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
            "subprocess.run(sys.argv[1:], check=True); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code, sys.executable, "-c", CHILD, *args], cwd=ROOT,
                         check=True, capture_output=True, text=True).stdout.split("\n")
    lines = [x for x in out if x.strip()]
    for line in lines[:-1]:
        print("   ", line)
    kib, seconds = lines[-1].split()
    return int(kib) / 1024, float(seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=["llama", "gpt2-medium"], default="llama",
                    help="llama: bf16 Llama names (d/d-ff/vocab below); gpt2-medium: fp32 GPT-2 names, 1024/4096/50257")
    ap.add_argument("--d", type=int, default=4096)
    ap.add_argument("--d-ff", type=int, default=11008)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument("--component", action="append", help="components to index (default: ff_value, attn_o)")
    ap.add_argument("--dir", type=Path, help="where to write the checkpoint (default: a temporary folder)")
    args = ap.parse_args()
    components = args.component or ["ff_value", "attn_o"]

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        ckpt, db = Path(tmp) / "llama-synthetic", Path(tmp) / "lens.duckdb"
        t = time.perf_counter()
        if args.shape == "gpt2-medium":
            sys.path.insert(0, str(ROOT))
            from bench.synthetic import save_gpt2_shaped

            args.d, args.d_ff, args.vocab = 1024, 4096, 50257
            save_gpt2_shaped(ckpt, args.layers, args.d, args.d_ff, args.vocab)
            model_bytes = sum(f.stat().st_size for f in ckpt.glob("*.safetensors"))
        else:
            model_bytes = write_checkpoint(ckpt, args.d, args.d_ff, args.layers, args.vocab, args.heads,
                                           args.kv_heads)
        print(f"wrote {model_bytes / MiB:.0f} MiB of bf16 weights in {time.perf_counter() - t:.1f}s")
        floor, _ = peak_rss_of(["--floor"])
        peak, seconds = peak_rss_of([str(db), str(ckpt), str(args.top_k), *components])

    basis = args.vocab * args.d * 4
    layer = max(args.d_ff, args.d) * args.d * 4
    chunk = 64 * MiB
    print(f"{args.shape}: components {', '.join(components)}; {args.layers} layers, d={args.d}, d_ff={args.d_ff}, "
          f"vocab={args.vocab}")
    rows = [("model on disk", model_bytes / MiB), ("basis fp32 [vocab, d]", basis / MiB),
            ("largest one-layer component fp32", layer / MiB), ("one chunk of logits", chunk / MiB),
            ("basis + layer + chunk", (basis + layer + chunk) / MiB),
            ("import floor (torch, transformers, duckdb)", floor),
            ("bound = floor + basis + layer + chunk", floor + (basis + layer + chunk) / MiB),
            ("peak RSS of the index run", peak)]
    for name, mib in rows:
        print(f"  {name:<44} {mib:>8.0f} MiB")
    bound = floor + (basis + layer + chunk) / MiB
    print(f"  index run took {seconds:.1f}s")
    print(f"| figure | value | target |\n|---|---|---|\n| peak RSS / bound ({args.shape}) | {peak / bound:.2f} | ≤ 1 |")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > 0


if __name__ == "__main__":
    main()

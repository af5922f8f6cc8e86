"""Synthetic checkpoints of real shapes for benchmarks: random weights under the names an adapter reads,
a config.json and a word-level tokenizer of the same vocabulary size. No model is instantiated."""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast


def save_tokenizer(path: Path, vocab_size: int) -> None:
    vocab = {f"t{i}": i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0").save_pretrained(path)


def save_gpt2_shaped(path: Path, n_layer: int, d: int, d_ff: int, vocab: int, seed: int = 0) -> Path:
    """A GPT-2-family checkpoint: embeddings, FF and attention tensors (the adapter checks every one)."""
    path.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    tensors = {"wte.weight": torch.randn(vocab, d, generator=g) * 0.02, "ln_f.weight": torch.ones(d)}
    for layer in range(n_layer):
        tensors[f"h.{layer}.ln_1.weight"] = torch.ones(d)
        tensors[f"h.{layer}.attn.c_attn.weight"] = torch.randn(d, 3 * d, generator=g) * 0.02
        tensors[f"h.{layer}.attn.c_proj.weight"] = torch.randn(d, d, generator=g) * 0.02
        tensors[f"h.{layer}.ln_2.weight"] = torch.ones(d)
        tensors[f"h.{layer}.mlp.c_fc.weight"] = torch.randn(d, d_ff, generator=g) * 0.02
        tensors[f"h.{layer}.mlp.c_proj.weight"] = torch.randn(d_ff, d, generator=g) * 0.02
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    config = {"model_type": "gpt2", "n_layer": n_layer, "n_embd": d, "n_inner": d_ff, "n_head": max(1, d // 64),
              "vocab_size": vocab}
    (path / "config.json").write_text(json.dumps(config))
    save_tokenizer(path, vocab)
    return path

"""Tiny GPT-2 checkpoints with a planted vector, for the service tests and the latency bench.

FF value 7 of layer 1 is 5 × the embedding of "paris" (GPT-2 ties W_U to W_E), so it ranks "paris" first
among the tokens it promotes.
"""

import contextlib
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on now, for a ``lensdb serve`` a test starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(proc: subprocess.Popen, url: str, timeout_s: float = 90.0,
                       headers: dict[str, str] | None = None) -> None:
    """Return once the ``lensdb serve`` process ``proc`` answers ``GET /health`` at ``url``; fail the test with
    its output if it exits first or does not answer within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=1, headers=headers or {}).status_code == 200:
                return
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"lensdb serve did not start:\n{proc.communicate()[0]}")
        time.sleep(0.2)


PLANTED_TOKEN = "paris"
PLANTED_LAYER = 1
PLANTED_INDEX = 7


def words(vocab_size: int) -> list[str]:
    return ["paris", "london", "berlin", "<unk>"] + [f"w{i}" for i in range(vocab_size - 4)]


def tiny_gpt2(folder: Path, *, vocab_size: int = 64, n_embd: int = 32, n_layer: int = 2,
              seed: int = 0) -> Path:
    """Save a random GPT-2 (with the planted FF value) and a word-level tokenizer to ``folder``."""
    torch.manual_seed(seed)
    vocab = {w: i for i, w in enumerate(words(vocab_size))}
    cfg = GPT2Config(vocab_size=vocab_size, n_positions=16, n_embd=n_embd, n_layer=n_layer, n_head=4,
                     bos_token_id=3, eos_token_id=3)
    model = GPT2LMHeadModel(cfg)
    with torch.no_grad():
        wte = model.transformer.wte.weight
        model.transformer.h[PLANTED_LAYER].mlp.c_proj.weight[PLANTED_INDEX] = 5 * wte[vocab[PLANTED_TOKEN]]
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(folder)
    return folder


def build_store(root: Path) -> Path:
    """A store with model "tiny" (checkpoints checkpoint-100 and checkpoint-200) and model "other"."""
    from indexer import IndexOptions, index_checkpoint

    db = root / "lens.duckdb"
    for sub, seed in (("tiny/checkpoint-100", 0), ("tiny/checkpoint-200", 2)):
        index_checkpoint(db, tiny_gpt2(root / sub, seed=seed), IndexOptions(top_k=10))
    index_checkpoint(db, tiny_gpt2(root / "other", seed=1), IndexOptions(name="other", top_k=10))
    return db

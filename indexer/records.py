"""Arrow batches for the store, built from projection results. No I/O: the store copies them in."""

import numpy as np
import pyarrow as pa
import torch

from indexer.heads import Pairs
from indexer.projection import TopBottom
from indexer.vocab import Vocabulary


def vector_batch(
    first_id: int, checkpoint_id: int, component: str, layer: int, head: int | None,
    first_index: int, norm: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
) -> pa.Table:
    n = int(norm.shape[0])
    return pa.table({
        "vector_id": pa.array(np.arange(first_id, first_id + n, dtype=np.int64)),
        "checkpoint_id": pa.array(np.full(n, checkpoint_id, dtype=np.int32)),
        "component": pa.array([component] * n, pa.string()),
        "layer": pa.array(np.full(n, layer, dtype=np.int32)),
        "head": pa.array([head] * n, pa.int32()),
        "idx": pa.array(np.arange(first_index, first_index + n, dtype=np.int32)),
        "norm": pa.array(norm.to(torch.float64).numpy()),
        "logit_mean": pa.array(mean.to(torch.float64).numpy()),
        "logit_std": pa.array(std.to(torch.float64).numpy()),
    })


_SIDES = pa.array(["top", "bottom"], pa.string())


def projection_batch(first_id: int, tb: TopBottom, mean: torch.Tensor, std: torch.Tensor) -> pa.Table:
    """One row per (vector, side, rank), rank 1 = strongest; ``side`` dictionary-encoded (cheap to build)."""
    n, k = tb.top_scores.shape
    scores = torch.cat([tb.top_scores, tb.bottom_scores], dim=1).to(torch.float64)
    token_ids = torch.cat([tb.top_ids, tb.bottom_ids], dim=1)
    sd = torch.where(std > 0, std, torch.ones_like(std)).to(torch.float64)
    z = (scores - mean.to(torch.float64)[:, None]) / sd[:, None]
    side = np.tile(np.repeat(np.array([0, 1], dtype=np.int8), k), n)
    return pa.table({
        "vector_id": np.repeat(np.arange(first_id, first_id + n, dtype=np.int64), 2 * k),
        "side": pa.DictionaryArray.from_arrays(pa.array(side), _SIDES),
        "rank": np.tile(np.arange(1, k + 1, dtype=np.int16), 2 * n),
        "token_id": token_ids.reshape(-1).to(torch.int32).numpy(),
        "score": scores.reshape(-1).to(torch.float32).numpy(),
        "zscore": z.reshape(-1).to(torch.float32).numpy(),
    })


def pair_batch(vector_id: int, p: Pairs) -> pa.Table:
    """One row per (side, rank) of a head map's pairs."""
    k = int(p.top_scores.shape[0])
    scores = torch.cat([p.top_scores, p.bottom_scores]).to(torch.float64)
    sd = p.std if p.std > 0 else 1.0
    side = np.repeat(np.array([0, 1], dtype=np.int8), k)
    return pa.table({
        "vector_id": np.full(2 * k, vector_id, dtype=np.int64),
        "side": pa.DictionaryArray.from_arrays(pa.array(side), _SIDES),
        "rank": np.tile(np.arange(1, k + 1, dtype=np.int16), 2),
        "source_token_id": torch.cat([p.top_src, p.bottom_src]).to(torch.int32).numpy(),
        "token_id": torch.cat([p.top_dst, p.bottom_dst]).to(torch.int32).numpy(),
        "score": scores.to(torch.float32).numpy(),
        "zscore": ((scores - p.mean) / sd).to(torch.float32).numpy(),
    })


def token_batch(vocab_id: int, vocab: Vocabulary) -> pa.Table:
    return pa.table({
        "vocab_id": pa.array(np.full(vocab.size, vocab_id, dtype=np.int32)),
        "token_id": pa.array(np.arange(vocab.size, dtype=np.int32)),
        "token": pa.array(vocab.tokens, pa.string()),
        "display": pa.array(vocab.display, pa.string()),
        "word": pa.array(vocab.words, pa.string()),
    })

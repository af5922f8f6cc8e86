"""Arrow batches for the store, built from projection results. No I/O: the store copies them in."""

import numpy as np
import pyarrow as pa
import torch

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


def projection_batch(first_id: int, tb: TopBottom, mean: torch.Tensor, std: torch.Tensor) -> pa.Table:
    """One row per (vector, side, rank): top side first, rank 1 = strongest."""
    n, k = tb.top_scores.shape
    ids = np.repeat(np.arange(first_id, first_id + n, dtype=np.int64), k)
    ranks = np.tile(np.arange(1, k + 1, dtype=np.int16), n)
    mu = np.repeat(mean.numpy(), k)
    sd = np.repeat(std.numpy(), k)
    sd = np.where(sd > 0, sd, 1.0)

    def side(name: str, scores: torch.Tensor, token_ids: torch.Tensor) -> pa.Table:
        s = scores.reshape(-1).to(torch.float64).numpy()
        return pa.table({
            "vector_id": ids,
            "side": pa.array(np.full(n * k, name, dtype=object), pa.string()),
            "rank": ranks,
            "token_id": token_ids.reshape(-1).to(torch.int32).numpy(),
            "score": s.astype(np.float32),
            "zscore": ((s - mu) / sd).astype(np.float32),
        })

    return pa.concat_tables([side("top", tb.top_scores, tb.top_ids), side("bottom", tb.bottom_scores, tb.bottom_ids)])


def token_batch(vocab_id: int, vocab: Vocabulary) -> pa.Table:
    return pa.table({
        "vocab_id": pa.array(np.full(vocab.size, vocab_id, dtype=np.int32)),
        "token_id": pa.array(np.arange(vocab.size, dtype=np.int32)),
        "token": pa.array(vocab.tokens, pa.string()),
        "display": pa.array(vocab.display, pa.string()),
        "word": pa.array(vocab.words, pa.string()),
    })

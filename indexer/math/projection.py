"""Chunked projection with a running top-k and bottom-k. Pure: tensors in, tensors out.

Never materialises a dense (all vectors × vocab) matrix: vectors come in chunks sized to a memory budget and
the vocabulary in tiles, and each tile's top/bottom-k is merged into the running answer (``torch.topk``,
never a full sort). With one tile covering the vocabulary this is one GEMM and two top-k calls per chunk.
"""

from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TopBottom:
    """Per row: the k highest scores (descending) and the k lowest (ascending), with their token ids."""

    top_scores: torch.Tensor
    top_ids: torch.Tensor
    bottom_scores: torch.Tensor
    bottom_ids: torch.Tensor


def _merge(scores: torch.Tensor, ids: torch.Tensor, k: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    best, pos = scores.topk(min(k, scores.shape[1]), dim=1, largest=largest, sorted=True)
    return best, ids.gather(1, pos)


def topk_bottomk(
    vectors: torch.Tensor, basis: torch.Tensor, k: int, vocab_tile: int | None = None,
    exact_basis: torch.Tensor | None = None, oversample: int = 2, workspace: torch.Tensor | None = None,
) -> TopBottom:
    """Top-k and bottom-k of ``vectors @ basis.T`` per row, tiling the vocabulary by ``vocab_tile``.

    With ``exact_basis`` (the fp32 basis, ``basis`` then being a low-precision copy), ``oversample · k``
    candidates per side are chosen from the fast logits and rescored exactly against ``exact_basis``.
    ``workspace``, a flat buffer of at least rows × tile elements of ``basis.dtype``, receives the logits:
    reusing it spares the allocator a fresh multi-MiB block (and its page faults) per chunk.
    """
    if exact_basis is None:
        return _running_topk(vectors, basis, k, vocab_tile, workspace)
    vocab = basis.shape[0]
    k = min(k, vocab)
    fast = _running_topk(vectors.to(basis.dtype), basis, min(vocab, oversample * k), vocab_tile, workspace)
    exact = vectors.to(exact_basis.dtype)
    top_s, top_i = _rescore(exact, exact_basis, fast.top_ids, k, largest=True)
    bot_s, bot_i = _rescore(exact, exact_basis, fast.bottom_ids, k, largest=False)
    return TopBottom(top_s, top_i, bot_s, bot_i)


def _rescore(vectors: torch.Tensor, basis: torch.Tensor, ids: torch.Tensor, k: int,
             largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    # an elementwise product, not a matmul, so TF32 mode cannot touch the exact scores
    scores = (vectors.unsqueeze(1) * basis[ids]).sum(dim=2)
    return _merge(scores, ids, k, largest)


def block_width(vocab: int, k: int) -> int:
    """Columns per block of ``select_topk_bottomk``: about √(V/k), which balances the two small top-k calls
    (over V/B block extremes and over k·B candidates); 0 where blocks would not pay (small V or large k)."""
    width = max(8, int(round((vocab / max(k, 1)) ** 0.5)))
    return width if vocab >= 4 * k * width else 0


def select_topk_bottomk(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact top-k (descending) and bottom-k (ascending) of each row of ``logits``, with their column indices.

    Two ``topk`` calls over V columns each cost about as much as the GEMM at small d. Instead, the columns are cut
    into blocks of B and one vectorised pass takes every block's max and min (``aminmax``). The k largest entries
    of a row lie in the k blocks with the largest maxima: an entry x in any other block is exceeded or matched by
    the maxima of k distinct blocks, so by k other entries, and is not among the k largest (ties aside, which
    leave the scores unchanged). So top-k runs over those k·B candidates only, bottom-k likewise over the k blocks
    with the smallest minima; the last V mod B columns are candidates of every row. Cost: one read of the logits
    plus top-k over V/B and k·B values, against two top-k passes over V.
    """
    rows, vocab = logits.shape
    width = block_width(vocab, k)
    if width == 0 or logits.device.type != "cpu":  # the GPU's topk is already a fraction of its GEMM
        top_s, top_i = logits.topk(k, dim=1, largest=True, sorted=True)
        bot_s, bot_i = logits.topk(k, dim=1, largest=False, sorted=True)
        return top_s, top_i, bot_s, bot_i
    n_blocks = vocab // width
    body = logits[:, : n_blocks * width].view(rows, n_blocks, width)
    lo, hi = torch.aminmax(body, dim=2)
    offsets = torch.arange(width, device=logits.device)
    tail = torch.arange(n_blocks * width, vocab, device=logits.device).expand(rows, -1)

    def side(extremes: torch.Tensor, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
        blocks = extremes.topk(k, dim=1, largest=largest, sorted=False).indices
        cols = (blocks.unsqueeze(2) * width + offsets).reshape(rows, k * width)
        if tail.shape[1]:
            cols = torch.cat([cols, tail], dim=1)
        best, pos = logits.gather(1, cols).topk(k, dim=1, largest=largest, sorted=True)
        return best, cols.gather(1, pos)

    top_s, top_i = side(hi, True)
    bot_s, bot_i = side(lo, False)
    return top_s, top_i, bot_s, bot_i


def _running_topk(vectors: torch.Tensor, basis: torch.Tensor, k: int, vocab_tile: int | None,
                  workspace: torch.Tensor | None = None) -> TopBottom:
    vocab = basis.shape[0]
    k = min(k, vocab)
    tile = vocab if vocab_tile is None else max(k, vocab_tile)
    run: TopBottom | None = None
    for start in range(0, vocab, tile):
        part = basis[start : start + tile]
        if workspace is None:
            logits = vectors @ part.T
        else:
            logits = torch.mm(vectors, part.T, out=workspace[: vectors.shape[0] * part.shape[0]].view(
                vectors.shape[0], part.shape[0]))
        top_s, top_i, bot_s, bot_i = select_topk_bottomk(logits, min(k, logits.shape[1]))
        top_i, bot_i = top_i + start, bot_i + start
        if run is not None:
            top_s, top_i = _merge(torch.cat([run.top_scores, top_s], 1), torch.cat([run.top_ids, top_i], 1), k, True)
            bot_s, bot_i = _merge(
                torch.cat([run.bottom_scores, bot_s], 1), torch.cat([run.bottom_ids, bot_i], 1), k, False
            )
        run = TopBottom(top_s, top_i, bot_s, bot_i)
    assert run is not None
    return run


def chunk_rows(vocab_size: int, budget_bytes: int) -> int:
    """How many vectors one chunk may hold so that its fp32 logits fit in ``budget_bytes``."""
    return max(1, budget_bytes // (4 * vocab_size))


def chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))

"""Chunked projection with a running top-k and bottom-k. Pure: tensors in, tensors out.

Never materialises a dense (all vectors × vocab) matrix: vectors come in chunks sized to a memory budget and
the vocabulary in tiles, and each tile's top/bottom-k is merged into the running answer (``torch.topk``,
never a full sort). With one tile covering the vocabulary this is one GEMM and two selections per chunk.

A selection on the CPU (``select``) first reduces each row to the maxima of ``STRIDE`` interleaved column sets
and keeps only the sets whose maxima are among the k best: an exact top-k at a fraction of ``torch.topk``'s cost,
which at small d (MiniLM, d = 384) was ~0.4 of the GEMM's.
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


STRIDE = 8
"""Columns per interleaved set in ``select``: 8 measured fastest at V = 30 522 and 50 257 (16 and 32 gather more)."""


def select(logits: torch.Tensor, k: int, largest: bool, sorted: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits.topk(k, dim=1, largest=largest)``, exact, with one cheap pass over the logits instead of a selection
    over every one.

    Column j of a row belongs to set j mod nb (nb = V // STRIDE: the row viewed as STRIDE × nb, sets are columns
    of that view). If set s is not among the k sets with the best maxima, k other sets each hold a value at least
    as good as anything in s, so the row's top k lie in the k best sets (plus the V - STRIDE·nb tail columns,
    taken whole): k·STRIDE candidates, gathered and selected. The best sets are themselves a top-k over nb maxima
    (recursively). The maxima are an elementwise max of STRIDE contiguous rows (vectorised, one pass); the
    candidate gather and the small selections are what remains. Ties may be broken differently from
    ``torch.topk`` (whose order among equal values is unspecified too). On CUDA this is plain ``topk``: the
    strided form is unmeasured there.
    """
    n, vocab = logits.shape
    if logits.device.type != "cpu" or vocab < 16 * STRIDE * k or logits.stride(1) != 1:
        return logits.topk(k, dim=1, largest=largest, sorted=sorted)
    nb = vocab // STRIDE
    main = nb * STRIDE
    grid = logits[:, :main].view(n, STRIDE, nb)
    best = grid.amax(dim=1) if largest else grid.amin(dim=1)
    _, sets = select(best, k, largest, sorted=False)
    candidates = grid.gather(2, sets.unsqueeze(1).expand(n, STRIDE, k)).reshape(n, STRIDE * k)
    ids = (torch.arange(STRIDE).view(1, STRIDE, 1) * nb + sets.unsqueeze(1)).reshape(n, STRIDE * k)
    if main < vocab:
        candidates = torch.cat([candidates, logits[:, main:]], dim=1)
        ids = torch.cat([ids, torch.arange(main, vocab).expand(n, vocab - main)], dim=1)
    scores, pos = candidates.topk(k, dim=1, largest=largest, sorted=sorted)
    return scores, ids.gather(1, pos)


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
        top_s, top_i = select(logits, min(k, logits.shape[1]), largest=True, sorted=run is None)
        bot_s, bot_i = select(logits, min(k, logits.shape[1]), largest=False, sorted=run is None)
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

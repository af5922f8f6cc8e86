"""Chunked projection with a running top-k and bottom-k. Pure: tensors in, tensors out.

Never materialises a dense (all vectors × vocab) matrix: vectors come in chunks sized to a memory budget and
the vocabulary in tiles, and each tile's top/bottom-k is merged into the running answer (``torch.topk``,
never a full sort). With one tile covering the vocabulary this is one GEMM and two selections per chunk; on the
CPU that GEMM is computed in vocabulary slices (``GEMM_COLUMNS``), each reduced while it is still in cache.

A selection on the CPU (``select``) first reduces each row to the maxima of ``STRIDE`` interleaved column sets
and keeps only the sets whose maxima are among the k best: an exact top-k at a fraction of ``torch.topk``'s cost,
which at small d (MiniLM, d = 384) was ~0.4 of the GEMM's.
"""

import functools
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
    mean: torch.Tensor | None = None
    """Per row, float64: the mean of its logits over the vocabulary, where the projection took it in passing."""
    std: torch.Tensor | None = None
    """Likewise their standard deviation (population)."""


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
    if logits.device.type != "cpu" or vocab < 8 * STRIDE * k or not logits.is_contiguous():
        return logits.topk(k, dim=1, largest=largest, sorted=sorted)
    nb = vocab // STRIDE
    grid = logits[:, : nb * STRIDE].view(n, STRIDE, nb)
    extremes = grid.amax(dim=1) if largest else grid.amin(dim=1)
    return _from_sets(logits.view(-1), n, vocab, vocab, extremes, k, largest, sorted)


@functools.lru_cache(maxsize=16)
def _set_layout(vocab: int, columns: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per set of a slice-major logits buffer (``_sliced_topk``; one slice of width V for a plain matrix): its
    slice's first column, its slice's width (the slice's row stride) and its first member's column in the slice.
    The members of a set lie ``width // STRIDE`` columns apart."""
    assert columns == vocab or columns % STRIDE == 0, "only the last slice may leave tail columns"
    start, width, offset = [], [], []
    for first in range(0, vocab, columns):
        w = min(columns, vocab - first)
        start.append(torch.full((w // STRIDE,), first))
        width.append(torch.full((w // STRIDE,), w))
        offset.append(torch.arange(w // STRIDE))
    return torch.cat(start), torch.cat(width), torch.cat(offset)


def set_count(vocab: int, columns: int) -> int:
    """Sets of a row of ``vocab`` logits in slices of ``columns``: the width of its extremes."""
    return int(_set_layout(vocab, columns)[0].shape[0])


def _from_sets(flat: torch.Tensor, rows: int, vocab: int, columns: int, extremes: torch.Tensor, k: int,
               largest: bool, sorted: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact top-k of a slice-major buffer ``flat`` (slices of ``columns`` columns, each a contiguous
    rows × width block) from its sets' maxima (minima when not ``largest``), ``extremes``: [rows, sets].

    Index arithmetic runs on [rows, k] arrays and the one [rows, k, STRIDE] array of candidate positions is
    built in place (``addcmul``): each chunk's temporaries were ~60 MB of fresh pages, a page fault per 4 KiB
    under the run's fixed mmap threshold (``indexer.index.memory``)."""
    _, sets = select(extremes, k, largest, sorted=False)
    start, width, offset = (t[sets] for t in _set_layout(vocab, columns))
    gap = width // STRIDE
    first = start * rows + torch.arange(rows).unsqueeze(1) * width + offset
    positions = torch.addcmul(first.unsqueeze(2), gap.unsqueeze(2), torch.arange(STRIDE))
    column = start + offset
    last = (vocab - 1) // columns * columns  # the last slice, the only one that may have tail columns
    main = last + (vocab - last) // STRIDE * STRIDE
    # sorted here only if no tail follows (its selection below sorts the final k)
    best, pos = flat.take(positions).view(rows, -1).topk(k, dim=1, largest=largest, sorted=sorted and main == vocab)
    slot = pos // STRIDE  # which of the k sets, then which member of it
    ids = column.gather(1, slot) + (pos - slot * STRIDE) * gap.gather(1, slot)
    if main < vocab:  # the tail columns, in no set: taken whole beside the sets' best k
        tail = flat[rows * last : rows * vocab].view(rows, vocab - last)[:, main - last :]
        best, pos = torch.cat([best, tail], dim=1).topk(k, dim=1, largest=largest, sorted=sorted)
        ids = torch.cat([ids, torch.arange(main, vocab).expand(rows, vocab - main)], dim=1).gather(1, pos)
    return best, ids


GEMM_COLUMNS = 4096
"""Vocabulary columns per GEMM on the CPU. The (rows × V) products of GPT-2 and MiniLM shapes took 1.15–1.35×
the time of the same products cut into 4096-column slices (2-core EPYC, torch 2.13): a slice's output stays in
cache, and so does the pass that takes its sets' maxima and minima right after it."""


def logit_slices(vectors: torch.Tensor, basis: torch.Tensor, flat: torch.Tensor) -> Iterator[torch.Tensor]:
    """``vectors @ basis.T`` computed ``GEMM_COLUMNS`` vocabulary columns at a time, each slice written to its own
    contiguous ``rows × width`` block of ``flat`` (slice-major) and yielded while it is still in cache."""
    rows, vocab = vectors.shape[0], basis.shape[0]
    for first in range(0, vocab, GEMM_COLUMNS):
        width = min(GEMM_COLUMNS, vocab - first)
        logits = flat[rows * first : rows * (first + width)].view(rows, width)
        torch.mm(vectors, basis[first : first + width].T, out=logits)
        yield logits


def workspace_size(rows: int, vocab: int, device: torch.device | str = "cpu") -> int:
    """Elements of a reusable ``workspace`` for chunks of up to ``rows`` vectors on ``device``: their logits, then
    on the CPU (which computes them in slices) both sides' set extremes, rows × V / 4 more."""
    extremes = 2 * rows * set_count(vocab, GEMM_COLUMNS) if torch.device(device).type == "cpu" else 0
    return rows * vocab + extremes


def _sliced_topk(vectors: torch.Tensor, basis: torch.Tensor, k: int, workspace: torch.Tensor | None,
                 stats: bool) -> TopBottom:
    """Top-k and bottom-k on the CPU: the logits computed ``GEMM_COLUMNS`` vocabulary columns at a time, each slice
    stored as its own contiguous block of the workspace and reduced to its sets' extremes while still in cache;
    then ``select``'s candidate step over the whole buffer.

    ``stats``: also each row's logit mean and std, from every slice's float32 sum and norm (pairwise sums over
    at most GEMM_COLUMNS values, combined in float64) — two more passes over a slice in cache, against a
    d × d product per chunk and the basis covariance (2·V·d² FLOPs) for ``logit_stats``; left out (``None``)
    where the mean is so large against the spread that ``CANCELLATION`` would cost the variance its digits."""
    rows, vocab = vectors.shape[0], basis.shape[0]
    need = rows * vocab
    extra = workspace_size(rows, vocab) - need
    if workspace is None:
        workspace = torch.empty(need + extra, dtype=basis.dtype)
    flat, spare = workspace[:need], workspace[need : need + extra]
    highs, lows = (spare if spare.numel() == extra else torch.empty(extra, dtype=basis.dtype)).view(2, rows, -1)
    sums, norms, at = [], [], 0
    for logits in logit_slices(vectors, basis, flat):
        n = logits.shape[1] // STRIDE
        grid = logits[:, : n * STRIDE].view(rows, STRIDE, n)
        torch.amax(grid, dim=1, out=highs[:, at : at + n])  # in place: no per-slice arrays to concatenate
        torch.amin(grid, dim=1, out=lows[:, at : at + n])
        at += n
        if stats:
            sums.append(logits.sum(dim=1))
            norms.append(torch.linalg.vector_norm(logits, dim=1))
    top = _from_sets(flat, rows, vocab, GEMM_COLUMNS, highs, k, True, True)
    bottom = _from_sets(flat, rows, vocab, GEMM_COLUMNS, lows, k, False, True)
    if not stats:
        return TopBottom(*top, *bottom)
    mean = torch.stack(sums, dim=1).to(torch.float64).sum(dim=1) / vocab
    square = torch.stack(norms, dim=1).to(torch.float64).square().sum(dim=1) / vocab
    var = square - mean.square()
    if bool((mean.square() > CANCELLATION * var).any()):  # E[x²] − mean² would lose the variance's digits
        return TopBottom(*top, *bottom)
    return TopBottom(*top, *bottom, mean=mean, std=var.clamp_min(0.0).sqrt())


CANCELLATION = 8.0
"""Largest mean² / variance for which a chunk's stats are taken from its slices: the float32 sum of squares has a
relative error near 1e-7 of E[x²] = var·(1 + mean²/var), so up to 8 the variance keeps ~1e-6. Folded bases are
centred over the vocabulary (mean ≈ 0); rows of a raw basis may share a large component, and their chunks are
left to ``logit_stats``."""


def _merge(scores: torch.Tensor, ids: torch.Tensor, k: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    best, pos = scores.topk(min(k, scores.shape[1]), dim=1, largest=largest, sorted=True)
    return best, ids.gather(1, pos)


def topk_bottomk(
    vectors: torch.Tensor, basis: torch.Tensor, k: int, vocab_tile: int | None = None,
    exact_basis: torch.Tensor | None = None, oversample: int = 2, workspace: torch.Tensor | None = None,
    stats: bool = False,
) -> TopBottom:
    """Top-k and bottom-k of ``vectors @ basis.T`` per row, tiling the vocabulary by ``vocab_tile``.

    With ``exact_basis`` (the fp32 basis, ``basis`` then being a low-precision copy), ``oversample · k``
    candidates per side are chosen from the fast logits and rescored exactly against ``exact_basis``.
    ``workspace``, a flat buffer of at least rows × tile elements of ``basis.dtype``, receives the logits (and the
    sets' extremes where it has room for them: ``workspace_size``): reusing it spares the allocator fresh
    multi-MiB blocks (and their page faults) per chunk.
    ``stats``: where the logits pass through the CPU's vocabulary slices, each row's logit mean and std are taken
    on the way (``TopBottom.mean``/``std``; else they stay ``None``: ``indexer.math.basis.logit_stats``).
    """
    if exact_basis is None:
        return _running_topk(vectors, basis, k, vocab_tile, workspace, stats)
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
                  workspace: torch.Tensor | None = None, stats: bool = False) -> TopBottom:
    vocab = basis.shape[0]
    k = min(k, vocab)
    if (vocab_tile is None and basis.device.type == "cpu" and vocab > GEMM_COLUMNS and vocab >= 16 * STRIDE * k
            and vectors.shape[0] > 0):
        return _sliced_topk(vectors, basis, k, workspace, stats)
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
    """Slices of at most ``size`` rows covering ``range(n)``, as equal as possible: a layer of 3072 vectors in
    chunks of 333 is ten of 307–308 rows, not nine of 333 and a last GEMM of 75 rows that runs at 0.7 of the rate."""
    parts = -(-n // size)
    for i in range(parts):
        yield slice(i * n // parts, (i + 1) * n // parts)

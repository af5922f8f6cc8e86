"""The pure math against naive references: dense logits, full sorts, dense statistics."""

import pytest
import torch

from indexer.index.compute import resolve_compute
from indexer.index.projector import Projector
from indexer.math.basis import (
    fold_reader,
    logit_stats,
    read_basis,
    read_basis_blocks,
    read_basis_rows,
    row_blocks,
    write_basis,
    write_basis_blocks,
    write_basis_rows,
)
from indexer.math.projection import (
    GEMM_COLUMNS,
    STRIDE,
    chunk_rows,
    chunks,
    select,
    topk_bottomk,
    workspace_size,
)
from indexer.model.adapters.base import Norm


@pytest.mark.parametrize("vocab_tile", [None, 7, 64, 1000])
@pytest.mark.parametrize("k", [1, 5, 50])
def test_topk_bottomk_equals_dense_sort(vocab_tile: int | None, k: int) -> None:
    g = torch.Generator().manual_seed(k)
    vectors, basis = torch.randn(13, 16, generator=g), torch.randn(203, 16, generator=g)
    dense = vectors @ basis.T
    tb = topk_bottomk(vectors, basis, k, vocab_tile=vocab_tile)
    order = dense.argsort(dim=1, descending=True)
    kk = min(k, basis.shape[0])
    assert torch.equal(tb.top_ids, order[:, :kk])
    assert torch.equal(tb.bottom_ids, order.flip(1)[:, :kk])
    assert torch.allclose(tb.top_scores, dense.gather(1, order[:, :kk]))
    assert torch.allclose(tb.bottom_scores, dense.gather(1, order.flip(1)[:, :kk]))


@pytest.mark.parametrize("vocab", [16 * STRIDE * 50 + 3, 20_011, 50_257])
@pytest.mark.parametrize("k", [1, 5, 50])
def test_select_equals_a_full_sort_on_vocabularies_where_it_takes_the_strided_path(vocab: int, k: int) -> None:
    g = torch.Generator().manual_seed(vocab + k)
    logits = torch.randn(9, vocab, generator=g)
    for largest in (True, False):
        scores, ids = select(logits, k, largest)
        order = logits.argsort(dim=1, descending=largest)[:, :k]
        assert torch.equal(ids, order) and torch.equal(scores, logits.gather(1, order))


def test_select_finds_a_top_k_crowded_into_one_interleaved_set_and_the_tail() -> None:
    """The worst case for the set maxima: every winner shares one set (columns j + i·nb) or sits in the tail
    (the columns past STRIDE·nb), so one set and the tail must yield them all."""
    k, nb = 12, 1000
    vocab = STRIDE * nb + 5
    logits = torch.randn(3, vocab, generator=torch.Generator().manual_seed(1))
    planted = [7 + i * nb for i in range(STRIDE)] + list(range(STRIDE * nb, vocab))[:k - STRIDE]
    for rank, col in enumerate(planted):
        logits[:, col] = 100.0 - rank
        logits[1, col] = -100.0 + rank  # row 1: the same columns are the bottom k
    top, top_ids = select(logits, k, largest=True)
    assert top_ids[0].tolist() == planted and top_ids[2].tolist() == planted
    bottom, bottom_ids = select(logits, k, largest=False)
    assert bottom_ids[1].tolist() == planted and bottom[1].tolist() == [-100.0 + r for r in range(k)]


def test_k_larger_than_vocab_is_clamped() -> None:
    tb = topk_bottomk(torch.randn(2, 4), torch.randn(3, 4), k=10)
    assert tb.top_ids.shape == (2, 3)
    assert sorted(tb.top_ids[0].tolist()) == [0, 1, 2]


def test_scaled_unembedding_row_ranks_its_token_first() -> None:
    g = torch.Generator().manual_seed(1)
    unembed = torch.randn(500, 24, generator=g)
    basis = write_basis(unembed, Norm("layernorm", torch.rand(24, generator=g) + 0.5), "folded")
    for tid in (0, 17, 499):
        tb = topk_bottomk((3.0 * basis.matrix[tid]).unsqueeze(0), basis.matrix, 5)
        assert tb.top_ids[0, 0] == tid
        tb = topk_bottomk((-3.0 * basis.matrix[tid]).unsqueeze(0), basis.matrix, 5)
        assert tb.bottom_ids[0, 0] == tid


@pytest.mark.parametrize("vocab", [2 * GEMM_COLUMNS + 3, 3 * GEMM_COLUMNS + 805, 50_257])
@pytest.mark.parametrize("k", [1, 50])
def test_projection_in_vocabulary_slices_equals_a_full_sort(vocab: int, k: int) -> None:
    """On the CPU the logits are computed GEMM_COLUMNS columns at a time into a slice-major workspace (a last
    slice narrower than STRIDE is all tail); the top and bottom k are those of the whole product."""
    g = torch.Generator().manual_seed(vocab + k)
    vectors, basis = torch.randn(11, 24, generator=g), torch.randn(vocab, 24, generator=g)
    dense = vectors @ basis.T
    ws = torch.full((11 * vocab + 100,), float("nan"))
    wide = dense.double()
    for workspace in (None, ws, ws):  # a reused workspace, over-long and dirty, changes nothing
        tb = topk_bottomk(vectors, basis, k, workspace=workspace, stats=True)
        assert tb.mean is not None and tb.std is not None  # taken from the slices on the way
        assert torch.allclose(tb.mean, wide.mean(1), rtol=0, atol=1e-6 * float(wide.std(1).max()))
        assert torch.allclose(tb.std, wide.std(1, unbiased=False), rtol=1e-6, atol=0)
        order = dense.argsort(dim=1, descending=True)
        assert torch.equal(tb.top_ids, order[:, :k]) and torch.equal(tb.bottom_ids, order.flip(1)[:, :k])
        assert torch.allclose(tb.top_scores, dense.gather(1, order[:, :k]))
        assert torch.allclose(tb.bottom_scores, dense.gather(1, order.flip(1)[:, :k]))


def test_a_workspace_of_workspace_size_takes_the_set_extremes_in_place() -> None:
    """Past the logits, a workspace of ``workspace_size`` receives both sides' set extremes (each slice's
    interleaved sets, slice after slice): a chunk then allocates no per-slice arrays and concatenates none (its
    temporaries were ~60 MB of fresh pages, each 4 KiB a page fault under the run's mmap threshold)."""
    rows, vocab, k = 5, 2 * GEMM_COLUMNS + 803, 7
    g = torch.Generator().manual_seed(3)
    vectors, basis = torch.randn(rows, 16, generator=g), torch.randn(vocab, 16, generator=g)
    ws = torch.full((workspace_size(rows, vocab),), float("nan"))
    tb = topk_bottomk(vectors, basis, k, workspace=ws)
    dense = vectors @ basis.T
    grids = [dense[:, a : a + min(GEMM_COLUMNS, vocab - a) // STRIDE * STRIDE].reshape(rows, STRIDE, -1)
             for a in range(0, vocab, GEMM_COLUMNS)]
    highs, lows = ws[rows * vocab :].view(2, rows, -1)
    assert torch.allclose(highs, torch.cat([x.amax(1) for x in grids], 1), atol=1e-5)
    assert torch.allclose(lows, torch.cat([x.amin(1) for x in grids], 1), atol=1e-5)
    order = dense.argsort(dim=1, descending=True)
    assert torch.equal(tb.top_ids, order[:, :k]) and torch.equal(tb.bottom_ids, order.flip(1)[:, :k])


def test_sliced_projection_finds_winners_crowded_into_one_set_of_a_middle_slice_and_the_tail() -> None:
    """Every winner in one interleaved set of the second slice (columns GEMM_COLUMNS + 9 + i·GEMM_COLUMNS/STRIDE),
    in the last slice's tail or in the first column; eye(3) @ basis.T plants the logits exactly."""
    k, vocab = 12, 3 * GEMM_COLUMNS + 5
    logits = torch.randn(3, vocab, generator=torch.Generator().manual_seed(5))
    step = GEMM_COLUMNS // STRIDE
    planted = [GEMM_COLUMNS + 9 + i * step for i in range(STRIDE)] + list(range(vocab - 3, vocab)) + [0]
    for rank, col in enumerate(planted):
        logits[:, col] = 100.0 - rank
        logits[1, col] = -100.0 + rank  # row 1: the same columns are the bottom k
    tb = topk_bottomk(torch.eye(3), logits.T.contiguous(), k)
    assert tb.top_ids[0].tolist() == planted and tb.top_ids[2].tolist() == planted
    assert tb.bottom_ids[1].tolist() == planted and tb.bottom_scores[1].tolist() == [-100.0 + r for r in range(k)]


def test_slice_stats_are_left_to_logit_stats_where_the_mean_would_cancel_the_variance() -> None:
    """The std from the slices comes from sums of squares: with every logit near 40 ± 1 (a raw basis whose rows
    share a large component) it would keep ~4 digits, so the slices give none and the projector's
    ``logit_stats`` (centred covariance) gives the dense float64 std to float32 accuracy."""
    g = torch.Generator().manual_seed(6)
    unembed = torch.randn(3 * GEMM_COLUMNS + 11, 16, generator=g) * 0.25
    unembed[:, 0] = 40.0
    vectors = torch.randn(5, 16, generator=g)
    vectors[:, 0] = 1.0
    wide = (vectors @ unembed.T).double()
    assert topk_bottomk(vectors, unembed, 5, stats=True).mean is None
    vectors[:, 0] = 0.0  # the shared component no longer read: the slices' stats are exact again
    assert topk_bottomk(vectors, unembed, 5, stats=True).mean is not None
    vectors[:, 0] = 1.0
    basis = write_basis(unembed, None, "raw")
    (chunk,) = Projector(5, 1 << 30, resolve_compute("cpu")).chunks(vectors, basis)
    assert torch.allclose(chunk.mean, wide.mean(1), rtol=1e-6)
    assert torch.allclose(chunk.std, wide.std(1, unbiased=False), rtol=1e-5)


def test_logit_stats_equal_dense_statistics() -> None:
    g = torch.Generator().manual_seed(2)
    unembed, vectors = torch.randn(300, 12, generator=g) + 0.3, torch.randn(9, 12, generator=g)
    for mode in ("folded", "raw"):
        basis = write_basis(unembed, Norm("layernorm", torch.rand(12, generator=g) + 0.5), mode)
        dense = (vectors.double() @ basis.matrix.double().T)
        mean, std = logit_stats(vectors, basis)
        assert torch.allclose(mean, dense.mean(1), atol=1e-9)
        assert torch.allclose(std, dense.std(1, unbiased=False), rtol=1e-6, atol=0)  # float32 variance


def test_folded_basis_matches_layernorm_then_unembed() -> None:
    """Folding is exact: ranking by the folded basis = ranking the model's logits of LN_f(x)."""
    g = torch.Generator().manual_seed(3)
    d, vocab = 16, 80
    unembed, gain, x = torch.randn(vocab, d, generator=g), torch.rand(d, generator=g) + 0.5, torch.randn(d, generator=g)
    logits = unembed @ torch.nn.functional.layer_norm(x, (d,), weight=gain)  # LN bias would add a per-token constant
    folded = write_basis(unembed, Norm("layernorm", gain), "folded").matrix @ x
    centred = logits - logits.mean()
    assert torch.allclose(centred / centred.norm(), folded / folded.norm(), atol=1e-5)


def test_raw_basis_is_the_matrix_itself() -> None:
    unembed = torch.randn(10, 4)
    assert torch.equal(write_basis(unembed, Norm("layernorm", torch.ones(4)), "raw").matrix, unembed)
    assert torch.equal(read_basis(unembed, "unembedding", "raw").matrix, unembed)


def test_fold_reader_applies_gain_and_centres_for_layernorm() -> None:
    keys, gain = torch.randn(3, 6), torch.rand(6) + 0.5
    ln = fold_reader(keys, Norm("layernorm", gain), "folded")
    assert torch.allclose(ln, (keys * gain) - (keys * gain).mean(1, keepdim=True))
    assert torch.allclose(fold_reader(keys, Norm("rmsnorm", gain), "folded"), keys * gain)
    assert torch.equal(fold_reader(keys, Norm("layernorm", gain), "raw"), keys)
    assert torch.equal(fold_reader(keys, None, "folded"), keys)


def test_chunks_cover_every_row_once() -> None:
    size = chunk_rows(vocab_size=1000, budget_bytes=4 * 1000 * 7)
    assert size == 7
    covered = [i for s in chunks(50, size) for i in range(s.start, s.stop)]
    assert covered == list(range(50))
    assert [s.stop - s.start for s in chunks(3072, 333)] == [307, 307, 307, 307, 308] * 2  # no 75-row straggler
    assert list(chunks(0, 7)) == []
    assert chunk_rows(vocab_size=10**9, budget_bytes=1) == 1


def test_workspace_gives_the_same_answer_as_fresh_buffers() -> None:
    g = torch.Generator().manual_seed(4)
    vectors, basis = torch.randn(6, 8, generator=g), torch.randn(50, 8, generator=g)
    ws = torch.full((6 * 50,), float("nan"))
    for tile in (None, 20):
        a = topk_bottomk(vectors, basis, 5, vocab_tile=tile)
        b = topk_bottomk(vectors, basis, 5, vocab_tile=tile, workspace=ws)
        assert torch.equal(a.top_ids, b.top_ids) and torch.equal(a.bottom_scores, b.bottom_scores)


@pytest.mark.parametrize("mode", ["folded", "raw"])
@pytest.mark.parametrize("norm_kind", ["layernorm", "rmsnorm", None])
@pytest.mark.parametrize("rows", [1, 7, 300, 1000])
def test_basis_from_row_blocks_equals_basis_from_the_matrix(mode: str, norm_kind: str | None, rows: int) -> None:
    """W_U read in row blocks (any block size, bf16 blocks included) gives the basis folded from the whole matrix."""
    g = torch.Generator().manual_seed(rows)
    unembed = (torch.randn(301, 12, generator=g) + 0.3).to(torch.bfloat16)
    norm = None if norm_kind is None else Norm(norm_kind, torch.rand(12, generator=g) + 0.5)
    whole = write_basis(unembed.float(), norm, mode)  # type: ignore[arg-type]
    blocked = write_basis_rows(row_blocks(unembed, rows), (301, 12), norm, mode)  # type: ignore[arg-type]
    assert blocked.flags == whole.flags
    assert blocked.matrix.dtype == torch.float32
    assert torch.allclose(blocked.matrix, whole.matrix, atol=1e-6)
    assert torch.allclose(blocked.col_mean, whole.col_mean, atol=1e-7)
    assert torch.allclose(blocked.cov, whole.cov, atol=1e-6)
    for centre in (True, False):
        a = read_basis(unembed.float(), "unembedding", mode, centre_vocab=centre)  # type: ignore[arg-type]
        if centre:
            b = read_basis_rows(row_blocks(unembed, rows), (301, 12), "unembedding", mode)  # type: ignore[arg-type]
            assert a.flags == b.flags and torch.allclose(a.matrix, b.matrix, atol=1e-6)


@pytest.mark.parametrize("mode", ["folded", "raw"])
@pytest.mark.parametrize("norm_kind", ["layernorm", "rmsnorm", None])
@pytest.mark.parametrize("rows", [1, 7, 1024])
def test_basis_blocks_are_the_basis_matrix_bit_for_bit(mode: str, norm_kind: str | None, rows: int) -> None:
    """The rows a run stores (write_basis_blocks / read_basis_blocks: two passes over W_U's blocks, one block in
    memory) are the rows of the basis built from the same blocks, bit for bit, and the input is left as it was."""
    g = torch.Generator().manual_seed(rows)
    unembed = torch.randn(2301, 40, generator=g) + 0.3
    before = unembed.clone()
    norm = None if norm_kind is None else Norm(norm_kind, torch.rand(40, generator=g) + 0.5)
    shape = (2301, 40)
    for built, streamed in (
            (write_basis_rows(row_blocks(unembed, rows), shape, norm, mode),  # type: ignore[arg-type]
             write_basis_blocks(lambda: row_blocks(unembed, rows), shape, norm, mode)),  # type: ignore[arg-type]
            (read_basis_rows(row_blocks(unembed, rows), shape, "unembedding", mode),  # type: ignore[arg-type]
             read_basis_blocks(lambda: row_blocks(unembed, rows), shape, mode))):  # type: ignore[arg-type]
        blocks = list(streamed)
        assert [b[0] for b in blocks] == list(range(0, 2301, rows))
        assert torch.equal(torch.cat([b[1] for b in blocks]), built.matrix)
    assert torch.equal(unembed, before)


def test_row_blocks_that_do_not_fit_are_refused() -> None:
    with pytest.raises(ValueError, match="hold 10 rows"):
        write_basis_rows(row_blocks(torch.ones(10, 4), 3), (12, 4), None, "folded")
    with pytest.raises(ValueError, match="do not fit"):
        write_basis_rows(row_blocks(torch.ones(10, 5), 3), (10, 4), None, "folded")


def test_small_parts_are_projected_as_stacks_and_handed_out_as_if_alone() -> None:
    """A layer's heads (parts of d_head vectors) go through one GEMM per stack of at most one chunk's rows; each
    part gets the same rows as when projected alone, numbered from its own first vector."""
    from indexer.index.compute import resolve_compute
    from indexer.index.projector import Part, Projector

    g = torch.Generator().manual_seed(3)
    vocab, d = 211, 8
    basis = write_basis(torch.randn(vocab, d, generator=g), None, "folded")
    projector = Projector(top_k=4, budget=4 * vocab * 20, compute=resolve_compute("cpu"))  # 20 rows per chunk
    sizes = [6, 6, 0, 6, 6, 25, 3, 0, 0]  # stacks: [6, 6, 0, 6], [6], [25] alone (two chunks), [3, 0, 0]
    vectors = [torch.randn(n, d, generator=g) for n in sizes]
    stacks: list[int] = []
    chunks_of = projector.chunks

    def counted(v, b, keep=False):  # type: ignore[no-untyped-def]
        stacks.append(int(v.shape[0]))
        return chunks_of(v, b, keep)

    projector.chunks = counted  # type: ignore[method-assign]
    parts = [Part("attn_o", 0, h, None, n, lambda v=v: v) for h, (n, v) in enumerate(zip(sizes, vectors, strict=True))]
    together = list(projector.stream_parts(parts, basis, role="writes"))
    assert stacks == [18, 6, 25, 3]
    empty = list(projector.stream_parts([Part("attn_o", 1, h, None, 0, lambda: vectors[2]) for h in range(2)], basis))
    assert [(p.n, list(p.chunks)) for p in empty] == [(0, []), (0, [])]
    projector.chunks = chunks_of  # type: ignore[method-assign]
    for got, v, h in zip(together, vectors, range(len(sizes)), strict=True):
        alone = projector.stream("attn_o", 0, h, v, basis, role="writes")
        a, b = list(alone.chunks), list(got.chunks)
        assert (got.head, got.n, got.role) == (h, v.shape[0], "writes")
        assert [c.first_index for c in b] == [c.first_index for c in a]
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x.tb.top_ids, y.tb.top_ids) and torch.equal(x.tb.bottom_ids, y.tb.bottom_ids)
            assert torch.allclose(x.tb.top_scores, y.tb.top_scores) and torch.equal(x.values, y.values)
            assert torch.allclose(x.std, y.std) and torch.equal(x.norm, y.norm)

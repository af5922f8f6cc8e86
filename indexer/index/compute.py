"""Where and how precisely projections are computed.

``fp32`` is exact and the default everywhere. ``tf32`` and ``bf16`` (CUDA only) select candidates with a
faster, less exact GEMM and then rescore an oversampled candidate set exactly in fp32, so every stored score
is an fp32 score and only a token near the k-th place can be missed; how often is measured by
``bench/index_throughput.py`` and recorded with the run.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch

from schema.errors import LensdbError

DeviceChoice = Literal["auto", "cpu", "cuda"]
Precision = Literal["fp32", "tf32", "bf16"]
OVERSAMPLE = 2


@dataclass(frozen=True)
class Compute:
    device: torch.device
    precision: Precision

    @property
    def exact(self) -> bool:
        return self.precision == "fp32"

    def flags(self) -> dict[str, object]:
        flags: dict[str, object] = {"device": self.device.type, "precision": self.precision, "exact": self.exact}
        if not self.exact:
            flags["rescored_fp32"] = True
            flags["oversample"] = OVERSAMPLE
        return flags


def resolve_compute(device: DeviceChoice = "auto", precision: Precision = "fp32") -> Compute:
    """Pick the device (CUDA when ``auto`` and present) and check the precision fits it."""
    has_cuda = torch.cuda.is_available()
    if device == "cuda" and not has_cuda:
        raise LensdbError("--device cuda was asked for but torch sees no CUDA device; use --device cpu or auto.")
    chosen = torch.device("cuda" if device == "cuda" or (device == "auto" and has_cuda) else "cpu")
    if precision != "fp32" and chosen.type != "cuda":
        raise LensdbError(f"--precision {precision} needs a CUDA device; on the CPU lensdb computes in exact fp32.")
    return Compute(chosen, precision)


@contextmanager
def matmul_mode(compute: Compute) -> Iterator[None]:
    """Allow TF32 matmuls for the duration of a run only, restoring the global flag afterwards."""
    if compute.device.type != "cuda":
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = compute.precision == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before

"""Head-map pair search against the GEMM peak of the same shapes, measured in one run.

For one head of GPT-2-small shape (V = 50257, d_head = 64): ``indexer.math.token_maps.top_pairs`` (tiled GEMM, one
max/min pass per tile, top-k of the k best rows) against the best rate of the bare tile GEMM
(tile × d_head) @ (d_head × V). Reports pairs/s (V² entries searched per second), GFLOP/s and the ratio.

    .venv/bin/python bench/head_pairs.py [--device auto|cpu|cuda] [--vocab 50257] [--d-head 64] [--heads 1]
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indexer.index.compute import resolve_compute  # noqa: E402
from indexer.math.token_maps import top_pairs  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--d-head", type=int, default=64)
    ap.add_argument("--heads", type=int, default=1, help="heads to time (the best is reported)")
    ap.add_argument("--tile", type=int, default=None, help="rows per tile (default 1024 CPU, 8192 CUDA)")
    ap.add_argument("--k", type=int, default=50)
    args = ap.parse_args()
    dev = resolve_compute(args.device).device
    tile = args.tile or (8192 if dev.type == "cuda" else 1024)
    g = torch.Generator().manual_seed(0)
    left = torch.randn(args.vocab, args.d_head, generator=g).to(dev)
    right = torch.randn(args.vocab, args.d_head, generator=g).to(dev)
    rt = right.T.contiguous()
    out = torch.empty(tile, args.vocab, device=dev)
    torch.mm(left[:tile], rt, out=out)
    _sync(dev)
    best_gemm, end = float("inf"), time.perf_counter() + 2.0
    while time.perf_counter() < end:
        t = time.perf_counter()
        torch.mm(left[:tile], rt, out=out)
        _sync(dev)
        best_gemm = min(best_gemm, time.perf_counter() - t)
    peak = 2 * tile * args.d_head * args.vocab / best_gemm / 1e9
    del out
    top_pairs(left[: 2 * tile], right, args.k, tile_rows=tile)
    _sync(dev)
    best = float("inf")
    for _ in range(args.heads):
        t = time.perf_counter()
        top_pairs(left, right, args.k, tile_rows=tile)
        _sync(dev)
        best = min(best, time.perf_counter() - t)
    entries = args.vocab**2
    rate = 2 * entries * args.d_head / best / 1e9
    print(f"device {dev}, V={args.vocab}, d_head={args.d_head}, tile={tile}, k={args.k}")
    print("| seconds/head | pairs/s | GFLOP/s | gemm_peak GFLOP/s | ratio |")
    print("|---|---|---|---|---|")
    print(f"| {best:.3g} | {entries / best:.3g} | {rate:.3g} | {peak:.3g} | {rate / peak:.2f} |")


if __name__ == "__main__":
    main()

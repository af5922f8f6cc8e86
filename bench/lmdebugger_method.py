"""The precomputation method of lm-debugger (flask_server/create_offline_files.py), reimplemented for a
side-by-side benchmark: per layer a dense (vocab × d) @ (d × d_ff) product, all layers stacked into one dense
(all vectors × vocab) matrix moved to the CPU, then a full ``np.argsort`` of every row. We keep both ends of
each sort (top-k and bottom-k) so the output equals lensdb's; the pickling and token strings are left out,
which only flatters the baseline.

    python bench/lmdebugger_method.py CHECKPOINT K [cuda]     # prints {"seconds": …, "maxrss_kib": …}
"""

import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indexer.model.adapters import adapter_for  # noqa: E402
from indexer.model.checkpoint import open_checkpoint  # noqa: E402


def precompute(checkpoint: str, k: int, device: str = "cpu") -> dict[int, tuple[np.ndarray, np.ndarray]]:
    adapter = adapter_for(open_checkpoint(checkpoint))
    wte = adapter.unembedding().to(device)
    logits = []
    for layer in range(adapter.dims.n_layers):
        (values,) = adapter.component("ff_value", layer)
        logits.append(torch.matmul(wte, values.vectors.to(device).T).T)
    dense = torch.vstack(logits).cpu().numpy()
    out = {}
    for row in range(dense.shape[0]):
        order = np.argsort(-dense[row])
        out[row] = (order[:k], order[-k:][::-1])
    return out


if __name__ == "__main__":
    t = time.perf_counter()
    result = precompute(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "cpu")
    print(json.dumps({"seconds": time.perf_counter() - t, "vectors": len(result),
                      "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))

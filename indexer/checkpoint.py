"""Plain I/O over a Hugging Face checkpoint folder: config, (sharded) safetensors, content hash.

Tensors are read one at a time with ``safe_open``; nothing here instantiates a model or does math. Every
problem is found before indexing starts where the headers allow it (missing files, truncated data, names
the index promises but no shard holds) and reported with the file's name.
"""

import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from indexer.errors import CheckpointError

SINGLE_FILE = "model.safetensors"
SHARD_INDEX = "model.safetensors.index.json"
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


@dataclass
class Checkpoint:
    """A validated checkpoint folder: its config and where each tensor lives."""

    path: Path
    config: dict
    files: list[Path]
    shapes: dict[str, tuple[int, ...]]
    _where: dict[str, Path] = field(repr=False)

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", ""))

    def has(self, name: str) -> bool:
        return name in self._where

    def shape(self, name: str) -> tuple[int, ...]:
        return self.shapes[name]

    def tensor(self, name: str) -> torch.Tensor:
        """One tensor as float32, checked to be finite."""
        if name not in self._where:
            raise CheckpointError(f"{self.path}: tensor {name!r} is missing from the weights.")
        file = self._where[name]
        try:
            with safe_open(str(file), framework="pt") as f:
                t = f.get_tensor(name)
        except Exception as err:  # safetensors raises its own untyped errors for corrupt files
            raise CheckpointError(f"{file}: cannot read tensor {name!r}: {err}") from None
        t = t.to(torch.float32)
        if not torch.isfinite(t).all():
            raise CheckpointError(f"{file}: tensor {name!r} holds NaN or Inf values; the checkpoint is corrupt.")
        return t

    def content_hash(self) -> str:
        """sha256 over config.json and every weight file: the checkpoint's identity."""
        h = hashlib.sha256()
        h.update((self.path / "config.json").read_bytes())
        for file in self.files:
            h.update(file.name.encode())
            with file.open("rb") as fh:
                while chunk := fh.read(1 << 24):
                    h.update(chunk)
        return h.hexdigest()


def _read_header(file: Path) -> dict[str, tuple[int, ...]]:
    """Parse a safetensors header and check the file really holds the bytes it announces."""
    size = file.stat().st_size
    try:
        with file.open("rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                raise ValueError("file is shorter than a safetensors header")
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8:
                raise ValueError(f"header claims {n} bytes but the file has {size}")
            header = json.loads(fh.read(n))
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{file}: not a readable safetensors file ({err}); re-download it.") from None
    shapes: dict[str, tuple[int, ...]] = {}
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        shape = tuple(int(x) for x in info["shape"])
        start, stop = info["data_offsets"]
        n_items = 1
        for x in shape:
            n_items *= x
        if stop - start != n_items * _DTYPE_BYTES.get(info["dtype"], 0):
            raise CheckpointError(
                f"{file}: tensor {name!r} has shape {list(shape)} but {stop - start} bytes of data; "
                "the header does not match the data. Re-download the file."
            )
        shapes[name] = shape
        end = max(end, stop)
    if 8 + n + end > size:
        raise CheckpointError(
            f"{file}: truncated: the header describes {8 + n + end} bytes but the file has {size}. "
            "The download or save did not finish; fetch the file again."
        )
    return shapes


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Validate a checkpoint folder and index its tensors by name, without reading any weights."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such folder. Pass the folder that holds config.json and the weights.")
    if not p.is_dir():
        raise CheckpointError(f"{p}: not a folder. Pass the folder that holds config.json and the weights.")
    cfg_file = p / "config.json"
    if not cfg_file.exists():
        raise CheckpointError(f"{p}: no config.json; this is not a Hugging Face checkpoint folder.")
    try:
        config = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{cfg_file}: not valid JSON ({err}).") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{cfg_file}: expected a JSON object.")

    where: dict[str, Path] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    if (p / SHARD_INDEX).exists():
        try:
            weight_map: dict[str, str] = json.loads((p / SHARD_INDEX).read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise CheckpointError(f"{p / SHARD_INDEX}: not a valid shard index ({err}).") from None
        files = sorted({p / f for f in weight_map.values()})
        for file in files:
            if not file.exists():
                raise CheckpointError(f"{file}: shard named in {SHARD_INDEX} is missing; the download is incomplete.")
    elif (p / SINGLE_FILE).exists():
        files = [p / SINGLE_FILE]
    else:
        others = sorted(x.name for x in p.glob("*.bin")) + sorted(x.name for x in p.glob("*.pt*"))
        hint = f" (found {', '.join(others)}: convert them to safetensors first)" if others else ""
        raise CheckpointError(f"{p}: no {SINGLE_FILE} or {SHARD_INDEX}{hint}.")
    for file in files:
        for name, shape in _read_header(file).items():
            where[name] = file
            shapes[name] = shape
    if (p / SHARD_INDEX).exists():
        missing = sorted(set(weight_map) - set(where))
        if missing:
            raise CheckpointError(f"{p / SHARD_INDEX}: names {missing[:3]} but no shard holds them.")
    return Checkpoint(path=p.resolve(), config=config, files=files, shapes=shapes, _where=where)

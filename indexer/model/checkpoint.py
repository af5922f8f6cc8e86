"""Plain I/O over a Hugging Face checkpoint folder: config, (sharded) safetensors, content hash.

Tensors are read one at a time with ``safe_open``; nothing here instantiates a model or does math. Every
problem is found before indexing starts where the headers allow it (missing files, truncated data, names
the index promises but no shard holds) and reported with the file's name.
"""

import errno
import hashlib
import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from indexer.errors import CheckpointError

SINGLE_FILE = "model.safetensors"
SHARD_INDEX = "model.safetensors.index.json"
_STEP = re.compile(r"(?:checkpoint|step|global_step)[-_]?(\d+)$")
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

    def tensor(self, name: str, index: int | None = None) -> torch.Tensor:
        """One tensor as float32, checked to be finite; ``index``: only that slice of its first axis (one expert
        of a fused ``[experts, …]`` tensor), read without the rest."""
        if name not in self._where:
            raise CheckpointError(f"{self.path}: tensor {name!r} is missing from the weights.")
        file = self._where[name]
        try:
            with safe_open(str(file), framework="pt") as f:
                t = f.get_tensor(name) if index is None else f.get_slice(name)[index]
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


def _follow(path: Path) -> Path:
    """``path`` itself, or a clear error if it is a symbolic link that leads nowhere (a loop, a dangling link)."""
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except RuntimeError:  # Python 3.11/3.12 report a loop this way
            raise CheckpointError(f"{path}: symbolic link loop; point it at the real file or folder.") from None
        except OSError as err:
            problem = "symbolic link loop" if err.errno == errno.ELOOP else "dangling symbolic link"
            raise CheckpointError(f"{path}: {problem}; point it at the real file or folder.") from None
    return path


def _entry(name: str, info: object) -> tuple[tuple[int, ...], str, int, int]:
    """(shape, dtype, start, stop) of one header entry, or ValueError if it is malformed."""
    if not isinstance(info, dict):
        raise ValueError(f"entry {name!r} is not an object")
    shape, dtype, offsets = info.get("shape"), info.get("dtype"), info.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(x, int) and x >= 0 for x in shape):
        raise ValueError(f"entry {name!r} has no valid shape")
    if not isinstance(dtype, str):
        raise ValueError(f"entry {name!r} has no dtype")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(x, int) for x in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise ValueError(f"entry {name!r} has no valid data_offsets")
    return tuple(shape), dtype, offsets[0], offsets[1]


def _read_header(file: Path) -> dict[str, tuple[int, ...]]:
    """Parse a safetensors header and check the file really holds the bytes it announces."""
    _follow(file)
    try:
        size = file.stat().st_size
        with file.open("rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                raise ValueError("file is shorter than a safetensors header")
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8:
                raise ValueError(f"header claims {n} bytes but the file has {size}")
            try:
                header = json.loads(fh.read(n))
            except ValueError:
                raise ValueError("its header is not JSON") from None
            if not isinstance(header, dict):
                raise ValueError("its header is not a JSON object")
            entries = {name: _entry(name, info) for name, info in header.items() if name != "__metadata__"}
    except OSError as err:
        raise CheckpointError(f"{file}: cannot read it ({err.strerror or err}).") from None
    except ValueError as err:
        raise CheckpointError(f"{file}: not a readable safetensors file ({err}); re-download it.") from None
    shapes: dict[str, tuple[int, ...]] = {}
    end = 0
    for name, (shape, dtype, start, stop) in entries.items():
        n_items = 1
        for x in shape:
            n_items *= x
        if stop - start != n_items * _DTYPE_BYTES.get(dtype, 0):
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
    if "\x00" in str(path):
        raise CheckpointError(f"{str(path)!r}: a path cannot contain a NUL character.")
    p = _follow(Path(path))
    if not p.exists():
        raise CheckpointError(f"{p}: no such folder. Pass the folder that holds config.json and the weights.")
    if not p.is_dir():
        raise CheckpointError(f"{p}: not a folder. Pass the folder that holds config.json and the weights.")
    cfg_file = _follow(p / "config.json")
    if not cfg_file.exists():
        raise CheckpointError(f"{p}: no config.json; this is not a Hugging Face checkpoint folder.")
    try:
        config = json.loads(cfg_file.read_text())
    except OSError as err:
        raise CheckpointError(f"{cfg_file}: cannot read it ({err.strerror or err}).") from None
    except ValueError as err:  # JSONDecodeError, or bytes that are not UTF-8
        raise CheckpointError(f"{cfg_file}: not valid JSON ({err}).") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{cfg_file}: expected a JSON object.")

    where: dict[str, Path] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    if (p / SHARD_INDEX).exists():
        try:
            weight_map: dict[str, str] = json.loads(_follow(p / SHARD_INDEX).read_text())["weight_map"]
            if not isinstance(weight_map, dict) or not all(
                    isinstance(v, str) and v and "/" not in v for v in weight_map.values()):
                raise TypeError("weight_map must map tensor names to shard file names in the folder")
        except OSError as err:
            raise CheckpointError(f"{p / SHARD_INDEX}: cannot read it ({err.strerror or err}).") from None
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{p / SHARD_INDEX}: not a valid shard index ({err}).") from None
        files = sorted({_follow(p / f) for f in weight_map.values()})
        for file in files:
            if not file.exists():
                raise CheckpointError(f"{file}: shard named in {SHARD_INDEX} is missing; the download is incomplete.")
    elif _follow(p / SINGLE_FILE).exists():
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


def name_step(name: str) -> int | None:
    """The step a folder or revision name carries: ``checkpoint-500``, ``step1000``, ``global_step20``."""
    m = _STEP.search(name)
    return int(m.group(1)) if m else None


def folder_step(folder: Path) -> int | None:
    """Training step of a checkpoint folder from its name or its ``trainer_state.json``."""
    step = name_step(folder.name)
    if step is not None:
        return step
    state = folder / "trainer_state.json"
    if state.exists():
        try:
            return int(json.loads(state.read_text())["global_step"])
        except (ValueError, KeyError, TypeError):
            return None
    return None


def default_name(ckpt: Checkpoint) -> str:
    """The model name a checkpoint is indexed as by default: its folder's, or the parent's for a step folder."""
    folder = ckpt.path.parent if _STEP.search(ckpt.path.name) else ckpt.path
    return folder.name.lower()

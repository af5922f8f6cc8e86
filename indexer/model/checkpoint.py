"""Plain I/O over a Hugging Face checkpoint folder: config, (sharded) safetensors, content hash.

Tensors are read one at a time with ``safe_open``; nothing here instantiates a model or does math. Every
problem is found before indexing starts where the headers allow it (missing files, truncated data, names
the index promises but no shard holds) and reported with the file's name.

Hostile folders too: only regular files are opened (a FIFO or a device in the folder is refused before
anything reads it, so nothing can block on it), every JSON file and safetensors header has a size cap, and
messages never quote what a file holds (a length field read from a symlinked secret is not echoed back).
"""

import errno
import hashlib
import json
import math
import os
import re
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from indexer.errors import CheckpointError

SINGLE_FILE = "model.safetensors"
SHARD_INDEX = "model.safetensors.index.json"
# What determines the vocabulary, so part of a checkpoint's identity (content_hash) when present.
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model")
TOKENIZER_EXTRAS = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "merges.txt")
MAX_HEADER = 100_000_000  # bytes of a safetensors header: the safetensors library's own limit
READ_BLOCK = 16 << 20
"""Bytes of float32 rows read, converted and checked at a time when a tensor is read (``Checkpoint.tensor``)."""
MAX_JSON = 64 << 20  # config.json, shard index, tokenizer_config.json, trainer_state.json
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
        of a fused ``[experts, …]`` tensor), read without the rest. Read in row blocks into the one float32 result
        (``READ_BLOCK``): the checkpoint's bf16 copy, a whole-size float32 temporary and the finiteness mask are
        never held beside it."""
        return self._read(name, index, transpose=False)

    def transposed(self, name: str, index: int | None = None) -> torch.Tensor:
        """A 2-D tensor (or one ``index`` of a 3-D one) transposed, as a contiguous float32 matrix: the rows of a
        weight stored ``[in, out]`` or ``[out, in]`` the other way round. Filled block by block, so reading a
        layer costs its float32 size and one block, not the stored tensor, a float32 copy and a transposed copy.
        Sources that decode whole tensors (GGUF, LoRA, quantized: their own ``tensor``) transpose what they
        decode."""
        if type(self).tensor is not Checkpoint.tensor:
            return self.tensor(name, index).T.contiguous()
        return self._read(name, index, transpose=True)

    def _read(self, name: str, index: int | None, transpose: bool) -> torch.Tensor:
        if name not in self._where:
            raise CheckpointError(f"{self.path}: tensor {name!r} is missing from the weights.")
        file = self._where[name]
        shape = self.shapes[name] if index is None else self.shapes[name][1:]
        if transpose and len(shape) != 2:
            raise CheckpointError(f"{file}: tensor {name!r} has shape {list(shape)}; only a matrix can be read "
                                  "transposed.")
        out: torch.Tensor | None = None
        try:
            if len(shape) < 2:  # norms and biases: small, read whole
                with safe_open(str(file), framework="pt") as f:
                    t = f.get_tensor(name) if index is None else f.get_slice(name)[index]
                return _finite(t.to(torch.float32), file, name)
            n, width = shape[0], math.prod(shape[1:])
            out = torch.empty((shape[1], n) if transpose else shape, dtype=torch.float32)
            step = max(1, READ_BLOCK // (4 * max(1, width)))
            for start in range(0, n, step):
                stop = min(n, start + step)
                block = _block(file, name, start, stop, index)
                if transpose:
                    out[:, start:stop].copy_(block.T)
                else:
                    out[start:stop].copy_(block)
                del block  # before the next block is read: one block beside the result
        except CheckpointError:
            raise
        except Exception as err:  # safetensors raises its own untyped errors for corrupt files
            raise CheckpointError(f"{file}: cannot read tensor {name!r}: {err}") from None
        return out

    def row_blocks(self, name: str, rows: int) -> Iterator[torch.Tensor]:
        """A 2-D tensor as consecutive float32 blocks of ``rows`` rows, each read from the file on its own (a
        safetensors slice), so a bf16 W_U is never held whole or converted whole. Sources that decode whole
        tensors (GGUF, LoRA, quantized: their own ``tensor``) read it once and hand out views of it."""
        if type(self).tensor is not Checkpoint.tensor:
            whole = self.tensor(name)
            for start in range(0, whole.shape[0], rows):
                yield whole[start : start + rows]
            return
        if name not in self._where:
            raise CheckpointError(f"{self.path}: tensor {name!r} is missing from the weights.")
        file, n = self._where[name], self.shapes[name][0]
        for start in range(0, n, rows):
            yield _block(file, name, start, min(n, start + rows))

    def content_hash(self) -> str:
        """sha256 over config.json, every weight file and the tokenizer files: the checkpoint's identity."""
        return self.content_hashes()[0]

    def content_hashes(self) -> tuple[str, str | None]:
        """(identity, identity as lensdb computed it before the tokenizer files counted: config and weights
        only), in one pass over the files. The second lets a store written then recognise the checkpoint; a
        reader with an identity of its own (GGUF, LoRA: ``content_hash`` overridden) has none."""
        if type(self).content_hash is not Checkpoint.content_hash:
            return self.content_hash(), None
        h = hashlib.sha256(read_regular(self.path / "config.json", MAX_JSON))
        for file in self.files:
            h.update(file.name.encode())
            with open_regular(file) as fh:
                hash_into(h, fh)
        legacy = h.hexdigest()
        for name in TOKENIZER_FILES + TOKENIZER_EXTRAS:
            file = self.path / name
            if file.is_file():
                h.update(b"\x00tokenizer file\x00" + name.encode() + b"\x00")
                with open_regular(file) as fh:
                    hash_into(h, fh)
        return h.hexdigest(), legacy


def _block(file: Path, name: str, start: int, stop: int, index: int | None = None) -> torch.Tensor:
    """Rows ``[start, stop)`` of a tensor (of its slice ``index`` along the first axis) as float32, checked finite.
    The file is opened for this block alone: safetensors maps it, and every page read through one mapping stays
    resident until it closes (reading a layer through one opening held its stored bytes too: +83 MiB at a Llama
    layer)."""
    try:
        with safe_open(str(file), framework="pt") as f:
            sl = f.get_slice(name)
            t = sl[start:stop] if index is None else sl[index, start:stop]
    except Exception as err:  # safetensors raises its own untyped errors for corrupt files
        raise CheckpointError(f"{file}: cannot read tensor {name!r}: {err}") from None
    return _finite(t.to(torch.float32), file, name)


def _finite(t: torch.Tensor, file: Path, name: str) -> torch.Tensor:
    """``t`` itself, or a clear error if it holds NaN or Inf. One summing pass decides the common case (a finite
    sum means every value is finite); only a sum that overflowed or met a NaN is checked element by element."""
    if not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all()):
        raise CheckpointError(f"{file}: tensor {name!r} holds NaN or Inf values; the checkpoint is corrupt.")
    return t


HASH_BLOCK = 1 << 18
"""Bytes read per step while hashing a file, into one reused buffer that stays in cache. Reading 16 MiB ``bytes``
at a time cost a fresh mapping per read under a run's fixed mmap threshold (``indexer.index.memory``: a page
fault per 4 KiB) and hashed them from memory: 0.41–0.52 s for a 268 MB file here, 0.21 s this way."""


def hash_into(h: "hashlib._Hash", fh) -> None:
    """Feed the rest of the binary file ``fh`` to the hash ``h`` (``hashlib.file_digest``'s loop, onto a running
    hash that spans several files)."""
    buf = bytearray(HASH_BLOCK)
    view = memoryview(buf)
    while n := fh.readinto(buf):
        h.update(view[:n])


def open_regular(path: Path):
    """``path`` opened for reading if it is a regular file (after links); a FIFO, device or socket is refused
    without blocking on it (the open itself does not wait for a writer)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read it ({err.strerror or err}).") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CheckpointError(f"{path}: not a regular file (a FIFO, device or socket); lensdb reads only "
                                  "regular files.")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; a clear error otherwise."""
    with open_regular(path) as fh:
        size = os.fstat(fh.fileno()).st_size  # read what is there (a read(limit) would allocate the limit)
        data = fh.read(min(size, limit) + 1)
    if len(data) > limit:
        raise CheckpointError(f"{path}: larger than the {limit >> 20} MiB lensdb reads for this file.")
    return data


def read_json(path: Path, limit: int = MAX_JSON) -> object:
    """A regular JSON file of at most ``limit`` bytes, parsed; a clear error for anything else."""
    raw = read_regular(path, limit)
    try:
        return json.loads(raw)
    except RecursionError:
        raise CheckpointError(f"{path}: not valid JSON (nested too deeply).") from None
    except ValueError as err:  # JSONDecodeError, or bytes that are not UTF-8
        raise CheckpointError(f"{path}: not valid JSON ({_short(err)}).") from None


def _short(err: Exception) -> str:
    """An exception's message without the input it quotes (a UnicodeDecodeError's repr holds every byte)."""
    if isinstance(err, UnicodeDecodeError):
        return f"not UTF-8 text at byte {err.start}"
    return str(err).splitlines()[0][:200] if str(err) else type(err).__name__


def check_regular_entries(folder: Path) -> None:
    """Every non-folder entry of ``folder`` must be a regular file after links: readers (tokenizers,
    transformers) open files there by name, and a FIFO or device would block or never end."""
    try:
        entries = list(folder.iterdir())
    except OSError as err:
        raise CheckpointError(f"{folder}: cannot list it ({err.strerror or err}).") from None
    for entry in entries:
        try:
            mode = entry.stat().st_mode
        except OSError:
            continue  # a dangling link is reported where it matters (_follow)
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise CheckpointError(f"{entry}: not a regular file (a FIFO, device or socket); remove it from the "
                                  "checkpoint folder.")


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
        with open_regular(file) as fh:
            size = os.fstat(fh.fileno()).st_size
            raw = fh.read(8)
            if len(raw) < 8:
                raise ValueError("file is shorter than a safetensors header")
            (n,) = struct.unpack("<Q", raw)
            if n > MAX_HEADER:  # the length field is not echoed: it is 8 bytes of whatever the file holds
                raise ValueError(f"its header length field is beyond the {MAX_HEADER}-byte limit")
            if n > size - 8:
                raise ValueError("its header length field points past the end of the file")
            try:
                header = json.loads(fh.read(n))
            except (ValueError, RecursionError):
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


def tensor_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    """The shapes of a safetensors file's tensors from its header (capped, checked against the data)."""
    return _read_header(file)


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
    check_regular_entries(p)
    config = read_json(cfg_file)
    if not isinstance(config, dict):
        raise CheckpointError(f"{cfg_file}: expected a JSON object.")

    where: dict[str, Path] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    if (p / SHARD_INDEX).exists():
        try:
            weight_map: dict[str, str] = read_json(_follow(p / SHARD_INDEX))["weight_map"]  # type: ignore[index]
            if not isinstance(weight_map, dict) or not all(
                    isinstance(v, str) and v and "/" not in v and v not in (".", "..") for v in weight_map.values()):
                raise TypeError("weight_map must map tensor names to shard file names in the folder")
        except (KeyError, TypeError) as err:
            raise CheckpointError(f"{p / SHARD_INDEX}: not a valid shard index ({_short(err)}).") from None
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
            return int(read_json(state)["global_step"])  # type: ignore[index]
        except (CheckpointError, ValueError, KeyError, TypeError, OverflowError):
            return None
    return None


def default_name(ckpt: Checkpoint) -> str:
    """The model name a checkpoint is indexed as by default: its folder's, or the parent's for a step folder."""
    folder = ckpt.path.parent if _STEP.search(ckpt.path.name) else ckpt.path
    return folder.name.lower()

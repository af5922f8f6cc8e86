"""Reading a dictionary of directions from a local folder or file: SAELens, EleutherAI sparsify, Gemma Scope, and
lensdb's plain direction sets. Plain I/O: the one place that knows these formats' file and tensor names.

Every format becomes one ``Dictionary``: decoder rows (what each latent *writes* at ``hook_out``) and encoder rows
(what it *reads* at ``hook_in``), both ``[n, d]`` row vectors in the coordinates of their hook, read lazily one
tensor at a time. Headers are read first (shapes, the hook names) so a bad file fails before anything is written.

- **SAELens** (``cfg.json`` + ``sae_weights.safetensors``, as ``SAE.save_model`` writes them): ``W_enc [d_in,
  d_sae]``, ``W_dec [d_sae, d_in]``, ``b_enc``, ``b_dec``; gated SAEs have ``b_gate``, ``b_mag``, ``r_mag``
  instead of ``b_enc`` (their encoder direction is ``W_enc`` either way), JumpReLU a ``threshold``, top-k a
  ``k`` in the config. The hook is ``metadata.hook_name`` (SAELens 6) or ``hook_name`` (earlier); transcoders
  (``architecture`` ``transcoder``/``skip_transcoder``/``jumprelu_transcoder``) write at ``hook_name_out``
  with ``W_dec [d_sae, d_out]``.
- **sparsify** (one folder per hookpoint: ``cfg.json`` + ``sae.safetensors``, as ``SparseCoder.save_to_disk``
  writes them): ``encoder.weight [num_latents, d_in]``, ``encoder.bias``, ``W_dec [num_latents, d_in]``,
  ``b_dec``; the hookpoint is the folder's name (a module path such as ``layers.6`` or ``h.6.mlp``);
  ``transcode: true`` makes it a transcoder of that module (reads its input, writes its output).
- **Gemma Scope** (``params.npz``: ``W_enc [d_model, d_sae]``, ``W_dec``, ``b_enc``, ``b_dec``, ``threshold``):
  no hook is stored; it comes from ``--hook`` or from the release's path (``…-res/layer_12/…`` → resid_post,
  ``-mlp`` → mlp_out, ``-att`` → attn.hook_z; ``-transcoders`` read ln2's output and write mlp_out).
- **directions** (lensdb's plain format for probes, steering vectors, concept directions): ``directions.json``
  ``{"model": NAME, "hook": HOOK, "role": "writes" | "reads", "labels": [...]}`` beside
  ``directions.safetensors`` holding one tensor ``directions [n, d]``.
"""

import hashlib
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from indexer.errors import CheckpointError
from indexer.model.checkpoint import MAX_JSON, check_regular_entries, hash_into, open_regular, read_json, tensor_shapes

SAELENS_CFG, SAELENS_WEIGHTS = "cfg.json", "sae_weights.safetensors"
SPARSIFY_WEIGHTS = "sae.safetensors"
GEMMASCOPE_PARAMS = "params.npz"
DIRECTIONS_JSON, DIRECTIONS_WEIGHTS = "directions.json", "directions.safetensors"
FORMATS = ("saelens", "sparsify", "gemmascope", "directions")
SAELENS_ARCHITECTURES = ("standard", "gated", "jumprelu", "topk", "batchtopk", "transcoder", "skip_transcoder",
                         "jumprelu_transcoder")
MAX_LABEL = 1000  # characters of one direction label


class DictionaryError(CheckpointError):
    """A dictionary file that cannot be read or does not fit its model."""


@dataclass
class Dictionary:
    """One dictionary as lensdb reads it. ``decoder()`` / ``encoder()`` return ``[n, d]`` float32 rows (checked
    finite) or raise; ``None`` where the dictionary has no such side (a direction set of one role)."""

    path: Path
    format: str
    architecture: str
    kind: str  # sae, transcoder or directions
    n: int
    hook_in: str | None  # where the encoder rows read (None: no encoder)
    hook_out: str | None  # where the decoder rows write (None: no decoder)
    d_in: int
    d_out: int
    model_name: str | None
    default_name: str
    files: list[Path]
    labels: list[str] | None = None
    config: dict = field(default_factory=dict)
    _decoder: Callable[[], torch.Tensor] | None = field(default=None, repr=False)
    _encoder: Callable[[], torch.Tensor] | None = field(default=None, repr=False)

    def decoder(self) -> torch.Tensor | None:
        return None if self._decoder is None else _finite(self._decoder(), self.path, "decoder")

    def encoder(self) -> torch.Tensor | None:
        return None if self._encoder is None else _finite(self._encoder(), self.path, "encoder")

    def content_hash(self) -> str:
        """sha256 over the dictionary's files (names and bytes): its identity in the store."""
        h = hashlib.sha256()
        for file in self.files:
            h.update(b"\x00" + file.name.encode() + b"\x00")
            with open_regular(file) as fh:
                hash_into(h, fh)
        return h.hexdigest()


def _finite(t: torch.Tensor, path: Path, side: str) -> torch.Tensor:
    t = t.to(torch.float32)
    if not torch.isfinite(t).all():
        raise DictionaryError(f"{path}: the {side} holds NaN or Inf values; the file is corrupt.")
    return t.contiguous()


def detect(path: Path) -> str:
    """Which format the folder (or file) at ``path`` holds; a clear error naming what lensdb reads otherwise."""
    if path.is_file():
        if path.name == GEMMASCOPE_PARAMS or path.suffix == ".npz":
            return "gemmascope"
        if path.name in (DIRECTIONS_JSON, DIRECTIONS_WEIGHTS):
            return "directions"
        raise DictionaryError(f"{path}: not a dictionary file lensdb reads (params.npz, or a folder).")
    if (path / DIRECTIONS_JSON).exists():
        return "directions"
    if (path / SAELENS_WEIGHTS).exists():
        return "saelens"
    if (path / SPARSIFY_WEIGHTS).exists():
        return "sparsify"
    if (path / GEMMASCOPE_PARAMS).exists():
        return "gemmascope"
    raise DictionaryError(
        f"{path}: no dictionary found: expected {SAELENS_CFG} + {SAELENS_WEIGHTS} (SAELens), {SAELENS_CFG} + "
        f"{SPARSIFY_WEIGHTS} (sparsify), {GEMMASCOPE_PARAMS} (Gemma Scope) or {DIRECTIONS_JSON} + "
        f"{DIRECTIONS_WEIGHTS} (a direction set).")


def looks_like_dictionary(path: Path) -> str | None:
    """The dictionary format at ``path`` when it holds one and no checkpoint (``lensdb index`` points there)."""
    if path.is_dir() and (path / "config.json").exists():
        return None
    try:
        return detect(path)
    except (DictionaryError, OSError):
        return None


def read_dictionary(path: str | Path, hook: str | None = None) -> Dictionary:
    """The dictionary at ``path`` (format detected), its headers checked; ``hook`` overrides the stored hook."""
    if "\x00" in str(path):
        raise DictionaryError(f"{str(path)!r}: a path cannot contain a NUL character.")
    p = Path(path)
    if not p.exists():
        raise DictionaryError(f"{p}: no such file or folder.")
    if p.is_dir():
        check_regular_entries(p)
    fmt = detect(p)
    d = {"saelens": _saelens, "sparsify": _sparsify, "gemmascope": _gemmascope, "directions": _directions}[fmt](p)
    if hook is not None:
        if d.kind == "transcoder" and d.hook_in != d.hook_out:
            raise DictionaryError(f"{p}: a transcoder reads at {d.hook_in} and writes at {d.hook_out}; --hook "
                                  "cannot name both. Leave it out.")
        d.hook_in = hook if d.hook_in is not None or d._encoder is not None else None
        d.hook_out = hook if d.hook_out is not None or d._decoder is not None else None
    if (d._encoder is not None and not d.hook_in) or (d._decoder is not None and not d.hook_out):
        raise DictionaryError(f"{p}: the {d.format} file names no hook point; pass --hook "
                              "(e.g. blocks.6.hook_resid_post).")
    if d.n < 1:
        raise DictionaryError(f"{p}: the dictionary has no latents.")
    return d


def _config(file: Path) -> dict:
    if not file.exists():
        raise DictionaryError(f"{file.parent}: no {file.name}.")
    cfg = read_json(file, MAX_JSON)
    if not isinstance(cfg, dict):
        raise DictionaryError(f"{file}: expected a JSON object.")
    return cfg


def _int(cfg: dict, key: str, where: Path) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DictionaryError(f"{where}: {key} must be a positive integer, not {value!r}.")
    return value


def _shape(shapes: dict[str, tuple[int, ...]], name: str, want: tuple[int, ...], file: Path) -> None:
    if name not in shapes:
        raise DictionaryError(f"{file}: tensor {name!r} is missing; this is not a complete dictionary.")
    if shapes[name] != want:
        raise DictionaryError(f"{file}: tensor {name!r} has shape {list(shapes[name])} but the config implies "
                              f"{list(want)}; the config does not match the weights.")


def _loader(file: Path, name: str, transpose: bool = False) -> Callable[[], torch.Tensor]:
    def load() -> torch.Tensor:
        from safetensors import safe_open

        try:
            with safe_open(str(file), framework="pt") as f:
                t = f.get_tensor(name)
        except Exception as err:  # safetensors raises its own untyped errors for corrupt files
            raise DictionaryError(f"{file}: cannot read tensor {name!r}: {err}") from None
        return t.T if transpose else t

    return load


def _saelens(p: Path) -> Dictionary:
    cfg = _config(p / SAELENS_CFG)
    weights = p / SAELENS_WEIGHTS
    found = cfg.get("metadata")
    meta: dict = found if isinstance(found, dict) else {}
    arch = str(cfg.get("architecture") or ("topk" if cfg.get("activation_fn_str") == "topk" else "standard"))
    if arch not in SAELENS_ARCHITECTURES:
        raise DictionaryError(f"{p / SAELENS_CFG}: architecture {arch!r} is not one lensdb reads; known: "
                              f"{', '.join(SAELENS_ARCHITECTURES)}.")
    d_in, n = _int(cfg, "d_in", p / SAELENS_CFG), _int(cfg, "d_sae", p / SAELENS_CFG)
    transcoder = "transcoder" in arch
    d_out = _int(cfg, "d_out", p / SAELENS_CFG) if transcoder else d_in
    shapes = tensor_shapes(weights)
    _shape(shapes, "W_enc", (d_in, n), weights)
    _shape(shapes, "W_dec", (n, d_out), weights)
    hook = meta.get("hook_name") or cfg.get("hook_name")
    hook_out = (cfg.get("hook_name_out") or meta.get("hook_name_out")) if transcoder else hook
    if transcoder and not hook_out:
        raise DictionaryError(f"{p / SAELENS_CFG}: a transcoder needs hook_name_out (where it writes).")
    model = meta.get("model_name") or cfg.get("model_name")
    return Dictionary(
        path=p.resolve(), format="saelens", architecture=arch, kind="transcoder" if transcoder else "sae", n=n,
        hook_in=hook, hook_out=hook_out, d_in=d_in, d_out=d_out, model_name=model if isinstance(model, str) else None,
        default_name=p.name, files=[p / SAELENS_CFG, weights], config={"d_in": d_in, "d_sae": n},
        _decoder=_loader(weights, "W_dec"), _encoder=_loader(weights, "W_enc", transpose=True))


def _sparsify(p: Path) -> Dictionary:
    cfg = _config(p / SAELENS_CFG)
    weights = p / SPARSIFY_WEIGHTS
    d_in = _int(cfg, "d_in", p / SAELENS_CFG)
    n = cfg.get("num_latents") or d_in * _int(cfg, "expansion_factor", p / SAELENS_CFG)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DictionaryError(f"{p / SAELENS_CFG}: num_latents must be a positive integer, not {n!r}.")
    shapes = tensor_shapes(weights)
    _shape(shapes, "encoder.weight", (n, d_in), weights)
    _shape(shapes, "W_dec", (n, d_in), weights)
    transcoder = bool(cfg.get("transcode"))
    hook = p.name
    return Dictionary(
        path=p.resolve(), format="sparsify", architecture="transcoder" if transcoder else "topk",
        kind="transcoder" if transcoder else "sae", n=n,
        hook_in=f"{hook}:input" if transcoder else hook, hook_out=hook, d_in=d_in, d_out=d_in, model_name=None,
        default_name=f"{p.parent.name}/{hook}" if p.parent.name else hook, files=[p / SAELENS_CFG, weights],
        config={"d_in": d_in, "num_latents": n, "k": cfg.get("k")},
        _decoder=_loader(weights, "W_dec"), _encoder=_loader(weights, "encoder.weight"))


_GEMMA_KIND = re.compile(r"-(res|mlp|att|transcoders?)(?:-|$)")
_GEMMA_LAYER = re.compile(r"^layer_(\d+)$")


def _gemma_hooks(p: Path) -> tuple[str | None, str | None, str]:
    """(hook_in, hook_out, kind) from a Gemma Scope release path (``gemma-scope-2b-pt-res/layer_12/…``)."""
    layer = next((int(m.group(1)) for part in p.parts if (m := _GEMMA_LAYER.match(part))), None)
    kind = next((m.group(1) for part in p.parts if (m := _GEMMA_KIND.search(part))), None)
    if layer is None or kind is None:
        return None, None, "sae"
    if kind.startswith("transcoder"):
        return f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.hook_mlp_out", "transcoder"
    point = {"res": "hook_resid_post", "mlp": "hook_mlp_out", "att": "attn.hook_z"}[kind]
    return f"blocks.{layer}.{point}", f"blocks.{layer}.{point}", "sae"


def _npz_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    """Shapes of the arrays in an ``.npz`` from their ``.npy`` headers, without reading the data."""
    import numpy as np

    shapes: dict[str, tuple[int, ...]] = {}
    try:
        with open_regular(file) as fh, zipfile.ZipFile(fh) as z:
            for info in z.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with z.open(info) as member:
                    major, _ = np.lib.format.read_magic(member)
                    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                    shape, _, _ = read(member)
                shapes[info.filename[:-4]] = tuple(int(x) for x in shape)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise DictionaryError(f"{file}: not a readable .npz file ({str(err)[:200]}); re-download it.") from None
    return shapes


def _npz_loader(file: Path, name: str) -> Callable[[], torch.Tensor]:
    def load() -> torch.Tensor:
        import numpy as np

        try:
            with open_regular(file) as fh, np.load(fh, allow_pickle=False) as z:
                return torch.from_numpy(np.ascontiguousarray(z[name], dtype=np.float32))
        except (ValueError, OSError, KeyError, zipfile.BadZipFile) as err:
            raise DictionaryError(f"{file}: cannot read array {name!r} ({str(err)[:200]}).") from None

    return load


def _gemmascope(p: Path) -> Dictionary:
    file = p if p.is_file() else p / GEMMASCOPE_PARAMS
    shapes = _npz_shapes(file)
    if "W_dec" not in shapes:
        raise DictionaryError(f"{file}: array 'W_dec' is missing; this is not a complete Gemma Scope dictionary.")
    if len(shapes["W_dec"]) != 2:
        raise DictionaryError(f"{file}: W_dec has shape {list(shapes['W_dec'])}; expected [d_sae, d_model].")
    n, d_out = shapes["W_dec"]
    d_in = shapes.get("W_enc", (0, 0))[0]
    _shape(shapes, "W_enc", (d_in, n), file)
    hook_in, hook_out, kind = _gemma_hooks(file.parent)
    return Dictionary(
        path=file.resolve(), format="gemmascope", architecture="jumprelu" if "threshold" in shapes else "standard",
        kind=kind, n=n, hook_in=hook_in, hook_out=hook_out, d_in=d_in, d_out=d_out, model_name=None,
        default_name="/".join(file.parent.parts[-3:]), files=[file], config={"d_sae": n},
        _decoder=_npz_loader(file, "W_dec"), _encoder=lambda: _npz_loader(file, "W_enc")().T)


def _directions(p: Path) -> Dictionary:
    folder = p.parent if p.is_file() else p
    meta = _config(folder / DIRECTIONS_JSON)
    weights = folder / DIRECTIONS_WEIGHTS
    if not weights.exists():
        raise DictionaryError(f"{folder}: no {DIRECTIONS_WEIGHTS} beside {DIRECTIONS_JSON}.")
    role = meta.get("role")
    if role not in ("writes", "reads"):
        raise DictionaryError(f"{folder / DIRECTIONS_JSON}: role must be \"writes\" or \"reads\", not {role!r}.")
    shapes = tensor_shapes(weights)
    if "directions" not in shapes:
        raise DictionaryError(f"{weights}: tensor 'directions' is missing.")
    if len(shapes["directions"]) != 2:
        raise DictionaryError(f"{weights}: tensor 'directions' has shape {list(shapes['directions'])}; expected "
                              "[n, d].")
    n, d = shapes["directions"]
    labels = meta.get("labels")
    if labels is not None and (not isinstance(labels, list) or len(labels) != n
                               or not all(isinstance(x, str) and len(x) <= MAX_LABEL for x in labels)):
        raise DictionaryError(f"{folder / DIRECTIONS_JSON}: labels must be a list of {n} strings (one per row, at "
                              f"most {MAX_LABEL} characters each).")
    hook = meta.get("hook")
    if hook is not None and not isinstance(hook, str):
        raise DictionaryError(f"{folder / DIRECTIONS_JSON}: hook must be a string.")
    model = meta.get("model")
    load = _loader(weights, "directions")
    return Dictionary(
        path=folder.resolve(), format="directions", architecture="directions", kind="directions", n=n,
        hook_in=hook if role == "reads" else None, hook_out=hook if role == "writes" else None, d_in=d, d_out=d,
        model_name=model if isinstance(model, str) else None, default_name=folder.name,
        files=[folder / DIRECTIONS_JSON, weights], labels=labels, config={"role": role},
        _decoder=load if role == "writes" else None, _encoder=load if role == "reads" else None)


__all__ = ["FORMATS", "Dictionary", "DictionaryError", "detect", "read_dictionary"]

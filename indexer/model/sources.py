"""What ``lensdb index`` can be given, resolved to one readable checkpoint: a Hugging Face folder, a hub id from
the local cache (``--revision``), a llama.cpp GGUF file, or a PEFT/LoRA adapter folder over its base model.

Each resolves to a ``Source``: the ``Checkpoint`` the adapters read tensors from, the vocabulary, and the name,
label and step it is indexed under by default, with ``flags`` saying how it was read (recorded in the run's
``basis_flags["source"]``). Plain I/O: the formats' readers live in their own modules and load lazily.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from indexer.errors import CheckpointError
from indexer.model.checkpoint import Checkpoint, default_name, folder_step, name_step, open_checkpoint
from indexer.model.hub import looks_like_repo_id, resolve_cached
from indexer.model.quantized import dequantized
from indexer.model.vocab import Vocabulary, load_vocabulary
from schema.errors import LensdbError

LoraMode = str  # "merged" (W + scale · B·A) or "delta" (the adapter's scale · B·A alone)


@dataclass
class Source:
    ckpt: Checkpoint
    name: str
    label: str
    step: int | None
    flags: dict[str, object] = field(default_factory=dict)
    vocab: Callable[[int], Vocabulary] | None = None

    def vocabulary(self, size: int) -> Vocabulary:
        """The tokens of ``size`` embedding rows: from the source's own metadata (GGUF) or its tokenizer files."""
        return self.vocab(size) if self.vocab is not None else load_vocabulary(self.ckpt.path, size)

    @property
    def plain(self) -> bool:
        """Whether the checkpoint is a plain folder that any process can reopen from its path alone."""
        return not {"format", "lora", "quantization"} & set(self.flags)


def open_source(location: str | Path, revision: str | None = None, base: str | Path | None = None,
                lora: LoraMode = "merged") -> Source:
    """Resolve what the user named. A path that exists is read as it is; anything else is looked up as a hub id
    in the local cache (never downloaded). ``base``: the base model of a PEFT adapter folder (default: the one
    its ``adapter_config.json`` names, itself a folder or a cached hub id)."""
    text = str(location)
    if "\x00" in text:
        raise LensdbError(f"{text!r}: a path cannot contain a NUL character.")
    path = Path(text).expanduser()
    hub = None
    if not path.exists() and not path.is_symlink():
        if not looks_like_repo_id(text):
            raise CheckpointError(f"{path}: no such folder. Pass the folder that holds config.json and the weights, "
                                  "a .gguf file, or a Hugging Face model id from the local cache.")
        hub = resolve_cached(text, revision)
        path = hub.path
    elif revision is not None:
        raise LensdbError(f"--revision goes with a Hugging Face model id; {text} is a local path.")
    if path.is_file() and path.suffix.lower() == ".gguf":
        from indexer.model.gguf_file import open_gguf

        return open_gguf(path)
    if path.is_dir() and (path / "adapter_config.json").is_file():
        from indexer.model.peft_adapter import open_peft

        return open_peft(path, base, lora)
    if base is not None or lora != "merged":
        flag = "--base" if base is not None else "--lora delta"
        raise LensdbError(f"{flag} goes with a PEFT adapter folder (one with adapter_config.json); {text} is not one.")
    from indexer.model.dictionary import looks_like_dictionary

    if (fmt := looks_like_dictionary(path)) is not None:
        raise CheckpointError(f"{path} holds a {fmt} dictionary, not a checkpoint; index it against its model with "
                              f"`lensdb index-dictionary {path} --model NAME`.")
    ckpt = dequantized(open_checkpoint(path))
    quant = {"quantization": ckpt.config["quantization_config"]} if "quantization_config" in ckpt.config else {}
    if hub is None:
        return Source(ckpt, default_name(ckpt), ckpt.path.name, folder_step(ckpt.path), flags=quant)
    label = hub.revision if hub.revision != hub.sha else hub.sha[:12]
    step = name_step(hub.revision.rsplit("/", 1)[-1])
    return Source(ckpt, hub.repo_id.rsplit("/", 1)[-1].lower(), label, step if step is not None else folder_step(path),
                  flags={"hub_id": hub.repo_id, "revision": hub.revision, "commit": hub.sha, **quant})

"""Adapter registry: which family reads which ``model_type``."""

import difflib

from indexer.adapters.base import Adapter, Component, ComponentSpec, Dims, Norm
from indexer.adapters.bert import BertAdapter
from indexer.adapters.gpt2 import GPT2Adapter
from indexer.checkpoint import Checkpoint
from indexer.errors import UnsupportedArchitecture

ADAPTERS: tuple[type[Adapter], ...] = (GPT2Adapter, BertAdapter)

__all__ = ["ADAPTERS", "Adapter", "Component", "ComponentSpec", "Dims", "Norm", "adapter_for", "supported"]


def supported() -> dict[str, type[Adapter]]:
    """model_type → adapter class, for every architecture lensdb reads."""
    return {mt: cls for cls in ADAPTERS for mt in cls.model_types}


def adapter_for(ckpt: Checkpoint) -> Adapter:
    """The adapter for this checkpoint; a clear error naming the nearest supported model_type if none."""
    table = supported()
    model_type = ckpt.model_type
    if model_type not in table:
        near = difflib.get_close_matches(model_type, list(table), n=1, cutoff=0.0)
        nearest = f" The nearest supported one is {near[0]!r}." if near and model_type else ""
        raise UnsupportedArchitecture(
            f"{ckpt.path}: model_type {model_type or '(none)'!r} is not supported.{nearest} "
            f"Supported: {', '.join(sorted(table))}."
        )
    return table[model_type](ckpt)

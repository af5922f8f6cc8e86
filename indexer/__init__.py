"""Checkpoints (and, later, dictionaries) → canonical vectors → chunked projections → rows for the store;
and the analyses that need a model's weights (traces, alignment, stitching).

Owns, one sub-package per concern:
- ``model``: reading a checkpoint — files and tensors (``checkpoint``), tokens (``vocab``), one declarative
  adapter per family (``adapters``), a forward pass with hooks (``forward``). Plain I/O, no store.
- ``math``: pure functions, tensors in and tensors out — bases and norm folding, chunked top-k projection,
  attention heads as token maps, correlations across models, the Muppet decomposition.
- ``index``: one index run — options, plan, projector, executors (local and Ray behind one interface),
  the unit writer, head maps and the rows it writes about what it indexed.
- ``watch``: registered folders, finding complete checkpoints, the watch cycle.
- ``analyses``: traces of forward passes, cross-model alignment, stitching and fine-tuning diffs.

May import: torch, transformers, safetensors, tokenizers, scipy, ``schema`` and the SQL builders of
``queries.sql``; never ``service`` or the rest of ``queries``. Importing ``indexer`` itself is cheap: its
public names below load their modules on first use.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from indexer.index.options import IndexOptions, IndexResult
    from indexer.index.run import index_checkpoint

_EXPORTS = {"IndexOptions": "indexer.index.options", "IndexResult": "indexer.index.options",
            "index_checkpoint": "indexer.index.run"}
__all__ = ["IndexOptions", "IndexResult", "index_checkpoint"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'indexer' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)

"""Adapter registry: which family reads which ``model_type``."""

import difflib
import os

from indexer.errors import UnsupportedArchitecture
from indexer.model.adapters.base import Adapter, Component, ComponentSpec, Dims, Norm
from indexer.model.adapters.bert import BertAdapter
from indexer.model.adapters.distilbert import DistilBertAdapter
from indexer.model.adapters.falcon import FalconAdapter
from indexer.model.adapters.gemma import Gemma2Adapter, GemmaAdapter
from indexer.model.adapters.gpt2 import GPT2Adapter
from indexer.model.adapters.gpt_neo import GPTNeoAdapter
from indexer.model.adapters.gptj import GPTJAdapter
from indexer.model.adapters.llama import LlamaAdapter
from indexer.model.adapters.mixtral import MixtralAdapter
from indexer.model.adapters.neox import GPTNeoXAdapter
from indexer.model.adapters.olmo import Olmo2Adapter, OlmoAdapter
from indexer.model.adapters.opt import OPTAdapter
from indexer.model.adapters.phi3 import Phi3Adapter
from indexer.model.adapters.qwen_moe import OlmoeAdapter, QwenMoeAdapter
from indexer.model.adapters.stablelm import StableLmAdapter
from indexer.model.checkpoint import Checkpoint

ADAPTERS: tuple[type[Adapter], ...] = (
    GPT2Adapter, GPTNeoAdapter, GPTJAdapter, GPTNeoXAdapter, OPTAdapter, LlamaAdapter, GemmaAdapter, Gemma2Adapter,
    Phi3Adapter, OlmoAdapter, Olmo2Adapter, FalconAdapter, StableLmAdapter, MixtralAdapter, QwenMoeAdapter,
    OlmoeAdapter, BertAdapter, DistilBertAdapter,
)

__all__ = ["ADAPTERS", "Adapter", "Component", "ComponentSpec", "Dims", "Norm", "adapter_for",
           "nearest_model_type", "supported"]


def supported() -> dict[str, type[Adapter]]:
    """model_type → adapter class, for every architecture lensdb reads."""
    return {mt: cls for cls in ADAPTERS for mt in cls.model_types}


def nearest_model_type(model_type: str) -> str:
    """The supported model_type most like ``model_type``; ties go to the longer shared prefix, then A→Z."""

    def rank(candidate: str) -> tuple[float, int, str]:
        ratio = difflib.SequenceMatcher(None, model_type, candidate).ratio()
        prefix = len(os.path.commonprefix([model_type, candidate]))
        return (-ratio, -prefix, candidate)

    return min(supported(), key=rank)


def adapter_for(ckpt: Checkpoint) -> Adapter:
    """The adapter for this checkpoint; a clear error naming the nearest supported model_type if none."""
    table = supported()
    model_type = ckpt.model_type
    if model_type not in table:
        nearest = f" The nearest supported one is {nearest_model_type(model_type)!r}." if model_type else ""
        raise UnsupportedArchitecture(
            f"{ckpt.path}: model_type {model_type or '(none)'!r} is not supported.{nearest} "
            f"Supported: {', '.join(sorted(table))}."
        )
    return table[model_type](ckpt)

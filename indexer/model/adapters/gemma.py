"""Gemma family. Gemma: a Llama-shaped decoder whose RMSNorms scale by ``1 + w`` (``norm_offset``), whose input
embeddings are multiplied by √d (a positive scalar: no direction changes, so embedding rows are indexed as
stored), a GeGLU MLP (gelu gate, same three projections) and a tied unembedding.

Gemma-2 and Gemma-3 add "sandwich" norms: ``post_attention_layernorm`` and ``post_feedforward_layernorm``
normalise each branch's output before it joins the stream (their gains are folded into ``attn_o`` and
``ff_value``), and ``pre_feedforward_layernorm`` is the MLP's input norm. Gemma-2 soft-caps the final logits
(``cap · tanh(logits / cap)``) and attention scores: monotone in each logit, so which tokens rank first is
unchanged; scores and z-scores are those of the logits before capping. Gemma-3 adds QK-norm after the
projections (rows unchanged). Multimodal Gemma-3 checkpoints (``gemma3``) are refused: index their text model."""

from dataclasses import replace
from typing import ClassVar

from indexer.model.adapters.base import Dims
from indexer.model.adapters.llama import LLAMA_LAYOUT, gated_dims
from indexer.model.adapters.standard import ALL_GATED, StandardAdapter


class GemmaAdapter(StandardAdapter):
    family = "gemma"
    notes = 'RMSNorm gains 1 + w, √d-scaled embeddings (a scalar: rows as stored), GeGLU, tied'
    model_types: ClassVar[tuple[str, ...]] = ("gemma",)
    components = ALL_GATED
    prefixes = ("model.", "")
    layout = replace(LLAMA_LAYOUT, norm_offset=1.0)

    def _dims(self) -> Dims:
        return gated_dims(self.ckpt)


class Gemma2Adapter(GemmaAdapter):
    family = "gemma2"
    notes = ("Gemma-2 / Gemma-3 text: sandwich norms (branch-output gains folded into attn_o and ff_value), 1 + w "
             "gains; logit soft-capping is monotone (top tokens unchanged); multimodal gemma3 refused")
    model_types = ("gemma2", "gemma3_text")
    layout = replace(LLAMA_LAYOUT, norm_offset=1.0, ff_norm="{p}layers.{i}.pre_feedforward_layernorm",
                     attn_out_norm="{p}layers.{i}.post_attention_layernorm",
                     ff_out_norm="{p}layers.{i}.post_feedforward_layernorm")

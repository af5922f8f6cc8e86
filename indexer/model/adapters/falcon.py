"""Falcon (TII): LayerNorm decoder, fused ``query_key_value`` in one of three layouts, rotary (or ALiBi),
tied embedding by default.

Layouts of the fused rows, as ``FalconAttention._split_heads`` reads them:
- ``new_decoder_architecture`` (Falcon-40B/180B): per key/value group ``[q × (n_heads / n_kv) | k | v]``;
  query head h uses K/V head h // (n_heads / n_kv), as under grouped-query attention;
- ``multi_query`` (Falcon-7B): ``[q (n_heads · d_head) | k (d_head) | v (d_head)]``, one K/V head;
- neither (Falcon-RW): per head ``[q_h | k_h | v_h]``, as GPT-NeoX.

Norms: with ``parallel_attn`` attention and MLP read one ``input_layernorm`` (or ``ln_attn`` and ``ln_mlp``
when the new architecture keeps two); without, the MLP reads ``post_attention_layernorm``.
"""

import torch

from indexer.model.adapters.base import Dims, config_int
from indexer.model.adapters.standard import ALL_PLAIN, Layout, StandardAdapter
from indexer.model.checkpoint import Checkpoint


def _layout(attn_norm: str, ff_norm: str) -> Layout:
    return Layout(
        block="{p}h.{i}",
        embed="{p}word_embeddings", unembed=("lm_head",), final_norm="{p}ln_f", norm_kind="layernorm",
        attn_norm=f"{{p}}h.{{i}}.{attn_norm}", ff_norm=f"{{p}}h.{{i}}.{ff_norm}",
        qkv="{p}h.{i}.self_attention.query_key_value", attn_out="{p}h.{i}.self_attention.dense",
        ff_in="{p}h.{i}.mlp.dense_h_to_4h", ff_out="{p}h.{i}.mlp.dense_4h_to_h",
    )


class FalconAdapter(StandardAdapter):
    family = "falcon"
    notes = ('fused query_key_value in its three layouts (multi-query, grouped new architecture, per head), '
             'parallel or sequential, tied')
    model_types = ("falcon",)
    components = ALL_PLAIN
    prefixes = ("transformer.", "")
    layout: Layout = _layout("input_layernorm", "input_layernorm")  # type: ignore[misc]

    def __init__(self, ckpt: Checkpoint) -> None:
        cfg = ckpt.config
        self.new_arch = bool(cfg.get("new_decoder_architecture"))
        self.multi_query = bool(cfg.get("multi_query", True)) and not self.new_arch
        if not cfg.get("parallel_attn", True):
            self.layout = _layout("input_layernorm", "post_attention_layernorm")
        elif self.new_arch and cfg.get("num_ln_in_parallel_attn") in (None, 2):
            self.layout = _layout("ln_attn", "ln_mlp")
        super().__init__(ckpt)

    def _dims(self) -> Dims:
        d = config_int(self.ckpt, "hidden_size")
        n_heads = config_int(self.ckpt, "num_attention_heads")
        kv = config_int(self.ckpt, "num_kv_heads", default=n_heads) if self.new_arch else (
            1 if self.multi_query else n_heads)
        return Dims(n_layers=config_int(self.ckpt, "num_hidden_layers"), d_model=d,
                    d_ff=config_int(self.ckpt, "ffn_hidden_size", default=4 * d), n_heads=n_heads,
                    vocab_size=config_int(self.ckpt, "vocab_size"), n_kv_heads=kv)

    def qkv_shapes(self) -> dict[str, tuple[int, ...]]:
        rows = (self.dims.n_heads + 2 * self.dims.kv_heads) * self.dims.head_size
        return {self._w("qkv", i): (rows, self.dims.d_model) for i in range(self.dims.n_layers)}

    def split_fused(self, fused: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n, kv, dh = self.dims.n_heads, self.dims.kv_heads, self.dims.head_size
        d = fused.shape[1]
        if self.new_arch:
            groups = fused.view(kv, n // kv + 2, dh, d)
            q, k, v = groups[:, :-2].reshape(n * dh, d), groups[:, -2].reshape(kv * dh, d), groups[:, -1].reshape(
                kv * dh, d)
        elif self.multi_query:
            q, k, v = fused.split([n * dh, dh, dh])
        else:
            per_head = fused.view(n, 3, dh, d)
            q, k, v = (per_head[:, j].reshape(n * dh, d) for j in range(3))
        return q.contiguous(), k.contiguous(), v.contiguous()

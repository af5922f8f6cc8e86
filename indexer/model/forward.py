"""One forward pass of a checkpoint on the CPU, with hooks on the modules the adapter names (``module_path``)
and optional interventions on FF neurons and attention heads. I/O and hooks only: the math is in
``indexer.math.decompose``.

Interventions act on the input of a block's output projection, at every position:

* ``zero L.N``: FF neuron N of layer L gets activation 0 (its value vector is not written);
* ``boost L.N``: its activation is set to ``boost_value`` (default 10), so it writes boost_value · v_N — as
  LM-Debugger sets a chosen neuron's coefficient to a high value;
* ``zero-head L.H``: head H of layer L writes nothing (its slice of z is zeroed before W_O).
"""

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from indexer.errors import CheckpointError
from indexer.math.decompose import Decomposition, LayerCapture, NormApplied, applied_norm, decompose
from indexer.model.adapters import Adapter
from schema.errors import LensdbError

_UNIT = re.compile(r"^(\d+)\.(\d+)$")


@dataclass(frozen=True)
class Intervention:
    kind: Literal["zero", "boost"]
    target: Literal["neuron", "head"]
    layer: int
    index: int

    def __str__(self) -> str:
        return f"{self.kind}{'-head' if self.target == 'head' else ''} {self.layer}.{self.index}"


def parse_unit(text: str, what: str) -> tuple[int, int]:
    """``"11.2034"`` → (11, 2034); a one-line error for anything else."""
    m = _UNIT.match(text.strip())
    if not m:
        raise LensdbError(f"{what} {text!r} is not LAYER.INDEX (e.g. 11.2034).")
    return int(m.group(1)), int(m.group(2))


def interventions(adapter: Adapter, zero: list[str], boost: list[str], zero_heads: list[str]) -> list[Intervention]:
    """Parse and check LAYER.INDEX strings against the model's sizes."""
    d = adapter.dims
    out = []
    for kind, target, items in (("zero", "neuron", zero), ("boost", "neuron", boost), ("zero", "head", zero_heads)):
        for item in items:
            layer, index = parse_unit(item, "head" if target == "head" else "neuron")
            size = d.n_heads if target == "head" else d.d_ff
            if layer >= d.n_layers or index >= size:
                raise LensdbError(f"{target} {item} is outside the model: layers 0–{d.n_layers - 1}, "
                                  f"{target}s 0–{size - 1}.")
            out.append(Intervention(kind, target, layer, index))  # type: ignore[arg-type]
    return out


Readout = Literal["lm_head", "mlm_head", "none"]
"""How a trace reads a state out: a causal LM's head (final norm, W_U, bias), an encoder checkpoint's own masked-LM
head (transform: dense, GELU, LayerNorm; then the decoder and its bias), or ``none``: an encoder checkpoint
without an LM head, whose states are shown as h·Eᵀ and are no model's prediction."""


@dataclass
class Forward:
    """What one pass computed: logits ``[P, V]``, attention patterns ``[L, H, P, P]``, the decomposition, the
    raw head outputs ``[L, H, P, d]`` and FF activations ``[L, P, d_ff]``, and how to read a state out."""

    logits: torch.Tensor
    attentions: torch.Tensor
    decomposition: Decomposition
    head_out: torch.Tensor
    acts: torch.Tensor
    values: list[torch.Tensor]
    final: NormApplied | None
    unembedding: torch.Tensor
    lm_bias: torch.Tensor | None
    interventions: list[Intervention] = field(default_factory=list)
    readout_kind: Readout = "lm_head"
    mlm: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, repr=False)

    def readout(self, states: torch.Tensor) -> torch.Tensor:
        """Logit lens: states ``[..., P, d]`` read out as the model reads its last state: through the final norm
        (pre-LN; σ from each state) and W_U, or an encoder's own MLM head; without one, h·Eᵀ."""
        if self.mlm is not None:
            with torch.no_grad():
                return self.mlm(states)
        if self.final is not None:
            f = self.final
            states = applied_norm(states, f.kind, f.weight, f.bias, f.eps)(states)
        logits = states @ self.unembedding.T
        return logits if self.lm_bias is None else logits + self.lm_bias


def load_model(path: Path, adapter: Adapter) -> torch.nn.Module:
    """The Hugging Face model of a checkpoint folder, fp32 on the CPU, eager attention (patterns visible):
    causal LMs with their LM head, encoders with their masked-LM head where the checkpoint has one."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM

    logging.getLogger("transformers").setLevel(logging.ERROR)
    cls: type[AutoModel | AutoModelForMaskedLM | AutoModelForCausalLM] = AutoModelForCausalLM
    if adapter.encoder:
        cls = AutoModelForMaskedLM if adapter.mlm_head() is not None else AutoModel
    try:
        # safetensors only: a stray pytorch_model.bin beside them is a pickle, never loaded here
        model = cls.from_pretrained(str(path), local_files_only=True, attn_implementation="eager",
                                    dtype=torch.float32, use_safetensors=True)
    except Exception as err:  # transformers raises many types for a folder it cannot load
        raise CheckpointError(f"{path}: cannot load the model for a forward pass: {err}") from None
    return model.eval()


def _module(model: torch.nn.Module, adapter: Adapter, key: str, layer: int = 0) -> torch.nn.Module:
    """The module ``adapter.module_path(key, layer)`` names, found whether or not the loaded class adds or drops
    the checkpoint's prefix (a BertForMaskedLM checkpoint loaded as BertModel, GPT-2 without ``transformer.``)."""
    path = adapter.module_path(key, layer)
    if path is None:
        raise CheckpointError(f"{adapter.family}: no module for {key!r} in layer {layer}.")
    prefix = getattr(adapter, "p", "")
    bare = path[len(prefix):] if prefix and path.startswith(prefix) else path
    base = getattr(model, "base_model_prefix", "")
    for candidate in (path, bare, f"{base}.{bare}" if base else bare):
        try:
            return model.get_submodule(candidate)
        except AttributeError:
            continue
    raise CheckpointError(f"{adapter.family}: the loaded model has no module {path!r}.")


def _mlm(model: torch.nn.Module, adapter: Adapter) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The checkpoint's own masked-LM head as one function of hidden states, or None where it has none."""
    paths = adapter.mlm_head()
    if paths is None:
        return None
    try:
        modules = [model.get_submodule(p) for p in paths]
    except AttributeError:
        raise CheckpointError(f"{adapter.family}: the loaded model has no masked-LM head at {paths}.") from None

    def head(states: torch.Tensor) -> torch.Tensor:
        for module in modules:
            states = module(states)
        return states

    return head


def _norm_of(module: torch.nn.Module, x: torch.Tensor, kind: str, offset: float = 0.0) -> NormApplied:
    eps = getattr(module, "eps", None) or getattr(module, "variance_epsilon", None) or 1e-5
    stored = getattr(module, "weight", None)  # OLMo's LayerNorm has no parameters: a gain of one
    weight = torch.ones(x.shape[-1]) if stored is None else torch.as_tensor(stored).detach() + offset
    bias = getattr(module, "bias", None)
    return applied_norm(x, kind, weight, None if bias is None else bias.detach(), float(eps))  # type: ignore[arg-type]


def _head_value_bias(adapter: Adapter, layer: int, changes: list[Intervention]) -> list[torch.Tensor | None] | None:
    """Per query head, the value bias inside its z (its K/V head's slice; none for a zeroed head, whose z is 0)."""
    bias = adapter.value_bias(layer)
    if bias is None:
        return None
    dims = adapter.dims
    dh, group = dims.head_size, dims.n_heads // dims.kv_heads
    zeroed = {c.index for c in changes if c.target == "head" and c.layer == layer}
    return [None if h in zeroed else bias[(h // group) * dh:(h // group + 1) * dh] for h in range(dims.n_heads)]


def run_forward(model: torch.nn.Module, adapter: Adapter, input_ids: torch.Tensor,
                changes: list[Intervention] | None = None, boost_value: float = 10.0) -> Forward:
    """Run ``input_ids`` ``[P]`` through the model with hooks; apply ``changes``; decompose every position."""
    changes = changes or []
    problem = adapter.trace_problem()
    if problem is not None:
        raise LensdbError(f"cannot trace {adapter.ckpt.path}: {problem}.")
    dims = adapter.dims
    dh = dims.head_size
    kind = adapter.final_norm().kind if adapter.final_norm() is not None else "layernorm"  # type: ignore[union-attr]
    seen: dict[str, torch.Tensor] = {}
    handles = []

    def flat(t: torch.Tensor) -> torch.Tensor:
        return t.detach().reshape(-1, t.shape[-1])

    def pre_hook(tag: str, layer: int, target: str):
        mine = [c for c in changes if c.layer == layer and c.target == target]

        def hook(_m: torch.nn.Module, args: tuple) -> tuple | None:
            x = args[0]
            if mine:
                x = x.clone()
                for c in mine:
                    if target == "neuron":
                        x[..., c.index] = 0.0 if c.kind == "zero" else boost_value
                    else:
                        x[..., c.index * dh:(c.index + 1) * dh] = 0.0
            seen[tag] = flat(x)
            return (x, *args[1:]) if mine else None

        return hook

    def in_hook(tag: str):
        def hook(_m: torch.nn.Module, args: tuple, out: object) -> None:
            seen[tag] = flat(args[0])
            seen[tag + ".out"] = flat(out[0] if isinstance(out, tuple) else out)  # type: ignore[arg-type]
        return hook

    post = adapter.post_norm()
    mods: dict[str, torch.nn.Module] = {}
    try:
        for i in range(dims.n_layers):
            handles.append(_module(model, adapter, "attn_out", i).register_forward_pre_hook(
                pre_hook(f"z.{i}", i, "head")))
            handles.append(_module(model, adapter, "ff_out", i).register_forward_pre_hook(
                pre_hook(f"act.{i}", i, "neuron")))
            if post:
                mods[f"ff.{i}"] = _module(model, adapter, "ff_source", i)
                mods[f"out.{i}"] = (_module(model, adapter, "attn_source", i + 1) if i < dims.n_layers - 1
                                    else _module(model, adapter, "final_norm"))
        mods["final"] = _module(model, adapter, "final_norm")
        if post:
            mods["embed"] = _module(model, adapter, "attn_source", 0)
        for tag, mod in mods.items():
            if tag != "final" or not post:
                handles.append(mod.register_forward_hook(in_hook(tag)))
        with torch.no_grad():
            out = model(input_ids=input_ids[None, :], output_attentions=True, output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()

    layers = []
    values = []
    for i in range(dims.n_layers):
        heads = adapter.component("attn_o", i)
        (v,) = adapter.component("ff_value", i)
        values.append(v.vectors)
        attn_b = adapter.component("attn_out_bias", i)
        ff_b = adapter.component("ff_out_bias", i)
        cap = LayerCapture(z=seen[f"z.{i}"], act=seen[f"act.{i}"], w_o=[c.vectors for c in heads], values=v.vectors,
                           attn_bias=attn_b[0].vectors[0] if attn_b else None,
                           ff_bias=ff_b[0].vectors[0] if ff_b else None,
                           value_bias=_head_value_bias(adapter, i, changes))
        if post:
            cap.ff_norm = _norm_of(mods[f"ff.{i}"], seen[f"ff.{i}"], kind, adapter.norm_offset)
            cap.attn_check = seen[f"ff.{i}"]
            cap.out_norm = _norm_of(mods[f"out.{i}"], seen[f"out.{i}"], kind, adapter.norm_offset)
            cap.out_check = seen[f"out.{i}"]
        layers.append(cap)
    if post:
        final_out = seen[f"out.{dims.n_layers - 1}.out"]
        dec = decompose(seen["embed"], layers, None, None, final_out,
                        embed_norm=_norm_of(mods["embed"], seen["embed"], kind, adapter.norm_offset))
        final = None
    else:
        final = _norm_of(mods["final"], seen["final"], kind, adapter.norm_offset)
        final_out = seen["final.out"]
        dec = decompose(flat(out.hidden_states[0]), layers, final, seen["final"], final_out)
    w_u = adapter.unembedding()
    head_emb = model.get_output_embeddings() if not adapter.encoder else None  # type: ignore[operator]
    lm_bias = getattr(head_emb, "bias", None) if head_emb is not None else None
    lm_bias = lm_bias.detach() if lm_bias is not None else None
    mlm = _mlm(model, adapter) if adapter.encoder else None
    readout: Readout = "lm_head" if not adapter.encoder else "mlm_head" if mlm is not None else "none"
    if mlm is not None:
        with torch.no_grad():
            logits = mlm(final_out)
    else:
        logits = final_out @ w_u.T + (lm_bias if lm_bias is not None else 0.0)
    z = torch.stack([c.z for c in layers])  # [L, P, H*dh]
    head_out = torch.stack([torch.stack([z[i][:, h * dh:(h + 1) * dh] @ w for h, w in enumerate(c.w_o)])
                            for i, c in enumerate(layers)])
    attentions = torch.stack([a[0].detach() for a in out.attentions])
    return Forward(logits=logits, attentions=attentions, decomposition=dec, head_out=head_out,
                   acts=torch.stack([c.act for c in layers]), values=values, final=final, unembedding=w_u,
                   lm_bias=lm_bias, interventions=changes, readout_kind=readout, mlm=mlm)

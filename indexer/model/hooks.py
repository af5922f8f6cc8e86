"""Hook points: where on a model's residual stream a dictionary's rows live, from the name its format records.

Two spellings are read. TransformerLens names, as SAELens and Gemma Scope use them (``blocks.L.hook_resid_pre``,
``hook_resid_mid``, ``hook_resid_post``, ``hook_attn_out``, ``hook_mlp_out``, ``ln1.hook_normalized`` /
``hook_attn_in``, ``ln2.hook_normalized`` / ``hook_mlp_in``, ``attn.hook_z``, ``mlp.hook_post``), and the module
paths sparsify hooks (the block ``layers.L`` / ``h.L``: its output, the stream after block L; its MLP or attention
module: their outputs; ``…:input``: the module's input, as sparsify transcoders read it). Module paths are
matched against the adapter's own (``module_path``), with or without the checkpoint's prefix.

A hook is placed at a stream *site* ``(layer, stage)`` and read by that site's rule (``indexer.index.plan.
site_basis``): the stream entering block L (resid_pre) is the site of L's attention, the stream between attention
and MLP (resid_mid) that of L's MLP, the stream after block L (resid_post) that of block L+1's attention (after
the last block: no norm but the final one). A sublayer's output (attn_out, mlp_out) is read at that sublayer's
own site, as its writers are. A normalised input (ln2.hook_normalized) is read at its sublayer's site with that
sublayer's input norm folded into the reading rows, as the sublayer's own readers are. Rows in a sublayer's
inner space are carried into the stream by the sublayer's own writers: ``attn.hook_z`` rows (n_heads · d_head)
through W_O (``attn_o`` of every head), ``mlp.hook_post`` rows (d_ff) through ``ff_value``; only their decoder
rows can be read so (an encoder row in that space reads no single stream direction).
"""

import re
from dataclasses import dataclass
from typing import Literal

from indexer.model.adapters import Adapter
from indexer.model.adapters.base import Stage
from indexer.model.dictionary import DictionaryError

Space = Literal["stream", "z", "mlp"]


@dataclass(frozen=True)
class HookSite:
    """A hook resolved on one model. ``layer``: the hook's block (stored with its rows); ``site_layer`` and
    ``stage``: the stream site whose rule reads it; ``normalized``: readers fold ``stage``'s input norm;
    ``space``: the coordinates of its rows; ``width``: how many there are."""

    hook: str
    layer: int
    site_layer: int
    stage: Stage
    normalized: bool
    space: Space
    width: int


_TL = re.compile(r"^blocks\.(\d+)\.(hook_resid_pre|hook_resid_mid|hook_resid_post|hook_attn_out|hook_mlp_out|"
                 r"hook_attn_in|hook_mlp_in|ln1\.hook_normalized|ln2\.hook_normalized|attn\.hook_z|"
                 r"mlp\.hook_post)$")
_POINTS: dict[str, tuple[int, Stage, bool, Space]] = {  # point → (layer offset, stage, normalized, space)
    "hook_resid_pre": (0, "attn", False, "stream"),
    "hook_resid_mid": (0, "ff", False, "stream"),
    "hook_resid_post": (1, "attn", False, "stream"),
    "hook_attn_out": (0, "attn", False, "stream"),
    "hook_mlp_out": (0, "ff", False, "stream"),
    "hook_attn_in": (0, "attn", True, "stream"),
    "ln1.hook_normalized": (0, "attn", True, "stream"),
    "hook_mlp_in": (0, "ff", True, "stream"),
    "ln2.hook_normalized": (0, "ff", True, "stream"),
    "attn.hook_z": (0, "attn", False, "z"),
    "mlp.hook_post": (0, "ff", False, "mlp"),
}
KNOWN = ("blocks.L.hook_resid_pre, hook_resid_mid, hook_resid_post, hook_attn_out, hook_mlp_out, "
         "ln1.hook_normalized, ln2.hook_normalized, attn.hook_z, mlp.hook_post")


def resolve_hook(adapter: Adapter, hook: str) -> HookSite:
    """Where ``hook`` sits on the model ``adapter`` reads; a clear error naming what is known otherwise."""
    n_layers = adapter.dims.n_layers
    m = _TL.match(hook)
    if m:
        layer, point = int(m.group(1)), m.group(2)
        if layer >= n_layers:
            raise DictionaryError(f"hook {hook!r}: layer {layer} does not exist; the model has {n_layers} layers "
                                  f"(0–{n_layers - 1}).")
        offset, stage, normalized, space = _POINTS[point]
        return HookSite(hook, layer, layer + offset, stage, normalized, space, _width(adapter, space))
    found = _module_hook(adapter, hook)
    if found is not None:
        return found
    block = adapter.module_path("block", 0)
    modules = f", or the module paths {block.replace('.0', '.L', 1)} (and its MLP)" if block else ""
    raise DictionaryError(f"hook {hook!r} is not a hook point of this {adapter.family} model; lensdb reads {KNOWN}"
                          f" (L in 0–{n_layers - 1}){modules}.")


def _width(adapter: Adapter, space: Space) -> int:
    d = adapter.dims
    return {"stream": d.d_model, "z": d.n_heads * d.head_size, "mlp": d.d_ff}[space]


def _matches(path: str | None, hook: str) -> bool:
    return path is not None and (path == hook or path.endswith("." + hook))


def _parent(path: str | None) -> str | None:
    return path.rsplit(".", 1)[0] if path and "." in path else None


def _module_hook(adapter: Adapter, hook: str) -> HookSite | None:
    """A sparsify hookpoint (a module path) on this model: a block's output, its MLP's or attention's output,
    or (``:input``) the MLP's normalised input."""
    name, _, side = hook.partition(":")
    if side not in ("", "input"):
        return None
    d = adapter.dims.d_model
    for layer in range(adapter.dims.n_layers):
        if not side and _matches(adapter.module_path("block", layer), name):
            return HookSite(hook, layer, layer + 1, "attn", False, "stream", d)
        if _matches(_parent(adapter.module_path("ff_out", layer)), name):
            return HookSite(hook, layer, layer, "ff", bool(side), "stream", d)
        if _matches(_parent(adapter.module_path("attn_out", layer)), name):
            return HookSite(hook, layer, layer, "attn", bool(side), "stream", d)
    return None

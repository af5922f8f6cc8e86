"""Across models without training (Dar et al., section 5): stitch a pretrained model B under a classifier
fine-tuned from model A through their shared vocabulary, and read a fine-tuning diff in the vocabulary.

Stitching: B runs its first ``k`` blocks; the stream entering B's block ``k`` is carried into A's space by a map
through the shared vocabulary — ``E_B⁺ E_A`` (default) or the paper's ``E_Bᵀ (E_Aᵀ)⁺``
(``indexer.math.correlation.translation``) — and replaces the stream entering A's block ``k·n_A/n_B``;
A's remaining blocks and its head classify. Blocks are found through the adapters (``module_path("block")``)
and swapped with forward hooks, so nothing here knows a family's module names.

Both need the models themselves (transformers); the math stays in ``indexer.math.correlation``.
"""

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel

from indexer.math import correlation as al
from indexer.math.basis import BasisMode, read_basis, write_basis
from indexer.math.carry import path_map
from indexer.math.projection import topk_bottomk
from indexer.model.adapters import Adapter, adapter_for
from indexer.model.checkpoint import open_checkpoint
from indexer.model.vocab import Vocabulary, load_vocabulary
from schema.errors import LensdbError


class StitchRow(BaseModel):
    b_layers: int
    a_resumes_at: int
    accuracy: float


class StitchReport(BaseModel):
    """Accuracy of B's first ``b_layers`` blocks + A's remaining blocks and head, per ``b_layers``."""

    model_a: str
    model_b: str
    map: str
    n_examples: int
    chance: float
    accuracy_a: float
    rows: list[StitchRow]


class TokenWeight(BaseModel):
    token: str
    score: float


class ClassRow(BaseModel):
    """What one row of the classification head reads, as tokens (through the embedding)."""

    label: int
    top: list[TokenWeight]
    bottom: list[TokenWeight]


class DiffVector(BaseModel):
    """One vector's fine-tuning change θ_ft − θ_pre, projected to the vocabulary."""

    layer: int
    index: int
    head: int | None
    norm: float
    relative: float
    closest_label: int | None
    label_corr: float | None
    top: list[TokenWeight]
    bottom: list[TokenWeight]


class FinetuneDiff(BaseModel):
    pretrained: str
    finetuned: str
    component: str
    classifier: list[ClassRow]
    vectors: list[DiffVector]


def _pair(path_a: str | Path, path_b: str | Path) -> tuple[Adapter, Adapter, Vocabulary]:
    """Both checkpoints' adapters, refusing different vocabularies with how many token ids differ."""
    ad_a, ad_b = adapter_for(open_checkpoint(path_a)), adapter_for(open_checkpoint(path_b))
    va = load_vocabulary(ad_a.ckpt.path, ad_a.dims.vocab_size)
    vb = load_vocabulary(ad_b.ckpt.path, ad_b.dims.vocab_size)
    if va.content_hash() != vb.content_hash():
        n = max(va.size, vb.size)
        differ = sum(i >= va.size or i >= vb.size or va.tokens[i] != vb.tokens[i] for i in range(n))
        raise LensdbError(f"{ad_a.ckpt.path} ({va.size} tokens) and {ad_b.ckpt.path} ({vb.size} tokens) have "
                          f"different vocabularies: {differ} token ids differ; they must share one.")
    return ad_a, ad_b, va


def _hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


@contextlib.contextmanager
def hooked_block(model: torch.nn.Module, adapter: Adapter, layer: int,
            swap: Callable[[torch.Tensor], torch.Tensor | None]) -> Iterator[None]:
    """Call ``swap`` on the stream entering block ``layer`` (after the last block for ``layer == n``); a
    returned tensor replaces it."""
    n = adapter.dims.n_layers
    path = adapter.module_path("block", min(layer, n - 1))
    if path is None:
        raise LensdbError(f"{adapter.family}: the adapter names no transformer block; stitching needs it.")
    try:
        module = model.get_submodule(path)
    except AttributeError:
        raise LensdbError(f"{adapter.ckpt.path}: the loaded model has no module {path!r}; was the checkpoint "
                          f"saved from another class than its config's architectures?") from None
    if layer < n:
        def pre(_: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            new = swap(_hidden(args, kwargs))
            if new is None:
                return None
            return ((new, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})
        handle = module.register_forward_pre_hook(pre, with_kwargs=True)
    else:
        def post(_: torch.nn.Module, args: tuple, output: object) -> object:
            first = output[0] if isinstance(output, tuple) else output
            new = swap(first)  # type: ignore[arg-type]
            if new is None:
                return None
            return (new, *output[1:]) if isinstance(output, tuple) else new
        handle = module.register_forward_hook(post)
    try:
        yield
    finally:
        handle.remove()


def _load(path: Path, head: bool) -> torch.nn.Module:
    """The checkpoint as the transformers class it was saved from (module names = tensor names)."""
    import transformers

    if head:
        return transformers.AutoModelForSequenceClassification.from_pretrained(path).eval()
    config = transformers.AutoConfig.from_pretrained(path)
    cls = getattr(transformers, (config.architectures or ["AutoModel"])[0], transformers.AutoModel)
    return cls.from_pretrained(path).eval()


def _stitched(model_a: torch.nn.Module, ad_a: Adapter, model_b: torch.nn.Module, ad_b: Adapter, k: int,
              m: torch.Tensor, enc: dict) -> torch.Tensor:
    """A's logits with the stream entering its block ``k·n_A/n_B`` replaced by B's entering block k, mapped."""
    kept: list[torch.Tensor] = []

    def keep(h: torch.Tensor) -> None:
        kept.append(h)

    with hooked_block(model_b, ad_b, k, keep):
        model_b(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    with hooked_block(model_a, ad_a, round(k * ad_a.dims.n_layers / ad_b.dims.n_layers), lambda h: kept[0] @ m):
        return model_a(**enc).logits


def stitch(path_a: str | Path, path_b: str | Path, texts: Sequence[str], labels: Sequence[int],
           batch_size: int = 32, b_layers: Sequence[int] | None = None, method: al.StitchMap = "pinv") -> StitchReport:
    """Accuracy on (texts, labels) of B's first k blocks → the map (``pinv``: E_B⁺ E_A; ``paper``: E_Bᵀ (E_Aᵀ)⁺)
    → A's remaining blocks and head, per k."""
    from transformers import AutoTokenizer

    if not texts or len(texts) != len(labels):
        raise LensdbError(f"need as many labels as texts (got {len(texts)} texts, {len(labels)} labels).")
    ad_a, ad_b, _ = _pair(path_a, path_b)
    if ad_a.classifier() is None:
        raise LensdbError(f"{ad_a.ckpt.path} has no sequence-classification head; A must be the fine-tuned one.")
    m = al.translation(ad_b.embedding(), ad_a.embedding(), method).float()
    model_a, model_b = _load(ad_a.ckpt.path, head=True), _load(ad_b.ckpt.path, head=False)
    tok = AutoTokenizer.from_pretrained(ad_a.ckpt.path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    config: Any = model_a.config
    if getattr(config, "pad_token_id", None) is None:  # decoder heads find the last token by padding
        config.pad_token_id = tok.pad_token_id
    n_a, n_b = ad_a.dims.n_layers, ad_b.dims.n_layers
    ks = list(b_layers) if b_layers is not None else list(range(n_b + 1))
    if any(not 0 <= k <= n_b for k in ks):
        raise LensdbError(f"B has {n_b} layers: layers kept must be 0–{n_b}, got {ks}.")
    gold = torch.tensor(list(labels))

    def accuracy(k: int | None) -> float:
        right = 0
        for start in range(0, len(texts), batch_size):
            enc = tok(list(texts[start : start + batch_size]), padding=True, return_tensors="pt")
            with torch.no_grad():
                logits = model_a(**enc).logits if k is None else _stitched(model_a, ad_a, model_b, ad_b, k, m, enc)
            right += int((logits.argmax(-1) == gold[start : start + batch_size]).sum())
        return right / len(texts)

    counts = torch.bincount(gold)
    return StitchReport(
        model_a=str(ad_a.ckpt.path), model_b=str(ad_b.ckpt.path), map=method, n_examples=len(texts),
        chance=float(counts.max()) / len(texts), accuracy_a=accuracy(None),
        rows=[StitchRow(b_layers=k, a_resumes_at=round(k * n_a / n_b), accuracy=accuracy(k)) for k in ks])


def _weights(ids: torch.Tensor, scores: torch.Tensor, vocab: Vocabulary) -> list[TokenWeight]:
    return [TokenWeight(token=vocab.display[int(i)], score=float(s)) for i, s in zip(ids, scores, strict=True)]


def finetune_diff(pretrained: str | Path, finetuned: str | Path, component: str = "ff_value", k: int = 10,
                  top: int = 20, basis: BasisMode = "raw") -> FinetuneDiff:
    """The ``top`` vectors of ``component`` the fine-tuning changed most (by ‖θ_ft − θ_pre‖), each diff
    projected to the vocabulary, with the label of the head row whose token projection it correlates with
    most; and what each row of the fine-tuned classification head reads, as tokens."""
    ft, pre, vocab = _pair(finetuned, pretrained)
    if (ft.family, ft.dims) != (pre.family, pre.dims):
        raise LensdbError(f"{finetuned} and {pretrained} differ in architecture ({ft.family} {ft.dims} vs "
                          f"{pre.family} {pre.dims}); a fine-tuning diff needs the same one.")
    spec = ft.spec(component)
    reader = read_basis(pre.embedding(), "embedding", basis).matrix  # what the head reads: tokens as inputs
    head = ft.classifier()
    classes: list[ClassRow] = []
    if head is not None:
        tb = topk_bottomk(head, reader, k)
        classes = [ClassRow(label=i, top=_weights(tb.top_ids[i], tb.top_scores[i], vocab),
                            bottom=_weights(tb.bottom_ids[i], tb.bottom_scores[i], vocab)) for i in range(len(head))]
    proj = (write_basis(pre.unembedding(), pre.final_norm(), basis).matrix if spec.role == "writes" else reader)
    kern = al.kernels(proj, reader)
    found: list[tuple[float, float, int, int, int | None, torch.Tensor]] = []
    for layer in ft.layers(component):
        for after, before in zip(ft.component(component, layer), pre.component(component, layer), strict=True):
            diff = after.vectors - before.vectors
            norms = diff.norm(dim=1)
            rel = norms / before.vectors.norm(dim=1).clamp_min(1e-12)
            for i in norms.topk(min(top, len(norms))).indices.tolist():
                found.append((float(norms[i]), float(rel[i]), layer, i, after.head, diff[i]))
    found = sorted(found, key=lambda f: -f[0])[:top]
    out = []
    if found:
        diffs = torch.stack([f[5] for f in found])
        if basis == "folded":  # each diff carried through the norms on its layer's path, as an index run reads it
            for n, f in enumerate(found):
                carry = path_map(pre.component_path(component, f[2]), spec.role, pre.dims.d_model)
                if carry is not None:
                    diffs[n] = diffs[n].to(torch.float32) @ carry
        tb = topk_bottomk(diffs, proj, k)
        corr = al.embedded_corr(diffs, head, kern) if head is not None else None
        for n, (norm, rel, layer, idx, hd, _) in enumerate(found):
            best = None if corr is None else int(corr[n].abs().argmax())
            out.append(DiffVector(
                layer=layer, index=idx, head=hd, norm=norm, relative=rel, closest_label=best,
                label_corr=None if corr is None or best is None else float(corr[n, best]),
                top=_weights(tb.top_ids[n], tb.top_scores[n], vocab),
                bottom=_weights(tb.bottom_ids[n], tb.bottom_scores[n], vocab)))
    return FinetuneDiff(pretrained=str(pre.ckpt.path), finetuned=str(ft.ckpt.path), component=component,
                        classifier=classes, vectors=out)

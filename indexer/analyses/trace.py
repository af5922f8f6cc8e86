"""A trace: one input through one indexed checkpoint, read in vocabulary space and stored in one transaction.

The checkpoint is the one recorded in the store (``checkpoints.path``); the model is instantiated from it on the
CPU (``indexer.model.forward``). What is stored, per position (see README, "Forward passes"): the residual stream
after the embedding and after every block through the logit lens, each head's output and top attended
positions, the FF neurons with the largest |activation × value norm| linked to their indexed ``ff_value``, and
the Muppet decomposition of the final hidden state. With interventions, the unchanged input is traced first
(``baseline_trace_id``), so before and after can be compared.
"""

import json
import time
from datetime import datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import torch
from pydantic import BaseModel, Field

from indexer.model.adapters import Adapter, adapter_for
from indexer.model.checkpoint import open_checkpoint
from indexer.model.forward import Forward, interventions, load_model, run_forward
from queries import sql as q
from schema.errors import LensdbError
from schema.ids import next_id
from schema.writer import Store, append_arrow, insert, with_store

TOLERANCE = 1e-4
"""Max |Σ terms − the model's final hidden state| (fp32, absolute) the decomposition is tested to hold within."""
STATE_TOKENS, UNIT_TOKENS, ATTENDED = 5, 3, 3


class TraceOptions(BaseModel):
    model: str = Field(description="indexed model name")
    prompt: str = Field(max_length=100_000, description="input text (at most the model's positions in tokens)")
    checkpoint: str | None = Field(None, description="checkpoint label; default the model's latest")
    position: int | None = Field(None, description="focus position (negative counts from the end); default the "
                                 "[MASK] token where the input has one, else the last position")
    zero: list[str] = Field(default_factory=list, description="FF neurons LAYER.INDEX whose activation is set to 0")
    boost: list[str] = Field(default_factory=list, description="FF neurons LAYER.INDEX whose activation is set to "
                             "boost_value")
    zero_heads: list[str] = Field(default_factory=list, description="heads LAYER.HEAD whose output is zeroed")
    boost_value: float = Field(10.0, ge=-1e6, le=1e6, description="activation a boosted neuron is set to, at every "
                               "position")
    neurons: int = Field(10, ge=1, le=100, description="FF neurons kept per position, layer and side")


class TraceResult(BaseModel):
    trace_id: int
    baseline_trace_id: int | None
    message: str


def _topk(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    top = logits.topk(min(k, logits.shape[-1]), dim=-1)
    return top.values, top.indices


def _rank(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Rank (1 = highest) of ``target[p]`` in ``logits[..., p, :]``."""
    picked = logits.gather(-1, target.expand(*logits.shape[:-1]).unsqueeze(-1))
    return (logits > picked).sum(-1) + 1


class _Rows:
    """Column lists per table, turned into Arrow at the end."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[str, list]] = {}

    def add(self, table: str, **cols: object) -> None:
        t = self.tables.setdefault(table, {k: [] for k in cols})
        for k, v in cols.items():
            t[k].append(v)

    def write(self, con: duckdb.DuckDBPyConnection) -> None:
        for table, cols in self.tables.items():
            append_arrow(con, table, pa.table(cols))


def analyse(fw: Forward, adapter: Adapter, ids: torch.Tensor, trace_id: int, blocks: dict[int, tuple[int, int]],
            n_neurons: int) -> _Rows:
    """Every row of one trace from one forward pass (pure apart from building lists)."""
    rows = _Rows()
    dec = fw.decomposition
    pred = fw.logits.argmax(-1)  # [P]
    n_pos = ids.shape[0]
    w_pred = fw.unembedding[pred]  # [P, d]
    # heads' and neurons' writes are read as they reach the final state (Decomposition.carry: every later norm,
    # with its measured σ, the same map the index bases use) through W_U centred over the vocabulary
    centred = fw.unembedding - fw.unembedding.mean(dim=0, keepdim=True)
    # logit lens
    for layer, state in enumerate(dec.states):
        lens = fw.readout(state)
        vals, idx = _topk(lens, STATE_TOKENS)
        ranks = _rank(lens, pred)
        for p in range(n_pos):
            rows.add("trace_states", trace_id=trace_id, position=p, layer=layer, token_id=int(ids[p]),
                     prediction_token_id=int(pred[p]), norm=float(state[p].norm()), pred_rank=int(ranks[p]),
                     pred_logit=float(lens[p, pred[p]]))
            for r in range(idx.shape[1]):
                rows.add("trace_top_tokens", trace_id=trace_id, position=p, node="state", layer=layer, unit=None,
                         rank=r + 1, token_id=int(idx[p, r]), score=float(vals[p, r]))
    # heads: output as it reaches the final state, through W_U; attention
    for layer in range(fw.head_out.shape[0]):
        out = fw.head_out[layer]  # [H, P, d]
        proj = dec.carry(out, layer, "attn") @ centred.T
        vals, idx = _topk(proj, UNIT_TOKENS)
        ranks = _rank(proj, pred)
        att = fw.attentions[layer]  # [H, P, P]
        a_vals, a_idx = _topk(att, ATTENDED)
        for h in range(out.shape[0]):
            for p in range(n_pos):
                rows.add("trace_heads", trace_id=trace_id, position=p, layer=layer, head=h,
                         norm=float(out[h, p].norm()), pred_rank=int(ranks[h, p]))
                for r in range(idx.shape[-1]):
                    rows.add("trace_top_tokens", trace_id=trace_id, position=p, node="head", layer=layer, unit=h,
                             rank=r + 1, token_id=int(idx[h, p, r]), score=float(vals[h, p, r]))
                for r in range(min(ATTENDED, p + 1 if not adapter.encoder else n_pos)):
                    rows.add("trace_attention", trace_id=trace_id, position=p, layer=layer, head=h, rank=r + 1,
                             key_position=int(a_idx[h, p, r]), weight=float(a_vals[h, p, r]))
    # neurons: largest and smallest activation × value norm
    for layer, values in enumerate(fw.values):
        vnorm = values.norm(dim=1)
        score = fw.acts[layer] * vnorm  # [P, d_ff]
        k = min(n_neurons, score.shape[1])
        for side, pick in (("top", score.topk(k, dim=1)), ("bottom", (-score).topk(k, dim=1))):
            chosen = pick.indices  # [P, k]
            act = fw.acts[layer].gather(1, chosen)  # [P, k]
            writes = act[..., None] * values[chosen]  # [P, k, d]
            final = dec.carry(writes.transpose(0, 1), layer, "ff")  # [k, P, d]
            logit = (final * w_pred).sum(-1).T  # [P, k]
            direction = torch.sign(act)[..., None] * values[chosen]  # [P, k, d]
            proj = (dec.carry(direction.transpose(0, 1), layer, "ff") @ centred.T).transpose(0, 1)  # [P, k, V]
            ranks = _rank(proj.transpose(0, 1), pred).T
            vals, idx = _topk(proj, UNIT_TOKENS)
            first = blocks.get(layer)
            for p in range(n_pos):
                for r in range(k):
                    n = int(chosen[p, r])
                    rows.add("trace_neurons", trace_id=trace_id, position=p, layer=layer, idx=n, side=side,
                             rank=r + 1, activation=float(act[p, r]), value_norm=float(vnorm[n]),
                             score=float(score[p, n]), logit=float(logit[p, r]), pred_rank=int(ranks[p, r]),
                             vector_id=None if first is None else first[0] + n - first[1])
                    if side == "top" or r < 3:
                        for t in range(idx.shape[-1]):
                            rows.add("trace_top_tokens", trace_id=trace_id, position=p, node="neuron",
                                     layer=layer, unit=n, rank=t + 1, token_id=int(idx[p, r, t]),
                                     score=float(vals[p, r, t]))
    # the decomposition
    norms = dec.terms.norm(dim=-1)  # [n, P]
    logits = (dec.terms * w_pred).sum(-1)
    for i, key in enumerate(dec.keys):
        for p in range(n_pos):
            rows.add("trace_terms", trace_id=trace_id, position=p, kind=key.kind, layer=key.layer, head=key.head,
                     norm=float(norms[i, p]), logit=float(logits[i, p]))
    return rows


def _dedupe_top_tokens(rows: _Rows) -> None:
    """A neuron can be chosen on both sides at one position (tiny models): keep its tokens once."""
    t = rows.tables.get("trace_top_tokens")
    if not t:
        return
    seen: set[tuple] = set()
    keep = []
    for i, key in enumerate(zip(t["position"], t["node"], t["layer"], t["unit"], t["rank"], strict=True)):
        if key not in seen:
            seen.add(key)
            keep.append(i)
    rows.tables["trace_top_tokens"] = {k: [v[i] for i in keep] for k, v in t.items()}


def trace_input(db: str | Path | Store, options: TraceOptions) -> TraceResult:
    """Trace ``options.prompt`` through the model's checkpoint and store it (and its baseline, with
    interventions) in one transaction, in the store at ``db`` or through the service's ``Store``."""
    return with_store(db, lambda store: _trace(store, options))


def _trace(store: Store, options: TraceOptions) -> TraceResult:
    started = time.perf_counter()
    with store.transaction() as w:
        found = w.execute(*q.trace_checkpoint(options.model, options.checkpoint)).fetchone()
        if found is None:
            which = f"checkpoint {options.checkpoint!r} of " if options.checkpoint else ""
            raise LensdbError(f"no {which}model {options.model!r} in {store.path}; index it first "
                              "(lensdb index FOLDER --name NAME).")
        checkpoint_id, label, path, _ = found
        ckpt_path = Path(path)
        if not ckpt_path.exists():
            raise LensdbError(f"checkpoint folder {ckpt_path} (recorded for {options.model}/{label}) is gone; "
                              "a trace needs the weights to run the model.")
        adapter = adapter_for(open_checkpoint(ckpt_path))
        if (problem := adapter.trace_problem()) is not None:  # before loading the model
            raise LensdbError(f"cannot trace {options.model}: {problem}.")
        changes = interventions(adapter, options.zero, options.boost, options.zero_heads)
        ids, position = _tokenize(ckpt_path, options.prompt, options.position, _max_positions(adapter.ckpt.config))
        model = load_model(ckpt_path, adapter)
        blocks = {int(r[0]): (int(r[1]), int(r[2])) for r in w.execute(*q.ff_value_blocks(checkpoint_id)).fetchall()}
        runs = [[], changes] if changes else [[]]
        baseline: int | None = None
        trace_id = 0
        for change in runs:
            fw = run_forward(model, adapter, ids, change, options.boost_value)
            trace_id = next_id(w, "traces")
            rows = analyse(fw, adapter, ids, trace_id, blocks, options.neurons)
            _dedupe_top_tokens(rows)
            pred = int(fw.logits[position].argmax())
            insert(w, "traces", trace_id=trace_id, checkpoint_id=checkpoint_id, prompt=options.prompt,
                   n_positions=int(ids.shape[0]), position=position, prediction_token_id=pred,
                   prediction_logit=float(fw.logits[position, pred]), readout=fw.readout_kind,
                   interventions=json.dumps([str(c) for c in change]), boost_value=options.boost_value,
                   baseline_trace_id=baseline if change else None, error=fw.decomposition.error,
                   stream_error=fw.decomposition.stream_error, created_at=datetime.now(),
                   seconds=time.perf_counter() - started)
            rows.write(w)
            if not change:
                baseline = trace_id
    what = f" (baseline {baseline})" if changes else ""
    return TraceResult(trace_id=trace_id, baseline_trace_id=baseline if changes else None,
                       message=f"traced {options.model}/{label} as trace {trace_id}{what}")


def _max_positions(config: dict) -> int | None:
    """How many positions the model reads at most, from its config (None where it does not say)."""
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _tokenize(path: Path, prompt: str, position: int | None, limit: int | None = None) -> tuple[torch.Tensor, int]:
    from transformers import AutoTokenizer

    if not prompt.strip():
        raise LensdbError("the prompt is empty.")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise LensdbError("the prompt is not valid Unicode text (it holds a lone surrogate).") from None
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    ids = torch.tensor(tok(prompt)["input_ids"], dtype=torch.long)
    n = int(ids.shape[0])
    if limit is not None and n > limit:
        raise LensdbError(f"the prompt is {n} tokens long; this model reads at most {limit} positions. Shorten it.")
    if position is None:
        mask = getattr(tok, "mask_token_id", None)
        hits = (ids == mask).nonzero().flatten().tolist() if mask is not None else []
        position = int(hits[0]) if hits else n - 1
    if not -n <= position < n:
        raise LensdbError(f"position {position} is outside the input's {n} tokens.")
    return ids, position % n

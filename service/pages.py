"""Server-rendered HTML pages: plain strings, escaped, no build step; only the trace page carries a few lines
of vanilla JS (hover and click on its flow graph)."""

from html import escape
from urllib.parse import quote, urlencode

from queries import (
    Alignment,
    AlignmentInfo,
    ModelDetail,
    ModelInfo,
    TokenHit,
    TokenMatch,
    TokenRankStep,
    TokenScore,
    TraceView,
    VectorPage,
    VectorStep,
    VectorView,
)
from service import flow

CSS = """
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:0 1em;color:#222}
header{display:flex;gap:1.2em;align-items:baseline;border-bottom:1px solid #ddd;margin-bottom:1em}
header a{color:#333;text-decoration:none} h1{font-size:1.3em} h2{font-size:1.1em;margin-top:1.5em}
table{border-collapse:collapse;width:100%} td,th{padding:2px 8px;text-align:left;border-bottom:1px solid #eee}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.bar{display:inline-block;height:.8em;background:#4a7bd0;vertical-align:middle}
.bar.neg{background:#d0644a} .tok{font-family:ui-monospace,monospace;white-space:pre}
.err{background:#fee;border:1px solid #d99;padding:.5em}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:2em}
input,select{font-size:1em;padding:3px} .muted{color:#777} form.filters label{color:#555;margin-left:.4em}
.paging{margin:.6em 0} .scroll{overflow-x:auto}
"""


def _layout(title: str, body: str) -> str:
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{escape(title)} · lensdb</title>"
            f"<meta name=viewport content='width=device-width'><style>{CSS}</style></head><body>"
            "<header><h1><a href='/'>lensdb</a></h1><a href='/search'>search</a>"
            "<a href='/docs'>API</a></header>"
            f"{body}</body></html>")


def _tok(text: str) -> str:
    return f"<span class=tok>{escape(repr(text)[1:-1] if text != text.strip() else text)}</span>"


def _bar(value: float, scale: float) -> str:
    width = 0 if scale <= 0 else min(100.0, 100.0 * abs(value) / scale)
    return f"<span class='bar{' neg' if value < 0 else ''}' style='width:{width:.0f}px'></span>"


def vector_url(model: str, component: str, layer: int, index: int, head: int | None = None,
               checkpoint: str | None = None, expert: int | None = None, dictionary: str | None = None) -> str:
    query = {k: v for k, v in (("head", head), ("checkpoint", checkpoint), ("expert", expert),
                               ("dictionary", dictionary)) if v is not None}
    path = f"/vector/{quote(model, safe='')}/{quote(component, safe='')}/{layer}/{index}"
    return path + ("?" + urlencode(query) if query else "")


def _search_form(token: str) -> str:
    return ("<form action='/search' method=get><input name=token autofocus placeholder='a token, e.g. paris' "
            f"value='{escape(token, quote=True)}'> <button>search</button></form>")


def home(models: list[ModelInfo], alignments: list[AlignmentInfo] | None = None) -> str:
    rows = "".join(
        f"<tr><td><a href='/model/{quote(m.name, safe='')}'>{escape(m.name)}</a></td>"
        f"<td>{escape(m.family)}</td>"
        f"<td class=n>{m.n_layers}</td><td class=n>{m.d_model}</td><td class=n>{m.vocab_size}</td>"
        f"<td class=n>{len(m.checkpoints)}</td></tr>" for m in models)
    table = ("<table><tr><th>model</th><th>family</th><th>layers</th><th>d_model</th><th>vocab</th>"
             f"<th>checkpoints</th></tr>{rows}</table>")
    if not models:
        table = "<p class=muted>No models indexed yet.</p>"
    aligned = "".join(
        f"<tr><td><a href='/alignment/{a.alignment_id}'>{a.alignment_id}</a></td><td>{escape(a.model_a)}</td>"
        f"<td>{escape(a.model_b)}</td><td>{escape(a.component)}</td><td class=n>{a.mean_matched:.3f}</td></tr>"
        for a in alignments or [])
    if aligned:
        aligned = ("<h2>Alignments</h2><table><tr><th>run</th><th>model A</th><th>model B</th><th>component</th>"
                   f"<th>mean matched</th></tr>{aligned}</table>")
    return _layout("home", f"<p>Which vectors promote or suppress a token?</p>{_search_form('')}"
                           f"<h2>Models</h2>{table}{aligned}")


def _span_bar(value: float, lo: float, hi: float) -> str:
    """A bar whose length shows where ``|value|`` sits in the shown range [lo, hi] (12–100 px), so close values
    still differ visibly; a range of one value gets full bars."""
    t = 1.0 if hi <= lo else (abs(value) - lo) / (hi - lo)
    return f"<span class='bar{' neg' if value < 0 else ''}' style='width:{12 + 88 * t:.0f}px'></span>"


def _score(value: float) -> str:
    """A score readable at any magnitude (head-map pair scores are products of small numbers)."""
    return f"{value:.3g}" if value != 0 and (abs(value) < 0.01 or abs(value) >= 1000) else f"{value:.3f}"


def _hit_url(h: TokenHit) -> str:
    return vector_url(h.model, h.component, h.layer, h.index, h.head, h.checkpoint, h.expert, h.dictionary)


def _hits_table(hits: list[TokenHit], title: str) -> str:
    if not hits:
        return f"<div><h2>{title}</h2><p class=muted>none</p></div>"
    zs = [abs(h.zscore) for h in hits]
    lo, hi = min(zs), max(zs)
    pairs = any(h.source_token is not None for h in hits)
    rows = "".join(
        f"<tr><td><a href='{_hit_url(h)}'>"
        f"{escape(h.model)}{'' if h.dictionary is None else ' ' + escape(h.dictionary)} {escape(h.component)} "
        f"L{h.layer}{'' if h.head is None else f' H{h.head}'}"
        f"{'' if h.expert is None else f' E{h.expert}'} "
        f"#{h.index}</a>"
        f"<div class=muted>{escape(h.checkpoint)} · rank {h.rank}</div></td>"
        + (f"<td>{_tok(h.source_token or '')} → {_tok(h.token)}</td>" if pairs else "")
        + f"<td class=n>{_score(h.score)}</td><td class=n>{h.zscore:.2f}</td><td>{_span_bar(h.zscore, lo, hi)}</td>"
        "</tr>" for h in hits)
    head = "<th>vector</th>" + ("<th>source → target</th>" if pairs else "") + "<th>score</th><th>z</th><th></th>"
    return f"<div><h2>{title}</h2><table><tr>{head}</tr>{rows}</table></div>"


ROLE_CHOICES = [("", "writers (default)"), ("reads", "readers"), ("all", "all")]


def _filter_form(token: str, f: dict, models: list[str], components: list[str]) -> str:
    """The search box with its filters: model, component, role, layer, checkpoint, rows per page."""
    def select(name: str, options: list[tuple[str, str]]) -> str:
        chosen = str(f.get(name) or "")
        opts = "".join(f"<option value='{escape(v, quote=True)}'{' selected' if v == chosen else ''}>{escape(t)}"
                       "</option>" for v, t in options)
        return f"<label>{name} <select name={name}>{opts}</select></label>"

    layer = "" if f.get("layer") is None else str(f["layer"])
    return ("<form action='/search' method=get class=filters>"
            f"<input name=token autofocus placeholder='a token, e.g. paris' value='{escape(token, quote=True)}'> "
            + select("model", [("", "every model"), *((m, m) for m in models)]) + " "
            + select("component", [("", "any component"), *((c, c) for c in components)]) + " "
            + select("role", ROLE_CHOICES)
            + f" <label>layer <input name=layer size=3 inputmode=numeric value='{escape(layer, quote=True)}'></label>"
            + f" <label>rows <input name=limit size=3 inputmode=numeric value='{int(f.get('limit') or 20)}'></label>"
            + (f"<input type=hidden name=checkpoint value='{escape(f['checkpoint'], quote=True)}'>"
               if f.get("checkpoint") else "")
            + " <button>search</button></form>")


def _page_links(token: str, f: dict, offset: int, limit: int, more: bool) -> str:
    def link(at: int, text: str) -> str:
        query = {"token": token, **{k: v for k, v in f.items() if v not in (None, "")}, "offset": at, "limit": limit}
        return f"<a href='/search?{escape(urlencode(query), quote=True)}'>{text}</a>"

    prev = link(max(0, offset - limit), "← previous") if offset > 0 else "<span class=muted>← previous</span>"
    nxt = link(offset + limit, "next →") if more else "<span class=muted>next →</span>"
    return f"<p class=paging>{prev} · rows {offset + 1}–{offset + limit} · {nxt}</p>"


def search(token: str, matches: list[TokenMatch], promoters: list[TokenHit], suppressors: list[TokenHit],
           error: str | None, filters: dict | None = None, models: list[str] | None = None,
           components: list[str] | None = None, missing: list[str] | None = None, offset: int = 0,
           more: bool = False) -> str:
    f = filters or {}
    body = _filter_form(token, f, models or [], components or [])
    if error:
        body += f"<p class=err>{escape(error)}</p>"
    elif token:
        limit = int(f.get("limit") or 20)
        resolved = ", ".join(f"{escape(m.model)}: {_tok(m.token)} (id {m.token_id}"
                             + ("" if m.form in ("exact", "id") else f", {escape(m.form)}") + ")" for m in matches)
        absent = (f"<p class=err>no token for {_tok(token)} in: {escape(', '.join(missing))}</p>" if missing else "")
        body += (f"<p class=muted>{_tok(token)} is {resolved}</p>{absent}"
                 f"{_page_links(token, f, offset, limit, more)}<div class=cols>"
                 f"{_hits_table(promoters, 'promoted by')}{_hits_table(suppressors, 'suppressed by')}</div>")
    return _layout(f"search {token}" if token else "search", body)


def _token_bars(scores: list[TokenScore]) -> str:
    scale = max((abs(s.score) for s in scores), default=0.0)
    rows = "".join(
        f"<tr><td class=n>{s.rank}</td>"
        f"<td><a href='/search?{urlencode({'token': s.token})}'>{_tok(s.token)}</a></td>"
        f"<td class=n>{s.score:.3f}</td><td>{_bar(s.score, scale)}</td><td class=n>{s.zscore:.2f}</td></tr>"
        for s in scores)
    return f"<table><tr><th>#</th><th>token</th><th>score</th><th></th><th>z</th></tr>{rows}</table>"


def _training_url(v: VectorView) -> str:
    path = vector_url(v.model, v.component, v.layer, v.index, v.head, expert=v.expert)
    base, _, query = path.partition("?")
    return f"{base}/training" + (f"?{query}" if query else "")


def vector(v: VectorView, checkpoints: list[str]) -> str:
    head = ("" if v.head is None else f" head {v.head}") + ("" if v.expert is None else f" expert {v.expert}")
    if v.dictionary is not None:  # a latent: its dictionary, and a direction's label
        head += f" · {v.dictionary}" + ("" if v.label is None else f" ({v.label})")
    title = f"{v.model} {v.component} layer {v.layer}{head} #{v.index}"
    others = " · ".join(
        f"<b>{escape(c)}</b>" if c == v.checkpoint else
        f"<a href='{vector_url(v.model, v.component, v.layer, v.index, v.head, c, v.expert, v.dictionary)}'>"
        f"{escape(c)}</a>"
        for c in checkpoints)
    stats = (f"<p>checkpoint <b>{escape(v.checkpoint)}</b> · norm {v.norm:.4g} · "
             f"logits mean {v.logit_mean:.4g} "
             f"std {v.logit_std:.4g} · basis {escape(v.basis)}</p><p>checkpoints: {others}"
             f"{' · <a href=' + repr(_training_url(v)) + '>over training</a>' if len(checkpoints) > 1 else ''}</p>")
    return _layout(title, f"<h1><a href='/model/{quote(v.model, safe='')}'>{escape(v.model)}</a> "
                          f"{escape(v.component)} layer {v.layer}{escape(head)} #{v.index}</h1>{stats}"
                          "<div class=cols>"
                          f"<div><h2>promotes</h2>{_token_bars(v.top)}</div>"
                          f"<div><h2>suppresses</h2>{_token_bars(v.bottom)}</div></div>")


def rank_plot(ranks: list[TokenRankStep], width: int = 640, height: int = 260) -> str:
    """An inline SVG of a token's rank per step: rank 1 at the top, 'not in top-k' as hollow marks at the
    bottom; x is the step where every step is known, else the order of the checkpoints."""
    if not ranks:
        return "<p class=muted>no steps</p>"
    k = max(r.top_k for r in ranks)
    left, right, top, bottom = 70, 20, 20, 50
    steps = [r.step for r in ranks]
    by_step = all(s is not None for s in steps) and len(set(steps)) == len(steps) and len(steps) > 1
    xs_raw = [float(s) for s in steps] if by_step else [float(i) for i in range(len(ranks))]  # type: ignore[arg-type]
    lo, hi = min(xs_raw), max(xs_raw)
    span = (hi - lo) or 1.0
    xs = [left + (x - lo) / span * (width - left - right) if len(ranks) > 1 else width / 2 for x in xs_raw]
    plot_h = height - top - bottom

    def y(rank: int | None) -> float:
        return top + plot_h if rank is None else top + (rank - 1) / max(k, 1) * plot_h

    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' role='img' "
             f"aria-label='rank over training'><rect width='100%' height='100%' fill='#fff'/>",
             f"<line x1='{left}' y1='{top}' x2='{left}' y2='{top + plot_h}' stroke='#999'/>",
             f"<text x='{left - 6}' y='{top + 4}' text-anchor='end' font-size='11'>rank 1</text>",
             f"<text x='{left - 6}' y='{y(k) + 4:.1f}' text-anchor='end' font-size='11'>{k}</text>",
             f"<text x='{left - 6}' y='{top + plot_h + 4}' text-anchor='end' font-size='11' fill='#c33'>absent"
             "</text>"]
    run: list[str] = []
    for x, r in zip(xs, ranks, strict=True):
        if r.rank is None:
            if len(run) > 1:
                parts.append(f"<polyline fill='none' stroke='#4a7bd0' stroke-width='2' points='{' '.join(run)}'/>")
            run = []
            continue
        run.append(f"{x:.1f},{y(r.rank):.1f}")
    if len(run) > 1:
        parts.append(f"<polyline fill='none' stroke='#4a7bd0' stroke-width='2' points='{' '.join(run)}'/>")
    for x, r in zip(xs, ranks, strict=True):
        label = escape(r.checkpoint if r.step is None else str(r.step))
        what = "not in top-k" if r.rank is None else f"rank {r.rank}"
        link = f" (linked to {escape(r.linked_to)})" if r.linked_to else ""
        mark = ("fill='#fff' stroke='#c33' stroke-width='2'" if r.rank is None else "fill='#4a7bd0'")
        parts.append(f"<circle class='{'absent' if r.rank is None else 'rank'}' cx='{x:.1f}' cy='{y(r.rank):.1f}' "
                     f"r='4' {mark}><title>{escape(r.checkpoint)}: {what}{link}</title></circle>")
        parts.append(f"<text x='{x:.1f}' y='{height - bottom + 18}' text-anchor='middle' font-size='11'>{label}"
                     "</text>")
    parts.append(f"<text x='{(left + width - right) / 2:.0f}' y='{height - 8}' text-anchor='middle' "
                 f"font-size='11'>{'step' if by_step else 'checkpoint'}</text></svg>")
    return "".join(parts)


def _step_cell(model: str, component: str, layer: int, index: int, head: int | None, s: VectorStep,
               expert: int | None = None) -> str:
    if s.linked_to:  # linked steps have no vector page of their own: they are the checkpoint named
        return f"{escape(s.checkpoint)} <span class=muted>= {escape(s.linked_to)}</span>"
    return (f"<a href='{vector_url(model, component, layer, index, head, s.checkpoint, expert)}'>"
            f"{escape(s.checkpoint)}</a>")


def training(model: str, component: str, layer: int, index: int, head: int | None, token: str,
             steps: list[VectorStep], ranks: list[TokenRankStep], error: str | None, expert: int | None = None) -> str:
    """One vector across training: the chosen token's rank per step as a plot, then top tokens per step."""
    hd = ("" if head is None else f" head {head}") + ("" if expert is None else f" expert {expert}")
    title = f"{model} {component} layer {layer}{hd} #{index} over training"
    form = (f"<form method=get><input name=token value='{escape(token, quote=True)}' placeholder='a token'>"
            + ("" if head is None else f"<input type=hidden name=head value='{head}'>")
            + ("" if expert is None else f"<input type=hidden name=expert value='{expert}'>")
            + " <button>plot rank</button></form>")
    plot = f"<p class=err>{escape(error)}</p>" if error else (
        f"<h2>rank of {_tok(token)} among the top tokens</h2>{rank_plot(ranks)}" if token else "")
    rows = "".join(
        f"<tr><td>{_step_cell(model, component, layer, index, head, s, expert)}"
        f"</td><td class=n>{'' if s.step is None else s.step}</td>"
        f"<td class=n>{'' if s.overlap is None else f'{s.overlap:.2f}'}</td><td class=n>{s.norm:.3g}</td>"
        f"<td>{' '.join(_tok(t.token) for t in s.top)}</td></tr>" for s in steps)
    table = ("<h2>top tokens per step</h2><table><tr><th>checkpoint</th><th>step</th><th>overlap with previous</th>"
             f"<th>norm</th><th>top tokens</th></tr>{rows}</table>")
    head_link = f"<a href='/model/{quote(model, safe='')}'>{escape(model)}</a>"
    return _layout(title, f"<h1>{head_link} {escape(component)} layer {layer}{hd} #{index}</h1>{form}{plot}{table}")


def _model_url(name: str, **query: object) -> str:
    shown = {k: v for k, v in query.items() if v not in (None, "")}
    return f"/model/{quote(name, safe='')}" + ("?" + urlencode(shown) if shown else "")


def _vector_list(m: ModelDetail, listing: VectorPage | None, f: dict, offset: int, error: str | None) -> str:
    """The model's vectors, sortable by norm or index, a page at a time, each linking to its page."""
    base = {k: f.get(k) for k in ("component", "layer", "limit")}
    limit = int(f.get("limit") or 50)
    comps = "".join(f"<option value='{escape(c.component, quote=True)}'"
                    f"{' selected' if c.component == f.get('component') else ''}>{escape(c.component)}</option>"
                    for c in m.components)
    form = (f"<form method=get action='{_model_url(m.name)}' class=filters><label>component <select name=component>"
            f"<option value=''>every component</option>{comps}</select></label> <label>layer <input name=layer "
            f"size=3 value='{escape(str(f.get('layer') or ''), quote=True)}'></label>"
            f"<input type=hidden name=order value='{escape(str(f.get('order') or 'norm'), quote=True)}'>"
            " <button>list</button></form>")
    if error:
        return form + f"<p class=err>{escape(error)}</p>"
    if listing is None or not listing.items:
        return form + "<p class=muted>no vectors</p>"

    def sort(order: str, text: str) -> str:
        if f.get("order", "norm") == order:
            return f"{text} ▾"
        return f"<a href='{escape(_model_url(m.name, **base, order=order), quote=True)}'>{text}</a>"

    norms = [v.norm for v in listing.items]
    lo, hi = min(norms), max(norms)
    rows = "".join(
        f"<tr><td><a href='{vector_url(m.name, v.component, v.layer, v.index, v.head, v.checkpoint, v.expert)}'>"
        f"{escape(v.component)} L{v.layer}{'' if v.head is None else f' H{v.head}'}"
        f"{'' if v.expert is None else f' E{v.expert}'} #{v.index}</a></td>"
        f"<td class=n>{v.norm:.4g}</td><td>{_span_bar(v.norm, lo, hi)}</td>"
        f"<td>{' '.join(_tok(t) for t in v.top)}</td></tr>" for v in listing.items)
    here = {**base, "order": f.get("order", "norm")}
    prev = (f"<a href='{escape(_model_url(m.name, **here, offset=max(0, offset - limit)), quote=True)}'>← previous</a>"
            if offset > 0 else "<span class=muted>← previous</span>")
    more = offset + limit < listing.total
    nxt = (f"<a href='{escape(_model_url(m.name, **here, offset=offset + limit), quote=True)}'>next →</a>"
           if more else "<span class=muted>next →</span>")
    paging = (f"<p class=paging>{prev} · vectors {offset + 1}–{offset + len(listing.items)} of {listing.total} · "
              f"{nxt}</p>")
    return (f"{form}{paging}<table><tr><th>vector ({sort('index', 'by index')})</th><th>{sort('norm', 'norm')}</th>"
            f"<th></th><th>top tokens</th></tr>{rows}</table>")


def model(m: ModelDetail, listing: VectorPage | None = None, filters: dict | None = None, offset: int = 0,
          error: str | None = None) -> str:
    info = (f"<p>{escape(m.family)} ({escape(m.model_type)}) · {m.n_layers} layers · d_model {m.d_model} · "
            f"d_ff {m.d_ff} · {m.n_heads} heads · vocabulary {m.vocab_size}</p>")
    ckpts = "".join(f"<tr><td>{escape(c.label)}</td><td class=n>{'' if c.step is None else c.step}</td>"
                    f"<td>{escape(c.basis)}</td><td class=n>{c.top_k}</td><td class=n>{c.n_vectors}</td>"
                    f"<td class=tok>{escape(c.content_hash[:12])}</td></tr>" for c in m.checkpoints)
    comps = "".join(f"<tr><td><a href='{escape(_model_url(m.name, component=c.component), quote=True)}'>"
                    f"{escape(c.component)}</a></td><td class=n>{c.layers}</td>"
                    f"<td class=n>{c.heads or ''}</td>"
                    f"<td class=n>{c.vectors}</td></tr>" for c in m.components)
    return _layout(m.name, f"<h1>{escape(m.name)}</h1>{info}<h2>checkpoints</h2><table><tr><th>label</th>"
                           "<th>step</th><th>basis</th><th>top-k</th><th>vectors</th><th>hash</th></tr>"
                           f"{ckpts}</table><h2>components (latest checkpoint)</h2>"
                           "<table><tr><th>component</th>"
                           f"<th>layers</th><th>heads</th><th>vectors</th></tr>{comps}</table>"
                           f"<h2>vectors</h2>{_vector_list(m, listing, filters or {}, offset, error)}")


def alignment(run: Alignment) -> str:
    """An alignment run: heat maps of the layer similarity (embedding space, raw baseline), pairs, matches."""
    from service.heatmap import heatmap_svg

    i = run.info
    marked = {(p.layer_a, p.layer_b) for p in run.pairs}
    title = f"alignment {i.alignment_id}"
    intro = (f"<p>{escape(i.model_a)}/{escape(i.checkpoint_a)} (rows) against {escape(i.model_b)}/"
             f"{escape(i.checkpoint_b)} (columns) on <b>{escape(i.component)}</b>, per {escape(i.unit)}, basis "
             f"{escape(i.basis)}, over {i.vocab_size} tokens. Cells: mean best vocabulary correlation; white "
             "borders: the Hungarian layer matching.</p>")
    axes: dict = {"rows_label": f"{i.model_a} layer", "cols_label": f"{i.model_b} layer"}
    maps = (f"<div class=cols><div class=scroll><h2>embedding space</h2>"
            f"{heatmap_svg(run.similarity, marked, title=title, **axes)}</div>")
    if run.raw_similarity is not None:
        maps += (f"<div class=scroll><h2>raw parameters (baseline)</h2>"
                 f"{heatmap_svg(run.raw_similarity, marked, title=title + ' raw', **axes)}</div></div>")
    else:
        maps += "<div><h2>raw parameters</h2><p class=muted>no baseline: the models' widths differ</p></div></div>"
    pairs = "".join(f"<tr><td class=n>{p.layer_a}</td><td class=n>{p.layer_b}</td><td class=n>{p.score:.3f}</td>"
                    f"<td class=n>{'' if p.raw_score is None else f'{p.raw_score:.3f}'}</td>"
                    f"<td class=n>{p.units}</td><td class=n>{p.mean_unit_score:.3f}</td></tr>" for p in run.pairs)
    units = "".join(
        f"<tr><td class=n>{m.layer_a}</td><td class=n>{m.index_a}</td><td class=n>{m.layer_b}</td>"
        f"<td class=n>{m.index_b}</td><td class=n>{m.score:.3f}</td>"
        f"<td class=n>{'' if m.raw_index_b is None else m.raw_index_b}</td></tr>" for m in run.matches)
    return _layout(title, f"<h1>{escape(title)}</h1>{intro}{maps}<h2>matched layers</h2><table><tr><th>layer A</th>"
                          "<th>layer B</th><th>score</th><th>raw</th><th>units</th><th>mean match</th></tr>"
                          f"{pairs}</table><h2>first {len(run.matches)} {escape(i.unit)} matches</h2><table><tr>"
                          "<th>layer A</th><th>index A</th><th>layer B</th><th>index B</th><th>score</th>"
                          f"<th>raw match</th></tr>{units}</table>")


def error(title: str, detail: str) -> str:
    return _layout(title, f"<h1>{escape(title)}</h1><p class=err>{escape(detail)}</p>")


def trace(t: TraceView) -> str:
    """A trace at one position: summary, flow graph, decomposition shares, other positions."""
    positions = " · ".join(
        f"<b>{i}</b>" if i == t.position else f"<a href='/trace/{t.trace_id}?position={i}'>{i}</a>"
        for i in range(len(t.tokens)))
    total = sum(x.norm for x in t.terms) or 1.0
    terms = sorted(t.terms, key=lambda x: -abs(x.logit))[:15]
    scale = max((abs(x.logit) for x in terms), default=0.0)
    rows = "".join(
        f"<tr><td>{escape(x.kind)}</td><td class=n>{'' if x.layer is None else x.layer}</td>"
        f"<td class=n>{'' if x.head is None else x.head}</td><td class=n>{x.norm:.3g}</td>"
        f"<td class=n>{x.norm / total:.1%}</td><td class=n>{x.logit:+.3f}</td><td>{_bar(x.logit, scale)}</td></tr>"
        for x in terms)
    base = (f" · <a href='/trace/{t.baseline_trace_id}?position={t.position}'>before the interventions</a>"
            if t.baseline_trace_id else "")
    body = (f"<h1>trace {t.trace_id}</h1>{flow.summary(t)}<p>positions: {positions}{base}</p>{flow.flow_svg(t)}"
            "<h2>decomposition of the final hidden state (largest effects on the predicted logit)</h2>"
            "<table><tr><th>term</th><th>layer</th><th>head</th><th>norm</th><th>norm share</th>"
            f"<th>logit</th><th></th></tr>{rows}</table>")
    return _layout(f"trace {t.trace_id}", body)

"""The flow graph of one trace at one position, VISIT-style: an inline SVG with a little vanilla JS.

Columns are the residual stream after the embedding and after each block (logit lens: top token, rank of the
final prediction). Between two states sit the block's strongest heads and FF neurons (by |effect on the
prediction's logit|), labelled with their top tokens. Edges run state → unit → next state, their width the
unit's |effect on the predicted logit|, blue where it raises the logit and red where it lowers it. Every node is
coloured by the rank of the prediction in it (green = rank 1, yellow = top 10, grey beyond). Hover or click a
node for its details; clicking highlights its edges. No CDN, no build: one string, standalone or in a page.
"""

from html import escape
from urllib.parse import quote, urlencode

from queries import TraceView
from queries.rows import NO_LM_HEAD

UNITS_PER_KIND = 3
TOP, ROW = 30, 52
W_STATE, W_UNIT, GAP = 130, 124, 46
COL = W_STATE + GAP + W_UNIT + GAP  # one block: its input state, then its units; edges only to the neighbours

SCRIPT = """
(function(){
  var info=document.getElementById('flow-info');
  document.querySelectorAll('#flow .node').forEach(function(n){
    n.addEventListener('mouseenter',function(){info.textContent=n.getAttribute('data-info');});
    n.addEventListener('click',function(){
      var on=!n.classList.contains('picked');
      document.querySelectorAll('#flow .picked').forEach(function(x){x.classList.remove('picked');});
      document.querySelectorAll('#flow .edge').forEach(function(e){
        e.classList.toggle('dim', on && e.getAttribute('data-node')!==n.id);});
      if(on){n.classList.add('picked');}
      info.textContent=n.getAttribute('data-info');
    });
  });
})();
"""

STYLE = """
#flow .node{cursor:pointer} #flow .node rect{stroke:#555;stroke-width:1}
#flow .node.picked rect{stroke:#000;stroke-width:3} #flow .edge{fill:none;opacity:.55}
#flow .edge.dim{opacity:.06} #flow text{font:11px ui-monospace,monospace;pointer-events:none}
#flow a.go text{pointer-events:auto;fill:#1a4fb0;font-size:13px} #flow a.go:hover text{text-decoration:underline}
#flow-info{font:13px ui-monospace,monospace;white-space:pre-wrap;min-height:2.6em;background:#f6f6f6;
padding:.4em .6em;border:1px solid #ddd}
"""


def _colour(rank: int) -> str:
    if rank == 1:
        return "#7fd17f"
    if rank <= 10:
        return "#f2d466"
    if rank <= 100:
        return "#f0b8a0"
    return "#dddddd"


def _short(text: str, n: int = 12) -> str:
    shown = repr(text)[1:-1] if text != text.strip() else text
    return shown if len(shown) <= n else shown[: n - 1] + "…"


def _node(node_id: str, x: float, y: float, w: float, lines: list[str], rank: int, info: str,
          href: str | None = None) -> str:
    texts = "".join(f"<text x='{x + 6:.0f}' y='{y + 15 + 14 * i:.0f}'>{escape(t)}</text>" for i, t in enumerate(lines))
    link = (f"<a class='go' href='{escape(href, quote=True)}'><text x='{x + w - 16:.0f}' y='{y + 15:.0f}'>↗</text>"
            "<title>open this vector</title></a>" if href else "")
    return (f"<g class='node' id='{node_id}' data-info='{escape(info, quote=True)}'>"
            f"<rect x='{x:.0f}' y='{y:.0f}' width='{w:.0f}' height='{14 * len(lines) + 8}' rx='5' "
            f"fill='{_colour(rank)}'/>{texts}<title>{escape(info)}</title>{link}</g>")


def _vector_href(t: TraceView, component: str, layer: int, index: int, head: int | None = None) -> str:
    query = urlencode({k: v for k, v in (("head", head), ("checkpoint", t.checkpoint)) if v is not None})
    return f"/vector/{quote(t.model, safe='')}/{component}/{layer}/{index}?{query}"


def _edge(node_id: str, x1: float, y1: float, x2: float, y2: float, value: float, scale: float) -> str:
    width = 1 + 9 * abs(value) / scale if scale > 0 else 1
    colour = "#3b6fd1" if value >= 0 else "#d1503b"
    mid = (x1 + x2) / 2
    return (f"<path class='edge' data-node='{node_id}' d='M{x1:.0f},{y1:.0f} C{mid:.0f},{y1:.0f} {mid:.0f},{y2:.0f} "
            f"{x2:.0f},{y2:.0f}' stroke='{colour}' stroke-width='{width:.1f}'/>")


def flow_svg(t: TraceView) -> str:
    """The graph as one ``<div>`` (SVG, info panel, script)."""
    n_layers = len(t.states) - 1
    units: dict[int, list[tuple[str, list[str], int, float, str, str]]] = {}
    for layer in range(n_layers):
        heads = sorted((h for h in t.heads if h.layer == layer), key=lambda h: -abs(h.logit))[:UNITS_PER_KIND]
        neurons = sorted((n for n in t.neurons if n.layer == layer), key=lambda n: -abs(n.logit))
        picked, seen = [], set()
        for n in neurons:
            if n.index not in seen:
                seen.add(n.index)
                picked.append(n)
        rows: list[tuple[str, list[str], int, float, str, str]] = []
        for h in heads:
            tops = " ".join(repr(x.token) for x in h.top)
            att = ", ".join(f"{k}:{tok!r} {w:.2f}" for k, tok, w in h.attends)
            rows.append((f"h{layer}-{h.head}", [f"head {layer}.{h.head}", _short(h.top[0].token) if h.top else ""],
                         h.pred_rank, h.logit, f"head {layer}.{h.head}: logit effect {h.logit:+.3f}, norm "
                         f"{h.norm:.3g}, prediction rank {h.pred_rank}\ntop: {tops}\nattends: {att}",
                         _vector_href(t, "attn_o", layer, 0, h.head)))
        for n in picked[:UNITS_PER_KIND]:
            tops = " ".join(repr(x.token) for x in n.top)
            rows.append((f"n{layer}-{n.index}", [f"FF {layer}.{n.index}", _short(n.top[0].token) if n.top else ""],
                         n.pred_rank, n.logit, f"FF neuron {layer}.{n.index}: activation {n.activation:+.3f}, "
                         f"logit effect {n.logit:+.3f}, prediction rank {n.pred_rank}\nwrites: {tops}"
                         + (f"\nvector_id {n.vector_id}" if n.vector_id is not None else ""),
                         _vector_href(t, "ff_value", layer, n.index)))
        units[layer] = rows
    scale = max((abs(u[3]) for rows in units.values() for u in rows), default=0.0)
    n_rows = max((len(rows) for rows in units.values()), default=1)
    height = TOP + ROW * max(n_rows, 1) + 20
    mid = TOP + ROW * max(n_rows, 1) / 2 - 10  # states sit level with the middle of their units
    width = 20 + COL * n_layers + W_STATE + 20  # sized to its content; the page scrolls it sideways
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' role='img' "
             f"aria-label='flow graph of trace {t.trace_id}'><rect width='100%' height='100%' fill='#fff'/>"]
    nodes = []
    for s in t.states:
        x = 20 + COL * s.layer
        name = "embedding" if s.layer == 0 else f"after block {s.layer - 1}"
        tops = " ".join(repr(x.token) for x in s.top)
        info = (f"stream {name}: prediction {t.prediction!r} rank {s.pred_rank}, logit {s.pred_logit:.3f}, "
                f"norm {s.norm:.3g}\ntop: {tops}")
        nodes.append(_node(f"s{s.layer}", x, mid - 25, W_STATE,
                           [name, _short(s.top[0].token) if s.top else "", f"rank {s.pred_rank}"], s.pred_rank, info))
    for layer, rows in units.items():
        x0 = 20 + COL * layer + W_STATE  # right edge of the state before the block
        ux = x0 + GAP
        x1 = 20 + COL * (layer + 1)  # left edge of the state after it
        for i, (nid, lines, rank, logit, info, href) in enumerate(rows):
            y = TOP + ROW * i
            parts.append(_edge(nid, x0, mid, ux, y + 18, logit, scale))
            parts.append(_edge(nid, ux + W_UNIT, y + 18, x1, mid, logit, scale))
            nodes.append(_node(nid, ux, y, W_UNIT, lines, rank, info, href))
    parts += nodes
    parts.append("</svg>")
    legend = ("<p class=muted>nodes coloured by the prediction's rank: <b style='background:#7fd17f'>1</b> "
              "<b style='background:#f2d466'>≤10</b> <b style='background:#f0b8a0'>≤100</b> "
              "<b style='background:#ddd'>&gt;100</b> · edges: |effect on the predicted logit|, "
              "<span style='color:#3b6fd1'>raises</span> / <span style='color:#d1503b'>lowers</span></p>")
    return (f"<style>{STYLE}</style><div id='flow'>{legend}"
            f"<div style='overflow:auto;max-height:80vh'>{''.join(parts)}</div>"
            f"<div id='flow-info'>hover or click a node</div></div><script>{SCRIPT}</script>")


def summary(t: TraceView) -> str:
    """The trace's header: input, position, prediction, interventions, decomposition error."""
    toks = " ".join(f"<b>{escape(repr(x))}</b>" if i == t.position else escape(repr(x))
                    for i, x in enumerate(t.tokens))
    changes = ", ".join(t.interventions) or "none"
    base = f" · baseline trace {t.baseline_trace_id}" if t.baseline_trace_id else ""
    what = (f"{escape(NO_LM_HEAD)}: top token <b>{escape(repr(t.prediction))}</b>" if t.readout == "none" else
            f"prediction <b>{escape(repr(t.prediction))}</b>")
    return (f"<p>{escape(t.model)}/{escape(t.checkpoint)} · input: {toks}</p>"
            f"<p>position {t.position} → {what} (logit "
            f"{t.prediction_logit:.3f}, readout {escape(t.readout)}) · interventions: {escape(changes)}{base} · "
            f"decomposition error {t.error:.2g}</p>")


def standalone(t: TraceView) -> str:
    """One self-contained HTML file: the summary and the graph, nothing fetched."""
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>trace {t.trace_id} · lensdb</title>"
            "<style>body{font:14px system-ui,sans-serif;margin:1em} .muted{color:#666}</style></head><body>"
            f"<h1>trace {t.trace_id}: {escape(t.prompt)}</h1>{summary(t)}{flow_svg(t)}</body></html>")

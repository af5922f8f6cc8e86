"""`lensdb`: the command line over the indexer and the query layer.

``main(argv)`` takes its arguments so tests call it in-process. Every ``LensdbError`` becomes one line on
stderr and exit status 1; usage errors exit 2 (argparse).

Each command imports what it needs when it runs, and its arguments are declared only when it is the command
asked for (``parser(only=...)``): a read command loads DuckDB and pydantic, never torch, and ``--help`` loads
neither (tests/test_layout.py).

While `lensdb serve` owns a store, DuckDB lets no other process open it; the service notes its URL next to the
file (``lens.duckdb.server``), and the read commands (and trace, align, register, forget) then ask the service
instead (``queries.remote``), with ``--token`` or ``LENSDB_TOKEN``. A note nothing answers for is ignored.
"""

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schema.errors import LensdbError, StoreError
from service.render import table

if TYPE_CHECKING:
    from pydantic import BaseModel

    import queries
    from indexer import IndexOptions, IndexResult
    from indexer.watch.cycle import WatchReport
    from queries.readonly import Limits
    from queries.remote import RemoteLens

DEFAULT_DB = "lens.duckdb"


def _service(args: argparse.Namespace) -> "RemoteLens | None":
    """The running `lensdb serve` that owns ``args.db``, when the note next to the file names one that answers for
    it; ``--verbose`` says which way the command goes."""
    from schema.connect import noted_url, server_note

    url = noted_url(args.db)
    remote = None
    if url is not None:  # the HTTP client is loaded only where a service noted that it owns the file
        from queries.remote import live_service

        remote = live_service(args.db, token=getattr(args, "access_token", None))
    if getattr(args, "verbose", False):
        if remote is not None:
            print(f"lensdb: {args.db} is owned by `lensdb serve` at {remote.url} ({server_note(args.db)}); "
                  "asking the service", file=sys.stderr)
        elif url is not None:
            print(f"lensdb: ignoring the stale note {server_note(args.db)}: no service at {url} owns {args.db}; "
                  "reading the file", file=sys.stderr)
        else:
            print(f"lensdb: reading {args.db} directly (no service owns it)", file=sys.stderr)
    return remote


def _connect(args: argparse.Namespace, limits: "Limits | None" = None) -> "queries.Lens":
    """A Lens on the store: through the service that owns it, else on the file (bounded by ``limits``)."""
    import queries

    return _service(args) or queries.connect(args.db, limits=limits)


def _emit(args: argparse.Namespace, items: "Sequence[BaseModel] | BaseModel", columns: list[str] | None = None) -> None:
    from pydantic import BaseModel

    if args.json:
        data = items.model_dump() if isinstance(items, BaseModel) else [i.model_dump() for i in items]
        print(json.dumps(data, indent=2, ensure_ascii=False))
        return
    rows = [items] if isinstance(items, BaseModel) else list(items)
    cols = columns or (list(type(rows[0]).model_fields) if rows else [])
    print(table(cols, [[getattr(r, c) for c in cols] for r in rows]) if rows else "(no rows)")


def cmd_index(args: argparse.Namespace) -> None:
    from indexer import IndexOptions, index_checkpoint

    opts = IndexOptions(name=args.name, top_k=args.top_k, basis=args.basis, replace=args.replace,
                        components=args.component or None, device=args.device, precision=args.precision,
                        read_basis=args.read_basis, head_maps=args.head_maps, pair_vocab=args.pair_vocab,
                        svd=args.svd, executor=args.executor, address=args.address, ray_workers=args.ray_workers,
                        revision=args.revision, base=args.base, lora=args.lora, vectors=args.vectors)
    if args.server:
        result = index_via_server(args.server, args.checkpoint, opts, quiet=args.quiet, token=args.access_token)
    else:
        from schema.connect import noted_url

        try:
            result = index_checkpoint(args.db, args.checkpoint, opts, progress=not args.quiet)
        except StoreError as err:
            if "in use" not in str(err):
                raise
            url = noted_url(args.db) or "http://HOST:PORT"
            raise StoreError(f"{err} To index into it, submit the job to the service: "
                             f"lensdb index {args.checkpoint} --server {url}") from None
    if args.json:
        print(result.model_dump_json(indent=2))
    else:
        print(result.message)


def cmd_index_dictionary(args: argparse.Namespace) -> None:
    from indexer.index.dictionary_run import index_dictionary
    from indexer.index.options import DictionaryOptions

    opts = DictionaryOptions(model=args.model, name=args.name, hook=args.hook, checkpoint=args.checkpoint,
                             replace=args.replace, device=args.device, precision=args.precision)
    result = index_dictionary(args.db, args.path, opts, progress=not args.quiet)
    if args.json:
        print(result.model_dump_json(indent=2))
    else:
        print(result.message)


def cmd_align_dictionaries(args: argparse.Namespace) -> None:
    from indexer.analyses.align_dictionaries import align_dictionaries

    out = align_dictionaries(args.db, args.model, args.dictionary_a, args.dictionary_b, component=args.component,
                             basis=args.basis)
    print(out.model_dump_json(indent=2) if args.json else out.message)


def index_via_server(server: str, checkpoint: str, opts: "IndexOptions", quiet: bool = False,
                     poll_s: float = 0.25, token: str | None = None) -> "IndexResult":
    """Submit an index job to a running service (POST /index) and follow GET /jobs/{id} until it ends. Ctrl-C
    cancels the job on the service (DELETE /jobs/{id}) before it exits: nothing of it is written."""
    import os

    import httpx

    from indexer import IndexResult
    from service.jobs import SERVER_ONLY

    base = server.rstrip("/")
    defaults = type(opts)()
    chosen = [k for k in SERVER_ONLY if getattr(opts, k) != getattr(defaults, k)]
    if chosen:
        flags = ", ".join("--" + k.replace("_", "-") for k in chosen)
        raise LensdbError(f"{flags}: the service decides where and how it computes (lensdb serve --index-device, "
                          "--index-precision, --index-executor, --ray-address, --ray-workers); drop them with "
                          "--server.")
    local = Path(checkpoint).exists()  # else a hub id, resolved in the server's own cache
    body = {"checkpoint": str(Path(checkpoint).resolve()) if local else checkpoint,
            **opts.model_dump(exclude=set(SERVER_ONLY))}
    token = token if token is not None else os.environ.get("LENSDB_TOKEN", "")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    job: dict | None = None
    try:
        with httpx.Client(base_url=base, timeout=30, headers=headers) as client:
            try:
                job = _answer(client.post("/index", json=body))
                shown = None
                while job["status"] in ("queued", "running"):
                    if not quiet and job["status"] != shown:
                        print(f"job {job['id']}: {job['status']}", file=sys.stderr)
                        shown = job["status"]
                    time.sleep(poll_s)
                    job = _answer(client.get(f"/jobs/{job['id']}"))
            except KeyboardInterrupt:
                if job is not None:
                    stopped = _answer(client.delete(f"/jobs/{job['id']}", timeout=60))
                    print(f"lensdb: index job {job['id']} on {base}: {stopped['status']}"
                          + (" (nothing of it was written)" if stopped["status"] == "cancelled" else ""),
                          file=sys.stderr)
                raise
    except httpx.HTTPError as err:
        raise LensdbError(f"cannot reach the lensdb service at {base}: {err}. "
                          "Is `lensdb serve` running?") from None
    if job["status"] in ("failed", "cancelled"):
        raise LensdbError(f"index job {job['id']} {job['status']}: {job['error']}")
    return IndexResult(**job["result"])


def _answer(response) -> dict:
    if response.is_success:
        return response.json()
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    raise LensdbError(f"the service answered {response.status_code}: {detail}")


def cmd_serve(args: argparse.Namespace) -> None:
    import signal

    import uvicorn

    from service.app import create_app
    from service.settings import Settings, exposure_problem

    given = {name: getattr(args, name) for name in Settings.model_fields if getattr(args, name) is not None}
    settings = Settings(**given)
    if (refusal := exposure_problem(settings)) is not None:
        raise LensdbError(refusal)
    app = create_app(settings)
    url = f"http://{settings.host}:{settings.port}"
    from schema.connect import server_note

    noted = server_note(settings.db)
    noted.write_text(f"{url}\n{app.state.owner.instance}\n")
    print(f"lensdb: serving {settings.db} at {url} (pages at /, API docs at /docs)", file=sys.stderr)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it: exit cleanly then, so `finally` runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
    finally:
        noted.unlink(missing_ok=True)


def cmd_models(args: argparse.Namespace) -> None:
    with _connect(args) as db:
        models = db.models()
    if args.json:
        print(json.dumps([m.model_dump() for m in models], indent=2))
        return
    rows = [[m.name, m.family, m.n_layers, m.d_model, m.d_ff, m.vocab_size, c.label, c.step, c.basis, c.top_k,
             c.n_vectors] for m in models for c in m.checkpoints]
    print(table(["model", "family", "layers", "d_model", "d_ff", "vocab", "checkpoint", "step", "basis", "top_k",
                 "vectors"], rows) if rows else "(no models)")


def _hits(args: argparse.Namespace, side: str) -> None:
    from queries import HitFilter
    from queries.lens import hit_filter

    def typed(t: str) -> str | int:
        if not args.id:
            return t
        if not t.isdigit():
            raise LensdbError(f"--id takes token ids (digits), not {t!r}.")
        return int(t)

    plus = [typed(t) for t in args.token]
    minus = [typed(t) for t in args.minus or []]
    token: str | int | list[str | int] | None = plus[0] if len(plus) == 1 else (plus or None)
    wanted = hit_filter(None, {f: getattr(args, f) for f in HitFilter.model_fields if getattr(args, f) is not None})
    with _connect(args) as db:
        find = db.promoters if side == "top" else db.suppressors
        hits = find(token, wanted, minus=minus or None, text=args.text)
    experts = ["expert"] if any(h.expert is not None for h in hits) else []  # only mixture-of-experts hits have one
    sources = ["source_token"] if any(h.source_token is not None for h in hits) else []  # head-map pairs: src → token
    dicts = ["dictionary"] if any(h.dictionary is not None for h in hits) else []  # only latents have one
    _emit(args, hits, ["model", "checkpoint", *dicts, "component", "layer", "head", *experts, "index", "rank",
                       *sources, "token", "score", "zscore", "exact"])
    _resolution_notes(hits)
    if not args.json and hits and not hits[0].exact:
        print(f"lensdb: not exact: {hits[0].exact_note}", file=sys.stderr)


def _resolution_notes(hits: Any) -> None:
    """On stderr: the models whose vocabulary has no such token, and models where the word matched only
    case-insensitively or without its marker (the table itself stays clean for pipes)."""
    loose = sorted({(m.model, m.form) for m in getattr(hits, "matches", []) if m.form not in ("exact", "id")})
    if loose:
        print("lensdb: matched " + "; ".join(f"{form} in {model}" for model, form in loose), file=sys.stderr)
    if getattr(hits, "missing", None):
        print(f"lensdb: {hits.note()}", file=sys.stderr)


def cmd_vector(args: argparse.Namespace) -> None:
    with _connect(args) as db:
        v = db.vector(args.model, args.component, args.layer, args.index, head=args.head, checkpoint=args.checkpoint,
                      expert=args.expert, dictionary=args.dictionary)
    if args.json:
        print(v.model_dump_json(indent=2))
        return
    head = (f" head {v.head}" if v.head is not None else "") + (f" expert {v.expert}" if v.expert is not None else "")
    if v.dictionary is not None:
        head += f" dictionary {v.dictionary}" + (f" ({v.label!r})" if v.label is not None else "")
    print(f"{v.model}/{v.checkpoint} {v.component} layer {v.layer}{head} index {v.index}  "
          f"norm {v.norm:.4g}  logits mean {v.logit_mean:.4g} std {v.logit_std:.4g}  basis {v.basis}")
    n = max(len(v.top), len(v.bottom))
    rows = []
    for i in range(min(n, args.limit)):
        t = v.top[i] if i < len(v.top) else None
        b = v.bottom[i] if i < len(v.bottom) else None
        rows.append([i + 1, t.token if t else None, t.score if t else None, b.token if b else None,
                     b.score if b else None])
    print(table(["rank", "promotes", "score", "suppresses", "score"], rows))


def cmd_tokens(args: argparse.Namespace) -> None:
    token: str | int = int(args.token) if args.id else args.token
    with _connect(args) as db:
        found = db.tokens(token, model=args.model)
    _emit(args, found)
    if getattr(found, "missing", None):
        print(f"lensdb: {found.note()}", file=sys.stderr)


def cmd_sql(args: argparse.Namespace) -> None:
    with _connect(args) as db:
        result = db.sql(args.query, max_rows=args.max_rows, timeout_s=args.timeout, max_bytes=args.max_bytes)
    if args.json:
        print(json.dumps([dict(zip(result.columns, r, strict=True)) for r in result.rows], indent=2, default=str))
    else:
        print(table(result.columns, result.rows))
    if result.truncated_by == "bytes":
        print(f"(truncated at {args.max_bytes} bytes; raise --max-bytes or select less)", file=sys.stderr)
    elif result.truncated:
        print(f"(truncated at {args.max_rows} rows; raise --max-rows or add a LIMIT)", file=sys.stderr)


def cmd_check(args: argparse.Namespace) -> None:
    from queries.readonly import Limits

    with _connect(args, Limits(memory_limit=args.memory_limit)) as db:
        report = db.check()
    if args.json:
        print(json.dumps({"ok": report.ok, **report.model_dump()}, indent=2))
    else:
        for note in report.notes:
            print(f"note: {note}")
        for problem in report.problems:
            print(f"problem: {problem}")
    if not report.ok:
        raise LensdbError(f"{args.db}: {len(report.problems)} problem(s) found (listed above); re-index the "
                          "checkpoints named there with --replace, or restore the file from a copy.")
    if not args.json:
        pairs = f" and {report.pair_rows} head-map pairs" if report.pair_rows else ""
        print(f"ok: {report.checkpoints} checkpoints, {report.vectors} vectors, {report.token_rows} token rows{pairs}")


def cmd_register(args: argparse.Namespace) -> None:
    remote = _service(args)
    if remote is not None:  # the service owns the file: it registers, on its write queue
        with remote:
            answer = remote.call("POST", "/sources", body={
                "name": args.name, "path": str(Path(args.source).expanduser().resolve()), "kind": args.kind,
                "top_k": args.top_k, "basis": args.basis})
        print(json.dumps(answer, indent=2, default=str) if args.json else answer["message"])
        return
    from indexer.watch.cycle import register_source

    result = register_source(args.db, args.name, args.source, kind=args.kind, top_k=args.top_k, basis=args.basis)
    print(result.model_dump_json(indent=2) if args.json else result.message)


def cmd_forget(args: argparse.Namespace) -> None:
    remote = _service(args)
    if remote is not None:  # the service owns the file: it forgets, on its write queue
        from urllib.parse import quote

        with remote:
            answer = remote.call("DELETE", f"/models/{quote(args.model, safe='')}",
                                 params={"checkpoint": args.checkpoint, "dictionary": args.dictionary})
    else:
        from dataclasses import asdict

        from schema.deletes import forget

        answer = asdict(forget(args.db, args.model, args.checkpoint, args.dictionary))
    print(json.dumps(answer, indent=2) if args.json else answer["message"])


def cmd_registered(args: argparse.Namespace) -> None:
    with _connect(args) as db:
        _emit(args, db.registered(), ["name", "kind", "path", "top_k", "basis", "indexed", "linked"])


def _print_report(args: argparse.Namespace, report: "WatchReport") -> None:
    if args.json:
        print(report.model_dump_json(), flush=True)
        return
    print(report.message, flush=True)
    for item in report.items:
        step = "" if item.step is None else f" (step {item.step})"
        print(f"  {item.action:8} {item.source}/{item.label}{step}: {item.reason or ''}", flush=True)


def cmd_watch(args: argparse.Namespace) -> None:
    import threading

    from indexer.watch.cycle import WatchReport, parse_every, watch_cycle, watch_loop

    every = parse_every(args.every)
    settle = parse_every(args.settle) if args.settle not in ("0", "0s") else 0.0
    if not Path(args.db).exists():
        raise StoreError(f"no lensdb store at {args.db}; register a model first: lensdb register NAME FOLDER "
                         f"--db {args.db}")

    def cycle() -> WatchReport:
        return watch_cycle(args.db, settle_s=settle, look_gap_s=args.look_gap, only=args.model)

    if not args.once:
        print(f"lensdb: watching every {args.every} (Ctrl-C to stop)", file=sys.stderr)
    watch_loop(cycle, every, threading.Event(), once=args.once, report=lambda r: _print_report(args, r),
               on_error=lambda e: print(f"lensdb: watch cycle failed: {e}", file=sys.stderr, flush=True))


def cmd_drift(args: argparse.Namespace) -> None:
    with _connect(args) as db:
        if args.token is not None:
            token: str | int = int(args.token) if args.id else args.token
            ranks = db.token_rank_over_training(args.model, token, args.component, args.layer, args.index,
                                                head=args.head, side=args.side, expert=args.expert)
            if args.json:
                _emit(args, ranks)
                return
            rows = [[r.checkpoint, r.step, r.linked_to, r.rank if r.rank is not None else f"not in top {r.top_k}",
                     r.score, r.zscore] for r in ranks]
            print(table(["checkpoint", "step", "linked_to", "rank", "score", "zscore"], rows))
            return
        steps = db.drift_vector(args.model, args.component, args.layer, args.index, head=args.head, k=args.k,
                                expert=args.expert, dictionary=args.dictionary)
    if args.json:
        _emit(args, steps)
        return
    rows = [[s.checkpoint, s.step, s.linked_to, s.shared, s.overlap, s.jaccard, s.norm, s.norm_change,
             " ".join(repr(t.token) for t in s.top)] for s in steps]
    print(table(["checkpoint", "step", "linked_to", "shared", "overlap", "jaccard", "norm", "norm_change",
                 f"top {args.k}"], rows))


def cmd_changed(args: argparse.Namespace) -> None:
    with _connect(args) as db:
        changed = db.changed_most(args.model, args.from_checkpoint, args.to_checkpoint, component=args.component,
                                  limit=args.limit)
    _emit(args, changed, ["component", "layer", "head", "index", "shared", "overlap", "jaccard", "norm_from",
                          "norm_to", "norm_change", "top_from", "top_to"])


def cmd_head_map(args: argparse.Namespace) -> None:
    token: str | int = int(args.token) if args.id else args.token
    with _connect(args) as db:
        rows = db.head_map(token, kind=args.kind, model=args.model, checkpoint=args.checkpoint, limit=args.limit,
                           per_head=args.per_head)
    if args.json:
        print(json.dumps([r.model_dump() for r in rows], indent=2, ensure_ascii=False))
        return
    what = "writes when attending to" if args.kind == "ov" else "attends to keys, for a query at"
    print(f"what each head {what} {rows[0].source_token!r} (strongest heads first):" if rows else "(no heads)")
    print(table(["model", "checkpoint", "layer", "head", "best_z", "targets"],
                [[r.model, r.checkpoint, r.layer, r.head, r.best_zscore,
                  ", ".join(repr(t.token) for t in r.targets)] for r in rows]))


def cmd_optimize(args: argparse.Namespace) -> None:
    from schema.optimize import optimize

    if not Path(args.db).exists():
        raise StoreError(f"no lensdb store at {args.db}; create one with `lensdb index CHECKPOINT --db {args.db}`.")
    started = time.perf_counter()
    before = Path(args.db).stat().st_size
    rows = optimize(args.db)
    counts = ", ".join(f"{t} {n}" for t, n in rows.items())
    print(f"rewrote the store ({counts} rows as one token-sorted run each; {before / 2**20:.0f} MiB → "
          f"{Path(args.db).stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - started:.1f}s")


def cmd_export(args: argparse.Namespace) -> None:
    from queries.export import export_parquet

    result = export_parquet(args.db, args.parquet, overwrite=args.overwrite)
    if args.json:
        print(result.model_dump_json(indent=2))
        return
    counts = ", ".join(f"{name} {n}" for name, n in result.rows.items())
    print(f"wrote {result.files} Parquet files under {result.folder} ({counts} rows)")


def cmd_trace(args: argparse.Namespace) -> None:
    from indexer.analyses.trace import TraceOptions, trace_input
    from queries.rows import NO_LM_HEAD
    from service.flow import standalone

    opts = TraceOptions(model=args.model, prompt=args.prompt, checkpoint=args.checkpoint, position=args.position,
                        zero=args.zero or [], boost=args.boost or [], zero_heads=args.zero_head or [],
                        boost_value=args.boost_value)
    remote = _service(args)
    if remote is not None:  # the service owns the file: it traces, on its write queue
        import queries

        with remote:
            after = queries.TraceView.model_validate(remote.call("POST", "/traces", body=opts.model_dump()))
            before = remote.trace(after.baseline_trace_id) if after.baseline_trace_id else None
        message = f"traced {after.model}/{after.checkpoint} as trace {after.trace_id} on {remote.url}"
    else:
        result = trace_input(args.db, opts)
        message = result.message
        with _connect(args) as db:
            after = db.trace(result.trace_id)
            before = db.trace(result.baseline_trace_id) if result.baseline_trace_id else None
    if args.html:
        Path(args.html).write_text(standalone(after), encoding="utf-8")
    if args.json:
        print(json.dumps({"after": after.model_dump(), "before": before.model_dump() if before else None},
                         indent=2, default=str))
        return
    print(f"{message}: position {after.position} {after.tokens[after.position]!r} of "
          f"{' '.join(repr(t) for t in after.tokens)}")
    print(f"decomposition error {after.error:.2g} (tolerance 1e-4)")

    def cells(t: "queries.TraceView") -> list[list[object]]:
        return [[s.top[0].token if s.top else None, s.pred_rank] for s in t.states]

    if after.readout == "none":
        print(f"{NO_LM_HEAD}; its top token at position {after.position} is {after.prediction!r}, which is no "
              "prediction of the model")
    if before is None:
        if after.readout != "none":
            print(f"prediction {after.prediction!r} (logit {after.prediction_logit:.4g})")
        rows = [[s.layer] + c for s, c in zip(after.states, cells(after), strict=True)]
        print(table(["layer", "top token", f"rank of {after.prediction!r}"], rows))
    else:
        print(f"interventions: {', '.join(after.interventions)}")
        print(f"prediction before {before.prediction!r}, after {after.prediction!r}")
        rows = [[s.layer] + b + a for s, b, a in zip(after.states, cells(before), cells(after), strict=True)]
        print(table(["layer", "top before", f"rank {before.prediction!r} before", "top after",
                     f"rank {after.prediction!r} after"], rows))
    if args.html:
        print(f"wrote {args.html}")

def print_alignment(run: "queries.Alignment", limit: int) -> None:
    """The layer matrix (rows: A's layers), the matched pairs and, where widths match, the raw baseline."""
    from queries import UnitMatch

    info = run.info
    print(f"alignment {info.alignment_id}: {info.model_a}/{info.checkpoint_a} (rows) vs {info.model_b}/"
          f"{info.checkpoint_b} (columns), {info.component} per {info.unit}, basis {info.basis}, "
          f"{info.vocab_size} tokens")
    cols = [f"B{j}" for j in range(len(run.similarity[0]))]
    how = {"best": "mean best |vocabulary correlation| of A's vectors",
           "paper": "mean |vocabulary correlation| over all pairs, as Dar et al.",
           "best_signed": "mean best signed vocabulary correlation, as lensdb computed it before schema version 3"}
    print(f"\nlayer similarity in embedding space ({how.get(info.statistic, info.statistic)}):")
    print(table(["A", *cols], [[i, *row] for i, row in enumerate(run.similarity)]))
    if run.raw_similarity is not None:
        print("\nraw-parameter baseline (same formula over raw coordinates):")
        print(table(["A", *cols], [[i, *row] for i, row in enumerate(run.raw_similarity)]))
    else:
        print("\nraw-parameter baseline: none, the models' widths differ")
    print("\nmatched layers (Hungarian):")
    print(table(["layer_a", "layer_b", "score", "raw_score", info.unit + "s", "same_index", "mean_match",
                 "raw_same_index", "raw_mean_match"],
                [[p.layer_a, p.layer_b, p.score, p.raw_score, p.units, p.same_index, p.mean_unit_score,
                  p.raw_same_index, p.mean_raw_unit_score] for p in run.pairs]))
    if limit and run.matches:
        print(f"\nfirst {min(limit, len(run.matches))} {info.unit} matches:")
        print(table(list(UnitMatch.model_fields),
                    [list(m.model_dump().values()) for m in run.matches[:limit]]))


def cmd_align(args: argparse.Namespace) -> None:
    from indexer.analyses.align import align_models
    from service.heatmap import heatmap_png

    if args.png:
        png_parent = Path(args.png).resolve().parent
        if not png_parent.is_dir():
            raise LensdbError(f"cannot write {args.png}: folder {png_parent} does not exist.")
    remote = _service(args)
    if remote is not None:  # the service owns the file: it aligns, on its write queue
        import queries

        with remote:
            run = queries.Alignment.model_validate(remote.call("POST", "/align", body={
                "model_a": args.model_a, "model_b": args.model_b, "component": args.component,
                "checkpoint_a": args.checkpoint_a, "checkpoint_b": args.checkpoint_b, "basis": args.basis,
                "statistic": args.similarity, "limit": 2**31 - 1}))
        message = f"alignment {run.info.alignment_id} stored by the service at {remote.url}"
    else:
        outcome = align_models(args.db, args.model_a, args.model_b, component=args.component,
                               checkpoint_a=args.checkpoint_a, checkpoint_b=args.checkpoint_b, basis=args.basis,
                               statistic=args.similarity)
        message = outcome.message
        with _connect(args) as db:
            run = db.alignment(outcome.alignment_id)
    if args.png:
        marked = {(p.layer_a, p.layer_b) for p in run.pairs}
        Path(args.png).write_bytes(heatmap_png(run.similarity, marked))
    if args.json:
        print(run.model_dump_json(indent=2))
        return
    print_alignment(run, args.limit)
    print(f"\n{message}" + (f"; heat map {args.png}" if args.png else ""))


def cmd_alignments(args: argparse.Namespace) -> None:
    with _connect(args) as db:
        if args.id is not None:
            run = db.alignment(args.id)
            if args.json:
                print(run.model_dump_json(indent=2))
            else:
                print_alignment(run, args.limit)
            return
        _emit(args, db.alignments(), ["alignment_id", "model_a", "checkpoint_a", "model_b", "checkpoint_b",
                                      "component", "basis", "statistic", "raw_comparable", "mean_matched",
                                      "created_at"])


def read_examples(path: str) -> tuple[list[str], list[int]]:
    """A JSONL file of {"text": ..., "label": int} lines."""
    texts, labels = [], []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as err:
        raise LensdbError(f"cannot read {path}: {err.strerror}.") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            texts.append(str(row["text"]))
            labels.append(int(row["label"]))
        except (ValueError, KeyError, TypeError):
            raise LensdbError(f"{path}:{n}: expected a JSON object with \"text\" and an integer \"label\".") from None
    return texts, labels


def cmd_stitch(args: argparse.Namespace) -> None:
    from indexer.analyses.stitch import stitch

    texts, labels = read_examples(args.data)
    layers = [int(x) for x in args.layers.split(",")] if args.layers else None
    report = stitch(args.model_a, args.model_b, texts, labels, b_layers=layers, method=args.map)
    if args.json:
        print(report.model_dump_json(indent=2))
        return
    print(f"A (fine-tuned, with head): {report.model_a}\nB (pretrained): {report.model_b}")
    print("map: " + ("E_Bᵀ (E_Aᵀ)⁺, the paper's" if report.map == "paper" else "E_B⁺ E_A"))
    print(f"{report.n_examples} examples; chance (majority) {report.chance:.3f}; A alone {report.accuracy_a:.3f}")
    print(table(["b_layers_kept", "a_resumes_at", "accuracy"],
                [[r.b_layers, r.a_resumes_at, r.accuracy] for r in report.rows]))


def cmd_finetune_diff(args: argparse.Namespace) -> None:
    from indexer.analyses.stitch import finetune_diff

    diff = finetune_diff(args.pretrained, args.finetuned, component=args.component, k=args.k, top=args.top,
                         basis=args.basis)
    if args.json:
        print(diff.model_dump_json(indent=2))
        return

    def words(ws: list) -> str:
        return " ".join(repr(w.token) for w in ws)

    if diff.classifier:
        print("classification head rows, read through the embedding:")
        print(table(["label", "promotes", "suppresses"], [[c.label, words(c.top), words(c.bottom)]
                                                          for c in diff.classifier]))
    else:
        print("(the fine-tuned checkpoint has no classification head)")
    print(f"\n{diff.component} vectors the fine-tuning changed most (θ_ft − θ_pre):")
    print(table(["layer", "index", "head", "norm", "relative", "closest_label", "label_corr", "promotes", "suppresses"],
                [[v.layer, v.index, v.head, v.norm, v.relative, v.closest_label, v.label_corr, words(v.top),
                  words(v.bottom)] for v in diff.vectors]))


def cmd_architectures(args: argparse.Namespace) -> None:
    from indexer.model.adapters import ADAPTERS

    rows = [[cls.family, ", ".join(cls.model_types), ", ".join(s.name for s in cls.components if s.default),
             cls.notes] for cls in ADAPTERS]
    print(table(["family", "model_type", "indexes (embedding: opt-in)", "notes"], rows))
    specs = {s.name: s for cls in ADAPTERS for s in cls.components}
    print()
    print(table(["component", "role", "meaning"], [[s.name, s.role, s.doc] for s in specs.values()]))
    print()
    print(table(["source", "read as"], [[k, v] for k, v in SOURCES]))


def cmd_upgrade(args: argparse.Namespace) -> None:
    from schema.writer import upgrade_store

    before, after = upgrade_store(args.db)
    print(f"{args.db}: schema version {after} already" if before == after else
          f"upgraded {args.db} from schema version {before} to {after}")


SOURCES = (
    ("folder", "config.json + model.safetensors (or a sharded index) + tokenizer files"),
    ("hub id (org/name)", "its snapshot in the local Hugging Face cache, --revision branch/tag/commit; never "
                          "downloaded"),
    ("FILE.gguf", "llama.cpp GGUF (llama, mistral, mixtral, qwen2, qwen3, qwen2moe, qwen3moe, olmoe, phi3), "
                  "dequantized per tensor; needs the gguf package"),
    ("LoRA adapter folder", "PEFT LoRA over its base (--base): merged W + s·B·A, or --lora delta for s·B·A alone; "
                            "DoRA, IA³ and other PEFT methods refused"),
    ("quantized safetensors", "bitsandbytes 8-bit, GPTQ, AWQ GEMM dequantized per tensor; bitsandbytes 4-bit and "
                              "other methods refused naming the format"),
)


# ---- arguments, declared per command ----------------------------------------------------------------------

def whole(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type: a whole number written in digits (no 1e20, no 7_0), from ``lo`` to ``hi``."""
    def parse(text: str) -> int:
        digits = text[1:] if text.startswith("-") else text
        if not (digits.isascii() and digits.isdigit()) or len(digits) > 30:
            raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}")
        value = int(text)
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is out of range: use {lo} to {hi}")
        return value
    parse.__name__ = "whole number"
    return parse


def seconds(lo: float, hi: float, zero: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number of seconds above ``lo`` (or equal, with ``zero``) and at most ``hi``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number of seconds, not {text!r}") from None
        if not (math.isfinite(value) and (lo <= value if zero else lo < value) and value <= hi):
            raise argparse.ArgumentTypeError(f"{text} seconds is out of range: use a number above {lo:g} and at "
                                             f"most {hi:g}")
        return value
    parse.__name__ = "seconds"
    return parse


def finite(text: str) -> float:
    """An argparse type: a finite number (no inf, no nan)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None
    if not math.isfinite(value) or abs(value) > 1e30:
        raise argparse.ArgumentTypeError(f"{text} is not a usable number")
    return value

def add_fields(sp: argparse.ArgumentParser, model: Any, env_prefix: str | None = None) -> None:
    """One ``--flag`` per field of a pydantic model, with the field's description as help: the model is the one
    declaration of these options (``HitFilter`` for searches, ``Settings`` for serve)."""
    import types
    import typing

    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, types.UnionType) or typing.get_origin(ann) is typing.Union:
            ann = next(a for a in typing.get_args(ann) if a is not type(None))
        many = typing.get_origin(ann) is list
        kind = {int: int, float: float}.get(ann, str)
        shown = field.default if not many else None
        notes = ([] if shown in (None, "") else [f"default {shown}"]) + (
            [f"env {env_prefix}{name.upper()}"] if env_prefix else [])
        sp.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None,
                        action="append" if many else "store",
                        choices=typing.get_args(ann) if typing.get_origin(ann) is typing.Literal else None,
                        help=field.description + (f" ({'; '.join(notes)})" if notes else ""))


def _index_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("checkpoint", help="Hugging Face folder (config.json, safetensors, tokenizer), a hub id in the "
                    "local cache (EleutherAI/pythia-70m; never downloaded), a llama.cpp .gguf file, or a PEFT/LoRA "
                    "adapter folder")
    sp.add_argument("--revision", help="with a hub id: the cached branch, tag or commit (default main)")
    sp.add_argument("--base", help="with a LoRA adapter folder: its base model, a folder or cached hub id "
                    "(default: the base named in adapter_config.json)")
    sp.add_argument("--lora", choices=["merged", "delta"], default="merged",
                    help="with a LoRA adapter: index the merged weights W + s·B·A (default), or the adapter's "
                    "low-rank update s·B·A alone as vectors of their own (delta)")
    sp.add_argument("--name", help="model name (default: the folder name)")
    sp.add_argument("--top-k", type=whole(1, 1000), default=50, help="tokens kept per vector and side (default 50)")
    sp.add_argument("--basis", choices=["folded", "raw"], default="folded",
                    help="folded: final-norm gain folded into W_U, centred (default); raw: W_U as is")
    sp.add_argument("--component", action="append", help="index only this component (repeatable); "
                    "see `lensdb architectures`")
    sp.add_argument("--read-basis", choices=["unembedding", "embedding"], default="unembedding",
                    help="matrix that reads what reading vectors (ff_key, attn_q/k/v) read: the unembedding "
                    "(default) or the input embedding; they differ in untied models (Pythia, Llama)")
    sp.add_argument("--replace", action="store_true", help="re-index a checkpoint already in the store")
    sp.add_argument("--no-vectors", dest="vectors", action="store_false",
                    help="do not store each vector (float32) and the basis rows: smaller store, but promoters beyond "
                    "the top-k lists and contrasts/sets/texts are then not exact (answers say so)")
    sp.add_argument("--head-maps", action="store_true",
                    help="also index attention heads as V×V token maps: exact top OV/QK pairs, SVD directions, "
                    "and factors for `lensdb head-map` (GPT-2 small: ~46 TFLOP, minutes on a GPU)")
    sp.add_argument("--pair-vocab", default="all",
                    help="tokens head-map pairs may use: all, ascii, alnum, or a file of tokens (default all)")
    sp.add_argument("--svd", type=whole(1, 64), default=4, help="singular directions kept per head map (default 4)")
    sp.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                    help="where to project: auto uses CUDA when torch sees it (default auto)")
    sp.add_argument("--precision", choices=["fp32", "tf32", "bf16"], default="fp32",
                    help="fp32 is exact (default); tf32/bf16 (CUDA) pick candidates fast and rescore them in fp32")
    sp.add_argument("--executor", choices=["local", "ray"], default="local",
                    help="project units here (default) or on a Ray cluster; rows are written here either way")
    sp.add_argument("--address", help="with --executor ray: auto, host:port or ray://host:10001 "
                    "(default: start a local Ray instance)")
    sp.add_argument("--ray-workers", type=whole(1, 65536), metavar="N",
                    help="with --executor ray: actors to start (default: one per CPU of the cluster)")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.add_argument("--server", metavar="URL",
                    help="submit the job to a running `lensdb serve` (http://127.0.0.1:8000) and follow it; "
                    "sends --token (or LENSDB_TOKEN) as its bearer token; Ctrl-C cancels the job")


def _check_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--memory-limit", default="512MB",
                    help="most memory DuckDB may take for the check; beyond it, it spills to a temporary folder "
                    "(default 512MB)")


def _forget_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("model", help="the model to forget")
    sp.add_argument("--checkpoint", help="forget only this checkpoint (its label) of the model")
    sp.add_argument("--dictionary", help="forget only this dictionary (SAE, transcoder, direction set) of the model: "
                    "its latents and what was made from them")


def _index_dictionary_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("path", help="a dictionary: an SAELens folder (cfg.json + sae_weights.safetensors), a sparsify "
                    "hookpoint folder (cfg.json + sae.safetensors), a Gemma Scope params.npz, or a direction set "
                    "(directions.json + directions.safetensors)")
    sp.add_argument("--model", required=True, help="the indexed model it belongs to")
    sp.add_argument("--name", help="dictionary name (default: from its folder)")
    sp.add_argument("--hook", help="hook point where the files name none (Gemma Scope outside its release layout) "
                    "or to override it: blocks.L.hook_resid_post, blocks.L.hook_mlp_out, …")
    sp.add_argument("--checkpoint", help="checkpoint label of the model (default: its latest)")
    sp.add_argument("--replace", action="store_true", help="re-index a dictionary already in the store (same "
                    "content, or the same name with other content)")
    sp.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                    help="where to project: auto uses CUDA when torch sees it (default auto)")
    sp.add_argument("--precision", choices=["fp32", "tf32", "bf16"], default="fp32",
                    help="fp32 is exact (default); tf32/bf16 (CUDA) pick candidates fast and rescore them in fp32")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")


def _align_dictionaries_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("model", help="the model both dictionaries belong to")
    sp.add_argument("dictionary_a", metavar="A")
    sp.add_argument("dictionary_b", metavar="B")
    sp.add_argument("--component", choices=["sae_dec", "sae_enc", "dir_write", "dir_read"], default="sae_dec",
                    help="which rows to compare: decoder (default) or encoder rows, or a direction set's")
    sp.add_argument("--basis", choices=["folded", "raw"], help="default: the basis they were indexed with")


def _serve_args(sp: argparse.ArgumentParser) -> None:
    from service.settings import Settings

    add_fields(sp, Settings, env_prefix="LENSDB_")


def _hit_args(sp: argparse.ArgumentParser) -> None:
    from queries import HitFilter

    sp.add_argument("token", nargs="*", help="a word (paris), a raw token (Ġparis, ##s), or an id with --id; "
                    "several: their mean direction")
    sp.add_argument("--id", action="store_true", help="TOKEN is a token id")
    sp.add_argument("--minus", action="append", metavar="TOKEN",
                    help="subtract this token's direction (repeatable: their mean), e.g. paris --minus london")
    sp.add_argument("--text", help="the mean direction of a text's words, in each model's vocabulary")
    add_fields(sp, HitFilter)


def _vector_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("model")
    sp.add_argument("component", help="e.g. ff_value, ff_key")
    sp.add_argument("layer", type=whole(0, 2**63 - 1))
    sp.add_argument("index", type=whole(0, 2**63 - 1))
    sp.add_argument("--head", type=whole(0, 2**63 - 1), help="attention head, for per-head components")
    sp.add_argument("--expert", type=whole(0, 2**63 - 1),
                    help="expert, for the expert components of mixture-of-experts models")
    sp.add_argument("--dictionary", help="the dictionary of a latent (sae_dec, sae_enc, dir_write, dir_read), where "
                    "several sit at one layer")
    sp.add_argument("--checkpoint", help="checkpoint label (default: latest)")
    sp.add_argument("--limit", type=whole(1, 100_000), default=20, help="rows to show (default 20)")


def _tokens_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("token")
    sp.add_argument("--id", action="store_true", help="TOKEN is a token id")
    sp.add_argument("--model", help="only this model")


def _sql_args(sp: argparse.ArgumentParser) -> None:
    from queries.readonly import DEFAULT_MAX_BYTES, MAX_BYTES, MAX_ROWS, MAX_TIMEOUT_S

    sp.add_argument("query")
    sp.add_argument("--max-rows", type=whole(1, MAX_ROWS), default=1000, help="row cap (default 1000)")
    sp.add_argument("--timeout", type=seconds(0, MAX_TIMEOUT_S), default=10.0,
                    help="seconds before the query is stopped (default 10)")
    sp.add_argument("--max-bytes", type=whole(1, MAX_BYTES), default=DEFAULT_MAX_BYTES,
                    help=f"most bytes of JSON the answer may take (default {DEFAULT_MAX_BYTES})")


def _register_args(sp: argparse.ArgumentParser) -> None:
    from indexer.watch.discover import KINDS

    sp.add_argument("name", help="model name its checkpoints are indexed as")
    sp.add_argument("source", help="the folder to watch")
    sp.add_argument("--kind", choices=KINDS, help="what the folder is (default: detected)")
    sp.add_argument("--top-k", type=whole(1, 1000), default=50, help="tokens kept per vector and side (default 50)")
    sp.add_argument("--basis", choices=["folded", "raw"], default="folded", help="projection basis (default folded)")


def _watch_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--every", default="10m", help="time between cycles: 30s, 10m, 2h (default 10m)")
    sp.add_argument("--once", action="store_true", help="run one cycle and exit")
    sp.add_argument("--settle", default="60s",
                    help="only index folders whose files are at least this old (default 60s)")
    sp.add_argument("--look-gap", type=seconds(0, 3600, zero=True), default=2.0,
                    help="seconds between the two looks that must agree before indexing (default 2)")
    sp.add_argument("--model", help="only this registered model")


def _drift_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("model")
    sp.add_argument("component", help="e.g. ff_value, ff_key")
    sp.add_argument("layer", type=whole(0, 2**63 - 1))
    sp.add_argument("index", type=whole(0, 2**63 - 1))
    sp.add_argument("--head", type=whole(0, 2**63 - 1), help="attention head, for per-head components")
    sp.add_argument("--expert", type=whole(0, 2**63 - 1),
                    help="expert, for the expert components of mixture-of-experts models")
    sp.add_argument("--dictionary", help="the dictionary of a latent (indexed against each checkpoint)")
    sp.add_argument("--k", type=whole(1, 1000), default=10, help="top tokens shown per step (default 10)")
    sp.add_argument("--token", help="show this token's rank per step instead (a word, raw token, or id with --id)")
    sp.add_argument("--id", action="store_true", help="--token is a token id")
    sp.add_argument("--side", choices=["top", "bottom"], default="top", help="rank among top or bottom tokens")


def _changed_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("model")
    sp.add_argument("from_checkpoint", metavar="FROM", help="checkpoint label or step")
    sp.add_argument("to_checkpoint", metavar="TO", help="checkpoint label or step")
    sp.add_argument("--component", help="only this component, e.g. ff_value")
    sp.add_argument("--limit", type=whole(1, 100_000), default=20, help="rows to show (default 20)")


def _head_map_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("token", help="the source token: attended to (ov) or querying (qk)")
    sp.add_argument("--kind", choices=["ov", "qk"], default="ov", help="ov (default) or qk")
    sp.add_argument("--id", action="store_true", help="TOKEN is a token id")
    sp.add_argument("--model", help="only this model")
    sp.add_argument("--checkpoint", help="checkpoint label, or 'all' (default: each model's latest)")
    sp.add_argument("--limit", type=whole(1, 100_000), default=20, help="heads to show (default 20)")
    sp.add_argument("--per-head", type=whole(1, 100), default=5, help="targets per head (default 5)")


def _export_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--parquet", required=True, metavar="DIR", help="target folder (must be empty)")
    sp.add_argument("--overwrite", action="store_true", help="write into a non-empty folder")


def _trace_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("model", help="indexed model name")
    sp.add_argument("prompt", help="input text (encoders: put [MASK] where the prediction is read)")
    sp.add_argument("--checkpoint", help="checkpoint label (default: latest)")
    sp.add_argument("--position", type=whole(-(2**31), 2**31 - 1),
                    help="position to focus on (default: [MASK] if any, else the last)")
    sp.add_argument("--zero", action="append", metavar="L.N", help="set FF neuron N of layer L to 0 (repeatable)")
    sp.add_argument("--boost", action="append", metavar="L.N",
                    help="set FF neuron N of layer L to --boost-value at every position (repeatable)")
    sp.add_argument("--zero-head", action="append", metavar="L.H", help="zero head H of layer L (repeatable)")
    sp.add_argument("--boost-value", type=finite, default=10.0, help="activation of boosted neurons (default 10)")
    sp.add_argument("--html", metavar="FILE", help="also write the flow graph as one standalone HTML file")


def _align_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("model_a", metavar="A", help="model whose layers are the rows")
    sp.add_argument("model_b", metavar="B", help="model whose layers are the columns")
    sp.add_argument("--component", default="ff_value", help="component compared (default ff_value)")
    sp.add_argument("--checkpoint-a", help="checkpoint label of A (default: latest)")
    sp.add_argument("--checkpoint-b", help="checkpoint label of B (default: latest)")
    sp.add_argument("--basis", choices=["raw", "folded"], default="raw",
                    help="raw: E as is, as Dar et al. (default); folded: final-norm gain folded in and centred")
    sp.add_argument("--similarity", choices=["best", "paper"], default="best",
                    help="how two layers compare: best, the mean over A's vectors of their best |correlation| "
                    "(default); paper, the mean |correlation| over all pairs, as Dar et al.")
    sp.add_argument("--png", metavar="FILE", help="also write the layer-similarity heat map as a PNG")
    sp.add_argument("--limit", type=whole(0, 100_000), default=10, help="unit matches to print (default 10)")


def _alignments_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--id", type=whole(1, 2**63 - 1), help="show this alignment run")
    sp.add_argument("--limit", type=whole(0, 100_000), default=10, help="unit matches to print with --id (default 10)")


def _stitch_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("model_a", metavar="A", help="checkpoint folder of the fine-tuned classifier")
    sp.add_argument("model_b", metavar="B", help="checkpoint folder of the pretrained model (same vocabulary)")
    sp.add_argument("--data", required=True, metavar="JSONL", help='examples, one {"text": ..., "label": N} a line')
    sp.add_argument("--layers", help="B layers kept to try, comma-separated (default: every 0..n)")
    sp.add_argument("--map", choices=["pinv", "paper"], default="pinv",
                    help="B's stream into A's: pinv, E_B⁺ E_A (carries each token's embedding; default); paper, "
                    "E_Bᵀ (E_Aᵀ)⁺ (keeps each state's vocabulary scores, as Dar et al.'s code)")


def _finetune_diff_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("pretrained", help="checkpoint folder before fine-tuning")
    sp.add_argument("finetuned", help="checkpoint folder after fine-tuning (same architecture and vocabulary)")
    sp.add_argument("--component", default="ff_value", help="component whose changes are read (default ff_value)")
    sp.add_argument("--top", type=whole(1, 100_000), default=20, help="changed vectors shown (default 20)")
    sp.add_argument("--k", type=whole(1, 1000), default=8, help="tokens per side (default 8)")
    sp.add_argument("--basis", choices=["raw", "folded"], default="raw", help="projection basis (default raw)")


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    run: Callable[[argparse.Namespace], None]
    arguments: Callable[[argparse.ArgumentParser], None] | None = None
    db: bool = True  # takes --db
    json_out: bool = True  # takes --json
    served: bool = False  # asks the service that owns --db, when one does: takes --token and --verbose


COMMANDS: tuple[Command, ...] = (
    Command("index", "index a checkpoint folder into the store", cmd_index, _index_args),
    Command("index-dictionary", "index a dictionary (SAE, transcoder, direction set) against an indexed model: its "
            "latents become vectors searchable by token", cmd_index_dictionary, _index_dictionary_args),
    Command("serve", "serve the store over HTTP: API, pages and index jobs", cmd_serve, _serve_args, db=False,
            json_out=False),
    Command("models", "list indexed models and checkpoints", cmd_models, served=True),
    Command("promoters", "vectors that promote a token, strongest first", lambda a: _hits(a, "top"), _hit_args,
            served=True),
    Command("suppressors", "vectors that suppress a token, strongest first", lambda a: _hits(a, "bottom"),
            _hit_args, served=True),
    Command("vector", "top and bottom tokens of one vector", cmd_vector, _vector_args, served=True),
    Command("tokens", "how a word resolves in each model's vocabulary", cmd_tokens, _tokens_args, served=True),
    Command("sql", "run one read-only SELECT over the tables and views", cmd_sql, _sql_args, served=True),
    Command("check", "verify the store: run records, row counts, 2k token rows per vector, token ids and lists, "
            "unit blocks, orphans along every declared reference, id counters; exit 1 naming what is wrong",
            cmd_check, _check_args, served=True),
    Command("forget", "remove a model (or one checkpoint with --checkpoint) and everything made from it: vectors, "
            "token rows, runs, traces, alignments, linked steps", cmd_forget, _forget_args, served=True),
    Command("upgrade", "upgrade a store written by an older lensdb to this schema version, in place, in one "
            "transaction", cmd_upgrade, json_out=False),
    Command("register", "register a model's folder for `lensdb watch`: one checkpoint, a Trainer output folder "
            "(checkpoint-N/) or a Hugging Face cache entry (models--org--name)", cmd_register, _register_args,
            served=True),
    Command("registered", "list registered models and how many steps are indexed or linked", cmd_registered,
            served=True),
    Command("watch", "index new complete checkpoints of registered models, now and every --every", cmd_watch,
            _watch_args),
    Command("drift", "one vector across training: top tokens per step and overlap with the previous step; with "
            "--token, that token's rank per step", cmd_drift, _drift_args, served=True),
    Command("changed", "vectors whose top-k tokens changed most between two checkpoints", cmd_changed,
            _changed_args, served=True),
    Command("head-map", "one row of every head's OV or QK token map, computed exactly", cmd_head_map,
            _head_map_args, served=True),
    Command("optimize", "rewrite the token-sorted tables as one sorted run each (faster lookups after many index "
            "runs; one sort of the table)", cmd_optimize, json_out=False),
    Command("export", "write the store as Hive-partitioned Parquet (model/checkpoint/component)", cmd_export,
            _export_args),
    Command("trace", "run one input through an indexed model and store the trace: logit lens, heads, FF neurons, "
            "decomposition; with --zero/--boost, before and after", cmd_trace, _trace_args, served=True),
    Command("align", "align two models that share a vocabulary: layer similarity in embedding space, Hungarian "
            "layer matching, best match per neuron (or head), raw-parameter baseline", cmd_align, _align_args,
            served=True),
    Command("align-dictionaries", "align two dictionaries of one model (two SAEs): every latent of A with its best "
            "match in B by vocabulary correlation, stored as an alignment run", cmd_align_dictionaries,
            _align_dictionaries_args),
    Command("alignments", "list stored alignment runs, or show one with --id", cmd_alignments, _alignments_args,
            served=True),
    Command("stitch", "classify with B's first k blocks mapped into fine-tuned A's space through the shared "
            "vocabulary (--map pinv: E_B⁺ E_A, or paper: E_Bᵀ (E_Aᵀ)⁺), then A's remaining blocks and head; "
            "accuracy per k", cmd_stitch, _stitch_args,
            db=False),
    Command("finetune-diff", "project a fine-tuning diff (θ_ft − θ_pre) to the vocabulary: the vectors it changed "
            "most and what each classifier row reads", cmd_finetune_diff, _finetune_diff_args, db=False),
    Command("architectures", "list supported architectures", cmd_architectures, db=False, json_out=False),
)

EVERY = "*"


def _token_args(sp: argparse.ArgumentParser, with_token: bool, verbose: bool) -> None:
    names = ["--token", "--access-token"] if with_token else ["--access-token"]  # drift's --token is a word
    sp.add_argument(*names, dest="access_token", metavar="TOKEN",
                    help="the service's access token, when `lensdb serve` owns the store (default: LENSDB_TOKEN)")
    if verbose:
        sp.add_argument("--verbose", action="store_true",
                        help="say whether the command reads the file or asks the service that owns it")


def parser(only: str | None = EVERY) -> argparse.ArgumentParser:
    """The argument parser. ``only``: a command name, whose parser alone is built (declaring some commands'
    arguments imports what their choices come from, and each parser costs time on every run); ``EVERY``: all
    of them, arguments and all; None (no command given, or not a known one): every command, without arguments,
    for the overview and argparse's "invalid choice" message."""
    p = argparse.ArgumentParser(prog="lensdb", description="Read transformer models in embedding space.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    known = {c.name for c in COMMANDS}
    for cmd in COMMANDS:
        if only in known and cmd.name != only:
            continue
        sp = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        sp.set_defaults(func=cmd.run)
        if only not in (EVERY, cmd.name):
            continue
        if cmd.db:
            sp.add_argument("--db", default=DEFAULT_DB, help=f"store file (default {DEFAULT_DB})")
        if cmd.json_out:
            sp.add_argument("--json", action="store_true", help="print JSON instead of a table")
        if cmd.served or cmd.name == "index":
            _token_args(sp, with_token=cmd.name != "drift", verbose=cmd.served)
        if cmd.arguments is not None:
            cmd.arguments(sp)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    for n, arg in enumerate(given, 1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            print(f"lensdb: error: argument {n} is not valid UTF-8 text ({ascii(arg)[:80]}); lensdb takes UTF-8 "
                  "arguments.", file=sys.stderr)
            return 2
    command = given[0] if given and not given[0].startswith("-") else None
    args = parser(only=command).parse_args(given)
    try:
        args.func(args)
    except LensdbError as err:
        print(f"lensdb: error: {one_line(str(err))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lensdb: interrupted; nothing was written.", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `lensdb promoters paris | head`: the reader has what it wanted; stop quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the flush at exit has nowhere to fail
        return 141  # as a command killed by SIGPIPE
    except Exception as err:  # every failure is one line; LENSDB_DEBUG=1 shows the traceback of the unexpected
        import os

        if os.environ.get("LENSDB_DEBUG"):
            raise
        print(f"lensdb: error: {failure_line(err)}", file=sys.stderr)
        return 1
    return 0


def one_line(text: str, limit: int = 2000) -> str:
    """``text`` on one line, at most ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def failure_line(err: Exception) -> str:
    """One line for an error that is not a ``LensdbError``: bad values, a full disk, too deep, out of memory."""
    if hasattr(err, "errors") and type(err).__name__ == "ValidationError":  # pydantic, without importing it
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())) or 'value'}: {e.get('msg')}"
                             for e in err.errors())  # type: ignore[attr-defined]
        return one_line(f"invalid value ({problems}).")
    if isinstance(err, OSError):
        where = f" {err.filename}:" if err.filename else ""
        return one_line(f"cannot read or write{where} {err.strerror or err} (errno {err.errno}).")
    if isinstance(err, RecursionError):
        return "the input is nested too deeply to process."
    if isinstance(err, MemoryError):
        return "out of memory; ask for less (filters, a LIMIT, a smaller chunk)."
    if type(err).__module__.split(".")[0] in ("duckdb", "_duckdb"):
        text = one_line(str(err), 500)
        hint = " The disk may be full." if "space left" in text or "disk" in text.lower() else ""
        return f"the database refused the operation: {text}{hint}"
    return one_line(f"unexpected {type(err).__name__}: {err} (set LENSDB_DEBUG=1 for the traceback; please "
                    "report it)", 500)


def entry() -> None:
    """The ``lensdb`` console script. The process is lensdb's alone, so pydantic's plugin discovery, a scan of
    every installed distribution's metadata (~10 ms of each command), is switched off."""
    import os

    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    sys.exit(main())


if __name__ == "__main__":
    entry()

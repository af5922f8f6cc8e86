"""`lensdb serve`: one process owns the store, answers the query API over HTTP, serves the pages, and runs
index jobs in a background thread.

DuckDB allows one writing process per file and no reader while it writes, so the service keeps ONE
read-write connection. Every request reads through its own cursor inside a READ ONLY transaction (a
snapshot of the last commit); index jobs write through another cursor in one transaction. The connection is
hardened once at start (``queries.readonly.harden``: no file or network access, no extensions, settings
locked); those settings are database-wide in DuckDB, which is what we want: the indexer writes only through
Python and needs none of them.
"""

import contextlib
import sys
import threading
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Generic, Literal, TypeVar

import duckdb
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from indexer import IndexOptions, IndexResult
from indexer.align import align_models
from indexer.basis import BasisMode
from indexer.discover import SourceKind
from indexer.trace import TraceOptions, trace_input
from indexer.watch import RegisterResult, WatchReport, parse_every, register_source, watch_cycle, watch_loop
from queries import (
    Alignment,
    AlignmentInfo,
    ChangedVector,
    HeadRow,
    Lens,
    ModelInfo,
    NotFound,
    SourceInfo,
    SqlRefused,
    SqlResult,
    SqlTimeout,
    StepInfo,
    TokenHit,
    TokenMatch,
    TokenRankStep,
    TraceSummary,
    TraceView,
    UnknownToken,
    VectorStep,
    VectorView,
    WatchRunInfo,
)
from queries.readonly import harden
from queries.rows import ComponentCount, RunInfo
from schema.errors import LensdbError, StoreError
from schema.store import writer
from service import pages
from service.guard import Guard
from service.jobs import IndexRequest, Job, JobRunner
from service.settings import Settings

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """One page of a list: ``next_offset`` is null on the last page."""

    items: list[T]
    limit: int
    offset: int
    next_offset: int | None
    total: int | None = Field(None, description="size of the whole list, where it is cheap to count")


class Hits(Page[TokenHit]):
    """Vectors that promote (or suppress) a token, with how the token resolved in each model."""

    matches: list[TokenMatch]


class AlignRequest(BaseModel):
    model_a: str = Field(description="model whose layers are the rows")
    model_b: str = Field(description="model whose layers are the columns (same vocabulary)")
    component: str = Field("ff_value", description="component compared")
    checkpoint_a: str | None = Field(None, description="checkpoint label of A (default: latest)")
    checkpoint_b: str | None = Field(None, description="checkpoint label of B (default: latest)")
    basis: BasisMode = Field("raw", description="raw (E as is, as Dar et al.) or folded")
    limit: int = Field(1000, ge=0, description="unit matches returned (all are stored)")


class Health(BaseModel):
    status: str
    db: str
    models: int
    jobs_running: int


class SqlRequest(BaseModel):
    sql: str = Field(description="one SELECT over the documented tables and views (README, 'SQL')")
    max_rows: int | None = Field(None, ge=1, description="row cap; at most the server's sql_max_rows")


class RegisterRequest(BaseModel):
    """Body of ``POST /sources``: a folder on the server's disk to watch as model ``name``."""

    name: str = Field(description="model name its checkpoints are indexed as")
    path: str = Field(description="checkpoint folder, Trainer output folder or HF cache entry, on the server")
    kind: SourceKind | None = Field(None, description="checkpoint, trainer or hf_cache (default: detected)")
    top_k: int = Field(50, ge=1, le=1000, description="tokens kept per vector and side")
    basis: BasisMode = Field("folded", description="folded or raw")


class ModelPage(ModelInfo):
    components: list[ComponentCount]


# Problem types (RFC 9457): a stable id per kind of error, a title, an HTTP status.
PROBLEMS: list[tuple[type[LensdbError], int, str, str]] = [
    (UnknownToken, 404, "unknown-token", "Token not found"),
    (NotFound, 404, "not-found", "Not found"),
    (SqlRefused, 400, "sql-refused", "SQL refused"),
    (SqlTimeout, 408, "sql-timeout", "SQL query timed out"),
    (StoreError, 503, "store-unavailable", "Store unavailable"),
    (LensdbError, 400, "bad-request", "Bad request"),
]


def problem(status: int, kind: str, title: str, detail: str, **extra: object) -> JSONResponse:
    body = {"type": f"/problems/{kind}", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


def classify(err: LensdbError) -> tuple[int, str, str]:
    for cls, status, kind, title in PROBLEMS:
        if isinstance(err, cls):
            return status, kind, title
    raise AssertionError("LensdbError is last in PROBLEMS")


def open_owner(path: Path) -> duckdb.DuckDBPyConnection:
    """The service's one read-write connection: schema created if the file is new, then hardened."""
    if not path.parent.exists():
        raise StoreError(f"cannot create {path}: folder {path.parent} does not exist.")
    try:
        con = duckdb.connect(str(path))
    except duckdb.Error as err:
        if "lock" in str(err).lower():
            raise StoreError(f"{path} is in use by another process (DuckDB allows one writer per file); "
                             "stop it, or point this service at another --db.") from None
        raise StoreError(f"cannot open {path}: {err}") from None
    try:
        with writer(path, con):
            pass  # creates the schema in a new file, checks its version in an old one
        harden(con)
    except BaseException:
        con.close()
        raise
    return con


class Service:
    """What one running service holds: settings, the owning connection and the job runner."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.path = Path(settings.db)
        self.con = open_owner(self.path)
        self.jobs = JobRunner(self.path, self.con, after=self.warm if settings.warm else None)
        self.stop_watch = threading.Event()
        self._one_cycle = threading.Lock()  # cycles never overlap, whoever starts them
        self.watcher: threading.Thread | None = None
        if settings.watch_every:
            every = parse_every(settings.watch_every)
            self.watcher = threading.Thread(
                target=watch_loop, args=(self.watch_once, every, self.stop_watch), name="lensdb-watch", daemon=True,
                kwargs={"on_error": lambda e: print(f"lensdb: watch cycle failed: {e}", file=sys.stderr)})
            self.watcher.start()
        self.warmer: threading.Thread | None = None
        if settings.warm:
            self.warmer = threading.Thread(target=self.warm, name="lensdb-warm", daemon=True)
            self.warmer.start()

    def warm(self) -> None:
        """Load what token lookups read into memory (``Lens.warm``); a failure is reported, never raised."""
        try:
            with contextlib.contextmanager(self.reader)() as lens:
                lens.warm()
        except (LensdbError, duckdb.Error) as err:
            print(f"lensdb: warming the store failed (lookups still work, read from disk): {err}", file=sys.stderr)

    def index_via_jobs(self, path: Path, options: IndexOptions) -> IndexResult:
        """Index one checkpoint as a job on the runner (the one writer of checkpoints) and wait for it."""
        job = self.jobs.wait(self.jobs.submit(IndexRequest(checkpoint=str(path), **options.model_dump())).id)
        if job.status == "failed" or job.result is None:
            raise LensdbError(job.error or "the index job failed")
        return job.result

    def watch_once(self) -> WatchReport:
        """One watch cycle over the registered models, indexing through the job queue."""
        with self._one_cycle:
            return watch_cycle(self.path, settle_s=self.settings.watch_settle_s, index=self.index_via_jobs,
                               con=self.con, stop=self.stop_watch)

    def reader(self) -> Iterator[Lens]:
        """A ``Lens`` on a fresh cursor in a READ ONLY transaction, for one request."""
        cur = self.con.cursor()
        try:
            cur.execute("BEGIN TRANSACTION READ ONLY")
            yield Lens(cur, self.path)
        finally:
            with contextlib.suppress(duckdb.Error):
                cur.execute("ROLLBACK")
            cur.close()

    def close(self) -> None:
        self.stop_watch.set()
        if self.watcher is not None:
            self.watcher.join(60)
        self.jobs.stop()
        if self.warmer is not None:
            self.warmer.join(60)
        self.con.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    """The whole service as an ASGI app; the store is opened here and closed at shutdown."""
    settings = settings or Settings()
    svc = Service(settings)
    about = "Transformer checkpoints in embedding space: what promotes or suppresses a token."
    app = FastAPI(title="lensdb", version="0.1.0", description=about)
    app.state.service = svc
    app.router.on_shutdown.append(svc.close)
    app.add_middleware(Guard, token=settings.token, max_body_bytes=settings.max_body_bytes)

    Limit = Annotated[int, Query(ge=1, le=settings.page_limit, description="rows per page")]
    Offset = Annotated[int, Query(ge=0, le=2**31 - 1, description="rows to skip")]
    ReadLens = Annotated[Lens, Depends(svc.reader)]

    @app.exception_handler(LensdbError)
    def lensdb_error(request: Request, err: LensdbError) -> JSONResponse:
        status, kind, title = classify(err)
        return problem(status, kind, title, str(err))

    @app.exception_handler(duckdb.DataError)
    def out_of_range(request: Request, err: duckdb.DataError) -> JSONResponse:
        # A number too large for the store's integer columns (a layer, index, head or token id beyond int64)
        # reaches DuckDB as a parameter it cannot convert: the caller's mistake, not the server's.
        return problem(422, "invalid-parameters", "Invalid parameters",
                       f"a parameter is out of range for the store: {' '.join(str(err).split())}")

    @app.exception_handler(RequestValidationError)
    def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in err.errors()]
        detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
        return problem(422, "invalid-parameters", "Invalid parameters", detail, errors=errors)

    @app.exception_handler(HTTPException)
    def http_error(request: Request, err: HTTPException) -> JSONResponse:
        title = HTTPStatus(err.status_code).phrase
        detail = err.detail if err.status_code != 404 else f"no such path {request.url.path}; see /docs."
        return problem(err.status_code, title.lower().replace(" ", "-"), title, str(detail))

    def token_arg(token: str | None, token_id: int | None) -> str | int:
        if (token is None) == (token_id is None):
            raise LensdbError("pass exactly one of token (a word or spelling) and token_id (an integer id).")
        return token if token is not None else token_id  # type: ignore[return-value]

    # ---- JSON API ----------------------------------------------------------------------------------------

    @app.get("/health", response_model=Health, tags=["service"])
    def health(lens: ReadLens) -> Health:
        running = sum(j.status == "running" for j in svc.jobs.all())
        return Health(status="ok", db=str(svc.path), models=len(lens.models()), jobs_running=running)

    @app.get("/models", response_model=Page[ModelInfo], tags=["models"])
    def list_models(lens: ReadLens, limit: Limit = 50, offset: Offset = 0) -> Page[ModelInfo]:
        every = lens.models()
        return _page(every[offset:offset + limit], limit, offset, len(every))

    @app.get("/models/{name}", response_model=ModelPage, tags=["models"])
    def get_model(lens: ReadLens, name: str) -> ModelPage:
        return _model(lens, name)

    @app.get("/tokens", response_model=list[TokenMatch], tags=["search"])
    def tokens(lens: ReadLens, token: str | None = None, token_id: int | None = None,
               model: str | None = None) -> list[TokenMatch]:
        return lens.tokens(token_arg(token, token_id), model=model)

    def hits(side: str):
        def search(lens: ReadLens, token: str | None = None, token_id: int | None = None,
                   model: str | None = None, checkpoint: str | None = None, component: str | None = None,
                   layer: int | None = None, head: int | None = None, limit: Limit = 20,
                   offset: Offset = 0) -> Hits:
            tok = token_arg(token, token_id)
            find = lens.promoters if side == "promoters" else lens.suppressors
            rows = find(tok, model=model, checkpoint=checkpoint, component=component, layer=layer, head=head,
                        limit=limit + 1, offset=offset)
            matches = lens.tokens(tok, model=model)
            more = len(rows) > limit
            return Hits(items=rows[:limit], limit=limit, offset=offset, matches=matches, total=None,
                        next_offset=offset + limit if more else None)

        search.__doc__ = (f"Vectors that {side[:-3]}e a token (by word or id), strongest z-score first. "
                          "checkpoint: a label, 'all', or default each model's latest.")
        return search

    for side in ("promoters", "suppressors"):
        app.get(f"/{side}", response_model=Hits, tags=["search"], name=side)(hits(side))

    @app.get("/head-map", response_model=list[HeadRow], tags=["heads"])
    def head_map(lens: ReadLens, token: str | None = None, token_id: int | None = None,
                 kind: Literal["ov", "qk"] = "ov", model: str | None = None, checkpoint: str | None = None,
                 limit: Limit = 20, per_head: Annotated[int, Query(ge=1, le=100)] = 5) -> list[HeadRow]:
        """One row of every head's OV map (what it writes when attending to the token) or QK map (which keys a
        query at the token attends to), computed exactly; heads ranked by their strongest target's z-score.
        Needs checkpoints indexed with --head-maps."""
        return lens.head_map(token_arg(token, token_id), kind=kind, model=model, checkpoint=checkpoint,
                             limit=limit, per_head=per_head)

    @app.get("/vectors/{model}/{component}/{layer}/{index}", response_model=VectorView, tags=["vectors"])
    def vector(lens: ReadLens, model: str, component: str, layer: int, index: int, head: int | None = None,
               checkpoint: str | None = None) -> VectorView:
        """One vector with its top and bottom tokens and statistics (latest checkpoint unless named)."""
        return lens.vector(model, component, layer, index, head=head, checkpoint=checkpoint)

    @app.get("/runs", response_model=Page[RunInfo], tags=["index"])
    def runs(lens: ReadLens, limit: Limit = 50, offset: Offset = 0) -> Page[RunInfo]:
        """Committed index runs, newest first."""
        items, total = lens.runs(limit, offset)
        return _page(items, limit, offset, total)

    @app.post("/index", response_model=Job, status_code=202, tags=["index"])
    def submit(request: IndexRequest) -> Job:
        """Queue an index job for a checkpoint folder on the server; follow it at GET /jobs/{id}."""
        return svc.jobs.submit(request)

    @app.get("/jobs", response_model=Page[Job], tags=["index"])
    def list_jobs(limit: Limit = 50, offset: Offset = 0) -> Page[Job]:
        """Index jobs of this service process, newest first (committed runs are at /runs)."""
        every = svc.jobs.all()
        return _page(every[offset:offset + limit], limit, offset, len(every))

    @app.get("/jobs/{job_id}", response_model=Job, tags=["index"])
    def get_job(job_id: int) -> Job:
        job = svc.jobs.get(job_id)
        if job is None:
            raise NotFound(f"no index job {job_id} in this service process; GET /jobs lists them.")
        return job

    @app.post("/sql", response_model=SqlResult, tags=["sql"])
    def sql(lens: ReadLens, body: SqlRequest) -> SqlResult:
        """One read-only SELECT, capped at sql_max_rows rows and sql_timeout_s seconds."""
        cap = min(body.max_rows or settings.sql_max_rows, settings.sql_max_rows)
        return lens.sql(body.sql, max_rows=cap, timeout_s=settings.sql_timeout_s)

    # ---- training runs -----------------------------------------------------------------------------------

    @app.get("/models/{name}/steps", response_model=list[StepInfo], tags=["training"])
    def steps(lens: ReadLens, name: str) -> list[StepInfo]:
        """Every step of a model, oldest first; linked_to names the identical checkpoint a step was linked to."""
        return lens.steps(name)

    @app.get("/drift/{model}/{component}/{layer}/{index}", response_model=list[VectorStep], tags=["training"])
    def drift(lens: ReadLens, model: str, component: str, layer: int, index: int, head: int | None = None,
              k: Annotated[int, Query(ge=1, le=1000, description="top tokens per step")] = 10) -> list[VectorStep]:
        """One vector at every step: top tokens and top-k overlap with the previous step."""
        return lens.drift_vector(model, component, layer, index, head=head, k=k)

    @app.get("/drift/{model}/{component}/{layer}/{index}/rank", response_model=list[TokenRankStep],
             tags=["training"])
    def rank(lens: ReadLens, model: str, component: str, layer: int, index: int, token: str | None = None,
             token_id: int | None = None, head: int | None = None,
             side: Annotated[str, Query(pattern="^(top|bottom)$")] = "top") -> list[TokenRankStep]:
        """A token's rank among one vector's top (or bottom) tokens at every step; null where absent."""
        return lens.token_rank_over_training(model, token_arg(token, token_id), component, layer, index,
                                             head=head, side=side)

    @app.get("/changed/{model}", response_model=list[ChangedVector], tags=["training"])
    def changed(lens: ReadLens, model: str, from_checkpoint: Annotated[str, Query(alias="from")],
                to_checkpoint: Annotated[str, Query(alias="to")], component: str | None = None,
                limit: Limit = 20) -> list[ChangedVector]:
        """Vectors whose top-k tokens changed most between two checkpoints (labels or steps)."""
        return lens.changed_most(model, from_checkpoint, to_checkpoint, component=component, limit=limit)

    @app.get("/sources", response_model=list[SourceInfo], tags=["training"])
    def sources(lens: ReadLens) -> list[SourceInfo]:
        """Registered models and the folders the watcher re-scans."""
        return lens.registered()

    @app.post("/sources", response_model=RegisterResult, tags=["training"])
    def register(body: RegisterRequest) -> RegisterResult:
        """Register a folder on the server as a model to watch."""
        return register_source(svc.path, body.name, body.path, kind=body.kind, top_k=body.top_k, basis=body.basis,
                               con=svc.con)

    # ---- forward passes ----------------------------------------------------------------------------------

    trace_lock = threading.Lock()  # one trace writes at a time (ids are max + 1)

    @app.post("/traces", response_model=TraceView, status_code=201, tags=["traces"])
    def create_trace(body: TraceOptions) -> TraceView:
        """Run one input through an indexed model on the server's CPU and store the trace (with interventions:
        its baseline too); answers the stored trace."""
        with trace_lock:
            result = trace_input(svc.path, body, con=svc.con)
        for lens in svc.reader():
            return lens.trace(result.trace_id)
        raise AssertionError("reader yields once")

    @app.get("/traces", response_model=list[TraceSummary], tags=["traces"])
    def list_traces(lens: ReadLens, limit: Limit = 50, offset: Offset = 0) -> list[TraceSummary]:
        """Stored traces, newest first."""
        return lens.traces(limit, offset)

    @app.get("/traces/{trace_id}", response_model=TraceView, tags=["traces"])
    def get_trace(lens: ReadLens, trace_id: int, position: int | None = None) -> TraceView:
        """One trace at a position (default the traced one): logit lens, heads, neurons, decomposition."""
        return lens.trace(trace_id, position)

    @app.get("/trace/{trace_id}", response_class=HTMLResponse, include_in_schema=False)
    def trace_page(lens: ReadLens, trace_id: int, position: int | None = None) -> HTMLResponse:
        return html(lambda: pages.trace(lens.trace(trace_id, position)))

    @app.post("/align", response_model=Alignment, tags=["across models"])
    def align(body: AlignRequest) -> Alignment:
        """Align model B to model A (same vocabulary) on one component, store the run and return it."""
        outcome = align_models(svc.path, body.model_a, body.model_b, component=body.component,
                               checkpoint_a=body.checkpoint_a, checkpoint_b=body.checkpoint_b, basis=body.basis,
                               con=svc.con)
        with contextlib.contextmanager(svc.reader)() as lens:
            return lens.alignment(outcome.alignment_id, limit=body.limit)

    @app.get("/alignments", response_model=list[AlignmentInfo], tags=["across models"])
    def alignments(lens: ReadLens, limit: Limit = 50, offset: Offset = 0) -> list[AlignmentInfo]:
        """Stored alignment runs, newest first."""
        return lens.alignments(limit, offset)

    @app.get("/alignments/{alignment_id}", response_model=Alignment, tags=["across models"])
    def get_alignment(lens: ReadLens, alignment_id: int, layer_a: int | None = None,
                      limit: Annotated[int, Query(ge=0, description="unit matches returned")] = 1000) -> Alignment:
        """One run: layer-similarity matrix, raw baseline, matched layers and unit matches."""
        return lens.alignment(alignment_id, layer_a=layer_a, limit=limit)

    @app.get("/watch", response_model=list[WatchRunInfo], tags=["training"])
    def watch_runs(lens: ReadLens, limit: Limit = 20, offset: Offset = 0) -> list[WatchRunInfo]:
        """Watch cycles, newest first, with what each did to every new checkpoint and why."""
        return lens.watch_runs(limit, offset)

    # ---- pages -------------------------------------------------------------------------------------------

    def html(render, *args: object, **kwargs: object) -> HTMLResponse:
        try:
            return HTMLResponse(render(*args, **kwargs))
        except LensdbError as err:
            status, _, title = classify(err)
            return HTMLResponse(pages.error(title, str(err)), status_code=status)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def home(lens: ReadLens) -> HTMLResponse:
        return html(pages.home, lens.models(), lens.alignments(limit=20))

    @app.get("/search", response_class=HTMLResponse, include_in_schema=False)
    def search_page(lens: ReadLens, token: str = "", model: str | None = None, component: str | None = None,
                    checkpoint: str | None = None, limit: Limit = 20) -> HTMLResponse:
        def render() -> str:
            if not token.strip():
                return pages.search(token, [], [], [], None)
            try:
                found = lens.tokens(token, model=model or None)
                hits = [find(token, model=model or None, component=component or None,
                             checkpoint=checkpoint or None, limit=limit)
                        for find in (lens.promoters, lens.suppressors)]
                return pages.search(token, found, hits[0], hits[1], None)
            except UnknownToken as err:
                return pages.search(token, [], [], [], str(err))
        return html(render)

    @app.get("/vector/{model}/{component}/{layer}/{index}", response_class=HTMLResponse,
             include_in_schema=False)
    def vector_page(lens: ReadLens, model: str, component: str, layer: int, index: int,
                    head: int | None = None, checkpoint: str | None = None) -> HTMLResponse:
        def render() -> str:
            v = lens.vector(model, component, layer, index, head=head, checkpoint=checkpoint)
            labels = [c.label for m in lens.models() if m.name == model for c in m.checkpoints]
            return pages.vector(v, labels)
        return html(render)

    @app.get("/vector/{model}/{component}/{layer}/{index}/training", response_class=HTMLResponse,
             include_in_schema=False)
    def training_page(lens: ReadLens, model: str, component: str, layer: int, index: int, head: int | None = None,
                      token: str = "") -> HTMLResponse:
        def render() -> str:
            steps = lens.drift_vector(model, component, layer, index, head=head, k=5)
            chosen = token.strip() or (steps[0].top[0].token.strip() if steps and steps[0].top else "")
            ranks, error = [], None
            if chosen:
                try:
                    ranks = lens.token_rank_over_training(model, chosen, component, layer, index, head=head)
                except UnknownToken as err:
                    error = str(err)
            return pages.training(model, component, layer, index, head, chosen, steps, ranks, error)
        return html(render)

    @app.get("/alignment/{alignment_id}", response_class=HTMLResponse, include_in_schema=False)
    def alignment_page(lens: ReadLens, alignment_id: int) -> HTMLResponse:
        return html(lambda: pages.alignment(lens.alignment(alignment_id, limit=50)))

    @app.get("/model/{name}", response_class=HTMLResponse, include_in_schema=False)
    def model_page(lens: ReadLens, name: str) -> HTMLResponse:
        return html(lambda: pages.model(_model(lens, name)))

    return app


def _model(lens: Lens, name: str) -> ModelPage:
    found = [m for m in lens.models() if m.name == name]
    if not found:
        known = ", ".join(m.name for m in lens.models()) or "none yet"
        raise NotFound(f"no model {name!r}; indexed models: {known}.")
    return ModelPage(**found[0].model_dump(), components=lens.component_counts(name))


def _page(items: list, limit: int, offset: int, total: int) -> Page:
    return Page(items=items, limit=limit, offset=offset, total=total,
                next_offset=offset + limit if offset + limit < total else None)

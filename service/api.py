"""The JSON API: one ``APIRouter`` over a ``StoreOwner``. Every handler reads through a fresh snapshot
(``owner.reader``) or hands its write to the owner; errors become problem responses (``service.problems``)."""

from typing import Annotated, Generic, Literal, TypeVar

from fastapi import APIRouter, Depends, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from indexer.analyses.align import align_models
from indexer.analyses.trace import TraceOptions, trace_input
from indexer.math.basis import BasisMode
from indexer.math.correlation import Statistic
from indexer.watch.cycle import RegisterResult, register_source
from indexer.watch.discover import SourceKind
from queries import (
    Alignment,
    AlignmentInfo,
    ChangedVector,
    HeadRow,
    HitFilter,
    Lens,
    ModelDetail,
    ModelInfo,
    NotFound,
    SourceInfo,
    SqlResult,
    StepInfo,
    TokenHit,
    TokenMatch,
    TokenRankStep,
    TraceSummary,
    TraceView,
    VectorPage,
    VectorStep,
    VectorView,
    WatchRunInfo,
)
from queries.integrity import CheckReport
from queries.rows import RunInfo
from schema.deletes import Forgotten, forget
from schema.errors import LensdbError
from service.allowed import permit
from service.jobs import IndexRequest, Job
from service.owner import StoreOwner
from service.params import Whole, digits_only

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

    matches: list[TokenMatch] = Field(description="per model, the tokens the typed word matched and how (form)")
    missing: list[str] = Field([], description="models searched whose vocabulary has no such token")


class HitQuery(HitFilter):
    """The query of ``GET /promoters`` and ``/suppressors``: the token (a word or an id) and the search filter."""

    # built now: FastAPI wraps a query model in an Annotated alias, which a deferred build would warn about
    model_config = ConfigDict(defer_build=False)

    token: str | None = Field(None, description="a word (paris) or a raw token spelling (Ġparis)")
    token_id: int | None = Field(None, description="a token id instead of token")
    tokens: list[str] | None = Field(None, description="several words: their mean direction (instead of token)")
    minus: list[str] | None = Field(None, description="words whose mean direction is subtracted (a contrast)")
    text: str | None = Field(None, max_length=2000, description="a text: the mean direction of its words")

    @field_validator("layer", "head", "expert", "limit", "offset", "token_id", mode="before")
    @classmethod
    def _whole_numbers(cls, value: object) -> object:
        """Integers in digits only (``7_0`` is not 70): query values arrive as text."""
        return digits_only(value)

    def search(self) -> HitFilter:
        return HitFilter(**self.model_dump(exclude={"token", "token_id", "tokens", "minus", "text"}))

    def direction(self) -> bool:
        """Whether the query asks for a direction (several tokens, a contrast, a text) rather than one token."""
        return bool(self.tokens or self.minus or self.text)


class AlignRequest(BaseModel):
    model_a: str = Field(description="model whose layers are the rows")
    model_b: str = Field(description="model whose layers are the columns (same vocabulary)")
    component: str = Field("ff_value", description="component compared")
    checkpoint_a: str | None = Field(None, description="checkpoint label of A (default: latest)")
    checkpoint_b: str | None = Field(None, description="checkpoint label of B (default: latest)")
    basis: BasisMode = Field("raw", description="raw (E as is, as Dar et al.) or folded")
    statistic: Statistic = Field("best", description="how two layers compare: best (mean best |correlation| of "
                                 "A's vectors) or paper (mean |correlation| over all pairs, as Dar et al.)")
    limit: int = Field(1000, ge=0, le=1_000_000, description="unit matches returned (all are stored)")


class Health(BaseModel):
    status: str
    db: str
    instance: str = Field(description="this service process's id, also in the note it keeps next to the store "
                          "(lens.duckdb.server): a client that finds the note knows it is talking to its writer")
    models: int
    jobs_running: int
    writes_waiting: int = Field(description="writes queued behind the one running")


class SqlRequest(BaseModel):
    sql: str = Field(description="one SELECT over the documented tables and views (README, 'SQL')")
    max_rows: int | None = Field(None, ge=1, le=1_000_000, description="row cap; at most the server's sql_max_rows")
    timeout_s: float | None = Field(None, gt=0, le=3600, description="seconds before it is stopped; at most the "
                                    "server's sql_timeout_s")
    max_bytes: int | None = Field(None, ge=1, le=1 << 30, description="cap on the answer's JSON size in bytes; at "
                                  "most the server's sql_max_bytes")


class RegisterRequest(BaseModel):
    """Body of ``POST /sources``: a folder on the server's disk to watch as model ``name``."""

    name: str = Field(description="model name its checkpoints are indexed as")
    path: str = Field(description="checkpoint folder, Trainer output folder or HF cache entry, on the server")
    kind: SourceKind | None = Field(None, description="checkpoint, trainer or hf_cache (default: detected)")
    top_k: int = Field(50, ge=1, le=1000, description="tokens kept per vector and side")
    basis: BasisMode = Field("folded", description="folded or raw")


def token_arg(token: str | None, token_id: int | None) -> str | int:
    if (token is None) == (token_id is None):
        raise LensdbError("pass exactly one of token (a word or spelling) and token_id (an integer id).")
    return token if token is not None else token_id  # type: ignore[return-value]


def page(items: list, limit: int, offset: int, total: int) -> Page:
    return Page(items=items, limit=limit, offset=offset, total=total,
                next_offset=offset + limit if offset + limit < total else None)


def api_router(owner: StoreOwner) -> APIRouter:
    settings = owner.settings
    router = APIRouter()
    Limit = Annotated[Whole, Query(ge=1, le=settings.page_limit, description="rows per page")]
    Offset = Annotated[Whole, Query(ge=0, le=2**31 - 1, description="rows to skip")]
    ReadLens = Annotated[Lens, Depends(owner.reader)]

    @router.get("/health", response_model=Health, tags=["service"])
    def health(lens: ReadLens) -> Health:
        running = sum(j.status == "running" for j in owner.jobs.all())
        return Health(status="ok", db=str(owner.path), instance=owner.instance, models=len(lens.models()),
                      jobs_running=running, writes_waiting=owner.writes.waiting())

    @router.get("/models", response_model=Page[ModelInfo], tags=["models"])
    def list_models(lens: ReadLens, limit: Limit = 50, offset: Offset = 0) -> Page[ModelInfo]:
        every = lens.models()
        return page(every[offset:offset + limit], limit, offset, len(every))

    @router.get("/models/{name}", response_model=ModelDetail, tags=["models"])
    def get_model(lens: ReadLens, name: str) -> ModelDetail:
        return lens.model(name)

    @router.get("/models/{name}/vectors", response_model=VectorPage, tags=["models"])
    def model_vectors(lens: ReadLens, name: str, component: str | None = None, layer: Whole | None = None,
                      head: Whole | None = None, checkpoint: str | None = None,
                      order: Literal["norm", "index"] = "norm", limit: Limit = 50, offset: Offset = 0) -> VectorPage:
        """A page of a model's vectors (latest checkpoint unless named), largest norm first or in index order, each
        with its first top tokens; ``total`` counts the whole listing."""
        return lens.vectors(name, component=component, layer=layer, head=head, checkpoint=checkpoint, order=order,
                            limit=limit, offset=offset)

    @router.get("/tokens", response_model=list[TokenMatch], tags=["search"])
    def tokens(lens: ReadLens, token: str | None = None, token_id: Whole | None = None,
               model: str | None = None) -> list[TokenMatch]:
        return lens.tokens(token_arg(token, token_id), model=model)

    def hits(side: Literal["promoters", "suppressors"]):
        def search(lens: ReadLens, query: Annotated[HitQuery, Query()]) -> Hits:
            if query.limit > settings.page_limit:
                raise RequestValidationError([{"loc": ("query", "limit"), "type": "less_than_equal",
                                               "msg": f"Input should be less than or equal to {settings.page_limit}"}])
            wanted = query.search()
            find = lens.promoters if side == "promoters" else lens.suppressors
            more_one = wanted.model_copy(update={"limit": wanted.limit + 1})
            if query.direction():
                if query.token_id is not None or (query.token and query.tokens):
                    raise LensdbError("give token or tokens (with minus or text), not token_id, for a direction.")
                plus: list[str | int] = [*([query.token] if query.token else []), *(query.tokens or [])]
                minus: list[str | int] = list(query.minus or [])
                rows = find(plus or None, more_one, minus=minus or None, text=query.text)
            else:
                rows = find(token_arg(query.token, query.token_id), more_one)
            more = len(rows) > wanted.limit
            return Hits(items=rows[:wanted.limit], limit=wanted.limit, offset=wanted.offset, matches=rows.matches,
                        missing=rows.missing, total=None,
                        next_offset=wanted.offset + wanted.limit if more else None)

        search.__doc__ = (f"Vectors that {side[:-3]}e a token (by word or id), strongest z-score first. "
                          "checkpoint: a label, 'all', or default each model's latest.")
        return search

    for side in ("promoters", "suppressors"):
        router.get(f"/{side}", response_model=Hits, tags=["search"], name=side)(hits(side))  # type: ignore[arg-type]

    @router.get("/head-map", response_model=list[HeadRow], tags=["heads"])
    def head_map(lens: ReadLens, token: str | None = None, token_id: Whole | None = None,
                 kind: Literal["ov", "qk"] = "ov", model: str | None = None, checkpoint: str | None = None,
                 limit: Limit = 20, per_head: Annotated[Whole, Query(ge=1, le=100)] = 5) -> list[HeadRow]:
        """One row of every head's OV map (what it writes when attending to the token) or QK map (which keys a
        query at the token attends to), computed exactly; heads ranked by their strongest target's z-score.
        Needs checkpoints indexed with --head-maps."""
        return lens.head_map(token_arg(token, token_id), kind=kind, model=model, checkpoint=checkpoint,
                             limit=limit, per_head=per_head)

    @router.get("/vectors/{model}/{component}/{layer}/{index}", response_model=VectorView, tags=["vectors"])
    def vector(lens: ReadLens, model: str, component: str, layer: Whole, index: Whole, head: Whole | None = None,
               checkpoint: str | None = None, expert: Whole | None = None,
               dictionary: str | None = None) -> VectorView:
        """One vector with its top and bottom tokens and statistics (latest checkpoint unless named); ``expert``
        for a mixture-of-experts vector, ``dictionary`` for a latent of a dictionary."""
        return lens.vector(model, component, layer, index, head=head, checkpoint=checkpoint, expert=expert,
                           dictionary=dictionary)

    @router.get("/runs", response_model=Page[RunInfo], tags=["index"])
    def runs(lens: ReadLens, limit: Limit = 50, offset: Offset = 0) -> Page[RunInfo]:
        """Committed index runs, newest first."""
        items, total = lens.runs(limit, offset)
        return page(items, limit, offset, total)

    @router.post("/index", response_model=Job, status_code=202, tags=["index"])
    def submit(request: IndexRequest) -> Job:  # type: ignore[valid-type]
        """Queue an index job for a checkpoint folder on the server, inside a folder the operator allowed
        (--allow-dir, or a registered model's folder); follow it at GET /jobs/{id}. Device, precision and
        executor are the server's settings."""
        return owner.submit_index(request)

    @router.get("/jobs", response_model=Page[Job], tags=["index"])
    def list_jobs(limit: Limit = 50, offset: Offset = 0) -> Page[Job]:
        """Index jobs of this service process, newest first (committed runs are at /runs)."""
        every = owner.jobs.all()
        return page(every[offset:offset + limit], limit, offset, len(every))

    @router.get("/jobs/{job_id}", response_model=Job, tags=["index"])
    def get_job(job_id: Whole) -> Job:
        job = owner.jobs.get(job_id)
        if job is None:
            raise NotFound(f"no index job {job_id} in this service process; GET /jobs lists them.")
        return job

    @router.delete("/jobs/{job_id}", response_model=Job, tags=["index"])
    def cancel_job(job_id: int) -> Job:
        """Cancel an index job: a queued one never starts; a running one stops at its next unit and writes
        nothing (its status becomes cancelled; answered once it has stopped, or after 30 s with
        cancel_requested set). A finished job is answered as it is."""
        job = owner.jobs.cancel(job_id)
        if job is None:
            raise NotFound(f"no index job {job_id} in this service process; GET /jobs lists them.")
        return job

    @router.post("/sql", response_model=SqlResult, tags=["sql"])
    async def sql(body: SqlRequest) -> Response:
        """One read-only SELECT over the store's tables and views, calling allow-listed functions only; capped at
        sql_max_rows rows and sql_max_bytes bytes, stopped after sql_timeout_s seconds. Runs on the SQL pool:
        503 with Retry-After when it is full."""
        cap = min(body.max_rows or settings.sql_max_rows, settings.sql_max_rows)
        timeout = min(body.timeout_s or settings.sql_timeout_s, settings.sql_timeout_s)
        max_bytes = min(body.max_bytes or settings.sql_max_bytes, settings.sql_max_bytes)

        def run() -> bytes:
            with owner.lens() as lens:
                result = lens.sql(body.sql, max_rows=cap, timeout_s=timeout, max_bytes=max_bytes,
                                  rss_budget_mb=settings.sql_rss_budget_mb)
            return result.model_dump_json().encode()

        return Response(await owner.sql_pool.run(run), media_type="application/json")

    @router.get("/check", response_model=CheckReport, tags=["models"])
    def check(lens: ReadLens) -> CheckReport:
        """Verify the store (``lensdb check``) in one snapshot: run records, row counts, k token rows a side per
        vector, token ids, token lists, unit blocks, orphans along every declared reference, id counters."""
        return lens.check()

    @router.delete("/models/{name}", response_model=Forgotten, tags=["models"])
    def forget_model(name: str, checkpoint: str | None = None, dictionary: str | None = None) -> Forgotten:
        """Forget a model (or one checkpoint of it, or one dictionary of it) and everything made from it: vectors,
        token rows, runs, traces, alignments, linked steps (what the store's declared references lead to), in one
        transaction."""
        return forget(owner.store, name, checkpoint, dictionary)

    # ---- training runs -----------------------------------------------------------------------------------

    @router.get("/models/{name}/steps", response_model=list[StepInfo], tags=["training"])
    def steps(lens: ReadLens, name: str) -> list[StepInfo]:
        """Every step of a model, oldest first; linked_to names the identical checkpoint a step was linked to."""
        return lens.steps(name)

    @router.get("/drift/{model}/{component}/{layer}/{index}", response_model=list[VectorStep], tags=["training"])
    def drift(lens: ReadLens, model: str, component: str, layer: Whole, index: Whole, head: Whole | None = None,
              k: Annotated[Whole, Query(ge=1, le=1000, description="top tokens per step")] = 10,
              expert: Whole | None = None, dictionary: str | None = None) -> list[VectorStep]:
        """One vector at every step: top tokens and top-k overlap with the previous step (``dictionary``: a
        latent's, indexed against each checkpoint)."""
        return lens.drift_vector(model, component, layer, index, head=head, k=k, expert=expert,
                                 dictionary=dictionary)

    @router.get("/drift/{model}/{component}/{layer}/{index}/rank", response_model=list[TokenRankStep],
                tags=["training"])
    def rank(lens: ReadLens, model: str, component: str, layer: Whole, index: Whole, token: str | None = None,
             token_id: Whole | None = None, head: Whole | None = None,
             side: Annotated[str, Query(pattern="^(top|bottom)$")] = "top",
             expert: Whole | None = None) -> list[TokenRankStep]:
        """A token's rank among one vector's top (or bottom) tokens at every step; null where absent."""
        return lens.token_rank_over_training(model, token_arg(token, token_id), component, layer, index,
                                             head=head, side=side, expert=expert)

    @router.get("/changed/{model}", response_model=list[ChangedVector], tags=["training"])
    def changed(lens: ReadLens, model: str, from_checkpoint: Annotated[str, Query(alias="from")],
                to_checkpoint: Annotated[str, Query(alias="to")], component: str | None = None,
                limit: Limit = 20) -> list[ChangedVector]:
        """Vectors whose top-k tokens changed most between two checkpoints (labels or steps)."""
        return lens.changed_most(model, from_checkpoint, to_checkpoint, component=component, limit=limit)

    @router.get("/sources", response_model=list[SourceInfo], tags=["training"])
    def sources(lens: ReadLens) -> list[SourceInfo]:
        """Registered models and the folders the watcher re-scans."""
        return lens.registered()

    @router.post("/sources", response_model=RegisterResult, tags=["training"])
    def register(body: RegisterRequest) -> RegisterResult:
        """Register a folder on the server, inside a folder the operator allowed (--allow-dir), as a model to
        watch."""
        folder = permit(body.path, owner.roots(), "path")
        return register_source(owner.store, body.name, folder, kind=body.kind, top_k=body.top_k,
                               basis=body.basis)

    @router.get("/watch", response_model=list[WatchRunInfo], tags=["training"])
    def watch_runs(lens: ReadLens, limit: Limit = 20, offset: Offset = 0) -> list[WatchRunInfo]:
        """Watch cycles, newest first, with what each did to every new checkpoint and why."""
        return lens.watch_runs(limit, offset)

    # ---- forward passes ----------------------------------------------------------------------------------

    @router.post("/traces", response_model=TraceView, status_code=201, tags=["traces"])
    def create_trace(body: TraceOptions) -> TraceView:
        """Run one input through an indexed model on the server's CPU and store the trace (with interventions:
        its baseline too); answers the stored trace."""
        result = trace_input(owner.store, body)
        with owner.lens() as lens:
            return lens.trace(result.trace_id)

    @router.get("/traces", response_model=list[TraceSummary], tags=["traces"])
    def list_traces(lens: ReadLens, limit: Limit = 50, offset: Offset = 0) -> list[TraceSummary]:
        """Stored traces, newest first."""
        return lens.traces(limit, offset)

    @router.get("/traces/{trace_id}", response_model=TraceView, tags=["traces"])
    def get_trace(lens: ReadLens, trace_id: Whole, position: Whole | None = None) -> TraceView:
        """One trace at a position (default the traced one): logit lens, heads, neurons, decomposition."""
        return lens.trace(trace_id, position)

    # ---- across models -----------------------------------------------------------------------------------

    @router.post("/align", response_model=Alignment, tags=["across models"])
    def align(body: AlignRequest) -> Alignment:
        """Align model B to model A (same vocabulary) on one component, store the run and return it."""
        outcome = align_models(owner.store, body.model_a, body.model_b, component=body.component,
                               checkpoint_a=body.checkpoint_a, checkpoint_b=body.checkpoint_b, basis=body.basis,
                               statistic=body.statistic)
        with owner.lens() as lens:
            return lens.alignment(outcome.alignment_id, limit=body.limit)

    @router.get("/alignments", response_model=list[AlignmentInfo], tags=["across models"])
    def alignments(lens: ReadLens, limit: Limit = 50, offset: Offset = 0) -> list[AlignmentInfo]:
        """Stored alignment runs, newest first."""
        return lens.alignments(limit, offset)

    @router.get("/alignments/{alignment_id}", response_model=Alignment, tags=["across models"])
    def get_alignment(lens: ReadLens, alignment_id: Whole, layer_a: Whole | None = None,
                      limit: Annotated[Whole, Query(ge=0, le=1_000_000, description="unit matches returned")] = 1000
                      ) -> Alignment:
        """One run: layer-similarity matrix, raw baseline, matched layers and unit matches."""
        return lens.alignment(alignment_id, layer_a=layer_a, limit=limit)

    return router

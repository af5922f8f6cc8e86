"""The HTML pages: one ``APIRouter`` of server-rendered pages (``service.pages`` renders them) over a
``StoreOwner``. A page shows an error as a page, with the status its problem type has."""

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import HTMLResponse

from queries import Lens, UnknownToken
from schema.errors import LensdbError
from service import pages
from service.owner import StoreOwner
from service.problems import classify


def html(render: Callable[..., str], *args: object, **kwargs: object) -> HTMLResponse:
    try:
        return HTMLResponse(render(*args, **kwargs))
    except LensdbError as err:
        status, _, title = classify(err)
        return HTMLResponse(pages.error(title, str(err)), status_code=status)


def page_router(owner: StoreOwner) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    Limit = Annotated[int, Query(ge=1, le=owner.settings.page_limit, description="rows per page")]
    ReadLens = Annotated[Lens, Depends(owner.reader)]

    @router.get("/", response_class=HTMLResponse)
    def home(lens: ReadLens) -> HTMLResponse:
        return html(pages.home, lens.models(), lens.alignments(limit=20))

    @router.get("/search", response_class=HTMLResponse)
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

    @router.get("/vector/{model}/{component}/{layer}/{index}", response_class=HTMLResponse)
    def vector_page(lens: ReadLens, model: str, component: str, layer: int, index: int,
                    head: int | None = None, checkpoint: str | None = None,
                    expert: int | None = None) -> HTMLResponse:
        def render() -> str:
            v = lens.vector(model, component, layer, index, head=head, checkpoint=checkpoint, expert=expert)
            labels = [c.label for m in lens.models() if m.name == model for c in m.checkpoints]
            return pages.vector(v, labels)
        return html(render)

    @router.get("/vector/{model}/{component}/{layer}/{index}/training", response_class=HTMLResponse)
    def training_page(lens: ReadLens, model: str, component: str, layer: int, index: int, head: int | None = None,
                      token: str = "", expert: int | None = None) -> HTMLResponse:
        def render() -> str:
            steps = lens.drift_vector(model, component, layer, index, head=head, k=5, expert=expert)
            chosen = token.strip() or (steps[0].top[0].token.strip() if steps and steps[0].top else "")
            ranks, error = [], None
            if chosen:
                try:
                    ranks = lens.token_rank_over_training(model, chosen, component, layer, index, head=head,
                                                          expert=expert)
                except UnknownToken as err:
                    error = str(err)
            return pages.training(model, component, layer, index, head, chosen, steps, ranks, error, expert)
        return html(render)

    @router.get("/alignment/{alignment_id}", response_class=HTMLResponse)
    def alignment_page(lens: ReadLens, alignment_id: int) -> HTMLResponse:
        return html(lambda: pages.alignment(lens.alignment(alignment_id, limit=50)))

    @router.get("/model/{name}", response_class=HTMLResponse)
    def model_page(lens: ReadLens, name: str) -> HTMLResponse:
        return html(lambda: pages.model(lens.model(name)))

    @router.get("/trace/{trace_id}", response_class=HTMLResponse)
    def trace_page(lens: ReadLens, trace_id: int, position: int | None = None) -> HTMLResponse:
        return html(lambda: pages.trace(lens.trace(trace_id, position)))

    return router

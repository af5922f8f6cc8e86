"""The HTML pages: one ``APIRouter`` of server-rendered pages (``service.pages`` renders them) over a
``StoreOwner``. A page shows an error as a page, with the status its problem type has.

Pages render on the owner's page pool (``service.pools``): a flood of page requests waits there or gets a 503
page with ``Retry-After``, and the rest of the service keeps its threads. Every page carries a Content
Security Policy: nothing from elsewhere, inline styles, and only the one script the flow graph needs (by its
hash), no frames around it.
"""

import base64
import hashlib
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse

from queries import Lens, UnknownToken
from schema.errors import LensdbError
from service import pages
from service.flow import SCRIPT
from service.owner import StoreOwner
from service.params import Whole
from service.pools import Busy
from service.problems import classify

_SCRIPT_HASH = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
       f"script-src 'sha256-{_SCRIPT_HASH}'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")


def page_router(owner: StoreOwner) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    Limit = Annotated[Whole, Query(ge=1, le=owner.settings.page_limit, description="rows per page")]

    async def page(render: Callable[[Lens], str]) -> HTMLResponse:
        """``render`` with a read snapshot, on the page pool; a lensdb error becomes an error page."""
        def work() -> str:
            with owner.lens() as lens:
                return render(lens)

        headers = {"content-security-policy": CSP}
        try:
            return HTMLResponse(await owner.page_pool.run(work), headers=headers)
        except LensdbError as err:
            status, _, title = classify(err)
            if isinstance(err, Busy):
                headers["retry-after"] = str(err.retry_after)
            return HTMLResponse(pages.error(title, str(err)), status_code=status, headers=headers)

    @router.get("/", response_class=HTMLResponse)
    async def home() -> HTMLResponse:
        return await page(lambda lens: pages.home(lens.models(), lens.alignments(limit=20)))

    @router.get("/search", response_class=HTMLResponse)
    async def search_page(token: str = "", model: str | None = None, component: str | None = None,
                          checkpoint: str | None = None, limit: Limit = 20) -> HTMLResponse:
        def render(lens: Lens) -> str:
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
        return await page(render)

    @router.get("/vector/{model}/{component}/{layer}/{index}", response_class=HTMLResponse)
    async def vector_page(model: str, component: str, layer: Whole, index: Whole, head: Whole | None = None,
                          checkpoint: str | None = None, expert: Whole | None = None,
                          dictionary: str | None = None) -> HTMLResponse:
        def render(lens: Lens) -> str:
            v = lens.vector(model, component, layer, index, head=head, checkpoint=checkpoint, expert=expert,
                            dictionary=dictionary)
            labels = [c.label for m in lens.models() if m.name == model for c in m.checkpoints]
            return pages.vector(v, labels)
        return await page(render)

    @router.get("/vector/{model}/{component}/{layer}/{index}/training", response_class=HTMLResponse)
    async def training_page(model: str, component: str, layer: Whole, index: Whole, head: Whole | None = None,
                            token: str = "", expert: Whole | None = None) -> HTMLResponse:
        def render(lens: Lens) -> str:
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
        return await page(render)

    @router.get("/alignment/{alignment_id}", response_class=HTMLResponse)
    async def alignment_page(alignment_id: Whole) -> HTMLResponse:
        return await page(lambda lens: pages.alignment(lens.alignment(alignment_id, limit=50)))

    @router.get("/model/{name}", response_class=HTMLResponse)
    async def model_page(name: str) -> HTMLResponse:
        return await page(lambda lens: pages.model(lens.model(name)))

    @router.get("/trace/{trace_id}", response_class=HTMLResponse)
    async def trace_page(trace_id: Whole, position: Whole | None = None) -> HTMLResponse:
        return await page(lambda lens: pages.trace(lens.trace(trace_id, position)))

    return router

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
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse

from queries import HitFilter, Lens, UnknownToken
from schema.errors import InvalidFilter, LensdbError
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
                          role: Literal["writes", "reads", "all", ""] = "", layer: str = "",
                          checkpoint: str | None = None, limit: Limit = 20,
                          offset: Annotated[Whole, Query(ge=0, le=2**31 - 1)] = 0) -> HTMLResponse:
        def render(lens: Lens) -> str:
            names = [m.name for m in lens.models()]
            comps = sorted({c.component for name in ([model] if model in names else names)
                            for c in lens.component_counts(name)})
            filters = {"model": model or None, "component": component or None, "role": role or None,
                       "layer": layer.strip() or None, "checkpoint": checkpoint or None, "limit": limit}
            if not token.strip():
                return pages.search(token, [], [], [], None, filters, names, comps)
            try:
                if filters["layer"] is not None and not str(filters["layer"]).isdigit():
                    raise InvalidFilter(f"layer must be a whole number, not {layer!r}.")
                wanted = HitFilter(**{**{k: v for k, v in filters.items() if v is not None}, "offset": offset,
                                      "layer": None if layer.strip() == "" else int(layer), "limit": limit + 1})
                hits = [find(token, wanted) for find in (lens.promoters, lens.suppressors)]
                more = any(len(h) > limit for h in hits)
                return pages.search(token, hits[0].matches, hits[0][:limit], hits[1][:limit], None, filters, names,
                                    comps, hits[0].missing, offset, more)
            except (UnknownToken, InvalidFilter) as err:
                return pages.search(token, [], [], [], str(err), filters, names, comps)
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
    async def model_page(name: str, component: str | None = None, layer: str = "",
                         order: Literal["norm", "index"] = "norm", limit: Limit = 50,
                         offset: Annotated[Whole, Query(ge=0, le=2**31 - 1)] = 0) -> HTMLResponse:
        def render(lens: Lens) -> str:
            detail = lens.model(name)
            chosen = {"component": component or None, "layer": layer.strip() or None, "order": order, "limit": limit}
            try:
                if chosen["layer"] is not None and not str(chosen["layer"]).isdigit():
                    raise InvalidFilter(f"layer must be a whole number, not {layer!r}.")
                listing = lens.vectors(name, component=component or None,
                                       layer=None if chosen["layer"] is None else int(layer), order=order,
                                       limit=limit, offset=offset)
                return pages.model(detail, listing, chosen, offset)
            except InvalidFilter as err:
                return pages.model(detail, None, chosen, offset, str(err))
        return await page(render)

    @router.get("/trace/{trace_id}", response_class=HTMLResponse)
    async def trace_page(trace_id: Whole, position: Whole | None = None) -> HTMLResponse:
        return await page(lambda lens: pages.trace(lens.trace(trace_id, position)))

    return router

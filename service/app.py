"""`lensdb serve`: the composition root. One ``StoreOwner`` owns the file (connection, job runner, watcher);
the JSON API (``service.api``) and the pages (``service.site``) are routers over it; ``service.guard`` stands in
front of everything; ``service.problems`` answers every error."""

from fastapi import FastAPI

from service import docs, problems
from service.api import api_router
from service.guard import Guard
from service.owner import StoreOwner
from service.settings import Settings, accepted_hosts
from service.site import page_router


def create_app(settings: Settings | None = None) -> FastAPI:
    """The whole service as an ASGI app; the store is opened here and closed at shutdown."""
    settings = settings or Settings()
    owner = StoreOwner(settings)
    about = "Transformer checkpoints in embedding space: what promotes or suppresses a token."
    app = FastAPI(title="lensdb", version="0.1.0", description=about, docs_url=None, redoc_url=None)
    app.state.owner = owner
    app.router.on_shutdown.append(owner.close)
    app.add_middleware(Guard, token=settings.token, max_body_bytes=settings.max_body_bytes,
                       hosts=accepted_hosts(settings))
    problems.install(app)
    app.include_router(api_router(owner))
    app.include_router(page_router(owner))
    docs.install(app)  # Swagger UI and ReDoc from local files
    return app

"""The ASGI application: OpenAI's Files and Batches API, the replaced server's routes, health, the web page.

Routes live in ``server/routes/`` (one router per resource) and are a few lines each: they take
a model or a resolved batch (``server/deps.py``), call the library the CLI calls (``commands/``),
and answer a model (``server/models.py``). Ids are matched against their own pattern before
anything else; no path from a request reaches the file system. Work that reads much or waits
runs in the thread pool (plain ``def`` routes); uploads, which stream, and the poll route ``GET
/v1/batches/{id}`` (a few small reads) are ``async``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

from fastapi import FastAPI

import spoolbatch
from spoolbatch.config import Config
from spoolbatch.notify import webhooks
from spoolbatch.server import errors, openapi
from spoolbatch.server.audit import AuditTrail
from spoolbatch.server.deps import ServerState
from spoolbatch.server.routes import batches, files, health, original, page


def _lifespan(config: Config) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Run the webhook sender beside the server while it serves (when webhooks are configured)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()
        thread = webhooks.start(config, stop, interval=0.5)
        try:
            yield
        finally:
            stop.set()
            if thread is not None:
                thread.join(timeout=15)

    return lifespan


def create_app(config: Config) -> FastAPI:
    """The ASGI application over ``config.spool``."""
    state = ServerState(config)
    state.spool.require()
    state.spool.ensure_api_dirs()
    for project in {p.name for p in config.projects} | {k.project for k in config.keys}:
        state.spool.ensure_project_inbox(project)  # `cp` into inbox/PROJECT/ works for every configured project
    app = FastAPI(title="spoolbatch", version=spoolbatch.__version__, docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json", lifespan=_lifespan(config),
                  description="OpenAI's Files and Batches API over a spoolbatch spool.")
    app.state.server = state
    errors.install(app)
    for module in (health, files, batches, original, page):
        app.include_router(module.router)
    openapi.install(app)
    app.add_middleware(AuditTrail, audit=state.audit)  # outermost but for errors: sees every answer
    return app

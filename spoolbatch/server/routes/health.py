"""The spool as a whole: health (no key: for load balancers), models, and `status --json`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from spoolbatch.commands import health as spool_health
from spoolbatch.commands.listing import BatchPage, page_batches
from spoolbatch.commands.models import served
from spoolbatch.commands.status import status, version
from spoolbatch.server.deps import Caller, State, authorized
from spoolbatch.server.models import Batch, Health, Model, ModelList, Page, SpoolStatus
from spoolbatch.server.openapi import ERRORS
from spoolbatch.server.responses import model_response
from spoolbatch.server.routes.batches import render
from spoolbatch.store.batches import job_of

router = APIRouter(tags=["health"], responses=ERRORS)
keyed = [Depends(authorized)]


@router.get("/health", response_model=Health)
def health(server: State) -> Response:
    """Workers alive, stale and dead, their GPUs, and the queue (counts only, no job named)."""
    return model_response(Health.model_validate(spool_health.health(server.spool)))


@router.get("/v1/models", response_model=ModelList, dependencies=keyed)
def models(server: State) -> Response:
    """The models the alive workers have loaded, the configured one, and LoRA adapters with their base as parent."""
    listed = served(server.spool, server.config)
    return model_response(ModelList(data=[Model(id=m.id, parent=m.parent) for m in listed]))


@router.get("/v1/spoolbatch/status", response_model=SpoolStatus, dependencies=keyed,
            responses={304: {"description": "Nothing changed since the answer whose ETag If-None-Match names."}})
def spool_status(request: Request, server: State, caller: Caller,
                 limit: Annotated[int | None, Query(ge=1, le=100, description="and a page of batches")] = None,
                 after: str | None = None) -> Response:
    """`spoolbatch status --json` of the caller's project (an admin's: all of them): what is happening, however
    many jobs the spool keeps; with ``limit``, also a page of the batches (``after`` a batch id), newest first.

    The answer carries an ETag made from what it is made of (the spool's folders and index, the query,
    the clock's 10 s): a poller that sends it back in If-None-Match gets 304 while nothing changed.
    """
    tag = f'"{version(server.spool, request.url.query, caller.scope)}"'
    if request.headers.get("if-none-match") == tag:
        return Response(status_code=304, headers={"ETag": tag, "Cache-Control": "no-cache"})
    data = status(server.spool, project=caller.scope).to_dict()
    if limit is not None:
        cursor = job_of(after) if after else None
        page = page_batches(server.spool, limit=limit, after=cursor, project=caller.scope) \
            if cursor or not after else BatchPage([], False)
        data["page"] = Page[Batch].read(page.batches, lambda v: v.id, render, has_more=page.has_more)
    answer = model_response(SpoolStatus.model_validate(data))
    answer.headers.update({"ETag": tag, "Cache-Control": "no-cache"})
    return answer

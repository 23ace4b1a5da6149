"""OpenAI's Batches API: create, list (newest first), retrieve, cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from spoolbatch.commands.batches import BatchView, cancel_batch
from spoolbatch.commands.create import create_batch
from spoolbatch.commands.files import upload_path
from spoolbatch.commands.jobsearch import matcher
from spoolbatch.commands.listing import BatchPage, page_batches
from spoolbatch.server.deps import BatchOf, Caller, State, authorized
from spoolbatch.server.errors import about, invalid
from spoolbatch.server.models import Batch, BatchCreate, CreatedBatch, OneStepBatch, OneStepUpload, Page
from spoolbatch.server.openapi import ERRORS, body_of
from spoolbatch.server.responses import model_response
from spoolbatch.server.routes.original import one_step
from spoolbatch.server.uploads import read_body
from spoolbatch.store.batches import job_of

router = APIRouter(prefix="/v1/batches", tags=["batches"], dependencies=[Depends(authorized)], responses=ERRORS)
CREATE_BODY = body_of({"application/json": BatchCreate, "multipart/form-data": OneStepUpload})


def render(view: BatchView) -> Batch:
    """A batch object."""
    return Batch.model_validate(view.to_openai())


async def create_body(request: Request) -> BatchCreate | None:
    """The JSON create body, validated (a 400 naming the field); None for the one-step multipart body."""
    if request.headers.get("content-type", "").startswith("multipart/"):
        return None
    try:
        return BatchCreate.model_validate_json(await read_body(request))
    except ValidationError as exc:
        raise invalid(exc.errors()) from None


CreateBody = Annotated[BatchCreate | None, Depends(create_body)]


@router.post("", response_model=CreatedBatch | OneStepBatch, openapi_extra=CREATE_BODY)
async def create(request: Request, server: State, caller: Caller, body: CreateBody) -> Response:
    """Create a batch of an uploaded file (JSON), or upload and create in one step (multipart), in the
    caller's project (over its quotas: 429)."""
    if body is None:
        return await one_step(request, server, caller)
    with about("input_file_id"):
        path = upload_path(server.spool, body.input_file_id, caller.scope)
        spec = body.spec()
        spec.project = caller.project
        created = await run_in_threadpool(create_batch, server.config, path, spec,
                                          allow_bad_lines=body.allow_bad_lines)
    return model_response(CreatedBatch.model_validate(created.to_openai()))


@router.get("", response_model=Page[Batch])
def list_(server: State, caller: Caller, limit: Annotated[int, Query(ge=1, le=100)] = 20,
          after: str | None = None,
          status: Annotated[str | None, Query(description="extension: only these statuses, comma-separated")] = None,
          q: Annotated[str | None, Query(description="extension: words of the id or of a metadata pair")] = None,
          ) -> Response:
    """Batches (the caller's project's), newest first, read a page at a time (commands/listing.py).

    ``status`` and ``q`` are extensions (the web page's filter): only the batches that match.
    """
    statuses = frozenset(s.strip() for s in (status or "").split(",") if s.strip())
    keep = matcher(statuses, q) if statuses or q else None
    cursor = job_of(after) if after else None
    page = page_batches(server.spool, limit=limit, after=cursor, project=caller.scope, statuses=statuses or None,
                        keep=keep) if cursor or not after else BatchPage([], False)  # an id not ours: nothing after it
    return model_response(Page[Batch].read(page.batches, lambda v: v.id, render, has_more=page.has_more))


@router.get("/{batch_id}", response_model=Batch)
async def retrieve(batch: BatchOf) -> Response:
    """One batch (the poll route: a few small reads, on the event loop)."""
    return model_response(render(batch))


@router.post("/{batch_id}/cancel", response_model=Batch)
def cancel(batch: BatchOf, server: State) -> Response:
    """Cancel a batch: at once when queued, at the next chunk boundary when running."""
    return model_response(render(cancel_batch(server.spool, batch.job, batch.project)))

"""The replaced batch server's routes, kept so its documented client runs unchanged.

The one-step create (a multipart ``file`` posted to ``POST /v1/batches``, which the batches
router hands here), a batch's results, failed lines and log, and ``DELETE`` as cancel.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from spoolbatch.commands.batches import cancel_batch, error_lines
from spoolbatch.commands.catalog import log_lines, results
from spoolbatch.commands.create import create_batch, one_step_endpoint
from spoolbatch.server.auth import Principal
from spoolbatch.server.deps import BatchOf, ServerState, State, authorized
from spoolbatch.server.errors import about, invalid
from spoolbatch.server.models import Batch, BatchLogs, OneStepBatch, OneStepForm
from spoolbatch.server.openapi import ERRORS
from spoolbatch.server.responses import JSONL_CONTENT, jsonl_response, model_response
from spoolbatch.server.uploads import receive_file

router = APIRouter(prefix="/v1/batches", tags=["the replaced server's routes"], dependencies=[Depends(authorized)],
                   responses=ERRORS)


async def one_step(request: Request, server: ServerState, caller: Principal) -> Response:
    """Upload a file and create its batch in the caller's project: the endpoint comes from its lines unless given,
    and a model or endpoint given must be the lines'."""
    record, upload = await receive_file(request, server.spool, max_bytes=server.config.max_job_bytes,
                                        max_lines=server.config.max_requests_per_job, project=caller.project)
    path = server.spool.file_content(record.id)
    try:
        form = OneStepForm.model_validate(upload.fields)
        form.endpoint = await run_in_threadpool(one_step_endpoint, server.config, path, form.endpoint, form.model)
        body = form.create_body(record.id)
    except ValidationError as exc:
        raise invalid(exc.errors()) from None
    with about("input_file_id"):
        spec = body.spec()
        spec.project = caller.project
        created = await run_in_threadpool(create_batch, server.config, path, spec,
                                          allow_bad_lines=body.allow_bad_lines)
    return model_response(OneStepBatch.model_validate(created.to_one_step()))


@router.get("/{batch_id}/results", response_class=StreamingResponse, responses=JSONL_CONTENT)
def batch_results(batch: BatchOf, server: State) -> StreamingResponse:
    """The batch's result lines so far, streamed."""
    return jsonl_response(results(server.spool, batch.job))


@router.get("/{batch_id}/failed", response_class=StreamingResponse, responses=JSONL_CONTENT)
def batch_failed(batch: BatchOf, server: State) -> StreamingResponse:
    """The batch's error lines so far, streamed."""
    return jsonl_response(error_lines(server.spool, batch.job))


@router.get("/{batch_id}/logs", response_model=BatchLogs)
def batch_logs(batch: BatchOf, server: State, tail: int | None = None) -> Response:
    """The batch's log as people read it (the last ``tail`` lines)."""
    return model_response(BatchLogs(batch_id=batch.id, data=log_lines(server.spool, batch.job, tail)))


@router.delete("/{batch_id}", response_model=Batch)
def delete_batch(batch: BatchOf, server: State) -> Response:
    """Cancel the batch (the replaced server's verb for it)."""
    return model_response(Batch.model_validate(cancel_batch(server.spool, batch.job, batch.project).to_openai()))

"""The web page and the data only it needs: a job's story, retry, the workers and their GPU history.

The page itself (``/``, ``/jobs/{job}``, ``/static/{name}``) is code, served without a key; every
call it makes carries the key (``/#key=KEY`` once, kept in the browser). Beside OpenAI's Files and
Batches API, which it calls as the SDK does, it reads these routes; a batch here is resolved by
``BatchOf`` as everywhere, so a key sees only the batches ``GET /v1/batches/{id}`` shows it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from spoolbatch.commands import workers as spool_workers
from spoolbatch.commands.batches import get_batch
from spoolbatch.commands.control import retry
from spoolbatch.commands.story import story
from spoolbatch.server import page as assets
from spoolbatch.server.deps import BatchOf, Caller, State, authorized
from spoolbatch.server.errors import ApiError
from spoolbatch.server.models import Batch
from spoolbatch.server.openapi import ERRORS
from spoolbatch.server.pagemodels import GateLimits, GpuHistory, JobStory, Workers
from spoolbatch.server.responses import model_response
from spoolbatch.store.layout import is_job_id

router = APIRouter(tags=["web page"], responses=ERRORS)
keyed = [Depends(authorized)]
CACHE = {"Cache-Control": "public, max-age=31536000, immutable"}  # the page asks for them by version


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def home() -> HTMLResponse:
    """The web page: workers and GPUs, the jobs, submit."""
    return HTMLResponse(assets.shell(0), headers={"Cache-Control": "no-cache"})


@router.get("/jobs/{job}", response_class=HTMLResponse, include_in_schema=False)
def job_page(job: str) -> HTMLResponse:
    """A job's page (its id is read by the page's script, never put in the HTML)."""
    if not is_job_id(job):
        raise ApiError(404, "No such job.", param="job", code="not_found")
    return HTMLResponse(assets.shell(1), headers={"Cache-Control": "no-cache"})


@router.get("/static/{name}", include_in_schema=False)
def static(name: str) -> Response:
    """One of the page's files (only those ``server/page.py`` lists)."""
    asset = assets.assets().get(name)
    if asset is None:
        raise ApiError(404, "Not found.", code="not_found")
    return Response(asset.body, media_type=asset.media_type, headers=CACHE)


@router.get("/v1/spoolbatch/batches/{batch_id}/story", response_model=JobStory, dependencies=keyed)
def job_story(batch: BatchOf, server: State) -> Response:
    """The job's chunks (for the throughput chart), its events, its failed lines grouped by error code."""
    return model_response(JobStory.model_validate(story(server.spool, batch.job).to_dict()))


@router.post("/v1/spoolbatch/batches/{batch_id}/retry", response_model=Batch, dependencies=keyed)
async def retry_batch(batch: BatchOf, server: State) -> Response:
    """Submit the batch's failed lines again as a new batch (`spoolbatch retry`); answers the new batch."""
    new, _ = await run_in_threadpool(retry, server.spool, batch.job)
    view = await run_in_threadpool(get_batch, server.spool, new)
    return model_response(Batch.model_validate(view.to_openai()))


def _limits(server: State) -> dict[str, float]:
    return {"memory_pct": server.config.gpu_max_memory_pct, "temperature_c": server.config.gpu_max_temp_c}


@router.get("/v1/spoolbatch/workers", response_model=Workers, dependencies=keyed)
def workers(server: State, caller: Caller) -> Response:
    """Every worker's heartbeat (state, what it waits for, job, GPUs, liveness), the inbox, the gate's limits
    (a key of one project sees no other project's job)."""
    found = spool_workers.workers(server.spool, project=caller.scope)
    return model_response(Workers(workers=found["workers"], queue=found["queue"],
                                  limits=GateLimits.model_validate(_limits(server))))


@router.get("/v1/spoolbatch/workers/{worker}/gpu", response_model=GpuHistory, dependencies=keyed)
def gpu_history(worker: str, server: State, hours: Annotated[float, Query(gt=0, le=24)] = 6.0) -> Response:
    """A worker's GPU readings of the last ``hours`` (memory %, °C, utilisation per card), and its gate's limits."""
    if not spool_workers.is_worker(server.spool, worker):
        raise ApiError(404, f"No worker {worker[:120]!r} on this spool.", param="worker", code="not_found")
    series = spool_workers.gpu_series(server.spool, worker, hours)
    limits = spool_workers.gate_limits(server.spool, worker, _limits(server))
    return model_response(GpuHistory.model_validate({"worker": worker, "limits": limits, "gpus": series}))

"""The spool as a whole: health (no key: for load balancers), models, and `status --json`."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from spoolbatch.commands import health as spool_health
from spoolbatch.commands.models import served
from spoolbatch.commands.status import status
from spoolbatch.server.deps import Caller, State, authorized
from spoolbatch.server.models import Health, Model, ModelList, SpoolStatus
from spoolbatch.server.openapi import ERRORS
from spoolbatch.server.responses import model_response

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


@router.get("/v1/spoolbatch/status", response_model=SpoolStatus, dependencies=keyed)
def spool_status(server: State, caller: Caller) -> Response:
    """What the web page shows: `spoolbatch status --json`, of the caller's project (an admin's: all of them)."""
    return model_response(SpoolStatus.model_validate(status(server.spool, project=caller.scope).to_dict()))

"""What routes share, as FastAPI dependencies: the server's state, who may call, a batch id's batch.

The state is the configuration and the spool, nothing else (the server keeps no state of its
own). ``BatchOf`` resolves the ``batch_id`` of a path to its batch, or answers 404 in OpenAI's
shape before the route runs; it reads a few small files on the event loop (about 0.5 ms),
cheaper than the thread pool's hand-off on the poll route.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from spoolbatch.commands.batches import BatchView, get_batch
from spoolbatch.config import Config
from spoolbatch.errors import JobNotFound
from spoolbatch.server.auth import BearerAuth
from spoolbatch.server.errors import ApiError
from spoolbatch.store.batches import job_of
from spoolbatch.store.spool import Spool


@dataclass(slots=True)
class ServerState:
    """The configuration and the spool: what every route needs."""

    config: Config
    spool: Spool = field(init=False)
    auth: BearerAuth = field(init=False)

    def __post_init__(self) -> None:
        self.spool = Spool(self.config.spool)
        self.auth = BearerAuth(self.config.api_keys)


def server_state(request: Request) -> ServerState:
    """The app's state."""
    state: ServerState = request.app.state.server
    return state


State = Annotated[ServerState, Depends(server_state)]


async def authorized(request: Request) -> None:
    """The request's key is one of the configured keys (without keys: a loopback client, no proxy)."""
    await server_state(request).auth(request)


def no_batch(batch_id: str) -> ApiError:
    """The 404 of a batch id."""
    return ApiError(404, f"No batch found with id {batch_id[:120]!r}.", param="batch_id", code="not_found")


async def batch_of(batch_id: str, request: Request) -> BatchView:
    """The batch a path's ``batch_id`` names, or a 404 (an id that is not one of ours never reaches a path)."""
    job = job_of(batch_id)
    if job is None:
        raise no_batch(batch_id)
    try:
        return get_batch(server_state(request).spool, job)
    except JobNotFound:
        raise no_batch(batch_id) from None


BatchOf = Annotated[BatchView, Depends(batch_of)]

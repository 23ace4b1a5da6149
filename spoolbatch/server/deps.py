"""What routes share, as FastAPI dependencies: the server's state, who may call, a batch id's batch.

The state is the configuration and the spool, nothing else (the server keeps no state of its
own). ``Caller`` is the request's ``Principal`` (server/auth.py), also left in the request's
state for the audit trail. ``BatchOf`` resolves the ``batch_id`` of a path to its batch, or
answers 404 in OpenAI's shape before the route runs, for an unknown id and for another project's
alike; it reads a few small files on the event loop (about 0.5 ms), cheaper than the thread
pool's hand-off on the poll route.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from spoolbatch.commands.batches import BatchView, get_batch
from spoolbatch.config import Config
from spoolbatch.errors import JobNotFound
from spoolbatch.server.auth import KeyAuth, Principal
from spoolbatch.server.errors import ApiError
from spoolbatch.store.audit import AuditLog
from spoolbatch.store.batches import job_of
from spoolbatch.store.spool import Spool


@dataclass(slots=True)
class ServerState:
    """The configuration and the spool: what every route needs."""

    config: Config
    spool: Spool = field(init=False)
    auth: KeyAuth = field(init=False)
    audit: AuditLog = field(init=False)

    def __post_init__(self) -> None:
        self.spool = Spool(self.config.spool)
        self.auth = KeyAuth(self.config.api_key_table())
        self.audit = AuditLog(self.spool, max_bytes=self.config.log_max_bytes, keep=self.config.log_keep)


def server_state(request: Request) -> ServerState:
    """The app's state."""
    state: ServerState = request.app.state.server
    return state


State = Annotated[ServerState, Depends(server_state)]


async def authorized(request: Request) -> Principal:
    """Who calls: the configured key the request sends (without keys: a loopback client, no proxy), or a 401."""
    principal = await server_state(request).auth(request)
    request.state.principal = principal
    return principal


Caller = Annotated[Principal, Depends(authorized)]


def no_batch(batch_id: str) -> ApiError:
    """The 404 of a batch id."""
    return ApiError(404, f"No batch found with id {batch_id[:120]!r}.", param="batch_id", code="not_found")


async def batch_of(batch_id: str, request: Request, caller: Caller) -> BatchView:
    """The batch a path's ``batch_id`` names, or a 404 (an id that is not one of ours never reaches a path;
    another project's batch is not found, exactly as an unknown one)."""
    job = job_of(batch_id)
    if job is None:
        raise no_batch(batch_id)
    try:
        view = get_batch(server_state(request).spool, job)
    except JobNotFound:
        raise no_batch(batch_id) from None
    if not caller.sees(view.project):
        raise no_batch(batch_id)
    return view


BatchOf = Annotated[BatchView, Depends(batch_of)]

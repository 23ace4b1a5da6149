"""The answers of the web page's own routes (``routes/page.py``): a job's story, the workers, a worker's GPU history."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class ChunkColumns(BaseModel):
    """A job's merged chunks as columns, one entry per chunk (``commands/story.py``)."""

    t: list[float]
    chunk: list[int]
    first_line: list[int]
    last_line: list[int]
    answered: list[int]
    failed: list[int]
    seconds: list[float]
    tokens: list[int | None]
    worker: list[int]
    workers: list[str]


class TimelineEvent(BaseModel):
    """One event of the job's log, with its sentence."""

    ts: float | None
    event: str | None
    worker: str | None = None
    text: str


class ErrorGroup(BaseModel):
    """A job's failed lines of one error code, with a few examples."""

    code: str
    count: int
    examples: list[dict[str, Any]]
    unrun: bool = False


class JobStory(BaseModel):
    """``GET /v1/spoolbatch/batches/{batch_id}/story``: what the job page shows beside the batch object."""

    job: dict[str, Any]
    chunks: ChunkColumns
    events: list[TimelineEvent]
    events_total: int
    errors: list[ErrorGroup]


class GateLimits(BaseModel):
    """The GPU gate's limits: no chunk starts above them."""

    memory_pct: float
    temperature_c: float


class Workers(BaseModel):
    """``GET /v1/spoolbatch/workers``: every worker's heartbeat with its liveness, the inbox, the gate's limits."""

    workers: list[dict[str, Any]]
    queue: dict[str, int]
    limits: GateLimits


class CardSeries(BaseModel):
    """One card's readings as columns."""

    t: list[float]
    memory_pct: list[float]
    temperature_c: list[float | None]
    utilization_pct: list[float | None]


class GpuHistory(BaseModel):
    """``GET /v1/spoolbatch/workers/{worker}/gpu``: each card's readings of the last hours, by NVML index."""

    model_config = ConfigDict(extra="forbid")
    worker: str
    limits: GateLimits
    gpus: dict[str, CardSeries]

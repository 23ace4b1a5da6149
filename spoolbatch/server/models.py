"""The API's requests and answers as models: one validator at the door, and the schema at ``/openapi.json``.

Requests are checked here (the library checks again what it owns: limits, the lines); answers
are built by ``commands/`` as plain data and validated into these models, which give the
field names and order that OpenAI's SDKs parse. A field a check refuses is a 400 whose
``param`` is the field (``server.errors``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Json,
    StrictBool,
    StrictInt,
    StrictStr,
)

from spoolbatch.errors import InputError
from spoolbatch.format.endpoints import ENDPOINTS
from spoolbatch.store import files as filestore
from spoolbatch.store.batches import DEFAULT_WINDOW, BatchSpec, check_metadata, parse_window
from spoolbatch.store.priority import parse_priority

T = TypeVar("T")
X = TypeVar("X")
BatchStatus = Literal["validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling",
                      "cancelled"]
OUTPUT_EXPIRES = (3600, 30 * 86400)  # OpenAI: output_expires_after.seconds from 1 hour to 30 days


def _library(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A library check as a pydantic validator: its ``InputError`` becomes the field's error."""

    def validate(value: Any) -> Any:
        try:
            check(value)
        except InputError as exc:
            raise ValueError(exc.reason) from None
        return value

    return validate


def _endpoint(value: str) -> str:
    if value not in ENDPOINTS:
        raise ValueError(f"endpoint must be one of {', '.join(ENDPOINTS)}.")
    return value


def _file_id(value: str) -> str:
    if filestore.parse_file_id(value) is None:
        raise ValueError("input_file_id must be the id of an uploaded file.")
    return value


# --- requests --------------------------------------------------------------------------------
class OutputExpiresAfter(BaseModel):
    """When a batch's files may go: ``seconds`` after its creation, from 1 hour to 30 days."""

    anchor: Literal["created_at"]
    seconds: Annotated[StrictInt, Field(ge=OUTPUT_EXPIRES[0], le=OUTPUT_EXPIRES[1])]


Window = Annotated[StrictStr, AfterValidator(_library(parse_window))]
Metadata = Annotated[dict[str, str] | None, BeforeValidator(_library(check_metadata))]
Priority = Annotated[StrictInt | StrictStr | None,
                     AfterValidator(_library(lambda v: v if v is None else parse_priority(v)))]


class BatchCreate(BaseModel):
    """The body of ``POST /v1/batches`` (JSON): OpenAI's create, and our ``allow_bad_lines`` and ``priority``."""

    input_file_id: Annotated[StrictStr, AfterValidator(_file_id)]
    endpoint: Annotated[StrictStr, AfterValidator(_endpoint)]
    completion_window: Window = DEFAULT_WINDOW
    metadata: Metadata = None
    output_expires_after: OutputExpiresAfter | None = None
    allow_bad_lines: StrictBool = False
    priority: Priority = None  # extension: low, normal, high, urgent or a number (else metadata's ``priority``)

    def spec(self) -> BatchSpec:
        """What the library records of it."""
        expires = self.output_expires_after.model_dump() if self.output_expires_after else None
        return BatchSpec(endpoint=self.endpoint, completion_window=self.completion_window,
                         metadata=self.metadata or {}, input_file_id=self.input_file_id, output_expires_after=expires,
                         priority=self.priority)


def _blank_none(value: Any) -> Any:
    return None if value == "" else value


def _form_flag(value: Any) -> Any:
    return value.lower() in ("1", "true", "yes") if isinstance(value, str) else value


class OneStepForm(BaseModel):
    """The multipart fields of the one-step ``POST /v1/batches`` beside its ``file`` (all optional)."""

    endpoint: Annotated[str | None, BeforeValidator(_blank_none)] = None
    model: Annotated[str | None, BeforeValidator(_blank_none)] = None
    completion_window: Annotated[str, BeforeValidator(lambda v: v or DEFAULT_WINDOW)] = DEFAULT_WINDOW
    metadata: Annotated[Json[Any] | None, BeforeValidator(_blank_none)] = Field(None, description="a JSON object")
    allow_bad_lines: Annotated[bool, BeforeValidator(_form_flag)] = False

    def create_body(self, input_file_id: str) -> BatchCreate:
        """The create body these fields stand for (validated as a JSON create is)."""
        return BatchCreate.model_validate({"input_file_id": input_file_id, "endpoint": self.endpoint,
                                           "completion_window": self.completion_window, "metadata": self.metadata,
                                           "allow_bad_lines": self.allow_bad_lines})


class FileUpload(BaseModel):
    """The multipart body of ``POST /v1/files``."""

    file: bytes = Field(json_schema_extra={"format": "binary"})
    purpose: Literal["batch"] = "batch"


class OneStepUpload(OneStepForm):
    """The multipart body of the one-step ``POST /v1/batches``: a file and its batch's fields."""

    file: bytes = Field(json_schema_extra={"format": "binary"})


# --- answers ---------------------------------------------------------------------------------
class FileObject(BaseModel):
    """OpenAI's file object."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str = "processed"
    expires_at: int | None = None
    status_details: str | None = None


class FileDeleted(BaseModel):
    """The answer to deleting a file."""

    id: str
    object: Literal["file"] = "file"
    deleted: bool


class Page(BaseModel, Generic[T]):
    """A page of a list, OpenAI's cursor shape: ``after`` the last id for the next one."""

    object: Literal["list"] = "list"
    data: list[T]
    first_id: str | None
    last_id: str | None
    has_more: bool

    @classmethod
    def of(cls, items: Sequence[X], id_of: Callable[[X], str], render: Callable[[X], T], *, after: str | None,
           limit: int) -> Page[T]:
        """The ``limit`` items after the one whose id is ``after`` (none when it is unknown), rendered."""
        start = 0
        if after:
            ids = [id_of(x) for x in items]
            start = ids.index(after) + 1 if after in ids else len(items)
        shown = items[start:start + limit]
        return cls.read(shown, id_of, render, has_more=len(items) > start + limit)

    @classmethod
    def read(cls, shown: Sequence[X], id_of: Callable[[X], str], render: Callable[[X], T], *,
             has_more: bool) -> Page[T]:
        """A page read as a page at the source (``commands/listing.py``): its items, rendered."""
        return cls(data=[render(x) for x in shown], first_id=id_of(shown[0]) if shown else None,
                   last_id=id_of(shown[-1]) if shown else None, has_more=has_more)


class BatchError(BaseModel):
    """One line that failed validation, or why a whole file was refused."""

    model_config = ConfigDict(extra="allow")
    code: str | None = None
    line: int | None = None
    message: str | None = None
    param: str | None = None


class BatchErrors(BaseModel):
    """A failed batch's ``errors``."""

    object: Literal["list"] = "list"
    data: list[BatchError]


class RequestCounts(BaseModel):
    """A batch's requests: all of them, answered, failed (a cancel's or expiry's unrun ones too)."""

    total: int
    completed: int
    failed: int


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class Usage(BaseModel):
    """Tokens a batch has used so far."""

    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class Batch(BaseModel):
    """OpenAI's batch object."""

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    model: str | None = None
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: BatchStatus
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts
    usage: Usage
    metadata: dict[str, str] | None = None
    priority: str | int = "normal"  # extension: the priority it runs at (store/priority.py)


class CreatedBatch(Batch):
    """The answer to a create: the batch, and seconds it may take at the spool's measured throughput."""

    estimate_seconds: float | None = None


class Estimate(BaseModel):
    """The replaced batch server's estimate: nulls and a ``reason`` while no throughput is known."""

    estimated_time_minutes: float | None
    estimated_seconds: float | None
    basis: str | None = None
    reason: str | None = None


class OneStepBatch(CreatedBatch):
    """The one-step route's answer: the batch object and the replaced server's keys beside it."""

    batch_id: str = Field(description="the same as id")
    total_requests: int
    estimate: Estimate


class BatchLogs(BaseModel):
    """A batch's log as people read it."""

    object: Literal["list"] = "list"
    batch_id: str
    data: list[str]


class Health(BaseModel):
    """Workers by liveness, the alive ones' GPUs, and the queue."""

    status: Literal["ok", "no_worker"]
    workers: dict[str, int]
    gpu: list[dict[str, Any]]
    queue: dict[str, int]
    time: int


class Model(BaseModel):
    """A model a worker has loaded, or the configured one, or a LoRA adapter with its base model as ``parent``."""

    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "spoolbatch"
    parent: str | None = None  # as vLLM's server lists adapters


class ModelList(BaseModel):
    """``GET /v1/models``."""

    object: Literal["list"] = "list"
    data: list[Model]


class SpoolStatus(BaseModel):
    """`spoolbatch status --json` (the workers, the jobs by state, what is running, the next queued, the last
    ended), and, asked for with ``limit``, a page of the batches as ``GET /v1/batches`` answers it."""

    model_config = ConfigDict(extra="allow")
    spool: str
    alive: bool
    workers: list[dict[str, Any]]
    queue: dict[str, Any]
    jobs: list[dict[str, Any]]
    jobs_total: int = 0
    finished_total: int = 0
    not_shown: dict[str, int] = {}
    disk: dict[str, Any] | None = None
    page: Page[Batch] | None = None


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every answer other than 2xx, OpenAI's error shape."""

    error: ErrorBody

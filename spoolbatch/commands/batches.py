"""Jobs as OpenAI batches: the batch object of a job, the list, and the error file's lines.

Every job is a batch (one dropped with `cp` too); its status is ``JobState.openai_status``
of the state `list` shows, ``cancelling`` while a cancel is pending. A cancelled or expired
batch's requests that never ran are error lines (``batch_cancelled``, ``batch_expired``),
made when the error file is read, from the job's input past the checkpoint's offset.

Expiry is read from the clock as well as from the checkpoint: a batch whose window has passed
while no worker runs a chunk of it (queued, just claimed, interrupted) is ``expired`` at once, as
the worker that next looks at it will make it (``by_clock``), instead of ``validating`` forever.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import orjson

from spoolbatch.commands.catalog import (
    JobInfo,
    deadletter_lines,
    group_jobs,
    in_project,
    job_info,
    list_jobs,
    queued_entry,
)
from spoolbatch.commands.control import cancel
from spoolbatch.config import DEFAULT_PROJECT
from spoolbatch.errors import SpoolbatchError
from spoolbatch.format.bodies import stable_id
from spoolbatch.format.lines import LineParser
from spoolbatch.format.types import Request
from spoolbatch.store.batches import DEFAULT_WINDOW, BatchRecord, batch_id, cancel_requested_at, stop_state
from spoolbatch.store.checkpoint import Checkpoint
from spoolbatch.store.files import error_file_id, input_file_id, output_file_id
from spoolbatch.store.fsutil import count_lines
from spoolbatch.store.jobstate import JobState
from spoolbatch.store.priority import NORMAL, priority_label
from spoolbatch.store.rejections import Rejection
from spoolbatch.store.spool import Spool

UNRUN_CODE = {JobState.CANCELLED: "batch_cancelled", JobState.EXPIRED: "batch_expired"}
WINDOW_PASSED = "completion window passed before a worker ran it"
_UNFINISHED = frozenset({JobState.QUEUED, JobState.CLAIMED, JobState.RUNNING, JobState.INTERRUPTED})


def by_clock(spool: Spool, info: JobInfo, now: float | None = None) -> JobInfo:
    """``info``, or ``info`` as expired once its batch's window has passed and no worker runs a chunk of it.

    A worker ends such a job expired when it next looks at it (``stop_state``, which a pending
    cancel outranks); until one does, the clock says what it will be. A job a live worker holds
    stays as it is: its chunk in flight may still commit, or finish the job.
    """
    if info.status not in _UNFINISHED or stop_state(spool, info.job, now) != JobState.EXPIRED:
        return info
    if info.status == JobState.RUNNING and (info.owned or (info.owned is None and spool.job_is_owned(info.job))):
        return info
    return replace(info, status=JobState.EXPIRED, eta_seconds=None, reason=info.reason or WINDOW_PASSED)


def jobs_by_clock(spool: Spool, jobs: list[JobInfo], now: float | None = None) -> list[JobInfo]:
    """``by_clock`` of each job (one clock reading for all)."""
    now = time.time() if now is None else now
    return [by_clock(spool, j, now) for j in jobs]


@dataclass(frozen=True, slots=True)
class BatchView:
    """What a batch object is made of: the job's state, checkpoint, record, and pending cancel."""

    info: JobInfo
    checkpoint: Checkpoint | None
    record: BatchRecord | None
    cancelling_at: float | None
    created_at: float
    rejection: Rejection | None
    lines: int = 0  # lines of the input, counted only for a batch expired (by the clock) before a worker came

    @property
    def job(self) -> str:
        """The job id."""
        return self.info.job

    @property
    def id(self) -> str:
        """The batch id."""
        return batch_id(self.info.job)

    @property
    def project(self) -> str:
        """The project it belongs to."""
        return self.info.project or DEFAULT_PROJECT

    @property
    def state(self) -> JobState:
        """The job's state."""
        return self.info.status

    def total(self) -> int:
        """Requests in the batch (lines, once a worker has counted them)."""
        ckpt, rec = self.checkpoint, self.record
        return max(ckpt.total_lines if ckpt else 0, rec.requests if rec else 0)

    def unrun(self) -> int:
        """Requests a cancel or an expiry left without an answer (all of them: expired before a worker came)."""
        ckpt = self.checkpoint
        if self.state not in UNRUN_CODE:
            return 0
        if ckpt is None:
            return (self.lines or self.total()) if self.state == JobState.EXPIRED else 0
        return max(0, ckpt.total_lines - ckpt.lines_consumed)

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI batch object."""
        ckpt, rec, state = self.checkpoint, self.record, self.state
        status = state.openai_status(cancelling=self.cancelling_at is not None)
        done = ckpt.requests_done if ckpt else 0
        failed = (ckpt.requests_failed if ckpt else 0) + self.unrun()
        finished = ckpt.finished_at if ckpt and state.final else None
        if state == JobState.EXPIRED and finished is None:  # expired by the clock: no worker has ended it yet
            finished = rec.expires_at if rec else None
        if state == JobState.REJECTED:
            finished = (self.rejection.at if self.rejection else None) or self.created_at
        errors_data = list(rec.errors) if rec and rec.errors else []
        if state == JobState.REJECTED and not errors_data and self.rejection:
            errors_data = [{"code": self.rejection.code, "line": None, "message": self.rejection.reason,
                            "param": None}]
        stamp = _stamp
        return {
            "id": batch_id(self.job),
            "object": "batch",
            "endpoint": (rec.endpoint if rec else None) or (ckpt.url if ckpt else None) or "/v1/chat/completions",
            "model": (ckpt.model if ckpt else None) or (rec.model if rec else None),
            "errors": {"object": "list", "data": errors_data} if errors_data else None,
            "input_file_id": (rec.input_file_id if rec else None) or input_file_id(self.job),
            "completion_window": (rec.completion_window if rec else None) or DEFAULT_WINDOW,
            "status": status,
            "output_file_id": output_file_id(self.job) if ckpt and (done or state.final) else None,
            "error_file_id": error_file_id(self.job) if failed else None,
            "created_at": int(self.created_at),
            "in_progress_at": stamp(ckpt.started_at if ckpt else None),  # None: cancelled while queued
            "expires_at": stamp(rec.expires_at if rec else None),
            "finalizing_at": stamp(finished if state == JobState.COMPLETED else None),
            "completed_at": stamp(finished if state == JobState.COMPLETED else None),
            "failed_at": stamp(finished if status == "failed" else None),
            "expired_at": stamp(finished if state == JobState.EXPIRED else None),
            "cancelling_at": stamp(self.cancelling_at or (finished if state == JobState.CANCELLED else None)),
            "cancelled_at": stamp(finished if state == JobState.CANCELLED else None),
            "request_counts": {"total": max(self.total(), done + failed), "completed": done, "failed": failed},
            "usage": {"input_tokens": ckpt.prompt_tokens if ckpt else 0,
                      # Prompt tokens read from vLLM's prefix cache (0 where the engine does not say).
                      "input_tokens_details": {"cached_tokens": ckpt.prefix_cache_hits if ckpt else 0},
                      "output_tokens": ckpt.completion_tokens if ckpt else 0,
                      # The checkpoint keeps no reasoning total (each result body has its own count).
                      "output_tokens_details": {"reasoning_tokens": 0},
                      "total_tokens": ckpt.total_tokens if ckpt else 0},
            "metadata": rec.metadata if rec else None,
            "priority": priority_label(rec.job_priority if rec else NORMAL),  # extension: store/priority.py
        }


def _stamp(value: float | None) -> int | None:
    return int(value) if value else None


def _view(spool: Spool, info: JobInfo) -> BatchView:
    job = info.job
    ckpt = Checkpoint.load(spool.checkpoint(job))
    record = BatchRecord.load(spool, job)
    rejection = Rejection.load(spool, job) if info.status == JobState.REJECTED else None
    created = record.created_at if record else ckpt.created_at if ckpt else None
    if created is None:
        entry = queued_entry(spool, job) if info.status == JobState.QUEUED else None
        created = entry.mtime if entry else (rejection.at if rejection else None) or info.updated_at or 0.0
    cancelling = cancel_requested_at(spool, job) if not info.status.final else None
    lines = 0
    if info.status == JobState.EXPIRED and ckpt is None and record is not None and record.allow_bad_lines:
        # Its bad lines are not in the record's count, and no worker has counted the lines yet.
        path = spool.current_input(job)
        with contextlib.suppress(OSError):
            lines = count_lines(path)[1] if path is not None else 0
    return BatchView(info, ckpt, record, cancelling, float(created), rejection, lines)


def batch_view(spool: Spool, info: JobInfo) -> BatchView:
    """The batch of a job as `list` read it (``by_clock`` already applied): its files read once."""
    return _view(spool, info)


def get_batch(spool: Spool, job: str) -> BatchView:
    """The batch of ``job``, or ``JobNotFound``."""
    return _view(spool, by_clock(spool, job_info(spool, job, probe_owner=False)))


def cancel_batch(spool: Spool, job: str, project: str | None = None) -> BatchView:
    """Cancel a batch (at once when queued, at the next chunk boundary when running); the batch as it is then."""
    if not get_batch(spool, job).state.final:
        with contextlib.suppress(SpoolbatchError):  # it ended meanwhile: the answer is what it is now
            cancel(spool, job, project)
    return get_batch(spool, job)


def list_batches(spool: Spool, project: str | None = None) -> list[BatchView]:
    """Every batch of the spool (of ``project``, when given), newest first."""
    views = [_view(spool, info) for info in jobs_by_clock(spool, in_project(list_jobs(spool), project))]
    views.sort(key=lambda v: (v.created_at, v.job), reverse=True)
    return views


def error_lines(spool: Spool, job: str) -> Iterator[bytes]:
    """The error file: deadletter as OpenAI error lines, then each request a cancel or expiry left unrun."""
    yield from deadletter_lines(spool, job)
    view = get_batch(spool, job)
    ckpt, code = view.checkpoint, UNRUN_CODE.get(view.state)
    if code is None or not view.unrun():
        return
    first_line, offset = (ckpt.lines_consumed + 1, ckpt.bytes_consumed) if ckpt else (1, 0)
    message = "the batch was cancelled before this request ran" if view.state == JobState.CANCELLED \
        else "the batch's completion window ended before this request ran"
    parser = LineParser()
    f = spool.open_input(job)
    if f is None:
        return
    with f:
        f.seek(offset)
        for n, raw in enumerate(f, start=first_line):
            parsed = parser.parse(raw, n)
            if parsed is None:
                continue
            custom_id = parsed.custom_id
            if not isinstance(parsed, Request) and custom_id is None:
                with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
                    custom_id = orjson.loads(raw).get("custom_id")
            yield orjson.dumps({"id": stable_id("batch_req_", job, str(custom_id), str(n)), "custom_id": custom_id,
                                "response": None, "error": {"code": code, "message": f"line {n}: {message}"}}) + b"\n"


def error_file(spool: Spool, name: str) -> Iterator[bytes]:
    """The error file of a job, or those of every job of a group in order: what `results --errors` prints."""
    spool.require()
    for job in group_jobs(spool, name):
        yield from error_lines(spool, job)

"""Jobs as OpenAI batches: the batch object of a job, the list, and the error file's lines.

Every job is a batch (one dropped with `cp` too); its status is ``JobState.openai_status``
of the state `list` shows, ``cancelling`` while a cancel is pending. A cancelled or expired
batch's requests that never ran are error lines (``batch_cancelled``, ``batch_expired``),
made when the error file is read, from the archived input past the checkpoint's offset.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from spoolbatch.commands.catalog import JobInfo, errors, job_info, list_jobs, queued_entry
from spoolbatch.format.bodies import stable_id
from spoolbatch.format.lines import LineParser
from spoolbatch.format.types import Request
from spoolbatch.store.batches import DEFAULT_WINDOW, BatchRecord, batch_id, cancel_requested_at
from spoolbatch.store.checkpoint import Checkpoint
from spoolbatch.store.files import error_file_id, input_file_id, output_file_id
from spoolbatch.store.jobstate import JobState
from spoolbatch.store.rejections import Rejection
from spoolbatch.store.spool import Spool

UNRUN_CODE = {JobState.CANCELLED: "batch_cancelled", JobState.EXPIRED: "batch_expired"}


@dataclass(frozen=True, slots=True)
class BatchView:
    """What a batch object is made of: the job's state, checkpoint, record, and pending cancel."""

    info: JobInfo
    checkpoint: Checkpoint | None
    record: BatchRecord | None
    cancelling_at: float | None
    created_at: float
    rejection: Rejection | None

    @property
    def job(self) -> str:
        """The job id."""
        return self.info.job

    @property
    def state(self) -> JobState:
        """The job's state."""
        return self.info.status

    def total(self) -> int:
        """Requests in the batch (lines, once a worker has counted them)."""
        ckpt, rec = self.checkpoint, self.record
        return max(ckpt.total_lines if ckpt else 0, rec.requests if rec else 0)

    def unrun(self) -> int:
        """Requests a cancel or an expiry left without an answer."""
        ckpt = self.checkpoint
        if self.state not in UNRUN_CODE or ckpt is None:
            return 0
        return max(0, ckpt.total_lines - ckpt.lines_consumed)

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI batch object."""
        ckpt, rec, state = self.checkpoint, self.record, self.state
        status = state.openai_status(cancelling=self.cancelling_at is not None)
        done = ckpt.requests_done if ckpt else 0
        failed = (ckpt.requests_failed if ckpt else 0) + self.unrun()
        finished = ckpt.finished_at if ckpt and state.final else None
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
                      "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens": ckpt.completion_tokens if ckpt else 0,
                      "output_tokens_details": {"reasoning_tokens": 0},
                      "total_tokens": ckpt.total_tokens if ckpt else 0},
            "metadata": rec.metadata if rec else None,
        }


def estimate_object(seconds: float | None, basis: str) -> dict[str, Any]:
    """The ``estimate`` the replaced batch server answered: minutes and seconds, or nulls and the reason."""
    if seconds is None:
        return {"estimated_time_minutes": None, "estimated_seconds": None,
                "reason": basis or "no estimate: the batch holds no request to run"}
    return {"estimated_time_minutes": round(seconds / 60, 1), "estimated_seconds": round(seconds, 1), "basis": basis}


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
    return BatchView(info, ckpt, record, cancelling, float(created), rejection)


def get_batch(spool: Spool, job: str) -> BatchView:
    """The batch of ``job``, or ``JobNotFound``."""
    return _view(spool, job_info(spool, job, probe_owner=False))


def list_batches(spool: Spool) -> list[BatchView]:
    """Every batch of the spool, newest first."""
    views = [_view(spool, info) for info in list_jobs(spool)]
    views.sort(key=lambda v: (v.created_at, v.job), reverse=True)
    return views


def error_lines(spool: Spool, job: str) -> Iterator[bytes]:
    """The error file: deadletter as OpenAI error lines, then each request a cancel or expiry left unrun."""
    yield from errors(spool, job)
    view = get_batch(spool, job)
    ckpt, code = view.checkpoint, UNRUN_CODE.get(view.state)
    if ckpt is None or code is None or ckpt.lines_consumed >= ckpt.total_lines:
        return
    message = "the batch was cancelled before this request ran" if view.state == JobState.CANCELLED \
        else "the batch's completion window ended before this request ran"
    parser = LineParser()
    f = spool.open_input(job)
    if f is None:
        return
    with f:
        f.seek(ckpt.bytes_consumed)
        for n, raw in enumerate(f, start=ckpt.lines_consumed + 1):
            parsed = parser.parse(raw, n)
            if parsed is None:
                continue
            custom_id = parsed.custom_id
            if not isinstance(parsed, Request) and custom_id is None:
                with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
                    custom_id = orjson.loads(raw).get("custom_id")
            yield orjson.dumps({"id": stable_id("batch_req_", job, str(custom_id), str(n)), "custom_id": custom_id,
                                "response": None, "error": {"code": code, "message": f"line {n}: {message}"}}) + b"\n"

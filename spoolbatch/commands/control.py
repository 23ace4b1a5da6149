"""Steering jobs: cancel a queued or running one, retry a job's deadletter records."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from enum import StrEnum

from spoolbatch.commands.catalog import deadletter, job_info
from spoolbatch.commands.submit import write_job
from spoolbatch.config import DEFAULT_PROJECT
from spoolbatch.errors import JobNotFound, SpoolbatchError
from spoolbatch.format.preflight import count_lines
from spoolbatch.store import jobindex
from spoolbatch.store.checkpoint import Checkpoint
from spoolbatch.store.fsutil import atomic_write, fsync_dir
from spoolbatch.store.jobstate import JobState
from spoolbatch.store.spool import InboxEntry, Spool, sanitize_job_id


class CancelOutcome(StrEnum):
    """What ``cancel`` did, one name per case (the CLI words it)."""

    REMOVED = "removed"  # the inbox entry was no regular file (a link, a pipe): unlinked, no job record
    CANCELLED_QUEUED = "cancelled_queued"  # a queued job: out of the inbox, kept as a cancelled job
    STOP_REQUESTED = "stop_requested"  # running, a daemon holds it: it stops at the next chunk boundary
    STOP_PENDING = "stop_pending"  # running, no daemon holds it now: it stops when one picks it up


@dataclass(frozen=True, slots=True)
class Cancelled:
    """The outcome of ``cancel`` for ``job`` (the id the job goes on under; a queued one keeps its own)."""

    job: str
    outcome: CancelOutcome


def cancel(spool: Spool, job: str, project: str | None = None) -> Cancelled:
    """Remove a queued job, or stop a running one at its next chunk boundary; what happened.

    ``project``: only a queued file of that project's folder is the job (two folders may hold one name).
    """
    spool.require()
    with spool.claim_lock():
        for entry in spool.inbox_entries():
            if project is not None and entry.project != project:
                continue
            if sanitize_job_id(entry.name) == job or entry.name == job:
                if not entry.path.is_file() or entry.path.is_symlink():
                    os.unlink(entry.path)
                    return Cancelled(job, CancelOutcome.REMOVED)
                return Cancelled(_cancel_queued(spool, entry), CancelOutcome.CANCELLED_QUEUED)
        if job in spool.running_jobs():
            atomic_write(spool.cancel_marker(job), str(time.time()).encode())
            owned = spool.job_is_owned(job)
            return Cancelled(job, CancelOutcome.STOP_REQUESTED if owned else CancelOutcome.STOP_PENDING)
    ckpt = Checkpoint.load(spool.checkpoint(job))
    if ckpt is not None:
        raise SpoolbatchError(f"job {job!r} is already {ckpt.status.value}; nothing to cancel")
    raise JobNotFound(job)


def _cancel_queued(spool: Spool, entry: InboxEntry) -> str:
    """Take a queued file out of the inbox as a job cancelled before it started (claim lock held); its id.

    It keeps its id and shows as cancelled (its batch too), its input archived like a finished job's.
    """
    name, path = entry.name, entry.path
    job = spool.unique_job_id(name, own_inbox_name=name)
    lines = count_lines(path)[1]
    os.rename(path, spool.archived_input(job))
    fsync_dir(spool.done)
    fsync_dir(path.parent)
    now = time.time()
    Checkpoint(job=job, status=JobState.CANCELLED, input_name=name, total_lines=lines, created_at=now,
               finished_at=now, message="cancelled while queued", project=entry.project).save(spool.checkpoint(job))
    jobindex.ended(spool, job, JobState.CANCELLED, now, entry.mtime, entry.project)
    return job


def retry(spool: Spool, job: str) -> tuple[str, int]:
    """Resubmit a job's deadletter records as a new job; (new job id, records)."""
    records = list(deadletter(spool, job))
    if not records:
        raise SpoolbatchError(f"job {job!r} has no deadletter records to retry")
    lines = [r["request"].encode() for r in records if "request_base64" not in r]
    if not lines:
        raise SpoolbatchError(f"job {job!r}'s deadletter records are not valid text; fix them by hand")
    new = write_job(spool, f"{job}.retry", lines, job_info(spool, job, probe_owner=False).project or DEFAULT_PROJECT)
    return new, len(lines)

"""Steering jobs: cancel a queued or running one, retry a job's deadletter records."""

from __future__ import annotations

import os
import time

from spoolbatch.commands.catalog import deadletter
from spoolbatch.commands.submit import write_job
from spoolbatch.errors import JobNotFound, SpoolbatchError
from spoolbatch.store.checkpoint import Checkpoint
from spoolbatch.store.fsutil import atomic_write
from spoolbatch.store.spool import Spool, sanitize_job_id


def cancel(spool: Spool, job: str) -> str:
    """Remove a queued job, or stop a running one at its next chunk boundary; what happened."""
    spool.require()
    with spool.claim_lock():
        for entry in spool.inbox_entries():
            if sanitize_job_id(entry.name) == job or entry.name == job:
                os.unlink(entry.path)
                return "removed from the queue"
        if job in spool.running_jobs():
            atomic_write(spool.cancel_marker(job), str(time.time()).encode())
            if spool.job_is_owned(job):
                return "cancel requested: the daemon stops it at the next chunk boundary, checkpoint kept"
            return "cancel requested: the job stops when a daemon next picks it up (no daemon holds it now)"
    ckpt = Checkpoint.load(spool.checkpoint(job))
    if ckpt is not None:
        raise SpoolbatchError(f"job {job!r} is already {ckpt.status.value}; nothing to cancel")
    raise JobNotFound(job)


def retry(spool: Spool, job: str) -> tuple[str, int]:
    """Resubmit a job's deadletter records as a new job; (new job id, records)."""
    records = list(deadletter(spool, job))
    if not records:
        raise SpoolbatchError(f"job {job!r} has no deadletter records to retry")
    lines = [r["request"].encode() for r in records if "request_base64" not in r]
    if not lines:
        raise SpoolbatchError(f"job {job!r}'s deadletter records are not valid text; fix them by hand")
    new = write_job(spool, f"{job}.retry", lines)
    return new, len(lines)

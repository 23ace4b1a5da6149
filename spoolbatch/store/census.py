"""How many jobs the spool holds in each state, read from file names and checkpoints alone.

This is the worker's cheap count for its metrics: it probes no lock, so a running job that
lost its worker counts as running here (`status` and `list`, which probe, say interrupted).
"""

from __future__ import annotations

import contextlib

import orjson

from spoolbatch.store.checkpoint import Checkpoint
from spoolbatch.store.jobstate import JobState
from spoolbatch.store.spool import Spool


def count_jobs(spool: Spool) -> dict[JobState, int]:
    """Jobs by state: queued in the inbox, claimed or running in ``active/``, final in ``done/``."""
    counts = dict.fromkeys(JobState, 0)
    counts[JobState.QUEUED] = len(spool.inbox_entries())
    seen = set()
    for path in spool.done.glob("*.checkpoint.json"):
        with contextlib.suppress(OSError, orjson.JSONDecodeError, ValueError, TypeError):
            ckpt = Checkpoint.load(path)
            if ckpt is not None:
                counts[ckpt.status] += 1
                seen.add(ckpt.job)
    counts[JobState.CLAIMED] = sum(1 for job in spool.running_jobs() if job not in seen)
    counts[JobState.REJECTED] += sum(1 for _ in spool.rejected.glob("*.reason.json"))
    return counts

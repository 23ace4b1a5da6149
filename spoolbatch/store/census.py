"""How many jobs the spool holds in each state, read from file names and checkpoints alone.

This is the worker's cheap count for its metrics: it probes no lock, so a running job that
lost its worker counts as running here (`status` and `list`, which probe, say interrupted).
A worker recounts whenever it changes a job's state, and a spool retains a month of finished
jobs, so the caller may keep a ``cache``: a checkpoint whose inode, size and mtime are unchanged
is not read again (a finished job's never is), which makes a recount a directory scan.
"""

from __future__ import annotations

import contextlib

import orjson

from spoolbatch.store.checkpoint import Checkpoint
from spoolbatch.store.jobstate import JobState
from spoolbatch.store.spool import Spool, Stage

# job of the file name -> (inode, mtime_ns, size, job, state): a checkpoint is replaced by a rename, a new inode
CensusCache = dict[str, tuple[int, int, int, str, JobState]]


def count_jobs(spool: Spool, cache: CensusCache | None = None) -> dict[JobState, int]:
    """Jobs by state: queued in the inbox, claimed or running in ``active/``, final in ``done/``."""
    counts = dict.fromkeys(JobState, 0)
    counts[JobState.QUEUED] = len(spool.inbox_entries())
    seen = set()
    fresh: CensusCache = {}
    for entry in spool.jobs(Stage.CHECKPOINTED):
        name = entry.job
        with contextlib.suppress(OSError, orjson.JSONDecodeError, ValueError, TypeError):
            st = entry.stat()
            known = cache.get(name) if cache is not None else None
            if known is not None and known[:3] == (st.st_ino, st.st_mtime_ns, st.st_size):
                job, state = known[3], known[4]
            else:
                ckpt = Checkpoint.load(entry.path)
                if ckpt is None:
                    continue
                job, state = ckpt.job, ckpt.status
            fresh[name] = (st.st_ino, st.st_mtime_ns, st.st_size, job, state)
            counts[state] += 1
            seen.add(job)
    if cache is not None:  # forget the checkpoints that are gone
        cache.clear()
        cache.update(fresh)
    counts[JobState.CLAIMED] = sum(1 for job in spool.running_jobs() if job not in seen)
    counts[JobState.REJECTED] += sum(1 for _ in spool.jobs(Stage.REJECTED))
    return counts

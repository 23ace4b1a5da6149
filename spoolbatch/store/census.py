"""How many jobs the spool holds in each state: the worker's cheap count for its metrics.

Jobs that ended are counted from the spool's job index (store/jobindex.py: one ``bytes.count``
a state, however many jobs the spool retains); the few in ``active/`` from their checkpoints, and
the queued ones from the inbox. It probes no lock, so a running job that lost its worker counts
as running here (`status` and `list`, which probe, say interrupted). A worker recounts whenever
it changes a job's state, so the caller may keep a ``cache``: a running job's checkpoint whose
inode, size and mtime are unchanged is not read again.
"""

from __future__ import annotations

import contextlib

import orjson

from spoolbatch.store.checkpoint import Checkpoint
from spoolbatch.store.jobindex import STATES, JobIndex
from spoolbatch.store.jobstate import FINAL, JobState
from spoolbatch.store.spool import Spool, Stage

# job -> (inode, mtime_ns, size, job, state): a checkpoint is replaced by a rename, a new inode
CensusCache = dict[str, tuple[int, int, int, str, JobState]]


def _state(spool: Spool, job: str, cache: CensusCache | None, fresh: CensusCache) -> JobState | None:
    """The state ``job``'s checkpoint says (None without one), read again only when it changed."""
    path = spool.checkpoint(job)
    with contextlib.suppress(OSError, orjson.JSONDecodeError, ValueError, TypeError):
        st = path.stat()
        known = cache.get(job) if cache is not None else None
        if known is not None and known[:3] == (st.st_ino, st.st_mtime_ns, st.st_size):
            state = known[4]
        else:
            ckpt = Checkpoint.load(path)
            if ckpt is None:
                return None
            state = ckpt.status
        fresh[job] = (st.st_ino, st.st_mtime_ns, st.st_size, job, state)
        return state
    return None


def count_jobs(spool: Spool, cache: CensusCache | None = None) -> dict[JobState, int]:
    """Jobs by state: queued in the inbox, claimed or running in ``active/``, ended in the index."""
    counts = dict.fromkeys(JobState, 0)
    counts[JobState.QUEUED] = len(spool.inbox_entries())
    view = JobIndex(spool).view()
    for code, n in view.counts().items():
        if code in STATES:
            counts[STATES[code]] += n
    fresh: CensusCache = {}
    running = set()
    for entry in spool.jobs(Stage.ACTIVE):
        job = entry.job
        running.add(job)
        known = view.find(job)
        if known is not None and known.state is not None:
            continue  # ended a moment ago, its input not archived yet: counted with the ended ones
        state = _state(spool, job, cache, fresh)
        counts[JobState.CLAIMED if state is None else state] += 1
    for line in view.open_entries():  # ended while its end went unrecorded (the clean-up repairs it)
        if line.job not in running and (state := _state(spool, line.job, cache, fresh)) is not None \
                and state in FINAL:
            counts[state] += 1
    if cache is not None:  # forget the checkpoints of jobs no longer running
        cache.clear()
        cache.update(fresh)
    return counts

"""`spoolbatch status`: workers (alive, stale, dead), the queue, and each job's progress.

How a worker's liveness is judged is ``store/liveness.py``'s (the daemon's clean-up uses it
too); this module gathers what `status` shows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from spoolbatch.commands.batches import jobs_by_clock
from spoolbatch.commands.catalog import JobInfo, in_project, list_jobs
from spoolbatch.commands.usage import UsageRow, recent_usage
from spoolbatch.store.diskspace import DiskUsage, spool_usage
from spoolbatch.store.jobstate import JobState
from spoolbatch.store.liveness import Liveness, SeenWorker, liveness, pid_exists, read_workers
from spoolbatch.store.spool import Spool

__all__ = ["Liveness", "SpoolStatus", "jobs_now", "liveness", "pid_exists", "read_workers", "status", "with_workers"]


@dataclass(frozen=True, slots=True)
class SpoolStatus:
    """Everything `status` shows."""

    spool: str
    workers: list[SeenWorker]
    jobs: list[JobInfo]
    disk: DiskUsage | None = None
    usage: list[UsageRow] = dataclasses.field(default_factory=list)  # per project and UTC day

    @property
    def alive(self) -> bool:
        """True when at least one worker is alive."""
        return any(w.liveness == Liveness.ALIVE for w in self.workers)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON for `status --json`."""
        counts: dict[str, int] = {}
        for j in self.jobs:
            counts[j.status.value] = counts.get(j.status.value, 0) + 1
        return {"spool": self.spool, "alive": self.alive, "workers": [w.to_dict() for w in self.workers],
                "queue": {"jobs": counts.get(JobState.QUEUED.value, 0), "by_status": counts},
                "jobs": [j.to_dict() for j in self.jobs], "disk": self.disk.to_dict() if self.disk else None,
                "usage": [u.to_dict() for u in self.usage]}


def status(spool: Spool, job: str | None = None, project: str | None = None) -> SpoolStatus:
    """Gather the spool's status (one job's, when ``job`` is given; one project's, when ``project`` is).

    A project's status names no other project's job: a worker on one shows only its state and GPU.
    """
    spool.require()
    jobs = mine = in_project(jobs_now(spool), project)
    if job is not None:
        from spoolbatch.errors import JobNotFound

        jobs = [j for j in jobs if j.job == job]
        if not jobs:
            raise JobNotFound(job)
    workers = read_workers(spool)
    if project is not None:
        workers = hide_other_jobs(workers, {j.job for j in mine})
    return SpoolStatus(str(spool.root), workers, with_workers(jobs, workers), spool_usage(spool),
                       recent_usage(spool, project))


# What a heartbeat says about the job its worker answers.
JOB_FIELDS = ("job", "chunk", "chunk_lines", "progress", "model", "last_chunk", "scheduled", "reason")
_BLANK: dict[str, Any] = dict.fromkeys(JOB_FIELDS)


def hide_other_jobs(workers: list[SeenWorker], visible: set[str]) -> list[SeenWorker]:
    """The workers with what they say of a job outside ``visible`` blanked (its id, progress, model)."""
    return [w if not w.beat.job or w.beat.job in visible
            else dataclasses.replace(w, beat=dataclasses.replace(w.beat, **_BLANK)) for w in workers]


def jobs_now(spool: Spool, now: float | None = None) -> list[JobInfo]:
    """Every job as `list` and `status` show it: a batch whose window passed while no worker ran it is expired."""
    return jobs_by_clock(spool, list_jobs(spool), now)


def with_workers(jobs: list[JobInfo], workers: list[SeenWorker]) -> list[JobInfo]:
    """Each job with the number of alive workers on it, its ETA divided among them.

    A job's rate is measured per worker (its busy seconds add up over every worker's
    chunks), so with several workers sharing it the time left shrinks in proportion.
    """
    on: dict[str, int] = {}
    for w in workers:
        if w.liveness == Liveness.ALIVE and w.beat.job:
            on[w.beat.job] = on.get(w.beat.job, 0) + 1
    out = []
    for j in jobs:
        n = on.get(j.job, 0)
        if n:
            j = dataclasses.replace(j, workers=n, eta_seconds=None if j.eta_seconds is None else j.eta_seconds / n)
        out.append(j)
    return out


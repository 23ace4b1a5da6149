"""`spoolbatch status`: workers (alive, stale, dead), the queue, and what the jobs are doing.

What is happening, whatever the spool retains: the running jobs, the next queued ones and the
last few that ended, each read from its own files, and how many jobs are in each state, counted
from the spool's job index (store/jobindex.py) instead of a month of checkpoints; `list` shows
every job. How a worker's liveness is judged is ``store/liveness.py``'s (the daemon's clean-up
uses it too); this module gathers what `status` shows.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

from spoolbatch.commands.batches import by_clock
from spoolbatch.commands.catalog import JobInfo, job_info, queued_info, read_groups, taken_info
from spoolbatch.commands.listing import iter_jobs
from spoolbatch.commands.usage import UsageRow, recent_usage
from spoolbatch.errors import JobNotFound
from spoolbatch.store.diskspace import DiskUsage, spool_usage
from spoolbatch.store.jobindex import STATES, JobIndex
from spoolbatch.store.jobstate import FINAL, JobState
from spoolbatch.store.liveness import Liveness, SeenWorker, liveness, pid_exists, read_workers
from spoolbatch.store.spool import Spool

__all__ = ["FINISHED_SHOWN", "QUEUED_SHOWN", "Liveness", "SpoolStatus", "jobs_now", "liveness", "pid_exists",
           "read_workers", "status", "with_workers"]

FINISHED_SHOWN = 8  # the jobs that ended last, as the live view shows them; the rest are counted
QUEUED_SHOWN = 20  # the queued jobs next in line; the rest are counted


@dataclass(frozen=True, slots=True)
class SpoolStatus:
    """Everything `status` shows: the workers, the jobs shown, and how many there are of each state."""

    spool: str
    workers: list[SeenWorker]
    jobs: list[JobInfo]  # running ones, the next queued, the last ended (or the one job asked for)
    counts: dict[str, int] = dataclasses.field(default_factory=dict)  # every job (of the project) by state;
    # empty: the jobs shown are all there are
    disk: DiskUsage | None = None
    usage: list[UsageRow] = dataclasses.field(default_factory=list)  # per project and UTC day

    @property
    def alive(self) -> bool:
        """True when at least one worker is alive."""
        return any(w.liveness == Liveness.ALIVE for w in self.workers)

    @property
    def shown(self) -> dict[str, int]:
        """The jobs shown, by state."""
        shown: dict[str, int] = {}
        for j in self.jobs:
            shown[j.status.value] = shown.get(j.status.value, 0) + 1
        return shown

    @property
    def finished_total(self) -> int:
        """Jobs that ended, shown or not."""
        return sum(n for state, n in (self.counts or self.shown).items() if JobState(state).final)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON for `status --json`: the jobs shown, and how many of each kind are not."""
        shown = self.shown
        counts = self.counts or shown
        queued = counts.get(JobState.QUEUED.value, 0)
        finished_shown = sum(n for state, n in shown.items() if JobState(state).final)
        return {"spool": self.spool, "alive": self.alive, "workers": [w.to_dict() for w in self.workers],
                "queue": {"jobs": queued, "by_status": dict(counts)},
                "jobs": [j.to_dict() for j in self.jobs],
                "jobs_total": sum(counts.values()), "finished_total": self.finished_total,
                "not_shown": {"queued": max(0, queued - shown.get(JobState.QUEUED.value, 0)),
                              "finished": max(0, self.finished_total - finished_shown)},
                "disk": self.disk.to_dict() if self.disk else None, "usage": [u.to_dict() for u in self.usage]}


def status(spool: Spool, job: str | None = None, project: str | None = None, *,
           finished: int = FINISHED_SHOWN, queued: int = QUEUED_SHOWN, now: float | None = None) -> SpoolStatus:
    """Gather the spool's status (one job's, when ``job`` is given; one project's, when ``project`` is).

    A project's status names no other project's job: a worker on one shows only its state and GPU.
    """
    spool.require()
    now = time.time() if now is None else now
    workers = read_workers(spool)
    if job is not None:
        info = by_clock(spool, job_info(spool, job), now)
        if project is not None and info.project != project:
            raise JobNotFound(job)
        jobs, counts = [info], {info.status.value: 1}
    else:
        jobs, counts = _now(spool, project, finished, queued, now)
    groups = {part: name for name, parts in read_groups(spool).items() for part in parts}
    jobs = [dataclasses.replace(j, group=groups[j.job]) if j.job in groups else j for j in jobs]
    if project is not None:
        workers = hide_other_jobs(workers, {j.job for j in jobs})
    return SpoolStatus(str(spool.root), workers, with_workers(jobs, workers), counts, spool_usage(spool),
                       recent_usage(spool, project))


def _now(spool: Spool, project: str | None, finished: int, queued: int,
         now: float) -> tuple[list[JobInfo], dict[str, int]]:
    """The jobs running, the next ``queued`` waiting and the last ``finished`` ended; every job by state."""
    view = JobIndex(spool).view()
    counts = dict.fromkeys((s.value for s in JobState), 0)
    for code, n in view.counts(project).items():
        if code in STATES:
            counts[STATES[code].value] += n
    running: list[JobInfo] = []
    active = set(spool.running_jobs())
    for job in sorted(active):
        try:
            info = by_clock(spool, taken_info(spool, job, probe_owner=True), now)
        except JobNotFound:
            continue  # it ended and left active/ meanwhile
        if project is not None and info.project != project:
            continue
        known = view.find(job)
        if not (info.status.final and known is not None and known.state is not None):
            counts[info.status.value] += 1  # an ended job still in active/: counted once
        if not info.status.final:
            running.append(info)
    for line in view.open_entries():  # ended while its end went unrecorded (the clean-up repairs it)
        if line.job not in active and (project is None or line.project == project):
            try:
                info = taken_info(spool, line.job)
            except JobNotFound:
                continue
            if info.status in FINAL:
                counts[info.status.value] += 1
    waiting = [e for e in spool.inbox_entries() if project is None or e.project == project]
    counts[JobState.QUEUED.value] = len(waiting)
    shown = [by_clock(spool, queued_info(spool, e), now) for e in waiting[:queued]]
    ended: list[JobInfo] = []
    for line in view.last_ended(finished + 4, project):  # a few more: one may go while we read
        try:
            ended.append(by_clock(spool, taken_info(spool, line.job), now))
        except JobNotFound:
            continue
    return running + shown + ended[:finished], {state: n for state, n in counts.items() if n}


VERSION_SECONDS = 10.0  # a version is new at least this often: liveness and ages follow the clock


def version(spool: Spool, *about: object, now: float | None = None) -> str:
    """A short digest that changes whenever what `status` shows may have (a folder of jobs or workers, the
    index, the clock's ``VERSION_SECONDS``), from a stat of each: the same one means the same answer."""
    import hashlib

    keys: list[object] = [int((time.time() if now is None else now) // VERSION_SECONDS), *about]
    for path in (spool.inbox, *(folder for _p, folder in spool.project_inboxes()), spool.active, spool.done,
                 spool.rejected, spool.control, spool.batches, spool.workers, spool.groups, spool.job_index):
        try:
            st = path.stat()
        except FileNotFoundError:
            keys.append(None)
        else:
            keys.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return hashlib.blake2b(repr(keys).encode(), digest_size=12).hexdigest()


# What a heartbeat says about the job its worker answers.
JOB_FIELDS = ("job", "chunk", "chunk_lines", "progress", "model", "last_chunk", "scheduled", "reason")
_BLANK: dict[str, Any] = dict.fromkeys(JOB_FIELDS)


def hide_other_jobs(workers: list[SeenWorker], visible: set[str]) -> list[SeenWorker]:
    """The workers with what they say of a job outside ``visible`` blanked (its id, progress, model)."""
    return [w if not w.beat.job or w.beat.job in visible
            else dataclasses.replace(w, beat=dataclasses.replace(w.beat, **_BLANK)) for w in workers]


def jobs_now(spool: Spool, now: float | None = None) -> list[JobInfo]:
    """Every job as `list` shows it, newest first (``listing.iter_jobs``, read whole)."""
    return list(iter_jobs(spool, now=now, probe_owner=True))


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

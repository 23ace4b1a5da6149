"""Reading jobs: list, groups, results, deadletter, logs.

Everything here reads files the daemon wrote; none of it imports an engine.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson

from spoolbatch.errors import JobNotFound
from spoolbatch.format.lines import error_line
from spoolbatch.store.batches import BatchRecord, batch_id, project_of
from spoolbatch.store.checkpoint import Checkpoint
from spoolbatch.store.joblog import read_log, render
from spoolbatch.store.jobstate import JobState
from spoolbatch.store.priority import priority_label
from spoolbatch.store.rejections import Rejection
from spoolbatch.store.spool import InboxEntry, Spool, Stage, sanitize_job_id


@dataclass(frozen=True, slots=True)
class JobInfo:
    """One job as `list` and `status` show it."""

    job: str
    status: JobState
    requests_done: int = 0
    requests_failed: int = 0
    total_lines: int = 0
    progress: float = 0.0
    eta_seconds: float | None = None
    model: str | None = None
    tokens: int = 0
    updated_at: float | None = None
    reason: str | None = None  # why a whole file was rejected, or why the job ended early
    owned: bool | None = None
    retries: int = 0
    workers: int = 0  # alive workers holding a chunk of it (filled in by `status`)
    group: str | None = None  # the `submit --split` group it is a part of
    batch: str | None = None  # its id in the HTTP API
    metadata: dict[str, str] | None = None  # its batch metadata (`submit --metadata`, the API)
    lines_consumed: int = 0
    started_at: float | None = None
    busy_seconds: float = 0.0  # engine time summed over every worker's chunks: the job's own rate
    deduplicated: int = 0  # lines answered with an identical deterministic line's answer (not sent to the engine)
    prefix_cache_hit_rate: float | None = None  # share of prompt tokens the engine read from its prefix cache
    priority: str | int = "normal"  # its batch's priority (store/priority.py): a name, or a number without one
    project: str | None = None  # its project: its inbox folder while queued, then its checkpoint's or record's

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (the state as its string)."""
        return {k: getattr(self, k) for k in self.__slots__} | {"status": self.status.value}


def _from_checkpoint(ckpt: Checkpoint, owned: bool | None = None) -> JobInfo:
    status = JobState.INTERRUPTED if ckpt.status == JobState.RUNNING and owned is False else ckpt.status
    return JobInfo(ckpt.job, status, ckpt.requests_done, ckpt.requests_failed, ckpt.total_lines,
                   round(ckpt.progress(), 4), ckpt.eta_seconds(), ckpt.model, ckpt.total_tokens,
                   ckpt.updated_at, ckpt.message, owned, ckpt.retries, lines_consumed=ckpt.lines_consumed,
                   started_at=ckpt.started_at, busy_seconds=round(ckpt.busy_seconds, 3),
                   deduplicated=ckpt.deduplicated, prefix_cache_hit_rate=ckpt.prefix_cache_hit_rate,
                   project=ckpt.project)


def _from_rejection(rejection: Rejection) -> JobInfo:
    return JobInfo(rejection.job, JobState.REJECTED, reason=rejection.reason, updated_at=rejection.at)


def in_project(jobs: list[JobInfo], project: str | None) -> list[JobInfo]:
    """The jobs of ``project`` (all of them for None)."""
    return jobs if project is None else [j for j in jobs if j.project == project]


def check_project(spool: Spool, name: str, project: str | None) -> None:
    """``JobNotFound`` unless the job (or every job of the group) ``name`` belongs to ``project`` (None: any)."""
    if project is None:
        return
    for job in group_jobs(spool, name):
        try:
            owner = job_info(spool, job, probe_owner=False).project
        except JobNotFound:
            continue  # a group's part removed by the clean-up: it holds nothing
        if owner != project:
            raise JobNotFound(name)


def list_jobs(spool: Spool) -> list[JobInfo]:
    """Every job of the spool: queued, running, finished and refused ones."""
    spool.require()
    jobs: dict[str, JobInfo] = {}
    for queued in spool.inbox_entries():
        job = sanitize_job_id(queued.name)
        jobs[job] = JobInfo(job, JobState.QUEUED, updated_at=queued.mtime, project=queued.project)
    for entry in spool.jobs(Stage.CHECKPOINTED):
        ckpt = Checkpoint.load(entry.path)
        if ckpt is not None:
            owned = spool.job_is_owned(ckpt.job) if ckpt.status == JobState.RUNNING else None
            jobs[ckpt.job] = _from_checkpoint(ckpt, owned)
    for job in spool.running_jobs():
        if job not in jobs:
            jobs[job] = JobInfo(job, JobState.CLAIMED, owned=spool.job_is_owned(job))
    for entry in spool.jobs(Stage.REJECTED):
        if (rejection := Rejection.load(spool, entry.job)) is not None:
            jobs[rejection.job] = _from_rejection(rejection)
    for group, parts in read_groups(spool).items():
        for job in parts:
            if job in jobs:
                jobs[job] = replace(jobs[job], group=group)
    return sorted((_with_batch(spool, j) for j in jobs.values()), key=lambda j: (j.updated_at or 0, j.job))


def _with_batch(spool: Spool, info: JobInfo) -> JobInfo:
    record = BatchRecord.load(spool, info.job)
    return replace(info, batch=batch_id(info.job), metadata=record.metadata if record else None,
                   project=info.project or project_of(record),
                   priority=priority_label(record.job_priority) if record else "normal")


def queued_entry(spool: Spool, job: str) -> InboxEntry | None:
    """The inbox file that will become ``job``, if it is queued (``Spool.queued_entry``)."""
    return spool.queued_entry(job)


def queued_info(spool: Spool, entry: InboxEntry) -> JobInfo:
    """A file waiting in the inbox as `list` shows it."""
    job = sanitize_job_id(entry.name)
    return _with_batch(spool, JobInfo(job, JobState.QUEUED, updated_at=entry.mtime, project=entry.project))


def job_info(spool: Spool, job: str, *, probe_owner: bool = True) -> JobInfo:
    """One job as `list` shows it, without reading the rest of the spool; or ``JobNotFound``.

    ``probe_owner=False`` skips asking whether a live worker holds a running job (a lock probe
    per chunk): running and interrupted are both OpenAI's ``in_progress``, so the API needs no answer.
    """
    spool.require()
    return _job_info(spool, job, probe_owner, queued=True)


def taken_info(spool: Spool, job: str, *, probe_owner: bool = False, checkpointed: bool = False) -> JobInfo:
    """A job a worker took from the inbox (a job of the spool's index) as `list` shows it, or
    ``JobNotFound``: ``job_info`` without looking in the inbox, for a caller that checked the spool.
    ``checkpointed``: the index says it ended with a checkpoint (not refused): no reason file is looked for."""
    return _job_info(spool, job, probe_owner, queued=False, refused=not checkpointed)


def _job_info(spool: Spool, job: str, probe_owner: bool, queued: bool, refused: bool = True) -> JobInfo:
    info: JobInfo | None = None
    if refused and (rejection := Rejection.load(spool, job)) is not None:
        info = replace(_from_rejection(rejection), job=job)
    if info is None and (ckpt := Checkpoint.load(spool.checkpoint(job))) is not None:
        probe = probe_owner and ckpt.status == JobState.RUNNING
        info = _from_checkpoint(ckpt, spool.job_is_owned(job) if probe else None)
    if info is None and spool.input(job).exists():
        info = JobInfo(job, JobState.CLAIMED, owned=spool.job_is_owned(job) if probe_owner else None)
    if info is None and queued and (entry := queued_entry(spool, job)) is not None:
        info = JobInfo(job, JobState.QUEUED, updated_at=entry.mtime, project=entry.project)
    if info is None:
        raise JobNotFound(job)
    return _with_batch(spool, info)


def read_groups(spool: Spool) -> dict[str, list[str]]:
    """Every `submit --split` group of the spool: its name and its jobs, in order."""
    groups = {}
    for name in spool.names(spool.group):
        with contextlib.suppress(OSError, orjson.JSONDecodeError, KeyError, TypeError):
            data = orjson.loads(spool.group(name).read_bytes())
            groups[str(data["group"])] = [str(j) for j in data["jobs"]]
    return groups


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """A `submit --split` group as `list` shows it: its parts' figures added up."""

    group: str
    status: str  # the parts' common state, or "running", or a count of each ("1 completed, 2 queued")
    jobs: int
    requests_done: int
    requests_failed: int
    progress: float
    tokens: int

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON."""
        return {k: getattr(self, k) for k in self.__slots__}


def list_groups(spool: Spool, jobs: list[JobInfo]) -> list[GroupInfo]:
    """Each group with its parts' totals; its status is theirs when they agree, else a count of each."""
    by_name = {j.job: j for j in jobs}
    out = []
    for group, names in read_groups(spool).items():
        parts = [by_name.get(n) or JobInfo(n, JobState.MISSING) for n in names]
        counts: dict[JobState, int] = {}
        for p in parts:
            counts[p.status] = counts.get(p.status, 0) + 1
        if len(counts) == 1:
            status = parts[0].status.value
        elif counts.keys() <= {JobState.QUEUED, JobState.CLAIMED, JobState.RUNNING, JobState.COMPLETED}:
            status = JobState.RUNNING.value
        else:
            status = ", ".join(f"{n} {s.value}" for s, n in sorted(counts.items()))
        out.append(GroupInfo(group, status, len(parts), sum(p.requests_done for p in parts),
                             sum(p.requests_failed for p in parts),
                             round(sum(p.progress for p in parts) / len(parts), 4) if parts else 0.0,
                             sum(p.tokens for p in parts)))
    return out


def load_checkpoint(spool: Spool, job: str) -> Checkpoint:
    """The checkpoint of ``job``, or ``JobNotFound``."""
    ckpt = Checkpoint.load(spool.checkpoint(job))
    if ckpt is None:
        raise JobNotFound(job)
    return ckpt


def group_jobs(spool: Spool, name: str) -> list[str]:
    """The jobs of a group made by `submit --split`, or ``[name]`` for a single job."""
    path = spool.group(name)
    if path.is_file():
        return list(orjson.loads(path.read_bytes())["jobs"])
    if spool.job_exists(name):
        return [name]
    raise JobNotFound(name)


def _committed_lines(path: Path, limit: int | None) -> Iterator[bytes]:
    """Lines of ``path`` up to the committed byte offset (a running job's file grows)."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below, generator
    except FileNotFoundError:
        return
    with f:
        left = limit
        for line in f:
            if left is not None:
                if left <= 0:
                    break
                left -= len(line)
            if line.endswith(b"\n"):
                yield line


def results(spool: Spool, name: str) -> Iterator[bytes]:
    """Committed result lines of a job or of every job of a group, in order."""
    spool.require()
    for job in group_jobs(spool, name):
        ckpt = Checkpoint.load(spool.checkpoint(job))
        yield from _committed_lines(spool.results(job), ckpt.results_bytes if ckpt else 0)


def deadletter(spool: Spool, name: str) -> Iterator[dict[str, Any]]:
    """Committed deadletter records of a job or group."""
    spool.require()
    for job in group_jobs(spool, name):
        ckpt = Checkpoint.load(spool.checkpoint(job))
        for line in _committed_lines(spool.deadletter_file(job), ckpt.deadletter_bytes if ckpt else 0):
            yield orjson.loads(line)


def deadletter_lines(spool: Spool, name: str) -> Iterator[bytes]:
    """Deadletter records as OpenAI error lines: the first part of the error file (``batches.error_file``)."""
    for record in deadletter(spool, name):
        yield error_line(record)


def log_events(spool: Spool, job: str, tail: int | None = None) -> list[dict[str, Any]]:
    """The events of the per-job log, or its last ``tail`` ones."""
    spool.require()
    events = read_log(spool.log(job))
    if events is None:
        if not spool.job_exists(job):
            raise JobNotFound(job)
        events = []
    return events[-tail:] if tail else events


def log_lines(spool: Spool, job: str, tail: int | None = None) -> list[str]:
    """The per-job log as people read it, or its last ``tail`` lines."""
    return [render(event) for event in log_events(spool, job, tail)]

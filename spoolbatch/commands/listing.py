"""Jobs a page at a time, newest first: what `list`, `GET /v1/batches` and the web page read.

A spool keeps a month of finished jobs; a page of them must cost a page, not a month. The
order is the spool's own (store/jobindex.py): the files waiting in the inbox, newest first,
then the jobs in the order workers took them, the last taken first. Only the jobs a page
shows are read (their checkpoint, batch record, reason file); a job removed between two pages
is skipped, and an ``after`` cursor naming it still pages on from where it was.

Filters: ``project`` and OpenAI ``statuses`` are answered from the index where it can (a job
that ended, and in which state, is on its line), so a page of one project's failed batches does
not read every completed one; ``keep`` is any other test (a search), run on each job read.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, replace

from spoolbatch.commands.batches import BatchView, batch_view, by_clock
from spoolbatch.commands.catalog import JobInfo, queued_info, read_groups, taken_info
from spoolbatch.errors import JobNotFound
from spoolbatch.store.jobindex import CODES, OPEN, Listed, newest_first
from spoolbatch.store.jobstate import JobState
from spoolbatch.store.spool import Spool

Keep = Callable[[JobInfo], bool]
_CHECKPOINTED = frozenset(code for state, code in CODES.items() if state != JobState.REJECTED)
# What a job that has not ended may show as: its own state's, a pending cancel, or a window passed (by the clock).
_OPEN_SHOWS = frozenset({"validating", "in_progress", "cancelling", "finalizing", JobState.EXPIRED.openai_status()})


@dataclass(frozen=True, slots=True)
class JobPage:
    """Up to ``limit`` jobs, newest first, and whether more follow the last."""

    jobs: list[JobInfo]
    has_more: bool


@dataclass(frozen=True, slots=True)
class BatchPage:
    """Up to ``limit`` batches, newest first, and whether more follow the last."""

    batches: list[BatchView]
    has_more: bool


def index_codes(statuses: Collection[str]) -> frozenset[str]:
    """The index's state codes a job may have to show one of the OpenAI ``statuses``: a job that ended
    completed is no ``in_progress`` one, but one not ended yet may show as expired (by the clock)."""
    codes = {code for state, code in CODES.items() if state.openai_status() in statuses}
    if set(statuses) & _OPEN_SHOWS:
        codes.add(OPEN)
    return frozenset(codes)


def info_of(spool: Spool, listed: Listed, *, probe_owner: bool = False) -> JobInfo | None:
    """The job as `list` shows it, or None when it went meanwhile (removed by the clean-up)."""
    if listed.queued is not None:
        return queued_info(spool, listed.queued)
    try:
        return taken_info(spool, listed.job, probe_owner=probe_owner,
                          checkpointed=listed.code is not None and listed.code in _CHECKPOINTED)
    except JobNotFound:
        return None


def iter_jobs(spool: Spool, *, after: str | None = None, project: str | None = None,
              statuses: Collection[str] | None = None, keep: Keep | None = None, now: float | None = None,
              probe_owner: bool = False) -> Iterator[JobInfo]:
    """Every job newest first (after the job ``after``), read one at a time: what `list` streams.

    ``statuses`` (OpenAI's) leaves out the jobs whose index line says they ended in another state,
    unread; the caller tests the rest (a batch's status is its view's: ``cancelling`` needs it). A
    batch whose window passed while no worker ran it shows as expired (``by_clock``); each part of
    a `submit --split` group names its group.
    """
    spool.require()
    now = time.time() if now is None else now
    groups = {job: name for name, parts in read_groups(spool).items() for job in parts}
    codes = index_codes(statuses) if statuses else None
    for listed in newest_first(spool, after, project, codes):
        info = info_of(spool, listed, probe_owner=probe_owner)
        if info is None or (project is not None and info.project != project):
            continue
        if listed.job in groups:
            info = replace(info, group=groups[listed.job])
        info = by_clock(spool, info, now)
        if keep is None or keep(info):
            yield info


def page_jobs(spool: Spool, *, limit: int, after: str | None = None, project: str | None = None,
              statuses: Collection[str] | None = None, keep: Keep | None = None,
              now: float | None = None) -> JobPage:
    """The ``limit`` jobs after ``after`` (the newest ``limit`` without it), and whether more follow."""
    jobs: list[JobInfo] = []
    for info in iter_jobs(spool, after=after, project=project, statuses=statuses, keep=keep, now=now):
        if len(jobs) == limit:
            return JobPage(jobs, True)
        jobs.append(info)
    return JobPage(jobs, False)


def page_batches(spool: Spool, *, limit: int, after: str | None = None, project: str | None = None,
                 statuses: Collection[str] | None = None, keep: Callable[[BatchView], bool] | None = None,
                 now: float | None = None) -> BatchPage:
    """The batches of ``page_jobs`` (``keep`` tests the batch), each read once, and whether more follow."""
    views: list[BatchView] = []
    for info in iter_jobs(spool, after=after, project=project, statuses=statuses, now=now):
        view = batch_view(spool, info)
        if keep is not None and not keep(view):
            continue
        if len(views) == limit:
            return BatchPage(views, True)
        views.append(view)
    return BatchPage(views, False)

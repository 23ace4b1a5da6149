"""The last days' usage per project, kept so that `status` does not read a week of checkpoints.

Usage is the checkpoints' own (each merge adds its figures to its UTC day, ``Checkpoint.usage_days``;
commands/usage.py sums them). A job that ended never changes again, so the sums of the ended jobs
from a day on are kept in ``.usage-days.json`` with the ids they cover: the hourly clean-up writes
them afresh (``refresh``), and a reader adds what the kept sums do not cover, the running jobs and
the jobs that ended since (by the spool's job index, store/jobindex.py: no scan of ``done/``). A job
the clean-up removed leaves the kept sums at the next refresh (its days are a month old by then,
unless its batch's output expired sooner).
"""

from __future__ import annotations

import calendar
import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import orjson

from spoolbatch.config import DEFAULT_PROJECT
from spoolbatch.store.checkpoint import Checkpoint
from spoolbatch.store.fsutil import atomic_write
from spoolbatch.store.jobindex import JobIndex
from spoolbatch.store.jobstate import FINAL
from spoolbatch.store.spool import Spool

KEEP_SECONDS = 2 * 3600.0  # kept sums older than this (no clean-up ran) are summed again
KEPT_DAYS = 8  # the clean-up keeps this many UTC days, today's included (status shows 7)
Sums = dict[tuple[str, str], list[float]]  # (day, project) -> [requests, prompt tokens, completion tokens, seconds]


def job_days(ckpt: Checkpoint) -> dict[str, list[float]]:
    """A job's usage per UTC day; a checkpoint from before days were kept counts whole on the day it was
    last written."""
    if ckpt.usage_days:
        return ckpt.usage_days
    when = ckpt.updated_at or ckpt.finished_at or ckpt.started_at or ckpt.created_at
    if not (ckpt.requests_done or ckpt.requests_failed or ckpt.total_tokens or ckpt.busy_seconds):
        return {}
    return {time.strftime("%Y-%m-%d", time.gmtime(when)): [ckpt.requests_done + ckpt.requests_failed,
                                                          ckpt.prompt_tokens, ckpt.completion_tokens,
                                                          ckpt.busy_seconds]}


def owner(spool: Spool, ckpt: Checkpoint) -> str:
    """The project a job's usage counts for: its checkpoint's, else its batch record's, else ``default``."""
    if ckpt.project:
        return ckpt.project
    with contextlib.suppress(OSError, orjson.JSONDecodeError):
        data = orjson.loads(spool.batch_record(ckpt.job).read_bytes())
        if isinstance(data, dict) and isinstance(data.get("project"), str) and data["project"]:
            return str(data["project"])
    return DEFAULT_PROJECT


def add(sums: Sums, spool: Spool, ckpt: Checkpoint, since: str) -> None:
    """Add ``ckpt``'s days from ``since`` on to ``sums``."""
    project = owner(spool, ckpt)
    for day, figures in job_days(ckpt).items():
        if day >= since:
            row = sums.setdefault((day, project), [0, 0, 0, 0.0])
            for i, value in enumerate(figures[:4]):
                row[i] += value


@dataclass(slots=True)
class Kept:
    """Sums of the jobs that had ended when they were made (``at``), from day ``since`` on."""

    since: str
    at: float
    jobs: set[str] = field(default_factory=set)
    sums: Sums = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        """The file's contents."""
        return orjson.dumps({"since": self.since, "at": self.at, "jobs": sorted(self.jobs),
                             "sums": [[day, project, *row] for (day, project), row in sorted(self.sums.items())]})

    @classmethod
    def load(cls, spool: Spool) -> Kept | None:
        """The kept sums, or None (none kept, or unreadable)."""
        try:
            data = orjson.loads(spool.usage_days_file.read_bytes())
            return cls(str(data["since"]), float(data["at"]), set(data["jobs"]),
                       {(str(r[0]), str(r[1])): [float(x) for x in r[2:6]] for r in data["sums"]})
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError):
            return None


def _day_start(day: str) -> float:
    return float(calendar.timegm(time.strptime(day, "%Y-%m-%d")))


def _load(spool: Spool, job: str) -> Checkpoint | None:
    with contextlib.suppress(OSError, orjson.JSONDecodeError, ValueError, TypeError):
        return Checkpoint.load(spool.checkpoint(job))
    return None


def refresh(spool: Spool, since: str, now: float | None = None) -> Kept:
    """Sum the jobs that ended and may have usage from day ``since`` on (they ended on or after it, as
    the index says), and keep the sums; what was kept."""
    now = time.time() if now is None else now
    kept = Kept(since, now)
    for job in JobIndex(spool).view().ended_since(_day_start(since)):
        ckpt = _load(spool, job)
        if ckpt is not None and ckpt.status in FINAL:
            add(kept.sums, spool, ckpt, since)
            kept.jobs.add(job)
    with contextlib.suppress(OSError):  # a reader that may not write the spool sums every time
        atomic_write(spool.usage_days_file, kept.to_bytes(), durable=False)
    return kept


def kept_since(now: float) -> str:
    """The first day the clean-up keeps sums for."""
    return time.strftime("%Y-%m-%d", time.gmtime(now - 86400 * (KEPT_DAYS - 1)))


def recent(spool: Spool, since: str, now: float | None = None) -> Sums:
    """Every project's usage per day from day ``since`` on: the kept sums (made again when there are none
    for that day, or they are older than ``KEEP_SECONDS``) and the jobs they do not cover."""
    now = time.time() if now is None else now
    kept = Kept.load(spool)
    if kept is None or kept.since > since or not 0 <= now - kept.at <= KEEP_SECONDS:
        kept = refresh(spool, min(since, kept_since(now)), now)
    sums: Sums = {key: list(row) for key, row in kept.sums.items() if key[0] >= since}
    view = JobIndex(spool).view()
    ended: Iterable[str] = view.ended_since(_day_start(since))  # the kept ones are skipped below
    running = [line.job for line in view.open_entries()] + spool.running_jobs()
    for job in dict.fromkeys([*ended, *running]):
        if job in kept.jobs:
            continue
        ckpt = _load(spool, job)
        if ckpt is not None:
            add(sums, spool, ckpt, since)
    return sums

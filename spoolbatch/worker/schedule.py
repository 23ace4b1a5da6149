"""Which job a worker takes its next chunk from: the most urgent first, round-robin across owners, then the oldest.

Before each chunk a worker ranks every job it could take a chunk of, the running ones
(``active/``) and the settled files of the inbox, by

0. whether it only has to be ended: its batch's window passed, or (a running job) a cancel is
   pending. Ending one runs no request, and its ``batch.expired`` or ``batch.cancelled``
   webhook and final status should not wait behind the queue: a worker ends each such job
   before it takes its chunk (a job another worker still has a chunk of in flight is ended by
   whoever merges that chunk);
1. priority (store/priority.py); a job that has had no new chunk for ``max_wait`` seconds
   (since it was queued, or since its last chunk) counts as ``high`` until it gets one;
2. the model the worker's engine has loaded (another model means reloading the engine);
3. its project's turn, then its owner's turn within the project (fair share): the project
   whose jobs got a new chunk longest ago goes first, and in it the owner served longest ago,
   so equal jobs of several projects take chunks round-robin, and so do a project's owners
   among the chunks the project gets (an owner is what a job says: it cannot win its project
   more than its share);
4. age: the oldest input file first (FIFO, the order the inbox is claimed in).

Nothing here keeps state of its own: when a job last got a chunk is the modification time of
its plan (store/workarea.py appends one range per new chunk; the worker that took it stamps the
time to the nanosecond), and a job's priority, project and owner come from its batch record, its
checkpoint and its input file, so every worker of a spool ranks alike. A job's project is its
batch's (the key that created it, ``submit --project``) or its inbox folder's, else ``default``;
its owner is its batch's ``metadata.owner``, else its project, else the user owning its input
file (whoever ran `submit` or copied it in).

``Scheduler`` turns the ranking into a ``Choice`` (the job, its priority, and why it won: the
heartbeat shows it) and logs ``overtaken`` in the log of a job the worker leaves for a more
urgent one while that job still has lines to run.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from spoolbatch.config import DEFAULT_PROJECT, Config
from spoolbatch.store.batches import BatchRecord, stop_state
from spoolbatch.store.checkpoint import Checkpoint
from spoolbatch.store.joblog import JobEvent, JobLog
from spoolbatch.store.priority import HIGH, NORMAL, priority_label
from spoolbatch.store.spool import InboxEntry, Spool, sanitize_job_id
from spoolbatch.store.workarea import WorkArea

# Why a worker took its chunk, as the heartbeat and the ``overtaken`` event say it.
FIFO = "fifo"
FAIR_SHARE = "fair share"
LOADED_MODEL = "loaded model"
MAX_WAIT = "waited past max_wait"


@dataclass(frozen=True, slots=True)
class Candidate:
    """A job a worker may take its next chunk from, with what ranks it."""

    job: str
    priority: int  # its own
    effective: int  # what it ranks by: ``high`` at least once it waited past max_wait
    owner: str
    model: str | None
    queued_at: float  # its input's modification time: the inbox's order
    served_at: float | None  # when it last got a new chunk (None: never)
    fresh: bool  # it has lines no chunk covers yet (a queued file always has)
    entry: InboxEntry | None = None  # the inbox file, while it is not claimed
    ending: bool = False  # its window passed or a cancel is pending: a worker only has to end it
    project: str = DEFAULT_PROJECT  # whose share of chunks it takes (fair share is across projects first)

    @property
    def starved(self) -> bool:
        """True when ``max_wait`` lifted it above its own priority."""
        return self.effective > self.priority


@dataclass(frozen=True, slots=True)
class Choice:
    """What a worker took a chunk of, and why (the heartbeat's ``scheduled``)."""

    job: str
    chunk: int  # from 1
    priority: str | int  # its own priority's label: what the metrics count chunks by
    effective: str | int  # the priority it ran at (``high`` once it waited past max_wait)
    owner: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON."""
        return {"job": self.job, "chunk": self.chunk, "priority": self.priority, "effective_priority": self.effective,
                "owner": self.owner, "reason": self.reason}


@functools.lru_cache(maxsize=256)
def user_name(uid: int) -> str:
    """The login name of ``uid`` (``uid N`` where the system has none)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def owner_of(record: BatchRecord | None, uid: int, project: str | None = None) -> str:
    """A job's owner: its batch's ``metadata.owner``, else its project (but the ``default`` every job
    without one is in), else the user owning its input."""
    if record is not None:
        project = getattr(record, "project", None) or project
        if isinstance(owner := record.metadata.get("owner"), str) and owner:
            return owner
    if isinstance(project, str) and project and project != "default":
        return project
    return user_name(uid)


def _plan_state(area: WorkArea, input_bytes: int | None) -> tuple[float | None, bool]:
    """When the job's plan last grew, and whether lines remain that no chunk covers."""
    try:
        served: float | None = os.stat(area.plan_path).st_mtime
    except FileNotFoundError:
        served = None
    if input_bytes is None:
        return served, True
    plan = area.plan() if served is not None else []
    return served, (plan[-1].end if plan else 0) < input_bytes


class Ranking:
    """Gathers and orders one worker's candidates; ``now`` is the worker's clock (a seam for tests)."""

    def __init__(self, spool: Spool, config: Config) -> None:
        self.spool = spool
        self.config = config
        self.seen: frozenset[str] = frozenset()  # the inbox's files and the running jobs at the last ``gather``
        # An inbox file's settled facts (its stat, record, owner), kept while its listed mtime is the same: a
        # worker ranks the inbox before every chunk, and an inbox may hold thousands of files.
        self._settled: dict[str, tuple[float, os.stat_result, BatchRecord | None]] = {}

    def _names(self, running: list[str], entries: list[InboxEntry]) -> frozenset[str]:
        return frozenset(["active/" + job for job in running] + ["inbox/" + e.name for e in entries])

    def unchanged(self, seen: frozenset[str]) -> bool:
        """True while no job came since ``seen`` (a file into the inbox, or one claimed from it meanwhile)."""
        return self._names(self.spool.running_jobs(), self.spool.inbox_entries()) <= seen

    def _effective(self, priority: int, since: float, fresh: bool, now: float) -> int:
        max_wait = self.config.max_wait
        if max_wait > 0 and fresh and priority < HIGH and now - since > max_wait:
            return HIGH
        return priority

    def running(self, job: str, now: float) -> Candidate | None:
        """The candidate of a job in ``active/`` (None when its input left meanwhile)."""
        sp = self.spool
        try:
            st = os.stat(sp.input(job))
        except FileNotFoundError:
            return None
        ckpt = Checkpoint.load(sp.checkpoint(job))
        record = BatchRecord.load(sp, job)
        priority = record.job_priority if record is not None else NORMAL
        served, fresh = _plan_state(WorkArea(sp.work_area(job)), ckpt.input_bytes if ckpt else None)
        since = served if served is not None else (ckpt.created_at if ckpt else st.st_ctime)
        project = (ckpt.project if ckpt else None) or (record.project if record else None) or DEFAULT_PROJECT
        return Candidate(job, priority, self._effective(priority, since, fresh, now),
                         owner_of(record, st.st_uid, project),
                         ckpt.model if ckpt else (record.model if record else None), st.st_mtime, served, fresh,
                         ending=stop_state(sp, job, now) is not None, project=project)

    def queued(self, entry: InboxEntry, now: float) -> Candidate | None:
        """The candidate of a settled regular file of the inbox (None while it settles, or for an odd entry).

        A file found settled is not looked at again while the listing gives it the same time (its claim
        reads it again anyway): ranking an inbox of thousands costs no syscall a file.
        """
        job = sanitize_job_id(entry.name)
        known = self._settled.get(entry.name)
        if known is not None and known[0] == entry.mtime:
            st, record = known[1], known[2]
        else:
            try:
                st = os.lstat(entry.path)
            except FileNotFoundError:
                return None
            if not stat.S_ISREG(st.st_mode) or now - st.st_mtime < self.config.settle_seconds:
                return None
            # A file copied in under the name of a job that exists gets another id when claimed: not that job's record.
            record = None if self.spool.checkpoint(job).exists() else BatchRecord.load(self.spool, job)
            self._settled[entry.name] = (entry.mtime, st, record)
        priority = record.job_priority if record is not None else NORMAL
        # Waiting since it came into the inbox: the rename that placed it set its change time
        # (its modification time may be older, kept by `cp -p`).
        effective = self._effective(priority, st.st_ctime, True, now)
        expired = record is not None and record.expires_at is not None and now >= record.expires_at
        project = (record.project if record else None) or getattr(entry, "project", None) or DEFAULT_PROJECT
        return Candidate(job, priority, effective, owner_of(record, st.st_uid, project),
                         record.model if record else None, st.st_mtime, None, True, entry, ending=expired,
                         project=project)

    def gather(self, now: float) -> list[Candidate]:
        """Every running job and every settled inbox file, unordered."""
        running, entries = self.spool.running_jobs(), self.spool.inbox_entries()
        self.seen = self._names(running, entries)
        if len(self._settled) > 2 * len(entries) + 64:  # forget the files claimed or gone
            listed = {e.name for e in entries}
            self._settled = {name: known for name, known in self._settled.items() if name in listed}
        found = [c for job in running if (c := self.running(job, now)) is not None]
        found += [c for e in entries if (c := self.queued(e, now)) is not None]
        return found

    def rank(self, now: float, loaded_model: str | None) -> list[Candidate]:
        """The candidates in the order a worker with ``loaded_model`` should try them."""
        return order(self.gather(now), loaded_model, fair_share=self.config.fair_share)


def order(candidates: list[Candidate], loaded_model: str | None, *, fair_share: bool = True) -> list[Candidate]:
    """Jobs only to be ended first; then the most urgent; then the loaded model's; then the project served longest
    ago, and in it the owner served longest ago; then the oldest."""
    projects: dict[str, float] = {}
    owners: dict[tuple[str, str], float] = {}
    if fair_share:
        for c in candidates:
            served = c.served_at or 0.0
            projects[c.project] = max(projects.get(c.project, 0.0), served)
            owners[c.project, c.owner] = max(owners.get((c.project, c.owner), 0.0), served)

    def key(c: Candidate) -> tuple[bool, int, int, float, float, float, str]:
        other_model = 0 if loaded_model is not None and c.model == loaded_model else 1
        return (not c.ending, -c.effective, other_model, projects.get(c.project, 0.0),
                owners.get((c.project, c.owner), 0.0), c.queued_at, c.job)

    return sorted(candidates, key=key)


def reason_for(chosen: Candidate, beaten: list[Candidate], loaded_model: str | None) -> str:
    """Why ``chosen`` won over the candidates ranked after it that had lines to run."""
    rivals = [c for c in beaten if c.fresh and not c.ending and c.job != chosen.job]
    lower = [c for c in rivals if c.effective < chosen.effective]
    if lower:
        if chosen.starved and any(c.priority >= chosen.priority for c in lower):
            return MAX_WAIT
        return f"priority {priority_label(chosen.effective)}"
    older = [c for c in rivals if c.effective == chosen.effective and c.queued_at < chosen.queued_at]
    mine = loaded_model is not None and chosen.model == loaded_model
    if mine and any(c.model != loaded_model for c in older):
        return LOADED_MODEL
    if any((c.project, c.owner) != (chosen.project, chosen.owner) for c in older):
        return FAIR_SHARE
    return FIFO


class Scheduler:
    """One worker's choices: ranks candidates, says why it took each chunk, logs the jobs it overtook."""

    def __init__(self, spool: Spool, config: Config, log: Callable[[str], JobLog], *, worker: str = "") -> None:
        self.ranking = Ranking(spool, config)
        self._log = log
        self.worker = worker
        self.last: tuple[str, int] | None = None  # the job and chunk (from 1) this worker claimed last

    def rank(self, now: float, loaded_model: str | None) -> list[Candidate]:
        """The candidates, in the order to try them."""
        return self.ranking.rank(now, loaded_model)

    def _served(self, job: str) -> None:
        """Stamp ``job``'s plan with the time to the nanosecond: the file system's own stamp of the append
        is as coarse as the kernel's tick (4 ms), and owners served within one tick would tie."""
        stamp = time.time_ns()
        with contextlib.suppress(OSError):
            os.utime(WorkArea(self.ranking.spool.work_area(job)).plan_path, ns=(stamp, stamp))

    def chose(self, job: str, chunk: int, ranked: list[Candidate], now: float, loaded_model: str | None,
              candidate: Candidate | None = None) -> Choice:
        """Record that this worker claimed chunk ``chunk`` of ``job`` (ranked as ``candidate``, when known)."""
        position = next((i for i, c in enumerate(ranked) if c is candidate or c.job == job), None)
        if candidate is None and position is not None:
            candidate = ranked[position]
        if candidate is None:
            candidate = self.ranking.running(job, now) or Candidate(job, NORMAL, NORMAL, "", None, now, None, True)
        beaten = ranked[position + 1:] if position is not None else []
        reason = reason_for(candidate, beaten, loaded_model)
        if self.last is not None and self.last[0] != job:
            before = next((c for c in ranked if c.job == self.last[0]), None)
            if before is not None and before.fresh and before.effective < candidate.effective:
                self._log(before.job).event(
                    JobEvent.OVERTAKEN, before.job, by=job, chunk=self.last[1],
                    priority=priority_label(before.effective), by_priority=priority_label(candidate.effective),
                    reason=reason, worker=self.worker)
        self.last = (job, chunk)
        self._served(job)
        return Choice(job, chunk, priority_label(candidate.priority), priority_label(candidate.effective),
                      candidate.owner, reason)

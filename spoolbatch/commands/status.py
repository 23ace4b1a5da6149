"""`spoolbatch status`: workers (alive, stale, dead), the queue, and each job's progress.

A worker is *alive* when its heartbeat is fresh (younger than three intervals) and, on
this host, its pid still exists; *stale* when the beat is older but not yet dead-old; *dead*
when its pid is gone on this host or its beat is older than ten intervals (at least 30 s);
*stopped* when it said so on a clean exit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from spoolbatch.commands.catalog import JobInfo, list_jobs
from spoolbatch.store.spool import Spool


class Liveness(StrEnum):
    """What a worker's heartbeat says about it."""

    ALIVE = "alive"
    STALE = "stale"
    DEAD = "dead"
    STOPPED = "stopped"


def pid_exists(pid: int) -> bool:
    """True when a process with ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def liveness(beat: dict[str, Any], now: float | None = None) -> Liveness:
    """Judge one heartbeat; see the module docstring."""
    now = time.time() if now is None else now
    if beat.get("state") == "stopped":
        return Liveness.STOPPED
    age = now - float(beat.get("last_seen") or 0)
    interval = float(beat.get("interval") or 2.0)
    if beat.get("host") == socket.gethostname() and not pid_exists(int(beat.get("pid") or 0)):
        return Liveness.DEAD
    if age <= 3 * interval + 1:
        return Liveness.ALIVE
    if age <= max(30.0, 10 * interval):
        return Liveness.STALE
    return Liveness.DEAD


@dataclass(frozen=True, slots=True)
class SpoolStatus:
    """Everything `status` shows."""

    spool: str
    workers: list[dict[str, Any]]
    jobs: list[JobInfo]

    @property
    def alive(self) -> bool:
        """True when at least one worker is alive."""
        return any(w["liveness"] == Liveness.ALIVE.value for w in self.workers)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON for `status --json`."""
        counts: dict[str, int] = {}
        for j in self.jobs:
            counts[j.status] = counts.get(j.status, 0) + 1
        return {"spool": self.spool, "alive": self.alive, "workers": self.workers,
                "queue": {"jobs": counts.get("queued", 0), "by_status": counts},
                "jobs": [j.to_dict() for j in self.jobs]}


def read_workers(spool: Spool, now: float | None = None) -> list[dict[str, Any]]:
    """Every worker heartbeat of the spool, each with its judged liveness and age."""
    now = time.time() if now is None else now
    workers = []
    for path in sorted(spool.workers.glob("*.json")):
        with contextlib.suppress(OSError, orjson.JSONDecodeError):
            beat = orjson.loads(path.read_bytes())
            beat["liveness"] = liveness(beat, now).value
            beat["age_seconds"] = round(now - float(beat.get("last_seen") or 0), 1)
            workers.append(beat)
    return workers


def status(spool: Spool, job: str | None = None) -> SpoolStatus:
    """Gather the spool's status (one job's, when ``job`` is given)."""
    spool.require()
    jobs = list_jobs(spool)
    if job is not None:
        from spoolbatch.errors import JobNotFound

        jobs = [j for j in jobs if j.job == job]
        if not jobs:
            raise JobNotFound(job)
    workers = read_workers(spool)
    return SpoolStatus(str(spool.root), workers, with_workers(jobs, workers))


def with_workers(jobs: list[JobInfo], workers: list[dict[str, Any]]) -> list[JobInfo]:
    """Each job with the number of alive workers on it, its ETA divided among them.

    A job's rate is measured per worker (its busy seconds add up over every worker's
    chunks), so with several workers sharing it the time left shrinks in proportion.
    """
    on: dict[str, int] = {}
    for w in workers:
        if w["liveness"] == Liveness.ALIVE.value and w.get("job"):
            on[w["job"]] = on.get(w["job"], 0) + 1
    out = []
    for j in jobs:
        n = on.get(j.job, 0)
        if n:
            j = dataclasses.replace(j, workers=n, eta_seconds=None if j.eta_seconds is None else j.eta_seconds / n)
        out.append(j)
    return out


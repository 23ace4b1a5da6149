"""Is a worker alive? Judged from its heartbeat file in ``workers/`` (a ``Heartbeat``).

A worker is *alive* when its heartbeat is fresh (younger than three intervals) and, on
this host, its pid still exists; *stale* when the beat is older but not yet dead-old; *dead*
when its pid is gone on this host or its beat is older than ten intervals (at least 30 s);
*stopped* when it said so on a clean exit. `status` shows this; the clean-up removes the
files of workers dead (or stopped) for longer than a grace period.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from spoolbatch.store.heartbeat_record import Heartbeat, WorkerState
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


def liveness(beat: Heartbeat, now: float | None = None) -> Liveness:
    """Judge one heartbeat; see the module docstring."""
    now = time.time() if now is None else now
    if beat.state == WorkerState.STOPPED:
        return Liveness.STOPPED
    age = now - beat.last_seen
    interval = beat.interval or 2.0
    if beat.host == socket.gethostname() and not pid_exists(beat.pid):
        return Liveness.DEAD
    if age <= 3 * interval + 1:
        return Liveness.ALIVE
    if age <= max(30.0, 10 * interval):
        return Liveness.STALE
    return Liveness.DEAD


@dataclass(frozen=True, slots=True)
class SeenWorker:
    """A worker as its heartbeat shows it now: the beat, its judged liveness, and how old it is."""

    beat: Heartbeat
    liveness: Liveness
    age_seconds: float

    def to_dict(self) -> dict[str, Any]:
        """The heartbeat's fields with ``liveness`` and ``age_seconds``: a worker of `status --json`."""
        return {**self.beat.to_dict(), "liveness": self.liveness.value, "age_seconds": self.age_seconds}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SeenWorker:
        """Read a worker of `status --json` back (what the CLI's views render)."""
        beat = Heartbeat.from_dict({k: v for k, v in data.items() if k not in ("liveness", "age_seconds")})
        age = data.get("age_seconds")
        return cls(beat, Liveness(data.get("liveness") or Liveness.DEAD),
                   float(age) if isinstance(age, int | float) else 0.0)


def read_workers(spool: Spool, now: float | None = None) -> list[SeenWorker]:
    """Every worker heartbeat of the spool (in file-name order), each with its judged liveness and age."""
    now = time.time() if now is None else now
    workers = []
    for name in spool.names(spool.worker_file):
        beat = Heartbeat.load(spool.worker_file(name))
        if beat is not None:
            workers.append(SeenWorker(beat, liveness(beat, now), round(now - beat.last_seen, 1)))
    return workers

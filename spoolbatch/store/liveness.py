"""Is a worker alive? Judged from its heartbeat file in ``workers/``.

A worker is *alive* when its heartbeat is fresh (younger than three intervals) and, on
this host, its pid still exists; *stale* when the beat is older but not yet dead-old; *dead*
when its pid is gone on this host or its beat is older than ten intervals (at least 30 s);
*stopped* when it said so on a clean exit. `status` shows this; the clean-up removes the
files of workers dead (or stopped) for longer than a grace period.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from enum import StrEnum
from typing import Any

import orjson

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

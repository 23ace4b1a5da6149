"""The workers as the web page shows them: heartbeats with liveness, the inbox, and each worker's GPU history."""

from __future__ import annotations

import time
from typing import Any

from spoolbatch.commands.catalog import job_info
from spoolbatch.commands.status import hide_other_jobs
from spoolbatch.errors import SpoolbatchError
from spoolbatch.store.gpuhistory import KEEP_SECONDS, read_history
from spoolbatch.store.liveness import read_workers
from spoolbatch.store.spool import Spool


def workers(spool: Spool, now: float | None = None, project: str | None = None) -> dict[str, Any]:
    """Every worker's heartbeat (with its liveness and age) and the number of files waiting in the inbox.

    With ``project``, what a worker says of another project's job is blanked, and only the project's
    files in the inbox are counted.
    """
    beats = read_workers(spool, now)
    entries = spool.inbox_entries()
    if project is not None:
        jobs = {w.beat.job for w in beats if w.beat.job}
        beats = hide_other_jobs(beats, {j for j in jobs if _project_of(spool, j) == project})
        entries = [e for e in entries if e.project == project]
    return {"workers": [w.to_dict() for w in beats], "queue": {"jobs": len(entries)}}


def _project_of(spool: Spool, job: str) -> str | None:
    try:
        return job_info(spool, str(job), probe_owner=False).project
    except SpoolbatchError:  # gone, or a name that is no job's
        return None


def is_worker(spool: Spool, worker: str) -> bool:
    """True for a worker with a heartbeat or a GPU history on the spool (how a request's name is checked)."""
    return worker in spool.names(spool.worker_file) or worker in spool.names(spool.gpu_history)


def gpu_series(spool: Spool, worker: str, hours: float, now: float | None = None) -> dict[str, dict[str, list[Any]]]:
    """Each card's readings of the last ``hours`` (a day at most: what the history keeps), as columns by NVML index."""
    now = time.time() if now is None else now
    since = now - min(max(hours, 0.0), KEEP_SECONDS / 3600) * 3600
    out: dict[str, dict[str, list[Any]]] = {}
    for reading in read_history(spool.gpu_history(worker), since):
        for card in reading.cards:
            s = out.setdefault(str(card.index), {"t": [], "memory_pct": [], "temperature_c": [], "utilization_pct": []})
            s["t"].append(reading.t)
            s["memory_pct"].append(card.memory_pct)
            s["temperature_c"].append(card.temperature_c)
            s["utilization_pct"].append(card.utilization_pct)
    return out


def gate_limits(spool: Spool, worker: str, default: dict[str, float]) -> dict[str, float]:
    """The gate's limits the worker runs with (its heartbeat says), else ``default`` (the server's configuration)."""
    for seen in read_workers(spool):
        if seen.beat.worker == worker and seen.beat.gpu_limits is not None:
            return {**default, **seen.beat.gpu_limits}
    return default

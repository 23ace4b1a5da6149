"""What `status` and `list` print for a person: the workers' lines and the jobs' table.

Both render plain data (what `status --json` prints), so a recording console tests them.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from spoolbatch.cli.tables import Col, FitTable
from spoolbatch.cli.units import duration, size
from spoolbatch.config import DEFAULT_PROJECT
from spoolbatch.store.jobstate import JobState
from spoolbatch.store.liveness import SeenWorker

if TYPE_CHECKING:
    from spoolbatch.commands.catalog import GroupInfo

# Columns of `status` and `list`, most important first; in a narrow terminal the highest ``drop`` goes first.
_JOB_COLS = (Col("job"), Col("status", fold=True), Col("progress", right=True), Col("done", right=True, drop=4),
             Col("deadletter", right=True, drop=5), Col("retries", right=True, drop=7),
             Col("tokens", right=True, drop=6), Col("eta", right=True, drop=3), Col("priority", drop=1))
# Whose job it is, beside its id; after priority the last to go (eta is "-" on every job but a running one).
_PROJECT_COL = Col("project", drop=2)
_BATCH_COLS = (Col("batch", drop=9), Col("metadata", drop=8, fold=True))
_GROUP_COLS = (Col("group"), Col("status"), Col("jobs", right=True, drop=1), Col("progress", right=True),
               Col("done", right=True, drop=2), Col("deadletter", right=True, drop=3),
               Col("tokens", right=True, drop=4))


def jobs_table(data: dict[str, Any]) -> FitTable:
    """The jobs of ``data`` (``spool`` and ``jobs`` as `status --json` has them), one row each."""
    # Batch ids and metadata once any job has a batch record (the HTTP API's, or submit --metadata).
    batches = any(j.get("metadata") is not None for j in data["jobs"])
    # Projects once any job has one of its own: a spool that never used them is not told "default" on every row.
    projects = any(j.get("project") not in (None, DEFAULT_PROJECT) for j in data["jobs"])
    rows = []
    for j in data["jobs"]:
        workers = f", {j['workers']} workers" if (j.get("workers") or 0) > 1 else ""
        project = (j.get("project") or "-",) if projects else ()
        extra = (j.get("batch") or "", " ".join(f"{k}={v}" for k, v in (j.get("metadata") or {}).items())) \
            if batches else ()
        rows.append((j["job"], *project, j["status"] + workers + (f" ({j['reason']})" if j.get("reason") else ""),
                     f"{100 * j['progress']:.1f}%", f"{j['requests_done']:,}", f"{j['requests_failed']:,}",
                     f"{j.get('retries', 0):,}", f"{j['tokens']:,}",
                     duration(j["eta_seconds"]) if j["status"] == JobState.RUNNING else "-",
                     str(j.get("priority", "normal")), *extra))
    cols = (_JOB_COLS[0], *((_PROJECT_COL,) if projects else ()), *_JOB_COLS[1:], *(_BATCH_COLS if batches else ()))
    return FitTable(cols, rows, title=f"spool {data['spool']}")


def groups_table(groups: list[GroupInfo]) -> FitTable:
    """The groups that `submit --split` made, one row each."""
    rows = [(g.group, g.status, str(g.jobs), f"{100 * g.progress:.1f}%", f"{g.requests_done:,}",
             f"{g.requests_failed:,}", f"{g.tokens:,}") for g in groups]
    return FitTable(_GROUP_COLS, rows, title="groups (submit --split): 'spoolbatch results GROUP' "
                    "returns all their parts' lines")


def status_lines(data: dict[str, Any]) -> list[Any]:
    """`status` for a person: a line per worker (and its GPUs), the queue, the disk, then the jobs' table."""
    lines: list[Any] = []
    if not data["workers"]:
        lines.append("workers: none has run on this spool")
    for seen in map(SeenWorker.from_dict, data["workers"]):
        w = seen.beat
        gpu = w.gpu or {}
        span = w.chunk_lines
        where = f" job {w.job} chunk {w.chunk}" + (f" (lines {span[0]:,}-{span[1]:,})" if span else "") \
            if w.job else ""
        if w.cuda_visible_devices:
            where = f" [GPU {w.cuda_visible_devices}]" + where
        reason = f" ({w.reason})" if w.reason else ""
        if (why := w.scheduled) and w.job:  # why the worker took this job (worker/schedule.py)
            said = why["reason"] if why["reason"].startswith("priority") else \
                f"priority {why['effective_priority']}: {why['reason']}"
            reason += f" [{said}]"
        state = "" if w.state == seen.liveness else f", {w.state}"
        lines.append(f"worker {w.worker}: {seen.liveness}{state}{where}{reason}, "
                     f"last seen {seen.age_seconds}s ago")
        if gpu.get("devices"):
            for d in gpu["devices"]:
                lines.append(f"  GPU {d['index']} {d.get('name', '')}: memory {d['memory_pct']:.1f}%, "
                             f"{d.get('temperature_c')}°C, utilisation {d.get('utilization_pct')}%")
        elif gpu:
            lines.append(f"  GPU: {gpu.get('reason') or 'none'}")
    lines.append(f"queue: {data['queue']['jobs']} job(s) waiting")
    disk = data.get("disk")
    if disk:
        at = disk.get("measured_at")
        when = f" (measured {duration(time.time() - at)} ago)" if at and time.time() - at >= 60 else ""
        lines.append(f"disk: the spool uses {size(disk['used_bytes'])} in {disk['files']:,} files{when}; "
                     f"{size(disk['free_bytes'])} free of {size(disk['total_bytes'])}")
    lines.append(jobs_table(data))
    if more := not_shown(data):
        lines.append(more)
    return lines


def not_shown(data: dict[str, Any]) -> str | None:
    """The line under `status`'s jobs that counts the ones it leaves out, and where to see them."""
    left = data.get("not_shown") or {}
    parts = [f"{left[k]:,} more {what}" for k, what in (("finished", "ended job(s)"), ("queued", "queued"))
             if left.get(k)]
    return f"... and {' and '.join(parts)}: `spoolbatch list` shows every job" if parts else None

"""What people watch: `status --watch` (workers, GPU bars against the gate's limits, a
progress bar per running job with its rate, elapsed time and ETA) and the per-job bars of
`run` in a terminal.

Everything here renders plain data (`status --json`'s dict, or numbers the CLI hands over);
none of it reads the spool or imports the worker, so a recording console tests it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from spoolbatch.cli.tables import Col, FitTable
from spoolbatch.cli.units import duration
from spoolbatch.store.heartbeat_record import WorkerState
from spoolbatch.store.jobstate import JobState
from spoolbatch.store.liveness import Liveness, SeenWorker

# Jobs the live view lists, running ones first; finished ones beyond this are counted, not shown.
MAX_FINISHED_SHOWN = 8
BAR_WIDTH = 24
_ACTIVE = (JobState.RUNNING, JobState.INTERRUPTED, JobState.CLAIMED)
_STATE_STYLE: dict[str, str] = {
    JobState.RUNNING: "green", JobState.INTERRUPTED: "yellow", JobState.CLAIMED: "cyan", JobState.QUEUED: "cyan",
    JobState.COMPLETED: "green", JobState.FAILED: "red", JobState.REJECTED: "red", JobState.EXPIRED: "yellow",
    JobState.CANCELLED: "yellow", JobState.MISSING: "red"}
_LIVENESS_STYLE = {Liveness.ALIVE: "green", Liveness.STALE: "yellow", Liveness.DEAD: "red", Liveness.STOPPED: "dim"}
_PLAIN: dict[str, Any] = dict(box=None, show_header=True, header_style="bold", pad_edge=False)
# A narrow terminal loses the bar first, then tok/s...; job, status and the percentage always stay.
_JOB_COLS = (Col("job"), Col("status"), Col("progress", drop=8), Col("", right=True), Col("lines", right=True, drop=5),
             Col("deadletter", right=True, drop=4), Col("req/s", right=True, drop=3), Col("tok/s", right=True, drop=7),
             Col("elapsed", right=True, drop=6), Col("eta", right=True, drop=2))


@dataclass(frozen=True, slots=True)
class Limits:
    """The GPU gate's limits (config ``gpu_max_memory_pct`` and ``gpu_max_temp_c``)."""

    memory_pct: float = 95.0
    temperature_c: float = 85.0


def _rate(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    return (f"{value:,.1f}" if value < 100 else f"{value:,.0f}") + (f" {unit}" if unit else "")


def job_rates(job: dict[str, Any], workers: list[SeenWorker]) -> tuple[float | None, float | None]:
    """(requests/s, tokens/s) of a job: its alive workers' last chunks added up, else its own average.

    The heartbeat's ``last_chunk`` is the freshest figure; a job nobody works on right now falls
    back to its checkpoint's lines and tokens over its engine time (one worker's rate).
    """
    rps = tps = 0.0
    found = False
    for w in workers:
        last = w.beat.last_chunk or {}
        if w.liveness != Liveness.ALIVE or w.beat.job != job["job"] or not last.get("seconds"):
            continue
        found = True
        rps += last.get("requests_per_second") or last.get("requests", 0) / last["seconds"]
        tps += (last.get("completion_tokens") or 0) / last["seconds"]
    if found:
        return rps, tps
    busy = job.get("busy_seconds") or 0.0
    if busy > 0 and job.get("lines_consumed"):
        return job["lines_consumed"] / busy, (job.get("tokens") or 0) / busy
    return None, None


def _gauge(value: float | None, limit: float, text: str, width: int = BAR_WIDTH) -> RenderableType:
    """A bar of ``value`` against ``limit``: green, yellow from 90% of it, red at or over it."""
    if value is None:
        return Text("-")
    share = value / limit if limit else 1.0
    style = "red" if share >= 1 else "yellow" if share >= 0.9 else "green"
    bar = ProgressBar(total=limit, completed=min(value, limit), width=width, complete_style=style,
                      finished_style=style)
    grid = Table.grid(padding=(0, 1))
    grid.add_row(bar, Text(text, style=style if share >= 0.9 else ""))
    return grid


def _workers(workers: list[SeenWorker], limits: Limits) -> list[RenderableType]:
    if not workers:
        return [Text("workers: none has run on this spool", style="yellow")]
    cols = (Col("worker"), Col("liveness"), Col("state"), Col("doing", fold=True), Col("seen", right=True, drop=1))
    rows: list[tuple[RenderableType, ...]] = []
    gpus = Table(box=None, show_header=True, header_style="bold", pad_edge=False)
    for col in ("gpu", f"memory (gate at {limits.memory_pct:g}%)",
                f"temperature (gate at {limits.temperature_c:g}°C)", "busy"):
        gpus.add_column(col)
    any_gpu = False
    for seen in workers:
        w, live, state = seen.beat, seen.liveness, seen.beat.state
        doing: Text
        if w.reason:  # a waiting worker says why: the line a person must not miss
            doing = Text(f"waiting: {w.reason}" if state == WorkerState.WAITING else w.reason,
                         style="bold black on yellow")
        elif w.job:
            span = w.chunk_lines
            doing = Text(f"job {w.job} chunk {w.chunk}"
                         + (f" (lines {span[0]:,}-{span[1]:,})" if span else ""))
        else:
            doing = Text("-", style="dim")
        if w.cuda_visible_devices:
            doing = Text.assemble(f"[GPU {w.cuda_visible_devices}] ", doing)
        rows.append((w.worker, Text(live.value, style=_LIVENESS_STYLE.get(live, "")),
                     Text(state.value, style="bold yellow" if state == WorkerState.WAITING else ""), doing,
                     f"{seen.age_seconds}s ago"))
        gpu = w.gpu or {}
        if live in (Liveness.ALIVE, Liveness.STALE):
            for d in gpu.get("devices") or []:
                any_gpu = True
                temp = d.get("temperature_c")
                util = d.get("utilization_pct")
                gpus.add_row(f"{d['index']} {d.get('name', '')}".strip(),
                             _gauge(d.get("memory_pct"), limits.memory_pct, f"{d.get('memory_pct', 0):.1f}%"),
                             _gauge(temp, limits.temperature_c, f"{temp}°C"),
                             "-" if util is None else f"{util}%")
    parts: list[RenderableType] = [FitTable(cols, rows, title=Text("workers", style="bold"), **_PLAIN)]
    if any_gpu:
        parts.append(gpus)
    return parts


def _jobs(data: dict[str, Any], workers: list[SeenWorker], now: float) -> list[RenderableType]:
    jobs = data["jobs"]
    active = [j for j in jobs if j["status"] in _ACTIVE]
    queued = [j for j in jobs if j["status"] == JobState.QUEUED]
    finished = sorted((j for j in jobs if j["status"] not in _ACTIVE and j["status"] != JobState.QUEUED),
                      key=lambda j: j.get("updated_at") or 0, reverse=True)
    rows: list[tuple[RenderableType, ...]] = []
    for j in active + queued + finished[:MAX_FINISHED_SHOWN]:
        status = j["status"] + (f" ×{j['workers']}" if (j.get("workers") or 0) > 1 else "")
        pct = f"{100 * j.get('progress', 0):.1f}%"
        running = j["status"] in _ACTIVE
        bar: RenderableType = ProgressBar(total=1.0, completed=j.get("progress", 0.0), width=BAR_WIDTH) if running \
            else Text("")
        rps, tps = job_rates(j, workers) if running else (None, None)
        started = j.get("started_at")
        elapsed = (now if running else (j.get("updated_at") or now)) - started if started else None
        total = j.get("total_lines") or 0
        done = f"{j.get('lines_consumed', 0):,}/{total:,}" if total else "-"
        rows.append((j["job"], Text(status, style=_STATE_STYLE.get(j["status"], "")), bar,
                     pct if j["status"] != JobState.QUEUED else "", done, f"{j.get('requests_failed', 0):,}",
                     _rate(rps), _rate(tps), duration(elapsed),
                     duration(j.get("eta_seconds")) if running else "-"))
    parts: list[RenderableType] = [FitTable(_JOB_COLS, rows, title=Text("jobs", style="bold"), **_PLAIN)]
    left = data.get("not_shown") or {}
    more = max(0, len(finished) - MAX_FINISHED_SHOWN) + left.get("finished", 0)
    words = [f"{more:,} more finished job(s)"] if more else []
    words += [f"{left['queued']:,} more queued"] if left.get("queued") else []
    if words:
        parts.append(Text(f"... and {' and '.join(words)}: `spoolbatch list`", style="dim"))
    if not jobs:
        parts = [Text("jobs: none yet (drop a file into inbox/ or `spoolbatch submit FILE`)", style="dim")]
    return parts


def live_view(data: dict[str, Any], limits: Limits | None = None, *, now: float | None = None,
              footer: str | None = None) -> RenderableType:
    """The whole `status --watch` screen for ``data`` (what `status --json` prints)."""
    now = time.time() if now is None else now
    limits = limits or Limits()
    queue = data.get("queue", {}).get("jobs", 0)
    workers = [SeenWorker.from_dict(w) for w in data["workers"]]
    alive = sum(1 for w in workers if w.liveness == Liveness.ALIVE)
    head = Text.assemble(("spoolbatch ", "bold"), f"spool {data['spool']}  ·  ",
                         (f"{alive} worker(s) alive", "green" if alive else "red"),
                         f"  ·  queue: {queue} job(s) waiting  ·  {time.strftime('%H:%M:%S', time.localtime(now))}")
    parts: list[RenderableType] = [head, *_workers(workers, limits), *_jobs(data, workers, now)]
    if footer:
        parts.append(Text(footer, style="dim"))
    return Group(*parts)


class RunProgress:
    """`run` in a terminal: one bar per job with its rate and ETA, a line when it ends."""

    def __init__(self, console: Console | None = None) -> None:
        self.progress = Progress(
            TextColumn("{task.fields[job]}", style="bold"), BarColumn(bar_width=30),
            TextColumn("{task.percentage:>5.1f}%"), TextColumn("{task.completed:,.0f}/{task.total:,.0f}"),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("eta {task.fields[eta]}"),
            console=console, transient=False)
        self._tasks: dict[str, TaskID] = {}

    def update(self, job: str, done: int, total: int, *, status: str = JobState.RUNNING,
               requests_per_second: float | None = None, tokens_per_second: float | None = None,
               eta_seconds: float | None = None) -> None:
        """Show ``job`` at ``done`` of ``total`` lines; a final ``status`` prints a line and drops its bar."""
        rate = " ".join(r for r in (_rate(requests_per_second, "req/s") if requests_per_second is not None else "",
                                    _rate(tokens_per_second, "tok/s") if tokens_per_second is not None else "")
                        if r)
        task = self._tasks.get(job)
        if task is None:
            task = self._tasks[job] = self.progress.add_task(job, total=max(total, 1), job=job, rate="", eta="-")
        self.progress.update(task, completed=done, total=max(total, 1), rate=rate, eta=duration(eta_seconds))
        if status != JobState.RUNNING:
            self.progress.remove_task(task)
            del self._tasks[job]
            self.progress.console.print(Text.assemble((job, "bold"), ": ",
                                                      (status, _STATE_STYLE.get(status, "")),
                                                      f", {done:,} of {total:,} lines"))

"""Per-job log files (``logs/JOB.log``) that `spoolbatch logs` shows: one JSON line per event.

Each line is ``{"ts": UNIX_SECONDS, "event": NAME, "job": JOB, ...fields}`` with a
``JobEvent`` name, so that tests, `status` and `logs --json` read facts instead of
wording; ``render`` turns an event into the sentence people read. ``chunk`` fields count
from 1, as the heartbeat and `status` do. The daemon's own log (``logs/daemon.log``, shared
by the workers of a spool) holds ``DaemonEvent`` lines the same way, ``{"ts", "event",
"worker", ...fields}``, for what a worker waits for or repairs beside any one job (a hot or
full card, a low disk, a rebuilt engine, a lost Ray replica), among free text lines (start,
stop, messages). A line that is not JSON (free text, or a log written before events) reads
as a ``text`` event.
"""

from __future__ import annotations

import contextlib
import os
import time
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import orjson

from spoolbatch.store.logfile import DEFAULT_KEEP, DEFAULT_MAX_BYTES, append_line, rotated_parts


class JobEvent(StrEnum):
    """What happened to a job, one name per event."""

    CLAIMED = "claimed"  # file, lines, bytes, model, worker: a worker set the job up
    REJECTED = "rejected"  # file, code, reason, hint: the whole file was refused
    CONTINUED = "continued"  # chunk, first_line, worker: a worker took its first fresh chunk of a job begun before
    RESUMED = "resumed"  # chunk, first_line, last_line, worker: a chunk whose worker stopped was taken over
    CHUNK_MERGED = "chunk_merged"  # chunk, first_line, last_line, answered, failed, seconds, worker
    OVERTAKEN = "overtaken"  # by, chunk, priority, by_priority, reason, worker: a worker left it (after its chunk
    #                          ``chunk``) for a more urgent job; it stays running and goes on where it stopped
    CHUNK_FAILED = "chunk_failed"  # chunk, error, worker: the chunk stays claimable and is retried
    DISK_FULL = "disk_full"  # chunk, error, worker: nothing is lost; work waits for space
    STOPPING = "stopping"  # line, worker: the daemon stops at a chunk boundary
    CANCELLED = "cancelled"  # line: the job ended at a chunk boundary after `cancel`
    EXPIRED = "expired"  # line: the job ended at a chunk boundary, its batch's completion window passed
    COMPLETED = "completed"  # answered, failed, tokens, seconds: every line is in results or deadletter
    WEBHOOK = "webhook"  # event_id, url, attempt, state (pending|delivered|gave_up), outcome, next_in
    TEXT = "text"  # text: a line written before the log held events


class DaemonEvent(StrEnum):
    """What a worker waited for or repaired, beside any one job (``logs/daemon.log``); each carries ``worker``."""

    GPU_WAIT = "gpu_wait"  # reason: no chunk starts while the card is too full or too hot (once per reason)
    GPU_RECOVERED = "gpu_recovered"  # (none): the card is safe again; chunks go on
    DISK_LOW = "disk_low"  # free_bytes, needed_bytes: no chunk starts until there is room
    DISK_BACK = "disk_back"  # free_bytes: room again; chunks go on
    ENGINE_REBUILD = "engine_rebuild"  # reason: the engine broke; it is closed and a new one built for the next try
    PIPELINE_REDO = "pipeline_redo"  # stage (submit|collect), error: a chunk handed ahead is redone by split-and-retry
    REPLICA_LOST = "replica_lost"  # stage (run|collect), replica, requests, error: a Ray replica gone, its slice
    #                                redone on a new one


class DaemonEvents(Protocol):
    """Where a worker's parts report a ``DaemonEvent``: ``events(name, **fields)``."""

    def __call__(self, name: DaemonEvent, /, **fields: Any) -> None:
        """Record one event."""


def no_events(name: DaemonEvent, /, **fields: Any) -> None:
    """A ``DaemonEvents`` that records nothing (parts used outside a daemon)."""


def _stamp(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(ts))


class JobLog:
    """Append events (or, for the daemon's log, timestamped text) to one log; stderr gets them too.

    The file is capped at ``max_bytes`` with ``keep`` rotated parts (store/logfile.py); a
    ``path`` of None writes stderr only (the daemon log under systemd, where stderr is the
    journal and a file would say everything twice).
    """

    def __init__(self, path: Path | None, echo: bool = True, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 keep: int = DEFAULT_KEEP) -> None:
        self.path = path
        self.echo = echo
        self.max_bytes = max_bytes
        self.keep = keep

    def __call__(self, message: str) -> None:
        """Write one line of text."""
        self._write(f"{_stamp(time.time())} {message}\n".encode(), message)

    def event(self, name: JobEvent, job: str, **fields: Any) -> None:
        """Write one event of ``job``."""
        event = {"ts": round(time.time(), 3), "event": name.value, "job": job, **fields}
        self._write(orjson.dumps(event) + b"\n", describe(event) if self.echo else "")

    def daemon_events(self, worker: str) -> DaemonEvents:
        """A ``DaemonEvents`` that writes each event of ``worker`` to this log."""
        def write(name: DaemonEvent, /, **fields: Any) -> None:
            event = {"ts": round(time.time(), 3), "event": name.value, "worker": worker, **fields}
            self._write(orjson.dumps(event) + b"\n", describe(event) if self.echo else "")
        return write

    def _write(self, line: bytes, message: str) -> None:
        if self.path is not None:
            with contextlib.suppress(OSError):  # a log line is never worth losing a chunk over (a full disk)
                append_line(self.path, line, max_bytes=self.max_bytes, keep=self.keep)
        if self.echo:
            name = self.path.stem if self.path is not None else "daemon"
            os.write(2, f"spoolbatch[{os.getpid()}] {name}: {message}\n".encode())


def read_log(path: Path) -> list[dict[str, Any]] | None:
    """Every event of a job log and its rotated parts, oldest first; None when there is none."""
    events: list[dict[str, Any]] = []
    found = False
    for part in [*reversed(rotated_parts(path)), path]:  # oldest first
        with contextlib.suppress(FileNotFoundError):
            events += read_events(part)
            found = True
    return events if found else None


def read_events(path: Path) -> list[dict[str, Any]]:
    """Every event of a job log, oldest first (FileNotFoundError when there is no log)."""
    events = []
    for line in path.read_bytes().splitlines():
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            event = None
        if not isinstance(event, dict) or "event" not in event:
            event = {"event": JobEvent.TEXT.value, "text": line.decode(errors="replace")}
        events.append(event)
    return events


def describe(event: dict[str, Any]) -> str:
    """The sentence for an event, without its time stamp."""
    e = event
    match e.get("event"):
        case JobEvent.CLAIMED:
            return (f"claimed {e['file']} as job {e['job']}: {e['lines']:,} lines, {e['bytes']:,} bytes"
                    + (f", model {e['model']}" if e.get("model") else ", no valid request"))
        case JobEvent.REJECTED:
            return f"refused whole: {e['reason']}"
        case JobEvent.CONTINUED:
            return f"continuing at line {e['first_line']:,}"
        case JobEvent.RESUMED:
            return (f"resuming at line {e['first_line']:,} (chunk {e['chunk']}, "
                    "whose worker stopped before committing it)")
        case JobEvent.CHUNK_MERGED:
            return (f"chunk {e['chunk']}: lines {e['first_line']:,}-{e['last_line']:,}, {e['answered']:,} answered, "
                    f"{e['failed']:,} to deadletter, {e['seconds']:.2f}s ({e['worker']})")
        case JobEvent.OVERTAKEN:
            return (f"overtaken after chunk {e['chunk']} by job {e['by']} (priority {e['by_priority']} over "
                    f"{e['priority']}) on {e['worker']}; still in progress, it goes on where it stopped")
        case JobEvent.CHUNK_FAILED:
            return f"job {e['job']} failed, will be retried: {e['error']}"
        case JobEvent.DISK_FULL:
            return f"disk full: {e['error']}; not taking work until space returns, nothing lost"
        case JobEvent.STOPPING:
            return f"stopping at a chunk boundary (line {e['line']:,}); the job resumes later"
        case JobEvent.CANCELLED:
            return f"cancelled at a chunk boundary (line {e['line']:,}); checkpoint kept"
        case JobEvent.EXPIRED:
            return f"expired (its completion window passed) at a chunk boundary (line {e['line']:,}); checkpoint kept"
        case JobEvent.COMPLETED:
            return (f"completed: {e['answered']:,} answered, {e['failed']:,} in deadletter, "
                    f"{e['tokens']:,} tokens in {e['seconds']:.1f}s of engine time")
        case JobEvent.WEBHOOK:
            head = f"webhook {e['event_id']} to {e['url']}"
            if e["state"] == "delivered":
                return f"{head}: delivered on attempt {e['attempt']} ({e['outcome']})"
            if e["state"] == "gave_up":
                return f"{head}: given up after attempt {e['attempt']} ({e['outcome']})"
            return f"{head}: attempt {e['attempt']} failed ({e['outcome']}); next in {e.get('next_in') or 0:.0f}s"
        case JobEvent.TEXT:
            return str(e.get("text", ""))
        case DaemonEvent.GPU_WAIT:
            return f"waiting before the next chunk: {e['reason']}"
        case DaemonEvent.GPU_RECOVERED:
            return "GPU recovered; going on"
        case DaemonEvent.DISK_LOW:
            return (f"disk low: {e['free_bytes']:,} bytes free on the spool's file system, the next chunk needs "
                    f"about {e['needed_bytes']:,}; waiting (gc frees finished jobs)")
        case DaemonEvent.DISK_BACK:
            return f"disk space back: {e['free_bytes']:,} bytes free; taking work again"
        case DaemonEvent.ENGINE_REBUILD:
            return f"engine broken ({e['reason']}); rebuilding it"
        case DaemonEvent.PIPELINE_REDO:
            if e["stage"] == "submit":
                return f"could not enqueue a chunk ({e['error']}); it will run on its own"
            return f"a pipelined chunk failed ({e['error']}); redoing it with split and retry"
        case DaemonEvent.REPLICA_LOST:
            held = "holding" if e["stage"] == "collect" else "running"
            return (f"ray replica {e['replica']} lost ({e['error']}) {held} {e['requests']:,} requests of a chunk; "
                    "replacing it and redoing them")
    rest = " ".join(f"{k}={v}" for k, v in e.items() if k not in ("ts", "event", "job"))
    return f"{e.get('event')} {rest}".rstrip()


def render(event: dict[str, Any]) -> str:
    """The line `spoolbatch logs` prints: time stamp and sentence (a text line as it was written)."""
    if event.get("event") == JobEvent.TEXT or not isinstance(event.get("ts"), (int, float)):
        return describe(event)
    return f"{_stamp(event['ts'])} {describe(event)}"

"""A job's story, as the web page's job view shows it: how it went chunk by chunk, what happened, why lines failed.

Read from what the daemon already keeps: the chunk events of the job log (``chunk_merged``:
when, which lines, answered and failed, engine seconds, tokens where the event holds them, which
worker), its other events as a timeline, and the deadletter grouped by error code with a few
example lines each. Chunks come as columns (one list per field, one entry per chunk), which keeps
a 10,000-chunk job's answer small and lets the page chart it without reshaping.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from spoolbatch.commands.batches import UNRUN_CODE, get_batch
from spoolbatch.commands.catalog import deadletter, job_info
from spoolbatch.commands.status import with_workers
from spoolbatch.store.joblog import JobEvent, describe, read_log
from spoolbatch.store.liveness import read_workers
from spoolbatch.store.spool import Spool

EXAMPLES = 3  # example lines per error code
MAX_EVENTS = 1000  # the newest events of the timeline, beside the chunk columns
_CLIP = 400  # characters of an example's message and request


@dataclass(slots=True)
class Chunks:
    """The job's merged chunks in log order, as columns."""

    t: list[float] = field(default_factory=list)  # when the chunk was merged (Unix seconds)
    chunk: list[int] = field(default_factory=list)  # its number, from 1
    first_line: list[int] = field(default_factory=list)
    last_line: list[int] = field(default_factory=list)
    answered: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # the engine's time on it
    tokens: list[int | None] = field(default_factory=list)  # prompt + completion, where the event holds them
    worker: list[int] = field(default_factory=list)  # index into ``workers``
    workers: list[str] = field(default_factory=list)

    def add(self, e: dict[str, Any]) -> None:
        """One ``chunk_merged`` event (KeyError, TypeError or ValueError, and nothing added, for one without them)."""
        tokens = [e[k] for k in ("prompt_tokens", "completion_tokens") if isinstance(e.get(k), int)]
        row = (float(e["ts"]), int(e["chunk"]), int(e["first_line"]), int(e["last_line"]), int(e["answered"]),
               int(e["failed"]), float(e["seconds"]), sum(tokens) if tokens else None)
        name = str(e.get("worker") or "?")
        if name not in self.workers:
            self.workers.append(name)
        columns = (self.t, self.chunk, self.first_line, self.last_line, self.answered, self.failed, self.seconds,
                   self.tokens)
        for column, value in zip(columns, row, strict=True):
            column.append(value)  # type: ignore[attr-defined]
        self.worker.append(self.workers.index(name))


@dataclass(frozen=True, slots=True)
class ErrorGroup:
    """The job's failed lines of one error code: how many, and the first few."""

    code: str
    count: int
    examples: list[dict[str, Any]]
    unrun: bool = False  # requests a cancel or an expiry left unrun (no deadletter line: the error file makes them)


@dataclass(frozen=True, slots=True)
class Story:
    """Everything the job view shows beside the batch object."""

    job: dict[str, Any]  # the job as `status JOB --json` shows it (ETA, engine time, workers on it, priority...)
    chunks: Chunks
    events: list[dict[str, Any]]  # every event but chunk merges, oldest first, each with its sentence as ``text``
    events_total: int
    errors: list[ErrorGroup]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON."""
        return asdict(self)


def _clip(text: Any) -> str | None:
    if text is None:
        return None
    s = str(text)
    return s if len(s) <= _CLIP else s[:_CLIP] + "…"


def error_groups(spool: Spool, job: str, examples: int = EXAMPLES) -> list[ErrorGroup]:
    """The deadletter grouped by error code, largest group first, with the first ``examples`` lines of each;
    then the requests a cancel or an expiry left unrun, as their error file names them."""
    counts: dict[str, int] = {}
    shown: dict[str, list[dict[str, Any]]] = {}
    for record in deadletter(spool, job):
        error = record.get("error") or {}
        code = str(error.get("code") or "unknown")
        counts[code] = counts.get(code, 0) + 1
        if len(got := shown.setdefault(code, [])) < examples:
            got.append({"line": record.get("line"), "custom_id": record.get("custom_id"),
                        "message": _clip(error.get("message")), "attempts": record.get("attempts"),
                        "request": _clip(record.get("request"))})
    groups = [ErrorGroup(code, n, shown[code]) for code, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    view = get_batch(spool, job)
    unrun_code = UNRUN_CODE.get(view.state)
    if (unrun := view.unrun()) and unrun_code:
        groups.append(ErrorGroup(unrun_code, unrun, [], unrun=True))
    return groups


def story(spool: Spool, job: str, *, examples: int = EXAMPLES, max_events: int = MAX_EVENTS) -> Story:
    """The story of ``job`` (``JobNotFound`` when there is no such job)."""
    (info,) = with_workers([job_info(spool, job)], read_workers(spool))
    chunks = Chunks()
    events: list[dict[str, Any]] = []
    for e in read_log(spool.log(job)) or []:
        if e.get("event") == JobEvent.CHUNK_MERGED:
            try:
                chunks.add(e)
                continue
            except (KeyError, TypeError, ValueError):
                pass  # a chunk event of an older layout: shown as an event
        try:
            text = describe(e)
        except (KeyError, TypeError, ValueError):
            text = " ".join(f"{k}={v}" for k, v in e.items() if k not in ("ts", "job"))
        events.append({"ts": e.get("ts"), "event": e.get("event"), "worker": e.get("worker"), "text": text})
    return Story(info.to_dict(), chunks, events[-max_events:] if max_events else [], len(events),
                 error_groups(spool, job, examples))

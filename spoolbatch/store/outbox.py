"""The webhook outbox: one file per delivery in ``outbox/``, kept until delivered or given up.

An event for a batch that ended is written once per subscribed endpoint (its id and body
fixed then, so every retry carries the same ``webhook-id``); whichever process sends it holds
the entry's lock while it tries, and records the outcome in the entry. A process killed
mid-send leaves the entry pending: it is sent again, at least once. In the clean-up
(store/cleanup.py), ``sweep`` removes the entries delivered or given up whose job is gone.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from enum import StrEnum

import orjson

from spoolbatch import backoff
from spoolbatch.store.batches import batch_id
from spoolbatch.store.fsutil import atomic_write
from spoolbatch.store.jobstate import JobState
from spoolbatch.store.removal import Kind, Pass, measure, remove
from spoolbatch.store.spool import Spool

GIVE_UP_SECONDS = 72 * 3600
MAX_DELAY_SECONDS = 3600.0
EVENT_OF_STATE = {JobState.COMPLETED: "batch.completed", JobState.FAILED: "batch.failed",
                  JobState.REJECTED: "batch.failed", JobState.EXPIRED: "batch.expired",
                  JobState.CANCELLED: "batch.cancelled"}


class DeliveryState(StrEnum):
    """Where a delivery is."""

    PENDING = "pending"
    DELIVERED = "delivered"
    GAVE_UP = "gave_up"


@dataclass(slots=True)
class Delivery:
    """One event for one endpoint."""

    name: str
    job: str
    url: str
    event_id: str
    body: str
    created_at: float
    state: DeliveryState = DeliveryState.PENDING
    attempts: int = 0
    next_at: float = 0.0
    last_outcome: str | None = None

    def save(self, spool: Spool) -> None:
        """Replace the entry atomically."""
        data = asdict(self)
        data["state"] = self.state.value
        atomic_write(spool.outbox_entry(self.name), orjson.dumps(data))

    @classmethod
    def load(cls, spool: Spool, name: str) -> Delivery | None:
        """The entry ``name``, or None."""
        try:
            data = orjson.loads(spool.outbox_entry(name).read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            return None
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["state"] = DeliveryState(values.get("state", "pending"))
        return cls(**values)


def entry_name(job: str, url: str) -> str:
    """The outbox name of ``job``'s event for the endpoint at ``url``."""
    return f"{job}.{hashlib.blake2b(url.encode(), digest_size=6).hexdigest()}"


def event_body(job: str, event_type: str, ended_at: float) -> tuple[str, str]:
    """(event id, JSON body) in OpenAI's event shape; the same inputs give the same id."""
    event_id = "evt_" + hashlib.blake2b(f"{job}\x1f{event_type}\x1f{ended_at}".encode(), digest_size=12).hexdigest()
    body = orjson.dumps({"id": event_id, "object": "event", "type": event_type, "created_at": int(ended_at),
                         "data": {"id": batch_id(job)}}).decode()
    return event_id, body


def enqueue(spool: Spool, job: str, state: JobState, ended_at: float,
            endpoints: list[tuple[str, tuple[str, ...]]]) -> int:
    """Write ``job``'s end event for each (url, events) endpoint that wants it and has none yet."""
    event_type = EVENT_OF_STATE.get(state)
    if event_type is None:
        return 0
    event_id, body = event_body(job, event_type, ended_at)
    added = 0
    for url, events in endpoints:
        if event_type not in events:
            continue
        name = entry_name(job, url)
        lock = spool.wait_lock(spool.outbox_lock(name), timeout=30)
        try:
            if spool.outbox_entry(name).exists():
                continue
            Delivery(name, job, url, event_id, body, time.time(), next_at=0.0).save(spool)
            added += 1
        finally:
            lock.release()
    return added


def has_entries(spool: Spool, job: str, urls: list[str]) -> bool:
    """True when ``job``'s event is in the outbox for every url."""
    return all(spool.outbox_entry(entry_name(job, url)).exists() for url in urls)


def due(spool: Spool, now: float | None = None) -> Iterator[str]:
    """Names of the pending deliveries whose next attempt is due."""
    now = time.time() if now is None else now
    for name in spool.names(spool.outbox_entry):
        d = Delivery.load(spool, name)
        if d is not None and d.state == DeliveryState.PENDING and d.next_at <= now:
            yield d.name


def retry_delay(attempts: int, base: float) -> float:
    """Seconds before attempt ``attempts + 1``: doubling from ``base``, at most an hour."""
    return backoff.delay(max(1, attempts), base=base, cap=MAX_DELAY_SECONDS)


def sweep(p: Pass) -> None:
    """Remove entries delivered (or given up) whose job is gone; a pending one stays until it is sent."""
    sp = p.spool
    for name in sp.names(sp.outbox_entry):
        entry = Delivery.load(sp, name)
        if entry is None or entry.state == DeliveryState.PENDING:
            continue
        if entry.job not in p.gone and sp.job_exists(entry.job):
            continue
        lock = sp.try_lock(sp.outbox_lock(name)) if not p.dry_run else None
        if lock is None and not p.dry_run:
            continue  # a sender holds it
        try:
            n, size = measure([sp.outbox_entry(name)])
            if not p.dry_run:
                remove(sp.outbox_entry(name))
                remove(sp.outbox_lock(name))
            p.add(Kind.WEBHOOK, name, n, size, f"{entry.state.value}, job {entry.job} is gone")
        finally:
            if lock is not None:
                lock.release()

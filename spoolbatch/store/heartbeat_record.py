"""A worker's heartbeat as a record: what ``workers/WORKER.json`` (and the spool's ``heartbeat``) hold.

``worker/heartbeat.py`` writes one every few seconds; `status`, the live view, the server's
health and models, the metrics, the GPU history and the clean-up read it. ``from_dict`` reads
any older file: a field it lacks (or holds as something else) takes its default, and keys
this version does not know are kept in ``extra`` and written back as they came.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson


class WorkerState(StrEnum):
    """What a worker says it is doing."""

    STARTING = "starting"  # loading, before its first pass over the spool
    IDLE = "idle"  # nothing to do (or waiting for files to settle: see ``reason``)
    WORKING = "working"  # answering a chunk
    WAITING = "waiting"  # held back by the GPU gate or the disk guard: ``reason`` says which
    STOPPING = "stopping"  # asked to stop; finishing its chunk
    STOPPED = "stopped"  # exited cleanly
    UNKNOWN = "unknown"  # a state this version does not know (a newer worker's)


@dataclass(slots=True)
class Heartbeat:
    """One worker's heartbeat; every field is plain JSON (the nested ones as their writers made them)."""

    worker: str = ""  # HOST-PID: its name among the spool's workers
    pid: int = 0
    host: str = ""
    state: WorkerState = WorkerState.STARTING
    reason: str | None = None  # why it waits (or idles), in words
    job: str | None = None  # the job it answers now
    chunk: int | None = None  # that job's chunk, from 1
    progress: dict[str, Any] | None = None  # the job's lines, requests, fraction and ETA after its last chunk
    started_at: float = 0.0
    interval: float = 2.0  # seconds between beats: liveness is judged against it
    cuda_visible_devices: str | None = None  # the card it is pinned to (run --gpus), or None
    engine: str | None = None
    chunk_size: int | None = None  # the configured size, then the GPU guard's choice for the next chunk
    poll_interval: float | None = None
    gpu_limits: dict[str, Any] | None = None  # the GPU gate's limits: memory_pct, temperature_c
    gpu: dict[str, Any] | None = None  # the last NVML reading (``GpuSnapshot.to_dict``)
    gpu_read_at: float | None = None  # when it was read
    chunk_lines: list[int] | None = None  # [first, last] input line of the chunk
    model: str | None = None  # the model it has loaded
    last_chunk: dict[str, Any] | None = None  # requests, seconds, requests_per_second, completion_tokens
    disk: dict[str, Any] | None = None  # the disk guard's last look: free_bytes, needed_bytes, low
    scheduled: dict[str, Any] | None = None  # why the chunk it answers was taken, as the scheduler chose it
    last_seen: float = 0.0  # when this beat was written
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know, kept as they came

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON, as the worker file holds it: every field, then the unknown keys it was read with."""
        data = {name: getattr(self, name) for name in _FIELDS}
        data["state"] = self.state.value
        return data | {k: v for k, v in self.extra.items() if k not in data} if self.extra else data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Heartbeat:
        """Read a worker file's contents, older and newer ones too (see the module docstring)."""
        values: dict[str, Any] = {}
        for name, kind in _FIELDS.items():
            value = data.get(name)
            if value is not None and _fits(value, kind):
                values[name] = float(value) if kind is float else value
        state = data.get("state")
        values["state"] = WorkerState(state) if state in _STATES else \
            WorkerState.UNKNOWN if isinstance(state, str) else WorkerState.STARTING
        lines = values.get("chunk_lines")
        if lines is not None and (len(lines) != 2 or not all(_fits(n, int) for n in lines)):
            del values["chunk_lines"]
        extra = {k: v for k, v in data.items() if k not in _FIELDS and k != "extra"}
        return cls(**values, extra=extra)

    @classmethod
    def load(cls, path: Path) -> Heartbeat | None:
        """The heartbeat at ``path``, or None when it is gone or is not one (a torn or foreign file)."""
        with contextlib.suppress(OSError, orjson.JSONDecodeError):
            data = orjson.loads(path.read_bytes())
            if isinstance(data, dict):
                return cls.from_dict(data)
        return None


def _fits(value: Any, kind: type) -> bool:
    if isinstance(value, bool):  # JSON's true is no number here
        return kind is bool
    if kind is float:
        return isinstance(value, int | float)
    return isinstance(value, kind)


def _kind(annotation: str) -> type:
    """The JSON type a field's annotation names (``int | None`` is int)."""
    first = annotation.split("|")[0].split("[")[0].strip()
    return {"str": str, "int": int, "float": float, "dict": dict, "list": list, "WorkerState": str}[first]


_FIELDS: dict[str, type] = {f.name: _kind(str(f.type)) for f in fields(Heartbeat) if f.name != "extra"}
_STATES = {s.value for s in WorkerState}

"""The daemon's heartbeat: a ``Heartbeat`` record (``store/heartbeat_record.py``) rewritten every few
seconds by a background thread.

Each daemon writes ``workers/HOST-PID.json``; the spool-level ``heartbeat`` file is the
latest of them (last writer wins), as the README's spool table says. A thread writes even
while a chunk keeps the main loop busy, so a long chunk does not look like a dead worker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson

from spoolbatch.store.fsutil import atomic_write
from spoolbatch.store.heartbeat_record import Heartbeat, WorkerState
from spoolbatch.store.spool import Spool
from spoolbatch.worker.gpuhistory import GpuHistoryWriter

_NAMES = frozenset(f.name for f in dataclasses.fields(Heartbeat)) - {"extra"}


_STOPPABLE = frozenset({WorkerState.STARTING, WorkerState.IDLE, WorkerState.WORKING, WorkerState.WAITING})


def worker_id() -> str:
    """This process's name among the spool's workers."""
    return f"{socket.gethostname()}-{os.getpid()}"


class HeartbeatWriter:
    """Holds the daemon's current ``Heartbeat`` and writes it out every ``interval`` seconds."""

    def __init__(self, spool: Spool, interval: float, **fields: Any) -> None:
        self.spool = spool
        self.interval = max(0.1, interval)
        self.id = worker_id()
        self._lock = threading.Lock()
        self._beat = Heartbeat(worker=self.id, pid=os.getpid(), host=socket.gethostname(), started_at=time.time(),
                               interval=self.interval, cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"))
        self._set(fields)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Set (never cleared) when the daemon is asked to stop: a plain attribute, so a signal
        # handler can set it without a lock; each write shows the worker as stopping from then on.
        self.stop_asked = False
        self.on_beat: list[Callable[[Heartbeat], Any]] = []
        self.gpu_history = GpuHistoryWriter(spool.gpu_history(self.id))  # the page's GPU charts

    def _set(self, fields: dict[str, Any]) -> None:
        unknown = fields.keys() - _NAMES
        if unknown:
            raise TypeError(f"a heartbeat has no field {', '.join(sorted(unknown))}")
        for name, value in fields.items():
            setattr(self._beat, name, WorkerState(value) if name == "state" else value)

    def update(self, **fields: Any) -> None:
        """Change some fields (a ``Heartbeat``'s, by name) and write soon."""
        with self._lock:
            self._set(fields)
        self._wake.set()

    def snapshot(self) -> Heartbeat:
        """A copy of the current state."""
        with self._lock:
            return dataclasses.replace(self._beat)

    def poke(self) -> None:
        """Write soon (not from a signal handler: it takes the wake event's lock)."""
        self._wake.set()

    def write(self) -> None:
        """Write the state now (best effort: a full disk must not kill the daemon)."""
        with self._lock:
            if self.stop_asked and self._beat.state in _STOPPABLE:
                self._beat.state = WorkerState.STOPPING
            self._beat.last_seen = time.time()
            data = orjson.dumps(self._beat.to_dict(), option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
        for path in (self.spool.worker_file(self.id), self.spool.heartbeat):
            with contextlib.suppress(Exception):  # best effort: the next beat tries again
                atomic_write(path, data, durable=False)
        with contextlib.suppress(Exception):  # best effort, as the beat itself
            self.gpu_history.record(self.snapshot())
        for hook in self.on_beat:
            with contextlib.suppress(Exception):  # a hook (metrics, watchdog) never kills the beat
                hook(self.snapshot())

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.write()
            self._wake.wait(self.interval)
            self._wake.clear()

    def start(self) -> None:
        """Begin writing in the background."""
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)
        self._thread.start()

    def stop(self, state: str = WorkerState.STOPPED) -> None:
        """Write a last beat with ``state`` and end the thread."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.update(state=state, job=None, chunk=None)
        self.write()

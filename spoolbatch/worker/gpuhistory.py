"""The daemon's side of the GPU history: append a reading per heartbeat, rewrite the file thinned now and then.

The file's format and its thinning are ``store/gpuhistory.py``'s. A reading is appended only when
it is new (the GPU guard's reading time moved) and at least ``MIN_SPACING`` after the last one, so
a short heartbeat interval does not grow the file; every ``COMPACT_EVERY`` appends the file is
rewritten thinned (atomically), which keeps it to a few hundred kB for eight cards. Best effort:
an error here never reaches the heartbeat. The clutter sweep removes the file with the worker's
other files.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path

from spoolbatch.store.fsutil import atomic_write
from spoolbatch.store.gpuhistory import Reading, encode, read_history, thin
from spoolbatch.store.heartbeat_record import Heartbeat
from spoolbatch.store.logfile import append_line

MIN_SPACING = 2.0
COMPACT_EVERY = 100


class GpuHistoryWriter:
    """Keeps one worker's GPU history file."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time, min_spacing: float = MIN_SPACING,
                 compact_every: int = COMPACT_EVERY) -> None:
        self.path = path
        self.clock = clock
        self.min_spacing = min_spacing
        self.compact_every = compact_every
        self._lock = threading.Lock()  # the heartbeat thread, and the last beat written by the loop
        self._last_t: float | None = None
        self._appended = 0
        self._kept: list[Reading] | None = None  # what the file holds, once read (this worker is its one writer)

    def record(self, beat: Heartbeat) -> bool:
        """Append the heartbeat's GPU reading when it is new; True when one was written."""
        at = beat.gpu_read_at
        reading = Reading.from_snapshot(at, beat.gpu) if at is not None else None
        if reading is None:
            return False
        with self._lock:
            if self._last_t is not None and reading.t - self._last_t < self.min_spacing:
                return False
            with contextlib.suppress(OSError):  # a full disk: the next beat tries again
                if self._kept is None or self._appended >= self.compact_every:
                    self.compact()
                append_line(self.path, reading.to_line(), max_bytes=0)
                assert self._kept is not None
                self._kept.append(reading)
                self._last_t = reading.t
                self._appended += 1
                return True
        return False

    def compact(self) -> None:
        """Rewrite the file thinned at the clock's now."""
        kept = thin(read_history(self.path) if self._kept is None else self._kept, self.clock())
        if kept or self.path.exists():
            atomic_write(self.path, encode(kept), durable=False)
        self._kept = kept
        self._appended = 0

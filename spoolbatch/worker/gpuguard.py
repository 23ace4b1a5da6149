"""Protect the card between chunks: wait while it is too full or too hot, size the next chunk.

Before every chunk the guard reads NVML; while ``gate`` gives a reason, no chunk starts
(the reason goes to the heartbeat, and a ``gpu_wait`` event to the daemon's log), and once the card recovers the chunk
size is adapted to its free memory, never above the configured ``chunk_size``. Between chunks (and while idle) the
heartbeat thread reads again once a reading is a beat old, so the heartbeat and the GPU history
(``worker/gpuhistory.py``) follow the card during a long chunk; the heartbeat carries the gate's limits for the page.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from spoolbatch.config import Config
from spoolbatch.store.heartbeat_record import Heartbeat, WorkerState
from spoolbatch.store.joblog import DaemonEvent, DaemonEvents, no_events
from spoolbatch.worker.gpu import GpuMonitor, GpuSnapshot, adaptive_chunk_size, gate
from spoolbatch.worker.heartbeat import HeartbeatWriter


class GpuGuard:
    """Blocks before a chunk while the GPU is unsafe; returns the chunk size to use."""

    def __init__(self, monitor: GpuMonitor, config: Config, heartbeat: HeartbeatWriter, stop: threading.Event, *,
                 reserved_pct: Callable[[], float] = lambda: 0.0,
                 events: DaemonEvents = no_events) -> None:
        self.monitor = monitor
        self.config = config
        self.heartbeat = heartbeat
        self.stop = stop
        self.reserved_pct = reserved_pct
        self.events = events
        self._read_at = 0.0
        heartbeat.update(gpu_limits={"memory_pct": config.gpu_max_memory_pct, "temperature_c": config.gpu_max_temp_c})
        heartbeat.on_beat.append(self._refresh)

    def read(self) -> GpuSnapshot:
        """A fresh reading, also put in the heartbeat (with the time it was read)."""
        snapshot = self.monitor.read()
        self._read_at = time.time()
        self.heartbeat.update(gpu=snapshot.to_dict(), gpu_read_at=round(self._read_at, 3))
        return snapshot

    def _refresh(self, beat: Heartbeat) -> None:
        """A heartbeat hook: read again once the last reading is a beat old."""
        if time.time() - self._read_at >= self.heartbeat.interval:
            self.read()

    def next_chunk_size(self, block: bool = True) -> int | None:
        """Wait until the card is safe (or a stop is asked), then size the next chunk.

        With ``block=False`` an unsafe card gives None at once instead of a wait.
        """
        cfg = self.config
        reason_logged = None
        while True:
            snap = self.read()
            reason = gate(snap, cfg.gpu_max_memory_pct, cfg.gpu_max_temp_c)
            if reason is None or self.stop.is_set():
                break
            if not block:
                return None
            if reason != reason_logged:
                self.events(DaemonEvent.GPU_WAIT, reason=reason)
                reason_logged = reason
            self.heartbeat.update(state=WorkerState.WAITING, reason=reason)
            self.stop.wait(max(0.05, min(cfg.poll_interval, 10.0)))
        if reason_logged:
            self.events(DaemonEvent.GPU_RECOVERED)
        size = adaptive_chunk_size(snap, cfg.chunk_size, cfg.gpu_min_chunk, reserved_pct=self.reserved_pct())
        # Not 'working': no chunk is taken yet, and the heartbeat would say working on no job (the
        # daemon says working, with the job, once it has a chunk). A wait that ended is idle again.
        self.heartbeat.update(reason=None, chunk_size=size,
                              **({"state": WorkerState.IDLE} if reason_logged else {}))
        return size

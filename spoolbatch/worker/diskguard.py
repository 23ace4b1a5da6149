"""Disk protection: no chunk starts without room for what it will write.

Before each chunk the daemon estimates what the chunk will write from the job's own figures
(its committed results, deadletter and ids bytes per request so far, times the chunk size,
twice: the part is written, then merged) with a floor of ``disk_min_free_bytes``, and waits
while the file system has less free: heartbeat state ``waiting`` with reason "disk low", and a
``disk_low`` event in the daemon's log (``disk_back`` when there is room again). A full disk
in the middle of a chunk is still handled (the chunk is retried, nothing lost); this keeps
the daemon from running into it. ``statvfs`` is injectable for tests.
"""

from __future__ import annotations

import contextlib
import os
import threading

from spoolbatch.config import Config
from spoolbatch.store.checkpoint import Checkpoint
from spoolbatch.store.diskspace import Statvfs, free_bytes
from spoolbatch.store.heartbeat_record import WorkerState
from spoolbatch.store.joblog import DaemonEvent, DaemonEvents
from spoolbatch.store.spool import Spool
from spoolbatch.worker.heartbeat import HeartbeatWriter

__all__ = ["DiskGuard", "Statvfs"]


class DiskGuard:
    """Reads the spool's free space and holds the daemon back while it is short."""

    def __init__(self, spool: Spool, config: Config, heartbeat: HeartbeatWriter, stop: threading.Event,
                 events: DaemonEvents, statvfs: Statvfs = os.statvfs) -> None:
        self.spool = spool
        self.config = config
        self.heartbeat = heartbeat
        self.stop = stop
        self.events = events
        self.statvfs = statvfs
        self.low = False

    def free_bytes(self) -> int:
        """Bytes free for an unprivileged writer on the spool's file system."""
        return free_bytes(self.spool.root, self.statvfs)

    def need(self, chunk_size: int, job: str | None) -> int:
        """What the next chunk (``chunk_size`` requests of ``job``) needs free, at least the floor."""
        per = 0.0
        if job is not None:
            with contextlib.suppress(OSError, ValueError, TypeError):
                ckpt = Checkpoint.load(self.spool.checkpoint(job))
                if ckpt is not None and (ckpt.requests_done + ckpt.requests_failed):
                    written = ckpt.results_bytes + ckpt.deadletter_bytes + 8 * ckpt.ids_count
                    per = written / (ckpt.requests_done + ckpt.requests_failed)
        return max(self.config.disk_min_free_bytes, int(2 * per * chunk_size))

    def wait(self, need: int, *, block: bool = True) -> bool:
        """True once ``need`` bytes are free; False when stopped (or not ``block`` and short)."""
        while True:
            try:
                free = self.free_bytes()
            except OSError:
                return True  # cannot tell: let the write itself find out (DiskFull is handled)
            low = free < need
            self.heartbeat.update(disk={"free_bytes": free, "needed_bytes": need, "low": low})
            if not low:
                if self.low:
                    self.low = False
                    self.events(DaemonEvent.DISK_BACK, free_bytes=free)
                return True
            if not block or self.stop.is_set():
                return False
            if not self.low:
                self.low = True
                self.events(DaemonEvent.DISK_LOW, free_bytes=free, needed_bytes=need)
            self.heartbeat.update(state=WorkerState.WAITING, reason=f"disk low: {free:,} bytes free, {need:,} needed")
            self.stop.wait(self.config.poll_interval)

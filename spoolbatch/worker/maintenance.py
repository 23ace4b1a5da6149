"""The daemons' hourly clean-up: the same one `spoolbatch gc` runs, by one worker at a time.

Each worker looks every ``gc_interval`` seconds; the first to take the spool's gc lock
(``try_lock``, never waiting) and find the last run (``.gc.last``) older than the interval
runs it, so a spool with ten workers is still cleaned about once an interval. A failing
clean-up is logged and never takes the daemon down; a spool upgraded under a running
daemon to a newer format than it reads stops it (store/formatversion.py).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable

from spoolbatch.config import Config
from spoolbatch.errors import SpoolFormatError
from spoolbatch.store.cleanup import Policy, Report, collect
from spoolbatch.store.fsutil import atomic_write
from spoolbatch.store.spool import Spool


class Maintenance:
    """Runs the clean-up when it is due; ``maybe_run`` is called between chunks and when idle."""

    def __init__(self, spool: Spool, config: Config, log: Callable[[str], None]) -> None:
        self.spool = spool
        self.config = config
        self.log = log
        self.interval = config.gc_interval
        self._next = 0.0  # monotonic: the first look is at start-up

    def due(self, now: float | None = None) -> bool:
        """True when this worker should look (at most once an interval)."""
        return self.interval > 0 and (time.monotonic() if now is None else now) >= self._next

    def maybe_run(self) -> Report | None:
        """Clean the spool if no other worker did within the interval; the report, or None."""
        if not self.due():
            return None
        self._next = time.monotonic() + self.interval
        lock = self.spool.try_lock(self.spool.gc_lock)
        if lock is None:
            return None  # another worker is cleaning right now
        try:
            with contextlib.suppress(FileNotFoundError):
                if time.time() - os.stat(self.spool.gc_stamp).st_mtime < self.interval * 0.9:
                    return None
            self.spool.require()  # a newer format under us: SpoolFormatError stops the daemon
            started = time.monotonic()
            report = collect(self.spool, Policy.from_config(self.config))
            atomic_write(self.spool.gc_stamp, f"{time.time():.3f}\n".encode())
            if report.removed:
                counts = ", ".join(f"{n} {kind}" for kind, n in report.to_dict()["counts"].items())
                self.log(f"clean-up removed {counts}; freed {report.bytes_freed:,} bytes in "
                         f"{time.monotonic() - started:.2f}s")
            return report
        except SpoolFormatError:
            raise
        except Exception as exc:  # a clean-up is never worth the daemon
            self.log(f"clean-up failed, tried again in {self.interval:.0f}s: {exc.__class__.__name__}: {exc}")
            return None
        finally:
            lock.release()

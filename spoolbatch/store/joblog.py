"""Per-job log files (``logs/JOB.log``) that `spoolbatch logs` shows."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from spoolbatch.store.logfile import DEFAULT_KEEP, DEFAULT_MAX_BYTES, append_line


class JobLog:
    """Append timestamped lines to one job's log; the daemon's stderr gets them too.

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
        """Write one line."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime())
        line = f"{stamp} {message}\n"
        if self.path is not None:
            with contextlib.suppress(OSError):  # a log line is never worth losing a chunk over (a full disk)
                append_line(self.path, line.encode(), max_bytes=self.max_bytes, keep=self.keep)
        if self.echo:
            name = self.path.stem if self.path is not None else "daemon"
            os.write(2, f"spoolbatch[{os.getpid()}] {name}: {message}\n".encode())

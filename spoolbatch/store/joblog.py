"""Per-job log files (``logs/JOB.log``) that `spoolbatch logs` shows."""

from __future__ import annotations

import os
import time
from pathlib import Path


class JobLog:
    """Append timestamped lines to one job's log; the daemon's stderr gets them too."""

    def __init__(self, path: Path, echo: bool = True) -> None:
        self.path = path
        self.echo = echo

    def __call__(self, message: str) -> None:
        """Write one line."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime())
        line = f"{stamp} {message}\n"
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
        except OSError:
            pass  # a log line is never worth losing a chunk over (e.g. a full disk)
        if self.echo:
            os.write(2, f"spoolbatch[{os.getpid()}] {self.path.stem}: {message}\n".encode())

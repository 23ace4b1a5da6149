"""How much disk the spool uses, and how much its file system has free.

What the spool's files take is a walk of every file (a month of jobs is some 150,000), so it is
measured by the hourly clean-up (``measure``) and kept in ``.usage.json``; `status` shows that
figure with its age, and walks the spool itself only when no figure is younger than ``MAX_AGE``.
The free space is read from the file system every time.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from spoolbatch.store.fsutil import atomic_write
from spoolbatch.store.spool import Spool

Statvfs = Callable[[str], Any]  # os.statvfs, or a fake with f_bavail, f_blocks and f_frsize


def free_bytes(path: Path | str, statvfs: Statvfs = os.statvfs) -> int:
    """Bytes an unprivileged writer may still write on ``path``'s file system."""
    vfs = statvfs(str(path))
    return int(vfs.f_bavail) * int(vfs.f_frsize)


@dataclass(frozen=True, slots=True)
class DiskUsage:
    """The spool's own footprint beside its file system's free space."""

    used_bytes: int  # blocks allocated to the spool's files
    files: int
    free_bytes: int
    total_bytes: int
    measured_at: float | None = None  # when the spool's files were walked (used_bytes and files)

    def to_dict(self) -> dict[str, int]:
        """Plain JSON."""
        return asdict(self)


MAX_AGE = 2 * 3600.0  # a figure older than two clean-ups is measured again


def _walk(spool: Spool) -> tuple[int, int]:
    """Bytes allocated to the spool's files and how many there are (links never followed)."""
    used = files = 0
    for root, _dirs, names in os.walk(spool.root):
        for name in names:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(root, name))
                used += st.st_blocks * 512
                files += 1
    return used, files


def measure(spool: Spool, now: float | None = None) -> tuple[int, int]:
    """Walk the spool and keep the figure for `status` (the clean-up calls this); (bytes, files)."""
    used, files = _walk(spool)
    with contextlib.suppress(OSError):  # a reader that may not write the spool measures every time
        atomic_write(spool.usage_file, orjson.dumps({"used_bytes": used, "files": files,
                                                     "at": time.time() if now is None else now}), durable=False)
    return used, files


def spool_usage(spool: Spool, statvfs: Statvfs = os.statvfs, *, max_age: float = MAX_AGE,
                now: float | None = None) -> DiskUsage:
    """The spool's footprint (as last measured, walked now when that is older than ``max_age``) and
    its file system's figures."""
    now = time.time() if now is None else now
    try:
        kept = orjson.loads(spool.usage_file.read_bytes())
        used, files, at = int(kept["used_bytes"]), int(kept["files"]), float(kept["at"])
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        at = None
    if at is None or not 0 <= now - at <= max_age:
        (used, files), at = measure(spool, now), now
    vfs = statvfs(str(spool.root))
    return DiskUsage(used, files, int(vfs.f_bavail) * int(vfs.f_frsize), int(vfs.f_blocks) * int(vfs.f_frsize), at)

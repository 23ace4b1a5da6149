"""How much disk the spool uses, and how much its file system has free."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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

    def to_dict(self) -> dict[str, int]:
        """Plain JSON."""
        return asdict(self)


def spool_usage(spool: Spool, statvfs: Statvfs = os.statvfs) -> DiskUsage:
    """Walk the spool (never following links) and read its file system's figures."""
    used = files = 0
    for root, _dirs, names in os.walk(spool.root):
        for name in names:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(root, name))
                used += st.st_blocks * 512
                files += 1
    vfs = statvfs(str(spool.root))
    return DiskUsage(used, files, int(vfs.f_bavail) * int(vfs.f_frsize), int(vfs.f_blocks) * int(vfs.f_frsize))

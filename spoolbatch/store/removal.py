"""How the clean-up removes things: whole or not at all, measured, and reported.

The clean-up (store/cleanup.py) is one ``Pass`` over the spool that each sweep adds to: the
retention of jobs (store/retention.py), the clutter (store/clutter.py), and the sweeps that
live with their stores (batch records, uploads, the outbox). A sweep removes a job's files
under its job lock (``Pass.job_lock``), and a job's files in the order ``remove_whole`` keeps:
record to tombstone, files, tombstone. A dry run measures the same things and removes none.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from filelock import FileLock

from spoolbatch.config import Config
from spoolbatch.store.fsutil import fsync_dir
from spoolbatch.store.spool import Spool

DAY = 86400.0
# When a job expires instead of by the retention rule (None: by the rule); the batch record's
# output_expires_after is applied without one.
ExpiryHook = Callable[[Spool, str], float | None]


class Kind(StrEnum):
    """What a removed thing was."""

    JOB = "job"
    REJECTED = "rejected"
    GROUP = "group"
    BATCH = "batch"
    WEBHOOK = "webhook"
    UPLOAD = "upload"
    WORKER = "worker"
    TEMPORARY = "temporary"
    CHUNK_AREA = "chunk_area"
    LOCK = "lock"
    LOG = "log"


@dataclass(frozen=True, slots=True)
class Policy:
    """How long things are kept."""

    retention_seconds: float = 30 * DAY
    worker_grace_seconds: float = DAY
    temp_grace_seconds: float = DAY
    expiry: ExpiryHook | None = None

    @classmethod
    def from_config(cls, config: Config, older_than_days: float | None = None,
                    expiry: ExpiryHook | None = None) -> Policy:
        """The configured policy; ``older_than_days`` replaces ``retention_days`` (`gc --older-than`)."""
        days = config.retention_days if older_than_days is None else older_than_days
        return cls(days * DAY, config.worker_grace_seconds, config.temp_grace_seconds, expiry)


@dataclass(frozen=True, slots=True)
class Removed:
    """One thing removed (or, in a dry run, that would be)."""

    kind: Kind
    name: str
    files: int
    bytes: int
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON."""
        return {"kind": self.kind.value, "name": self.name, "files": self.files, "bytes": self.bytes,
                "detail": self.detail}


@dataclass(slots=True)
class Report:
    """What a clean-up removed."""

    dry_run: bool
    cutoff: float
    removed: list[Removed] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # jobs busy (locked) right now: the next run has them
    repaired: list[str] = field(default_factory=list)  # queued jobs whose cancel was killed halfway, now whole

    @property
    def bytes_freed(self) -> int:
        """Bytes of every file removed."""
        return sum(r.bytes for r in self.removed)

    def count(self, kind: Kind) -> int:
        """How many things of ``kind`` were removed."""
        return sum(1 for r in self.removed if r.kind == kind)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON for `gc --json`."""
        return {"dry_run": self.dry_run, "cutoff": self.cutoff, "bytes_freed": self.bytes_freed,
                "removed": [r.to_dict() for r in self.removed], "skipped": self.skipped,
                "repaired": self.repaired,
                "counts": {k.value: self.count(k) for k in Kind if self.count(k)}}


@dataclass(slots=True)
class Pass:
    """One clean-up of a spool as its sweeps share it: the policy, the clock, the report so far,
    and the jobs removed in this pass (``gone``: what was theirs goes too)."""

    spool: Spool
    policy: Policy
    now: float
    dry_run: bool = False
    report: Report = field(init=False)
    gone: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.report = Report(self.dry_run, self.now - self.policy.retention_seconds)

    @property
    def cutoff(self) -> float:
        """What was last touched before this is past the retention."""
        return self.report.cutoff

    def add(self, kind: Kind, name: str, files: int, size: int, detail: str = "") -> None:
        """Report one thing removed."""
        self.report.removed.append(Removed(kind, name, files, size, detail))

    @contextlib.contextmanager
    def job_lock(self, job: str) -> Iterator[bool]:
        """Hold ``job``'s lock (True), or yield False when a live process holds it.

        The lock file goes with the job: it is removed while held, as a finishing worker does.
        A dry run takes no lock (it would leave lock files behind).
        """
        if self.dry_run:
            yield True
            return
        lock: FileLock | None = self.spool.try_lock(self.spool.job_lock(job))
        if lock is None:
            yield False
            return
        try:
            yield True
            if not self.spool.input(job).exists():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.spool.job_lock(job))
        finally:
            lock.release()


def size_of(path: Path) -> int | None:
    """The bytes a path holds (a folder's files added up), or None when it is not there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(st.st_mode):
        total = 0
        for root, _dirs, files in os.walk(path):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(root, name)).st_size
        return total
    return st.st_size if stat.S_ISREG(st.st_mode) else 0


def measure(paths: list[Path]) -> tuple[int, int]:
    """(files there, their bytes)."""
    files = size = 0
    for p in paths:
        n = size_of(p)
        if n is not None:
            files += 1
            size += n
    return files, size


def remove(path: Path) -> None:
    """Remove a file, a link (never its target) or a folder (something odd a user dropped)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def remove_whole(record: Path, tombstone: Path, files: list[Path]) -> None:
    """Record to tombstone (the commit point), the files, then the tombstone; each step durable."""
    if record.exists():
        os.rename(record, tombstone)
        fsync_dir(tombstone.parent)
    dirs = set()
    for path in files:
        remove(path)
        dirs.add(path.parent)
    for d in sorted(dirs):
        with contextlib.suppress(FileNotFoundError):
            fsync_dir(d)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tombstone)
    fsync_dir(tombstone.parent)

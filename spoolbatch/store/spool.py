"""The spool directory: job ids, and claiming work with locks and renames.

``Spool(root)`` knows every path and lists the jobs in each folder (its ``Layout``, in
store/layout.py): no other module joins spool paths or reads job ids out of file names.
Claiming a new file is a global claim lock (held for milliseconds) around an atomic rename
from ``inbox/`` to ``active/``. After that, locks are short or per chunk: the job lock is held
only to set a job up, plan its chunks, merge committed parts and finish it, and each worker
holds the lock of the chunk it is answering (see ``workarea``). The kernel drops a lock when
its holder dies, which is how another worker knows it may take that chunk over.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from spoolbatch.errors import SpoolError
from spoolbatch.store import formatversion, jobindex
from spoolbatch.store.fsutil import fsync_dir
from spoolbatch.store.layout import RESERVED_JOB_IDS, InboxEntry, JobEntry, Layout, Stage, sanitize_job_id

OddHook = Callable[[InboxEntry, str], None]
__all__ = ["InboxClaim", "InboxEntry", "JobEntry", "OddHook", "Spool", "Stage", "sanitize_job_id"]


@dataclass(slots=True)
class InboxClaim:
    """A job just moved from the inbox to ``active/`` (``Spool.input``), its job lock held until ``release``."""

    job: str
    lock: FileLock
    original_name: str = ""  # its name in the inbox (``PROJECT/NAME`` in a project's folder)
    project: str | None = None  # the folder it came from (None: not from the inbox)

    def release(self) -> None:
        """Give up ownership (the lock file stays; locks are per open file, not per path)."""
        self.lock.release()


class Spool(Layout):
    """A spool root: its layout (``Layout``: every path, and the jobs each folder holds), and the
    operations that move files between its folders."""

    def init(self) -> None:
        """Create the layout (idempotent), private to the current user, and record its format.

        An existing spool of an older format is upgraded; one of a newer format is refused.
        """
        fresh = not self.exists()
        self.make_dirs()
        if fresh and not self.format_file.exists():
            formatversion.write_format(self, formatversion.FORMAT)
        else:
            formatversion.ensure_current(self)

    def make_dirs(self) -> None:
        """Create the root and any missing directory of the layout, private to the current user."""
        if all(path.is_dir() for path in (*self.dirs(), *self.api_dirs())):
            return
        old = os.umask(0o077)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            for path in (*self.dirs(), *self.api_dirs()):
                path.mkdir(exist_ok=True)
        finally:
            os.umask(old)

    def ensure_project_inbox(self, project: str | None) -> Path:
        """The inbox folder of ``project``, created (private) if it is missing."""
        folder = self.project_inbox(project)
        if not folder.is_dir():
            folder.mkdir(mode=0o700, exist_ok=True)
            fsync_dir(self.inbox)
        return folder

    def ensure_api_dirs(self) -> None:
        """Create the HTTP API's folders in a spool made before they existed (private, idempotent)."""
        for path in self.api_dirs():
            path.mkdir(mode=0o700, exist_ok=True)

    def exists(self) -> bool:
        """True when ``init`` has been run here (by this release or an older one)."""
        return all((self.root / name).is_dir() for name in formatversion.V1_DIRS)

    def require(self) -> None:
        """Raise a clear error unless this is a spool this release can use (upgrading an older one)."""
        if not self.exists():
            raise SpoolError(f"{self.root} is not a spool", hint=f"run `spoolbatch init --spool {self.root}`")
        formatversion.ensure_current(self)

    # --- job ids ---------------------------------------------------------------------------
    def job_exists(self, job: str, own_inbox_name: str | None = None) -> bool:
        """True when any file of ``job`` is anywhere in the spool (ids are never reused).

        ``own_inbox_name`` is the inbox file being claimed: it does not collide with itself.
        """
        for project, folder in ((None, self.inbox), *self.project_inboxes()):
            queued = folder / f"{job}.jsonl"
            name = queued.name if project is None else f"{project}/{queued.name}"
            if name != own_inbox_name and (queued.exists() or queued.is_symlink()):
                return True
        return any(
            p.exists() or p.is_symlink() for p in (self.input(job), self.checkpoint(job),
            self.rejected_file(job), self.rejected_reason(job), self.results(job), self.group(job),
            self.tombstone(job), self.rejected_tombstone(job),
        ))

    def unique_job_id(self, name: str, taken: set[str] | None = None, own_inbox_name: str | None = None) -> str:
        """The sanitised id for ``name``, with ``-2``, ``-3``... when it is already used."""
        base = sanitize_job_id(name)
        job, n = base, 1
        while job in RESERVED_JOB_IDS or self.job_exists(job, own_inbox_name) or (taken and job in taken):
            n += 1
            job = f"{base}-{n}"
        return job

    # --- inbox -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def claim_lock(self, timeout: float = 30.0) -> Iterator[None]:
        """Serialise claims between daemons; held only for a scan and a rename."""
        lock = FileLock(self._claim_lock, timeout=timeout, mode=0o600, preserve_lock_file=True)
        with lock:
            yield

    @staticmethod
    def try_lock(path: Path, wait: float = 0.0) -> FileLock | None:
        """Take the lock at ``path`` now (or within ``wait`` seconds), or None when a live process holds it."""
        lock = FileLock(path, timeout=wait, mode=0o600, thread_local=False, preserve_lock_file=True)
        try:
            lock.acquire()
        except Timeout:
            return None
        return lock

    @staticmethod
    def wait_lock(path: Path, timeout: float = 120.0) -> FileLock:
        """Take the lock at ``path``, waiting for its holder (held only for short sections)."""
        lock = FileLock(path, timeout=timeout, mode=0o600, thread_local=False, preserve_lock_file=True)
        lock.acquire()
        return lock

    def job_is_owned(self, job: str) -> bool:
        """True when a live worker holds ``job``'s lock or the lock of one of its chunks."""
        area = self.work_area(job)
        try:
            locks = [area / name for name in os.listdir(area) if name.endswith(".lock")]
        except FileNotFoundError:
            locks = []
        for path in (self.job_lock(job), *locks):
            lock = self.try_lock(path)
            if lock is None:
                return True
            lock.release()
        return False

    def claim_inbox(self, settle_seconds: float, now: float | None = None,
                    on_odd: OddHook | None = None, only: str | None = None) -> tuple[InboxClaim | None, int]:
        """Move the oldest settled inbox file (or the one named ``only``) to ``active/`` and return it
        with its job lock held.

        The caller sets the job up and releases the lock; from then on any worker may take
        chunks of it. Also returns how many inbox files are still settling, so that
        ``run --once`` waits for a file copied in just before it started. A symlink or
        special file is handed to ``on_odd`` (under the claim lock) with what it is.
        """
        now = time.time() if now is None else now
        settling = 0
        with self.claim_lock():
            # The one file asked for is looked at alone: an inbox of thousands is not listed for it.
            entries = self.inbox_entries() if only is None else [e for e in [self.inbox_entry(only)] if e]
            for entry in entries:
                try:
                    st = os.lstat(entry.path)
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(st.st_mode):
                    if on_odd is not None:
                        on_odd(entry, "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file")
                    continue
                if now - st.st_mtime < settle_seconds:
                    settling += 1
                    continue
                job = self.unique_job_id(entry.name, own_inbox_name=entry.name)
                lock = self.try_lock(self.job_lock(job))
                if lock is None:  # a job of that id is being finished right now: try later
                    continue
                before = self.inbox_folder_key(entry.path.parent)
                try:
                    os.rename(entry.path, self.input(job))
                except FileNotFoundError:
                    lock.release()
                    continue
                self.moved_out_of_inbox(entry, before)
                fsync_dir(self.active)
                fsync_dir(entry.path.parent)
                jobindex.taken(self, job, st.st_mtime, entry.project)
                return InboxClaim(job, lock, original_name=entry.name, project=entry.project), settling
        return None, settling

    # --- moves at the end of a job --------------------------------------------------------
    def reject_entry(self, entry: InboxEntry, job: str) -> bool:
        """Move an inbox entry to ``rejected/`` as ``job`` without following it; False when it is gone."""
        try:
            os.rename(entry.path, self.rejected_file(job))
        except FileNotFoundError:
            return False
        return True

    def reject_input(self, job: str) -> None:
        """Move a running job's input to ``rejected/``."""
        os.rename(self.input(job), self.rejected_file(job))
        fsync_dir(self.rejected)

    def archive_input(self, job: str) -> None:
        """Move a finished job's input to ``done/`` (a no-op when it is there already).

        Not made durable (no fsync of the folders): the final checkpoint already is, and an input a
        crash puts back in ``active/`` is a job a worker finishes again, this move included.
        """
        if self.input(job).exists():
            os.rename(self.input(job), self.archived_input(job))

    def drop_job_lock(self, job: str) -> None:
        """Remove the job lock file of a job whose input has left ``active/``.

        Safe while the caller holds it: with the input gone, no one takes the job to work again.
        """
        with contextlib.suppress(FileNotFoundError):
            self.job_lock(job).unlink()

    def clear_cancel(self, job: str) -> None:
        """Remove a served cancel request."""
        with contextlib.suppress(FileNotFoundError):
            self.cancel_marker(job).unlink()

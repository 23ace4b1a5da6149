"""The spool directory: its layout, job ids, and claiming work with locks and renames.

``Spool(root)`` knows every path; no other module joins spool paths by hand. Claiming a
new file is a global claim lock (held for milliseconds) around an atomic rename from
``inbox/`` to ``active/``. After that, locks are short or per chunk: the job lock is held
only to set a job up, plan its chunks, merge committed parts and finish it, and each worker
holds the lock of the chunk it is answering (see ``workarea``). The kernel drops a lock when
its holder dies, which is how another worker knows it may take that chunk over.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from spoolbatch.errors import SpoolError
from spoolbatch.store import formatversion
from spoolbatch.store.fsutil import fsync_dir, unique_suffix

IGNORED_SUFFIXES = (".tmp", ".part")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_ID_LEN = 100
OddHook = Callable[["InboxEntry", str], None]


def sanitize_job_id(name: str) -> str:
    """A job id from a file name: no path separators, no leading dots, safe characters only."""
    base = name.rsplit("/", 1)[-1]
    for suffix in (".jsonl", ".json", ".ndjson"):
        if base.lower().endswith(suffix):
            base = base[: -len(suffix)]
            break
    base = _UNSAFE.sub("_", base).lstrip("._-")[:MAX_ID_LEN].rstrip("._-")
    return base or "job"


def is_ignored(name: str) -> bool:
    """Dotfiles and temporary names are never jobs."""
    return name.startswith(".") or name.endswith(IGNORED_SUFFIXES)


@dataclass(slots=True)
class InboxClaim:
    """A job just moved from the inbox to ``active/`` (``Spool.input``), its job lock held until ``release``."""

    job: str
    lock: FileLock
    original_name: str = ""  # its name in the inbox

    def release(self) -> None:
        """Give up ownership (the lock file stays; locks are per open file, not per path)."""
        self.lock.release()


@dataclass(frozen=True, slots=True)
class InboxEntry:
    """One file waiting in the inbox."""

    name: str
    path: Path
    size: int
    mtime: float


class Spool:
    """Every path of a spool root, and the operations that move files between them."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.inbox = self.root / "inbox"
        self.active = self.root / "active"
        self.done = self.root / "done"
        self.deadletter = self.root / "deadletter"
        self.rejected = self.root / "rejected"
        self.logs = self.root / "logs"
        self.workers = self.root / "workers"
        self.control = self.root / "control"
        self.groups = self.root / "groups"
        self.files = self.root / "files"
        self.batches = self.root / "batches"
        self.outbox = self.root / "outbox"
        self.heartbeat = self.root / "heartbeat"
        self.format_file = self.root / "spool.json"
        self.gc_lock = self.root / ".gc.lock"
        self.gc_stamp = self.root / ".gc.last"
        self._claim_lock = self.root / ".claim.lock"

    # --- layout ---------------------------------------------------------------------------
    def dirs(self) -> tuple[Path, ...]:
        """The layout's directories."""
        return (self.inbox, self.active, self.done, self.deadletter, self.rejected, self.logs, self.workers,
                self.control, self.groups)

    def api_dirs(self) -> tuple[Path, ...]:
        """The HTTP API's own folders: uploaded files, batch records, the webhook outbox.

        `init` makes them; a spool made before they existed gets them from ``ensure_api_dirs``
        (they are not required).
        """
        return (self.files, self.batches, self.outbox)

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

    def queued_input(self, job: str) -> Path:
        """Where `submit` and the HTTP API place a new job in the inbox."""
        return self.inbox / f"{job}.jsonl"

    def input(self, job: str) -> Path:
        """The claimed input of a running job."""
        return self.active / f"{job}.jsonl"

    def job_lock(self, job: str) -> Path:
        """The lock held briefly to set ``job`` up, plan its chunks, merge them, finish it."""
        return self.active / f"{job}.lock"

    def work_area(self, job: str) -> Path:
        """``active/JOB.chunks/``: the chunk plan and parts not merged yet."""
        return self.active / f"{job}.chunks"

    def archived_input(self, job: str) -> Path:
        """Where a finished job's input is kept (for `retry` and audits)."""
        return self.done / f"{job}.input.jsonl"

    def results(self, job: str) -> Path:
        """OpenAI batch output lines of ``job``."""
        return self.done / f"{job}.results.jsonl"

    def checkpoint(self, job: str) -> Path:
        """The checkpoint sidecar of ``job``."""
        return self.done / f"{job}.checkpoint.json"

    def ids(self, job: str) -> Path:
        """The append-only file of custom_id hashes seen, for duplicate detection across chunks."""
        return self.done / f"{job}.ids"

    def deadletter_file(self, job: str) -> Path:
        """Bad records of ``job``."""
        return self.deadletter / f"{job}.jsonl"

    def rejected_file(self, job: str) -> Path:
        """A whole file that was refused."""
        return self.rejected / f"{job}.jsonl"

    def rejected_reason(self, job: str) -> Path:
        """Why a whole file was refused."""
        return self.rejected / f"{job}.reason.json"

    def log(self, job: str) -> Path:
        """The per-job log that `spoolbatch logs` shows (``JOB.log.1``... are its rotated parts)."""
        return self.logs / f"{job}.log"

    def daemon_log(self) -> Path:
        """The daemons' shared log."""
        return self.logs / "daemon.log"

    def tombstone(self, job: str) -> Path:
        """A finished job's checkpoint while the clean-up removes the job (the job is gone)."""
        return self.done / f"{job}.removing"

    def rejected_tombstone(self, job: str) -> Path:
        """A refused file's reason while the clean-up removes it (the file is gone)."""
        return self.rejected / f"{job}.removing"

    def cancel_marker(self, job: str) -> Path:
        """Present while a cancel of a running job is pending."""
        return self.control / f"{job}.cancel"

    def batch_record(self, job: str) -> Path:
        """The batch record of ``job`` (its API fields: window, metadata, input file)."""
        return self.batches / f"{job}.json"

    def file_content(self, file_id: str) -> Path:
        """The bytes of an uploaded file."""
        return self.files / f"{file_id}.jsonl"

    def file_meta(self, file_id: str) -> Path:
        """The record of an uploaded file; written last, so a file exists once it does."""
        return self.files / f"{file_id}.json"

    def file_upload_tmp(self) -> Path:
        """A fresh temporary name for an upload in progress (ignored, and swept when stale)."""
        return self.files / f".upload.{unique_suffix()}.tmp"

    def outbox_entry(self, name: str) -> Path:
        """One pending (or finished) webhook delivery."""
        return self.outbox / f"{name}.json"

    def outbox_lock(self, name: str) -> Path:
        """Held by the process sending ``name`` right now."""
        return self.outbox / f"{name}.lock"

    def group(self, name: str) -> Path:
        """The manifest of a group of jobs made by `submit --split`."""
        return self.groups / f"{name}.json"

    def worker_file(self, worker_id: str) -> Path:
        """One daemon's own heartbeat."""
        return self.workers / f"{worker_id}.json"

    def worker_metrics(self, worker_id: str) -> Path:
        """One daemon's Prometheus textfile (point node_exporter's textfile collector at ``workers/``)."""
        return self.workers / f"{worker_id}.prom"

    # --- job ids ---------------------------------------------------------------------------
    def job_exists(self, job: str, own_inbox_name: str | None = None) -> bool:
        """True when any file of ``job`` is anywhere in the spool (ids are never reused).

        ``own_inbox_name`` is the inbox file being claimed: it does not collide with itself.
        """
        queued = self.queued_input(job)
        return (queued.name != own_inbox_name and (queued.exists() or queued.is_symlink())) or any(
            p.exists() or p.is_symlink() for p in (self.input(job), self.checkpoint(job),
            self.rejected_file(job), self.rejected_reason(job), self.results(job), self.group(job),
            self.tombstone(job), self.rejected_tombstone(job),
        ))

    def unique_job_id(self, name: str, taken: set[str] | None = None, own_inbox_name: str | None = None) -> str:
        """The sanitised id for ``name``, with ``-2``, ``-3``... when it is already used."""
        base = sanitize_job_id(name)
        job, n = base, 1
        while self.job_exists(job, own_inbox_name) or (taken and job in taken):
            n += 1
            job = f"{base}-{n}"
        return job

    # --- inbox -----------------------------------------------------------------------------
    def inbox_entries(self) -> list[InboxEntry]:
        """Waiting files, oldest first; ignored names are left out, odd ones included."""
        entries = []
        try:
            with os.scandir(self.inbox) as it:
                for entry in it:
                    if is_ignored(entry.name):
                        continue
                    st = entry.stat(follow_symlinks=False)
                    entries.append(InboxEntry(entry.name, Path(entry.path), st.st_size, st.st_mtime))
        except FileNotFoundError:
            raise SpoolError(f"{self.inbox} is missing", hint="run `spoolbatch init`") from None
        entries.sort(key=lambda e: (e.mtime, e.name))
        return entries

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

    def running_jobs(self) -> list[str]:
        """Jobs whose input sits in ``active/``, owned or orphaned."""
        try:
            return sorted(p.name[: -len(".jsonl")] for p in self.active.iterdir()
                          if p.name.endswith(".jsonl") and not p.name.startswith("."))
        except FileNotFoundError:
            return []

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
                    on_odd: OddHook | None = None) -> tuple[InboxClaim | None, int]:
        """Move the oldest settled inbox file to ``active/`` and return it with its job lock held.

        The caller sets the job up and releases the lock; from then on any worker may take
        chunks of it. Also returns how many inbox files are still settling, so that
        ``run --once`` waits for a file copied in just before it started. A symlink or
        special file is handed to ``on_odd`` (under the claim lock) with what it is.
        """
        now = time.time() if now is None else now
        settling = 0
        with self.claim_lock():
            for entry in self.inbox_entries():
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
                try:
                    os.rename(entry.path, self.input(job))
                except FileNotFoundError:
                    lock.release()
                    continue
                fsync_dir(self.active)
                fsync_dir(self.inbox)
                return InboxClaim(job, lock, original_name=entry.name), settling
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
        """Move a finished job's input to ``done/`` (a no-op when it is there already)."""
        if self.input(job).exists():
            os.rename(self.input(job), self.archived_input(job))
            fsync_dir(self.done)
            fsync_dir(self.active)

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

"""Retention and clean-up: what `spoolbatch gc` and the daemons' hourly run remove.

*Expired jobs*: a job whose checkpoint is final (store/jobstate.FINAL) and finished before
the cutoff loses every file it has: archived input, results, ids, deadletter, logs, the
checkpoint; a refused file loses its reason and the file, by the reason's time; a
`submit --split` group record goes once none of its parts is left. A running, queued or
claimed job is never touched: its input is in ``inbox/`` or ``active/`` and it has no final
checkpoint.

*Whole or not at all.* Each job is removed under its job lock, in an order that a kill -9
at any instant leaves recognisable: first its record (the checkpoint, or the reason file)
is renamed to a tombstone, ``done/JOB.removing`` (from then on the job is gone: `list`
does not show it, and its id stays taken), then its files go, then the tombstone. A
clean-up that finds a tombstone finishes that removal first.

*Clutter*, as Maildir's clean-up of tmp/: heartbeat and metrics files of workers dead (or
stopped) for longer than a grace period; temporaries (``*.tmp``: the dot-files that atomic
writes and submit leave when killed) older than a grace period; chunk areas and job locks
that a finishing worker was killed before removing (no input in ``active/``, no lock held).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson
from filelock import FileLock

from spoolbatch.config import Config
from spoolbatch.store import files as uploads
from spoolbatch.store import outbox
from spoolbatch.store.batches import BatchRecord
from spoolbatch.store.checkpoint import Checkpoint
from spoolbatch.store.fsutil import count_lines, fsync_dir
from spoolbatch.store.jobstate import FINAL, JobState
from spoolbatch.store.liveness import Liveness, liveness
from spoolbatch.store.logfile import rotated_parts
from spoolbatch.store.spool import Spool

DAY = 86400.0
TOMBSTONE = ".removing"
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


# --- the files of a job ------------------------------------------------------------------------
def log_files(spool: Spool, job: str) -> list[Path]:
    """A job's log and its rotated parts."""
    return [spool.log(job), *rotated_parts(spool.log(job))]


def job_files(spool: Spool, job: str) -> list[Path]:
    """Every file a finished job leaves besides its checkpoint, in the order the clean-up removes them.

    A new per-job file (a batch record of the HTTP API, say) belongs in this list.
    """
    return [spool.results(job), spool.deadletter_file(job), spool.ids(job), spool.archived_input(job),
            spool.cancel_marker(job), *log_files(spool, job), spool.batch_record(job)]


def rejected_files(spool: Spool, job: str) -> list[Path]:
    """What a refused file leaves besides its reason."""
    return [spool.rejected_file(job), *log_files(spool, job), spool.batch_record(job)]


def _size(path: Path) -> int | None:
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


def _measure(paths: list[Path]) -> tuple[int, int]:
    """(files there, their bytes)."""
    files = size = 0
    for p in paths:
        n = _size(p)
        if n is not None:
            files += 1
            size += n
    return files, size


def _unlink(path: Path) -> None:
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


@contextlib.contextmanager
def _job_lock(spool: Spool, job: str, dry_run: bool) -> Iterator[bool]:
    """Hold ``job``'s lock (True), or yield False when a live process holds it.

    The lock file goes with the job: it is removed while held, as a finishing worker does.
    A dry run takes no lock (it would leave lock files behind).
    """
    if dry_run:
        yield True
        return
    lock: FileLock | None = spool.try_lock(spool.job_lock(job))
    if lock is None:
        yield False
        return
    try:
        yield True
        if not spool.input(job).exists():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(spool.job_lock(job))
    finally:
        lock.release()


def _remove_whole(record: Path, tombstone: Path, files: list[Path]) -> None:
    """Record to tombstone (the commit point), the files, then the tombstone; each step durable."""
    if record.exists():
        os.rename(record, tombstone)
        fsync_dir(tombstone.parent)
    dirs = set()
    for path in files:
        _unlink(path)
        dirs.add(path.parent)
    for d in sorted(dirs):
        with contextlib.suppress(FileNotFoundError):
            fsync_dir(d)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tombstone)
    fsync_dir(tombstone.parent)


# --- the clean-up ------------------------------------------------------------------------------
class Cleanup:
    """One pass over a spool; ``run`` does it all and returns the report."""

    def __init__(self, spool: Spool, policy: Policy, *, now: float | None = None, dry_run: bool = False) -> None:
        self.spool = spool
        self.policy = policy
        self.now = time.time() if now is None else now
        self.dry_run = dry_run
        self.report = Report(dry_run, self.now - policy.retention_seconds)
        self._gone: set[str] = set()

    def run(self) -> Report:
        """Finish interrupted removals, remove expired jobs, then clutter."""
        self.finish_interrupted()
        self.finish_cancels()
        self.expired_jobs()
        self.rejected()
        self.groups()
        self.batches()
        self.uploads()
        self.webhooks()
        self.workers()
        self.temporaries()
        self.orphans()
        self.logs()
        return self.report

    def _add(self, kind: Kind, name: str, files: int, size: int, detail: str = "") -> None:
        self.report.removed.append(Removed(kind, name, files, size, detail))

    # --- jobs ----------------------------------------------------------------------------------
    def finish_interrupted(self) -> None:
        """Complete the removals a killed clean-up left (a tombstone is there)."""
        for folder, files_of in ((self.spool.done, job_files), (self.spool.rejected, rejected_files)):
            for path in sorted(folder.glob(f"*{TOMBSTONE}")):
                job = path.name[: -len(TOMBSTONE)]
                with _job_lock(self.spool, job, self.dry_run) as held:
                    if not held:
                        self.report.skipped.append(job)
                        continue
                    files = files_of(self.spool, job)
                    n, size = _measure([path, *files])
                    if not self.dry_run:
                        _remove_whole(path, path, files)
                    self._gone.add(job)
                    kind = Kind.JOB if folder == self.spool.done else Kind.REJECTED
                    self._add(kind, job, n, size, "finished an interrupted removal")

    def finish_cancels(self) -> None:
        """Give a checkpoint to an archived input that has none: a queued job's cancel killed between
        moving its file out of the inbox and writing its record (commands.control). It shows as the
        cancelled job it was meant to be, and retention then treats it as any other."""
        suffix = self.spool.archived_input("").name
        with self.spool.claim_lock():  # a cancel in progress holds it: what is left now was left by a crash
            for path in sorted(self.spool.done.glob(f"*{suffix}")):
                job = path.name[: -len(suffix)]
                if (self.spool.checkpoint(job).exists() or (self.spool.done / f"{job}{TOMBSTONE}").exists()
                        or self.spool.input(job).exists()):
                    continue
                if not self.dry_run:
                    mtime = path.stat().st_mtime
                    Checkpoint(job=job, status=JobState.CANCELLED, input_name=f"{job}.jsonl",
                               total_lines=count_lines(path)[1], created_at=mtime, finished_at=mtime,
                               message="cancelled while queued").save(self.spool.checkpoint(job))
                self.report.repaired.append(job)

    def _expires_at(self, job: str, ckpt: Checkpoint, mtime: float) -> float:
        """When the job's files go: its batch's ``output_expires_after`` (counted from when its output was
        whole, the job's end) where the API set one, else ``retention_days`` after the end."""
        finished = ckpt.finished_at or ckpt.updated_at or mtime
        if self.policy.expiry is not None and (hooked := self.policy.expiry(self.spool, job)) is not None:
            return hooked
        with contextlib.suppress(OSError, TypeError, ValueError, AttributeError):
            record = BatchRecord.load(self.spool, job)
            after = record.output_expires_after if record is not None else None
            if after and after.get("seconds") is not None:
                return finished + float(after["seconds"])
        return finished + self.policy.retention_seconds

    def _expired(self, job: str) -> Checkpoint | None:
        """The checkpoint of ``job`` when it is final and past its expiry (and not running again)."""
        path = self.spool.checkpoint(job)
        try:
            mtime = path.stat().st_mtime
            ckpt = Checkpoint.load(path)
        except (OSError, orjson.JSONDecodeError, ValueError, TypeError):
            return None
        if ckpt is None or ckpt.status not in FINAL or self.spool.input(job).exists():
            return None  # running, or a worker was killed finishing it: the next merge finishes it
        return ckpt if self._expires_at(job, ckpt, mtime) <= self.now else None

    def expired_jobs(self) -> None:
        """Remove every final job past its expiry, whole."""
        suffix = ".checkpoint.json"
        for path in sorted(self.spool.done.glob(f"*{suffix}")):
            job = path.name[: -len(suffix)]
            if self._expired(job) is None:
                continue
            with _job_lock(self.spool, job, self.dry_run) as held:
                if not held:
                    self.report.skipped.append(job)
                    continue
                ckpt = self._expired(job)  # again, under the lock
                if ckpt is None:
                    continue
                files = job_files(self.spool, job)
                n, size = _measure([path, *files])
                if not self.dry_run:
                    _remove_whole(path, self.spool.tombstone(job), files)
                self._gone.add(job)
                when = time.strftime("%Y-%m-%d %H:%M", time.localtime(ckpt.finished_at or ckpt.updated_at or 0))
                self._add(Kind.JOB, job, n, size, f"{ckpt.status.value} {when}")

    def rejected(self) -> None:
        """Remove refused files whose refusal is past the retention, with their reasons and logs."""
        suffix = ".reason.json"
        cutoff = self.report.cutoff
        for path in sorted(self.spool.rejected.glob(f"*{suffix}")):
            job = path.name[: -len(suffix)]
            if self._rejected_at(path) > cutoff:
                continue
            with _job_lock(self.spool, job, self.dry_run) as held:
                if not held or not path.exists():
                    continue
                files = rejected_files(self.spool, job)
                n, size = _measure([path, *files])
                if not self.dry_run:
                    _remove_whole(path, self.spool.rejected_tombstone(job), files)
                self._gone.add(job)
                self._add(Kind.REJECTED, job, n, size)
        # A refused file whose reason was never written (killed between the two): by when it came.
        for path in sorted(self.spool.rejected.glob("*.jsonl")):
            job = path.name[: -len(".jsonl")]
            if job in self._gone or self.spool.rejected_reason(job).exists():
                continue
            with contextlib.suppress(FileNotFoundError):
                if os.lstat(path).st_ctime <= cutoff:  # ctime: the rename into rejected/
                    n, size = _measure([path])
                    if not self.dry_run:
                        _unlink(path)
                    self._add(Kind.REJECTED, job, n, size, "no reason file")

    @staticmethod
    def _rejected_at(path: Path) -> float:
        try:
            at = orjson.loads(path.read_bytes()).get("at")
            if isinstance(at, int | float):
                return float(at)
        except (OSError, orjson.JSONDecodeError, AttributeError):
            pass
        try:
            return path.stat().st_mtime
        except FileNotFoundError:
            return float("inf")

    def groups(self) -> None:
        """Remove group records none of whose parts is left (under the claim lock, as submit writes them)."""
        cutoff = self.report.cutoff
        with self.spool.claim_lock():
            for path in sorted(self.spool.groups.glob("*.json")):
                try:
                    if path.stat().st_mtime > cutoff:
                        continue
                    parts = [str(j) for j in orjson.loads(path.read_bytes())["jobs"]]
                except (OSError, orjson.JSONDecodeError, KeyError, TypeError):
                    continue
                if any(j not in self._gone and self.spool.job_exists(j) for j in parts):
                    continue
                n, size = _measure([path])
                if not self.dry_run:
                    _unlink(path)
                    fsync_dir(self.spool.groups)
                self._add(Kind.GROUP, path.name[: -len(".json")], n, size, f"{len(parts)} parts, all gone")

    def batches(self) -> None:
        """Batch records of jobs that never got placed or are gone, older than the retention."""
        for path in sorted(self.spool.batches.glob("*.json")):
            job = path.name[: -len(".json")]
            if job in self._gone or self.spool.job_exists(job):
                continue
            try:
                created = float(orjson.loads(path.read_bytes()).get("created_at") or 0) or path.stat().st_mtime
            except (OSError, orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
                continue
            if created > self.report.cutoff:
                continue
            with _job_lock(self.spool, job, self.dry_run) as held:
                if not held or self.spool.job_exists(job):
                    continue
                n, size = _measure([path])
                if not self.dry_run:
                    _unlink(path)
                self._add(Kind.BATCH, job, n, size, "its job is gone")

    def uploads(self) -> None:
        """Uploaded files (the Files API) older than the retention that no remaining batch reads."""
        sp = self.spool
        used = set()
        for path in sp.batches.glob("*.json"):
            job = path.name[: -len(".json")]
            if job in self._gone:
                continue
            with contextlib.suppress(OSError, orjson.JSONDecodeError, AttributeError):
                used.add(orjson.loads(path.read_bytes()).get("input_file_id"))
        for record in uploads.list_files(sp):
            if record.id in used or record.created_at > self.report.cutoff:
                continue
            files = [sp.file_meta(record.id), sp.file_content(record.id)]
            n, size = _measure(files)
            if not self.dry_run:
                uploads.delete(sp, record.id)
            self._add(Kind.UPLOAD, record.id, n, size, record.filename)
        if not self.dry_run:
            with contextlib.suppress(OSError):
                if swept := uploads.sweep(sp, self.now):
                    self._add(Kind.TEMPORARY, "files/", swept, 0, "uploads a killed server left")

    def webhooks(self) -> None:
        """Outbox entries delivered (or given up) whose job is gone; a pending one stays until it is sent."""
        sp = self.spool
        for path in sorted(sp.outbox.glob("*.json")):
            name = path.name[: -len(".json")]
            entry = outbox.Delivery.load(sp, name)
            if entry is None or entry.state == outbox.DeliveryState.PENDING:
                continue
            if entry.job not in self._gone and sp.job_exists(entry.job):
                continue
            lock = sp.try_lock(sp.outbox_lock(name)) if not self.dry_run else None
            if lock is None and not self.dry_run:
                continue  # a sender holds it
            try:
                n, size = _measure([path])
                if not self.dry_run:
                    _unlink(path)
                    _unlink(sp.outbox_lock(name))
                self._add(Kind.WEBHOOK, name, n, size, f"{entry.state.value}, job {entry.job} is gone")
            finally:
                if lock is not None:
                    lock.release()

    # --- clutter -------------------------------------------------------------------------------
    def workers(self) -> None:
        """Heartbeat and metrics files of workers dead or stopped for longer than the grace period."""
        grace = self.policy.worker_grace_seconds
        beats = set()
        for path in sorted(self.spool.workers.glob("*.json")):
            worker = path.name[: -len(".json")]
            beats.add(worker)
            try:
                beat = orjson.loads(path.read_bytes())
                last = float(beat.get("last_seen") or path.stat().st_mtime)
            except (OSError, orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
                continue
            if self.now - last <= grace or liveness(beat, self.now) not in (Liveness.DEAD, Liveness.STOPPED):
                continue
            files = [path, self.spool.worker_metrics(worker)]
            n, size = _measure(files)
            if not self.dry_run:
                for f in files:
                    _unlink(f)
            self._add(Kind.WORKER, worker, n, size, str(beat.get("state") or ""))
        for path in sorted(self.spool.workers.glob("*.prom")):  # metrics of a worker whose beat is gone
            worker = path.name[: -len(".prom")]
            with contextlib.suppress(FileNotFoundError):
                if worker not in beats and self.now - path.stat().st_mtime > grace:
                    n, size = _measure([path])
                    if not self.dry_run:
                        _unlink(path)
                    self._add(Kind.WORKER, worker, n, size, "metrics only")

    def _folders(self) -> list[Path]:
        folders = [self.spool.root, *self.spool.dirs(), *self.spool.api_dirs()]
        with contextlib.suppress(FileNotFoundError), os.scandir(self.spool.active) as it:
            # never a link someone put there: the clean-up does not follow links out of the spool
            folders += sorted(Path(e.path) for e in it
                              if e.name.endswith(".chunks") and e.is_dir(follow_symlinks=False))
        return folders

    def temporaries(self) -> None:
        """``*.tmp`` files older than the grace period: what a write killed midway left."""
        cutoff = self.now - self.policy.temp_grace_seconds
        for folder in self._folders():
            try:
                entries = list(os.scandir(folder))
            except FileNotFoundError:
                continue
            for entry in entries:
                if not entry.name.endswith(".tmp"):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    st = entry.stat(follow_symlinks=False)
                    if stat.S_ISDIR(st.st_mode) or st.st_mtime > cutoff:
                        continue
                    if not self.dry_run:
                        os.unlink(entry.path)
                    self._add(Kind.TEMPORARY, str(Path(entry.path).relative_to(self.spool.root)), 1,
                              st.st_size if stat.S_ISREG(st.st_mode) else 0)

    def orphans(self) -> None:
        """Chunk areas and job locks of jobs no longer in ``active/`` (a worker killed finishing it)."""
        sp = self.spool
        try:
            names = sorted(os.listdir(sp.active))
        except FileNotFoundError:
            return
        running = set(sp.running_jobs())
        for name in names:
            if name.endswith(".chunks"):
                job, kind = name[: -len(".chunks")], Kind.CHUNK_AREA
                with contextlib.suppress(FileNotFoundError):
                    if not stat.S_ISDIR(os.lstat(sp.active / name).st_mode):
                        continue  # not a work area the daemon made: left alone
            elif name.endswith(".lock"):
                job, kind = name[: -len(".lock")], Kind.LOCK
                # A claim makes the lock just before moving the input in: only an old one is an orphan.
                with contextlib.suppress(FileNotFoundError):
                    if os.lstat(sp.active / name).st_mtime > self.now - self.policy.temp_grace_seconds:
                        continue
            else:
                continue
            if job in running or (kind == Kind.LOCK and (sp.active / f"{job}.chunks").exists()):
                continue
            path = sp.active / name
            with _job_lock(sp, job, self.dry_run) as held:
                if not held or sp.input(job).exists() or (kind == Kind.CHUNK_AREA and self._chunk_held(path)):
                    continue
                n, size = _measure([path])
                if n and not self.dry_run and kind == Kind.CHUNK_AREA:
                    _unlink(path)
                    fsync_dir(sp.active)
                if n:  # a lock file goes when _job_lock lets go of it
                    self._add(kind, job, n, size)

    def logs(self) -> None:
        """Logs of jobs that no longer exist at all, older than the retention (the daemon log stays)."""
        sp = self.spool
        daemon = sp.daemon_log()
        for path in sorted(sp.logs.glob("*.log")):
            job = path.name[: -len(".log")]
            if path == daemon or job in self._gone or sp.job_exists(job):
                continue
            files = log_files(sp, job)
            with contextlib.suppress(FileNotFoundError):
                if max((os.lstat(p).st_mtime for p in files if p.exists()), default=0.0) > self.report.cutoff:
                    continue
            with _job_lock(sp, job, self.dry_run) as held:
                if not held or sp.job_exists(job):
                    continue
                n, size = _measure(files)
                if not self.dry_run:
                    for f in files:
                        _unlink(f)
                self._add(Kind.LOG, job, n, size, "its job is gone")

    def _chunk_held(self, area: Path) -> bool:
        """True when a live worker holds a chunk lock in ``area``."""
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(area):
                if name.endswith(".lock"):
                    lock = self.spool.try_lock(area / name)
                    if lock is None:
                        return True
                    lock.release()
        return False


def collect(spool: Spool, policy: Policy, *, now: float | None = None, dry_run: bool = False) -> Report:
    """Remove what has expired and the spool's clutter; what was removed (or would be, ``dry_run``)."""
    return Cleanup(spool, policy, now=now, dry_run=dry_run).run()


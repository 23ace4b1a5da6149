"""Retention: the jobs, refused files, groups and logs whose time is up.

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
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import orjson

from spoolbatch.store.batches import BatchRecord
from spoolbatch.store.checkpoint import Checkpoint
from spoolbatch.store.fsutil import count_lines, fsync_dir
from spoolbatch.store.jobstate import FINAL, JobState
from spoolbatch.store.logfile import rotated_parts
from spoolbatch.store.rejections import Rejection
from spoolbatch.store.removal import Kind, Pass, measure, remove, remove_whole
from spoolbatch.store.spool import Spool, Stage


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


# --- jobs ----------------------------------------------------------------------------------------
def finish_interrupted(p: Pass) -> None:
    """Complete the removals a killed clean-up left (a tombstone is there)."""
    for stage, files_of, kind in ((Stage.REMOVING, job_files, Kind.JOB),
                                  (Stage.REMOVING_REFUSED, rejected_files, Kind.REJECTED)):
        for entry in p.spool.jobs(stage):
            job = entry.job
            with p.job_lock(job) as held:
                if not held:
                    p.report.skipped.append(job)
                    continue
                files = files_of(p.spool, job)
                n, size = measure([entry.path, *files])
                if not p.dry_run:
                    remove_whole(entry.path, entry.path, files)
                p.gone.add(job)
                p.add(kind, job, n, size, "finished an interrupted removal")


def finish_cancels(p: Pass) -> None:
    """Give a checkpoint to an archived input that has none: a queued job's cancel killed between
    moving its file out of the inbox and writing its record (commands.control). It shows as the
    cancelled job it was meant to be, and retention then treats it as any other."""
    sp = p.spool
    with sp.claim_lock():  # a cancel in progress holds it: what is left now was left by a crash
        for entry in sp.jobs(Stage.ARCHIVED):
            job = entry.job
            if sp.checkpoint(job).exists() or sp.tombstone(job).exists() or sp.input(job).exists():
                continue
            if not p.dry_run:
                mtime = entry.stat().st_mtime
                Checkpoint(job=job, status=JobState.CANCELLED, input_name=f"{job}.jsonl",
                           total_lines=count_lines(entry.path)[1], created_at=mtime, finished_at=mtime,
                           message="cancelled while queued").save(sp.checkpoint(job))
            p.report.repaired.append(job)


def _expires_at(p: Pass, job: str, ckpt: Checkpoint, mtime: float) -> float:
    """When the job's files go: its batch's ``output_expires_after`` (counted from when its output was
    whole, the job's end) where the API set one, else ``retention_days`` after the end."""
    finished = ckpt.finished_at or ckpt.updated_at or mtime
    if p.policy.expiry is not None and (hooked := p.policy.expiry(p.spool, job)) is not None:
        return hooked
    with contextlib.suppress(OSError, TypeError, ValueError, AttributeError):
        record = BatchRecord.load(p.spool, job)
        after = record.output_expires_after if record is not None else None
        if after and after.get("seconds") is not None:
            return finished + float(after["seconds"])
    return finished + p.policy.retention_seconds


def _expired(p: Pass, job: str) -> Checkpoint | None:
    """The checkpoint of ``job`` when it is final and past its expiry (and not running again)."""
    path = p.spool.checkpoint(job)
    try:
        mtime = path.stat().st_mtime
        ckpt = Checkpoint.load(path)
    except (OSError, orjson.JSONDecodeError, ValueError, TypeError):
        return None
    if ckpt is None or ckpt.status not in FINAL or p.spool.input(job).exists():
        return None  # running, or a worker was killed finishing it: the next merge finishes it
    return ckpt if _expires_at(p, job, ckpt, mtime) <= p.now else None


def expired_jobs(p: Pass) -> None:
    """Remove every final job past its expiry, whole."""
    for entry in p.spool.jobs(Stage.CHECKPOINTED):
        job = entry.job
        if _expired(p, job) is None:
            continue
        with p.job_lock(job) as held:
            if not held:
                p.report.skipped.append(job)
                continue
            ckpt = _expired(p, job)  # again, under the lock
            if ckpt is None:
                continue
            files = job_files(p.spool, job)
            n, size = measure([entry.path, *files])
            if not p.dry_run:
                remove_whole(entry.path, p.spool.tombstone(job), files)
            p.gone.add(job)
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(ckpt.finished_at or ckpt.updated_at or 0))
            p.add(Kind.JOB, job, n, size, f"{ckpt.status.value} {when}")


def _rejected_at(p: Pass, job: str, path: Path) -> float:
    rejection = Rejection.load(p.spool, job)
    if rejection is not None and rejection.at is not None:
        return rejection.at
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")


def rejected(p: Pass) -> None:
    """Remove refused files whose refusal is past the retention, with their reasons and logs."""
    sp = p.spool
    for entry in sp.jobs(Stage.REJECTED):
        job = entry.job
        if _rejected_at(p, job, entry.path) > p.cutoff:
            continue
        with p.job_lock(job) as held:
            if not held or not entry.path.exists():
                continue
            files = rejected_files(sp, job)
            n, size = measure([entry.path, *files])
            if not p.dry_run:
                remove_whole(entry.path, sp.rejected_tombstone(job), files)
            p.gone.add(job)
            p.add(Kind.REJECTED, job, n, size)
    # A refused file whose reason was never written (killed between the two): by when it came.
    for entry in sp.jobs(Stage.REFUSED):
        job = entry.job
        if job in p.gone or sp.rejected_reason(job).exists():
            continue
        with contextlib.suppress(FileNotFoundError):
            if entry.stat().st_ctime <= p.cutoff:  # ctime: the rename into rejected/
                n, size = measure([entry.path])
                if not p.dry_run:
                    remove(entry.path)
                p.add(Kind.REJECTED, job, n, size, "no reason file")


def groups(p: Pass) -> None:
    """Remove group records none of whose parts is left (under the claim lock, as submit writes them)."""
    sp = p.spool
    with sp.claim_lock():
        for name in sp.names(sp.group):
            path = sp.group(name)
            try:
                if path.stat().st_mtime > p.cutoff:
                    continue
                parts = [str(j) for j in orjson.loads(path.read_bytes())["jobs"]]
            except (OSError, orjson.JSONDecodeError, KeyError, TypeError):
                continue
            if any(j not in p.gone and sp.job_exists(j) for j in parts):
                continue
            n, size = measure([path])
            if not p.dry_run:
                remove(path)
                fsync_dir(sp.groups)
            p.add(Kind.GROUP, name, n, size, f"{len(parts)} parts, all gone")


def logs(p: Pass) -> None:
    """Logs of jobs that no longer exist at all, older than the retention (the daemon and audit logs stay)."""
    sp = p.spool
    own = (sp.daemon_log(), sp.audit_log())
    for job in sp.names(sp.log):
        if sp.log(job) in own or job in p.gone or sp.job_exists(job):
            continue
        files = log_files(sp, job)
        with contextlib.suppress(FileNotFoundError):
            if max((os.lstat(f).st_mtime for f in files if f.exists()), default=0.0) > p.cutoff:
                continue
        with p.job_lock(job) as held:
            if not held or sp.job_exists(job):
                continue
            n, size = measure(files)
            if not p.dry_run:
                for f in files:
                    remove(f)
            p.add(Kind.LOG, job, n, size, "its job is gone")

"""Clutter, as Maildir's clean-up of tmp/: what dead processes left that no job owns.

Heartbeat, metrics and GPU history files of workers dead (or stopped) for longer than a grace period;
temporaries (``*.tmp``: the dot-files that atomic writes and submit leave when killed) older
than a grace period; chunk areas and job locks that a finishing worker was killed before
removing (no input in ``active/``, no lock held).
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from spoolbatch.store.fsutil import fsync_dir
from spoolbatch.store.heartbeat_record import Heartbeat
from spoolbatch.store.liveness import Liveness, liveness
from spoolbatch.store.removal import Kind, Pass, measure, remove
from spoolbatch.store.spool import Spool


def workers(p: Pass) -> None:
    """Heartbeat, metrics and GPU history files of workers dead or stopped for longer than the grace period."""
    sp = p.spool
    grace = p.policy.worker_grace_seconds
    beats = sp.names(sp.worker_file)
    for worker in beats:
        path = sp.worker_file(worker)
        beat = Heartbeat.load(path)
        if beat is None:
            continue
        try:
            last = beat.last_seen or path.stat().st_mtime
        except OSError:
            continue
        if p.now - last <= grace or liveness(beat, p.now) not in (Liveness.DEAD, Liveness.STOPPED):
            continue
        files = [path, sp.worker_metrics(worker), sp.gpu_history(worker)]
        n, size = measure(files)
        if not p.dry_run:
            for f in files:
                remove(f)
        p.add(Kind.WORKER, worker, n, size, beat.state.value)
    for path_of, what in ((sp.worker_metrics, "metrics only"), (sp.gpu_history, "GPU history only")):
        for worker in sp.names(path_of):  # a worker whose beat is gone
            path = path_of(worker)
            with contextlib.suppress(FileNotFoundError):
                if worker not in beats and p.now - path.stat().st_mtime > grace:
                    n, size = measure([path])
                    if not p.dry_run:
                        remove(path)
                    p.add(Kind.WORKER, worker, n, size, what)


def _is_dir(path: Path) -> bool:
    """A folder itself, never a link to one: the clean-up does not follow links out of the spool."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _folders(spool: Spool) -> list[Path]:
    areas = [spool.work_area(job) for job in spool.names(spool.work_area)]
    return [spool.root, *spool.dirs(), *(folder for _, folder in spool.project_inboxes()), *spool.api_dirs(),
            *(area for area in areas if _is_dir(area))]


def temporaries(p: Pass) -> None:
    """``*.tmp`` files older than the grace period: what a write killed midway left."""
    cutoff = p.now - p.policy.temp_grace_seconds
    for folder in _folders(p.spool):
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
                if not p.dry_run:
                    os.unlink(entry.path)
                p.add(Kind.TEMPORARY, str(Path(entry.path).relative_to(p.spool.root)), 1,
                      st.st_size if stat.S_ISREG(st.st_mode) else 0)


def orphans(p: Pass) -> None:
    """Chunk areas and job locks of jobs no longer in ``active/`` (a worker killed finishing it)."""
    sp = p.spool
    running = set(sp.running_jobs())
    found = sorted([(sp.work_area(job), job, Kind.CHUNK_AREA) for job in sp.names(sp.work_area)]
                   + [(sp.job_lock(job), job, Kind.LOCK) for job in sp.names(sp.job_lock)])
    for path, job, kind in found:
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(path)
            if kind == Kind.CHUNK_AREA and not stat.S_ISDIR(st.st_mode):
                continue  # not a work area the daemon made: left alone
            # A claim makes the lock just before moving the input in: only an old one is an orphan.
            if kind == Kind.LOCK and st.st_mtime > p.now - p.policy.temp_grace_seconds:
                continue
        if job in running or (kind == Kind.LOCK and sp.work_area(job).exists()):
            continue
        with p.job_lock(job) as held:
            if not held or sp.input(job).exists() or (kind == Kind.CHUNK_AREA and _chunk_held(sp, path)):
                continue
            n, size = measure([path])
            if n and not p.dry_run and kind == Kind.CHUNK_AREA:
                remove(path)
                fsync_dir(sp.active)
            if n:  # a lock file goes when the job lock lets go of it
                p.add(kind, job, n, size)


def _chunk_held(spool: Spool, area: Path) -> bool:
    """True when a live worker holds a chunk lock in ``area``."""
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(area):
            if name.endswith(".lock"):
                lock = spool.try_lock(area / name)
                if lock is None:
                    return True
                lock.release()
    return False

"""The spool's layout: every path of a job and of the spool, and the names each folder holds.

``Layout`` knows where each file of a job lives (``done/JOB.checkpoint.json``...) and, the other
way round, which jobs a folder holds: ``jobs(Stage.CHECKPOINTED)`` lists them, as
``mailbox.Maildir`` lists its messages, so no other module slices a suffix off a file name.
``Spool`` (store/spool.py) is this layout with the operations that move files between folders.

A job id is what ``sanitize_job_id`` makes of a file name: ``JOB_ID`` is its one pattern,
which the batch ids (``batch_JOB``) and file ids (``file-output-JOB``) of the API embed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO

from spoolbatch.config import DEFAULT_PROJECT, is_project_name
from spoolbatch.errors import SpoolError
from spoolbatch.store.fsutil import unique_suffix

IGNORED_SUFFIXES = (".tmp", ".part")
INBOX_REUSE_SECONDS = 1.0  # how long an unchanged inbox's listing is given again (``Layout.inbox_entries``)
MAX_ID_LEN = 100
JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # what ids look like; ``is_job_id`` is the full test
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# Ids whose job log would be one of the spool's own logs (logs/daemon.log, logs/audit.log): never given out.
RESERVED_JOB_IDS = frozenset({"daemon", "audit"})


def sanitize_job_id(name: str) -> str:
    """A job id from a file name: no path separators, no leading dots, safe characters only."""
    base = name.rsplit("/", 1)[-1]
    for suffix in (".jsonl", ".json", ".ndjson"):
        if base.lower().endswith(suffix):
            base = base[: -len(suffix)]
            break
    base = _UNSAFE.sub("_", base).lstrip("._-")[:MAX_ID_LEN].rstrip("._-")
    return base or "job"


def is_job_id(text: str) -> bool:
    """True when ``text`` is a job id as the spool makes them (never a path, never a name to clean)."""
    return JOB_ID.fullmatch(text) is not None and sanitize_job_id(text) == text


def is_ignored(name: str) -> bool:
    """Dotfiles and temporary names are never jobs."""
    return name.startswith(".") or name.endswith(IGNORED_SUFFIXES)


@dataclass(frozen=True, slots=True)
class InboxEntry:
    """One file waiting in the inbox: ``inbox/NAME`` (project ``default``) or ``inbox/PROJECT/NAME``."""

    name: str  # its path under inbox/: ``NAME`` or ``PROJECT/NAME``
    path: Path
    size: int
    mtime: float
    project: str = DEFAULT_PROJECT  # the folder it waits in


@dataclass(frozen=True, slots=True)
class _InboxListing:
    """The inbox as listed: its folders' keys (``inbox/`` first, then each project's), when, what."""

    keys: tuple[tuple[int, int], ...]
    at: float  # time.monotonic()
    entries: list[InboxEntry]
    folders: list[tuple[str, Path]]


def _folder_keys(folders: list[Path]) -> tuple[tuple[int, int], ...]:
    """Each folder's (modification time in ns, inode); (0, 0) for one that is not there."""
    keys = []
    for folder in folders:
        try:
            st = os.stat(folder)
        except (FileNotFoundError, NotADirectoryError):
            keys.append((0, 0))
        else:
            keys.append((st.st_mtime_ns, st.st_ino))
    return tuple(keys)


class Stage(StrEnum):
    """Where a job's files say it is; its checkpoint's status (``JobState``) says the rest."""

    QUEUED = "queued"  # inbox/NAME: waiting (its job id is the name made safe, ``sanitize_job_id``)
    ACTIVE = "active"  # active/JOB.jsonl: claimed or running
    CHECKPOINTED = "checkpointed"  # done/JOB.checkpoint.json: running or ended, as the checkpoint says
    ARCHIVED = "archived"  # done/JOB.input.jsonl: the input of a job that ended
    REFUSED = "refused"  # rejected/JOB.jsonl: a file refused whole
    REJECTED = "rejected"  # rejected/JOB.reason.json: why it was refused; the job is rejected once it is there
    REMOVING = "removing"  # done/JOB.removing: a job whose files the clean-up is removing (it is gone)
    REMOVING_REFUSED = "removing_refused"  # rejected/JOB.removing: the same for a refused file


@dataclass(slots=True)  # not frozen: made once per file of each listing, and a frozen one costs 3x to make
class JobEntry:
    """One job found in one stage, and the file that says so (``where``, its path)."""

    job: str
    stage: Stage
    where: str
    # The listing's own entry: its stat is one call and cached (a spool holds a month of jobs).
    dirent: os.DirEntry[str] | None = field(default=None, compare=False, repr=False)

    @property
    def path(self) -> Path:
        """The file's path."""
        return Path(self.where)

    @property
    def name(self) -> str:
        """The file's name in its folder."""
        return os.path.basename(self.where)

    def stat(self) -> os.stat_result:
        """The file's own status (a link is not followed)."""
        return self.dirent.stat(follow_symlinks=False) if self.dirent is not None else os.lstat(self.where)


class Layout:
    """Every path of a spool root, and the names its folders hold."""

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
        self._listing: _InboxListing | None = None  # the inbox as last listed (``inbox_entries``)
        self.job_index = self.root / "jobs.index"  # the order of the jobs workers took (store/jobindex.py)
        self.job_index_lock = self.root / ".jobs.index.lock"
        self.usage_file = self.root / ".usage.json"  # what the spool's files take, as last measured
        self.usage_days_file = self.root / ".usage-days.json"  # the last days' usage of ended jobs (usagedays)
        self._claim_lock = self.root / ".claim.lock"

    # --- folders ---------------------------------------------------------------------------
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

    def project_inbox(self, project: str | None) -> Path:
        """Where a project's jobs wait: ``inbox/PROJECT/``, and plain ``inbox/`` for ``default``."""
        if project is None or project == DEFAULT_PROJECT:
            return self.inbox
        if not is_project_name(project):
            raise SpoolError(f"{project[:80]!r} is not a project name (letters, digits, '-' and '_')")
        return self.inbox / project

    def project_inboxes(self) -> list[tuple[str, Path]]:
        """(project, folder) of each project folder in the inbox, by name (a link is not one)."""
        listing = self._listing
        if listing is not None and time.monotonic() - listing.at < INBOX_REUSE_SECONDS \
                and listing.keys[0] == self.inbox_folder_key(self.inbox):  # no folder came or went
            return sorted(listing.folders)
        found = []
        with contextlib.suppress(FileNotFoundError), os.scandir(self.inbox) as it:
            for entry in it:
                if is_project_name(entry.name) and entry.is_dir(follow_symlinks=False):
                    found.append((entry.name, Path(entry.path)))
        return sorted(found)

    # --- the files of a job ----------------------------------------------------------------
    def queued_input(self, job: str, project: str | None = None) -> Path:
        """Where `submit` and the HTTP API place a new job in the inbox (its project's folder)."""
        return self.project_inbox(project) / f"{job}.jsonl"

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
        """Why a whole file was refused (store/rejections.py: a ``Rejection``)."""
        return self.rejected / f"{job}.reason.json"

    def log(self, job: str) -> Path:
        """The per-job log that `spoolbatch logs` shows (``JOB.log.1``... are its rotated parts)."""
        return self.logs / f"{job}.log"

    def daemon_log(self) -> Path:
        """The daemons' shared log."""
        return self.logs / "daemon.log"

    def audit_log(self) -> Path:
        """The server's audit trail (store/audit.py): every change and every refused key."""
        return self.logs / "audit.log"

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

    # --- the spool's other files -----------------------------------------------------------
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

    def gpu_history(self, worker_id: str) -> Path:
        """One daemon's GPU readings, thinned with age (store/gpuhistory.py)."""
        return self.workers / f"{worker_id}.gpu.jsonl"

    # --- listing -----------------------------------------------------------------------------
    def names(self, path_of: Callable[[str], Path]) -> list[str]:
        """The names N for which ``path_of(N)`` is in its folder, in file-name order: a path method read backwards.

        ``names(spool.batch_record)`` are the jobs with a batch record, ``names(spool.worker_file)``
        the workers with a heartbeat. Dotfiles and temporaries are never names; a missing folder has none.
        """
        cut, found = self._scan(path_of)
        return [name[:-cut] for name, _entry in found]

    @staticmethod
    def _scan(path_of: Callable[[str], Path]) -> tuple[int, list[tuple[str, os.DirEntry[str]]]]:
        """The suffix's length, and (file name, directory entry) of each name ``names`` gives, in order."""
        probe = path_of("")
        suffix, cut = probe.name, len(probe.name)
        try:
            with os.scandir(probe.parent) as it:
                # A name that ends in a suffix of the layout never ends as a temporary does: a dot first is enough.
                found = [(entry.name, entry) for entry in it
                         if entry.name.endswith(suffix) and entry.name[0] != "." and len(entry.name) > cut]
        except (FileNotFoundError, NotADirectoryError):
            return cut, []
        found.sort()  # by file name, which is unique in a folder: entries themselves are never compared
        return cut, found

    def jobs(self, stage: Stage) -> Iterator[JobEntry]:
        """The jobs in ``stage``: queued ones oldest first (odd files too), the others in file-name order."""
        if stage == Stage.QUEUED:
            for queued in self.inbox_entries():
                yield JobEntry(sanitize_job_id(queued.name), stage, str(queued.path))
            return
        cut, found = self._scan(self._stage_paths()[stage])
        for name, entry in found:
            yield JobEntry(name[:-cut], stage, entry.path, entry)

    def _stage_paths(self) -> dict[Stage, Callable[[str], Path]]:
        return {Stage.ACTIVE: self.input, Stage.CHECKPOINTED: self.checkpoint, Stage.ARCHIVED: self.archived_input,
                Stage.REFUSED: self.rejected_file, Stage.REJECTED: self.rejected_reason,
                Stage.REMOVING: self.tombstone, Stage.REMOVING_REFUSED: self.rejected_tombstone}

    def running_jobs(self) -> list[str]:
        """Jobs whose input sits in ``active/``, owned or orphaned."""
        return [entry.job for entry in self.jobs(Stage.ACTIVE)]

    def inbox_entries(self) -> list[InboxEntry]:
        """Waiting files, oldest first, in ``inbox/`` and its project folders (``inbox/PROJECT/``, one
        level); ignored names are left out, odd ones included (a folder that is no project's too).

        A daemon lists the inbox before every chunk, so a listing is kept and given again while no
        folder of the inbox changed (a stat of each says: its modification time and inode) and for
        ``INBOX_REUSE_SECONDS`` at most. Its sizes and times are as listed: whoever claims a file
        reads its own again.
        """
        listing = self._listing
        if listing is not None and time.monotonic() - listing.at < INBOX_REUSE_SECONDS \
                and listing.keys == _folder_keys([self.inbox, *(path for _p, path in listing.folders)]):
            return list(listing.entries)
        entries: list[InboxEntry] = []
        folders: list[tuple[str, Path]] = []
        keys = list(_folder_keys([self.inbox]))  # each read before its folder's scan: a change during it shows
        try:
            self._scan_inbox(self.inbox, DEFAULT_PROJECT, "", entries, folders, keys)
        except FileNotFoundError:
            raise SpoolError(f"{self.inbox} is missing", hint="run `spoolbatch init`") from None
        entries.sort(key=lambda e: (e.mtime, e.name))
        self._listing = _InboxListing(tuple(keys), time.monotonic(), entries, folders)
        return list(entries)

    def inbox_entry(self, name: str) -> InboxEntry | None:
        """The waiting file ``name`` (``NAME`` or ``PROJECT/NAME``, as ``inbox_entries`` names them), or None:
        one stat, however many files wait."""
        project, _, base = name.rpartition("/")
        if (project and not is_project_name(project)) or not base or is_ignored(base):
            return None
        path = (self.inbox / project if project else self.inbox) / base
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return InboxEntry(name, path, st.st_size, st.st_mtime, project or DEFAULT_PROJECT)

    def inbox_folder_key(self, folder: Path) -> tuple[int, int]:
        """What says an inbox folder changed: its modification time and inode."""
        return _folder_keys([folder])[0]

    def moved_out_of_inbox(self, entry: InboxEntry, before: tuple[int, int]) -> None:
        """This process moved ``entry`` out of its folder, whose key was ``before``: the kept listing drops
        it without a scan, unless something else had changed the folder."""
        listing, folder = self._listing, entry.path.parent
        self._listing = None
        if listing is None:
            return
        paths = [self.inbox, *(path for _p, path in listing.folders)]
        if folder not in paths or listing.keys[paths.index(folder)] != before:
            return
        keys = list(listing.keys)
        keys[paths.index(folder)] = self.inbox_folder_key(folder)
        self._listing = _InboxListing(tuple(keys), listing.at, [e for e in listing.entries if e.path != entry.path],
                                      listing.folders)

    def _scan_inbox(self, folder: Path, project: str, prefix: str, entries: list[InboxEntry],
                    folders: list[tuple[str, Path]], keys: list[tuple[int, int]]) -> None:
        with os.scandir(folder) as it:
            for entry in it:
                if is_ignored(entry.name):
                    continue
                if not prefix and is_project_name(entry.name) and entry.is_dir(follow_symlinks=False):
                    folders.append((entry.name, Path(entry.path)))
                    keys.append(self.inbox_folder_key(Path(entry.path)))
                    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                        self._scan_inbox(Path(entry.path), entry.name, entry.name + "/", entries, folders, keys)
                    continue
                with contextlib.suppress(FileNotFoundError):
                    st = entry.stat(follow_symlinks=False)
                    entries.append(InboxEntry(prefix + entry.name, Path(entry.path), st.st_size, st.st_mtime,
                                              project))

    def queued_entry(self, job: str) -> InboxEntry | None:
        """The inbox file that will become ``job``, if it is queued."""
        for entry in self.inbox_entries():
            if sanitize_job_id(entry.name) == job:
                return entry
        return None

    # --- where a job's input is now ---------------------------------------------------------
    def _input_places(self, job: str) -> Iterator[Path]:
        # done/ before and after active/: a worker moves it from active/ to done/ as the job ends.
        yield self.archived_input(job)
        yield self.input(job)
        yield self.archived_input(job)
        with contextlib.suppress(SpoolError):
            if (entry := self.queued_entry(job)) is not None:
                yield entry.path

    def current_input(self, job: str) -> Path | None:
        """Where ``job``'s input is now: archived in ``done/`` once it ended, in ``active/`` while it
        runs, its file in the inbox while queued; None when it has none (refused, removed, a link)."""
        for path in self._input_places(job):
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISREG(os.lstat(path).st_mode):
                    return path
        return None

    def open_input(self, job: str) -> BinaryIO | None:
        """``job``'s input opened for reading wherever it is now (a move between looking and opening is
        followed), or None; never through a link."""
        for path in self._input_places(job):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # a fifo must not block
            except FileNotFoundError:
                continue
            except OSError as exc:
                if exc.errno == errno.ELOOP:  # a link
                    continue
                raise
            if stat.S_ISREG(os.fstat(fd).st_mode):
                return os.fdopen(fd, "rb")
            os.close(fd)
        return None

"""The spool's own order of its jobs: ``jobs.index``, a line per job in the order workers took them.

A spool keeps a month of finished jobs, and what people ask for is a page of them, newest first,
or how many ended in each state: neither may read a month of checkpoints. The index is the
order: a worker appends a job's line when it takes the file from the inbox (``taken``), rewrites
the line's head in place when the job ends (``ended``), and the clean-up marks it removed and
drops it a day later (``JobIndex.reconcile``), so an ``after`` cursor naming a job removed
meanwhile still finds its place. Every line is ``WIDTH`` bytes::

    S CREATED______ FINISHED_____ PROJECT (right-aligned, 64) JOB (right-aligned, 100)

``S`` is the job's state in one character (``.`` while it runs, a final state's letter once it
ended, ``-`` once removed), the times are Unix seconds (``FINISHED`` the end, or the removal for
``-``), the project is the one whose folder the file came from (``default``: plain ``inbox/``). Fixed-width
lines make an end or a removal a 30-byte write in place, the states of every job one strided
slice (``data[::WIDTH]``), and a line torn by a crash a line that is skipped, not one that shifts
the rest.

It is a cache of what the job files say, never the truth: written without fsync, it may lose a
line to a power cut or to a worker of an older release, and ``reconcile`` (run by the hourly
clean-up, and by the first reader or writer of a spool that has no index yet) puts back what the
files say, in order of creation. Readers read the file without a lock and check each job they
show against its own files; writers hold ``.jobs.index.lock`` for a read and a write.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field, replace

import orjson

from spoolbatch.config import DEFAULT_PROJECT
from spoolbatch.store.fsutil import FILE_MODE, atomic_write
from spoolbatch.store.jobstate import FINAL, JobState
from spoolbatch.store.layout import MAX_ID_LEN, InboxEntry, Layout, Stage, sanitize_job_id

OPEN = "."  # taken, not ended: where it is and how far it got are in active/ and its checkpoint
REMOVED = "-"  # removed by the clean-up; its line stays a day for cursors (``TOMBSTONE_SECONDS``)
CODES: dict[JobState, str] = {JobState.COMPLETED: "C", JobState.FAILED: "F", JobState.CANCELLED: "X",
                              JobState.EXPIRED: "E", JobState.REJECTED: "R"}
STATES: dict[str, JobState] = {code: state for state, code in CODES.items()}
TOMBSTONE_SECONDS = 86400.0
MAX_PROJECT_LEN = 64  # config.PROJECT_NAME
_TIME = 13  # "%13.2f": Unix seconds to the year 2286
_HEAD = 2 * _TIME + 4  # "S " + created + " " + finished + " "
_JOB_AT = _HEAD + MAX_PROJECT_LEN + 1
WIDTH = _JOB_AT + MAX_ID_LEN + 1  # the head, the project and the job id right-aligned, a newline
_TAIL_LINES = 512  # what a writer reads first to find a recent job's line
_BLOCK_LINES = 256  # what a reader of pages reads at a time, from the end
_VALID_CODES = OPEN + REMOVED + "".join(CODES.values())
_VALID = frozenset(_VALID_CODES.encode())
_FINALS = "".join(CODES.values()).encode()


def _stamp(when: float | None) -> bytes:
    return b"%13.2f" % min(max(when or 0.0, 0.0), 9_999_999_999.99)


@dataclass(frozen=True, slots=True)
class Entry:
    """One job's line: its id, its state's code, when it was created and ended (or went), its project."""

    job: str
    code: str
    created: float
    finished: float | None = None
    project: str | None = None
    at: int = field(default=0, compare=False)  # the line's offset in what it was read from

    @property
    def state(self) -> JobState | None:
        """Its final state, or None while it runs (and once it is removed)."""
        return STATES.get(self.code)

    @property
    def removed(self) -> bool:
        """True once the clean-up removed it."""
        return self.code == REMOVED

    def line(self) -> bytes:
        """The line that says this."""
        return b"%s %s %s %*s %*s\n" % (self.code.encode(), _stamp(self.created), _stamp(self.finished),
                                        MAX_PROJECT_LEN, (self.project or DEFAULT_PROJECT).encode(), MAX_ID_LEN,
                                        self.job.encode())


def _parse(data: bytes, start: int) -> Entry | None:
    """The entry of the line at ``start``, or None when it is not one (torn by a crash, zeroed)."""
    line = data[start:start + WIDTH]
    if len(line) != WIDTH or line[0] not in _VALID or line[-1] != 10 or line[1] != 32 \
            or line[_TIME + 2] != 32 or line[_HEAD - 1] != 32 or line[_JOB_AT - 1] != 32:
        return None
    try:
        created = float(line[2:_TIME + 2])
        finished = float(line[_TIME + 3:_HEAD - 1])
        project = line[_HEAD:_JOB_AT - 1].lstrip(b" ").decode()
        job = line[_JOB_AT:-1].lstrip(b" ").decode()
    except (ValueError, UnicodeDecodeError):
        return None
    return Entry(job, chr(line[0]), created, finished or None, project or None, start) if job else None


class IndexView:
    """One reading of the index: its bytes, and what they say (no lock held, nothing written)."""

    def __init__(self, data: bytes) -> None:
        self.data = data[:len(data) - len(data) % WIDTH]  # a line still being appended is left out

    def __len__(self) -> int:
        return len(self.data) // WIDTH

    def find(self, job: str) -> Entry | None:
        """The last line of ``job`` (a removed job's too), or None when the index has none."""
        needle = b" " + job.encode() + b"\n"
        end = len(self.data)
        while (hit := self.data.rfind(needle, 0, end)) >= 0:
            start = hit + len(needle) - WIDTH
            if start % WIDTH == 0 and (entry := _parse(self.data, start)) is not None and entry.job == job:
                return entry
            end = hit + len(needle) - 1  # not a whole line's job: look further back
        return None

    def _of(self, project: str | None) -> Callable[[int], bool]:
        """Whether the line at an offset is ``project``'s (any line's, for None)."""
        if project is None:
            return lambda _start: True
        padded = b"%*s " % (MAX_PROJECT_LEN, project.encode())
        return lambda start: self.data.startswith(padded, start + _HEAD)

    def newest_first(self, after: str | None = None, project: str | None = None,
                     codes: Collection[str] | None = None) -> Iterator[Entry]:
        """The jobs that are not removed (of ``project``, in a state of ``codes``), last taken first; with
        ``after``, those after its line (a removed job's line still marks its place). Nothing when
        ``after`` has no line."""
        end = len(self.data)
        if after is not None:
            found = self.find(after)
            if found is None:
                return
            end = found.at
        mine = self._of(project)
        wanted = {ord(c) for c in (codes if codes is not None else _VALID_CODES)} - {ord(REMOVED)}
        for start in range(end - WIDTH, -1, -WIDTH):
            if self.data[start] in wanted and mine(start) and (entry := _parse(self.data, start)) is not None:
                yield entry

    def entries(self) -> Iterator[Entry]:
        """Every line, in file order (removed jobs' too)."""
        for start in range(0, len(self.data), WIDTH):
            if (entry := _parse(self.data, start)) is not None:
                yield entry

    def counts(self, project: str | None = None) -> dict[str, int]:
        """Jobs by state code (of ``project``): ``.`` running, ``-`` removed, the final states' letters."""
        codes = self.data[::WIDTH]
        if project is not None:
            mine = self._of(project)
            codes = bytes(code for i, code in enumerate(codes) if mine(i * WIDTH))
        return {code: codes.count(code.encode()) for code in (OPEN, REMOVED, *CODES.values())}

    def open_entries(self) -> list[Entry]:
        """The lines of jobs that had not ended when last written (a handful: the running ones)."""
        codes, found, at = self.data[::WIDTH], [], 0
        while (at := codes.find(OPEN.encode(), at)) >= 0:
            if (entry := _parse(self.data, at * WIDTH)) is not None:
                found.append(entry)
            at += 1
        return found

    def ended_since(self, when: float) -> list[str]:
        """The jobs that ended at ``when`` or later, in file order: a scan of states and end times (fixed-width
        numbers compare as their bytes do), no line parsed whole."""
        data, codes, floor = self.data, self.data[::WIDTH], _stamp(when)
        return [data[at + _JOB_AT:at + WIDTH - 1].lstrip(b" ").decode(errors="replace")
                for i, code in enumerate(codes) if code in _FINALS
                and data[(at := i * WIDTH) + _TIME + 3:at + _HEAD - 1] >= floor]

    def last_ended(self, n: int, project: str | None = None) -> list[Entry]:
        """The ``n`` jobs (of ``project``) that ended last, the latest first: a scan of states and end times
        from the last line back (lines come about in the order jobs end, so few displace the first n)."""
        data, codes, mine = self.data, self.data[::WIDTH], self._of(project)
        best: list[tuple[bytes, int]] = []  # the n latest ends so far, the earliest of them first
        for i in range(len(codes) - 1, -1, -1):
            if codes[i] not in _FINALS:
                continue
            end = data[i * WIDTH + _TIME + 3:i * WIDTH + _HEAD - 1]
            if len(best) == n and end <= best[0][0] or not mine(i * WIDTH):
                continue
            if len(best) < n:
                heapq.heappush(best, (end, i))
            else:
                heapq.heapreplace(best, (end, i))
        return [entry for _end, i in sorted(best, reverse=True) if (entry := _parse(data, i * WIDTH)) is not None]


@dataclass(slots=True)
class Repair:
    """What ``reconcile`` changed: jobs added back, ends recorded, removals marked, lines dropped."""

    added: list[str] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    dropped: int = 0  # removals older than a day
    duplicates: int = 0

    @property
    def changed(self) -> bool:
        """True when the index is rewritten."""
        return bool(self.added or self.ended or self.removed or self.dropped or self.duplicates)


# What a job's files say, as an entry (state code, created, finished, project); None: it has none now.
Truth = Callable[[str], Entry | None]


class JobIndex:
    """The index file of a spool: appended, rewritten in place, and repaired under its own lock."""

    def __init__(self, spool: Layout) -> None:
        self.spool = spool
        self.path = spool.job_index
        self.lock_path = spool.job_index_lock

    # --- reading ------------------------------------------------------------------------------
    def read(self) -> IndexView:
        """The index as it is now; an empty one when there is none."""
        try:
            with open(self.path, "rb") as f:
                return IndexView(f.read())
        except FileNotFoundError:
            return IndexView(b"")

    def view(self) -> IndexView:
        """The index, built first when the spool has none yet (a spool of an older release); a reader
        that may not write the spool gets one built in memory."""
        if not self.ensure():
            return IndexView(b"".join(e.line() for e in self._repaired(IndexView(b""), time.time())[0]))
        return self.read()

    def ensure(self) -> bool:
        """Build the index when the spool has none yet; False when this reader may not write it."""
        if not self.path.exists():
            try:
                self.reconcile()
            except PermissionError:
                return False
        return True

    def _blocks(self) -> Iterator[IndexView]:
        """The index read from its end, ``_BLOCK_LINES`` lines at a time (the newest first)."""
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - closed below, a generator
        except FileNotFoundError:
            return
        with f:
            end = os.fstat(f.fileno()).st_size
            end -= end % WIDTH
            while end > 0:
                start = max(0, end - _BLOCK_LINES * WIDTH)
                yield IndexView(os.pread(f.fileno(), end - start, start))
                end = start

    def newest_first(self, after: str | None = None, project: str | None = None,
                     codes: Collection[str] | None = None) -> Iterator[Entry]:
        """``IndexView.newest_first`` read from the file's end a block at a time: a first page reads the
        newest lines only, a page after ``after`` the lines from its place back."""
        found = after is None
        for block in self._blocks():
            if not found:
                if block.find(after) is None:  # type: ignore[arg-type]
                    continue
                found = True
                yield from block.newest_first(after, project, codes)
            else:
                yield from block.newest_first(None, project, codes)

    def have(self, jobs: Collection[str]) -> set[str]:
        """Those of ``jobs`` that have a line not removed (looked for among the newest lines first)."""
        left, found = set(jobs), set()
        for block in self._blocks():
            if not left:
                break
            for job in list(left):
                if (entry := block.find(job)) is not None:
                    left.discard(job)
                    if not entry.removed:
                        found.add(job)
        return found

    # --- writing ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self, build: bool = True) -> Iterator[int]:
        """The index open for writing, its lock held; an empty one (new: a spool of an older release
        may hold a month of jobs) is built from the job files first, unless ``build`` is False."""
        import fcntl

        lock = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
            try:
                if build and not os.fstat(fd).st_size:
                    os.pwrite(fd, b"".join(e.line() for e in self._repaired(IndexView(b""), time.time())[0]), 0)
                yield fd
            finally:
                os.close(fd)
        finally:
            os.close(lock)  # closing it drops the lock

    @staticmethod
    def _view(fd: int) -> IndexView:
        size = os.fstat(fd).st_size
        return IndexView(os.pread(fd, size, 0) if size else b"")

    @classmethod
    def _last_line(cls, fd: int, job: str) -> Entry | None:
        """``job``'s last line, looked for among the newest lines first (a job ends soon after it is taken)."""
        size = os.fstat(fd).st_size
        size -= size % WIDTH
        tail = min(size, _TAIL_LINES * WIDTH)
        if tail < size:
            found = IndexView(os.pread(fd, tail, size - tail)).find(job)
            if found is not None:
                return replace(found, at=found.at + size - tail)
        return cls._view(fd).find(job)

    @staticmethod
    def _append(fd: int, entry: Entry) -> None:
        size = os.fstat(fd).st_size
        os.pwrite(fd, entry.line(), size - size % WIDTH)  # over a line a crash tore, if any

    @staticmethod
    def _rewrite_head(fd: int, entry: Entry) -> None:
        os.pwrite(fd, entry.line()[:_HEAD], entry.at)

    def add(self, job: str, created: float | None = None, state: JobState | None = None,
            finished: float | None = None, project: str | None = None) -> None:
        """Give ``job`` its line (running, or ended in ``state``), unless it has one that is not removed (whose
        project ``project`` corrects: a line the index's first build gave it before its folder was known)."""
        now = time.time()
        with self._locked() as fd:
            known = self._last_line(fd, job)
            if known is not None and not known.removed:
                if project and known.project != project:
                    os.pwrite(fd, replace(known, project=project).line(), known.at)
                return
            self._append(fd, Entry(job, CODES[state] if state is not None else OPEN, created or now,
                                   finished or (now if state is not None else None), self._project_of(job, project)))

    def ended(self, job: str, state: JobState, finished: float | None = None, created: float | None = None,
              project: str | None = None) -> None:
        """Record that ``job`` ended in ``state`` (a line is added when it has none)."""
        finished = time.time() if finished is None else finished
        with self._locked() as fd:
            known = self._last_line(fd, job)
            if known is None or known.removed:
                self._append(fd, Entry(job, CODES[state], created or finished, finished,
                                       self._project_of(job, project)))
            elif known.code != CODES[state] or known.finished is None:
                self._rewrite_head(fd, replace(known, code=CODES[state], finished=finished))

    def removed(self, jobs: Iterable[str], now: float | None = None) -> None:
        """Mark ``jobs`` removed (their lines stay a day, for cursors)."""
        wanted = set(jobs)
        if not wanted:
            return
        now = time.time() if now is None else now
        with self._locked() as fd:
            view = self._view(fd)
            for job in wanted:
                if (entry := view.find(job)) is not None and not entry.removed:
                    self._rewrite_head(fd, replace(entry, code=REMOVED, finished=now))

    def reconcile(self, now: float | None = None, truth: Truth | None = None) -> Repair:
        """Make the index say what the spool's files say: jobs missing from it added in order of
        creation, ends it missed recorded, jobs gone marked removed, removals older than a day and
        repeated lines dropped. Written only when something changed. ``truth``: for tests."""
        now = time.time() if now is None else now
        with self._locked(build=False) as fd:
            entries, repair = self._repaired(self._view(fd), now, truth)
            if repair.changed or not os.fstat(fd).st_size:
                atomic_write(self.path, b"".join(e.line() for e in entries), durable=False)
        return repair

    def _repaired(self, view: IndexView, now: float, truth: Truth | None = None) -> tuple[list[Entry], Repair]:
        """The lines ``reconcile`` writes for ``view``, and what changed."""
        live = self._live_jobs()
        truth = truth or (lambda job: self._truth(job, live))
        repair = Repair()
        kept: list[Entry] = []
        last: dict[str, Entry] = {}  # job -> its last line kept
        for entry in view.entries():
            if entry.removed and now - (entry.finished or 0.0) > TOMBSTONE_SECONDS:
                repair.dropped += 1
                continue
            if entry.job in last and not last[entry.job].removed:
                repair.duplicates += 1  # one line per job: the first stays, where it was taken
                continue
            if entry.job not in live[0] and not entry.removed:
                entry = replace(entry, code=REMOVED, finished=now)
                repair.removed.append(entry.job)
            elif entry.code == OPEN and entry.job in live[0] and (told := truth(entry.job)) is not None \
                    and told.code != OPEN:
                entry = replace(entry, code=told.code, finished=told.finished)
                repair.ended.append(entry.job)
            last[entry.job] = entry
            kept.append(entry)
        missing = []
        for job in sorted(live[0] - {e.job for e in kept if not e.removed}):
            if (told := truth(job)) is not None:
                missing.append(told)
                repair.added.append(job)
        missing.sort(key=lambda e: (e.created, e.job))
        out, i = [], 0
        for entry in kept:  # merged by creation time: the index's own order stays as it was
            while i < len(missing) and missing[i].created < entry.created:
                out.append(missing[i])
                i += 1
            out.append(entry)
        out.extend(missing[i:])
        return out, repair

    def _live_jobs(self) -> tuple[set[str], set[str], set[str]]:
        """(every job the spool's files hold now, queued ones aside; those running; those refused)."""
        sp = self.spool
        running = {entry.job for entry in sp.jobs(Stage.ACTIVE)}
        refused = {entry.job for entry in sp.jobs(Stage.REJECTED)}
        return running | refused | {entry.job for entry in sp.jobs(Stage.CHECKPOINTED)}, running, refused

    def _truth(self, job: str, live: tuple[set[str], set[str], set[str]]) -> Entry | None:
        """``job`` as its files say it is (its reason file, else its checkpoint, else its input)."""
        from spoolbatch.store.checkpoint import Checkpoint

        sp = self.spool
        _all, running, refused = live
        with contextlib.suppress(OSError, orjson.JSONDecodeError, ValueError, TypeError):
            if job in refused:
                data = orjson.loads(sp.rejected_reason(job).read_bytes())
                at = data.get("at") if isinstance(data, dict) else None
                when = float(at) if isinstance(at, int | float) else sp.rejected_reason(job).stat().st_mtime
                return Entry(job, CODES[JobState.REJECTED], when, when, self._project_of(job, None))
            ckpt = Checkpoint.load(sp.checkpoint(job))
            project = self._project_of(job, getattr(ckpt, "project", None))
            if ckpt is not None:
                ended = ckpt.status in FINAL and job not in running
                return Entry(job, CODES[ckpt.status] if ended else OPEN, ckpt.created_at,
                             (ckpt.finished_at or ckpt.updated_at) if ended else None, project)
            if job in running:
                return Entry(job, OPEN, os.stat(sp.input(job)).st_mtime, None, project)
        return None

    def _project_of(self, job: str, known: str | None) -> str:
        """A job's project: ``known`` (its folder's, its checkpoint's), else its batch record's
        (store/batches.py), else ``default``."""
        if known:
            return known
        with contextlib.suppress(OSError, orjson.JSONDecodeError):
            data = orjson.loads(self.spool.batch_record(job).read_bytes())
            project = data.get("project") if isinstance(data, dict) else None
            if isinstance(project, str) and project:
                return project
        return DEFAULT_PROJECT


@dataclass(frozen=True, slots=True)
class Listed:
    """A job in the spool's order: its id, and its inbox file while it is queued."""

    job: str
    queued: InboxEntry | None = None
    code: str | None = None  # its state's letter on the index (None: not from the index)


def newest_first(spool: Layout, after: str | None = None, project: str | None = None,
                 codes: Collection[str] | None = None) -> Iterator[Listed]:
    """Every job of the spool (of ``project``), newest first: the inbox's files (the last queued first),
    running jobs the index has no line for yet, then the index's jobs (the last taken first; only those in
    a state of ``codes``, when given). With ``after``, the jobs after that one; nothing when it is none
    of them."""
    index = JobIndex(spool)
    index.ensure()
    queued = [Listed(sanitize_job_id(e.name), e) for e in reversed(spool.inbox_entries())
              if project is None or e.project == project]
    running = spool.running_jobs()
    tracked = index.have(running) if running else set()
    untracked = [Listed(job) for job in running if job not in tracked]
    ahead = queued + untracked
    if after is not None:
        place = next((i for i, listed in enumerate(ahead) if listed.job == after), None)
        if place is None:
            yield from (Listed(e.job, code=e.code) for e in index.newest_first(after, project, codes))
            return
        ahead = ahead[place + 1:]
    yield from ahead
    yield from (Listed(e.job, code=e.code) for e in index.newest_first(None, project, codes))


def taken(spool: Layout, job: str, created: float | None = None, project: str | None = None,
          state: JobState | None = None, finished: float | None = None) -> None:
    """Give a job just taken from the inbox its line (ended in ``state``, for one that ended as it was
    taken). Best effort, as the index is a cache: a failed write is repaired by the next ``reconcile``."""
    with contextlib.suppress(OSError):
        JobIndex(spool).add(job, created, state, finished, project)


def ended(spool: Layout, job: str, state: JobState, finished: float | None = None, created: float | None = None,
          project: str | None = None) -> None:
    """Record that ``job`` ended in ``state``. Best effort (see ``taken``)."""
    with contextlib.suppress(OSError):
        JobIndex(spool).ended(job, state, finished, created, project)

"""Jobs in durable chunks, shared by any number of workers, exactly once.

A worker sets a new job up (whole-file checks, checkpoint), then repeatedly *claims* a
chunk (under the job lock: fix its byte range in the plan, take its chunk lock), *answers*
it without any job-wide lock, *commits* it as a part, and *merges* committed parts in chunk
order into ``done/JOB.results.jsonl``, ``deadletter/JOB.jsonl`` and ``done/JOB.ids``,
fsyncing them before the checkpoint is replaced. A crash anywhere loses nothing: files
are cut back to the checkpoint's offsets on the next merge, a part without its marker is
not a part, and a planned chunk whose lock is free (its worker died) is taken over.
"""

from __future__ import annotations

import contextlib
import os
import time
from array import array
from dataclasses import dataclass, field
from itertools import islice

from filelock import FileLock

from spoolbatch.config import Config
from spoolbatch.errors import InputError
from spoolbatch.format.lines import BadLine, LineParser, deadletter_line, failed_request, id_hash, result_line
from spoolbatch.format.preflight import check_file
from spoolbatch.format.types import Request
from spoolbatch.store.batches import stop_state
from spoolbatch.store.checkpoint import Checkpoint
from spoolbatch.store.fsutil import AppendFile, fsync_dir
from spoolbatch.store.idset import IdSet
from spoolbatch.store.joblog import JobLog
from spoolbatch.store.jobstate import FINAL, JobState
from spoolbatch.store.spool import InboxClaim, Spool
from spoolbatch.store.workarea import ChunkRange, PartSummary, WorkArea
from spoolbatch.worker.executor import ChunkExecutor, Pending


@dataclass(slots=True)
class ChunkClaim:
    """A chunk this worker answers; its lock is held until ``release``."""

    job: str
    chunk: ChunkRange
    lock: FileLock
    model: str | None
    url: str | None
    taken_over: bool = False
    lines: list[bytes] = field(default_factory=list)

    def release(self) -> None:
        """Let go of the chunk (committed or not; an uncommitted one is taken over)."""
        self.lock.release()


@dataclass(slots=True)
class PreparedChunk:
    """A claimed chunk, validated, its requests handed to the engine."""

    claim: ChunkClaim
    started: float
    requests: list[Request] = field(default_factory=list)
    lines: list[bytes] = field(default_factory=list)  # the chunk's raw lines, for deadletter records
    bad: list[BadLine] = field(default_factory=list)
    pending: Pending | None = None


def load_seen(path: os.PathLike[str], count: int) -> IdSet:
    """The custom_id hashes committed so far (the first ``count`` entries of the ids file)."""
    ids = array("Q")
    try:
        with open(path, "rb") as f:
            ids.frombytes(f.read(count * ids.itemsize))
    except FileNotFoundError:
        pass
    return IdSet(ids)


def _read_lines(path: os.PathLike[str], start: int, end: int) -> list[bytes]:
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(end - start).splitlines(keepends=True)


def _next_lines(path: os.PathLike[str], start: int, count: int) -> list[bytes]:
    """Up to ``count`` lines from byte ``start`` (streaming: never reads the rest of the file)."""
    with open(path, "rb") as f:
        f.seek(start)
        return list(islice(f, count))


def _first_request(path: os.PathLike[str], max_line_bytes: int) -> tuple[str | None, str | None]:
    """The model and endpoint of the first valid line: they are the job's (one of each per job)."""
    parser = LineParser(max_line_bytes=max_line_bytes)
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if isinstance(parser.parse(raw, n), Request):
                return parser.model, parser.url
    return None, None


class JobRunner:
    """One worker's part in running jobs: set up, claim, answer, merge, finish."""

    def __init__(self, spool: Spool, config: Config, executor: ChunkExecutor, *, worker: str = "",
                 echo: bool = True) -> None:
        self.spool = spool
        self.config = config
        self.executor = executor
        self.worker = worker
        self.echo = echo
        self._seen: dict[str, tuple[int, IdSet]] = {}
        self._started: set[str] = set()
        self._last_commit = 0.0

    def log(self, job: str) -> JobLog:
        """The job's log."""
        return JobLog(self.spool.log(job), echo=self.echo, max_bytes=self.config.log_max_bytes,
                      keep=self.config.log_keep)

    def area(self, job: str) -> WorkArea:
        """The job's work area."""
        return WorkArea(self.spool.work_area(job))

    # --- setting a job up ----------------------------------------------------------------------
    def setup(self, claim: InboxClaim) -> Checkpoint | None:
        """Check a freshly claimed file and write its first checkpoint (job lock held by ``claim``)."""
        try:
            return self._setup(claim.job, claim.original_name or f"{claim.job}.jsonl")
        finally:
            claim.release()

    def _setup(self, job: str, name: str) -> Checkpoint | None:
        sp = self.spool
        try:
            facts = check_file(sp.input(job), max_bytes=self.config.max_job_bytes,
                               max_requests=self.config.max_requests_per_job, name=name)
        except InputError as exc:
            self.log(job)(f"refused whole: {exc.message}")
            sp.write_rejection(job, name, exc.code, exc.message, exc.hint)
            os.rename(sp.input(job), sp.rejected_file(job))
            fsync_dir(sp.rejected)
            self._drop_lock_file(job)
            return None
        model, url = _first_request(sp.input(job), self.config.max_line_bytes)
        ckpt = Checkpoint(job=job, input_name=name, input_bytes=facts.size, total_lines=facts.lines,
                          started_at=time.time(), worker=self.worker, model=model, url=url)
        self.area(job).ensure()
        ckpt.save(sp.checkpoint(job))
        self.log(job)(f"claimed {name} as job {job}: {facts.lines:,} lines, {facts.size:,} bytes"
                      + (f", model {model}" if model else ", no valid request"))
        return ckpt

    # --- claiming a chunk ----------------------------------------------------------------------
    def claim_chunk(self, job: str, size: int) -> ChunkClaim | None:
        """A chunk of ``job`` to answer: one whose worker died, else the next ``size`` lines."""
        sp = self.spool
        if not sp.input(job).exists():
            return None
        lock = sp.wait_lock(sp.job_lock(job))
        try:
            if not sp.input(job).exists():
                return None
            ckpt = Checkpoint.load(sp.checkpoint(job)) or self._setup(job, f"{job}.jsonl")
            if ckpt is None:
                return None
            ckpt = self._merge_locked(job, ckpt)
            if ckpt.status in FINAL or stop_state(sp, job) is not None:
                return None
            area = self.area(job)
            plan = area.plan()
            for chunk in plan[ckpt.chunks:]:
                if area.committed(chunk.index):
                    continue
                held = sp.try_lock(area.lock(chunk.index))
                if held is not None:
                    ckpt.resumes += 1
                    ckpt.save(sp.checkpoint(job))
                    self.log(job)(f"resuming at line {chunk.first_line:,} (chunk {chunk.index + 1}, "
                                  "whose worker stopped before committing it)")
                    self._started.add(job)
                    return ChunkClaim(job, chunk, held, ckpt.model, ckpt.url, taken_over=True)
            start = plan[-1].end if plan else 0
            if start >= ckpt.input_bytes:
                return None
            lines = _next_lines(sp.input(job), start, size)
            first = plan[-1].first_line + plan[-1].lines if plan else 1
            chunk = ChunkRange(len(plan), start, start + sum(map(len, lines)), first, len(lines))
            area.add(chunk)
            held = sp.try_lock(area.lock(chunk.index))
            assert held is not None, "a chunk planned under the job lock is free"
            if job not in self._started and ckpt.lines_consumed:
                self.log(job)(f"continuing at line {first:,}")
            self._started.add(job)
            return ChunkClaim(job, chunk, held, ckpt.model, ckpt.url, lines=lines)
        finally:
            lock.release()

    # --- answering a chunk ---------------------------------------------------------------------
    def prepare(self, claim: ChunkClaim) -> PreparedChunk:
        """Read and validate the chunk's lines and hand its requests to the engine (without waiting)."""
        chunk = claim.chunk
        lines = claim.lines or _read_lines(self.spool.input(claim.job), chunk.start, chunk.end)
        parser = LineParser(model=claim.model, url=claim.url, max_line_bytes=self.config.max_line_bytes)
        prepared = PreparedChunk(claim, time.monotonic(), lines=lines)
        for n, raw in enumerate(lines, start=chunk.first_line):
            parsed = parser.parse(raw, n)
            if isinstance(parsed, Request):
                prepared.requests.append(parsed)
            elif parsed is not None:
                prepared.bad.append(parsed)
        claim.lines = []
        if prepared.requests:
            prepared.pending = self.executor.submit(parser.model or "", prepared.requests)
        return prepared

    def run_chunk(self, claim: ChunkClaim) -> PartSummary:
        """Answer every line of the chunk and commit it as a part."""
        return self.commit(self.prepare(claim))

    def commit(self, prepared: PreparedChunk) -> PartSummary:
        """Wait for the chunk's outcomes and commit it as a part."""
        claim, chunk, bad = prepared.claim, prepared.claim.chunk, prepared.bad
        results: list[bytes] = []
        ids = array("Q")
        prompt_tokens = completion_tokens = retries = 0
        if prepared.pending is not None:
            run = self.executor.collect(prepared.pending)
            retries = run.retries
            for request, outcome, attempts in zip(prepared.requests, run.outcomes, run.attempts, strict=True):
                if outcome.failed:
                    raw = prepared.lines[request.line - chunk.first_line].rstrip(b"\r\n")
                    bad.append(failed_request(request, raw, outcome, attempts))
                    continue
                results.append(result_line(claim.job, request, outcome))
                ids.extend((request.key or id_hash(request.custom_id), request.line))
                prompt_tokens += outcome.prompt_tokens
                completion_tokens += outcome.completion_tokens
        bad.sort(key=lambda b: b.line)
        for b in bad:
            ids.extend((id_hash(b.custom_id) if b.custom_id else 0, b.line))
        # With a look-ahead chunk in the engine, two chunks' lifetimes overlap: count from the
        # previous commit, so that busy seconds (and the ETA built on them) are not counted twice.
        now = time.monotonic()
        seconds = now - max(prepared.started, self._last_commit)
        self._last_commit = now
        summary = PartSummary(chunk.index, chunk.lines, chunk.end, len(results), len(bad), prompt_tokens,
                              completion_tokens, seconds, retries, self.worker)
        self.area(claim.job).commit_part(summary, b"".join(results),
                                         b"".join(deadletter_line(claim.job, b) for b in bad), ids)
        return summary

    # --- merging parts into the job's files ----------------------------------------------------
    def merge(self, job: str) -> Checkpoint | None:
        """Merge every committed part that is next in order; finish the job when it is all in."""
        sp = self.spool
        lock = sp.wait_lock(sp.job_lock(job))
        try:
            ckpt = Checkpoint.load(sp.checkpoint(job))
            if ckpt is None or not sp.input(job).exists():
                return ckpt
            return self._merge_locked(job, ckpt)
        finally:
            lock.release()

    def _merge_locked(self, job: str, ckpt: Checkpoint) -> Checkpoint:
        sp = self.spool
        if ckpt.status in FINAL:
            self._finish(job, ckpt, ckpt.status)
            return ckpt
        area = self.area(job)
        plan = area.plan()
        if ckpt.chunks < len(plan) and area.committed(ckpt.chunks):
            with AppendFile(sp.results(job), ckpt.results_bytes) as results, \
                    AppendFile(sp.deadletter_file(job), ckpt.deadletter_bytes) as dead, \
                    AppendFile(sp.ids(job), ckpt.ids_count * 8) as ids:
                seen = self._seen_for(job, ckpt)
                while ckpt.chunks < len(plan) and (summary := area.committed(ckpt.chunks)):
                    self._merge_part(job, ckpt, plan[ckpt.chunks], summary, seen, results, dead, ids)
                    area.drop_part(summary.index)
        if ckpt.bytes_consumed >= ckpt.input_bytes and ckpt.chunks >= len(plan):
            self.log(job)(f"completed: {ckpt.requests_done:,} answered, {ckpt.requests_failed:,} in deadletter, "
                          f"{ckpt.total_tokens:,} tokens in {ckpt.busy_seconds:.1f}s of engine time")
            self._finish(job, ckpt, JobState.COMPLETED)
        elif (stop := stop_state(sp, job)) is not None and not self._in_flight(job, ckpt, plan):
            why = "cancelled" if stop == JobState.CANCELLED else "expired (its completion window passed)"
            self.log(job)(f"{why} at a chunk boundary (line {ckpt.lines_consumed:,}); checkpoint kept")
            cause = "cancel asked" if stop == JobState.CANCELLED else "completion window passed"
            ckpt.message = f"{cause}; stopped after line {ckpt.lines_consumed:,} of {ckpt.total_lines:,}"
            self._finish(job, ckpt, stop)
        return ckpt

    def _seen_for(self, job: str, ckpt: Checkpoint) -> IdSet:
        count, seen = self._seen.get(job, (-1, IdSet()))
        if count != ckpt.ids_count:
            seen = load_seen(self.spool.ids(job), ckpt.ids_count)
        self._seen = {job: (ckpt.ids_count, seen)}
        return seen

    def _merge_part(self, job: str, ckpt: Checkpoint, chunk: ChunkRange, summary: PartSummary, seen: IdSet,
                    results: AppendFile, dead: AppendFile, ids: AppendFile) -> None:
        """Append one part; a custom_id an earlier chunk already used becomes a deadletter record."""
        res, dl, pairs = self.area(job).read_part(summary.index)
        answered = summary.done  # the part's first pairs are its results' (hash, line), in order
        hashes = pairs[0:2 * answered:2]
        used = seen.found(hashes)
        dups: list[int] = []
        if not used.any():  # the common case: no custom_id of this part was used before
            new_ids, keep = hashes, [res]
        else:
            keep, new_ids = [], array("Q")
            for i, line in enumerate(res.splitlines(keepends=True)):
                if used[i]:
                    dups.append(pairs[2 * i + 1])
                else:
                    new_ids.append(pairs[2 * i])
                    keep.append(line)
        # The ids of lines sent to deadletter count as used too (the parser already made a
        # repeat inside this chunk a duplicate, so those may equal an answered id here).
        failed = [h for h in dict.fromkeys(pairs[2 * answered::2]) if h]
        if failed:
            answered_here = set(new_ids)
            new_ids.extend(h for h, old in zip(failed, seen.found(failed), strict=True)
                           if not old and h not in answered_here)
        seen.add_many(new_ids)
        extra = self._duplicates(job, chunk, dups) if dups else b""
        results.write(b"".join(keep))
        dead.write(dl + extra)
        ids.write(new_ids.tobytes())
        try:
            ckpt.results_bytes = results.commit()
            ckpt.deadletter_bytes = dead.commit()
            ckpt.ids_count = ids.commit() // 8
        except BaseException:
            self._seen.pop(job, None)  # the in-memory set ran ahead of the files
            raise
        ckpt.chunks = summary.index + 1
        ckpt.lines_consumed += summary.lines
        ckpt.bytes_consumed = chunk.end
        ckpt.requests_done += answered - len(dups)
        ckpt.requests_failed += summary.failed + len(dups)
        ckpt.prompt_tokens += summary.prompt_tokens
        ckpt.completion_tokens += summary.completion_tokens
        ckpt.busy_seconds += summary.seconds
        ckpt.retries += summary.retries
        ckpt.worker = summary.worker
        ckpt.save(self.spool.checkpoint(job))
        self._seen[job] = (ckpt.ids_count, seen)
        self.log(job)(f"chunk {summary.index + 1}: lines {chunk.first_line:,}-{chunk.first_line + chunk.lines - 1:,},"
                      f" {answered - len(dups):,} answered, {summary.failed + len(dups):,} to deadletter, "
                      f"{summary.seconds:.2f}s ({summary.worker})")

    def _duplicates(self, job: str, chunk: ChunkRange, line_numbers: list[int]) -> bytes:
        raw = _read_lines(self.spool.input(job), chunk.start, chunk.end)
        out = []
        for n in line_numbers:
            text = raw[n - chunk.first_line].rstrip(b"\r\n")
            cid = LineParser().parse(text, n)
            custom_id = cid.custom_id if isinstance(cid, Request) else None
            out.append(deadletter_line(job, BadLine(n, text, "duplicate_custom_id",
                                                    f"custom_id {custom_id!r} was already used in this job",
                                                    custom_id)))
        return b"".join(out)

    def _in_flight(self, job: str, ckpt: Checkpoint, plan: list[ChunkRange]) -> bool:
        """True when another worker is answering a chunk of ``job`` right now."""
        area = self.area(job)
        for chunk in plan[ckpt.chunks:]:
            held = self.spool.try_lock(area.lock(chunk.index))
            if held is None:
                return True
            held.release()
        return False

    # --- the end -------------------------------------------------------------------------------
    def _finish(self, job: str, ckpt: Checkpoint, status: JobState) -> None:
        sp = self.spool
        # A crash may have left bytes past the committed offsets: the final files hold none.
        for path, size in ((sp.results(job), ckpt.results_bytes), (sp.deadletter_file(job), ckpt.deadletter_bytes),
                           (sp.ids(job), ckpt.ids_count * 8)):
            AppendFile(path, size).close()
        if ckpt.status != status or ckpt.finished_at is None:
            ckpt.status = status
            ckpt.finished_at = time.time()
            ckpt.save(sp.checkpoint(job))
        if sp.input(job).exists():
            os.rename(sp.input(job), sp.archived_input(job))
            fsync_dir(sp.done)
            fsync_dir(sp.active)
        self.area(job).remove()
        with contextlib.suppress(FileNotFoundError):
            sp.cancel_marker(job).unlink()
        self._seen.pop(job, None)
        self._drop_lock_file(job)

    def _drop_lock_file(self, job: str) -> None:
        # Safe while we hold it: with the input gone from active/, no one takes it to work again.
        with contextlib.suppress(FileNotFoundError):
            self.spool.job_lock(job).unlink()


def order_jobs(spool: Spool, loaded_model: str | None, only_model: str | None = None) -> list[str]:
    """Active jobs in the order a worker should help with them: its loaded model first, then oldest."""
    keyed = []
    for job in spool.running_jobs():
        ckpt = Checkpoint.load(spool.checkpoint(job))
        if only_model is not None and (ckpt is None or ckpt.model != only_model):
            continue
        created = ckpt.created_at if ckpt else 0.0
        keyed.append((0 if ckpt and ckpt.model == loaded_model else 1, created, job))
    return [job for _, _, job in sorted(keyed)]


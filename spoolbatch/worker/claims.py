"""Chunk claims: claim a chunk of a job, prepare it for the engine, commit it as a part.

*Claiming* (under the job lock, which the caller holds) takes over a planned chunk whose
worker died (its lock is free and it has no committed part), else fixes the byte range of
the next ``size`` lines in the plan; either way it takes the chunk's lock. *Preparing*
parses the chunk's lines and hands its requests to the executor without waiting.
*Committing* waits for the outcomes and writes the chunk as a part of the work area,
without any job-wide lock; the merge appends parts to the job's files in order.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice

from filelock import FileLock

from spoolbatch.config import Config
from spoolbatch.engines.adapters import adapter_bases
from spoolbatch.format.lines import BadLine, LineParser, deadletter_line, failed_request, id_hash, result_line
from spoolbatch.format.types import Request
from spoolbatch.store.batches import stop_state
from spoolbatch.store.checkpoint import Checkpoint
from spoolbatch.store.joblog import JobEvent, JobLog
from spoolbatch.store.spool import Spool
from spoolbatch.store.workarea import ChunkRange, PartIds, PartSummary, WorkArea
from spoolbatch.worker.executor import ChunkExecutor, Pending
from spoolbatch.worker.ordering import cache_tokens
from spoolbatch.worker.sending import SendPlan

# Jobs remembered as started before the finished ones are forgotten.
STARTED_PRUNE_AT = 256


@dataclass(slots=True)
class ChunkClaim:
    """A chunk this worker answers; its lock is held until ``release``."""

    job: str
    chunk: ChunkRange
    lock: FileLock
    model: str | None
    url: str | None
    lines: list[bytes] = field(default_factory=list)  # the chunk's raw lines when the claim read them

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
    plan: SendPlan | None = None  # what the engine got: de-duplicated, in prefix order


def _next_lines(path: os.PathLike[str], start: int, count: int) -> list[bytes]:
    """Up to ``count`` lines from byte ``start`` (streaming: never reads the rest of the file)."""
    with open(path, "rb") as f:
        f.seek(start)
        return list(islice(f, count))


class Claims:
    """One worker's chunk claims: claim, prepare, commit."""

    def __init__(self, spool: Spool, config: Config, executor: ChunkExecutor, log: Callable[[str], JobLog], *,
                 worker: str = "") -> None:
        self.spool = spool
        self.config = config
        self.executor = executor
        self._log = log  # a job's log
        self.worker = worker
        self._started: set[str] = set()  # jobs this worker has claimed a chunk of
        self._last_commit = 0.0

    def claim(self, job: str, ckpt: Checkpoint, size: int) -> ChunkClaim | None:
        """A chunk of ``job``: one whose worker died, else the next ``size`` lines (job lock held).

        None when there is nothing to claim: the job is cancelled or expired, every line is
        planned, or the new chunk's lock could not be taken.
        """
        sp = self.spool
        if stop_state(sp, job) is not None:
            return None
        area = WorkArea(sp.work_area(job))
        plan = area.plan()
        for chunk in plan[ckpt.chunks:]:
            if area.committed(chunk.index):
                continue
            held = sp.try_lock(area.lock(chunk.index))
            if held is not None:
                ckpt.resumes += 1
                ckpt.save(sp.checkpoint(job))
                self._log(job).event(JobEvent.RESUMED, job, chunk=chunk.index + 1, first_line=chunk.first_line,
                                     last_line=chunk.last_line, worker=self.worker)
                self._mark_started(job)
                return ChunkClaim(job, chunk, held, ckpt.model, ckpt.url)
        start = plan[-1].end if plan else 0
        if start >= ckpt.input_bytes:
            return None
        lines = _next_lines(sp.input(job), start, size)
        first = plan[-1].last_line + 1 if plan else 1
        chunk = ChunkRange(len(plan), start, start + sum(map(len, lines)), first, len(lines))
        area.add(chunk)
        # The lock file is new, but a reader probing every chunk lock (`status`, through
        # Spool.job_is_owned) may have opened it between its creation and our lock: such a
        # probe lets go at once. If it still holds on, leave the chunk planned: the next
        # claim (ours or another worker's) takes it over like the chunk of a stopped worker.
        held = sp.try_lock(area.lock(chunk.index), wait=1.0)
        if held is None:
            return None
        if job not in self._started and ckpt.lines_consumed:
            self._log(job).event(JobEvent.CONTINUED, job, chunk=chunk.index + 1, first_line=first,
                                 worker=self.worker)
        self._mark_started(job)
        return ChunkClaim(job, chunk, held, ckpt.model, ckpt.url, lines=lines)

    def _mark_started(self, job: str) -> None:
        """Remember that this worker works on ``job``; forget the finished ones now and then (a daemon
        runs for months: the set would otherwise grow by every job it ever touched)."""
        self._started.add(job)
        if len(self._started) > STARTED_PRUNE_AT:
            self._started = {j for j in self._started if self.spool.input(j).exists()}

    # --- answering a chunk ---------------------------------------------------------------------
    def prepare(self, claim: ChunkClaim) -> PreparedChunk:
        """Read and validate the chunk's lines and hand its requests to the engine (without waiting)."""
        chunk = claim.chunk
        lines = claim.lines or chunk.read(self.spool.input(claim.job))
        parser = LineParser(model=claim.model, url=claim.url, max_line_bytes=self.config.max_line_bytes,
                            adapters=adapter_bases(self.config.adapters))
        prepared = PreparedChunk(claim, time.monotonic(), lines=lines)
        for n, raw in enumerate(lines, start=chunk.first_line):
            parsed = parser.parse(raw, n)
            if isinstance(parsed, Request):
                prepared.requests.append(parsed)
            elif parsed is not None:
                prepared.bad.append(parsed)
        claim.lines = []
        if prepared.requests:
            order = self.config.prefix_order and self._caches_prefixes()
            prepared.plan = SendPlan.build(prepared.requests, order=order, dedupe=self.config.dedupe)
            prepared.pending = self.executor.submit(parser.model or "", prepared.plan.sent)
        return prepared

    def _caches_prefixes(self) -> bool:
        """Whether the engine keeps a prefix cache that prefix order feeds (the fake has none: sorting
        would be pure cost); an engine says so with ``prefix_caching``, and one not built yet is assumed to."""
        return bool(getattr(self.executor.engine, "prefix_caching", True))

    def commit(self, prepared: PreparedChunk) -> PartSummary:
        """Wait for the chunk's outcomes and commit it as a part."""
        claim, chunk, bad = prepared.claim, prepared.claim.chunk, prepared.bad
        results: list[bytes] = []
        ids = PartIds()
        prompt_tokens = completion_tokens = retries = deduplicated = cache_queries = cache_hits = 0
        if prepared.pending is not None and prepared.plan is not None:
            sent = self.executor.collect(prepared.pending)
            cache_queries, cache_hits = cache_tokens(sent.outcomes)
            run = prepared.plan.spread(sent, prepared.requests)
            retries, deduplicated = run.retries, prepared.plan.deduplicated
            for request, outcome, attempts in zip(prepared.requests, run.outcomes, run.attempts, strict=True):
                if outcome.failed:
                    raw = prepared.lines[request.line - chunk.first_line].rstrip(b"\r\n")
                    bad.append(failed_request(request, raw, outcome, attempts))
                    continue
                results.append(result_line(claim.job, request, outcome))
                ids.add(request.key or id_hash(request.custom_id), request.line)
                prompt_tokens += outcome.prompt_tokens
                completion_tokens += outcome.completion_tokens
        bad.sort(key=lambda b: b.line)
        ids.failed.extend(id_hash(b.custom_id) if b.custom_id else 0 for b in bad)
        # With a look-ahead chunk in the engine, two chunks' lifetimes overlap: count from the
        # previous commit, so that busy seconds (and the ETA built on them) are not counted twice.
        now = time.monotonic()
        seconds = now - max(prepared.started, self._last_commit)
        self._last_commit = now
        summary = PartSummary(chunk.index, chunk.lines, len(results), len(bad), prompt_tokens, completion_tokens,
                              seconds, retries, self.worker, deduplicated, cache_queries, cache_hits)
        WorkArea(self.spool.work_area(claim.job)).commit_part(
            summary, b"".join(results), b"".join(deadletter_line(claim.job, b) for b in bad), ids)
        return summary

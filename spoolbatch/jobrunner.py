"""Process one claimed job in durable chunks, resuming exactly where its checkpoint says.

Per chunk: read up to ``chunk_size`` lines from the committed input offset, validate them,
answer the valid ones, append result lines, deadletter records and custom_id hashes,
fsync all three, and only then replace the checkpoint. A crash anywhere before the
checkpoint replace is undone on resume by cutting the three files back to the
checkpoint's offsets and redoing the chunk; after it, nothing is redone.
"""

from __future__ import annotations

import contextlib
import os
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from spoolbatch.checkpoint import FINAL, Checkpoint, JobStatus
from spoolbatch.config import Config
from spoolbatch.engines.base import Request
from spoolbatch.errors import InputError
from spoolbatch.executor import ChunkExecutor
from spoolbatch.fsutil import AppendFile, fsync_dir
from spoolbatch.joblog import JobLog
from spoolbatch.preflight import check_file
from spoolbatch.records import BadLine, LineParser, deadletter_line, failed_request, result_line
from spoolbatch.spool import Claim, Spool


@dataclass(frozen=True, slots=True)
class ChunkReport:
    """What one committed chunk did, for the heartbeat and metrics."""

    chunk: int
    lines: int
    done: int
    failed: int
    seconds: float
    prompt_tokens: int
    completion_tokens: int
    chunk_size: int


def load_seen(path: os.PathLike[str], count: int) -> set[int]:
    """The custom_id hashes committed so far (the first ``count`` entries of the ids file)."""
    ids = array("Q")
    try:
        with open(path, "rb") as f:
            ids.frombytes(f.read(count * ids.itemsize))
    except FileNotFoundError:
        pass
    return set(ids)


def _read_chunk(f: BinaryIO, limit: int) -> tuple[list[bytes], int]:
    lines: list[bytes] = []
    nbytes = 0
    while len(lines) < limit:
        raw = f.readline()
        if not raw:
            break
        lines.append(raw)
        nbytes += len(raw)
    return lines, nbytes


class JobRunner:
    """Runs one claimed job to its end, its cancellation, or a requested stop."""

    def __init__(self, spool: Spool, claim: Claim, config: Config, executor: ChunkExecutor, *,
                 worker: str = "", should_stop: Callable[[], bool] = lambda: False,
                 chunk_size: Callable[[], int] | None = None,
                 on_progress: Callable[[Checkpoint, ChunkReport | None], None] = lambda c, r: None,
                 echo: bool = True) -> None:
        self.spool = spool
        self.claim = claim
        self.job = claim.job
        self.config = config
        self.executor = executor
        self.worker = worker
        self.should_stop = should_stop
        self.chunk_size = chunk_size or (lambda: config.chunk_size)
        self.on_progress = on_progress
        self.log = JobLog(spool.log(claim.job), echo=echo)

    # --- start ----------------------------------------------------------------------------
    def _start(self) -> Checkpoint | None:
        """The checkpoint to go on from, or None when the file was refused whole."""
        path = self.spool.checkpoint(self.job)
        ckpt = Checkpoint.load(path)
        if ckpt is not None:
            ckpt.resumes += 1
            ckpt.worker = self.worker
            self.log(f"resuming at line {ckpt.lines_consumed:,} of {ckpt.total_lines:,} "
                     f"({ckpt.requests_done:,} done, {ckpt.requests_failed:,} failed)")
            return ckpt
        name = self.claim.original_name or f"{self.job}.jsonl"
        try:
            facts = check_file(self.claim.input_path, max_bytes=self.config.max_job_bytes,
                               max_requests=self.config.max_requests_per_job, name=name)
        except InputError as exc:
            self._reject(name, exc)
            return None
        ckpt = Checkpoint(job=self.job, input_name=name, input_bytes=facts.size, total_lines=facts.lines,
                          started_at=time.time(), worker=self.worker)
        ckpt.save(path)
        self.log(f"claimed {name} as job {self.job}: {facts.lines:,} lines, {facts.size:,} bytes")
        return ckpt

    def _reject(self, name: str, exc: InputError) -> None:
        self.log(f"refused whole: {exc.message}")
        self.spool.write_rejection(self.job, name, exc.code, exc.message, exc.hint)
        os.rename(self.claim.input_path, self.spool.rejected_file(self.job))
        fsync_dir(self.spool.rejected)
        self._drop_lock_file()

    # --- the loop -------------------------------------------------------------------------
    def run(self) -> Checkpoint | None:
        """Process chunks until the job ends, is cancelled, or a stop is asked for."""
        ckpt = self._start()
        if ckpt is None:
            return None
        if ckpt.status in FINAL:
            self._finish(ckpt, ckpt.status)
            return ckpt
        ckpt.status = JobStatus.RUNNING
        sp = self.spool
        parser = LineParser(seen=load_seen(sp.ids(self.job), ckpt.ids_count), model=ckpt.model, url=ckpt.url,
                            max_line_bytes=self.config.max_line_bytes)
        with AppendFile(sp.results(self.job), ckpt.results_bytes) as results, \
                AppendFile(sp.deadletter_file(self.job), ckpt.deadletter_bytes) as dead, \
                AppendFile(sp.ids(self.job), ckpt.ids_count * 8) as ids, \
                open(self.claim.input_path, "rb") as f:
            f.seek(ckpt.bytes_consumed)
            self.on_progress(ckpt, None)
            while True:
                size = max(1, self.chunk_size())  # may wait while the GPU is unsafe
                if sp.cancel_marker(self.job).exists():
                    self.log("cancelled at a chunk boundary; checkpoint kept")
                    self._finish(ckpt, JobStatus.CANCELLED)
                    return ckpt
                if self.should_stop():
                    self.log(f"stopping at a chunk boundary (line {ckpt.lines_consumed:,}); the job resumes later")
                    ckpt.save(sp.checkpoint(self.job))
                    return ckpt
                lines, nbytes = _read_chunk(f, size)
                if not lines:
                    break
                report = self._chunk(ckpt, parser, lines, nbytes, size, results, dead, ids)
                self.on_progress(ckpt, report)
        self.log(f"completed: {ckpt.requests_done:,} answered, {ckpt.requests_failed:,} in deadletter, "
                 f"{ckpt.total_tokens:,} tokens in {ckpt.busy_seconds:.1f}s")
        self._finish(ckpt, JobStatus.COMPLETED)
        return ckpt

    def _chunk(self, ckpt: Checkpoint, parser: LineParser, lines: list[bytes], nbytes: int, size: int,
               results: AppendFile, dead: AppendFile, ids: AppendFile) -> ChunkReport:
        start = time.monotonic()
        first = ckpt.lines_consumed + 1
        requests: list[Request] = []
        raws: list[bytes] = []
        bad: list[BadLine] = []
        for n, raw in enumerate(lines, start=first):
            parsed = parser.parse(raw, n)
            if isinstance(parsed, Request):
                requests.append(parsed)
                raws.append(raw.rstrip(b"\r\n"))
            elif parsed is not None:
                bad.append(parsed)
        done = prompt_tokens = completion_tokens = 0
        retries = 0
        if requests:
            assert parser.model is not None
            run = self.executor.run(parser.model, requests)
            retries = run.retries
            for request, raw, outcome, attempts in zip(requests, raws, run.outcomes, run.attempts, strict=True):
                if outcome.failed:
                    bad.append(failed_request(request, raw, outcome, attempts))
                else:
                    results.write(result_line(self.job, request, outcome))
                    done += 1
                    prompt_tokens += outcome.prompt_tokens
                    completion_tokens += outcome.completion_tokens
        bad.sort(key=lambda b: b.line)
        for b in bad:
            dead.write(deadletter_line(self.job, b))
        new_ids = parser.take_new_ids()
        if new_ids:
            ids.write(array("Q", new_ids).tobytes())
        try:
            ckpt.results_bytes = results.commit()
            ckpt.deadletter_bytes = dead.commit()
            ckpt.ids_count = ids.commit() // 8
        except BaseException:
            # Undo the in-memory view of this chunk; the files are cut back on the next start.
            parser.seen.difference_update(new_ids)
            raise
        ckpt.model, ckpt.url = parser.model, parser.url
        ckpt.lines_consumed += len(lines)
        ckpt.bytes_consumed += nbytes
        ckpt.requests_done += done
        ckpt.requests_failed += len(bad)
        ckpt.prompt_tokens += prompt_tokens
        ckpt.completion_tokens += completion_tokens
        ckpt.retries += retries
        ckpt.chunks += 1
        seconds = time.monotonic() - start
        ckpt.busy_seconds += seconds
        ckpt.save(self.spool.checkpoint(self.job))
        self.log(f"chunk {ckpt.chunks}: lines {first:,}-{ckpt.lines_consumed:,}, {done:,} answered, "
                 f"{len(bad):,} to deadletter, {seconds:.2f}s")
        return ChunkReport(ckpt.chunks, len(lines), done, len(bad), seconds, prompt_tokens, completion_tokens, size)

    # --- the end --------------------------------------------------------------------------
    def _finish(self, ckpt: Checkpoint, status: JobStatus) -> None:
        sp = self.spool
        if ckpt.status != status or ckpt.finished_at is None:
            ckpt.status = status
            ckpt.finished_at = time.time()
            ckpt.save(sp.checkpoint(self.job))
        if self.claim.input_path.exists():
            os.rename(self.claim.input_path, sp.archived_input(self.job))
            fsync_dir(sp.done)
            fsync_dir(sp.active)
        with contextlib.suppress(FileNotFoundError):
            sp.cancel_marker(self.job).unlink()
        self._drop_lock_file()

    def _drop_lock_file(self) -> None:
        # Safe while we hold the lock: with the input gone from active/, no one opens it again.
        with contextlib.suppress(FileNotFoundError):
            self.spool.job_lock(self.job).unlink()

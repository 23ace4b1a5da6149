"""The merge: committed parts, in chunk order, into a job's results, deadletter and ids files.

Whoever holds the job lock merges every committed part that is next in order, appending
it to ``done/JOB.results.jsonl``, ``deadletter/JOB.jsonl`` and ``done/JOB.ids``, fsyncing
them, then replacing the checkpoint: the checkpoint's offsets are the truth, so a crash
anywhere in between is cut back on the next merge. A custom_id that an earlier chunk
already used turns its result into a ``duplicate_custom_id`` deadletter record here.
"""

from __future__ import annotations

import os
import time
from array import array
from collections.abc import Callable
from typing import Any

from spoolbatch.format.lines import BadLine, LineParser, deadletter_line
from spoolbatch.format.types import Request
from spoolbatch.store.checkpoint import Checkpoint
from spoolbatch.store.fsutil import AppendFile
from spoolbatch.store.idset import IdSet
from spoolbatch.store.joblog import JobEvent, JobLog
from spoolbatch.store.jobstate import FINAL
from spoolbatch.store.spool import Spool
from spoolbatch.store.workarea import ChunkRange, PartSummary, WorkArea


def load_seen(path: os.PathLike[str], count: int) -> IdSet:
    """The custom_id hashes committed so far (the first ``count`` entries of the ids file)."""
    ids = array("Q")
    try:
        with open(path, "rb") as f:
            ids.frombytes(f.read(count * ids.itemsize))
    except FileNotFoundError:
        pass
    return IdSet(ids)


def _engine_savings(summary: PartSummary) -> dict[str, Any]:
    """The chunk_merged event's fields on what the engine was spared: lines de-duplicated, prefix-cache hits."""
    fields: dict[str, Any] = {"deduplicated": summary.deduplicated}
    if summary.prefix_cache_queries:
        fields["prefix_cache_hit_rate"] = round(summary.prefix_cache_hits / summary.prefix_cache_queries, 4)
    return fields


class Merger:
    """Merges one worker's view of jobs; keeps the ids of the job it merged last in memory."""

    def __init__(self, spool: Spool, log: Callable[[str], JobLog]) -> None:
        self.spool = spool
        self._log = log  # a job's log
        self._seen: dict[str, tuple[int, IdSet]] = {}

    def merge(self, job: str, ckpt: Checkpoint) -> Checkpoint:
        """Merge every committed part of ``job`` that is next in order (the caller holds the job lock)."""
        if ckpt.status in FINAL:
            return ckpt
        sp = self.spool
        area = WorkArea(sp.work_area(job))
        plan = area.plan()
        if ckpt.chunks < len(plan) and area.committed(ckpt.chunks):
            log = self._log(job)
            with AppendFile(sp.results(job), ckpt.results_bytes) as results, \
                    AppendFile(sp.deadletter_file(job), ckpt.deadletter_bytes) as dead, \
                    AppendFile(sp.ids(job), ckpt.ids_count * 8) as ids:
                seen = self._seen_for(job, ckpt)
                while ckpt.chunks < len(plan) and (summary := area.committed(ckpt.chunks)):
                    self._merge_part(job, ckpt, area, plan[ckpt.chunks], summary, seen, results, dead, ids, log)
                    area.drop_part(summary.index)
        return ckpt

    def forget(self, job: str) -> None:
        """Drop the ids kept for ``job`` (it finished)."""
        self._seen.pop(job, None)

    def _seen_for(self, job: str, ckpt: Checkpoint) -> IdSet:
        count, seen = self._seen.get(job, (-1, IdSet()))
        if count != ckpt.ids_count:
            seen = load_seen(self.spool.ids(job), ckpt.ids_count)
        self._seen = {job: (ckpt.ids_count, seen)}
        return seen

    def _merge_part(self, job: str, ckpt: Checkpoint, area: WorkArea, chunk: ChunkRange, summary: PartSummary,
                    seen: IdSet, results: AppendFile, dead: AppendFile, ids: AppendFile, log: JobLog) -> None:
        """Append one part; a custom_id an earlier chunk already used becomes a deadletter record."""
        dl, part = area.read_part_meta(summary)
        used = seen.found(part.hashes)
        dups: list[int] = []
        keep: list[bytes] | None = None
        if not used.any():  # the common case: the part's results go in whole, copied by the kernel
            new_ids = part.hashes
        else:
            keep, new_ids = [], array("Q")
            res = area.part_results(summary.index).read_bytes()
            for i, line in enumerate(res.splitlines(keepends=True)):
                if used[i]:
                    dups.append(part.lines[i])
                else:
                    new_ids.append(part.hashes[i])
                    keep.append(line)
        # The ids of lines sent to deadletter count as used too (the parser already made a
        # repeat inside this chunk a duplicate, so those may equal an answered id here).
        failed = [h for h in dict.fromkeys(part.failed) if h]
        if failed:
            answered_here = set(new_ids)
            new_ids.extend(h for h, old in zip(failed, seen.found(failed), strict=True)
                           if not old and h not in answered_here)
        seen.add_many(new_ids)
        extra = self._duplicates(job, chunk, dups) if dups else b""
        if keep is None:
            results.write_file(area.part_results(summary.index))
        else:
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
        answered = summary.done - len(dups)
        failures = summary.failed + len(dups)
        ckpt.chunks = summary.index + 1
        ckpt.lines_consumed += summary.lines
        ckpt.bytes_consumed = chunk.end
        ckpt.requests_done += answered
        ckpt.requests_failed += failures
        ckpt.prompt_tokens += summary.prompt_tokens
        ckpt.completion_tokens += summary.completion_tokens
        ckpt.busy_seconds += summary.seconds
        ckpt.retries += summary.retries
        ckpt.deduplicated += summary.deduplicated
        ckpt.prefix_cache_queries += summary.prefix_cache_queries
        ckpt.prefix_cache_hits += summary.prefix_cache_hits
        ckpt.worker = summary.worker
        ckpt.count_usage(time.time(), answered + failures, summary.prompt_tokens, summary.completion_tokens,
                         summary.seconds)
        ckpt.save(self.spool.checkpoint(job))
        self._seen[job] = (ckpt.ids_count, seen)
        log.event(JobEvent.CHUNK_MERGED, job, chunk=summary.index + 1, first_line=chunk.first_line,
                  last_line=chunk.last_line, answered=answered, failed=failures,
                  seconds=round(summary.seconds, 4), worker=summary.worker, prompt_tokens=summary.prompt_tokens,
                  completion_tokens=summary.completion_tokens, **_engine_savings(summary))

    def _duplicates(self, job: str, chunk: ChunkRange, line_numbers: list[int]) -> bytes:
        raw = chunk.read(self.spool.input(job))
        out = []
        for n in line_numbers:
            text = raw[n - chunk.first_line].rstrip(b"\r\n")
            cid = LineParser().parse(text, n)
            custom_id = cid.custom_id if isinstance(cid, Request) else None
            out.append(deadletter_line(job, BadLine(n, text, "duplicate_custom_id",
                                                    f"custom_id {custom_id!r} was already used in this job",
                                                    custom_id)))
        return b"".join(out)

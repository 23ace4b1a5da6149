"""A job's life around its chunks: set it up, reject it whole, finish it.

*Setting up* a file just claimed from the inbox checks it whole (size, line count, limits)
and writes its first checkpoint; a file that fails the checks, or is not a regular file at
all, is *rejected*: moved to ``rejected/`` beside a reason file. *Finishing* a job whose
lines are all merged (or that was cancelled) cuts its files back to the checkpoint's
offsets, records the final status, archives the input and removes the work area. Every
step but rejecting an odd inbox entry runs under the job lock, which the caller holds.
"""

from __future__ import annotations

import os
import time

from spoolbatch.config import Config
from spoolbatch.engines.adapters import adapter_bases
from spoolbatch.errors import InputError
from spoolbatch.format.lines import LineParser
from spoolbatch.format.preflight import check_file
from spoolbatch.format.types import Request
from spoolbatch.store import jobindex
from spoolbatch.store.batches import BatchRecord, project_of, settle_project, stop_state
from spoolbatch.store.checkpoint import Checkpoint
from spoolbatch.store.fsutil import AppendFile
from spoolbatch.store.joblog import JobEvent, JobLog
from spoolbatch.store.jobstate import FINAL, JobState
from spoolbatch.store.rejections import write_reason
from spoolbatch.store.spool import InboxClaim, InboxEntry, Spool
from spoolbatch.store.workarea import ChunkRange, WorkArea


def _first_request(path: os.PathLike[str], config: Config) -> tuple[str | None, str | None]:
    """The model and endpoint of the first valid line: they are the job's (one of each per job; a
    line naming a LoRA adapter makes it a job of the adapter's base model)."""
    parser = LineParser(max_line_bytes=config.max_line_bytes, adapters=adapter_bases(config.adapters))
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if isinstance(parser.parse(raw, n), Request):
                return parser.model, parser.url
    return None, None


class Lifecycle:
    """Sets jobs up, rejects whole files, and finishes jobs, for one worker."""

    def __init__(self, spool: Spool, config: Config, *, worker: str = "", echo: bool = True) -> None:
        self.spool = spool
        self.config = config
        self.worker = worker
        self.echo = echo

    def log(self, job: str) -> JobLog:
        """The job's log."""
        return JobLog(self.spool.log(job), echo=self.echo, max_bytes=self.config.log_max_bytes,
                      keep=self.config.log_keep)

    # --- setting a job up ----------------------------------------------------------------------
    def setup(self, claim: InboxClaim) -> Checkpoint | None:
        """Check a file just claimed from the inbox and write its first checkpoint (releases its lock)."""
        try:
            if claim.project is not None:  # first of all: the folder it came from is its project
                settle_project(self.spool, claim.job, claim.project)
            return self.setup_locked(claim.job, claim.original_name or f"{claim.job}.jsonl")
        finally:
            claim.release()

    def setup_locked(self, job: str, name: str) -> Checkpoint | None:
        """Check ``job``'s input whole and write its first checkpoint; None when it is rejected."""
        sp = self.spool
        try:
            facts = check_file(sp.input(job), max_bytes=self.config.max_job_bytes,
                               max_requests=self.config.max_requests_per_job, name=name)
        except InputError as exc:
            self.reject(job, name, exc)
            return None
        model, url = _first_request(sp.input(job), self.config)
        ckpt = Checkpoint(job=job, input_name=name, input_bytes=facts.size, total_lines=facts.lines,
                          started_at=time.time(), worker=self.worker, model=model, url=url,
                          project=project_of(BatchRecord.load(sp, job)))
        WorkArea(sp.work_area(job)).ensure()
        ckpt.save(sp.checkpoint(job))
        self.log(job).event(JobEvent.CLAIMED, job, file=name, lines=facts.lines, bytes=facts.size, model=model,
                            worker=self.worker)
        return ckpt

    # --- rejecting a whole file ----------------------------------------------------------------
    def reject(self, job: str, name: str, exc: InputError) -> None:
        """Refuse a claimed input whole: the reason beside it in ``rejected/``, its job lock gone."""
        self.log(job).event(JobEvent.REJECTED, job, file=name, code=exc.code, reason=exc.message, hint=exc.hint)
        write_reason(self.spool, job, name, exc.code, exc.message, exc.hint)
        self.spool.reject_input(job)
        self.spool.drop_job_lock(job)

    def refuse_odd(self, entry: InboxEntry, what: str) -> str | None:
        """Move a symlink or special file out of the inbox without following it; the reason, or None.

        Called by ``Spool.claim_inbox`` under the claim lock, so the job id it picks is unique.
        """
        job = self.spool.unique_job_id(entry.name, own_inbox_name=entry.name)
        if not self.spool.reject_entry(entry, job):
            return None
        settle_project(self.spool, job, entry.project)
        reason = f"{entry.name}: {what}; spoolbatch does not follow links or read special files"
        write_reason(self.spool, job, entry.name, "not_a_regular_file", reason)
        return f"refused {job}: {reason}"

    # --- the end -------------------------------------------------------------------------------
    def ending(self, job: str, ckpt: Checkpoint) -> JobState | None:
        """The final state ``job`` has reached after its last merge, or None while it goes on.

        Completed once every line is merged; cancelled (or expired) once a cancel is pending
        (or its batch's completion window passed) and no other worker is answering a chunk of
        it; a final status already recorded stays (a worker died while finishing: the finish
        is done again).
        """
        if ckpt.status in FINAL:
            return ckpt.status
        area = WorkArea(self.spool.work_area(job))
        plan = area.plan()
        if ckpt.bytes_consumed >= ckpt.input_bytes and ckpt.chunks >= len(plan):
            return JobState.COMPLETED
        if (stop := stop_state(self.spool, job)) is not None and not self._in_flight(area, plan[ckpt.chunks:]):
            return stop
        return None

    def _in_flight(self, area: WorkArea, chunks: list[ChunkRange]) -> bool:
        """True when another worker is answering one of ``chunks`` right now."""
        for chunk in chunks:
            held = self.spool.try_lock(area.lock(chunk.index))
            if held is None:
                return True
            held.release()
        return False

    def finish(self, job: str, ckpt: Checkpoint, status: JobState) -> None:
        """End ``job`` in ``status``: files cut to the checkpoint, input archived, work area gone."""
        sp = self.spool
        if ckpt.status not in FINAL:
            if status == JobState.COMPLETED:
                self.log(job).event(JobEvent.COMPLETED, job, answered=ckpt.requests_done, failed=ckpt.requests_failed,
                                    tokens=ckpt.total_tokens, seconds=round(ckpt.busy_seconds, 3))
            elif status in (JobState.CANCELLED, JobState.EXPIRED):
                self.log(job).event(JobEvent(status.value), job, line=ckpt.lines_consumed)
                cause = "cancel asked" if status == JobState.CANCELLED else "completion window passed"
                ckpt.message = f"{cause}; stopped after line {ckpt.lines_consumed:,} of {ckpt.total_lines:,}"
        # A crash may have left bytes past the committed offsets: the final files hold none.
        for path, size in ((sp.results(job), ckpt.results_bytes), (sp.deadletter_file(job), ckpt.deadletter_bytes),
                           (sp.ids(job), ckpt.ids_count * 8)):
            AppendFile(path, size).close()
        if ckpt.status != status or ckpt.finished_at is None:
            ckpt.status = status
            ckpt.finished_at = time.time()
            ckpt.save(sp.checkpoint(job))
        jobindex.ended(sp, job, status, ckpt.finished_at, ckpt.created_at, ckpt.project)
        sp.archive_input(job)
        WorkArea(sp.work_area(job)).remove()
        sp.clear_cancel(job)
        sp.drop_job_lock(job)

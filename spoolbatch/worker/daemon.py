"""The `spoolbatch run` daemon: claim a chunk (of a running job, else of a new file), answer,
commit and merge it, repeat; stop cleanly on signals.

Each step is its own module's: ``lifecycle`` sets a job up, rejects it or finishes it,
``claims`` claims, prepares and commits a chunk, ``merge`` merges committed parts. The
daemon calls them in order, the job-wide ones under the job lock (``take_chunk``, ``merge``).

``loop_once`` does one iteration and is what tests drive; ``run`` repeats it with an idle
wait of ``poll_interval``. Signal handlers only set a flag, read between chunks; the chunk
already handed to the engine (the look-ahead) is finished before the daemon leaves.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from spoolbatch.config import DEFAULT_PROJECT, Config
from spoolbatch.engines import make_engine
from spoolbatch.engines.base import Engine
from spoolbatch.errors import DiskFull
from spoolbatch.notify import webhooks
from spoolbatch.store.checkpoint import Checkpoint
from spoolbatch.store.fsutil import is_disk_full
from spoolbatch.store.heartbeat_record import Heartbeat, WorkerState
from spoolbatch.store.joblog import JobEvent, JobLog
from spoolbatch.store.jobstate import FINAL
from spoolbatch.store.spool import InboxEntry, Spool
from spoolbatch.store.workarea import PartSummary
from spoolbatch.worker import gcpolicy, sdnotify
from spoolbatch.worker.claims import ChunkClaim, Claims, PreparedChunk
from spoolbatch.worker.diskguard import DiskGuard, Statvfs
from spoolbatch.worker.executor import ChunkExecutor, describe
from spoolbatch.worker.gpu import GpuMonitor
from spoolbatch.worker.gpuguard import GpuGuard
from spoolbatch.worker.heartbeat import HeartbeatWriter
from spoolbatch.worker.lifecycle import Lifecycle
from spoolbatch.worker.maintenance import Maintenance
from spoolbatch.worker.merge import Merger
from spoolbatch.worker.metrics import write_metrics
from spoolbatch.worker.schedule import Candidate, Choice, Scheduler
from spoolbatch.worker.totals import Totals

RERANKS = 3  # rankings per chunk at most, when files keep coming into the inbox meanwhile


@dataclass(frozen=True, slots=True)
class LoopResult:
    """What one iteration did: whether it ran a job, and how many inbox files are still settling."""

    worked: bool
    settling: int = 0
    job: str | None = None


class Daemon:
    """One worker on one spool."""

    def __init__(self, config: Config, *, engine_factory: Callable[[], Engine] | None = None,
                 gpu: GpuMonitor | None = None, echo: bool = True, statvfs: Statvfs = os.statvfs,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock  # the time an inbox file's age is measured against (settle_seconds)
        self.spool = Spool(config.spool)
        self.spool.require()
        self.echo = echo
        self._stop = threading.Event()
        self._interrupts = 0
        self._handlers: dict[int, Any] = {}  # signal -> the handler install_signal_handlers replaced
        self.heartbeat = HeartbeatWriter(self.spool, config.heartbeat_interval, engine=config.engine,
                                   chunk_size=config.chunk_size, poll_interval=config.poll_interval)
        self.log = JobLog(self._daemon_log_path(), echo=echo, max_bytes=config.log_max_bytes, keep=config.log_keep)
        # What this worker waits for or repairs beside any one job: named events in the daemon's log.
        self.events = events = self.log.daemon_events(self.heartbeat.id)
        self.executor = ChunkExecutor(
            engine_factory or (lambda: make_engine(config.engine, config, events=events)),
            max_attempts=config.max_attempts, log=self.log, events=events)
        self.guard = GpuGuard(gpu or GpuMonitor(), config, self.heartbeat, self._stop,
                              reserved_pct=self._reserved_pct, events=events)
        self.disk = DiskGuard(self.spool, config, self.heartbeat, self._stop, events, statvfs=statvfs)
        self.maintenance = Maintenance(self.spool, config, self.log)
        self.totals = Totals()
        self._metrics_lock = threading.Lock()  # the heartbeat thread and the loop both write the file
        self.lifecycle = Lifecycle(self.spool, config, worker=self.heartbeat.id, echo=echo)
        self.claims = Claims(self.spool, config, self.executor, self.lifecycle.log, worker=self.heartbeat.id)
        self.merger = Merger(self.spool, self.lifecycle.log)
        self.scheduler = Scheduler(self.spool, config, self.lifecycle.log, worker=self.heartbeat.id)
        self._choices: dict[tuple[str, int], Choice] = {}  # (job, chunk index) claimed -> why (until it runs)
        self._ahead: PreparedChunk | None = None  # the next chunk, already handed to the engine
        self.heartbeat.on_beat.append(self._on_beat)
        # Called after every merged chunk with the job's checkpoint and the chunk's figures
        # (``last_chunk`` of the heartbeat, or None): `run` in a terminal draws its bars from it.
        self.on_progress: list[Callable[[Checkpoint, dict[str, Any] | None], None]] = []

    def _daemon_log_path(self) -> Path | None:
        """logs/daemon.log, unless systemd's journal already has stderr (and no file was asked for)."""
        wanted = self.config.daemon_log_file
        if wanted is None:
            wanted = not os.environ.get("JOURNAL_STREAM")
        return self.spool.daemon_log() if wanted else None

    def _reserved_pct(self) -> float:
        """The share of the card our own engine holds by design (vLLM preallocates it)."""
        engine = self.executor.engine
        return self.config.gpu_memory_utilization * 100 if engine is not None and engine.name == "vllm" else 0.0

    def _on_beat(self, beat: Heartbeat) -> None:
        """Every heartbeat: feed the systemd watchdog and rewrite the metrics file."""
        sdnotify.watchdog()
        self._write_metrics(beat)

    def _write_metrics(self, beat: Heartbeat | None = None) -> None:
        with self._metrics_lock:
            sample = self.totals.sample(self.spool, beat if beat is not None else self.heartbeat.snapshot())
            write_metrics(self.spool.worker_metrics(self.heartbeat.id), sample)

    def _jobs_changed(self) -> None:
        """This worker changed a job's state (claimed, finished, cancelled, refused it): recount the
        jobs and rewrite the metrics file now, so it never shows a finished job as queued."""
        self.totals.jobs_changed()
        with contextlib.suppress(Exception):  # best effort, as on every beat: the next one tries again
            self._write_metrics()

    # --- signals --------------------------------------------------------------------------
    def request_stop(self, *_: object) -> None:
        """Ask the daemon to stop at the next chunk boundary (from any thread; not a signal handler)."""
        self._stop.set()
        self.heartbeat.stop_asked = True
        self.heartbeat.poke()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # A handler runs in the main thread between two of its bytecodes, maybe while that thread
        # holds the heartbeat's lock (every update takes it): taking it here hung the daemon on
        # SIGTERM for good. So it sets flags only: the stop event (its wait wakes on the signal)
        # and a plain attribute the heartbeat's next write reads.
        self._interrupts += 1
        if signum == signal.SIGINT and self._interrupts > 1:
            raise KeyboardInterrupt  # a second Ctrl-C: leave now; the checkpoint is intact
        self.heartbeat.stop_asked = True
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT end the daemon at a chunk boundary (until ``run`` returns)."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._handlers.setdefault(signum, signal.signal(signum, self._on_signal))

    def restore_signal_handlers(self) -> None:
        """Put back the handlers ``install_signal_handlers`` replaced (``run`` does this as it ends)."""
        while self._handlers:
            signum, handler = self._handlers.popitem()
            signal.signal(signum, handler)

    @property
    def stopping(self) -> bool:
        """True once a stop was asked for."""
        return self._stop.is_set()

    # --- the steps under a job's lock -----------------------------------------------------
    def take_chunk(self, job: str, size: int, still: Callable[[], bool] | None = None) -> ChunkClaim | None:
        """Bring ``job`` up to date and claim a chunk of it, under its job lock.

        Sets it up if a crash left its input in ``active/`` without a checkpoint, merges
        the parts other workers committed, finishes it when it is over, else claims, unless
        ``still`` (asked last, just before the claim) says the choice of ``job`` is out of date.
        """
        sp = self.spool
        if not sp.input(job).exists():
            return None
        lock = sp.wait_lock(sp.job_lock(job))
        try:
            if not sp.input(job).exists():  # finished or rejected by another worker meanwhile
                return None
            ckpt = Checkpoint.load(sp.checkpoint(job)) or self.lifecycle.setup_locked(job, f"{job}.jsonl")
            if ckpt is None:
                return None
            ckpt = self.merger.merge(job, ckpt)
            if self._finish_if_over(job, ckpt):
                self._jobs_changed()
                return None
            if still is None:
                return self.claims.claim(job, ckpt, size)
            # `submit` and the API place files under the claim lock: none comes between the look and the claim.
            with sp.claim_lock():
                return self.claims.claim(job, ckpt, size) if still() else None
        finally:
            lock.release()

    def merge(self, job: str) -> Checkpoint | None:
        """Merge ``job``'s committed parts that are next in order and finish it when it is over."""
        sp = self.spool
        lock = sp.wait_lock(sp.job_lock(job))
        try:
            ckpt = Checkpoint.load(sp.checkpoint(job))
            if ckpt is None or not sp.input(job).exists():
                return ckpt
            ckpt = self.merger.merge(job, ckpt)
            self._finish_if_over(job, ckpt)
            return ckpt
        finally:
            lock.release()

    def _finish_if_over(self, job: str, ckpt: Checkpoint) -> bool:
        state = self.lifecycle.ending(job, ckpt)
        if state is None:
            return False
        self.lifecycle.finish(job, ckpt, state)
        self.merger.forget(job)
        return True

    def _refuse_odd(self, entry: InboxEntry, what: str) -> None:
        if (message := self.lifecycle.refuse_odd(entry, what)) is not None:
            self.log(message)
            self._jobs_changed()

    # --- one iteration --------------------------------------------------------------------
    def _progress(self, ckpt: Checkpoint, summary: PartSummary | None) -> None:
        fields: dict[str, object] = {
            "state": WorkerState.WORKING, "reason": None, "job": ckpt.job, "model": ckpt.model,
            "progress": {"lines_consumed": ckpt.lines_consumed, "total_lines": ckpt.total_lines,
                         "requests_done": ckpt.requests_done, "requests_failed": ckpt.requests_failed,
                         "fraction": round(ckpt.progress(), 4), "eta_seconds": ckpt.eta_seconds()},
        }
        last: dict[str, Any] | None = None
        if summary is not None:
            self.totals.add(summary, ckpt.project or DEFAULT_PROJECT)
            last = {"requests": summary.lines, "seconds": round(summary.seconds, 3),
                    "requests_per_second": round(summary.lines / summary.seconds, 1) if summary.seconds else None,
                    "completion_tokens": summary.completion_tokens}
            fields["last_chunk"] = last
        self.heartbeat.update(**fields)
        for hook in self.on_progress:
            hook(ckpt, last)

    def _next_chunk(self, *, model: str | None = None, block: bool = True) -> tuple[ChunkClaim | None, int]:
        """A chunk to answer: of the job the scheduler ranks first that has one (worker/schedule.py).

        ``model`` (a look-ahead) takes only a running job of that model, and none when a job of
        another model or a file still in the inbox ranks before it (the next iteration takes that
        one); with ``block=False`` an unsafe GPU means no chunk rather than a wait.
        """
        size = self.guard.next_chunk_size(block=block)  # waits while the GPU is unsafe
        if size is None:
            return None, 0
        loaded = model or self.executor.model
        now = self.clock()
        ranked = self.scheduler.rank(now, loaded)
        first = next((c.job for c in ranked if c.entry is None), None)
        if not self.disk.wait(self.disk.need(size, first), block=block):
            return None, 0  # stopping, or (a look-ahead) short of space now
        tried: set[str] = set()
        for _ in range(RERANKS):
            chunk, again = self._chunk_of_first(ranked, size, model, tried, now, loaded)
            if chunk is not None:
                return chunk, 0
            if not again:
                break
            now = self.clock()
            ranked = self.scheduler.rank(now, loaded)
        while model is None and not self._stop.is_set():
            claim, settling = self.spool.claim_inbox(self.config.settle_seconds, now=self.clock(),
                                                     on_odd=self._refuse_odd)
            if claim is None:
                # Another worker may have moved a job from the inbox to active/ between the listing
                # above and this scan: help with it now (a `--once` worker would otherwise leave).
                for late in self.scheduler.rank(self.clock(), loaded):
                    if late.entry is None and late.job not in tried and \
                            (chunk := self.take_chunk(late.job, size)) is not None:
                        return self._scheduled(chunk, ranked, now, loaded), settling
                return None, settling
            ready = self.lifecycle.setup(claim)
            self._jobs_changed()
            if ready is not None:
                chunk = self.take_chunk(claim.job, size)
                if chunk is not None:
                    return self._scheduled(chunk, ranked, now, loaded), settling
        return None, 0

    def _chunk_of_first(self, ranked: list[Candidate], size: int, model: str | None, tried: set[str], now: float,
                        loaded: str | None) -> tuple[ChunkClaim | None, bool]:
        """A chunk of the first candidate that has one; and whether to rank again (a job came since the
        ranking, into the inbox or claimed from it: it may be more urgent than the one about to get a chunk)."""
        seen = self.scheduler.ranking.seen

        def unchanged() -> bool:
            return self.scheduler.ranking.unchanged(seen)

        for candidate in ranked:
            if self._stop.is_set():
                return None, False
            # A look-ahead ends a job that only has to be ended (no engine needed) as any pass does.
            if model is not None and not candidate.ending and (candidate.entry is not None or candidate.model != model):
                if candidate.fresh:
                    return None, False  # a more urgent job, or another model's, comes first
                continue
            if candidate.entry is not None:
                claim, _ = self.spool.claim_inbox(self.config.settle_seconds, now=now, on_odd=self._refuse_odd,
                                                  only=candidate.entry.name)
                if claim is not None:
                    ready = self.lifecycle.setup(claim)
                    self._jobs_changed()
                    chunk = self.take_chunk(claim.job, size) if ready is not None else None
                else:  # another worker claimed it meanwhile: a chunk of it once that one has set it up
                    tried.add(candidate.job)
                    chunk = self.take_chunk(candidate.job, size)
            else:
                tried.add(candidate.job)
                chunk = self.take_chunk(candidate.job, size, still=unchanged)
                if chunk is None and not unchanged():
                    return None, True
            if chunk is not None:
                return self._scheduled(chunk, ranked, now, loaded, candidate), False
        return None, False

    def _scheduled(self, claim: ChunkClaim, ranked: list[Candidate], now: float, loaded: str | None,
                   candidate: Candidate | None = None) -> ChunkClaim:
        """Note why this chunk was taken: the heartbeat shows it while it runs, the metrics count it."""
        choice = self.scheduler.chose(claim.job, claim.chunk.index + 1, ranked, now, loaded, candidate)
        if len(self._choices) > 8:  # claims that never ran (a failed commit): forget them
            self._choices.clear()
        self._choices[(claim.job, claim.chunk.index)] = choice
        return claim

    def _look_ahead(self, current: PreparedChunk) -> None:
        """Claim and submit the next chunk of the same model while the current one is answered.

        The engine then has the next chunk's requests before the current one's last ones
        finish, so its batch never drains at a chunk boundary. Each chunk is still
        committed and merged on its own, so checkpoints stay exact.
        """
        if self._ahead is not None or self._stop.is_set() or not current.requests:
            return
        claim, _ = self._next_chunk(model=current.claim.model, block=False)
        if claim is not None:
            self._ahead = self.claims.prepare(claim)

    def loop_once(self) -> LoopResult:
        """Answer, commit and merge one chunk (having handed the next one to the engine already)."""
        settling = 0
        current, self._ahead = self._ahead, None
        if current is None:
            claim, settling = self._next_chunk()
            if claim is None:
                return LoopResult(False, settling)
            current = self.claims.prepare(claim)
        job, chunk = current.claim.job, current.claim.chunk
        choice = self._choices.pop((job, chunk.index), None)
        self.heartbeat.update(state=WorkerState.WORKING, job=job, chunk=chunk.index + 1, reason=None,
                              chunk_lines=[chunk.first_line, chunk.last_line],
                              scheduled=choice.to_dict() if choice is not None else None)
        try:
            self._look_ahead(current)
            summary = self.claims.commit(current)
            self.totals.chunk_run(choice.priority if choice is not None else "normal")
            ckpt = self.merge(job)
            if ckpt is not None:
                self._progress(ckpt, summary)
                if ckpt.status in FINAL:
                    self._jobs_changed()
            # Logged once per job, after its last chunk here (the look-ahead one may be next).
            if self._stop.is_set() and ckpt is not None and ckpt.status not in FINAL and \
                    (self._ahead is None or self._ahead.claim.job != job):
                self.lifecycle.log(job).event(JobEvent.STOPPING, job, line=ckpt.lines_consumed,
                                              worker=self.heartbeat.id)
        except Exception as exc:
            # Neither a full disk nor a bug may take the queue down: say why, back off, go on.
            # The chunk stays claimable; the checkpoint is consistent whatever was half-written.
            log = self.lifecycle.log(job)
            if is_disk_full(exc):
                what = exc.message if isinstance(exc, DiskFull) else describe(exc)
                reason = f"disk full: {what}"
                log.event(JobEvent.DISK_FULL, job, chunk=chunk.index + 1, error=what, worker=self.heartbeat.id)
            else:
                reason = f"job {job} failed, will be retried: {describe(exc)}"
                log.event(JobEvent.CHUNK_FAILED, job, chunk=chunk.index + 1, error=describe(exc),
                          worker=self.heartbeat.id)
            self.heartbeat.update(state=WorkerState.WAITING, reason=reason)
            self._sleep(self.config.poll_interval)
            return LoopResult(True, settling, job)
        finally:
            current.claim.release()
        if self._ahead is None:
            self.heartbeat.update(state=WorkerState.IDLE, job=None, chunk=None, chunk_lines=None, scheduled=None)
        return LoopResult(True, settling, job)

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def _start_webhooks(self, stop: threading.Event) -> threading.Thread | None:
        """Send the spool's webhooks from a thread beside the loop, when configured and httpx is here."""
        try:
            return webhooks.start(self.config, stop, interval=2.0)
        except ImportError:
            self.log("webhooks are configured but httpx is missing (pip install 'spoolbatch[serve]'): "
                     "this worker leaves them to `spoolbatch serve`")
            return None

    # --- the loop -------------------------------------------------------------------------
    def run(self, once: bool = False) -> int:
        """Work until stopped (or, with ``once``, until the queue is drained); exit status."""
        restore_gc = gcpolicy.quiet()
        self.guard.read()
        self.heartbeat.start()
        webhooks_stop = threading.Event()
        webhooks_thread = self._start_webhooks(webhooks_stop)
        sdnotify.ready()
        self.log(f"daemon started (engine {self.config.engine}, spool {self.spool.root}, "
                 f"chunk size {self.config.chunk_size})")
        try:
            while not self._stop.is_set() or self._ahead is not None:
                self.maintenance.maybe_run()
                result = self.loop_once()
                if result.worked:
                    continue
                if once and result.settling == 0:
                    break
                self.heartbeat.update(state=WorkerState.IDLE,
                                      reason="waiting for files to settle" if result.settling else None)
                wait = min(self.config.poll_interval, max(0.2, self.config.settle_seconds / 2)) \
                    if result.settling else self.config.poll_interval
                self._sleep(wait)
        finally:
            sdnotify.stopping()
            webhooks_stop.set()
            if webhooks_thread is not None:
                webhooks_thread.join(timeout=15)
            self.executor.close()
            self.guard.monitor.close()
            self.heartbeat.stop(WorkerState.STOPPED)
            self.log("daemon stopped")
            restore_gc()
            self.restore_signal_handlers()
        return 0



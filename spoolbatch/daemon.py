"""The `spoolbatch run` daemon: claim a job, run it in chunks, repeat; stop cleanly on signals.

``loop_once`` does one iteration and is what tests drive; ``run`` repeats it with an idle
wait of ``poll_interval``. Signal handlers only set a flag, which the job runner reads at
each chunk boundary.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from spoolbatch.checkpoint import Checkpoint
from spoolbatch.config import Config
from spoolbatch.engines import make_engine
from spoolbatch.engines.base import Engine
from spoolbatch.errors import DiskFull
from spoolbatch.executor import ChunkExecutor, describe
from spoolbatch.heartbeat import Heartbeat
from spoolbatch.joblog import JobLog
from spoolbatch.jobrunner import ChunkReport, JobRunner
from spoolbatch.spool import Spool


@dataclass(frozen=True, slots=True)
class LoopResult:
    """What one iteration did: whether it ran a job, and how many inbox files are still settling."""

    worked: bool
    settling: int = 0
    job: str | None = None


class Daemon:
    """One worker on one spool."""

    def __init__(self, config: Config, *, engine_factory: Callable[[], Engine] | None = None,
                 echo: bool = True) -> None:
        self.config = config
        self.spool = Spool(config.spool)
        self.spool.require()
        self.echo = echo
        self._stop = threading.Event()
        self._interrupts = 0
        self.heartbeat = Heartbeat(self.spool, config.heartbeat_interval, engine=config.engine,
                                   chunk_size=config.chunk_size, poll_interval=config.poll_interval)
        self.log = JobLog(self.spool.logs / "daemon.log", echo=echo)
        self.executor = ChunkExecutor(
            engine_factory or (lambda: make_engine(config.engine, config)),
            max_attempts=config.max_attempts, log=self.log)

    # --- signals --------------------------------------------------------------------------
    def request_stop(self, *_: object) -> None:
        """Ask the daemon to stop at the next chunk boundary."""
        self._stop.set()
        self.heartbeat.update(state="stopping")

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._interrupts += 1
        if signum == signal.SIGINT and self._interrupts > 1:
            raise KeyboardInterrupt  # a second Ctrl-C: leave now; the checkpoint is intact
        self.request_stop()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT end the daemon at a chunk boundary."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    @property
    def stopping(self) -> bool:
        """True once a stop was asked for."""
        return self._stop.is_set()

    # --- one iteration --------------------------------------------------------------------
    def _progress(self, ckpt: Checkpoint, report: ChunkReport | None) -> None:
        fields: dict[str, object] = {
            "state": "working", "reason": None, "job": ckpt.job, "model": ckpt.model,
            "progress": {"lines_consumed": ckpt.lines_consumed, "total_lines": ckpt.total_lines,
                         "requests_done": ckpt.requests_done, "requests_failed": ckpt.requests_failed,
                         "fraction": round(ckpt.progress(), 4), "eta_seconds": ckpt.eta_seconds()},
        }
        if report is not None:
            fields["chunk"] = report.chunk + 1
            fields["last_chunk"] = {"requests": report.lines, "seconds": round(report.seconds, 3),
                                    "requests_per_second": round(report.lines / report.seconds, 1)
                                    if report.seconds else None,
                                    "completion_tokens": report.completion_tokens}
        else:
            fields["chunk"] = ckpt.chunks + 1
        self.heartbeat.update(**fields)

    def loop_once(self, now: float | None = None) -> LoopResult:
        """Claim and run at most one job."""
        claim, settling = self.spool.claim(self.config.settle_seconds, now=now,
                                           on_refused=lambda job, why: self.log(f"refused {job}: {why}"))
        if claim is None:
            return LoopResult(False, settling)
        self.heartbeat.update(state="working", job=claim.job, chunk=None, progress=None, reason=None)
        runner = JobRunner(self.spool, claim, self.config, self.executor, worker=self.heartbeat.id,
                           should_stop=self._stop.is_set, on_progress=self._progress, echo=self.echo)
        try:
            runner.run()
        except DiskFull as exc:
            runner.log(f"disk full: {exc.message}; waiting for space, nothing lost")
            self.heartbeat.update(state="waiting", reason=f"disk full: {exc.message}")
            self._sleep(self.config.poll_interval)
        except Exception as exc:  # a bug must not take the queue down: log, back off, go on
            runner.log(f"job failed with an unexpected error, will be retried: {describe(exc)}")
            self.heartbeat.update(state="waiting", reason=f"job {claim.job}: {describe(exc)}")
            self._sleep(self.config.poll_interval)
        finally:
            claim.release()
        self.heartbeat.update(state="idle", job=None, chunk=None)
        return LoopResult(True, settling, claim.job)

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)

    # --- the loop -------------------------------------------------------------------------
    def run(self, once: bool = False) -> int:
        """Work until stopped (or, with ``once``, until the queue is drained); exit status."""
        self.heartbeat.start()
        self.log(f"daemon started (engine {self.config.engine}, spool {self.spool.root}, "
                 f"chunk size {self.config.chunk_size})")
        try:
            while not self._stop.is_set():
                result = self.loop_once()
                if result.worked:
                    continue
                if once and result.settling == 0:
                    break
                self.heartbeat.update(state="idle", reason="waiting for files to settle" if result.settling else None)
                wait = min(self.config.poll_interval, max(0.2, self.config.settle_seconds / 2)) \
                    if result.settling else self.config.poll_interval
                self._sleep(wait)
        finally:
            self.executor.close()
            self.heartbeat.stop("stopped")
            self.log("daemon stopped")
        return 0



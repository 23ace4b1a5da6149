"""What one daemon has done since it started, for its Prometheus metrics file."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from spoolbatch.worker.metrics import MetricsSample

if TYPE_CHECKING:
    from spoolbatch.store.heartbeat_record import Heartbeat
    from spoolbatch.store.spool import Spool
    from spoolbatch.store.workarea import PartSummary

JOB_COUNT_SECONDS = 30.0


@dataclass(slots=True)
class Totals:
    """Counters fed by every committed chunk."""

    requests_done: int = 0
    requests_failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    deduplicated: int = 0
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    # project -> [requests, prompt tokens, completion tokens, engine seconds] of its chunks this worker answered
    by_project: dict[str, list[float]] = field(default_factory=dict)
    chunks_by_priority: dict[str, int] = field(default_factory=dict)  # priority label -> chunks answered
    last_rps: float | None = None
    last_tps: float | None = None
    # Jobs by status: recounted every JOB_COUNT_SECONDS (it reads every checkpoint), and at once
    # after this worker changes a job's state (jobs_changed).
    _jobs: dict[str, int] = field(default_factory=dict)
    _jobs_at: float = float("-inf")
    _census: dict[str, Any] = field(default_factory=dict)  # store.census's cache: unchanged checkpoints not reread

    def add(self, report: PartSummary, project: str | None = None) -> None:
        """Count one committed chunk (of a job of ``project``)."""
        if project is not None:
            row = self.by_project.setdefault(project, [0, 0, 0, 0.0])
            row[0] += report.done + report.failed
            row[1] += report.prompt_tokens
            row[2] += report.completion_tokens
            row[3] += report.seconds
        self.requests_done += report.done
        self.requests_failed += report.failed
        self.prompt_tokens += report.prompt_tokens
        self.completion_tokens += report.completion_tokens
        self.deduplicated += report.deduplicated
        self.prefix_cache_queries += report.prefix_cache_queries
        self.prefix_cache_hits += report.prefix_cache_hits
        if report.seconds > 0:
            self.last_rps = report.lines / report.seconds
            self.last_tps = report.completion_tokens / report.seconds

    def chunk_run(self, priority: str | int) -> None:
        """Count one answered chunk of a job of ``priority`` (its label)."""
        label = str(priority)
        self.chunks_by_priority[label] = self.chunks_by_priority.get(label, 0) + 1

    def jobs_changed(self) -> None:
        """A job changed state: the next sample recounts the jobs instead of reusing the last count."""
        self._jobs_at = float("-inf")

    def sample(self, spool: Spool, beat: Heartbeat) -> MetricsSample:
        """A metrics sample from these counters, the spool's jobs and the heartbeat's GPU figures."""
        from spoolbatch.store.census import count_jobs
        from spoolbatch.worker.gpu import GpuDevice

        now = time.monotonic()
        if now - self._jobs_at >= JOB_COUNT_SECONDS:  # a directory scan: not on every beat
            self._jobs, self._jobs_at = {state.value: n for state, n in count_jobs(spool, self._census).items()}, now
        devices = [GpuDevice(**d) for d in (beat.gpu or {}).get("devices", [])]
        disk = beat.disk or {}
        return MetricsSample(jobs=self._jobs, requests_done_total=self.requests_done,
                             requests_failed_total=self.requests_failed,
                             prompt_tokens_total=self.prompt_tokens,
                             completion_tokens_total=self.completion_tokens, gpus=devices,
                             requests_deduplicated_total=self.deduplicated,
                             chunks_by_priority=dict(self.chunks_by_priority),
                             projects={p: (int(r[0]), int(r[1]), int(r[2]), round(r[3], 3))
                                       for p, r in self.by_project.items()},
                             prefix_cache_queries_total=self.prefix_cache_queries or None,
                             prefix_cache_hits_total=self.prefix_cache_hits if self.prefix_cache_queries else None,
                             last_chunk_requests_per_second=self.last_rps, last_chunk_tokens_per_second=self.last_tps,
                             chunk_size=beat.chunk_size, heartbeat_timestamp=beat.last_seen or None,
                             disk_free_bytes=disk.get("free_bytes"), disk_low=disk.get("low"),
                             worker=beat.worker)

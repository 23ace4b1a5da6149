"""The checkpoint sidecar of a job: how far it got, replaced atomically after each chunk.

The offsets in a checkpoint are the truth: on resume the results, deadletter and ids
files are cut back to them and the input is read on from ``bytes_consumed``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import orjson

from spoolbatch.store.fsutil import atomic_write
from spoolbatch.store.jobstate import FINAL, JobState


@dataclass(slots=True)
class Checkpoint:
    """Progress of one job; every field is plain JSON."""

    job: str
    status: JobState = JobState.RUNNING
    input_name: str = ""
    input_bytes: int = 0
    total_lines: int = 0
    lines_consumed: int = 0
    bytes_consumed: int = 0
    results_bytes: int = 0
    deadletter_bytes: int = 0
    ids_count: int = 0
    requests_done: int = 0
    requests_failed: int = 0
    retries: int = 0
    deduplicated: int = 0  # lines answered with an identical deterministic line's answer, not sent to the engine
    prefix_cache_queries: int = 0  # prompt tokens of requests whose engine reported its prefix cache (vLLM)
    prefix_cache_hits: int = 0  # of those, tokens the engine read from its prefix cache
    chunks: int = 0
    model: str | None = None
    url: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    updated_at: float | None = None
    finished_at: float | None = None
    busy_seconds: float = 0.0
    resumes: int = 0
    worker: str | None = None
    message: str | None = None  # why it ended before its last line (cancelled, expired); `status` shows it
    project: str | None = None  # the project it belongs to (None: a checkpoint from before projects, ``default``)
    # Per UTC day (YYYY-MM-DD): what merges that day added, [requests, prompt tokens, completion tokens,
    # engine seconds] (``count_usage``); the days add up to the totals above (`spoolbatch usage` reads them).
    usage_days: dict[str, list[float]] = field(default_factory=dict)

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens so far."""
        return self.prompt_tokens + self.completion_tokens

    @property
    def prefix_cache_hit_rate(self) -> float | None:
        """Share of prompt tokens read from the engine's prefix cache; None where the engine does not say."""
        return round(self.prefix_cache_hits / self.prefix_cache_queries, 4) if self.prefix_cache_queries else None

    def count_usage(self, when: float, requests: int, prompt_tokens: int, completion_tokens: int,
                    seconds: float) -> None:
        """Add one merged chunk's figures to its UTC day's (``when``, a Unix time)."""
        day = time.strftime("%Y-%m-%d", time.gmtime(when))
        row = self.usage_days.setdefault(day, [0, 0, 0, 0.0])
        row[0] += requests
        row[1] += prompt_tokens
        row[2] += completion_tokens
        row[3] = round(row[3] + seconds, 6)

    def progress(self) -> float:
        """Fraction of the input's lines consumed; 1.0 once completed.

        A job that ended early (cancelled, expired, failed) keeps the share it got through.
        """
        if self.status == JobState.COMPLETED:
            return 1.0
        return min(1.0, self.lines_consumed / self.total_lines) if self.total_lines else 0.0

    def eta_seconds(self) -> float | None:
        """Seconds left at the rate seen so far: 0 once completed, None before the first chunk
        and for a job that ended early (its remaining lines never run)."""
        if self.status == JobState.COMPLETED:
            return 0.0
        if self.status in FINAL:
            return None
        if not self.lines_consumed or self.busy_seconds <= 0:
            return None
        rate = self.lines_consumed / self.busy_seconds
        return max(0.0, (self.total_lines - self.lines_consumed) / rate)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON, with derived figures for readers."""
        data = asdict(self)
        data["status"] = self.status.value
        data["total_tokens"] = self.total_tokens
        data["prefix_cache_hit_rate"] = self.prefix_cache_hit_rate
        data["progress"] = round(self.progress(), 6)
        data["eta_seconds"] = self.eta_seconds()
        return data

    def save(self, path: Path) -> None:
        """Replace the sidecar atomically and durably."""
        self.updated_at = time.time()
        atomic_write(path, orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2) + b"\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Checkpoint:
        """Read a sidecar's contents, ignoring derived and unknown keys."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["status"] = JobState(values.get("status", JobState.RUNNING))
        return cls(**values)

    @classmethod
    def load(cls, path: Path) -> Checkpoint | None:
        """The sidecar at ``path``, or None when there is none yet."""
        try:
            return cls.from_dict(orjson.loads(path.read_bytes()))
        except FileNotFoundError:
            return None

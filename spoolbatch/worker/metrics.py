"""A Prometheus textfile exporter: the daemon's counters for node_exporter's textfile collector.

The daemon fills a :class:`MetricsSample` and calls :func:`write_metrics` with a path such
as ``/var/lib/node_exporter/textfile_collector/spoolbatch.prom``; node_exporter serves it.
Several daemons on one host each write their own file and set ``worker`` so their series
differ.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spoolbatch.store.fsutil import atomic_write
from spoolbatch.store.jobstate import JobState
from spoolbatch.worker.gpu import GpuDevice

# The states a worker counts without probing locks (store.census): not interrupted, not missing.
JOB_STATES = tuple(s.value for s in JobState if s not in (JobState.INTERRUPTED, JobState.MISSING))


@dataclass(slots=True)
class MetricsSample:
    """Everything one metrics file reports; None leaves a metric out."""

    jobs: Mapping[str, int] = field(default_factory=dict)  # state -> count; missing states are 0
    requests_done_total: int = 0
    requests_failed_total: int = 0
    prompt_tokens_total: int = 0
    completion_tokens_total: int = 0
    requests_deduplicated_total: int = 0
    prefix_cache_queries_total: int | None = None  # prompt tokens looked up in vLLM's prefix cache; None: not reported
    prefix_cache_hits_total: int | None = None  # of those, found there
    # project -> (requests, prompt tokens, completion tokens, engine seconds) of the chunks this worker answered
    projects: Mapping[str, tuple[int, int, int, float]] = field(default_factory=dict)
    chunks_by_priority: Mapping[str, int] = field(default_factory=dict)  # priority label -> chunks run
    gpus: Sequence[GpuDevice] = ()
    last_chunk_requests_per_second: float | None = None
    last_chunk_tokens_per_second: float | None = None
    chunk_size: int | None = None
    disk_free_bytes: int | None = None  # free on the spool's file system, as the disk guard last read it
    disk_low: bool | None = None  # True while the daemon waits for space
    up: bool = True
    heartbeat_timestamp: float | None = None  # None: now
    worker: str | None = None  # adds worker="..." to every series


Labels = Mapping[str, str]


def escape_label(value: str) -> str:
    """A label value escaped for the text format (backslash, double quote, newline)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float | int | bool) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _family(name: str, kind: str, help_text: str, samples: Iterable[tuple[Labels, float | int | bool]],
            common: Labels) -> list[str]:
    rows = []
    for labels, value in samples:
        merged = {**common, **labels}
        inner = ",".join(f'{k}="{escape_label(str(v))}"' for k, v in merged.items())
        rows.append(f"{name}{{{inner}}} {_number(value)}" if inner else f"{name} {_number(value)}")
    if not rows:
        return []
    help_escaped = help_text.replace("\\", "\\\\").replace("\n", "\\n")
    return [f"# HELP {name} {help_escaped}", f"# TYPE {name} {kind}", *rows]


def render(sample: MetricsSample) -> str:
    """The text exposition format (version 0.0.4) for ``sample``."""
    s = sample
    common: dict[str, str] = {"worker": s.worker} if s.worker else {}
    gpus = [({"gpu": str(d.index)}, d) for d in s.gpus]
    lines: list[str] = []

    def add(name: str, kind: str, help_text: str, samples: Iterable[tuple[Labels, Any]]) -> None:
        lines.extend(_family(name, kind, help_text, [(lb, v) for lb, v in samples if v is not None], common))

    states = [*JOB_STATES, *sorted(set(s.jobs) - set(JOB_STATES))]
    add("spoolbatch_jobs", "gauge", "Jobs in the spool by state.",
        [({"state": st}, int(s.jobs.get(st, 0))) for st in states])
    add("spoolbatch_requests_done_total", "counter", "Requests answered successfully.",
        [({}, s.requests_done_total)])
    add("spoolbatch_requests_failed_total", "counter", "Requests sent to the deadletter.",
        [({}, s.requests_failed_total)])
    add("spoolbatch_tokens_total", "counter", "Tokens processed, by kind.",
        [({"kind": "prompt"}, s.prompt_tokens_total), ({"kind": "completion"}, s.completion_tokens_total)])
    add("spoolbatch_requests_deduplicated_total", "counter",
        "Requests answered with an identical deterministic request's answer, not sent to the engine.",
        [({}, s.requests_deduplicated_total)])
    add("spoolbatch_prefix_cache_tokens_total", "counter",
        "Prompt tokens the engine looked up in its prefix cache (kind=query) and found there (kind=hit).",
        [({"kind": "query"}, s.prefix_cache_queries_total), ({"kind": "hit"}, s.prefix_cache_hits_total)])
    projects = sorted(s.projects.items())
    add("spoolbatch_project_requests_total", "counter", "Requests answered or failed in a project's chunks.",
        [({"project": p}, v[0]) for p, v in projects])
    add("spoolbatch_project_tokens_total", "counter", "Tokens of a project's requests, by kind.",
        [(lb, v) for p, u in projects for lb, v in (({"project": p, "kind": "prompt"}, u[1]),
                                                    ({"project": p, "kind": "completion"}, u[2]))])
    add("spoolbatch_project_gpu_seconds_total", "counter", "Seconds the engine spent on a project's chunks.",
        [({"project": p}, float(v[3])) for p, v in projects])
    add("spoolbatch_chunks_total", "counter", "Chunks answered, by the priority of their job.",
        [({"priority": p}, n) for p, n in sorted(s.chunks_by_priority.items())])
    add("spoolbatch_gpu_memory_used_bytes", "gauge", "GPU memory in use (all processes), per NVML.",
        [(lb, d.memory_used) for lb, d in gpus])
    add("spoolbatch_gpu_memory_total_bytes", "gauge", "GPU memory installed, per NVML.",
        [(lb, d.memory_total) for lb, d in gpus])
    add("spoolbatch_gpu_temperature_celsius", "gauge", "GPU core temperature.",
        [(lb, d.temperature_c) for lb, d in gpus])
    add("spoolbatch_gpu_utilization_ratio", "gauge", "GPU busy share over NVML's last sample period (0-1).",
        [(lb, None if d.utilization_pct is None else d.utilization_pct / 100) for lb, d in gpus])
    add("spoolbatch_last_chunk_requests_per_second", "gauge", "Throughput of the last finished chunk.",
        [({}, s.last_chunk_requests_per_second)])
    add("spoolbatch_last_chunk_tokens_per_second", "gauge", "Token throughput of the last finished chunk.",
        [({}, s.last_chunk_tokens_per_second)])
    add("spoolbatch_chunk_size", "gauge", "Requests in the current (or next) chunk.", [({}, s.chunk_size)])
    add("spoolbatch_disk_free_bytes", "gauge", "Bytes free on the spool's file system.", [({}, s.disk_free_bytes)])
    add("spoolbatch_disk_low", "gauge", "1 while the daemon waits for disk space before a chunk.", [({}, s.disk_low)])
    add("spoolbatch_up", "gauge", "1 while the daemon runs; 0 written on a clean stop.", [({}, s.up)])
    stamp = time.time() if s.heartbeat_timestamp is None else s.heartbeat_timestamp
    add("spoolbatch_heartbeat_timestamp_seconds", "gauge", "Unix time this file was written by the daemon.",
        [({}, stamp)])
    return "\n".join(lines) + "\n"


def write_metrics(path: str | os.PathLike[str], sample: MetricsSample | Mapping[str, Any],
                  mode: int = 0o644) -> None:
    """Atomically replace ``path`` with the metrics of ``sample`` (a MetricsSample or its fields).

    The file is world-readable by default (``mode``) because node_exporter usually runs
    as another user; it holds counts, never request content. The temp file starts with a
    dot and ends in ``.tmp`` so the textfile collector (which reads ``*.prom``) skips it. Atomic
    but not durable: neither the file nor its directory is fsynced, as it is a snapshot the next
    heartbeat writes again: a reader never sees a torn file; a power cut may leave it old or empty
    until the daemon's next beat.
    """
    if not isinstance(sample, MetricsSample):
        sample = MetricsSample(**sample)
    atomic_write(Path(path), render(sample).encode(), mode=mode, durable=False)

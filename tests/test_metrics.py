"""The Prometheus textfile: parsed back with prometheus_client, written atomically."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import IO, Any

import pytest
from prometheus_client import parser  # the test extra, not a runtime dependency

from spoolbatch.errors import DiskFull
from spoolbatch.store.heartbeat_record import Heartbeat
from spoolbatch.worker.gpu import GpuDevice
from spoolbatch.worker.metrics import MetricsSample, escape_label, render, write_metrics

GIB = 1024**3


def sample(**changes: object) -> MetricsSample:
    values: dict[str, object] = dict(
        jobs={"queued": 2, "running": 1, "completed": 7},
        requests_done_total=123_456, requests_failed_total=3,
        prompt_tokens_total=9_000_000, completion_tokens_total=1_500_000,
        gpus=(GpuDevice(0, "NVIDIA A4000", 14 * GIB, 16 * GIB, 87.5, 71, 98),
              GpuDevice(1, "NVIDIA A4000", 1 * GIB, 16 * GIB, 6.25, None, None)),
        last_chunk_requests_per_second=41.5, last_chunk_tokens_per_second=5230.25,
        chunk_size=5000, heartbeat_timestamp=1_700_000_000.5,
    )
    values.update(changes)
    return MetricsSample(**values)  # type: ignore[arg-type]


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in parser.text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_prometheus_parses_every_metric(tmp_path: Path) -> None:
    path = tmp_path / "spoolbatch.prom"
    write_metrics(path, sample())
    text = path.read_text()
    values = parse(text)
    assert values[("spoolbatch_jobs", (("state", "queued"),))] == 2
    assert values[("spoolbatch_jobs", (("state", "failed"),))] == 0
    assert values[("spoolbatch_jobs", (("state", "cancelled"),))] == 0
    assert values[("spoolbatch_requests_done_total", ())] == 123_456
    assert values[("spoolbatch_requests_failed_total", ())] == 3
    assert values[("spoolbatch_tokens_total", (("kind", "prompt"),))] == 9_000_000
    assert values[("spoolbatch_tokens_total", (("kind", "completion"),))] == 1_500_000
    assert values[("spoolbatch_gpu_memory_used_bytes", (("gpu", "0"),))] == 14 * GIB
    assert values[("spoolbatch_gpu_memory_total_bytes", (("gpu", "1"),))] == 16 * GIB
    assert values[("spoolbatch_gpu_temperature_celsius", (("gpu", "0"),))] == 71
    assert ("spoolbatch_gpu_temperature_celsius", (("gpu", "1"),)) not in values  # unknown: left out
    assert values[("spoolbatch_gpu_utilization_ratio", (("gpu", "0"),))] == pytest.approx(0.98)
    assert values[("spoolbatch_last_chunk_requests_per_second", ())] == 41.5
    assert values[("spoolbatch_last_chunk_tokens_per_second", ())] == 5230.25
    assert values[("spoolbatch_chunk_size", ())] == 5000
    assert values[("spoolbatch_up", ())] == 1
    assert values[("spoolbatch_heartbeat_timestamp_seconds", ())] == 1_700_000_000.5
    for name in ("spoolbatch_jobs", "spoolbatch_requests_done_total", "spoolbatch_gpu_utilization_ratio"):
        assert f"# HELP {name} " in text
    assert "# TYPE spoolbatch_requests_done_total counter" in text
    assert "# TYPE spoolbatch_jobs gauge" in text
    types = {f.name: f.type for f in parser.text_string_to_metric_families(text)}
    assert types["spoolbatch_tokens"] == "counter"
    assert types["spoolbatch_chunk_size"] == "gauge"


def test_no_gpu_and_no_chunk_yet(tmp_path: Path) -> None:
    path = tmp_path / "m.prom"
    write_metrics(path, sample(gpus=(), last_chunk_requests_per_second=None, chunk_size=None, up=False))
    text = path.read_text()
    assert "spoolbatch_gpu_" not in text and "spoolbatch_chunk_size" not in text
    assert parse(text)[("spoolbatch_up", ())] == 0


def test_label_values_are_escaped() -> None:
    assert escape_label('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    worker = 'gpu-box "east"\\node\n2'
    values = parse(render(sample(worker=worker, jobs={"weird\"state": 1})))
    assert values[("spoolbatch_up", (("worker", worker),))] == 1
    assert values[("spoolbatch_jobs", (("state", 'weird"state'), ("worker", worker)))] == 1


def test_accepts_a_plain_dict(tmp_path: Path) -> None:
    path = tmp_path / "m.prom"
    write_metrics(path, {"requests_done_total": 5, "heartbeat_timestamp": 1.0})
    assert parse(path.read_text())[("spoolbatch_requests_done_total", ())] == 5


def test_write_is_atomic_and_readable_by_the_exporter(tmp_path: Path) -> None:
    path = tmp_path / "spoolbatch.prom"
    path.write_text("old\n")
    old_umask = os.umask(0o077)
    try:
        write_metrics(path, sample())
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["spoolbatch.prom"]


class FullDisk:
    """The temp file's handle on a full disk: every write fails with ENOSPC (it is closed all the same)."""

    def __init__(self, f: IO[Any]) -> None:
        self.f = f

    def __enter__(self) -> FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.f.close()

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def flush(self) -> None:
        self.f.flush()


def test_a_full_disk_leaves_the_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "spoolbatch.prom"
    path.write_text("old\n")
    real = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, *args, **kw: FullDisk(real(fd, *args, **kw)))
    with pytest.raises(DiskFull):  # fsutil's atomic write says what a full disk is
        write_metrics(path, sample())
    monkeypatch.undo()
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["spoolbatch.prom"]


def test_the_snapshot_is_atomic_but_never_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", synced.append)
    path = tmp_path / "spoolbatch.prom"
    for n in (1, 2, 3):  # rewritten each heartbeat: regenerated, so nothing is paid to make it durable
        write_metrics(path, sample(requests_done_total=n))
        assert parse(path.read_text())[("spoolbatch_requests_done_total", ())] == n
    assert synced == [] and [p.name for p in tmp_path.iterdir()] == ["spoolbatch.prom"]


def test_the_metrics_file_agrees_with_the_spool_right_after_a_job_completes(tmp_path: Path) -> None:
    from spoolbatch.config import load_config
    from spoolbatch.store.checkpoint import Checkpoint
    from spoolbatch.store.jobstate import JobState
    from spoolbatch.store.spool import Spool
    from spoolbatch.worker.daemon import Daemon

    from .conftest import chat_line, drop

    spool = Spool(tmp_path / "spool")
    spool.init()
    config = load_config(spool.root, env={}, engine="fake", chunk_size=10, settle_seconds=0, poll_interval=0.1,
                         heartbeat_interval=60)  # no beat comes between the steps below: only the job changes
    drop(spool, "first.jsonl", [chat_line(i) for i in range(25)])
    drop(spool, "second.jsonl", [chat_line(i) for i in range(5)])
    daemon = Daemon(config, echo=False)
    daemon.totals.sample(spool, Heartbeat())  # the 30 s job count is fresh: only a state change may recount it
    path = spool.worker_metrics(daemon.heartbeat.id)

    def jobs() -> dict[str, float]:
        values = parse(path.read_text())
        return {dict(k[1])["state"]: v for k, v in values.items() if k[0] == "spoolbatch_jobs"}

    assert daemon.loop_once().worked  # claims "first" (the older) and answers its first chunk
    assert (jobs()["queued"], jobs()["running"], jobs()["completed"]) == (1, 1, 0)
    while (ckpt := Checkpoint.load(spool.checkpoint("first"))) is None or ckpt.status != JobState.COMPLETED:
        assert daemon.loop_once().worked
    assert (jobs()["queued"], jobs()["running"], jobs()["completed"]) == (1, 0, 1), "right after it completed"
    assert parse(path.read_text())[("spoolbatch_requests_done_total", (("worker", daemon.heartbeat.id),))] == 25
    while daemon.loop_once().worked:
        pass
    assert (jobs()["queued"], jobs()["running"], jobs()["completed"]) == (0, 0, 2)

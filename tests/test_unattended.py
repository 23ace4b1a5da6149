"""Failures injected at the boundaries the daemon owns: a hot or full GPU, a dying engine, a full disk.

Each test asserts that nothing was lost or duplicated once the failure passes.
"""

from __future__ import annotations

import errno
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from spoolbatch.config import Config
from spoolbatch.store.checkpoint import Checkpoint
from spoolbatch.store.fsutil import AppendFile
from spoolbatch.store.heartbeat_record import Heartbeat, WorkerState
from spoolbatch.store.joblog import DaemonEvent
from spoolbatch.store.jobstate import JobState
from spoolbatch.store.spool import Spool
from spoolbatch.worker.daemon import Daemon
from spoolbatch.worker.gpu import GpuMonitor

from .conftest import assert_exactly_once, chat_line, daemon_events, drop, job_events, wait_for
from .fakes import GIB, DyingEngine, FakeCard, FakeNvml


class Running:
    """A daemon run in a thread, stopped at teardown."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.thread = threading.Thread(target=daemon.run, daemon=True)
        self.thread.start()

    def beat(self) -> Heartbeat:
        return self.daemon.heartbeat.snapshot()

    def stop(self) -> None:
        self.daemon.request_stop()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()


@pytest.fixture
def running() -> Iterator[list[Running]]:
    runs: list[Running] = []
    yield runs
    for run in runs:
        if run.thread.is_alive():
            run.stop()


def done(spool: Spool, job: str) -> bool:
    ckpt = Checkpoint.load(spool.checkpoint(job))
    return ckpt is not None and ckpt.status == JobState.COMPLETED


def test_hot_card_holds_chunks_until_it_cools(spool: Spool, config: Config, running: list[Running]) -> None:
    card = FakeCard(temperature=91)
    run = Running(Daemon(config, gpu=GpuMonitor(FakeNvml([card]), env={}), echo=False))
    running.append(run)
    drop(spool, "job.jsonl", [chat_line(i) for i in range(30)])
    beat = wait_for(lambda: run.beat() if run.beat().state == WorkerState.WAITING else None, timeout=20)
    assert "temperature 91°C > 85°C" in (beat.reason or "")
    assert not spool.results("job").exists() or spool.results("job").stat().st_size == 0
    card.temperature = 60
    wait_for(lambda: done(spool, "job"), timeout=20)
    assert_exactly_once(spool, "job", {f"req-{i}" for i in range(30)})
    # One wait for the one reason, then the recovery: events of this worker, read as fields.
    events = daemon_events(spool)
    assert [e["event"] for e in events] == [DaemonEvent.GPU_WAIT, DaemonEvent.GPU_RECOVERED]
    assert events[0]["reason"] == beat.reason and {e["worker"] for e in events} == {run.daemon.heartbeat.id}


def test_full_card_waits_then_chunks_shrink_with_memory_pressure(spool: Spool, config: Config,
                                                                   running: list[Running]) -> None:
    card = FakeCard(used=int(15.5 * GIB), total=16 * GIB)
    cfg = config.replace(chunk_size=100, gpu_min_chunk=10)
    run = Running(Daemon(cfg, gpu=GpuMonitor(FakeNvml([card]), env={}), echo=False))
    running.append(run)
    drop(spool, "job.jsonl", [chat_line(i) for i in range(100)])
    beat = wait_for(lambda: run.beat() if run.beat().state == WorkerState.WAITING else None, timeout=20)
    assert "memory 96.9% > 95%" in (beat.reason or "") and (beat.gpu or {})["devices"][0]["memory_pct"] > 95
    card.used = int(0.8 * 16 * GIB)  # 80% used: 100 - 90 * (80 - 50) / 40 = 32 per chunk
    wait_for(lambda: done(spool, "job"), timeout=20)
    assert_exactly_once(spool, "job", {f"req-{i}" for i in range(100)})
    ckpt = Checkpoint.load(spool.checkpoint("job"))
    assert ckpt is not None and ckpt.chunks == 4
    assert run.beat().chunk_size == 32


def test_engine_that_dies_is_rebuilt_and_nothing_is_lost(spool: Spool, config: Config) -> None:
    DyingEngine.instances = 0
    daemon = Daemon(config, engine_factory=DyingEngine, gpu=GpuMonitor(FakeNvml([]), env={}), echo=False)
    daemon.executor.backoff = 0
    drop(spool, "job.jsonl", [chat_line(i) for i in range(40)])
    while daemon.loop_once().worked:
        pass
    assert_exactly_once(spool, "job", {f"req-{i}" for i in range(40)})
    assert DyingEngine.instances == 2 and daemon.executor.rebuilds == 1
    (rebuild,) = daemon_events(spool, DaemonEvent.ENGINE_REBUILD)
    assert rebuild["worker"] == daemon.heartbeat.id and rebuild["reason"]


def test_full_disk_pauses_the_job_and_loses_nothing(spool: Spool, config: Config, running: list[Running],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    real_commit = AppendFile.commit
    state = {"full": True, "hits": 0}

    def commit(self: AppendFile) -> int:
        if state["full"] and self.path.name.endswith(".results.jsonl") and self._pending:
            state["hits"] += 1
            with open(self.path, "ab") as f:  # half a write landed before the disk filled up
                f.write(b'{"half": ')
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_commit(self)

    monkeypatch.setattr(AppendFile, "commit", commit)
    cfg = config.replace(poll_interval=0.2)
    run = Running(Daemon(cfg, gpu=GpuMonitor(FakeNvml([]), env={}), echo=False))
    running.append(run)
    drop(spool, "job.jsonl", [chat_line(i) for i in range(30)])
    beat = wait_for(lambda: run.beat() if "disk full" in (run.beat().reason or "") else None, timeout=20)
    assert beat.state == WorkerState.WAITING
    assert orjson.loads(spool.checkpoint("job").read_bytes())["results_bytes"] == 0
    state["full"] = False
    wait_for(lambda: done(spool, "job"), timeout=20)
    assert state["hits"] >= 1
    assert_exactly_once(spool, "job", {f"req-{i}" for i in range(30)})
    full = job_events(spool, "job", "disk_full")
    assert len(full) == state["hits"] and all("No space left" in e["error"] for e in full)


def test_metrics_file_and_watchdog_are_fed_from_the_loop(spool: Spool, config: Config, running: list[Running],
                                                          monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(10)
    monkeypatch.setenv("NOTIFY_SOCKET", str(sock_path))
    run = Running(Daemon(config, gpu=GpuMonitor(FakeNvml([FakeCard()]), env={}), echo=False))
    running.append(run)
    drop(spool, "job.jsonl", [chat_line(i) for i in range(20)])
    wait_for(lambda: done(spool, "job"), timeout=20)
    messages = set()
    while not {"READY=1", "WATCHDOG=1"} <= messages:
        messages.add(sock.recv(4096).decode())
    sock.close()
    prom = spool.worker_metrics(run.daemon.heartbeat.id)
    values = wait_for(lambda: {s.name: s.value for f in text_string_to_metric_families(prom.read_text())
                               for s in f.samples
                               if s.name == "spoolbatch_requests_done_total" and s.value == 20} if prom.exists()
                      else None, timeout=20)
    assert values["spoolbatch_requests_done_total"] == 20
    families = {f.name for f in text_string_to_metric_families(prom.read_text())}
    assert {"spoolbatch_gpu_temperature_celsius", "spoolbatch_jobs"} <= families

"""Several daemons on one spool: each job has one owner, and a dead owner's job is taken over."""

from __future__ import annotations

import signal
import socket
import time
from typing import Any

import orjson
import pytest

from spoolbatch.store.spool import Spool

from .conftest import assert_exactly_once, chat_line, drop, job_events, orphans, wait_for

pytestmark = pytest.mark.slow


def job_ids(job: str, n: int) -> set[str]:
    """The custom_ids of a job made by ``job_records``."""
    return {f"{job}-{i}" for i in range(n)}


def job_records(job: str, n: int) -> list[dict[str, Any]]:
    """``n`` valid lines whose ids are unique across jobs."""
    return [{**chat_line(i), "custom_id": f"{job}-{i}"} for i in range(n)]


def checkpoint(spool: Spool, job: str) -> dict[str, Any] | None:
    """The job's checkpoint, or None before there is one."""
    try:
        return orjson.loads(spool.checkpoint(job).read_bytes())
    except FileNotFoundError:
        return None


def test_three_daemons_process_each_job_exactly_once(spool: Spool, start_daemon: Any) -> None:
    jobs = [f"job{k}" for k in range(6)]
    for job in jobs:
        drop(spool, f"{job}.jsonl", job_records(job, 200))
    procs = [start_daemon("--once", "--chunk-size", "50", "--fake-latency", "0.001") for _ in range(3)]
    for proc in procs:
        assert proc.wait(timeout=60) == 0

    assert list(spool.inbox.iterdir()) == []
    assert [p.name for p in spool.active.iterdir() if p.name.endswith(".jsonl")] == []
    owners = set()
    for job in jobs:
        assert assert_exactly_once(spool, job, job_ids(job, 200)) == (200, 0)
        assert len(job_events(spool, job, "claimed")) == 1
        assert job_events(spool, job, "resumed") == []
        assert [e["chunk"] for e in job_events(spool, job, "chunk_merged")] == [1, 2, 3, 4]
        assert len(job_events(spool, job, "completed")) == 1
        ckpt = checkpoint(spool, job)
        assert ckpt is not None and ckpt["resumes"] == 0
        owners.add(ckpt["worker"])
    # Every owner is one of the three daemons (which of them got work is up to the scheduler).
    assert owners <= {f"{socket.gethostname()}-{p.pid}" for p in procs}
    # No job id was made twice (no job-2 from a double claim).
    assert sorted(p.name for p in spool.done.glob("*.checkpoint.json")) == sorted(
        f"{job}.checkpoint.json" for job in jobs)


def test_dead_owner_is_taken_over_by_a_running_daemon(spool: Spool, start_daemon: Any) -> None:
    job = "takeover"
    drop(spool, f"{job}.jsonl", job_records(job, 600))
    first = start_daemon("--chunk-size", "50", "--fake-latency", "0.01")
    wait_for(lambda: (checkpoint(spool, job) or {}).get("lines_consumed", 0) >= 100, timeout=30, interval=0.01)
    second = start_daemon("--chunk-size", "50", "--fake-latency", "0.01")
    # While the first lives its work is owned: nothing of it is taken over (the second may share chunks).
    wait_for(lambda: any(f"-{second.pid}.json" in p.name for p in spool.workers.iterdir()), timeout=30)
    assert spool.job_is_owned(job)
    assert job_events(spool, job, "resumed") == []

    # Kill the first while it is inside a chunk (about 0.5 s each): wait for it to start one.
    beat = spool.worker_file(f"{socket.gethostname()}-{first.pid}")
    chunk = orjson.loads(beat.read_bytes()).get("chunk")
    wait_for(lambda: orjson.loads(beat.read_bytes()).get("chunk") not in (None, chunk), timeout=30, interval=0.01)
    time.sleep(0.1)
    # Kill it while holding the job lock, so that no chunk is planned, merged or taken over
    # meanwhile: the chunks it leaves (the one it answers and, pipelining, the next one it
    # handed to its engine) are the planned ones with no committed part and a free lock.
    lock = spool.wait_lock(spool.job_lock(job))
    try:
        first.send_signal(signal.SIGKILL)
        assert first.wait(timeout=10) == -signal.SIGKILL
        orphaned = orphans(spool, job)
    finally:
        lock.release()
    assert orphaned, "the kill landed inside a chunk"
    wait_for(lambda: (checkpoint(spool, job) or {}).get("status") == "completed", timeout=60)
    assert second.poll() is None, "the survivor keeps running after the take-over"

    assert assert_exactly_once(spool, job, job_ids(job, 600)) == (600, 0)
    assert len(job_events(spool, job, "claimed")) == 1
    # Each chunk the victim left is taken over once, by the survivor.
    taken = [(e["chunk"], e["worker"]) for e in job_events(spool, job, "resumed")]
    assert sorted(taken) == [(chunk, f"{socket.gethostname()}-{second.pid}") for chunk in sorted(orphaned)]
    ckpt = checkpoint(spool, job)
    assert ckpt is not None and ckpt["resumes"] == len(orphaned)
    assert ckpt["worker"].endswith(f"-{second.pid}")
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=30) == 0

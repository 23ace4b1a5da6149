"""Several workers on one job: chunks spread over them, exactly once, even when killed at random."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from spoolbatch.commands.submit import submit
from spoolbatch.config import load_config
from spoolbatch.store.batches import BatchSpec
from spoolbatch.store.spool import Spool

from .conftest import REPO, assert_exactly_once, chat_line, daemon_cmd, drop, job_events, wait_for, write_jsonl

pytestmark = pytest.mark.slow


def chunk_workers(spool: Spool, job: str) -> set[str]:
    """The workers that answered the job's merged chunks."""
    return {e["worker"] for e in job_events(spool, job, "chunk_merged")}


def test_gpus_flag_runs_one_worker_per_card_on_one_job(spool: Spool) -> None:
    drop(spool, "big.jsonl", [chat_line(i) for i in range(1500)])  # ~6 s of work: both workers get chunks
    cmd = daemon_cmd(spool, "--once", "--chunk-size", "30", "--fake-latency", "0.004", "--gpus", "0,1")
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "worker for GPU 0 started" in proc.stderr and "worker for GPU 1 started" in proc.stderr
    assert assert_exactly_once(spool, "big", {f"req-{i}" for i in range(1500)}) == (1500, 0)
    assert len(chunk_workers(spool, "big")) == 2, "both workers answered chunks of the one job"
    pins = {orjson.loads(p.read_bytes()).get("cuda_visible_devices") for p in spool.workers.glob("*.json")}
    assert pins == {"0", "1"}


def test_workers_flag_runs_unpinned_workers_on_one_job(spool: Spool) -> None:
    drop(spool, "big.jsonl", [chat_line(i) for i in range(1200)])
    cmd = daemon_cmd(spool, "--once", "--chunk-size", "30", "--fake-latency", "0.004", "--workers", "2")
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"})
    assert proc.returncode == 0, proc.stderr
    assert "worker 1 started" in proc.stderr and "worker 2 started" in proc.stderr
    assert assert_exactly_once(spool, "big", {f"req-{i}" for i in range(1200)}) == (1200, 0)
    assert len(chunk_workers(spool, "big")) == 2, "both workers answered chunks of the one job"
    pins = {orjson.loads(p.read_bytes()).get("cuda_visible_devices") for p in spool.workers.glob("*.json")}
    assert pins == {None}


def test_gpus_and_workers_together_are_refused(spool: Spool) -> None:
    proc = subprocess.run(daemon_cmd(spool, "--gpus", "0", "--workers", "2"), cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0 and "--gpus or --workers" in proc.stderr


def test_sigterm_to_the_supervisor_stops_every_worker_cleanly(spool: Spool) -> None:
    drop(spool, "big.jsonl", [chat_line(i) for i in range(2000)])
    cmd = daemon_cmd(spool, "--chunk-size", "50", "--fake-latency", "0.01", "--gpus", "0,1")
    proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: len(list(spool.workers.glob("*.json"))) == 2, timeout=30)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    states = {orjson.loads(p.read_bytes())["state"] for p in spool.workers.glob("*.json")}
    assert states == {"stopped"}
    assert not spool.job_is_owned("big")


def test_workers_sharing_a_job_killed_at_random_lose_and_repeat_nothing(spool: Spool, start_daemon: Any,
                                                                       tmp_path: Path) -> None:
    rng = random.Random(6)
    n = 1500
    records: list[object] = [chat_line(i) for i in range(n)]
    for i in range(5, n, 97):
        records[i] = chat_line(i, model="other")  # model_mismatch: deadletter
    drop(spool, "shared.jsonl", records)
    # Mixed priorities: an urgent job overtakes the shared one, a low one waits behind it, during the kills.
    others = {1: ("rush", "urgent", 300), 2: ("later", "low", 200)}
    config = load_config(spool.root, env={})
    args = ("--chunk-size", "25", "--fake-latency", "0.003")
    procs = [start_daemon(*args) for _ in range(3)]
    kills = 0
    deadline = time.monotonic() + 60
    while kills < 9 and time.monotonic() < deadline:
        if kills in others:
            name, priority, lines = others[kills]
            path = write_jsonl(tmp_path / f"{name}.jsonl", [chat_line(i) for i in range(lines)])
            submit(path, config, batch=BatchSpec(priority=priority))
        time.sleep(rng.uniform(0.2, 0.9))
        victim = rng.randrange(len(procs))
        procs[victim].send_signal(signal.SIGKILL)
        procs[victim].wait(timeout=10)
        kills += 1
        procs[victim] = start_daemon(*args)
    assert kills == 9
    final = [start_daemon("--once", *args) for _ in range(2)]
    for proc in final:
        assert proc.wait(timeout=120) == 0
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    bad = {f"req-{i}" for i in range(5, n, 97)}
    assert assert_exactly_once(spool, "shared", {f"req-{i}" for i in range(n)}) == (n - len(bad), len(bad))
    assert len(chunk_workers(spool, "shared")) >= 3
    for name, _priority, lines in others.values():
        assert assert_exactly_once(spool, name, {f"req-{i}" for i in range(lines)}) == (lines, 0)

"""Kill -9 the daemon at many instants and SIGTERM it: every custom_id ends up exactly once.

These run real daemon subprocesses with the fake engine. The checkpoint is the truth: after
each kill the output files may hold bytes past it (a chunk in flight), never fewer; after
the last run everything is whole and agrees with it.
"""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from spoolbatch.store.spool import Spool

from .conftest import assert_exactly_once, chat_line, drop, job_events, orphans, read_jsonl, wait_for

pytestmark = pytest.mark.slow

JOB = "crashjob"


def crash_records(n: int, rng: random.Random) -> tuple[list[Any], set[str]]:
    """``n`` lines, about 3% of them bad in ways that still leave a unique id (or none)."""
    records: list[Any] = []
    ids: set[str] = set()
    for i in range(n):
        roll = rng.random()
        if roll < 0.01:
            records.append(b'{"custom_id": "broken-' + str(i).encode() + b'", "method": ')  # invalid JSON, no id
        elif roll < 0.02:
            records.append({"custom_id": f"get-{i}", "method": "GET", "url": "/v1/chat/completions",
                            "body": chat_line(i)["body"]})
            ids.add(f"get-{i}")
        elif roll < 0.03:
            records.append({"method": "POST", "url": "/v1/chat/completions", "body": chat_line(i)["body"]})
        else:
            records.append(chat_line(i))
            ids.add(f"req-{i}")
    return records, ids


def checkpoint(spool: Spool, job: str = JOB) -> dict[str, Any] | None:
    """The job's checkpoint, or None before the first one is written."""
    try:
        return orjson.loads(spool.checkpoint(job).read_bytes())
    except FileNotFoundError:
        return None


def lines_consumed(spool: Spool) -> int:
    """How far the job's checkpoint says it got (0 before it has one)."""
    ckpt = checkpoint(spool)
    return ckpt["lines_consumed"] if ckpt else 0


def moved(spool: Spool, proc: subprocess.Popen[bytes], past: int) -> Callable[[], bool]:
    """A predicate: the checkpoint moved on from ``past`` lines, or the daemon exited."""
    return lambda: lines_consumed(spool) != past or proc.poll() is not None


def assert_files_cover_checkpoint(spool: Spool) -> None:
    """After a crash, no output file is shorter than the checkpoint says it is."""
    ckpt = checkpoint(spool)
    if ckpt is None:
        return
    for path, committed in ((spool.results(JOB), ckpt["results_bytes"]),
                            (spool.deadletter_file(JOB), ckpt["deadletter_bytes"]),
                            (spool.ids(JOB), ckpt["ids_count"] * 8)):
        size = path.stat().st_size if path.exists() else 0
        assert size >= committed, f"{path.name} is {size} bytes, checkpoint says {committed}"


@dataclass(frozen=True, slots=True)
class Kill:
    """One daemon of ``kill_repeatedly``: how it ended, its worker id, the chunks it left orphaned."""

    kind: str
    worker: str
    orphans: frozenset[int]


def worker_of(proc: subprocess.Popen[bytes]) -> str:
    """The worker id a daemon subprocess writes in its events."""
    return f"{socket.gethostname()}-{proc.pid}"


def kill_repeatedly(spool: Spool, start_daemon: Any, rng: random.Random, plan: list[str],
                    daemon_args: tuple[str, ...]) -> list[Kill]:
    """Start a daemon and SIGKILL it once per entry of ``plan``; the kills that landed."""
    kills: list[Kill] = []
    for kind in plan:
        before = lines_consumed(spool)
        proc = start_daemon(*daemon_args)
        if kind == "early":
            # Somewhere in start-up, claim, or the first chunk.
            time.sleep(rng.uniform(0.2, 0.8))
        elif kind == "after_checkpoint":
            # Right after a checkpoint replace: wait for progress, then for the next change.
            wait_for(moved(spool, proc, before), timeout=30, interval=0.01)
            wait_for(moved(spool, proc, lines_consumed(spool)), timeout=30, interval=0.002)
        else:
            # Mid-chunk: some progress was committed, then a random part of a ~0.1 s chunk.
            wait_for(moved(spool, proc, before), timeout=30, interval=0.01)
            time.sleep(rng.uniform(0.0, 0.12))
        if proc.poll() is not None:
            raise AssertionError(f"a daemon exited on its own (status {proc.returncode}) before its kill")
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        kills.append(Kill(kind, worker_of(proc), frozenset(orphans(spool, JOB))))
        assert_files_cover_checkpoint(spool)
        ckpt = checkpoint(spool)
        if ckpt is not None and ckpt["status"] == "completed":
            break
    return kills


def assert_takeovers(spool: Spool, kills: list[Kill], last: str) -> int:
    """Each chunk a kill left orphaned is taken over once, by a later daemon; how many were.

    ``last`` is the worker that ran the job to its end after the kills.
    """
    taken: dict[str, list[int]] = {}
    for event in job_events(spool, JOB, "resumed"):
        taken.setdefault(event["worker"], []).append(event["chunk"])
    assert set(taken) <= {k.worker for k in kills} | {last}, taken
    waiting: frozenset[int] = frozenset()  # orphans no daemon has taken over yet
    for kill in kills:
        mine = taken.get(kill.worker, [])
        assert len(mine) == len(set(mine)) and set(mine) <= waiting, (kill, mine, waiting)
        # What it did not reach is still orphaned; what it took over and held at its death is again.
        assert waiting - set(mine) <= kill.orphans, (kill, mine, waiting)
        waiting = kill.orphans
    assert sorted(taken.get(last, [])) == sorted(waiting)
    total = sum(map(len, taken.values()))
    assert checkpoint(spool)["resumes"] == total
    return total


def test_kill9_at_random_instants_then_resume_exactly_once(spool: Spool, start_daemon: Any) -> None:
    rng = random.Random(20240611)
    records, ids = crash_records(1000, rng)
    drop(spool, f"{JOB}.jsonl", records)
    daemon_args = ("--chunk-size", "50", "--fake-latency", "0.002")

    plan = ["early", "mid", "mid", "after_checkpoint", "mid", "mid", "after_checkpoint", "mid"]
    kills = kill_repeatedly(spool, start_daemon, rng, plan, daemon_args)

    assert len(kills) >= 5, f"only {len(kills)} kills landed before the job finished: {kills}"
    assert lines_consumed(spool) < 1000 or checkpoint(spool)["status"] == "completed"

    final = start_daemon("--once", *daemon_args)
    assert final.wait(timeout=60) == 0
    done, failed = assert_exactly_once(spool, JOB, ids)
    assert done == len(ids) - sum(1 for i in ids if i.startswith("get-"))
    assert failed == 1000 - done
    for path in (spool.results(JOB), spool.deadletter_file(JOB)):
        for line in path.read_bytes().splitlines():
            orjson.loads(line)  # whole JSON, every line
    dead = read_jsonl(spool.deadletter_file(JOB))
    assert [d["line"] for d in dead] == sorted(d["line"] for d in dead)
    assert {d["error"]["code"] for d in dead} == {"invalid_json", "invalid_method", "missing_custom_id"}
    assert sorted(p.name for p in spool.active.iterdir()) == []
    assert spool.archived_input(JOB).exists()
    assert len(job_events(spool, JOB, "claimed")) == 1
    # A kill inside a chunk leaves it to be taken over; one between chunks does not.
    assert any(k.orphans for k in kills if k.kind == "mid"), kills
    assert_takeovers(spool, kills, worker_of(final))


def test_kill9_keeps_duplicate_detection_across_resumes(spool: Spool, start_daemon: Any) -> None:
    # Every 7th line reuses the id of a line 25 earlier: in an earlier chunk, often before a kill.
    n = 400
    records = [chat_line(i) for i in range(n)]
    dup_lines = set()
    for i in range(30, n):
        if i % 7 == 6:
            records[i] = {**chat_line(i), "custom_id": f"req-{i - 25}"}
            dup_lines.add(i + 1)
    firsts = {r["custom_id"] for k, r in enumerate(records, start=1) if k not in dup_lines}
    drop(spool, f"{JOB}.jsonl", records)
    daemon_args = ("--chunk-size", "20", "--fake-latency", "0.004")
    kills = kill_repeatedly(spool, start_daemon, random.Random(7), ["mid", "after_checkpoint", "mid", "mid", "mid"],
                            daemon_args)
    assert len(kills) >= 4, kills
    final = start_daemon("--once", *daemon_args)
    assert final.wait(timeout=60) == 0

    results = read_jsonl(spool.results(JOB))
    dead = read_jsonl(spool.deadletter_file(JOB))
    ids = [r["custom_id"] for r in results]
    assert len(ids) == len(set(ids)) and set(ids) == firsts
    assert [d["line"] for d in dead] == sorted(dup_lines)
    assert {d["error"]["code"] for d in dead} == {"duplicate_custom_id"}
    ckpt = checkpoint(spool)
    assert ckpt is not None and ckpt["status"] == "completed"
    assert any(k.orphans for k in kills), kills
    assert_takeovers(spool, kills, worker_of(final))
    assert (ckpt["requests_done"], ckpt["requests_failed"]) == (len(results), len(dead))
    assert ckpt["results_bytes"] == spool.results(JOB).stat().st_size
    assert ckpt["deadletter_bytes"] == spool.deadletter_file(JOB).stat().st_size
    assert ckpt["ids_count"] * 8 == spool.ids(JOB).stat().st_size


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_stops_at_chunk_boundary_and_resumes(spool: Spool, start_daemon: Any, sig: int) -> None:
    records = [chat_line(i) for i in range(400)]
    drop(spool, f"{JOB}.jsonl", records)
    proc = start_daemon("--chunk-size", "50", "--fake-latency", "0.01")
    wait_for(lambda: lines_consumed(spool) >= 50, timeout=30, interval=0.01)
    time.sleep(0.2)  # land inside a chunk (each takes about 0.5 s)
    proc.send_signal(sig)  # SIGINT: Ctrl-C once, as `run` in a terminal gets it
    assert proc.wait(timeout=30) == 0

    beat = orjson.loads(spool.heartbeat.read_bytes())
    assert beat["state"] == "stopped"
    assert beat["pid"] == proc.pid
    ckpt = checkpoint(spool)
    assert ckpt["status"] == "running"
    assert 0 < ckpt["lines_consumed"] < 400
    assert ckpt["lines_consumed"] % 50 == 0
    # A clean stop leaves nothing past the checkpoint: the files are exactly as committed.
    assert spool.results(JOB).stat().st_size == ckpt["results_bytes"]
    assert len(read_jsonl(spool.results(JOB))) == ckpt["requests_done"] == ckpt["lines_consumed"]
    assert spool.input(JOB).exists(), "a stopped job stays claimable in active/"
    assert not spool.job_is_owned(JOB)
    stopped_at = ckpt["lines_consumed"]
    assert [(e["line"], e["worker"]) for e in job_events(spool, JOB, "stopping")] == [(stopped_at, worker_of(proc))]

    final = start_daemon("--once", "--chunk-size", "50")
    assert final.wait(timeout=60) == 0
    assert assert_exactly_once(spool, JOB, {f"req-{i}" for i in range(400)}) == (400, 0)
    assert len(job_events(spool, JOB, "claimed")) == 1
    # A clean stop leaves no half-done chunk for anyone to take over: the next daemon goes on
    # with a fresh chunk after the last one merged.
    assert job_events(spool, JOB, "resumed") == [] and checkpoint(spool)["resumes"] == 0
    continued = [(e["first_line"], e["worker"]) for e in job_events(spool, JOB, "continued")]
    assert continued == [(stopped_at + 1, worker_of(final))]

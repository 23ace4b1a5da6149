"""The spool's own clutter: dead workers' files, stale temporaries, orphaned chunk areas, logs over their cap."""

from __future__ import annotations

import multiprocessing
import os
import socket
import time
from pathlib import Path

import orjson
import pytest

from spoolbatch.commands import catalog
from spoolbatch.commands.gc import gc
from spoolbatch.commands.status import status
from spoolbatch.config import Config
from spoolbatch.store.cleanup import DAY, Kind
from spoolbatch.store.joblog import JobLog
from spoolbatch.store.logfile import append_line, rotated_parts
from spoolbatch.store.spool import Spool
from spoolbatch.worker.daemon import Daemon
from spoolbatch.worker.maintenance import Maintenance

from .conftest import assert_exactly_once, chat_line, drop


def beat(spool: Spool, worker: str, *, host: str, pid: int, age: float, state: str = "working") -> None:
    last = time.time() - age
    spool.worker_file(worker).write_bytes(orjson.dumps(
        {"worker": worker, "host": host, "pid": pid, "state": state, "last_seen": last, "interval": 2.0}))
    spool.worker_metrics(worker).write_text("spoolbatch_up 1\n")
    os.utime(spool.worker_metrics(worker), (last, last))


def aged(path: Path, days: float, data: bytes = b"x") -> Path:
    path.write_bytes(data)
    past = time.time() - days * DAY
    os.utime(path, (past, past))
    return path


def test_dead_workers_are_shown_dead_then_removed_after_the_grace(spool: Spool, config: Config) -> None:
    me = socket.gethostname()
    beat(spool, "far-1", host="elsewhere", pid=1, age=2 * DAY)  # dead two days: goes
    beat(spool, "far-2", host="elsewhere", pid=1, age=600)  # dead ten minutes: stays (status says dead)
    beat(spool, "stopped-1", host=me, pid=os.getpid(), age=3 * DAY, state="stopped")  # stopped 3 days ago: goes
    beat(spool, "me-1", host=me, pid=os.getpid(), age=0)  # alive: stays
    aged(spool.workers / "ghost-9.prom", 2)  # metrics without a heartbeat: goes
    seen = {w.beat.worker: w.liveness for w in status(spool).workers}
    assert seen == {"far-1": "dead", "far-2": "dead", "stopped-1": "stopped", "me-1": "alive"}
    report = gc(config)
    assert sorted(r.name for r in report.removed if r.kind == Kind.WORKER) == ["far-1", "ghost-9", "stopped-1"]
    assert sorted(p.name for p in spool.workers.iterdir()) == ["far-2.json", "far-2.prom", "me-1.json", "me-1.prom"]


def test_stale_temporaries_go_fresh_ones_and_users_files_stay(spool: Spool, config: Config) -> None:
    old = [aged(spool.done / ".job.checkpoint.json.host.1.2.tmp", 2), aged(spool.inbox / ".job.host.3.4.tmp", 2),
           aged(spool.workers / ".w.prom.abc.tmp", 2), aged(spool.root / ".heartbeat.h.1.1.tmp", 2)]
    kept = [aged(spool.done / ".fresh.host.1.3.tmp", 0.1), aged(spool.inbox / ".copying.jsonl.part", 5),
            aged(spool.inbox / ".hidden", 5), aged(spool.root / "config.toml", 5, b"")]
    report = gc(config)
    assert sorted(r.name for r in report.removed if r.kind == Kind.TEMPORARY) == sorted(
        str(p.relative_to(spool.root)) for p in old)
    assert not any(p.exists() for p in old) and all(p.exists() for p in kept)


def test_the_clean_up_follows_no_link_out_of_the_spool(spool: Spool, config: Config, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    precious = [aged(outside / "data.tmp", 5), aged(outside / "000000.lock", 5, b"")]
    os.symlink(outside, spool.active / "evil.chunks")
    os.symlink(outside / "data.tmp", spool.done / "link.tmp")
    os.utime(spool.done / "link.tmp", (time.time() - 5 * DAY,) * 2, follow_symlinks=False)
    report = gc(config)
    assert [(r.kind, r.name) for r in report.removed] == [(Kind.TEMPORARY, "done/link.tmp")]  # the link itself
    assert all(p.exists() for p in precious) and (spool.active / "evil.chunks").is_symlink()


def test_orphaned_chunk_areas_and_locks_go_live_ones_stay(spool: Spool, config: Config) -> None:
    # a finishing worker killed after archiving the input, before removing the chunk area
    ghost = spool.work_area("ghost")
    ghost.mkdir()
    (ghost / "plan.jsonl").write_bytes(b'{"index": 0}\n')
    aged(ghost / "000000.results", 0, b"x" * 100)
    # the same, but a (stuck) worker still holds one of its chunk locks
    held_area = spool.work_area("held")
    held_area.mkdir()
    held = spool.try_lock(held_area / "000000.lock")
    aged(spool.active / "gone.lock", 2, b"")  # a claim that lost its file: old
    aged(spool.active / "young.lock", 0, b"")  # a claim in progress
    # a live job, mid-way
    drop(spool, "live.jsonl", [chat_line(i) for i in range(25)])
    daemon = Daemon(config, echo=False)
    assert daemon.loop_once().worked
    report = gc(config)
    assert sorted((r.kind, r.name) for r in report.removed) == [(Kind.CHUNK_AREA, "ghost"), (Kind.LOCK, "gone")]
    assert not ghost.exists() and held_area.exists() and not (spool.active / "gone.lock").exists()
    assert (spool.active / "young.lock").exists() and spool.work_area("live").exists()
    assert held is not None
    held.release()
    assert [r.name for r in gc(config).removed] == ["held"]
    assert daemon._ahead is not None
    daemon._ahead.claim.release()
    # One daemon drains the rest: a fresh one per step would leave its look-ahead chunk claimed
    # until the garbage collector closes the lock, and the next one would find nothing to do.
    drainer = Daemon(config, echo=False)
    while drainer.loop_once().worked:
        pass
    assert_exactly_once(spool, "live", {f"req-{i}" for i in range(25)})


def test_the_daemon_cleans_once_an_interval_one_worker_at_a_time(spool: Spool, config: Config) -> None:
    beat(spool, "far-1", host="elsewhere", pid=1, age=2 * DAY)
    lines: list[str] = []
    first, second = Maintenance(spool, config, lines.append), Maintenance(spool, config, lines.append)
    held = spool.try_lock(spool.gc_lock)
    assert held is not None and first.maybe_run() is None  # another worker is cleaning
    held.release()
    assert not first.due()
    first._next = 0
    report = first.maybe_run()
    assert report is not None and [r.name for r in report.removed] == ["far-1"]
    assert "clean-up removed 1 worker" in lines[0]
    assert second.maybe_run() is None  # the spool was cleaned within the interval (.gc.last)
    assert spool.gc_stamp.exists()
    assert Maintenance(spool, config.replace(gc_interval=0), lines.append).maybe_run() is None


# --- logs ---------------------------------------------------------------------------------------
def test_a_log_rotates_at_its_cap_and_keeps_n_parts(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    for i in range(400):
        append_line(log, f"line {i:04d} {'x' * 40}\n".encode(), max_bytes=2000, keep=2)
    parts = rotated_parts(log)
    assert [p.name for p in parts] == ["job.log.1", "job.log.2"]
    assert all(p.stat().st_size <= 2000 for p in [log, *parts])
    lines = [ln for p in [*reversed(parts), log] for ln in p.read_text().splitlines()]
    numbers = [int(ln.split()[1]) for ln in lines]
    assert numbers == list(range(numbers[0], 400))  # the newest lines, in order, none lost in between


def _writer(path: str, n: int, tag: str) -> None:
    for i in range(n):
        append_line(Path(path), f"{tag} {i:05d} {'y' * 30}\n".encode(), max_bytes=5000, keep=50)


def test_writers_sharing_a_log_rotate_it_once_and_tear_no_line(tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    procs = [multiprocessing.get_context("fork").Process(target=_writer, args=(str(log), 600, f"w{k}"))
             for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    lines = [ln for p in [log, *rotated_parts(log)] for ln in p.read_text().splitlines()]
    assert all(len(ln.split()) == 3 and ln.endswith("y" * 30) for ln in lines)
    assert len(lines) == len(set(lines)) == 2400  # 50 parts hold them all: none lost, none twice


def test_job_logs_are_capped_and_logs_shows_the_rotated_parts(spool: Spool, config: Config) -> None:
    cfg = config.replace(log_max_bytes=600, log_keep=1)
    drop(spool, "job.jsonl", [chat_line(i) for i in range(60)])
    daemon = Daemon(cfg, echo=False)
    while daemon.loop_once().worked:
        pass
    assert [p.name for p in rotated_parts(spool.log("job"))] == ["job.log.1"]
    assert spool.log("job").stat().st_size <= 600
    lines = catalog.log_lines(spool, "job")
    assert "completed" in lines[-1] and len(lines) > len(spool.log("job").read_text().splitlines())


def test_no_daemon_log_file_under_systemd_unless_asked(spool: Spool, config: Config,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    assert Daemon(config, echo=False).log.path is None
    assert Daemon(config.replace(daemon_log_file=True), echo=False).log.path == spool.daemon_log()
    monkeypatch.delenv("JOURNAL_STREAM")
    assert Daemon(config, echo=False).log.path == spool.daemon_log()
    assert Daemon(config.replace(daemon_log_file=False), echo=False).log.path is None
    JobLog(None, echo=False)("nowhere")  # writes nothing, raises nothing


def test_the_workers_job_count_reads_the_index_and_only_changed_running_checkpoints(
        spool: Spool, config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    from spoolbatch.store import census
    from spoolbatch.store.checkpoint import Checkpoint
    from spoolbatch.store.jobindex import JobIndex
    from spoolbatch.store.jobstate import JobState

    for name in ("a", "b", "c"):
        drop(spool, f"{name}.jsonl", [chat_line(i) for i in range(3)])
    daemon = Daemon(config, echo=False)
    while daemon.loop_once().worked:
        pass
    loads: list[Path] = []
    real = Checkpoint.load
    monkeypatch.setattr(Checkpoint, "load", classmethod(lambda cls, p: (loads.append(p), real(p))[1]))
    cache: census.CensusCache = {}
    assert census.count_jobs(spool, cache)[JobState.COMPLETED] == 3 and loads == []  # ended jobs: the index
    Checkpoint(job="d").save(spool.checkpoint("d"))  # a running job: its checkpoint, read once while unchanged
    spool.input("d").write_bytes(b"{}\n")
    assert census.count_jobs(spool, cache)[JobState.RUNNING] == 1 and loads == [spool.checkpoint("d")]
    assert census.count_jobs(spool, cache)[JobState.RUNNING] == 1 and len(loads) == 1
    JobIndex(spool).ended("b", JobState.CANCELLED)
    JobIndex(spool).removed(["c"])
    counts = census.count_jobs(spool, cache)
    assert (counts[JobState.COMPLETED], counts[JobState.CANCELLED], counts[JobState.RUNNING]) == (1, 1, 1)
    assert sorted(cache) == ["d"] and len(loads) == 1


def test_a_long_running_worker_forgets_the_jobs_it_finished(spool: Spool, config: Config,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from spoolbatch.worker import claims

    monkeypatch.setattr(claims, "STARTED_PRUNE_AT", 2)
    daemon = Daemon(config, echo=False)
    for k in range(6):
        drop(spool, f"j{k}.jsonl", [chat_line(i) for i in range(3)])
        while daemon.loop_once().worked:
            pass
    assert len(daemon.claims._started) <= 3

"""The heartbeat as a record: older files read, unknown keys kept, the writer's file read back, workers listed
through the spool."""

from __future__ import annotations

import os
import socket
import time

import orjson
import pytest

from spoolbatch.store.heartbeat_record import Heartbeat, WorkerState
from spoolbatch.store.liveness import Liveness, SeenWorker, liveness, read_workers
from spoolbatch.store.spool import Spool
from spoolbatch.worker.heartbeat import HeartbeatWriter

# A worker file as the daemon wrote it before the heartbeat was typed (no GPU reading time, limits, disk or
# scheduling yet), with a key from some other version.
OLDER = {
    "worker": "box-4242", "pid": 4242, "host": "box", "state": "working", "reason": None, "job": "big", "chunk": 3,
    "progress": {"lines_consumed": 15000, "total_lines": 50000, "requests_done": 14990, "requests_failed": 10,
                 "fraction": 0.3, "eta_seconds": 700.0},
    "started_at": 1_700_000_000.5, "interval": 2.0, "cuda_visible_devices": "1", "engine": "vllm",
    "chunk_size": 5000, "poll_interval": 10.0, "model": "m", "chunk_lines": [10001, 15000],
    "last_chunk": {"requests": 5000, "seconds": 125.0, "requests_per_second": 40.0, "completion_tokens": 600000},
    "gpu": {"available": True, "reason": None, "devices": [{"index": 1, "memory_pct": 81.5}]},
    "last_seen": 1_700_000_100.25, "from_the_future": {"x": 1},
}


def test_an_older_heartbeat_file_reads_and_keeps_what_it_does_not_know() -> None:
    beat = Heartbeat.from_dict(orjson.loads(orjson.dumps(OLDER)))
    assert (beat.worker, beat.pid, beat.host, beat.state, beat.job, beat.chunk) == \
        ("box-4242", 4242, "box", WorkerState.WORKING, "big", 3)
    assert (beat.chunk_lines, beat.cuda_visible_devices, beat.model, beat.last_seen) == \
        ([10001, 15000], "1", "m", 1_700_000_100.25)
    assert beat.gpu == OLDER["gpu"] and beat.last_chunk == OLDER["last_chunk"] and beat.progress == OLDER["progress"]
    assert (beat.disk, beat.gpu_read_at, beat.gpu_limits, beat.scheduled) == (None, None, None, None)
    assert beat.extra == {"from_the_future": {"x": 1}}
    written = beat.to_dict()
    assert {k: v for k, v in written.items() if k in OLDER} == OLDER, "every key it had, unchanged"
    assert set(written) - set(OLDER) == {"gpu_limits", "gpu_read_at", "disk", "scheduled"}
    assert written["state"] == "working" and type(written["state"]) is str
    assert Heartbeat.from_dict(orjson.loads(orjson.dumps(written))) == beat


def test_the_first_heartbeats_fields_alone_read_too() -> None:
    """The oldest shape: what the first heartbeat held, nothing updated yet."""
    beat = Heartbeat.from_dict({"worker": "w-1", "pid": 1, "host": "h", "state": "starting", "reason": None,
                                "job": None, "chunk": None, "progress": None, "started_at": 5, "interval": 0.5})
    assert (beat.state, beat.started_at, beat.interval, beat.last_seen, beat.gpu, beat.extra) == \
        (WorkerState.STARTING, 5.0, 0.5, 0.0, None, {})
    assert isinstance(beat.started_at, float)


@pytest.mark.parametrize(("data", "check"), [
    ({"state": "resting"}, lambda b: b.state == WorkerState.UNKNOWN),  # a newer worker's state
    ({}, lambda b: b.state == WorkerState.STARTING and b.worker == "" and b.interval == 2.0),
    ({"last_seen": "yesterday", "pid": True, "chunk": 2.5}, lambda b: (b.last_seen, b.pid, b.chunk) == (0.0, 0, None)),
    ({"chunk_lines": [1]}, lambda b: b.chunk_lines is None),
    ({"chunk_lines": ["a", "b"]}, lambda b: b.chunk_lines is None),
    ({"gpu": "hot", "reason": 7}, lambda b: (b.gpu, b.reason) == (None, None)),
])
def test_a_field_held_as_something_else_is_left_at_its_default(data: dict[str, object], check: object) -> None:
    assert callable(check) and check(Heartbeat.from_dict(data))


def test_liveness_reads_the_record() -> None:
    now = 1_000.0
    elsewhere = Heartbeat(host="elsewhere", pid=1, interval=2.0)
    assert liveness(Heartbeat(state=WorkerState.STOPPED, last_seen=now), now) == Liveness.STOPPED
    assert liveness(Heartbeat(host="elsewhere", pid=1, interval=2.0, last_seen=now - 5), now) == Liveness.ALIVE
    assert liveness(Heartbeat(host="elsewhere", pid=1, interval=2.0, last_seen=now - 20), now) == Liveness.STALE
    assert liveness(Heartbeat(host="elsewhere", pid=1, interval=2.0, last_seen=now - 31), now) == Liveness.DEAD
    assert liveness(Heartbeat(host="elsewhere", pid=1, interval=0.0, last_seen=now - 7), now) == Liveness.ALIVE, \
        "no interval: 2 s"
    assert liveness(elsewhere, now) == Liveness.DEAD, "never seen"
    gone = Heartbeat(host=socket.gethostname(), pid=2**22 + 12345, last_seen=now)
    assert liveness(gone, now) == Liveness.DEAD, "its pid is gone on this host"


def test_workers_are_listed_through_the_spool_and_odd_files_skipped(spool: Spool) -> None:
    now = time.time()
    me = socket.gethostname()
    spool.worker_file("b-2").write_bytes(orjson.dumps({**OLDER, "worker": "b-2", "host": me, "pid": os.getpid(),
                                                       "last_seen": now - 1}))
    spool.worker_file("a-1").write_bytes(orjson.dumps({"worker": "a-1", "host": "far", "pid": 1, "state": "idle",
                                                       "last_seen": now - 600}))
    spool.worker_file("torn").write_bytes(b'{"worker": "torn", "st')
    spool.worker_file("list").write_bytes(b"[1, 2]")
    (spool.workers / ".c-3.json.123.tmp").write_bytes(orjson.dumps({"worker": "c-3", "last_seen": now}))
    spool.worker_metrics("d-4").write_text("spoolbatch_up 1\n")
    workers = read_workers(spool, now)
    assert [(w.beat.worker, w.liveness, w.age_seconds) for w in workers] == \
        [("a-1", Liveness.DEAD, 600.0), ("b-2", Liveness.ALIVE, 1.0)]
    shown = workers[1].to_dict()
    assert (shown["liveness"], shown["age_seconds"], shown["from_the_future"]) == ("alive", 1.0, {"x": 1})
    assert SeenWorker.from_dict(orjson.loads(orjson.dumps(shown))) == workers[1]


def test_the_writer_writes_a_record_that_reads_back(spool: Spool) -> None:
    writer = HeartbeatWriter(spool, 0.5, engine="fake", chunk_size=8, poll_interval=1.0)
    writer.update(state="working", job="j", chunk=1, chunk_lines=[1, 8], disk={"free_bytes": 5, "low": False})
    writer.write()
    data = orjson.loads(spool.worker_file(writer.id).read_bytes())
    assert data == orjson.loads(spool.heartbeat.read_bytes())
    first = {"worker", "pid", "host", "state", "reason", "job", "chunk", "progress", "started_at", "interval",
             "cuda_visible_devices", "engine", "chunk_size", "poll_interval", "last_seen"}
    assert first <= set(data), "what older readers look for is still there"
    assert (data["state"], data["job"], data["chunk_lines"], data["engine"]) == ("working", "j", [1, 8], "fake")
    beat = Heartbeat.load(spool.worker_file(writer.id))
    assert beat == writer.snapshot() and beat is not None and beat.state is WorkerState.WORKING
    writer.stop()
    assert Heartbeat.load(spool.worker_file(writer.id)) == writer.snapshot()
    assert writer.snapshot().state == WorkerState.STOPPED and writer.snapshot().job is None


def test_the_writer_refuses_a_field_a_heartbeat_does_not_have(spool: Spool) -> None:
    writer = HeartbeatWriter(spool, 1.0)
    with pytest.raises(TypeError, match="no field colour"):
        writer.update(colour="blue")
    with pytest.raises(ValueError):
        writer.update(state="dancing")
    snap = writer.snapshot()
    snap.job = "changed"
    assert writer.snapshot().job is None, "a snapshot is a copy"

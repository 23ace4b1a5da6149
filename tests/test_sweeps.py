"""Every sweep of the clean-up on one spool, each with something to remove: the whole report, in order.

The clean-up is split by concern (retention, clutter, and the sweeps beside their stores);
this pins what the pass as a whole removes, and in which order it reports it, so a move of
a sweep from one module to another cannot change either.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import orjson

from spoolbatch.config import Config
from spoolbatch.store.checkpoint import Checkpoint
from spoolbatch.store.cleanup import DAY, Kind, Policy, collect
from spoolbatch.store.jobstate import JobState
from spoolbatch.store.outbox import Delivery, DeliveryState
from spoolbatch.store.rejections import write_reason
from spoolbatch.store.spool import Spool
from spoolbatch.worker.daemon import Daemon

from .conftest import chat_line, drop

LATER = 10 * DAY  # the clean-up runs this far in the future: every file here is old by then


def _write(path: Path, data: bytes = b"x\n") -> Path:
    path.write_bytes(data)
    return path


def _littered(spool: Spool, config: Config) -> None:
    """One of each thing a clean-up removes, and a few it must keep."""
    drop(spool, "done.jsonl", [chat_line(i) for i in range(3)])
    drop(spool, "kept.jsonl", [chat_line(i) for i in range(3)])
    daemon = Daemon(config, echo=False)
    while daemon.loop_once().worked:
        pass
    for path in spool.workers.iterdir():  # this process's own heartbeat and metrics: it is alive
        path.unlink()
    ckpt = Checkpoint.load(spool.checkpoint("kept"))
    assert ckpt is not None and ckpt.status == JobState.COMPLETED
    ckpt.finished_at = time.time() + LATER  # finished "just now" when the clean-up runs: kept
    ckpt.save(spool.checkpoint("kept"))
    # a removal killed after the tombstone, a finished job's and a refused file's
    _write(spool.tombstone("halfjob"))
    _write(spool.results("halfjob"))
    _write(spool.rejected_tombstone("halfref"))
    _write(spool.rejected_file("halfref"))
    _write(spool.log("halfref"))
    # a queued job's cancel killed before its record: repaired, then old enough to go
    _write(spool.archived_input("cutshort"), orjson.dumps(chat_line(0)) + b"\n")
    # refused files: one with its reason, one whose reason was never written
    _write(spool.rejected_file("refused"))
    write_reason(spool, "refused", "refused.jsonl", "not_jsonl", "not JSONL")
    _write(spool.rejected_file("noreason"))
    # a group all of whose parts are gone, and one with a part left
    spool.group("gonegroup").write_bytes(orjson.dumps({"group": "gonegroup", "jobs": ["done", "never"]}))
    spool.group("keptgroup").write_bytes(orjson.dumps({"group": "keptgroup", "jobs": ["kept"]}))
    # API records: a batch record of a job that never came, an upload no batch reads, a delivered webhook
    spool.ensure_api_dirs()
    spool.batch_record("ghost").write_bytes(orjson.dumps({"job": "ghost", "created_at": time.time()}))
    spool.file_meta("file-" + "a" * 24).write_bytes(orjson.dumps(
        {"id": "file-" + "a" * 24, "filename": "in.jsonl", "bytes": 2, "lines": 1, "purpose": "batch",
         "created_at": time.time()}))
    _write(spool.file_content("file-" + "a" * 24))
    _write(spool.file_content("file-" + "b" * 24))  # content a killed upload left without its record
    _write(spool.files / ".upload.killed.tmp")
    Delivery("done.abc", "done", "http://127.0.0.1:9/hook", "evt_1", "{}", time.time(),
             state=DeliveryState.DELIVERED).save(spool)
    Delivery("kept.abc", "kept", "http://127.0.0.1:9/hook", "evt_2", "{}", time.time(),
             state=DeliveryState.DELIVERED).save(spool)
    # clutter: a dead worker, metrics alone, a temporary, an orphaned chunk area and lock
    spool.worker_file("w-dead").write_bytes(orjson.dumps(
        {"worker": "w-dead", "host": "elsewhere", "pid": 1, "state": "stopped", "last_seen": time.time()}))
    _write(spool.worker_metrics("w-dead"))
    _write(spool.worker_metrics("w-gone"))
    _write(spool.done / ".x.checkpoint.json.1234.tmp")
    spool.work_area("orphan").mkdir()
    _write(spool.work_area("orphan") / "plan.json")
    _write(spool.job_lock("lonely"), b"")
    # a log whose job is gone, with a rotated part
    _write(spool.log("oldlog"))
    _write(spool.logs / "oldlog.log.1")
    # never removed: the daemon's log, a dotfile that merely ends like a checkpoint
    _write(spool.daemon_log())
    _write(spool.done / ".stray.checkpoint.json", b"{}")


EXPECTED = [
    (Kind.JOB, "halfjob", 2, "finished an interrupted removal"),
    (Kind.REJECTED, "halfref", 3, "finished an interrupted removal"),
    (Kind.JOB, "cutshort", 2, "cancelled "),
    (Kind.JOB, "done", 6, "completed "),  # results, ids, input, log, batch record... and its checkpoint
    (Kind.REJECTED, "refused", 2, ""),
    (Kind.REJECTED, "noreason", 1, "no reason file"),
    (Kind.GROUP, "gonegroup", 1, "2 parts, all gone"),
    (Kind.BATCH, "ghost", 1, "its job is gone"),
    (Kind.UPLOAD, "file-" + "a" * 24, 2, "in.jsonl"),
    (Kind.TEMPORARY, "files/", 2, "uploads a killed server left"),
    (Kind.WEBHOOK, "done.abc", 1, "delivered, job done is gone"),
    (Kind.WORKER, "w-dead", 2, "stopped"),
    (Kind.WORKER, "w-gone", 1, "metrics only"),
    (Kind.TEMPORARY, "done/.x.checkpoint.json.1234.tmp", 1, ""),
    (Kind.LOCK, "lonely", 1, ""),
    (Kind.CHUNK_AREA, "orphan", 1, ""),
    (Kind.LOG, "oldlog", 2, "its job is gone"),
]


def test_one_pass_removes_one_of_everything_in_order(spool: Spool, config: Config) -> None:
    _littered(spool, config)
    policy = Policy(retention_seconds=DAY, worker_grace_seconds=DAY, temp_grace_seconds=DAY)
    now = time.time() + LATER

    dry = collect(spool, policy, now=now, dry_run=True)
    assert spool.results("halfjob").exists() and spool.batch_record("ghost").exists()  # nothing removed
    report = collect(spool, policy, now=now)

    found = [(r.kind, r.name, r.files, r.detail) for r in report.removed]
    assert [f[:3] for f in found] == [e[:3] for e in EXPECTED]
    for (kind, name, _n, detail), (_k, _m, _f, want) in zip(found, EXPECTED, strict=True):
        assert detail.startswith(want) if kind == Kind.JOB and want else detail == want, (name, detail)
    assert report.repaired == ["cutshort"] and report.skipped == []
    # The dry run saw the same things but the repaired job (it has no checkpoint before the real pass),
    # and the upload a killed server left as a plain temporary (a dry run never sweeps uploads).
    seen = [(k, n) for k, n, _f, _d in EXPECTED if n not in ("cutshort", "files/")]
    seen.insert(seen.index((Kind.LOCK, "lonely")), (Kind.TEMPORARY, "files/.upload.killed.tmp"))
    assert [(r.kind, r.name) for r in dry.removed] == seen
    # What stays: the kept job and what is its, the daemon log, a dotfile.
    left = sorted(str(p.relative_to(spool.root)) for p in spool.root.rglob("*")
                  if p.is_file() and "kept" not in p.name and p.parent != spool.root)
    assert left == ["done/.stray.checkpoint.json", "logs/daemon.log"]
    for path in (spool.checkpoint("kept"), spool.group("keptgroup"), spool.outbox_entry("kept.abc")):
        assert path.exists(), path
    # A second pass finds nothing more.
    assert collect(spool, policy, now=now).removed == []
    assert not os.listdir(spool.rejected)

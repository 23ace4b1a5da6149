"""Retention: `gc` removes exactly the final jobs past their time, whole, and never a live one.

Jobs are made by the real pipeline (the fake engine); their age is set by back-dating the
checkpoint's ``finished_at``. The kill -9 test runs gc in a subprocess that kills itself
before its Nth file-system change, for every N, and checks the spool after each.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from spoolbatch.cli import app
from spoolbatch.commands import catalog
from spoolbatch.commands.gc import gc
from spoolbatch.config import Config
from spoolbatch.store.checkpoint import Checkpoint
from spoolbatch.store.cleanup import DAY, Kind, Policy, collect
from spoolbatch.store.jobstate import JobState
from spoolbatch.store.rejections import write_reason
from spoolbatch.store.retention import job_files
from spoolbatch.store.spool import Spool
from spoolbatch.worker.daemon import Daemon

from .conftest import REPO, assert_exactly_once, chat_line, drop, wait_for


def drain(config: Config) -> None:
    daemon = Daemon(config, echo=False)
    while daemon.loop_once().worked:
        pass


def age_job(spool: Spool, job: str, days: float, status: JobState | None = None) -> None:
    """Back-date a finished job's ``finished_at`` (and set its final status)."""
    data = orjson.loads(spool.checkpoint(job).read_bytes())
    data["finished_at"] = time.time() - days * DAY
    if status is not None:
        data["status"] = status.value
    spool.checkpoint(job).write_bytes(orjson.dumps(data))


def files_of(spool: Spool, job: str) -> list[Path]:
    """Every file in the spool whose name starts with ``job.`` (but its lock: an empty file, left for a day)."""
    return sorted(p for p in spool.root.rglob(f"{job}.*")
                  if p.name.split(".", 1)[0] == job and p.is_file() and p != spool.job_lock(job))


def build(spool: Spool, config: Config) -> dict[str, Any]:
    """A spool with two expired final jobs, a recent one, a running, a claimed and a queued one."""
    for name in ("old", "oldcancel", "recent"):
        drop(spool, f"{name}.jsonl", [chat_line(i) for i in range(12)] + ["{broken"])
        drain(config)
    age_job(spool, "old", 40)
    age_job(spool, "oldcancel", 31, JobState.CANCELLED)
    age_job(spool, "recent", 10)
    # running: one chunk of three merged, the next one in the engine (its lock held)
    drop(spool, "running.jsonl", [chat_line(i) for i in range(25)])
    daemon = Daemon(config, echo=False)
    assert daemon.loop_once().worked and daemon._ahead is not None
    assert Checkpoint.load(spool.checkpoint("running")).status == JobState.RUNNING  # type: ignore[union-attr]
    os.utime(spool.checkpoint("running"), (time.time() - 60 * DAY,) * 2)
    # claimed: its input in active/, no checkpoint yet, its lock held by a "worker"
    drop(spool, "claimed.jsonl", [chat_line(i) for i in range(5)])
    claim, _ = spool.claim_inbox(0)
    assert claim is not None and claim.job == "claimed"
    # queued, and old
    drop(spool, "queued.jsonl", [chat_line(i) for i in range(5)], age=50 * DAY)
    # a refused file, 35 days ago
    (spool.rejected / "refused.jsonl").write_bytes(b"not json\n")
    write_reason(spool, "refused", "refused.jsonl", "not_jsonl", "not JSONL")
    reason = orjson.loads(spool.rejected_reason("refused").read_bytes())
    reason["at"] = time.time() - 35 * DAY
    spool.rejected_reason("refused").write_bytes(orjson.dumps(reason))
    spool.log("refused").write_text("refused whole\n")
    # groups: one whose parts are all expired, one with a part left
    for group, parts in (("gone-group", ["old", "oldcancel"]), ("kept-group", ["old", "recent"])):
        spool.group(group).write_bytes(orjson.dumps({"group": group, "jobs": parts}))
        os.utime(spool.group(group), (time.time() - 40 * DAY,) * 2)
    return {"claim": claim, "daemon": daemon}


def test_gc_removes_exactly_the_expired_final_jobs(spool: Spool, config: Config) -> None:
    state = build(spool, config)
    before = {j.job: j.status for j in catalog.list_jobs(spool)}
    assert before == {"old": "completed", "oldcancel": "cancelled", "recent": "completed", "running": "running",
                      "claimed": "claimed", "queued": "queued", "refused": "rejected"}
    sizes = sum(p.stat().st_size for j in ("old", "oldcancel") for p in files_of(spool, j)) \
        + sum(p.stat().st_size for p in files_of(spool, "refused")) + sum(
            spool.group("gone-group").stat().st_size for _ in [0])
    recent_files = {p: p.read_bytes() for p in files_of(spool, "recent")}

    dry = gc(config, dry_run=True)
    assert {(r.kind, r.name) for r in dry.removed} == {(Kind.JOB, "old"), (Kind.JOB, "oldcancel"),
                                                      (Kind.REJECTED, "refused"), (Kind.GROUP, "gone-group")}
    assert files_of(spool, "old") and spool.group("gone-group").exists()  # a dry run removes nothing

    report = gc(config)
    assert {(r.kind, r.name) for r in report.removed} == {(r.kind, r.name) for r in dry.removed}
    assert report.bytes_freed == dry.bytes_freed == sizes
    for job in ("old", "oldcancel", "refused"):
        assert files_of(spool, job) == [], job
    assert not spool.group("gone-group").exists() and spool.group("kept-group").exists()
    assert {p: p.read_bytes() for p in files_of(spool, "recent")} == recent_files
    after = {j.job: j.status for j in catalog.list_jobs(spool)}
    assert after == {k: v for k, v in before.items() if k not in ("old", "oldcancel", "refused")}
    assert not list(spool.done.glob("*.removing"))

    # The live jobs were left alone: each still finishes exactly once.
    state["claim"].release()
    state["daemon"]._ahead.claim.release()
    drain(config)
    for job, n in (("running", 25), ("claimed", 5), ("queued", 5)):
        assert_exactly_once(spool, job, {f"req-{i}" for i in range(n)})
    # A second gc has nothing left that expired; --older-than 0 takes every final job.
    assert gc(config).removed == []
    everything = gc(config, older_than_days=0)
    assert {r.name for r in everything.removed if r.kind == Kind.JOB} == {"recent", "running", "claimed", "queued"}
    assert {r.name for r in everything.removed if r.kind == Kind.GROUP} == {"kept-group"}
    assert catalog.list_jobs(spool) == []
    assert sorted(p.name for p in spool.done.iterdir()) == []


def test_gc_skips_a_final_job_whose_lock_is_held_and_one_still_being_finished(spool: Spool, config: Config) -> None:
    drop(spool, "job.jsonl", [chat_line(i) for i in range(3)])
    drain(config)
    age_job(spool, "job", 40)
    lock = spool.try_lock(spool.job_lock("job"))
    assert lock is not None
    report = gc(config)
    assert report.removed == [] and report.skipped == ["job"]
    lock.release()
    # A worker killed between marking it final and archiving its input: the next merge finishes it.
    spool.archived_input("job").rename(spool.input("job"))
    assert gc(config).removed == []
    spool.input("job").rename(spool.archived_input("job"))
    assert [r.name for r in gc(config).removed] == ["job"]


def test_a_queued_cancel_killed_halfway_is_made_whole(spool: Spool, config: Config) -> None:
    # `cancel` of a queued job moves its file to done/ and then writes its checkpoint: a kill -9
    # between the two left an input that no listing showed and no clean-up removed.
    drop(spool, "q.jsonl", [chat_line(i) for i in range(5)])
    (spool.inbox / "q.jsonl").rename(spool.archived_input("q"))
    assert "q" not in {j.job for j in catalog.list_jobs(spool)}
    assert gc(config, dry_run=True).repaired == ["q"] and not spool.checkpoint("q").exists()
    assert gc(config).repaired == ["q"]
    ckpt = Checkpoint.load(spool.checkpoint("q"))
    assert ckpt is not None and ckpt.status == JobState.CANCELLED and ckpt.total_lines == 5
    (info,) = [j for j in catalog.list_jobs(spool) if j.job == "q"]
    assert info.status == JobState.CANCELLED and info.reason == "cancelled while queued"
    assert gc(config).repaired == []
    age_job(spool, "q", 40)
    assert [r.name for r in gc(config).removed] == ["q"] and not spool.archived_input("q").exists()


def test_batch_expiry_hook_shortens_retention(spool: Spool, config: Config) -> None:
    for name in ("short", "long"):
        drop(spool, f"{name}.jsonl", [chat_line(i) for i in range(3)])
        drain(config)
    policy = Policy(retention_seconds=30 * DAY, expiry=lambda sp, job: time.time() - 1 if job == "short" else None)
    assert [r.name for r in collect(spool, policy).removed] == ["short"]


def test_gc_command_prints_what_it_removed_and_the_bytes(spool: Spool, config: Config) -> None:
    drop(spool, "job.jsonl", [chat_line(i) for i in range(3)])
    drain(config)
    age_job(spool, "job", 40)
    runner = CliRunner()
    result = runner.invoke(app, ["gc", "--spool", str(spool.root), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    data = orjson.loads(result.stdout)
    assert data["dry_run"] and data["counts"] == {"job": 1} and data["bytes_freed"] > 0
    result = runner.invoke(app, ["gc", "--spool", str(spool.root)])
    assert result.exit_code == 0
    assert "removed job job (completed" in result.stdout and "removed 1 item(s), freed" in result.stdout
    assert not spool.checkpoint("job").exists()
    result = runner.invoke(app, ["gc", "--spool", str(spool.root), "--older-than", "-1"])
    assert result.exit_code == 2 and "--older-than" in result.stderr


@pytest.mark.slow
def test_gc_beside_a_working_daemon_removes_only_finished_jobs(spool: Spool, start_daemon: Any) -> None:
    """A daemon subprocess works through 30 jobs while gc runs in a loop with retention 0 for the
    ``gone-*`` jobs; at each removal the job is checked whole, and the ``keep-*`` jobs end exactly once."""
    checked: dict[str, tuple[int, int]] = {}

    def expiry(sp: Spool, job: str) -> float | None:
        if job.startswith("keep-"):
            return None
        if job not in checked:  # called only for final jobs: it must be whole at this moment
            checked[job] = assert_exactly_once(sp, job, {f"req-{i}" for i in range(40)})
        return 0.0

    proc = start_daemon("--chunk-size", "7", "--fake-latency", "0.0005")
    names = [f"{'keep' if i % 5 == 0 else 'gone'}-{i:02d}" for i in range(30)]
    removed: set[str] = set()
    for name in names:
        drop(spool, f"{name}.jsonl", [chat_line(i) for i in range(40)])
        for r in collect(spool, Policy(expiry=expiry)).removed:
            assert r.kind == Kind.JOB and r.detail.startswith("completed"), r
            removed.add(r.name)
        time.sleep(0.02)

    def all_done() -> bool:
        removed.update(r.name for r in collect(spool, Policy(expiry=expiry)).removed)
        return removed == {n for n in names if n.startswith("gone")} and all(
            (c := Checkpoint.load(spool.checkpoint(n))) is not None and c.status == JobState.COMPLETED
            for n in names if n.startswith("keep"))

    wait_for(all_done, timeout=120, interval=0.1)
    assert proc.poll() is None
    for name in names:
        if name.startswith("keep"):
            assert_exactly_once(spool, name, {f"req-{i}" for i in range(40)})
        else:
            assert files_of(spool, name) == [] and checked[name] == (40, 0)
    log = spool.daemon_log().read_text()
    assert "failed, will be retried" not in log and "Traceback" not in log


# --- kill -9 midway ----------------------------------------------------------------------------
KILLER = r"""
import os, signal, sys
limit = int(sys.argv[2])
count = 0
def wrap(fn):
    def inner(*a, **k):
        global count
        count += 1
        if count == limit:
            os.kill(os.getpid(), signal.SIGKILL)
        return fn(*a, **k)
    return inner
for name in ("unlink", "rename", "replace", "rmdir"):
    setattr(os, name, wrap(getattr(os, name)))
from spoolbatch.commands.gc import gc
from spoolbatch.config import load_config
report = gc(load_config(sys.argv[1], env={}))
print(count)
"""


def consistent(spool: Spool, job: str) -> str:
    """'whole' (checkpoint and every file agree) or 'gone' (no checkpoint; listed nowhere)."""
    ckpt = Checkpoint.load(spool.checkpoint(job))
    listed = {j.job for j in catalog.list_jobs(spool)}
    if ckpt is None:
        assert job not in listed
        assert spool.job_exists(job) == bool(files_of(spool, job)), "an id with files left stays taken"
        return "gone"
    assert job in listed
    assert spool.results(job).stat().st_size == ckpt.results_bytes
    assert spool.deadletter_file(job).stat().st_size == ckpt.deadletter_bytes
    assert spool.ids(job).stat().st_size == 8 * ckpt.ids_count
    assert spool.archived_input(job).stat().st_size == ckpt.input_bytes
    assert spool.log(job).exists()
    assert len(list(catalog.results(spool, job))) == ckpt.requests_done
    return "whole"


@pytest.mark.slow
def test_gc_killed_at_every_step_leaves_jobs_whole_or_gone_and_a_rerun_finishes(
        spool: Spool, config: Config, tmp_path: Path) -> None:
    for name in ("a", "b"):
        drop(spool, f"{name}.jsonl", [chat_line(i) for i in range(12)] + ["{broken"])
        drain(config)
        age_job(spool, name, 40)
    drop(spool, "live.jsonl", [chat_line(i) for i in range(25)])
    Daemon(config, echo=False).loop_once()
    live = {p: p.read_bytes() for p in files_of(spool, "live")}
    outcomes = set()
    for limit in range(1, 100):
        copy = Spool(tmp_path / f"copy-{limit}")
        shutil.copytree(spool.root, copy.root, symlinks=True)
        proc = subprocess.run([sys.executable, "-c", KILLER, str(copy.root), str(limit)], cwd=REPO,
                              capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        killed = proc.returncode == -signal.SIGKILL
        assert killed or proc.returncode == 0, proc.stderr.decode()
        states = (consistent(copy, "a"), consistent(copy, "b"))
        outcomes.add(states)
        report = gc(config.replace(spool=copy.root))
        assert all(consistent(copy, j) == "gone" for j in ("a", "b"))
        assert files_of(copy, "a") == files_of(copy, "b") == []
        assert not list(copy.done.glob("*.removing"))
        assert {p.relative_to(copy.root): p.read_bytes() for p in files_of(copy, "live")} == \
            {p.relative_to(spool.root): v for p, v in live.items()}
        if not killed:
            assert report.removed == []
            break
    else:
        raise AssertionError("gc never finished within 100 steps")
    assert limit > 10  # it was killed at every one of its steps before finishing
    assert {("whole", "whole"), ("gone", "whole"), ("gone", "gone")} <= outcomes


def test_a_tombstone_keeps_the_id_taken_until_the_removal_is_finished(spool: Spool, config: Config) -> None:
    drop(spool, "job.jsonl", [chat_line(i) for i in range(3)])
    drain(config)
    spool.checkpoint("job").rename(spool.tombstone("job"))  # what a gc killed after its first step leaves
    assert spool.job_exists("job") and catalog.list_jobs(spool) == []
    drop(spool, "job.jsonl", [chat_line(i) for i in range(2)])
    drain(config)
    assert Checkpoint.load(spool.checkpoint("job-2")) is not None  # not mixed with the old job's files
    report = gc(config)
    assert [(r.kind, r.name, r.detail) for r in report.removed] == [
        (Kind.JOB, "job", "finished an interrupted removal")]
    assert all(not p.exists() for p in job_files(spool, "job")) and not spool.tombstone("job").exists()
    assert_exactly_once(spool, "job-2", {"req-0", "req-1"})


def test_a_batch_output_expires_after_its_own_time_with_its_record_and_upload(spool: Spool, config: Config,
                                                                              tmp_path: Path) -> None:
    from spoolbatch.store import files as uploads
    from spoolbatch.store.batches import BatchRecord, BatchSpec

    for name in ("api", "cli"):
        drop(spool, f"{name}.jsonl", [chat_line(i) for i in range(3)])
        drain(config)
        age_job(spool, name, 2 / 24)  # finished two hours ago
    tmp = spool.files / ".upload.x.tmp"
    tmp.write_bytes(b'{"x": 1}\n')
    old = time.time() - 40 * DAY
    uploads.commit(spool, tmp, uploads.FileRecord("file-" + "a" * 24, "in.jsonl", 9, 1, created_at=old))
    spec = BatchSpec(endpoint="/v1/chat/completions", input_file_id="file-" + "a" * 24,
                     output_expires_after={"anchor": "created_at", "seconds": 3600})
    BatchRecord.new("api", spec).save(spool)
    unused = spool.files / ".upload.y.tmp"
    unused.write_bytes(b"{}\n")
    uploads.commit(spool, unused, uploads.FileRecord("file-" + "b" * 24, "other.jsonl", 3, 1, created_at=old))
    report = gc(config)
    assert {(r.kind, r.name) for r in report.removed} == {(Kind.JOB, "api"), (Kind.UPLOAD, "file-" + "a" * 24),
                                                         (Kind.UPLOAD, "file-" + "b" * 24)}
    assert not spool.batch_record("api").exists() and not list(spool.files.iterdir())
    assert spool.checkpoint("cli").exists()  # the retention rule: 30 days


def test_delivered_webhooks_go_with_their_job_pending_ones_stay(spool: Spool, config: Config) -> None:
    from spoolbatch.store import outbox

    drop(spool, "job.jsonl", [chat_line(i) for i in range(3)])
    drain(config)
    sent = outbox.Delivery("sent", "job", "https://a.example/hook", "evt_1", "{}", time.time(),
                           state=outbox.DeliveryState.DELIVERED)
    waiting = outbox.Delivery("waiting", "job", "https://b.example/hook", "evt_1", "{}", time.time())
    for entry in (sent, waiting):
        entry.save(spool)
    assert [r.kind for r in gc(config).removed] == []  # the job is still kept: so are its events
    report = gc(config, older_than_days=0)
    assert sorted((r.kind, r.name) for r in report.removed) == [(Kind.JOB, "job"), (Kind.WEBHOOK, "sent")]
    assert not spool.outbox_entry("sent").exists() and spool.outbox_entry("waiting").exists()

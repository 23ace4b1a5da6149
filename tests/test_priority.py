"""Priority and fair share: which job a worker takes its next chunk from, and why.

The ranking is tested on its own (names, numbers, the order of candidates, the reason given),
then through an in-process daemon driven iteration by iteration (an overtaken job resumes, a job
starved past ``max_wait`` counts as high on the daemon's clock seam, owners take turns), and
with three daemon processes that an urgent job overtakes at their next chunk boundary.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from spoolbatch.commands.batches import get_batch
from spoolbatch.commands.status import jobs_now
from spoolbatch.commands.submit import submit
from spoolbatch.config import Config
from spoolbatch.errors import InputError
from spoolbatch.store.batches import BatchRecord, BatchSpec
from spoolbatch.store.checkpoint import Checkpoint
from spoolbatch.store.joblog import JobEvent, describe
from spoolbatch.store.jobstate import JobState
from spoolbatch.store.priority import HIGH, LOW, NORMAL, URGENT, parse_priority, priority_label
from spoolbatch.store.spool import Spool
from spoolbatch.store.workarea import WorkArea
from spoolbatch.worker.daemon import Daemon
from spoolbatch.worker.metrics import MetricsSample, render
from spoolbatch.worker.schedule import (
    FAIR_SHARE,
    FIFO,
    LOADED_MODEL,
    MAX_WAIT,
    Candidate,
    Ranking,
    order,
    owner_of,
    reason_for,
)

from .conftest import assert_exactly_once, chat_line, job_events, wait_for, write_jsonl


def queue(spool: Spool, config: Config, tmp_path: Path, name: str, n: int, *, priority: Any = None,
          owner: str | None = None, project: str | None = None) -> str:
    """Submit ``n`` chat lines as job ``name`` with a priority, an owner and a project; its job id."""
    path = write_jsonl(tmp_path / f"{name}.jsonl", [chat_line(i) for i in range(n)])
    spec = BatchSpec(priority=priority, metadata={"owner": owner} if owner else {}, project=project)
    return submit(path, config, batch=spec).jobs[0]


def ids(n: int) -> set[str]:
    return {f"req-{i}" for i in range(n)}


# --- names and numbers ---------------------------------------------------------------------
def test_priority_names_numbers_and_refusals() -> None:
    assert [parse_priority(v) for v in ("low", "normal", "High", " urgent ")] == [LOW, NORMAL, HIGH, URGENT]
    assert [parse_priority(v) for v in (5, "15", -3, 7.0, "-1000")] == [5, 15, -3, 7, -1000]
    for bad in ("soon", "", True, 1001, 2.5, None, [1]):
        with pytest.raises(InputError) as info:
            parse_priority(bad)
        assert info.value.code == "invalid_priority"
    assert [priority_label(n) for n in (LOW, NORMAL, HIGH, URGENT, 15)] == ["low", "normal", "high", "urgent", 15]


def test_batch_priority_from_the_body_else_metadata_else_normal(spool: Spool) -> None:
    assert BatchRecord.new("a", BatchSpec(priority="urgent", metadata={"priority": "low"})).job_priority == URGENT
    assert BatchRecord.new("b", BatchSpec(metadata={"priority": "high"})).job_priority == HIGH
    assert BatchRecord.new("c", BatchSpec(metadata={"priority": "12"})).job_priority == 12
    assert BatchRecord.new("d", BatchSpec()).job_priority == NORMAL
    for spec in ({"priority": "asap"}, {"metadata": {"priority": "asap"}}):
        with pytest.raises(InputError):
            BatchSpec(**spec)  # type: ignore[arg-type]


# --- the ranking -----------------------------------------------------------------------------
def cand(job: str, priority: int = NORMAL, *, owner: str = "ann", model: str = "m", queued_at: float = 0.0,
         served_at: float | None = None, fresh: bool = True, effective: int | None = None) -> Candidate:
    return Candidate(job, priority, priority if effective is None else effective, owner, model, queued_at,
                     served_at, fresh)


def test_order_is_priority_then_loaded_model_then_owner_turn_then_age() -> None:
    old, new, urgent = cand("old", queued_at=1), cand("new", queued_at=2), cand("urgent", URGENT, queued_at=3)
    assert [c.job for c in order([new, urgent, old], "m")] == ["urgent", "old", "new"]
    other = cand("other-model", model="x", queued_at=0)
    assert [c.job for c in order([other, old], "m")] == ["old", "other-model"]
    assert [c.job for c in order([other, old], None)] == ["other-model", "old"]  # nothing loaded: oldest
    # Ann got a chunk at t=10, Bob never: Bob's newer job goes first; then Ann's turn comes back.
    ann, bob = cand("ann-1", queued_at=1, served_at=10), cand("bob-1", owner="bob", queued_at=5)
    assert [c.job for c in order([ann, bob], "m")] == ["bob-1", "ann-1"]
    bob_served = cand("bob-1", owner="bob", queued_at=5, served_at=11)
    assert [c.job for c in order([ann, bob_served], "m")] == ["ann-1", "bob-1"]
    assert [c.job for c in order([ann, bob], "m", fair_share=False)] == ["ann-1", "bob-1"]
    starved = cand("starved", LOW, effective=HIGH, queued_at=9)
    assert [c.job for c in order([old, starved], "m")] == ["starved", "old"]


def test_reason_names_what_decided() -> None:
    old, new = cand("old", queued_at=1), cand("new", queued_at=2)
    assert reason_for(cand("u", URGENT, queued_at=3), [old, new], "m") == "priority urgent"
    assert reason_for(cand("n", 15, queued_at=3), [old], "m") == "priority 15"
    assert reason_for(cand("s", LOW, effective=HIGH, queued_at=9), [old], "m") == MAX_WAIT
    assert reason_for(old, [new], "m") == FIFO
    assert reason_for(new, [], "m") == FIFO
    assert reason_for(new, [cand("done", NORMAL, queued_at=0, fresh=False, owner="bob")], "m") == FIFO
    assert reason_for(new, [cand("bob-1", owner="bob", queued_at=1)], "m") == FAIR_SHARE
    assert reason_for(new, [cand("x-1", model="x", queued_at=1)], "m") == LOADED_MODEL


def test_jobs_only_to_be_ended_rank_first_and_decide_no_reason() -> None:
    urgent, old = cand("urgent", URGENT, queued_at=1), cand("old", LOW, queued_at=0)
    late = Candidate("late", LOW, LOW, "bob", "x", 5.0, None, True, ending=True)
    assert [c.job for c in order([urgent, old, late], "m")] == ["late", "urgent", "old"]
    assert reason_for(cand("new", queued_at=2), [late], "m") == FIFO


# --- one daemon, iteration by iteration -----------------------------------------------------
def merged_order(daemon: Daemon) -> list[str]:
    """The job of each chunk the daemon merges, in order (one worker: the order it claimed them)."""
    seen: list[str] = []
    daemon.on_progress.append(lambda ckpt, last: seen.append(ckpt.job) if last is not None else None)
    return seen


def test_more_urgent_job_overtakes_at_the_next_chunk_and_the_other_resumes(spool: Spool, config: Config,
                                                                          tmp_path: Path) -> None:
    daemon = Daemon(config, echo=False)
    order_seen = merged_order(daemon)
    long = queue(spool, config, tmp_path, "long", 50, priority="low")
    assert daemon.loop_once().job == long  # chunk 1; chunk 2 is handed ahead
    rush = queue(spool, config, tmp_path, "rush", 20, priority="urgent")
    assert [j.priority for j in sorted(jobs_now(spool), key=lambda j: j.job)] == ["low", "urgent"]
    while daemon.loop_once().worked:
        pass
    # Chunk 2 of the long job was already with the engine; the urgent job's two chunks came next.
    assert order_seen == [long, long, rush, rush, long, long, long]
    overtaken = job_events(spool, long, JobEvent.OVERTAKEN)
    assert [(e["by"], e["chunk"], e["priority"], e["by_priority"], e["reason"]) for e in overtaken] == \
        [(rush, 2, "low", "urgent", "priority urgent")]
    assert "overtaken after chunk 2 by job rush" in describe(overtaken[0])
    assert not job_events(spool, long, JobEvent.RESUMED)  # it went on from its plan, nothing redone
    assert_exactly_once(spool, long, ids(50))
    assert_exactly_once(spool, rush, ids(20))
    assert Checkpoint.load(spool.checkpoint(rush)).finished_at < Checkpoint.load(spool.checkpoint(long)).finished_at
    assert daemon.totals.chunks_by_priority == {"low": 5, "urgent": 2}
    sample = render(MetricsSample(chunks_by_priority=daemon.totals.chunks_by_priority))
    assert 'spoolbatch_chunks_total{priority="urgent"} 2' in sample
    assert get_batch(spool, rush).to_openai()["priority"] == "urgent"


def test_a_job_waiting_past_max_wait_counts_as_high(spool: Spool, config: Config, tmp_path: Path) -> None:
    import pwd

    ahead = [0.0]  # the daemon's clock runs this far ahead of the files' times
    daemon = Daemon(config.replace(max_wait=100.0), echo=False, clock=lambda: time.time() + ahead[0])
    quiet = queue(spool, config, tmp_path, "quiet", 60, priority="low")
    daemon.loop_once()  # quiet's chunks 1 and 2 claimed
    busy = queue(spool, config, tmp_path, "busy", 60)
    daemon.loop_once()  # quiet's chunk 2 runs; nothing handed ahead: busy is more urgent and still queued
    daemon.loop_once()  # busy's chunk 1 runs, its chunk 2 ahead
    assert daemon.heartbeat.snapshot().scheduled == {
        "job": busy, "chunk": 1, "priority": "normal", "effective_priority": "normal",
        "owner": pwd.getpwuid(os.getuid()).pw_name, "reason": "priority normal"}
    # quiet's last new chunk was 50 s ago (its plan's time): under max_wait, it waits behind busy.
    plan = WorkArea(spool.work_area(quiet)).plan_path
    os.utime(plan, (time.time() - 50, time.time() - 50))
    daemon.loop_once()
    assert daemon.scheduler.last == (busy, 3)
    # 60 s later on the daemon's clock it has waited 110 s: it counts as high and takes the next chunk.
    ahead[0] = 60.0
    daemon.loop_once()
    assert daemon.scheduler.last == (quiet, 3)
    daemon.loop_once()
    assert (daemon.heartbeat.snapshot().scheduled or {})["reason"] == MAX_WAIT
    assert (daemon.heartbeat.snapshot().scheduled or {})["effective_priority"] == "high"
    assert [(e["by"], e["reason"], e["priority"], e["by_priority"]) for e in
            job_events(spool, busy, JobEvent.OVERTAKEN)] == [(quiet, MAX_WAIT, "normal", "high")]
    ahead[0] = 0.0
    while daemon.loop_once().worked:
        pass
    assert_exactly_once(spool, quiet, ids(60))
    assert_exactly_once(spool, busy, ids(60))


def test_max_wait_zero_never_promotes(spool: Spool, config: Config, tmp_path: Path) -> None:
    queue(spool, config, tmp_path, "low", 10, priority="low")
    later = time.time() + 10 * 86400
    assert Ranking(spool, config.replace(max_wait=0.0)).rank(later, None)[0].effective == LOW
    assert Ranking(spool, config.replace(max_wait=5.0)).rank(time.time() + 6, None)[0].effective == HIGH
    assert Ranking(spool, config.replace(max_wait=5.0)).rank(time.time(), None)[0].effective == LOW


@pytest.mark.parametrize("fair_share", [True, False])
def test_owners_take_chunks_round_robin(spool: Spool, config: Config, tmp_path: Path, fair_share: bool) -> None:
    daemon = Daemon(config.replace(fair_share=fair_share), echo=False)
    seen = merged_order(daemon)
    a1 = queue(spool, config, tmp_path, "a1", 30, owner="alice")
    a2 = queue(spool, config, tmp_path, "a2", 30, owner="alice")
    b1 = queue(spool, config, tmp_path, "b1", 30, owner="bob")
    while daemon.loop_once().worked:
        pass
    if fair_share:  # Bob's one job is not held up behind Alice's two
        assert seen == [a1, b1, a1, b1, a1, b1, a2, a2, a2]
    else:
        assert seen == [a1, a1, a1, a2, a2, a2, b1, b1, b1]
    for job in (a1, a2, b1):
        assert_exactly_once(spool, job, ids(30))
    assert not any(job_events(spool, job, JobEvent.OVERTAKEN) for job in (a1, a2, b1))  # equals take turns


def test_projects_take_turns_before_their_owners_do(spool: Spool, config: Config, tmp_path: Path) -> None:
    """Fair share is across projects first: team-a's two owners share team-a's turns, so team-b's one job gets
    every other chunk (not one in three because team-a's jobs name two owners)."""
    daemon = Daemon(config, echo=False)
    seen = merged_order(daemon)
    a1 = queue(spool, config, tmp_path, "a1", 30, owner="alice", project="team-a")
    a2 = queue(spool, config, tmp_path, "a2", 30, owner="carol", project="team-a")
    b1 = queue(spool, config, tmp_path, "b1", 30, owner="bob", project="team-b")
    while daemon.loop_once().worked:
        pass
    assert seen == [a1, b1, a2, b1, a1, b1, a2, a1, a2]
    for job in (a1, a2, b1):
        assert_exactly_once(spool, job, ids(30))
    assert reason_for(cand("b", owner="bob", queued_at=2), [cand("a", owner="bob", queued_at=1)], "m") == FIFO
    other = Candidate("a", NORMAL, NORMAL, "bob", "m", 1.0, None, True, project="team-a")
    assert reason_for(cand("b", owner="bob", queued_at=2), [other], "m") == FAIR_SHARE


def test_owner_is_metadata_owner_else_the_files_user(spool: Spool, config: Config, tmp_path: Path) -> None:
    import pwd

    me = pwd.getpwuid(os.getuid()).pw_name
    queue(spool, config, tmp_path, "team", 5, owner="team-a")
    queue(spool, config, tmp_path, "mine", 5)
    ranking = Ranking(spool, config)
    assert {c.job: c.owner for c in ranking.rank(time.time(), None)} == {"team": "team-a", "mine": me}
    assert owner_of(None, os.getuid(), "team-b") == "team-b"  # a project's job (inbox/team-b/, a project key)
    assert owner_of(None, os.getuid(), "default") == me


# --- three worker processes ------------------------------------------------------------------
@pytest.mark.slow
def test_urgent_job_overtakes_on_every_worker_at_its_next_chunk(spool: Spool, config: Config, tmp_path: Path,
                                                                start_daemon: Any) -> None:
    long = queue(spool, config, tmp_path, "long", 2400)
    procs = [start_daemon("--chunk-size", "20", "--fake-latency", "0.01") for _ in range(3)]
    # Every worker is on the long job (each has merged chunks of it) before the urgent one comes.
    wait_for(lambda: len({e["worker"] for e in job_events(spool, long, "chunk_merged")}) == 3, timeout=60)
    submitted = time.time()
    rush = queue(spool, config, tmp_path, "rush", 480, priority="urgent")
    planned = len(WorkArea(spool.work_area(long)).plan())  # the long job's chunks claimed by now
    wait_for(lambda: Checkpoint.load(spool.checkpoint(long)) and
             Checkpoint.load(spool.checkpoint(long)).status == "completed", timeout=120)
    workers = {e["worker"] for e in job_events(spool, long, "chunk_merged")}
    assert len(workers) == 3
    overtaken = job_events(spool, long, JobEvent.OVERTAKEN)
    # Each worker left the long job once, for the urgent one, right after a chunk it had claimed
    # before the urgent job came: no worker claimed a new chunk of the long job in between.
    assert sorted(e["worker"] for e in overtaken) == sorted(workers), overtaken
    assert all(e["by"] == rush and e["by_priority"] == "urgent" and e["chunk"] <= planned for e in overtaken), \
        (planned, [(e["worker"], e["chunk"], e["ts"]) for e in overtaken], submitted)
    assert {e["worker"] for e in job_events(spool, rush, "chunk_merged")} == workers
    rush_ckpt, long_ckpt = Checkpoint.load(spool.checkpoint(rush)), Checkpoint.load(spool.checkpoint(long))
    assert rush_ckpt.finished_at < long_ckpt.finished_at
    assert_exactly_once(spool, long, ids(2400))
    assert_exactly_once(spool, rush, ids(480))
    for proc in procs:
        proc.terminate()
        assert proc.wait(timeout=60) == 0


# --- what people see -------------------------------------------------------------------------
def test_cli_submit_priority_and_list_status_show_it(spool: Spool, tmp_path: Path) -> None:
    import orjson
    from typer.testing import CliRunner

    from spoolbatch.cli import app
    from spoolbatch.cli.views import status_lines

    runner = CliRunner()

    def cli(*args: str) -> Any:
        return runner.invoke(app, [*args, "--spool", str(spool.root)])

    rush = write_jsonl(tmp_path / "rush.jsonl", [chat_line(i) for i in range(3)])
    plain = write_jsonl(tmp_path / "plain.jsonl", [chat_line(i) for i in range(3)])
    result = cli("submit", str(rush), "--priority", "urgent", "--json")
    assert result.exit_code == 0 and orjson.loads(result.stdout)["priority"] == "urgent"
    assert cli("submit", str(plain)).exit_code == 0
    refused = cli("submit", str(plain), "--priority", "soon")
    assert refused.exit_code == 5 and "priority 'soon' is not low, normal, high, urgent" in refused.stderr
    assert "Traceback" not in refused.stderr
    listed = {j["job"]: j["priority"] for j in orjson.loads(cli("list", "--json").stdout)}
    assert listed == {"rush": "urgent", "plain": "normal"}
    assert {j["job"]: j["priority"] for j in orjson.loads(cli("status", "--json").stdout)["jobs"]} == listed
    table = cli("list").stdout
    assert "priority" in table and "urgent" in table
    beat = {"worker": "w1", "liveness": "alive", "state": "working", "job": "rush", "chunk": 1, "age_seconds": 0,
            "scheduled": {"job": "rush", "chunk": 1, "priority": "urgent", "effective_priority": "urgent",
                          "owner": "ann", "reason": "priority urgent"}}
    data = orjson.loads(cli("status", "--json").stdout) | {"workers": [beat]}
    assert "worker w1: alive, working job rush chunk 1 [priority urgent]" in status_lines(data)[0]
    beat["scheduled"] |= {"priority": "low", "effective_priority": "high", "reason": MAX_WAIT}
    assert "chunk 1 [priority high: waited past max_wait]" in status_lines(data)[0]


def past_window(spool: Spool, job: str) -> None:
    """Make ``job``'s batch window end a second ago (its record's ``expires_at``)."""
    record = BatchRecord.load(spool, job)
    assert record is not None
    record.expires_at = time.time() - 1
    record.save(spool)


def test_a_batch_past_its_window_is_ended_at_the_next_chunk_not_after_the_queue(spool: Spool, config: Config,
                                                                                 tmp_path: Path) -> None:
    """A queued batch whose window passed is ended (expired, its requests error lines) before the worker's next
    chunk, not when the jobs ahead of it are done; a running one past its window too, ahead of an urgent job."""
    daemon = Daemon(config, echo=False)
    long = queue(spool, config, tmp_path, "long", 50)
    assert daemon.loop_once().job == long  # chunk 1 of 5
    late = queue(spool, config, tmp_path, "late", 5, priority="low")
    past_window(spool, late)
    assert daemon.loop_once().job == long  # chunk 2, and the late batch ended first
    view = get_batch(spool, late).to_openai()
    assert view["status"] == "expired" and view["request_counts"] == {"total": 5, "completed": 0, "failed": 5}
    assert Checkpoint.load(spool.checkpoint(late)) is not None
    ckpt = Checkpoint.load(spool.checkpoint(long))
    assert ckpt is not None and ckpt.requests_done == 20
    # An urgent job overtakes the long one, whose window then passes: the long job is ended at the urgent job's
    # next chunk boundary, not once the urgent job is done.
    rush = queue(spool, config, tmp_path, "rush", 30, priority="urgent")
    assert daemon.loop_once().job == long  # chunk 3, handed to the engine before the urgent job came
    assert daemon.loop_once().job == rush  # chunk 1 of 3
    past_window(spool, long)
    assert daemon.loop_once().job == rush  # chunk 2: before its look-ahead took chunk 3, the long job ended
    ckpt = Checkpoint.load(spool.checkpoint(long))
    assert ckpt is not None and ckpt.status == JobState.EXPIRED and ckpt.requests_done == 30
    rushed = Checkpoint.load(spool.checkpoint(rush))
    assert rushed is not None and rushed.status == JobState.RUNNING
    while daemon.loop_once().worked:
        pass
    assert get_batch(spool, rush).to_openai()["status"] == "completed"
    assert get_batch(spool, long).to_openai()["request_counts"] == {"total": 50, "completed": 30, "failed": 20}

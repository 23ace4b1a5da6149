"""The job pipeline in-process: chunks, checkpoints, resume, cancel, retry, groups, limits."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from spoolbatch.cli import app
from spoolbatch.commands import catalog, control
from spoolbatch.commands.control import Cancelled, CancelOutcome
from spoolbatch.commands.submit import submit
from spoolbatch.config import Config
from spoolbatch.errors import InputError, LimitExceeded
from spoolbatch.store.checkpoint import Checkpoint
from spoolbatch.store.jobstate import JobState
from spoolbatch.store.spool import Spool, sanitize_job_id
from spoolbatch.worker.daemon import Daemon
from spoolbatch.worker.executor import ChunkExecutor

from .conftest import assert_exactly_once, chat_line, drop, job_events, read_jsonl, write_jsonl
from .fakes import FlakyEngine, RecordingEngine, UnloadableEngine


def drain(config: Config) -> Daemon:
    daemon = Daemon(config, echo=False)
    while daemon.loop_once().worked:
        pass
    return daemon


def test_job_runs_in_chunks_and_every_line_is_accounted_for(spool: Spool, config: Config) -> None:
    records: list[object] = [chat_line(i) for i in range(25)]
    records.insert(5, "{broken")
    drop(spool, "job.jsonl", records)
    drain(config)
    ckpt = Checkpoint.load(spool.checkpoint("job"))
    assert ckpt is not None
    assert ckpt.chunks == 3 and ckpt.lines_consumed == 26 and ckpt.status == JobState.COMPLETED
    assert assert_exactly_once(spool, "job", {f"req-{i}" for i in range(25)}) == (25, 1)
    dead = read_jsonl(spool.deadletter_file("job"))
    assert [(d["line"], d["error"]["code"], d["request"]) for d in dead] == [(6, "invalid_json", "{broken")]
    assert spool.archived_input("job").exists() and not spool.input("job").exists()
    assert ckpt.completion_tokens > 0 and ckpt.prompt_tokens > 0


def test_results_are_openai_batch_lines(spool: Spool, config: Config) -> None:
    from openai.types.chat import ChatCompletion

    drop(spool, "job.jsonl", [chat_line(i) for i in range(3)])
    drain(config)
    for line in read_jsonl(spool.results("job")):
        assert line["id"].startswith("batch_req_") and line["error"] is None
        assert line["response"]["status_code"] == 200
        ChatCompletion.model_validate(line["response"]["body"])


def crash_midway(spool: Spool, config: Config, job: str, chunks: int, *, unmerged: bool = False,
                 orphan: bool = False) -> None:
    """Run ``chunks`` chunks, then leave what a crash can: bytes past the committed offsets,
    a committed part not merged yet (``unmerged``), a planned chunk never committed (``orphan``)."""
    daemon = Daemon(config, echo=False)
    for _ in range(chunks):
        assert daemon.loop_once().worked
    if daemon._ahead is not None:  # the crash also loses the chunk it had handed to the engine
        daemon._ahead.claim.release()
        daemon._ahead = None
    held = daemon.take_chunk(job, config.chunk_size) if orphan else None
    if unmerged:  # committed after the orphan was planned: it cannot merge before the orphan does
        claim = daemon.take_chunk(job, config.chunk_size)
        assert claim is not None
        daemon.claims.commit(daemon.claims.prepare(claim))
        claim.release()
    if held is not None:
        held.release()
    for path in (spool.results(job), spool.deadletter_file(job), spool.ids(job)):
        with open(path, "ab") as f:
            f.write(b'{"torn": tr')


@pytest.mark.parametrize(("unmerged", "orphan"), [(False, False), (True, False), (False, True), (True, True)])
def test_resume_cuts_files_back_and_merges_or_takes_over_chunks(spool: Spool, config: Config, unmerged: bool,
                                                                  orphan: bool) -> None:
    drop(spool, "job.jsonl", [chat_line(i) for i in range(45)] + ["[1]"])
    crash_midway(spool, config, "job", chunks=2, unmerged=unmerged, orphan=orphan)
    ckpt = Checkpoint.load(spool.checkpoint("job"))
    assert ckpt is not None and ckpt.lines_consumed == 20 and ckpt.status == JobState.RUNNING
    drain(config)
    assert assert_exactly_once(spool, "job", {f"req-{i}" for i in range(45)}) == (45, 1)
    final = Checkpoint.load(spool.checkpoint("job"))
    # The crashed worker had also handed chunk 3 (line 21 on) to its engine: it is taken over too.
    assert final is not None and final.resumes == 1 + int(orphan) and final.chunks == 5
    assert not spool.work_area("job").exists()
    resumed = [(e["chunk"], e["first_line"], e["last_line"]) for e in job_events(spool, "job", "resumed")]
    # The orphan is that chunk 3 again: the crashing worker took it over and let it go uncommitted.
    assert resumed == [(3, 21, 30)] * (1 + int(orphan))


def test_duplicates_are_caught_across_a_resume(spool: Spool, config: Config) -> None:
    drop(spool, "job.jsonl", [chat_line(i) for i in range(15)] + [chat_line(3)])
    crash_midway(spool, config, "job", chunks=1)
    drain(config)
    dead = read_jsonl(spool.deadletter_file("job"))
    assert [(d["line"], d["error"]["code"]) for d in dead] == [(16, "duplicate_custom_id")]


def test_a_file_over_the_limit_is_refused_whole(spool: Spool, config: Config) -> None:
    drop(spool, "big.jsonl", [chat_line(i) for i in range(12)])
    drain(config.replace(max_requests_per_job=10))
    reason = orjson.loads(spool.rejected_reason("big").read_bytes())
    assert reason["code"] == "limit_exceeded" and "requests per job" in reason["reason"]
    assert spool.rejected_file("big").exists() and not spool.checkpoint("big").exists()


def test_job_ids_never_overwrite_earlier_results(spool: Spool, config: Config) -> None:
    drop(spool, "job.jsonl", [chat_line(1)])
    drain(config)
    drop(spool, "job.jsonl", [chat_line(2)])
    drain(config)
    assert [r["custom_id"] for r in read_jsonl(spool.results("job"))] == ["req-1"]
    assert [r["custom_id"] for r in read_jsonl(spool.results("job-2"))] == ["req-2"]


@pytest.mark.parametrize(("name", "job"), [
    ("../../etc/passwd", "passwd"), ("..hidden.jsonl", "hidden"), ("a b$c.jsonl", "a_b_c"),
    ("ünï\ncode.jsonl", "n_code"), ("....jsonl", "job"),
])
def test_job_ids_are_sanitised(name: str, job: str) -> None:
    assert sanitize_job_id(name) == job


def test_cancel_a_queued_job_removes_it(spool: Spool) -> None:
    drop(spool, "q.jsonl", [chat_line(1)])
    assert control.cancel(spool, "q") == Cancelled("q", CancelOutcome.CANCELLED_QUEUED)
    assert not list(spool.inbox.iterdir())
    (info,) = catalog.list_jobs(spool)
    assert (info.status, info.reason) == (JobState.CANCELLED, "cancelled while queued")


def test_cancel_of_an_odd_inbox_entry_unlinks_it_without_following_it(spool: Spool, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.jsonl"
    target.write_bytes(orjson.dumps(chat_line(1)) + b"\n")
    (spool.inbox / "odd.jsonl").symlink_to(target)
    assert control.cancel(spool, "odd") == Cancelled("odd", CancelOutcome.REMOVED)
    assert not list(spool.inbox.iterdir()) and target.exists() and catalog.list_jobs(spool) == []


def test_the_cli_cancel_names_the_outcome(spool: Spool) -> None:
    drop(spool, "q.jsonl", [chat_line(1)])
    result = CliRunner().invoke(app, ["cancel", "q", "--spool", str(spool.root), "--json"])
    assert result.exit_code == 0, result.output
    data = orjson.loads(result.stdout)
    assert (data["job"], data["outcome"]) == ("q", CancelOutcome.CANCELLED_QUEUED)


def test_cancel_a_running_job_stops_at_a_chunk_boundary(spool: Spool, config: Config) -> None:
    drop(spool, "job.jsonl", [chat_line(i) for i in range(40)])
    crash_midway(spool, config, "job", chunks=1)
    assert control.cancel(spool, "job") == Cancelled("job", CancelOutcome.STOP_PENDING)  # no daemon holds it
    drain(config)
    ckpt = Checkpoint.load(spool.checkpoint("job"))
    assert ckpt is not None and ckpt.status == JobState.CANCELLED and ckpt.lines_consumed == 10
    assert ckpt.resumes == 0
    assert len(read_jsonl(spool.results("job"))) == 10
    assert not spool.cancel_marker("job").exists()
    (info,) = catalog.list_jobs(spool)  # status and list show why it ended early
    assert info.reason == ckpt.message == "cancel asked; stopped after line 10 of 40"


def test_a_cancelled_job_reports_the_share_of_lines_it_got_through(spool: Spool, config: Config) -> None:
    drop(spool, "big.jsonl", [chat_line(i) for i in range(3000)])
    config = config.replace(chunk_size=500, fake_latency=0.0001)
    daemon = Daemon(config, echo=False)
    for _ in range(2):
        assert daemon.loop_once().worked
    # the daemon holds the look-ahead chunk of the job it is working on
    assert control.cancel(spool, "big") == Cancelled("big", CancelOutcome.STOP_REQUESTED)
    while daemon.loop_once().worked:
        pass
    ckpt = Checkpoint.load(spool.checkpoint("big"))
    assert ckpt is not None and ckpt.status == JobState.CANCELLED
    assert 1000 <= ckpt.lines_consumed < 3000 and ckpt.lines_consumed % 500 == 0
    (info,) = catalog.list_jobs(spool)
    assert info.status == "cancelled" and info.progress == round(ckpt.lines_consumed / 3000, 4) < 1.0
    assert info.eta_seconds is None and info.requests_done == ckpt.lines_consumed
    data = orjson.loads(spool.checkpoint("big").read_bytes())
    assert data["progress"] == round(ckpt.lines_consumed / 3000, 6) and data["eta_seconds"] is None


def test_a_completed_job_is_whole_and_has_nothing_left(spool: Spool, config: Config) -> None:
    drop(spool, "job.jsonl", [chat_line(i) for i in range(5)])
    drain(config)
    (info,) = catalog.list_jobs(spool)
    assert (info.status, info.progress, info.eta_seconds) == ("completed", 1.0, 0.0)


def test_retry_resubmits_deadletter_records(spool: Spool, config: Config) -> None:
    drop(spool, "job.jsonl", [chat_line(1), chat_line(2, temperature=9)])
    drain(config)
    new, n = control.retry(spool, "job")
    assert (new, n) == ("job.retry", 1)
    assert orjson.loads((spool.inbox / "job.retry.jsonl").read_bytes())["custom_id"] == "req-2"


def test_errors_are_openai_error_lines(spool: Spool, config: Config) -> None:
    drop(spool, "job.jsonl", [chat_line(1), b"nope"])
    drain(config)
    (line,) = list(catalog.deadletter_lines(spool, "job"))
    err = orjson.loads(line)
    assert err["response"] is None and err["error"]["code"] == "invalid_json" and "line 2" in err["error"]["message"]


def test_submit_validates_places_atomically_and_estimates(spool: Spool, config: Config, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line(i) for i in range(5)])
    result = submit(src, config)
    assert result.jobs == ["in"] and result.requests == 5 and result.estimate_seconds is None
    assert [p.name for p in spool.inbox.iterdir()] == ["in.jsonl"]
    os.utime(spool.inbox / "in.jsonl", (0, 0))
    drain(config)
    again = submit(src, config)
    assert again.jobs == ["in-2"] and again.estimate_seconds is not None


def test_submit_names_the_bad_line(config: Config, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line(1), chat_line(2, model="x")])
    with pytest.raises(InputError) as info:
        submit(src, config)
    assert info.value.line == 2 and "in.jsonl:2" in info.value.message


def test_submit_limits_and_split_into_a_group(spool: Spool, config: Config, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "big.jsonl", [chat_line(i) for i in range(25)])
    small = config.replace(max_requests_per_job=10)
    with pytest.raises(LimitExceeded) as info:
        submit(src, small)
    assert info.value.limit == "requests per job" and "--split" in (info.value.hint or "")
    result = submit(src, small, split=True)
    assert result.group == "big" and result.jobs == ["big.part001", "big.part002", "big.part003"]
    (queued,) = catalog.list_groups(spool, catalog.list_jobs(spool))
    assert (queued.group, queued.status, queued.jobs, queued.progress) == ("big", "queued", 3, 0.0)
    assert {j.group for j in catalog.list_jobs(spool)} == {"big"}
    for p in spool.inbox.iterdir():
        os.utime(p, (0, 0))
    drain(small)
    ids = [orjson.loads(line)["custom_id"] for line in catalog.results(spool, "big")]
    assert sorted(ids) == sorted(f"req-{i}" for i in range(25))
    (done,) = catalog.list_groups(spool, catalog.list_jobs(spool))
    assert (done.status, done.requests_done, done.requests_failed, done.progress) == ("completed", 25, 0, 1.0)
    with pytest.raises(LimitExceeded) as q:
        submit(src, small.replace(max_queued_requests=20), split=True)
    assert q.value.limit == "queued requests"


def test_queue_limit_on_jobs(config: Config, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line(1)])
    limited = config.replace(max_queued_jobs=2)
    submit(src, limited)
    submit(src, limited)
    with pytest.raises(LimitExceeded, match="queued jobs"):
        submit(src, limited)


def test_executor_splits_on_oom_and_deadletters_a_poison_request(spool: Spool, config: Config) -> None:
    engine = FlakyEngine(max_batch=4, poison={"req-7"})
    drop(spool, "job.jsonl", [chat_line(i) for i in range(20)])
    daemon = Daemon(config.replace(chunk_size=20), echo=False)
    daemon.executor = daemon.claims.executor = ChunkExecutor(lambda: engine, max_attempts=3, backoff=0)
    while daemon.loop_once().worked:
        pass
    assert assert_exactly_once(spool, "job", {f"req-{i}" for i in range(20)}) == (19, 1)
    (dead,) = read_jsonl(spool.deadletter_file("job"))
    assert dead["custom_id"] == "req-7" and dead["error"]["code"] == "engine_error"
    assert "on its own 3 times" in dead["error"]["message"] and dead["attempts"] >= 3
    assert engine.calls < 40


def test_the_next_chunk_reaches_the_engine_before_the_current_one_is_collected(spool: Spool, config: Config) -> None:
    engine = RecordingEngine()
    drop(spool, "job.jsonl", [chat_line(i) for i in range(30)])
    daemon = Daemon(config, engine_factory=lambda: engine, echo=False)
    while daemon.loop_once().worked:
        pass
    assert engine.calls == [("submit", "req-0"), ("submit", "req-10"), ("collect", "req-0"),
                            ("submit", "req-20"), ("collect", "req-10"), ("collect", "req-20")]
    assert_exactly_once(spool, "job", {f"req-{i}" for i in range(30)})


def test_a_model_that_never_loads_fails_its_chunk_once_not_per_request(spool: Spool, config: Config) -> None:
    UnloadableEngine.loads = 0
    drop(spool, "job.jsonl", [chat_line(i) for i in range(25)])
    daemon = Daemon(config.replace(max_attempts=3), engine_factory=UnloadableEngine, echo=False)
    daemon.executor.backoff = 0
    while daemon.loop_once().worked:
        pass
    assert assert_exactly_once(spool, "job", {f"req-{i}" for i in range(25)}) == (0, 25)
    codes = {d["error"]["code"] for d in read_jsonl(spool.deadletter_file("job"))}
    assert codes == {"model_not_available"}
    assert UnloadableEngine.loads <= 3 * 4, "a few load attempts per chunk (3 chunks), not one per request"

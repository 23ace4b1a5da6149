"""The spool lists its own jobs by stage, says where a job's input is now, and reads refusals as records."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from spoolbatch.commands import catalog
from spoolbatch.commands.batches import get_batch
from spoolbatch.commands.submit import submit
from spoolbatch.config import Config
from spoolbatch.store.batches import batch_id, job_of
from spoolbatch.store.files import output_file_id, parse_file_id
from spoolbatch.store.jobstate import JobState
from spoolbatch.store.layout import is_job_id
from spoolbatch.store.rejections import Rejection, write_reason
from spoolbatch.store.spool import Spool, Stage
from spoolbatch.worker.daemon import Daemon

from .conftest import chat_line, drop, write_jsonl


def _jobs(spool: Spool, stage: Stage) -> list[str]:
    return [entry.job for entry in spool.jobs(stage)]


@pytest.fixture
def staged(spool: Spool, config: Config, tmp_path: Path) -> Spool:
    """Two finished jobs, one claimed, one queued, one refused whole (bad lines), and stray names."""
    for name in ("b-done", "a-done"):
        drop(spool, f"{name}.jsonl", [chat_line(i) for i in range(3)])
    daemon = Daemon(config, echo=False)
    while daemon.loop_once().worked:
        pass
    drop(spool, "claimed.jsonl", [chat_line(i) for i in range(3)])
    claim, _ = spool.claim_inbox(0)
    assert claim is not None and claim.job == "claimed"
    claim.release()
    drop(spool, "Queued File.jsonl", [chat_line(i) for i in range(2)])
    bad = write_jsonl(tmp_path / "bad.jsonl", [chat_line(0), b"{broken"])
    assert submit(bad, config, reject_bad_lines=True).rejected
    # never jobs: a dotfile that ends like a checkpoint, a temporary, a name that is only a suffix
    (spool.done / ".x.checkpoint.json").write_bytes(b"{}")
    (spool.done / ".checkpoint.json").write_bytes(b"{}")
    (spool.active / ".y.jsonl.123.tmp").write_bytes(b"")
    return spool


def test_the_spool_lists_its_jobs_by_stage(staged: Spool) -> None:
    spool = staged
    assert _jobs(spool, Stage.QUEUED) == ["Queued_File"]
    assert _jobs(spool, Stage.ACTIVE) == spool.running_jobs() == ["claimed"]
    assert _jobs(spool, Stage.CHECKPOINTED) == _jobs(spool, Stage.ARCHIVED) == ["a-done", "b-done"]
    assert _jobs(spool, Stage.REFUSED) == _jobs(spool, Stage.REJECTED) == ["bad"]
    assert _jobs(spool, Stage.REMOVING) == _jobs(spool, Stage.REMOVING_REFUSED) == []
    entry = next(spool.jobs(Stage.CHECKPOINTED))
    assert entry.path == spool.checkpoint("a-done") and entry.stage == Stage.CHECKPOINTED
    assert entry.stat().st_size == spool.checkpoint("a-done").stat().st_size
    # Any path method read backwards: the jobs with a batch record, the logs, nothing in a missing folder.
    assert spool.names(spool.batch_record) == ["bad"]
    assert {"a-done", "b-done"} <= set(spool.names(spool.log))
    nowhere = Spool(spool.root / "nowhere")
    assert nowhere.names(nowhere.checkpoint) == [] and list(nowhere.jobs(Stage.ACTIVE)) == []
    # The states `list` shows come from the same listing.
    assert {j.job: j.status for j in catalog.list_jobs(spool)} == {
        "Queued_File": JobState.QUEUED, "claimed": JobState.CLAIMED, "a-done": JobState.COMPLETED,
        "b-done": JobState.COMPLETED, "bad": JobState.REJECTED}


def test_the_spool_says_where_a_jobs_input_is_now(staged: Spool) -> None:
    spool = staged
    queued = spool.queued_entry("Queued_File")
    assert queued is not None
    assert spool.current_input("Queued_File") == queued.path
    assert spool.current_input("claimed") == spool.input("claimed")
    assert spool.current_input("a-done") == spool.archived_input("a-done")
    assert spool.current_input("bad") is None and spool.current_input("never") is None  # refused: no input
    for job in ("Queued_File", "claimed", "a-done"):
        f = spool.open_input(job)
        assert f is not None
        with f:
            assert f.read() == Path(str(spool.current_input(job))).read_bytes()
    # A job that ends between the look and the open is followed to done/.
    os.rename(spool.input("claimed"), spool.archived_input("claimed"))
    assert spool.current_input("claimed") == spool.archived_input("claimed")
    # Never through a link, nor a folder where a file should be.
    target = spool.root.parent / "outside.jsonl"
    target.write_bytes(b"secret\n")
    (spool.inbox / "linked.jsonl").symlink_to(target)
    spool.archived_input("odd").mkdir()
    for job in ("linked", "odd"):
        assert spool.current_input(job) is None and spool.open_input(job) is None


def test_a_rejection_is_a_record_that_reads_older_files(staged: Spool) -> None:
    spool = staged
    rejection = Rejection.load(spool, "bad")
    assert rejection is not None and rejection.code == "invalid_lines" and rejection.file == "bad.jsonl"
    assert rejection.at is not None and rejection.reason and rejection.hint
    assert Rejection.from_dict(orjson.loads(spool.rejected_reason("bad").read_bytes())) == rejection
    assert Rejection.from_dict(rejection.to_dict()) == rejection
    # An older or odd reason file: no job, no time, no code, unknown keys; still read.
    spool.rejected_reason("old").write_bytes(orjson.dumps({"reason": "too large", "at": "yesterday", "x": 1}))
    (spool.rejected / "old.jsonl").write_bytes(b"x\n")
    old = Rejection.load(spool, "old")
    assert old == Rejection("old", reason="too large")
    spool.rejected_reason("garbled").write_bytes(b"[not a record")
    assert Rejection.load(spool, "garbled") is None and Rejection.load(spool, "never") is None
    listed = {j.job: j for j in catalog.list_jobs(spool)}
    assert listed["old"].status == JobState.REJECTED and listed["old"].reason == "too large"
    assert "garbled" not in listed
    # The API's view of a refused batch reads the same record.
    view = get_batch(spool, "bad")
    assert view.rejection == rejection and view.to_openai()["status"] == "failed"
    write_reason(spool, "late", "late.jsonl", "not_jsonl", "not JSONL", "send JSONL")
    assert Rejection.load(spool, "late") == Rejection("late", "late.jsonl", "not_jsonl", "not JSONL", "send JSONL",
                                                      Rejection.load(spool, "late").at)  # type: ignore[union-attr]


def test_one_job_id_pattern_for_jobs_batches_and_files(spool: Spool) -> None:
    made = [spool.unique_job_id(name) for name in ("in put.jsonl", "../x.jsonl", ".hidden.json", "a" * 120)]
    assert all(is_job_id(job) for job in made)
    for job in made:
        assert job_of(batch_id(job)) == job and parse_file_id(output_file_id(job)) == ("output", job)
    for text in ("", "../x", ".x", "a/b", "x.", "a" * 101, "a b"):
        assert not is_job_id(text) and job_of(batch_id(text)) is None and parse_file_id(output_file_id(text)) is None
    assert job_of("x") is None

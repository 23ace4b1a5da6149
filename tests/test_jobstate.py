"""One job-state vocabulary: OpenAI's batch statuses, final states, and how readers render it."""

from __future__ import annotations

import orjson
import pytest

from spoolbatch.commands.catalog import JobInfo
from spoolbatch.commands.status import SpoolStatus
from spoolbatch.store.checkpoint import Checkpoint
from spoolbatch.store.jobstate import FINAL, OPENAI_STATUSES, JobState
from spoolbatch.worker.metrics import JOB_STATES, MetricsSample, render


@pytest.mark.parametrize("state", list(JobState))
def test_every_state_maps_to_one_openai_status(state: JobState) -> None:
    assert state.openai_status() in OPENAI_STATUSES


def test_the_openai_mapping() -> None:
    assert {s: s.openai_status() for s in JobState} == {
        JobState.QUEUED: "validating", JobState.CLAIMED: "validating", JobState.RUNNING: "in_progress",
        JobState.INTERRUPTED: "in_progress", JobState.COMPLETED: "completed", JobState.FAILED: "failed",
        JobState.EXPIRED: "expired", JobState.CANCELLED: "cancelled", JobState.REJECTED: "failed",
        JobState.MISSING: "failed"}
    # Every OpenAI status but `finalizing` (our merge is part of a chunk's commit) is reachable.
    reachable = {s.openai_status() for s in JobState} | {JobState.RUNNING.openai_status(cancelling=True)}
    assert set(OPENAI_STATUSES) - reachable == {"finalizing"}


def test_final_states() -> None:
    assert {JobState.COMPLETED, JobState.FAILED, JobState.EXPIRED, JobState.CANCELLED, JobState.REJECTED} == FINAL
    assert all(s.final == (s in FINAL) for s in JobState)
    # A missing part may still be placed; an interrupted job resumes when a worker comes.
    assert not JobState.MISSING.final and not JobState.INTERRUPTED.final


@pytest.mark.parametrize("state", list(JobState))
def test_cancelling_applies_only_until_the_job_is_final(state: JobState) -> None:
    expected = state.openai_status() if state.final else "cancelling"
    assert state.openai_status(cancelling=True) == expected


def test_states_are_their_strings_on_disk_and_in_json() -> None:
    ckpt = Checkpoint("j", status=JobState.CANCELLED)
    assert ckpt.to_dict()["status"] == "cancelled"
    assert Checkpoint.from_dict(ckpt.to_dict()).status is JobState.CANCELLED
    info = JobInfo("j", JobState.INTERRUPTED)
    data = info.to_dict()
    assert data["status"] == "interrupted" and type(data["status"]) is str
    status = SpoolStatus("spool", [], [info, JobInfo("q", JobState.QUEUED)]).to_dict()
    assert orjson.loads(orjson.dumps(status))["queue"] == {"jobs": 1, "by_status": {"interrupted": 1, "queued": 1}}


def test_prometheus_states_come_from_the_enum() -> None:
    # The worker counts without probing locks: it cannot tell interrupted, and missing is not a file.
    assert set(JOB_STATES) == {s.value for s in JobState} - {JobState.INTERRUPTED, JobState.MISSING}
    text = render(MetricsSample(jobs={JobState.REJECTED.value: 2}))
    for state in JOB_STATES:
        assert f'spoolbatch_jobs{{state="{state}"}} {2 if state == "rejected" else 0}\n' in text

"""`status` on a spool that retains thousands of finished jobs: what is happening, and a count of the rest."""

from __future__ import annotations

import time

import orjson
import pytest
from typer.testing import CliRunner

from spoolbatch.cli import app as cli
from spoolbatch.commands.status import FINISHED_SHOWN, QUEUED_SHOWN, status
from spoolbatch.store.checkpoint import Checkpoint
from spoolbatch.store.jobindex import JobIndex
from spoolbatch.store.jobstate import JobState
from spoolbatch.store.spool import Spool
from tests.conftest import chat_line, drop, finished_jobs

NOW = time.time()


def test_status_shows_what_is_happening_and_counts_the_rest(spool: Spool) -> None:
    n = 2500
    finished_jobs(spool, n, states=(JobState.COMPLETED,) * 9 + (JobState.FAILED,))
    late = "long"  # taken first, ended last
    JobIndex(spool).add(late, NOW - 30 * 86400)
    Checkpoint(job=late, status=JobState.COMPLETED, created_at=NOW - 30 * 86400, finished_at=NOW).save(
        spool.checkpoint(late))
    JobIndex(spool).ended(late, JobState.COMPLETED, NOW)
    Checkpoint(job="running", total_lines=10, lines_consumed=4, created_at=NOW).save(spool.checkpoint("running"))
    spool.input("running").write_bytes(b"{}\n" * 10)
    JobIndex(spool).add("running", NOW)
    for k in range(QUEUED_SHOWN + 5):
        drop(spool, f"wait{k:02d}.jsonl", [chat_line(k)], age=100 - k)
    data = status(spool).to_dict()
    shown = [(j["job"], j["status"]) for j in data["jobs"]]
    assert shown[0] == ("running", "interrupted")  # no worker holds it
    assert [j for j, s in shown[1:1 + QUEUED_SHOWN]] == [f"wait{k:02d}" for k in range(QUEUED_SHOWN)]
    assert [j for j, _ in shown[1 + QUEUED_SHOWN:]] == [late] + [f"j{i:05d}" for i in range(n - 1, n - 8, -1)]
    assert len(shown) == 1 + QUEUED_SHOWN + FINISHED_SHOWN
    assert data["finished_total"] == n + 1 and data["jobs_total"] == n + 1 + 1 + QUEUED_SHOWN + 5
    assert data["queue"] == {"jobs": QUEUED_SHOWN + 5,
                             "by_status": {"queued": QUEUED_SHOWN + 5, "interrupted": 1, "completed": n // 10 * 9 + 1,
                                           "failed": n // 10}}
    assert data["not_shown"] == {"queued": 5, "finished": n + 1 - FINISHED_SHOWN}
    one = status(spool, "j00007").to_dict()
    assert [j["job"] for j in one["jobs"]] == ["j00007"] and one["queue"]["by_status"] == {"completed": 1}
    result = CliRunner().invoke(cli, ["status", "--spool", str(spool.root)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert f"{n + 1 - FINISHED_SHOWN:,} more ended job(s)" in result.output and "spoolbatch list" in result.output
    assert "j00010" not in result.output and "j02499" in result.output
    as_json = CliRunner().invoke(cli, ["status", "--json", "--spool", str(spool.root)])
    assert len(orjson.loads(as_json.stdout)["jobs"]) == len(shown)


def test_the_pages_data_call_is_a_summary_and_one_page_and_says_when_nothing_changed(spool: Spool) -> None:
    import httpx

    from tests.serving import start_server

    jobs = finished_jobs(spool, 2000)
    for k in range(3):
        drop(spool, f"q{k}.jsonl", [chat_line(k)], age=10 - k)
    server = start_server(str(spool.root), env={"SPOOLBATCH_API_KEYS": "sk-page"})
    try:
        h = {"Authorization": "Bearer sk-page"}
        first = httpx.get(f"{server.url}/v1/spoolbatch/status?limit=20", headers=h, timeout=30)
        assert first.status_code == 200 and len(first.content) < 50_000
        data = first.json()
        assert data["finished_total"] == 2000 and data["queue"]["jobs"] == 3
        assert [j["job"] for j in data["jobs"]] == ["q0", "q1", "q2", *reversed(jobs[-FINISHED_SHOWN:])]
        page = data["page"]
        assert [b["id"] for b in page["data"]] == [f"batch_{j}" for j in ["q2", "q1", "q0", *reversed(jobs)][:20]]
        assert page["has_more"] and page["last_id"] == f"batch_{jobs[-17]}"
        for _ in range(2):  # the clock's 10 s may turn between the two calls once, not twice
            tag = httpx.get(f"{server.url}/v1/spoolbatch/status?limit=20", headers=h).headers["etag"]
            again = httpx.get(f"{server.url}/v1/spoolbatch/status?limit=20", headers=h | {"If-None-Match": tag})
            if again.status_code == 304:
                break
        assert again.status_code == 304 and again.content == b""  # nothing changed
        drop(spool, "new.jsonl", [chat_line(9)], age=0)
        changed = httpx.get(f"{server.url}/v1/spoolbatch/status?limit=20", headers=h | {"If-None-Match": tag})
        assert changed.status_code == 200 and changed.headers["etag"] != tag
        assert changed.json()["page"]["data"][0]["id"] == "batch_new"
    finally:
        server.stop()


def test_status_usage_is_the_weeks_without_reading_the_weeks_checkpoints(spool: Spool,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from spoolbatch.commands.usage import parse_since, recent_usage, usage
    from spoolbatch.store.cleanup import Policy, collect

    finished_jobs(spool, 300, start=NOW - 2 * 86400)  # two days ago: one a minute
    collect(spool, Policy())  # the hourly clean-up keeps the last days' sums
    late = finished_jobs(spool, 5, prefix="late", start=NOW - 600)  # ended since
    run = Checkpoint(job="run", requests_done=4, prompt_tokens=40, project="team-a", created_at=NOW,
                     usage_days={time.strftime("%Y-%m-%d", time.gmtime()): [4, 40, 0, 2.0]})
    run.save(spool.checkpoint("run"))
    spool.input("run").write_bytes(b"{}\n")
    JobIndex(spool).add("run", NOW, project="team-a")
    loads: list[str] = []
    real = Checkpoint.load
    monkeypatch.setattr(Checkpoint, "load", classmethod(lambda cls, p: (loads.append(p.name), real(p))[1]))
    week = recent_usage(spool)
    assert sorted(loads) == sorted(f"{job}.checkpoint.json" for job in [*late, "run"])  # not the 300 others
    assert week == usage(spool, since=parse_since("7d")) and {u.project for u in week} == {"default", "team-a"}
    assert sum(u.requests for u in week) == 300 + 5 + 4
    assert recent_usage(spool, "team-a") == [u for u in week if u.project == "team-a"]

"""Listing a spool that retains thousands of jobs: a page costs a page, and claiming one file of an
inbox of thousands reads that file.

Paging across jobs the clean-up removes between two pages (in the library, and through the openai
SDK against a real server); the claim of one named inbox file, and the inbox's listing kept while
no folder of it changed.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from typing import Any

import openai
import orjson
import pytest

from spoolbatch.commands.jobsearch import matcher
from spoolbatch.commands.listing import page_batches, page_jobs
from spoolbatch.store import layout
from spoolbatch.store.checkpoint import Checkpoint
from spoolbatch.store.cleanup import Policy, collect
from spoolbatch.store.jobstate import JobState
from spoolbatch.store.spool import Spool
from tests.conftest import chat_line, drop, finished_jobs
from tests.serving import Server, start_server

KEY = "sk-listing"
NOW = time.time()


def doomed(names: set[str]) -> Policy:
    """A clean-up that removes exactly ``names`` (their output expired now)."""
    return Policy(expiry=lambda _spool, job: 0.0 if job in names else None)


def test_paging_across_jobs_removed_between_pages(spool: Spool) -> None:
    jobs = finished_jobs(spool, 60)
    for k in range(3):
        drop(spool, f"q{k}.jsonl", [chat_line(k)], age=10 - k)
    expected = ["q2", "q1", "q0", *reversed(jobs)]
    first = page_jobs(spool, limit=10)
    assert [j.job for j in first.jobs] == expected[:10] and first.has_more
    cursor = first.jobs[-1].job  # j00053
    # Between two pages the clean-up removes the cursor's own job and jobs on both sides of it.
    gone = {cursor, "j00052", "j00049", "j00058", "j00010"}
    report = collect(spool, doomed(gone))
    assert {r.name for r in report.removed if r.kind.value == "job"} == gone
    seen = [j.job for j in first.jobs]
    after: str | None = cursor
    while after is not None:
        page = page_jobs(spool, limit=10, after=after)
        seen += [j.job for j in page.jobs]
        after = page.jobs[-1].job if page.has_more else None
    assert seen == expected[:10] + [j for j in expected[10:] if j not in gone]  # none twice, none lost
    assert page_jobs(spool, limit=5, after="never-was").jobs == []


def test_a_status_filter_reads_only_the_jobs_that_may_match(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    finished_jobs(spool, 200, states=(JobState.COMPLETED,) * 9 + (JobState.FAILED,))
    loads: list[str] = []
    real = Checkpoint.load
    monkeypatch.setattr(Checkpoint, "load", classmethod(lambda cls, p: (loads.append(p.name), real(p))[1]))
    page = page_batches(spool, limit=5, statuses={"failed"}, keep=matcher({"failed"}))
    assert [v.job for v in page.batches] == ["j00199", "j00189", "j00179", "j00169", "j00159"] and page.has_more
    assert {name.split(".")[0][-1] for name in loads} == {"9"}  # no completed job's checkpoint was read


@pytest.fixture
def server(spool: Spool) -> Iterator[Server]:
    started = start_server(str(spool.root), env={"SPOOLBATCH_API_KEYS": KEY})
    yield started
    started.stop()


@pytest.mark.slow
def test_the_sdk_pages_on_after_the_clean_up_removed_its_cursor(spool: Spool, server: Server) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=30)
    jobs = finished_jobs(spool, 45)
    upload = client.files.create(file=("in.jsonl", io.BytesIO(orjson.dumps(chat_line(1)) + b"\n")), purpose="batch")
    newest = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                   completion_window="24h").id
    page = client.batches.list(limit=20)
    assert [b.id for b in page.data] == [newest] + [f"batch_{j}" for j in reversed(jobs)][:19]
    cursor = page.data[-1].id.removeprefix("batch_")
    gone = {cursor, jobs[20], jobs[3]}
    collect(spool, doomed(gone))  # between two pages: the cursor's own job goes, and one on each side
    seen = [b.id for b in page.data]
    while page.has_next_page():  # as the SDK's auto-pagination does: after=the last id it got
        page = page.get_next_page()
        seen += [b.id for b in page.data]
    assert seen == [newest] + [f"batch_{j}" for j in reversed(jobs) if j not in gone or j == cursor]


def test_claiming_one_file_of_thousands_reads_that_file_only(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    for k in range(3000):
        path = spool.inbox / f"f{k:04d}.jsonl"
        path.write_bytes(orjson.dumps(chat_line(k)) + b"\n")
        os.utime(path, (NOW - 100, NOW - 100))
    monkeypatch.setattr(layout, "INBOX_REUSE_SECONDS", 3600.0)  # however slow this machine is today
    assert len(spool.inbox_entries()) == 3000
    looked: list[Any] = []
    real_scandir, real_lstat, real_stat = os.scandir, os.lstat, os.stat

    def counted(real: Any) -> Any:
        def call(path: Any, *args: Any, **kw: Any) -> Any:
            if str(path).startswith(str(spool.inbox)):
                looked.append(str(path))
            return real(path, *args, **kw)
        return call

    monkeypatch.setattr(os, "scandir", counted(real_scandir))
    monkeypatch.setattr(os, "lstat", counted(real_lstat))
    monkeypatch.setattr(os, "stat", counted(real_stat))
    claim, _ = spool.claim_inbox(2.0, now=NOW, only="f1234.jsonl")
    assert claim is not None and claim.job == "f1234"
    claim.release()
    assert spool.input("f1234").exists() and not (spool.inbox / "f1234.jsonl").exists()
    assert {p for p in looked} <= {str(spool.inbox), str(spool.inbox / "f1234.jsonl")}, looked[:5]
    assert len(looked) < 10
    # The listing was kept: read again only when the inbox changed, and this process's own claim is
    # no change to read (the listing drops what it moved out).
    looked.clear()
    entries = spool.inbox_entries()
    assert len(entries) == 2999 and "f1234.jsonl" not in {e.name for e in entries}
    assert looked == [str(spool.inbox)]  # one stat of the folder
    (spool.inbox / "new.jsonl").write_bytes(b"{}\n")  # another writer's file: listed at once
    assert len(spool.inbox_entries()) == 3000


def test_uploads_page_by_the_time_in_their_ids_and_past_a_deleted_cursor(spool: Spool) -> None:
    from spoolbatch.commands.files import page_files
    from spoolbatch.store import files as filestore

    spool.ensure_api_dirs()
    ids = []
    for i in range(7):
        record = filestore.FileRecord(filestore.new_file_id(NOW - 100 + i), f"f{i}.jsonl", 3, 1, "batch", NOW - 100 + i)
        tmp = spool.files / f".upload.{i}.tmp"
        tmp.write_bytes(b"{}\n")
        filestore.commit(spool, tmp, record)
        ids.append(record.id)
    old = filestore.FileRecord("file-" + "ab" * 12, "old.jsonl", 3, 1, "batch", NOW - 1000)  # an older release's id
    (spool.files / ".upload.old.tmp").write_bytes(b"{}\n")
    filestore.commit(spool, spool.files / ".upload.old.tmp", old)
    os.utime(spool.file_meta(old.id), (NOW - 1000, NOW - 1000))
    newest = [*reversed(ids), old.id]
    first, more = page_files(spool, limit=3)
    assert [r.id for r in first] == newest[:3] and more
    filestore.delete(spool, first[-1].id)  # the cursor's own file goes between two pages
    rest, more = page_files(spool, limit=10, after=first[-1].id)
    assert [r.id for r in rest] == newest[3:] and not more
    assert page_files(spool, limit=10, after="file-" + "cd" * 12) == ([], False)  # unknown, no time in it


def test_list_streams_every_job_newest_first_and_pages(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from spoolbatch.cli import app as cli
    from spoolbatch.cli import jobs as cli_jobs

    jobs = finished_jobs(spool, 12)
    drop(spool, "waiting.jsonl", [chat_line(1)])
    run = CliRunner()
    at = ["--spool", str(spool.root)]
    listed = run.invoke(cli, ["list", "--json", *at])
    assert listed.exit_code == 0, listed.output
    rows = orjson.loads(listed.stdout)
    assert [r["job"] for r in rows] == ["waiting", *reversed(jobs)]
    assert listed.stdout.encode() == orjson.dumps(rows, option=orjson.OPT_INDENT_2) + b"\n"  # as print_json writes
    page = orjson.loads(run.invoke(cli, ["list", "--json", "--limit", "3", "--after", jobs[8], *at]).stdout)
    assert [r["job"] for r in page] == [jobs[7], jobs[6], jobs[5]]
    assert run.invoke(cli, ["list", "--json", "--after", jobs[0], *at]).stdout == "[]\n"
    monkeypatch.setattr(cli_jobs, "ROWS_AT_ONCE", 5)  # a table every 5 rows: the title once, every row whole
    table = run.invoke(cli, ["list", *at], env={"COLUMNS": "200"}).stdout
    assert table.count(f"spool {spool.root}") == 1 and table.count("status") == 3
    assert [line.split()[1] for line in table.splitlines() if line.startswith("│ j") or line.startswith("│ w")] == \
        ["waiting", *reversed(jobs)]


def test_a_daemon_takes_jobs_from_an_inbox_of_thousands_without_reading_it_each_time(
        spool: Spool, config: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from spoolbatch.store.batches import BatchRecord
    from spoolbatch.worker.daemon import Daemon

    monkeypatch.setattr(layout, "INBOX_REUSE_SECONDS", 3600.0)  # however slow this machine is today
    for k in range(2000):
        path = spool.inbox / f"f{k:04d}.jsonl"
        path.write_bytes(orjson.dumps(chat_line(k)) + b"\n")
        os.utime(path, (NOW - 3000 + k, NOW - 3000 + k))
    daemon = Daemon(config, echo=False)
    assert daemon.loop_once().job == "f0000"  # the first listing reads the inbox, once
    looked: list[tuple[str, str]] = []
    real_scandir, real_lstat, real_load = os.scandir, os.lstat, BatchRecord.load

    def counted(kind: str, real: Any) -> Any:
        def call(path: Any, *args: Any, **kw: Any) -> Any:
            if str(path).startswith(str(spool.inbox)):
                looked.append((kind, str(path)))
            return real(path, *args, **kw)
        return call

    monkeypatch.setattr(os, "scandir", counted("scandir", real_scandir))
    monkeypatch.setattr(os, "lstat", counted("lstat", real_lstat))
    monkeypatch.setattr(BatchRecord, "load", classmethod(lambda cls, sp, job: (looked.append(("record", job)),
                                                                                real_load(sp, job))[1]))
    done = [daemon.loop_once().job for _ in range(20)]
    assert done == [f"f{k:04d}" for k in range(1, 21)]  # oldest first, as ever
    kinds = [kind for kind, _ in looked]
    assert kinds.count("scandir") == 0 and kinds.count("lstat") <= 2 * 20 and kinds.count("record") <= 10 * 20, \
        {k: kinds.count(k) for k in set(kinds)}  # a few looks a job: its own file, not the 2,000

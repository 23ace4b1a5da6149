"""The web page in a real headless Chromium (tests/browser.py) against a real server and fake-engine daemons.

The list filters; a job's page shows a point per chunk, its events and its failed lines by code,
and its download links give the files; a bad upload shows its line, a good one runs and is
cancelled from its page after a confirmation; a GPU chart draws a recorded history; a phone's
screen holds the page; a 10,000-chunk job's page is timed (printed, never asserted).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from spoolbatch.config import Config
from spoolbatch.store.batches import BatchRecord
from spoolbatch.store.checkpoint import Checkpoint
from spoolbatch.store.gpuhistory import read_history
from spoolbatch.store.joblog import JobEvent, JobLog
from spoolbatch.store.jobstate import JobState
from spoolbatch.store.priority import HIGH
from spoolbatch.store.spool import Spool
from spoolbatch.worker.gpu import GpuMonitor
from spoolbatch.worker.gpuguard import GpuGuard
from spoolbatch.worker.heartbeat import HeartbeatWriter
from tests.browser import CHROMIUM, Browser
from tests.conftest import chat_line, drop, wait_for, write_jsonl
from tests.fakes import GIB, FakeCard, FakeNvml
from tests.serving import start_server

# CI sets SPOOLBATCH_REQUIRE_BROWSER: there a missing Chromium fails the tests instead of skipping them.
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("SPOOLBATCH_REQUIRE_BROWSER"),
    reason="no Chromium: `apt-get install chromium` (.ci/run does)")]
KEY = "sk-page-test"


def finished(spool: Spool, job: str) -> bool:
    ckpt = Checkpoint.load(spool.checkpoint(job))
    return ckpt is not None and ckpt.status.final


def rows(b: Browser) -> list[dict[str, str]]:
    return b.eval("[...document.querySelectorAll('#jobtable tr.job')].map(r => ({job: r.dataset.job, "
                  "status: r.dataset.status, text: r.innerText}))")  # type: ignore[no-any-return]


def test_the_list_filters_and_a_job_page_tells_its_story(spool: Spool, start_daemon: Any, tmp_path: Path) -> None:
    records: list[object] = [chat_line(i) for i in range(120)]
    for n in (7, 30, 31, 90):
        records.insert(n, "{broken")
    records.insert(50, {"custom_id": "no-body", "method": "POST", "url": "/v1/chat/completions"})
    drop(spool, "webjob.jsonl", records)
    server = start_server(str(spool.root), env={"SPOOLBATCH_API_KEYS": KEY})
    api = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    try:
        upload = api.post("/v1/files", files={"file": ("x.jsonl", b"".join(
            json.dumps(chat_line(i)).encode() + b"\n" for i in range(5)))}, data={"purpose": "batch"}).json()
        made = api.post("/v1/batches", json={"input_file_id": upload["id"], "endpoint": "/v1/chat/completions",
                                             "metadata": {"owner": "alice"}}).json()
        start_daemon("--chunk-size", "10", "--fake-latency", "0.002")
        wait_for(lambda: finished(spool, "webjob") and finished(spool, made["id"].removeprefix("batch_")), timeout=120)
        ckpt = Checkpoint.load(spool.checkpoint("webjob"))
        assert ckpt is not None and ckpt.status == JobState.COMPLETED
        with Browser(tmp_path / "chromium") as b:
            b.goto(server.url + f"/#key={KEY}")
            wait_for(lambda: len(rows(b)) == 2, timeout=30)
            assert {r["job"]: r["status"] for r in rows(b)} == {"webjob": "completed",
                                                                made["id"].removeprefix("batch_"): "completed"}
            webjob = next(r for r in rows(b) if r["job"] == "webjob")
            assert "125 of 125" in webjob["text"] and "5 failed" in webjob["text"] and "100 %" in webjob["text"]
            b.eval("document.querySelector('#f-q').value = 'alice'; document.querySelector('#f-go').click()")
            wait_for(lambda: [r["job"] for r in rows(b)] == [made["id"].removeprefix("batch_")], timeout=30)
            assert "owner=alice" in rows(b)[0]["text"]
            b.eval("document.querySelector('#f-q').value = ''; const s = document.querySelector('#f-status');"
                   "s.value = 'failed'; s.onchange()")
            wait_for(lambda: "no job matches" in b.text("#jobtable"), timeout=30)
            b.eval("const t = document.querySelector('#f-status'); t.value = ''; t.onchange()")
            wait_for(lambda: len(rows(b)) == 2, timeout=30)

            b.click("#jobtable a[href='jobs/webjob']")  # the link, as a person follows it
            b.wait("location.pathname === '/jobs/webjob' && document.body.dataset.loaded === '1'")
            assert b.eval("window.spoolbatchCharts.rps.data[0].length") == ckpt.chunks == 13
            assert b.eval("document.querySelector('#chart-rps').dataset.points") == "13"
            assert b.eval("window.spoolbatchCharts.tps.data[0].length") == 13  # tokens per chunk too
            assert b.eval("[...document.querySelectorAll('#timeline li.event')].map(li => li.dataset.event)") == \
                ["completed", "claimed"]
            groups = b.eval("[...document.querySelectorAll('#errors .group')].map(g => [g.dataset.code, "
                            "g.querySelector('.count').innerText, g.querySelectorAll('.example').length])")
            assert groups == [["invalid_json", "4", 3], ["invalid_body", "1", 1]]
            assert "line 8" in b.text("#errors") and "no-body" in b.text("#errors")
            assert b.text("#job-grid .completed").endswith("120") and b.text("#job-grid .failed").endswith("5")
            # Each download link gives the file the Files API gives, through the page's own fetch with the key.
            links = b.eval("[...document.querySelectorAll('a.dl')].map(a => [a.dataset.kind, a.getAttribute('href')])")
            assert [kind for kind, _ in links] == ["input", "output", "errors"]
            for kind, href in links:
                got = b.eval(f"fetch({json.dumps(href)}, {{headers: {{Authorization: 'Bearer {KEY}'}}}})"
                             ".then(r => r.text())")
                assert got == api.get("/" + href).text and got, kind
            assert len(b.eval(f"fetch({json.dumps(links[1][1])}, {{headers: {{Authorization: 'Bearer {KEY}'}}}})"
                              ".then(r => r.text())").splitlines()) == 120
            assert b.eval("document.querySelector('#cancel').disabled") is True  # a finished job
            b.size(390, 844, mobile=True)  # a phone: nothing wider than its screen
            b.goto(server.url + "/jobs/webjob")
            assert b.eval("document.documentElement.scrollWidth") <= 390
            b.goto(server.url + "/")
            assert b.eval("document.documentElement.scrollWidth") <= 390
    finally:
        api.close()
        server.stop()


def test_submit_from_the_page_shows_a_bad_line_then_runs_a_good_file_and_its_page_cancels_it(
        spool: Spool, start_daemon: Any, tmp_path: Path) -> None:
    bad = write_jsonl(tmp_path / "bad.jsonl", [chat_line(0), chat_line(1), "{not json", chat_line(3)])
    good = write_jsonl(tmp_path / "good.jsonl", [chat_line(i) for i in range(3000)])
    server = start_server(str(spool.root), env={"SPOOLBATCH_API_KEYS": KEY})
    start_daemon("--chunk-size", "10", "--fake-latency", "0.01")
    try:
        with Browser(tmp_path / "chromium") as b:
            b.goto(server.url + f"/#key={KEY}")
            b.set_file("#s-file", bad)
            b.click("#s-go")
            b.wait("!!document.querySelector('tr.lineerror')")
            assert b.eval("[...document.querySelectorAll('tr.lineerror')].map(r => r.dataset.line)") == ["3"]
            assert "Not queued" in b.text("#s-result") and "line 3" in b.text("#s-result")

            b.set_file("#s-file", good)
            b.eval("document.querySelector('#s-priority').value = 'high';"
                   "document.querySelector('#s-meta').value = 'owner=bob'")
            b.click("#s-go")
            job = b.wait("(document.querySelector('#s-created') || {dataset: {}}).dataset.job")
            record = BatchRecord.load(spool, job)
            assert record is not None and record.metadata == {"owner": "bob"}  # the priority is the body's field
            assert record.priority == HIGH and record.job_priority == HIGH
            b.click("#s-created a")
            b.wait(f"location.pathname === '/jobs/{job}' && document.body.dataset.status === 'in_progress'",
                   timeout=60)
            b.accept_dialogs = False  # asked, and refused: nothing happens
            b.click("#cancel")
            wait_for(lambda: len(b.dialogs) == 1)
            time.sleep(0.5)
            assert "Cancel " + job in b.dialogs[0] and b.eval("document.body.dataset.status") == "in_progress"
            b.accept_dialogs = True
            b.click("#cancel")
            b.wait("document.body.dataset.status === 'cancelled'", timeout=60)
            assert len(b.dialogs) == 2
            groups = b.eval("[...document.querySelectorAll('#errors .group')].map(g => g.dataset.code)")
            assert groups == ["batch_cancelled"]
            assert "cancelled" in b.eval("[...document.querySelectorAll('#timeline li.event')]"
                                         ".map(li => li.dataset.event)")
        ckpt = Checkpoint.load(spool.checkpoint(job))
        assert ckpt is not None and ckpt.status == JobState.CANCELLED and 0 < ckpt.lines_consumed < 3000
    finally:
        server.stop()


def test_a_gpu_chart_draws_a_recorded_history_against_the_gates_limits(spool: Spool, config: Config,
                                                                       tmp_path: Path) -> None:
    card = FakeCard(used=4 * GIB, total=16 * GIB, temperature=50)
    beat = HeartbeatWriter(spool, 5.0)  # alive for 16 s, then stale: the page charts it either way
    beat.gpu_history.min_spacing = 0.0
    guard = GpuGuard(GpuMonitor(FakeNvml([card]), env={}), config, beat, threading.Event())
    for i in range(12):  # a card filling up and warming, read beat by beat
        card.used = (4 + i) * GIB
        card.temperature = 50 + 3 * i
        guard.read()
        beat.write()
    history = read_history(spool.gpu_history(beat.id))
    assert len(history) == 12
    server = start_server(str(spool.root))
    try:
        with Browser(tmp_path / "chromium") as b:
            b.goto(server.url + "/")
            chart = f"window.spoolbatchCharts['gpu:{beat.id}:0']"
            b.wait(f"!!{chart}")
            data = b.eval(f"{chart}.data")
            assert data[0] == [r.t for r in history]
            assert data[1] == [r.cards[0].memory_pct for r in history]
            assert data[2] == [r.cards[0].temperature_c for r in history]
            assert set(data[3]) == {config.gpu_max_memory_pct} and set(data[4]) == {config.gpu_max_temp_c}
            card_text = b.text(f"[data-worker='{beat.id}']")
            assert "GPU 0 NVIDIA Fake 16GB" in card_text and "°C" in card_text and "GiB" in card_text
    finally:
        server.stop()


def test_a_ten_thousand_chunk_jobs_page_renders_and_its_time_is_printed(spool: Spool, tmp_path: Path) -> None:
    """A job log of 10,000 chunk events by three workers (written as the daemon writes them); the time is printed."""
    log = JobLog(spool.log("big"), echo=False, max_bytes=0)
    start = time.time() - 10_000 * 3.0
    lines = bytearray()
    for i in range(10_000):
        event = {"ts": round(start + 3.0 * i, 3), "event": JobEvent.CHUNK_MERGED.value, "job": "big",
                 "chunk": i + 1, "first_line": 5 * i + 1, "last_line": 5 * i + 5, "answered": 5, "failed": 0,
                 "seconds": 2.5 + (i % 7) / 10, "worker": f"gpu-box-{i % 3}", "prompt_tokens": 400 + i % 50,
                 "completion_tokens": 300 + i % 90}
        lines += json.dumps(event).encode() + b"\n"
    assert log.path is not None
    log.path.write_bytes(bytes(lines))
    Checkpoint(job="big", status=JobState.COMPLETED, total_lines=50_000, lines_consumed=50_000, chunks=10_000,
               requests_done=50_000, created_at=start, started_at=start, finished_at=time.time(),
               busy_seconds=28_000.0).save(spool.checkpoint("big"))
    server = start_server(str(spool.root))
    try:
        with Browser(tmp_path / "chromium") as b:
            b.goto(server.url + "/jobs/big")
            assert b.eval("window.spoolbatchCharts.rps.data[0].length") == 10_000
            assert b.eval("window.spoolbatchCharts.rps.series.length") == 4  # time, and one per worker
            timing = b.eval("({render: +document.body.dataset.renderMs, load: +document.body.dataset.loadMs})")
            story = httpx.get(server.url + "/v1/spoolbatch/batches/batch_big/story", timeout=30)
            print(f"\n10,000-chunk job page: render {timing['render']:.0f} ms, load (fetch, parse, render) "
                  f"{timing['load']:.0f} ms; story {len(story.content):,} bytes")
    finally:
        server.stop()

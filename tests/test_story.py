"""What the web page reads beside OpenAI's API: a job's story, the batch search, a worker's GPU series."""

from __future__ import annotations

import time

import orjson

from spoolbatch.commands.batches import get_batch, list_batches
from spoolbatch.commands.control import cancel
from spoolbatch.commands.jobsearch import search
from spoolbatch.commands.story import EXAMPLES, story
from spoolbatch.commands.workers import gpu_series, is_worker
from spoolbatch.config import Config
from spoolbatch.store.batches import BatchRecord
from spoolbatch.store.checkpoint import Checkpoint
from spoolbatch.store.gpuhistory import CardReading, Reading
from spoolbatch.store.joblog import JobEvent, JobLog
from spoolbatch.store.spool import Spool
from spoolbatch.worker.daemon import Daemon

from .conftest import chat_line, drop


def drain(config: Config) -> Daemon:
    daemon = Daemon(config, echo=False)
    while daemon.loop_once().worked:
        pass
    return daemon


def test_a_jobs_story_has_a_point_per_chunk_its_events_and_its_failed_lines_by_code(spool: Spool,
                                                                                      config: Config) -> None:
    records: list[object] = [chat_line(i) for i in range(45)]
    for n in (3, 9, 20, 31, 40):  # five lines that are not JSON, one without a body
        records.insert(n, "{broken")
    records.insert(12, {"custom_id": "nobody", "method": "POST", "url": "/v1/chat/completions"})
    drop(spool, "job.jsonl", records)
    daemon = drain(config)
    ckpt = Checkpoint.load(spool.checkpoint("job"))
    assert ckpt is not None and ckpt.chunks == 6
    s = story(spool, "job")
    c = s.chunks
    assert c.chunk == [1, 2, 3, 4, 5, 6] and c.workers == [daemon.heartbeat.id] and c.worker == [0] * 6
    assert c.first_line[0] == 1 and c.last_line[-1] == 51
    assert sum(c.answered) == ckpt.requests_done == 45 and sum(c.failed) == ckpt.requests_failed == 6
    assert sum(t or 0 for t in c.tokens) == ckpt.total_tokens > 0
    assert all(s >= 0 for s in c.seconds) and c.t == sorted(c.t)
    assert [e["event"] for e in s.events] == ["claimed", "completed"] and s.events_total == 2
    assert s.events[0]["text"].startswith("claimed job.jsonl as job job: 51 lines")
    assert [(g.code, g.count) for g in s.errors] == [("invalid_json", 5), ("invalid_body", 1)]
    broken = s.errors[0]
    assert len(broken.examples) == EXAMPLES and [e["line"] for e in broken.examples] == [4, 10, 22]
    assert broken.examples[0]["request"] == "{broken" and "not valid JSON" in broken.examples[0]["message"]
    assert s.errors[1].examples[0]["custom_id"] == "nobody"
    assert s.job["status"] == "completed" and s.job["requests_done"] == 45
    assert orjson.loads(orjson.dumps(s.to_dict()))["chunks"]["chunk"] == c.chunk


def test_a_story_shows_what_a_cancel_left_unrun_and_old_or_odd_lines_of_the_log(spool: Spool,
                                                                                 config: Config) -> None:
    drop(spool, "later.jsonl", [chat_line(i) for i in range(30)])
    cancel(spool, "later")  # queued: cancelled at once, every request unrun
    s = story(spool, "later")
    assert [(g.code, g.count, g.unrun) for g in s.errors] == [("batch_cancelled", 30, True)]
    assert s.chunks.t == []
    log = JobLog(spool.log("later"), echo=False)
    log.event(JobEvent.CHUNK_MERGED, "later", chunk=1, first_line=1, last_line=10, answered=10, failed=0,
              seconds=0.5, worker="w-1")  # a chunk event written before events held tokens
    log.event(JobEvent.CHUNK_MERGED, "later", chunk=2)  # a chunk event missing its fields
    log("a line of free text")
    s = story(spool, "later")
    assert s.chunks.chunk == [1] and s.chunks.tokens == [None]
    assert [e["event"] for e in s.events][-2:] == ["chunk_merged", "text"]
    assert s.events[-1]["text"].endswith("a line of free text")
    assert story(spool, "later", max_events=1).events_total == len(s.events) and \
        len(story(spool, "later", max_events=1).events) == 1


def test_batches_are_found_by_status_and_by_words_of_their_id_or_metadata(spool: Spool, config: Config) -> None:
    drop(spool, "alpha.jsonl", [chat_line(i) for i in range(3)])
    drop(spool, "beta.jsonl", [chat_line(i) for i in range(3)])
    drain(config)
    drop(spool, "gamma.jsonl", [chat_line(i) for i in range(3)])
    record = BatchRecord.load(spool, "beta") or BatchRecord(job="beta", created_at=time.time())
    record.metadata = {"owner": "Alice", "team": "search"}
    record.save(spool)
    views = list_batches(spool)
    ids = lambda found: sorted(v.job for v in found)  # noqa: E731
    assert ids(search(views, ["completed"])) == ["alpha", "beta"]
    assert ids(search(views, ["validating", "failed"])) == ["gamma"]
    assert ids(search(views, [], "alice")) == ["beta"]
    assert ids(search(views, [], "team=search")) == ["beta"]
    assert ids(search(views, [], "batch_gam")) == ["gamma"]
    assert ids(search(views, ["validating"], "alice")) == []
    assert ids(search(views, [""], "")) == ["alpha", "beta", "gamma"]
    assert get_batch(spool, "beta").record is not None


def test_a_workers_gpu_series_are_columns_per_card_of_the_hours_asked(spool: Spool) -> None:
    now = time.time()
    lines = [Reading(now - 7200, (CardReading(0, 10.0, 40.0, None),)),
             Reading(now - 60, (CardReading(0, 50.0, 70.0, 90.0), CardReading(1, 20.0, None, None))),
             Reading(now - 30, (CardReading(0, 55.0, 71.0, 95.0),))]
    spool.gpu_history("w-1").write_bytes(b"".join(r.to_line() for r in lines))
    assert is_worker(spool, "w-1") and not is_worker(spool, "w-2") and not is_worker(spool, "../w-1")
    series = gpu_series(spool, "w-1", hours=1, now=now)
    assert sorted(series) == ["0", "1"]
    assert series["0"]["memory_pct"] == [50.0, 55.0] and series["0"]["temperature_c"] == [70.0, 71.0]
    assert series["1"] == {"t": [round(now - 60, 1)], "memory_pct": [20.0], "temperature_c": [None],
                           "utilization_pct": [None]}
    assert len(gpu_series(spool, "w-1", hours=3, now=now)["0"]["t"]) == 3
    assert len(gpu_series(spool, "w-1", hours=100, now=now)["0"]["t"]) == 3  # a day at most: all of these

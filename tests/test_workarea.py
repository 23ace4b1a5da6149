"""A job's work area: parts and their ids, all or nothing; job log events as people read them."""

from __future__ import annotations

from array import array
from dataclasses import asdict
from pathlib import Path

import orjson
import pytest

from spoolbatch.store import workarea
from spoolbatch.store.joblog import JobEvent, JobLog, read_events, render
from spoolbatch.store.workarea import PartIds, PartSummary, WorkArea


def summary(index: int = 0, done: int = 2, failed: int = 1) -> PartSummary:
    return PartSummary(index, done + failed, done, failed, 5, 7, 0.5, 0, "w-1")


def test_part_ids_round_trip(tmp_path: Path) -> None:
    area = WorkArea(tmp_path / "job.chunks")
    area.ensure()
    ids = PartIds()
    ids.add(11, 1)
    ids.add(22, 3)
    ids.failed.extend((0, 33))
    area.commit_part(summary(), b"r1\nr2\n", b"d1\n", ids)
    part = area.committed(0)
    assert part == summary()
    results, dead, back = area.read_part(part)
    assert (results, dead) == (b"r1\nr2\n", b"d1\n")
    assert (list(back.hashes), list(back.lines), list(back.failed)) == ([11, 22], [1, 3], [0, 33])


def test_a_part_of_an_older_worker_is_read(tmp_path: Path) -> None:
    # Parts committed before PartIds were (hash, line) pairs: results' first, then deadletter's;
    # their marker had the chunk's end offset too.
    pairs = array("Q", [11, 1, 22, 3, 0, 2, 33, 4])
    back = PartIds.from_bytes(pairs.tobytes(), answered=2)
    assert (list(back.hashes), list(back.lines), list(back.failed)) == ([11, 22], [1, 3], [0, 33])
    area = WorkArea(tmp_path / "job.chunks")
    area.ensure()
    (area.root / "000000.done").write_bytes(orjson.dumps({**asdict(summary()), "end": 100}))
    assert area.committed(0) == summary()


def test_a_commit_that_fails_halfway_leaves_no_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    area = WorkArea(tmp_path / "job.chunks")
    area.ensure()
    real = workarea.atomic_write

    def failing(path: Path, data: bytes, **kw: bool) -> None:
        if path.name.endswith(".done"):
            raise OSError("crash before the marker")
        real(path, data, **kw)

    monkeypatch.setattr(workarea, "atomic_write", failing)
    with pytest.raises(OSError):
        area.commit_part(summary(), b"r\n", b"", PartIds())
    assert area.committed(0) is None


def test_job_log_events_render_as_sentences(tmp_path: Path) -> None:
    path = tmp_path / "job.log"
    path.write_text("2024-01-01T00:00:00 a line from before events\n")
    log = JobLog(path, echo=False)
    log.event(JobEvent.CLAIMED, "job", file="job.jsonl", lines=1200, bytes=34567, model="m", worker="w-1")
    log.event(JobEvent.RESUMED, "job", chunk=3, first_line=1001, last_line=1200, worker="w-2")
    log.event(JobEvent.CHUNK_MERGED, "job", chunk=3, first_line=1001, last_line=1200, answered=199, failed=1,
              seconds=1.234, worker="w-2")
    log.event(JobEvent.COMPLETED, "job", answered=1199, failed=1, tokens=5000, seconds=9.87)
    events = read_events(path)
    assert [e["event"] for e in events] == ["text", "claimed", "resumed", "chunk_merged", "completed"]
    lines = [render(e) for e in events]
    assert lines[0] == "2024-01-01T00:00:00 a line from before events"
    assert [line.split(" ", 1)[1] for line in lines[1:]] == [
        "claimed job.jsonl as job job: 1,200 lines, 34,567 bytes, model m",
        "resuming at line 1,001 (chunk 3, whose worker stopped before committing it)",
        "chunk 3: lines 1,001-1,200, 199 answered, 1 to deadletter, 1.23s (w-2)",
        "completed: 1,199 answered, 1 in deadletter, 5,000 tokens in 9.9s of engine time",
    ]

"""The daemon's named events: written as JSON lines with the worker, told to people as sentences."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from spoolbatch.store.joblog import DaemonEvent, JobLog, describe, read_events, render

# One event of each name with the fields its writer gives it.
SAMPLES: dict[DaemonEvent, dict[str, Any]] = {
    DaemonEvent.GPU_WAIT: {"reason": "GPU 0 temperature 91°C > 85°C"},
    DaemonEvent.GPU_RECOVERED: {},
    DaemonEvent.DISK_LOW: {"free_bytes": 50, "needed_bytes": 100},
    DaemonEvent.DISK_BACK: {"free_bytes": 1000},
    DaemonEvent.ENGINE_REBUILD: {"reason": "RuntimeError: engine core died"},
    DaemonEvent.PIPELINE_REDO: {"stage": "collect", "error": "EngineError: gone"},
    DaemonEvent.REPLICA_LOST: {"stage": "collect", "replica": 1, "requests": 25, "error": "ActorDiedError"},
}


def test_every_daemon_event_has_a_sample_and_a_sentence_of_its_own() -> None:
    assert SAMPLES.keys() == set(DaemonEvent)
    for name, fields in SAMPLES.items():
        sentence = describe({"event": name.value, "worker": "w", **fields})
        assert sentence and not sentence.startswith(name.value), name  # not the catch-all rendering


def test_a_worker_writes_its_events_as_lines_and_tells_stderr(tmp_path: Path,
                                                              capfd: pytest.CaptureFixture[str]) -> None:
    log = JobLog(tmp_path / "daemon.log", echo=True)
    events = log.daemon_events("host-7")
    log("daemon started")  # free text beside the events
    events(DaemonEvent.DISK_LOW, free_bytes=50, needed_bytes=100)
    events(DaemonEvent.DISK_BACK, free_bytes=1000)
    read = read_events(tmp_path / "daemon.log")
    assert [e["event"] for e in read] == ["text", DaemonEvent.DISK_LOW, DaemonEvent.DISK_BACK]
    assert read[1] == {"ts": read[1]["ts"], "event": "disk_low", "worker": "host-7", "free_bytes": 50,
                       "needed_bytes": 100}
    lines = (tmp_path / "daemon.log").read_bytes().splitlines()
    assert orjson.loads(lines[2])["free_bytes"] == 1000
    err = capfd.readouterr().err.splitlines()
    assert len(err) == 3 and err[1].endswith(describe(read[1])) and render(read[1]).endswith(describe(read[1]))


def test_a_quiet_log_still_writes_its_events(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    JobLog(tmp_path / "daemon.log", echo=False).daemon_events("w")(DaemonEvent.GPU_RECOVERED)
    assert [e["event"] for e in read_events(tmp_path / "daemon.log")] == [DaemonEvent.GPU_RECOVERED]
    assert capfd.readouterr().err == ""

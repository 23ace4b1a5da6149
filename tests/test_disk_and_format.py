"""Disk space before each chunk (a faked free-space reading), and the spool's format version."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from spoolbatch.cli import app
from spoolbatch.commands import catalog
from spoolbatch.commands.status import status
from spoolbatch.config import Config, load_config
from spoolbatch.errors import SpoolFormatError
from spoolbatch.store import formatversion
from spoolbatch.store.checkpoint import Checkpoint
from spoolbatch.store.heartbeat_record import WorkerState
from spoolbatch.store.joblog import DaemonEvent
from spoolbatch.store.spool import Spool
from spoolbatch.worker.daemon import Daemon

from .conftest import REPO, assert_exactly_once, chat_line, daemon_events, drop, wait_for
from .fakes import FakeDisk

FIXTURE = Path(__file__).parent / "fixtures" / "spool-v1.tar.gz"
MB = 1024 * 1024


def test_the_daemon_waits_while_the_disk_is_low_and_resumes(spool: Spool, config: Config) -> None:
    disk = FakeDisk(50 * MB)  # under the 100 MB floor
    daemon = Daemon(config, echo=False, statvfs=disk)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        drop(spool, "job.jsonl", [chat_line(i) for i in range(30)])
        beat = wait_for(lambda: (b := daemon.heartbeat.snapshot()).state == WorkerState.WAITING and b)
        assert beat.disk == {"free_bytes": 50 * MB, "needed_bytes": 100 * MB, "low": True}
        assert not spool.checkpoint("job").exists()  # nothing claimed, nothing written
        path = spool.worker_metrics(daemon.heartbeat.id)  # written by the heartbeat thread, maybe not yet
        wait_for(lambda: path.exists() and b"spoolbatch_disk_low{" in path.read_bytes())
        metrics = path.read_text()
        assert f'spoolbatch_disk_low{{worker="{daemon.heartbeat.id}"}} 1' in metrics
        assert f'spoolbatch_disk_free_bytes{{worker="{daemon.heartbeat.id}"}} {50 * MB}' in metrics
        disk.free = 10_000 * MB
        wait_for(lambda: (c := Checkpoint.load(spool.checkpoint("job"))) is not None and c.status == "completed")
    finally:
        daemon.request_stop()
        thread.join(30)
    assert_exactly_once(spool, "job", {f"req-{i}" for i in range(30)})
    events = daemon_events(spool)  # one wait, one recovery
    assert [e["event"] for e in events] == [DaemonEvent.DISK_LOW, DaemonEvent.DISK_BACK], events
    low, back = events
    assert (low["free_bytes"], low["needed_bytes"], back["free_bytes"]) == (50 * MB, 100 * MB, 10_000 * MB)
    assert low["worker"] == back["worker"] == daemon.heartbeat.id
    assert (daemon.heartbeat.snapshot().disk or {})["low"] is False


def test_the_estimate_is_the_jobs_bytes_per_result_times_the_chunk(spool: Spool, config: Config) -> None:
    daemon = Daemon(config.replace(disk_min_free_bytes=1000), echo=False, statvfs=FakeDisk(1 << 40))
    assert daemon.disk.need(5000, None) == 1000  # nothing measured yet: the floor
    Checkpoint(job="j", results_bytes=9000, deadletter_bytes=600, ids_count=10, requests_done=9,
               requests_failed=1).save(spool.checkpoint("j"))
    assert daemon.disk.need(5000, "j") == 2 * (9000 + 600 + 80) // 10 * 5000  # written twice: part, then merge


def test_status_shows_the_spools_disk_use_and_free_space(spool: Spool) -> None:
    (spool.inbox / "x.jsonl").write_bytes(b"x" * 10_000)
    disk = status(spool).to_dict()["disk"]
    assert disk["used_bytes"] >= 10_000 and disk["files"] >= 2 and 0 < disk["free_bytes"] <= disk["total_bytes"]
    result = CliRunner().invoke(app, ["status", "--spool", str(spool.root)])
    assert result.exit_code == 0 and "disk: the spool uses" in result.stdout and "free of" in result.stdout


# --- format versions ---------------------------------------------------------------------------
def test_init_writes_the_format_version(spool: Spool) -> None:
    data = orjson.loads(spool.format_file.read_bytes())
    assert data["format"] == formatversion.FORMAT == 2 and "upgraded_from" not in data


def test_a_newer_format_is_refused_by_every_command_in_one_line(spool: Spool, config: Config) -> None:
    spool.format_file.write_bytes(orjson.dumps({"format": 99}))
    with pytest.raises(SpoolFormatError, match="has spool format 99, newer than this spoolbatch reads"):
        spool.require()
    with pytest.raises(SpoolFormatError):
        Daemon(config, echo=False)
    for args in (["status"], ["list", "--json"], ["gc"], ["init"], ["results", "x"]):
        result = CliRunner().invoke(app, [*args, "--spool", str(spool.root)])
        assert result.exit_code == 3, (args, result.output)
        assert result.stderr.startswith(f"spoolbatch: {spool.root} has spool format 99"), result.stderr
        assert "Traceback" not in result.output
    proc = subprocess.run([sys.executable, "-m", "spoolbatch", "run", "--once", "--engine", "fake", "--spool",
                           str(spool.root)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3 and "has spool format 99" in proc.stderr and "Traceback" not in proc.stderr
    spool.format_file.write_bytes(b"{not json")
    with pytest.raises(SpoolFormatError, match="unreadable"):
        spool.require()


def test_a_running_daemon_stops_when_the_spool_turns_newer(spool: Spool, config: Config) -> None:
    daemon = Daemon(config, echo=False)
    spool.format_file.write_bytes(orjson.dumps({"format": 3}))
    with pytest.raises(SpoolFormatError):
        daemon.run(once=True)  # its clean-up reads the version first


def unpack_fixture(tmp_path: Path) -> Spool:
    safe: dict[str, str] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(tmp_path, **safe)  # type: ignore[arg-type]
    return Spool(tmp_path / "spool")


def test_a_spool_made_by_the_previous_release_is_read_and_upgraded(tmp_path: Path) -> None:
    """tests/fixtures/spool-v1.tar.gz: `init`, a 3-request job run with the fake engine, a 2-request job
    queued, made by the release before format versions (see tests/fixtures/README.md)."""
    spool = unpack_fixture(tmp_path)
    assert not spool.format_file.exists() and formatversion.read_format(spool) == 1
    jobs = {j.job: j.status for j in catalog.list_jobs(spool)}  # any command upgrades it first
    assert jobs == {"done-job": "completed", "queued-job": "queued"}
    data = orjson.loads(spool.format_file.read_bytes())
    assert data["format"] == 2 and data["upgraded_from"] == 1
    assert all((spool.root / d).is_dir() for d in ("files", "batches", "outbox"))
    assert [orjson.loads(r)["custom_id"] for r in catalog.results(spool, "done-job")] == \
        ["done-1", "done-2", "done-3"]
    config = load_config(spool.root, env={}, engine="fake", settle_seconds=0, poll_interval=0.1)
    daemon = Daemon(config, echo=False)
    while daemon.loop_once().worked:
        pass
    assert_exactly_once(spool, "queued-job", {"queued-1", "queued-2"})
    result = CliRunner().invoke(app, ["gc", "--older-than", "0", "--json", "--spool", str(spool.root)])
    assert result.exit_code == 0
    assert {r["name"] for r in orjson.loads(result.stdout)["removed"] if r["kind"] == "job"} == \
        {"done-job", "queued-job"}


def test_an_upgrade_killed_midway_is_done_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = unpack_fixture(tmp_path)

    def dies(*_: object, **__: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(formatversion, "write_format", dies)
    with pytest.raises(Exception, match="cannot upgrade .* from format 1 to 2"):
        spool.require()
    assert not spool.format_file.exists()  # still format 1, still readable
    monkeypatch.undo()
    spool.require()
    assert formatversion.read_format(spool) == 2
    assert os.stat(spool.format_file).st_mode & 0o777 == 0o600

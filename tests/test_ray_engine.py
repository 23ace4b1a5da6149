"""The Ray backend on a private local Ray with the tiny model, through the spool.

Few tests on purpose: each one starts Ray and vLLM replicas (tens of seconds, GiBs here).
Daemons run as subprocesses with ``RAY_TMPDIR`` set to a fresh folder, so every Ray
process they start carries it in its environment: teardown finds those processes by it
and kills each by pid, and the interrupted run checks that Ray died with its daemon.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from spoolbatch.engines.ray_engine import slices
from spoolbatch.store.joblog import DaemonEvent
from spoolbatch.store.spool import Spool

from .conftest import REPO, assert_exactly_once, chat_line, daemon_events, drop, read_jsonl, wait_for


def test_slices_cover_every_request_once() -> None:
    for count in range(0, 12):
        for parts in range(1, 5):
            ranges = slices(count, parts)
            flat = [i for lo, hi in ranges for i in range(lo, hi)]
            assert flat == list(range(count))
            assert len(ranges) <= parts and all(hi > lo for lo, hi in ranges)
            assert max((hi - lo for lo, hi in ranges), default=0) - min((hi - lo for lo, hi in ranges), default=0) <= 1


def test_other_commands_do_not_import_ray() -> None:
    code = ("import sys; from spoolbatch import cli; from spoolbatch.engines import make_engine;"
            "from spoolbatch.engines import ray_engine; from spoolbatch.config import Config;"
            "make_engine('ray', Config()); assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


# --- the real thing: local Ray, tiny model, daemons as subprocesses ---------------------------------


def _ray_pids(marker: str) -> list[int]:
    """Processes of this user whose environment carries ``RAY_TMPDIR=marker``."""
    needle = f"RAY_TMPDIR={marker}".encode() + b"\0"
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read():
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def _title(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class RayDaemons:
    """Start ``spoolbatch run --engine ray`` daemons on one spool, each with a private local Ray."""

    def __init__(self, spool: Spool, tmp: Path) -> None:
        self.spool = spool
        self.raytmp = tempfile.mkdtemp(prefix="sbr-", dir="/tmp")  # short: Ray's socket paths have a limit
        self.logs = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "spoolbatch", "run", "--spool", str(self.spool.root), "--engine", "ray",
               "--ray-address", "local", "--settle-seconds", "0", "--poll-interval", "0.2",
               "--heartbeat-interval", "0.5", "-q", *args]
        log = open(self.logs / f"daemon-{len(self.procs)}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "RAY_TMPDIR": self.raytmp},
                                stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs.append(proc)
        return proc

    def replicas(self) -> list[int]:
        """Pids of the vLLM replica actors now alive."""
        return [p for p in _ray_pids(self.raytmp) if "Replica" in _title(p)]

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        deadline = time.monotonic() + 30
        while (left := _ray_pids(self.raytmp)) and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
        shutil.rmtree(self.raytmp, ignore_errors=True)

    def tail(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(self.logs.glob("daemon-*.log")))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("vllm")
    pytest.importorskip("ray")
    pytest.importorskip("tokenizers")
    from tests.tiny_model import tiny_llama

    return tiny_llama(tmp_path_factory.mktemp("models"))


@pytest.fixture
def daemons(spool: Spool, tmp_path: Path) -> Iterator[RayDaemons]:
    d = RayDaemons(spool, tmp_path)
    yield d
    d.close()
    assert not _ray_pids(d.raytmp), "Ray processes left running"


def _ckpt(spool: Spool, job: str) -> dict[str, Any]:
    try:
        return orjson.loads(spool.checkpoint(job).read_bytes())
    except FileNotFoundError:
        return {}


def _records(model: str, n: int, prefix: str = "") -> tuple[list[Any], set[str]]:
    records: list[Any] = []
    for i in range(n):
        line = chat_line(i, model=model)
        line["custom_id"] = f"{prefix}req-{i}"
        records.append(line)
    records.insert(n // 3, b'{"custom_id": "torn", "method": ')  # broken JSON: deadletter by line number
    records.insert(n // 2, {**chat_line(-1, model=model, max_tokens=0), "custom_id": f"{prefix}bad"})
    return records, {f"{prefix}req-{i}" for i in range(n)} | {f"{prefix}bad"}


def _parse_results(spool: Spool, job: str) -> None:
    from openai.types.chat import ChatCompletion

    for line in read_jsonl(spool.results(job)):
        assert line["error"] is None and line["response"]["status_code"] == 200
        body = ChatCompletion.model_validate(line["response"]["body"])
        assert body.object == "chat.completion" and body.usage is not None and body.usage.completion_tokens > 0


@pytest.mark.vllm
@pytest.mark.slow
def test_ray_backend_answers_every_request_once_and_survives_a_lost_replica(
        spool: Spool, daemons: RayDaemons, model_dir: Path) -> None:
    """Two replicas; one is killed between jobs: the next chunk replaces it and loses nothing."""
    warm, warm_ids = _records(str(model_dir), 20, prefix="w-")
    drop(spool, "warm.jsonl", warm)
    proc = daemons.start("--chunk-size", "50", "--ray-concurrency", "2")
    wait_for(lambda: _ckpt(spool, "warm").get("status") == "completed" or proc.poll() is not None, timeout=400)
    assert proc.poll() is None, daemons.tail()
    assert_exactly_once(spool, "warm", warm_ids)
    replicas = wait_for(daemons.replicas, timeout=30)
    assert len(replicas) == 2, [(_title(p), p) for p in replicas]
    os.kill(replicas[0], signal.SIGKILL)  # a lost Ray worker

    records, ids = _records(str(model_dir), 300)
    drop(spool, "big.jsonl", records)
    wait_for(lambda: _ckpt(spool, "big").get("status") == "completed" or proc.poll() is not None, timeout=400)
    assert proc.poll() is None, daemons.tail()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, daemons.tail()

    done, failed = assert_exactly_once(spool, "big", ids)
    assert (done, failed) == (300, 2)  # the torn line and the bad request, nothing else
    dead = read_jsonl(spool.deadletter_file("big"))
    assert {d.get("custom_id") for d in dead} == {None, "bad"}
    _parse_results(spool, "big")
    assert len(daemons.replicas()) == 0
    # The chunks went through the look-ahead path (submit/collect on the replicas), and the
    # lost replica's slices were redone there, not by the executor's split-and-retry fallback.
    lost = daemon_events(spool, DaemonEvent.REPLICA_LOST)
    assert "collect" in {e["stage"] for e in lost}, daemons.tail()
    assert not daemon_events(spool, DaemonEvent.PIPELINE_REDO), daemons.tail()


@pytest.mark.vllm
@pytest.mark.slow
def test_ray_run_killed_mid_job_resumes_exactly_once(spool: Spool, daemons: RayDaemons, model_dir: Path) -> None:
    """kill -9 the driver mid-job: its local Ray dies with it; a new daemon finishes, nothing lost or repeated."""
    records, ids = _records(str(model_dir), 1000)
    drop(spool, "job.jsonl", records)
    first = daemons.start("--chunk-size", "20", "--ray-concurrency", "1")
    wait_for(lambda: _ckpt(spool, "job").get("lines_consumed", 0) > 0 or first.poll() is not None, timeout=400,
             interval=0.02)
    assert first.poll() is None, daemons.tail()
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    ckpt = _ckpt(spool, "job")
    assert ckpt["status"] != "completed", "the job finished before the kill; make it longer"
    try:  # Ray shares its driver's fate
        wait_for(lambda: not _ray_pids(daemons.raytmp), timeout=120, interval=0.5)
    except AssertionError:
        raise AssertionError(f"left running: {[_title(p)[:80] for p in _ray_pids(daemons.raytmp)]}") from None

    second = daemons.start("--chunk-size", "20", "--ray-concurrency", "1", "--once")
    assert second.wait(timeout=600) == 0, daemons.tail()
    assert assert_exactly_once(spool, "job", ids) == (1000, 2)
    assert _ckpt(spool, "job")["resumes"] >= 0
    _parse_results(spool, "job")

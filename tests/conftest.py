"""Shared fixtures: spools, job files, and daemons run as real subprocesses."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from spoolbatch.config import Config, load_config
from spoolbatch.store.checkpoint import Checkpoint
from spoolbatch.store.jobindex import JobIndex
from spoolbatch.store.joblog import DaemonEvent, read_events
from spoolbatch.store.jobstate import JobState
from spoolbatch.store.spool import Spool
from spoolbatch.store.workarea import WorkArea
from spoolbatch.worker import gcpolicy

REPO = Path(__file__).resolve().parent.parent


def chat_line(i: int, model: str = "m", **body: Any) -> dict[str, Any]:
    """One valid chat request line."""
    return {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": f"question {i}"}],
                     "max_tokens": 8, **body}}


def write_jsonl(path: Path, records: list[Any]) -> Path:
    """Write records (dicts as JSON, bytes/str verbatim) one per line."""
    with open(path, "wb") as f:
        for r in records:
            if isinstance(r, bytes):
                f.write(r + b"\n")
            elif isinstance(r, str):
                f.write(r.encode() + b"\n")
            else:
                f.write(orjson.dumps(r) + b"\n")
    return path


def drop(spool: Spool, name: str, records: list[Any], age: float = 60.0) -> Path:
    """Put a job in the inbox, aged past the settle time, in one rename.

    The file is written under a dot-name (which the daemon ignores), aged, then renamed into place:
    a daemon already running (settle time 0) could otherwise claim it between the write and the
    ageing, and the ageing would then find nothing to touch.
    """
    hidden = write_jsonl(spool.inbox / f".{name}.part", records)
    past = time.time() - age
    os.utime(hidden, (past, past))
    path = spool.inbox / name
    os.rename(hidden, path)
    return path


def finished_jobs(spool: Spool, n: int, *, prefix: str = "j", start: float | None = None,
                  states: tuple[JobState, ...] = (JobState.COMPLETED,)) -> list[str]:
    """``n`` ended jobs written as a worker leaves them (checkpoint, results, archived input), one a
    minute from ``start`` (default twenty days ago), and their lines in the index: a spool's month,
    without a daemon."""
    if start is None:
        start = time.time() - 20 * 86400
    jobs = []
    for i in range(n):
        job = f"{prefix}{i:05d}"
        created = start + 60 * i
        state = states[i % len(states)]
        ckpt = Checkpoint(job=job, status=state, total_lines=1, lines_consumed=1, requests_done=1, chunks=1,
                          created_at=created, started_at=created, updated_at=created + 5, finished_at=created + 5)
        spool.archived_input(job).write_bytes(orjson.dumps(chat_line(i)) + b"\n")
        spool.results(job).write_bytes(b"")
        spool.checkpoint(job).write_bytes(orjson.dumps(ckpt.to_dict()))
        JobIndex(spool).add(job, created, state, created + 5)
        jobs.append(job)
    return jobs


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every line of a JSONL file, each of which must be whole JSON."""
    if not path.exists():
        return []
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), f"{path} ends with a torn line"
    return [orjson.loads(line) for line in data.splitlines()]


def orphans(spool: Spool, job: str) -> set[int]:
    """Numbers (from 1) of the planned chunks of ``job`` with no committed part and no live holder.

    Each is taken over (a ``resumed`` event) by the next worker that claims from the job.
    """
    area = WorkArea(spool.work_area(job))
    ckpt = Checkpoint.load(spool.checkpoint(job))
    free = set()
    for chunk in area.plan()[ckpt.chunks if ckpt else 0:]:
        if area.committed(chunk.index) is None:
            lock = spool.try_lock(area.lock(chunk.index))
            if lock is not None:
                lock.release()
                free.add(chunk.index + 1)
    return free


def job_events(spool: Spool, job: str, *names: str) -> list[dict[str, Any]]:
    """The events of the job's log (only those named, when names are given), oldest first."""
    if not spool.log(job).exists():
        return []
    events = read_events(spool.log(job))
    assert all(e["event"] != "text" for e in events), "the job log holds a line that is not an event"
    return [e for e in events if not names or e["event"] in names]


def daemon_events(spool: Spool, *names: str) -> list[dict[str, Any]]:
    """The named events of the daemon's log (every ``DaemonEvent`` when no name is given), oldest first."""
    if not spool.daemon_log().exists():
        return []
    events = [e for e in read_events(spool.daemon_log()) if e["event"] in set(DaemonEvent)]
    return [e for e in events if not names or e["event"] in names]


@pytest.fixture(autouse=True)
def process_state_restored() -> Iterator[None]:
    """Every test leaves the signal handlers and the collector policy as it found them.

    A daemon run in the test process (``run`` through CliRunner, ``Daemon.run`` in a thread)
    installs SIGTERM/SIGINT handlers and quiets the collector; ``Daemon.run`` undoes both as it
    ends, and this fails the test that forgets.
    """
    signals = (signal.SIGTERM, signal.SIGINT)
    # Not gc's frozen count: loading vLLM freezes the heap itself (our thaw hands back only ours).
    before = ([signal.getsignal(s) for s in signals], gc.get_threshold(), gcpolicy._active)
    yield
    after = ([signal.getsignal(s) for s in signals], gc.get_threshold(), gcpolicy._active)
    assert after == before, "signal handlers (SIGTERM, SIGINT), gc thresholds or the collector policy changed"


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    """An initialised, empty spool."""
    sp = Spool(tmp_path / "spool")
    sp.init()
    return sp


@pytest.fixture
def config(spool: Spool) -> Config:
    """Fake engine, small chunks, no settle wait, fast heartbeat."""
    return load_config(spool.root, env={}, engine="fake", chunk_size=10, settle_seconds=0,
                       poll_interval=0.1, heartbeat_interval=0.2, max_attempts=2)


def daemon_cmd(spool: Spool, *args: str) -> list[str]:
    """The command line of a fake-engine daemon on ``spool``."""
    return [sys.executable, "-m", "spoolbatch", "run", "--spool", str(spool.root), "--engine", "fake",
            "--settle-seconds", "0", "--poll-interval", "0.1", "--heartbeat-interval", "0.2", "-q", *args]


@pytest.fixture
def start_daemon(spool: Spool) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start daemons as subprocesses; every one still running is killed at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(daemon_cmd(spool, *args), cwd=REPO, env={**os.environ, **(env or {})},
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        if proc.stderr:
            proc.stderr.close()


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, interval: float = 0.05) -> Any:
    """Poll until ``predicate`` is truthy; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")


def assert_exactly_once(spool: Spool, job: str, expected_ids: set[str]) -> tuple[int, int]:
    """Every expected custom_id is in results or deadletter exactly once; files agree with the checkpoint."""
    results = read_jsonl(spool.results(job))
    dead = read_jsonl(spool.deadletter_file(job))
    seen = [r["custom_id"] for r in results] + [d["custom_id"] for d in dead if d.get("custom_id")]
    assert len(seen) == len(set(seen)), f"duplicates: {len(seen) - len(set(seen))}"
    assert set(seen) == expected_ids, f"missing {len(expected_ids - set(seen))}, extra {len(set(seen) - expected_ids)}"
    ckpt = orjson.loads(spool.checkpoint(job).read_bytes())
    assert ckpt["status"] == "completed"
    assert ckpt["results_bytes"] == spool.results(job).stat().st_size
    assert ckpt["requests_done"] == len(results)
    assert ckpt["requests_failed"] == len(dead)
    if dead:
        assert ckpt["deadletter_bytes"] == spool.deadletter_file(job).stat().st_size
    return len(results), len(dead)


# --- the real engine, shared ------------------------------------------------------------------
class SharedEngine:
    """One session-wide engine lent to many daemons: their ``close()`` leaves it loaded.

    Everything else (``load``, ``run``, ``submit``/``collect``/``abort`` of a pipelining
    engine, ``name``) is the wrapped engine's, so the daemon drives it as it would its own.
    """

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def close(self) -> None:
        """Nothing: the session closes the engine once, at its end."""


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Llama (tests/tiny_model.py), built once per session."""
    pytest.importorskip("vllm")
    pytest.importorskip("tokenizers")
    from tests.tiny_model import tiny_llama

    return tiny_llama(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def shared_vllm_engine(tiny_model_dir: Path) -> Iterator[SharedEngine]:
    """One ``VllmEngine`` on the tiny model for the whole session (each start costs seconds)."""
    from spoolbatch.config import EngineSettings
    from spoolbatch.engines.vllm_engine import VllmEngine

    engine = VllmEngine(EngineSettings())
    engine.load(str(tiny_model_dir))
    yield SharedEngine(engine)
    engine.close()

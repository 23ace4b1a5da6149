"""`spoolbatch status --json` tells alive, dead and stopped workers apart; read commands stay light."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest

from spoolbatch.config import Config
from spoolbatch.store.spool import Spool
from spoolbatch.worker.daemon import Daemon

from .conftest import REPO, chat_line, drop, wait_for, write_jsonl

pytestmark = pytest.mark.slow


def status_json(spool: Spool) -> dict[str, Any]:
    """Run `spoolbatch status --json` as a user would and parse its output."""
    proc = subprocess.run([sys.executable, "-m", "spoolbatch", "status", "--json", "--spool", str(spool.root)],
                          cwd=REPO, capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stderr.decode()
    return orjson.loads(proc.stdout)


def worker_of(data: dict[str, Any], pid: int) -> dict[str, Any] | None:
    """The status entry of the worker with ``pid``."""
    return next((w for w in data["workers"] if w["pid"] == pid), None)


def liveness_of(spool: Spool, pid: int) -> tuple[str | None, dict[str, Any]]:
    data = status_json(spool)
    w = worker_of(data, pid)
    return (w["liveness"] if w else None), data


def test_alive_while_working_then_dead_after_kill9(spool: Spool, start_daemon: Any) -> None:
    # Chunks of about 2 s: the heartbeat thread must keep the worker alive inside a chunk.
    drop(spool, "slow.jsonl", [chat_line(i) for i in range(2000)])  # far longer than the test (killed early)
    proc = start_daemon("--chunk-size", "50", "--fake-latency", "0.04")
    wait_for(lambda: spool.checkpoint("slow").exists(), timeout=30)
    for _ in range(2):
        data = status_json(spool)
        w = worker_of(data, proc.pid)
        assert w is not None and w["liveness"] == "alive", w
        assert data["alive"] is True
        assert w["state"] == "working" and w["job"] == "slow"
        [job] = [j for j in data["jobs"] if j["job"] == "slow"]
        assert job["status"] == "running" and job["owned"] is True

    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    # Same host and its pid is gone: dead at once; the bound is generous for a loaded machine.
    state, data = wait_for(lambda: (r := liveness_of(spool, proc.pid))[0] == "dead" and r, timeout=10, interval=0.2)
    assert data["alive"] is False
    [job] = [j for j in data["jobs"] if j["job"] == "slow"]
    assert job["status"] == "interrupted" and job["owned"] is False


def test_stopped_after_sigterm(spool: Spool, start_daemon: Any) -> None:
    proc = start_daemon()
    wait_for(lambda: liveness_of(spool, proc.pid)[0] == "alive", timeout=30, interval=0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    state, data = liveness_of(spool, proc.pid)
    assert state == "stopped"
    assert worker_of(data, proc.pid)["state"] == "stopped"
    assert data["alive"] is False


POISON = """
import os
with open(os.environ["POISON_MARKER"], "a") as f:
    f.write(__name__ + "\\n")
raise ImportError(__name__ + " must not be imported by read-only commands")
"""

READ_COMMANDS = """
import sys
from spoolbatch.cli import app
spool = sys.argv[1]
for args in (["status", "--json"], ["status"], ["status", "done1", "--json"], ["list", "--json"],
             ["results", "done1"], ["results", "done1", "--errors"], ["deadletter", "done1", "--json"],
             ["logs", "done1", "--json"]):
    rc = app([*args, "--spool", spool], standalone_mode=False)
    assert not rc, (args, rc)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("vllm", "torch")
               or m == "spoolbatch.engines.vllm_engine")
assert not heavy, heavy
print("ok")
"""


HEAVY = ("vllm", "torch", "transformers")


def poisoned(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment whose vllm, torch and transformers are stand-ins that record any import attempt, even one
    guarded by try/except ImportError, in the marker file (also returned)."""
    poison = tmp_path / "poison"
    for name in HEAVY:
        (poison / name).mkdir(parents=True)
        (poison / name / "__init__.py").write_text(POISON)
    marker = tmp_path / "imported.txt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(poison), os.environ.get("PYTHONPATH", "")]),
           "POISON_MARKER": str(marker)}
    return env, marker


def heavy_imports(importtime: bytes) -> list[str]:
    """The vllm, torch or transformers modules that ``-X importtime`` output names."""
    names = [line.rsplit("|", 1)[-1].strip() for line in importtime.decode().splitlines()
             if line.startswith("import time:")]
    return [m for m in names if m.split(".")[0] in HEAVY]


def test_read_commands_never_import_vllm_or_torch(spool: Spool, start_daemon: Any, tmp_path: Path) -> None:
    drop(spool, "done1.jsonl", [chat_line(1), b"not json"])
    assert start_daemon("--once").wait(timeout=60) == 0
    env, marker = poisoned(tmp_path)
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", textwrap.dedent(READ_COMMANDS),
                           str(spool.root)], cwd=REPO, env=env, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert proc.stdout.decode().rstrip().endswith("ok")
    assert not marker.exists(), f"imported: {marker.read_text()}"
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.decode().splitlines()
                if line.startswith("import time:")]
    assert "spoolbatch.cli" in imported
    assert not [m for m in imported if m.split(".")[0] in ("vllm", "torch")]

    # And the real entry point, as a user runs it.
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "spoolbatch", "status", "--json",
                           "--spool", str(spool.root)], cwd=REPO, env=env, capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert orjson.loads(proc.stdout)["jobs"][0]["job"] == "done1"
    assert not marker.exists()
    assert not [ln for ln in proc.stderr.decode().splitlines() if ln.rsplit("|", 1)[-1].strip().split(".")[0]
                in ("vllm", "torch")]


@pytest.mark.parametrize("args", [["submit", "{new}", "--json"], ["models", "--json"], ["cancel", "queued", "--json"],
                                  ["retry", "done1", "--json"], ["gc", "--json"], ["usage", "--json"]],
                         ids=lambda args: args[0])
def test_steering_commands_never_import_vllm_or_torch(spool: Spool, config: Config, tmp_path: Path,
                                                       args: list[str]) -> None:
    """Every command but run, each as a user runs it: its own process, on a spool with a finished job
    (one bad line, for retry) and a queued one (for cancel)."""
    drop(spool, "done1.jsonl", [chat_line(1), b"not json"])
    daemon = Daemon(config, echo=False)
    while daemon.loop_once().worked:
        pass
    drop(spool, "queued.jsonl", [chat_line(2)])
    new = write_jsonl(tmp_path / "new.jsonl", [chat_line(3)])
    env, marker = poisoned(tmp_path)
    argv = [a.format(new=new) for a in args]
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "spoolbatch", *argv, "--spool", str(spool.root)],
                          cwd=REPO, env=env, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    orjson.loads(proc.stdout)  # it answered
    assert not marker.exists(), f"imported: {marker.read_text()}"
    assert not heavy_imports(proc.stderr)


def test_the_servers_app_never_imports_vllm_or_torch(spool: Spool, tmp_path: Path) -> None:
    env, marker = poisoned(tmp_path)
    script = textwrap.dedent(f"""
        import sys
        from spoolbatch.config import load_config
        from spoolbatch.server.app import create_app
        create_app(load_config({str(spool.root)!r}, env={{}}))
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
        assert not heavy, heavy
        assert "spoolbatch.server.routes.batches" in sys.modules
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", script], cwd=REPO, env=env,
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert proc.stdout.decode().rstrip().endswith("ok")
    assert not marker.exists(), f"imported: {marker.read_text()}"
    assert not heavy_imports(proc.stderr)


def test_eta_is_shared_among_the_alive_workers_of_a_job() -> None:
    from spoolbatch.commands.catalog import JobInfo
    from spoolbatch.commands.status import with_workers
    from spoolbatch.store.heartbeat_record import Heartbeat
    from spoolbatch.store.jobstate import JobState
    from spoolbatch.store.liveness import Liveness, SeenWorker

    jobs = [JobInfo("big", JobState.RUNNING, eta_seconds=600.0), JobInfo("small", JobState.RUNNING, eta_seconds=60.0),
            JobInfo("idle", JobState.QUEUED)]
    workers = [SeenWorker(Heartbeat(job=job), liveness, 0.0) for liveness, job in (
        (Liveness.ALIVE, "big"), (Liveness.ALIVE, "big"), (Liveness.DEAD, "big"), (Liveness.ALIVE, "small"),
        (Liveness.ALIVE, None))]
    big, small, idle = with_workers(jobs, workers)
    assert (big.workers, big.eta_seconds) == (2, 300.0), "two alive workers: half the time left"
    assert (small.workers, small.eta_seconds) == (1, 60.0)
    assert (idle.workers, idle.eta_seconds) == (0, None)

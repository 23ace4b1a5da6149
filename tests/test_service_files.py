"""The examples/ deployment files: systemd units verify, the cron line's flock stops overlaps."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
UNITS = EXAMPLES / "systemd"
SPOOLBATCH_BIN = "/usr/local/bin/spoolbatch"


def directives(path: Path) -> dict[str, list[str]]:
    """Unit file ``Key=value`` lines as key -> values (Environment= etc. repeat)."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


@pytest.mark.parametrize("name", ["spoolbatch.service", "spoolbatch@.service"])
def test_unit_has_the_daemon_contract(name: str) -> None:
    d = directives(UNITS / name)
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert d["ExecStart"][0].split()[:2] == [SPOOLBATCH_BIN, "run"]
    assert "--spool" in d["ExecStart"][0] and "--once" not in d["ExecStart"][0]
    assert d["Restart"] == ["on-failure"] and d["KillSignal"] == ["SIGTERM"]
    assert d["KillMode"] == ["mixed"]  # SIGTERM to the daemon only; it stops its vLLM workers
    assert d["WatchdogSec"] == ["120"] and d["TimeoutStopSec"] == ["15min"]
    assert d["UMask"] == ["0077"] and d["User"] == ["spoolbatch"] and d["StateDirectory"] == ["spoolbatch"]
    assert d["NoNewPrivileges"] == ["yes"] and d["ProtectSystem"] == ["strict"] and d["PrivateTmp"] == ["yes"]
    assert "/var/lib/spoolbatch" in d["ReadWritePaths"]
    for breaks_cuda in ("PrivateDevices", "DevicePolicy", "DeviceAllow", "MemoryDenyWriteExecute"):
        assert breaks_cuda not in d


def test_template_pins_one_gpu() -> None:
    env = directives(UNITS / "spoolbatch@.service")["Environment"]
    assert "CUDA_VISIBLE_DEVICES=%i" in env and "CUDA_DEVICE_ORDER=PCI_BUS_ID" in env
    plain = directives(UNITS / "spoolbatch.service")["Environment"]
    assert not any(e.startswith("CUDA_VISIBLE_DEVICES") for e in plain)


def _verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize(("name", "as_name"), [("spoolbatch.service", "spoolbatch.service"),
                                                ("spoolbatch@.service", "spoolbatch@0.service")])
def test_systemd_analyze_verify(tmp_path: Path, name: str, as_name: str) -> None:
    # verify checks that ExecStart's binary exists; stand in for it where spoolbatch is not installed.
    stand_in = SPOOLBATCH_BIN if os.access(SPOOLBATCH_BIN, os.X_OK) else shutil.which("true")
    assert stand_in
    unit = tmp_path / as_name
    unit.write_text((UNITS / name).read_text().replace(SPOOLBATCH_BIN, stand_in))
    result = _verify(unit)
    ours = [line for line in (result.stdout + result.stderr).splitlines() if "spoolbatch" in line]
    assert result.returncode == 0 and ours == [], result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_would_catch_a_mistake(tmp_path: Path) -> None:
    unit = tmp_path / "spoolbatch.service"
    text = (UNITS / "spoolbatch.service").read_text().replace(SPOOLBATCH_BIN, shutil.which("true") or "")
    unit.write_text(text.replace("WatchdogSec=", "WatchdogSecs="))
    result = _verify(unit)
    assert "Unknown key" in result.stdout + result.stderr


def cron_command() -> str:
    """The command part of the one active crontab line."""
    lines = [ln for ln in (EXAMPLES / "cron").read_text().splitlines()
             if ln.strip() and not ln.lstrip().startswith("#") and not re.match(r"^\w+=", ln)]
    assert len(lines) == 1, lines
    return lines[0].split(None, 5)[5]


def test_cron_line_runs_once_under_flock() -> None:
    words = shlex.split(cron_command())
    assert words[:2] == ["flock", "-n"] and words[2].endswith(".lock")
    assert words[3] == "spoolbatch" and words[4:6] == ["run", "--once"] and "--spool" in words


@pytest.mark.skipif(shutil.which("flock") is None, reason="flock (util-linux) not installed")
def test_overlapping_cron_runs_do_not_pile_up(tmp_path: Path) -> None:
    # The crontab line as written, with the spool moved to tmp_path and spoolbatch replaced by
    # a stand-in that records it ran and then sleeps like a long job.
    line = cron_command().replace("/var/lib/spoolbatch", str(tmp_path))

    def as_run(mark: str) -> str:
        stand_in = f"sh -c 'echo started > {tmp_path / mark}; exec sleep 60'"
        return re.sub(r"spoolbatch run --once --spool \S+", stand_in, line)

    first = subprocess.Popen(as_run("first"), shell=True, start_new_session=True)
    try:
        for _ in range(500):
            if (tmp_path / "first").exists():
                break
            time.sleep(0.01)
        assert (tmp_path / "first").exists(), "the first run never started"
        second = subprocess.run(as_run("second"), shell=True, timeout=30)
        assert second.returncode == 1  # flock -n: the lock is busy, give up at once
        assert not (tmp_path / "second").exists()  # ...without running the command
        assert first.poll() is None  # and the first run was left alone
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    # Killed (as by kill -9), the first run left no stale lock: the next run goes ahead.
    # (The killed processes may take a moment to be reaped; the lock goes with the last of them.)
    deadline = time.monotonic() + 15
    while True:
        third = subprocess.run(as_run("third").replace("exec sleep 60", "true"), shell=True, timeout=30)
        if third.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert third.returncode == 0 and (tmp_path / "third").exists()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("flock") is None, reason="flock (util-linux) not installed")
def test_cron_line_with_the_real_daemon_runs_one_at_a_time(tmp_path: Path) -> None:
    """Two overlapping cron runs of the real `spoolbatch run --once`: one works, the other leaves at once."""
    import orjson

    from spoolbatch.store.spool import Spool

    spool = Spool(tmp_path / "spool")
    spool.init()
    with open(spool.inbox / "job.jsonl", "wb") as f:
        for i in range(300):
            f.write(orjson.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/completions",
                                  "body": {"model": "m", "prompt": f"p{i}"}}) + b"\n")
    os.utime(spool.inbox / "job.jsonl", (0, 0))
    spoolbatch = f"{sys.executable} -m spoolbatch"
    line = cron_command().replace("/var/lib/spoolbatch/cron.lock", str(tmp_path / "cron.lock")) \
        .replace("/var/lib/spoolbatch/cron.log", str(tmp_path / "cron.log")) \
        .replace("/var/lib/spoolbatch", str(spool.root)) \
        .replace("spoolbatch run --once", f"{spoolbatch} run --once --engine fake --fake-latency 0.01 "
                                           "--settle-seconds 0 --chunk-size 50")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    first = subprocess.Popen(line, shell=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while not list(spool.workers.glob("*.json")) and time.monotonic() < deadline:
            time.sleep(0.05)
        second = subprocess.run(line, shell=True, env=env, timeout=30)
        assert second.returncode == 1, "flock -n refused the overlapping run"
        assert first.wait(timeout=120) == 0
    finally:
        if first.poll() is None:
            first.kill()
    assert len(list(spool.workers.glob("*.json"))) == 1, "only one daemon ever worked"
    ckpt = orjson.loads(spool.checkpoint("job").read_bytes())
    assert ckpt["status"] == "completed" and ckpt["requests_done"] == 300


def test_serve_unit() -> None:
    d = directives(UNITS / "spoolbatch-serve.service")
    assert d["ExecStart"][0].split()[:2] == [SPOOLBATCH_BIN, "serve"]
    assert "--host 127.0.0.1" in d["ExecStart"][0] and "/var/lib/spoolbatch" in d["ExecStart"][0]
    assert d["User"] == ["spoolbatch"] and d["UMask"] == ["0077"] and d["NoNewPrivileges"] == ["yes"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_serve_unit_verifies(tmp_path: Path) -> None:
    stand_in = SPOOLBATCH_BIN if os.access(SPOOLBATCH_BIN, os.X_OK) else shutil.which("true")
    assert stand_in
    unit = tmp_path / "spoolbatch-serve.service"
    unit.write_text((UNITS / "spoolbatch-serve.service").read_text().replace(SPOOLBATCH_BIN, stand_in))
    result = _verify(unit)
    ours = [line for line in (result.stdout + result.stderr).splitlines() if "spoolbatch" in line]
    assert result.returncode == 0 and ours == [], result.stdout + result.stderr

"""The live view (`status --watch`) and `run`'s bars, rendered to a recording console."""

from __future__ import annotations

import re
import time
from pathlib import Path

from rich.console import Console

from spoolbatch.cli.live import Limits, RunProgress, job_rates, live_view
from spoolbatch.store.spool import Spool

from .conftest import chat_line, drop

NOW = 1_800_000_000.0


def _data() -> dict[str, object]:
    working = {"worker": "box-1", "liveness": "alive", "state": "working", "job": "scoring", "chunk": 13,
               "chunk_lines": [60001, 65000], "cuda_visible_devices": "0", "reason": None, "age_seconds": 0.8,
               "last_chunk": {"requests": 5000, "seconds": 125.0, "requests_per_second": 40.0,
                              "completion_tokens": 600_000},
               "gpu": {"available": True, "devices": [{"index": 0, "name": "L4", "memory_pct": 88.4,
                                                       "temperature_c": 71, "utilization_pct": 97}]}}
    waiting = {"worker": "box-2", "liveness": "alive", "state": "waiting", "job": None, "age_seconds": 1.0,
               "reason": "GPU 1 temperature 87°C > 85°C",
               "gpu": {"available": True, "devices": [{"index": 1, "name": "L4", "memory_pct": 41.0,
                                                       "temperature_c": 87, "utilization_pct": 3}]}}
    jobs = [{"job": "scoring", "status": "running", "progress": 0.3, "total_lines": 200_000,
             "lines_consumed": 60_000, "requests_done": 59_987, "requests_failed": 13, "tokens": 9_100_000,
             "eta_seconds": 3310.0, "workers": 1, "started_at": NOW - 1490, "busy_seconds": 1420.0},
            {"job": "later", "status": "queued", "progress": 0.0, "total_lines": 0, "requests_done": 0,
             "requests_failed": 0, "tokens": 0, "eta_seconds": None}]
    return {"spool": "/srv/spool", "workers": [working, waiting], "queue": {"jobs": 1}, "jobs": jobs}


def _text(renderable: object, width: int = 140) -> tuple[str, Console]:
    console = Console(record=True, width=width, force_terminal=True, color_system="truecolor")
    console.print(renderable)
    return console.export_text(), console


def test_a_running_job_has_a_bar_its_rates_elapsed_time_and_eta() -> None:
    text, _ = _text(live_view(_data(), Limits(95, 85), now=NOW))
    (row,) = [line for line in text.splitlines() if line.startswith("scoring")]
    assert "━" in row and "30.0%" in row and "60,000/200,000" in row
    assert "40.0" in row and "4,800" in row, "requests/s and tokens/s of the worker's last chunk"
    assert "24m50s" in row and "55m10s" in row, "elapsed and ETA"
    (queued,) = [line for line in text.splitlines() if line.startswith("later")]
    assert "━" not in queued and "queued" in queued


def test_gpu_bars_against_the_gates_limits_and_a_waiting_reason_stands_out() -> None:
    text, console = _text(live_view(_data(), Limits(95, 85), now=NOW))
    assert "memory (gate at 95%)" in text and "temperature (gate at 85°C)" in text
    (hot,) = [line for line in text.splitlines() if line.startswith("1 L4")]
    assert "━" in hot and "87°C" in hot and "41.0%" in hot
    assert "waiting: GPU 1 temperature 87°C > 85°C" in text
    html = console.export_html(inline_styles=True)
    assert "background-color" in html.split("waiting: GPU 1")[0].rsplit("<span", 1)[-1], "highlighted"


def test_job_rates_fall_back_to_the_jobs_own_average_when_nobody_works_on_it() -> None:
    job = {"job": "j", "lines_consumed": 1000, "tokens": 50_000, "busy_seconds": 20.0}
    assert job_rates(job, []) == (50.0, 2500.0)
    assert job_rates({"job": "j"}, []) == (None, None)


def test_run_progress_draws_a_bar_per_job_and_a_line_when_it_ends() -> None:
    console = Console(record=True, width=120, force_terminal=True, color_system="truecolor")
    bars = RunProgress(console=console)
    with bars.progress:
        bars.update("big", 1500, 3000, requests_per_second=250.0, tokens_per_second=4000.0, eta_seconds=6)
        bars.progress.refresh()
        bars.update("big", 3000, 3000, status="completed")
    text = console.export_text()
    assert "big" in text and "50.0%" in text and "250 req/s" in text and "4,000 tok/s" in text
    assert "big: completed, 3,000 of 3,000 lines" in text


def test_status_watch_renders_live_data_from_a_spool(spool: Spool, tmp_path: Path) -> None:
    from spoolbatch.commands.status import status
    from spoolbatch.config import load_config
    from spoolbatch.worker.daemon import Daemon

    drop(spool, "work.jsonl", [chat_line(i) for i in range(30)])
    config = load_config(spool.root, env={}, engine="fake", chunk_size=10, settle_seconds=0)
    daemon = Daemon(config, echo=False)
    daemon.heartbeat.write()
    assert daemon.loop_once().worked
    daemon.heartbeat.write()
    text, _ = _text(live_view(status(spool).to_dict(), now=time.time()))
    (row,) = [line for line in text.splitlines() if line.startswith("work ")]
    assert "running" in row and "━" in row and "10/30" in row


def test_run_prints_plain_lines_when_stderr_is_not_a_terminal(spool: Spool) -> None:
    import subprocess
    import sys

    from .conftest import REPO

    drop(spool, "work.jsonl", [chat_line(i) for i in range(30)])
    done = subprocess.run([sys.executable, "-m", "spoolbatch", "run", "--once", "--engine", "fake", "--chunk-size",
                           "10", "--settle-seconds", "0", "--spool", str(spool.root)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "work: chunk 3: lines 21-30" in done.stderr and "work: completed" in done.stderr
    assert "━" not in done.stderr and "\x1b[" not in done.stderr


def test_run_in_a_terminal_draws_a_bar_per_job(spool: Spool) -> None:
    import os
    import pty
    import subprocess
    import sys

    from .conftest import REPO

    drop(spool, "work.jsonl", [chat_line(i) for i in range(30)])
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120"}
    env.pop("NO_COLOR", None)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "spoolbatch", "run", "--once", "--engine", "fake",
                                 "--chunk-size", "10", "--settle-seconds", "0", "--spool", str(spool.root)],
                                cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=slave)
        os.close(slave)
        screen = b""
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # the pty closes when the daemon exits
                break
            if not data:
                break
            screen += data
        assert proc.wait(timeout=120) == 0
    finally:
        os.close(master)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.decode(errors="replace"))  # colours, cursor moves
    assert "━" in text and "work" in text, text
    assert "work: completed, 30 of 30 lines" in text
    assert "spoolbatch[" not in text, "no plain per-chunk lines under the bars"

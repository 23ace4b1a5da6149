"""The web page: its weight, the time to render a 10,000-chunk job, and the README's screenshots.

A real `spoolbatch serve` and a real fake-engine `spoolbatch run` on a fresh spool: a finished job
with bad lines, a running one, a batch created over the API with metadata; a GPU history recorded
from fake NVML readings (a card filling and warming over three hours, as tests/test_gpu_history.py
records them; this machine has no GPU). Headless Chromium (tests/browser.py) loads the pages.

- weight: the bytes of the HTML, script, stylesheets and uPlot as served (and gzipped, for a proxy
  that compresses);
- a job whose log holds 10,000 chunk events (three workers) is opened ``--repeat`` times: the
  render time after its data arrived and the load time from the page's start, median and worst;
- ``--shots DIR`` saves the list, a job and the workers view (laptop) and the list on a phone.

``--quick`` (what ``run_all.py --quick`` runs): a 1,000-chunk job opened once, smaller jobs beside it;
without Chromium it says so and stops before the browser, as tests/test_serve_page.py skips.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from common import save, table  # noqa: E402

from spoolbatch.server import page as assets  # noqa: E402
from spoolbatch.store.checkpoint import Checkpoint  # noqa: E402
from spoolbatch.store.heartbeat_record import Heartbeat  # noqa: E402
from spoolbatch.store.joblog import JobEvent  # noqa: E402
from spoolbatch.store.jobstate import JobState  # noqa: E402
from spoolbatch.store.spool import Spool  # noqa: E402
from spoolbatch.worker.gpuhistory import GpuHistoryWriter  # noqa: E402
from spoolbatch.worker.heartbeat import HeartbeatWriter  # noqa: E402
from tests.browser import CHROMIUM, Browser  # noqa: E402
from tests.conftest import chat_line, daemon_cmd, drop, wait_for  # noqa: E402
from tests.serving import start_server  # noqa: E402


def weight() -> dict[str, dict[str, int]]:
    """Bytes of each file as served, raw and gzipped."""
    files = {"index.html": assets.shell(0).encode(), **{n: a.body for n, a in assets.assets().items()
                                                           if not n.endswith("LICENSE")}}
    return {name: {"bytes": len(body), "gzip": len(gzip.compress(body, 6))} for name, body in files.items()}


def big_job(spool: Spool, chunks: int = 10_000) -> None:
    """A finished job whose log holds ``chunks`` chunk events by three workers, as the daemon writes them."""
    start = time.time() - chunks * 3.0
    lines = bytearray()
    for i in range(chunks):
        lines += json.dumps({"ts": round(start + 3.0 * i, 3), "event": JobEvent.CHUNK_MERGED.value, "job": "big",
                             "chunk": i + 1, "first_line": 5 * i + 1, "last_line": 5 * i + 5, "answered": 5,
                             "failed": 0, "seconds": 2.5 + (i % 7) / 10, "worker": f"gpu-box-{i % 3}",
                             "prompt_tokens": 400 + i % 50, "completion_tokens": 300 + i % 90}).encode() + b"\n"
    spool.log("big").write_bytes(bytes(lines))
    Checkpoint(job="big", status=JobState.COMPLETED, total_lines=5 * chunks, lines_consumed=5 * chunks,
               chunks=chunks, requests_done=5 * chunks, created_at=start, started_at=start, finished_at=time.time(),
               busy_seconds=2.8 * chunks).save(spool.checkpoint("big"))


def gpu_history(spool: Spool) -> HeartbeatWriter:
    """A heartbeat of this process with three hours of fake readings of one 16 GB card behind it."""
    beat = HeartbeatWriter(spool, 30.0)
    now = time.time()
    writer = GpuHistoryWriter(spool.gpu_history(beat.id), clock=lambda: now)
    for k in range(3 * 3600 // 10):
        t = now - 3 * 3600 + 10 * k
        phase = k / 1080
        mem = 30 + 55 * min(1.0, phase * 1.6) + (8 if 700 < k < 760 else 0)  # a peak near the gate's 95 %
        temp = 45 + 35 * min(1.0, phase * 1.4) + (4 if k % 97 < 6 else 0)
        gpu = {"available": True, "reason": None, "devices": [{"index": 0, "name": "NVIDIA A4000 16GB",
               "memory_used": int(mem / 100 * 16 * 2**30), "memory_total": 16 * 2**30, "memory_pct": round(mem, 1),
               "temperature_c": int(temp), "utilization_pct": 97}]}
        writer.record(Heartbeat(gpu=gpu, gpu_read_at=t))
        beat.update(gpu=gpu, gpu_read_at=t, state="working", engine="vllm", model="google/gemma-3-4b-it",
                    gpu_limits={"memory_pct": 95.0, "temperature_c": 85.0})
    beat.gpu_history.min_spacing = 1e9  # the readings above are all it shows
    beat.write()
    return beat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--shots", type=Path, help="save screenshots here (the README's are in docs/)")
    ap.add_argument("--quick", action="store_true", help="a smoke test: small jobs, the big one opened once")
    args = ap.parse_args()
    chunks, lines, uploaded = (1_000, 200, 200) if args.quick else (10_000, 1200, 4000)
    if args.quick:
        args.repeat = 1
    browse = CHROMIUM is not None or not args.quick or bool(os.environ.get("SPOOLBATCH_REQUIRE_BROWSER"))
    tmp = Path(tempfile.mkdtemp(prefix="spoolbatch-page-"))
    spool = Spool(tmp / "spool")
    spool.init()
    records: list[object] = [chat_line(i) for i in range(lines)]
    for n in (17, 230, 231, 804):
        records.insert(n, "{not json")
    records.insert(400, {"custom_id": "no-body", "method": "POST", "url": "/v1/chat/completions"})
    drop(spool, "nightly-scoring.jsonl", records)
    big_job(spool, chunks)
    beat = gpu_history(spool)
    keep_alive = threading.Event()
    threading.Thread(target=lambda: [beat.write() for _ in iter(lambda: keep_alive.wait(5), True)],
                     daemon=True).start()
    daemon = subprocess.Popen(daemon_cmd(spool, "--chunk-size", "50", "--fake-latency", "0.004"), cwd=REPO,
                              stderr=subprocess.DEVNULL)
    server = start_server(str(spool.root))
    figures: dict[str, Any] = {"weight": weight()}
    try:
        wait_for(lambda: (c := Checkpoint.load(spool.checkpoint("nightly-scoring"))) is not None and c.status.final,
                 timeout=300)
        import httpx

        up = httpx.post(server.url + "/v1/files", files={"file": ("web.jsonl", b"".join(
            json.dumps(chat_line(i)).encode() + b"\n" for i in range(uploaded)))}, data={"purpose": "batch"}).json()
        httpx.post(server.url + "/v1/batches", json={"input_file_id": up["id"], "endpoint": "/v1/chat/completions",
                                                     "metadata": {"owner": "web-app", "ticket": "OPS-1412"}})
        renders: list[float] = []
        loads: list[float] = []
        if not browse:
            print("no Chromium (`apt-get install chromium`): the page's times are not measured")
        else:
            with Browser(tmp / "chromium", width=1280, height=900) as b:
                for _ in range(args.repeat):
                    b.goto(server.url + "/jobs/big")
                    renders.append(float(b.eval("document.body.dataset.renderMs")))
                    loads.append(float(b.eval("document.body.dataset.loadMs")))
                story = httpx.get(server.url + "/v1/spoolbatch/batches/batch_big/story", timeout=60).content
                figures["big_job"] = {"chunks": chunks, "story_bytes": len(story),
                                      "story_gzip": len(gzip.compress(story)), "render_ms": renders, "load_ms": loads}
                if args.shots:
                    args.shots.mkdir(parents=True, exist_ok=True)
                    b.wait("!!document.querySelector('#chart-rps canvas')")
                    b.goto(server.url + "/")
                    b.wait("document.querySelectorAll('#jobtable tr.job[data-status=in_progress]').length > 0 &&"
                           " !!document.querySelector('.chart.gpu canvas')", timeout=120)
                    time.sleep(1.0)
                    b.eval("document.querySelector('#jobs').scrollIntoView()")
                    b.screenshot(args.shots / "page-jobs.png", full=False)
                    b.eval("window.scrollTo(0, 0)")
                    b.screenshot(args.shots / "page-workers.png", full=False)
                    b.goto(server.url + "/jobs/nightly-scoring")
                    b.wait("!!document.querySelector('#chart-rps canvas')")
                    b.screenshot(args.shots / "page-job.png")
                    b.size(390, 844, mobile=True, scale=2)
                    b.goto(server.url + "/")
                    b.eval("document.querySelector('#jobs').scrollIntoView()")
                    b.screenshot(args.shots / "page-phone.png", full=False)
    finally:
        keep_alive.set()
        server.stop()
        daemon.terminate()
        daemon.wait(timeout=30)
    w = figures["weight"]
    table("The page's files as served", [(n, f"{v['bytes']:,}", f"{v['gzip']:,}") for n, v in w.items()] +
          [("total", f"{sum(v['bytes'] for v in w.values()):,}", f"{sum(v['gzip'] for v in w.values()):,}")],
          ("file", "bytes", "gzip"))
    if renders:
        big = figures["big_job"]
        table(f"A {chunks:,}-chunk job's page", [
            ("render after its data (ms)", f"{statistics.median(renders):.0f}", f"{max(renders):.0f}"),
            ("load from the page's start (ms)", f"{statistics.median(loads):.0f}", f"{max(loads):.0f}"),
            ("story answer (bytes)", f"{big['story_bytes']:,}", f"gzip {big['story_gzip']:,}")],
              ("", "median", "worst"))
    print(f"figures: {save('page', figures)}  load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

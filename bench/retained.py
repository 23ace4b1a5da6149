"""Costs that must follow what is asked, not what the spool keeps: a month of finished jobs.

1. A spool of ``--jobs`` finished jobs (30,000: a month of a busy box) is built by the library
   (records, checkpoints, results, logs written with the store's own types, not by the daemon),
   one in ten an HTTP batch with an uploaded input and metadata, and a few running and queued.
2. Timed on it, each in the way people and programs call it: `spoolbatch status`, `status
   --json` and `list --json` as commands (a fresh process each, best and median of
   ``--repeat``); through `spoolbatch serve`, ``GET /v1/batches?limit=20`` (the first page and
   one in the middle, ``after`` a batch half-way down), ``GET /v1/files`` and the web page's data
   call (``GET /v1/spoolbatch/status``): time per call and bytes of the answer.
3. The daemon's overhead per job: ``--daemon-jobs`` one-line jobs through a fake-engine daemon
   (zero latency, so every millisecond is spoolbatch's own) in a fresh process, all of them in the
   inbox at once, on an empty spool and on the retained one; wall time of its loop divided by the
   jobs (start-up left out).

Before timing, one pass of the hourly clean-up runs on the built spool, as a daemon would have.

Figures are printed and written to bench/out/retained.json; nothing is asserted. The script runs
against whichever spoolbatch ``python`` imports (PYTHONPATH=/tmp/before for an older tree).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import save, table  # noqa: E402

LINE = (b'{"custom_id":"r%d","method":"POST","url":"/v1/chat/completions","body":{"model":"bench-model",'
        b'"messages":[{"role":"user","content":"Score candidate %d."}],"max_tokens":8}}\n')
DAY = 86400.0

DAEMON = r"""
import json, os, sys, time
from pathlib import Path
from spoolbatch.config import load_config
from spoolbatch.worker import gcpolicy
from spoolbatch.worker.daemon import Daemon
from spoolbatch.store.spool import Spool
spool_dir, n, budget = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
sp = Spool(spool_dir)
line = json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
                   "body": {"model": "bench-model", "messages": [{"role": "user", "content": "hi"}],
                            "max_tokens": 4}}) + "\n"
for i in range(n):
    p = sp.inbox / f"one-{i:05d}.jsonl"
    p.write_text(line)
    os.utime(p, (1000 + i, 1000 + i))
cfg = load_config(spool_dir, env={}, engine="fake", settle_seconds=0, heartbeat_interval=1)
d = Daemon(cfg, echo=False)
gcpolicy.quiet()
t = time.perf_counter()
jobs = 0
while time.perf_counter() - t < budget and d.loop_once().worked:
    jobs += 1
print(json.dumps({"seconds": time.perf_counter() - t, "loops": jobs}))
"""


def upload_id(created: float, i: int) -> str:
    """An upload's id as this spoolbatch makes them: with the time it was made where it puts it in."""
    from spoolbatch.store import files

    try:
        return str(files.new_file_id(created))  # type: ignore[call-arg]
    except TypeError:  # an older release: random digits
        return f"file-{i:024x}"


def build(root: Path, n: int) -> dict[str, Any]:
    """A spool holding ``n`` finished jobs over the last 30 days, written with the store's types."""
    from spoolbatch.store.batches import BatchRecord
    from spoolbatch.store.checkpoint import Checkpoint
    from spoolbatch.store.files import FileRecord
    from spoolbatch.store.jobstate import JobState
    from spoolbatch.store.spool import Spool

    sp = Spool(root)
    sp.init()
    sp.ensure_api_dirs()
    now = time.time()
    t0 = now - 30 * DAY
    states = [JobState.COMPLETED] * 17 + [JobState.FAILED, JobState.CANCELLED, JobState.EXPIRED]
    t = time.perf_counter()

    def put(path: Path, data: bytes, when: float) -> None:
        with open(path, "wb") as f:
            f.write(data)
        os.utime(path, (when, when))

    for i in range(n):
        job = f"job-{i:06d}"
        created = t0 + i * (30 * DAY - 3600) / n
        finished = created + 40.0
        lines = b"".join(LINE % (k, i) for k in range(3))
        results = b"".join(b'{"id":"batch_req_%d_%d","custom_id":"r%d","response":{"status_code":200,'
                           b'"body":{"object":"chat.completion","choices":[]}},"error":null}\n' % (i, k, k)
                           for k in range(3))
        state = states[i % len(states)]
        ckpt = Checkpoint(job=job, status=state, input_name=f"{job}.jsonl", input_bytes=len(lines), total_lines=3,
                          lines_consumed=3, bytes_consumed=len(lines), results_bytes=len(results), ids_count=3,
                          requests_done=3, chunks=1, model="bench-model", url="/v1/chat/completions",
                          prompt_tokens=30, completion_tokens=24, created_at=created, started_at=created + 1,
                          updated_at=finished, finished_at=finished, busy_seconds=0.5, worker="bench-1")
        put(sp.archived_input(job), lines, created)
        put(sp.results(job), results, finished)
        put(sp.ids(job), bytes(24), finished)
        put(sp.checkpoint(job), orjson.dumps(ckpt.to_dict(), option=orjson.OPT_INDENT_2) + b"\n", finished)
        put(sp.log(job), b'{"ts":%.3f,"event":"claimed","job":"%s"}\n{"ts":%.3f,"event":"completed","job":"%s"}\n'
            % (created, job.encode(), finished, job.encode()), finished)
        if i % 10 == 0:  # an HTTP batch: an upload and a record with metadata
            upload = FileRecord(upload_id(created, i), f"{job}.jsonl", len(lines), 3, "batch", created)
            put(sp.file_content(upload.id), lines, created)
            put(sp.file_meta(upload.id), orjson.dumps(asdict(upload)), created)
            record = BatchRecord(job, "/v1/chat/completions", upload.id, "24h", {"team": f"t{i % 7}"}, created,
                                 created + DAY, requests=3, model="bench-model")
            put(sp.batch_record(job), orjson.dumps(asdict(record)), created)
    for k in range(3):  # a few queued
        put(sp.inbox / f"waiting-{k}.jsonl", LINE % (0, k), now - 60 + k)
    took = time.perf_counter() - t
    return {"jobs": n, "build_seconds": round(took, 1)}


def clean_up(root: Path) -> float:
    """One pass of the clean-up the daemon runs hourly (nothing is old enough to go; what it keeps for
    `status` where this spoolbatch keeps anything: the job index, the week's usage, the disk figure)."""
    from spoolbatch.store.cleanup import Policy, collect
    from spoolbatch.store.spool import Spool

    t = time.perf_counter()
    collect(Spool(root), Policy())
    return time.perf_counter() - t


BUDGET = 30.0  # seconds a measurement may take: slow ones (the older tree's) are repeated less


def timed_command(args: list[str], repeat: int) -> dict[str, Any]:
    """Run ``spoolbatch ARGS`` up to ``repeat`` times (fewer past ``BUDGET``); wall seconds (best,
    median), runs and bytes of its output."""
    times, size = [], 0
    while len(times) < repeat and sum(times) < BUDGET:
        t = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "spoolbatch", *args], capture_output=True,
                              env={**os.environ, "COLUMNS": "200"})
        times.append(time.perf_counter() - t)
        if done.returncode != 0:
            raise SystemExit(f"spoolbatch {' '.join(args)} failed: {done.stderr.decode()[-400:]}")
        size = len(done.stdout)
    return {"best_s": round(min(times), 3), "median_s": round(statistics.median(times), 3), "runs": len(times),
            "bytes": size}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def timed_get(client: httpx.Client, path: str, repeat: int) -> dict[str, Any]:
    """GET ``path`` up to ``repeat`` times (fewer past ``BUDGET``; after one warm-up): milliseconds (best,
    median), calls and bytes."""
    client.get(path).raise_for_status()
    times, size = [], 0
    while len(times) < repeat and sum(times) < BUDGET:
        t = time.perf_counter()
        r = client.get(path)
        times.append(time.perf_counter() - t)
        r.raise_for_status()
        size = len(r.content)
    return {"best_ms": round(1000 * min(times), 1), "median_ms": round(1000 * statistics.median(times), 1),
            "calls": len(times), "bytes": size}


def http_figures(root: Path, n: int, repeat: int) -> dict[str, Any]:
    """The list routes and the page's data call through a real `spoolbatch serve`."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "spoolbatch", "serve", "--spool", str(root), "--port",
                               str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=120) as client:
            for _ in range(600):
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
            middle = f"batch_job-{n // 2:06d}"
            out = {"batches first page": timed_get(client, "/v1/batches?limit=20", repeat),
                   "batches middle page": timed_get(client, f"/v1/batches?limit=20&after={middle}", repeat),
                   "files": timed_get(client, "/v1/files", repeat),
                   "files page": timed_get(client, "/v1/files?limit=20", repeat),
                   # the summary and a page of batches (an older server answers its status, every job in it)
                   "page data (status?limit=20)": timed_get(client, "/v1/spoolbatch/status?limit=20", repeat)}
            if client.get("/v1/spoolbatch/workers").status_code == 200:  # the page's other call, where there is one
                out["page workers"] = timed_get(client, "/v1/spoolbatch/workers", repeat)
            page = client.get(f"/v1/batches?limit=20&after={middle}").json()
            out["middle page starts at"] = page["first_id"]
            return out
    finally:
        server.terminate()
        server.wait(timeout=30)


DAEMON_BUDGET = 300.0  # seconds: a slow tree does fewer of the jobs (the figure is per job done)


def daemon_overhead(root: Path, jobs: int) -> dict[str, Any]:
    """Milliseconds per one-line job of a fake-engine daemon draining ``jobs`` files (a fresh process), or
    as many as it did in ``DAEMON_BUDGET`` seconds."""
    done = subprocess.run([sys.executable, "-c", DAEMON, str(root), str(jobs), str(DAEMON_BUDGET)],
                          capture_output=True, check=True)
    figures = orjson.loads(done.stdout.splitlines()[-1])
    return {"jobs": figures["loops"], "seconds": round(figures["seconds"], 2),
            "ms_per_job": round(1000 * figures["seconds"] / max(1, figures["loops"]), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=30_000, help="finished jobs the spool retains")
    parser.add_argument("--daemon-jobs", type=int, default=1000, help="one-line jobs for the per-job overhead")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2,000 jobs, 50 daemon jobs, 2 repeats")
    parser.add_argument("--keep", type=Path, help="build the spool here and keep it (reused when it exists)")
    parser.add_argument("--label", default="", help="a name for this run in the figures file")
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.daemon_jobs, args.repeat = 2000, 50, 2
    import spoolbatch

    print(f"spoolbatch from {Path(spoolbatch.__file__).parent}; load average {os.getloadavg()[0]:.2f}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="spoolbatch-retained-"))
    root = args.keep or work / "spool"
    try:
        figures: dict[str, Any] = {"label": args.label, "load_at_start": round(os.getloadavg()[0], 2)}
        if args.keep is not None and (root / "done").is_dir():
            figures["build"] = {"jobs": args.jobs, "build_seconds": None}
        else:
            figures["build"] = build(root, args.jobs)
        cleaned = clean_up(root)
        again = clean_up(root)
        figures["build"]["clean_up_seconds"] = [round(cleaned, 2), round(again, 2)]
        print(f"built {args.jobs:,} finished jobs in {figures['build']['build_seconds']}s; the hourly clean-up "
              f"took {cleaned:.1f}s, then {again:.1f}s", flush=True)
        spool = ["--spool", str(root)]
        commands = {"status": timed_command(["status", *spool], args.repeat),
                    "status --json": timed_command(["status", "--json", *spool], args.repeat),
                    "list --json": timed_command(["list", "--json", *spool], max(1, args.repeat // 2))}
        figures["commands"] = commands
        table(f"commands on {args.jobs:,} retained jobs", [(k, v["best_s"], v["median_s"], f"{v['bytes']:,}")
                                                          for k, v in commands.items()],
              ("command", "best s", "median s", "bytes"))
        http = http_figures(root, args.jobs, args.repeat * 4)
        figures["http"] = http
        table("spoolbatch serve", [(k, v["best_ms"], v["median_ms"], f"{v['bytes']:,}") for k, v in http.items()
                                   if isinstance(v, dict)], ("call", "best ms", "median ms", "bytes"))
        fresh = work / "fresh"
        subprocess.run([sys.executable, "-m", "spoolbatch", "init", "--spool", str(fresh)], check=True,
                       capture_output=True)
        per_job = {"empty spool": daemon_overhead(fresh, args.daemon_jobs),
                   f"beside {args.jobs:,} retained": daemon_overhead(root, args.daemon_jobs)}
        figures["per_job"] = per_job
        table("daemon overhead", [(k, v["jobs"], v["seconds"], v["ms_per_job"]) for k, v in per_job.items()],
              ("one-line jobs", "jobs", "seconds", "ms a job"))
        figures["load_at_end"] = round(os.getloadavg()[0], 2)
        save("retained" + (f"-{args.label}" if args.label else ""), figures)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

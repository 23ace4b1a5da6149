"""Pipeline overhead: the fake engine with zero latency, so every second is spoolbatch's own.

Figures: requests/s through the whole pipeline (parse, validate, respond, write,
checkpoint) on a 200,000-request job, and the daemon's peak RSS for jobs of 10,000,
200,000 and 1,000,000 requests (limits raised for the run), each in a fresh process.
Then the 200,000-request job through the command a user runs, `spoolbatch run --once
--workers N`, for 1 worker and one per core: wall time from the command's start to its
exit (imports and start-up included), since chunks of one job are claimed by any worker.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import OUT, save, table, write_input

CHILD = r"""
import os, resource, sys, time
from spoolbatch.config import load_config
from spoolbatch.worker import gcpolicy
from spoolbatch.worker.daemon import Daemon
from spoolbatch.engines.fake import FakeEngine
from spoolbatch.store.spool import Spool
spool_dir, src, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3])
sp = Spool(spool_dir); sp.init()
os.link(src, sp.inbox / "bench.jsonl")
os.utime(sp.inbox / "bench.jsonl", (0, 0))
cfg = load_config(spool_dir, env={}, engine="fake", chunk_size=chunk, settle_seconds=0, heartbeat_interval=1,
                  max_requests_per_job=10**8, max_job_bytes=1 << 40)
inside = [0.0]

class Timed(FakeEngine):
    def run(self, requests):
        t = time.process_time()
        try:
            return super().run(requests)
        finally:
            inside[0] += time.process_time() - t

d = Daemon(cfg, engine_factory=Timed, echo=False)
gcpolicy.quiet()  # what Daemon.run does first
r0 = resource.getrusage(resource.RUSAGE_SELF)
t = time.perf_counter()
while d.loop_once().worked:
    pass
dt = time.perf_counter() - t
r1 = resource.getrusage(resource.RUSAGE_SELF)
cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
print(dt, r1.ru_maxrss, cpu, inside[0])
"""


def run(src: Path, chunk: int) -> tuple[float, int, float, float]:
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        out = subprocess.run([sys.executable, "-c", CHILD, str(Path(tmp) / "spool"), str(src), str(chunk)],
                             check=True, capture_output=True, text=True).stdout.split()
    return float(out[0]), int(out[1]) * 1024, float(out[2]), float(out[3])


def run_workers(src: Path, chunk: int, workers: int) -> tuple[float, float]:
    """Wall seconds of `spoolbatch run --once --workers N --engine fake` on a copy of ``src``, and the
    job's own seconds from its claim to its completion (the checkpoint's started_at, finished_at)."""
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        spool = Path(tmp) / "spool"
        exe = [sys.executable, "-m", "spoolbatch"]
        subprocess.run([*exe, "init", "--spool", str(spool)], check=True, capture_output=True)
        os.link(src, spool / "inbox" / "bench.jsonl")
        os.utime(spool / "inbox" / "bench.jsonl", (0, 0))
        env = {**os.environ, "SPOOLBATCH_MAX_REQUESTS_PER_JOB": str(10**8),
               "SPOOLBATCH_MAX_JOB_BYTES": str(1 << 40)}
        t = time.perf_counter()
        subprocess.run([*exe, "run", "--once", "--workers", str(workers), "--engine", "fake", "--spool", str(spool),
                        "--chunk-size", str(chunk), "--settle-seconds", "0", "--poll-interval", "0.05", "-q"],
                       check=True, capture_output=True, env=env)
        seconds = time.perf_counter() - t
        done = subprocess.run([*exe, "list", "--json", "--spool", str(spool)], check=True, capture_output=True)
        (job,) = json.loads(done.stdout)
        assert job["status"] == "completed" and job["requests_done"] == int(src.stem.split("-")[-1]), job
        ckpt = json.loads((spool / "done" / "bench.checkpoint.json").read_bytes())
    return seconds, ckpt["finished_at"] - ckpt["started_at"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10000,200000,1000000")
    parser.add_argument("--chunk-size", type=int, default=5000)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows, figures = [], {"chunk_size": args.chunk_size, "runs": []}
    for n in sizes:
        src = write_input(OUT / "inputs" / f"chat-{n}.jsonl", n)
        seconds, rss, cpu, fake = run(src, args.chunk_size)
        rps = n / seconds
        figures["runs"].append({"requests": n, "seconds": round(seconds, 2), "requests_per_second": round(rps),
                                "cpu_seconds": round(cpu, 2), "requests_per_cpu_second": round(n / cpu),
                                "fake_engine_cpu_seconds": round(fake, 2),
                                "requests_per_cpu_second_without_fake_engine": round(n / (cpu - fake)),
                                "peak_rss_mb": round(rss / 2**20, 1)})
        rows.append((f"{n:,}", f"{seconds:.1f}", f"{rps:,.0f}", f"{cpu:.1f}", f"{n / cpu:,.0f}",
                     f"{fake / cpu:.0%}", f"{n / (cpu - fake):,.0f}", f"{rss / 2**20:.0f}"))
    table("pipeline overhead, fake engine, zero latency (wall, and CPU time of the daemon process)", rows,
          ("requests", "seconds", "requests/s", "CPU s", "requests/CPU-s", "in fake engine",
           "requests/CPU-s without it", "peak RSS MB"))
    target = next((r for r in figures["runs"] if r["requests"] == 200_000), figures["runs"][-1])
    print(f"target >= 50,000 requests/s: {target['requests_per_second']:,} "
          f"({target['requests_per_second'] / 50_000:.2f}x of target)")
    big = figures["runs"][-1]
    print(f"target flat memory < 200 MB at the largest job: {big['peak_rss_mb']:.0f} MB at {big['requests']:,} "
          f"({200 / big['peak_rss_mb']:.1f}x under the target)")
    n = 200_000 if 200_000 in sizes else sizes[-1]
    src = write_input(OUT / "inputs" / f"chat-{n}.jsonl", n)
    rows = []
    figures["workers"] = []
    for workers in sorted({1, os.cpu_count() or 1}):
        seconds, job_seconds = run_workers(src, args.chunk_size, workers)
        figures["workers"].append({"workers": workers, "requests": n, "seconds": round(seconds, 2),
                                   "requests_per_second": round(n / seconds), "job_seconds": round(job_seconds, 2),
                                   "job_requests_per_second": round(n / job_seconds)})
        rows.append((str(workers), f"{n:,}", f"{seconds:.1f}", f"{n / seconds:,.0f}", f"{job_seconds:.1f}",
                     f"{n / job_seconds:,.0f}"))
    table("`spoolbatch run --once --workers N --engine fake`, one job: the command's wall time (start-up "
          "included), and the job's from claim to completion", rows,
          ("workers", "requests", "command s", "requests/s", "job s", "job requests/s"))
    best = max(figures["workers"], key=lambda w: w["job_requests_per_second"])
    print(f"target >= 50,000 requests/s with every core working on the job: {best['job_requests_per_second']:,} "
          f"claim to completion, {best['requests_per_second']:,} with start-up, with {best['workers']} worker(s) "
          f"({best['job_requests_per_second'] / 50_000:.2f}x / {best['requests_per_second'] / 50_000:.2f}x "
          "of target)")
    figures["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores); the CPU-time "
          "rate is the one to compare across loads")
    print(f"figures: {save('overhead', figures)}")


if __name__ == "__main__":
    main()

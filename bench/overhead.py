"""Pipeline overhead: the fake engine with zero latency, so every second is spoolbatch's own.

Figures: requests/s through the whole pipeline (parse, validate, respond, write,
checkpoint) on a 200,000-request job, and the daemon's peak RSS for jobs of 10,000,
200,000 and 1,000,000 requests (limits raised for the run), each in a fresh process.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import OUT, save, table, write_input

CHILD = r"""
import os, resource, sys, time
from spoolbatch.config import load_config
from spoolbatch.daemon import Daemon
from spoolbatch.engines.fake import FakeEngine
from spoolbatch.spool import Spool
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
    figures["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores); the CPU-time "
          "rate is the one to compare across loads")
    print(f"figures: {save('overhead', figures)}")


if __name__ == "__main__":
    main()

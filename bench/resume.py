"""Resume cost: from a restarted daemon's start to the first request reaching the engine.

A 200,000-request job is run with the fake engine and stopped cleanly after 5%, 50% and
95% of its chunks (a snapshot of the spool each time). Each snapshot is then restarted in
a fresh process: the clock starts before ``Daemon(...)`` is built and stops when the
engine's ``run`` is first called. Two cases per point: after a clean stop (the next chunk
is planned afresh), and after a crash inside a chunk (a planned chunk with no committed
part, whose lock is free: it is taken over). Target: under 1 s, independent of progress.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import OUT, save, table, write_input

CHILD = r"""
import sys, time
t_process = float(sys.argv[3])
t_imports = time.time()
from spoolbatch.config import load_config
from spoolbatch.worker.daemon import Daemon
from spoolbatch.engines.fake import FakeEngine

class Reached(BaseException):
    pass

class Engine(FakeEngine):
    def run(self, requests):
        raise Reached(time.perf_counter())

cfg = load_config(sys.argv[1], env={}, engine="fake", chunk_size=int(sys.argv[2]), settle_seconds=0,
                  heartbeat_interval=60, max_requests_per_job=10**8, max_job_bytes=1 << 40)
t_ready = time.time()
t = time.perf_counter()
try:
    Daemon(cfg, engine_factory=Engine, echo=False).loop_once()
    raise SystemExit("no request reached the engine")
except Reached as r:
    print(r.args[0] - t, t_ready - t_process, t_imports - t_process)
"""


def snapshots(src: Path, n: int, chunk: int, fractions: list[float], root: Path) -> dict[float, Path]:
    """Run the job with the fake engine, copying the spool when each fraction of its chunks is done."""
    from spoolbatch.config import load_config
    from spoolbatch.store.spool import Spool
    from spoolbatch.worker.daemon import Daemon

    sp = Spool(root / "live")
    sp.init()
    os.link(src, sp.inbox / "job.jsonl")
    os.utime(sp.inbox / "job.jsonl", (0, 0))
    cfg = load_config(sp.root, env={}, engine="fake", chunk_size=chunk, settle_seconds=0, heartbeat_interval=60,
                      max_requests_per_job=10**8, max_job_bytes=1 << 40)
    daemon = Daemon(cfg, echo=False)
    chunks = -(-n // chunk)
    out, done = {}, 0
    for fraction in sorted(fractions):
        while done < round(fraction * chunks):
            daemon.loop_once()
            done += 1
        out[fraction] = root / f"at-{fraction:.2f}"
        shutil.copytree(sp.root, out[fraction], symlinks=True)
    daemon.heartbeat.stop("stopped")
    return out


def crash_inside_chunk(spool_dir: Path, chunk: int) -> None:
    """Plan the next chunk and let its lock go without committing it: a worker killed mid-chunk."""
    from spoolbatch.config import load_config
    from spoolbatch.worker.daemon import Daemon

    cfg = load_config(spool_dir, env={}, engine="fake", chunk_size=chunk, settle_seconds=0, heartbeat_interval=60,
                      max_requests_per_job=10**8, max_job_bytes=1 << 40)
    daemon = Daemon(cfg, echo=False)
    job = daemon.spool.running_jobs()[0]
    claim = daemon.take_chunk(job, chunk)
    assert claim is not None
    claim.release()


def restart(snapshot: Path, chunk: int, work: Path, crashed: bool) -> tuple[float, float, float]:
    """(seconds from Daemon() to the first engine call, process start to Daemon(), of which imports)."""
    spool = work / "spool"
    shutil.rmtree(spool, ignore_errors=True)
    shutil.copytree(snapshot, spool, symlinks=True)
    if crashed:
        crash_inside_chunk(spool, chunk)
    out = subprocess.run([sys.executable, "-c", CHILD, str(spool), str(chunk), repr(time.time())],
                         check=True, capture_output=True, text=True).stdout.split()
    return float(out[0]), float(out[1]), float(out[2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--chunk-size", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    fractions = [0.05, 0.5, 0.95]
    src = write_input(OUT / "inputs" / f"chat-{args.requests}.jsonl", args.requests)
    rows, figures = [], {"requests": args.requests, "chunk_size": args.chunk_size, "repeat": args.repeat,
                         "points": []}
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        t = time.perf_counter()
        snaps = snapshots(src, args.requests, args.chunk_size, fractions, Path(tmp))
        figures["setup_seconds"] = round(time.perf_counter() - t, 1)
        for fraction, snap in snaps.items():
            for crashed in (False, True):
                runs = [restart(snap, args.chunk_size, Path(tmp), crashed) for _ in range(args.repeat)]
                first = statistics.median(r[0] for r in runs)
                start = statistics.median(r[1] for r in runs)
                imports = statistics.median(r[2] for r in runs)
                case = "crash inside a chunk" if crashed else "clean stop"
                figures["points"].append({"progress": fraction, "case": case,
                                          "daemon_to_first_request_seconds": round(first, 4),
                                          "every_run": [round(r[0], 4) for r in runs],
                                          "process_start_to_daemon_seconds": round(start, 3),
                                          "imports_seconds": round(imports, 3)})
                rows.append((f"{fraction:.0%}", case, f"{first * 1000:.1f}",
                             " / ".join(f"{r[0] * 1000:.1f}" for r in runs), f"{start:.2f}"))
    table(f"resume cost: {args.requests:,}-request job, chunks of {args.chunk_size:,}, fake engine "
          f"(median of {args.repeat} fresh processes)", rows,
          ("progress", "case", "ms to first request", "each run ms", "process start to Daemon() s"))
    worst = max(p["daemon_to_first_request_seconds"] for p in figures["points"])
    print(f"target < 1 s: worst {worst * 1000:.0f} ms ({1 / worst:.0f}x under the target)")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")
    figures["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"figures: {save('resume', figures)}")


if __name__ == "__main__":
    main()

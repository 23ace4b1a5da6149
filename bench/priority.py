"""Priority: how long an urgent 100-request job waits while a long job runs.

A daemon (a real `spoolbatch run` process, fake engine at 2 ms a request, 5,000-request chunks)
works through a 200,000-request job. Once its first chunk is merged, at a random instant inside
a chunk, a 100-request job is submitted; the figure is the time from that submit to the small
job's completion (its checkpoint says completed). Two ways, each on a fresh spool:

- ``urgent``: the small job is submitted with priority urgent: it takes the next chunk (the one
  the daemon had already handed its engine ahead finishes first). Target: under two chunk times.
- ``fifo``: both jobs normal, as every job was before priorities (and as a spool with no
  priorities set still runs): the small job waits for the rest of the long one.

``--quick`` runs a 10,000-request long job in 1,000-request chunks (about 40 s in all).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import save, table, write_input

REPO = Path(__file__).resolve().parent.parent


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


def run(mode: str, long_path: Path, short_path: Path, *, requests: int, chunk: int, latency: float,
        rng: random.Random) -> dict[str, Any]:
    """One measurement on a fresh spool: seconds from submitting the small job to its completion."""
    from spoolbatch.commands.submit import submit
    from spoolbatch.config import load_config
    from spoolbatch.store.batches import BatchSpec
    from spoolbatch.store.checkpoint import Checkpoint
    from spoolbatch.store.spool import Spool

    with tempfile.TemporaryDirectory(prefix="bench-priority-") as tmp:
        spool = Spool(Path(tmp) / "spool")
        spool.init()
        (spool.root / "config.toml").write_text(
            f"max_requests_per_job = {requests}\nmax_queued_requests = {requests + 1000}\n"
            f"max_job_bytes = {1 << 34}\n")
        config = load_config(spool.root, env={})
        cmd = [sys.executable, "-m", "spoolbatch", "run", "--spool", str(spool.root), "--engine", "fake",
               "--fake-latency", str(latency), "--chunk-size", str(chunk), "--settle-seconds", "0",
               "--poll-interval", "0.2", "-q"]
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            long_job = submit(long_path, config, name="long").jobs[0]

            def ckpt(job: str) -> Checkpoint | None:
                return Checkpoint.load(spool.checkpoint(job))

            wait_for(lambda: (c := ckpt(long_job)) is not None and c.chunks >= 1, 120, "the long job's first chunk")
            first = ckpt(long_job)
            chunk_seconds = first.busy_seconds / first.chunks if first and first.chunks else chunk * latency
            time.sleep(rng.uniform(0, chunk_seconds))  # a random instant inside a chunk
            spec = BatchSpec(priority="urgent" if mode == "urgent" else None)
            t0 = time.monotonic()
            short_job = submit(short_path, config, name="short", batch=spec).jobs[0]
            wait_for(lambda: (c := ckpt(short_job)) is not None and c.status == "completed",
                     requests * latency * 3 + 120, "the small job to complete")
            waited = time.monotonic() - t0
            long_now = ckpt(long_job)
            assert long_now is not None
            chunk_seconds = long_now.busy_seconds / max(1, long_now.chunks)
            return {"mode": mode, "seconds": round(waited, 2), "chunk_seconds": round(chunk_seconds, 2),
                    "chunks": round(waited / chunk_seconds, 2),
                    "long_job_left_when_done": long_now.total_lines - long_now.lines_consumed}
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a 10,000-request long job in 1,000-request chunks")
    parser.add_argument("--requests", type=int, default=200_000, help="the long job's requests")
    parser.add_argument("--urgent", type=int, default=100, help="the small job's requests")
    parser.add_argument("--chunk-size", type=int, default=5000)
    parser.add_argument("--latency", type=float, default=0.002, help="fake engine seconds per request")
    parser.add_argument("--modes", default="urgent,fifo", help="urgent, fifo or both")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.chunk_size = 10_000, 1000
    rng = random.Random(19)
    data = Path(tempfile.gettempdir()) / "spoolbatch-bench"
    long_path = write_input(data / f"priority-long-{args.requests}.jsonl", args.requests)
    short_path = write_input(data / f"priority-short-{args.urgent}.jsonl", args.urgent, seed=1)
    results = [run(mode, long_path, short_path, requests=args.requests, chunk=args.chunk_size, latency=args.latency,
                   rng=rng) for mode in args.modes.split(",")]
    table(f"a {args.urgent}-request job submitted while a {args.requests:,}-request job runs "
          f"({args.chunk_size:,}-request chunks, fake engine at {args.latency * 1000:g} ms a request)",
          [(r["mode"], f"{r['seconds']:.1f}", f"{r['chunk_seconds']:.1f}", f"{r['chunks']:.2f}",
            f"{r['long_job_left_when_done']:,}") for r in results],
          ("priority", "seconds to done", "chunk seconds", "in chunk times", "long job's lines left then"))
    urgent = next((r for r in results if r["mode"] == "urgent"), None)
    if urgent is not None:
        verdict = "met" if urgent["chunks"] < 2 else "MISSED"
        print(f"\ntarget: an urgent job done within two chunk times of its submit: {verdict} "
              f"({urgent['chunks']:.2f})")
    save("priority", {"requests": args.requests, "urgent_requests": args.urgent, "chunk_size": args.chunk_size,
                      "latency": args.latency, "quick": args.quick, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())

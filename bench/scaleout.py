"""One job spread over 1, 2 and 4 workers (`run --gpus`), fake engine with a per-request latency.

The latency stands in for GPU time (the fake engine sleeps, as a worker waits on its card),
so the figure shows how close to linear chunk-level claiming scales one job over several
workers, and what the claim/merge protocol costs, without needing four GPUs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import OUT, save, table, write_input

REPO = Path(__file__).resolve().parent.parent


def run(src: Path, workers: int, latency: float, chunk: int) -> float:
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        spool = Path(tmp) / "spool"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        subprocess.run([sys.executable, "-m", "spoolbatch", "init", "--spool", str(spool)], check=True, env=env,
                       capture_output=True)
        os.link(src, spool / "inbox" / "job.jsonl")
        os.utime(spool / "inbox" / "job.jsonl", (0, 0))
        cmd = [sys.executable, "-m", "spoolbatch", "run", "--once", "-q", "--spool", str(spool), "--engine", "fake",
               "--fake-latency", str(latency), "--chunk-size", str(chunk), "--settle-seconds", "0",
               "--poll-interval", "0.2", "--gpus", ",".join(str(i) for i in range(workers))]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, capture_output=True)
        seconds = time.perf_counter() - start
        ckpt = (spool / "done" / "job.checkpoint.json").read_text()
        assert '"status": "completed"' in ckpt, ckpt
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--latency", type=float, default=0.004, help="fake engine seconds per request")
    parser.add_argument("--chunk-size", type=int, default=100)
    parser.add_argument("--workers", default="1,2,4")
    args = parser.parse_args()
    src = write_input(OUT / "inputs" / f"chat-{args.requests}.jsonl", args.requests)
    figures: dict[str, object] = {"requests": args.requests, "latency": args.latency, "chunk_size": args.chunk_size,
                                  "runs": []}
    rows = []
    base = None
    for n in (int(w) for w in args.workers.split(",")):
        seconds = run(src, n, args.latency, args.chunk_size)
        base = base or seconds * n
        speedup = base / n / seconds * n if base else 1.0
        ideal = args.requests * args.latency / n
        figures["runs"].append({"workers": n, "seconds": round(seconds, 2), "requests_per_second":
                                round(args.requests / seconds, 1), "speedup": round(speedup, 2),
                                "efficiency": round(speedup / n, 3), "ideal_seconds": round(ideal, 2)})
        rows.append((str(n), f"{seconds:.1f}", f"{ideal:.1f}", f"{args.requests / seconds:,.0f}", f"{speedup:.2f}x",
                     f"{100 * speedup / n:.0f}%"))
    table(f"one {args.requests:,}-request job over N workers (fake engine, {1000 * args.latency:g} ms/request, "
          f"chunks of {args.chunk_size})", rows,
          ("workers", "seconds", "ideal s", "requests/s", "speed-up", "efficiency"))
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")
    print(f"figures: {save('scaleout', figures)}")


if __name__ == "__main__":
    main()

"""Every benchmark, one after another (what `make bench` runs); each prints its table and
writes ``bench/out/NAME.json``. See BENCHMARKS.md for what the figures mean.

``--quick`` runs smaller sizes (a smoke test of the scripts, not figures to quote).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

FULL = [
    ("overhead", ["overhead.py"]),
    ("resume", ["resume.py"]),
    ("startup", ["startup.py"]),
    ("engine", ["engine.py", "--model", "tiny", "--prompts", "1000", "--small-chunk", "250", "--rounds", "2"]),
    ("scaleout", ["scaleout.py", "--requests", "8000"]),
    ("gpu_rate", ["gpu_rate.py"]),
    ("embed_engine", ["embed_engine.py"]),
    ("soak", ["soak.py", "--minutes", "10"]),
    ("serve", ["serve.py"]),
    ("modern_requests", ["modern_requests.py", "--requests", "1000"]),
    ("priority", ["priority.py"]),
    ("page", ["page.py"]),
    ("prefix", ["prefix.py"]),
    ("lora", ["lora.py"]),
    ("retained", ["retained.py"]),
]
QUICK = [
    ("overhead", ["overhead.py", "--sizes", "10000,50000"]),
    ("resume", ["resume.py", "--requests", "20000", "--chunk-size", "1000", "--repeat", "1"]),
    ("startup", ["startup.py", "--lines", "5000", "--repeat", "2"]),
    ("engine", ["engine.py", "--model", "tiny", "--prompts", "200", "--small-chunk", "50", "--rounds", "1"]),
    ("scaleout", ["scaleout.py", "--requests", "1000", "--workers", "1,2"]),
    ("gpu_rate", ["gpu_rate.py", "--requests", "10000", "--rss-requests", "10000", "--workers", "1,2"]),
    ("embed_engine", ["embed_engine.py", "--texts", "400", "--small-chunk", "100", "--rounds", "1"]),
    ("soak", ["soak.py", "--quick"]),
    ("serve", ["serve.py", "--quick"]),
    ("modern_requests", ["modern_requests.py", "--requests", "50"]),
    ("priority", ["priority.py", "--quick"]),
    ("page", ["page.py", "--quick"]),
    ("prefix", ["prefix.py", "--quick"]),
    ("lora", ["lora.py", "--quick"]),
    ("retained", ["retained.py", "--quick"]),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", help="comma-separated, of: " + ",".join(name for name, _ in FULL))
    args = parser.parse_args()
    wanted = set(args.only.split(",")) if args.only else None
    print(f"machine: {os.cpu_count()} cores; load average at start: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    took, failed = [], []
    start = time.perf_counter()
    for name, cmd in QUICK if args.quick else FULL:
        if wanted is not None and name not in wanted:
            continue
        print(f"\n=== {name}: {' '.join(cmd)}", flush=True)
        t = time.perf_counter()
        rc = subprocess.run([sys.executable, *cmd], cwd=HERE).returncode
        took.append((name, time.perf_counter() - t))
        if rc != 0:
            failed.append(name)
    print("\nbenchmark  seconds")
    for name, seconds in took:
        print(f"{name:<10} {seconds:7.1f}{'  FAILED' if name in failed else ''}")
    print(f"{'total':<10} {time.perf_counter() - start:7.1f}  (load average now "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

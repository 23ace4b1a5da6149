"""Benchmarks only: with SPOOLBATCH_BENCH_SIMGPU set, `--engine fake` builds bench/simgpu.py's
simulated GPU in this process (how `spoolbatch run --workers N` worker subprocesses get it)."""

import os
import sys

if os.environ.get("SPOOLBATCH_BENCH_SIMGPU"):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import simgpu

    simgpu.install()

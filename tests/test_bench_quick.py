"""`bench/run_all.py --quick` exits 0: a change that breaks a benchmark script fails the suite the day it is made.

It runs every benchmark at small sizes, the engine one on the tiny model through real vLLM,
so it takes minutes (about 6 on our 2-core machines under load): `make test` runs it,
`make check` leaves it out. The figures it prints are not checked (BENCHMARKS.md quotes
full runs); only that every script ran to its end.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import REPO


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.timeout(1800)
def test_every_benchmark_script_runs() -> None:
    pytest.importorskip("vllm")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "bench/run_all.py", "--quick"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1700)
    summary = proc.stdout[proc.stdout.rfind("benchmark  seconds"):]
    assert proc.returncode == 0 and "FAILED" not in summary, f"{summary}\n{proc.stderr[-3000:]}"

"""The Ray backend against the local vLLM engine on one model: start time, rows/s, memory.

    .venv/bin/python bench/ray_backend.py [--model DIR] [--requests 2000] [--concurrency 1 2]

Without --model the tiny random Llama of the tests is built. Each engine answers the same
chat requests twice (the first pass warms it); rows/s is the second pass. The Ray runs use
a private local Ray (``address="local"``); its start is part of the Ray engine's start.
Memory is the drop in the system's MemAvailable while the engine is loaded.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import OUT, request  # noqa: E402
from spoolbatch.config import EngineSettings  # noqa: E402
from spoolbatch.engines.base import Request  # noqa: E402
from spoolbatch.sampling import parse_spec  # noqa: E402


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def requests(model: str, n: int) -> list[Request]:
    rng = random.Random(0)
    out = []
    for i in range(n):
        line = request(i, model, rng)
        out.append(Request(line["custom_id"], i + 1, line["url"], line["body"], parse_spec(line["url"], line["body"])))
    return out


def measure(name: str, engine: Any, model: str, reqs: list[Request]) -> dict[str, Any]:
    before = mem_available()
    started = time.monotonic()
    engine.load(model)
    start_s = time.monotonic() - started
    engine.run(reqs)  # warm
    t = time.monotonic()
    outs = engine.run(reqs)
    seconds = time.monotonic() - t
    used = before - mem_available()
    tokens = sum(o.completion_tokens for o in outs)
    engine.close()
    row = {"engine": name, "start_s": round(start_s, 1), "rows": len(reqs), "seconds": round(seconds, 2),
           "rows_per_s": round(len(reqs) / seconds, 1), "completion_tokens_per_s": round(tokens / seconds),
           "failed": sum(o.failed for o in outs), "memory_gib": round(used / 2**30, 2)}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    if args.model is None:
        from tests.tiny_model import tiny_llama

        args.model = str(tiny_llama())
    reqs = requests(args.model, args.requests)
    from spoolbatch.engines.ray_engine import RayEngine
    from spoolbatch.engines.vllm_engine import VllmEngine

    rows = [measure("vllm (in-process)", VllmEngine(EngineSettings()), args.model, reqs)]
    for c in args.concurrency:
        rows.append(measure(f"ray, {c} replica(s)", RayEngine(EngineSettings(), address="local", concurrency=c),
                            args.model, reqs))
    OUT.mkdir(exist_ok=True)
    (OUT / "ray_backend.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""The Ray backend against the local vLLM engine on one model: start time, rows/s, memory.

    .venv/bin/python bench/ray_backend.py [--model DIR] [--requests 2000] [--concurrency 1 2]

Without --model the tiny random Llama of the tests is built. Each engine answers the same
chat requests: a first pass warms it, then one call on all of them, then chunks one after
another without and with look-ahead (chunk k+1 submitted before chunk k is collected, as
the daemon does). The Ray runs use
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
from spoolbatch.format.types import Request  # noqa: E402
from spoolbatch.format.validation import parse_spec  # noqa: E402


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


def chunked(engine: Any, reqs: list[Request], chunk: int, look_ahead: bool) -> list[Any]:
    """Chunks one after another as the daemon feeds them: with look-ahead, chunk k+1 is
    submitted before chunk k is collected; without, each chunk is run on its own."""
    parts = [reqs[lo:lo + chunk] for lo in range(0, len(reqs), chunk)]
    if not look_ahead:
        return [o for part in parts for o in engine.run(part)]
    outs: list[Any] = []
    pending = engine.submit(parts[0])
    for nxt in [*parts[1:], None]:
        ahead = engine.submit(nxt) if nxt is not None else None
        outs.extend(engine.collect(pending))
        pending = ahead
    return outs


def measure(name: str, engine: Any, model: str, reqs: list[Request], chunk: int) -> list[dict[str, Any]]:
    before = mem_available()
    started = time.monotonic()
    engine.load(model)
    start_s = time.monotonic() - started
    engine.run(reqs)  # warm
    used = before - mem_available()
    rows = []
    for how, call in (("one call", lambda: engine.run(reqs)),
                      (f"chunks of {chunk}", lambda: chunked(engine, reqs, chunk, False)),
                      (f"chunks of {chunk}, look-ahead", lambda: chunked(engine, reqs, chunk, True))):
        t = time.monotonic()
        outs = call()
        seconds = time.monotonic() - t
        tokens = sum(o.completion_tokens for o in outs)
        row = {"engine": name, "how": how, "start_s": round(start_s, 1), "rows": len(reqs),
               "seconds": round(seconds, 2), "rows_per_s": round(len(reqs) / seconds, 1),
               "completion_tokens_per_s": round(tokens / seconds), "failed": sum(o.failed for o in outs),
               "memory_gib": round(used / 2**30, 2)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    engine.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--chunk", type=int, default=250)
    args = parser.parse_args()
    if args.model is None:
        from tests.tiny_model import tiny_llama

        args.model = str(tiny_llama())
    reqs = requests(args.model, args.requests)
    from spoolbatch.engines.ray_engine import RayEngine
    from spoolbatch.engines.vllm_engine import VllmEngine

    rows = measure("vllm (in-process)", VllmEngine(EngineSettings()), args.model, reqs, args.chunk)
    for c in args.concurrency:
        rows += measure(f"ray, {c} replica(s)", RayEngine(EngineSettings(), address="local", concurrency=c),
                        args.model, reqs, args.chunk)
    OUT.mkdir(exist_ok=True)
    (OUT / "ray_backend.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()

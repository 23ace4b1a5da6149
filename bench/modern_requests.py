"""What the modern request costs on the real vLLM engine: tools, Responses, scoring.

On the tiny random Llama (built once under bench/out), greedy, in process:

- render: per-request preparation before the engine sees a request, the plain chat fast path
  (the tokenizer's chat template) against the tools path (vLLM's ChatCompletionRequest, its
  Parser's adjust_request with the structured-output schema for ``required``, its offline
  chat renderer);
- end to end: ``VllmEngine.run`` on N plain chat requests, N forced tool calls (``required``,
  structured output from the tool's schema, parsed back by vLLM's parser), N ``/v1/responses``
  lines, and N score pairs on the packaged MiniLM (when installed).

Figures are printed and written to bench/out/modern_requests.json; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import OUT, save, table  # noqa: E402

from spoolbatch.config import EngineSettings  # noqa: E402
from spoolbatch.format.types import Request  # noqa: E402
from spoolbatch.format.validation import parse_spec  # noqa: E402

TOOL = {"type": "function", "function": {"name": "rate_candidate", "parameters": {
    "type": "object", "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 10},
                                     "reason": {"type": "string", "maxLength": 24}},
    "required": ["score", "reason"], "additionalProperties": False}}}


def tiny() -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_model import CORPUS_VERSION, build_tiny_llama

    out = OUT / "models" / f"tiny-llama-v{CORPUS_VERSION}"
    if not (out / "config.json").exists():
        build_tiny_llama(out)
    return out


def requests(url: str, n: int, make: Any) -> list[Request]:
    out = []
    for i in range(n):
        body = make(i)
        out.append(Request(f"r{i}", i + 1, url, body, parse_spec(url, body)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    n = args.requests
    from spoolbatch.engines.models import embed_demo_dir
    from spoolbatch.engines.vllm_engine import VllmEngine

    model = str(tiny())
    chat = "/v1/chat/completions"

    def question(i: int) -> list[dict[str, str]]:
        return [{"role": "user", "content": f"rate candidate {i} for the data job"}]

    plain = requests(chat, n, lambda i: {"model": model, "messages": question(i), "max_tokens": 16,
                                         "temperature": 0})
    forced = requests(chat, n, lambda i: {"model": model, "messages": question(i), "max_tokens": 48,
                                          "temperature": 0, "tools": [TOOL], "tool_choice": "required",
                                          "parallel_tool_calls": False})
    responses = requests("/v1/responses", n, lambda i: {"model": model, "input": f"rate candidate {i}",
                                                        "max_output_tokens": 16, "temperature": 0})
    engine = VllmEngine(EngineSettings())
    engine.load(model)
    started = time.perf_counter()
    for r in plain:
        engine._prompt_ids(r)
    fast_us = (time.perf_counter() - started) / n * 1e6
    tools = engine.chat_tools()
    started = time.perf_counter()
    for r in forced:
        tools.prepare(r)
    tools_us = (time.perf_counter() - started) / n * 1e6
    rows, figures = [], {"requests": n, "load": os.getloadavg()[0], "render_us": {"plain": fast_us, "tools": tools_us}}
    runs: dict[str, Any] = {}
    for name, group in (("plain chat", plain), ("forced tool call", forced), ("responses", responses)):
        started = time.perf_counter()
        outcomes = engine.run(group)
        seconds = time.perf_counter() - started
        tokens = sum(o.completion_tokens for o in outcomes)
        failed = sum(o.failed for o in outcomes)
        runs[name] = {"seconds": seconds, "requests_per_s": n / seconds, "output_tokens": tokens, "failed": failed}
        rows.append((name, f"{n / seconds:,.0f}", f"{tokens / seconds:,.0f}", str(failed)))
    engine.close()
    if embed_demo_dir() is not None:
        docs = ["python and sql", "rust and go", "statistics", "react and css"]
        score = requests("/v1/score", n, lambda i: {"model": "all-MiniLM-L6-v2", "queries": f"data job {i}",
                                                    "documents": docs})
        engine = VllmEngine(EngineSettings())
        engine.load("all-MiniLM-L6-v2")
        started = time.perf_counter()
        outcomes = engine.run(score)
        seconds = time.perf_counter() - started
        engine.close()
        failed = sum(o.failed for o in outcomes)
        runs["score (MiniLM, 4 pairs)"] = {"seconds": seconds, "requests_per_s": n / seconds, "failed": failed}
        rows.append(("score (MiniLM, 4 pairs)", f"{n / seconds:,.0f}", "-", str(failed)))
    figures["runs"] = runs
    table(f"render per request (load {figures['load']:.1f})",
          [("plain chat (tokenizer chat template)", f"{fast_us:,.0f} us"),
           ("tools path (vLLM request model, parser, renderer)", f"{tools_us:,.0f} us")], ("path", "time"))
    table(f"end to end, {n} requests, tiny model, greedy", rows, ("kind", "requests/s", "output tok/s", "failed"))
    save("modern_requests", figures)


if __name__ == "__main__":
    main()

"""LoRA adapters on the real engine: one job over 4 adapters, 4 single-adapter jobs, and the base model alone.

Same N prompts (completions, greedy, ``max_tokens`` fixed and the end token banned so every
answer has the same length), each drained from a fresh spool by an in-process ``Daemon``:

- base, plain engine: N lines for the base model on an engine started without LoRA (what a job
  without adapters runs on);
- mixed: one job of N lines, a quarter for each of 4 adapters, interleaved, on one engine with LoRA on;
- 4 jobs: the same lines as 4 single-adapter jobs, dropped and drained one after the other;
- base, LoRA engine: the N base lines on the engine with LoRA on (what LoRA costs lines without an adapter).

The adapters are rank 8 on every layer's q_proj and v_proj (``tests/tiny_lora.py``). The plain
engine's rounds run first, then the LoRA engine's contenders interleaved in rounds (order rotated);
each contender's median is reported. ``--quick`` is a smoke test (figures not quoted).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import OUT, save, table
from engine import model_path

ROOT = Path(__file__).resolve().parent.parent
ADAPTERS = ("lora-a", "lora-b", "lora-c", "lora-d")
WORDS = ("the a of to in for with batch job chunk spool inbox result model engine answer question line file "
         "worker daemon queue checkpoint error token time data value name list number open close start stop "
         "quick brown fox jumps over lazy dog red green blue small large first last next every").split()


def prompts(n: int) -> list[str]:
    rng = random.Random(21)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))) for _ in range(n)]


def lines(texts: list[str], models: list[str], tokens: int, eos: int) -> list[dict[str, Any]]:
    return [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/completions",
             "body": {"model": m, "prompt": t, "max_tokens": tokens, "temperature": 0, "logit_bias": {str(eos): -100}}}
            for i, (t, m) in enumerate(zip(texts, models, strict=True))]


def drain(engine: Any, jobs: list[list[dict[str, Any]]], settings: dict[str, Any]) -> float:
    """Seconds to drain ``jobs`` one after the other (each dropped when the one before is done)."""
    from spoolbatch.config import load_config
    from spoolbatch.store.checkpoint import Checkpoint
    from spoolbatch.store.spool import Spool
    from spoolbatch.worker.daemon import Daemon

    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        sp = Spool(Path(tmp) / "spool")
        sp.init()
        cfg = load_config(sp.root, env={}, engine="vllm", settle_seconds=0, heartbeat_interval=2, **settings)
        daemon = Daemon(cfg, engine_factory=lambda: engine, echo=False)
        seconds = 0.0
        try:
            for k, records in enumerate(jobs):
                src = Path(tmp) / f"job{k}.jsonl"
                src.write_text("".join(json.dumps(r) + "\n" for r in records))
                shutil.move(src, sp.inbox / src.name)
                os.utime(sp.inbox / src.name, (0, 0))
                t = time.perf_counter()
                while daemon.loop_once().worked:
                    pass
                seconds += time.perf_counter() - t
                ckpt = Checkpoint.load(sp.checkpoint(f"job{k}"))
                assert ckpt is not None and ckpt.requests_done == len(records), ckpt
        finally:
            daemon.heartbeat.stop("stopped")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="tiny", help="tiny (a random Llama) or smollm2")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--chunk-size", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a smoke test: 200 requests, one round")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.rounds = 200, 1
    n = args.requests - args.requests % len(ADAPTERS)

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_lora import write_adapter

    from spoolbatch.config import AdapterSource, EngineSettings
    from spoolbatch.engines.vllm_engine import VllmEngine

    model = model_path(args.model)
    folder = OUT / "lora" / f"adapters-{model.name}"
    for seed, name in enumerate(ADAPTERS, start=1):
        if not (folder / name / "adapter_config.json").exists():
            write_adapter(model, folder / name, seed=seed)
    eos = int(json.loads((model / "config.json").read_text())["eos_token_id"])
    texts = prompts(n)
    base = lines(texts, [str(model)] * n, args.tokens, eos)
    mixed = lines(texts, [ADAPTERS[i % len(ADAPTERS)] for i in range(n)], args.tokens, eos)
    per_adapter = [[r for i, r in enumerate(mixed) if i % len(ADAPTERS) == k] for k in range(len(ADAPTERS))]
    sources = (AdapterSource(str(folder), str(model)),)
    settings: dict[str, Any] = {"chunk_size": args.chunk_size, "adapters": sources}
    times: dict[str, list[float]] = {"base, plain engine": [], "mixed": [], "4 jobs": [], "base, LoRA engine": []}

    plain = VllmEngine(EngineSettings(adapters=sources))
    plain.load(str(model))
    drain(plain, [base[:100]], settings)  # warm-up
    for _ in range(args.rounds):
        times["base, plain engine"].append(drain(plain, [base], settings))
    assert plain._loras.active is None
    plain.close()

    engine = VllmEngine(EngineSettings(adapters=sources))
    engine.load(str(model))
    started = engine.starts
    drain(engine, [mixed[:100]], settings)  # warm-up: turns LoRA on and loads the adapters
    lora_start = engine.load_seconds
    contenders = [("mixed", [mixed]), ("4 jobs", per_adapter), ("base, LoRA engine", [base])]
    for r in range(args.rounds):
        for name, jobs in contenders[r % 3:] + contenders[:r % 3]:
            times[name].append(drain(engine, jobs, settings))
    assert engine.starts == started + 1, "LoRA is turned on once"
    engine.close()

    med = {k: statistics.median(v) for k, v in times.items()}
    ref = med["base, plain engine"]
    rows = [(k, f"{med[k]:.2f}", f"{n / med[k]:.0f}", f"{med[k] / ref:.2f}x", " ".join(f"{x:.2f}" for x in times[k]))
            for k in times]
    table(f"LoRA: {n} requests of {args.tokens} tokens, {args.model} model, chunks of {args.chunk_size}, "
          f"{args.rounds} round(s); load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}",
          rows, ("contender", "median s", "requests/s", "vs base", "each round"))
    print(f"engine restart to turn LoRA on: {lora_start:.1f} s (once per model, not counted above)")
    save("lora", {"requests": n, "tokens": args.tokens, "model": args.model, "chunk_size": args.chunk_size,
                  "rounds": args.rounds, "seconds": times, "median_seconds": med,
                  "mixed_vs_base": med["mixed"] / ref, "four_jobs_vs_base": med["4 jobs"] / ref,
                  "lora_restart_seconds": lora_start})


if __name__ == "__main__":
    main()

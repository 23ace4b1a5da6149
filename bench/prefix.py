"""Prefix order on the real engine: spoolbatch against a direct ``LLM.chat`` in file order and in grouped order.

The workload of ``shared/notes/prefix-order.md``: system prompts of about 700 words, several
user questions under each, interleaved in the file (p0 q0, p1 q0, ... p0 q1, ...), greedy,
``max_tokens`` 1, so the run is prefill: what the prefix cache saves. Contenders, on one loaded
engine, with ``reset_prefix_cache()`` before each run:

- direct, file order: one ``LLM.chat`` call on the requests as the file has them;
- direct, grouped: the same call with requests sharing a system prompt side by side;
- spoolbatch: the file drained from a fresh spool by an in-process ``Daemon`` (claim, parse,
  validate, prefix order, answer, write, checkpoint, merge), one chunk.

Then a workload with no shared prefix (each request its own text) through spoolbatch and one
direct call, to show the sorting costs nothing. Runs are interleaved in rounds (their order
rotated each round); each contender's median is reported, and each round's ratios, in wall
seconds and in the process's CPU seconds (the engine runs in this process: on a machine
shared with other work, CPU seconds move less with the load than wall seconds do).

The effect needs a KV cache smaller than the distinct prefixes in flight (the note: 60 prompts
of about 900 tokens against 1 GiB of float32 cache, about 23,000 tokens: 2.3 times over). To run
fewer prompts in less time, the cache is cut to the same ratio (``--cache-ratio``) with vLLM's
``num_gpu_blocks_override``; the spoolbatch engine is built with it too (the only change made
to the engine here). ``--quick`` is a smoke test of the script (small sizes, figures not quoted).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from common import OUT, save, table
from engine import model_path

WORDS = ("score the answer against each criterion below and justify every point with evidence from the text "
         "a response is complete when it covers the question accurate when facts are correct and clear when "
         "a reader can follow it without background knowledge penalise vague claims reward specific numbers "
         "names dates and sources note any safety issue consider tone length structure and whether the "
         "conclusion follows from the argument apply the rubric consistently across candidates and report "
         "partial credit where the answer is right for the wrong reason or incomplete but on track").split()


def text(rng: random.Random, words: int) -> str:
    """``words`` words of rubric-like prose: sentences, commas, now and then a figure (about 1.3 tokens a word)."""
    out: list[str] = []
    while len(out) < words:
        sentence = [rng.choice(WORDS) for _ in range(rng.randint(8, 16))]
        sentence[0] = sentence[0].capitalize()
        for i in range(1, len(sentence) - 1):
            if rng.random() < 0.12:
                sentence[i] += ","
            elif rng.random() < 0.02:
                sentence[i] += f" ({rng.randint(1, 10)}/{rng.choice((10, 20, 100))})"
        out.extend(sentence)
        out[-1] += "."
    return " ".join(out[:words])


def shared_workload(prompts: int, questions: int, words: int, model: str) -> list[dict[str, Any]]:
    """``prompts`` system prompts of ``words`` words, ``questions`` distinct questions each, interleaved."""
    systems = [f"Rubric {k}. {text(random.Random(k), words)}" for k in range(prompts)]
    rng = random.Random(10_000)
    out = []
    for j in range(questions):
        for k in range(prompts):
            messages = [{"role": "system", "content": systems[k]},
                        {"role": "user", "content": f"Question {j} on rubric {k}: {text(rng, 12)}"}]
            out.append({"custom_id": f"p{k}-q{j}", "method": "POST", "url": "/v1/chat/completions",
                        "body": {"model": model, "messages": messages, "max_tokens": 1, "temperature": 0}})
    return out


def distinct_workload(count: int, words: int, model: str) -> list[dict[str, Any]]:
    """``count`` requests that share nothing but the chat template's first tokens."""
    rng = random.Random(20_000)
    return [{"custom_id": f"d{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": model, "messages": [{"role": "user", "content": f"Text {i}. {text(rng, words)}"}],
                      "max_tokens": 1, "temperature": 0}} for i in range(count)]


def grouped(reqs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The requests with those of one system prompt side by side (stable)."""
    return sorted(reqs, key=lambda r: r["body"]["messages"][0]["content"])


def direct(engine: Any, reqs: list[dict[str, Any]]) -> dict[str, Any]:
    """One ``LLM.chat`` call, greedy, max_tokens 1, on a cold prefix cache."""
    from vllm import SamplingParams

    llm = engine._llm
    llm.reset_prefix_cache()
    params = SamplingParams(temperature=0.0, max_tokens=1)
    t, cpu = time.perf_counter(), time.process_time()
    outs = llm.chat([r["body"]["messages"] for r in reqs], params, use_tqdm=False)
    seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
    prompt = sum(len(o.prompt_token_ids) for o in outs)
    cached = sum(o.num_cached_tokens or 0 for o in outs)
    answers = {r["custom_id"]: o.outputs[0].text for r, o in zip(reqs, outs, strict=True)}
    return {"seconds": seconds, "cpu": cpu, "answered": len(outs), "hit_rate": cached / prompt, "answers": answers}


def spoolbatch(engine: Any, reqs: list[dict[str, Any]], settings: dict[str, Any]) -> dict[str, Any]:
    """The requests as a job file, drained from a fresh spool by an in-process daemon on ``engine``."""
    from spoolbatch.config import load_config
    from spoolbatch.store.checkpoint import Checkpoint
    from spoolbatch.store.spool import Spool
    from spoolbatch.worker.daemon import Daemon

    engine._llm.reset_prefix_cache()
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        sp = Spool(Path(tmp) / "spool")
        sp.init()
        src = Path(tmp) / "job.jsonl"
        src.write_text("".join(json.dumps(r) + "\n" for r in reqs))
        shutil.move(src, sp.inbox / "job.jsonl")
        os.utime(sp.inbox / "job.jsonl", (0, 0))
        cfg = load_config(sp.root, env={}, engine="vllm", chunk_size=max(5000, len(reqs)), settle_seconds=0,
                          heartbeat_interval=2, **settings)
        daemon = Daemon(cfg, engine_factory=lambda: engine, echo=False)
        try:
            t, cpu = time.perf_counter(), time.process_time()
            while daemon.loop_once().worked:
                pass
            seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
        finally:
            daemon.heartbeat.stop("stopped")
        ckpt = Checkpoint.load(sp.checkpoint("job"))
        assert ckpt is not None and ckpt.requests_done == len(reqs), ckpt
        answers = {}
        with open(sp.results("job")) as f:
            for line in f:
                rec = json.loads(line)
                answers[rec["custom_id"]] = rec["response"]["body"]["choices"][0]["message"]["content"]
    return {"seconds": seconds, "cpu": cpu, "answered": len(answers), "hit_rate": ckpt.prefix_cache_hit_rate or 0.0,
            "answers": answers}


def sized_llm(blocks: int) -> None:
    """Make every ``vllm.LLM`` built from here on hold ``blocks`` KV cache blocks (the daemon's engine too)."""
    import vllm

    real = vllm.LLM

    class SizedLLM(real):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, num_gpu_blocks_override=blocks, **kwargs)

    vllm.LLM = SizedLLM


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2", help="smollm2, or a model folder")
    parser.add_argument("--prompts", type=int, default=20, help="system prompts")
    parser.add_argument("--questions", type=int, default=6, help="questions under each system prompt")
    parser.add_argument("--words", type=int, default=700, help="words in each system prompt")
    parser.add_argument("--distinct", type=int, default=60, help="requests of the no-shared-prefix workload")
    parser.add_argument("--distinct-words", type=int, default=300)
    parser.add_argument("--cache-ratio", type=float, default=2.3,
                        help="distinct prefix tokens over KV cache tokens (the note's run: 2.3); 0: 1 GiB cache")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtype", default="auto", help="auto: what the daemon picks on this CPU")
    parser.add_argument("--quick", action="store_true", help="a smoke test: small sizes, one round")
    parser.add_argument("--only", help="comma-separated contenders: file,grouped,spoolbatch,lone-direct,"
                                       "lone-spoolbatch (default: all)")
    args = parser.parse_args()
    if args.quick:
        args.prompts, args.questions, args.words, args.distinct, args.distinct_words = 3, 2, 150, 4, 60
        args.rounds, args.max_model_len = 1, 512

    from spoolbatch.config import EngineSettings
    from spoolbatch.engines.cpu_env import cpu_dtype
    from spoolbatch.engines.vllm_engine import VllmEngine
    from spoolbatch.format.endpoints import CHAT

    path = model_path(args.model)
    settings: dict[str, Any] = {"max_model_len": args.max_model_len, "enforce_eager": True,
                                "dtype": cpu_dtype(args.dtype), "cpu_kvcache_gib": 1}
    shared = shared_workload(args.prompts, args.questions, args.words, str(path))
    lone = distinct_workload(args.distinct, args.distinct_words, str(path))

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    def tokens(messages: list[dict[str, str]]) -> int:
        ids = tok.apply_chat_template(messages, tokenize=True)
        return len(ids["input_ids"] if hasattr(ids, "keys") else ids)

    prefix_tokens = [tokens(r["body"]["messages"][:1]) for r in shared[:args.prompts]]
    block = 128  # the CPU build's block size
    blocks = None
    if args.cache_ratio > 0:
        # at least one whole context, and vLLM keeps one block back
        wanted = math.ceil(sum(prefix_tokens) / args.cache_ratio / block)
        blocks = max(wanted, math.ceil(args.max_model_len / block) + 1)
        sized_llm(blocks)
    t = time.perf_counter()
    engine = VllmEngine(EngineSettings(**settings))
    engine.load(str(path), endpoint=CHAT)
    load = time.perf_counter() - t
    config = engine._llm.llm_engine.vllm_config.cache_config
    cache_tokens = (config.num_gpu_blocks or 0) * config.block_size
    mean_prefix = statistics.mean(prefix_tokens)
    print(f"model {path.name}, {settings['dtype']}, {args.prompts} system prompts of {mean_prefix:.0f} tokens x "
          f"{args.questions} questions ({len(shared)} requests), KV cache {cache_tokens:,} tokens "
          f"({config.num_gpu_blocks} blocks of {config.block_size}), prefix caching "
          f"{config.enable_prefix_caching}; engine load {load:.1f}s", flush=True)
    # Warm-up, not counted: eager mode builds the CPU kernels for each new batch shape on first use,
    # which would otherwise land on whichever contender runs first.
    direct(engine, shared[:2] if args.quick else grouped(shared))
    if not args.quick:
        direct(engine, lone)

    contenders = {
        "direct, file order": lambda: direct(engine, shared),
        "direct, grouped": lambda: direct(engine, grouped(shared)),
        "spoolbatch": lambda: spoolbatch(engine, shared, settings),
        "no shared prefix: direct": lambda: direct(engine, lone),
        "no shared prefix: spoolbatch": lambda: spoolbatch(engine, lone, settings),
    }
    short = dict(zip(("file", "grouped", "spoolbatch", "lone-direct", "lone-spoolbatch"), contenders, strict=True))
    names = [short[n] for n in args.only.split(",")] if args.only else list(contenders)
    rounds: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for k in range(args.rounds):
        for name in names[k % len(names):] + names[:k % len(names)]:
            r = contenders[name]()
            rounds[name].append(r)
            print(f"  round {k + 1} {name}: {r['seconds']:.1f}s ({r['cpu']:.1f} CPU s), prefix-cache hit rate "
                  f"{r['hit_rate']:.3f} "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)
    med = {n: statistics.median(r["seconds"] for r in rs) for n, rs in rounds.items()}
    med_cpu = {n: statistics.median(r["cpu"] for r in rs) for n, rs in rounds.items()}
    pairs = {"spoolbatch / direct file order (speed-up)": ("direct, file order", "spoolbatch"),
             "spoolbatch / direct grouped (speed)": ("direct, grouped", "spoolbatch"),
             "no shared prefix: spoolbatch / direct (speed)": ("no shared prefix: direct",
                                                               "no shared prefix: spoolbatch")}
    pairs = {k: (x, y) for k, (x, y) in pairs.items() if x in rounds and y in rounds}
    per_round = {k: [a["seconds"] / b["seconds"] for a, b in zip(rounds[x], rounds[y], strict=True)]
                 for k, (x, y) in pairs.items()}
    per_round_cpu = {k: [a["cpu"] / b["cpu"] for a, b in zip(rounds[x], rounds[y], strict=True)]
                     for k, (x, y) in pairs.items()}
    mismatches = compared = 0
    for x, y in pairs.values():  # greedy answers of spoolbatch against the direct call's, first round
        theirs = rounds[x][0]["answers"]
        compared += len(rounds[y][0]["answers"])
        mismatches += sum(theirs[cid] != answer for cid, answer in rounds[y][0]["answers"].items())
    rows = [(n, f"{rounds[n][0]['answered']}", f"{med[n]:.1f}", " / ".join(f"{r['seconds']:.1f}" for r in rounds[n]),
             f"{med_cpu[n]:.1f}", f"{statistics.median(r['hit_rate'] for r in rounds[n]):.3f}") for n in names]
    table(f"prefix order: {len(shared)} requests ({args.prompts} x {args.questions}), {settings['dtype']}, "
          f"max_tokens 1, median of {args.rounds} rounds", rows,
          ("run", "requests", "median s", "each round s", "median CPU s", "hit rate"))
    targets = {"spoolbatch / direct file order (speed-up)": 3.0, "spoolbatch / direct grouped (speed)": 0.95,
               "no shared prefix: spoolbatch / direct (speed)": 0.97}
    ratios = {k: med[x] / med[y] for k, (x, y) in pairs.items()}
    cpu_ratios = {k: med_cpu[x] / med_cpu[y] for k, (x, y) in pairs.items()}
    for name, ratio in ratios.items():
        each = " / ".join(f"{x:.2f}" for x in per_round[name])
        each_cpu = " / ".join(f"{x:.2f}" for x in per_round_cpu[name])
        print(f"{name}: {ratio:.2f}x of medians (each round {each}); in CPU seconds {cpu_ratios[name]:.2f}x "
              f"(each round {each_cpu}); target >= {targets[name]}x")
    print(f"greedy answers of spoolbatch differing from the direct call's: {mismatches} of {compared}")
    uptime = os.getloadavg()
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in uptime)} ({os.cpu_count()} cores)")
    engine.close()
    figures = {"model": args.model, "settings": settings, "prompts": args.prompts, "questions": args.questions,
               "system_prompt_tokens": round(statistics.mean(prefix_tokens)), "distinct": args.distinct,
               "kv_cache_tokens": cache_tokens, "kv_cache_blocks": blocks, "cache_ratio": args.cache_ratio,
               "rounds": args.rounds, "load_seconds": round(load, 2), "quick": args.quick,
               "seconds": {n: [round(r["seconds"], 2) for r in rs] for n, rs in rounds.items()},
               "cpu_seconds": {n: [round(r["cpu"], 2) for r in rs] for n, rs in rounds.items()},
               "cpu_ratios_of_medians": {k: round(v, 3) for k, v in cpu_ratios.items()},
               "cpu_ratios_per_round": {k: [round(x, 3) for x in v] for k, v in per_round_cpu.items()},
               "hit_rate": {n: [round(r["hit_rate"], 4) for r in rs] for n, rs in rounds.items()},
               "ratios_of_medians": {k: round(v, 3) for k, v in ratios.items()},
               "ratios_per_round": {k: [round(x, 3) for x in v] for k, v in per_round.items()},
               "answers_differing": mismatches, "loadavg_at_end": [round(x, 2) for x in uptime]}
    name = "prefix-quick" if args.quick else "prefix" + ("-" + args.only.replace(",", "-") if args.only else "")
    print(f"figures: {save(name, figures)}")


if __name__ == "__main__":
    main()

